"""Contracts between unirl-stream's components.

This module is the one place where the shapes of the system are written down: the sample
store, stages, policies (model plugins), scorers (reward plugins) and the small typed
values that pass between them. It imports nothing heavy
(no torch, no ray) so that the recipe validator, the CLI and the docs generator can load it
in milliseconds; tensor types appear only under ``TYPE_CHECKING``.

Implementations live beside it: ``storage/``, ``stages/``, ``models/``, ``rewards/``,
``algorithms/``. Three more contract modules sit next to it: ``control.py`` (what a stage
may ask of its run), ``events.py`` (the metrics bus) and ``training.py`` (algorithm
plugins). Anything that crosses a process boundary is either a msgspec Struct (msgpack on
our own sockets, never pickle) or a TensorDict in the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from tensordict import TensorDict

# --------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------
# prompt id  = "{prompt file stem}:{line index}"          e.g. "quickstart:3"
# group id   = "{prompt id}@{round}"  one group per (prompt, sampling round); a prompt is
#              sampled again in later rounds, and each round is its own GRPO group.
# sample id  = "{group id}::sample:{k}"                   k in [0, samples_per_prompt)
# The issue text writes sample ids as "{prompt_id}::sample:{k}"; with streaming a prompt is
# visited many times, so the round is part of the group id to keep sample ids unique.


def group_id(prompt_id: str, round_: int) -> str:
    return f"{prompt_id}@{round_}"


def sample_id(group: str, k: int) -> str:
    return f"{group}::sample:{k}"


def split_sample_id(sid: str) -> tuple[str, int]:
    """Return ``(group id, k)`` of a sample id; raises ValueError with the id otherwise."""
    group, sep, k = sid.rpartition("::sample:")
    if not sep or not k.isdigit():
        raise ValueError(f"not a sample id: {sid!r} (expected '<group>::sample:<k>')")
    return group, int(k)


def prompt_of_group(group: str) -> str:
    return group.rpartition("@")[0] or group


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
class UnirlError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code: ClassVar[int] = 1


class UserInputError(UnirlError):
    """Bad input: recipe, arguments, missing weights, bad sample data. CLI exit code 2."""

    exit_code = 2


class MissingWeightsError(UserInputError):
    """A model's or scorer's checkpoint is not on this machine (the message names the path
    and how to get it). ``validate`` reports it as a warning; ``run`` fails on it."""


class StoreError(UnirlError):
    """A store operation failed; the message names the sample id or the address."""


class StoreFullError(StoreError):
    """A write waited ``timeout`` seconds for budget and none was freed (backpressure)."""


class RewardError(UnirlError):
    """A scorer returned NaN/inf/None, or a remote scorer stayed unreachable."""


# --------------------------------------------------------------------------------------
# Sample store
# --------------------------------------------------------------------------------------
class SampleMeta(msgspec.Struct, frozen=True):
    """Small per-sample metadata, given on a sample's first write.

    It travels on the control path (the store's metadata index), never with the payloads.
    """

    group: str  # group id; claims by group wait until ``group_size`` members are ready
    group_size: int
    behavior_version: int = 0  # policy version of the weights that produced the sample


class FieldSpec(msgspec.Struct, frozen=True):
    """A declared field: writes must match dtype (a torch dtype name) and per-sample shape.

    ``shape`` entries of -1 are free. Undeclared fields are accepted as written.
    ``overwritable`` fields may be written again; others raise StoreError on a second write.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    overwritable: bool = False


class Claim(msgspec.Struct, frozen=True):
    """Samples leased to one consumer task until ``deadline`` (time.time() seconds).

    An unacked claim whose deadline passes is released: its samples become claimable by
    the task again. ``ids`` are ordered; with group claims, members of one group are
    contiguous and ordered by k.
    """

    task: str
    claim_id: str
    ids: tuple[str, ...]
    deadline: float


class TaskSpec(msgspec.Struct, frozen=True):
    """A consumer task: a stage claims samples that have every field in ``requires``
    (``by_group``: whole groups only). The arguments of ``SampleStore.register_task``."""

    name: str
    requires: tuple[str, ...]
    by_group: bool = False


# The fields the built-in stages share, by their public names: any stage (a plugin stage
# too) may read them; each is written by exactly one stage.
MEDIA = "media"  # uint8 [F, H, W, 3]: what scorers see (rollout)
REWARD = "reward"  # float32: the weighted total of the reward terms (reward)
TRAINABLE = "trainable"  # uint8: 0 = ended upstream, its ledger row is written; never trained (reward)
ADVANTAGE = "advantage"  # float32: normalised within the sample's group (reward, per group)


class TaskStats(msgspec.Struct):
    ready: int = 0  # claimable now
    leased: int = 0  # claimed, not yet acked or released
    consumed: int = 0  # acked (cumulative, includes deleted samples)


class StoreStats(msgspec.Struct):
    samples: int = 0  # samples currently stored
    bytes_used: int = 0
    budget_bytes: int = 0
    fields: dict[str, int] = {}  # field name -> samples that have it
    tasks: dict[str, TaskStats] = {}
    put_bytes_total: int = 0  # cumulative payload bytes written / read, for MB/s
    get_bytes_total: int = 0
    deleted_total: int = 0


@runtime_checkable
class SampleStore(Protocol):
    """Every stage talks to every other only through this.

    Keyed by sample id; each field of a sample is written once (unless declared
    overwritable) by whichever stage produces it. A consumer *task* (e.g. ``reward``,
    ``train``) registers which fields it requires; ``claim`` then hands out samples that
    have all of them and that this task has not consumed, under a lease. Several tasks
    consume the same sample independently, each exactly once (ack) or again after
    ``release``/lease expiry.

    Implementations must be safe to call from several threads and, through a handle,
    from several processes / Ray actors. Claim cost must not grow with the number of
    stored samples (keep per-task ready queues updated on write).
    """

    def declare(self, specs: Sequence[FieldSpec]) -> None:
        """Declare fields (dtype/shape checked on write). Idempotent for equal specs."""
        ...

    def register_task(self, task: str, requires: Sequence[str], by_group: bool = False) -> None:
        """Define a consumer task. Idempotent for the same arguments."""
        ...

    def put(
        self,
        ids: Sequence[str],
        fields: TensorDict | Mapping[str, torch.Tensor],
        meta: Sequence[SampleMeta] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Write fields (batch dim 0 = len(ids)). ``meta`` is required on a sample's first
        write. Blocks up to ``timeout`` s (None: the store's default) while the byte budget
        is full, then raises StoreFullError. A write of one sample larger than the whole
        budget, or with a bad dtype/shape/duplicate field, raises at once and writes
        nothing of the batch."""
        ...

    def claim(self, task: str, n: int, lease_s: float | None = None) -> Claim | None:
        """Lease up to ``n`` ready samples (by_group tasks: up to ``n`` whole groups).
        Returns None when nothing is ready (never blocks)."""
        ...

    def ack(self, claim: Claim, ids: Sequence[str] | None = None) -> None:
        """Mark (some of) a claim's samples consumed by its task."""
        ...

    def release(self, claim: Claim, ids: Sequence[str] | None = None) -> None:
        """Give (some of) a claim's samples back; they become claimable again."""
        ...

    def get(self, ids: Sequence[str], fields: Sequence[str]) -> TensorDict:
        """Read fields of samples (reads consume nothing). Unknown id -> StoreError."""
        ...

    def meta(self, ids: Sequence[str]) -> list[SampleMeta]: ...

    def delete(self, ids: Sequence[str]) -> None:
        """Remove samples and free their bytes; unknown ids are ignored."""
        ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------
class Prompt(msgspec.Struct, frozen=True):
    id: str  # "{file stem}:{index}"
    text: str
    extra: dict[str, Any] = {}  # other fields of a .jsonl/.json row (e.g. OCR target text)


# --------------------------------------------------------------------------------------
# Policies (model plugins, group ``unirl_stream.models``)
# --------------------------------------------------------------------------------------
@runtime_checkable
class Policy(Protocol):
    """What the rollout and trainer stages need from a model plugin.

    A policy is built from the recipe (``Policy.from_recipe(recipe, device=..., role=...)``)
    in the process that uses it; ``role`` is ``"producer"`` (rollout only: a policy may then
    run its adapters in the dtype of inference after each weight load) or ``"trainer"``.
    ``check(recipe)`` is a cheap classmethod run by the validator before any actor starts:
    it raises MissingWeightsError naming missing weights (path + how to get them), and
    UserInputError naming the recipe key for what this model cannot do (its geometry).

    Trajectories are TensorDicts with batch size [B]; which fields they hold is the
    policy's business (declared through ``field_specs``), but every policy writes
    ``media`` (uint8 [B, F, H, W, 3], what scorers see) and ``log_probs`` (fp32 [B, K]).

    A policy holds weights, not versions: the trainer owns the policy version, and whoever
    samples says which version its weights are (it picks MixGRPO's window; the store keeps
    it in ``SampleMeta.behavior_version``).
    """

    def field_specs(self) -> list[FieldSpec]: ...

    def rollout(self, prompts: Sequence[Prompt], seeds: Sequence[int], version: int = 0) -> TensorDict:
        """Sample one trajectory per (prompt, seed) with the current weights (policy
        version ``version``), no grad."""
        ...

    def logprobs(self, prompts: Sequence[Prompt], batch: TensorDict) -> torch.Tensor:
        """Replay: per-step log-probs [B, K] of the recorded transitions under the current
        weights, with autograd on. Routes each step to the expert used at sampling."""
        ...

    def ref_logprobs(self, prompts: Sequence[Prompt], batch: TensorDict) -> torch.Tensor:
        """Per-step log-probs under the reference policy (adapters disabled), no grad."""
        ...

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def export_weights(self) -> bytes:
        """The trainable weights (LoRA by default) as safetensors bytes."""
        ...

    def load_weights(self, blob: bytes) -> None: ...


# --------------------------------------------------------------------------------------
# Rewards (group ``unirl_stream.rewards``)
# --------------------------------------------------------------------------------------
class ScoreBatch(msgspec.Struct):
    scores: list[float]  # one per sample, same order as given
    terms: dict[str, list[float]] = {}  # optional named sub-scores, for logging only


@runtime_checkable
class Scorer(Protocol):
    """A reward model. ``Config`` (a msgspec Struct) decodes the recipe's options."""

    name: ClassVar[str]
    device: str
    batch_size: int

    def score(
        self, media: torch.Tensor, prompts: Sequence[Prompt]
    ) -> ScoreBatch:
        """``media``: uint8 [B, F, H, W, 3] (images are F = 1). Returns one float per
        sample. May return NaN/inf; the reward stage checks and fails loudly."""
        ...


@runtime_checkable
class DifferentiableScorer(Scorer, Protocol):
    """A scorer whose score can be back-propagated to the pixels (reward-feedback
    learning: ReFL, DRaFT-K decode the last sampling steps with gradient and ascend it).

    ``frames`` is what ``score`` gets, as floats carrying autograd: float [B, F, H, W, 3]
    on the uint8 scale [0, 255] (the caller clamps to it). Where ``score`` rounds to uint8
    (between PIL's resize passes), ``score_tensor`` rounds the same way forward and passes
    the gradient straight through, so ``score_tensor(media.float())`` equals
    ``score(media)`` (up to float reduction order) and gradients flow.
    """

    def score_tensor(self, frames: torch.Tensor, prompts: Sequence[Prompt]) -> torch.Tensor:
        """The [B] scores as a tensor with gradient (on the scorer's device)."""
        ...


# --------------------------------------------------------------------------------------
# Stages (group ``unirl_stream.stages``)
# --------------------------------------------------------------------------------------
class StepResult(msgspec.Struct):
    """What one ``Stage.step`` did; the runner turns it into metrics and spans."""

    processed: int = 0  # samples handled this step (0 = idle: nothing was ready)
    dropped: int = 0
    metrics: dict[str, float] = {}
    done: bool = False  # the stage has finished its work for this run
    policy_version: int | None = None  # the version of the weights the stage holds, if any


class Stage(Protocol):
    """A stage is one method: ``step`` does one unit of work against the store.

    Stages are built with ``Stage(ctx)`` where ``ctx`` is a ``stages.base.StageContext``;
    they never import each other and exchange nothing but store fields. The runner
    (in-process loop or Ray actor) calls ``step`` until ``done`` or the run stops. A stage
    class may declare the store tasks it claims from with a classmethod
    ``tasks(recipe) -> list[TaskSpec]``; the driver registers them before any stage starts.
    """

    def step(self) -> StepResult: ...
