"""Several weighted rewards as one: ``RewardSet`` (what the reward stage holds).

``RewardSet.from_specs(recipe.reward)`` loads each ``[[reward]]`` scorer through the plugin
registry; ``score(ids, media, prompts)`` runs each scorer in chunks of its ``batch_size``,
and returns per-sample totals (sum of weight * term), every term's raw values, the
scorers' own sub-terms, and the samples whose score was NaN/inf/None. The caller (the
reward stage) applies each spec's ``on_nan``: ``raise_on_fail(result)`` raises a
RewardError naming sample id, scorer and value for ``fail`` terms and returns the samples
to drop (with their reasons) for ``drop`` terms.

A scorer may also have ``metrics() -> dict[str, float]`` (the ``remote`` plugin does: request
latency, server queue wait and depth, live endpoints, GPU utilisation); the set reads it
after each call and ``RewardResult.metrics()`` ships the values as
``reward_service/<term>/<key>``, which the reward stage puts on its metrics-bus tick.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from unirl_stream import registry
from unirl_stream.api import Prompt, RewardError, Scorer, UserInputError
from unirl_stream.rewards.base import is_bad
from unirl_stream.rewards.config import RewardSpec

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

log = logging.getLogger(__name__)


class BadScore(msgspec.Struct, frozen=True):
    """A NaN/inf/None value one scorer gave one sample."""

    sample_id: str
    scorer: str  # term name (the spec's name; "name#i" when a name appears twice)
    value: float | None
    on_nan: Literal["fail", "drop"]

    @property
    def reason(self) -> str:
        return f"reward {self.scorer} returned {self.value!r} for sample {self.sample_id}"


class RewardResult(msgspec.Struct):
    ids: list[str]
    totals: list[float]
    """sum(weight * term) per sample; NaN where any term is bad."""
    terms: dict[str, list[float | None]]
    """Each term's unweighted value per sample, keyed by term name."""
    sub_terms: dict[str, list[float]] = {}
    """Scorers' optional named sub-scores, keyed "term/sub" (logging only)."""
    bad: list[BadScore] = []
    seconds: dict[str, float] = {}
    """Wall time spent in each scorer for this call."""
    service: dict[str, float] = {}
    """Scorers' own counters for this call, keyed "term/key" (see the module docstring)."""

    def metrics(self) -> dict[str, float]:
        """Means over the finite values: ``reward/total``, ``reward/<term>``, sub-terms."""
        out: dict[str, float] = {}
        for key, values in [("total", self.totals), *self.terms.items(), *self.sub_terms.items()]:
            good = [float(v) for v in values if not is_bad(v)]
            if good:
                out[f"reward/{key}"] = sum(good) / len(good)
        out |= {f"reward_seconds/{k}": v for k, v in self.seconds.items()}
        out |= {f"reward_service/{k}": v for k, v in self.service.items()}
        return out


def raise_on_fail(result: RewardResult) -> dict[str, str]:
    """Raise RewardError for the first bad value of an ``on_nan = "fail"`` term; return
    ``{sample id: reason}`` of the samples to drop (``on_nan = "drop"`` terms)."""
    for b in result.bad:
        if b.on_nan == "fail":
            raise RewardError(
                f"{b.reason}; the run stops (on_nan = \"fail\"). Set on_nan = \"drop\" in this "
                f"[[reward]] table to drop such samples instead"
            )
    drops: dict[str, str] = {}
    for b in result.bad:
        drops[b.sample_id] = f"{drops[b.sample_id]}; {b.reason}" if b.sample_id in drops else b.reason
    return drops


def term_names(specs: Sequence[RewardSpec]) -> list[str]:
    """The spec's name, or ``name#i`` (i = its index) when the name appears twice."""
    counts: dict[str, int] = {}
    for s in specs:
        counts[s.name] = counts.get(s.name, 0) + 1
    return [s.name if counts[s.name] == 1 else f"{s.name}#{i}" for i, s in enumerate(specs)]


def build_scorer(spec: RewardSpec, where: str) -> Scorer:
    """Load, decode options, construct (the scorer loads its weights here)."""
    plugin = registry.load("rewards", registry.entry("rewards", spec.name, where=where).name)
    config = registry.decode_options(plugin, spec.options, f"{where}.options")
    scorer = plugin(config) if config is not None else plugin()
    for attr in ("score", "batch_size", "device"):
        if not hasattr(scorer, attr):
            raise UserInputError(f"{where}: reward plugin {spec.name!r} has no {attr!r} (not a Scorer)")
    return scorer


class RewardSet:
    def __init__(self, specs: Sequence[RewardSpec], scorers: Sequence[Scorer]) -> None:
        if len(specs) != len(scorers) or not specs:
            raise ValueError("RewardSet needs one scorer per spec, at least one")
        self.specs, self.scorers = list(specs), list(scorers)
        self.names = term_names(specs)

    @classmethod
    def from_specs(cls, specs: Sequence[RewardSpec], where: str = "reward") -> RewardSet:
        if not specs:
            raise UserInputError(f"{where}: at least one [[reward]] table is required")
        return cls(specs, [build_scorer(s, f"{where}[{i}]") for i, s in enumerate(specs)])

    def score(self, ids: Sequence[str], media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardResult:
        n = len(ids)
        if len(prompts) != n or media.shape[0] != n:
            raise UserInputError(
                f"reward: {n} ids, {len(prompts)} prompts, {media.shape[0]} media samples; "
                f"they must be equal"
            )
        terms: dict[str, list[float | None]] = {}
        subs: dict[str, list[float]] = {}
        seconds: dict[str, float] = {}
        service: dict[str, float] = {}
        for name, scorer in zip(self.names, self.scorers, strict=True):
            t0 = time.perf_counter()
            terms[name], sub = self._run(name, scorer, media, list(prompts))
            seconds[name] = time.perf_counter() - t0
            subs |= {f"{name}/{k}": v for k, v in sub.items() if len(v) == n}
            counters = getattr(scorer, "metrics", None)
            if callable(counters):
                service |= {f"{name}/{k}": float(v) for k, v in counters().items()}
        totals, bad = self._combine(list(ids), terms)
        result = RewardResult(list(ids), totals, terms, subs, bad, seconds, service)
        for key, value in result.metrics().items():
            log.debug("%s = %.6g over %d samples", key, value, n)
        return result

    def _run(
        self, name: str, scorer: Scorer, media: torch.Tensor, prompts: list[Prompt]
    ) -> tuple[list[float | None], dict[str, list[float]]]:
        bs = max(1, int(scorer.batch_size))
        values: list[float | None] = []
        subs: dict[str, list[float]] = {}
        for start in range(0, len(prompts), bs):
            chunk = prompts[start : start + bs]
            out = scorer.score(media[start : start + bs], chunk)
            scores = list(out.scores)
            if len(scores) != len(chunk):
                raise RewardError(
                    f"reward {name} returned {len(scores)} scores for {len(chunk)} samples"
                )
            values.extend(None if v is None else _as_float(v) for v in scores)
            for k, v in out.terms.items():
                subs.setdefault(k, []).extend(float(x) for x in v)
        return values, subs

    def _combine(
        self, ids: list[str], terms: dict[str, list[float | None]]
    ) -> tuple[list[float], list[BadScore]]:
        totals = [0.0] * len(ids)
        bad: list[BadScore] = []
        for name, spec in zip(self.names, self.specs, strict=True):
            for i, v in enumerate(terms[name]):
                if is_bad(v):
                    bad.append(BadScore(ids[i], name, v, spec.on_nan))
                    totals[i] = math.nan
                else:
                    totals[i] += spec.weight * float(v)  # type: ignore[arg-type]
        return totals, bad


def _as_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
