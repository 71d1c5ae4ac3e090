"""LoRA adapters on the Wan2.2 experts (peft through diffusers' ``add_adapter``).

Experts are named ``high`` (``transformer``, t >= boundary) and ``low`` (``transformer_2``).
Exported weights are one safetensors blob holding every trained expert's peft state dict with
keys prefixed ``<expert>.`` (diffusers' ``save_lora_weights`` only saves the first expert;
FACTS.md). A trainer keeps adapter weights in fp32 even under a bf16 model: AdamW updates of
size lr * 1 on bf16 weights would round away (peft casts the input to the adapter's dtype). A
producer, which never trains, keeps them in the model's dtype: the published fp32 weights are
rounded once per load instead of every activation being cast to fp32 for two extra GEMMs, and
``fuse_for_inference`` runs its adapted linears in two GEMMs instead of peft's four kernels.
"""

from __future__ import annotations

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


def fuse_for_inference(model: Any) -> int:
    """A producer's adapted linears compute ``y = base(x); y += scale * (x A^T) B^T`` with the
    second GEMM accumulating into ``y`` (cuBLAS ``beta = 1``), where peft runs B's GEMM into a
    temporary, a multiply by the scale and an add: three passes over the output less per
    linear, the adapter's remaining cost at batch sizes past launch-bound (SD3.5-M 512x512 at
    batch 4: 1.08x plain with peft's path). Only for adapters in the base layer's dtype, and
    only without autograd in eval mode; anything else (training, disabled or merged adapters, extra
    arguments) goes through peft's own forward. Returns the number of linears fused."""
    from types import MethodType

    from peft.tuners.lora.layer import Linear

    n = 0
    for mod in model.modules():
        if (isinstance(mod, Linear) and ADAPTER in mod.lora_A and not mod.lora_variant
                and mod.lora_A[ADAPTER].weight.dtype == mod.base_layer.weight.dtype):
            mod.forward = MethodType(_inference_forward, mod)
            n += 1
    return n


def _inference_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    import torch

    if (args or kwargs or torch.is_grad_enabled() or self.training or self.disable_adapters or self.merged
            or self.active_adapters != [ADAPTER] or x.dtype != self.lora_A[ADAPTER].weight.dtype):
        return type(self).forward(self, x, *args, **kwargs)
    y = self.base_layer(x)
    h = torch.nn.functional.linear(x, self.lora_A[ADAPTER].weight)
    # view, not reshape: the in-place accumulate must land in y (a fresh, contiguous output)
    y.view(-1, y.shape[-1]).addmm_(h.view(-1, h.shape[-1]), self.lora_B[ADAPTER].weight.t(),
                                   alpha=self.scaling[ADAPTER])
    return y


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
