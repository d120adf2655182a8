"""Budgets: every run is bounded in crash states, seconds and memory.

Hitting a budget makes a verdict `unknown` with the reason, never `pass`, never a crash.

- `Budget` says how far a run may go: `--max-states`, `--timeout`, `--max-memory`
  (default DEFAULT_MAX_MEMORY, also for runs through the library).
- While a spec is checked, `metered(budget)` makes that budget the current one; the loops
  that can grow (enumeration, building traces and constraint graphs, encoding for z3)
  call `checkpoint()`, which every few calls compares the resident memory and the time
  with the budget and raises `BudgetExceeded`; the enumerator asks `meter.exceeded()`
  itself so that it can stop cleanly and keep what it found.
- As a backstop the command line caps the address space (RLIMIT_AS) at the budget: an
  allocation no loop saw coming (one huge object) fails with MemoryError, which the
  checker turns into `unknown` as well. Peak memory stays under the budget.
"""

from __future__ import annotations

import contextvars
import os
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from checker.errors import CrashcheckError

GIB = 1 << 30
DEFAULT_MAX_MEMORY = 4 * GIB  # the default --max-memory: room for big runs on a laptop
SOFT_SHARE = 0.85  # stop cleanly at this share of the budget, before the hard cap bites
POLL_EVERY = 256  # checkpoints between two looks at memory and time (each look is a read of /proc)
MIN_MEMORY = 64 << 20  # a budget below this cannot even hold the interpreter
_PAGE = os.sysconf("SC_PAGE_SIZE")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class BudgetExceeded(CrashcheckError):
    """A budget ran out; the message says which and where."""


@dataclass(frozen=True)
class Budget:
    """Limits of one run; hitting one makes a verdict `unknown`, never `pass`."""

    max_states: int | None = None
    timeout: float | None = None  # seconds per spec
    max_memory: int | None = DEFAULT_MAX_MEMORY  # bytes of resident memory


def resident() -> int:
    """Bytes of resident memory of this process (from /proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def size_text(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % (factor // 4) == 0:
            return f"{n / factor:g} {unit}"
    return f"{n} bytes"


def parse_size(text: str) -> int:
    """'4G', '512M', '4GiB', '1073741824' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size (write e.g. 4G, 512M or a number of bytes)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < MIN_MEMORY:
        raise ValueError(f"{text!r} is less than {size_text(MIN_MEMORY)}, too little to run at all")
    return value


class Meter:
    """The budget of the spec being checked, and how much of it is used."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.started = time.monotonic()
        self.calls = 0

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def exceeded(self, states: int | None = None) -> str | None:
        """Why the run must stop now (time or memory; `states` only says how far it got),
        or None."""
        b = self.budget
        if b.timeout is not None and self.seconds() > b.timeout:
            where = f" after {states} crash states" if states is not None else ""
            return f"stopped at --timeout {b.timeout:g}s{where}"
        if b.max_memory is not None and resident() > b.max_memory * SOFT_SHARE:
            where = f" after {states} crash states" if states is not None else ""
            return f"stopped at --max-memory {size_text(b.max_memory)}{where}"
        return None

    def checkpoint(self) -> None:
        self.calls += 1
        if self.calls % POLL_EVERY:
            return
        why = self.exceeded()
        if why is not None:
            raise BudgetExceeded(why)


_CURRENT: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("crashcheck_meter", default=None)


@contextmanager
def metered(budget: Budget) -> Iterator[Meter]:
    """Make `budget` the one `checkpoint()` checks, for the duration of the block."""
    meter = Meter(budget)
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


def checkpoint() -> None:
    """Called in loops that can grow: raises BudgetExceeded once the current budget is
    spent (cheap: it looks at memory and time only every POLL_EVERY calls)."""
    meter = _CURRENT.get()
    if meter is not None:
        meter.checkpoint()


def cap_address_space(max_memory: int | None) -> None:
    """The hard backstop: allocations beyond the budget fail with MemoryError."""
    if max_memory is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = max_memory if hard == resource.RLIM_INFINITY else min(max_memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def z3_memory_megabytes(budget: Budget) -> int | None:
    """What z3 may allocate (its own cap makes it answer `unknown`, not abort)."""
    if budget.max_memory is None:
        return None
    return max(16, int(budget.max_memory * SOFT_SHARE / 2 / (1 << 20)))
