"""LoRA adapters on the Wan2.2 experts (peft through diffusers' ``add_adapter``).

Experts are named ``high`` (``transformer``, t >= boundary) and ``low`` (``transformer_2``).
Exported weights are one safetensors blob holding every trained expert's peft state dict with
keys prefixed ``<expert>.`` (diffusers' ``save_lora_weights`` only saves the first expert;
FACTS.md). A trainer keeps adapter weights in fp32 even under a bf16 model: AdamW updates of
size lr * 1 on bf16 weights would round away. A producer, which never trains, keeps them in
the model's dtype: the published fp32 weights are rounded once per load. ``fuse_adapters``
runs both roles' adapted linears in the model's dtype, two GEMMs accumulating into the base
layer's output (the trainer's masters cast per call, its backward an autograd Function),
where peft casts every activation to the adapter's fp32 and adds through temporaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from unirl_stream.algorithms.noise import derive_seed
from unirl_stream.models.config import LoraConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

EXPERT_NAMES = ("high", "low")
ADAPTER = "default"


def add_lora(model: Any, cfg: LoraConfig, seed: int, expert: str, dtype: torch.dtype | None = None) -> None:
    """Add a LoRA adapter in ``dtype`` (default fp32); its random init (A; B starts at 0) is
    seeded so every process that builds the policy from the same recipe starts from identical
    weights (drawn in fp32, then cast)."""
    import torch
    from peft import LoraConfig as PeftLoraConfig

    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), init_lora_weights=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("lora", seed, expert) % (2**32))
        model.add_adapter(peft_cfg, adapter_name=ADAPTER)
    n = 0
    for name, p in model.named_parameters():
        is_lora = "lora_" in name
        trains = is_lora and (dtype is None or dtype == torch.float32)
        p.requires_grad_(trains)
        if is_lora:
            p.data = p.data.to(dtype or torch.float32)
            n += 1
    if n == 0:
        raise ValueError(
            f"model.lora.target_modules {cfg.target_modules} matched no module of the {expert} "
            f"expert (Wan attention projections are named to_q, to_k, to_v, to_out.0)"
        )


def fuse_adapters(model: Any) -> int:
    """Route ``model``'s adapted linears through ``_fused_forward``; returns how many.

    ``y = base(x); y += scale * (x A^T) B^T`` with the second GEMM accumulating into ``y``
    (cuBLAS ``beta = 1``), the adapter weights cast to the activations' dtype (a no-op for a
    producer, whose adapters already are in it; a trainer's fp32 masters are rounded per call,
    64 x d elements). peft instead runs B's GEMM into a temporary, multiplies by the scale and
    adds (SD3.5-M 512x512 at batch 4: 1.08x plain), and casts every activation to the adapter's
    fp32 for a trainer (TI2V-5B: a rollout step 1.20x plain with fp32 adapters, 1.03x fused).
    Under autograd ``lora_autograd.LoraLinear`` gives the same forward and its exact backward;
    anything else (LoRA dropout in train mode, disabled or merged adapters, extra arguments)
    goes through peft's own forward."""
    from types import MethodType

    from peft.tuners.lora.layer import Linear

    n = 0
    for mod in model.modules():
        if isinstance(mod, Linear) and ADAPTER in mod.lora_A and not mod.lora_variant:
            mod.forward = MethodType(_fused_forward, mod)
            n += 1
    return n


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    import torch

    from unirl_stream.models.lora_autograd import lora_linear

    dropout = self.lora_dropout[ADAPTER]
    if (args or kwargs or self.disable_adapters or self.merged or self.active_adapters != [ADAPTER]
            or (self.training and isinstance(dropout, torch.nn.Dropout) and dropout.p > 0)
            or self.base_layer.weight.requires_grad):
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    return lora_linear(x, base.weight, base.bias, self.lora_A[ADAPTER].weight, self.lora_B[ADAPTER].weight,
                       self.scaling[ADAPTER])


def lora_parameters(model: Any) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def export_lora(experts: dict[str, Any]) -> bytes:
    """Safetensors bytes of the adapters of ``experts`` (name -> model), keys ``name.<key>``.

    Byte-deterministic (equal weights give equal bytes): the header's metadata is a hash map
    in safetensors, so it carries a single key; the policy version travels beside the blob."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    from unirl_stream.algorithms.parallel import full_tensor

    tensors = {}
    for name, model in experts.items():  # sharded (FSDP2) adapters are gathered: a collective
        for key, t in get_peft_model_state_dict(model, adapter_name=ADAPTER).items():
            tensors[f"{name}.{key}"] = full_tensor(t.detach()).to("cpu").contiguous()
    return save(tensors, metadata={"format": "pt"})


def import_lora(blob: bytes, experts: dict[str, Any]) -> None:
    """Load a blob from ``export_lora`` into the same experts; every key must match."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load

    tensors = load(blob)
    by_expert: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, rest = key.partition(".")
        if name not in experts:
            raise ValueError(f"weights blob holds expert {name!r}; this policy trains {sorted(experts)}")
        by_expert.setdefault(name, {})[rest] = t
    for name, model in experts.items():
        sd = by_expert.get(name, {})
        expected = set(get_peft_model_state_dict(model, adapter_name=ADAPTER))
        if set(sd) != expected:
            gap = sorted(expected ^ set(sd))[:3]
            raise ValueError(f"weights blob does not match the {name} expert's adapter (e.g. {gap})")
        result = set_peft_model_state_dict(model, sd, adapter_name=ADAPTER)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"weights blob: unexpected keys for {name}: {unexpected[:3]}")


@contextmanager
def peft_forward(models: Iterable[Any]) -> Iterator[None]:
    """``models``' adapted linears through peft's own forward while inside (undoes
    ``fuse_adapters``): what stock diffusers + peft run, for benchmarks' baselines."""
    fused = [m for model in models for m in model.modules() if "forward" in vars(m)]
    saved = [vars(m).pop("forward") for m in fused]
    try:
        yield
    finally:
        for m, f in zip(fused, saved, strict=True):
            m.forward = f
