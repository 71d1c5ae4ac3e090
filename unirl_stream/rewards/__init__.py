"""Reward scorers (entry point group ``unirl_stream.rewards``) and how they combine.

- ``base``: per-frame scoring, frame sampling/aggregation options shared by every scorer.
- Scorers: ``pickscore`` (PickScore, VideoPickScore), ``hpsv2``, ``clipscore``,
  ``aesthetic``, ``ocr`` (tesseract / GOT-OCR-2.0), ``jpeg``, ``simple`` (brightness),
  ``remote`` (any scorer served by ``server``).
- ``clip_common``: CLIP loading from local files and PIL-exact tensor preprocessing;
  ``openclip``: open_clip -> transformers CLIP state-dict mapping.
- ``combine.RewardSet``: weighted terms, batching, NaN/inf/None reporting.
- ``differentiable``: the same weighted terms with gradient (``score_tensor``), for ReFL.
- ``server`` / ``wire``: the HTTP reward service and its msgpack messages.
- ``testing``: tiny random-weight models of the real architectures, saved to disk.

Nothing here imports torch at module import time (recipe validation loads these classes).
"""
