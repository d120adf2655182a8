"""Conformance and crash tests of a container engine's store against its model, for the
engines that are "overlayfs plus a store" (podman's containers/storage, containerd):
`crashcheck conform` and `crashcheck real --impl podman|containerd`.

An engine plugs in as an `EngineSession`: it starts a private engine in a workspace and
brings it to the spec's initial state, performs the spec's ops (store ops through the
engine's CLI, file ops on a container's real overlay mount, confined to it), traces an
op's system calls (strace), runs an op under `crashpoint` killing the engine at its N-th
call that changes the store, restarts the engine after a kill (its own recovery), reads
the store back in the model's layout, and lists what the engine's CLI shows.

- `conform_engine`: each store op's durable steps (namespace changes and fsyncs, made
  comparable: ids, short links and temp suffixes generic) compared with the model's by
  longest common subsequence; each op's result with the model's; after each op the
  store read back must show the model's view and pass its store checks.
- `crash_engine`: for each store op, a counting run numbers the engine's calls that
  change the store; for every N a fresh engine is brought to the state before the op,
  killed at call N, started again (twice: recovery must be idempotent), and the
  invariants are checked on the real store, with `engine-view` (the CLI names exactly
  the images and containers of the store's view) and, after a `crash` op, the later ops
  against a crash-free run (`usable-after-recovery`). The verdict is compared with what
  the model of this engine predicts for a process crash (`prefix`).

The dockerd twins of these (`daemon_conform`, `dockerd_crash`) predate this module.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from checker.engine.aftercrash import AfterCrash, Continuation, real_continuation_findings
from checker.engine.check import check
from checker.engine.invariants import CrashContext, Finding, selected
from checker.engine.trace import OpRecord, Trace, build_trace
from checker.errors import CrashcheckError
from checker.real import kernel, sandbox
from checker.real.crash import OpOutcome, RealResult, RealUnavailable, RealViolation
from checker.real.crashpoints import KILLED, Call, build_crashpoint, parse_points
from checker.real.ops import run_op, syncfs
from checker.real.store_events import (
    STRACE_SET,
    StoreOpConformance,
    call_text,
    durable,
    kernel_made,
    unordered_removals,
)
from checker.real.syscall_log import Recorder, parse, tree_paths
from checker.real.workspace import Workspace, workspace
from checker.spec import Op, Spec
from models.containers import CONTAINERS_VIEW, IMAGES_VIEW
from models.driver import Mount, Recovery
from models.steps import Step
from models.tree import Dir, Node, split

ENGINE_VIEW = "engine-view"
ATTACH_WAIT = 10.0
KILL_WAIT = 30.0


class EngineUnavailable(CrashcheckError):
    """The engine cannot run here; the message says why."""


class EngineSession:
    """A private engine in a workspace, brought to a spec's initial state."""

    implementation: ClassVar[str] = ""
    driver: ClassVar[str] = ""
    STORE_OPS: ClassVar[tuple[str, ...]] = ()
    #: options of the engine's model that pick another version or a what-if (the engine
    #: running here is what their defaults model)
    VERSION_OPTIONS: ClassVar[tuple[str, ...]] = ()
    #: what the engine's model describes, as the findings table names it
    MODELLED: ClassVar[str] = ""
    #: store paths outside the model (the engine's own databases, logs)
    OUT_OF_SCOPE: ClassVar[tuple[str, ...]] = ()
    #: seconds for what a daemon does after an op's reply (a collection it triggers) to land
    SETTLE: ClassVar[float] = 0.3
    #: what a store op raises when the engine dies under it (its client's connection lost)
    KILLED_ERRORS: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def __init__(self, ws: Workspace, spec: Spec, trace: Trace, name: str) -> None:
        self.ws, self.spec, self.trace, self.name = ws, spec, trace, name
        self.shim = sandbox.build_shim(ws.root)
        self.containers = tuple(sorted({op.arg("container") or "app" for op in spec.ops} | {"app"}))
        self.digests: dict[str, str] = {}  # the engine's layer digests -> the model's

    # -- to implement ----------------------------------------------------------------

    @staticmethod
    def version() -> str:
        raise NotImplementedError

    @staticmethod
    def unavailable() -> str | None:
        """Why the engine cannot run here (what to install), or None."""
        raise NotImplementedError

    @classmethod
    def runs(cls, spec: Spec) -> bool:
        """Whether this engine runs the spec (its driver is the engine's model)."""
        return spec.driver == cls.driver

    @property
    def data(self) -> Path:
        raise NotImplementedError

    def start(self) -> None:
        """Start the engine and bring it to the spec's initial state."""
        raise NotImplementedError

    def store_op(self, op: Op, wrap: list[str] | None = None) -> int | str:
        """Perform a store op (through the engine's CLI; `wrap` prefixes the command)."""
        raise NotImplementedError

    def merged(self, container: str) -> Path | None:
        raise NotImplementedError

    def engine_pid(self) -> int | None:
        """The daemon whose calls are the op's (None: the op's own CLI process)."""
        raise NotImplementedError

    def spawn_stopped(self, op: Op) -> subprocess.Popen[bytes] | None:
        """A daemonless engine: the op's process, stopped before it runs (None otherwise)."""
        return None

    def spawn_client(self, op: Op) -> subprocess.Popen[bytes] | None:
        """A daemon engine: the client command of a store op, started (None: `store_op`
        runs it). A client whose daemon was killed may wait for it to come back (gRPC
        clients do), so a crash run ends it once the daemon is dead."""
        return None

    def kill(self) -> None:
        raise NotImplementedError

    def start_refused(self) -> str | None:
        """Start the engine again on its root: None, or why it does not start."""
        raise NotImplementedError

    def restart_cleanly(self) -> None:
        """Stop the engine as an administrator would and start it again (the reference
        run of the ops after a `crash` op). A daemonless engine has nothing running
        between ops; a kill between ops is the same."""
        self.kill()
        refused = self.start_refused()
        if refused is not None:
            raise EngineUnavailable(f"{self.implementation} did not start again: {refused}")

    def stop(self) -> None:
        raise NotImplementedError

    def read_raw(self) -> Dir:
        raise NotImplementedError

    def project(self, raw: Dir) -> Dir:
        """The raw store in the model's vocabulary (the engine's layer digests as the
        model's, names as the model gives them)."""
        raise NotImplementedError

    def learn(self, raw: Dir) -> None:
        """Learn the digests of the layers of a store known complete."""
        raise NotImplementedError

    def listing(self) -> tuple[set[str], set[str]]:
        raise NotImplementedError

    def comparable(self, text: str) -> str:
        raise NotImplementedError

    def cannot_inspect(self, kind: str, name: str) -> bool:
        """Whether the engine lists `name` (an image or a container) but cannot show it."""
        return False

    # -- shared ----------------------------------------------------------------------

    def read_store(self) -> Dir:
        return self.project(self.read_raw())

    def perform(self, op: Op) -> int | str:
        if op.kind in self.STORE_OPS:
            return self.store_op(op)
        if op.kind == "sync":  # the store's file system, not every one (sync(2) would reach other runs')
            syncfs(self.data)
            return 0
        return self.file_op(op)

    def file_op(self, op: Op) -> int | str:
        """A file op inside a container, on its real overlay mount, confined to it."""
        paths = [v for k, v in op.args if k in ("path", "src", "dst")]
        names = {p.split("/")[1] for p in paths if p.startswith(CONTAINERS_VIEW + "/") and p.count("/") >= 2}
        if len(names) != 1 or len(names) != len({p.split("/")[1] for p in paths}):
            return "EPERM"
        merged = self.merged(names.pop())
        if merged is None:
            return "ENOENT"
        inside = tuple((k, v.split("/", 2)[2] if k in ("path", "src", "dst") else v) for k, v in op.args)
        return run_op(merged, dataclasses.replace(op, args=inside), self.shim)

    def traced_calls(self, op: Op) -> tuple[int | str, list[tuple[Step, str]]]:
        """A store op with strace on the engine (every thread, and the helpers it runs)."""
        existing = tree_paths(self.data)
        log = self.ws.path(f"{self.name}-op{op.index}.strace")
        strace = ["strace", "-f", "-qq", "-y", "-s", "65536", "-o", str(log), "-e", f"trace={STRACE_SET}"]
        pid = self.engine_pid()
        if pid is None:
            result = self.store_op(op, wrap=strace)
        else:
            tracer = self.ws.spawn([*strace, "-p", str(pid)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
            _wait_traced(pid, tracer)
            try:
                result = self.store_op(op)
                self.settle()
            finally:
                self.ws.end(tracer, signal.SIGINT)
        calls = parse(log.read_text(errors="surrogateescape"))
        pairs = Recorder(str(self.data), existing, not_chroots=self.not_chroots()).steps(calls)
        return result, [(step, call_text(call, str(self.data))) for step, call in pairs]

    def crash_run(self, op: Op, tool: Path, kill_at: int) -> tuple[int | str, list[Call], bool]:
        """`op` with crashpoint on the engine: counting (kill_at 0) or killing the engine
        on entry to call `kill_at`. Returns (result, the calls, whether it was killed)."""
        log = self.ws.path(f"{self.name}-points")
        log.unlink(missing_ok=True)
        pid = self.engine_pid()
        proc = self.spawn_stopped(op) if pid is None else None
        target = pid if proc is None else proc.pid
        argv = [str(tool), str(target), str(self.data), str(kill_at), str(log)]
        tracer = self.ws.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_attached(tracer, log)
        try:
            if proc is not None:
                proc.send_signal(signal.SIGCONT)
                try:
                    proc.wait(timeout=KILL_WAIT * 4)
                except subprocess.TimeoutExpired:
                    proc.kill()
                stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                result: int | str = self.result_of(proc.returncode, stderr)
                self.ws.end(proc)
            elif (client := self.spawn_client(op)) is not None:
                result = self._client_result(client, tracer, log)
            else:
                try:
                    result = self.store_op(op)
                except self.KILLED_ERRORS:
                    result = KILLED
            deadline = time.monotonic() + (KILL_WAIT if result == KILLED else self.SETTLE)
            while tracer.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            self.ws.end(tracer, signal.SIGTERM)
        calls, killed = parse_points(log.read_text(errors="surrogateescape"))
        return (KILLED if killed else result), calls, killed

    def result_of(self, returncode: int, stderr: str) -> int | str:
        return 0 if returncode == 0 else "EIO"

    def settle(self) -> None:
        """Wait for what the engine does after an op's reply (a collection it triggers)."""
        time.sleep(self.SETTLE)

    def _client_result(self, client: subprocess.Popen[bytes], tracer: subprocess.Popen[bytes],
                       log: Path) -> int | str:
        """Wait for the client; once crashpoint has killed the daemon, end the client."""
        deadline = time.monotonic() + KILL_WAIT * 4
        while client.poll() is None and time.monotonic() < deadline:
            if tracer.poll() is not None and "# killed" in log.read_text(errors="replace"):
                break
            time.sleep(0.01)
        if client.poll() is None:
            self.ws.end(client, signal.SIGKILL)
            return KILLED
        stderr = client.stderr.read().decode(errors="replace") if client.stderr else ""
        self.ws.end(client)
        return self.result_of(client.returncode, stderr)

    def in_scope(self, step: Step, parts: Collection[str]) -> Step | None:
        """A traced step as a power-loss recording keeps it: on the parts of the root the
        model has (`parts`, the top-level entries `read_raw` reads), else None."""
        for attr in ("path", "src", "dst"):
            value = getattr(step, attr, None)
            if isinstance(value, str) and split(value)[:1] and split(value)[0] not in parts:
                return None
        return step

    def not_chroots(self) -> frozenset[str]:
        """Bind mounts of a path on itself the engine makes that are not a chroot."""
        return frozenset()


def read_store_tree(data: Path, names: Callable[[list[str]], list[str]]) -> Dir:
    """An engine's root as it is on disk, the top-level entries `names` keeps (overlay
    xattrs kept, the kernel's bookkeeping left out); a mount point is read as the empty
    directory under it, and an entry the engine removes while it is read (a collection
    running) is left out."""
    def read(path: Path) -> Node | None:
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and os.path.ismount(path):
                return Dir(mode=stat.S_IMODE(st.st_mode))
            if not stat.S_ISDIR(st.st_mode):
                return kernel.read_node(path, skip_xattrs=kernel.BOOKKEEPING_XATTRS)
            entries = {name: read(path / name) for name in sorted(os.listdir(path))}
            return Dir({k: v for k, v in entries.items() if v is not None}, stat.S_IMODE(st.st_mode),
                       kernel.xattrs_of(path, kernel.BOOKKEEPING_XATTRS))
        except FileNotFoundError:
            return None

    root = Path(data)
    parts = {name: read(root / name) for name in names(sorted(os.listdir(root)))}
    return Dir({k: v for k, v in parts.items() if v is not None}, stat.S_IMODE(os.lstat(root).st_mode))


def _wait_traced(pid: int, tracer: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + ATTACH_WAIT
    while time.monotonic() < deadline:
        if tracer.poll() is not None:
            raise EngineUnavailable("strace could not attach to the engine")
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            raise EngineUnavailable("the engine exited before strace attached") from None
        if [ln.split()[1] for ln in status.splitlines() if ln.startswith("TracerPid")] == [str(tracer.pid)]:
            time.sleep(0.1)
            return
        time.sleep(0.01)
    raise EngineUnavailable("strace did not attach to the engine in time")


def _wait_attached(tracer: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + ATTACH_WAIT
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").startswith("# attached"):
            return
        if tracer.poll() is not None:
            err = tracer.stderr.read().decode(errors="replace").strip() if tracer.stderr else ""
            raise RealUnavailable(f"crashpoint could not attach: {err[:200]}")
        time.sleep(0.01)
    raise RealUnavailable("crashpoint did not attach in time")


# --- conform ---------------------------------------------------------------------------------


def _events(session: EngineSession, pairs: list[tuple[Step, Dir | None]], model: bool) -> list[str]:
    out: list[str] = []
    for step, before in pairs:
        for kind, *paths in durable(step, before):
            if model and kernel_made((kind, *paths)):
                continue
            outside = paths and (paths[0].startswith(session.OUT_OF_SCOPE) or paths[0].endswith(".lock"))
            if not model and outside:
                continue
            out.append(" ".join([kind, " -> ".join(session.comparable(p) for p in paths)]).strip())
    return unordered_removals(out)


def conform_engine(spec: Spec, make: type[EngineSession],
                   progress: Callable[[str], None] | None = None) -> list[StoreOpConformance]:
    """Run the spec on the engine and compare each op with the model."""
    trace = build_trace(spec)
    out: list[StoreOpConformance] = []
    with workspace(make.implementation) as ws:
        session = make(ws, spec, trace, "e")
        session.start()
        session.learn(session.read_raw())
        try:
            for record in trace.ops:
                if progress:
                    progress(f"{spec.file}: op {record.index} `{record.text}` on {session.implementation}")
                store_op = record.op.kind in session.STORE_OPS
                if store_op:
                    result, pairs = session.traced_calls(record.op)
                    observed = _events(session, [(s, None) for s, _ in pairs], model=False)
                    span = range(record.first_step, record.end_step)
                    model_events = _events(session, [(trace.steps[i], trace.states[i]) for i in span], True)
                else:
                    result, observed, model_events = session.perform(record.op), [], []
                raw = session.read_raw()
                session.learn(raw)
                out.append(_judge(session, record, model_events, observed, result, store_op, raw))
            if spec.crash_index is not None:
                out.extend(_after_crash(spec, trace, session))
        finally:
            session.stop()
    return out


def _judge(session: EngineSession, record: OpRecord, model_events: list[str], observed: list[str],
           real_result: int | str, compared: bool, raw: Dir) -> StoreOpConformance:
    store = session.project(raw)
    mount = session.trace.mount
    problems = [f"{p}: {what}" for p, what in mount.store_problems(store)]  # type: ignore[attr-defined]
    return StoreOpConformance(record.index, record.text, model_events, observed, record.result, real_result,
                               compared, mount.view(store).digest == record.after.digest, problems)


def _after_crash(spec: Spec, trace: Trace, session: EngineSession) -> list[StoreOpConformance]:
    session.kill()
    refused = session.start_refused()
    if refused is not None:
        raise EngineUnavailable(f"{session.implementation} did not start again after the crash: {refused}")
    reference = AfterCrash(trace).reference(len(trace.ops))
    out = []
    for j, op in enumerate(spec.after_crash):
        result = session.perform(op)
        last = j == len(spec.after_crash) - 1
        view_ok = not last or trace.mount.view(session.read_store()).digest == reference.view.digest
        expected = reference.results[j]
        out.append(StoreOpConformance(op.index, op.text, [], [], expected, result, False, view_ok))
    return out


# --- crash --------------------------------------------------------------------------------------


@dataclass
class OpBaseline:
    result: int | str
    before: Dir
    after: Dir
    points: list[Call]


@dataclass
class Restarted:
    recovery: Recovery
    view: Dir | None


class EngineCrashRun:
    """Every store op of a spec killed at each of its store-changing calls."""

    def __init__(self, ws: Workspace, spec: Spec, trace: Trace,
                 make: type[EngineSession],
                 progress: Callable[[str], None] | None) -> None:
        self.ws, self.spec, self.trace, self.make, self.progress = ws, spec, trace, make, progress
        self.mount: Mount = trace.mount
        self.tool = build_crashpoint(ws.root)
        self.serial = 0
        self.digests: dict[str, str] = {}
        self.references: dict[int, Continuation] = {}
        self.violations: list[RealViolation] = []
        self.points = 0
        self.missed = 0
        self.implementation = ""

    def session(self, ops_before: Sequence[Op]) -> EngineSession:
        self.serial += 1
        session = self.make(self.ws, self.spec, self.trace, f"e{self.serial}")
        self.implementation = session.implementation
        session.digests = self.digests
        session.start()
        for op in ops_before:
            session.perform(op)
        return session

    def close(self, session: EngineSession) -> None:
        session.stop()
        shutil.rmtree(self.ws.path(session.name), ignore_errors=True)

    def view_of(self, session: EngineSession, raw: Dir) -> Dir:
        return self.mount.view(session.project(raw))

    def baselines(self) -> list[OpBaseline]:
        session = self.session([])
        out: list[OpBaseline] = []
        try:
            for record in self.trace.ops:
                before = session.read_raw()
                session.learn(before)
                if record.op.kind in session.STORE_OPS:
                    result, points, _ = session.crash_run(record.op, self.tool, 0)
                else:
                    result, points = session.perform(record.op), []
                after = session.read_raw()
                session.learn(after)
                views = self.view_of(session, before), self.view_of(session, after)
                out.append(OpBaseline(result, *views, points))
        finally:
            self.close(session)
        return out

    def crash_op(self, record: OpRecord, base: OpBaseline, only: Sequence[int] | None = None) -> None:
        for n in range(1, len(base.points) + 1):
            if only is not None and n not in only:
                continue
            if self.progress:
                self.progress(f"{self.spec.file}: op {record.index} {self.implementation} crash "
                              f"{n}/{len(base.points)}")
            self.crash_at(record, base, n)

    def crash_at(self, record: OpRecord, base: OpBaseline, n: int) -> None:
        session = self.session(self.spec.before_crash[: record.index])
        try:
            _, calls, killed = session.crash_run(record.op, self.tool, n)
            if not killed:
                self.missed += 1
                return
            self.points += 1
            call = calls[-1]
            syscall = call.text(session.comparable)
            for inv, f in self.check(session, record, base):
                self.violations.append(RealViolation(
                    inv, record.index, record.text, n, call.process, syscall, session.comparable(f.message),
                    tuple(session.comparable(p) for p in f.paths)))
        finally:
            self.close(session)

    def restart(self, session: EngineSession) -> Restarted:
        session.kill()
        refused = session.start_refused()
        if refused is not None:
            refusal = f"{session.implementation} does not start: {refused}"
            return Restarted(Recovery(None, refusal=refusal), None)
        store = session.read_store()
        return Restarted(Recovery(store), self.mount.view(store))

    def check(self, session: EngineSession, record: OpRecord, base: OpBaseline) -> list[tuple[str, Finding]]:
        first = self.restart(session)
        second = None if first.recovery.refused else self.restart(session)

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
            out.append(("usable-after-recovery", Finding(
                f"after a crash during `{record.text}` {session.implementation} does not start again: "
                "the later ops cannot run", (), self.spec.after_crash[0].index)))
        return out

    def continuation(self, session: EngineSession) -> Continuation:
        before = session.read_store()
        results = tuple(session.perform(op) for op in self.spec.after_crash)
        final = session.read_store()
        known = set(self.mount.store_problems(before))  # type: ignore[attr-defined]
        problems = tuple(p for p in self.mount.store_problems(final) if p not in known)  # type: ignore[attr-defined]
        return Continuation(results, self.mount.view(final), problems)

    def reference(self, k: int) -> Continuation:
        hit = self.references.get(k)
        if hit is None:
            session = self.session(self.spec.before_crash[:k])
            try:
                session.restart_cleanly()
                hit = self.references[k] = self.continuation(session)
            finally:
                self.close(session)
        return hit

    def after_crash(self, session: EngineSession, record: OpRecord) -> list[Finding]:
        got = self.continuation(session)
        ks = sorted({record.index, min(record.index + 1, len(self.trace.ops))})
        refs = [self.reference(k) for k in ks]
        return real_continuation_findings(record.text, got, refs, self.spec.after_crash)


def engine_findings(session: EngineSession, view: Dir) -> list[Finding]:
    """Whether the engine's own listing names exactly the images and containers of the
    view its store gives, and can show each."""
    images, containers = session.listing()
    out = []
    shown: list[set[str]] = []
    for kind, listed, part in (("images", images, IMAGES_VIEW), ("containers", containers, CONTAINERS_VIEW)):
        node = view.entries.get(part)
        store = set(node.entries) if isinstance(node, Dir) else set()
        shown.append(store)
        if listed != store:
            out.append(Finding(f"{session.implementation} lists {kind} {sorted(listed)} where its store has "
                               f"{sorted(store)}", tuple(sorted(listed ^ store))))
    for kind, listed, store in (("image", images, shown[0]), ("container", containers, shown[1])):
        for name in sorted(listed & store):
            if session.cannot_inspect(kind, name):
                what = f"{session.implementation} lists {kind} {name} but cannot inspect it"
                out.append(Finding(what, (name,)))
    return out


def crash_engine(spec: Spec, make: type[EngineSession],
                 progress: Callable[[str], None] | None = None,
                 only: Sequence[int] | None = None) -> RealResult:
    started = time.perf_counter()
    trace = build_trace(spec)
    outcomes: list[OpOutcome] = []
    calls = 0
    with workspace(make.implementation) as ws:
        try:
            run = EngineCrashRun(ws, spec, trace, make, progress)
            bases = run.baselines()
            store_ops = make.STORE_OPS
            for record, base in zip(trace.ops, bases, strict=True):
                outcomes.append(OpOutcome(record, base.result))
                if record.op.kind in store_ops:
                    calls += len(base.points)
                    run.crash_op(record, base, only)
        except EngineUnavailable as e:
            raise RealUnavailable(str(e)) from None
    violations = sorted(run.violations, key=lambda v: (v.op, v.crash_at_call, v.invariant, v.message))
    invariants = tuple(inv.name for inv in selected(spec) if inv.crash_level) + (ENGINE_VIEW,)
    return RealResult(spec, run.implementation, "violation" if violations else "pass", run.points, calls,
                      violations, invariants, time.perf_counter() - started, outcomes, missed=run.missed,
                      model_prefix=predicted(spec, "prefix", invariants, store_ops, make.VERSION_OPTIONS),
                      store_ops=store_ops)


def as_running_here(spec: Spec, options: Collection[str]) -> Spec:
    """The spec with the engine's behaviour this machine's (the options that pick
    another version or a what-if at their defaults)."""
    return dataclasses.replace(spec, options={k: v for k, v in spec.options.items() if k not in options})


def predicted(spec: Spec, persistence: str, invariants: Collection[str], store_ops: Collection[str],
              version_options: Collection[str], **limits: Any) -> tuple[str, tuple[str, ...]]:
    """What the model of the engine running here predicts under `persistence`, over the
    store ops (file ops are the kernel's)."""
    model = check(as_running_here(spec, version_options), persistence, **limits)
    ops = {op.index for op in spec.before_crash if op.kind in store_ops}
    found = sorted({v.invariant for v in model.violations if v.op in ops and v.invariant in invariants})
    return ("violation" if found else "pass"), tuple(found)


__all__ = ["ENGINE_VIEW", "EngineSession", "EngineUnavailable", "conform_engine", "crash_engine"]
