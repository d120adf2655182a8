"""The syncs the kernel makes on an upper file system, seen through ext4's trace events.

`crashcheck conform` puts the overlay's upper and work dirs on a private ext4 file system
(a loop-mounted image inside the run's workspace) and turns on three events of a private
tracefs instance: `ext4_sync_file_enter` (every fsync or fdatasync that reaches ext4:
`dev 7,0 ino 12 parent 2 datasync 0`) and `ext4_sync_fs` (the file system's sync_fs;
`sync_filesystem` calls it with `wait 0` and then `wait 1`, so one syncfs is the
`wait 1` event), and `ext4_free_inode`, so an inode fsynced and then freed is named
removed even when a later create in the op reuses its number. Events of other devices
are ignored. Each fsync is named by where its
inode is when the op has ended (the upper tree is scanned for inode numbers), which is
how the model's `fsync` steps are named too (`model_syncs` follows the temp entry through
the op's renames and links): `fsync upper/a/b`, `fsync (removed)` for an inode that is
gone, `syncfs`.

The tracefs mount is inside the workspace (so it is undone with it) and the instance is
named after the workspace, which `remove_instances` deletes when the workspace is torn
down, also after a killed run.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from checker.errors import CrashcheckError
from models.steps import Fsync, Link, LinkTmpfile, Rename, Rmdir, Step, Syncfs, Unlink
from models.syscalls import RenameFlags
from models.tree import moved_path, split

if TYPE_CHECKING:
    from checker.real.workspace import Workspace

EVENTS = ("ext4/ext4_sync_file_enter", "ext4/ext4_sync_fs", "ext4/ext4_free_inode")
IMAGE_MB = 64
REMOVED = "(removed)"
_FILE_EVENT = re.compile(r"ext4_sync_file_enter: dev (\d+),(\d+) ino (\d+) parent \d+ datasync (\d)")
_FS_EVENT = re.compile(r"ext4_sync_fs: dev (\d+),(\d+) wait (\d)")
_FREE_EVENT = re.compile(r"ext4_free_inode: dev (\d+),(\d+) ino (\d+)")


class SyncTraceUnavailable(CrashcheckError):
    """The machine cannot show syncs (no tracefs, no ext4 events, no loop devices)."""


def unavailable_reason() -> str | None:
    """Why syncs cannot be traced here, or None."""
    if os.geteuid() != 0:
        return "tracing syncs needs root (tracefs, loop mounts)"
    for tool in ("mkfs.ext4", "losetup"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} is not installed (e2fsprogs, util-linux)"
    if not Path("/dev/loop-control").exists():
        return "the kernel has no loop devices (/dev/loop-control)"
    with open("/proc/filesystems") as f:
        kinds = {line.split()[-1] for line in f if line.strip()}
    if "tracefs" not in kinds:
        return "the kernel has no tracefs"
    if "ext4" not in kinds:
        return "the kernel has no ext4"
    return None


class SyncTracer:
    """A private tracefs instance recording ext4 syncs of one device."""

    def __init__(self, tracefs: Path, name: str, fs_root: Path) -> None:
        self.instance = tracefs / "instances" / name
        dev = os.stat(fs_root).st_dev
        self.device = (os.major(dev), os.minor(dev))
        if not (tracefs / "events" / "ext4").is_dir():
            raise SyncTraceUnavailable("tracefs has no ext4 events (kernel without ext4 tracepoints)")
        self.instance.mkdir(exist_ok=True)
        for event in EVENTS:
            (self.instance / "events" / event / "enable").write_text("1")
        (self.instance / "tracing_on").write_text("1")

    def drain(self) -> list[tuple[str, int]]:
        """The syncs since the last drain, in order: ("fsync", inode) or ("syncfs", 0);
        an fsync of an inode freed since has inode 0 (named removed)."""
        text = (self.instance / "trace").read_text()
        (self.instance / "trace").write_text("")
        out: list[tuple[str, int]] = []
        for line in text.splitlines():
            m = _FILE_EVENT.search(line)
            if m and (int(m.group(1)), int(m.group(2))) == self.device:
                out.append(("fsync", int(m.group(3))))
                continue
            m = _FS_EVENT.search(line)
            if m and (int(m.group(1)), int(m.group(2))) == self.device and m.group(3) == "1":
                out.append(("syncfs", 0))
                continue
            m = _FREE_EVENT.search(line)
            if m and (int(m.group(1)), int(m.group(2))) == self.device:
                # An inode freed after its fsync is gone, even if a later create reuses
                # its number (a copied-up dir removed, a new one made: seen on 6.18).
                freed = int(m.group(3))
                out = [(kind, 0 if kind == "fsync" and ino == freed else ino) for kind, ino in out]
        return out

    def syncs_named_in(self, base: Path) -> list[str]:
        """The syncs since the last drain, each fsync named by where its inode is under
        `base` now (`fsync upper/a`, `fsync (removed)`, `syncfs`)."""
        return observed_syncs(self.drain(), inode_paths(base))

    def close(self) -> None:
        remove_instance(self.instance)


def remove_instance(instance: Path) -> None:
    """Turn the instance's events off and remove it (the kernel frees its buffer)."""
    for event in EVENTS:
        with suppress(OSError):
            (instance / "events" / event / "enable").write_text("0")
    with suppress(OSError):
        instance.rmdir()


def remove_instances(root: Path) -> None:
    """Remove the tracefs instance of the workspace at `root`, if its tracefs is mounted."""
    instance = root / "tracefs" / "instances" / root.name
    if instance.is_dir():
        remove_instance(instance)


def inode_paths(base: Path) -> dict[int, str]:
    """Inode number -> path relative to `base` (the first in name order for hard links)."""
    found: dict[int, str] = {}
    for top, dirs, files in os.walk(base):
        dirs.sort()
        for name in [""] + sorted(dirs + files):
            path = Path(top) / name if name else Path(top)
            try:
                ino = os.lstat(path).st_ino
            except OSError:
                continue
            rel = path.relative_to(base).as_posix()
            found.setdefault(ino, "" if rel == "." else rel)
    return found


#: an index entry (index=on): the kernel names it by the hex of a file handle, the model
#: by its origin, so syncs name any one as `work/index/<index>`
INDEX_ENTRY = re.compile(r"(?<=work/index/)(?!#)[^ ]+")


def observed_syncs(events: list[tuple[str, int]], inodes: dict[int, str]) -> list[str]:
    return [INDEX_ENTRY.sub("<index>", f"fsync {inodes.get(ino, REMOVED)}") if kind == "fsync" else "syncfs"
            for kind, ino in events]


def model_syncs(steps: list[Step]) -> list[str]:
    """The syncs of one op's steps, each fsync named by where its entry is at the op's
    end (the same naming as `observed_syncs`)."""
    out: list[str] = []
    for i, step in enumerate(steps):
        if isinstance(step, Syncfs):
            out.append("syncfs")
        elif isinstance(step, Fsync):
            out.append(INDEX_ENTRY.sub("<index>", f"fsync {_final_place(step.path, steps[i + 1:])}"))
    return out


def _final_place(path: str, later: list[Step]) -> str:
    """Where the inode at `path` is after `later`: its first name in `inode_paths`'s
    order when it has several (hard links)."""
    names = {path}
    for step in later:
        if not names:
            break
        if isinstance(step, LinkTmpfile) and step.src in names:
            names = {step.dst}
        elif isinstance(step, Link) and step.src in names:
            names.add(step.dst)
        elif isinstance(step, Rename):
            moved = set()
            if step.flags is not RenameFlags.EXCHANGE:  # a name renamed over is gone
                names = {w for w in names if moved_path(w, step.dst, "") is None
                         or moved_path(w, step.src, step.dst) is not None}
            for where in names:
                to = moved_path(where, step.src, step.dst)
                if step.flags is RenameFlags.EXCHANGE and to is None:
                    to = moved_path(where, step.dst, step.src)
                moved.add(where if to is None else to)
            names = moved
        elif isinstance(step, Unlink | Rmdir):
            names = {w for w in names if moved_path(w, step.path, "") is None}  # it, or a dir above it, went
    return REMOVED if not names else min(names, key=_walk_order)


def _walk_order(path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`inode_paths`'s order: a directory's entries are named when the walk (top down,
    sorted) reaches it, before any deeper entry; so by parent, then by name."""
    parts = split(path)
    return parts[:-1], parts[-1:]


def differences(model: list[str], observed: list[str]) -> tuple[list[str], list[str]]:
    """(syncs the model makes and the kernel did not, syncs the kernel made and the model
    does not), as multisets."""
    m, o = Counter(model), Counter(observed)
    return sorted((m - o).elements()), sorted((o - m).elements())


def traced_file_system(ws: Workspace, fs: Path, size_mb: int = IMAGE_MB) -> SyncTracer | None:
    """Mount at `fs` the file system upper and work will live on: a private ext4 with
    its syncs traced, or, where tracing is impossible, a tmpfs (and no tracer)."""
    if unavailable_reason() is not None:
        ws.mount_tmpfs(fs)
        return None
    ws.mount_ext4(fs, size_mb)
    tracefs = ws.path("tracefs")
    ws.mount_tracefs(tracefs)
    try:
        return SyncTracer(tracefs, ws.root.name, fs)
    except (OSError, SyncTraceUnavailable):
        return None
