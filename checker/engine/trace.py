"""Building the trace of a workload: ops -> client programs -> system calls -> steps.

The trace keeps every primitive step tagged with its op and system call, the backing
tree after every step (shared structure makes that cheap), and for each op the view
before and after it. Building a trace is deterministic: the same spec gives the same
steps in the same order.
"""

from __future__ import annotations

import errno as errno_module
from collections.abc import Callable
from dataclasses import dataclass, field

from checker.engine.budget import checkpoint
from checker.errors import CrashcheckError
from checker.spec import Op, Spec
from models import clients, drivers
from models.clients import Client
from models.driver import Driver, Syscall, SysResult
from models.steps import Step, StepLog
from models.tree import Dir, FsError

MAX_SYSCALLS_PER_OP = 100_000  # a client program this long is a runaway, not a workload


def errno_name(code: int) -> int | str:
    """0 for success, else the errno's name ('ENOENT'), as specs and JSON spell it."""
    if code == 0:
        return 0
    return errno_module.errorcode.get(code, str(code))


@dataclass
class SyscallRecord:
    index: int  # position within its op
    call: Syscall
    result: SysResult
    first_step: int  # steps [first_step, end_step) belong to this call
    end_step: int


@dataclass
class OpRecord:
    op: Op
    syscalls: list[SyscallRecord]
    first_step: int
    end_step: int
    errno: int  # what the client program failed with (0: success)
    before: Dir  # the view before the op
    after: Dir  # the view after it
    cache: dict[str, object] = field(default_factory=dict)

    @property
    def index(self) -> int:
        return self.op.index

    @property
    def result(self) -> int | str:
        """What the op returned: 0, or the name of the errno it failed with."""
        return errno_name(self.errno)

    @property
    def as_expected(self) -> bool:
        """The op returned what the spec says (`expect_error`, or success)."""
        return self.result == (self.op.expect_error or 0)

    @property
    def text(self) -> str:
        return self.op.text


@dataclass
class Trace:
    spec: Spec
    driver: Driver
    initial: Dir
    steps: list[Step]
    step_op: list[int]
    step_call: list[int]
    states: list[Dir]  # states[k]: the backing tree after the first k steps
    ops: list[OpRecord]
    cache: dict[str, object] = field(default_factory=dict)  # indexes the invariants derive

    def op_record(self, index: int) -> OpRecord:
        return self.ops[index]

    def op_at_step(self, k: int) -> int:
        """The op in flight when exactly the first k steps have persisted."""
        if not self.steps:
            return 0
        return self.step_op[k - 1] if k > 0 else self.step_op[0]

    def call_of_step(self, i: int) -> SyscallRecord:
        return self.ops[self.step_op[i]].syscalls[self.step_call[i]]


def client_for(op: Op, driver: Driver | None = None) -> Client:
    """The client program that performs one spec op."""
    a = dict(op.args)
    if driver is not None and op.kind in driver.EXTRA_OPS:
        made = driver.client(op.kind, a)
        if made is None:
            raise CrashcheckError(f"driver {driver.name} has no client for op {op.kind}")
        return made  # type: ignore[no-any-return]
    enc: Callable[[str], bytes] = str.encode
    match op.kind:
        case "create":
            data = a.get("data")
            return clients.create(a["path"], None if data is None else enc(data), a.get("mode", 0o644))
        case "write" | "append":
            return clients.syscall(Syscall(op.kind, (a["path"], enc(a["data"]))))
        case "truncate":
            return clients.syscall(Syscall("truncate", (a["path"], a["size"])))
        case "mkdir":
            return clients.syscall(Syscall("mkdir", (a["path"], a.get("mode", 0o755))))
        case "rmdir" | "unlink" | "fsync":
            return clients.syscall(Syscall(op.kind, (a["path"],)))
        case "rename" | "link":
            return clients.syscall(Syscall(op.kind, (a["src"], a["dst"])))
        case "symlink":
            return clients.syscall(Syscall("symlink", (a["target"], a["path"])))
        case "chmod":
            return clients.syscall(Syscall("chmod", (a["path"], a["mode"])))
        case "setxattr":
            return clients.syscall(Syscall("setxattr", (a["path"], a["name"], enc(a["value"]))))
        case "sync":
            return clients.syscall(Syscall("sync", ()))
        case "mv":
            return clients.mv(a["src"], a["dst"])
        case "rm":
            return clients.rm(a["path"])
        case "cp":
            return clients.cp(a["src"], a["dst"])
    raise CrashcheckError(f"no client for op {op.kind}")


def _raw_steps(op: Op, log: StepLog, records: list[SyscallRecord], step_op: list[int],
               step_call: list[int]) -> int:
    """`op = "steps"`: apply raw primitive steps; the first that fails ends the op."""
    for step in op.arg("steps"):
        start = len(log.steps)
        try:
            log.do(step)
        except FsError as e:
            records.append(SyscallRecord(len(records), Syscall("step", (str(step),)), SysResult(e.errno),
                                         start, start))
            return e.errno
        records.append(SyscallRecord(len(records), Syscall("step", (str(step),)), SysResult(), start,
                                     len(log.steps)))
        step_op.append(op.index)
        step_call.append(len(records) - 1)
    return 0


def make_driver(spec: Spec) -> Driver:
    return drivers()[spec.driver](spec.options)


def build_trace(spec: Spec, driver: Driver | None = None) -> Trace:
    """Run the workload once on the driver model and record everything."""
    driver = driver or make_driver(spec)
    driver.plan(spec.ops)
    initial = driver.mount(list(spec.layers), spec.upper)
    session = driver.start(initial)
    log = StepLog(initial, driver.device)
    step_op: list[int] = []
    step_call: list[int] = []
    ops: list[OpRecord] = []
    for op in spec.ops:
        before = driver.view(log.root)
        first = len(log.steps)
        records: list[SyscallRecord] = []
        if op.kind == "steps":
            failed = _raw_steps(op, log, records, step_op, step_call)
            ops.append(OpRecord(op, records, first, len(log.steps), failed, before, driver.view(log.root)))
            continue
        gen = client_for(op, driver)
        failed = 0
        try:
            call = next(gen)
            while True:
                checkpoint()
                if len(records) >= MAX_SYSCALLS_PER_OP:
                    raise CrashcheckError(f"op {op.index} ({op.text}) made too many system calls")
                start = len(log.steps)
                result = driver.execute(session, call, log)
                records.append(SyscallRecord(len(records), call, result, start, len(log.steps)))
                step_op.extend([op.index] * (len(log.steps) - start))
                step_call.extend([len(records) - 1] * (len(log.steps) - start))
                call = gen.send(result)
        except StopIteration as stop:
            failed = stop.value or 0
        ops.append(
            OpRecord(op, records, first, len(log.steps), failed, before, driver.view(log.root))
        )
    return Trace(spec, driver, initial, log.steps, step_op, step_call, [initial] + log.states, ops)
