"""What Docker's drivers share: the view layout and how a system call reaches a container.

Their views show every image at `images/<name>/` and every container's file system at
`containers/<name>/`. A file op addresses a container by such a path; `route` turns it
into the container and a call with container-relative paths, the way the call reaches
that container's own mount.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any, ClassVar

from models.clients import syscall
from models.syscalls import Syscall
from models.tree import FsError, join, split

CONTAINERS_VIEW = "containers"
IMAGES_VIEW = "images"


# --- the engine ops the Docker, containerd and containers/storage models share -------------


@dataclass(frozen=True)
class Pull(Syscall):
    image: str
    NAME: ClassVar[str] = "pull"


@dataclass(frozen=True)
class CreateContainer(Syscall):
    container: str
    image: str
    NAME: ClassVar[str] = "create-container"


@dataclass(frozen=True)
class CommitContainer(Syscall):
    container: str
    image: str
    NAME: ClassVar[str] = "commit"


@dataclass(frozen=True)
class RemoveContainer(Syscall):
    container: str
    NAME: ClassVar[str] = "rm-container"


@dataclass(frozen=True)
class RemoveImage(Syscall):
    image: str
    NAME: ClassVar[str] = "rmi"


def engine_client(kind: str, args: Any, image: str, container: str) -> Any:
    """The client of an engine op every engine model has (None for another kind):
    `pull`, `create-container`, `commit`, `rm-container`, `rmi`."""
    named_image, named_container = args.get("image"), args.get("container")
    if kind == "pull":
        return syscall(Pull(named_image or image))
    if kind == "create-container":
        return syscall(CreateContainer(named_container or container, named_image or image))
    if kind == "commit":
        return syscall(CommitContainer(named_container or container, named_image))
    if kind == "rm-container":
        return syscall(RemoveContainer(named_container or container))
    if kind == "rmi":
        return syscall(RemoveImage(named_image or image))
    return None


def route(call: Syscall) -> tuple[str, Syscall]:
    """(container, call with container-relative paths). Images are read-only (EROFS);
    a call naming two containers crosses mounts (EXDEV)."""
    container = None
    relative: dict[str, str] = {}
    for field, path, _ in call.paths():
        parts = split(path)
        if len(parts) < 2 or parts[0] != CONTAINERS_VIEW:
            code = errno.EROFS if parts[:1] == (IMAGES_VIEW,) else errno.EPERM
            raise FsError(code, path)
        if container is not None and parts[1] != container:
            raise FsError(errno.EXDEV, path)
        container = parts[1]
        relative[field] = join(parts[2:]) + ("/" if path.endswith("/") and parts[2:] else "")
    if container is None:
        raise FsError(errno.EINVAL, call.NAME)
    return container, call.with_paths(relative)


def view_scope(op: Any, default_image: str, default_container: str) -> tuple[str, ...]:
    """Which `containers/<c>` / `images/<i>` subtrees an op changes (`snapshot-isolation`)."""
    if op.kind in ("pull", "rmi"):
        return (f"{IMAGES_VIEW}/{op.arg('image') or default_image}",)
    if op.kind == "commit":
        return (f"{IMAGES_VIEW}/{op.arg('image')}",)
    if op.kind == "tag":
        return (f"{IMAGES_VIEW}/{op.arg('tag')}",)
    if op.kind in ("run", "create-container", "rm-container", "start"):
        return (f"{CONTAINERS_VIEW}/{op.arg('container') or default_container}",)
    scopes = []
    for key in ("path", "src", "dst"):
        value = op.arg(key)
        if value:
            scopes.append(join(split(value)[:2]))
    return tuple(dict.fromkeys(scopes))
