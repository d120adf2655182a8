"""containerd 1.6's content store, overlayfs snapshotter and metadata database as a
driver model: overlayfs plus a store (containerd `content/local/writer.go`,
`snapshots/overlay/overlay.go`, `metadata/{db,snapshot,content,gc}.go`,
`diff/apply/apply_linux.go`; v1.6.20 is the `containerd` Debian installs here).

The backing store is containerd's root (`/var/lib/containerd`):

    io.containerd.content.v1.content/ingest/<ref>/{ref,data}   a blob being written
    io.containerd.content.v1.content/blobs/sha256/<digest>     committed blobs
    io.containerd.snapshotter.v1.overlayfs/metadata.db         the snapshotter's bbolt db
    io.containerd.snapshotter.v1.overlayfs/snapshots/<n>/fs    a snapshot's files (upper dir)
    io.containerd.snapshotter.v1.overlayfs/snapshots/<n>/work  an active snapshot's work dir
    io.containerd.metadata.v1.bolt/meta.db                     images, containers, content
                                                               and snapshot records (bbolt)

Both databases are bbolt files (`models/bolt.py`): each transaction writes its pages,
fdatasyncs, writes a meta page and fdatasyncs again.

The view is what `ctr images ls` and `ctr containers ls` show: every image at
`images/<name>/` (its unpacked snapshot chain merged) and every container at
`containers/<name>/` (its active snapshot on overlayfs); file ops address a container by
those paths and run on its overlay mount.

Ops, with containerd's steps:

- `pull [image]` (`ctr images import`): each blob (layer tarballs, config, manifest)
  written in `ingest/<ref>/data`, fsynced, renamed into `blobs/sha256/` and the ingest
  removed, then recorded in meta.db; the image record; then unpack, per layer: prepare
  (`snapshots/new-N/{fs,work}` renamed to `snapshots/<id>`, the snapshotter's
  transaction, meta.db's), the layer applied straight into `fs/` (no fsync; with
  `sync_fs`, syncfs after it: containerd 2.0's `image_pull_with_sync_fs`, PR #9401),
  commit (the snapshotter's transaction, meta.db's).
- `create-container [container] [image]` (`ctr containers create`): an active snapshot
  prepared on the image's top layer, then the container record.
- file ops in `containers/<c>/`: the overlayfs model on the snapshot chain.
- `rm-container [container]` (`ctr containers rm`): the container record, its snapshot
  record, then garbage collection: the snapshotter's record and the directory.
- `rmi [image]` (`ctr images rm --sync`): the image record, then garbage collection
  (meta.db's unreferenced records in one transaction, the blobs unlinked, each
  unreferenced snapshot removed from the snapshotter, top down, and its directory).

Recovery is containerd's start: both databases must open (bbolt takes the newest valid
meta); garbage collection runs at start-up (the GC scheduler's `startup_delay`):
meta.db's unreferenced content and snapshot records go, and when it removed a snapshot
record the snapshotter is cleaned (`cleanupSnapshotter`: snapshots meta.db does not
know, then `Cleanup`: directories the snapshotter's db does not know). Without a removal
nothing cleans the snapshotter, and a directory a crash left under `snapshots/` keeps its
name: containerd 1.6's snapshot ids come from a bbolt sequence, so the next prepare that
gets that id fails to rename ("failed to rename: file exists").

Option `sync_fs` (default false: containerd 1.6 and `ctr`; CRI in 2.0 has it as
`image_pull_with_sync_fs`) and overlayfs's `redirect_dir`. Simplifications: one
namespace; leases are not modelled (a killed pull's leftovers are collected at the next
start, as after their lease expired); an image's content records name their children
directly instead of through GC labels; blob digests are real sha256 digests.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from models import bolt
from models.containers import (
    CONTAINERS_VIEW,
    IMAGES_VIEW,
    engine_client,
    view_scope,
)
from models.docker_archive import layer_tar
from models.docker_overlay2 import chain_id, diff_id
from models.driver import Driver, Option, Recovery
from models.layers import build_steps
from models.overlay_layers import EngineMount, container_overlay, names
from models.overlayfs import OverlayFS, OverlayMount
from models.steps import (
    Create,
    Fsync,
    Mkdir,
    RemoveTree,
    Rename,
    Rmdir,
    StepLog,
    Syncfs,
    Unlink,
    Write,
    remove_subtree,
)
from models.tree import Dir, ErrorEntry, File, FsError, Node, ensure_dirs, lookup, replace, split

CONTENT = "io.containerd.content.v1.content"
BLOBS = f"{CONTENT}/blobs/sha256"
INGEST = f"{CONTENT}/ingest"
SNAPSHOTTER = "io.containerd.snapshotter.v1.overlayfs"
SNAPSHOTS = f"{SNAPSHOTTER}/snapshots"
SNAP_DB = f"{SNAPSHOTTER}/metadata.db"
META_DB = "io.containerd.metadata.v1.bolt/meta.db"
DEFAULT_IMAGE = "image"
DEFAULT_CONTAINER = "app"


def blob_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _empty_meta() -> dict[str, Any]:
    return {"containers": {}, "content": {}, "images": {}, "ingests": {}, "leases": {}, "snapshots": {}}


def _empty_snapshotter() -> dict[str, Any]:
    return {"seq": 0, "snapshots": {}}




class ContainerdMount(EngineMount):
    """containerd's root: content store, snapshotter, metadata, mounted containers."""

    HOME = SNAPSHOTS
    LIFETIME = ("mounted",)

    # -- layout --------------------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        """The root before the workload: the image imported and unpacked unless the
        workload pulls it, container `app` on it unless the workload creates one."""
        self.image_layers = list(layers) or [Dir()]
        self.mounted: dict[str, str] = {}
        self.recovering = False
        root = Dir()
        for path in (INGEST, SNAPSHOTS, "tmpmounts"):  # what containerd makes at start (blobs/
            root = ensure_dirs(root, split(path))  # and the snapshotter's db come with first use)
        root = ensure_dirs(root, split(META_DB)[:-1])
        root = replace(root, split(META_DB), bolt.initial_file(_empty_meta()))
        log = StepLog(root)
        if not any(op.kind == "pull" for op in ops):
            self.pull(log, DEFAULT_IMAGE)
            if not any(op.kind == "create-container" for op in ops):
                self.create(log, DEFAULT_CONTAINER, DEFAULT_IMAGE)
                if upper is not None:
                    sid = self.snapshot_id(log.root, DEFAULT_CONTAINER)
                    log.do_all(build_steps(upper, f"{SNAPSHOTS}/{sid}/fs"))
        self.mounted = {}
        return log.root

    # -- reading -------------------------------------------------------------------------

    def meta(self, root: Dir) -> dict[str, Any]:
        return _empty_meta() | (bolt.read(root, META_DB) or {})

    def snapshotter(self, root: Dir) -> dict[str, Any]:
        return _empty_snapshotter() | (bolt.read(root, SNAP_DB) or {})

    def snapshot_id(self, root: Dir, key: str) -> str | None:
        record = self.snapshotter(root)["snapshots"].get(key)
        return str(record["id"]) if record else None

    def snapshot_chain(self, root: Dir, key: str) -> list[str]:
        """Snapshot `key` and its parents, top first, as the snapshotter records them."""
        snaps = self.snapshotter(root)["snapshots"]
        out: list[str] = []
        seen: str | None = key
        while seen and seen in snaps and seen not in out:
            out.append(seen)
            seen = snaps[seen].get("parent")
        return out

    def image_chain(self, root: Dir, name: str) -> list[str] | None:
        """The chain ids of image `name`'s layers, bottom first, from its content."""
        meta = self.meta(root)
        record = meta["images"].get(name)
        if record is None:
            return None
        manifest = meta["content"].get(record["target"])
        return list(manifest.get("chain", [])) if manifest else []

    def fs_of(self, root: Dir, key: str) -> Node | None:
        sid = self.snapshot_id(root, key)
        return lookup(root, split(f"{SNAPSHOTS}/{sid}/fs")) if sid else None

    # -- views ---------------------------------------------------------------------------

    def view(self, root: Dir) -> Dir:
        if bolt.read(root, META_DB) is None or bolt.read(root, SNAP_DB) is None:
            broken: Node = ErrorEntry(errno.EIO, "a bbolt database is corrupt: containerd does not start")
            return Dir({CONTAINERS_VIEW: broken, IMAGES_VIEW: broken})
        meta = self.meta(root)
        images = {name: self.image_view(root, name) for name in sorted(meta["images"])}
        containers = {name: self.container_view(root, name) for name in sorted(meta["containers"])}
        return Dir({CONTAINERS_VIEW: Dir(containers), IMAGES_VIEW: Dir(images)})

    def image_view(self, root: Dir, name: str) -> Node:
        chain = self.image_chain(root, name) or []
        if not chain:
            return ErrorEntry(errno.ENOENT, f"image {name}: its manifest is not in the content store")
        diffs = []
        for key in reversed(chain):
            fs = self.fs_of(root, key)
            if not isinstance(fs, Dir) or key not in self.meta(root)["snapshots"]:
                reason = f"image {name} is not unpacked: snapshot {key} does not exist"
                return ErrorEntry(errno.ENOENT, reason)
            diffs.append(fs)
        return self.merged(diffs, None)

    def container_view(self, root: Dir, name: str) -> Node:
        found = self.container_layers(root, name)
        if isinstance(found, ErrorEntry):
            return found
        upper, lowers = found
        return self.merged([node for _, node in lowers], upper)

    def container_layers(self, root: Dir, name: str) -> tuple[Dir, list[tuple[str, Dir]]] | ErrorEntry:
        record = self.meta(root)["containers"].get(name)
        key = record.get("snapshot") if record else None
        chain = self.snapshot_chain(root, key) if key else []
        if not chain or key not in self.meta(root)["snapshots"]:
            return ErrorEntry(errno.ENOENT, f"container {name}: snapshot {key} does not exist")
        layers = []
        for k in chain:
            path = f"{SNAPSHOTS}/{self.snapshot_id(root, k)}/fs"
            node = lookup(root, split(path))
            if not isinstance(node, Dir):
                return ErrorEntry(errno.ENOENT, f"container {name}: {path} does not exist: the mount fails")
            layers.append((path, node))
        upper = layers[0][1]
        return upper, layers[1:]

    # -- system calls --------------------------------------------------------------------

    def new_lifetime(self) -> None:
        self.mounted = {}

    def container_mount(self, log: StepLog, container: str) -> tuple[OverlayMount, dict[str, str]]:
        """The container's snapshot mounted (`ctr snapshots mounts`; the kernel makes
        `work/work`)."""
        found = self.container_layers(log.root, container)
        if isinstance(found, ErrorEntry):
            raise FsError(errno.ENOENT, f"{CONTAINERS_VIEW}/{container}")
        _, lowers = found
        key = self.meta(log.root)["containers"][container]["snapshot"]
        home = f"{SNAPSHOTS}/{self.snapshot_id(log.root, key)}"
        if self.mounted.get(container) != home:
            if lookup(log.root, split(f"{home}/work/work")) is None:
                log.do(Mkdir(f"{home}/work/work", 0))
            self.mounted[container] = home
        places = {"upper": f"{home}/fs", "work": f"{home}/work"}
        return container_overlay(self.options["redirect_dir"], lowers), places

    # -- transactions --------------------------------------------------------------------

    def update_meta(self, log: StepLog, change: Any) -> None:
        """A meta.db transaction: `change` edits a copy of the state."""
        state = bolt.read(log.root, META_DB)
        if state is None:
            raise FsError(errno.EIO, META_DB)
        before = json.dumps(_empty_meta() | state, sort_keys=True)
        state = json.loads(before)
        change(state)
        if self.recovering and json.dumps(state, sort_keys=True) == before:
            return  # start-up: an empty transaction changes nothing the model tracks
        log.do_all(bolt.commit(log.root, META_DB, state))

    def open_snapshotter(self, log: StepLog) -> bool:
        """The snapshotter's db opened for a transaction: made (its first pages, an
        fdatasync) when it is not there. True when it was just made (its first
        transaction grows the file)."""
        if lookup(log.root, split(SNAP_DB)) is not None:
            return False
        log.do(Create(SNAP_DB, 0o600))
        log.do(Write(SNAP_DB, bolt.initial_file(_empty_snapshotter()).content, 0, replace=True))
        log.do(Fsync(SNAP_DB))
        return True

    def update_snapshotter(self, log: StepLog, change: Any, grown: bool = False) -> None:
        """A transaction of the snapshotter's db (made, with its first pages and an
        fdatasync, on first use)."""
        grown = self.open_snapshotter(log) or grown
        state = bolt.read(log.root, SNAP_DB)
        if state is None:
            raise FsError(errno.EIO, SNAP_DB)
        state = json.loads(json.dumps(_empty_snapshotter() | state))
        change(state)
        if grown:  # the first transaction grows the file: bbolt syncs after growing it
            log.do(Fsync(SNAP_DB))
        log.do_all(bolt.commit(log.root, SNAP_DB, state))

    # -- the content store ---------------------------------------------------------------

    def write_blob(self, log: StepLog, data: bytes, children: Mapping[str, Any], lease: str) -> str:
        """A blob through the content store (`content/local/writer.go`): the ingest dir
        with `ref`, `startedat` and `updatedat` (each written to a `.tmp` and renamed),
        `total` and `data`; the ingest recorded in meta.db; the data written and fsynced,
        renamed into `blobs/sha256/`, the ingest removed; the blob recorded in meta.db
        (held by the lease)."""
        digest = blob_digest(data)
        ref = f"default/1/tar-{digest}"
        if lookup(log.root, split(f"{BLOBS}/{digest}")) is None:
            ingest = f"{INGEST}/{blob_digest(ref.encode())}"
            log.do(Mkdir(ingest, 0o755))
            self._small(log, f"{ingest}/ref", ref.encode())
            for stamp in ("startedat", "updatedat"):  # written O_SYNC, then renamed
                self._small(log, f"{ingest}/{stamp}.tmp", b"1970-01-01T00:00:00Z")
                log.do(Fsync(f"{ingest}/{stamp}.tmp"))
                log.do(Rename(f"{ingest}/{stamp}.tmp", f"{ingest}/{stamp}"))
            self._small(log, f"{ingest}/total", str(len(data)).encode())
            log.do(Create(f"{ingest}/data", 0o644))
            self.update_meta(log, lambda s: s["ingests"].__setitem__(ref, lease))
            log.do(Write(f"{ingest}/data", data, 0))
            log.do(Fsync(f"{ingest}/data"))
            if lookup(log.root, split(BLOBS)) is None:
                log.do(Mkdir(BLOBS.rsplit("/", 1)[0], 0o755))
                log.do(Mkdir(BLOBS, 0o755))
            log.do(Rename(f"{ingest}/data", f"{BLOBS}/{digest}"))
            log.do(RemoveTree(ingest))

        def record(state: dict[str, Any]) -> None:
            state["ingests"].pop(ref, None)
            state["content"].setdefault(digest, dict(children))
            if lease in state["leases"]:
                state["leases"][lease]["content"] = sorted({*state["leases"][lease]["content"], digest})
        self.update_meta(log, record)
        return digest

    def _small(self, log: StepLog, path: str, data: bytes) -> None:
        log.do(Create(path, 0o644))
        log.do(Write(path, data, 0, replace=True))

    # -- the snapshotter -----------------------------------------------------------------

    def prepare(self, log: StepLog, key: str, parent: str | None, lease: str | None = None) -> str:
        """`Prepare`: the snapshotter's transaction opened (its db made on first use), a
        temp dir with `fs` and `work` renamed to the next id, the transaction committed,
        then meta.db's."""
        grown = self.open_snapshotter(log)
        temp = f"{SNAPSHOTS}/new-{self.next('new')}"
        log.do(Mkdir(temp, 0o700))
        log.do(Mkdir(f"{temp}/fs", 0o755))
        log.do(Mkdir(f"{temp}/work", 0o711))
        sid = self.snapshotter(log.root)["seq"] + 1
        target = f"{SNAPSHOTS}/{sid}"
        existing = lookup(log.root, split(target))
        if isinstance(existing, Dir) and existing.entries:
            log.do(RemoveTree(temp))  # the deferred cleanup of a failed prepare
            raise FsError(errno.EEXIST, target)  # "failed to rename: file exists"
        log.do(Rename(temp, target))

        def add(state: dict[str, Any]) -> None:
            state["seq"] = sid
            state["snapshots"][key] = {"id": sid, "kind": "active", "parent": parent}
        self.update_snapshotter(log, add, grown)

        def record(state: dict[str, Any]) -> None:
            state["snapshots"][key] = {"kind": "active", "parent": parent}
            if lease in state["leases"]:
                state["leases"][lease]["snapshots"] = sorted({*state["leases"][lease]["snapshots"], key})
        self.update_meta(log, record)
        return str(sid)

    def commit_snapshot(self, log: StepLog, key: str, name: str, diff: str, lease: str | None = None) -> None:
        """`Commit`: the snapshotter's record renamed (no directory changes), then meta.db's."""
        def move(state: dict[str, Any]) -> None:
            record = state["snapshots"].pop(key)
            state["snapshots"][name] = dict(record, kind="committed")
        self.update_snapshotter(log, move)

        def move_meta(state: dict[str, Any]) -> None:
            record = state["snapshots"].pop(key)
            state["snapshots"][name] = dict(record, kind="committed", diff=diff)
            if lease in state["leases"]:
                held = {*state["leases"][lease]["snapshots"], name} - {key}
                state["leases"][lease]["snapshots"] = sorted(held)
        self.update_meta(log, move_meta)

    def unpack(self, log: StepLog, lease: str, layers: list[str], config: str) -> list[str]:
        """Each layer applied into a prepared snapshot (a base layer through a bind mount
        of its `fs` under `tmpmounts/`, a child straight into its `fs`) and committed as
        its chain id; then the layer blob labelled with its uncompressed digest and the
        config with the top snapshot (the GC references)."""
        parent: str | None = None
        chain = []
        for layer, blob in zip(self.image_layers, layers, strict=True):
            cid = chain_id(parent, diff_id(layer))
            if cid not in self.meta(log.root)["snapshots"]:
                key = f"extract-{self.next('extract')} {cid}"
                sid = self.prepare(log, key, parent, lease)
                fs = f"{SNAPSHOTS}/{sid}/fs"
                if parent is None:
                    mount = f"tmpmounts/containerd-mount{self.next('mount')}"
                    log.do(Mkdir(mount, 0o700))
                    log.do_all(build_steps(layer, fs))
                    log.do(Rmdir(mount))
                else:
                    log.do_all(build_steps(layer, fs))
                if self.options["sync_fs"]:
                    log.do(Syncfs(fs))
                self.commit_snapshot(log, key, cid, diff_id(layer), lease)
                for label in ("uncompressed", "unpacked"):  # the layer blob's labels, one transaction each
                    self.update_meta(log, lambda s, b=blob, k=label: s["content"][b].__setitem__(k, True))
            parent = cid
            chain.append(cid)
        self.update_meta(log, lambda s: s["content"][config].__setitem__("snapshot", chain[-1]))
        return chain

    # -- ops -----------------------------------------------------------------------------

    def pull(self, log: StepLog, name: str) -> None:
        """`ctr images import`: a lease (24 h) for what it writes; the blobs; the image
        record; unpack; the lease removed."""
        lease = f"import-{self.next('lease')}"
        self.update_meta(log, lambda s: s["leases"].__setitem__(lease, {"content": [], "snapshots": []}))
        self.update_meta(log, lambda s: s["leases"][lease].__setitem__("expires", "24h"))
        tars = [layer_tar(layer) for layer in self.image_layers]
        layers = [self.write_blob(log, tar, {}, lease) for tar in tars]
        chain, parent = [], None
        for layer in self.image_layers:
            parent = chain_id(parent, diff_id(layer))
            chain.append(parent)
        config = self.write_blob(log, json.dumps({"rootfs": layers}).encode(), {}, lease)
        manifest = self.write_blob(log, json.dumps({"config": config, "layers": layers}).encode(),
                                   {"children": [config, *layers], "chain": chain}, lease)
        index = self.write_blob(log, json.dumps({"manifests": [manifest]}).encode(), {"children": [manifest]},
                                lease)
        self.update_meta(log, lambda s: s["images"].__setitem__(name, {"target": manifest}))
        for n in range(5):  # GC labels on the blobs the import wrote, one transaction each
            self.update_meta(log, lambda s, n=n: s["content"][manifest].__setitem__(f"label{n}", True))
        if index != manifest:  # the archive's index: deleted once the image names its manifest
            log.do(Unlink(f"{BLOBS}/{index}"))
            self.update_meta(log, lambda s: s["content"].pop(index, None))
        self.unpack(log, lease, layers, config)
        self.update_meta(log, lambda s: s["leases"].pop(lease))
        self.collect(log)  # the lease's removal makes the store dirty: a collection runs

    def create(self, log: StepLog, container: str, image: str) -> None:
        """`ctr containers create` (`NewContainer` under a lease): the active snapshot,
        the container record, the lease removed, the collection that triggers."""
        meta = self.meta(log.root)
        if container in meta["containers"]:
            raise FsError(errno.EEXIST, container)
        chain = self.image_chain(log.root, image)
        if not chain or chain[-1] not in meta["snapshots"]:
            raise FsError(errno.ENOENT, image)
        if container in meta["snapshots"]:
            raise FsError(errno.EEXIST, container)  # "snapshot app: already exists"
        lease = f"create-{self.next('lease')}"
        self.update_meta(log, lambda s: s["leases"].__setitem__(lease, {"content": [], "snapshots": []}))
        self.update_meta(log, lambda s: s["leases"][lease].__setitem__("expires", "24h"))
        self.prepare(log, container, chain[-1], lease)
        self.update_meta(log, lambda s: s["containers"].__setitem__(container,
                                                                    {"image": image, "snapshot": container}))
        self.update_meta(log, lambda s: s["leases"].pop(lease))
        self.collect(log)  # the lease's removal makes the store dirty: a collection runs

    def rm_container(self, log: StepLog, container: str) -> None:
        """`ctr containers rm` (`container.Delete` with `WithSnapshotCleanup`): the
        snapshot record, then the container record; then the garbage collection the
        removal triggers (its transaction, the snapshotter cleaned)."""
        record = self.meta(log.root)["containers"].get(container)
        if record is None:
            raise FsError(errno.ENOENT, container)
        key = record.get("snapshot")
        if key in self.meta(log.root)["snapshots"]:
            self.update_meta(log, lambda s: s["snapshots"].pop(key))
        self.update_meta(log, lambda s: s["containers"].pop(container))
        self.collect(log, dirty=True)
        self.mounted.pop(container, None)

    def rmi(self, log: StepLog, name: str) -> None:
        """`ctr images rm --sync`: the image record, then garbage collection."""
        meta = self.meta(log.root)
        if name not in meta["images"]:
            raise FsError(errno.ENOENT, name)
        self.update_meta(log, lambda s: s["images"].pop(name))
        self.collect(log)

    # -- garbage collection --------------------------------------------------------------

    def referenced(self, meta: Mapping[str, Any]) -> tuple[set[str], set[str]]:
        """(content digests, snapshot keys) images and containers reach."""
        content: set[str] = set()
        snaps: set[str] = set()
        for image in meta["images"].values():
            target = image["target"]
            content.add(target)
            record = meta["content"].get(target) or {}
            content.update(record.get("children", []))
            chain = record.get("chain", [])
            if chain:
                snaps.update(self._meta_chain(meta, chain[-1]))
        for container in meta["containers"].values():
            snaps.update(self._meta_chain(meta, container.get("snapshot")))
        for lease in meta["leases"].values():
            content.update(lease.get("content", []))
            for key in lease.get("snapshots", []):
                snaps.update(self._meta_chain(meta, key))
        return content, snaps

    def _meta_chain(self, meta: Mapping[str, Any], key: str | None) -> list[str]:
        out: list[str] = []
        while key and key in meta["snapshots"] and key not in out:
            out.append(key)
            key = meta["snapshots"][key].get("parent")
        return out

    def collect(self, log: StepLog, dirty: bool = False) -> None:
        """`GarbageCollect`: unreferenced records out of meta.db in one transaction (what
        an image, a container or a lease reaches stays); then the content store (blobs
        meta.db no longer knows) and, when a snapshot record went (or one was removed
        before: `dirty`), the snapshotter."""
        meta = self.meta(log.root)
        content, snaps = self.referenced(meta)
        gone_content = sorted(d for d in meta["content"] if d not in content)
        gone_snaps = sorted(k for k in meta["snapshots"] if k not in snaps)

        def drop(state: dict[str, Any]) -> None:
            for d in gone_content:
                state["content"].pop(d)
            for k in gone_snaps:
                state["snapshots"].pop(k)
        self.update_meta(log, drop)
        known = self.meta(log.root)["content"]
        for digest in names(log.root, BLOBS):
            if digest not in known:
                log.do(Unlink(f"{BLOBS}/{digest}"))
        if gone_snaps or dirty:
            self.clean_snapshotter(log)

    def clean_snapshotter(self, log: StepLog) -> None:
        """`cleanupSnapshotter`: each snapshot meta.db does not know removed, children
        first (the snapshotter's transaction, then its directory), then `Cleanup`:
        directories the snapshotter's db does not know."""
        known = self.meta(log.root)["snapshots"]
        while True:
            snaps = self.snapshotter(log.root)["snapshots"]
            parents = {r.get("parent") for r in snaps.values()}
            leaves = sorted(k for k in snaps if k not in known and k not in parents)
            if not leaves:
                break
            key = leaves[0]
            sid = str(snaps[key]["id"])
            self.update_snapshotter(log, lambda s, key=key: s["snapshots"].pop(key))
            if lookup(log.root, split(f"{SNAPSHOTS}/{sid}")) is not None:
                log.do(RemoveTree(f"{SNAPSHOTS}/{sid}"))
        ids = {str(r["id"]) for r in self.snapshotter(log.root)["snapshots"].values()}
        for name in names(log.root, SNAPSHOTS):
            if name not in ids:
                log.do(RemoveTree(f"{SNAPSHOTS}/{name}"))

    # -- recovery ------------------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        """containerd's start: both databases open; garbage collection at start-up."""
        for path in (META_DB, SNAP_DB):
            if bolt.read(root, path) is None:
                return Recovery(None, f"containerd does not start: {path} is corrupt (invalid database)")
        log = StepLog(root)
        self.recovering = True
        try:
            self.collect(log)
        finally:
            self.recovering = False
        root = log.root
        for record in self.snapshotter(root)["snapshots"].values():
            work = split(f"{SNAPSHOTS}/{record['id']}/work/work")
            node = lookup(root, work)
            if isinstance(node, Dir) and node.entries:
                root = remove_subtree(root, work, Dir(mode=0))  # type: ignore[arg-type]
        return Recovery(root)

    # -- the invariant hooks -------------------------------------------------------------

    def store_problems(self, root: Dir) -> list[tuple[str, str]]:
        """(path, what is wrong): a corrupt database; an image whose blobs or snapshots
        are missing or whose unpacked files differ from its layers; a container whose
        snapshot chain does not resolve; meta.db and the snapshotter disagreeing."""
        out: list[tuple[str, str]] = []
        for path in (META_DB, SNAP_DB):
            if bolt.read(root, path) is None:
                out.append((path, f"{path} is corrupt: containerd does not start"))
        if out:
            return out
        meta, snaps = self.meta(root), self.snapshotter(root)["snapshots"]
        for name, image in sorted(meta["images"].items()):
            record = meta["content"].get(image["target"])
            for digest in [image["target"], *(record or {}).get("children", [])]:
                blob = lookup(root, split(f"{BLOBS}/{digest}"))
                if not isinstance(blob, File) or blob_digest(blob.content) != digest:
                    problem = f"image {name}: blob sha256:{digest[:12]} is missing or damaged"
                    out.append((f"{BLOBS}/{digest}", problem))
        used = self.referenced(dict(meta, leases={}))[1]
        for key, record in sorted(meta["snapshots"].items()):
            if key not in snaps:
                if key in used:  # one an unpack in flight left is a leak (store_leaks)
                    problem = f"snapshot {key} is in meta.db but the snapshotter does not know it"
                    out.append((SNAP_DB, problem))
                continue
            fs = self.fs_of(root, key)
            if not isinstance(fs, Dir):
                out.append((f"{SNAPSHOTS}/{snaps[key]['id']}/fs", f"snapshot {key} has no fs directory"))
            elif record.get("kind") == "committed" and record.get("diff") and diff_id(fs) != record["diff"]:
                out.append((f"{SNAPSHOTS}/{snaps[key]['id']}/fs",
                            f"committed snapshot {key} differs from its layer (files lost or cut)"))
        for name in sorted(meta["containers"]):
            found = self.container_layers(root, name)
            if isinstance(found, ErrorEntry):
                out.append((META_DB, f"container {name} cannot be mounted: {found.reason}"))
        return out

    def store_leaks(self, root: Dir) -> list[tuple[str, str]]:
        """(path, what) for storage only a later garbage collection that removes a
        snapshot, or nothing, would remove: snapshot directories the snapshotter does not
        know, snapshotter records meta.db does not know, blobs meta.db does not know,
        ingests a dead writer left."""
        if bolt.read(root, META_DB) is None or bolt.read(root, SNAP_DB) is None:
            return []
        meta, snaps = self.meta(root), self.snapshotter(root)["snapshots"]
        ids = {str(r["id"]) for r in snaps.values()}
        out = [(f"{SNAPSHOTS}/{d}", f"snapshot directory {SNAPSHOTS}/{d} belongs to no snapshot")
               for d in names(root, SNAPSHOTS) if d not in ids]
        out.extend((SNAP_DB, f"snapshot {k} is in the snapshotter but not in meta.db") for k in sorted(snaps)
                   if k not in meta["snapshots"])
        used = self.referenced(dict(meta, leases={}))[1]
        out.extend((META_DB, f"snapshot {k} is in meta.db but the snapshotter does not know it (an unpack "
                             "cut between the snapshotter's commit and meta.db's)")
                   for k in sorted(meta["snapshots"]) if k not in snaps and k not in used)
        out.extend((f"{BLOBS}/{d}", f"blob sha256:{d[:12]} is not in meta.db") for d in names(root, BLOBS)
                   if d not in meta["content"])
        out.extend((f"{INGEST}/{d}", f"ingest {INGEST}/{d} was never committed") for d in names(root, INGEST))
        for lease, held in sorted(meta["leases"].items()):
            what = (f"lease {lease} of a dead import holds {len(held.get('content', []))} blobs and "
                    f"{len(held.get('snapshots', []))} snapshots until it expires (24 h)")
            out.append((META_DB, what))
        return out

    def op_scope(self, op: Any) -> tuple[str, ...]:
        return view_scope(op, DEFAULT_IMAGE, DEFAULT_CONTAINER)


class Containerd(Driver):
    name = "containerd"
    description = "containerd's content store, overlayfs snapshotter and metadata (bbolt)"
    layered = False
    OPTIONS = {
        "sync_fs": Option(
            (bool,), False,
            "syncfs each unpacked layer before its snapshot is committed (containerd 2.0's "
            "image_pull_with_sync_fs, PR #9401; 1.6 does not)",
        ),
        "redirect_dir": OverlayFS.OPTIONS["redirect_dir"],
    }
    EXTRA_OPS = {
        "pull": ((), ("image",)),
        "create-container": ((), ("container", "image")),
        "rm-container": ((), ("container",)),
        "rmi": ((), ("image",)),
    }
    WORKLOAD_ROOT = f"{CONTAINERS_VIEW}/{DEFAULT_CONTAINER}"
    MOUNT = ContainerdMount

    @classmethod
    def check_workload(cls, options: Mapping[str, Any], layers: list[Dir], upper: Dir | None,
                       ops: Sequence[Any]) -> str | None:
        if upper is not None and any(op.kind in ("pull", "create-container") for op in ops):
            return ("[upper] is the initial container's snapshot, but the workload pulls the image "
                    "or creates its own container")
        return None

    def client(self, kind: str, args: Mapping[str, Any]) -> Any:
        return engine_client(kind, args, DEFAULT_IMAGE, DEFAULT_CONTAINER) if kind in self.EXTRA_OPS else None
