"""Helpers shared by the model plugin tests (importable as ``models_helpers``)."""

from __future__ import annotations

from typing import Any

import msgspec

from unirl_stream.api import Prompt
from unirl_stream.recipe import Recipe

PROMPTS = [Prompt(id="m:0", text="a red cat"), Prompt(id="m:1", text="a dog running in snow"),
           Prompt(id="m:2", text="blue sky over the sea"), Prompt(id="m:3", text="an old tree")]


def make_recipe(name: str, path: str, *, hw: int = 64, lora: dict[str, Any] | None = None,
                sde: dict[str, Any] | None = None, seed: int = 0, **sampling: Any) -> Recipe:
    """A small recipe for plugin ``name`` on model ``path``; keywords override [sampling]."""
    samp: dict[str, Any] = dict(height=hw, width=hw, num_frames=1, num_inference_steps=6,
                                guidance_scale=4.0, eta=0.7, shift=3.0, samples_per_prompt=4,
                                sde={"fraction": [0.0, 1.0], **(sde or {})})
    samp.update(sampling)
    raw = {"run": {"name": "models", "total_steps": 1, "seed": seed},
           "model": {"name": name, "path": path, "max_sequence_length": 8, "options": {"decode_batch": 8},
                     "lora": {"rank": 4, "alpha": 8.0, "experts": ["high"], **(lora or {})}},
           "data": {"prompts": "prompts.txt"}, "sampling": samp}
    return msgspec.convert(raw, Recipe)


def perturb_lora(policy: Any, seed: int = 0, scale: float = 0.05) -> None:
    """Give the adapters non-trivial values (B starts at 0, which would hide LoRA bugs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def parity_gaps(policy: Any, prompts: list[Prompt], seeds: list[int]) -> tuple[float, float, float]:
    """Max |replay - rollout| log-prob gaps: whole batch, one sample at a time, one column at
    a time; also asserts the log-probs are real densities (not constant)."""
    import torch

    td = policy.rollout(prompts, seeds)
    assert td["log_probs"].std().item() > 1e-3
    new = policy.logprobs(prompts, td)
    assert new.requires_grad and new.shape == td["log_probs"].shape
    with torch.no_grad():
        alone = torch.cat([policy.logprobs(prompts[b : b + 1], td[b : b + 1]) for b in range(len(prompts))])
        cols = torch.cat([policy.logprobs(prompts, td, columns=[j]) for j in range(td["log_probs"].shape[1])], 1)
    ref = td["log_probs"]
    return tuple(float((x.detach() - ref).abs().max()) for x in (new, alone, cols))  # type: ignore[return-value]


def assert_same_weights(loaded: Any, ref: Any, names: tuple[str, ...] = ("text_encoder", "vae", "transformer")) -> None:
    """Every base weight of ``loaded``'s components (LoRA layers aside) equals ``ref``'s bit for bit."""
    import torch

    for name in names:
        got = {k.replace(".base_layer", ""): v for k, v in getattr(loaded, name).state_dict().items()
               if "lora_" not in k}
        want = getattr(ref, name).state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name


def brightness(media: Any, prompts: object) -> Any:
    """A cheap reward: mean pixel value of each sample's media in [0, 1]."""
    return media.float().mean(dim=(1, 2, 3, 4)) / 255.0


def brightness_gain(policy: Any, seed: int, *, lr: float = 2e-2, rounds: int = 16,
                    samples: int = 16) -> tuple[float, float, list[float]]:
    """Train ``policy`` on brightness (GRPO, one prompt, ``samples`` a group) for ``rounds``;
    returns (gain, spread, round rewards): the mean brightness gain on 16 fixed eval seeds
    (without updates exactly 0) and the untrained policy's sample std on them."""
    from unirl_stream.algorithms.config import AlgorithmConfig
    from unirl_stream.algorithms.losses import GRPO
    from unirl_stream.algorithms.noise import sample_seed
    from unirl_stream.algorithms.reference_loop import run_reference_loop
    from unirl_stream.algorithms.train import make_optimizer

    alg = AlgorithmConfig(lr=lr, clip_range=0.2, updates_per_batch=2, micro_batch=16, adv_clip=None)
    opt = make_optimizer(policy, alg)
    seeds = [sample_seed(4321, f"eval:{k}") for k in range(16)]
    before = brightness(policy.rollout([PROMPTS[0]] * 16, seeds)["media"], None)
    logs = run_reference_loop(policy, GRPO(alg), opt, [PROMPTS[0]], brightness, alg, rounds=rounds,
                              samples_per_prompt=samples, run_seed=seed, rollout_batch=16, per_step=False)
    after = brightness(policy.rollout([PROMPTS[0]] * 16, seeds)["media"], None)
    return float(after.mean() - before.mean()), float(before.std()), [round(log.reward_mean, 4) for log in logs]


def run_recipe(recipe: str, run_dir: Any, cwd: Any, steps: int, batch: int, *sets: str) -> tuple[float, float]:
    """One run of ``recipes/<recipe>.toml`` through the CLI (Ray actors); checks the ledger
    (every journaled sample id exactly once, ``steps`` x ``batch`` trained, staleness <= 1, the
    last checkpoint); returns (last-quarter minus first-quarter mean reward, first-quarter std)."""
    import json
    import statistics
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "unirl_stream.cli", "run", str(root / "recipes" / f"{recipe}.toml"),
         "--run-dir", str(run_dir), "--no-live", *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=300, cwd=cwd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]
    groups = [json.loads(x) for x in (run_dir / "groups.jsonl").read_text().splitlines() if x.strip()]
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)) == sum(g["size"] for g in groups)
    trained = sorted((r for r in rows if r["status"] == "trained"), key=lambda r: r["trained_at_version"])
    assert len(trained) == steps * batch and max(r["staleness"] for r in trained) <= 1
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))[-1] == f"step_{steps:06d}"
    q = len(trained) // 4
    first = [r["reward"] for r in trained[:q]]
    last = [r["reward"] for r in trained[-q:]]
    return statistics.mean(last) - statistics.mean(first), statistics.pstdev(first)
