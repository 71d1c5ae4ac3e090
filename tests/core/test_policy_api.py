"""The wan22 plugin against the api.Policy contract: fields, hub-cache loading, options."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest
import torch
from core_helpers import PROMPTS, build_policy, make_recipe, perturb_lora
from torch.utils._python_dispatch import TorchDispatchMode

from unirl_stream import api
from unirl_stream.models.checkpointing import attention_ops
from unirl_stream.models.tiny import resolve_model_path


@pytest.mark.parametrize("layout", ["two_expert", "ti2v"])
def test_rollout_matches_declared_field_specs(layout: str) -> None:
    policy = build_policy(make_recipe(layout, sde={"selection": "random_k", "k": 3}))
    assert isinstance(policy, api.Policy)
    td = policy.rollout(PROMPTS[:2], [1, 2])
    specs = {s.name: s for s in policy.field_specs()}
    assert set(specs) == set(td.keys())
    for name, spec in specs.items():
        assert str(td[name].dtype) == f"torch.{spec.dtype}", name
        assert tuple(td[name].shape[1:]) == spec.shape, name
    hw = 32 if layout == "two_expert" else 64
    assert specs["media"].shape == (5, hw, hw, 3) and specs["log_probs"].shape == (3,)
    assert specs["latents"].shape[0] == 6  # random_k: 2K slots
    assert td.batch_size == torch.Size([2])


def test_hub_id_loads_from_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lay the tiny model out as the Hugging Face cache would hold a downloaded repo.
    repo = tmp_path / "hub" / "models--Wan-AI--Wan2.2-T2V-A14B-Diffusers"
    rev = "0" * 40
    shutil.copytree(resolve_model_path("tiny:two_expert"), repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    import huggingface_hub.constants

    # The hub library reads HF_HUB_CACHE at import; point the already-imported constant too.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    r = make_recipe("two_expert")
    r = msgspec.structs.replace(r, model=msgspec.structs.replace(r.model, path="Wan-AI/Wan2.2-T2V-A14B-Diffusers"))
    policy = build_policy(r)
    assert policy.components.path == repo / "snapshots" / rev
    assert len(policy.experts) == 2 and policy.spec.boundary_ratio == 0.875


class _AttentionCalls(TorchDispatchMode):
    """Counts the fused attention kernels' calls while active."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.n += func in attention_ops()
        return func(*args, **(kwargs or {}))


@pytest.mark.timeout(120)
def test_checkpointing_gives_the_same_gradients_and_keeps_attention() -> None:
    """Plain and attention-keeping checkpointing give the gradients of no checkpointing (bit
    for bit: the same kernels, one process); the backward recomputes the attention only under
    plain checkpointing."""
    grads, recomputed = [], {}
    for gc, saves in ((False, "attention"), (True, "nothing"), (True, "attention")):
        policy = build_policy(make_recipe("ti2v", num_inference_steps=4,
                                          model={"gradient_checkpointing": gc, "checkpoint_saves": saves}))
        perturb_lora(policy)
        td = policy.rollout(PROMPTS[:2], [1, 2])
        assert policy.experts[0].gradient_checkpointing is gc
        with _AttentionCalls() as forward:
            loss = policy.logprobs(PROMPTS[:2], td).sum()
        with _AttentionCalls() as backward:
            loss.backward()
        assert forward.n == 4  # one batched call of 2 blocks x (self + cross)
        recomputed[(gc, saves)] = backward.n
        grads.append([p.grad for p in policy.trainable_parameters()])
    assert recomputed == {(False, "attention"): 0, (True, "nothing"): 4, (True, "attention"): 0}
    for g in grads[1:]:
        for a, b in zip(grads[0], g, strict=True):
            assert torch.equal(a, b)


def test_text_embeddings_are_cached_by_prompt_id() -> None:
    policy = build_policy(make_recipe("two_expert", model={"options": {"text_cache_size": 2}}))
    calls = []
    inner = policy._encode

    def spy(texts):
        calls.append(list(texts))
        return inner(texts)

    policy._encode = spy
    e1 = policy.embed([PROMPTS[0], PROMPTS[0], PROMPTS[1]])
    assert calls == [[PROMPTS[0].text, PROMPTS[1].text]] and torch.equal(e1[0], e1[1])
    policy.embed([PROMPTS[1], PROMPTS[0]])
    assert len(calls) == 1  # both cached
    policy.embed([PROMPTS[2]])  # evicts the least recently used (PROMPTS[1])
    policy.embed([PROMPTS[0]])
    assert len(calls) == 2
    policy.embed([PROMPTS[1]])
    assert calls[-1] == [PROMPTS[1].text]
    with pytest.raises(msgspec.ValidationError):
        build_policy(make_recipe("two_expert", model={"options": {"nope": 1}}))
