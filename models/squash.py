"""Image squashing (`docker export | docker import`, `docker build --squash`) as a driver.

The backing store is an image store:

    layers/L0 .. layers/Ln-1    the spec's layers, in overlay format (whiteouts, opaque)
    images/<name>               an image's manifest: its layer ids, bottom first, one a line

By default there is one image, `image`, made of every layer; the `images` option names
several images that share layers (a base and the applications built on it). The view
shows each image's merged file system at `<name>/`.

`op = "squash"` flattens an image (`image = "..."` when there are several): every layer
into one, as export/import does, or with `from_layer = k` only the layers above layer k
(the image's k-th, counting from 0), as `build --squash` does. The new layer applies the
whiteouts and opaque markers of the layers it replaces and keeps the newest version of
each path; markers that still hide something in the kept layers below stay. It is
written under a temp name, renamed into place, and the image switches to it by renaming
a new manifest over the old one (the atomic point); layers no image uses any more are
then removed. With `fsync` (the default) every new file, the layers directory after the
rename and the new manifest are fsynced first, as a careful tool does.

Recovery (the next start of the image store) removes temp entries (`*.tmp`) and every
layer no manifest names. `apply_whiteouts = false` models a naive squash that copies
every layer's files and drops the markers: files that a layer deleted come back, which
the `view-preserved` invariant reports. The report adds the storage the images take
before and after (see `accounting`).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from models import syscalls as sc
from models.clients import syscall
from models.driver import Driver, Mount, Option, OptionError, Recovery, handles
from models.layers import build_steps, flatten, stored_bytes
from models.steps import Fsync, RemoveTree, Rename, StepLog, remove_subtree, replace_file
from models.tree import Dir, ErrorEntry, File, FsError, Node, join, lookup, name_problem
from models.union import union_view

LAYERS = "layers"
IMAGES = "images"
TEMP = ".tmp"
DEFAULT_IMAGE = "image"


def _images_option(value: Any) -> dict[str, tuple[int, ...]]:
    if not value:
        raise OptionError("option 'images' must name at least one image")
    out: dict[str, tuple[int, ...]] = {}
    for name, layers in value.items():
        if name_problem(name) or name.startswith("."):
            raise OptionError(f"option 'images': {name[:60]!r} is not an image name")
        if not isinstance(layers, list) or not layers or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers
        ):
            raise OptionError(f"option 'images': {name} must list layer indices (0 = first [[layers]])")
        out[name] = tuple(layers)
    return out


def layer_id(index: int) -> str:
    return f"L{index}"


@dataclass(frozen=True)
class SquashImage(sc.Syscall):
    """Squash an image (above layer `from_layer`, when given)."""

    image: str
    from_layer: int | None = None
    NAME: ClassVar[str] = "squash"


class SquashMount(Mount):
    """The image store of one run: its images (name -> layer indices)."""

    # -- layout --------------------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        self.images = self.options["images"] or {DEFAULT_IMAGE: tuple(range(len(layers)))}
        stored = {layer_id(i): layer for i, layer in enumerate(layers)}
        manifests = {name: File(_manifest([layer_id(i) for i in idx])) for name, idx in self.images.items()}
        return Dir({LAYERS: Dir(stored), IMAGES: Dir(manifests)})

    def view(self, root: Dir) -> Dir:
        images = root.entries.get(IMAGES)
        shown: dict[str, Node] = {}
        if isinstance(images, Dir):
            for name, node in images.entries.items():
                if name.endswith(TEMP):
                    continue
                shown[name] = self._image_view(root, node)
        return Dir(shown)

    def _image_view(self, root: Dir, manifest: Node) -> Node:
        if not isinstance(manifest, File):
            return ErrorEntry(errno.EIO, "the manifest is not a file")
        ids = _parse_manifest(manifest.content)
        if not ids:
            return ErrorEntry(errno.EIO, "the manifest is empty")
        stack = []
        for lid in ids:
            layer = lookup(root, (LAYERS, lid))
            if not isinstance(layer, Dir):
                return ErrorEntry(errno.ENOENT, f"layer {lid} does not exist")
            stack.append(layer)
        return union_view(list(reversed(stack)))

    # -- the squash ----------------------------------------------------------------------

    def perform(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        if not isinstance(call, SquashImage):
            raise FsError(errno.EROFS, call.paths()[0][1] if call.paths() else "")  # images are read-only
        return super().perform(call, log)

    @handles(SquashImage)
    def squash_image(self, call: SquashImage, log: StepLog) -> None:
        self.squash(log, call.image, call.from_layer)

    def squash(self, log: StepLog, image: str, from_layer: int | None) -> None:
        if not image:
            raise FsError(errno.EINVAL, "squash: name the image (there are several)")
        manifest = lookup(log.root, (IMAGES, image))
        if not isinstance(manifest, File):
            raise FsError(errno.ENOENT, image)
        ids = _parse_manifest(manifest.content)
        keep = 0 if from_layer is None else from_layer + 1
        if keep >= len(ids) or (keep == 0 and len(ids) == 1):
            raise FsError(errno.EINVAL, f"squash: {image} has nothing above layer {keep - 1} to squash")
        layers = [self._layer(log.root, lid) for lid in ids]
        flat = flatten(layers[keep:], layers[:keep], self.options["apply_whiteouts"])
        sync = self.options["fsync"]
        new = f"S{self.next('squash')}"
        temp = join((LAYERS, new + TEMP))
        log.do_all(build_steps(flat, temp, fsync=sync, skip_root=False))
        log.do(Rename(temp, join((LAYERS, new))))
        if sync:
            log.do(Fsync(LAYERS))
        self._write_manifest(log, image, ids[:keep] + [new], sync)
        used = self._used_layers(log.root)
        for lid in ids[keep:]:
            if lid not in used:
                log.do(RemoveTree(join((LAYERS, lid))))

    def _layer(self, root: Dir, lid: str) -> Dir:
        layer = lookup(root, (LAYERS, lid))
        if not isinstance(layer, Dir):
            raise FsError(errno.ENOENT, join((LAYERS, lid)))
        return layer

    def _write_manifest(self, log: StepLog, image: str, ids: list[str], sync: bool) -> None:
        temp = join((IMAGES, image + TEMP))
        log.do_all(replace_file(temp, join((IMAGES, image)), _manifest(ids), fsync=sync))
        if sync:
            log.do(Fsync(IMAGES))

    def _used_layers(self, root: Dir) -> set[str]:
        images = root.entries.get(IMAGES)
        used: set[str] = set()
        if isinstance(images, Dir):
            for name, node in images.entries.items():
                if isinstance(node, File) and not name.endswith(TEMP):
                    used.update(_parse_manifest(node.content))
        return used

    # -- recovery ------------------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        """Remove temp entries, then every layer no manifest names."""
        for top in (IMAGES, LAYERS):
            node = root.entries.get(top)
            if isinstance(node, Dir):
                for name in sorted(node.entries):
                    if name.endswith(TEMP):
                        root = remove_subtree(root, (top, name))
        used = self._used_layers(root)
        layers = root.entries.get(LAYERS)
        if isinstance(layers, Dir):
            for name in sorted(layers.entries):
                if name not in used:
                    root = remove_subtree(root, (LAYERS, name))
        return Recovery(root)

    # -- storage accounting --------------------------------------------------------------

    def accounting(self, trace: Any) -> dict[str, Any] | None:
        """Bytes stored and bytes to transfer, before the workload and after it.

        `stored`: the bytes of every distinct layer on a host that holds all images.
        `transfer`: the bytes a host that already holds the shared base (the layers
        more than one image used before the workload) fetches to pull every image;
        a squashed image shares nothing, so it is fetched whole."""
        before, after = trace.states[0], trace.states[-1]
        base = {lid for lid, users in self._users(before).items() if len(users) > 1}
        return {
            "before": self._storage(before, base),
            "after": self._storage(after, base),
        }

    def _users(self, root: Dir) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        images = root.entries.get(IMAGES)
        if isinstance(images, Dir):
            for name in sorted(images.entries):
                node = images.entries[name]
                if isinstance(node, File) and not name.endswith(TEMP):
                    for lid in _parse_manifest(node.content):
                        users.setdefault(lid, []).append(name)
        return users

    def _storage(self, root: Dir, base: set[str]) -> dict[str, Any]:
        users = self._users(root)
        size = {lid: stored_bytes(self._layer(root, lid)) for lid in users}
        per_image: dict[str, dict[str, int]] = {}
        for lid, names in users.items():
            for name in names:
                entry = per_image.setdefault(name, {"layers": 0, "bytes": 0, "transfer": 0})
                entry["layers"] += 1
                entry["bytes"] += size[lid]
                if lid not in base:
                    entry["transfer"] += size[lid]
        return {
            "layers": len(users),
            "stored": sum(size.values()),
            "transfer": sum(e["transfer"] for e in per_image.values()),
            "images": dict(sorted(per_image.items())),
        }


def _manifest(ids: list[str]) -> bytes:
    return "".join(f"{lid}\n" for lid in ids).encode()


def _parse_manifest(content: bytes) -> list[str]:
    return [line for line in content.decode("utf-8", "replace").splitlines() if line]


class Squash(Driver):
    name = "squash"
    description = "an image store of overlay-format layers; op squash flattens an image"
    layered = False
    OPTIONS = {
        "images": Option(
            (dict,), None,
            "image name -> its layers as indices into [[layers]], bottom first (default: "
            "one image 'image' with every layer)", normalize=_images_option,
        ),
        "apply_whiteouts": Option(
            (bool,), True,
            "apply whiteouts and opaque markers when flattening (false: a naive squash "
            "that copies every file, so deleted files come back)",
        ),
        "fsync": Option(
            (bool,), True,
            "fsync the new layer's files, the layers directory and the new manifest "
            "before the image switches to it",
        ),
    }
    FILE_OPS = False  # images are read-only: the only op is squash
    EXTRA_OPS = {"squash": ((), ("image", "from_layer"))}
    VIEW_PRESERVING_OPS = ("squash",)

    @classmethod
    def check_workload(cls, options: Mapping[str, Any], layers: list[Dir], upper: Dir | None,
                       ops: Sequence[Any]) -> str | None:
        if upper is not None:
            return "the squash driver has no container layer: put every layer in [[layers]]"
        if not layers:
            return "the squash driver needs at least one [[layers]] table (the image)"
        images = options["images"] or {DEFAULT_IMAGE: tuple(range(len(layers)))}
        for name, indices in images.items():
            bad = [i for i in indices if i >= len(layers)]
            if bad:
                return f"option 'images': {name} names layer {bad[0]}, but there are {len(layers)} layers"
        for op in ops:
            if op.kind != "squash":
                continue
            image = op.arg("image")
            if image is not None and image not in images:
                return f"op {op.index}: no image {image!r} (images: {', '.join(images)})"
            below = op.arg("from_layer")
            if below is None:
                continue
            counts = [len(images[image])] if image is not None else [len(v) for v in images.values()]
            if below > max(counts) - 2:
                return (f"op {op.index}: from_layer {below} leaves nothing to squash (the image has "
                        f"{max(counts)} layer(s): from_layer is at most {max(counts) - 2})")
        return None
    MOUNT = SquashMount

    def client(self, kind: str, args: Mapping[str, Any]) -> Any:
        if kind != "squash":
            return None
        images = self.options["images"] or {DEFAULT_IMAGE: ()}
        image = args.get("image") or (next(iter(images)) if len(images) == 1 else "")
        return syscall(SquashImage(image, args.get("from_layer")))
