"""Power loss for podman and containerd: their recorded system calls checked under a
persistence model (`crashcheck real --impl podman|containerd --persistence
ordered-metadata|weak SPEC`), as `checker.real.recorded` does for dockerd.

The spec's store ops run on the engine (`checker.real.engine.EngineSession`) with strace
on it; the calls become the model's steps on the engine's root (with their data and
offsets: bbolt's page writes, layers.json's temp files, the layers' files), are replayed
on the tree before the op and reconciled with the tree the engine left (the kernel's
work below it), and the recording runs through the checker on a mount whose view,
recovery and store checks are the engine's model on the root read in the model's
vocabulary (`EngineSession.project`: layer digests, names, containerd's bbolt databases
as the model's records). Findings name the engine's own files and the system call
behind each step. Not covered: the ops after a `crash` op (the recording stops at it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from checker.engine.check import check
from checker.engine.invariants import selected
from checker.engine.trace import build_trace
from checker.real.engine import EngineSession, predicted
from checker.real.recorded import RecordedResult, Recording, replay
from checker.real.workspace import workspace
from checker.spec import Spec
from models import drivers
from models.driver import Driver, Recovery
from models.steps import Step
from models.tree import Dir

Make = type[EngineSession]


def record_engine(spec: Spec, make: Make, progress: Callable[[str], None] | None = None) -> Recording:
    """Run the spec's ops before any `crash` op on the engine, recording each store op."""
    trace = build_trace(spec)
    store_ops, engine = make.STORE_OPS, make.implementation
    with workspace(engine) as ws:
        session = make(ws, spec, trace, "rec")
        session.start()
        try:
            before = session.read_raw()
            session.learn(before)
            recording = Recording(spec, session.version(), before, [], implementation=engine,
                                  store_ops=store_ops, projector=session.project, generic=session.comparable)
            parts = set(before.entries)

            def scope(step: Step) -> Step | None:
                return session.in_scope(step, parts)

            for op in spec.before_crash:
                if progress:
                    progress(f"{spec.file}: recording op {op.index} `{op.text}` on {engine}")
                if op.kind in store_ops:
                    result, pairs = session.traced_calls(op)
                else:
                    result, pairs = session.perform(op), []
                after = session.read_raw()
                session.learn(after)
                recording.ops.append(replay(op, result, before, pairs, after, scope, store_ops, engine))
                before = after
        finally:
            session.stop()
    return recording


def recorded_driver(spec: Spec, recording: Recording) -> Driver:
    """The spec's driver model replaying a recording: its view, recovery and store
    checks on the engine's root read in the model's vocabulary."""
    base = drivers()[spec.driver]
    project = recording.projector
    assert project is not None

    class RecordedMount(base.MOUNT):  # type: ignore[name-defined,misc]
        LIFETIME = None

        def build(self, layers: list[Dir], upper: Dir | None, ops: Any = ()) -> Dir:
            super().build(layers, upper, ops)  # the model's own state (memos, counters)
            return recording.initial

        def view(self, root: Dir) -> Dir:
            return super().view(project(root))

        def recover(self, root: Dir) -> Recovery:
            return super().recover(project(root))

        def store_problems(self, root: Dir) -> list[tuple[str, str]]:
            return super().store_problems(project(root))

        def store_leaks(self, root: Dir) -> list[tuple[str, str]]:
            return super().store_leaks(project(root))

        def op_scope(self, op: Any) -> tuple[str, ...]:
            original = getattr(op, "original", None)
            return super().op_scope(original if original is not None else op)

    class RecordedDriver(base):  # type: ignore[valid-type,misc]
        MOUNT = RecordedMount

    return RecordedDriver(dict(spec.options))


def recorded_engine_check(spec: Spec, make: Make, persistence: str,
                          progress: Callable[[str], None] | None = None, **limits: Any) -> RecordedResult:
    """Record the spec on the engine and check the recording under `persistence`."""
    recording = record_engine(spec, make, progress)
    recorded = recording.recorded_spec(persistence)
    here = dataclasses.replace(recorded, options={k: v for k, v in spec.options.items()
                                                   if k not in make.VERSION_OPTIONS})
    result = check(here, persistence, driver=recorded_driver(here, recording), **limits)
    compared = {inv.name for inv in selected(spec)} - {"usable-after-recovery"}
    versions = make.VERSION_OPTIONS
    expected = predicted(spec, persistence, compared, recording.store_ops, versions, **limits)
    return RecordedResult(recording, result, expected)


__all__ = ["record_engine", "recorded_driver", "recorded_engine_check"]
