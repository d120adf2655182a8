"""The ops after a `crash` op (DESIGN section 8).

A spec may hold one `crash` op. Every crash state of the ops before it (under the spec's
persistence model) is recovered, the driver starts again on what recovery left
(`Mount.restart`), and the ops after it run there. They must behave as they do after
some crash-free prefix of the earlier ops, started cleanly: the same result for each
later op, the same final view, and no store problem the later ops bring about
(`usable-after-recovery`; a problem the crash itself left and the later ops do not
touch is `layer-store-consistent`'s finding, not this one's). So a crash that leaves a
state no crash-free run reaches, and that the next op trips over, is caught; a later op
that fails only because an earlier op never happened is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from checker.engine.trace import Recorder, run_ops
from models.capabilities import StoreChecks, can
from models.tree import Dir, identity

if TYPE_CHECKING:
    from checker.engine.invariants import Finding
    from checker.engine.trace import Trace

RUN_MEMO = 4_096  # continuations remembered (by the digest of the store they start on)


@dataclass(frozen=True)
class Continuation:
    """What the later ops did when the driver started on one store."""

    results: tuple[int | str, ...]  # 0 or the errno name, per later op
    view: Dir  # the view after them
    #: what the store checks find after them and did not find before them: a problem the
    #: crash left and the later ops did not touch is `layer-store-consistent`'s finding
    problems: tuple[tuple[str, str], ...]


def real_continuation_findings(op_text: str, got: Continuation, refs: list[Continuation],
                               later: list[Any]) -> list[Finding]:
    """`usable-after-recovery` on a real engine: the later ops after a crash during
    `op_text` (`got`) against the crash-free references: no finding when one matches;
    else the first later op whose result no reference gives, or a view none ends in, or
    the store problems they leave."""
    from checker.engine.invariants import Finding

    for ref in refs:
        if got.results == ref.results and got.view.digest == ref.view.digest and (
                not got.problems or got.problems == ref.problems):
            return []
    for j, op in enumerate(later):
        expected = {ref.results[j] for ref in refs if ref.results[:j] == got.results[:j]}
        if expected and got.results[j] not in expected:
            return [Finding(
                f"after a crash during `{op_text}`, later op {op.index} `{op.text}` returns "
                f"{got.results[j]} where it returns {' or '.join(map(str, sorted(expected, key=str)))} "
                "after no crash", (), op.index)]
    if all(got.view.digest != ref.view.digest for ref in refs):
        return [Finding(f"after a crash during `{op_text}`, the later ops end in a view no run "
                        "without the crash gives", (), later[-1].index)]
    listed = "; ".join(f"{p}: {what}" for p, what in got.problems[:3])
    return [Finding(f"after a crash during `{op_text}`, the later ops leave the store inconsistent: "
                    f"{listed}", tuple(p for p, _ in got.problems), later[-1].index)]


class AfterCrash:
    """Runs the later ops of a spec on recovered stores, and on the crash-free references."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.ops = trace.spec.after_crash
        self.memo: dict[bytes, Continuation] = {}
        self.references: dict[int, Continuation] = {}

    def run(self, root: Dir) -> Continuation:
        """The later ops on a driver started on `root` (once per distinct store)."""
        key = identity(root)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        mount = self.trace.mount.restart(root)
        rec = Recorder(mount)
        records = run_ops(mount, self.ops, rec)
        final = rec.log.root
        problems: tuple[tuple[str, str], ...] = ()
        if can(mount, StoreChecks):
            before = set(mount.store_problems(root))  # type: ignore[attr-defined]
            problems = tuple(p for p in mount.store_problems(final) if p not in before)  # type: ignore[attr-defined]
        done = Continuation(tuple(r.result for r in records), mount.view(final), problems)
        if len(self.memo) >= RUN_MEMO:
            self.memo.clear()
        self.memo[key] = done
        return done

    def reference(self, k: int) -> Continuation:
        """The later ops after the first k earlier ops ran without a crash, the store was
        shut down cleanly and the driver started again (its recovery runs, finding
        nothing to repair)."""
        hit = self.references.get(k)
        if hit is None:
            trace = self.trace
            state = trace.states[trace.ops[k - 1].end_step] if k else trace.initial
            state = trace.mount.clean_shutdown(state)
            rec = trace.mount.recover(state)
            hit = self.references[k] = self.run(rec.root if rec.root is not None else state)
        return hit

    def allowed(self, in_flight: int, generalized: bool) -> list[int]:
        """The crash-free prefixes a crash during op `in_flight` may behave like: under
        `prefix` the ops before it, with or without it; otherwise any prefix."""
        if generalized:
            return list(range(len(self.trace.ops) + 1))
        return [in_flight, min(in_flight + 1, len(self.trace.ops))]
