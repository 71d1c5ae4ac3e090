"""Attention-kernel ablation of ``gpu_wan22.py``: our producer's rollout per ``model.attention``.

Eager (CUDA graphs, as an eager producer runs) and regionally compiled, each against the same
run's plain ``WanPipeline`` (diffusers' default attention). The kernel microbenchmark
(``attention_backends.py``) times self- and cross-attention alone; this is the same choice in
place, where the layers' other work and the cross-attention's short key length count too.
"""

from __future__ import annotations

from typing import Any

VARIANTS = ("native", "cudnn", "cudnn_self")


def phase_attention(ctx: Any, producer: Any, plain_s: float, compiled: bool) -> None:
    import torch
    from gpu_wan22_phases import _prompt, first_step

    from unirl_stream.models.attention import set_backend
    from unirl_stream.models.graphs import GraphedCalls

    tag = "regional" if compiled else "eager"

    def refresh() -> None:
        if compiled:
            torch._dynamo.reset()  # the blocks' graphs were traced with the previous kernels
        elif producer.graphs is not None:
            producer.graphs = GraphedCalls(producer._forward)  # graphs replay captured kernels

    for variant in VARIANTS if ctx.clock.cuda else ("native",):  # cuDNN: CUDA only
        n = set_backend(producer.experts, variant)
        refresh()
        t_first, _ = ctx.clock(lambda: first_step(producer))
        ctx.clock(lambda: producer.rollout([_prompt()], [1]))
        t, _ = ctx.clock(lambda: producer.rollout([_prompt()], [2]))
        c = {**ctx.cfg, "compile": tag, "attention": variant, "cudnn_layers": n}
        ctx.rows.add(c, "attention_first_step_s", t_first, "s")
        ctx.rows.add(c, "sampler_attention_s", t, "s")
        ctx.rows.add(c, "sampler_attention_over_plain", t / plain_s, "ratio")
        print(f"[{ctx.cfg['layout']} {tag}] attention {variant}: rollout {t:.2f}s ({t / plain_s:.3f}x plain)",
              flush=True)
    set_backend(producer.experts, producer.recipe.model.attention)
    refresh()
