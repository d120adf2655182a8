"""Checking one spec: trace, crash states, invariants, verdict."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from checker.errors import UsageError
from checker.explorer import Context, Violation, explore
from checker.persistence import MODELS, CrashState
from checker.spec import Spec
from checker.trace import Trace
from models.driver import Driver


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
        """The spec meets its expectation: same verdict, and every expected invariant."""
        if self.verdict != self.expected:
            return False
        wanted = self.spec.expect.invariants if self.spec.expect else ()
        return set(wanted) <= set(self.violated)


@dataclass
class Result(Verdict):
    spec: Spec
    persistence: str
    verdict: str  # "pass" | "violation"
    steps: int
    crash_states: int
    unique_states: int
    violations: list[Violation]
    seconds: float
    trace: Trace
    invariants: tuple[str, ...]
    only_crash: int | None = None
    confirmations: list[Any] | None = None  # one checker.confirm.Confirmation per violation

    def to_json(self) -> dict[str, object]:
        """The contract shape of DESIGN section 7 (no timings: output is reproducible)."""
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
            "invariants": list(self.invariants),
            "violations": [self._violation_json(i, v) for i, v in enumerate(self.violations)],
        }

    def _violation_json(self, i: int, v: Violation) -> dict[str, object]:
        doc = v.to_json()
        if self.confirmations is not None:
            doc["confirmation"] = self.confirmations[i].to_json()
        return doc


def check(
    spec: Spec, persistence: str | None = None, crash_after: int | None = None,
    driver: Driver | None = None,
) -> Result:
    """Check a spec under its persistence model (or `persistence`), every crash state or
    only the one after step `crash_after`. `driver` replaces the spec's driver model with
    an instance (a variant under test)."""
    started = time.perf_counter()
    model = persistence or spec.persistence
    if model not in MODELS:
        raise UsageError(f"unknown persistence model {model!r} (known: {', '.join(MODELS)})")
    ctx = Context.build(spec, model, driver)
    only = None
    if crash_after is not None:
        if not 0 <= crash_after <= len(ctx.trace.steps):
            raise UsageError(
                f"{spec.file}: --crash-after {crash_after} is outside 0..{len(ctx.trace.steps)}"
            )
        only = CrashState(crash_after)
    found = explore(ctx, only)
    return Result(
        spec=spec,
        persistence=model,
        verdict="violation" if found.violations else "pass",
        steps=len(ctx.trace.steps),
        crash_states=found.crash_states,
        unique_states=found.unique_states,
        violations=found.violations,
        seconds=time.perf_counter() - started,
        trace=ctx.trace,
        invariants=tuple(inv.name for inv in ctx.invariants),
        only_crash=crash_after,
    )
