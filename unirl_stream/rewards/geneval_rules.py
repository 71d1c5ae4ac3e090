"""GenEval's rules (Ghosh et al. 2023) on detections: presence, counts, colours, positions.

Per-prompt metadata is GenEval's own ``evaluation_metadata.jsonl`` row (the prompt file of a
recipe can be that file unchanged; see docs/rewards.md):

    {"prompt": "a photo of a red car left of a dog", "tag": "position",
     "include": [{"class": "dog", "count": 1},
                 {"class": "car", "count": 1, "color": "red", "position": ["left of", 0]}],
     "exclude": [{"class": "car", "count": 2}]}

- ``include``: at least ``count`` objects of ``class``; the ``count`` best-scoring ones must
  all have ``color`` (when given) and all stand in relation ``position = [relation, k]``
  ("left of", "right of", "above", "below") to every object matched by include entry k
  (which must itself have matched).
- ``exclude``: fewer than ``count`` objects of ``class`` (counting prompts use this to ask
  for exactly n).

A relation is read from box centres after shrinking the offset by ``position_threshold``
times the two boxes' summed extents per axis, as GenEval does; an offset that vanishes
means no relation. The score is 1/0 (``strict``: every requirement met, GenEval's
correctness) or the fraction of requirements met (``partial``: a denser RL signal).
This module is pure Python: the detector and colour model live in ``geneval.py``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Relation = Literal["left of", "right of", "above", "below"]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")


class Requirement(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    cls: str = msgspec.field(name="class")
    count: Annotated[int, Meta(ge=1)] = 1
    color: Literal[COLORS] | None = None  # type: ignore[valid-type]
    position: tuple[Relation, Annotated[int, Meta(ge=0)]] | None = None


class GenEvalMeta(msgspec.Struct, frozen=True):
    """The GenEval fields of a prompt row (other fields of the row are ignored)."""

    tag: str = ""
    include: list[Requirement] = []
    exclude: list[Requirement] = []


class Detection(msgspec.Struct, frozen=True):
    box: Box
    score: float
    color: str | None = None  # filled in for classes an include entry asks a colour of


class Verdict(msgspec.Struct, frozen=True):
    met: int
    total: int
    reasons: list[str]

    @property
    def strict(self) -> float:
        return 1.0 if self.met == self.total else 0.0

    @property
    def partial(self) -> float:
        return self.met / self.total if self.total else 1.0


def relations(a: Box, b: Box, threshold: float) -> set[str]:
    """Where box a stands relative to box b (image y grows downwards)."""
    ca, cb = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    extent = (abs(a[2] - a[0]) + abs(b[2] - b[0]), abs(a[3] - a[1]) + abs(b[3] - b[1]))
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    shrunk = [math.copysign(max(abs(o) - threshold * e, 0.0), o) for o, e in zip(offset, extent, strict=True)]
    if all(abs(s) < 1e-3 for s in shrunk):
        return set()
    norm = math.hypot(*offset)
    dx, dy = shrunk[0] / norm, shrunk[1] / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def evaluate(meta: GenEvalMeta, found: dict[str, list[Detection]], position_threshold: float = 0.1) -> Verdict:
    """``found``: detections per class, best score first (already thresholded)."""
    met, reasons = 0, []
    matched: list[list[Detection] | None] = []
    for i, req in enumerate(meta.include):
        objs = found.get(req.cls, [])[: req.count]
        why = _include_failure(req, objs, matched, position_threshold)
        matched.append(None if why else objs)
        if why:
            reasons.append(f"include[{i}]: {why}")
        else:
            met += 1
    for i, req in enumerate(meta.exclude):
        n = len(found.get(req.cls, []))
        if n >= req.count:
            reasons.append(f"exclude[{i}]: expected fewer than {req.count} {req.cls}, found {n}")
        else:
            met += 1
    return Verdict(met, len(meta.include) + len(meta.exclude), reasons)


def _include_failure(req: Requirement, objs: list[Detection], matched: list[list[Detection] | None],
                     threshold: float) -> str:
    if len(objs) < req.count:
        return f"expected {req.cls} >= {req.count}, found {len(objs)}"
    if req.color is not None:
        wrong = [o.color for o in objs if o.color != req.color]
        if wrong:
            return f"expected {req.color} {req.cls}, found {wrong}"
    if req.position is not None:
        relation, k = req.position
        if k >= len(matched) or matched[k] is None:
            return f"position relative to include[{k}], which did not match"
        for o in objs:
            for t in matched[k]:  # type: ignore[union-attr]
                if relation not in relations(o.box, t.box, threshold):
                    return f"expected {req.cls} {relation} include[{k}], found {sorted(relations(o.box, t.box, threshold))}"
    return ""
