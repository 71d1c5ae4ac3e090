"""GenEval: the rules against an independent implementation on synthetic detections; the
detector path (tiny OWLv2) against transformers' own post-processing; batching, NaN, errors."""

from __future__ import annotations

import math
import random

import msgspec
import numpy as np
import pytest
import torch
from reward_helpers import make_media

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.geneval import GenEval, prompt_meta
from unirl_stream.rewards.geneval_rules import COLORS, Detection, GenEvalMeta, evaluate, relations

pytestmark = pytest.mark.timeout(120)
CLASSES = ["cat", "dog", "car"]


def _ref_relative(a, b, t=0.1) -> set[str]:
    """GenEval's relative_position, on arrays as it is written there."""
    boxes = np.array([a, b], dtype=np.float64).reshape(2, 2, 2)
    ca, cb = boxes.mean(axis=-2)
    da, db = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - t * (da + db), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    return {r for r, ok in (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5), ("below", dy > 0.5)) if ok}


def _ref_evaluate(meta: dict, objects: dict) -> tuple[bool, int]:
    """GenEval's evaluate() loop on plain dicts: (correct, requirements met)."""
    correct, met, groups = True, 0, []
    for req in meta.get("include", []):
        found = objects.get(req["class"], [])[: req.get("count", 1)]
        ok = len(found) >= req.get("count", 1)
        if ok and "color" in req:
            ok = [o[2] for o in found].count(req["color"]) >= req.get("count", 1)
        if ok and "position" in req:
            rel, k = req["position"]
            ok = groups[k] is not None and all(rel in _ref_relative(o[0], t[0]) for o in found for t in groups[k])
        groups.append(found if ok else None)
        correct, met = correct and ok, met + ok
    for req in meta.get("exclude", []):
        ok = len(objects.get(req["class"], [])) < req["count"]
        correct, met = correct and ok, met + ok
    return correct, met


def _random_case(rng: random.Random) -> tuple[dict, dict]:
    include = []
    for i in range(rng.randint(1, 3)):
        req: dict = {"class": rng.choice(CLASSES), "count": rng.randint(1, 3)}
        if rng.random() < 0.4:
            req["color"] = rng.choice(COLORS[:3])
        if i and rng.random() < 0.6:
            req["position"] = [rng.choice(["left of", "right of", "above", "below"]), rng.randrange(i)]
        include.append(req)
    exclude = [{"class": rng.choice(CLASSES), "count": rng.randint(1, 4)} for _ in range(rng.randint(0, 1))]
    objects = {}
    for c in CLASSES:
        dets = []
        for _ in range(rng.randint(0, 4)):
            x, y, w, h = rng.uniform(0, 200), rng.uniform(0, 200), rng.uniform(5, 80), rng.uniform(5, 80)
            dets.append(((x, y, x + w, y + h), rng.random(), rng.choice(COLORS[:3])))
        objects[c] = sorted(dets, key=lambda d: -d[1])
    return {"include": include, "exclude": exclude}, objects


def test_rules_equal_an_independent_implementation_on_random_detections() -> None:
    rng = random.Random(0)
    outcomes = set()
    for _ in range(2000):
        meta, objects = _random_case(rng)
        found = {c: [Detection(b, s, col) for b, s, col in d] for c, d in objects.items()}
        verdict = evaluate(msgspec.convert(meta, GenEvalMeta), found)
        correct, met = _ref_evaluate(meta, objects)
        assert (verdict.strict == 1.0, verdict.met) == (correct, met), (meta, objects, verdict)
        assert verdict.total == len(meta["include"]) + len(meta["exclude"])
        outcomes.add((correct, met))
    assert len(outcomes) >= 6  # pass, fail and partial credit all occurred


def test_relations_by_hand() -> None:
    cat, dog = (0, 40, 20, 60), (100, 40, 120, 60)
    assert relations(cat, dog, 0.1) == {"left of"} and relations(dog, cat, 0.1) == {"right of"}
    assert relations((0, 0, 20, 20), (0, 100, 20, 120), 0.1) == {"above"}
    assert relations((0, 0, 20, 20), (2, 1, 22, 21), 0.1) == set()  # overlapping: no relation
    assert relations((0, 0, 20, 20), (60, 60, 80, 80), 0.1) == {"left of", "above"}  # diagonal: both


@pytest.fixture(scope="module")
def scorer(tiny_geneval) -> GenEval:
    return GenEval(msgspec.convert({**tiny_geneval, "batch_size": 8}, GenEval.Config))


ROWS = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}]},
        {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]},
        {"tag": "color_attr", "include": [{"class": "cat", "count": 1, "color": "red"}]},
        {"tag": "position", "include": [{"class": "dog", "count": 1},
                                        {"class": "cat", "count": 1, "position": ["left of", 0]}]}]


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(id=f"geneval:{i}", text="a photo", extra=ROWS[i % 4]) for i in range(n)]


def test_boxes_equal_transformers_post_processing(scorer: GenEval) -> None:
    media = make_media(2, 1, 48, 80, seed=4)
    meta = prompt_meta(_prompts(1)[0])  # one class: "cat"
    cfg = scorer.config
    scorer.config = msgspec.structs.replace(cfg, nms_iou=1.0, max_objects=10_000)  # keep every box
    try:
        ours = scorer.detect([media[0, 0], media[1, 0]], [meta, meta])
    finally:
        scorer.config = cfg
    tok = scorer.det_tokenizer(["a photo of a cat"], padding="max_length", max_length=16, return_tensors="pt")
    pixels = scorer.det_processor(images=[m.numpy() for m in media[:, 0]], return_tensors="pt")["pixel_values"]
    out = scorer.detector(input_ids=tok["input_ids"].repeat(2, 1), attention_mask=tok["attention_mask"].repeat(2, 1),
                          pixel_values=pixels)
    ref = scorer.det_processor.post_process_object_detection(out, threshold=cfg.threshold, target_sizes=[(80, 80)] * 2)
    for k in range(2):
        want = sorted((round(float(s), 5), *[round(float(v), 3) for v in b.clamp(0, 80)])
                      for s, b in zip(ref[k]["scores"], ref[k]["boxes"], strict=True))
        got = sorted((round(d.score, 5), *[round(v, 3) for v in d.box]) for d in ours[k]["cat"])
        assert got == want and len(got) > 0


def test_scores_batch_invariant_deterministic_and_in_range(scorer: GenEval, tiny_geneval) -> None:
    media, prompts = make_media(8, 1, 48, 64, seed=12), _prompts(8)
    whole = scorer.score(media, prompts).scores
    assert scorer.score(media, prompts).scores == whole
    small = GenEval(msgspec.convert({**tiny_geneval, "batch_size": 3}, GenEval.Config))
    split = RewardSet([RewardSpec(name="geneval")], [small]).score([p.id for p in prompts], media, prompts).terms["geneval"]
    assert max(abs(a - b) for a, b in zip(whole, split, strict=True)) < 1e-5
    assert all(v in (0.0, 0.5, 1.0) for v in whole) and len(set(whole)) > 1


def test_nan_logits_give_nan_scores(scorer: GenEval) -> None:
    bias = scorer.detector.class_head.logit_shift.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.fill_(float("nan"))
        result = RewardSet([RewardSpec(name="geneval", on_nan="drop")], [scorer]).score(
            ["a", "b"], make_media(2, 1, 32, 32), _prompts(2))
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert [b.sample_id for b in result.bad] == ["a", "b"] and all(map(math.isnan, result.totals))


def test_metadata_errors_name_the_prompt_and_field(scorer: GenEval) -> None:
    with pytest.raises(UserInputError, match=r"prompt p:0 has no include/exclude metadata"):
        scorer.score(make_media(1, 1, 32, 32), [Prompt(id="p:0", text="a cat")])
    bad = Prompt(id="p:1", text="x", extra={"include": [{"class": "cat", "count": 0}]})
    with pytest.raises(UserInputError, match=r"prompt p:1: Expected `int` >= 1 - at `\$\.include\[0\]\.count`"):
        scorer.score(make_media(1, 1, 32, 32), [bad])
