"""LoRA: only adapter parameters learn; export -> load reproduces outputs exactly."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from core_helpers import PROMPTS, build_policy, make_recipe, perturb_lora


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
