"""A reward with a calibrated cost, for pipeline benchmarks: mean brightness + sleep."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from unirl_stream.api import Prompt, ScoreBatch


class SyntheticRewardConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cost_s: Annotated[float, Meta(ge=0)] = 0.0
    """Seconds per scored sample (a sleep: holds no CPU)."""
    batch_size: Annotated[int, Meta(ge=1)] = 64
    nan_every: Annotated[int, Meta(ge=0)] = 0
    """Return NaN for every N-th scored sample (0: never); to test on_nan handling."""


class SyntheticReward:
    name: ClassVar[str] = "synthetic"
    Config = SyntheticRewardConfig
    device = "cpu"

    def __init__(self, config: SyntheticRewardConfig | None = None) -> None:
        self.config = config or SyntheticRewardConfig()
        self.batch_size = self.config.batch_size
        self._seen = 0

    def score(self, media: Any, prompts: Sequence[Prompt]) -> ScoreBatch:
        if self.config.cost_s:
            time.sleep(self.config.cost_s * len(prompts))
        scores = (media.float().flatten(1).mean(1) / 255.0).tolist()
        if self.config.nan_every:
            for i in range(len(scores)):
                self._seen += 1
                if self._seen % self.config.nan_every == 0:
                    scores[i] = float("nan")
        return ScoreBatch(scores=scores)
