"""Conformance of the docker-overlay2 model with dockerd (`crashcheck conform` on a
docker-overlay2 spec).

The spec's workload runs on a private dockerd (`checker.real.dockerd`) brought to the
model's initial state (the image loaded, container `app` created with `[upper]` in its
layer and started, unless the workload pulls or runs its own). strace follows every
thread of the daemon during each daemon op; the calls become steps on the data root
(`checker.real.syscall_log`). Each op's durable steps (namespace changes: mkdir,
create, symlink, link, mknod, rename, unlink, rmdir; and fsync, fdatasync, sync) are
compared with the model's:

- names are made comparable: ids (64 hex digits, the model's `layerN`, `ctr-<c>`,
  12-hex chain and image ids, container directories) become `<id>`, short links
  `<link>`, temp-name suffixes `*`; a path through the init layer's mount
  (`<id>-init/merged/...`) is the init layer's diff, where the kernel puts it;
- the removals of one recursive removal are compared as a set (the daemon removes in
  readdir order), and so are the entries of the init layer (moby makes them in Go's
  random map order);
- `matched` is the longest common subsequence: the durable steps of dockerd that the
  model makes in the same order. The report gives it per op, with what only one side
  does.

Each op's result must be the model's, and after each op the data root, read back in the
model's layout, must show the view the model predicts and pass its store checks. File
ops inside a container run on its real overlay mount; their steps are the kernel's
(checked by the kernel's conformance) and only their results and views are compared
here. After a `crash` op dockerd is killed (and its exec root emptied, as a reboot does)
and started again; the later ops are compared with the model's continuation.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from checker.engine import views
from checker.engine.aftercrash import AfterCrash
from checker.engine.trace import OpRecord, Trace, build_trace
from checker.errors import CrashcheckError
from checker.real import kernel, sandbox
from checker.real.conform import OpConformance
from checker.real.dockerd import Dockerd, DockerdUnavailable, DockerOps, read_store, unavailable_reason
from checker.real.ops import run_op
from checker.real.syscall_log import Call, Recorder, parse, tree_paths
from checker.real.workspace import Workspace
from checker.spec import CRASH_OP, Op, Spec
from models import drivers
from models.containers import CONTAINERS_VIEW
from models.docker_overlay2 import DockerMount, container_exists_initially
from models.steps import (
    Create,
    Fsync,
    Link,
    MakeSymlink,
    Mkdir,
    MknodWhiteout,
    Rename,
    Rmdir,
    Step,
    Syncfs,
    Tmpfile,
    Unlink,
)
from models.steps import RemoveTree as RemoveTreeStep
from models.tree import Dir, lookup, split

ATTACH_WAIT = 10.0
SETTLE = 0.3  # seconds for the daemon's background work of an op to land in the trace
DAEMON_OPS = ("pull", "run", "start", "commit", "rm-container", "rmi", "tag")
STRACE_SET = (
    "mkdir,mkdirat,rmdir,unlink,unlinkat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,"
    "mknod,mknodat,open,openat,openat2,creat,write,pwrite64,ftruncate,truncate,fchmod,fchmodat,"
    "chmod,setxattr,lsetxattr,fsetxattr,fsync,fdatasync,sync,syncfs,mount"
)


class DaemonConformUnavailable(CrashcheckError):
    """dockerd cannot run here; the message says why."""


# --- comparable names --------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_LINK = re.compile(r"(?<=overlay2/l/)[A-Z0-9]{26}\b|(?<=overlay2/l/)L\d+\b")
_TMP = re.compile(r"/\.tmp-(<id>|[^/]*?)\d*$")
_SETS = re.compile(r"write-set-\d+")
_PIVOT = re.compile(r"\.pivot_root\d+")
_IMPORT = re.compile(r"docker-import-\d+")
_REMOVING = re.compile(r"<id>-(?:<id>|\d+)-removing")
_HASH = re.compile(r"/hash\d+$")
_KERNEL_TEMP = re.compile(r"(?<=/work/work/)#[0-9a-f]+")  # the kernel's counter is global


def comparable(path: str, containers: tuple[str, ...] = ()) -> str:
    """A path of either side with its ids, links and temp suffixes made generic."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        before = parts[i - 1] if i else ""
        named = before in ("containers", "mounts") and part in containers
        if named or re.fullmatch(r"layer\d+", part) or re.fullmatch(r"[0-9a-f]{12}", part):
            parts[i] = "<id>"
        elif re.fullmatch(r"[0-9a-f]{12}-\d+-removing", part):
            parts[i] = "<id>-*-removing"
        elif part.endswith("-json.log") and part.removesuffix("-json.log") in containers:
            parts[i] = "<id>-json.log"
        elif part.startswith("ctr-"):
            parts[i] = "<id>-init" if part.endswith("-init") else "<id>"
        elif part.startswith(".tmp-"):
            rest = part[5:]
            if re.match(r"[0-9a-f]{64}", rest) or re.fullmatch(r"[0-9a-f]{12}\d*", rest):
                parts[i] = ".tmp-<id>*"
            else:
                parts[i] = ".tmp-" + rest.rstrip("0123456789") + "*"
    text = _HEX64.sub("<id>", "/".join(parts))
    text = _LINK.sub("<link>", text)
    text = _SETS.sub("write-set-*", text)
    text = _PIVOT.sub(".pivot_root*", text)
    text = _IMPORT.sub("docker-import-*", text)
    text = _REMOVING.sub("<id>-*-removing", text)
    text = _HASH.sub("/hash*", text)
    text = _KERNEL_TEMP.sub("#*", text)
    return text.replace("-init/merged/", "-init/diff/")


def durable(step: Step, before: Dir | None = None) -> list[tuple[str, ...]]:
    """The durable events of a step, in the vocabulary both sides share: namespace
    changes and syncs, as (kind, path...). A recursive removal is each removal it makes
    (files, then their directory), from the tree before it."""
    if isinstance(step, RemoveTreeStep):
        node = lookup(before, split(step.path)) if before is not None else None
        return _removals(step.path, node) if node is not None else [("rmdir", step.path)]
    if isinstance(step, Tmpfile):
        return []  # no name until it is linked
    simple: list[tuple[type[Step], str]] = [
        (Mkdir, "mkdir"), (Create, "create"), (MakeSymlink, "symlink"), (MknodWhiteout, "mknod"),
        (Unlink, "unlink"), (Rmdir, "rmdir"), (Fsync, "fsync"),
    ]
    for cls, kind in simple:
        if isinstance(step, cls):
            return [(kind, step.path)]  # type: ignore[attr-defined]
    if isinstance(step, Link):
        return [("link", step.dst)]
    if isinstance(step, Rename):
        return [("rename", step.src, step.dst)]
    if isinstance(step, Syncfs):
        return [("sync",)]
    return []


def _removals(path: str, node: object) -> list[tuple[str, ...]]:
    if isinstance(node, Dir):
        out: list[tuple[str, ...]] = []
        for name in sorted(node.entries):
            out.extend(_removals(f"{path}/{name}", node.entries[name]))
        return out + [("rmdir", path)]
    return [("unlink", path)]


def event_text(event: tuple[str, ...], containers: tuple[str, ...]) -> str:
    kind, *paths = event
    return " ".join([kind, " -> ".join(comparable(p, containers) for p in paths)]).strip()


def unordered_removals(events: list[str]) -> list[str]:
    """Events in a canonical order where the order carries no meaning: runs of
    consecutive removals sorted (the daemon removes in readdir order), and the entries
    of the init layer sorted (moby makes them in Go's random map order)."""
    out: list[str] = []
    run: list[str] = []
    in_init = False
    for e in events + [""]:
        if e.startswith("mkdir ") and e.endswith("-init/merged"):
            out.extend(sorted(run))
            run, in_init = [], True
            out.append(e)
            continue
        if in_init and not (e.startswith("rmdir ") and e.endswith("-init/merged")) and e:
            run.append(e)
            continue
        if in_init:
            in_init = False
            out.extend(sorted(run))
            run = []
            if e:
                out.append(e)
            continue
        if e.startswith(("unlink ", "rmdir ")):
            run.append(e)
            continue
        out.extend(sorted(run))
        run = []
        if e:
            out.append(e)
    return out


def common_subsequence(a: list[str], b: list[str]) -> int:
    """The length of a longest common subsequence."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


# --- one op -------------------------------------------------------------------------------


@dataclass
class DaemonOpConformance(OpConformance):
    """One op on dockerd: `missing` is what only the model does, `unexpected` what only
    dockerd does (as for the kernel)."""

    compared: bool = True  # False: a file op (the kernel's steps) or an op after the crash
    view_matches: bool = True
    store_problems: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return common_subsequence(self.model_steps, self.observed_steps)

    @property
    def conforms(self) -> bool:
        steps_same = not self.compared or Counter(self.model_steps) == Counter(self.observed_steps)
        return self.same_result and self.view_matches and not self.store_problems and steps_same

    def to_json(self) -> dict[str, object]:
        return {
            "op": self.op,
            "op_text": self.text,
            "result": self.model_result,
            "real_result": self.real_result,
            "compared": self.compared,
            "model_steps": self.model_steps,
            "observed_steps": self.observed_steps,
            "matched": self.matched if self.compared else None,
            "view_matches": self.view_matches,
            "store_problems": self.store_problems,
            "conforms": self.conforms,
        }


# --- the session ----------------------------------------------------------------------------


class DockerdSession:
    """dockerd brought to a spec's initial state, running its ops one by one."""

    def __init__(self, ws: Workspace, spec: Spec, trace: Trace, name: str = "docker") -> None:
        self.ws, self.spec, self.trace = ws, spec, trace
        self.daemon = Dockerd(ws, name)
        mount = trace.mount
        assert isinstance(mount, DockerMount)
        self.ops = DockerOps(self.daemon, list(mount.image_layers))
        self.shim = sandbox.build_shim(ws.root)
        self.containers = tuple(sorted({op.arg("container") or "app" for op in spec.ops} | {"app"}))

    def start(self) -> None:
        self.daemon.start()
        ops = self.spec.before_crash
        if any(op.kind == "pull" for op in ops):
            return
        self._check(self.ops.pull("image"), "load the image")
        if container_exists_initially(ops):
            self._check(self.ops.create("app", "image"), "create container app")
            if self.spec.upper is not None:
                upper = self._upper_dir("app")
                for name, node in sorted(self.spec.upper.entries.items()):
                    kernel.write_node(node, upper / name)
            self._check(self.ops.start("app"), "start container app")

    def _check(self, result: int | str, what: str) -> None:
        if result:
            raise DockerdUnavailable(f"dockerd could not {what} ({result}): {self.daemon.log_tail()}")

    def _upper_dir(self, container: str) -> Path:
        doc = json.loads(self.daemon.api("GET", f"/containers/{container}/json").body)
        return Path(doc["GraphDriver"]["Data"]["UpperDir"])

    def perform(self, op: Op) -> int | str:
        a = dict(op.args)
        container, image = a.get("container") or "app", a.get("image") or "image"
        if op.kind == "pull":
            return self.ops.pull(image)
        if op.kind == "run":
            return self.ops.run(container, image)
        if op.kind == "start":
            return self.ops.start(container)
        if op.kind == "commit":
            return self.ops.commit(container, a["image"])
        if op.kind == "rm-container":
            return self.ops.rm_container(container)
        if op.kind == "rmi":
            return self.ops.rmi(image)
        if op.kind == "tag":
            return self.ops.tag(image, a["tag"])
        if op.kind == "sync":
            subprocess.run(["sync"], check=False)
            return 0
        return self.file_op(op)

    def file_op(self, op: Op) -> int | str:
        """A file op inside a container, on its real overlay mount, confined to it."""
        paths = [v for k, v in op.args if k in ("path", "src", "dst")]
        names = {p.split("/")[1] for p in paths if p.startswith(CONTAINERS_VIEW + "/") and p.count("/") >= 2}
        if len(names) != 1 or len(names) != len({p.split("/")[1] for p in paths}):
            return "EPERM"  # outside a container, or across two
        merged = self.daemon.merged(names.pop())
        if merged is None:
            return "ENOENT"
        inside = tuple((k, v.split("/", 2)[2] if k in ("path", "src", "dst") else v) for k, v in op.args)
        return run_op(merged, dataclasses.replace(op, args=inside), self.shim)

    def traced(self, op: Op) -> tuple[int | str, list[Step]]:
        """Perform a daemon op with strace on every thread of dockerd: its result and
        the steps it made on the data root."""
        result, pairs = self.traced_calls(op)
        return result, [step for step, _ in pairs]

    def traced_calls(self, op: Op) -> tuple[int | str, list[tuple[Step, str]]]:
        """As `traced`, each step with the system call it came from."""
        existing = tree_paths(self.daemon.data)
        log = self.ws.path(f"op{op.index}.strace")
        cmd = ["strace", "-f", "-qq", "-y", "-s", "65536", "-o", str(log), "-e", f"trace={STRACE_SET}",
               "-p", str(self.daemon.pid)]
        tracer = self.ws.spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._attached(tracer)
        try:
            result = self.perform(op)
            time.sleep(SETTLE)
        finally:
            self.ws.end(tracer, signal.SIGINT)
        calls = parse(log.read_text(errors="surrogateescape"))
        pairs = Recorder(str(self.daemon.data), existing).steps(calls)
        return result, [(step, call_text(call, str(self.daemon.data))) for step, call in pairs]

    def _attached(self, tracer: subprocess.Popen[bytes]) -> None:
        assert tracer.stderr is not None
        deadline = time.monotonic() + ATTACH_WAIT
        # strace -qq says nothing on attach: wait until it traces the process
        while time.monotonic() < deadline:
            if tracer.poll() is not None:
                raise DaemonConformUnavailable("strace could not attach to dockerd")
            try:
                status = Path(f"/proc/{self.daemon.pid}/status").read_text()
            except OSError:
                break
            traced_by = [ln.split()[1] for ln in status.splitlines() if ln.startswith("TracerPid")]
            if traced_by == [str(tracer.pid)]:
                time.sleep(0.1)  # the other threads are attached right after the first
                return
            time.sleep(0.01)
        raise DaemonConformUnavailable("strace did not attach to dockerd in time")

    def crash(self) -> None:
        self.daemon.kill()
        reason = self.daemon.start_refused()
        if reason is not None:
            raise DockerdUnavailable(f"dockerd did not start again after the crash: {reason}")


def call_text(call: Call, root: str) -> str:
    """A traced call as a report shows it: its name and arguments, the data root left
    out of paths, long data cut."""
    args = []
    for arg in call.args:
        arg = re.sub(r"<[^<>]*>", "", arg) if arg.startswith(("AT_FDCWD<", "-100<")) else arg
        arg = arg.replace(root + "/", "").replace(root, ".")
        args.append(arg if len(arg) <= 100 else arg[:96] + '..."')
    return f"{call.name}({', '.join(args)})"


#: what dockerd writes that is not storage: libnetwork's bolt database (left out of the
#: comparison; README "Fidelity")
OUT_OF_SCOPE = ("network/",)


def kernel_made(event: tuple[str, ...]) -> bool:
    """A model step the kernel makes, not dockerd: in an overlay work dir (`work/work`
    at mount time, a copy-up's temp entry and its rename into the upper dir)."""
    kind, *paths = event
    return bool(paths) and kind != "rmdir" and kind != "unlink" and "/work/work" in paths[0]


def _model_events(trace: Trace, record: OpRecord, containers: tuple[str, ...]) -> list[str]:
    events: list[tuple[str, ...]] = []
    for i in range(record.first_step, record.end_step):
        events.extend(e for e in durable(trace.steps[i], trace.states[i]) if not kernel_made(e))
    return unordered_removals([event_text(e, containers) for e in events])


def _real_events(steps: list[Step], containers: tuple[str, ...]) -> list[str]:
    events: list[tuple[str, ...]] = []
    for step in steps:
        events.extend(e for e in durable(step) if not (len(e) > 1 and e[1].startswith(OUT_OF_SCOPE)))
    return unordered_removals([event_text(e, containers) for e in events])


def runs_on_dockerd(spec: Spec) -> bool:
    """Whether the spec's driver models dockerd's store (a DockerMount, or a variant)."""
    driver = drivers().get(spec.driver)
    return driver is not None and issubclass(driver.MOUNT, DockerMount)


def conform_dockerd(spec: Spec, progress: Callable[[str], None] | None = None) -> list[DaemonOpConformance]:
    """Run the spec on dockerd and compare each op with the model."""
    if not runs_on_dockerd(spec):
        raise DaemonConformUnavailable(f"{spec.file}: dockerd runs docker-overlay2 specs, not {spec.driver}")
    reason = unavailable_reason() or sandbox.unavailable_reason()
    if reason is not None:
        raise DaemonConformUnavailable(reason)
    trace = build_trace(spec)
    out: list[DaemonOpConformance] = []
    with kernel.workspace("dockerd") as ws:
        session = DockerdSession(ws, spec, trace)
        session.start()
        try:
            for record in trace.ops:
                if progress:
                    progress(f"{spec.file}: op {record.index} `{record.text}` on dockerd")
                daemon_op = record.op.kind in DAEMON_OPS
                if daemon_op:
                    result, steps = session.traced(record.op)
                    observed = _real_events(steps, session.containers)
                else:
                    result, observed = session.perform(record.op), []
                model_events = _model_events(trace, record, session.containers) if daemon_op else []
                out.append(_judge(record.index, record.text, model_events, observed, record.result, result,
                                  daemon_op, session, record.after, trace))
            if spec.crash_index is not None:
                out.extend(_after_crash(spec, trace, session))
        finally:
            session.daemon.stop()
    return out


def _judge(index: int, text: str, model_events: list[str], observed: list[str], model_result: int | str,
           real_result: int | str, compared: bool, session: DockerdSession, expected: Dir,
           trace: Trace) -> DaemonOpConformance:
    store = read_store(session.daemon.data)
    mount = trace.mount
    assert isinstance(mount, DockerMount)
    real_view = mount.view(store)
    problems = [f"{p}: {what}" for p, what in mount.store_problems(store)]
    return DaemonOpConformance(index, text, model_events, observed, model_result, real_result, compared,
                               real_view.digest == expected.digest, problems)


def _after_crash(spec: Spec, trace: Trace, session: DockerdSession) -> list[DaemonOpConformance]:
    """dockerd killed after the ops before the crash op, started again, then the later
    ops; each compared (result and view) with the model's continuation after them."""
    session.crash()
    after = AfterCrash(trace)
    reference = after.reference(len(trace.ops))
    out = []
    for j, op in enumerate(spec.after_crash):
        result = session.perform(op)
        last = j == len(spec.after_crash) - 1
        store = read_store(session.daemon.data)
        mount = trace.mount
        assert isinstance(mount, DockerMount)
        view_ok = not last or mount.view(store).digest == reference.view.digest
        expected = reference.results[j]
        out.append(DaemonOpConformance(op.index, op.text, [], [], expected, result, False, view_ok))
    return out


def real_view_lines(view: Dir) -> list[str]:
    return views.render(view, "       ")


__all__ = ["CRASH_OP", "DaemonConformUnavailable", "DaemonOpConformance", "comparable", "conform_dockerd"]
