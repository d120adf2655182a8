"""Building the trace of a workload: ops -> client programs -> system calls -> steps.

The trace keeps every primitive step tagged with its op and system call, the backing
tree after every step (shared structure makes that cheap), and for each op the view
before and after it. Building a trace is deterministic: the same spec gives the same
steps in the same order.
"""

from __future__ import annotations

import errno as errno_module
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from checker.engine.budget import checkpoint
from checker.errors import CrashcheckError
from models import clients, drivers
from models import syscalls as sc
from models.clients import Client
from models.driver import Driver, Mount
from models.steps import Step, StepLog
from models.tree import Dir, FsError

if TYPE_CHECKING:
    from checker.spec import Op, Spec

MAX_SYSCALLS_PER_OP = 100_000  # a client program this long is a runaway, not a workload


def errno_name(code: int) -> int | str:
    """0 for success, else the errno's name ('ENOENT'), as specs and JSON spell it."""
    if code == 0:
        return 0
    return errno_module.errorcode.get(code, str(code))


@dataclass
class SyscallRecord:
    index: int  # position within its op
    call: sc.Syscall
    result: sc.SysResult
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


@dataclass(frozen=True)
class TraceStep:
    """One primitive step of a trace: the step, the op and system call that made it,
    and the backing tree after it."""

    step: Step
    op: int
    call: int  # index of the system call within its op
    after: Dir


@dataclass
class Trace:
    spec: Spec
    mount: Mount
    initial: Dir
    records: list[TraceStep]
    ops: list[OpRecord]
    cache: dict[str, object] = field(default_factory=dict)  # indexes the invariants derive

    @cached_property
    def steps(self) -> list[Step]:
        return [r.step for r in self.records]

    @cached_property
    def step_op(self) -> list[int]:
        return [r.op for r in self.records]

    @cached_property
    def states(self) -> list[Dir]:
        """states[k]: the backing tree after the first k steps."""
        return [self.initial] + [r.after for r in self.records]

    def op_record(self, index: int) -> OpRecord:
        return self.ops[index]

    def op_at_step(self, k: int) -> int:
        """The op in flight when exactly the first k steps have persisted."""
        if not self.records:
            return 0
        return self.records[k - 1].op if k > 0 else self.records[0].op

    def call_of_step(self, i: int) -> SyscallRecord:
        r = self.records[i]
        return self.ops[r.op].syscalls[r.call]


def client_for(op: Op, driver: Driver) -> Client:
    """The client program that performs one spec op: the driver's own ops through the
    driver, the file-system ops through `models.clients.OP_CLIENTS`."""
    args = dict(op.args)
    if op.kind in driver.EXTRA_OPS:
        made = driver.client(op.kind, args)
        if made is None:
            raise CrashcheckError(f"driver {driver.name} has no client for op {op.kind}")
        return made  # type: ignore[no-any-return]
    client = clients.OP_CLIENTS.get(op.kind)
    if client is None:
        raise CrashcheckError(f"no client for op {op.kind}")
    return clients.as_user(client(args), args.get("user", 0))


def make_driver(spec: Spec) -> Driver:
    return drivers()[spec.driver](spec.options)


class Recorder:
    """Runs the workload's system calls on a mount and records every step."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount
        self.log = StepLog(mount.initial, mount.device)
        self.records: list[TraceStep] = []

    def step(self, op: Op, calls: list[SyscallRecord], step: Step, label: str = "") -> int:
        """Apply one raw step (`op = "steps"`); its errno (0: applied)."""
        start = len(self.log.steps)
        call = sc.RawStep(label or str(step))
        try:
            self.log.do(step)
        except FsError as e:
            calls.append(SyscallRecord(len(calls), call, sc.SysResult(e.errno), start, start))
            return e.errno
        calls.append(SyscallRecord(len(calls), call, sc.SysResult(), start, len(self.log.steps)))
        self._record(op, len(calls) - 1, start)
        return 0

    def call(self, op: Op, calls: list[SyscallRecord], call: sc.Syscall) -> sc.SysResult:
        """Perform one system call of a client program."""
        start = len(self.log.steps)
        result = self.mount.execute(call, self.log)
        calls.append(SyscallRecord(len(calls), call, result, start, len(self.log.steps)))
        self._record(op, len(calls) - 1, start)
        return result

    def _record(self, op: Op, call: int, start: int) -> None:
        for i in range(start, len(self.log.steps)):
            self.records.append(TraceStep(self.log.steps[i], op.index, call, self.log.states[i]))


def run_ops(mount: Mount, ops: list[Op], rec: Recorder) -> list[OpRecord]:
    """Run ops on a mount, recording every step in `rec`."""
    out: list[OpRecord] = []
    for op in ops:
        before = mount.view(rec.log.root)
        first = len(rec.log.steps)
        calls, failed = perform_op(mount, op, rec)
        out.append(OpRecord(op, calls, first, len(rec.log.steps), failed, before, mount.view(rec.log.root)))
    return out


def perform_op(mount: Mount, op: Op, rec: Recorder) -> tuple[list[SyscallRecord], int]:
    """Run one op's client program (or raw steps) on a mount, recording its steps in
    `rec`: its system calls, and the errno it failed with (0: success)."""
    calls: list[SyscallRecord] = []
    failed = 0
    if op.kind == "steps":
        labels = op.arg("calls") or ()  # a recorded op: the system call behind each step
        for i, step in enumerate(op.arg("steps")):
            failed = rec.step(op, calls, step, labels[i] if i < len(labels) else "")
            if failed:
                break  # the first raw step that fails ends the op
        return calls, failed
    gen = client_for(op, mount.driver)
    try:
        call = next(gen)
        while True:
            checkpoint()
            if len(calls) >= MAX_SYSCALLS_PER_OP:
                raise CrashcheckError(f"op {op.index} ({op.text}) made too many system calls")
            call = gen.send(rec.call(op, calls, call))
    except StopIteration as stop:
        failed = stop.value or 0
    return calls, failed


def build_trace(spec: Spec, driver: Driver | None = None) -> Trace:
    """Run the workload once on a fresh mount of the driver and record everything; with
    a `crash` op, the trace is of the ops before it (the ops after it run on each
    recovered crash state: `checker.engine.aftercrash`)."""
    driver = driver or make_driver(spec)
    mount = driver.mount(list(spec.layers), spec.upper, spec.ops)
    rec = Recorder(mount)
    ops = run_ops(mount, spec.before_crash, rec)
    return Trace(spec, mount, mount.initial, rec.records, ops)
