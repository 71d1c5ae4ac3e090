"""``mooncake``: payloads in Mooncake Store (TCP by default), metadata in our index.

Metadata (ids, meta, readiness, leases, budget) lives in the shared index: a Ray actor with
use_ray=True, in-process otherwise. Payloads go straight between each process and Mooncake:
every field of every sample is one Mooncake object holding its raw bytes (the dtype/shape
header is the FieldInfo kept by the index). Writes use ``batch_put_from`` on the caller's
tensor memory, reads ``batch_get_into`` the rows of a freshly allocated batch tensor, so a
put and a get each move every byte once, with no pickling and no staging buffer.

Keys are ``<store prefix>/<sample id>/<field>/<write tag>``: Mooncake does not overwrite an
existing key, so an overwritable field gets a new key and the old one is removed after the
commit. Zero-byte values are not stored (Mooncake refuses empty objects).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from unirl_stream.api import StoreError
from unirl_stream.storage import codec
from unirl_stream.storage.base import IndexedStore, LocalLink, Located, Plane, RayLink, columns_of
from unirl_stream.storage.codec import FieldInfo
from unirl_stream.storage.mooncake_client import (
    ClientSettings,
    MasterProcess,
    close_shared,
    connect,
    probe,
    shared,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.storage.config import StoreConfig

_HINTS = {
    -200: " (no space left in the mounted segments: raise [store] options.segment_mb)",
    -704: " (object not found: removed, or lost with the client that held its segment)",
}


class MooncakeOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    master_address: str | None = None
    """host:port of an existing mooncake_master; None starts one on 127.0.0.1 (free port)."""
    metadata_server: str = "P2PHANDSHAKE"
    """Transfer-engine metadata: P2P handshake needs no server; or http://host:port/metadata."""
    protocol: Literal["tcp", "rdma"] = "tcp"
    device_name: str = ""
    """RDMA device(s), e.g. "mlx5_0"; empty lets Mooncake choose."""
    local_hostname: str = "127.0.0.1"
    """Address other clients reach this one at (set a routable IP on a multi-node cluster)."""
    segment_mb: float | None = None
    """Memory the holder mounts; default: 1.25 x budget + 64 MiB (Mooncake fragments)."""


class MooncakePlane(Plane):
    def __init__(self, settings: ClientSettings, prefix: str, segment: str) -> None:
        self.settings = settings
        self.prefix = prefix
        self.segment = segment  # preferred segment: the holder's (spills elsewhere if full)

    def _client(self) -> Any:
        return shared(self.settings)

    def _replicate(self) -> Any:
        from mooncake.store import ReplicateConfig

        rc = ReplicateConfig()
        rc.with_hard_pin = True  # never evicted: our budget, not Mooncake, bounds memory
        rc.preferred_segment = self.segment
        return rc

    def write(self, ids: list[str], cols: dict[str, torch.Tensor], infos: dict[str, FieldInfo]) -> Any:
        tag = uuid.uuid4().hex[:12]
        locs: list[dict[str, Any]] = [{} for _ in ids]
        keys: list[str] = []
        ptrs: list[int] = []
        who: list[tuple[str, str]] = []
        for name, col in cols.items():
            nb = infos[name].nbytes
            base = codec.rows(col).data_ptr() if nb else 0
            for i, sid in enumerate(ids):
                key = f"{self.prefix}/{sid}/{name}/{tag}" if nb else None
                locs[i][name] = key
                if key is not None:
                    keys.append(key)
                    ptrs.append(base + i * nb)
                    who.append((sid, name))
        if keys:
            sizes = [infos[name].nbytes for _, name in who]
            with _Registered(self, cols.values()):
                rcs = self._client().batch_put_from(keys, ptrs, sizes, self._replicate())
            bad = [(k, rc, w) for k, rc, w in zip(keys, rcs, who, strict=True) if rc != 0]
            if bad:
                self.free([k for k, rc in zip(keys, rcs, strict=True) if rc == 0])
                key, rc, (sid, name) = bad[0]
                raise StoreError(
                    f"put of sample {sid!r}: Mooncake refused field {name!r} (key {key!r}) with "
                    f"code {rc}{_HINTS.get(rc, '')}; nothing of the batch was written"
                )
        return locs

    def read(self, ids: list[str], fields: list[str], located: Located) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        keys: list[str] = []
        ptrs: list[int] = []
        sizes: list[int] = []
        who: list[tuple[str, str]] = []
        repeats: list[tuple[torch.Tensor, int, int]] = []  # (rows, dst, src)
        for name, infos, locs in columns_of(fields, located):
            info = codec.common_info(name, ids, infos)
            col = out[name] = codec.empty_column(info, len(ids))
            if not info.nbytes:
                continue
            col_rows = codec.rows(col)
            first: dict[str, int] = {}
            for i, (sid, key) in enumerate(zip(ids, locs, strict=True)):
                if key in first:  # a batch must not name a key twice (the copies go wrong)
                    repeats.append((col_rows, i, first[key]))
                    continue
                first[key] = i
                keys.append(key)
                ptrs.append(col_rows[i].data_ptr())
                sizes.append(info.nbytes)
                who.append((sid, name))
        if keys:
            with _Registered(self, out.values()):
                rcs = self._client().batch_get_into(keys, ptrs, sizes)
            for key, rc, size, (sid, name) in zip(keys, rcs, sizes, who, strict=True):
                if rc != size:
                    raise StoreError(
                        f"get of sample {sid!r}: Mooncake returned {rc} for field {name!r} "
                        f"(key {key!r}, expected {size} bytes){_HINTS.get(rc, '')}"
                    )
        for col_rows, dst, src in repeats:
            col_rows[dst].copy_(col_rows[src])
        return out

    def free(self, locs: list[Any]) -> None:
        keys = [k for k in locs if k]
        if keys:
            # force: Mooncake refuses removal within an object's read lease (~10 s) otherwise.
            self._client().batch_remove(keys, True)


class _Registered:
    """RDMA needs registered memory; TCP copies from/to any address (nothing to do)."""

    def __init__(self, plane: MooncakePlane, tensors: Any) -> None:
        self.client = plane._client() if plane.settings.protocol == "rdma" else None
        self.spans = [(t.data_ptr(), t.numel() * t.element_size()) for t in tensors if t.numel()]

    def __enter__(self) -> None:
        if self.client is not None:
            for ptr, size in self.spans:
                self.client.register_buffer(ptr, size)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            for ptr, _ in self.spans:
                self.client.unregister_buffer(ptr)


class MooncakeStore(IndexedStore):
    """Payloads in Mooncake Store; see the module docstring."""

    Config = MooncakeOptions
    backend = "mooncake"

    @classmethod
    def launch(cls, cfg: StoreConfig, options: Any = None, *, use_ray: bool) -> MooncakeStore:
        from unirl_stream.storage.base import decode_options

        opts = decode_options(cls.Config, options)
        budget = int(cfg.budget_mb * 2**20)
        segment = int((opts.segment_mb or cfg.budget_mb * 1.25 + 64) * 2**20)
        stops: list[Any] = []
        try:
            if opts.master_address is None:
                master = MasterProcess.start()
                stops.append(master.stop)
                stops.append(lambda: close_shared(master.address))
                address = master.address
            else:
                address = opts.master_address
                probe(address)
            settings = ClientSettings(
                address, opts.metadata_server, opts.protocol, opts.device_name,
                opts.local_hostname, segment,
            )
            link, seg_name = _index_and_holder(cfg, budget, settings, use_ray, stops)
        except BaseException:
            for stop in reversed(stops):
                stop()
            raise
        plane = MooncakePlane(settings, f"unirl/{uuid.uuid4().hex[:12]}", seg_name)
        store = cls(link, plane, cfg.put_timeout_s)
        store._finalizers.extend(stops)
        return store


def _index_and_holder(
    cfg: StoreConfig, budget: int, settings: ClientSettings, use_ray: bool, stops: list[Any]
) -> tuple[Any, str]:
    """The index plus the long-lived client that mounts the segment payloads live in."""
    if not use_ray:
        from unirl_stream.storage.index import SampleIndex

        holder = connect(settings, segment=True)
        stops.append(holder.close)
        return LocalLink(SampleIndex(budget, cfg.lease_s)), holder.get_hostname()
    from unirl_stream.storage.controller import start_index_actor

    actor = start_index_actor(budget, cfg.lease_s)
    # With our own master, wait for the unmount (~2 s) before the master stops; with a
    # shared one the actor unmounts and exits on its own.
    wait = bool(stops)
    stops.append(lambda: _retire(actor, wait))
    return RayLink(actor), RayLink(actor).call("mount_mooncake", settings)


def _retire(actor: Any, wait: bool) -> None:
    import ray

    from unirl_stream.storage.controller import stop_actor

    ref = actor.retire.remote()
    if wait and not ray.wait([ref], timeout=15)[0]:
        stop_actor(actor)
