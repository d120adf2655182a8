"""Docker's devicemapper graph driver (moby v24.0.9 `daemon/graphdriver/devmapper`:
deviceset.go, with `pkg/devicemapper/devmapper.go`) on a dm-thin pool (the kernel's
`drivers/md/dm-thin.c`, `dm-thin-metadata.c`), as a driver model. Neither runs on this
machine (no device-mapper in its kernel): the model follows those sources step for step
and `tests/test_devicemapper.py` pins each order.

Devices: thin device 0 (`base`) holds an empty file system; the image's layer i is
device i+1, a snapshot of the layer below with the layer applied; a container is two
snapshots, `<id>-init` of the image's top layer with Docker's init files written
(daemon/initlayer) and `<id>` of that. The view shows the image at `images/image/` and
each container at `containers/<name>/`; file ops address a container by those paths.

Each file operation is a transaction of the file system inside the container's device
(`models.thinfs`): data blocks, a flush, the metadata block, a FUA write. Each 4 KiB
file-system write reaches the pool (`models.thinpool`) as dm-thin handles it: a virtual
block that maps nothing gets a new pool block (allocate on demand); one whose pool block
is shared with a snapshot gets a new block, with a copy of the old one first unless the
write covers the whole block; then the mapping. A flush or FUA commits the pool's
metadata (`commit_metadata`: the data device flushed, then the metadata, the superblock
last: `__commit_transaction`, `dm_tm_commit`). That commit orders the pool's devices
only: Docker's own files live on the host file system (a second device here) and a pool
commit does not make them durable. After a crash the pool is as of its last commit.

Docker's device transaction (`openTransaction` / `closeTransaction`): creating or
deleting a device first writes `transaction-metadata` (`writeMetaFile`: temp file,
write, fsync, rename, no fsync of the directory) with the next transaction id, then
sends the pool message (committed), writes the device's JSON the same way or removes it
(`removeMetadata`: not synced), and sets the pool's transaction id. At start-up a
transaction whose id is above the pool's is rolled back: the device is deleted from the
pool and its JSON removed.

Options: `block_size` (the pool's data block, 64 KiB to 1 GiB); `discard` (the container
file system's mount option, which Docker never sets: the blocks a transaction frees are
discarded after its commit, and the pool unmaps whole pool blocks only); `blkdiscard`
(Docker's dm.blkdiscard: a whole device discarded before it is deleted, with no commit
of its own; true by default with loop-lvm, false with a thin-pool device, the model's
default); `discard_passdown` (dm-thin's default: a discard reaches the data device at
once, before the unmapping is committed); `period_commit` (dm-thin's commit about once a
second, `do_waker`, which can land after any change of the in-core metadata, mid-op
included; false: only flushes and FUA writes commit); `flush_data_before_commit` (false
reproduces the fixed dm-thin bug that could commit a mapping before its data).

Not modelled (documented limits): the layer store's own files (layerdb mounts: the
docker-overlay2 model has them), deferred deletion on EBUSY, XFS (Docker's default file
system on devicemapper; the model's file system is an ext4-like journal), the base
device's `Initialized` flag and its re-creation (the pool is built before the workload;
crashes while it is made are not explored), and sharing decided by block time
(`__snapshotted_since`: the model keeps a reference count per pool block).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from models import syscalls as sc
from models.clients import syscall
from models.containers import CONTAINERS_VIEW, IMAGES_VIEW, route, view_scope
from models.driver import Driver, Mount, Option, OptionError, Recovery, handles
from models.plain import Plain, PlainMount
from models.steps import Step, StepLog, Unlink, replace_file
from models.thinfs import FS_BLOCK, META_BLOCK, CorruptFs, Image, decode, encode, mkfs, plan, tree_of
from models.thinpool import (
    AllocBlock,
    CommitMetadata,
    CommitMetadataUnflushed,
    CopyBlock,
    CreateSnap,
    CreateThin,
    DeleteThin,
    DiscardBlock,
    DiscardData,
    Flush,
    MapBlock,
    SetTransactionId,
    WriteBlock,
    allocated,
    devices,
    encode_metadata,
    mapping,
    read_slot,
    recover_pool,
    refcounts,
    transaction_id,
)
from models.tree import Dir, ErrorEntry, File, FsError, Node, Parts, Symlink, lookup, split
from models.union import union_view

META = "docker/devicemapper/metadata"
TRANSACTION_FILE = f"{META}/transaction-metadata"
IMAGE = "image"
DEFAULT_CONTAINER = "app"
INIT_SUFFIX = "-init"
#: Docker's init layer (daemon/initlayer/setup_unix.go): what every container's `<id>-init`
#: device holds over the image
INIT_LAYER = Dir({
    ".dockerenv": File(b"", 0o755),
    "dev": Dir({"console": File(b"", 0o755), "pts": Dir(mode=0o755), "shm": Dir(mode=0o755)}, 0o755),
    "etc": Dir({"hostname": File(b"", 0o755), "hosts": File(b"", 0o755), "resolv.conf": File(b"", 0o755),
                "mtab": Symlink("/proc/mounts")}, 0o755),
    "proc": Dir(mode=0o755),
    "sys": Dir(mode=0o755),
}, 0o755)
POOL = "pool"  # a commit's scope: the pool's devices (`__commit_transaction`, `dm_tm_commit`)
MIB = 1 << 20


def _block_size(value: Any) -> int:
    if value % (64 * 1024) or not 64 * 1024 <= value <= 1024 * MIB:
        raise OptionError("option 'block_size' must be a multiple of 64 KiB from 64 KiB to 1 GiB (dm-thin)")
    return int(value)


def _read(root: Dir, path: str) -> dict[str, str]:
    node = lookup(root, split(path))
    if not isinstance(node, File):
        return {}
    out = {}
    for line in node.content.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


@dataclass
class PoolWrites:
    """Pool blocks freed since the last commit: not reused until it (the committed state
    must stay intact)."""

    freed: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class RunContainer(sc.Syscall):
    """`docker run`: a snapshot of the image's top layer for the container."""

    container: str
    NAME: ClassVar[str] = "run"


@dataclass(frozen=True)
class RemoveContainer(sc.Syscall):
    """`docker rm`: the container's device goes."""

    container: str
    NAME: ClassVar[str] = "rm-container"


class DeviceMapperMount(Mount):
    """The pool and Docker's device set of one run."""

    # -- layout --------------------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        """The pool before the workload, made with the driver's own steps: the base
        device with an empty file system, a snapshot per layer with the layer applied,
        and container `app` unless the workload runs its own, all committed."""
        self.slots = self.options["block_size"] // FS_BLOCK
        self.pool = PoolWrites()
        self.container_fs: dict[str, PlainMount] = {}  # a running container's file system
        docker = Dir({"devicemapper": Dir({"metadata": Dir()})})
        log = StepLog(Dir({"pool": Dir({"data": Dir()}), "docker": docker}))
        s = self.pool
        self.create_device(s, log, "base", None)
        self.write_fs(s, log, 0, None, mkfs())
        below = 0
        for i in range(len(layers)):
            below = self.create_device(s, log, f"layer{i}", below)
            self.apply_tree(s, log, below, union_view(list(reversed(layers[: i + 1]))))
        self.top = below  # the device of the image's top layer
        if not any(op.kind == "run" for op in ops):
            self.create_container(s, log, DEFAULT_CONTAINER, upper)
        self.pool = PoolWrites()
        return log.root

    def device(self, parts: Parts) -> str:
        """Two devices: the pool (its data and metadata devices, and the kernel's
        in-core metadata) and the host file system that holds Docker's own files
        (`/var/lib/docker/devicemapper/metadata`). A pool commit orders the first only."""
        return "pool" if parts and parts[0] in ("pool", "mem") else "docker"

    # -- reading devices -----------------------------------------------------------------

    def read_fs_block(self, root: Dir, dev_map: dict[int, int], k: int) -> bytes:
        v, slot = divmod(k, self.slots)
        p = dev_map.get(v)
        data = read_slot(root, p, slot) if p is not None else None
        return data if data is not None else b"\0" * FS_BLOCK

    def fs_image(self, root: Dir, dev: int) -> Image:
        dev_map = mapping(root, dev)
        if dev_map is None:
            raise CorruptFs(f"thin device {dev} does not exist")
        return decode(self.read_fs_block(root, dev_map, META_BLOCK).rstrip(b"\0"))

    def fs_tree(self, root: Dir, dev: int) -> Node:
        try:
            image = self.fs_image(root, dev)
        except CorruptFs as e:
            return ErrorEntry(errno.EUCLEAN, f"thin device {dev}: {e}")
        dev_map = mapping(root, dev) or {}
        return tree_of(image, lambda k: self.read_fs_block(root, dev_map, k))

    def device_of(self, root: Dir, device_hash: str) -> int | None:
        value = _read(root, f"{META}/{device_hash}").get("device_id")
        return int(value) if value is not None and value.isdigit() else None

    def view(self, root: Dir) -> Dir:
        containers: dict[str, Node] = {}
        meta = lookup(root, split(META))
        for name in sorted(meta.entries) if isinstance(meta, Dir) else []:
            if name.startswith("ctr-") and not name.endswith(INIT_SUFFIX):
                dev = self.device_of(root, name)
                shown = self.fs_tree(root, dev) if dev is not None else ErrorEntry(
                    errno.EIO, f"{META}/{name} is unreadable")
                containers[name.removeprefix("ctr-")] = shown
        image = self.fs_tree(root, self.top)
        return Dir({CONTAINERS_VIEW: Dir(containers), IMAGES_VIEW: Dir({IMAGE: image})})

    # -- system calls --------------------------------------------------------------------

    def new_lifetime(self) -> None:
        self.container_fs = {}
        self.pool = PoolWrites()

    def execute(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        """The pool's own ops by their handlers; a file op goes to its container."""
        try:
            if type(call) in self.HANDLERS:
                return self.perform(call, log)
            return self.fs_call(self.pool, log, call)
        except FsError as e:
            return sc.fail(e.errno)

    @handles(RunContainer)
    def run_container(self, call: RunContainer, log: StepLog) -> None:
        self.run(self.pool, log, call.container)

    @handles(RemoveContainer)
    def remove_container(self, call: RemoveContainer, log: StepLog) -> None:
        self.rm_container(self.pool, log, call.container)

    @handles(sc.Sync, sc.Syncfs)
    def sync(self, call: sc.Syscall, log: StepLog) -> None:
        self.commit(self.pool, log)  # every op ends committed: nothing is dirty

    def fs_call(self, s: PoolWrites, log: StepLog, call: sc.Syscall) -> sc.SysResult:
        """A system call on a container's file system: plain semantics on its tree,
        then the transaction that writes the change to the device."""
        container, inner = route(call)
        dev = self.device_of(log.root, f"ctr-{container}")
        if dev is None or dev not in devices(log.root):
            raise FsError(errno.ENOENT, f"{CONTAINERS_VIEW}/{container}")
        tree = self.fs_tree(log.root, dev)
        if not isinstance(tree, Dir):
            raise FsError(errno.EIO, f"{CONTAINERS_VIEW}/{container}")
        fs = self.container_fs.get(container)
        if fs is None:
            fs = self.container_fs[container] = Plain().mount([])
        scratch = StepLog(tree)
        result = fs.execute(inner, scratch)
        if scratch.root is not tree:
            self.apply_tree(s, log, dev, scratch.root, old_tree=tree)
        return result

    # -- the file system on a device -----------------------------------------------------

    def apply_tree(self, s: PoolWrites, log: StepLog, dev: int, new_tree: Dir,
                   old_tree: Dir | None = None) -> None:
        """One file-system transaction that makes device `dev` hold `new_tree`."""
        old_image = self.fs_image(log.root, dev)
        if old_tree is None:
            shown = self.fs_tree(log.root, dev)
            assert isinstance(shown, Dir)
            old_tree = shown
        tx = plan(old_tree, old_image, new_tree)
        if tx is None:
            return
        self.write_fs(s, log, dev, tx.data, tx.image, freed=tx.freed)

    def write_fs(self, s: PoolWrites, log: StepLog, dev: int, data: dict[int, bytes] | None, image: Image,
                 freed: set[int] | None = None) -> None:
        if data:
            self.write_blocks(s, log, dev, data)
            self.commit(s, log)  # the journal's flush before its commit record
        self.write_blocks(s, log, dev, {META_BLOCK: encode(image)})
        self.commit(s, log, flush=True)  # FUA of the commit record
        if self.options["discard"] and freed:
            # the file system's `discard` mount option: ext4 issues the discards of the
            # blocks a transaction freed after that transaction's commit; the pool
            # unmaps whole pool blocks only (`get_bio_block_range`)
            used = image.used_blocks()
            whole = [v for v in sorted({b // self.slots for b in freed})
                     if v != META_BLOCK // self.slots and not any(b // self.slots == v for b in used)
                     and v in (mapping(log.root, dev) or {})]
            if whole:
                self.discard(s, log, dev, whole)
                self.commit(s, log)  # dm-thin's periodic commit (`do_waker`) takes them in

    def write_blocks(self, s: PoolWrites, log: StepLog, dev: int, data: dict[int, bytes]) -> None:
        """File-system block writes as dm-thin performs them, one pool block at a time."""
        by_vblock: dict[int, dict[int, bytes]] = {}
        for k, chunk in data.items():
            v, slot = divmod(k, self.slots)
            by_vblock.setdefault(v, {})[slot] = chunk
        for v in sorted(by_vblock):
            slots = by_vblock[v]
            p = (mapping(log.root, dev) or {}).get(v)
            if p is not None and not self.shared(log.root, p):
                for slot in sorted(slots):
                    self.do(s, log, WriteBlock(p, slot, slots[slot]))
                continue
            q = self.alloc(s, log.root)
            self.do(s, log, AllocBlock(q))
            if p is not None and len(slots) < self.slots:
                self.do(s, log, CopyBlock(p, q))  # break sharing: copy, then write
            for slot in sorted(slots):
                self.do(s, log, WriteBlock(q, slot, slots[slot]))
            self.do(s, log, MapBlock(dev, v, q))

    def discard(self, s: PoolWrites, log: StepLog, dev: int, vblocks: list[int]) -> None:
        """Discards reaching the pool: each virtual block is unmapped in the in-core
        metadata; with passdown (dm-thin's default) a pool block nothing maps any more is
        discarded on the data device at once, before any commit (`process_discard_bio`,
        `passdown_double_checking_shared_status`)."""
        for v in vblocks:
            p = (mapping(log.root, dev) or {}).get(v)
            self.do(s, log, DiscardBlock(dev, v))
            if self.options["discard_passdown"] and p is not None and p not in refcounts(log.root):
                log.do(DiscardData(p))

    def shared(self, root: Dir, p: int) -> bool:
        return refcounts(root).get(p, 0) > 1

    def alloc(self, s: PoolWrites, root: Dir) -> int:
        """The lowest free pool block (blocks freed since the last commit stay taken,
        so the committed state stays intact)."""
        taken = allocated(root) | s.freed
        p = 0
        while p in taken:
            p += 1
        return p

    def do(self, s: PoolWrites, log: StepLog, step: Step) -> None:
        before = allocated(log.root)
        log.do(step)
        s.freed |= before - allocated(log.root)
        if self.options["period_commit"] and step.path.startswith("mem/"):  # type: ignore[attr-defined]
            self.commit(s, log)  # the waker's commit may land right here

    def commit(self, s: PoolWrites, log: StepLog, flush: bool = False) -> None:
        """A flush or FUA reaching the pool: commit the metadata if it changed; with
        `flush`, a flush of the data device even when there is nothing to commit."""
        metadata = encode_metadata(log.root)
        current = lookup(log.root, ("pool", "meta"))
        if isinstance(current, File) and current.content == metadata:
            if flush:
                log.do(Flush(POOL))
            return
        if self.options["flush_data_before_commit"]:
            log.do(CommitMetadata(POOL, metadata=metadata))
        else:
            log.do(CommitMetadataUnflushed(metadata))
        s.freed = set()

    # -- Docker's device set -------------------------------------------------------------

    def create_device(self, s: PoolWrites, log: StepLog, device_hash: str, origin: int | None) -> int:
        """`createRegisterDevice` / `createRegisterSnapDevice` in one transaction."""
        dev = self.next("device", 0)
        old = transaction_id(log.root)
        new = old + 1
        self.write_meta_file(log, TRANSACTION_FILE,
                             f"open_transaction_id {new}\ndevice_hash {device_hash}\ndevice_id {dev}\n")
        log.do(CreateThin(dev) if origin is None else CreateSnap(dev, origin))
        self.commit(s, log)
        self.write_meta_file(log, f"{META}/{device_hash}", f"device_id {dev}\ntransaction_id {new}\n")
        log.do(SetTransactionId(old, new))
        self.commit(s, log)
        return dev

    def write_meta_file(self, log: StepLog, path: str, text: str) -> None:
        """`writeMetaFile`: a new temp file (os.CreateTemp), fsync, rename."""
        n = 1
        while lookup(log.root, split(f"{META}/.tmp{n}")) is not None:
            n += 1
        log.do_all(replace_file(f"{META}/.tmp{n}", path, text.encode(), 0o600))

    def run(self, s: PoolWrites, log: StepLog, container: str) -> None:
        """`docker run`: the container's init layer `<id>-init`, a snapshot of the image
        with Docker's init files written (daemon/initlayer), then the container's own
        device `<id>`, a snapshot of the init layer; each through
        `createRegisterSnapDevice` in its own transaction."""
        if lookup(log.root, split(f"{META}/ctr-{container}")) is not None:
            raise FsError(errno.EEXIST, container)
        self.create_container(s, log, container)

    def create_container(self, s: PoolWrites, log: StepLog, container: str, upper: Dir | None = None) -> int:
        init = self.create_device(s, log, f"ctr-{container}{INIT_SUFFIX}", self.top)
        image = self.fs_tree(log.root, self.top)
        assert isinstance(image, Dir)
        self.apply_tree(s, log, init, union_view([INIT_LAYER, image]))
        dev = self.create_device(s, log, f"ctr-{container}", init)
        if upper is not None:
            self.apply_tree(s, log, dev, union_view([upper, INIT_LAYER, image]))
        return dev

    def rm_container(self, s: PoolWrites, log: StepLog, container: str) -> None:
        """`docker rm`: the container's device, then its init layer's, each by
        `deleteDevice`: a blkdiscard of the whole device first when `blkdiscard`
        (`issueDiscard`), then the delete transaction (no commit of its own after the
        discard: the delete's commit takes it in)."""
        if self.device_of(log.root, f"ctr-{container}") is None:
            raise FsError(errno.ENOENT, container)
        for device_hash in (f"ctr-{container}", f"ctr-{container}{INIT_SUFFIX}"):
            if self.device_of(log.root, device_hash) is not None:
                self.delete_device(s, log, device_hash)
        self.container_fs.pop(container, None)

    def delete_device(self, s: PoolWrites, log: StepLog, device_hash: str) -> None:
        dev = self.device_of(log.root, device_hash)
        assert dev is not None
        if self.options["blkdiscard"]:
            self.discard(s, log, dev, sorted(mapping(log.root, dev) or {}))
        old = transaction_id(log.root)
        self.write_meta_file(log, TRANSACTION_FILE,
                             f"open_transaction_id {old + 1}\ndevice_hash {device_hash}\ndevice_id {dev}\n")
        self.do(s, log, DeleteThin(dev))
        self.commit(s, log)
        log.do(Unlink(f"{META}/{device_hash}"))  # removeMetadata: not synced
        log.do(SetTransactionId(old, old + 1))
        self.commit(s, log)

    # -- recovery ------------------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        """Pool activation (the last commit), then Docker's start-up rollback."""
        root = recover_pool(root)
        pending = _read(root, TRANSACTION_FILE)
        open_id = int(pending.get("open_transaction_id", "0") or 0)
        pool_id = transaction_id(root)
        if open_id <= pool_id:
            return Recovery(root)
        log = StepLog(root)
        s = PoolWrites()
        dev = int(pending.get("device_id", "-1"))
        if dev in devices(root):
            self.do(s, log, DeleteThin(dev))
            self.commit(s, log)
        device_hash = pending.get("device_hash", "")
        meta = lookup(log.root, split(f"{META}/{device_hash}")) if device_hash else None
        if meta is not None and self.device_of(log.root, device_hash) == dev:
            log.do(Unlink(f"{META}/{device_hash}"))
        self.write_meta_file(log, TRANSACTION_FILE, f"open_transaction_id {pool_id}\n")
        return Recovery(log.root)

    # -- the invariant hooks -------------------------------------------------------------

    def op_scope(self, op: Any) -> tuple[str, ...]:
        return view_scope(op, IMAGE, DEFAULT_CONTAINER)

    def space_leaks(self, root: Dir, completed: bool) -> list[tuple[str, str]]:
        """(path, what) for pool space nothing will return: thin devices Docker has no
        record of, allocated blocks no device maps, and (for a completed op) blocks a
        device maps whose file-system blocks are all free (freed without discard)."""
        known = {}
        meta = lookup(root, split(META))
        for name in sorted(meta.entries) if isinstance(meta, Dir) else []:
            if name.startswith(".") or f"{META}/{name}" == TRANSACTION_FILE:
                continue
            dev = self.device_of(root, name)
            if dev is not None:
                known[dev] = name
        out = []
        for dev in devices(root):
            if dev not in known:
                blocks = sorted(set((mapping(root, dev) or {}).values()))
                out.append((f"mem/devices/{dev}",
                            f"thin device {dev} is in the pool but Docker has no record of it "
                            f"({len(blocks)} blocks never return)"))
        mapped = set(refcounts(root))
        for p in sorted(allocated(root) - mapped):
            out.append((f"pool/data/{p}", f"pool block {p} is allocated but no device maps it"))
        if completed:
            out.extend(self._unused_blocks(root, known))
        return out

    def _unused_blocks(self, root: Dir, known: dict[int, str]) -> list[tuple[str, str]]:
        used: set[int] = set()
        holders: dict[int, list[tuple[int, int]]] = {}
        for dev in devices(root):
            if dev not in known:
                continue
            dev_map = mapping(root, dev) or {}
            try:
                fs_used = self.fs_image(root, dev).used_blocks()
            except CorruptFs:
                used.update(dev_map.values())
                continue
            vblocks = {b // self.slots for b in fs_used}
            for v, p in dev_map.items():
                holders.setdefault(p, []).append((dev, v))
                if v in vblocks:
                    used.add(p)
        return [
            (f"pool/data/{p}",
             f"pool block {p} (device {holders[p][0][0]} vblock {holders[p][0][1]}) holds no block "
             "its file system uses: freed without discard, it never returns to the pool")
            for p in sorted(set(holders) - used)
        ]


class DeviceMapper(Driver):
    name = "devicemapper"
    description = "Docker's devicemapper driver: thin devices on a dm-thin pool, a file system in each"
    layered = False
    OPTIONS = {
        "block_size": Option((int,), 64 * 1024, "the pool's data block size in bytes", normalize=_block_size),
        "discard": Option(
            (bool,), False,
            "the container file system's `discard` mount option (Docker sets none): the "
            "blocks a transaction frees are discarded after its commit; without it they "
            "stay mapped in the pool until an fstrim",
        ),
        "blkdiscard": Option(
            (bool,), False,
            "Docker's dm.blkdiscard: discard a whole device before deleting it (default true "
            "with loop-lvm, false with dm.thinpooldev or dm.datadev, the model's pool)",
        ),
        "discard_passdown": Option(
            (bool,), True,
            "dm-thin passes a discard down to the data device at once, before the unmapping "
            "is committed (its default; false: no_discard_passdown)",
        ),
        "period_commit": Option(
            (bool,), False,
            "dm-thin's periodic commit (do_waker, every second) may land after any change of "
            "the in-core metadata, mid-op included: a commit after each such step",
        ),
        "flush_data_before_commit": Option(
            (bool,), True,
            "flush the data device before committing metadata (false: the fixed kernel "
            "bug that committed a mapping before its copied data)",
        ),
    }
    WORKLOAD_ROOT = f"{CONTAINERS_VIEW}/{DEFAULT_CONTAINER}"
    EXTRA_OPS = {
        "run": ((), ("container",)),
        "rm-container": ((), ("container",)),
    }

    @classmethod
    def check_workload(cls, options: Mapping[str, Any], layers: list[Dir], upper: Dir | None,
                       ops: Sequence[Any]) -> str | None:
        if upper is not None and any(op.kind == "run" for op in ops):
            return "[upper] is the initial container's layer, but the workload runs its own container"
        return None
    MOUNT = DeviceMapperMount

    def client(self, kind: str, args: Mapping[str, Any]) -> Any:
        container = args.get("container") or DEFAULT_CONTAINER
        if kind == "run":
            return syscall(RunContainer(container))
        if kind == "rm-container":
            return syscall(RemoveContainer(container))
        return None
