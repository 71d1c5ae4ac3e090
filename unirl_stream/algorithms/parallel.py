"""Data parallelism for the trainer: one ``torch.distributed`` process group of N ranks.

Each rank replays its shard of the batch; losses are weighted by the *global* number of
(sample, step) terms and gradients are summed over ranks, so N ranks make exactly the update
one rank would make on the whole batch (up to float summation order). Rank 0 leads: it sends
the others small control messages (msgpack bytes in a uint8 tensor; never pickle) and they
follow. ``DataParallel.single()`` is the world of one: every collective is a no-op.

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
    def __init__(self, rank: int = 0, world: int = 1, group: Any = None, device: str = "cpu") -> None:
        self.rank, self.world, self.group = rank, world, group
        self.device = device  # where collective buffers live: NCCL needs them on the GPU

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
        dist.all_reduce(t, group=self.group)
        return t.tolist()

    def max(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t.tolist()

    def sum_gradients(self, params: Iterable[Any]) -> None:
        """Sum every parameter's gradient over ranks, in one flat buffer (a rank with an
        empty shard contributes zeros)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1).to(torch.float32) for p in params])
        dist.all_reduce(flat, group=self.group)
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
        dist.broadcast(size, src=0, group=self.group)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device) if self.leader
               else torch.empty(int(size.item()), dtype=torch.uint8, device=self.device))
        dist.broadcast(buf, src=0, group=self.group)
        return msgspec.msgpack.decode(buf.cpu().numpy().tobytes())

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join(rank: int, world: int, post: Any, read: Any, backend: str, timeout_s: float,
         host: str) -> DataParallel:
    """Join (rank 0: create) the process group. ``post(address)`` / ``read() -> address |
    None`` reach the control plane; ``host`` is this node's address for rank 0's store."""
    if world == 1:
        return DataParallel.single()
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
