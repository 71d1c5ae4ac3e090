"""``geneval``: GenEval-style compositional scoring with an open-vocabulary detector.

Each prompt carries GenEval metadata (``geneval_rules.py``: objects, counts, colours,
positions). Per frame: OWLv2 (``Owlv2ForObjectDetection``) is queried with
"a photo of a {class}" for every class the batch's prompts name; each box keeps the
best of its own prompt's classes, boxes under ``threshold`` (``counting_threshold`` for
``tag = "counting"``, as GenEval) are dropped, then per class a greedy NMS at ``nms_iou``
and at most ``max_objects``. Colours are CLIP zero-shot on each box crop over GenEval's
ten colours ("a photo of a {color} {class}"). The rules then give the score.

Departures from GenEval, which uses Mask2Former (an mmdet model, closed-vocabulary) and
masks the background of a crop before CLIP: OWLv2 is open-vocabulary and loads with
transformers; it returns boxes only, so crops keep their background; its scores are
calibrated differently, so the thresholds are options (GenEval's 0.3 / 0.9 by default);
OWLv2's boxes overlap far more than Mask2Former's, hence the NMS (GenEval: none).
A NaN anywhere in a frame's detector logits makes its score NaN (the reward set's
``on_nan`` decides), instead of reading as "nothing found".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import FrameOptions, FrameScorer, resolve_device
from unirl_stream.rewards.geneval_rules import COLORS, Detection, GenEvalMeta, evaluate

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


class GenEvalConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    detector: str = "google/owlv2-base-patch16-ensemble"
    """OWLv2 folder or hub id (local cache): model, image processor, tokenizer."""
    color_model: str = "openai/clip-vit-large-patch14"
    """CLIP (model + processor) for object colours, as GenEval (ViT-L/14)."""
    threshold: Annotated[float, Meta(ge=0, le=1)] = 0.3
    counting_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.9
    nms_iou: Annotated[float, Meta(gt=0, le=1)] = 0.5
    max_objects: Annotated[int, Meta(ge=1)] = 16
    position_threshold: Annotated[float, Meta(ge=0)] = 0.1
    score: Literal["strict", "partial"] = "partial"
    batch_size: Annotated[int, Meta(ge=1)] = 4
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def prompt_meta(prompt: Prompt) -> GenEvalMeta:
    """The prompt row's GenEval fields; UserInputError naming the prompt and field."""
    try:
        meta = msgspec.convert(prompt.extra, GenEvalMeta)
    except msgspec.ValidationError as e:
        raise UserInputError(f"reward geneval: prompt {prompt.id}: {e}") from None
    if not meta.include and not meta.exclude:
        raise UserInputError(f"reward geneval: prompt {prompt.id} has no include/exclude metadata "
                             f"(a GenEval metadata row: see docs/rewards.md)")
    return meta


def nms(dets: list[Detection], iou: float, keep: int) -> list[Detection]:
    out: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(_iou(d.box, o.box) <= iou for o in out):
            out.append(d)
        if len(out) == keep:
            break
    return out


def _iou(a: Any, b: Any) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class GenEval(FrameScorer):
    name: ClassVar[str] = "geneval"
    Config: ClassVar[type[GenEvalConfig]] = GenEvalConfig

    def __init__(self, config: GenEvalConfig | None = None) -> None:
        super().__init__(config)
        from transformers import AutoTokenizer, Owlv2ForObjectDetection, Owlv2ImageProcessorPil

        from unirl_stream.rewards.clip_common import (
            ImageGeometry,
            _missing,
            load_clip_model,
            load_clip_processor,
            torch_dtype,
        )

        cfg: GenEvalConfig = self.config  # type: ignore[assignment]
        self.device = resolve_device(cfg.device)
        try:
            self.detector = Owlv2ForObjectDetection.from_pretrained(cfg.detector, local_files_only=True,
                                                                    dtype=torch_dtype(cfg.dtype))
            self.det_processor = Owlv2ImageProcessorPil.from_pretrained(cfg.detector, local_files_only=True)
            self.det_tokenizer = AutoTokenizer.from_pretrained(cfg.detector, local_files_only=True)
        except (OSError, ValueError) as e:
            raise _missing(self.name, "detector", "OWLv2 detector", cfg.detector, e) from None
        self.detector = self.detector.eval().requires_grad_(False).to(self.device)
        proc = load_clip_processor(cfg.color_model, self.name, "color_model")
        self.clip_tokenizer, self.clip_geometry = proc.tokenizer, ImageGeometry.from_processor(proc.image_processor)
        self.clip = load_clip_model(cfg.color_model, self.name, "color_model", self.device, cfg.dtype)

    def score_frames(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        import torch

        cfg: GenEvalConfig = self.config  # type: ignore[assignment]
        metas = [prompt_meta(p) for p in prompts]
        b, f = frames.shape[:2]
        images = [frames[i, j] for i in range(b) for j in range(f)]
        found = self.detect(images, [metas[i] for i in range(b) for _ in range(f)])
        out = torch.empty(b * f, dtype=torch.float64)
        for k, (dets, meta) in enumerate(zip(found, [m for m in metas for _ in range(f)], strict=True)):
            if dets is None:
                out[k] = float("nan")
                continue
            verdict = evaluate(meta, dets, cfg.position_threshold)
            out[k] = verdict.strict if cfg.score == "strict" else verdict.partial
        return out.view(b, f)

    def detect(self, images: list[torch.Tensor], metas: list[GenEvalMeta]) -> list[dict[str, list[Detection]] | None]:
        """Per image: its prompt's classes -> detections (best first); None on NaN logits."""
        import torch

        cfg: GenEvalConfig = self.config  # type: ignore[assignment]
        classes = sorted({r.cls for m in metas for r in (*m.include, *m.exclude)})
        tok = self.det_tokenizer([f"a photo of a {c}" for c in classes], padding="max_length",
                                 max_length=int(self.detector.config.text_config.max_position_embeddings),
                                 truncation=True, return_tensors="pt")
        pixels = self.det_processor(images=[im.numpy() for im in images], return_tensors="pt")["pixel_values"]
        n, q = len(images), len(classes)
        dtype = next(self.detector.parameters()).dtype
        out = self.detector(input_ids=tok["input_ids"].repeat(n, 1).to(self.device),
                            attention_mask=tok["attention_mask"].repeat(n, 1).to(self.device),
                            pixel_values=pixels.to(self.device, dtype))
        logits = out.logits.float().view(n, -1, q)  # [N, patches, classes]
        boxes = out.pred_boxes.float()  # [N, patches, 4]: cx, cy, w, h of the padded square
        results: list[dict[str, list[Detection]] | None] = []
        for k, (image, meta) in enumerate(zip(images, metas, strict=True)):
            if not bool(torch.isfinite(logits[k]).all()):
                results.append(None)
                continue
            mine = sorted({r.cls for r in (*meta.include, *meta.exclude)})
            cols = torch.tensor([classes.index(c) for c in mine])
            scores, best = logits[k][:, cols].sigmoid().max(dim=1)
            side = float(max(image.shape[0], image.shape[1]))  # OWLv2 pads bottom/right to a square
            xyxy = torch.cat([boxes[k, :, :2] - boxes[k, :, 2:] / 2, boxes[k, :, :2] + boxes[k, :, 2:] / 2], 1) * side
            keep = cfg.counting_threshold if meta.tag == "counting" else cfg.threshold
            per: dict[str, list[Detection]] = {c: [] for c in mine}
            for p in torch.nonzero(scores > keep).flatten().tolist():  # strictly above, as transformers
                box = tuple(float(v) for v in xyxy[p].clamp(0, side))
                per[mine[int(best[p])]].append(Detection(box, float(scores[p])))  # type: ignore[arg-type]
            per = {c: nms(d, cfg.nms_iou, cfg.max_objects) for c, d in per.items()}
            results.append(self._colour(image, meta, per))
        return results

    def _colour(self, image: torch.Tensor, meta: GenEvalMeta, per: dict[str, list[Detection]]) -> dict[str, list[Detection]]:
        """Colour the detections of classes an include entry asks a colour of."""
        import torch

        from unirl_stream.rewards.clip_common import image_embeds, text_embeds

        wanted = {r.cls for r in meta.include if r.color is not None}
        for cls in wanted:
            dets = per[cls]
            if not dets:
                continue
            texts = [f"a photo of a {c} {cls}" for c in COLORS]
            txt = text_embeds(self.clip, self.clip_tokenizer, texts, self.device)
            dtype = next(self.clip.parameters()).dtype
            crops = []
            for d in dets:
                x0, y0, x1, y1 = (int(round(v)) for v in d.box)
                crop = image[min(y0, image.shape[0] - 1): max(y1, y0 + 1), min(x0, image.shape[1] - 1): max(x1, x0 + 1)]
                crops.append(self.clip_geometry(crop[None], self.device, dtype))
            sims = image_embeds(self.clip, torch.cat(crops)) @ txt.T
            per[cls] = [msgspec.structs.replace(d, color=COLORS[int(i)]) for d, i in zip(dets, sims.argmax(1), strict=True)]
        return per
