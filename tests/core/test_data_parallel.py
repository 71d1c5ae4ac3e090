"""Data-parallel training: 2 ranks (real processes, gloo) make the update 1 rank makes.

Both runs train the tiny two-expert Wan2.2's LoRA on the same sample ids, in the same order,
for 5 optimizer steps; each rank of the pair replays only its half of every batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
STEPS, BATCH = 5, 4


def _train(rank: int, world: int, board: str, out: str, mode: str = "replicate") -> None:
    sys.path.insert(0, str(HERE))
    from core_helpers import PROMPTS, build_policy, make_recipe, perturb_lora

    from unirl_stream.algorithms.config import AlgorithmConfig
    from unirl_stream.algorithms.losses import GRPO
    from unirl_stream.algorithms.parallel import DataParallel, full_optimizer_state, join, shard
    from unirl_stream.algorithms.train import make_optimizer, train_on_batch

    torch.set_num_threads(1)
    board_file = Path(board)
    dp = (join(rank, world, post=board_file.write_text,
               read=lambda: board_file.read_text() if board_file.exists() else None,
               backend="gloo", timeout_s=120, host="127.0.0.1") if world > 1 else DataParallel.single())
    policy = build_policy(make_recipe("two_expert", num_inference_steps=6, sde={"fraction": [0.0, 0.7]}))
    perturb_lora(policy, seed=3)
    if mode == "fsdp":
        shard(policy, dp)  # every block of both experts, then each expert
    cfg = AlgorithmConfig(micro_batch=1, updates_per_batch=2, clip_range=0.05, lr=3e-4)
    optimizer = make_optimizer(policy, cfg)
    losses = []
    for step in range(STEPS):
        seeds = [100 * step + k for k in range(BATCH)]  # the same sample ids on every rank
        batch = policy.rollout(PROMPTS, seeds)
        # not z-scored: a loss of -mean(A x ratio) ~ -1 compares relatively (zero-mean
        # advantages make it a cancellation near 0)
        batch["advantage"] = torch.tensor([0.4, 1.9, 0.7, 1.3]) * (1 + 0.1 * step)
        mine = dp.shard(BATCH)
        stats = train_on_batch(policy, GRPO(cfg), optimizer, PROMPTS[mine.start:mine.stop],
                               batch[mine.start:mine.stop], cfg, dp=dp)
        losses.append([s.loss for s in stats] + [stats[-1].grad_norm])
        if step == 2:  # a checkpoint mid-run gathers the state; training goes on after it
            full_optimizer_state(optimizer)
    weights = policy.export_weights()  # under fsdp a gather: every rank calls it
    state = full_optimizer_state(optimizer)
    if dp.leader:
        Path(out).write_text(json.dumps(losses))
        Path(out + ".weights").write_bytes(weights)
        torch.save(state, out + ".optim")
    dp.close()


def _weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(Path(path).read_bytes())


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One rank, no process group: the reference both modes are compared with."""
    out = str(tmp_path_factory.mktemp("one-rank") / "one.json")
    _train(0, 1, out + ".board", out)
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["replicate", "fsdp"])
def test_two_ranks_equal_one_rank_after_five_steps(one_rank: str, tmp_path: Path, mode: str) -> None:
    one, two = one_rank, str(tmp_path / "two.json")
    mp.start_processes(_train, args=(2, str(tmp_path / "board2"), two, mode), nprocs=2, start_method="spawn")
    l1, l2 = json.loads(Path(one).read_text()), json.loads(Path(two).read_text())
    losses1, losses2 = torch.tensor(l1)[:, :-1], torch.tensor(l2)[:, :-1]
    norms1, norms2 = torch.tensor(l1)[:, -1], torch.tensor(l2)[:, -1]
    loss_rel = ((losses1 - losses2).abs() / losses1.abs()).max().item()
    norm_rel = ((norms1 - norms2).abs() / norms1).max().item()
    w1, w2 = _weights(one + ".weights"), _weights(two + ".weights")
    assert set(w1) == set(w2) and len(w1) > 0
    w_rel = max(((w1[k] - w2[k]).abs().max() / w1[k].abs().max()).item() for k in w1)
    start = _weights_at_start()
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    print(f"{mode}: max relative difference: losses {loss_rel:.2e}, grad norms {norm_rel:.2e}, "
          f"LoRA weights {w_rel:.2e} (adapters moved by up to {moved:.2e})")
    assert norms1.min() > 0 and losses1.abs().min() > 0.1  # real losses and gradients
    assert moved > 1e-3  # training changed the adapters, so equal weights mean equal updates
    # Not bit for bit: the ranks sum gradients in another order ((g0+g1)+(g2+g3), not
    # ((g0+g1)+g2)+g3), and Adam amplifies that for near-zero gradient elements.
    assert loss_rel <= 1e-5 and norm_rel <= 1e-5 and w_rel <= 1e-5
    # The gathered optimizer state (what a checkpoint holds) is the one rank's, in its format.
    o1, o2 = torch.load(one + ".optim"), torch.load(two + ".optim")
    assert o1["state"].keys() == o2["state"].keys() and len(o1["state"]) == len(w1)
    for i, st in o1["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert type(o2["state"][i][key]) is torch.Tensor  # full tensors, not shards
            torch.testing.assert_close(o2["state"][i][key], st[key], rtol=1e-4, atol=1e-9)


def _weights_at_start() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(HERE))
    from core_helpers import build_policy, make_recipe, perturb_lora
    from safetensors.torch import load

    policy = build_policy(make_recipe("two_expert", num_inference_steps=6, sde={"fraction": [0.0, 0.7]}))
    perturb_lora(policy, seed=3)
    return load(policy.export_weights())
