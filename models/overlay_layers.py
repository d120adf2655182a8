"""What the overlay-based layer stores share: Docker's overlay2 graph driver and
containers/storage's overlay driver (a fork of it, `drivers/overlay/overlay.go`) keep each
layer in `<home>/<id>/{diff,link,lower,work,merged}` with a short symlink
`<home>/l/<link>` -> `../<id>/diff`, and mount a container as overlayfs with the layer's
`diff` as upper dir and the `l/` links its `lower` file names as lower dirs.

`LayerHome` is that layout as a mixin of a driver's mount: reading `link` and `lower`,
resolving `l/` links, the merged view of a layer stack, the problems a layer directory
can have after a crash, writing small files in place or atomically, and mounting a
container's layers on the overlayfs model. containerd's snapshotter is overlayfs too,
without the `l/` indirection (`models/containerd.py`); it uses `merged` and
`container_overlay` only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from typing import Any

from models import syscalls as sc
from models.containers import CreateContainer, Pull, RemoveContainer, RemoveImage, route
from models.driver import Mount, handles
from models.overlayfs import OverlayFS, OverlayMount
from models.relocate import RelocatedLog
from models.steps import Create, RemoveTree, StepLog, Syncfs, Truncate, Write, replace_file
from models.tree import Dir, ErrorEntry, File, FsError, Symlink, identity, join, lookup, split
from models.union import Union


def read_text(root: Dir, path: str) -> str | None:
    """A small file's text, stripped; None when it is not a regular file."""
    node = lookup(root, split(path))
    return node.content.decode("utf-8", "replace").strip() if isinstance(node, File) else None


def names(root: Dir, path: str) -> list[str]:
    """The entries of directory `path`, sorted, dot files left out."""
    node = lookup(root, split(path))
    return sorted(n for n in node.entries if not n.startswith(".")) if isinstance(node, Dir) else []


def normalized(parts: tuple[str, ...]) -> str:
    out: list[str] = []
    for p in parts:
        if p == "..":
            if out:
                out.pop()
        elif p not in (".", ""):
            out.append(p)
    return join(tuple(out))


class LayerHome:
    """The `<home>/<id>` + `<home>/l/` layout, mixed into a driver's mount."""

    HOME = "overlay2"
    options: Mapping[str, Any]

    @property
    def links(self) -> str:
        return f"{self.HOME}/l"

    next: Callable[..., int]  # the mount's counters (`Mount.next`)

    # -- reading ---------------------------------------------------------------------

    def resolve_link(self, root: Dir, item: str) -> str | None:
        """`l/L3` -> `<home>/<id>/diff` through the symlink, or None."""
        link = lookup(root, split(f"{self.HOME}/{item}"))
        if not isinstance(link, Symlink):
            return None
        return normalized(split(f"{self.links}/{link.target}"))

    def resolve_lower(self, root: Dir, item: str) -> str | None:
        """A `lower` entry as the mount resolves it (a driver may recreate a missing link)."""
        return self.resolve_link(root, item)

    def lower_dirs(self, root: Dir, layer: str) -> list[tuple[str, Dir]] | ErrorEntry:
        """The lower dirs of layer `layer` (path, node), top first, as its `lower` file
        names them; an ErrorEntry says why the mount fails."""
        lower = read_text(root, f"{self.HOME}/{layer}/lower")
        if not lower:
            return ErrorEntry(errno.EINVAL, f"{self.HOME}/{layer}/lower is missing or empty: the mount fails")
        out = []
        for item in lower.split(":"):
            path = self.resolve_lower(root, item)
            node = lookup(root, split(path)) if path else None
            if not isinstance(node, Dir):
                reason = f"lowerdir {self.HOME}/{item} does not resolve: the mount fails"
                return ErrorEntry(errno.ENOENT, reason)
            out.append((path, node))
        return out

    def merged(self, lowers_top_first: list[Dir], upper: Dir | None) -> Dir:
        """The overlayfs view of these lower dirs under `upper` (memoized per lower stack)."""
        unions: dict[tuple[bytes, ...], Union] = self.__dict__.setdefault("_unions", {})
        key = tuple(identity(d) for d in lowers_top_first)
        union = unions.get(key)
        if union is None:
            union = unions[key] = Union([(d, (f"lower{i}",)) for i, d in enumerate(lowers_top_first)])
        view = union.view(union.root(upper if upper is not None else Dir()))
        assert isinstance(view, Dir)
        return view

    def dir_problems(self, root: Dir, layer: str, needs_lower: bool) -> list[tuple[str, str]]:
        """What is wrong with layer directory `<home>/<layer>`: missing, no `diff`, an
        empty `link`, an `l/` link that does not lead back, a `lower` that does not
        resolve."""
        home = f"{self.HOME}/{layer}"
        if not isinstance(lookup(root, split(home)), Dir):
            return [(home, f"layer directory {home} does not exist")]
        out = []
        if not isinstance(lookup(root, split(f"{home}/diff")), Dir):
            out.append((f"{home}/diff", f"{home}/diff does not exist"))
        link = read_text(root, f"{home}/link")
        if not link:
            out.append((f"{home}/link", f"{home}/link is missing or empty"))
        elif self.resolve_lower(root, f"l/{link}") != f"{home}/diff":
            out.append((f"{self.links}/{link}", f"{self.links}/{link} does not lead to {home}/diff"))
        if needs_lower:
            lower = read_text(root, f"{home}/lower")
            if not lower:
                out.append((f"{home}/lower", f"{home}/lower is missing or empty"))
            else:
                for item in lower.split(":"):
                    target = self.resolve_lower(root, item)
                    if target is None or not isinstance(lookup(root, split(target)), Dir):
                        problem = f"{home}/lower names {item}, which does not resolve"
                        out.append((f"{self.HOME}/{item}", problem))
        return out

    def dangling_links(self, root: Dir) -> list[tuple[str, str]]:
        out = []
        for link in names(root, self.links):
            target = self.resolve_link(root, f"l/{link}")
            if target is None or lookup(root, split(target)) is None:
                out.append((f"{self.links}/{link}", f"{self.links}/{link} is a dangling link"))
        return out

    # -- writing ---------------------------------------------------------------------

    def atomic_write(self, log: StepLog, path: str, data: bytes, mode: int, fsync: bool = True) -> None:
        """ioutils.AtomicWriteFile: a fresh temp file next to `path`, its data, fsync
        (fdatasync in containers/storage), rename."""
        parts = split(path)
        temp = join(parts[:-1] + (f".tmp-{parts[-1]}{self.next('tmp')}",))
        log.do_all(replace_file(temp, path, data, mode, fsync=fsync))

    def write_in_place(self, log: StepLog, path: str, data: bytes, mode: int) -> None:
        """ioutil.WriteFile / os.WriteFile: open(O_CREAT|O_TRUNC), write, no fsync."""
        if lookup(log.root, split(path)) is None:
            log.do(Create(path, mode))
        else:
            log.do(Truncate(path, 0))
        log.do(Write(path, data, 0, replace=True))

    def remove_layer_dir(self, log: StepLog, layer: str, empty_link_removes_all: bool) -> None:
        """The driver's `Remove`: the `l/` link named by `link` (none when `link` cannot
        be read), then the directory. With an empty `link`, `RemoveAll(l/ + "")` removes
        the whole `l/` directory (moby before PR #36161; containers/storage to this day);
        moby from 18.03 refuses."""
        link = read_text(log.root, f"{self.HOME}/{layer}/link")  # None: missing, and then nothing goes
        if link and lookup(log.root, split(f"{self.links}/{link}")) is not None:
            log.do(RemoveTree(f"{self.links}/{link}"))
        elif link == "" and empty_link_removes_all and lookup(log.root, split(self.links)) is not None:
            log.do(RemoveTree(self.links))
        if lookup(log.root, split(f"{self.HOME}/{layer}")) is not None:
            log.do(RemoveTree(f"{self.HOME}/{layer}"))


class EngineMount(LayerHome, Mount):
    """What the containerd and containers/storage mounts share: the engine ops go to
    their handlers (`pull`, `create`, `rm_container`, `rmi` of the subclass), a file op to
    the overlay mount of the container it names (`container_mount` of the subclass)."""

    def container_mount(self, log: StepLog, container: str) -> tuple[OverlayMount, dict[str, str]]:
        raise NotImplementedError

    def pull(self, log: StepLog, name: str) -> None:
        raise NotImplementedError

    def create(self, log: StepLog, container: str, image: str) -> None:
        raise NotImplementedError

    def rm_container(self, log: StepLog, container: str) -> None:
        raise NotImplementedError

    def rmi(self, log: StepLog, name: str) -> None:
        raise NotImplementedError

    def execute(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        try:
            if type(call) in self.HANDLERS:
                return self.perform(call, log)
            container, inner_call = route(call)
            inner, places = self.container_mount(log, container)
            return inner.execute(inner_call, RelocatedLog(log, places))  # type: ignore[arg-type]
        except FsError as e:
            return sc.fail(e.errno)

    @handles(Pull)
    def pull_image(self, call: Pull, log: StepLog) -> None:
        self.pull(log, call.image)

    @handles(CreateContainer)
    def create_container(self, call: CreateContainer, log: StepLog) -> None:
        self.create(log, call.container, call.image)

    @handles(RemoveContainer)
    def remove_container(self, call: RemoveContainer, log: StepLog) -> None:
        self.rm_container(log, call.container)

    @handles(RemoveImage)
    def remove_image(self, call: RemoveImage, log: StepLog) -> None:
        self.rmi(log, call.image)

    @handles(sc.Sync, sc.Syncfs)
    def sync(self, call: sc.Syscall, log: StepLog) -> None:
        log.do(Syncfs(""))


def container_overlay(redirect_dir: bool, lowers: list[tuple[str, Dir]]) -> OverlayMount:
    """The overlayfs model mounted on a container's lower dirs (its upper is the caller's)."""
    return OverlayMount.of_layers(OverlayFS({"redirect_dir": redirect_dir}), lowers)


__all__ = ["EngineMount", "LayerHome", "container_overlay", "names", "normalized", "read_text"]
