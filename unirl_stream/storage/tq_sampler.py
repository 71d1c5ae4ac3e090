"""The sampler our transferqueue backend registers on TransferQueue's controller.

It runs inside the TransferQueue controller actor (unpickled there by reference, so it
lives in its own module that imports ``transfer_queue``). An ack sends a fetch whose
``sampling_config`` carries the acked keys; this sampler selects exactly those of them that
TransferQueue still considers ready and unconsumed for the task, and TransferQueue then
marks them consumed in its per-task ledger.
"""

from __future__ import annotations

from typing import Any

from transfer_queue import BaseSampler


class AckSampler(BaseSampler):
    def sample(
        self, ready_indexes: list[int], batch_size: int, *args: Any, **kwargs: Any
    ) -> tuple[list[int], list[int]]:
        partition = kwargs.get("partition")
        keys = kwargs.get("keys") or []
        if partition is None:
            return [], []
        ready = set(ready_indexes)
        chosen = [i for i in partition.kv_retrieve_indexes(keys) if i is not None and i in ready]
        return chosen, chosen
