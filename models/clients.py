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

import errno
from collections.abc import Generator

from models.driver import Syscall, SysResult
from models.tree import Dir, File, Node, Symlink

Client = Generator[Syscall, SysResult, int]

COPY_FILE_MODE = 0o600  # cp/mv create the copy private, then restore the mode
COPY_DIR_MODE = 0o700


def syscall(call: Syscall) -> Client:
    """A raw system call: the op fails with its errno."""
    result = yield call
    return result.errno


def create(path: str, data: bytes | None, mode: int = 0o644) -> Client:
    """open(O_CREAT|O_EXCL) then, with data, one write(2): two system calls."""
    result = yield Syscall("create", (path, mode))
    if not result.ok or data is None:
        return result.errno
    result = yield Syscall("write", (path, data))
    return result.errno


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def mv(src: str, dst: str) -> Client:
    """`mv -T src dst`."""
    if src == dst:
        return errno.EINVAL  # "'src' and 'dst' are the same file", before any call
    result = yield Syscall("rename", (src, dst), flags="noreplace")
    if result.errno == errno.EEXIST:
        result = yield Syscall("rename", (src, dst))
    if result.errno != errno.EXDEV:
        return result.errno
    failed = yield from _move_fallback(src, dst)
    if failed:
        return failed  # mv keeps the source when the copy was incomplete
    return (yield from _remove_tree(src))


def _move_fallback(src: str, dst: str) -> Client:
    """copy.c after EXDEV: recreate `src` at `dst`, moving what can be moved."""
    st = yield Syscall("stat", (src,))
    if not st.ok:
        return st.errno
    node: Node = st.value
    if isinstance(node, Dir):
        yield Syscall("rmdir", (dst,))  # "remove any existing destination": ENOENT
        made = yield Syscall("mkdir", (dst, COPY_DIR_MODE))
        if not made.ok:
            return made.errno
        listing = yield Syscall("readdir", (src,))
        first_error = 0
        for name in listing.value:  # copy.c goes on after an entry fails
            s, d = _join(src, name), _join(dst, name)
            moved = yield Syscall("rename", (s, d), flags="noreplace")
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
    yield Syscall("utimens", (path,))
    yield Syscall("fchown" if by_fd else "chown", (path,))
    if isinstance(node, (File, Dir)):
        result = yield Syscall("chmod", (path, node.mode))  # mv/cp set it as an ACL
        if not result.ok:
            return result.errno
    for name, value in node.xattrs:
        yield Syscall("setxattr", (path, name, value))
    return 0


def _copy_node(src: str, dst: str, node: Node) -> Client:
    """Copy one non-directory: a file's data, or a symlink's target."""
    if isinstance(node, Symlink):
        made = yield Syscall("symlink", (node.target, dst))
        if not made.ok:
            return made.errno
        yield Syscall("chown", (dst,))
        yield Syscall("utimens", (dst,))
        return 0
    if not isinstance(node, File):
        return errno.EINVAL
    made = yield Syscall("create", (dst, COPY_FILE_MODE))
    if not made.ok:
        return made.errno
    if node.content:
        wrote = yield Syscall("write", (dst, node.content))
        if not wrote.ok:
            return wrote.errno
    return (yield from _restore_attrs(dst, node, by_fd=True))


def _remove_tree(path: str) -> Client:
    """Depth-first removal, as `rm -rf` and mv's final clean-up do it."""
    st = yield Syscall("stat", (path,))
    if not st.ok:
        return 0 if st.errno in (errno.ENOENT, errno.ENOTDIR) else st.errno  # as rm -f
    first_error = 0
    if isinstance(st.value, Dir):
        listing = yield Syscall("readdir", (path,))
        for name in listing.value:  # an entry that cannot go does not stop the others
            failed = yield from _remove_tree(_join(path, name))
            first_error = first_error or failed
        result = yield Syscall("rmdir", (path,))
    else:
        result = yield Syscall("unlink", (path,))
    return first_error or result.errno


def rm(path: str) -> Client:
    """`rm -rf path`: a missing path is not an error."""
    return (yield from _remove_tree(path))


def cp(src: str, dst: str) -> Client:
    """`cp -a -T src dst`: copy the tree, then restore mode, times and xattrs. An existing
    directory at `dst` is copied into; an existing file is overwritten (O_TRUNC); an
    existing entry is unlinked before a symlink is made, as coreutils does."""
    st = yield Syscall("stat", (src,))
    if not st.ok:
        return st.errno
    if dst == src or dst.startswith(src + "/"):
        return errno.EINVAL  # "cannot copy a directory into itself" / "same file"
    return (yield from _copy_tree(src, dst, st.value))


def _copy_tree(src: str, dst: str, node: Node) -> Client:
    there = yield Syscall("stat", (dst,))
    existing: Node | None = there.value if there.ok else None
    if isinstance(node, Dir):
        if existing is None:
            made = yield Syscall("mkdir", (dst, COPY_DIR_MODE))
            if not made.ok:
                return made.errno
        elif not isinstance(existing, Dir):
            return errno.ENOTDIR  # "cannot overwrite non-directory with directory"
        listing = yield Syscall("readdir", (src,))
        if not listing.ok:
            return listing.errno
        first_error = 0
        for name in listing.value:  # like coreutils, report an entry's error and go on
            child = yield Syscall("stat", (_join(src, name),))
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
    if isinstance(node, Symlink):
        gone = yield Syscall("unlink", (dst,))
        if not gone.ok:
            return gone.errno
        return (yield from _copy_node(src, dst, node))
    if not isinstance(node, File):
        return errno.EINVAL
    # open(O_WRONLY|O_TRUNC) follows a symlink at dst: coreutils writes through it
    wrote = yield Syscall("write", (dst, node.content))
    if not wrote.ok:
        return wrote.errno
    return (yield from _restore_attrs(dst, node, by_fd=True))
