"""Private workspaces of the real modes, and cleaning up after them whatever happens.

Every real mode (`real`, `conform`, `run --confirm`) works in one temp dir of its own,
`$TMPDIR/crashcheck-ws-<kind>-XXXXXX`. The dir is made, and an owner record (pid, the
process's start time, the boot id) written into it, before anything else exists: every
mount, daemon and file of the run lives under it, so the dir itself is the record of
what the run made. Mount targets are also journaled before each mount.

- A run that ends, fails, or gets SIGINT, SIGTERM or SIGHUP at any moment tears its
  workspace down: the processes that name it (daemons, tracers, clients) are killed,
  every mount under it is unmounted (lazily if busy), and the dir is removed. Signals
  are held back while a mount or unmount command runs and while the teardown runs, so
  an interrupt can never land between a mount and its record or cut a cleanup short.
- A run killed with SIGKILL cannot clean up. The next real-mode run, or
  `crashcheck clean`, finds workspaces whose owner is gone (the pid is dead, or now
  belongs to another process, or the machine rebooted) and tears them down the same way.
  A workspace of a live run is never touched.

Children are started in their own session, so a Ctrl-C on the terminal reaches crashcheck
alone and the teardown happens in order (a FUSE daemon killed first would leave its
mount disconnected).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker.errors import CrashcheckError
from checker.real.synctrace import remove_instances

PREFIX = "crashcheck-ws-"
OWNER = ".crashcheck-owner"  # JSON: pid, start time, boot id, what the run is
JOURNAL = ".crashcheck-journal"  # "mount TARGET" before each mount, "pid N START" after each spawn
MOUNT_TIMEOUT = 30  # seconds for mount/umount; a hung mount is an environment problem
STALE_GRACE = 60.0  # seconds: a workspace without an owner record younger than this may be starting
KILL_WAIT = 5.0  # seconds for a killed process to be gone
HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class MountRefused(CrashcheckError):
    """mount(8) failed; the message is what it printed."""


# --- signals ---------------------------------------------------------------------------


@contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back for the duration of the block (they are
    delivered, and raise, when it ends). Children started inside inherit the mask, so
    only short commands (mount, umount) run here."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --- owners --------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot, or None if there is no
    such process (with the pid, it names one process for the life of the machine)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[19]  # field 22 of stat(5); the first two fields precede the slice


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def owner_record(kind: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "boot": _boot_id(), "kind": kind}


def owner_alive(record: dict[str, Any]) -> bool:
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("boot") != _boot_id():
        return False
    return _start_time(pid) == record.get("start") and not _is_zombie(pid)


# --- what lives under a workspace --------------------------------------------------------------


def _unescape(field_text: str) -> str:
    """A mountinfo field: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest (and newest) first."""
    top = str(root)
    found: list[tuple[int, int, str]] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point == top or point.startswith(top + "/"):
            found.append((point.count("/"), int(fields[0]), point))
    return [Path(p) for _, _, p in sorted(found, reverse=True)]


def processes_using(root: Path) -> list[int]:
    """Processes (other than this one) that name `root` in their command line (a FUSE
    daemon's dirs, a tracer's log, dockerd and its containerd and shims), are chrooted
    below it (a confined client), or live in a mount namespace of their own whose mounts
    name it (a container started by a daemon of ours). A shell that merely has its cwd
    there is not one of ours, and is left alone."""
    top = str(root)
    me = os.getpid()
    out = []
    own_ns = ""
    with suppress(OSError):
        own_ns = os.readlink("/proc/self/ns/mnt")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        chroot = ""
        with suppress(OSError):
            chroot = os.readlink(f"/proc/{pid}/root")
        ours = names(cmdline, top) or chroot == top or chroot.startswith(top + "/")
        if ours or _container_of(pid, top, own_ns):
            out.append(pid)
    return sorted(out)


def names(text: str, top: str) -> bool:
    """Whether `text` names the path `top` or a path below it (not merely a longer name
    that starts the same: `.../d1` is not named by `.../d12`)."""
    return re.search(re.escape(top) + r"(?=[/\0\s,:=]|$)", text) is not None


def _container_of(pid: int, top: str, own_ns: str) -> bool:
    """Whether `pid` lives in another mount namespace whose root file system is one of
    ours (a container's overlay with its dirs below `top`). Other mounts of that table
    do not count: a container's namespace also sees mounts other runs made after it
    (propagation), and those containers are not ours to end."""
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") == own_ns:
            return False
        table = Path(f"/proc/{pid}/mountinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and names(line, top):
            return True
    return False


def release(root: Path) -> None:
    """End every process of ours under `root` and undo its mounts (deepest first); the
    files stay."""
    _kill_all(processes_using(root))
    remove_instances(root)  # a tracefs instance lives on after its mount goes
    for _ in range(3):  # a lazy unmount can uncover a mount below it
        targets = mounts_under(root)
        if not targets:
            break
        for target in targets:
            umount(target)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT
    for pid in pids:
        while _start_time(pid) is not None and not _is_zombie(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def _is_zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2 :].startswith("Z")


UMOUNT_RETRIES = 100  # a confined child that has just exited may hold the mount a moment (5 s: on a
# loaded machine 1 s was not always enough, and a lazy unmount moves the final sync)
UMOUNT_RETRY_WAIT = 0.05  # seconds


def umount(target: Path) -> None:
    """Unmount `target`, retrying a moment while it is busy (a just-ended child still
    holds it), then lazily (a dead FUSE daemon, an open file): a lazy unmount shuts the
    file system down later, so its final sync would come after the op that asked."""
    with held_signals():
        for attempt in range(UMOUNT_RETRIES):
            proc = subprocess.run(["umount", str(target)], capture_output=True, timeout=MOUNT_TIMEOUT)
            if proc.returncode == 0 or not os.path.ismount(target):
                return
            if attempt + 1 < UMOUNT_RETRIES:
                time.sleep(UMOUNT_RETRY_WAIT)
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=MOUNT_TIMEOUT)


def teardown(root: Path) -> bool:
    """Kill what runs in `root`, unmount what is mounted under it, remove it. True when
    nothing of it is left."""
    release(root)
    if mounts_under(root):
        return False  # never remove files through a mount that is still there
    shutil.rmtree(root, ignore_errors=True)
    return not os.path.lexists(root)


# --- the workspace -------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A private temporary directory; everything made through it is undone on close."""

    root: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def journal(self, line: str) -> None:
        with open(self.root / JOURNAL, "a") as f:
            f.write(line + "\n")

    def run_mount(self, argv: list[str], target: Path) -> None:
        """Run a mount command for `target`, journaled before it runs."""
        target.mkdir(parents=True, exist_ok=True)
        self.journal(f"mount {target}")
        with held_signals():
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
        if proc.returncode != 0:
            raise MountRefused(proc.stderr.strip() or f"mount exited {proc.returncode}")

    def mount_overlay(
        self, lowers_top_first: list[Path], upper: Path, work: Path, target: Path,
        options: Sequence[str] = (),
    ) -> None:
        """The kernel's overlayfs with these mount options (a `KernelTwin`'s)."""
        opts = [
            "lowerdir=" + ":".join(str(p) for p in lowers_top_first),
            f"upperdir={upper}",
            f"workdir={work}",
        ] + list(options)
        self.run_mount(["mount", "-t", "overlay", "overlay", "-o", ",".join(o for o in opts if o),
                        str(target)], target)

    def mount_tmpfs(self, target: Path) -> None:
        """A private tmpfs (its own file system, so fanotify can watch all of it)."""
        self.run_mount(["mount", "-t", "tmpfs", "-o", "mode=0755", "crashcheck", str(target)], target)

    def mount_ext4(self, target: Path, size_mb: int) -> None:
        """A private ext4 file system of `size_mb` MiB, on a loop device over an image
        file in the workspace (the loop device goes with the unmount: autoclear)."""
        image = self.path(target.name + ".ext4")
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)],
                              capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
        if made.returncode != 0:
            raise MountRefused(made.stderr.strip() or "mkfs.ext4 failed")
        self.run_mount(["mount", "-t", "ext4", "-o", "loop", str(image), str(target)], target)

    def mount_tracefs(self, target: Path) -> None:
        """tracefs (one kernel-wide instance tree) mounted inside the workspace."""
        self.run_mount(["mount", "-t", "tracefs", "crashcheck", str(target)], target)

    def umount(self, target: Path) -> None:
        umount(target)

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process in a session of its own (a terminal's Ctrl-C reaches only
        crashcheck, which then ends it in order); journaled with its start time."""
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.processes.append(proc)
        self.journal(f"pid {proc.pid} {_start_time(proc.pid)}")
        return proc

    def end(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=KILL_WAIT)
        if proc in self.processes:
            self.processes.remove(proc)

    def close(self) -> None:
        with held_signals():
            for proc in list(self.processes):  # processes first: a FUSE daemon holds its mount
                with suppress(OSError, subprocess.TimeoutExpired):
                    self.end(proc, signal.SIGKILL)
            teardown(self.root)


def _make_root(kind: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-"))
    (root / OWNER).write_text(json.dumps(owner_record(kind)))
    return root


@contextmanager
def workspace(kind: str = "kernel") -> Iterator[Workspace]:
    """A workspace for one run; stale workspaces of dead runs are removed first (and said
    so on stderr)."""
    for stale in clean_stale():
        print(f"crashcheck: {stale.describe()}", file=sys.stderr)
    ws: Workspace | None = None
    try:
        with held_signals():
            ws = Workspace(_make_root(kind))
        yield ws
    finally:
        if ws is not None:
            ws.close()


# --- what dead runs left ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stale:
    """A workspace a dead run left, and what its teardown found there."""

    path: Path
    mounts: int
    processes: int
    removed: bool

    def describe(self) -> str:
        what = f"{self.mounts} mount(s), {self.processes} process(es)"
        if self.removed:
            return f"removed {self.path}, left by a run that was killed ({what})"
        return f"could not remove {self.path}, left by a killed run ({what} still there)"


def stale_workspaces(tmpdir: Path | None = None) -> list[Path]:
    """Workspaces under the temp dir whose owner is gone."""
    base = Path(tmpdir or tempfile.gettempdir())
    out = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = base / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue  # not ours: never follow a symlink or touch another user's dir
        try:
            record = json.loads((path / OWNER).read_text())
        except (OSError, ValueError):
            if time.time() - st.st_mtime > STALE_GRACE:
                out.append(path)  # killed between making the dir and recording its owner
            continue
        if not isinstance(record, dict) or not owner_alive(record):
            out.append(path)
    return out


def clean_stale(tmpdir: Path | None = None) -> list[Stale]:
    """Tear down every workspace of a dead run."""
    out = []
    for path in stale_workspaces(tmpdir):
        mounts, procs = len(mounts_under(path)), len(processes_using(path))
        out.append(Stale(path, mounts, procs, teardown(path)))
    return out
