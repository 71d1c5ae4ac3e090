"""RewardSet: loading through the registry, chunking, weights, terms, NaN handling."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
from reward_helpers import make_media, make_prompts

from unirl_stream.api import Prompt, RewardError, ScoreBatch, UserInputError
from unirl_stream.rewards.combine import RewardSet, raise_on_fail
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.jpeg import JpegCompressibility
from unirl_stream.rewards.simple import Brightness


class Scripted:
    """A scorer returning given values (by sample index within the call's prompts' ids)."""

    name: ClassVar[str] = "scripted"

    def __init__(self, values: dict[str, float | None], batch_size: int = 2) -> None:
        self.values, self.batch_size, self.device = values, batch_size, "cpu"
        self.calls: list[int] = []

    def score(self, media: torch.Tensor, prompts: list[Prompt]) -> ScoreBatch:
        self.calls.append(len(prompts))
        return ScoreBatch(scores=[self.values[p.id] for p in prompts], terms={"raw": [1.0] * len(prompts)})


def test_from_specs_loads_scorers_and_combines_with_weights() -> None:
    specs = [
        RewardSpec(name="brightness", weight=2.0, options={"batch_size": 3}),
        RewardSpec(name="jpeg_compressibility", weight=0.5),
        RewardSpec(name="brightness", weight=-1.0, options={"aggregate": "min"}),
    ]
    rs = RewardSet.from_specs(specs)
    assert rs.names == ["brightness#0", "jpeg_compressibility", "brightness#2"]
    assert isinstance(rs.scorers[1], JpegCompressibility) and rs.scorers[0].batch_size == 3
    media, prompts = make_media(5, 2, 32, 32), make_prompts(5)
    ids = [f"g@0::sample:{k}" for k in range(5)]
    res = rs.score(ids, media, prompts)
    b_mean = Brightness().score(media, prompts).scores
    b_min = Brightness(Brightness.Config(aggregate="min")).score(media, prompts).scores
    jpeg = JpegCompressibility().score(media, prompts).scores
    assert res.terms["brightness#0"] == b_mean and res.terms["brightness#2"] == b_min
    assert res.totals == pytest.approx([2 * a + 0.5 * j - c for a, j, c in zip(b_mean, jpeg, b_min, strict=True)])
    assert res.bad == [] and raise_on_fail(res) == {}
    m = res.metrics()
    assert m["reward/total"] == pytest.approx(sum(res.totals) / 5)
    assert m["reward/jpeg_compressibility"] == pytest.approx(sum(jpeg) / 5)


def test_scorers_run_in_their_batch_size_chunks() -> None:
    ids = [f"s{k}" for k in range(5)]
    s = Scripted({f"t:{k}": float(k) for k in range(5)}, batch_size=2)
    res = RewardSet([RewardSpec(name="scripted")], [s]).score(ids, make_media(5, 1, 8, 8), make_prompts(5))
    assert s.calls == [2, 2, 1]
    assert res.totals == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert res.sub_terms == {"scripted/raw": [1.0] * 5}


def test_bad_values_fail_naming_sample_scorer_and_value() -> None:
    ids = [f"q:1@0::sample:{k}" for k in range(4)]
    values = {"t:0": 1.0, "t:1": math.nan, "t:2": None, "t:3": math.inf}
    specs = [RewardSpec(name="scripted", on_nan="fail")]
    res = RewardSet(specs, [Scripted(values)]).score(ids, make_media(4, 1, 8, 8), make_prompts(4))
    assert [b.sample_id for b in res.bad] == ids[1:]
    assert res.totals[0] == 1.0 and all(math.isnan(t) for t in res.totals[1:])
    with pytest.raises(RewardError, match=r"reward scripted returned nan for sample q:1@0::sample:1; the run stops"):
        raise_on_fail(res)


def test_drop_policy_returns_reasons_per_sample() -> None:
    ids = ["a", "b", "c"]
    good = Scripted({"t:0": 1.0, "t:1": 2.0, "t:2": 3.0})
    flaky = Scripted({"t:0": 0.5, "t:1": None, "t:2": -math.inf})
    specs = [RewardSpec(name="good"), RewardSpec(name="flaky", on_nan="drop")]
    res = RewardSet(specs, [good, flaky]).score(ids, make_media(3, 1, 8, 8), make_prompts(3))
    drops = raise_on_fail(res)
    assert drops == {"b": "reward flaky returned None for sample b", "c": "reward flaky returned -inf for sample c"}
    assert res.totals[0] == 1.5


def test_wrong_score_count_and_bad_specs_are_loud() -> None:
    class Short(Scripted):
        def score(self, media, prompts):
            return ScoreBatch(scores=[1.0])

    with pytest.raises(RewardError, match="reward short returned 1 scores for 2 samples"):
        RewardSet([RewardSpec(name="short")], [Short({})]).score(["a", "b"], make_media(2, 1, 8, 8), make_prompts(2))
    with pytest.raises(UserInputError, match=r"reward\[0\]: unknown reward plugin 'nope'"):
        RewardSet.from_specs([RewardSpec(name="nope")])
    with pytest.raises(UserInputError, match=r"reward\[1\]\.options\.aggregate"):
        RewardSet.from_specs([RewardSpec(name="brightness"), RewardSpec(name="brightness", options={"aggregate": 3})])
    with pytest.raises(UserInputError, match="3 ids, 2 prompts"):
        RewardSet.from_specs([RewardSpec(name="brightness")]).score(["a", "b", "c"], make_media(2, 1, 8, 8), make_prompts(2))
