"""Checking one spec: trace, crash states, invariants, verdict."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from checker.engine.budget import Budget, BudgetExceeded, Meter, metered, size_text
from checker.engine.explorer import UNLIMITED, Context, Violation, clear_contexts, explore
from checker.engine.invariants import selected
from checker.engine.persistence import MODELS, CrashState, count_ideals, parse_persisted
from checker.engine.trace import Trace
from checker.errors import UsageError
from models.driver import Driver
from models.tree import FsError

if TYPE_CHECKING:
    from checker.spec import Spec


class Verdict:
    """What every kind of result says about its spec's expectation."""

    spec: Spec
    verdict: str
    violations: Sequence[Any]

    @property
    def expected(self) -> str:
        return self.spec.expected

    @property
    def violated(self) -> list[str]:
        return sorted({v.invariant for v in self.violations})

    @property
    def ok(self) -> bool:
        """The spec meets its expectation: same verdict, every expected invariant, and
        every op that declares `expect_error` failed with exactly that errno."""
        if self.verdict != self.expected or self.mismatched_ops:
            return False
        wanted = self.spec.expect.invariants if self.spec.expect else ()
        return set(wanted) <= set(self.violated)

    @property
    def op_records(self) -> Sequence[Any]:
        """The ops as the model ran them (`checker.engine.trace.OpRecord`), if known."""
        return ()

    def op_results(self) -> list[tuple[Any, int | str]]:
        """(spec op, what it returned) for every op the model ran: the ops of the trace,
        then a `crash` op and the ops after it (as they return without the crash)."""
        return [(r.op, r.result) for r in self.op_records] + list(self.later_results)

    @property
    def mismatched_ops(self) -> list[tuple[Any, int | str]]:
        """Ops with an `expect_error` that returned something else."""
        return [(op, res) for op, res in self.op_results() if op.expect_error and res != op.expect_error]

    @property
    def failed_ops(self) -> list[tuple[Any, int | str]]:
        """Ops that failed although the spec does not say they should (a warning)."""
        return [(op, res) for op, res in self.op_results() if not op.expect_error and res != 0]

    @property
    def later_results(self) -> Sequence[tuple[Any, int | str]]:
        """(op, result) of the `crash` op and the ops after it, in a run without the crash."""
        return ()

    def ops_json(self) -> list[dict[str, object]]:
        out = []
        for op, result in self.op_results():
            doc: dict[str, object] = {"op": op.index, "op_text": op.text, "result": result}
            if op.expect_error:
                doc["expect_error"] = op.expect_error
            out.append(doc)
        return out


@dataclass(frozen=True)
class Result(Verdict):
    """What checking one spec found, with the evidence its report shows. Immutable: a
    step that adds to it (kernel confirmations, a fix) makes a new one."""

    spec: Spec
    persistence: str
    verdict: str  # "pass" | "violation"
    steps: int
    crash_states: int
    unique_states: int
    violations: list[Violation]
    seconds: float
    trace: Trace | None  # None when a budget ran out before the trace was built
    invariants: tuple[str, ...]
    only_crash: int | None = None
    engine: str = "enumerate"
    bounded: bool = False
    why: str = ""
    context: Context | None = None
    confirmations: list[Any] | None = None  # one checker.real.confirm.Confirmation per violation
    fix: list[Any] | None = None  # fsync insertions (symbolic.repair.Fsync) removing every violation
    counts: dict[tuple[int, str], int] | None = None  # (op, invariant) -> violating crash states
    later: tuple[int | str, ...] = ()  # results of the ops after a `crash` op, without the crash

    @property
    def later_results(self) -> Sequence[tuple[Any, int | str]]:
        k = self.spec.crash_index
        if k is None or len(self.later) != len(self.spec.after_crash):
            return ()  # no crash op, or the check stopped before the later ops ran
        return [(self.spec.ops[k], 0)] + list(zip(self.spec.after_crash, self.later, strict=True))

    @property
    def op_records(self) -> Sequence[Any]:
        return self.trace.ops if self.trace is not None else ()

    @property
    def omitted(self) -> int:
        """Violations counted but not kept (explorer.MAX_KEPT per op and invariant)."""
        return sum(self.counts.values()) - len(self.violations) if self.counts else 0

    def count(self, op: int, invariant: str) -> int:
        """How many crash states violate `invariant` in `op` (kept or not)."""
        if self.counts and (op, invariant) in self.counts:
            return self.counts[(op, invariant)]
        return sum(1 for v in self.violations if v.op == op and v.invariant == invariant)

    @cached_property
    def accounting(self) -> dict[str, Any] | None:
        """The driver's figures for this workload (storage before and after a squash)."""
        return self.trace.mount.accounting(self.trace) if self.trace is not None else None

    def to_json(self, violations: bool = True) -> dict[str, object]:
        """The contract shape of DESIGN section 7 (no timings: output is reproducible);
        without `violations`, the list is left for `violations_json` to stream."""
        extra: dict[str, object] = {}
        if self.verdict == "unknown" or self.bounded:
            extra["reason"] = self.why
        if self.omitted:
            extra["violations_omitted"] = self.omitted
        if self.fix is not None:
            extra["fix"] = [f.to_json() for f in self.fix]
        if self.accounting is not None:
            extra["accounting"] = self.accounting
        return {
            "file": self.spec.file,
            "name": self.spec.name,
            "driver": self.spec.driver,
            "persistence": self.persistence,
            "verdict": self.verdict,
            "expected": self.expected,
            "ok": self.ok,
            "steps": self.steps,
            "crash_states": self.crash_states,
            "unique_states": self.unique_states,
            "engine": self.engine,
            "bounded": self.bounded,
            "invariants": list(self.invariants),
            "ops": self.ops_json(),
            "violations": list(self.violations_json()) if violations else VIOLATIONS_STREAMED,
        } | extra

    def violations_json(self) -> Iterator[dict[str, object]]:
        for i, v in enumerate(self.violations):
            doc = v.to_json()
            if self.confirmations is not None:
                doc["confirmation"] = self.confirmations[i].to_json()
            yield doc


ENGINES = ("auto", "enumerate", "symbolic")
VIOLATIONS_STREAMED = "\0violations\0"  # stands for the list in a document written piece by piece


def check(
    spec: Spec, persistence: str | None = None, crash_after: int | None = None,
    driver: Driver | None = None, *, engine: str = "auto", block_size: int | None = None,
    budget: Budget = UNLIMITED, persisted: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Check a spec under its persistence model (or `persistence`): every crash state, or
    only the one after step `crash_after` (prefix) or the one `persisted` names. `driver`
    replaces the spec's driver model with an instance (a variant under test)."""
    started = time.perf_counter()
    model = persistence or spec.persistence
    if model not in MODELS:
        raise UsageError(f"unknown persistence model {model!r} (known: {', '.join(MODELS)})")
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    with metered(budget) as meter:
        try:
            return _check(spec, model, crash_after, driver, engine, block_size, budget, persisted,
                          progress, meter)
        except BudgetExceeded as e:
            why = str(e)
        except MemoryError:
            why = f"stopped at --max-memory {size_text(budget.max_memory or 0)}: an allocation failed"
        except RecursionError:
            why = "stopped: the trees nest too deeply for this checker (Python's recursion limit)"
        except FsError as e:  # a step that cannot be replayed in a crash state: a model gap
            why = f"internal error: a step cannot be replayed in a crash state ({e}); please report this spec"
    clear_contexts()
    return Result(
        spec=spec, persistence=model, verdict="unknown", steps=0, crash_states=0, unique_states=0,
        violations=[], seconds=time.perf_counter() - started, trace=None,
        invariants=tuple(inv.name for inv in selected(spec)), only_crash=crash_after,
        engine=engine, bounded=True, why=why,
    )


def _check(
    spec: Spec, model: str, crash_after: int | None, driver: Driver | None, engine: str,
    block_size: int | None, budget: Budget, persisted: str | None,
    progress: Callable[[str], None] | None, meter: Meter,
) -> Result:
    ctx = Context.build(spec, model, driver, block_size)
    n = len(ctx.trace.steps)
    only = None
    if crash_after is not None:
        if not 0 <= crash_after <= n:
            raise UsageError(f"{spec.file}: --crash-after {crash_after} is outside 0..{n}")
        only = CrashState(crash_after)
        if model != "prefix":
            only = CrashState(crash_after, tuple(ctx.constraints.pieces[:crash_after]))
    if persisted is not None:
        only = _parse_persisted(spec, ctx, persisted)
    chosen, limited, note = choose_engine(ctx, engine, budget) if only is None else ("enumerate", budget, "")
    if chosen == "symbolic":
        from checker.symbolic.encoding import solve

        found = solve(ctx, budget)
    else:
        found = explore(ctx, only, limited, progress, meter)
        if note and found.bounded and found.why.startswith("stopped at --max-states"):
            found = replace(found, why=note)
    if found.violations:
        verdict = "violation"
    elif found.bounded:
        verdict = "unknown"
    else:
        verdict = "pass"
    later = ctx.after_crash.reference(len(ctx.trace.ops)).results if ctx.after_crash is not None else ()
    ctx.drop_caches()  # a long suite keeps every result: keep only what reports need
    return Result(
        spec=spec,
        persistence=model,
        verdict=verdict,
        steps=n,
        crash_states=found.crash_states,
        unique_states=found.unique_states,
        violations=found.violations,
        seconds=meter.seconds(),
        trace=ctx.trace,
        invariants=tuple(inv.name for inv in ctx.invariants),
        only_crash=crash_after,
        engine=chosen,
        bounded=found.bounded,
        why=found.why,
        context=ctx,
        counts=found.counts,
        later=later,
    )


def _parse_persisted(spec: Spec, ctx: Context, text: str) -> CrashState:
    n = len(ctx.trace.steps)
    try:
        crash = parse_persisted(text, n, ctx.constraints.pieces)
    except (ValueError, IndexError):
        raise UsageError(
            f"{spec.file}: --persisted {text!r}: list steps 1..{n} as 1-5,7 or 8:2 (blocks)"
        ) from None
    if not ctx.constraints.allows(crash):
        raise UsageError(
            f"{spec.file}: --persisted {text!r} is not a crash state of {ctx.persistence.name} "
            "persistence (a step persisted without one it depends on)"
        )
    return crash


AUTO_LIMIT = 20_000  # crash states enumeration handles quickly; more go to the symbolic engine


def choose_engine(ctx: Context, engine: str, budget: Budget) -> tuple[str, Budget, str]:
    """`auto`: enumerate unless there are more crash states than enumeration handles well
    (or than the budget allows); then the symbolic engine decides, or, where it cannot,
    enumeration of the first AUTO_LIMIT crash states (an unfinished search is `unknown`).
    Returns (engine, the budget to enumerate with, why that budget when auto set it)."""
    if engine != "auto" or ctx.persistence.name == "prefix":
        return engine if engine != "auto" else "enumerate", budget, ""
    limit = min(AUTO_LIMIT, budget.max_states or AUTO_LIMIT)
    if count_ideals(ctx.constraints, limit + 1) <= limit:
        return "enumerate", budget, ""
    from checker.symbolic.encoding import unsupported

    reason = unsupported(ctx)
    if reason is None:
        return "symbolic", budget, ""
    if budget.max_states is not None:
        return "enumerate", budget, ""
    note = (
        f"stopped at {AUTO_LIMIT:,} crash states: there are more, and the symbolic engine cannot "
        f"decide this spec ({reason}); --max-states N or --engine enumerate checks further"
    )
    return "enumerate", replace(budget, max_states=AUTO_LIMIT), note
