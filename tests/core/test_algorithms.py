"""Flow-DPPO, DiffusionNFT and ReFL against hand computations on small tensors (fp32)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.dppo import FlowDPPO, trust_std
from unirl_stream.algorithms.nft import NFT, NFTConfig, ema_decay, nft_terms
from unirl_stream.algorithms.noise import gaussian
from unirl_stream.algorithms.refl import ReFL
from unirl_stream.api import Prompt
from unirl_stream.training import StepMeans

TOL = 1e-6
SHAPES = [(2, 3), (3, 2, 2, 2), (1, 4, 1, 3, 3)]


def _dppo(**opts: Any) -> FlowDPPO:
    return FlowDPPO(AlgorithmConfig(name="flow_dppo", behavior_weight_cap=None, options=opts))


def test_flow_dppo_mask_four_cases_and_gradient() -> None:
    # Four (sample, step) terms, one per case; the KL of rows 0-1 is above tau, rows 2-3 below.
    # row 0: r > 1, A > 0, KL >= tau -> masked (moving further out)
    # row 1: r < 1, A > 0, KL >= tau -> kept  (moving back in)
    # row 2: r < 1, A < 0, KL < tau  -> kept  (inside the region)
    # row 3: r < 1, A < 0, KL >= tau in the second column -> masked there
    logr = torch.tensor([[0.2, 0.1], [-0.3, 0.0], [-0.1, -0.2], [-0.05, -0.4]])
    new = logr.clone().requires_grad_(True)
    prox = torch.zeros(4, 2)
    adv = torch.tensor([1.0, 2.0, -1.5, -0.5])
    old_mu = torch.zeros(4, 2, 3)
    d = torch.tensor([[0.5, 0.0], [0.4, 0.0], [0.0, 0.0], [0.0, 0.6]])  # mean differences per term
    new_mu = old_mu + d[..., None]
    sig, nxt = torch.full((4, 2), 0.5), torch.full((4, 2), 0.4)
    obj = _dppo(kl_threshold=1e-3)
    obj.eta = 0.7
    loss, st = obj(new, prox, prox, adv, means=StepMeans(new_mu, old_mu, sig, nxt))
    s = 0.7 * math.sqrt(0.5 / 0.5) * math.sqrt(0.1)
    kl = (d**2) / (2 * s**2)
    keep = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    # row 0 col 1: r > 1 and A > 0 but KL = 0 < tau: kept; row 1 col 0: r < 1, A > 0: kept.
    assert float(kl[0, 0]) >= 1e-3 and float(kl[3, 1]) >= 1e-3
    expect = (keep * (-adv[:, None] * logr.exp())).mean()
    assert loss.item() == pytest.approx(expect.item(), abs=TOL)
    loss.backward()
    grad = keep * (-adv[:, None] * logr.exp()) / 8
    torch.testing.assert_close(new.grad, grad, rtol=0, atol=TOL)
    assert st.clip_frac == pytest.approx(2 / 8) and st.approx_kl == pytest.approx(kl.mean().item(), rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_flow_dppo_kl_and_trust_std_by_hand(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(len(shape))
    n, k = 2, 3
    new_mu, old_mu = torch.randn(n, k, *shape, generator=g), torch.randn(n, k, *shape, generator=g)
    sig = torch.tensor([[1.0, 0.8, 0.5], [0.9, 0.6, 0.3]])
    nxt = sig - 0.1
    obj = _dppo()
    obj.eta = 0.5
    kl = obj.step_kl(StepMeans(new_mu, old_mu, sig, nxt))
    for b in range(n):
        for j in range(k):
            s_ij, s_n = float(sig[b, j]), float(nxt[b, j])
            std = 0.5 * math.sqrt(s_ij / (1 - min(s_ij, 0.99))) * math.sqrt(s_ij - s_n)
            sq = float(((new_mu[b, j] - old_mu[b, j]) ** 2).double().mean())
            assert float(kl[b, j]) == pytest.approx(sq / (2 * std * std), rel=1e-5)
    assert torch.allclose(trust_std(sig, nxt, 0.5)[0, 0], torch.tensor(0.5 * math.sqrt(1 / 0.01) * math.sqrt(0.1)))
    plain = _dppo(kl_std="none").step_kl(StepMeans(new_mu, old_mu, sig, nxt))
    torch.testing.assert_close(plain, ((new_mu - old_mu) ** 2).mean(dim=tuple(range(2, new_mu.ndim))) / 2)


def test_flow_dppo_reads_the_proximal_means_and_weighs_by_behaviour() -> None:
    obj = FlowDPPO(AlgorithmConfig(name="flow_dppo", behavior_weight_cap=2.0))
    assert obj.needs == {"proximal", "proximal_means"} and obj.rollout(None).kind == "sde"
    new = torch.zeros(2, 1, requires_grad=True)
    beh = torch.tensor([[-0.1], [-2.0]])  # weights exp(0.1) and exp(2) capped at 2
    means = StepMeans(torch.zeros(2, 1, 2), torch.zeros(2, 1, 2), torch.full((2, 1), 0.5), torch.full((2, 1), 0.4))
    loss, _ = obj(new, beh, torch.zeros(2, 1), torch.tensor([1.0, 1.0]), means=means)
    assert loss.item() == pytest.approx(-(math.exp(0.1) + 2.0) / 2, abs=TOL)
    with pytest.raises(ValueError, match="proximal"):
        obj(new, beh, None, torch.ones(2))


def _nft_by_hand(x0: torch.Tensor, xt: torch.Tensor, t: float, vn: torch.Tensor, vo: torch.Tensor,
                 r: torch.Tensor, beta: float) -> list[float]:
    out = []
    for b in range(x0.shape[0]):
        terms = []
        for v in (beta * vn[b] + (1 - beta) * vo[b], (1 + beta) * vo[b] - beta * vn[b]):
            e = [float(u) for u in (xt[b] - t * v - x0[b]).flatten()]
            w = max(sum(abs(u) for u in e) / len(e), 1e-5)
            terms.append(sum(u * u for u in e) / len(e) / w)
        out.append(float(r[b]) * terms[0] / beta + (1 - float(r[b])) * terms[1] / beta)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_nft_positive_and_negative_terms_by_hand(shape: tuple[int, ...], beta: float) -> None:
    g = torch.Generator().manual_seed(7)
    x0, eps = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    t = 0.6
    xt = (1 - t) * x0 + t * eps
    vn, vo = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    r = torch.rand(shape[0], generator=g)
    got = nft_terms(x0, xt, t, vn, vo, r, beta)
    assert got.tolist() == pytest.approx(_nft_by_hand(x0, xt, t, vn, vo, r, beta), rel=1e-5, abs=TOL)
    # the adaptive weight is a constant: the gradient is that of the weighted squared error
    vn.requires_grad_(True)
    nft_terms(x0, xt, t, vn, vo, r, beta).sum().backward()
    assert torch.isfinite(vn.grad).all() and vn.grad.abs().sum() > 0


def test_ema_schedules_step_by_step() -> None:
    warm = NFTConfig(ema="warmup", ema_uprate=0.1, ema_uphold=0.5, ema_flat_steps=2)
    assert [ema_decay(warm, n) for n in range(9)] == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5])
    lin = NFTConfig(ema="linear", ema_uprate=0.25, ema_uphold=0.6)
    assert [ema_decay(lin, n) for n in range(5)] == pytest.approx([0, 0.25, 0.5, 0.6, 0.6])
    assert [ema_decay(NFTConfig(ema="constant", ema_decay=0.9), n) for n in (0, 5)] == [0.9, 0.9]


class LinearFlow:
    """A stand-in policy whose velocity is w * x + b (scalar parameters): NFT and ReFL need
    only ``velocity``, ``decode_frames`` and the Policy weights methods."""

    def __init__(self, w: float, b: float) -> None:
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.b = torch.nn.Parameter(torch.tensor(b))
        self.calls: list[tuple[float, bool]] = []

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.w, self.b]

    def velocity(self, prompts: Any, x: torch.Tensor, timesteps: torch.Tensor, guided: bool = False) -> torch.Tensor:
        self.calls.append((float(timesteps[0]), guided))
        return self.w * x + self.b

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[:, None, :, None, None].expand(-1, 1, -1, 1, 3) * 100.0

    def export_weights(self) -> bytes:
        return f"{float(self.w.detach()):.6f},{float(self.b.detach()):.6f}".encode()


def _ode_batch(x0: torch.Tensor, adv: list[float], sigmas: list[float]) -> Any:
    from tensordict import TensorDict

    n = x0.shape[0]
    return TensorDict({"latents": x0[:, None], "advantage": torch.tensor(adv), "seed": torch.arange(n) + 5,
                       "sigmas": torch.tensor([sigmas] * n)}, batch_size=[n])


def test_nft_step_loss_update_and_ema_by_hand() -> None:
    cfg = AlgorithmConfig(name="nft", updates_per_batch=1, micro_batch=2, max_grad_norm=1e9,
                          options={"time_fraction": 0.5, "ema": "constant", "ema_decay": 0.25, "beta": 1.0})
    algo = NFT(cfg)
    assert algo.rollout(None).kind == "ode"
    policy = LinearFlow(0.3, -0.1)
    algo.publish(policy)  # the EMA starts as the live adapter
    x0 = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.5, 0.5]])
    batch = _ode_batch(x0, [5.0, -2.5, 0.0], [1.0, 0.75, 0.5, 0.25, 0.0])
    times = algo._times([1.0, 0.75, 0.5, 0.25, 0.0])
    assert sorted(times) == [0.75, 1.0]  # int(4 * 0.5) = 2 of the rollout's sigmas, shuffled
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
    (st,) = algo.train_batch(policy, opt, [Prompt("p:0", "x")] * 3, batch)
    w, b = torch.tensor(0.3, requires_grad=True), torch.tensor(-0.1, requires_grad=True)
    r = torch.tensor([1.0, 0.25, 0.5])  # clamp(A / 5 / 2 + 1/2, 0, 1)
    total = 0.0
    for k, t in enumerate(times):
        eps = gaussian([5, 6, 7], (2,), "nft0", k)
        xt = (1 - t) * x0 + t * eps
        per = nft_terms(x0, xt, t, w * xt + b, (0.3 * xt - 0.1), r, 1.0)
        total = total + 5.0 * per.mean() / len(times)
    total.backward()
    assert st.loss == pytest.approx(float(total.detach()), rel=1e-5)
    live = [0.3 - 0.1 * float(w.grad), -0.1 - 0.1 * float(b.grad)]
    assert [float(policy.w.detach()), float(policy.b.detach())] == pytest.approx(live, rel=1e-5)
    # shadow <- 0.25 shadow + 0.75 live, and producers get the shadow
    ema = [0.25 * 0.3 + 0.75 * live[0], 0.25 * -0.1 + 0.75 * live[1]]
    assert [float(s) for s in algo.shadow] == pytest.approx(ema, rel=1e-5)
    assert algo.publish(policy) == f"{ema[0]:.6f},{ema[1]:.6f}".encode()
    assert [float(policy.w.detach()), float(policy.b.detach())] == pytest.approx(live, rel=1e-6)  # swapped back
    assert all(not guided for _, guided in policy.calls)  # CFG-free
    restored = NFT(cfg)
    restored.load_state(algo.state())
    assert restored.updates == 1 and [float(s) for s in restored.shadow] == pytest.approx(ema, rel=1e-6)


@pytest.mark.parametrize("mode", ["draft_k", "refl"])
def test_refl_window_gradient_by_hand(mode: str) -> None:
    steps = 2 if mode == "draft_k" else 1
    cfg = AlgorithmConfig(name="refl", updates_per_batch=1, micro_batch=4, max_grad_norm=1e9,
                          options={"mode": mode, "steps": steps, "late": [0.5, 1.0], "reward_scale": 2.0})
    algo = ReFL(cfg)
    sampling = type("S", (), {"num_inference_steps": 4})()
    assert algo.rollout(sampling).window == ((2, 3) if mode == "draft_k" else (2, 4))
    algo._reward = lambda frames, prompts: frames.mean(dim=(1, 2, 3, 4)) / 255.0
    from tensordict import TensorDict

    sig = [1.0, 0.75, 0.5, 0.25, 0.0]
    xs = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    first = torch.tensor([2, 2]) if mode == "draft_k" else torch.tensor([2, 3])
    batch = TensorDict({"latents": xs[:, None], "latent_steps": first[:, None], "sigmas": torch.tensor([sig] * 2),
                        "timesteps": torch.tensor([[s * 1000 for s in sig[:-1]]] * 2)}, batch_size=[2])
    policy = LinearFlow(0.3, -0.1)
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.0)
    (st,) = algo.train_batch(policy, opt, [Prompt("p:0", "x")] * 2, batch)
    w, b = torch.tensor(0.3, requires_grad=True), torch.tensor(-0.1, requires_grad=True)
    outs = []
    for row in range(2):
        x, i = xs[row], int(first[row])
        if mode == "draft_k":
            for j in range(steps):
                x = x + (sig[i + j + 1] - sig[i + j]) * (w * x + b)
        else:
            x = x - sig[i] * (w * x + b)
        f = x * 100.0
        outs.append(f.mean() / 255.0)
    loss = -2.0 * torch.stack(outs).mean()
    loss.backward()
    assert st.loss == pytest.approx(float(loss.detach()), rel=1e-5)
    assert [float(policy.w.grad), float(policy.b.grad)] == pytest.approx([float(w.grad), float(b.grad)], rel=1e-5)
    assert all(guided for _, guided in policy.calls)  # the window runs with sampling's guidance
