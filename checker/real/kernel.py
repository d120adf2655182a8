"""The real thing: materialize model states on disk, mount the kernel's overlayfs, read
real trees back in the model's vocabulary.

Everything happens under one private workspace (`checker.real.workspace`): every mount is
undone and every process ended when it closes, on errors, signals, and after a SIGKILL
by the next run.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import struct
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from checker.errors import CrashcheckError
from checker.real import fanotify
from checker.real.workspace import MOUNT_TIMEOUT, MountRefused, Workspace, workspace

__all__ = [  # the workspace names are re-exported: kernel.workspace() is the usual entry
    "BOOKKEEPING_XATTRS", "KernelUnavailable", "LiveOverlay", "forget_upper_root", "MountRefused",
    "Workspace", "rotate_upper",
    "kernel_release",
    "materialize_overlay", "overlay_unavailable_reason", "pinned_times", "read_node", "read_upper",
    "xattrs_of",
    "read_view", "without_xattrs", "workspace", "write_node",
]
from models.format import IMPURE, INDEX_DIR, ORIGIN, OVL_PREFIX, UPPER_FH, USER
from models.overlayfs import dirs_by_origin, index_origin
from models.tree import Dir, ErrorEntry, File, Node, Parts, Symlink, Whiteout, Xattrs, walk

#: xattrs the kernel writes for its own bookkeeping (file handles, uuids, d_ino caching);
#: their values cannot match a model, so comparisons of upper trees leave them out.
BOOKKEEPING_XATTRS = (ORIGIN, IMPURE, OVL_PREFIX + "uuid", UPPER_FH,
                      USER.origin, USER.impure, USER.prefix + "uuid", USER.upper)  # userxattr


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


def write_node(node: Node, path: Path, links: dict[int, Path] | None = None) -> None:
    """Create `node` at `path` (which must not exist), recursively, with exact modes,
    owners, pinned times and xattrs; a whiteout becomes a character device 0/0; files
    of one inode (`ino`, nlink > 1) become hard links of the first one written."""
    links = {} if links is None else links
    if isinstance(node, File) and node.nlink > 1:
        first = links.get(node.ino)
        if first is not None:
            os.link(first, path)
            return
        links[node.ino] = path
    if isinstance(node, Dir):
        path.mkdir()
        for name in sorted(node.entries):
            write_node(node.entries[name], path / name, links)
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
            except OSError as e:
                entries[name] = ErrorEntry(e.errno or errno.EIO)  # listed, but its lookup fails
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
    `fresh_work` the work dir is left empty for the kernel's first mount to set up. Index
    entries (index=on) get the kernel's names and origins: the hex of the lower file's
    handle, which the kernel itself gives (`real_origins`). Hard links stay hard links.

    Returns (lower dirs top first, upper dir, work dir)."""
    base = ws.path(str(name))
    base.mkdir()
    lowers = sorted((n for n in backing.entries if n.startswith("lower")), key=lambda n: int(n[5:]))
    for entry in lowers:
        write_node(backing.entries[entry], base / entry)
    upper = backing.entries.get("upper")  # None: a crash in the middle of `remount rotate`
    work = Dir() if fresh_work else backing.entries["work"]
    origins = _indexed_origins(work)
    recorded: dict[str, tuple[str, bytes]] = {}  # nfs_export: index entry -> (xattr, origin of its upper dir)
    handles: dict[str, bytes] = {}
    if origins:
        origins |= _model_origins(upper) | _model_origins(work)
        handles = real_origins(ws, base, origins)
        upper = _with_handles(upper, handles) if upper is not None else None
        work = _with_handles(work, handles)
        index = work.entries[INDEX_DIR]
        assert isinstance(index, Dir)
        renamed: dict[str, Node] = {}
        for n, node in index.entries.items():
            o = index_origin(n)
            name = handles[o].hex() if o is not None and o in handles else n
            for key in (UPPER_FH, USER.upper):
                value = node.xattr(key) if isinstance(node, Dir) else None
                if value is not None:
                    recorded[name] = (key, value)
                    node = node.with_xattr(key, None)
            renamed[name] = node
        work = Dir({**work.entries, INDEX_DIR: Dir(renamed, index.mode, index.xattrs)}, work.mode,
                   work.xattrs)
    links: dict[int, Path] = {}  # upper and work share inodes under index=on
    if upper is not None:
        write_node(upper, base / "upper", links)
    write_node(work, base / "work", links)
    if recorded:
        _record_upper_dirs(base, upper, recorded, handles)
    return [base / n for n in reversed(lowers)], base / "upper", base / "work"


def _indexed_origins(work: Node) -> set[str]:
    """The model origins (`lowerN/path`) of the entries in work/index, read from their
    names (an entry may have lost its origin xattr in a crash)."""
    index = work.entries.get(INDEX_DIR) if isinstance(work, Dir) else None
    if not isinstance(index, Dir):
        return set()
    return {o for n in index.entries if (o := index_origin(n)) is not None}


def _model_origins(tree: Node | None) -> set[str]:
    """Every model origin (`lowerN/path`) an origin xattr in `tree` names (nfs_export
    verifies a directory's origin against the lower one, so all must be real)."""
    if tree is None:
        return set()
    texts = {v.decode("utf-8", "replace") for _, node in walk(tree) for k, v in node.xattrs
             if k in (ORIGIN, USER.origin)}
    return {t for t in texts if t.startswith("lower") and "/" in t}


def _with_handles(node: Node, handles: dict[str, bytes]) -> Node:
    """`node` with each model origin in `handles` replaced by the real file handle."""
    if isinstance(node, Dir):
        node = Dir({n: _with_handles(c, handles) for n, c in node.entries.items()}, node.mode, node.xattrs,
                   uid=node.uid, gid=node.gid)
    for key in (ORIGIN, USER.origin):
        value = node.xattr(key)
        if value is not None and value.decode("utf-8", "replace") in handles:
            node = node.with_xattr(key, handles[value.decode("utf-8", "replace")])
    return node


def _record_upper_dirs(base: Path, upper: Node | None, recorded: dict[str, tuple[str, bytes]],
                       handles: dict[str, bytes]) -> None:
    """nfs_export: give each directory index entry the kernel's record of its upper dir
    (`trusted.overlay.upper`: the overlay file handle of that dir, flagged as upper).
    The model records the dir by the origin it carries; the real upper dir with that
    origin gives the handle (`name_to_handle_at`), and the header (the file system's
    uuid) comes from a handle the kernel wrote. An upper dir that no longer exists gets
    a handle of a removed dir: stale, as the kernel would find it."""
    by_origin = dirs_by_origin(upper, (ORIGIN, USER.origin)) if upper is not None else {}
    uuid = next(iter(handles.values()))[5:21]
    for name, (key, value) in sorted(recorded.items()):
        text = value.decode("utf-8", "replace")
        parts = by_origin.get(handles.get(text, value))
        target = base.joinpath("upper", *parts) if parts is not None else None
        fh = _upper_fh(uuid, target, base)
        os.setxattr(base / "work" / INDEX_DIR / name, key, fh, follow_symlinks=False)


def _upper_fh(uuid: bytes, upper_dir: Path | None, scratch: Path) -> bytes:
    """The overlay file handle of `upper_dir` as a directory index records it
    (`ovl_encode_real_fh(upper, true)`: version 0, magic 0xfb, length, the upper flag, the
    fid type, the file system's uuid, the fid); None gives the handle of a dir made and
    removed in `scratch`, which decodes as stale."""
    if upper_dir is None:
        gone = scratch / f"gone-{next(_GONE)}"
        gone.mkdir()
        fid = fanotify.file_handle(gone)
        gone.rmdir()
    else:
        fid = fanotify.file_handle(upper_dir)
    kind, raw = struct.unpack("i", fid[:4])[0], fid[4:]
    return bytes([0, 0xFB, 21 + len(raw), 0x04, kind]) + uuid + raw


_GONE = itertools.count()


def real_origins(ws: Workspace, base: Path, origins: set[str]) -> dict[str, bytes]:
    """The kernel's origin file handle of each lower file named `lowerN/path` under
    `base`: an index=on mount of that one layer over a scratch upper copies the file up
    (a chown to its own owner), and the copy's origin xattr is the handle."""
    out: dict[str, bytes] = {}
    for n, origin in enumerate(sorted(origins)):
        layer, _, rest = origin.partition("/")
        scratch = ws.path(f"{base.name}-origin{n}")
        for part in ("upper", "work", "mnt"):
            (scratch / part).mkdir(parents=True)
        target = scratch / "mnt"
        ws.mount_overlay([base / layer], scratch / "upper", scratch / "work", target, ["index=on"])
        try:
            st = os.lstat(target / rest)
            os.chown(target / rest, st.st_uid, st.st_gid, follow_symlinks=False)
        finally:
            ws.umount(target)
        out[origin] = os.getxattr(scratch / "upper" / rest, ORIGIN, follow_symlinks=False)
        shutil.rmtree(scratch)
    return out


@dataclass
class LiveOverlay:
    """A kernel overlay mount of materialized dirs, for workloads that remount it."""

    ws: Workspace
    lowers: list[Path]  # top first
    upper: Path
    work: Path
    target: Path
    options: list[str]

    def mount(self) -> None:
        self.ws.mount_overlay(self.lowers, self.upper, self.work, self.target, self.options)

    def remount(self, rotate: bool = False) -> None:
        """umount and mount again (with `rotate`, the upper dir rotated in between)."""
        self.ws.umount(self.target)
        if rotate:
            self.lowers = rotate_upper(self.lowers, self.upper, self.work)
        self.mount()


def rotate_upper(lowers: list[Path], upper: Path, work: Path) -> list[Path]:
    """What the model's `remount rotate` does between umount and mount: the upper dir
    becomes the top lower layer, `lowerN` beside it, a fresh upper dir is made, and
    index=on's index (which records the old upper root) is removed. Returns the new
    lower dirs, top first."""
    layer = upper.parent / f"lower{len(lowers)}"
    os.rename(upper, layer)
    os.mkdir(upper)
    os.chmod(upper, 0o755)
    if (work / INDEX_DIR).exists():
        shutil.rmtree(work / INDEX_DIR)
    return [layer] + lowers


def forget_upper_root(work: Path, upper: Path | None = None) -> None:
    """A copied upper dir is a new inode: drop the index dir's record of the old one
    (`trusted.overlay.upper`), which the next index=on mount writes again; with it the
    mount fails with ESTALE ("failed to verify upper"). Directory index entries
    (nfs_export) are pointed at the copied dirs of `upper`, found by their origin."""
    index = work / INDEX_DIR
    for name in (UPPER_FH, USER.upper):  # trusted, or user under userxattr
        with suppress(OSError):
            os.removexattr(index, name)
    if upper is None or not index.is_dir():
        return
    entries = [e for e in index.iterdir() if not e.is_symlink() and e.is_dir() and not e.name.startswith("#")]
    if not entries:
        return
    by_origin: dict[str, Path] = {}
    for dirpath, _, _ in os.walk(upper):
        for name in (ORIGIN, USER.origin):
            with suppress(OSError):
                by_origin.setdefault(os.getxattr(dirpath, name, follow_symlinks=False).hex(), Path(dirpath))
    for entry in entries:
        for name in (UPPER_FH, USER.upper):
            with suppress(OSError):
                old = os.getxattr(entry, name, follow_symlinks=False)
                os.setxattr(entry, name, _upper_fh(old[5:21], by_origin.get(entry.name), work),
                            follow_symlinks=False)


def pinned_times(*trees: Node | None) -> frozenset[Parts]:
    """The paths where any of `trees` pins a file's modification time."""
    return frozenset(
        parts for tree in trees if tree is not None for parts, node in walk(tree)
        if isinstance(node, File) and node.mtime is not None
    )


def read_view(mountpoint: Path, times_at: frozenset[Parts] = frozenset()) -> Dir:
    """The merged view as a user sees it (user and trusted xattrs: overlay hides its
    own, and shows escaped ones by the name they were set with; times at `times_at`)."""
    node = read_node(mountpoint, keep_prefixes=("user.", "trusted."), times_at=times_at)
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
