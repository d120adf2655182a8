"""Power loss for the engines (dockerd, podman, containerd): their recorded system
calls checked under a persistence model (`crashcheck real --impl ENGINE --persistence
ordered-metadata|weak SPEC`; the run is `checker.real.engine_recorded`).

A process kill keeps everything the engine wrote; a power loss keeps what the file
system had made durable, which can be any of the orders a persistence model allows.
As ALICE does for applications, the engine's own calls are recorded and the model
checker replays them under the weaker models:

1. The spec runs on a private engine (`checker.real.engine.EngineSession`), its root
   read before the first op (`read_raw`: the parts the model has, exactly as on disk).
   strace follows every thread of the engine through each store op (`-f -y -s 65536`);
   `checker.real.syscall_log` turns the calls into the model's primitive steps on the
   root: mkdir, create, write (with its data and offset), truncate, chmod, setxattr,
   rename, link, symlink, mknod, unlink, rmdir, fsync, sync. The session says which
   steps are in scope (dockerd: a path through a container's mount, `<id>/merged/...`,
   the init layer, is put in that layer's `diff`, where the kernel writes a new entry).
2. The steps are replayed on the tree before the op (`replay`). Replay is lenient: a
   parent the log did not show being made (the kernel's) is made first. What still
   differs from the tree the engine left (what the kernel did below it: an overlay
   mount's `work/work`, a copy-up, data strace cut at 64 KiB) is added as
   reconciliation steps at the end of the op, so every op ends exactly where the
   engine's did. File ops inside a container are the kernel's: they are the
   reconciliation steps only (their crash behaviour is the overlayfs model's, checked
   against the kernel).
3. The recorded spec (one `steps` op per op, named after it) runs through the checker
   on a mount whose view, recovery and store checks are the engine's model on the root
   read in the model's layout (the session's `project`: for dockerd each layer's
   `diff` digest the one of its complete files). So findings name the engine's own
   files, and the report gives the system call behind each step.

Not covered: the ops after a `crash` op (the recorded spec stops at it), and hard-link
counts. Source: ALICE (Pillai et al., OSDI 2014) for the approach.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from checker.engine.check import Result
from checker.spec import Op, Spec
from models.layers import build_steps
from models.steps import Chmod, Mkdir, RemoveTree, SetXattr, Step, StepLog, Unlink, Write
from models.tree import Dir, File, FsError, Node, Symlink, join, lookup, split


@dataclass(frozen=True)
class RecordedOp(Op):
    """A spec op as the engine ran it: a `steps` op with the recorded steps, named after
    the op it stands for."""

    label: str = ""
    original: Op | None = None  # the spec op it stands for

    @cached_property
    def text(self) -> str:
        return self.label


@dataclass
class OpRecording:
    """One op on an engine: its result, the steps, and the system call behind each."""

    op: Op
    result: int | str
    steps: list[Step]
    calls: list[str]  # per step: the system call it came from (reconciliation: what made it)
    traced: int  # steps from the engine's system calls
    made_parents: int  # parents made for them during replay
    reconciled: int  # steps that bring the replay to the tree the engine left


@dataclass
class Recording:
    spec: Spec
    version: str
    initial: Dir  # the engine's root before the first op, as on disk
    ops: list[OpRecording]
    implementation: str
    store_ops: tuple[str, ...]
    #: the engine's store read in the model's vocabulary (`EngineSession.project`)
    projector: Callable[[Dir], Dir]
    #: the engine's own names made generic (`<id>`, `<link>`, temp suffixes)
    generic: Callable[[str], str]

    def recorded_spec(self, persistence: str) -> Spec:
        """The spec with each op replaced by its recorded steps."""
        ops = [
            RecordedOp(i, "steps", (("steps", tuple(r.steps)), ("calls", tuple(r.calls))),
                       label=f"{r.op.text} ({self.implementation}: {len(r.steps)} steps)", original=r.op)
            for i, r in enumerate(self.ops)
        ]
        return dataclasses.replace(self.spec, ops=ops, persistence=persistence)

    def call_of(self, step: int) -> str:
        """The system call behind the step-th step of the whole recording (0-based)."""
        for r in self.ops:
            if step < len(r.steps):
                return r.calls[step]
            step -= len(r.steps)
        return ""


# --- recording ----------------------------------------------------------------------------


def replay(op: Op, result: int | str, before: Dir, pairs: list[tuple[Step, str]], after: Dir,
           scope: Callable[[Step], Step | None], store_ops: tuple[str, ...], engine: str) -> OpRecording:
    """The op's traced steps (those `scope` keeps) replayed on `before`, with the parents
    the log did not show made first and reconciliation steps to `after` at the end."""
    log = StepLog(before)
    steps: list[Step] = []
    calls: list[str] = []
    made = traced = 0
    for raw, call in pairs:
        step = scope(raw)
        if step is None:
            continue
        for parent in _missing_parents(log.root, step):
            log.do(parent)
            steps.append(parent)
            calls.append(call)
            made += 1
        try:
            log.do(step)
        except FsError:
            continue  # the kernel saw a state the log does not show; reconciliation settles it
        steps.append(step)
        calls.append(call)
        traced += 1
    fix = reconcile(log.root, after)
    why = f"(the kernel's, below {engine})" if op.kind in store_ops else "(the kernel's: a file op)"
    return OpRecording(op, result, steps + fix, calls + [why] * len(fix), traced, made, len(fix))


def _missing_parents(root: Dir, step: Step) -> list[Step]:
    out: list[Step] = []
    for attr in ("path", "dst"):
        value = getattr(step, attr, None)
        if not isinstance(value, str):  # a rename or link has no `path`: its `dst` is made
            continue
        parts = split(value)[:-1]
        for i in range(1, len(parts) + 1):
            if lookup(root, parts[:i]) is None and not any(
                isinstance(s, Mkdir) and s.path == join(parts[:i]) for s in out
            ):
                out.append(Mkdir(join(parts[:i]), 0o755))
    return out


def reconcile(have: Dir, want: Dir, base: tuple[str, ...] = ()) -> list[Step]:
    """Steps that turn `have` into `want`: removals first, then what is new or changed,
    in name order."""
    out: list[Step] = []
    for name in sorted(have.entries):
        if name not in want.entries:
            out.append(_removal(base + (name,), have.entries[name]))
    for name in sorted(want.entries):
        out.extend(_reconcile_entry(base + (name,), have.entries.get(name), want.entries[name]))
    if have.mode != want.mode and base:
        out.append(Chmod(join(base), want.mode))
    if have.xattrs != want.xattrs and base:
        out.extend(SetXattr(join(base), k, v) for k, v in want.xattrs if (k, v) not in have.xattrs)
    return out


def _removal(parts: tuple[str, ...], node: Node) -> Step:
    return RemoveTree(join(parts)) if isinstance(node, Dir) else Unlink(join(parts))


def _reconcile_entry(parts: tuple[str, ...], have: Node | None, want: Node) -> list[Step]:
    path = join(parts)
    if have is not None and type(have) is not type(want):
        return [_removal(parts, have)] + _reconcile_entry(parts, None, want)
    if have is None:
        return build_steps(Dir({parts[-1]: want}), join(parts[:-1]))
    if isinstance(want, Dir):
        assert isinstance(have, Dir)
        return reconcile(have, want, parts)
    out: list[Step] = []
    if isinstance(want, File):
        assert isinstance(have, File)
        if have.content != want.content:
            out.append(Write(path, want.content, replace=True))
        if have.mode != want.mode:
            out.append(Chmod(path, want.mode))
    elif isinstance(want, Symlink) and isinstance(have, Symlink) and have.target != want.target:
        return [Unlink(path)] + build_steps(Dir({parts[-1]: want}), join(parts[:-1]))
    out.extend(SetXattr(path, k, v) for k, v in want.xattrs if (k, v) not in have.xattrs)
    return out


# --- checking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedResult:
    """A recorded run of an engine checked under a persistence model. It is compared
    with what the model of the engine running here (its version options at their
    defaults) predicts under the same model, over the crash states of store ops (a
    file op's recorded steps are the kernel's changes in name order, not its order)."""

    recording: Recording
    result: Result
    predicted: tuple[str, tuple[str, ...]]  # the model's verdict and violated invariants

    @property
    def daemon_ops(self) -> set[int]:
        return {r.op.index for r in self.recording.ops if r.op.kind in self.recording.store_ops}

    @property
    def violated(self) -> list[str]:
        """The invariants violated during daemon ops."""
        return sorted({v.invariant for v in self.result.violations if v.op in self.daemon_ops})

    @property
    def verdict(self) -> str:
        if self.violated:
            return "violation"
        return "unknown" if self.result.verdict == "unknown" else "pass"

    @property
    def ok(self) -> bool:
        verdict, invariants = self.predicted
        return self.verdict == verdict and set(invariants) <= set(self.violated)

    def to_json(self) -> dict[str, object]:
        doc = self.result.to_json()
        violations = doc.get("violations")
        if isinstance(violations, list):
            for v in violations:
                step = v.get("crash_after_step")
                if isinstance(step, int) and step > 0:
                    v["syscall"] = self.recording.call_of(step - 1)
                    v["process"] = self.recording.implementation
        return stable(doc, self.recording.generic) | {
            "implementation": self.recording.implementation,
            "engine": "recorded",
            "verdict": self.verdict,
            "expected": self.predicted[0],
            "expected_invariants": list(self.predicted[1]),
            "ok": self.ok,
            "recorded_ops": [
                {"op": r.op.index, "op_text": r.op.text, "real_result": r.result, "traced_steps": r.traced,
                 "made_parents": r.made_parents, "reconciled_steps": r.reconciled}
                for r in self.recording.ops
            ],
        }


def stable(doc: object, generic: Callable[[str], str]) -> Any:
    """A JSON document with the engine's random names made generic (as `conform` shows
    them: ids as `<id>`, short links as `<link>`, temp suffixes as `*`), so a spec gives
    the same document run after run."""
    if isinstance(doc, dict):
        return {k: stable(v, generic) for k, v in doc.items()}
    if isinstance(doc, list):
        return [stable(v, generic) for v in doc]
    if isinstance(doc, str):
        return _TIME.sub("<time>", generic(doc))
    return doc


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


__all__ = ["RecordedResult", "Recording", "reconcile", "replay", "stable"]
