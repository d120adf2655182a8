"""Crash-testing dockerd (`crashcheck real --impl dockerd`): the daemon killed at each
of its system calls that change its data root, started again, and checked.

For each daemon op of a docker-overlay2 spec (pull, run, start, commit, rm-container,
rmi, tag; file ops inside a container are the kernel's, crash-tested by `real --impl
kernel`):

1. A counting run: a private dockerd (`checker.real.dockerd`) is brought to the spec's
   initial state and runs every op in order, with `crashpoint` attached through each
   daemon op (`crashpoint.c`, a small ptrace tool built into the run's workspace). It numbers,
   across every thread of dockerd and the helpers it re-executes (`exe`: docker-untar,
   chrooted into a layer), each system call that changes something under the data root:
   a namespace change, a write, an open that creates or truncates, a chmod, chown,
   utimes or xattr change. fsync and sync change nothing a process kill can lose, so
   they are not crash points. strace's own fault injection counts per thread, which
   cannot name "the daemon's N-th call" in a Go program; this counts globally.
2. For every N: a fresh dockerd, the same ops before, and the op with dockerd and its
   helpers killed (SIGKILL) on entry to call N. Its containerd and shims are killed
   too and its exec root emptied, as a reboot does; what it wrote stays (a process
   crash keeps a prefix). dockerd starts again on the same data root: its own start-up
   recovery.
3. The checks, on what the restarted daemon left: it must start (`recoverable`; a
   refusal is reported with dockerd's own log line) and starting it once more changes
   nothing; the data root, read back into the model's layout (`dockerd.read_raw`,
   `dockerd.project`: a layer's `diff` digest stays the digest of the complete layer,
   so a layer whose files are missing does not match it), must pass the model's
   invariants against the real views before and after the op; `engine-view`: the
   daemon's own listing (`GET /images/json`, `/containers/json`, each one inspected)
   names exactly the images and containers of that view; and with a `crash` op, the
   ops after it run on the restarted daemon and must behave as after a crash-free
   prefix run on dockerd (`usable-after-recovery`).

The run itself is `checker.real.engine.crash_engine` with dockerd as the engine session
(`checker.real.daemon_conform.DockerdSession`), as for podman and containerd.

Paths in findings are made generic as `crashcheck conform` makes them (random ids as
`<id>`, short links as `<link>`), so the same spec gives the same JSON run after run
as long as dockerd behaves the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from checker.real.crash import RealResult, RealUnavailable
from checker.real.daemon_conform import DockerdSession, runs_on_dockerd
from checker.real.engine import crash_engine
from checker.real.engine_recorded import recorded_engine_check
from checker.real.recorded import RecordedResult
from checker.spec import Spec


def dockerd_check(spec: Spec, progress: Callable[[str], None] | None = None,
                  only: Sequence[int] | None = None) -> RealResult:
    """Crash-test the spec's daemon ops on dockerd (with `only`, at those call numbers
    of each op and no other)."""
    _runs_here(spec, "real --impl dockerd runs")
    return crash_engine(spec, DockerdSession, progress, only)


def recorded_check(spec: Spec, persistence: str, progress: Callable[[str], None] | None = None,
                   **limits: Any) -> RecordedResult:
    """Record the spec's daemon ops on dockerd and check the recording under
    `persistence` (`checker.real.recorded`)."""
    _runs_here(spec, "dockerd runs")
    return recorded_engine_check(spec, DockerdSession, persistence, progress, **limits)


def _runs_here(spec: Spec, runs: str) -> None:
    """Raise RealUnavailable unless the spec is dockerd's and dockerd can run here."""
    if not runs_on_dockerd(spec):
        raise RealUnavailable(f"{spec.file}: {runs} docker-overlay2 specs, not {spec.driver}")
    reason = dockerd_unavailable_reason()
    if reason is not None:
        raise RealUnavailable(reason)


def dockerd_unavailable_reason() -> str | None:
    return DockerdSession.unavailable()


__all__ = ["dockerd_check", "dockerd_unavailable_reason", "recorded_check"]
