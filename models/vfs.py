"""What the VFS does before a file system sees a system call: path walk (symlinks and
`..`, absolute targets from the view's root, as inside a container), and the POSIX
errors every file system reports the same way, in the kernel's order. Every function
works on a view through `lookup(parts) -> node or None`."""

from __future__ import annotations

import errno
from collections.abc import Callable

from models import syscalls as sc
from models.tree import Dir, File, FsError, Node, Parts, Symlink, join, split

MAX_SYMLINKS = 40  # as the kernel's MAXSYMLINKS: more hops is ELOOP

Lookup = Callable[[Parts], "Node | None"]


def resolve_path(lookup: Lookup, parts: Parts, follow_last: bool, hops: int = 0) -> Parts:
    """`parts` with every symlink among its ancestors (and the last component when
    `follow_last`) replaced by its target; absolute targets start at the view root."""
    done: list[str] = []
    todo = list(parts)
    while todo:
        name = todo.pop(0)
        if name == "." or name == "":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        node = lookup(tuple(done) + (name,))
        if isinstance(node, Symlink) and (todo or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise FsError(errno.ELOOP, join(parts))
            target = node.target.split("/")
            if node.target.startswith("/"):
                done = []
            todo = target + todo
            continue
        if todo and node is None:
            raise FsError(errno.ENOENT, join(tuple(done) + (name,)))
        if todo and not isinstance(node, Dir):
            raise FsError(errno.ENOTDIR, join(tuple(done) + (name,)))
        done.append(name)
    return tuple(done)


def resolve_call(lookup: Lookup, call: sc.Syscall) -> sc.Syscall:
    """The call with symlinks in its paths resolved as path walk does (FsError on
    ENOENT, ENOTDIR or ELOOP)."""
    return call.with_paths({
        field: join(resolve_path(lookup, split(path), follow)) for field, path, follow in call.paths()
    })


def parent_of(lookup: Lookup, parts: Parts) -> Dir:
    """The view directory holding `parts`, or FsError(ENOENT/ENOTDIR)."""
    if not parts:
        raise FsError(errno.EBUSY, "/")
    parent = lookup(parts[:-1])
    if parent is None:
        for i in range(1, len(parts)):
            node = lookup(parts[:i])
            if node is None:
                raise FsError(errno.ENOENT, join(parts[:i]))
            if not isinstance(node, Dir):
                raise FsError(errno.ENOTDIR, join(parts[:i]))
    if not isinstance(parent, Dir):
        raise FsError(errno.ENOTDIR, join(parts[:-1]))
    return parent


def existing(lookup: Lookup, parts: Parts) -> Node:
    """The view node at `parts`, or FsError(ENOENT/ENOTDIR)."""
    node = lookup(parts)
    if node is None:
        parent_of(lookup, parts)
        raise FsError(errno.ENOENT, join(parts))
    return node


def check_absent(lookup: Lookup, parts: Parts) -> None:
    parent_of(lookup, parts)
    if lookup(parts) is not None:
        raise FsError(errno.EEXIST, join(parts))


def read(lookup: Lookup, call: sc.Syscall) -> sc.SysResult:
    """stat, readdir, read, readlink, listxattr on the view."""
    try:
        node = existing(lookup, split(call.path))  # type: ignore[attr-defined]
    except FsError as e:
        return sc.fail(e.errno)
    match call:
        case sc.Stat():
            return sc.SysResult(0, node)
        case sc.Readdir():
            if not isinstance(node, Dir):
                return sc.fail(errno.ENOTDIR)
            return sc.SysResult(0, node.names())
        case sc.Read():
            if isinstance(node, Dir):
                return sc.fail(errno.EISDIR)
            if not isinstance(node, File):
                return sc.fail(errno.EINVAL)
            return sc.SysResult(0, node.content)
        case sc.Readlink():
            if not isinstance(node, Symlink):
                return sc.fail(errno.EINVAL)
            return sc.SysResult(0, node.target)
        case sc.Listxattr():
            return sc.SysResult(0, dict(node.xattrs))
    raise ValueError(f"not a read-only system call: {call}")


def check_call(lookup: Lookup, call: sc.Syscall) -> None:
    """POSIX errors every driver reports the same way, checked on the view (FsError);
    driver-specific errors (EXDEV, ...) are the driver's business."""
    match call:
        case sc.Sync() | sc.Syncfs():
            return
        case sc.Create() | sc.Mkdir() | sc.Symlink():
            check_absent(lookup, split(call.path))
        case sc.Write() | sc.Append() | sc.Truncate():
            parts = split(call.path)
            node = existing(lookup, parts)
            if isinstance(node, Dir):
                raise FsError(errno.EISDIR, join(parts))
            if not isinstance(node, File):
                raise FsError(errno.EINVAL, join(parts))
        case sc.Unlink():
            if isinstance(existing(lookup, split(call.path)), Dir):
                raise FsError(errno.EISDIR, call.path)
        case sc.Rmdir():
            parts = split(call.path)
            node = existing(lookup, parts)
            if not isinstance(node, Dir):
                raise FsError(errno.ENOTDIR, join(parts))
            if node.entries:
                raise FsError(errno.ENOTEMPTY, join(parts))
        case sc.Link():
            src = existing(lookup, split(call.src))
            check_absent(lookup, split(call.dst))  # filename_create() before vfs_link()
            if isinstance(src, Dir):
                raise FsError(errno.EPERM, call.src)
        case sc.Rename():
            sp, dp = split(call.src), split(call.dst)
            check_rename(lookup, sp, dp, call.flags)
            if sp != dp:
                check_rename_target_empty(lookup, dp, call.flags)
        case _:  # chmod, setxattr, fsync, utimens, chown, fchown
            existing(lookup, split(call.path))  # type: ignore[attr-defined]


def check_rename(lookup: Lookup, sp: Parts, dp: Parts, flags: sc.RenameFlags) -> None:
    """The checks the VFS makes (`do_renameat2`, `vfs_rename`) before a file system's
    rename runs, in the kernel's order."""
    src = existing(lookup, sp)
    parent_of(lookup, dp)
    dst = lookup(dp)
    if flags is sc.RenameFlags.NOREPLACE and dst is not None:
        raise FsError(errno.EEXIST, join(dp))
    if flags is sc.RenameFlags.EXCHANGE and dst is None:
        raise FsError(errno.ENOENT, join(dp))
    if sp == dp:
        return
    if dp[: len(sp)] == sp:  # source is an ancestor of the target
        raise FsError(errno.EINVAL, join(dp))
    if sp[: len(dp)] == dp:  # target is an ancestor of the source
        raise FsError(errno.EINVAL if flags is sc.RenameFlags.EXCHANGE else errno.ENOTEMPTY, join(dp))
    if dst is None or flags is sc.RenameFlags.EXCHANGE:
        return
    if isinstance(src, Dir) and not isinstance(dst, Dir):
        raise FsError(errno.ENOTDIR, join(dp))
    if not isinstance(src, Dir) and isinstance(dst, Dir):
        raise FsError(errno.EISDIR, join(dp))


def check_rename_target_empty(lookup: Lookup, dp: Parts, flags: sc.RenameFlags) -> None:
    """A rename may replace a directory only when it is empty (the file system's check)."""
    dst = lookup(dp)
    if flags is not sc.RenameFlags.EXCHANGE and isinstance(dst, Dir) and dst.entries:
        raise FsError(errno.ENOTEMPTY, join(dp))
