"""Crash-testing real implementations (`crashcheck real --impl kernel|fuse-overlayfs`).

For each op of a spec, the state before it is kept as a template (the real upper and
work dirs after the earlier ops ran on the real implementation). For every system call
N the op makes, a fresh copy of the template is mounted, the op runs and is killed at
its N-th call, the file system is unmounted and mounted again (the implementation's own
recovery), and the invariants are checked on the real view:

- the client is killed with strace's fault injection (`-e inject=SET:signal=KILL:when=N`,
  SET = the system calls that can change a file system) for `mv`, `rm` and `cp`; a raw
  system-call op is cut between its calls;
- with `fuse-overlayfs`, the daemon itself is also killed at each of its own system calls
  during the op (strace attached to it just before the op), then a fresh daemon mounts
  the same dirs.

Everything happens under one private temp dir; every mount is undone and every process
ended on success, failure, Ctrl-C and timeouts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker.engine.check import Verdict
from checker.engine.invariants import INVARIANTS, CrashContext, Finding, selected
from checker.engine.trace import OpRecord, Trace, build_trace
from checker.errors import CrashcheckError
from checker.real import kernel, sandbox
from checker.real.ops import (
    CLIENT_FAILED,
    CLIENT_TIMEOUT,
    INSIDE,
    agrees,
    client_argv,
    raw_calls,
    result_name,
)
from checker.real.workspace import Workspace, workspace
from checker.spec import Spec
from models import drivers
from models.capabilities import KernelTwin, can, mount_can
from models.driver import Recovery
from models.tree import Dir, Parts

#: System calls that can change a file system: the crash points. strace skips names this
#: architecture does not have ('?' prefix).
_MUTATING = """
mkdir mkdirat rmdir unlink unlinkat rename renameat renameat2 link linkat symlink symlinkat
mknod mknodat open openat openat2 creat write pwrite64 writev pwritev pwritev2
copy_file_range sendfile splice ftruncate truncate fallocate fchmod fchmodat fchmodat2 chmod
fchown fchownat lchown chown utimensat utimes futimesat setxattr lsetxattr fsetxattr
removexattr lremovexattr fremovexattr fsync fdatasync sync syncfs sync_file_range
"""
MUTATING_SYSCALLS = ",".join("?" + name for name in _MUTATING.split())
MOUNT_WAIT = 10.0  # seconds for a FUSE daemon to have its mount up
ATTACH_WAIT = 10.0  # seconds for strace to attach to a daemon
IMPLEMENTATIONS = ("kernel", "fuse-overlayfs")


class RealUnavailable(CrashcheckError):
    """A real implementation cannot run here; the message says why and what to install."""


def unavailable_reason(impl: str) -> str | None:
    reason = kernel.overlay_unavailable_reason()
    if impl == "kernel":
        if reason:
            return reason
    elif os.geteuid() != 0:
        return "real fuse-overlayfs checks need root (mounts and trusted.* xattrs)"
    elif shutil.which("fuse-overlayfs") is None:
        return "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)"
    elif not Path("/dev/fuse").exists():
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    return sandbox.unavailable_reason()


# --- processes and mounts ------------------------------------------------------------


@dataclass
class Lab:
    """The workspace of a real run (`checker.real.workspace`: every mount, process and file of
    the run lives under it and goes with it) and the confinement shim of its clients."""

    ws: Workspace
    shim: Path
    serial: int = 0

    def fresh(self, prefix: str) -> Path:
        self.serial += 1
        path = self.ws.path(f"{prefix}{self.serial}")
        path.mkdir()
        return path


@contextmanager
def lab() -> Iterator[Lab]:
    with workspace("real") as ws:
        yield Lab(ws, sandbox.build_shim(ws.root))


@dataclass
class Mounted:
    target: Path
    daemon: subprocess.Popen[bytes] | None = None


class Impl:
    """How to mount and unmount one implementation of overlay semantics."""

    name = ""

    def mount(self, lab: Lab, lowers: list[Path], upper: Path, work: Path, target: Path,
              options: list[str]) -> Mounted:
        raise NotImplementedError

    def umount(self, lab: Lab, m: Mounted) -> None:
        raise NotImplementedError


class KernelImpl(Impl):
    name = "kernel"

    def mount(self, lab: Lab, lowers: list[Path], upper: Path, work: Path, target: Path,
              options: list[str]) -> Mounted:
        lab.ws.mount_overlay(lowers, upper, work, target, options)
        return Mounted(target)

    def umount(self, lab: Lab, m: Mounted) -> None:
        lab.ws.umount(m.target)


class FuseImpl(Impl):
    """fuse-overlayfs in the foreground, one process per mount (its options have no
    redirect_dir or volatile: it always answers directory renames as it does)."""

    name = "fuse-overlayfs"

    def mount(self, lab: Lab, lowers: list[Path], upper: Path, work: Path, target: Path,
              options: list[str]) -> Mounted:
        target.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={upper},workdir={work}"
        lab.ws.journal(f"mount {target}")
        daemon = lab.ws.spawn(
            ["fuse-overlayfs", "-f", "-o", opts, str(target)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + MOUNT_WAIT
        while not os.path.ismount(target):
            if daemon.poll() is not None:
                lab.ws.end(daemon)
                raise kernel.MountRefused(f"fuse-overlayfs exited with {daemon.returncode}")
            if time.monotonic() > deadline:
                lab.ws.end(daemon, signal.SIGKILL)
                raise kernel.MountRefused("fuse-overlayfs did not mount in time")
            time.sleep(0.005)
        return Mounted(target, daemon)

    def umount(self, lab: Lab, m: Mounted) -> None:
        lab.ws.umount(m.target)
        if m.daemon is not None:
            with suppress(subprocess.TimeoutExpired):
                m.daemon.wait(timeout=5)
            lab.ws.end(m.daemon, signal.SIGKILL)


IMPLS: dict[str, Callable[[], Impl]] = {"kernel": KernelImpl, "fuse-overlayfs": FuseImpl}


# --- killing at the N-th system call --------------------------------------------------


def _strace_calls(log: Path) -> list[str]:
    """The system calls in an strace log (pid prefixes, signals, exits and resumptions
    left out), each as `name(args...)`."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    calls = []
    for line in lines:
        text = line.lstrip("0123456789").strip()
        if not text or text.startswith(("+++", "---", "<...")):
            continue
        calls.append(stable_call(text.split(" <unfinished")[0].rsplit(" = ", 1)[0])[:160])
    return calls


_TIMES = re.compile(r"\{tv_sec=-?\d+, tv_nsec=-?\d+\}(?: /\* [^*]* \*/)?")
_ADDRESSES = re.compile(r"0x[0-9a-f]{6,}")


def stable_call(call: str) -> str:
    """A traced call without what differs from run to run (times, addresses), so reports
    and JSON stay reproducible."""
    return _ADDRESSES.sub("0x...", _TIMES.sub("{...}", call))


def kill_expression(calls: list[str], n: int) -> str:
    """strace's `-e inject=` for a SIGKILL on entry to the n-th of `calls` (1-based).
    strace counts invocations per system call, so the n-th call overall is named as the
    k-th invocation of its own system call."""
    name = calls[n - 1].split("(", 1)[0]
    k = sum(1 for c in calls[:n] if c.split("(", 1)[0] == name)
    return f"inject={name}:signal=KILL:when={k}"


def run_client(
    lab: Lab, target: Path, argv: list[str], kill_at: int | None, calls: list[str] | None = None
) -> tuple[list[str], str, int | str]:
    """Run a client confined to `target` under strace: counting (kill_at None), or killed
    on entry to its kill_at-th call of `calls` (the calls of a counting run). Returns (the
    calls made, the call it was killed in, its result)."""
    log = lab.fresh("strace") / "log"
    cmd = ["strace", "-f", "-qq", "-o", str(log), "-e", f"trace={MUTATING_SYSCALLS}"]
    cmd += sandbox.strace_env_args(target, lab.shim)  # the client runs chrooted into the mount
    if kill_at is not None:
        assert calls is not None
        cmd += ["-e", kill_expression(calls, kill_at)]
    proc = lab.ws.spawn(cmd + ["--"] + argv, cwd=lab.ws.root, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        status = proc.wait(timeout=CLIENT_TIMEOUT)
    finally:
        lab.ws.end(proc, signal.SIGKILL)
    if status == sandbox.CONFINE_FAILED:
        raise sandbox.SandboxUnavailable(f"could not confine {argv[0]} to the mount")
    made = _strace_calls(log)
    result: int | str = 0 if status == 0 else CLIENT_FAILED
    return made, (made[-1] if kill_at is not None and made else ""), result


@contextmanager
def traced_daemon(
    lab: Lab, daemon: subprocess.Popen[bytes], kill_at: int | None, calls: list[str] | None
) -> Iterator[Path]:
    """strace attached to a FUSE daemon for the duration of the block."""
    log = lab.fresh("dstrace") / "log"
    cmd = ["strace", "-f", "-o", str(log), "-e", f"trace={MUTATING_SYSCALLS}"]
    if kill_at is not None:
        assert calls is not None
        cmd += ["-e", kill_expression(calls, kill_at)]
    tids = sorted(os.listdir(f"/proc/{daemon.pid}/task"))
    for tid in tids:
        cmd += ["-p", tid]
    tracer = lab.ws.spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert tracer.stderr is not None
    attached = 0
    deadline = time.monotonic() + ATTACH_WAIT
    os.set_blocking(tracer.stderr.fileno(), False)
    pending = b""
    while attached < len(tids):
        if time.monotonic() > deadline or tracer.poll() is not None:
            lab.ws.end(tracer, signal.SIGKILL)
            raise RealUnavailable("strace could not attach to the fuse-overlayfs daemon")
        chunk = tracer.stderr.read() or b""
        pending += chunk
        attached = pending.count(b"attached")
        time.sleep(0.002)
    try:
        yield log
    finally:
        lab.ws.end(tracer, signal.SIGINT)  # detaches from a daemon still alive


# --- checking one crash ---------------------------------------------------------------


@dataclass
class RealViolation:
    invariant: str
    op: int
    op_text: str
    crash_at_call: int  # the op was killed before its N-th call (1-based)
    process: str  # "client" or "daemon"
    syscall: str
    message: str
    paths: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "invariant": self.invariant,
            "op": self.op,
            "op_text": self.op_text,
            "crash_after_step": self.crash_at_call - 1,
            "crash_at_call": self.crash_at_call,
            "process": self.process,
            "syscall": self.syscall,
            "message": self.message,
            "paths": list(self.paths),
        }


@dataclass(frozen=True)
class OpOutcome:
    """An op as the model ran it, and what it returned on the real implementation."""

    record: OpRecord
    real: int | str


@dataclass(frozen=True)
class RealResult(Verdict):
    spec: Spec
    implementation: str
    verdict: str
    crash_points: int
    calls: int  # mutating system calls the workload made (clients and raw ops)
    violations: list[RealViolation]
    invariants: tuple[str, ...]
    seconds: float
    outcomes: list[OpOutcome] = field(default_factory=list)
    missed: int = 0  # dockerd: kill runs that made fewer calls than the counting run
    #: dockerd: what the model predicts for a process crash (its verdict and violated
    #: invariants under `prefix`), which a daemon kill must show; None: the spec's expectation
    model_prefix: tuple[str, tuple[str, ...]] | None = None
    store_ops: tuple[str, ...] = ()  # an engine's own ops (the others are file ops in a container)

    @property
    def expected(self) -> str:
        return self.model_prefix[0] if self.model_prefix is not None else self.spec.expected

    @property
    def op_records(self) -> Sequence[Any]:
        return [o.record for o in self.outcomes]

    @property
    def disagreements(self) -> list[OpOutcome]:
        """Ops whose real result is not the model's (a model bug, or an escape)."""
        return [o for o in self.outcomes if not agrees(o.record.result, o.real)]

    @property
    def ok(self) -> bool:
        if self.disagreements:
            return False
        if self.model_prefix is None:
            return super().ok
        verdict, invariants = self.model_prefix
        return self.verdict == verdict and set(invariants) <= set(self.violated)

    def ops_json(self) -> list[dict[str, object]]:
        return [
            doc | {"real_result": o.real} for doc, o in zip(super().ops_json(), self.outcomes, strict=True)
        ]

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.spec.file,
            "name": self.spec.name,
            "driver": self.spec.driver,
            "persistence": "process-crash",
            "engine": "real",
            "implementation": self.implementation,
            "verdict": self.verdict,
            "expected": self.expected,
            "ok": self.ok,
            "steps": self.calls,
            "crash_states": self.crash_points,
            "crash_points": self.crash_points,
            "invariants": list(self.invariants),
            "ops": self.ops_json(),
            "violations": [v.to_json() for v in self.violations],
        } | ({"missed_points": self.missed} if self.implementation == "dockerd" else {})


@dataclass
class Template:
    """The real backing dirs before an op: lowers (shared, read-only) and upper/work."""

    lowers: list[Path]
    upper: Path
    work: Path


class RealRun:
    def __init__(self, lab: Lab, impl: Impl, spec: Spec, trace: Trace) -> None:
        self.lab, self.impl, self.spec, self.trace = lab, impl, spec, trace
        assert can(trace.mount, KernelTwin)
        self.twin: KernelTwin = trace.mount
        self.options = self.twin.kernel_mount_options()
        self.lower_digest: bytes = b""
        self._times: dict[int, frozenset[Parts]] = {}

    def times_of(self, record: OpRecord) -> frozenset[Parts]:
        """Where the op's views pin a file time (read from the real views there), once per op."""
        if record.index not in self._times:
            self._times[record.index] = kernel.pinned_times(record.before, record.after)
        return self._times[record.index]

    def copy(self, t: Template) -> Template:
        run = self.lab.fresh("run")
        # one cp keeps the hard links between upper and work/index (index=on)
        subprocess.run(["cp", "-a", str(t.upper), str(t.work), str(run)], check=True)
        kernel.forget_upper_root(run / "work", run / "upper")
        return Template(t.lowers, run / "upper", run / "work")

    def mount(self, t: Template) -> Mounted:
        return self.impl.mount(self.lab, t.lowers, t.upper, t.work, self.lab.fresh("mnt"), self.options)

    def view_of(self, t: Template, times_at: frozenset[Parts] = frozenset()) -> tuple[Recovery, Dir | None]:
        """Mount (the implementation's recovery), read the view (times at `times_at`),
        unmount, and read back what the mount left in upper and work."""
        try:
            m = self.mount(t)
        except kernel.MountRefused as e:
            remedy = self.twin.refusal_remedy()
            return Recovery(None, refusal=f"the mount is refused: {e}", remedy=remedy), None
        try:
            view = kernel.read_view(m.target, times_at)
        finally:
            self.impl.umount(self.lab, m)
        backing = Dir({
            "upper": kernel.read_upper(t.upper),
            "work": kernel.read_node(t.work, skip_xattrs=kernel.BOOKKEEPING_XATTRS),
        })
        return Recovery(backing), view

    def run_clean(self, t: Template, record: OpRecord) -> tuple[list[str], Dir, Dir, int | str]:
        """Run an op to completion on a mount of `t`: the calls it made, the views before
        and after it on the live mount, and its result. The op's own clean unmount leaves
        `t` ready for the next op (a volatile mount's dirty marker is removed, as its
        documentation allows when nothing crashed)."""
        m = self.mount(t)
        times = self.times_of(record)
        try:
            before = kernel.read_view(m.target, times)
            made, _, result = self._perform(m.target, record, client_argv(record.op), None, None)
            after = kernel.read_view(m.target, times)
        finally:
            self.impl.umount(self.lab, m)
        shutil.rmtree(t.work / "work" / "incompat", ignore_errors=True)
        return made, before, after, result

    def lowers_digest(self, t: Template) -> bytes:
        return Dir({f"l{i}": kernel.read_node(p) for i, p in enumerate(t.lowers)}).digest

    def run_op(
        self, t: Template, record: OpRecord, kill_at: int | None, daemon_kill: bool,
        calls: list[str] | None = None,
    ) -> tuple[list[str], str]:
        """Run one op on a mount of `t`, counting the calls of the client (or with
        `daemon_kill`, of the daemon) or killing it on entry to call `kill_at` of `calls`.
        Returns (the calls made, the call it was killed in)."""
        m = self.mount(t)
        try:
            argv = client_argv(record.op)
            if daemon_kill:
                assert m.daemon is not None
                with traced_daemon(self.lab, m.daemon, kill_at, calls) as log:
                    self._perform(m.target, record, argv, None, None)
                made = _strace_calls(log)
                return made, (made[-1] if kill_at is not None and made else "")
            made, killed, _ = self._perform(m.target, record, argv, kill_at, calls)
            return made, killed
        finally:
            if m.daemon is not None and m.daemon.poll() is not None:
                self.lab.ws.umount(m.target)  # the daemon is gone: lazy unmount
                self.lab.ws.end(m.daemon)
            else:
                self.impl.umount(self.lab, m)

    def _perform(self, target: Path, record: OpRecord, argv: list[str] | None,
                 kill_at: int | None, calls: list[str] | None) -> tuple[list[str], str, int | str]:
        """Run the op confined to the mount at `target`: (the calls made, the call it was
        killed in, its result)."""
        if argv is not None:
            return run_client(self.lab, target, argv, kill_at, calls)
        raw = raw_calls(INSIDE, record.op)
        stop = len(raw) if kill_at is None else kill_at - 1
        results = sandbox.run_raw(target, raw[:stop])
        names = [str(rec.call) for rec in record.syscalls][: len(raw)]
        killed = "" if kill_at is None or kill_at > len(raw) else names[kill_at - 1]
        return names, killed, result_name(results[-1]) if results else 0

    def check(self, record: OpRecord, before: Dir, after: Dir, t: Template, kill_at: int,
              process: str, syscall: str) -> list[RealViolation]:
        times = self.times_of(record)
        recovery, view = self.view_of(t, times)
        second: Recovery | None = None
        if recovery.root is not None:
            second, _ = self.view_of(t, times)
        real_op = dataclasses.replace(record, before=before, after=after, cache={})
        first_root = recovery.root

        def again(root: Dir) -> Recovery:
            return second if root is first_root and second is not None else Recovery(root)

        ctx = CrashContext(self.trace, real_op, recovery, view, self.trace.mount, again)
        out = []
        for inv in selected(self.spec):
            findings: list[Finding]
            if not inv.crash_level:
                changed = self.lowers_digest(t) != self.lower_digest
                findings = [Finding("a lower layer changed on disk", ())] if changed else []
            else:
                findings = inv.check(ctx)
            out.extend(
                RealViolation(
                    inv.name, record.index, record.text, kill_at, process, syscall, f.message, f.paths
                )
                for f in findings
            )
        return out


def real_check(spec: Spec, impl_name: str, progress: Callable[[str], None] | None = None) -> RealResult:
    """Crash-test the spec's workload on a real implementation."""
    if not mount_can(drivers()[spec.driver].MOUNT, KernelTwin):
        raise RealUnavailable(f"{spec.file}: real crash tests need a driver with a kernel twin (overlayfs), "
                              f"not {spec.driver}")
    reason = unavailable_reason(impl_name)
    if reason is not None:
        raise RealUnavailable(reason)
    started = time.perf_counter()
    trace = build_trace(spec)
    impl = IMPLS[impl_name]()
    violations: list[RealViolation] = []
    outcomes: list[OpOutcome] = []
    points = calls = 0
    with lab() as state:
        run = RealRun(state, impl, spec, trace)
        lowers, upper, work = kernel.materialize_overlay(state.ws, trace.initial, "initial", fresh_work=True)
        current = Template(lowers, upper, work)
        run.lower_digest = run.lowers_digest(current)
        for record in trace.ops:
            after_t = run.copy(current)
            made, before, after, result = run.run_clean(after_t, record)
            outcomes.append(OpOutcome(record, result))
            calls += len(made)
            modes = [("client", False)] + ([("daemon", True)] if impl_name == "fuse-overlayfs" else [])
            for process, daemon_kill in modes:
                seen = made
                if daemon_kill:
                    seen, _ = run.run_op(run.copy(current), record, None, daemon_kill=True)
                for n in range(1, len(seen) + 1):
                    if progress:
                        progress(f"{spec.file}: op {record.index} {process} crash {n}/{len(seen)}")
                    t = run.copy(current)
                    _, syscall = run.run_op(t, record, n, daemon_kill, seen)
                    points += 1
                    violations.extend(run.check(record, before, after, t, n, process, syscall))
            if record.op.kind == "remount" and record.op.arg("rotate"):
                after_t.lowers = kernel.rotate_upper(after_t.lowers, after_t.upper, after_t.work)
            current = after_t
    violations.sort(key=lambda v: (v.op, v.process, v.crash_at_call, v.invariant))
    return RealResult(
        spec, impl_name, "violation" if violations else "pass", points, calls, violations,
        tuple(inv.name for inv in selected(spec)), time.perf_counter() - started, outcomes,
    )


__all__ = [
    "IMPLEMENTATIONS", "INVARIANTS", "RealResult", "RealUnavailable", "real_check", "unavailable_reason",
]
