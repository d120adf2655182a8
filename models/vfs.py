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


def resolve_path(lookup: Lookup, parts: Parts, follow_last: bool, hops: int = 0, user: int = 0) -> Parts:
    """`parts` with every symlink among its ancestors (and the last component when
    `follow_last`) replaced by its target; absolute targets start at the view root.
    A caller other than root needs search permission on every directory walked
    through (EACCES, before whatever the walk finds next)."""
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
        if user:
            here = lookup(tuple(done))
            if here is not None and not permits(here, user, EXEC):
                raise FsError(errno.EACCES, join(tuple(done)) or "/")
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
    ENOENT, ENOTDIR or ELOOP), and a trailing slash's rules applied
    (`trailing_slash`); the resolved paths carry no trailing slash."""
    if isinstance(call, sc.Open) and call.creates and call.directory:
        raise FsError(errno.EINVAL, call.path)  # build_open_flags, before any path walk
    changes: dict[str, str] = {}
    slashed = False
    for field, path, follow in call.paths():
        parts = split(path)
        slash = path.endswith("/") and bool(parts)
        rule = _slash_rule(call, field) if slash else ""
        # O_CREAT with a trailing slash is EISDIR before the last component is walked
        follow_last = (follow or rule == SLASH_DIR) and rule != SLASH_CREATE
        resolved = resolve_path(lookup, parts, follow_last, user=call.user)
        if rule:
            trailing_slash(lookup, resolved, rule)
        if isinstance(call, sc.Link) and field == "src":
            existing(lookup, resolved)  # linkat looks the source up fully before the target
        slashed = slashed or slash
        changes[field] = join(resolved)
    if slashed and isinstance(call, sc.Rename):
        src = lookup(split(changes["src"]))
        if src is not None and not isinstance(src, Dir):
            raise FsError(errno.ENOTDIR, changes["src"])  # a slash on either side: a directory move
    return call.with_paths(changes)


# What a trailing slash means for a path argument (Linux `LOOKUP_DIRECTORY` and the
# callers' `last.name[last.len]` checks, as tried on this machine's kernel):
SLASH_DIR = "dir"  # follow a symlink at the end; what is there must be a directory (ENOTDIR)
SLASH_CREATE = "create"  # open(O_CREAT): EISDIR, whatever is there
SLASH_UNLINK = "unlink"  # no follow: ENOENT if missing, EISDIR for a directory, else ENOTDIR
SLASH_NEW = "new"  # the new name of symlink or link: ENOENT if missing (EEXIST as ever)
SLASH_NONE = "none"  # mkdir, rmdir, rename (rename's own check is in resolve_call)


def _slash_rule(call: sc.Syscall, field: str) -> str:
    match call:
        case sc.Create():
            return SLASH_CREATE
        case sc.Open() if call.creates:
            return SLASH_CREATE
        case sc.Unlink():
            return SLASH_UNLINK
        case sc.Symlink():
            return SLASH_NEW
        case sc.Link() if field == "dst":
            return SLASH_NEW
        case sc.Mkdir() | sc.Rmdir() | sc.Rename():
            return SLASH_NONE
    return SLASH_DIR


def trailing_slash(lookup: Lookup, parts: Parts, rule: str) -> None:
    """The error a trailing slash on the (resolved) path `parts` causes under `rule`."""
    if rule == SLASH_NONE:
        return
    if rule == SLASH_CREATE:
        raise FsError(errno.EISDIR, join(parts))
    node = lookup(parts)
    if node is None:
        if rule in (SLASH_UNLINK, SLASH_NEW):
            parent_of(lookup, parts)
            raise FsError(errno.ENOENT, join(parts))
        return  # ENOENT comes from the call's own checks
    if rule == SLASH_UNLINK:
        raise FsError(errno.EISDIR if isinstance(node, Dir) else errno.ENOTDIR, join(parts))
    if rule == SLASH_DIR and not isinstance(node, Dir):
        raise FsError(errno.ENOTDIR, join(parts))


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
    if isinstance(call, sc.Readdir | sc.Read) and not permits(node, call.user, READ):
        return sc.fail(errno.EACCES)
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
    """POSIX errors every driver reports the same way, checked on the view (FsError),
    permissions of a caller other than root included (`models.permissions` order);
    driver-specific errors (EXDEV, ...) are the driver's business."""
    user = call.user
    match call:
        case sc.Sync() | sc.Remount():
            return
        case sc.Syncfs():
            may(lookup, (), user, READ)  # syncfs opens the mount's root read-only
        case sc.Create() | sc.Mkdir() | sc.Symlink():
            parts = split(call.path)
            check_absent(lookup, parts)
            may_create(lookup, parts, user)
        case sc.Open():
            check_open(lookup, call)
        case sc.Write() | sc.Append() | sc.Truncate() | sc.Pwrite():
            parts = split(call.path)
            node = existing(lookup, parts)
            if isinstance(node, Dir):
                raise FsError(errno.EISDIR, join(parts))
            if not isinstance(node, File):
                raise FsError(errno.EINVAL, join(parts))
            may(lookup, parts, user, WRITE)
        case sc.Unlink():
            parts = split(call.path)
            existing(lookup, parts)
            may_delete(lookup, parts, user)
            if isinstance(lookup(parts), Dir):
                raise FsError(errno.EISDIR, call.path)
        case sc.Rmdir():
            parts = split(call.path)
            node = existing(lookup, parts)
            may_delete(lookup, parts, user)
            if not isinstance(node, Dir):
                raise FsError(errno.ENOTDIR, join(parts))
            if node.entries:
                raise FsError(errno.ENOTEMPTY, join(parts))
        case sc.Link():
            src = existing(lookup, split(call.src))
            check_absent(lookup, split(call.dst))  # filename_create() before vfs_link()
            may_link(src, user, call.src)  # may_linkat(), before vfs_link()
            may_create(lookup, split(call.dst), user)
            if isinstance(src, Dir):
                raise FsError(errno.EPERM, call.src)
        case sc.Rename():
            sp, dp = split(call.src), split(call.dst)
            check_rename(lookup, sp, dp, call.flags, user)
            if sp != dp:
                check_rename_target_empty(lookup, dp, call.flags)
        case sc.Fsync():
            parts = split(call.path)
            existing(lookup, parts)
            may(lookup, parts, user, READ)  # the fsync op opens the file read-only
        case _:  # chmod, setxattr, utimens, chown, fchown
            parts = split(call.path)  # type: ignore[attr-defined]
            may_change(existing(lookup, parts), call, user)


# --- permissions (`generic_permission`, `may_create`, `may_delete`, `may_linkat`,
# `chown_ok`, `xattr_permission`): root may do anything; any other caller is uid N with
# group N and no supplementary groups (a spec op's `user = N`). ----------------------------

READ, WRITE, EXEC = 4, 2, 1


def permits(node: Node, user: int, want: int) -> bool:
    """Do the owner, group or other bits of `node` grant `want` to `user`?"""
    if user == 0:
        return True
    if node.uid == user:
        bits = node.mode >> 6
    elif node.gid == user:
        bits = node.mode >> 3
    else:
        bits = node.mode
    return bits & want == want


def may(lookup: Lookup, parts: Parts, user: int, want: int) -> None:
    node = lookup(parts)
    if node is not None and not permits(node, user, want):
        raise FsError(errno.EACCES, join(parts))


def may_create(lookup: Lookup, parts: Parts, user: int) -> None:
    may(lookup, parts[:-1], user, WRITE | EXEC)


def may_delete(lookup: Lookup, parts: Parts, user: int) -> None:
    """Write and search on the parent; in a sticky directory, only the owner of the
    entry or of the directory (EPERM)."""
    may(lookup, parts[:-1], user, WRITE | EXEC)
    parent, node = lookup(parts[:-1]), lookup(parts)
    sticky = parent is not None and node is not None and parent.mode & 0o1000
    if user and sticky and user not in (node.uid, parent.uid):  # type: ignore[union-attr]
        raise FsError(errno.EPERM, join(parts))


def may_link(src: Node, user: int, path: str) -> None:
    """fs.protected_hardlinks = 1 (Debian's default): a caller who does not own the
    file may link only a regular file, without set-ID bits, that it may read and write."""
    if user == 0 or src.uid == user:
        return
    safe = isinstance(src, File) and not src.mode & 0o4000 and src.mode & 0o2010 != 0o2010
    if not safe or not permits(src, user, READ | WRITE):
        raise FsError(errno.EPERM, path)


def may_change(node: Node, call: sc.Syscall, user: int) -> None:
    """chmod, chown, utimensat with a time, setxattr by a caller other than root."""
    if user == 0:
        return
    path = call.path  # type: ignore[attr-defined]
    match call:
        case sc.Chmod() | sc.Utimens():
            if node.uid != user:
                raise FsError(errno.EPERM, path)
        case sc.Chown():
            uid_ok = call.uid is None or call.uid == node.uid
            gid_ok = call.gid is None or call.gid == node.gid or call.gid == user
            if node.uid != user or not uid_ok or not gid_ok:
                raise FsError(errno.EPERM, path)
        case sc.SetXattr():
            if not call.xattr.startswith("user."):
                raise FsError(errno.EPERM, path)  # trusted.* and security.* need capabilities
            if not isinstance(node, (File, Dir)):
                raise FsError(errno.EPERM, path)
            if isinstance(node, Dir) and node.mode & 0o1000 and node.uid != user:
                raise FsError(errno.EPERM, path)
            if not permits(node, user, WRITE):
                raise FsError(errno.EACCES, path)


OPEN_CREATE = "create"  # open(2) makes a new file
OPEN_TRUNCATE = "truncate"  # it empties an existing regular file (O_TRUNC)
OPEN_WRITE = "write"  # it opens a regular file for writing, as it is
OPEN_READ = ""  # nothing changes


def check_open(lookup: Lookup, call: sc.Open) -> str:
    """The checks of open(2) on the resolved path (`build_open_flags`, `open_last_lookups`,
    `do_open`, `may_open`), in the kernel's order, and what the open does to the file:
    one of OPEN_CREATE, OPEN_TRUNCATE, OPEN_WRITE, OPEN_READ."""
    parts = split(call.path)
    if call.creates and call.directory:
        raise FsError(errno.EINVAL, join(parts))  # O_CREAT|O_DIRECTORY (Linux 6.4 on)
    node = lookup(parts)
    if node is None:
        parent_of(lookup, parts)
        if not call.creates:
            raise FsError(errno.ENOENT, join(parts))
        may_create(lookup, parts, call.user)
        return OPEN_CREATE
    if call.creates and call.exclusive:
        raise FsError(errno.EEXIST, join(parts))
    if call.directory and not isinstance(node, Dir):
        raise FsError(errno.ENOTDIR, join(parts))  # do_open, before may_open
    if isinstance(node, Symlink):  # not followed: O_NOFOLLOW
        raise FsError(errno.ELOOP, join(parts))
    if isinstance(node, Dir):
        if call.creates or call.modifies:
            raise FsError(errno.EISDIR, join(parts))
        may(lookup, parts, call.user, READ)
        return OPEN_READ
    if call.directory:
        raise FsError(errno.ENOTDIR, join(parts))
    if not isinstance(node, File):
        raise FsError(errno.EINVAL, join(parts))
    want = (READ if call.access != "O_WRONLY" else 0) | (WRITE if call.modifies else 0)
    may(lookup, parts, call.user, want)
    if call.truncates:
        return OPEN_TRUNCATE  # Linux truncates even when opened read-only
    return OPEN_WRITE if call.writable else OPEN_READ


def mode_after_chown(node: Node) -> int | None:
    """The mode chown(2) leaves on a non-directory with set-ID bits (`chown_common` asks
    to kill set-user-ID, and set-group-ID when group-executable), or None: unchanged."""
    if not isinstance(node, File):
        return None
    mode = node.mode & ~0o4000
    if node.mode & 0o2010 == 0o2010:
        mode &= ~0o2000
    return mode if mode != node.mode else None


def check_rename(lookup: Lookup, sp: Parts, dp: Parts, flags: sc.RenameFlags, user: int = 0) -> None:
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
    if user:
        check_rename_access(lookup, sp, dp, flags, user)
    if dst is None or flags is sc.RenameFlags.EXCHANGE:
        return
    if isinstance(src, Dir) and not isinstance(dst, Dir):
        raise FsError(errno.ENOTDIR, join(dp))
    if not isinstance(src, Dir) and isinstance(dst, Dir):
        raise FsError(errno.EISDIR, join(dp))


def check_rename_access(lookup: Lookup, sp: Parts, dp: Parts, flags: sc.RenameFlags, user: int) -> None:
    """`vfs_rename`'s permission checks: delete at the source, create or delete at the
    target, and write permission on a directory that changes parent (its `..`)."""
    may_delete(lookup, sp, user)
    if lookup(dp) is None:
        may_create(lookup, dp, user)
    else:
        may_delete(lookup, dp, user)
    if sp[:-1] != dp[:-1]:
        if isinstance(lookup(sp), Dir):
            may(lookup, sp, user, WRITE)
        if flags is sc.RenameFlags.EXCHANGE and isinstance(lookup(dp), Dir):
            may(lookup, dp, user, WRITE)


def check_rename_target_empty(lookup: Lookup, dp: Parts, flags: sc.RenameFlags) -> None:
    """A rename may replace a directory only when it is empty (the file system's check)."""
    dst = lookup(dp)
    if flags is not sc.RenameFlags.EXCHANGE and isinstance(dst, Dir) and dst.entries:
        raise FsError(errno.ENOTEMPTY, join(dp))
