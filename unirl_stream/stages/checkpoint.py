"""Trainer checkpoints: ``RUN_DIR/checkpoints/step_NNNNNN/``, written atomically.

A checkpoint holds what the trainer needs to continue as if it had not stopped: the
trainable weights (safetensors bytes from the policy), the optimizer state, the optimizer
step and policy version, and the RNG states. The coordinator's cursor and gate are rebuilt
from the run's journals and this step on resume (``pipeline.coordinator.ResumePoint``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

STATE = "state.json"
ALGORITHM = "algorithm.safetensors"


def save(run_dir: Path, step: int, version: int, weights: bytes, optimizer_state: dict[str, Any],
         algorithm_state: bytes = b"") -> Path:
    """``weights``: the policy's exported bytes; ``optimizer_state``: full (unsharded) tensors,
    so any number of trainer ranks, in either memory mode, can resume from it;
    ``algorithm_state``: what the algorithm keeps besides them (NFT's EMA adapter)."""
    import torch

    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "weights.safetensors").write_bytes(weights)
    if algorithm_state:
        (tmp / ALGORITHM).write_bytes(algorithm_state)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
    state = {"step": step, "version": version}
    (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a crash mid-write never leaves a half checkpoint under step_*
    return final


def latest(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    found = sorted(p for p in root.glob("step_*") if (p / STATE).exists()) if root.exists() else []
    return found[-1] if found else None


def read_state(ckpt: Path) -> tuple[int, int]:
    """(optimizer step, policy version) of a checkpoint."""
    state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    return state["step"], state["version"]


def restore(ckpt: Path, policy: Any) -> tuple[int, int]:
    """Load weights (into the unsharded policy) and RNG; return (optimizer step, version)."""
    import torch

    step, version = read_state(ckpt)
    policy.load_weights((ckpt / "weights.safetensors").read_bytes())
    rng = torch.load(ckpt / "rng.pt", weights_only=False)  # our own file, written above
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return step, version


def algorithm_state(ckpt: Path) -> bytes:
    """The algorithm's own state (b'' when it keeps none)."""
    path = ckpt / ALGORITHM
    return path.read_bytes() if path.exists() else b""


def optimizer_state(ckpt: Path) -> dict[str, Any]:
    """The full optimizer state dict (``parallel.load_optimizer_state`` shards it if needed)."""
    import torch

    return torch.load(ckpt / "optimizer.pt", weights_only=True)
