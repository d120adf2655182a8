"""Crash-testing dockerd (`crashcheck real --impl dockerd`): the daemon killed at each
of its system calls that change its data root, started again, and checked.

For each daemon op of a docker-overlay2 spec (pull, run, start, commit, rm-container,
rmi, tag; file ops inside a container are the kernel's, crash-tested by `real --impl
kernel`):

1. A counting run: a private dockerd (`checker.real.dockerd`) is brought to the spec's
   initial state and runs every op in order, with `crashpoint` attached through each
   daemon op (`crashpoint.c`, a small ptrace tool built into the run's workspace). It numbers,
   across every thread of dockerd and the helpers it re-executes (`exe`: docker-untar,
   chrooted into a layer), each system call that changes something under the data root:
   a namespace change, a write, an open that creates or truncates, a chmod, chown,
   utimes or xattr change. fsync and sync change nothing a process kill can lose, so
   they are not crash points. strace's own fault injection counts per thread, which
   cannot name "the daemon's N-th call" in a Go program; this counts globally.
2. For every N: a fresh dockerd, the same ops before, and the op with dockerd and its
   helpers killed (SIGKILL) on entry to call N. Its containerd and shims are killed
   too and its exec root emptied, as a reboot does; what it wrote stays (a process
   crash keeps a prefix). dockerd starts again on the same data root: its own start-up
   recovery.
3. The checks, on what the restarted daemon left: it must start (`recoverable`; a
   refusal is reported with dockerd's own log line) and starting it once more changes
   nothing; the data root, read back into the model's layout (`dockerd.read_raw`,
   `dockerd.project`: a layer's `diff` digest stays the digest of the complete layer,
   so a layer whose files are missing does not match it), must pass the model's
   invariants against the real views before and after the op; `engine-view`: the
   daemon's own listing (`GET /images/json`, `/containers/json`, each one inspected)
   names exactly the images and containers of that view; and with a `crash` op, the
   ops after it run on the restarted daemon and must behave as after a crash-free
   prefix run on dockerd (`usable-after-recovery`).

Paths in findings are made generic as `crashcheck conform` makes them (random ids as
`<id>`, short links as `<link>`), so the same spec gives the same JSON run after run
as long as dockerd behaves the same.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checker.engine.aftercrash import Continuation, real_continuation_findings
from checker.engine.check import check
from checker.engine.invariants import CrashContext, Finding, selected
from checker.engine.trace import OpRecord, Trace, build_trace
from checker.real import sandbox
from checker.real.crash import OpOutcome, RealResult, RealUnavailable, RealViolation
from checker.real.daemon_conform import DAEMON_OPS, DockerdSession, comparable, runs_on_dockerd
from checker.real.dockerd import DockerdUnavailable, learn_diff_ids, project, read_raw, unavailable_reason
from checker.real.workspace import Workspace, workspace
from checker.spec import Op, Spec
from models.containers import CONTAINERS_VIEW, IMAGES_VIEW
from models.docker_overlay2 import DockerMount
from models.driver import Recovery
from models.tree import Dir

CRASHPOINT_SOURCE = Path(__file__).with_name("crashpoint.c")
ATTACH_WAIT = 10.0  # seconds for crashpoint to attach to every thread of dockerd
SETTLE = 0.3  # seconds for what dockerd does after an op's reply to reach the count
KILL_WAIT = 10.0  # seconds for the daemon to die once crashpoint has killed it
ENGINE_VIEW = "engine-view"
KILLED = "killed"  # the op's result when the daemon died under it


# --- the crash-point tool -------------------------------------------------------------------


def build_crashpoint(directory: Path) -> Path:
    """Compile `crashpoint.c` into `directory` (a workspace of ours)."""
    cc = sandbox.compiler()
    if cc is None:
        raise RealUnavailable("no C compiler (cc) to build the crash-point tool (apt-get install gcc)")
    tool = directory / "crashpoint"
    proc = subprocess.run([cc, "-O2", "-o", str(tool), str(CRASHPOINT_SOURCE)], capture_output=True,
                          text=True, timeout=sandbox.COMPILE_TIMEOUT)
    if proc.returncode != 0:
        raise RealUnavailable(f"cannot build the crash-point tool: {proc.stderr.strip()[:200]}")
    return tool


@dataclass(frozen=True)
class Call:
    """One crash point as crashpoint logs it."""

    number: int
    process: str  # dockerd, or `exe` (dockerd re-executed as its chrooted archive helper)
    syscall: str
    paths: tuple[str, ...]  # relative to the data root

    def text(self, containers: tuple[str, ...] = ()) -> str:
        return f"{self.syscall}({', '.join(comparable(p, containers) for p in self.paths)})"


def parse_points(text: str) -> tuple[list[Call], bool]:
    """The calls of a crashpoint log, and whether it killed the daemon."""
    calls: list[Call] = []
    killed = False
    for line in text.splitlines():
        if line == "# killed":
            killed = True
        if not line or line.startswith("#"):
            continue
        number, process, syscall, *paths = line.split("\t")
        calls.append(Call(int(number), process, syscall, tuple(paths)))
    return calls, killed


# --- one dockerd per run ----------------------------------------------------------------------


class Lab:
    """The workspace of a dockerd crash run: the tool, and a fresh daemon per session."""

    def __init__(self, ws: Workspace, spec: Spec, trace: Trace) -> None:
        self.ws, self.spec, self.trace = ws, spec, trace
        self.tool = build_crashpoint(ws.root)
        self.serial = 0

    def session(self, ops_before: list[Op]) -> DockerdSession:
        """A fresh dockerd in the spec's initial state with `ops_before` run."""
        self.serial += 1
        session = DockerdSession(self.ws, self.spec, self.trace, name=f"d{self.serial}")
        session.start()
        for op in ops_before:
            session.perform(op)
        return session

    def close(self, session: DockerdSession) -> None:
        session.daemon.kill()
        shutil.rmtree(session.daemon.home, ignore_errors=True)

    def traced(self, session: DockerdSession, op: Op, kill_at: int) -> tuple[int | str, list[Call], bool]:
        """Run `op` with crashpoint attached: counting (kill_at 0) or killing dockerd on
        entry to call `kill_at`. Returns (the op's result, the calls, whether killed)."""
        log = self.ws.path(f"points{self.serial}")
        argv = [str(self.tool), str(session.daemon.pid), str(session.daemon.data), str(kill_at), str(log)]
        tracer = self.ws.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._attached(tracer, log)
        try:
            try:
                result: int | str = session.perform(op)
            except (OSError, http.client.HTTPException):
                result = KILLED
            deadline = time.monotonic() + (KILL_WAIT if result == KILLED else SETTLE)
            while tracer.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            self.ws.end(tracer, signal.SIGTERM)
        calls, killed = parse_points(log.read_text(errors="surrogateescape"))
        return result, calls, killed

    def _attached(self, tracer: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + ATTACH_WAIT
        while time.monotonic() < deadline:
            if log.exists() and log.read_text(errors="replace").startswith("# attached"):
                return
            if tracer.poll() is not None:
                err = tracer.stderr.read().decode(errors="replace").strip() if tracer.stderr else ""
                raise RealUnavailable(f"crashpoint could not attach to dockerd: {err[:200]}")
            time.sleep(0.01)
        raise RealUnavailable("crashpoint did not attach to dockerd in time")


# --- what the restarted daemon shows ----------------------------------------------------------


def engine_findings(session: DockerdSession, view: Dir) -> list[Finding]:
    """Whether the daemon's own listing names the images and containers of the view
    its store gives, and can inspect each."""
    daemon = session.daemon
    images: set[str] = set()
    for doc in json.loads(daemon.api("GET", "/images/json").body):
        for tag in doc.get("RepoTags") or []:
            if tag != "<none>:<none>":
                images.add(tag.removesuffix(":latest"))
    listed = json.loads(daemon.api("GET", "/containers/json", {"all": "1"}).body)
    containers = {n.lstrip("/") for doc in listed for n in (doc.get("Names") or [])[:1]}
    shown_images = view.entries.get(IMAGES_VIEW)
    shown_containers = view.entries.get(CONTAINERS_VIEW)
    want_images = set(shown_images.entries) if isinstance(shown_images, Dir) else set()
    want_containers = set(shown_containers.entries) if isinstance(shown_containers, Dir) else set()
    out = []
    for kind, listed, store in (("images", images, want_images), ("containers", containers, want_containers)):
        if listed != store:
            out.append(Finding(
                f"dockerd lists {kind} {sorted(listed)} where its store has {sorted(store)}",
                tuple(sorted(listed ^ store)),
            ))
    for image in sorted(images & want_images):
        if daemon.api("GET", f"/images/{image}/json").status != 200:
            out.append(Finding(f"dockerd lists image {image} but cannot inspect it", (image,)))
    for name in sorted(containers & want_containers):
        if daemon.api("GET", f"/containers/{name}/json").status != 200:
            out.append(Finding(f"dockerd lists container {name} but cannot inspect it", (name,)))
    return out


@dataclass
class Restarted:
    """dockerd started on a crashed data root: the recovery as the invariants see it."""

    recovery: Recovery
    view: Dir | None


def restart(session: DockerdSession, mount: DockerMount, diff_ids: dict[str, str]) -> Restarted:
    session.daemon.kill()
    refused = session.daemon.start_refused()
    if refused is not None:
        return Restarted(Recovery(None, refusal=f"dockerd does not start: {refused}"), None)
    store = project(read_raw(session.daemon.data), diff_ids)
    return Restarted(Recovery(store), mount.view(store))


# --- the run ------------------------------------------------------------------------------------


@dataclass
class OpBaseline:
    """An op run to completion on dockerd: its result, the views around it, its points."""

    result: int | str
    before: Dir
    after: Dir
    points: list[Call]


class DockerdCrashRun:
    def __init__(self, lab: Lab, progress: Callable[[str], None] | None) -> None:
        self.lab, self.spec, self.trace = lab, lab.spec, lab.trace
        mount = self.trace.mount
        assert isinstance(mount, DockerMount)
        self.mount = mount
        self.progress = progress
        self.diff_ids: dict[str, str] = {}
        self.references: dict[int, Continuation] = {}
        self.violations: list[RealViolation] = []
        self.points = 0
        self.missed = 0

    def view_of(self, raw: Dir) -> Dir:
        return self.mount.view(project(raw, self.diff_ids))

    def baselines(self) -> list[OpBaseline]:
        """Every op run to completion in one daemon, in order, with crashpoint counting
        through each daemon op: each op's result, the views around it, its crash points."""
        session = self.lab.session([])
        trees: list[tuple[int | str, Dir, Dir, list[Call]]] = []
        try:
            for record in self.trace.ops:
                before = read_raw(session.daemon.data)
                if record.op.kind in DAEMON_OPS:
                    result, points, _ = self.lab.traced(session, record.op, 0)
                else:  # a file op in a container: the kernel's, not crashed here
                    result, points = session.perform(record.op), []
                after = read_raw(session.daemon.data)
                learn_diff_ids(before, self.diff_ids)
                learn_diff_ids(after, self.diff_ids)
                trees.append((result, before, after, points))
        finally:
            self.lab.close(session)
        return [OpBaseline(r, self.view_of(b), self.view_of(a), p) for r, b, a, p in trees]

    def crash_op(self, record: OpRecord, base: OpBaseline, only: Sequence[int] | None = None) -> None:
        for n in range(1, len(base.points) + 1):
            if only is not None and n not in only:
                continue
            if self.progress:
                self.progress(f"{self.spec.file}: op {record.index} dockerd crash {n}/{len(base.points)}")
            self.crash_at(record, base, n)

    def crash_at(self, record: OpRecord, base: OpBaseline, n: int) -> None:
        session = self.lab.session(self.spec.before_crash[: record.index])
        try:
            _, calls, killed = self.lab.traced(session, record.op, n)
            if not killed:
                self.missed += 1  # this run made fewer calls than the counting run
                return
            self.points += 1
            call = calls[-1]
            found = self.check(session, record, base)
            for inv, f in found:
                self.violations.append(RealViolation(
                    inv, record.index, record.text, n, call.process, call.text(session.containers),
                    comparable(f.message, session.containers),
                    tuple(comparable(p, session.containers) for p in f.paths),
                ))
        finally:
            self.lab.close(session)

    def check(self, session: DockerdSession, record: OpRecord, base: OpBaseline) -> list[tuple[str, Finding]]:
        first = restart(session, self.mount, self.diff_ids)
        second: Restarted | None = None
        if not first.recovery.refused:
            second = restart(session, self.mount, self.diff_ids)

        def again(root: Dir) -> Recovery:
            assert second is not None
            return second.recovery

        real_op = dataclasses.replace(record, before=base.before, after=base.after, cache={})
        ctx = CrashContext(self.trace, real_op, first.recovery, first.view, self.mount, again)
        out: list[tuple[str, Finding]] = []
        for inv in selected(self.spec):
            if inv.crash_level and inv.name != "usable-after-recovery":
                out.extend((inv.name, f) for f in inv.check(ctx))
        if second is not None and not second.recovery.refused and second.view is not None:
            out.extend((ENGINE_VIEW, f) for f in engine_findings(session, second.view))
            if self.spec.crash_index is not None:
                out.extend(("usable-after-recovery", f) for f in self.after_crash(session, record))
        elif self.spec.crash_index is not None:
            first_later = self.spec.after_crash[0].index
            out.append(("usable-after-recovery", Finding(
                f"after a crash during `{record.text}` dockerd does not start again: "
                "the later ops cannot run", (), first_later)))
        return out

    # -- the ops after a crash op ------------------------------------------------------------

    def continuation(self, session: DockerdSession) -> Continuation:
        """The later ops on a running daemon: their results, the final view, and the
        store problems they bring about."""
        before = project(read_raw(session.daemon.data), self.diff_ids)
        results = tuple(session.perform(op) for op in self.spec.after_crash)
        final = project(read_raw(session.daemon.data), self.diff_ids)
        known = set(self.mount.store_problems(before))
        problems = tuple(p for p in self.mount.store_problems(final) if p not in known)
        return Continuation(results, self.mount.view(final), problems)

    def reference(self, k: int) -> Continuation:
        """The later ops after the first k ops ran on dockerd without a crash, and the
        daemon was stopped cleanly and started again."""
        hit = self.references.get(k)
        if hit is None:
            session = self.lab.session(self.spec.before_crash[:k])
            try:
                session.daemon.stop()
                session.daemon.start()
                hit = self.references[k] = self.continuation(session)
            finally:
                self.lab.close(session)
        return hit

    def after_crash(self, session: DockerdSession, record: OpRecord) -> list[Finding]:
        got = self.continuation(session)
        ks = sorted({record.index, min(record.index + 1, len(self.trace.ops))})
        refs = [self.reference(k) for k in ks]
        return real_continuation_findings(record.text, got, refs, self.spec.after_crash)


def dockerd_check(spec: Spec, progress: Callable[[str], None] | None = None,
                  only: Sequence[int] | None = None) -> RealResult:
    """Crash-test the spec's daemon ops on dockerd (with `only`, at those call numbers
    of each op and no other)."""
    if not runs_on_dockerd(spec):
        raise RealUnavailable(f"{spec.file}: real --impl dockerd runs docker-overlay2 specs, "
                              f"not {spec.driver}")
    reason = dockerd_unavailable_reason()
    if reason is not None:
        raise RealUnavailable(reason)
    started = time.perf_counter()
    trace = build_trace(spec)
    outcomes: list[OpOutcome] = []
    calls = 0
    with workspace("dockerd") as ws:
        try:
            run = DockerdCrashRun(Lab(ws, spec, trace), progress)
            for record, base in zip(trace.ops, run.baselines(), strict=True):
                outcomes.append(OpOutcome(record, base.result))
                if record.op.kind in DAEMON_OPS:
                    calls += len(base.points)
                    run.crash_op(record, base, only)
        except DockerdUnavailable as e:
            raise RealUnavailable(str(e)) from None
    violations = sorted(run.violations, key=lambda v: (v.op, v.crash_at_call, v.invariant, v.message))
    invariants = tuple(inv.name for inv in selected(spec) if inv.crash_level) + (ENGINE_VIEW,)
    return RealResult(spec, "dockerd", "violation" if violations else "pass", run.points, calls, violations,
                      invariants, time.perf_counter() - started, outcomes, missed=run.missed,
                      model_prefix=predicted(spec, "prefix", invariants))


#: options that select what dockerd does (a moby version, a what-if write discipline); the
#: dockerd here is what the defaults model
DAEMON_OPTIONS = ("moby", "link_files", "sync_before_register")


def as_running_here(spec: Spec) -> Spec:
    """The spec with the daemon's behaviour this machine's dockerd (20.10): what a
    process kill of it is compared with."""
    options = {k: v for k, v in spec.options.items() if k not in DAEMON_OPTIONS}
    return dataclasses.replace(spec, options=options)


def predicted(spec: Spec, persistence: str, invariants: Collection[str],
              **limits: Any) -> tuple[str, tuple[str, ...]]:
    """What the model of this dockerd predicts under `persistence` (`prefix` for a
    kill): its verdict and which of `invariants` it violates, counting the crash states
    of daemon ops only (file ops are the kernel's, not crashed or recorded as it orders
    them)."""
    model = check(as_running_here(spec), persistence, **limits)
    daemon = {op.index for op in spec.before_crash if op.kind in DAEMON_OPS}
    found = sorted({v.invariant for v in model.violations if v.op in daemon and v.invariant in invariants})
    return ("violation" if found else "pass"), tuple(found)


def dockerd_unavailable_reason() -> str | None:
    return unavailable_reason() or sandbox.unavailable_reason()


__all__ = ["Call", "DockerdCrashRun", "build_crashpoint", "dockerd_check", "parse_points"]
