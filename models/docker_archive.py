"""What `docker load` receives: a `docker save` archive of an image's layers (moby
`image/tarexport`). The docker-overlay2 model's `pull` stages exactly this archive, and
`crashcheck conform` loads it into dockerd.

Each layer is a tarball with its entries sorted, owner 0 and mtime 0; a whiteout is an
empty `.wh.<name>`, an opaque directory holds `.wh..wh..opq`, user xattrs go in PAX
headers. The same layers give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

from models.format import OPAQUE
from models.tree import Dir, File, Node, Symlink, Whiteout

#: the container's process: the host's static busybox, bind-mounted into /dev (a tmpfs in
#: the container, so the image's layers stay exactly the spec's)
IN_CONTAINER_BUSYBOX = "/dev/busybox"
COMMAND = [IN_CONTAINER_BUSYBOX, "sleep", "1000000"]
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def layer_tar(layer: Dir) -> bytes:
    """A layer as an image layer tarball: entries sorted, owner 0, mtime 0; a whiteout
    is an empty `.wh.<name>`, an opaque directory holds `.wh..wh..opq`; user xattrs go
    in PAX headers as docker reads them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, node in _walk(layer, ""):
            _add(tar, path, node)
    return buf.getvalue()


def _walk(node: Dir, prefix: str) -> list[tuple[str, Node]]:
    out: list[tuple[str, Node]] = []
    for name in sorted(node.entries):
        child = node.entries[name]
        path = f"{prefix}{name}"
        out.append((path, child))
        if isinstance(child, Dir):
            if any(k == OPAQUE for k, _ in child.xattrs):
                out.append((f"{path}/{OPAQUE_MARKER}", File(b"", 0o644)))
            out.extend(_walk(child, path + "/"))
    return out


def _add(tar: tarfile.TarFile, path: str, node: Node) -> None:
    parent, _, name = path.rpartition("/")
    if isinstance(node, Whiteout):
        path = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else f"{WHITEOUT_PREFIX}{name}"
        node = File(b"", 0o644)
    info = tarfile.TarInfo(path)
    info.mtime = 0
    info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                        for k, v in node.xattrs if k.startswith("user.")}
    if isinstance(node, Dir):
        info.type, info.mode = tarfile.DIRTYPE, node.mode
        tar.addfile(info)
    elif isinstance(node, Symlink):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, node.target, 0o777
        tar.addfile(info)
    elif isinstance(node, File):
        info.size, info.mode = len(node.content), node.mode
        tar.addfile(info, io.BytesIO(node.content))


def image_tarball(layers: list[Dir], tag: str) -> bytes:
    """A `docker save` archive of an image with these layers (bottom first), tagged
    `tag:latest`; the same layers give the same bytes."""
    archive = archive_of(layers, tag)
    members = [(f"{d}/layer.tar", t) for d, t in archive.layers]
    members += [(archive.config_name, archive.config), ("manifest.json", archive.manifest)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Archive:
    """The members of an image archive, in the order `docker load` writes them out."""

    layers: tuple[tuple[str, bytes], ...]  # (diff id hex, layer tarball), bottom first
    config_name: str
    config: bytes
    manifest: bytes


def archive_of(layers: list[Dir], tag: str) -> Archive:
    tars = [layer_tar(layer) for layer in layers]
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": COMMAND},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    names = [f"{d.removeprefix('sha256:')}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [f"{tag}:latest"], "Layers": names}]).encode()
    return Archive(tuple((d.removeprefix("sha256:"), t) for d, t in zip(diff_ids, tars, strict=True)),
                   config_name, config, manifest)
