"""model.attention: the kernel each expert's attention processors use, set per processor."""

from __future__ import annotations

import pytest
from core_helpers import build_policy, make_recipe
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

from unirl_stream.models.attention import set_backend, stock_attention


@pytest.mark.timeout(120)
def test_backend_is_set_on_our_processors_not_process_wide() -> None:
    policy = build_policy(make_recipe("two_expert"))
    assert policy.recipe.model.attention == "native"  # the default
    assert {b.attn1.processor._attention_backend for e in policy.experts for b in e.blocks} == {None}
    default = _AttentionBackendRegistry.get_active_backend()[0]
    n_blocks = sum(len(e.blocks) for e in policy.experts)
    assert set_backend(policy.experts, "cudnn") == 2 * n_blocks  # self- and cross-attention
    procs = [b.attn1.processor for e in policy.experts for b in e.blocks]
    assert {p._attention_backend for p in procs} == {AttentionBackendName._NATIVE_CUDNN}
    assert _AttentionBackendRegistry.get_active_backend()[0] == default  # nothing else changed
    with stock_attention(policy.experts):
        assert {p._attention_backend for p in procs} == {None}
    assert {p._attention_backend for p in procs} == {AttentionBackendName._NATIVE_CUDNN}
    assert set_backend(policy.experts, "cudnn_self") == n_blocks
    cross = [b.attn2.processor for e in policy.experts for b in e.blocks]
    assert {p._attention_backend for p in procs} == {AttentionBackendName._NATIVE_CUDNN}
    assert {p._attention_backend for p in cross} == {None}
    assert set_backend(policy.experts, "native") == 0
    assert {p._attention_backend for p in procs + cross} == {None}
    with pytest.raises(Exception, match="needs a CUDA device"):
        build_policy(make_recipe("two_expert", model={"attention": "cudnn", "dtype": "bfloat16"}))
