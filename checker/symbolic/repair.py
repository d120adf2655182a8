"""Fix suggestion (`--suggest-fix`): the fewest fsyncs that remove every violation.

A candidate is "fsync P after step k", for each path P that step k leaves in place. With
it, the persistence model gains the fsync's constraint: the steps on P's inode up to step
k persist before every step after it. The search is counterexample-guided:

1. z3 Optimize picks the smallest set of candidates that excludes every counterexample
   found so far (a counterexample is excluded by a candidate when it kept some step after
   k but not all of the steps the fsync would have made durable);
2. the spec is checked with those fsyncs inserted into the trace; a new violating crash
   state is a new counterexample, and the loop goes on;
3. no counterexample left that a candidate excludes: the set is a minimum fix. A crash
   state no candidate excludes violates in program order too (the workload itself, as
   under `prefix`): no fsync removes it, and the result says how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from checker.engine.budget import Budget
from checker.engine.explorer import UNLIMITED, Context, explore
from checker.engine.persistence import CrashState, step_facts
from checker.engine.trace import OpRecord, SyscallRecord, Trace, TraceStep
from models.steps import Fsync

MAX_ROUNDS = 200  # counterexamples before the search gives up


@dataclass(frozen=True)
class FsyncFix:
    after_step: int  # 1-based: the fsync goes right after this step
    path: str

    def to_json(self) -> dict[str, object]:
        return {"after_step": self.after_step, "path": self.path}

    def describe(self, trace: Trace) -> str:
        return f"fsync {self.path} after step {self.after_step} ({trace.steps[self.after_step - 1]})"


@dataclass
class FixResult:
    fix: list[FsyncFix] | None  # None: the search did not finish
    rounds: int
    why: str = ""
    inherent: int = 0  # crash states that violate in program order too (no fsync helps)


def with_fsyncs(trace: Trace, fix: list[FsyncFix]) -> Trace:
    """The trace with Fsync steps inserted after the chosen steps (as if the driver had
    issued them); steps keep their op and system call."""
    after: dict[int, list[str]] = {}
    for f in fix:
        after.setdefault(f.after_step - 1, []).append(f.path)
    records: list[TraceStep] = []
    index: dict[int, int] = {}  # old step -> new position
    for i, record in enumerate(trace.records):
        index[i] = len(records)
        records.append(record)
        for path in after.get(i, []):
            records.append(replace(record, step=Fsync(path)))  # the tree after it is unchanged

    def moved(first: int) -> int:
        return index[first] if first in index else len(records)

    ops = []
    for op in trace.ops:
        calls = [
            SyscallRecord(c.index, c.call, c.result, moved(c.first_step), moved(c.end_step))
            for c in op.syscalls
        ]
        ops.append(
            replace(
                op, syscalls=calls, first_step=moved(op.first_step), end_step=moved(op.end_step), cache={}
            )
        )
    return Trace(trace.spec, trace.mount, trace.initial, records, ops)


def candidates(trace: Trace) -> list[FsyncFix]:
    facts = step_facts(trace)
    out = []
    for i, written in enumerate(facts.written):
        for path in sorted(written):
            out.append(FsyncFix(i + 1, path))
    return out


def excludes(
    trace: Trace,
    cand: FsyncFix,
    inode: int,
    crash: CrashState,
    pieces: list[int],
    touches: list[frozenset[int]],
) -> bool:
    """Does fsyncing `cand` rule out `crash` (a state of the original trace)?"""
    k = cand.after_step
    if crash.crash_after_step <= k:
        return False  # nothing after the fsync persisted
    return any(inode in touches[j] and crash.amount(j, pieces[j]) < pieces[j] for j in range(k))


def suggest_fix(ctx: Context, budget: Budget) -> FixResult:
    import z3  # imported when needed: the CLI starts fast and without it

    trace = ctx.trace
    facts = step_facts(trace)
    cands = candidates(trace)
    inodes = [facts.written[c.after_step - 1][c.path] for c in cands]
    pieces = ctx.constraints.pieces
    sel = [z3.Bool(f"fsync{i}") for i in range(len(cands))]
    opt = z3.Optimize()
    opt.minimize(z3.Sum([z3.If(s, 1, 0) for s in sel]) if sel else z3.IntVal(0))
    chosen: list[FsyncFix] = []
    learned: set[CrashState] = set()
    for rounds in range(1, MAX_ROUNDS + 1):
        fixed_trace = with_fsyncs(trace, chosen)
        fixed = Context(
            ctx.spec,
            ctx.persistence,
            fixed_trace,
            ctx.invariants,
            ctx.persistence.constraints(fixed_trace, ctx.block_size),
            ctx.block_size,
        )
        found = explore(fixed, budget=budget)
        if found.bounded:
            return FixResult(None, rounds, f"the re-check did not finish ({found.why})")
        inherent = 0
        new_clauses = 0
        for crash in dict.fromkeys(v.crash for v in found.violations if v.invariant != "lower-immutable"):
            state = _original_state(trace, chosen, crash, fixed.constraints.pieces, pieces)
            hit = [
                sel[i]
                for i, c in enumerate(cands)
                if excludes(trace, c, inodes[i], state, pieces, facts.touches)
            ]
            if not hit:
                inherent += 1  # kept in program order too: no fsync can remove it
            elif state not in learned:
                learned.add(state)
                opt.add(z3.Or(*hit))
                new_clauses += 1
        if new_clauses == 0:
            why = (
                f"{inherent} crash state(s) violate in program order too: no fsync removes them"
                if inherent
                else ""
            )
            return FixResult(chosen, rounds, why, inherent)
        if opt.check() != z3.sat:
            return FixResult(None, rounds, "the solver found no fix")
        model = opt.model()
        chosen = [c for i, c in enumerate(cands) if z3.is_true(model.eval(sel[i], model_completion=True))]
    return FixResult(None, MAX_ROUNDS, f"no fix within {MAX_ROUNDS} rounds")


def _original_state(
    trace: Trace, fix: list[FsyncFix], crash: CrashState, new_pieces: list[int], pieces: list[int]
) -> CrashState:
    """A crash state of the trace with `fix` inserted, as a state of the original trace."""
    inserted: set[int] = set()
    position = 0
    after: dict[int, int] = {}
    for f in fix:
        after[f.after_step - 1] = after.get(f.after_step - 1, 0) + 1
    for i in range(len(trace.steps)):
        position += 1
        for _ in range(after.get(i, 0)):
            inserted.add(position)
            position += 1
    amounts = [crash.amount(j, new_pieces[j]) for j in range(len(new_pieces)) if j not in inserted]
    last = max((i + 1 for i, a in enumerate(amounts) if a), default=0)
    return CrashState(last, tuple(amounts[:last]))


def recheck(ctx: Context, fix: list[FsyncFix], budget: Budget = UNLIMITED) -> list[object]:
    """Violations left once the fix is applied (empty: the fix works)."""
    trace = with_fsyncs(ctx.trace, fix)
    fixed = Context(
        ctx.spec,
        ctx.persistence,
        trace,
        ctx.invariants,
        ctx.persistence.constraints(trace, ctx.block_size),
        ctx.block_size,
    )
    return [v for v in explore(fixed, budget=budget).violations if v.invariant != "lower-immutable"]


__all__ = ["FixResult", "FsyncFix", "OpRecord", "recheck", "suggest_fix", "with_fsyncs"]
