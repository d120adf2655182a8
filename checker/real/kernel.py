"""The real thing: materialize model states on disk, mount the kernel's overlayfs, read
real trees back in the model's vocabulary.

Everything happens under one private workspace (`checker.real.workspace`): every mount is
undone and every process ended when it closes, on errors, signals, and after a SIGKILL
by the next run.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

from checker.errors import CrashcheckError
from checker.real.workspace import MOUNT_TIMEOUT, MountRefused, Workspace, workspace

__all__ = [  # the workspace names are re-exported: kernel.workspace() is the usual entry
    "BOOKKEEPING_XATTRS", "KernelUnavailable", "MountRefused", "Workspace", "kernel_release",
    "materialize_overlay", "overlay_unavailable_reason", "pinned_times", "read_node", "read_upper",
    "xattrs_of",
    "read_view", "without_xattrs", "workspace", "write_node",
]
from models.format import IMPURE, ORIGIN, OVL_PREFIX
from models.tree import Dir, File, Node, Parts, Symlink, Whiteout, Xattrs, walk

#: xattrs the kernel writes for its own bookkeeping (file handles, uuids, d_ino caching);
#: their values cannot match a model, so comparisons of upper trees leave them out.
BOOKKEEPING_XATTRS = (ORIGIN, IMPURE, OVL_PREFIX + "uuid")


class KernelUnavailable(CrashcheckError):
    """The machine cannot run real overlayfs checks (not root, no overlay, ...)."""


def kernel_release() -> str:
    return os.uname().release


def overlay_unavailable_reason() -> str | None:
    """Why real overlayfs mounts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "real overlayfs checks need root (mount(2) and trusted.* xattrs)"
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1] == "overlay" for line in f if line.strip()):
                subprocess.run(["modprobe", "overlay"], capture_output=True, timeout=MOUNT_TIMEOUT)
    except OSError:
        pass
    with open("/proc/filesystems") as f:
        if not any(line.split()[-1] == "overlay" for line in f if line.strip()):
            return "the kernel has no overlay file system (/proc/filesystems)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    return None


# --- writing model trees to disk ----------------------------------------------------


def write_node(node: Node, path: Path) -> None:
    """Create `node` at `path` (which must not exist), recursively, with exact modes,
    owners, pinned times and xattrs; a whiteout becomes a character device 0/0."""
    if isinstance(node, Dir):
        path.mkdir()
        for name in sorted(node.entries):
            write_node(node.entries[name], path / name)
        os.chmod(path, node.mode)
    elif isinstance(node, File):
        path.write_bytes(node.content)
        os.chmod(path, node.mode)
    elif isinstance(node, Symlink):
        os.symlink(node.target, path)
    elif isinstance(node, Whiteout):
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    for name, value in node.xattrs:
        os.setxattr(path, name, value, follow_symlinks=False)
    if node.uid or node.gid:
        os.chown(path, node.uid, node.gid, follow_symlinks=False)
        if isinstance(node, (File, Dir)) and node.mode & 0o6000:
            os.chmod(path, node.mode)  # chown cleared the set-ID bits
    if node.mtime is not None:
        os.utime(path, (node.mtime, node.mtime), follow_symlinks=False)


KEPT_XATTR_PREFIXES = ("user.", OVL_PREFIX)


def read_node(
    path: Path, skip_xattrs: tuple[str, ...] = (), keep_prefixes: tuple[str, ...] = KEPT_XATTR_PREFIXES,
    times_at: frozenset[Parts] = frozenset(), here: Parts = (),
) -> Node:
    """A real file-system tree in the model's vocabulary. A file's modification time is
    read only at `times_at`, the paths where the model pins one (`pinned_times`);
    elsewhere the model does not know it, and nothing compares it."""
    st = os.lstat(path)
    xattrs = _xattrs(path, skip_xattrs, keep_prefixes)
    owner = {"uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISDIR(st.st_mode):
        entries = {}
        for name in sorted(os.listdir(path)):
            try:
                entries[name] = read_node(path / name, skip_xattrs, keep_prefixes, times_at, here + (name,))
            except FileNotFoundError:
                # overlayfs lists a whiteout in a directory it iterates as a plain upper
                # dir, but lookup hides it: the name cannot be opened, so it is not there.
                continue
        return Dir(entries, stat.S_IMODE(st.st_mode), xattrs, **owner)
    if stat.S_ISREG(st.st_mode):
        mtime = int(st.st_mtime) if here in times_at else None
        return File(path.read_bytes(), stat.S_IMODE(st.st_mode), xattrs, nlink=st.st_nlink, mtime=mtime,
                    **owner)
    if stat.S_ISLNK(st.st_mode):
        return Symlink(os.readlink(path), xattrs, **owner)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0):
        return Whiteout(xattrs)
    raise ValueError(f"{path}: unsupported file type {stat.filemode(st.st_mode)}")


def xattrs_of(path: Path, skip: tuple[str, ...] = ()) -> Xattrs:
    """The user and overlay xattrs of `path` (not following a symlink), without `skip`."""
    return _xattrs(path, skip, KEPT_XATTR_PREFIXES)


def _xattrs(path: Path, skip: tuple[str, ...], keep_prefixes: tuple[str, ...]) -> Xattrs:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    out = []
    for name in names:
        if name in skip or not name.startswith(keep_prefixes):
            continue
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(sorted(out))


# --- workspaces and mounts: checker.real.workspace --------------------------------------------------


def materialize_overlay(
    ws: Workspace, backing: Dir, name: str | Path = "state", fresh_work: bool = False
) -> tuple[list[Path], Path, Path]:
    """Write an overlayfs backing tree (lower0.., upper, work) under the workspace; with
    `fresh_work` the work dir is left empty for the kernel's first mount to set up.

    Returns (lower dirs top first, upper dir, work dir)."""
    base = ws.path(str(name))
    base.mkdir()
    lowers = sorted((n for n in backing.entries if n.startswith("lower")), key=lambda n: int(n[5:]))
    for entry in lowers + ["upper", "work"]:
        node = Dir() if entry == "work" and fresh_work else backing.entries[entry]
        write_node(node, base / entry)
    return [base / n for n in reversed(lowers)], base / "upper", base / "work"


def pinned_times(*trees: Node | None) -> frozenset[Parts]:
    """The paths where any of `trees` pins a file's modification time."""
    return frozenset(
        parts for tree in trees if tree is not None for parts, node in walk(tree)
        if isinstance(node, File) and node.mtime is not None
    )


def read_view(mountpoint: Path, times_at: frozenset[Parts] = frozenset()) -> Dir:
    """The merged view as a user sees it (user xattrs only; times at `times_at`)."""
    node = read_node(mountpoint, keep_prefixes=("user.",), times_at=times_at)
    assert isinstance(node, Dir)
    return node


def read_upper(upper: Path, times_at: frozenset[Parts] = frozenset()) -> Dir:
    """An upper dir with whiteouts and overlay xattrs, without kernel bookkeeping."""
    node = read_node(upper, skip_xattrs=BOOKKEEPING_XATTRS, times_at=times_at)
    assert isinstance(node, Dir)
    return node


def without_xattrs(node: Node, names: tuple[str, ...] = BOOKKEEPING_XATTRS) -> Node:
    """A copy of a model tree without the given xattrs (to compare with `read_upper`)."""
    xattrs = tuple((k, v) for k, v in node.xattrs if k not in names)
    if isinstance(node, Dir):
        entries = {n: without_xattrs(c, names) for n, c in node.entries.items()}
        return Dir(entries, node.mode, xattrs, uid=node.uid, gid=node.gid)
    if isinstance(node, File):
        return File(node.content, node.mode, xattrs, nlink=node.nlink, uid=node.uid, gid=node.gid,
                    mtime=node.mtime)
    if isinstance(node, Symlink):
        return Symlink(node.target, xattrs, uid=node.uid, gid=node.gid)
    return Whiteout(xattrs)
