"""Data parallelism for the trainer: one ``torch.distributed`` process group of N ranks.

Each rank replays its shard of the batch; losses are weighted by the *global* number of
(sample, step) terms and gradients are summed over ranks, so N ranks make exactly the update
one rank would make on the whole batch (up to float summation order). Rank 0 leads: it sends
the others small control messages (msgpack bytes in a uint8 tensor; never pickle) and they
follow. ``DataParallel.single()`` is the world of one: every collective is a no-op.

Two memory modes: ``replicate`` (every rank holds the whole model; the LoRA gradients are
all-reduced in one flat buffer) and ``fsdp`` (FSDP2 ``fully_shard`` per transformer block of
every expert and per expert: the frozen base and the fp32 LoRA masters are sharded, FSDP
reduce-scatters the gradients; it averages them over ranks, so ``grad_scale`` multiplies the
losses, which already carry their global weights, by the world size: the mean of N
world-scaled gradients is their sum. Not ``set_gradient_divide_factor(1)``: that takes a
PREMUL_SUM reduction, which gloo lacks). Under ``fsdp`` exporting weights and gathering
the optimizer state are collectives: every rank calls them at the same points.

The rendezvous: rank 0 opens a ``TCPStore`` on a free port of its node (port 0, so no fixed
port and no race) and posts ``host:port`` through the control plane; the others read it there.
Every collective has a timeout, so a rank that died can never leave the others hanging.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import msgspec


class DataParallel:
    def __init__(self, rank: int = 0, world: int = 1, device: str = "cpu") -> None:
        self.rank, self.world = rank, world
        self.device = device  # where collective buffers live: NCCL needs them on the GPU
        self.sharded = False  # FSDP2 owns the parameters and reduces (averages) their gradients

    @property
    def grad_scale(self) -> float:
        """What each rank's loss is multiplied by before backward (FSDP2 averages)."""
        return float(self.world) if self.sharded else 1.0

    @classmethod
    def single(cls) -> DataParallel:
        return cls()

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def sum_gradients(self, params: Iterable[Any]) -> None:
        """Sum every parameter's gradient over ranks, in one flat buffer (a rank with an
        empty shard contributes zeros)."""
        if self.world == 1 or self.sharded:
            return
        import torch
        import torch.distributed as dist

        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1).to(torch.float32) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def broadcast(self, message: Any = None) -> Any:
        """Rank 0's ``message`` on every rank (msgpack-encodable builtins)."""
        if self.world == 1:
            return message
        import torch
        import torch.distributed as dist

        data = msgspec.msgpack.encode(message) if self.leader else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device) if self.leader
               else torch.empty(int(size.item()), dtype=torch.uint8, device=self.device))
        dist.broadcast(buf, src=0)
        return msgspec.msgpack.decode(buf.cpu().numpy().tobytes())

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def shard(policy: Any, dp: DataParallel) -> None:
    """FSDP2 over ``dp``'s ranks: ``fully_shard`` each unit the policy names (its transformer
    blocks, then the expert that holds them). Call before the optimizer is made."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    units = getattr(policy, "fsdp_units", None)
    if units is None:
        raise ValueError(f"{type(policy).__name__} names no FSDP units (fsdp_units); use sharding = \"replicate\"")
    mesh = init_device_mesh(dp.device, (dp.world,))
    for root, blocks in units():
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(root, mesh=mesh)
    dp.sharded = True


def full_tensor(t: Any) -> Any:
    """A DTensor gathered whole (a collective); any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_optimizer_state(optimizer: Any) -> dict[str, Any]:
    """The optimizer's state dict with every sharded tensor gathered: the same format in
    both modes, so a checkpoint resumes with any number of ranks (a collective under fsdp)."""
    sd = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: copy them
    sd["state"] = {i: {k: full_tensor(v) for k, v in st.items()} for i, st in sd["state"].items()}
    return sd


def load_optimizer_state(optimizer: Any, sd: dict[str, Any]) -> None:
    """Load a full state dict; under fsdp each tensor is cut like the parameter it belongs to."""
    import torch
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in sd["state"].items():
        p = params[int(index)]
        if hasattr(p, "device_mesh"):
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    state[key] = distribute_tensor(value.to(p.device_mesh.device_type), p.device_mesh, p.placements)
    optimizer.load_state_dict(sd)


def join(rank: int, world: int, post: Any, read: Any, backend: str, timeout_s: float,
         host: str) -> DataParallel:
    """Join (rank 0: create) the process group. ``post(address)`` / ``read() -> address |
    None`` reach the control plane; ``host`` is this node's address for rank 0's store. A
    world of one makes a group too: FSDP2 needs one even on a single rank."""
    import time

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        store = dist.TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        post(f"{host}:{store.port}")
    else:
        deadline = time.time() + timeout_s
        while (address := read()) is None:
            if time.time() > deadline:
                raise TimeoutError(f"trainer rank {rank}: rank 0 posted no rendezvous address in {timeout_s:.0f} s")
            time.sleep(0.1)
        h, _, port = address.rpartition(":")
        store = dist.TCPStore(h, int(port), world, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return DataParallel(rank, world, device="cuda" if backend == "nccl" else "cpu")
