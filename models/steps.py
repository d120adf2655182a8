"""Primitive steps on a backing store, with exact effects and POSIX error semantics.

A driver turns each system call on the user's view into a sequence of these steps. A
step is a frozen value: `apply(root, device)` returns the new root or raises `FsError`
(ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, EXDEV, EINVAL). `device` maps a path to
the file system that holds it, so a rename between file systems fails with EXDEV just as
rename(2) does. Steps on a hard-linked file update every link.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from models.syscalls import RenameFlags
from models.tree import (
    DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
    Dir,
    File,
    FsError,
    Node,
    Parts,
    Symlink,
    Whiteout,
    find_inode,
    has_hard_links,
    join,
    lookup,
    parent_dir,
    replace,
    replace_many,
    split,
    walk,
)

Device = Callable[[Parts], str]


def one_device(parts: Parts) -> str:
    return "fs"


def _enoent(parts: Parts) -> FsError:
    return FsError(errno.ENOENT, join(parts))


def _existing(root: Dir, parts: Parts) -> Node:
    node = lookup(root, parts) if parts else root
    if node is None:
        parent_dir(root, parts)  # raises ENOTDIR for a non-directory ancestor
        raise _enoent(parts)
    return node


def _absent(root: Dir, parts: Parts) -> None:
    parent_dir(root, parts)
    if parts[-1] in _parent(root, parts).entries:
        raise FsError(errno.EEXIST, join(parts))


def _parent(root: Dir, parts: Parts) -> Dir:
    return parent_dir(root, parts)


def _update_inode(root: Dir, parts: Parts, change: Callable[[Node], Node]) -> Dir:
    """Apply `change` to the node at `parts` and to every hard link of it."""
    node = _existing(root, parts)
    if isinstance(node, File) and node.nlink > 1:
        for link in find_inode(root, node.ino):
            target = lookup(root, link)
            assert target is not None
            root = replace(root, link, change(target))
        return root
    return replace(root, parts, change(node))


def _retarget_links(root: Dir, ino: int, nlink: int, skip: Parts | None = None) -> Dir:
    for link in find_inode(root, ino):
        if link == skip:
            continue
        node = lookup(root, link)
        assert isinstance(node, File)
        root = replace(root, link, node.with_links(ino, nlink))
    return root


def _owner_text(uid: int, gid: int) -> str:
    return f" owner {uid}:{gid}" if uid or gid else ""


class Effect(enum.Enum):
    """What a step does to names and inodes."""

    MAKE = "make"  # a new entry with a new inode at `path`
    LINK = "link"  # `dst` becomes another name of `src`'s inode
    MOVE = "move"  # `src` moves to `dst` (rename; an O_TMPFILE linked into place)
    REMOVE = "remove"  # the entry at `path` (and what is below it) goes
    FSYNC = "fsync"  # what was done to `path`'s inode persists before anything later
    SYNCFS = "syncfs"  # everything before persists before anything later
    TOUCH = "touch"  # the data or attributes of the existing inode at `path` change


NAMESPACE_EFFECTS = frozenset({Effect.MAKE, Effect.LINK, Effect.MOVE, Effect.REMOVE})


@dataclass(frozen=True)
class Shape:
    """What a step does, in the vocabulary the persistence models (which inodes it
    touches, which step made the entry it works on) and the symbolic engine (what each
    path holds after it) share."""

    effect: Effect
    path: str = ""  # MAKE, REMOVE, FSYNC, TOUCH
    src: str = ""  # LINK, MOVE
    dst: str = ""
    flags: RenameFlags = RenameFlags.NONE  # MOVE: EXCHANGE swaps, WHITEOUT leaves one at src
    node: Node | None = None  # MAKE: the node it creates
    xattr: tuple[str, bytes | None] | None = None  # TOUCH: an xattr set (or removed: None)
    mode: int | None = None  # TOUCH: a new mode
    owner: tuple[int, int] | None = None  # TOUCH: a new owner (uid, gid)
    sets_mtime: bool = False  # TOUCH: the modification time becomes `mtime`
    mtime: int | None = None  # (None: unpinned, the clock's)


@dataclass(frozen=True)
class Step:
    """One primitive operation on the backing store. Each step describes itself: its
    effect (`shape`), the paths it names (`PATH_FIELDS`), the namespace changes fanotify
    reports for it (`events`) and, for a data step, how a crash can tear it."""

    kind = "step"
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("path",)

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        raise NotImplementedError

    def shape(self) -> Shape:
        raise NotImplementedError

    def writes(self) -> tuple[str, ...]:
        """Paths whose node or entry this step changes."""
        return ()

    def events(self) -> list[str]:
        """The namespace changes a fanotify mark on the file system reports for it."""
        return []

    def paths(self) -> list[str]:
        return [getattr(self, f) for f in self.PATH_FIELDS]

    def moved(self, place: Callable[[str], str]) -> Step:
        """The same step with each path it names mapped through `place`."""
        return dataclasses.replace(self, **{f: place(getattr(self, f)) for f in self.PATH_FIELDS})

    @property
    def is_data(self) -> bool:
        """True for steps that change file data (not names or attributes)."""
        return False

    @property
    def is_namespace(self) -> bool:
        return self.shape().effect in NAMESPACE_EFFECTS

    def pieces(self, block_size: int, before: Dir) -> int:
        """Into how many blocks a crash can cut this step (`before`: the tree it ran on)."""
        return 1

    def torn(self, root: Dir, amount: int, block_size: int, device: Device, source: bytes | None) -> Dir:
        """`root` with the first `amount` of this data step's blocks applied."""
        raise ValueError(f"step {self} cannot be torn")

    def block_range(self, block_size: int) -> tuple[int, float]:
        """The blocks [lo, hi) of its file a data step writes."""
        return 0, math.inf

    def __str__(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Mkdir(Step):
    path: str
    mode: int = DEFAULT_DIR_MODE
    uid: int = 0
    gid: int = 0
    kind = "mkdir"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        parts = split(self.path)
        _absent(root, parts)
        return replace(root, parts, Dir(mode=self.mode, uid=self.uid, gid=self.gid))

    def shape(self) -> Shape:
        return Shape(Effect.MAKE, self.path, node=Dir(mode=self.mode, uid=self.uid, gid=self.gid))

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def events(self) -> list[str]:
        return [f"mkdir {self.path}"]

    def __str__(self) -> str:
        mode = "" if self.mode == DEFAULT_DIR_MODE else f" mode {self.mode:o}"
        return f"mkdir {self.path}{mode}{_owner_text(self.uid, self.gid)}"


@dataclass(frozen=True)
class Create(Step):
    """open(O_CREAT|O_EXCL) of an empty regular file."""

    path: str
    mode: int = DEFAULT_FILE_MODE
    ino: int = 0
    uid: int = 0
    gid: int = 0
    kind = "create"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        parts = split(self.path)
        _absent(root, parts)
        return replace(root, parts, File(b"", self.mode, ino=self.ino, uid=self.uid, gid=self.gid))

    def shape(self) -> Shape:
        return Shape(Effect.MAKE, self.path, node=File(b"", self.mode, uid=self.uid, gid=self.gid))

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def events(self) -> list[str]:
        return [f"create {self.path}"]

    def __str__(self) -> str:
        return f"create {self.path}{_owner_text(self.uid, self.gid)}"


@dataclass(frozen=True)
class Tmpfile(Create):
    """open(O_TMPFILE): an inode with no name. Modelled under a work-dir name that no
    reader sees; the kernel frees it at the next mount if it was never linked."""

    kind = "tmpfile"

    def events(self) -> list[str]:
        return []  # an O_TMPFILE has no name until it is linked

    def __str__(self) -> str:
        return f"tmpfile {self.path}{_owner_text(self.uid, self.gid)}"


@dataclass(frozen=True)
class Write(Step):
    """write(2) of `data` at `offset`; with `replace` the file becomes exactly `data`."""

    path: str
    data: bytes
    offset: int = 0
    replace: bool = False
    kind = "write"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        node = _existing(root, split(self.path))
        if isinstance(node, Dir):
            raise FsError(errno.EISDIR, self.path)
        if not isinstance(node, File):
            raise FsError(errno.EINVAL, self.path)

        def change(n: Node) -> Node:
            assert isinstance(n, File)
            if self.replace:
                return n.with_content(self.data)
            old = n.content
            if len(old) < self.offset:
                old = old + b"\0" * (self.offset - len(old))
            return n.with_content(old[: self.offset] + self.data + old[self.offset + len(self.data) :])

        return _update_inode(root, split(self.path), change)

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    @property
    def is_data(self) -> bool:
        return True

    def pieces(self, block_size: int, before: Dir) -> int:
        return max(1, math.ceil(len(self.data) / block_size))

    def torn(self, root: Dir, amount: int, block_size: int, device: Device, source: bytes | None) -> Dir:
        part = self.data[: amount * block_size]
        if not self.replace:
            return Write(self.path, part, self.offset).apply(root, device)
        node = lookup(root, split(self.path))
        old = node.content if isinstance(node, File) else b""
        content = (part + old[len(part) :])[: len(self.data)]
        return Write(self.path, content, 0, replace=True).apply(root, device)

    def block_range(self, block_size: int) -> tuple[int, float]:
        if self.replace:
            return 0, math.inf  # a replacing write rewrites the whole file
        return self.offset // block_size, (self.offset + max(len(self.data), 1) - 1) // block_size + 1

    def __str__(self) -> str:
        what = "=" if self.replace else f"@{self.offset} +"
        return f"write {self.path} {what}{_show(self.data)}"


@dataclass(frozen=True)
class Truncate(Step):
    path: str
    size: int
    kind = "truncate"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        node = _existing(root, split(self.path))
        if isinstance(node, Dir):
            raise FsError(errno.EISDIR, self.path)
        if not isinstance(node, File):
            raise FsError(errno.EINVAL, self.path)

        def change(n: Node) -> Node:
            assert isinstance(n, File)
            c = n.content
            return n.with_content(c[: self.size] + b"\0" * max(0, self.size - len(c)))

        return _update_inode(root, split(self.path), change)

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    @property
    def is_data(self) -> bool:
        return True

    def block_range(self, block_size: int) -> tuple[int, float]:
        return self.size // block_size, math.inf

    def __str__(self) -> str:
        return f"truncate {self.path} {self.size}"


@dataclass(frozen=True)
class CopyData(Step):
    """Copy the data of `src` (typically on a lower layer) into the file `dst`."""

    src: str
    dst: str
    kind = "copy_data"
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("src", "dst")

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        src = _existing(root, split(self.src))
        dst = _existing(root, split(self.dst))
        if not isinstance(src, File) or not isinstance(dst, File):
            raise FsError(errno.EINVAL, self.dst)
        return _update_inode(
            root, split(self.dst), lambda n: n.with_content(src.content)  # type: ignore[attr-defined]
        )

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.dst)

    def writes(self) -> tuple[str, ...]:
        return (self.dst,)

    @property
    def is_data(self) -> bool:
        return True

    def pieces(self, block_size: int, before: Dir) -> int:
        src = lookup(before, split(self.src))
        size = len(src.content) if isinstance(src, File) else 0
        return max(1, math.ceil(size / block_size))

    def torn(self, root: Dir, amount: int, block_size: int, device: Device, source: bytes | None) -> Dir:
        if source is None:  # without the data it read, what the source holds now
            src = lookup(root, split(self.src))
            source = src.content if isinstance(src, File) else b""
        return Write(self.dst, source[: amount * block_size], 0, replace=True).apply(root, device)

    def __str__(self) -> str:
        return f"copy {self.src} -> {self.dst}"


@dataclass(frozen=True)
class SetXattr(Step):
    path: str
    name: str
    value: bytes
    kind = "setxattr"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        return _update_inode(root, split(self.path), lambda n: n.with_xattr(self.name, self.value))

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path, xattr=(self.name, self.value))

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def __str__(self) -> str:
        return f"setxattr {self.path} {self.name}={_show(self.value)}"


@dataclass(frozen=True)
class RemoveXattr(Step):
    """removexattr(2). In a crash state that kept it but lost the set it undoes (weak
    persistence), the xattr is simply absent, as the removal makes it."""

    path: str
    name: str
    kind = "removexattr"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        node = _existing(root, split(self.path))
        if node.xattr(self.name) is None:
            return root
        return _update_inode(root, split(self.path), lambda n: n.with_xattr(self.name, None))

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path, xattr=(self.name, None))

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def __str__(self) -> str:
        return f"removexattr {self.path} {self.name}"


@dataclass(frozen=True)
class Chmod(Step):
    path: str
    mode: int
    kind = "chmod"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        node = _existing(root, split(self.path))
        if not isinstance(node, (File, Dir)):
            return root  # modes of symlinks and devices are not modelled
        return _update_inode(root, split(self.path), lambda n: n.with_mode(self.mode))  # type: ignore[attr-defined]

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path, mode=self.mode)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def __str__(self) -> str:
        return f"chmod {self.path} {self.mode:o}"


@dataclass(frozen=True)
class Chown(Step):
    """chown(2) of the inode at `path` (not following a symlink). `mode`, when given, is
    the mode it leaves: chown(2) of a regular file clears its set-user-ID bit (and the
    set-group-ID bit of a group-executable one) in the same inode update."""

    path: str
    uid: int
    gid: int
    mode: int | None = None
    kind = "chown"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        _existing(root, split(self.path))

        def change(n: Node) -> Node:
            n = n.with_owner(self.uid, self.gid)
            if self.mode is not None and isinstance(n, (File, Dir)):
                n = n.with_mode(self.mode)
            return n

        return _update_inode(root, split(self.path), change)

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path, owner=(self.uid, self.gid), mode=self.mode)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def __str__(self) -> str:
        mode = "" if self.mode is None else f" (mode {self.mode:o})"
        return f"chown {self.path} {self.uid}:{self.gid}{mode}"


@dataclass(frozen=True)
class SetTimes(Step):
    """utimensat(2) of the inode at `path`: its modification time becomes `mtime` (None:
    a time the model does not know). Only files keep one (`models.tree.Node`)."""

    path: str
    mtime: int | None
    kind = "set_times"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        node = _existing(root, split(self.path))
        if not isinstance(node, File):
            return root
        return _update_inode(root, split(self.path), lambda n: n.with_mtime(self.mtime))  # type: ignore[attr-defined]

    def shape(self) -> Shape:
        return Shape(Effect.TOUCH, self.path, sets_mtime=True, mtime=self.mtime)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def __str__(self) -> str:
        return f"utimens {self.path} {'(clock)' if self.mtime is None else self.mtime}"


@dataclass(frozen=True)
class MknodWhiteout(Step):
    path: str
    kind = "mknod_whiteout"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        parts = split(self.path)
        _absent(root, parts)
        return replace(root, parts, Whiteout())

    def shape(self) -> Shape:
        return Shape(Effect.MAKE, self.path, node=Whiteout())

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def events(self) -> list[str]:
        return [f"create {self.path}"]

    def __str__(self) -> str:
        return f"mknod {self.path} c 0 0 (whiteout)"


@dataclass(frozen=True)
class Link(Step):
    src: str
    dst: str
    ino: int = 0  # inode number given to a file that gets its first extra link
    kind = "link"
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("src", "dst")

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        sp, dp = split(self.src), split(self.dst)
        node = _existing(root, sp)
        if isinstance(node, Dir):
            raise FsError(errno.EPERM, self.src)
        _absent(root, dp)
        if device(sp) != device(dp):
            raise FsError(errno.EXDEV, self.dst)
        if not isinstance(node, File):
            return replace(root, dp, node)  # whiteouts and symlinks: identity not modelled
        ino = node.ino if node.nlink > 1 else (node.ino or self.ino)
        nlink = node.nlink + 1
        root = _retarget_links(root, ino, nlink) if node.nlink > 1 else root
        linked = node.with_links(ino, nlink)
        root = replace(root, sp, linked)
        return replace(root, dp, linked)

    def shape(self) -> Shape:
        return Shape(Effect.LINK, src=self.src, dst=self.dst)

    def writes(self) -> tuple[str, ...]:
        return (self.src, self.dst)

    def events(self) -> list[str]:
        return [f"create {self.dst}"]

    def __str__(self) -> str:
        return f"link {self.src} -> {self.dst}"


@dataclass(frozen=True)
class LinkTmpfile(Step):
    """linkat() of an O_TMPFILE inode into the namespace; the anonymous inode then has
    exactly one name, so this is modelled as a move of the work-dir placeholder."""

    src: str
    dst: str
    kind = "link_tmpfile"
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("src", "dst")

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        sp, dp = split(self.src), split(self.dst)
        node = _existing(root, sp)
        _absent(root, dp)
        if device(sp) != device(dp):
            raise FsError(errno.EXDEV, self.dst)
        root = replace(root, sp, None)
        return replace(root, dp, node)

    def shape(self) -> Shape:
        return Shape(Effect.MOVE, src=self.src, dst=self.dst)

    def writes(self) -> tuple[str, ...]:
        return (self.src, self.dst)

    def events(self) -> list[str]:
        return [f"create {self.dst}"]

    def __str__(self) -> str:
        return f"link {self.src} -> {self.dst} (tmpfile)"


@dataclass(frozen=True)
class MakeSymlink(Step):
    target: str
    path: str
    uid: int = 0
    gid: int = 0
    kind = "symlink"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        parts = split(self.path)
        _absent(root, parts)
        return replace(root, parts, Symlink(self.target, uid=self.uid, gid=self.gid))

    def shape(self) -> Shape:
        return Shape(Effect.MAKE, self.path, node=Symlink(self.target, uid=self.uid, gid=self.gid))

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def events(self) -> list[str]:
        return [f"create {self.path}"]

    def __str__(self) -> str:
        return f"symlink {self.path} -> {self.target}"


@dataclass(frozen=True)
class Rename(Step):
    """renameat2(src, dst, flags)."""

    src: str
    dst: str
    flags: RenameFlags = RenameFlags.NONE
    kind = "rename"
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("src", "dst")

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        sp, dp = split(self.src), split(self.dst)
        src = _existing(root, sp)
        dparent = _parent(root, dp)
        if device(sp) != device(dp):
            raise FsError(errno.EXDEV, self.dst)
        dst = dparent.entries.get(dp[-1])
        if self.flags is RenameFlags.NOREPLACE and dst is not None:
            raise FsError(errno.EEXIST, self.dst)
        if sp == dp:
            return root
        exchange = self.flags is RenameFlags.EXCHANGE
        if exchange and dst is None:
            raise _enoent(dp)
        if dp[: len(sp)] == sp:
            raise FsError(errno.EINVAL, self.dst)
        if sp[: len(dp)] == dp:
            raise FsError(errno.EINVAL if exchange else errno.ENOTEMPTY, self.dst)
        if exchange:
            assert dst is not None
            return _move(root, {sp: dst, dp: src})
        if dst is not None:
            if isinstance(src, Dir) and not isinstance(dst, Dir):
                raise FsError(errno.ENOTDIR, self.dst)
            if not isinstance(src, Dir) and isinstance(dst, Dir):
                raise FsError(errno.EISDIR, self.dst)
            if isinstance(dst, Dir) and dst.entries:
                raise FsError(errno.ENOTEMPTY, self.dst)
            if isinstance(src, File) and isinstance(dst, File) and src.nlink > 1 and src.ino == dst.ino:
                return root  # both names are links to one inode: rename does nothing
            if isinstance(dst, File) and dst.nlink > 1:
                root = _retarget_links(root, dst.ino, dst.nlink - 1, skip=dp)
                src = _existing(root, sp)
        leftover: Node | None = Whiteout() if self.flags is RenameFlags.WHITEOUT else None
        return _move(root, {sp: leftover, dp: src})

    def shape(self) -> Shape:
        return Shape(Effect.MOVE, src=self.src, dst=self.dst, flags=self.flags)

    def writes(self) -> tuple[str, ...]:
        return (self.src, self.dst)

    def events(self) -> list[str]:
        moves = [f"rename {self.src} -> {self.dst}"]
        if self.flags is RenameFlags.EXCHANGE:
            moves.append(f"rename {self.dst} -> {self.src}")
        return moves

    def __str__(self) -> str:
        flag = f" ({self.flags.value})" if self.flags is not RenameFlags.NONE else ""
        return f"rename {self.src} -> {self.dst}{flag}"


def _move(root: Dir, placements: dict[Parts, Node | None]) -> Dir:
    """Set several paths at once; paths in one directory change in one path copy."""
    by_dir: dict[Parts, dict[str, Node | None]] = {}
    for parts, node in placements.items():
        by_dir.setdefault(parts[:-1], {})[parts[-1]] = node
    # Deepest directories first, so a change of an ancestor never loses a descendant's.
    for dparts in sorted(by_dir, key=len, reverse=True):
        root = replace_many(root, dparts, by_dir[dparts])
    return root


@dataclass(frozen=True)
class Unlink(Step):
    path: str
    kind = "unlink"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        parts = split(self.path)
        node = _existing(root, parts)
        if isinstance(node, Dir):
            raise FsError(errno.EISDIR, self.path)
        if isinstance(node, File) and node.nlink > 1:
            root = _retarget_links(root, node.ino, node.nlink - 1, skip=parts)
        return replace(root, parts, None)

    def shape(self) -> Shape:
        return Shape(Effect.REMOVE, self.path)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def events(self) -> list[str]:
        return [f"unlink {self.path}"]

    def __str__(self) -> str:
        return f"unlink {self.path}"


@dataclass(frozen=True)
class Rmdir(Step):
    path: str
    kind = "rmdir"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        parts = split(self.path)
        node = _existing(root, parts)
        if not isinstance(node, Dir):
            raise FsError(errno.ENOTDIR, self.path)
        if node.entries:
            raise FsError(errno.ENOTEMPTY, self.path)
        return replace(root, parts, None)

    def shape(self) -> Shape:
        return Shape(Effect.REMOVE, self.path)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def events(self) -> list[str]:
        return [f"rmdir {self.path}"]

    def __str__(self) -> str:
        return f"rmdir {self.path}"


@dataclass(frozen=True)
class Fsync(Step):
    """fsync(2): changes nothing in the tree; persistence models give it meaning."""

    path: str
    kind = "fsync"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        _existing(root, split(self.path))
        return root

    def shape(self) -> Shape:
        return Shape(Effect.FSYNC, self.path)

    def __str__(self) -> str:
        return f"fsync {self.path}"


@dataclass(frozen=True)
class Syncfs(Step):
    """syncfs(2) of the file system that holds `path`. With `data` false it commits
    metadata only and leaves dirty data unwritten (overlayfs before Linux 4.15)."""

    path: str = ""
    data: bool = True
    kind = "syncfs"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        return root

    def shape(self) -> Shape:
        return Shape(Effect.SYNCFS)

    def __str__(self) -> str:
        return f"syncfs {self.path or '/'}" + ("" if self.data else " (metadata only)")


@dataclass(frozen=True)
class RemoveTree(Step):
    """Recursive removal (a driver's cleanup of its own scratch area at mount)."""

    path: str
    kind = "remove_tree"

    def apply(self, root: Dir, device: Device = one_device) -> Dir:
        return remove_subtree(root, split(self.path))

    def shape(self) -> Shape:
        return Shape(Effect.REMOVE, self.path)

    def writes(self) -> tuple[str, ...]:
        return (self.path,)

    def __str__(self) -> str:
        return f"rm -r {self.path}"


def remove_subtree(root: Dir, parts: Parts, keep: Node | None = None) -> Dir:
    """Remove (or replace by `keep`) the subtree at `parts`; files in it that have other
    links outside lose those links, as unlinking them one by one would do."""
    node = lookup(root, parts)
    if node is None:
        return root if keep is None else replace(root, parts, keep)
    gone: dict[int, int] = {}
    if has_hard_links(node):
        for _, n in walk(node):
            if isinstance(n, File) and n.nlink > 1:
                gone[n.ino] = gone.get(n.ino, 0) + 1
    root = replace(root, parts, keep)
    for ino, count in gone.items():
        for link in find_inode(root, ino):
            f = lookup(root, link)
            assert isinstance(f, File)
            root = replace(root, link, f.with_links(ino, f.nlink - count))
    return root


def _show(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    if len(text) > 24:
        text = text[:21] + "..."
    return repr(text)


def replace_file(temp: str, path: str, data: bytes, mode: int = DEFAULT_FILE_MODE,
                 fsync: bool = True) -> list[Step]:
    """The steps of writing a file atomically: a temp file, its data, fsync (unless
    `fsync` is false), and a rename over `path`."""
    steps: list[Step] = [Create(temp, mode), Write(temp, data, 0, replace=True)]
    if fsync:
        steps.append(Fsync(temp))
    return steps + [Rename(temp, path)]


STEP_TYPES: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        Mkdir, Create, Tmpfile, Write, Truncate, CopyData, SetXattr, RemoveXattr, Chmod, Chown,
        SetTimes, MknodWhiteout, Link, LinkTmpfile, MakeSymlink, Rename, Unlink, Rmdir, Fsync, Syncfs,
        RemoveTree,
    )
}


@dataclass
class StepLog:
    """Applies steps one by one and records each step and the tree after it."""

    root: Dir
    device: Device = one_device
    steps: list[Step] = field(default_factory=list)
    states: list[Dir] = field(default_factory=list)

    def do(self, step: Step) -> Dir:
        self.root = step.apply(self.root, self.device)
        self.steps.append(step)
        self.states.append(self.root)
        return self.root

    def do_all(self, steps: list[Step]) -> Dir:
        for step in steps:
            self.do(step)
        return self.root
