"""LoRA: only adapter parameters learn; export -> load reproduces outputs exactly."""

from __future__ import annotations

from typing import Any

import pytest
import safetensors.torch
import torch
from core_helpers import PROMPTS, build_policy, make_recipe, perturb_lora

from unirl_stream.models.lora import peft_forward


def test_only_lora_parameters_receive_gradients() -> None:
    policy = build_policy(make_recipe("two_expert", model={"lora": {"experts": ["low"]}},
                                      sde={"fraction": [0.0, 1.0]}))
    perturb_lora(policy)
    td = policy.rollout(PROMPTS[:2], [1, 2])
    policy.logprobs(PROMPTS[:2], td).sum().backward()
    c = policy.components
    modules = {"text_encoder": c.text_encoder, "vae": c.vae, "high": policy.experts[0], "low": policy.experts[1]}
    with_grad = {f"{m}.{n}" for m, mod in modules.items() for n, p in mod.named_parameters() if p.grad is not None}
    lora = {f"low.{n}" for n, _ in policy.experts[1].named_parameters() if "lora_" in n}
    assert lora and with_grad == lora  # every adapter weight of the trained expert, nothing else
    assert all(p.grad.abs().sum() > 0 for p in policy.trainable_parameters())
    assert not any("lora_" in n for n, _ in policy.experts[0].named_parameters())  # no adapter on high
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())


def test_lora_export_then_load_into_fresh_model_reproduces_outputs() -> None:
    recipe = make_recipe("two_expert")
    trained = build_policy(recipe)
    perturb_lora(trained, seed=4, scale=0.1)
    blob = trained.export_weights()
    tensors = safetensors.torch.load(blob)
    assert {k.split(".")[0] for k in tensors} == {"high", "low"}
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in trained.trainable_parameters())
    fresh = build_policy(recipe)
    before = fresh.rollout(PROMPTS[:2], [3, 4])
    want = trained.rollout(PROMPTS[:2], [3, 4])
    assert not torch.equal(before["latents"], want["latents"])
    fresh.load_weights(blob)
    got = fresh.rollout(PROMPTS[:2], [3, 4])
    for key in want.keys():
        assert torch.equal(got[key], want[key]), key
    with torch.no_grad():
        assert torch.equal(fresh.logprobs(PROMPTS[:2], want), trained.logprobs(PROMPTS[:2], want))
    # Reference policy = adapters disabled = the base model (a fresh policy: B = 0).
    base = build_policy(recipe)
    with torch.no_grad():
        assert torch.equal(trained.ref_logprobs(PROMPTS[:2], want), base.logprobs(PROMPTS[:2], want))
        assert not torch.equal(trained.logprobs(PROMPTS[:2], want), base.logprobs(PROMPTS[:2], want))
    assert trained.experts[0].active_adapters()  # adapters re-enabled after ref_logprobs


def test_load_weights_rejects_foreign_blobs() -> None:
    two = build_policy(make_recipe("two_expert"))
    only_high = build_policy(make_recipe("two_expert", model={"lora": {"experts": ["high"]}}))
    with pytest.raises(ValueError, match="holds expert 'low'"):
        only_high.load_weights(two.export_weights())
    with pytest.raises(ValueError, match="does not match the low expert"):
        two.load_weights(only_high.export_weights())


def test_lora_init_is_seeded_by_run_seed() -> None:
    a = build_policy(make_recipe("ti2v", seed=1))
    b = build_policy(make_recipe("ti2v", seed=1))
    c = build_policy(make_recipe("ti2v", seed=2))
    assert a.export_weights() == b.export_weights() != c.export_weights()


def _producer_and_trainer(dtype: str) -> tuple[Any, Any]:
    from unirl_stream.models.wan22 import Wan22Policy

    recipe = make_recipe("two_expert", model={"dtype": dtype})
    trainer = build_policy(recipe)
    perturb_lora(trainer, seed=5, scale=0.1)
    producer = Wan22Policy.from_recipe(recipe, device="cpu", role="producer")
    producer.load_weights(trainer.export_weights())
    return producer, trainer


def _fused(policy: Any) -> list[Any]:
    return [m for e in policy.experts for m in e.modules() if "forward" in vars(m)]


@pytest.mark.timeout(120)
def test_fused_adapters_match_peft_in_float32() -> None:
    producer, trainer = _producer_and_trainer("float32")
    targets = [m for m in producer.experts[0].modules() if hasattr(m, "lora_A")]
    assert len(_fused(producer)) == len(_fused(trainer)) == 2 * len(targets) > 0
    want = trainer.rollout(PROMPTS[:2], [3, 4])
    # Both roles run the same fused kernels on the same fp32 weights: the same bits.
    got = producer.rollout(PROMPTS[:2], [3, 4])
    for key in want.keys():
        assert torch.equal(got[key], want[key]), key
    with peft_forward(trainer.experts):
        peft = trainer.rollout(PROMPTS[:2], [3, 4])
    # The accumulate's rounding order may differ from peft's by BLAS (measured 0.0 on a 2-core
    # AMD EPYC, where addmm rounds as peft's three kernels do); bound at fp32 noise.
    assert float((peft["latents"] - want["latents"]).abs().max()) < 2e-6
    assert float((peft["log_probs"] - want["log_probs"]).abs().max()) < 5e-5


def _grads(mod: Any, x: torch.Tensor, forward: Any) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
    a.grad = b.grad = None
    y = forward(x)
    (y.double() * torch.linspace(-1, 1, y.numel()).view(y.shape).double()).sum().backward()
    return [y.detach(), x.grad, a.grad, b.grad]


@pytest.mark.timeout(120)
def test_trainer_fused_adapter_backward_is_peft_s() -> None:
    """float64: the autograd Function's forward and gradients (x, A, B) are peft's to 1e-12."""
    _, trainer = _producer_and_trainer("float32")
    mod = _fused(trainer)[0].double()
    x = torch.randn(2, 5, mod.in_features, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fused = _grads(mod, x, mod)
    peft = _grads(mod, x, lambda t: type(mod).forward(mod, t))
    assert all(float(t.abs().max()) > 0 for t in fused)
    for got, want in zip(fused, peft, strict=True):
        assert float((got - want).abs().max() / want.abs().max()) < 1e-12
    with torch.no_grad():  # the no-grad path is the same arithmetic
        assert torch.equal(mod(x), fused[0])


@pytest.mark.timeout(120)
def test_fused_adapters_in_bfloat16_and_their_fallbacks() -> None:
    producer, trainer = _producer_and_trainer("bfloat16")
    mod, tmod = _fused(producer)[0], _fused(trainer)[0]
    assert mod.lora_A["default"].weight.dtype == torch.bfloat16
    assert tmod.lora_A["default"].weight.dtype == torch.float32  # the trainer's masters
    x = torch.randn(2, 7, mod.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    peft_forward_ = type(mod).forward
    with torch.no_grad():
        fused, ref = mod(x), peft_forward_(mod, x)
        # the trainer's fp32 masters, cast per call, give the producer's bits
        assert torch.equal(tmod(x), fused)
        exact = (mod.base_layer.weight.double() @ x.double().reshape(-1, x.shape[-1]).T).T
        a, b = mod.lora_A["default"].weight.double(), mod.lora_B["default"].weight.double()
        exact = exact + mod.scaling["default"] * (x.double().reshape(-1, x.shape[-1]) @ a.T @ b.T)
        if mod.base_layer.bias is not None:
            exact = exact + mod.base_layer.bias.double()
        exact = exact.reshape(fused.shape)
    delta = exact - ref.double()
    assert float(delta.norm()) > 0  # the adapter's contribution is present in both
    # One rounding of the sum instead of peft's three: no worse than peft against float64.
    err = lambda y: float((y.double() - exact).norm() / exact.norm())  # noqa: E731
    assert err(fused) <= err(ref) * 1.05 and err(fused) < 8e-3
    # Under autograd the trainer's Function: the same forward bits, fp32 gradients into the
    # masters within bf16 rounding of peft's fp32 adapter path.
    got = _grads(tmod, x, tmod)
    want = _grads(tmod, x, lambda t: type(tmod).forward(tmod, t))
    assert torch.equal(got[0], fused)
    assert got[2].dtype == got[3].dtype == torch.float32
    for g, w in zip(got[1:], want[1:], strict=True):  # measured 1.7e-3, 2.8e-3, 2.6e-3 (x, A, B)
        assert float((g.double() - w.double()).norm() / w.double().norm()) < 1e-2
    mod.enable_adapters(False)  # peft's per-layer switch: the base layer alone
    with torch.no_grad():
        assert torch.equal(mod(x), mod.base_layer(x))
