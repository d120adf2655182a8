"""Enumerating crash states, recovering each, and checking the invariants.

Each crash state is checked by `check_crash_state(unit)`: a `CrashUnit` (spec,
persistence model, crash state) is a small picklable value, and a unit's result depends
on nothing else, so units can be spread over processes or machines. In one process the
`Context` of a spec (its trace and caches) is built once and reused.

Crash states are deduplicated by the fingerprint of the backing tree: recovery and the
view are computed once per distinct tree, and the invariants once per (tree, op).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from checker.invariants import CrashContext, Finding, Invariant, selected
from checker.persistence import MODELS, CrashState, Persistence
from checker.spec import Spec
from checker.trace import Trace, build_trace
from models.driver import Driver, Recovery
from models.tree import Dir


@dataclass(frozen=True)
class Violation:
    invariant: str
    op: int
    op_text: str
    crash_after_step: int
    message: str
    paths: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "invariant": self.invariant,
            "op": self.op,
            "op_text": self.op_text,
            "crash_after_step": self.crash_after_step,
            "message": self.message,
            "paths": list(self.paths),
        }


@dataclass(frozen=True)
class CrashUnit:
    """One crash state of one spec under one persistence model: a unit of work."""

    spec: Spec
    persistence: str
    crash: CrashState


@dataclass
class Context:
    """A spec's trace and the caches shared by the crash states of one run."""

    spec: Spec
    persistence: Persistence
    trace: Trace
    invariants: list[Invariant]
    recoveries: dict[bytes, tuple[Recovery, Dir | None]] = field(default_factory=dict)
    recover_memo: dict[bytes, Recovery] = field(default_factory=dict)
    findings: dict[tuple[bytes, int], list[tuple[str, Finding]]] = field(default_factory=dict)

    @classmethod
    def build(cls, spec: Spec, persistence: str, driver: Driver | None = None) -> Context:
        trace = build_trace(spec, driver)
        return cls(spec, MODELS[persistence], trace, selected(spec))

    def recover(self, root: Dir) -> Recovery:
        """The driver's recovery, once per distinct tree."""
        hit = self.recover_memo.get(root.digest)
        if hit is None:
            hit = self.recover_memo[root.digest] = self.trace.driver.recover(root)
        return hit

    def recovered(self, root: Dir) -> tuple[Recovery, Dir | None]:
        hit = self.recoveries.get(root.digest)
        if hit is None:
            rec = self.recover(root)
            view = self.trace.driver.view(rec.root) if rec.root is not None else None
            hit = self.recoveries[root.digest] = (rec, view)
        return hit

    def evaluate(self, root: Dir, op_index: int) -> list[tuple[str, Finding]]:
        key = (root.digest, op_index)
        hit = self.findings.get(key)
        if hit is not None:
            return hit
        rec, view = self.recovered(root)
        ctx = CrashContext(
            self.trace, self.trace.op_record(op_index), rec, view, self.trace.driver, self.recover
        )
        out = [
            (inv.name, f) for inv in self.invariants if not inv.trace_level for f in inv.check(ctx)
        ]
        self.findings[key] = out
        return out


_CONTEXTS: dict[tuple[str, str], Context] = {}


def context_for(spec: Spec, persistence: str) -> Context:
    key = (spec.fingerprint(), persistence)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        _CONTEXTS.clear()  # one spec at a time: keep memory flat over a long suite
        ctx = _CONTEXTS[key] = Context.build(spec, persistence)
    return ctx


def check_crash_state(unit: CrashUnit) -> list[Violation]:
    """Check one crash state; independent of every other unit."""
    ctx = context_for(unit.spec, unit.persistence)
    return violations_at(ctx, unit.crash)


def violations_at(ctx: Context, crash: CrashState) -> list[Violation]:
    root = ctx.persistence.materialize(ctx.trace, crash)
    op = ctx.persistence.op_in_flight(ctx.trace, crash)
    record = ctx.trace.op_record(op) if ctx.trace.ops else None
    if record is None:
        return []
    return [
        Violation(name, op, record.text, crash.crash_after_step, f.message, f.paths)
        for name, f in ctx.evaluate(root, op)
    ]


@dataclass
class Exploration:
    crash_states: int
    unique_states: int
    violations: list[Violation]


def explore(ctx: Context, only: CrashState | None = None) -> Exploration:
    """Check every crash state (or just `only`) plus the trace-level invariants."""
    violations: list[Violation] = []
    for inv in ctx.invariants:
        if inv.trace_level:
            for step, f in inv.check_trace(ctx.trace):
                op = ctx.trace.step_op[step]
                violations.append(
                    Violation(inv.name, op, ctx.trace.ops[op].text, step + 1, f.message, f.paths)
                )
    seen: set[bytes] = set()
    count = 0
    states = [only] if only is not None else ctx.persistence.crash_states(ctx.trace)
    for crash in states:
        count += 1
        seen.add(ctx.persistence.materialize(ctx.trace, crash).digest)
        violations.extend(violations_at(ctx, crash))
    violations.sort(key=lambda v: (v.crash_after_step, v.op, v.invariant))
    return Exploration(count, len(seen), violations)
