"""A dm-thin pool (drivers/md/dm-thin.c, dm-thin-metadata.c) as steps on a tree.

The pool's state lives in the backing-store tree, so persistence models and crash
states work on it like on any file system:

    pool/data/<p>/<slot>    data block p of the pool; a block holds `slots` file-system
                            blocks of 4 KiB (16 for the default 64 KiB block)
    pool/meta               the committed metadata (what survives a crash)
    mem/devices/<id>/<v>    the live mapping of thin device <id>: virtual block v -> p
    mem/alloc/<p>           the live space map: p is allocated
    mem/transaction_id      the live transaction id (Docker's set_transaction_id)

`mem/` is the kernel's in-core metadata: a crash loses it, and activating the pool
rebuilds it from `pool/meta` (`recover_pool`). A commit writes the whole live metadata
to `pool/meta` in one step; its superblock write is the atomic point. By default the
pool flushes the data device before committing (the commit is a barrier for every
earlier step); `CommitMetadataUnflushed` is the fixed kernel bug where a mapping could
be committed before the data it points to (a copied-up block) was on disk.

Every step here is total: applied to any tree it does what it can and never fails, so
weak persistence may reorder them freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from models.steps import Device, Effect, Shape, Step, Syncfs, one_device
from models.tree import Dir, File, Node, ensure_dirs, lookup, replace, split

POOL_DATA = ("pool", "data")
POOL_META = ("pool", "meta")
DEVICES = ("mem", "devices")
ALLOC = ("mem", "alloc")
TRANSACTION = ("mem", "transaction_id")


def _show(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= 24 else text[:21] + "...")


# --- reading the live metadata ------------------------------------------------------------


def mapping(root: Dir, dev: int) -> dict[int, int] | None:
    """Virtual block -> pool block of thin device `dev` (None if there is no such device)."""
    node = lookup(root, DEVICES + (str(dev),))
    if not isinstance(node, Dir):
        return None
    out = {}
    for v, entry in node.entries.items():
        if isinstance(entry, File):
            out[int(v)] = int(entry.content)
    return out


def devices(root: Dir) -> list[int]:
    node = lookup(root, DEVICES)
    return sorted(int(d) for d in node.entries) if isinstance(node, Dir) else []


def allocated(root: Dir) -> set[int]:
    node = lookup(root, ALLOC)
    return {int(p) for p in node.entries} if isinstance(node, Dir) else set()


def refcounts(root: Dir) -> dict[int, int]:
    counts: dict[int, int] = {}
    for dev in devices(root):
        for p in (mapping(root, dev) or {}).values():
            counts[p] = counts.get(p, 0) + 1
    return counts


def transaction_id(root: Dir) -> int:
    node = lookup(root, TRANSACTION)
    return int(node.content) if isinstance(node, File) and node.content else 0


def read_slot(root: Dir, block: int, slot: int) -> bytes | None:
    node = lookup(root, POOL_DATA + (str(block), str(slot)))
    return node.content if isinstance(node, File) else None


# --- committed metadata -------------------------------------------------------------------


def encode_metadata(root: Dir) -> bytes:
    """The live metadata as `pool/meta` stores it (deterministic text)."""
    lines = [f"transaction_id {transaction_id(root)}"]
    lines.append("allocated " + ",".join(str(p) for p in sorted(allocated(root))))
    for dev in devices(root):
        pairs = ",".join(f"{v}={p}" for v, p in sorted((mapping(root, dev) or {}).items()))
        lines.append(f"device {dev} {pairs}".rstrip())
    return ("\n".join(lines) + "\n").encode()


def decode_metadata(data: bytes) -> Dir:
    """The `mem/` tree that committed metadata describes."""
    txid = 0
    alloc: dict[str, Node] = {}
    devs: dict[str, Node] = {}
    for line in data.decode().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "transaction_id":
            txid = int(words[1])
        elif words[0] == "allocated" and len(words) > 1:
            alloc = {p: File(b"") for p in words[1].split(",")}
        elif words[0] == "device":
            pairs = words[2].split(",") if len(words) > 2 else []
            devs[words[1]] = Dir({v: File(p.encode()) for v, p in (x.split("=") for x in pairs)})
    return Dir({"devices": Dir(devs), "alloc": Dir(alloc), "transaction_id": File(str(txid).encode())})


def recover_pool(root: Dir) -> Dir:
    """Activating the pool after a crash: the live metadata is the committed one."""
    meta = lookup(root, POOL_META)
    mem = decode_metadata(meta.content) if isinstance(meta, File) else decode_metadata(b"")
    return replace(root, ("mem",), mem)


# --- steps --------------------------------------------------------------------------------


def _free_unreferenced(root: Dir, blocks: set[int]) -> Dir:
    still = refcounts(root)
    for p in sorted(blocks):
        if p not in still and lookup(root, ALLOC + (str(p),)) is not None:
            root = replace(root, ALLOC + (str(p),), None)
    return root


class PoolStep(Step):
    """A step on the pool; its `path` property names what it changes (the persistence
    models follow steps by path)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()  # `path` is derived from its numbers

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path)  # type: ignore[attr-defined]

    def writes(self) -> tuple[str, ...]:
        return (self.path,)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class AllocBlock(PoolStep):
    """Take pool block `block` from the live space map."""

    block: int
    kind = "alloc_block"

    @property
    def path(self) -> str:
        return f"mem/alloc/{self.block}"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        root = ensure_dirs(root, ALLOC)
        return replace(root, ALLOC + (str(self.block),), File(b""))


    def __str__(self) -> str:
        return f"alloc_block {self.block}"


@dataclass(frozen=True)
class MapBlock(PoolStep):
    """Insert (or replace) the live mapping of virtual block `vblock` of thin device
    `dev`; a pool block nothing maps any more returns to the space map."""

    dev: int
    vblock: int
    block: int
    kind = "map_block"

    @property
    def path(self) -> str:
        return f"mem/devices/{self.dev}/{self.vblock}"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        old = (mapping(root, self.dev) or {}).get(self.vblock)
        root = ensure_dirs(root, DEVICES + (str(self.dev),))
        root = replace(root, split(self.path), File(str(self.block).encode()))
        return _free_unreferenced(root, {old} if old is not None else set())


    def __str__(self) -> str:
        return f"map_block device {self.dev} vblock {self.vblock} -> block {self.block}"


@dataclass(frozen=True)
class WriteBlock(Step):
    """Write one 4 KiB file-system block into slot `slot` of pool block `block`."""

    block: int
    slot: int
    data: bytes
    kind = "write_block"
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path)

    @property
    def path(self) -> str:  # the whole block: writes to one block persist in order
        return f"pool/data/{self.block}"

    @property
    def is_data(self) -> bool:
        return True

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        root = ensure_dirs(root, POOL_DATA + (str(self.block),))
        return replace(root, POOL_DATA + (str(self.block), str(self.slot)), File(self.data))

    def writes(self) -> tuple[str, ...]:
        return (f"{self.path}/{self.slot}",)

    def __str__(self) -> str:
        return f"write_block {self.block}[{self.slot}] {_show(self.data)}"


@dataclass(frozen=True)
class CopyBlock(PoolStep):
    """Copy pool block `src` to `dst` (breaking sharing before a partial write)."""

    src: int
    dst: int
    kind = "copy_block"

    @property
    def path(self) -> str:
        return f"pool/data/{self.dst}"

    @property
    def is_data(self) -> bool:
        return True

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        node = lookup(root, POOL_DATA + (str(self.src),))
        root = ensure_dirs(root, POOL_DATA)
        return replace(root, POOL_DATA + (str(self.dst),), node if isinstance(node, Dir) else Dir())


    def __str__(self) -> str:
        return f"copy_block {self.src} -> {self.dst}"


@dataclass(frozen=True)
class DiscardBlock(PoolStep):
    """Unmap virtual block `vblock` of thin device `dev` (a discard); its pool block
    returns to the space map when nothing else maps it."""

    dev: int
    vblock: int
    kind = "discard"

    @property
    def path(self) -> str:
        return f"mem/devices/{self.dev}/{self.vblock}"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        old = (mapping(root, self.dev) or {}).get(self.vblock)
        if old is None:
            return root
        root = replace(root, split(self.path), None)
        return _free_unreferenced(root, {old})


    def __str__(self) -> str:
        return f"discard device {self.dev} vblock {self.vblock}"


@dataclass(frozen=True)
class DiscardData(PoolStep):
    """Discard passdown: the data device discards pool block `block` (no device maps
    it any more); it reads back as zeros. dm-thin passes the discard down at once,
    before the unmapping is committed."""

    block: int
    kind = "discard_data"

    @property
    def path(self) -> str:
        return f"pool/data/{self.block}"

    @property
    def is_data(self) -> bool:
        return True

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        if lookup(root, POOL_DATA + (str(self.block),)) is None:
            return root
        return replace(root, POOL_DATA + (str(self.block),), None)

    def __str__(self) -> str:
        return f"discard_data {self.block} (passdown)"


@dataclass(frozen=True)
class CreateThin(PoolStep):
    """The `create_thin` pool message: a new, empty thin device."""

    dev: int
    kind = "create_thin"

    @property
    def path(self) -> str:
        return f"mem/devices/{self.dev}"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        root = ensure_dirs(root, DEVICES)
        return replace(root, DEVICES + (str(self.dev),), Dir())


    def __str__(self) -> str:
        return f"create_thin {self.dev}"


@dataclass(frozen=True)
class CreateSnap(PoolStep):
    """The `create_snap` pool message: thin device `dev` shares every block of `origin`."""

    dev: int
    origin: int
    kind = "create_snap"

    @property
    def path(self) -> str:
        return f"mem/devices/{self.dev}"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        node = lookup(root, DEVICES + (str(self.origin),))
        root = ensure_dirs(root, DEVICES)
        return replace(root, DEVICES + (str(self.dev),), node if isinstance(node, Dir) else Dir())


    def __str__(self) -> str:
        return f"create_snap {self.dev} of {self.origin}"


@dataclass(frozen=True)
class DeleteThin(PoolStep):
    """The `delete` pool message: the device goes, blocks only it mapped are freed."""

    dev: int
    kind = "delete"

    @property
    def path(self) -> str:
        return f"mem/devices/{self.dev}"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        blocks = set((mapping(root, self.dev) or {}).values())
        root = replace(root, DEVICES + (str(self.dev),), None) if blocks or lookup(
            root, DEVICES + (str(self.dev),)) is not None else root
        return _free_unreferenced(root, blocks)


    def __str__(self) -> str:
        return f"delete {self.dev}"


@dataclass(frozen=True)
class SetTransactionId(PoolStep):
    """The `set_transaction_id old new` pool message."""

    old: int
    new: int
    kind = "set_transaction_id"

    @property
    def path(self) -> str:
        return "mem/transaction_id"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        root = ensure_dirs(root, ("mem",))
        return replace(root, TRANSACTION, File(str(self.new).encode()))


    def __str__(self) -> str:
        return f"set_transaction_id {self.old} {self.new}"


def _commit(root: Dir, metadata: bytes) -> Dir:
    return replace(ensure_dirs(root, ("pool",)), POOL_META, File(metadata))


@dataclass(frozen=True)
class CommitMetadata(Syncfs):
    """Flush the data device, then write the live metadata and the superblock: after
    this step a crash recovers exactly `metadata`. Being a flush, every earlier step
    persists before it."""

    metadata: bytes = b""
    kind = "commit_metadata"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        return _commit(root, self.metadata)

    def writes(self) -> tuple[str, ...]:
        return ("pool/meta",)

    def __str__(self) -> str:
        return "commit_metadata (flush, then superblock)"


@dataclass(frozen=True)
class Flush(Syncfs):
    """A flush (or FUA write) that finds no pool metadata to commit: the data device's
    cache is written out, nothing else."""

    kind = "flush"

    def __str__(self) -> str:
        return "flush (no metadata to commit)"


@dataclass(frozen=True)
class CommitMetadataUnflushed(Step):
    """A commit that does not flush the data device first (the fixed dm-thin bug):
    the committed mappings may point at data that never reached the disk."""

    metadata: bytes = b""
    kind = "commit_metadata_unflushed"
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path)

    @property
    def path(self) -> str:
        return "pool/meta"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        return _commit(root, self.metadata)

    def writes(self) -> tuple[str, ...]:
        return ("pool/meta",)

    def __str__(self) -> str:
        return "commit_metadata (no flush of the data device)"


BLOCK_STEP_TYPES: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        AllocBlock, MapBlock, WriteBlock, CopyBlock, DiscardBlock, DiscardData, CreateThin, CreateSnap,
        DeleteThin, SetTransactionId, CommitMetadata, Flush, CommitMetadataUnflushed,
    )
}
