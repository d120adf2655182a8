"""containers/storage's overlay driver and its layer, image and container stores, as
podman, buildah and CRI-O use them (containers/storage `drivers/overlay/overlay.go`,
`layers.go`, `images.go`, `containers.go`, `store.go`; podman 4.3.1 vendors v1.43.0),
as a driver model: overlayfs plus a store.

The backing store is the graph root (`/var/lib/containers/storage`):

    overlay/<id>/diff, link, lower, work, merged   a layer, as Docker's overlay2 (the
                                                  driver is its fork; `models/overlay_layers.py`)
    overlay/<id>/empty                            a base layer's empty lower dir
    overlay/l/<link>                              symlink to `../<id>/diff`
    overlay-layers/layers.json                    the layer records; `flags.incomplete`
    overlay-layers/<id>.tar-split.gz              a layer's tar headers
    overlay-images/images.json, <id>/             the image records and their big data
    overlay-containers/containers.json, <id>/userdata   the container records

Every store file is written with `ioutils.AtomicWriteFile` (temp file, fdatasync,
rename); `link` and `lower` with `os.WriteFile` (in place, no fsync); a layer's files
are extracted with no fsync. Seen on this machine with `strace` on podman 4.3.1.

The view is what `podman images` and `podman ps -a` show: every named image at
`images/<name>/` and every container at `containers/<name>/`; file ops address a
container by those paths and run on its overlay mount (`podman mount`).

Ops, with the steps containers/storage makes:

- `pull [image]` (`podman load`/`pull`; `layerStore.Put` per layer a store does not
  have, bottom first): from v1.40 (commit 70cd76bf, "Create a persistent record of an
  incomplete layer before creating it") the record is saved with `incomplete` first;
  then the driver's `create` (`<id>/`, `diff/`, the `l/` symlink, `link`, `work/`,
  `merged/`, `lower` or `empty/`); then the layer extracted into `diff/`, its
  tar-split saved, layers.json saved (digests) and saved again without `incomplete`;
  before the first layer, the driver's probe for idmapped lower layers (a temp dir in
  `overlay/`, made and removed).
  Before v1.40 the driver's directory comes first and the record after it. Then the
  image: images.json saved with the record, `overlay-images/<id>/`, its config and
  manifest (each saved atomically, images.json after each).
- `create-container [container] [image]` (`podman create`; `create` is the file op):
  the container's layer (`Put` with no diff), then the container record
  (containers.json) and `overlay-containers/<id>/userdata`.
- file ops in `containers/<c>/`: the overlayfs model on the container's layers.
- `commit image [container]`: the container layer's diff registered as a new layer on
  the image's top layer, and a new image.
- `rm-container [container]` (`podman rm`; `store.DeleteContainer`): the container
  record dropped, its directory removed, its layer deleted (`deleteInternal`: record
  saved `incomplete`, the driver's `Remove`, the tar-split, the record dropped);
  containers/storage runs the three in goroutines, modelled in the order strace shows.
- `rmi [image]`: a name another image record still has... only the name goes;
  otherwise the image record and directory, then each layer no other image or container
  uses, top down, deleted as above.

Recovery is the next podman command's store load (`layerStore.load`): a layers.json
that does not decode stops podman; every record flagged `incomplete` is deleted
(driver `Remove`, tar-split) and layers.json saved (v1.40's fix for layers a killed
pull left). The driver's `Remove` with an empty `link` removes all of `l/`
(`RemoveAll(l/ + "")`, still so in v1.43); from v1.11 (commit f2ec8a7d, "Recreate
symlink when not found"; podman#5986's fix) a mount that finds an `l/` link missing
recreates every link from the layers' `link` files (`recreateSymlinks`), so missing
links heal while `link` files are intact.

Options: `storage` (the containers/storage version: 1.10, 1.38, 1.43), `link_files`
(`write`, as every release; `atomic`: temp file, fsync, rename, the patch "sync write
link and lower files to avoid file corruption caused by poweroff", commit 3209e6f7,
proposed for podman#12337 and never merged) and overlayfs's `redirect_dir`.
Simplifications: ids are chain digests (layers), the names given (containers) and 12-hex
digests (images); libpod's own database (`libpod/bolt_state.db`) and the run root
(`mountpoints.json`) are outside the model; big-data contents are placeholders.
"""

from __future__ import annotations

import base64
import errno
import json
from collections.abc import Mapping, Sequence
from typing import Any

from models.containers import (
    CONTAINERS_VIEW,
    IMAGES_VIEW,
    CommitContainer,
    engine_client,
    view_scope,
)
from models.docker_overlay2 import chain_id, diff_id, exported, image_id
from models.driver import Driver, Option, Recovery, handles
from models.layers import build_steps
from models.overlay_layers import EngineMount, container_overlay, names, read_text
from models.overlayfs import OverlayFS, OverlayMount
from models.steps import MakeSymlink, Mkdir, RemoveTree, Rmdir, StepLog, Unlink, remove_subtree
from models.tree import Dir, ErrorEntry, File, FsError, Node, ensure_dirs, lookup, replace, split

HOME = "overlay"
LAYERS_DIR = "overlay-layers"
LAYERS_JSON = f"{LAYERS_DIR}/layers.json"
IMAGES_DIR = "overlay-images"
IMAGES_JSON = f"{IMAGES_DIR}/images.json"
CONTAINERS_DIR = "overlay-containers"
CONTAINERS_JSON = f"{CONTAINERS_DIR}/containers.json"
LOCKS = (f"{LAYERS_DIR}/layers.lock", f"{IMAGES_DIR}/images.lock", f"{CONTAINERS_DIR}/containers.lock",
         "storage.lock")
INCOMPLETE = "incomplete"
DEFAULT_IMAGE = "image"
DEFAULT_CONTAINER = "app"
VERSIONS = ("1.10", "1.38", "1.43")
LINKS_RECREATED = (1, 11)  # commit f2ec8a7d (2019): a missing l/ link is recreated at mount
RECORD_FIRST = (1, 40)  # commit 70cd76bf (2022): the incomplete record is saved before the driver's create
LINKDIR_AT_CREATE = (1, 12)  # commit 2581a719 (2019): the driver's create makes `l/` when it is missing
#: a layer's tar-split (headers to rebuild its tarball): its content is not modelled
TAR_SPLIT = b"tar-split"


def read_records(root: Dir, path: str) -> list[dict[str, Any]] | None:
    """A store file's records: [] when it does not exist, None when it does not decode
    (podman then fails: "unexpected end of JSON input")."""
    node = lookup(root, split(path))
    if node is None:
        return []
    if not isinstance(node, File):
        return None
    try:
        doc = json.loads(node.content)
    except ValueError:
        return None
    if not isinstance(doc, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                            for r in doc):
        return None
    return doc


def records_bytes(records: Sequence[Mapping[str, Any]]) -> bytes:
    return json.dumps(list(records), sort_keys=True, separators=(",", ":")).encode()


def _by_name(records: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any] | None:
    for record in records:
        if name in record.get("names", ()) or record["id"] == name:
            return dict(record)
    return None




class StorageMount(EngineMount):
    """A containers/storage graph root: the stores, and each mounted container."""

    HOME = HOME
    LIFETIME = ("mounted",)

    # -- layout --------------------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        """The graph root before the workload: the image there unless the workload pulls
        it, container `app` created on it unless the workload creates its own."""
        self.image_layers = list(layers) or [Dir()]
        self.mounted: dict[str, str] = {}  # container name -> its layer, while mounted
        root = Dir()
        for path in (f"{HOME}/l", LAYERS_DIR, IMAGES_DIR, CONTAINERS_DIR):
            root = ensure_dirs(root, split(path))
        for lock in LOCKS:
            root = replace(root, split(lock), File(b"", 0o644))
        log = StepLog(root)
        if not any(op.kind == "pull" for op in ops):
            self.pull(log, DEFAULT_IMAGE)
            if not any(op.kind in ("pull", "create-container") for op in ops):
                self.create(log, DEFAULT_CONTAINER, DEFAULT_IMAGE)
                if upper is not None:
                    layer = self.container_layer(log.root, DEFAULT_CONTAINER)
                    log.do_all(build_steps(upper, f"{HOME}/{layer}/diff"))
        self.mounted = {}
        return log.root

    @property
    def version(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.options["storage"].split("."))

    # -- reading the stores --------------------------------------------------------------

    def layers(self, root: Dir) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in read_records(root, LAYERS_JSON) or []}

    def complete_layers(self, root: Dir) -> dict[str, dict[str, Any]]:
        return {i: r for i, r in self.layers(root).items() if not r.get("flags", {}).get(INCOMPLETE)}

    def images(self, root: Dir) -> list[dict[str, Any]]:
        return read_records(root, IMAGES_JSON) or []

    def containers(self, root: Dir) -> list[dict[str, Any]]:
        return read_records(root, CONTAINERS_JSON) or []

    def container_layer(self, root: Dir, name: str) -> str | None:
        record = _by_name(self.containers(root), name)
        return record.get("layer") if record else None

    def chain(self, root: Dir, top: str) -> list[str]:
        """Layer `top` and its parents, top first (stops at a layer not recorded)."""
        layers = self.layers(root)
        out: list[str] = []
        seen: str | None = top
        while seen and seen in layers and seen not in out:
            out.append(seen)
            seen = layers[seen].get("parent")
        return out

    def resolve_lower(self, root: Dir, item: str) -> str | None:
        """From v1.11 a missing `l/` link is recreated when a mount needs it
        (`recreateSymlinks`, from the layers' `link` files)."""
        found = self.resolve_link(root, item)
        if found is not None or self.version < LINKS_RECREATED:
            return found
        wanted = item.removeprefix("l/")
        for layer in names(root, HOME):
            if layer != "l" and read_text(root, f"{HOME}/{layer}/link") == wanted:
                return f"{HOME}/{layer}/diff"
        return None

    # -- views ---------------------------------------------------------------------------

    def view(self, root: Dir) -> Dir:
        if read_records(root, LAYERS_JSON) is None or read_records(root, IMAGES_JSON) is None:
            broken: Node = ErrorEntry(errno.EIO, "a store file does not decode: podman fails")
            return Dir({CONTAINERS_VIEW: broken, IMAGES_VIEW: broken})
        images = {}
        for record in self.images(root):
            for name in record.get("names", ()):
                images[name] = self.image_view(root, record)
        containers = {}
        for record in self.containers(root):
            for name in record.get("names", ()):
                containers[name] = self.container_view(root, record)
        return Dir({CONTAINERS_VIEW: Dir(dict(sorted(containers.items()))),
                    IMAGES_VIEW: Dir(dict(sorted(images.items())))})

    def image_view(self, root: Dir, record: Mapping[str, Any]) -> Node:
        top = record.get("layer")
        layers = self.complete_layers(root)
        if not top or top not in layers:
            return ErrorEntry(errno.ENOENT, f"image {record['id']}: layer {top} is not known")
        diffs = []
        for layer in self.chain(root, top):
            if layer not in layers:
                return ErrorEntry(errno.ENOENT, f"layer {layer} is not known")
            diff = lookup(root, split(f"{HOME}/{layer}/diff"))
            if not isinstance(diff, Dir):
                return ErrorEntry(errno.ENOENT, f"layer {layer}: {HOME}/{layer}/diff is missing")
            diffs.append(diff)
        return self.merged(diffs, None)

    def container_view(self, root: Dir, record: Mapping[str, Any]) -> Node:
        layer = record.get("layer")
        if not layer or layer not in self.complete_layers(root):
            return ErrorEntry(errno.ENOENT, f"container {record['id']}: layer {layer} is not known")
        upper = lookup(root, split(f"{HOME}/{layer}/diff"))
        if not isinstance(upper, Dir):
            return ErrorEntry(errno.ENOENT, f"{HOME}/{layer}/diff is missing")
        lowers = self.lower_dirs(root, layer)
        if isinstance(lowers, ErrorEntry):
            return lowers
        return self.merged([node for _, node in lowers], upper)

    # -- system calls --------------------------------------------------------------------

    def new_lifetime(self) -> None:
        self.mounted = {}

    def container_mount(self, log: StepLog, container: str) -> tuple[OverlayMount, dict[str, str]]:
        """`podman mount`: the container's layer on overlayfs (the kernel makes `work/work`).
        The overlay model is rebuilt from the tree for each op; its in-memory state is the
        kernel's and starts afresh on every mount."""
        layer = self.container_layer(log.root, container)
        if layer is None or layer not in self.complete_layers(log.root):
            raise FsError(errno.ENOENT, f"{CONTAINERS_VIEW}/{container}")
        lowers = self.lower_dirs(log.root, layer)
        if isinstance(lowers, ErrorEntry):
            raise FsError(lowers.errno, f"{CONTAINERS_VIEW}/{container}")
        if self.mounted.get(container) != layer:
            work = f"{HOME}/{layer}/work/work"
            if lookup(log.root, split(work)) is None:
                log.do(Mkdir(work, 0))
            self.mounted[container] = layer
        inner = container_overlay(self.options["redirect_dir"], lowers)
        return inner, {"upper": f"{HOME}/{layer}/diff", "work": f"{HOME}/{layer}/work"}

    @handles(CommitContainer)
    def commit_container(self, call: CommitContainer, log: StepLog) -> None:
        self.commit(log, call.container, call.image)

    # -- the stores ----------------------------------------------------------------------

    def store_records(self, log: StepLog, path: str) -> list[dict[str, Any]]:
        records = read_records(log.root, path)
        if records is None:
            raise FsError(errno.EIO, path)
        return records

    def save(self, log: StepLog, path: str, records: Sequence[Mapping[str, Any]]) -> None:
        """`saveLayers`/`Save`: the whole file through AtomicWriteFile (fdatasync)."""
        self.atomic_write(log, path, records_bytes(records), 0o600)

    def set_layer(self, log: StepLog, record: Mapping[str, Any] | None, layer: str) -> None:
        """layers.json saved with `record` for `layer` (None: without it)."""
        records = [r for r in self.store_records(log, LAYERS_JSON) if r["id"] != layer]
        if record is not None:
            records.append(dict(record))
        self.save(log, LAYERS_JSON, records)

    def put_layer(self, log: StepLog, layer: str, parent: str | None, diff: Dir | None) -> None:
        """`layerStore.Put`."""
        record: dict[str, Any] = {"id": layer}
        if parent:
            record["parent"] = parent
        incomplete = dict(record, flags={INCOMPLETE: True})
        if self.version >= RECORD_FIRST:
            self.set_layer(log, incomplete, layer)
            self.create_layer_dir(log, layer, parent)
        else:
            self.create_layer_dir(log, layer, parent)
            if diff is not None:
                self.set_layer(log, incomplete, layer)
        if diff is not None:
            self.apply_diff(log, layer, diff)
            extracted = lookup(log.root, split(f"{HOME}/{layer}/diff"))
            assert isinstance(extracted, Dir)
            record["diff-digest"] = incomplete["diff-digest"] = diff_id(extracted)
            if self.version >= RECORD_FIRST:
                self.set_layer(log, incomplete, layer)
        self.set_layer(log, record, layer)

    def create_layer_dir(self, log: StepLog, layer: str, parent: str | None) -> None:
        """The overlay driver's `create`, in the order strace shows on v1.43; from v1.12 it
        first makes `l/` if it is missing (MkdirAll)."""
        if self.version >= LINKDIR_AT_CREATE and lookup(log.root, split(self.links)) is None:
            log.do(Mkdir(self.links, 0o755))
        home = f"{HOME}/{layer}"
        log.do(Mkdir(home, 0o700))
        log.do(Mkdir(f"{home}/diff", 0o555))  # defaultPerms; extraction sets the root's mode
        link = f"L{self.next('link', 0)}"
        log.do(MakeSymlink(f"../{layer}/diff", f"{self.links}/{link}"))
        self.write_link_file(log, f"{home}/link", link, 0o644)
        log.do(Mkdir(f"{home}/work", 0o700))
        log.do(Mkdir(f"{home}/merged", 0o700))
        if parent is None:
            log.do(Mkdir(f"{home}/empty", 0o700))
            return
        parent_link = read_text(log.root, f"{HOME}/{parent}/link") or ""
        parent_lower = read_text(log.root, f"{HOME}/{parent}/lower")
        lower = f"l/{parent_link}" + (f":{parent_lower}" if parent_lower else "")
        self.write_link_file(log, f"{home}/lower", lower, 0o666)

    def write_link_file(self, log: StepLog, path: str, text: str, mode: int) -> None:
        if self.options["link_files"] == "atomic":
            self.atomic_write(log, path, text.encode(), mode)
        else:
            self.write_in_place(log, path, text.encode(), mode)

    def apply_diff(self, log: StepLog, layer: str, diff: Dir) -> None:
        """The layer untarred into `diff/` by a helper that pivot_roots into it (no
        fsync), then its tar-split saved."""
        target = f"{HOME}/{layer}/diff"
        mark = f"{target}/.pivot_root{self.next('pivot')}"
        log.do(Mkdir(mark, 0o700))
        log.do(Rmdir(mark))
        log.do_all(build_steps(diff, target))
        self.atomic_write(log, f"{LAYERS_DIR}/{layer}.tar-split.gz", TAR_SPLIT, 0o600)

    def delete_layer(self, log: StepLog, layer: str) -> None:
        """`layerStore.deleteInternal`: flagged incomplete (saved), the driver's Remove,
        the tar-split, the record dropped (saved)."""
        record = self.layers(log.root).get(layer)
        if record is not None and not record.get("flags", {}).get(INCOMPLETE):
            self.set_layer(log, dict(record, flags={INCOMPLETE: True}), layer)
        self.remove_layer_dir(log, layer, empty_link_removes_all=True)
        if lookup(log.root, split(f"{LAYERS_DIR}/{layer}.tar-split.gz")) is not None:
            log.do(Unlink(f"{LAYERS_DIR}/{layer}.tar-split.gz"))
        self.set_layer(log, None, layer)

    def put_image(self, log: StepLog, image: str, top: str, name: str) -> None:
        """`imageStore.Create` and its big data (config, manifest); the name moves to
        this image. An image that is there only gets the name."""
        records = self.store_records(log, IMAGES_JSON)
        moved = [dict(r, names=[n for n in r.get("names", ()) if n != name]) for r in records]
        mine = [r for r in moved if r["id"] == image]
        if mine:
            mine[0]["names"] = mine[0]["names"] + [name]
            if moved != records:
                self.save(log, IMAGES_JSON, moved)
            return
        record: dict[str, Any] = {"id": image, "layer": top, "names": [name]}
        self.save(log, IMAGES_JSON, moved + [record])
        home = f"{IMAGES_DIR}/{image}"
        log.do(Mkdir(home, 0o700))
        config = json.dumps({"rootfs": self.chain(log.root, top)[::-1]}, sort_keys=True).encode()
        manifest = b'{"schemaVersion":2}'
        for key, data in ((f"sha256:{image}", config), (f"manifest-sha256:{image}", manifest),
                          ("manifest", manifest), (f"signature-{image}", b"")):
            item = key if key == "manifest" else "=" + base64.b64encode(key.encode()).decode()
            self.atomic_write(log, f"{home}/{item}", data, 0o600)
            record = dict(record, **{"big-data-names": [*record.get("big-data-names", []), key]})
            self.save(log, IMAGES_JSON, moved + [record])
        for _ in range(2):  # the image's digest and its names set (`SetNames`), each saved
            self.save(log, IMAGES_JSON, moved + [record])

    def pull(self, log: StepLog, name: str) -> None:
        """`podman load`: each layer the store lacks put, bottom first; the image."""
        parent: str | None = None
        ids = []
        known = self.complete_layers(log.root)
        probed = False
        for layer in self.image_layers:
            lid = chain_id(parent, diff_id(layer))
            if lid not in known:
                if not probed:
                    self.probe_idmapped_mounts(log)
                    probed = True
                self.put_layer(log, lid, parent, layer)
            parent = lid
            ids.append(lid)
        assert parent is not None
        self.put_image(log, image_id(ids), parent, name)

    def probe_idmapped_mounts(self, log: StepLog) -> None:
        """The overlay driver's check whether the kernel can mount idmapped lower layers
        (`supportsIdmappedLowerLayers`), made before it applies a layer: a temp dir with
        `merged`, `lower`, `lower-mapped`, `upper`, `work` (the kernel's `work/work` at the
        trial mount), removed again. A kill inside it leaves the dir in `overlay/`."""
        temp = f"{HOME}/compat{self.next('compat')}"
        log.do(Mkdir(temp, 0o700))
        for name in ("merged", "lower", "lower-mapped", "upper", "work"):
            log.do(Mkdir(f"{temp}/{name}", 0o700))
        log.do(Mkdir(f"{temp}/work/work", 0))
        log.do(RemoveTree(temp))

    def fresh_container_id(self, root: Dir, name: str) -> str:
        """The name, unless a crash left something holding it (podman's ids are random)."""
        cid = name
        taken = {r["id"] for r in self.containers(root)}
        while cid in taken or lookup(root, split(f"{HOME}/ctr-{cid}")) is not None or \
                lookup(root, split(f"{CONTAINERS_DIR}/{cid}")) is not None:
            cid = f"{name}-{self.next('container')}"
        return cid

    def create(self, log: StepLog, container: str, image: str) -> None:
        """`podman create`: the container's layer on the image's top layer, the record,
        its directory."""
        if _by_name(self.containers(log.root), container) is not None:
            raise FsError(errno.EEXIST, container)
        record = _by_name(self.images(log.root), image)
        top = record.get("layer") if record else None
        if record is None or not top or top not in self.complete_layers(log.root):
            raise FsError(errno.ENOENT, image)
        cid = self.fresh_container_id(log.root, container)
        layer = f"ctr-{cid}"
        self.put_layer(log, layer, top, None)
        containers = self.store_records(log, CONTAINERS_JSON)
        self.save(log, CONTAINERS_JSON, containers + [{"id": cid, "image": record["id"], "layer": layer,
                                                        "names": [container]}])
        self.set_layer(log, self.layers(log.root)[layer], layer)  # saved once more, as strace shows
        home = f"{CONTAINERS_DIR}/{cid}"
        log.do(Mkdir(home, 0o700))
        for path, mode in (("userdata", 0o700), ("userdata/artifacts", 0o755), ("userdata/secrets", 0o755),
                           ("userdata/shm", 0o700)):  # the last three are libpod's
            log.do(Mkdir(f"{home}/{path}", mode))

    def commit(self, log: StepLog, container: str, name: str) -> None:
        """`podman commit`: the container layer's diff (overlay private xattrs dropped)
        put as a layer on the image's top layer, and an image of that chain."""
        record = _by_name(self.containers(log.root), container)
        layer = record.get("layer") if record else None
        base = self.layers(log.root).get(layer or "", {}).get("parent")
        diff = lookup(log.root, split(f"{HOME}/{layer}/diff")) if layer else None
        if record is None or not isinstance(diff, Dir) or not base:
            raise FsError(errno.ENOENT, container)
        changes = exported(diff)
        self.atomic_write(log, f"{CONTAINERS_DIR}/{record['id']}/userdata/buildah.json", b"{}", 0o600)
        lid = chain_id(base, diff_id(changes))
        if lid not in self.complete_layers(log.root):
            self.put_layer(log, lid, base, changes)
        chain = self.chain(log.root, lid)[::-1]
        self.put_image(log, image_id(chain), lid, name)

    def rm_container(self, log: StepLog, container: str) -> None:
        """`podman rm`: libpod's artifacts dir, then `store.DeleteContainer` (the record,
        the directory and the layer, in goroutines; in the order strace shows here); a
        mounted container is unmounted first (`merged/` removed)."""
        records = self.containers(log.root)
        record = _by_name(records, container)
        if record is None:
            raise FsError(errno.ENOENT, container)
        home = f"{CONTAINERS_DIR}/{record['id']}"
        if lookup(log.root, split(f"{home}/userdata/artifacts")) is not None:
            log.do(Rmdir(f"{home}/userdata/artifacts"))
        self.save(log, CONTAINERS_JSON, [r for r in records if r["id"] != record["id"]])
        if lookup(log.root, split(home)) is not None:
            log.do(RemoveTree(home))
        layer = record.get("layer")
        mounted = self.mounted.pop(container, None)
        if mounted and lookup(log.root, split(f"{HOME}/{layer}/merged")) is not None:
            log.do(Rmdir(f"{HOME}/{layer}/merged"))
        if layer and layer in self.layers(log.root):
            self.delete_layer(log, layer)

    def rmi(self, log: StepLog, name: str) -> None:
        """`podman rmi`: a name of an image with other names just goes; otherwise the
        image (EBUSY while a container uses it) and each layer only it used, top down."""
        records = self.images(log.root)
        record = _by_name(records, name)
        if record is None:
            raise FsError(errno.ENOENT, name)
        if len(record.get("names", ())) > 1:
            kept = [dict(r, names=[n for n in r["names"] if n != name]) if r["id"] == record["id"] else r
                    for r in records]
            self.save(log, IMAGES_JSON, kept)
            return
        if any(c.get("image") == record["id"] for c in self.containers(log.root)):
            raise FsError(errno.EBUSY, name)
        self.save(log, IMAGES_JSON, [r for r in records if r["id"] != record["id"]])
        if lookup(log.root, split(f"{IMAGES_DIR}/{record['id']}")) is not None:
            log.do(RemoveTree(f"{IMAGES_DIR}/{record['id']}"))
        for layer in self.chain(log.root, record.get("layer", "")):
            if layer in self.used_layers(log.root):
                break
            self.delete_layer(log, layer)

    def used_layers(self, root: Dir) -> set[str]:
        """Every layer an image or container needs (each one's chain)."""
        used: set[str] = set()
        for record in self.images(root) + self.containers(root):
            used.update(self.chain(root, record.get("layer", "")))
        return used

    # -- recovery ------------------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        """The next podman command's store load: a layers.json that does not decode stops
        it; layers flagged incomplete are deleted and layers.json saved; mounting a
        container empties its `work/work`."""
        for path in (LAYERS_JSON, IMAGES_JSON, CONTAINERS_JSON):
            if read_records(root, path) is None:
                return Recovery(None, f"podman fails: {path} does not decode (unexpected end of JSON input)")
        if lookup(root, split(self.links)) is None:
            root = ensure_dirs(root, split(self.links))
        incomplete = [i for i, r in self.layers(root).items() if r.get("flags", {}).get(INCOMPLETE)]
        if incomplete:
            log = StepLog(root)
            for layer in incomplete:
                self.remove_layer_dir(log, layer, empty_link_removes_all=True)
                if lookup(log.root, split(f"{LAYERS_DIR}/{layer}.tar-split.gz")) is not None:
                    log.do(Unlink(f"{LAYERS_DIR}/{layer}.tar-split.gz"))
            kept = [r for r in read_records(log.root, LAYERS_JSON) or [] if r["id"] not in incomplete]
            root = replace(log.root, split(LAYERS_JSON), File(records_bytes(kept), 0o600))
        for record in self.containers(root):
            work = split(f"{HOME}/{record.get('layer')}/work/work")
            node = lookup(root, work)
            if isinstance(node, Dir) and node.entries:
                root = remove_subtree(root, work, Dir(mode=0))  # type: ignore[arg-type]
        return Recovery(root)

    # -- the invariant hooks -------------------------------------------------------------

    def store_problems(self, root: Dir) -> list[tuple[str, str]]:
        """(path, what is wrong) for each store file that does not decode, and each
        recorded layer, image and container that does not resolve to complete data."""
        out: list[tuple[str, str]] = []
        for path in (LAYERS_JSON, IMAGES_JSON, CONTAINERS_JSON):
            if read_records(root, path) is None:
                out.append((path, f"{path} does not decode: podman fails"))
        layers = self.complete_layers(root)
        for layer, record in layers.items():
            parent = record.get("parent")
            out.extend(self.dir_problems(root, layer, needs_lower=bool(parent)))
            diff = lookup(root, split(f"{HOME}/{layer}/diff"))
            recorded = record.get("diff-digest")
            if recorded and isinstance(diff, Dir) and diff_id(diff) != recorded:
                problem = f"layer {layer} is recorded complete but its diff differs from {recorded[:19]}..."
                out.append((f"{HOME}/{layer}/diff", problem))
            if parent and parent not in layers:
                out.append((LAYERS_JSON, f"layer {layer} has parent {parent}, which is not known"))
        for record in self.images(root):
            if record.get("layer") not in layers:
                problem = f"image {record['id']} needs layer {record.get('layer')}, which is not known"
                out.append((IMAGES_JSON, problem))
        for record in self.containers(root):
            layer = record.get("layer")
            if layer not in layers:
                problem = f"container {record['id']} needs layer {layer}, which is not known"
                out.append((CONTAINERS_JSON, problem))
            elif isinstance(found := self.lower_dirs(root, layer), ErrorEntry) and \
                    not any(p.startswith(f"{HOME}/{layer}/") for p, _ in out):
                out.append((f"{HOME}/{layer}", f"container {record['id']} cannot be mounted: {found.reason}"))
        return out

    def store_leaks(self, root: Dir) -> list[tuple[str, str]]:
        """(path, what) for storage nothing uses and nothing will remove: layer
        directories no record names, dangling `l/` links, tar-splits of unknown layers,
        layers no image or container needs, images without a name, container
        directories without a record."""
        layers = self.layers(root)
        out = [(f"{HOME}/{d}", f"layer directory {HOME}/{d} belongs to no layer record")
               for d in names(root, HOME) if d != "l" and d not in layers]
        out.extend(self.dangling_links(root))
        for name in names(root, LAYERS_DIR):
            if name.endswith(".tar-split.gz") and name.removesuffix(".tar-split.gz") not in layers:
                out.append((f"{LAYERS_DIR}/{name}", f"tar-split {LAYERS_DIR}/{name} belongs to no layer"))
        used = self.used_layers(root)
        out.extend((LAYERS_JSON, f"layer {layer} is recorded but no image or container uses it")
                   for layer in layers if layer not in used)
        out.extend((IMAGES_JSON, f"image {r['id']} has no name (dangling)") for r in self.images(root)
                   if not r.get("names"))
        known = {r["id"] for r in self.containers(root)}
        out.extend((f"{CONTAINERS_DIR}/{d}", f"container directory {CONTAINERS_DIR}/{d} has no record")
                   for d in names(root, CONTAINERS_DIR) if d not in known and "." not in d)
        return out

    def op_scope(self, op: Any) -> tuple[str, ...]:
        return view_scope(op, DEFAULT_IMAGE, DEFAULT_CONTAINER)


class ContainersStorage(Driver):
    name = "containers-storage"
    description = "containers/storage's overlay driver and stores (podman, buildah, CRI-O)"
    layered = False
    OPTIONS = {
        "storage": Option(
            (str,), "1.43",
            "the containers/storage version modelled: 1.10 (missing l/ links are not recreated), "
            "1.38 (layer dir made before its record), 1.43 (podman 4.3: incomplete record first)",
            choices=VERSIONS,
        ),
        "link_files": Option(
            (str,), "write",
            "how `link` and `lower` are written: write (in place, no fsync, every release) or atomic "
            "(temp file, fsync, rename: the unmerged patch 3209e6f7)", choices=("write", "atomic"),
        ),
        "redirect_dir": OverlayFS.OPTIONS["redirect_dir"],
    }
    EXTRA_OPS = {
        "pull": ((), ("image",)),
        "create-container": ((), ("container", "image")),
        "commit": (("image",), ("container",)),
        "rm-container": ((), ("container",)),
        "rmi": ((), ("image",)),
    }
    WORKLOAD_ROOT = f"{CONTAINERS_VIEW}/{DEFAULT_CONTAINER}"
    MOUNT = StorageMount

    @classmethod
    def check_workload(cls, options: Mapping[str, Any], layers: list[Dir], upper: Dir | None,
                       ops: Sequence[Any]) -> str | None:
        if upper is not None and any(op.kind in ("pull", "create-container") for op in ops):
            return ("[upper] is the initial container's layer, but the workload pulls the image "
                    "or creates its own container")
        return None

    def client(self, kind: str, args: Mapping[str, Any]) -> Any:
        return engine_client(kind, args, DEFAULT_IMAGE, DEFAULT_CONTAINER) if kind in self.EXTRA_OPS else None
