"""Client programs: what `mv`, `rm`, `cp` and raw system calls do on the view.

A client is a generator: it yields `Syscall`s, receives each `SysResult`, reacts to it
(EXDEV, EEXIST, ...) and finally returns the errno the program fails with (0 on
success). The sequences follow GNU coreutils 9.x as strace shows them on overlayfs:

`mv -T src dst`: renameat2(RENAME_NOREPLACE); on EEXIST a plain rename; on EXDEV the
copy fallback of copy.c: for a directory, rmdir(dst) (ENOENT expected), mkdir(dst, 0700),
every entry moved by renameat2(NOREPLACE) and, when that entry's rename gets EXDEV too,
handled the same way (a file is copied only when its own rename fails); then times,
owner and mode are restored on the new directory; finally the emptied source tree is
removed depth first (unlinkat, AT_REMOVEDIR). Entries are visited in name order.

Known simplification: `cp` of a directory into itself fails before copying anything;
coreutils copies part of the tree first and then reports the loop.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable, Generator
from typing import Any

from models import syscalls as sc
from models.syscalls import RenameFlags, Syscall, SysResult
from models.tree import Dir, File, Node, Symlink

Client = Generator[Syscall, SysResult, int]

COPY_FILE_MODE = 0o600  # cp/mv create the copy private, then restore the mode
COPY_DIR_MODE = 0o700
TRUNCATE_FOR_WRITE = ("O_WRONLY", "O_TRUNC")  # how cp opens an existing destination


def syscall(call: Syscall) -> Client:
    """A raw system call: the op fails with its errno."""
    result = yield call
    return result.errno


def create(path: str, data: bytes | None, mode: int = 0o644) -> Client:
    """open(O_CREAT|O_EXCL) then, with data, one write(2): two system calls."""
    result = yield sc.Create(path, mode)
    if not result.ok or data is None:
        return result.errno
    result = yield sc.Write(path, data)
    return result.errno


def open_file(path: str, flags: tuple[str, ...], mode: int, data: bytes | None) -> Client:
    """open(2) with `flags`, then, with data, one write(2) on the descriptor: two calls."""
    call = sc.Open(path, flags, mode)
    result = yield call
    if not result.ok or data is None:
        return result.errno
    result = yield sc.WriteFd(path, data, call.appends, call.writable)
    return result.errno


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def mv(src: str, dst: str) -> Client:
    """`mv -T src dst`."""
    if src == dst:
        return errno.EINVAL  # "'src' and 'dst' are the same file", before any call
    result = yield sc.Rename(src, dst, RenameFlags.NOREPLACE)
    if result.errno == errno.EEXIST:
        a = yield sc.Stat(src)
        b = yield sc.Stat(dst)
        same = a.ok and b.ok and isinstance(a.value, File) and isinstance(b.value, File)
        if same and a.value.ino and a.value.ino == b.value.ino:
            return errno.EINVAL  # "are the same file": coreutils stats both, two links of one inode
        result = yield sc.Rename(src, dst)
    if result.errno != errno.EXDEV:
        return result.errno
    failed = yield from _move_fallback(src, dst)
    if failed:
        return failed  # mv keeps the source when the copy was incomplete
    return (yield from _remove_tree(src))


def _move_fallback(src: str, dst: str) -> Client:
    """copy.c after EXDEV: recreate `src` at `dst`, moving what can be moved."""
    st = yield sc.Stat(src)
    if not st.ok:
        return st.errno
    node: Node = st.value
    if isinstance(node, Dir):
        yield sc.Rmdir(dst)  # "remove any existing destination": ENOENT
        made = yield sc.Mkdir(dst, COPY_DIR_MODE)
        if not made.ok:
            return made.errno
        listing = yield sc.Readdir(src)
        first_error = 0
        for name in listing.value:  # copy.c goes on after an entry fails
            s, d = _join(src, name), _join(dst, name)
            moved = yield sc.Rename(s, d, RenameFlags.NOREPLACE)
            failed = moved.errno
            if moved.errno == errno.EXDEV:
                failed = yield from _move_fallback(s, d)
            first_error = first_error or failed
        restored = yield from _restore_attrs(dst, node)
        return first_error or restored
    return (yield from _copy_node(src, dst, node))


def _restore_attrs(path: str, node: Node, by_fd: bool = False) -> Client:
    """Times, owner, mode and xattrs as cp/mv restore them: on a directory by path
    (fchownat with AT_SYMLINK_NOFOLLOW), on a copied file through its open descriptor
    (fchown: when the destination was a symlink, its target gets them)."""
    yield sc.Utimens(path, node.mtime)
    yield (sc.FChown(path, node.uid, node.gid) if by_fd else sc.Chown(path, node.uid, node.gid))
    if isinstance(node, (File, Dir)):
        result = yield sc.Chmod(path, node.mode)  # mv/cp set it as an ACL
        if not result.ok:
            return result.errno
    for name, value in node.xattrs:
        yield sc.SetXattr(path, name, value)
    return 0


def _copy_node(src: str, dst: str, node: Node) -> Client:
    """Copy one non-directory: a file's data, or a symlink's target."""
    if isinstance(node, Symlink):
        made = yield sc.Symlink(node.target, dst)
        if not made.ok:
            return made.errno
        yield sc.Chown(dst, node.uid, node.gid)
        yield sc.LUtimens(dst)
        return 0
    if not isinstance(node, File):
        return errno.EINVAL
    made = yield sc.Create(dst, COPY_FILE_MODE)
    if not made.ok:
        return made.errno
    if node.content:
        wrote = yield sc.Write(dst, node.content)
        if not wrote.ok:
            return wrote.errno
    return (yield from _restore_attrs(dst, node, by_fd=True))


def _remove_tree(path: str) -> Client:
    """Depth-first removal, as `rm -rf` and mv's final clean-up do it."""
    st = yield sc.Stat(path)
    if not st.ok:
        return 0 if st.errno in (errno.ENOENT, errno.ENOTDIR) else st.errno  # as rm -f
    first_error = 0
    if isinstance(st.value, Dir):
        listing = yield sc.Readdir(path)
        for name in listing.value:  # an entry that cannot go does not stop the others
            failed = yield from _remove_tree(_join(path, name))
            first_error = first_error or failed
        result = yield sc.Rmdir(path)
    else:
        result = yield sc.Unlink(path)
    return first_error or result.errno


def rm(path: str) -> Client:
    """`rm -rf path`: a missing path is not an error."""
    return (yield from _remove_tree(path))


def cp(src: str, dst: str) -> Client:
    """`cp -a -T src dst`: copy the tree, then restore mode, times and xattrs. An existing
    directory at `dst` is copied into; an existing file is overwritten (O_TRUNC), or,
    when it has several links, unlinked and made anew; an existing entry is unlinked
    before a symlink is made, as coreutils does."""
    st = yield sc.Stat(src)
    if not st.ok:
        return st.errno
    if dst == src or dst.startswith(src + "/"):
        return errno.EINVAL  # "cannot copy a directory into itself" / "same file"
    return (yield from _copy_tree(src, dst, st.value))


def _copy_tree(src: str, dst: str, node: Node) -> Client:
    there = yield sc.Stat(dst)
    existing: Node | None = there.value if there.ok else None
    if isinstance(node, Dir):
        if existing is None:
            made = yield sc.Mkdir(dst, COPY_DIR_MODE)
            if not made.ok:
                return made.errno
        elif not isinstance(existing, Dir):
            return errno.ENOTDIR  # "cannot overwrite non-directory with directory"
        listing = yield sc.Readdir(src)
        if not listing.ok:
            return listing.errno
        first_error = 0
        for name in listing.value:  # like coreutils, report an entry's error and go on
            child = yield sc.Stat(_join(src, name))
            failed = child.errno or (
                yield from _copy_tree(_join(src, name), _join(dst, name), child.value)
            )
            first_error = first_error or failed
        restored = yield from _restore_attrs(dst, node)
        return first_error or restored
    if isinstance(existing, Dir):
        return errno.EISDIR  # "cannot overwrite directory with non-directory"
    if existing is None:
        return (yield from _copy_node(src, dst, node))
    if isinstance(node, File) and isinstance(existing, File) and node.ino and node.ino == existing.ino:
        return errno.EINVAL  # "'src' and 'dst' are the same file": hard links of one inode
    if isinstance(node, Symlink) or (isinstance(existing, File) and existing.nlink > 1):
        # a symlink is made anew; and `--preserve=links` (in -a) unlinks a destination
        # of several links first, so that its other names keep their data (copy.c:
        # "x->preserve_links && 1 < dst_sb.st_nlink")
        gone = yield sc.Unlink(dst)
        if not gone.ok:
            return gone.errno
        return (yield from _copy_node(src, dst, node))
    if not isinstance(node, File):
        return errno.EINVAL
    # open(O_WRONLY|O_TRUNC) follows a symlink at dst: coreutils writes through it;
    # the truncating open copies a lower file up empty, then the data is written
    wrote = yield sc.Open(dst, TRUNCATE_FOR_WRITE, data=node.content or None)
    if not wrote.ok:
        return wrote.errno
    return (yield from _restore_attrs(dst, node, by_fd=True))


def as_user(client: Client, user: int) -> Client:
    """The client program with every system call made by `user` (a spec op's `user`)."""
    if not user:
        return (yield from client)
    try:
        call = next(client)
        while True:
            call = client.send((yield dataclasses.replace(call, user=user)))
    except StopIteration as stop:
        return stop.value or 0  # type: ignore[no-any-return]


def _text(a: dict[str, Any], key: str) -> bytes:
    return str(a[key]).encode()


#: ops after which what they cover is durable: an fsync its file, a sync and a syncfs
#: every file (`durability`)
FULL_SYNC_OPS = ("sync", "syncfs")
SYNC_OPS = ("fsync",) + FULL_SYNC_OPS

#: The client program of each file-system op of the spec format (DESIGN section 6).
OP_CLIENTS: dict[str, Callable[[dict[str, Any]], Client]] = {
    "create": lambda a: create(a["path"], None if a.get("data") is None else _text(a, "data"),
                               a.get("mode", 0o644)),
    "write": lambda a: syscall(sc.Write(a["path"], _text(a, "data"))),
    "append": lambda a: syscall(sc.Append(a["path"], _text(a, "data"))),
    "open": lambda a: open_file(a["path"], a["flags"], a.get("mode", 0o644),
                                None if a.get("data") is None else _text(a, "data")),
    "pwrite": lambda a: syscall(sc.Pwrite(a["path"], a["offset"], _text(a, "data"))),
    "truncate": lambda a: syscall(sc.Truncate(a["path"], a["size"])),
    "mkdir": lambda a: syscall(sc.Mkdir(a["path"], a.get("mode", 0o755))),
    "rmdir": lambda a: syscall(sc.Rmdir(a["path"])),
    "unlink": lambda a: syscall(sc.Unlink(a["path"])),
    "fsync": lambda a: syscall(sc.Fsync(a["path"])),
    "rename": lambda a: syscall(sc.Rename(a["src"], a["dst"])),
    "link": lambda a: syscall(sc.Link(a["src"], a["dst"])),
    "symlink": lambda a: syscall(sc.Symlink(a["target"], a["path"])),
    "chmod": lambda a: syscall(sc.Chmod(a["path"], a["mode"])),
    "chown": lambda a: syscall(sc.Chown(a["path"], a["uid"], a["gid"])),
    "utimes": lambda a: syscall(sc.Utimens(a["path"], a["mtime"])),
    "setxattr": lambda a: syscall(sc.SetXattr(a["path"], a["name"], _text(a, "value"))),
    "sync": lambda a: syscall(sc.Sync()),
    "syncfs": lambda a: syscall(sc.Syncfs()),
    "mv": lambda a: mv(a["src"], a["dst"]),
    "rm": lambda a: rm(a["path"]),
    "cp": lambda a: cp(a["src"], a["dst"]),
}
