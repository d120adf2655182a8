"""Persistence models: which subsets of a trace's steps a crash can leave on disk.

`prefix`: steps persist in order, each atomically; a crash keeps steps 0..k-1 for some
k in 0..n (n + 1 crash states). This is a process crash of a user-space driver or client,
or a strongly ordered file system.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from checker.trace import Trace
from models.tree import Dir


@dataclass(frozen=True)
class CrashState:
    """Which steps survived a crash. Under `prefix` they are exactly the first
    `crash_after_step` steps."""

    crash_after_step: int
    persisted: frozenset[int] | None = None  # None: the prefix 0..crash_after_step-1

    def steps(self) -> frozenset[int]:
        if self.persisted is not None:
            return self.persisted
        return frozenset(range(self.crash_after_step))


class Persistence:
    name = ""
    description = ""

    def crash_states(self, trace: Trace) -> Iterator[CrashState]:
        raise NotImplementedError

    def count(self, trace: Trace) -> int:
        raise NotImplementedError

    def materialize(self, trace: Trace, crash: CrashState) -> Dir:
        raise NotImplementedError

    def op_in_flight(self, trace: Trace, crash: CrashState) -> int:
        return trace.op_at_step(crash.crash_after_step)


class Prefix(Persistence):
    name = "prefix"
    description = "steps persist in order, each atomically (a process crash)"

    def crash_states(self, trace: Trace) -> Iterator[CrashState]:
        for k in range(len(trace.steps) + 1):
            yield CrashState(k)

    def count(self, trace: Trace) -> int:
        return len(trace.steps) + 1

    def materialize(self, trace: Trace, crash: CrashState) -> Dir:
        return trace.states[crash.crash_after_step]


MODELS: dict[str, Persistence] = {m.name: m for m in (Prefix(),)}
