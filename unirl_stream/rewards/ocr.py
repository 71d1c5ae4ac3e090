"""OCR text-rendering reward: does the image show the text the prompt asks for?

reward = 1 - min(d, L) / L, with d the Levenshtein distance between the recognised text
and the target text and L the target's length (Flow-GRPO's OCR reward). Both strings are
case-folded and stripped of whitespace first (as Flow-GRPO; options turn this off).

Target text: the prompt's ``extra[text_field]`` (default ``"text"``) if present, else the
double-quoted spans of the prompt (``A sign that says "OPEN"`` -> ``OPEN``; several spans
are joined with a space). A prompt with neither is a UserInputError naming its id.

Engines: ``tesseract`` (Debian's tesseract-ocr through pytesseract; CPU, offline, the
default) and ``got`` (GOT-OCR-2.0 through transformers, ``stepfun-ai/GOT-OCR-2.0-hf``;
the GPU option, far better on stylised text).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from msgspec import Meta

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import FrameOptions, FrameScorer, resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

_QUOTED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')
_SPACE = re.compile(r"\s+")


class OCRConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    engine: Literal["tesseract", "got"] = "tesseract"
    text_field: str = "text"
    """Prompt ``extra`` field holding the target text (checked before quoted spans)."""
    ignore_case: bool = True
    ignore_space: bool = True
    lang: str = "eng"
    """tesseract language pack(s), e.g. "eng" or "eng+deu"."""
    psm: Annotated[int, Meta(ge=0, le=13)] = 6
    """tesseract page segmentation mode (6: one uniform block of text)."""
    workers: Annotated[int, Meta(ge=1)] = 1
    """tesseract processes run at once."""
    got_model: str = "stepfun-ai/GOT-OCR-2.0-hf"
    max_new_tokens: Annotated[int, Meta(ge=1)] = 256
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: Annotated[int, Meta(ge=1)] = 8


def target_text(prompt: Prompt, field: str = "text") -> str:
    value = prompt.extra.get(field)
    if isinstance(value, str) and value.strip():
        return value
    spans = [a or b for a, b in _QUOTED.findall(prompt.text)]
    if not spans:
        raise UserInputError(
            f"reward ocr: prompt {prompt.id} has no target text: put it in double quotes in "
            f"the prompt (a sign that says \"OPEN\") or in the prompt's {field!r} field"
        )
    return " ".join(spans)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_reward(recognised: str, target: str, ignore_case: bool = True, ignore_space: bool = True) -> float:
    """1 - normalized edit distance, in [0, 1]."""

    def norm(s: str) -> str:
        s = s.casefold() if ignore_case else s
        return _SPACE.sub("", s) if ignore_space else s.strip()

    r, t = norm(recognised), norm(target)
    if not t:
        return 1.0 if not r else 0.0
    return 1.0 - min(levenshtein(r, t), len(t)) / len(t)


class TesseractEngine:
    def __init__(self, cfg: OCRConfig) -> None:
        import pytesseract

        try:
            langs = set(pytesseract.get_languages(config=""))
        except (pytesseract.TesseractNotFoundError, OSError) as e:
            raise UserInputError(
                f"reward ocr: tesseract not found ({e}); install it: "
                f"apt-get install -y tesseract-ocr tesseract-ocr-eng, or use engine = \"got\""
            ) from None
        missing = [lang for lang in cfg.lang.split("+") if lang not in langs]
        if missing:
            raise UserInputError(
                f"reward ocr: options.lang: tesseract has no {missing} data (installed: "
                f"{sorted(langs)}); install tesseract-ocr-<lang>"
            )
        self.config = f"--psm {cfg.psm}"
        self.lang, self.workers = cfg.lang, cfg.workers

    def recognize(self, images: list[Any]) -> list[str]:
        import pytesseract

        def one(img: Any) -> str:
            return str(pytesseract.image_to_string(img, lang=self.lang, config=self.config))

        if self.workers == 1 or len(images) == 1:
            return [one(i) for i in images]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(one, images))


class GotEngine:
    """GOT-OCR-2.0 in transformers (plain-text OCR mode, greedy decoding)."""

    def __init__(self, cfg: OCRConfig, device: str) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from unirl_stream.rewards.clip_common import _missing, torch_dtype

        try:
            self.processor = AutoProcessor.from_pretrained(cfg.got_model, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(
                cfg.got_model, local_files_only=True, dtype=torch_dtype(cfg.dtype)
            )
        except (OSError, ValueError) as e:
            raise _missing("ocr", "got_model", "GOT-OCR-2.0 model", cfg.got_model, e) from None
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.device, self.max_new_tokens = device, cfg.max_new_tokens

    def recognize(self, images: list[Any]) -> list[str]:
        inputs = self.processor(images, return_tensors="pt").to(self.device)
        out = self.model.generate(
            **inputs,
            do_sample=False,
            tokenizer=self.processor.tokenizer,
            stop_strings="<|im_end|>",
            max_new_tokens=self.max_new_tokens,
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        return [str(t) for t in self.processor.batch_decode(new, skip_special_tokens=True)]


class OCRReward(FrameScorer):
    name: ClassVar[str] = "ocr"
    Config: ClassVar[type[OCRConfig]] = OCRConfig

    def __init__(self, config: OCRConfig | None = None) -> None:
        super().__init__(config)
        cfg: OCRConfig = self.config  # type: ignore[assignment]
        if cfg.engine == "got":
            self.device = resolve_device(cfg.device)
            self.engine: TesseractEngine | GotEngine = GotEngine(cfg, self.device)
        else:
            self.engine = TesseractEngine(cfg)
        self.last_texts: list[str] = []  # recognised text of the last call (debugging)

    def score_frames(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        import torch
        from PIL import Image

        cfg: OCRConfig = self.config  # type: ignore[assignment]
        targets = [target_text(p, cfg.text_field) for p in prompts]
        b, f = frames.shape[:2]
        arr = frames.cpu().contiguous().numpy()
        images = [Image.fromarray(arr[i, j]) for i in range(b) for j in range(f)]
        texts = self.engine.recognize(images)
        self.last_texts = texts
        rewards = [
            text_reward(texts[i * f + j], targets[i], cfg.ignore_case, cfg.ignore_space)
            for i in range(b)
            for j in range(f)
        ]
        return torch.tensor(rewards, dtype=torch.float64).view(b, f)
