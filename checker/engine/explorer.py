"""Enumerating crash states, recovering each, and checking the invariants.

Each crash state is checked by `check_crash_state(unit)`: a `CrashUnit` (spec,
persistence model, crash state) is a small picklable value, and a unit's result depends
on nothing else, so units can be spread over processes or machines. In one process the
`Context` of a spec (its trace, constraints and caches) is built once and reused.

Crash states are deduplicated by the fingerprint of the backing tree: recovery and the
view are computed once per distinct tree, and the invariants once per (tree, op in
flight, fsyncs that had returned).
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from checker.engine.aftercrash import AfterCrash, Continuation
from checker.engine.budget import Budget, Meter
from checker.engine.invariants import CrashContext, Finding, Invariant, selected
from checker.engine.persistence import DEFAULT_BLOCK_SIZE, MODELS, Constraints, CrashState, Persistence
from checker.engine.trace import Trace, build_trace
from models.clients import SYNC_OPS
from models.driver import Driver, Recovery
from models.tree import Dir, identity

if TYPE_CHECKING:
    from checker.spec import Spec



@dataclass(frozen=True)
class Violation:
    invariant: str
    op: int
    op_text: str
    crash_after_step: int
    message: str
    paths: tuple[str, ...]
    crash: CrashState = field(default=CrashState(0), compare=False)
    persisted: str | None = None  # the --persisted token when the state is not a prefix
    # the evidence a report shows: what recovery did with the crash state, and the view after it
    recovery: Recovery | None = field(default=None, compare=False, repr=False)
    view: Dir | None = field(default=None, compare=False, repr=False)
    crash_op: bool = False  # the spec has a `crash` op: the JSON says which later op broke
    after_crash_op: int | None = None
    later: Continuation | None = field(default=None, compare=False, repr=False)  # what the later ops did

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "invariant": self.invariant,
            "op": self.op,
            "op_text": self.op_text,
            "crash_after_step": self.crash_after_step,
            "message": self.message,
            "paths": list(self.paths),
        }
        if self.persisted is not None:
            doc["persisted"] = self.persisted
        if self.crash_op:
            doc["after_crash_op"] = self.after_crash_op
        return doc


@dataclass(frozen=True)
class CrashUnit:
    """One crash state of one spec under one persistence model: a unit of work."""

    spec: Spec
    persistence: str
    crash: CrashState
    block_size: int = DEFAULT_BLOCK_SIZE


UNLIMITED = Budget()  # no state or time limit; memory within DEFAULT_MAX_MEMORY
CACHE_ENTRIES = 4_096  # recoveries, views and findings remembered before a cache starts over
MAX_KEPT = 10_000  # violations kept per (op, invariant); the rest are counted, not stored


def bounded_put(cache: dict[Any, Any], key: Any, value: Any, size: int = CACHE_ENTRIES) -> None:
    """Remember `value`; a cache of `size` entries starts over first."""
    if len(cache) >= size:
        cache.clear()  # depth-first order keeps neighbours close: a fresh cache refills fast
    cache[key] = value


@dataclass
class Context:
    """A spec's trace, constraints and the caches shared by the crash states of a run."""

    spec: Spec
    persistence: Persistence
    trace: Trace
    invariants: list[Invariant]
    constraints: Constraints
    block_size: int = DEFAULT_BLOCK_SIZE
    recoveries: dict[bytes, tuple[Recovery, Dir | None]] = field(default_factory=dict)
    recover_memo: dict[bytes, Recovery] = field(default_factory=dict)
    findings: dict[tuple[bytes, int, int], list[tuple[str, Finding]]] = field(
        default_factory=dict
    )

    @classmethod
    def build(
        cls, spec: Spec, persistence: str, driver: Driver | None = None, block_size: int | None = None
    ) -> Context:
        trace = build_trace(spec, driver)
        model = MODELS[persistence]
        size = block_size or spec.block_size
        return cls(spec, model, trace, selected(spec), model.constraints(trace, size), size)

    @cached_property
    def prefix_views(self) -> list[Dir]:
        ops = self.trace.ops
        return [ops[0].before] + [op.after for op in ops] if ops else []

    @cached_property
    def after_crash(self) -> AfterCrash | None:
        """The ops after the spec's `crash` op, run on recovered crash states."""
        return AfterCrash(self.trace) if self.spec.crash_index is not None else None

    @cached_property
    def sync_ends(self) -> list[int]:
        """The end step of each fsync/sync op, in op order."""
        return [op.end_step for op in self.trace.ops if op.op.kind in SYNC_OPS]

    def drop_caches(self) -> None:
        """Forget the recoveries, views and findings of the crash states (a finished run
        needs none of them)."""
        self.recoveries.clear()
        self.recover_memo.clear()
        self.findings.clear()

    def recover(self, root: Dir, key: bytes | None = None) -> Recovery:
        """The driver's recovery, once per distinct tree (`key`: its identity, when the
        caller has it)."""
        key = key or identity(root)
        hit = self.recover_memo.get(key)
        if hit is None:
            hit = self.trace.mount.recover(root)
            bounded_put(self.recover_memo, key, hit)
        return hit

    def recovered(self, root: Dir, key: bytes | None = None) -> tuple[Recovery, Dir | None]:
        """The recovery and the view a user sees after it: after a refused mount, the
        view once the remedy is applied (when the driver says what that leaves)."""
        key = key or identity(root)
        hit = self.recoveries.get(key)
        if hit is None:
            rec = self.recover(root, key)
            after = rec.root if rec.root is not None else rec.fallback
            view = self.trace.mount.view(after) if after is not None else None
            hit = (rec, view)
            bounded_put(self.recoveries, key, hit)
        return hit

    def returned_syncs(self, crash: CrashState) -> int:
        """How many fsync/sync ops (the first ones, in op order) had returned before the
        crash: a step issued after them persisted (or the crash kept every step)."""
        n = len(self.trace.steps)
        if crash.crash_after_step == n and all(
            crash.amount(i, self.constraints.pieces[i]) == self.constraints.pieces[i] for i in range(n)
        ):
            return len(self.sync_ends)
        return bisect.bisect_left(self.sync_ends, crash.crash_after_step)

    def evaluate(self, root: Dir, crash: CrashState) -> tuple[int, list[tuple[str, Finding]]]:
        op = self.persistence.op_in_flight(self.trace, crash, self.constraints) if self.trace.ops else 0
        return op, self.assess(root, op, self.returned_syncs(crash), crash.is_prefix)

    def assess(self, root: Dir, op: int, synced: int, prefix: bool = True) -> list[tuple[str, Finding]]:
        """The crash-level findings of backing tree `root` left by a crash during op `op`
        after the first `synced` fsync/sync ops returned."""
        tree = identity(root)
        key = (tree, op, synced)
        hit = self.findings.get(key)
        if hit is not None:
            return hit
        rec, view = self.recovered(root, tree)
        ctx = CrashContext(
            self.trace, self.trace.op_record(op), rec, view, self.trace.mount, self.recover,
            prefix_views=self.prefix_views, generalized=not prefix, returned_syncs=synced,
            after_crash=self.after_crash,
        )
        out = [(inv.name, f) for inv in self.invariants if inv.crash_level for f in inv.check(ctx)]
        bounded_put(self.findings, key, out)
        return out

    def materialize(self, crash: CrashState) -> Dir:
        return self.persistence.materialize(self.trace, crash, self.constraints, self.block_size)


_CONTEXTS: dict[tuple[str, str, int], Context] = {}


def context_for(spec: Spec, persistence: str, block_size: int = DEFAULT_BLOCK_SIZE) -> Context:
    key = (spec.fingerprint(), persistence, block_size)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        _CONTEXTS.clear()  # one spec at a time: keep memory flat over a long suite
        ctx = _CONTEXTS[key] = Context.build(spec, persistence, block_size=block_size)
    return ctx


def clear_contexts() -> None:
    """Forget the cached contexts (after a budget ran out: give the memory back)."""
    _CONTEXTS.clear()


def check_crash_state(unit: CrashUnit) -> list[Violation]:
    """Check one crash state; independent of every other unit."""
    ctx = context_for(unit.spec, unit.persistence, unit.block_size)
    return violations_at(ctx, unit.crash)


def violations_at(ctx: Context, crash: CrashState, root: Dir | None = None) -> list[Violation]:
    if not ctx.trace.ops:
        return []
    root = root if root is not None else ctx.materialize(crash)
    op, found = ctx.evaluate(root, crash)
    if not found:
        return []
    record = ctx.trace.op_record(op)
    token = None if crash.is_prefix else crash.token(ctx.constraints.pieces)
    recovery, view = ctx.recovered(root)
    crash_op = ctx.after_crash is not None
    return [
        Violation(name, op, record.text, crash.crash_after_step, f.message, f.paths, crash, token,
                  recovery, view, crash_op, f.after_crash_op, f.later)
        for name, f in found
    ]


@dataclass
class Exploration:
    crash_states: int
    unique_states: int
    violations: list[Violation]
    bounded: bool = False  # a budget stopped the search before every crash state was seen
    why: str = ""
    counts: dict[tuple[int, str], int] = field(default_factory=dict)  # (op, invariant) -> violations

    @property
    def omitted(self) -> int:
        """Violations counted but not kept (beyond MAX_KEPT per op and invariant)."""
        return sum(self.counts.values()) - len(self.violations) if self.counts else 0


class Findings:
    """The violations of a search: every one counted, MAX_KEPT per (op, invariant) kept
    (the first ones in search order, so the choice is deterministic)."""

    def __init__(self) -> None:
        self.kept: list[Violation] = []
        self.counts: dict[tuple[int, str], int] = {}

    def add(self, found: list[Violation]) -> None:
        for v in found:
            key = (v.op, v.invariant)
            n = self.counts.get(key, 0)
            self.counts[key] = n + 1
            if n < MAX_KEPT:
                self.kept.append(v)


def trace_level_violations(ctx: Context) -> list[Violation]:
    out = []
    for inv in ctx.invariants:
        if inv.trace_level:
            for step, f in inv.check_trace(ctx.trace):
                op = ctx.trace.step_op[step]
                crash = CrashState(step + 1)
                recovery, view = ctx.recovered(ctx.materialize(crash))
                out.append(Violation(inv.name, op, ctx.trace.ops[op].text, step + 1, f.message, f.paths,
                                     crash, None, recovery, view, ctx.after_crash is not None))
    return out


PROGRESS_EVERY = 2_000  # crash states between progress lines on a terminal
POLL_STATES = 64  # crash states between two looks at the time and memory budget


def explore(
    ctx: Context, only: CrashState | None = None, budget: Budget = UNLIMITED,
    progress: Callable[[str], None] | None = None, meter: Meter | None = None,
) -> Exploration:
    """Check every crash state (or just `only`) plus the trace-level invariants, until
    the budget runs out."""
    meter = meter or Meter(budget)
    with _long_lived(ctx.trace):
        return _explore(ctx, only, budget, progress, meter)


FREEZE_STEPS = 500  # traces this long have their objects kept out of the cyclic GC's scans


@contextmanager
def _long_lived(trace: Any) -> Iterator[None]:
    """While the crash states of a long trace are checked, its trees (the trace's
    states, thousands of long-lived objects) are moved out of the cyclic garbage
    collector's generations (`gc.freeze`): every collection otherwise scans them all,
    and the cost per crash state grows with the trace (benchmarks/size_sweep.py, measured
    2026-12-01: 1.5 times the rate at 800 files, 1.3 times at 3,200). Short traces skip
    it: the scans save little there. No collection first: garbage frozen with them is collected
    after `gc.unfreeze`."""
    if len(trace.steps) < FREEZE_STEPS or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        with few_collections():
            yield
    finally:
        gc.unfreeze()


YOUNG_OBJECTS = 200_000  # allocations between two young-generation collections


@contextmanager
def few_collections() -> Iterator[None]:
    """Collections 300 times less often than the default threshold (700 allocations):
    a check allocates many short-lived trees while long-lived ones (kept violations, the
    bounded memos) pile up, and each collection scans those again. Measured 2026-12-01:
    a quarter of an explore unit's time (benchmarks/explore_depth.py), a third of the check
    phase at 3,200 files (benchmarks/size_sweep.py)."""
    old = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _explore(ctx: Context, only: CrashState | None, budget: Budget, progress: Callable[[str], None] | None,
             meter: Meter) -> Exploration:
    findings = Findings()
    findings.add(trace_level_violations(ctx))
    seen: set[int] = set()  # fingerprints of the distinct backing trees, 64 bits each
    count = 0
    bounded, why = False, ""
    if only is not None:
        states = iter([(only, ctx.materialize(only))])
    else:
        states = ctx.persistence.crash_states(ctx.trace, ctx.constraints, ctx.block_size)
    for crash, root in states:
        if budget.max_states is not None and count >= budget.max_states:
            bounded, why = True, f"stopped at --max-states {budget.max_states}"
            break
        if count % POLL_STATES == 0 and (stop := meter.exceeded(count)) is not None:
            bounded, why = True, stop
            break
        count += 1
        seen.add(int.from_bytes(root.digest[:8], "little"))
        findings.add(violations_at(ctx, crash, root))
        if progress is not None and count % PROGRESS_EVERY == 0:
            rate = count / max(meter.seconds(), 1e-9)
            progress(f"{ctx.spec.file}: {count:,} crash states ({len(seen):,} unique), {rate:,.0f}/s, "
                     f"{sum(findings.counts.values())} violations")
    violations = findings.kept
    violations.sort(key=lambda v: (v.crash_after_step, v.persisted or "", v.op, v.invariant))
    return Exploration(count, len(seen), violations, bounded, why, findings.counts)
