"""Checking a list of specs (`crashcheck run`): one after the other here, or spread over
local worker processes (`--jobs N`) or the workers of a Dask cluster (`--scheduler
tcp://HOST:PORT`). A spec is the unit of work: it is checked whole by one process (its
trace, crash states, memos and budget its own), the result comes back by pickling, and
results are taken in the order of the specs, so the output is the same byte for byte
wherever the specs were checked (tests/test_suite_parallel.py).

What a spec's check does in the worker: the check itself and `--suggest-fix` (both need
the spec's context and its memos). What stays here: kernel confirmations (`--confirm`
mounts on this machine, where the user asked for them) and everything printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from checker import report
from checker.distribute import in_order
from checker.engine.budget import Budget
from checker.engine.check import Result, check
from checker.errors import CrashcheckError
from checker.spec import Spec


@dataclass(frozen=True)
class RunSettings:
    """The options of `run` that decide what a spec's check computes."""

    persistence: str | None = None
    crash_after: int | None = None
    engine: str = "auto"
    block_size: int | None = None
    budget: Budget = Budget()
    persisted: str | None = None
    suggest_fix: bool = False


@dataclass(frozen=True)
class SpecJob:
    spec: Spec
    settings: RunSettings


@dataclass(frozen=True)
class SpecDone:
    """A spec checked (`result`, with `fix_note` when a fix was asked for and found), or
    the one line saying why it could not be (`error`)."""

    spec: Spec
    result: Result | None = None
    fix_note: str | None = None
    error: str | None = None


def check_job(job: SpecJob, progress: Callable[[str], None] | None = None) -> SpecDone:
    """Check one spec as `run` does; a user error of the spec is returned, not raised, so
    the other specs go on."""
    s = job.settings
    try:
        result = check(job.spec, s.persistence, s.crash_after, engine=s.engine, block_size=s.block_size,
                       budget=s.budget, persisted=s.persisted, progress=progress)
    except CrashcheckError as e:
        return SpecDone(job.spec, error=str(e))
    fix_note = None
    if s.suggest_fix and result.violations and result.context is not None:
        from checker.symbolic.repair import suggest_fix  # z3 loads only when a fix is asked for

        found = suggest_fix(result.context, s.budget)
        result = replace(result, fix=found.fix)
        fix_note = report.fix_lines(result, found)
    if result.context is not None:
        result.context.drop_caches()  # the report needs the context, not its memos
    return SpecDone(job.spec, result, fix_note)


def check_specs(specs: Sequence[Spec], settings: RunSettings, jobs: int = 1, scheduler: str | None = None,
                progress: Callable[[str], None] | None = None) -> Iterator[SpecDone]:
    """Every spec checked, in order. Here (one job, no scheduler) a spec's own progress
    lines go to `progress`; workers check quietly and the caller counts finished specs."""
    todo = [SpecJob(spec, settings) for spec in specs]
    if scheduler is None and (jobs <= 1 or len(todo) <= 1):
        for job in todo:
            yield check_job(job, progress)
        return
    yield from in_order(todo, check_job, jobs=jobs, scheduler=scheduler, chunk=1, cluster_chunk=1,
                        command="run")
