"""VideoAlign / VideoReward (Liu et al. 2025): a Qwen2-VL-2B reward model for video with
three heads: visual quality (VQ), motion quality (MQ) and text alignment (TA).

Reference (KwaiVGI/VideoAlign, ``Qwen2VLRewardModelBT`` with ``reward_token = "special"``):
``<|VQ_reward|>``, ``<|MQ_reward|>`` and ``<|TA_reward|>`` are added to the tokenizer; a
user turn holds the video and the "detailed_special" prompt below, which places each token
after its criterion; a bias-free ``Linear(d, 3)`` reads the language model's final hidden
state at the three tokens and each head is taken from its own token's row (the diagonal):
VQ at ``<|VQ_reward|>`` output 0, MQ at ``<|MQ_reward|>`` output 1, TA at ``<|TA_reward|>``
output 2. The reference's "Overall" is VQ + MQ + TA.

Departures: the reference samples the video file at 2 fps; we get decoded frames without a
frame rate and take ``sample_frames`` evenly spaced ones (an odd count gets its last frame
repeated, as Qwen's video processor pads time). The reference can normalize each head by
statistics stored with its checkpoint; ``mean``/``std`` options (identity by default)
take them. The video layout is built from Qwen's image processor (``qwen_vl.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from unirl_stream.api import Prompt, ScoreBatch, UserInputError
from unirl_stream.rewards.base import check_media, frame_indices, resolve_device, to_floats

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

HEADS = ("VQ", "MQ", "TA")
TOKENS = ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]
PROMPT = """
You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.

**Visual Quality:**  
Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:
- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

Please provide the ratings of Visual Quality: <|VQ_reward|>
END

**Motion Quality:**  
Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:
- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).
- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).
- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.
- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.
- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.
- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.

Please provide the ratings of Motion Quality: <|MQ_reward|>
END

**Text Alignment:**  
Assess how well the video matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.
- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.
- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.

Textual prompt - {text_prompt}
Please provide the ratings of Text Alignment: <|TA_reward|>
END
"""  # noqa: W291 - the reference's trailing spaces are part of the prompt the model saw


class VideoAlignConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    checkpoint: str = "KwaiVGI/VideoReward"
    """Reward model weights: a folder (or hub repo in the local cache) of safetensors shards, or one file."""
    base: str = "Qwen/Qwen2-VL-2B-Instruct"
    """Qwen2-VL folder or hub id (local cache) for the config, tokenizer and image processor."""
    heads: list[Literal["VQ", "MQ", "TA"]] = msgspec.field(default_factory=lambda: list(HEADS))
    """The score is the sum of these heads (default: VQ + MQ + TA, the reference's Overall;
    DanceGRPO trains on VQ and MQ). All three are logged as terms."""
    mean: dict[str, float] = {}
    """Per head (VQ, MQ, TA), subtracted before ``std`` divides (the checkpoint's statistics)."""
    std: dict[str, float] = {}
    sample_frames: Annotated[int, Meta(ge=1)] = 8
    max_pixels: Annotated[int, Meta(ge=28 * 28)] = 448 * 448
    batch_size: Annotated[int, Meta(ge=1)] = 2
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"

    def __post_init__(self) -> None:
        for name, table in (("mean", self.mean), ("std", self.std)):
            if set(table) - set(HEADS):
                raise ValueError(f"{name} keys must be among {list(HEADS)}, got {sorted(table)}")
        if not self.heads or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads must name each of VQ, MQ, TA at most once, got {self.heads}")
        if any(v <= 0 for v in self.std.values()):
            raise ValueError("std values must be > 0")


class VideoAlign:
    name: ClassVar[str] = "videoalign"
    Config: ClassVar[type[VideoAlignConfig]] = VideoAlignConfig

    def __init__(self, config: VideoAlignConfig | None = None) -> None:
        import torch

        from unirl_stream.rewards.qwen_vl import load_reward_backbone

        self.config = config or VideoAlignConfig()
        self.batch_size = self.config.batch_size
        self.device = resolve_device(self.config.device)
        self.vl, head = load_reward_backbone(self.config.base, self.config.checkpoint, TOKENS, self.name,
                                             self.device, self.config.dtype, 28 * 28, self.config.max_pixels)
        weight = head.get("weight")
        hidden = self.vl.model.config.text_config.hidden_size
        if weight is None or tuple(weight.shape) != (3, hidden) or len(head) != 1:
            raise UserInputError(f"reward videoalign: options.checkpoint: expected rm_head.weight [3, {hidden}] "
                                 f"(no bias), found {[(k, list(v.shape)) for k, v in head.items()]}")
        self.head = weight.float().to(self.device)
        self.token_ids = torch.tensor(self.vl.tokenizer.convert_tokens_to_ids(TOKENS))

    def heads(self, inputs: dict[str, Any]) -> torch.Tensor:
        """[N, 3]: VQ, MQ, TA, each read at its own token."""
        import torch

        hidden = self.vl.model.model(**inputs, return_dict=True).last_hidden_state
        ids = inputs["input_ids"]
        rows = []
        for j, token in enumerate(self.token_ids.tolist()):
            at = ids == token
            if not bool((at.sum(1) == 1).all()):
                raise UserInputError(f"reward videoalign: every prompt must hold {TOKENS[j]} once")
            rows.append(hidden[at].float() @ self.head[j])
        return torch.stack(rows, dim=1)

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> ScoreBatch:
        import torch

        check_media(media, len(prompts), self.name)
        idx = frame_indices(media.shape[1], self.config.sample_frames)
        if len(idx) % 2:
            idx.append(idx[-1])
        videos = [media[i, idx].numpy() for i in range(media.shape[0])]
        texts = [PROMPT.format(text_prompt=p.text) for p in prompts]
        with torch.inference_mode():
            raw = self.heads(self.vl.video_inputs(videos, texts)).double().cpu()
        cfg = self.config
        mean = torch.tensor([cfg.mean.get(h, 0.0) for h in HEADS], dtype=torch.float64)
        std = torch.tensor([cfg.std.get(h, 1.0) for h in HEADS], dtype=torch.float64)
        values = (raw - mean) / std
        score = values[:, [HEADS.index(h) for h in cfg.heads]].sum(1)
        return ScoreBatch(scores=to_floats(score), terms={h: to_floats(values[:, k]) for k, h in enumerate(HEADS)})
