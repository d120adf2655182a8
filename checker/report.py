"""Reports: the text a person reads and the JSON a script reads (DESIGN section 7)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from checker.engine import views
from checker.engine.aftercrash import Continuation
from checker.engine.check import VIOLATIONS_STREAMED, Result, Verdict
from checker.engine.explorer import Violation
from checker.engine.persistence import CrashState
from checker.progress import Progress
from checker.real.conform import OpConformance, modelled_kernel, running_series, sync_trace_note
from checker.real.crash import RealResult, RealViolation
from checker.real.recorded import RecordedResult
from checker.real.store_events import StoreOpConformance
from checker.spec import Spec
from checker.symbolic.repair import FixResult
from checker.workloads.explore import Report as ExploreReport
from checker.workloads.explore import Settings
from models import REFERENCE_DRIVER, capabilities
from models.capabilities import mount_can
from models.driver import Driver

STEP_WINDOW = 8  # steps shown on each side of the crash point in a long op


def to_json(results: Iterable[Result]) -> str:
    doc = {"version": 1, "specs": [r.to_json() for r in results]}
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def write_json(results: list[Result], out: TextIO) -> None:
    """`to_json(results)` written piece by piece: byte for byte the same document, but a
    violation at a time, so a long list never has to fit in memory twice."""
    out.write('{\n  "version": 1,\n  "specs": [')
    for n, r in enumerate(results):
        out.write(",\n" if n else "\n")
        head = _indent(json.dumps(r.to_json(violations=False), indent=2), 4)
        marker = f'"violations": {json.dumps(VIOLATIONS_STREAMED)}'
        before, after = head.split(marker)
        out.write(before + '"violations": [')
        first = True
        for doc in r.violations_json():
            out.write(("\n" if first else ",\n") + _indent(json.dumps(doc, indent=2), 8))
            first = False
        out.write(("]" if first else "\n      ]") + after)
    out.write("\n  ]\n}\n" if results else "]\n}\n")


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in text.split("\n"))


def confirmation_line(r: Result) -> str | None:
    """How the findings fared on the kernel, or None when they were not confirmed."""
    if r.confirmations is None or not r.violations:
        return None
    counts = {s: sum(c.status == s for c in r.confirmations) for s in ("confirmed", "refuted", "unavailable")}
    line = (
        f"     on Linux {r.confirmations[0].kernel}: {counts['confirmed']} confirmed, "
        f"{counts['refuted']} refuted, {counts['unavailable']} unavailable"
    )
    if counts["refuted"]:
        line += "\n     !!! REFUTED FINDINGS: the model disagrees with the kernel here; this is a model bug"
    return line


def summary_line(r: Result) -> str:
    mark = "ok  " if r.ok else "FAIL"
    verdict = r.verdict.upper()
    inv = f" of {', '.join(r.violated)}" if r.violations else ""
    expected = r.expected + (
        f" ({', '.join(r.spec.expect.invariants)})" if r.spec.expect and r.spec.expect.invariants else ""
    )
    scope = f" [only crash after step {r.only_crash}]" if r.only_crash is not None else ""
    if r.engine != "enumerate":
        scope += f" [engine {r.engine}]"
    if r.bounded:
        scope += f" [bounded: {r.why}]"
    line = (
        f"{mark} {verdict:<9} {r.spec.file}: {r.spec.name}\n"
        f"     {r.spec.driver}/{r.persistence}: {r.steps} steps, {r.crash_states} crash states "
        f"({r.unique_states} unique), {len(r.violations) + r.omitted} violations{inv}; "
        f"expected {expected}; {r.seconds:.2f}s{scope}"
    )
    return line + "".join(f"\n     {text}" for text in accounting_lines(r.accounting))


def op_lines(r: Verdict) -> list[str]:
    """A line for every op that did not return what the spec says: a failure nobody
    declared (a warning: the workload may not do what its author meant) and a declared
    `expect_error` that did not happen (the spec fails)."""
    lines = []
    for op, result in r.failed_ops:
        lines.append(
            f"     warning: op {op.index} `{op.text}` failed with {result}, so it changed nothing "
            f"(add expect_error = \"{result}\" to the op if that is what you meant)"
        )
    for op, result in r.mismatched_ops:
        got = "succeeded" if result == 0 else f"failed with {result}"
        lines.append(f"     op {op.index} `{op.text}` {got}, but the spec expects {op.expect_error}")
    return lines


def accounting_lines(figures: dict[str, object] | None) -> list[str]:
    """Storage before and after (the squash driver's accounting), one line each."""
    if not figures:
        return []
    lines = []
    for when in ("before", "after"):
        f = figures.get(when)
        if not isinstance(f, dict):
            continue
        images = ", ".join(
            f"{name} {e['layers']} layer(s) {e['bytes']} B" for name, e in f["images"].items()
        )
        lines.append(
            f"storage {when + ':':<7} {f['layers']} layers, {f['stored']} bytes stored, "
            f"{f['transfer']} bytes to transfer ({images})"
        )
    return lines


def violation_report(r: Result, verbose: bool = False) -> list[str]:
    """Per op: the crash point that best explains its violations in full (every invariant
    violated there), then the crash points of each invariant; with `verbose` every
    violating crash point in full."""
    lines: list[str] = []
    by_op: dict[int, list[Violation]] = {}
    for v in r.violations:
        by_op.setdefault(v.op, []).append(v)
    for op, found in by_op.items():
        invariants = sorted({v.invariant for v in found})
        if verbose:
            points = list(dict.fromkeys(v.crash for v in found))
        else:
            points, remaining = [], set(invariants)
            while remaining:
                rep = representative(r, [v for v in found if v.invariant in remaining])
                points.append(rep.crash)
                remaining -= {v.invariant for v in found if v.crash == rep.crash}
        for crash in points:
            lines.extend(_detail(r, op, crash, [v for v in found if v.crash == crash]))
        for invariant in invariants:
            group = [v for v in found if v.invariant == invariant]
            steps = sorted({v.crash_after_step for v in group})
            total = r.count(op, invariant)
            kept = "" if total == len(group) else f"; the first {len(group)} are kept, the rest counted"
            more = "" if verbose else "; --verbose shows each"
            lines.append(
                f"     {total} crash states violate {invariant} in op {op} "
                f"(last persisted step {_ranges(steps)}){kept}{more}"
            )
        lines.append("")
    return lines


def representative(r: Result, group: list[Violation]) -> Violation:
    """The crash point that best explains a group: one right after a system call
    completed (its atomic point), in the middle of the op."""
    ends = {rec.end_step for op in r.trace.ops for rec in op.syscalls if rec.end_step > rec.first_step}
    at_boundary = [v for v in group if v.crash_after_step in ends and v.crash.is_prefix] or group
    return at_boundary[(len(at_boundary) - 1) // 2]


def _detail(r: Result, op_index: int, crash: CrashState, here: list[Violation]) -> list[str]:
    trace = r.trace
    n = len(trace.steps)
    op = trace.ops[op_index]
    k = crash.crash_after_step
    last = trace.steps[k - 1] if k > 0 else None
    where = f"crash after step {k} of {n}" + (f": {last}" if last is not None else " (before any step)")
    if not crash.is_prefix and r.context is not None:
        where += f"; the crash kept: {crash.describe(r.context.constraints.pieces)}"
    names = ", ".join(sorted({v.invariant for v in here}))
    lines = [f"  {names} violated in op {op_index} (`{op.text}`), {where}"]
    lines.extend(f"     {v.invariant}: {v.message}" for v in here)
    if r.confirmations is not None:
        index = {id(v): i for i, v in enumerate(r.violations)}
        for v in here:
            c = r.confirmations[index[id(v)]]
            loud = "!!! " if c.status == "refuted" else ""
            lines.append(f"     {loud}{v.invariant} {c.status.upper()}: {c.detail}")
    lines.append("     steps (* persisted, ~ torn, crash at >>>):")
    # A crash that lost a step of this op may lie in a later op: list up to it.
    lines.extend(_steps_around(r, op.first_step, max(op.end_step, crash.crash_after_step), crash))
    recovery, crash_view = here[0].recovery, here[0].view  # the evidence the check kept
    assert recovery is not None
    lines.append("     view before the op:")
    lines.extend(views.render(op.before, "       "))
    lines.append("     view after the op:")
    lines.extend(views.render(op.after, "       "))
    note = (
        f"mount refused: {recovery.refusal}" + (f"; remedy: {recovery.remedy}" if recovery.remedy else "")
        + ("; shown after the remedy" if recovery.fallback is not None else "")
        if recovery.refused else "mount succeeded"
    )
    lines.append(f"     view after the crash and recovery ({note}):")
    lines.extend(views.render(crash_view, "       "))
    later = next((v.later for v in here if v.later is not None), None)
    if later is not None:
        lines.extend(_later_ops(r, later))
    lines.append("     reproduce: " + reproduce_command(r, crash))
    return lines


def _later_ops(r: Result, later: Continuation) -> list[str]:
    """What the ops after the `crash` op returned on that recovered store, and left."""
    lines = ["     then the ops after the crash:"]
    for op, result in zip(r.spec.after_crash, later.results, strict=True):
        lines.append(f"          op {op.index} `{op.text}`  = {result}")
    lines.append("     view after them:")
    lines.extend(views.render(later.view, "       "))
    return lines


def _steps_around(r: Result, first: int, end: int, crash: CrashState) -> list[str]:
    k = crash.crash_after_step
    pieces = r.context.constraints.pieces if r.context is not None else [1] * len(r.trace.steps)
    trace = r.trace
    lo, hi = first, end
    if hi - lo > 2 * STEP_WINDOW + 1:
        lo = max(first, k - STEP_WINDOW)
        hi = min(end, k + STEP_WINDOW)
    lines = []
    if lo > first:
        lines.append(f"          ... {lo - first} earlier steps of this op")
    last_call = (-1, -1)
    for i in range(lo, hi):
        call = trace.call_of_step(i)
        record = trace.records[i]
        if (record.op, record.call) != last_call:
            last_call = (record.op, record.call)
            lines.append(f"          {call.call}  = {call.result}")
        amount = crash.amount(i, pieces[i])
        mark = "*" if amount == pieces[i] and amount else ("~" if amount else " ")
        lines.append(f"       {mark} {i + 1:>4}  {trace.steps[i]}")
        if i + 1 == k:
            lines.append("     >>> crash here")
    if k == first and lo == first:
        lines.insert(0, "     >>> crash here")
    if hi < end:
        lines.append(f"          ... {end - hi} later steps of this op")
    if first == end:
        lines.append("          (this op has no steps)")
    return lines


def _ranges(points: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10'."""
    out: list[str] = []
    start = prev = points[0]
    for p in points[1:] + [None]:  # type: ignore[list-item]
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ", ".join(out)


def reproduce_command(r: Result, crash: CrashState) -> str:
    parts = ["crashcheck", "run", r.spec.file]
    if crash.is_prefix:
        parts += ["--crash-after", str(crash.crash_after_step)]
    else:
        assert r.context is not None
        parts += ["--persisted", crash.token(r.context.constraints.pieces)]
    if r.persistence != r.spec.persistence:
        parts += ["--persistence", r.persistence]
    if r.context is not None and r.context.block_size != r.spec.block_size:
        parts += ["--block-size", str(r.context.block_size)]
    return shlex.join(parts)


def totals_line(results: list[Result], seconds: float) -> str:
    ok = sum(r.ok for r in results)
    steps = sum(r.steps for r in results)
    states = sum(r.crash_states for r in results)
    unique = sum(r.unique_states for r in results)
    verdicts = {v: sum(r.verdict == v for r in results) for v in ("pass", "violation", "unknown")}
    bad = len(results) - ok
    unknown = f", {verdicts['unknown']} unknown" if verdicts["unknown"] else ""
    return (
        f"{len(results)} specs: {ok} as expected, {bad} not "
        f"({verdicts['pass']} pass, {verdicts['violation']} violation{unknown}); "
        f"{steps} steps, {states} crash states ({unique} unique) in {seconds:.2f}s"
    )


def conformance_report(spec: Spec, ops: list[OpConformance], release: str, verbose: bool = False) -> str:
    """Per op: whether the kernel made the namespace changes the model's steps make."""
    lines = [f"{spec.file}: {spec.name} (Linux {release})"]
    other = modelled_kernel(spec)
    if other is not None:
        lines.append(f"  (the spec models Linux {other}; compared here: the model of this "
                     f"machine's {running_series()}, the spec's other options kept)")
    untraced = any(o.observed_syncs is None for o in ops)
    for o in ops:
        verdict = "conforms" if o.conforms else "DIFFERS"
        syncs = "" if o.observed_syncs is None else f", {len(o.observed_syncs)} syncs"
        lines.append(f"  op {o.op} `{o.text}`: {verdict} ({len(o.observed_steps)} namespace changes{syncs})")
        if not o.same_result:
            lines.append(f"    result: the model returns {o.model_result}, the kernel {o.real_result}")
        if verbose or not o.conforms:
            lines.append("    model:    " + ("; ".join(o.model_steps) or "(none)"))
            lines.append("    observed: " + ("; ".join(o.observed_steps) or "(none)"))
        if not o.same_syncs:
            only_model, only_kernel = o.sync_differences
            lines.append("    syncs only in the model:  " + ("; ".join(only_model) or "(none)"))
            lines.append("    syncs only on the kernel: " + ("; ".join(only_kernel) or "(none)"))
        elif verbose and o.observed_syncs is not None:
            lines.append("    syncs:    " + ("; ".join(o.observed_syncs) or "(none)"))
        if o.missing or o.unexpected:
            lines.append("    only in the model:  " + ("; ".join(o.missing) or "(none)"))
            lines.append("    only on the kernel: " + ("; ".join(o.unexpected) or "(none)"))
    good = sum(o.conforms for o in ops)
    lines.append(f"{good} of {len(ops)} ops conform")
    if untraced:
        lines.append(f"syncs not compared: {sync_trace_note() or 'the trace could not be set up'}")
    return "\n".join(lines)


def daemon_conformance_report(spec: Spec, ops: list[StoreOpConformance], version: str,
                              verbose: bool = False, engine: str = "dockerd",
                              other_version: bool = False) -> str:
    """Per op: the engine's durable steps the model makes in the same order, the result,
    and whether the store read back shows the model's view."""
    lines = [f"{spec.file}: {spec.name} ({engine} {version})"]
    if other_version:
        lines.append(f"  note: the spec models other write disciplines than this {engine}'s (options); "
                     "differences in steps are expected")
    real_total = matched = 0
    for o in ops:
        verdict = "conforms" if o.conforms else "DIFFERS"
        if o.compared:
            real_total += len(o.observed_steps)
            matched += o.matched
            counts = (f"{o.matched} of {engine}'s {len(o.observed_steps)} durable steps in order, "
                      f"model {len(o.model_steps)}")
        else:
            counts = "result and view (the kernel's steps: see conform on overlayfs)"
        lines.append(f"  op {o.op} `{o.text}`: {verdict} ({counts})")
        if not o.same_result:
            lines.append(f"    result: the model returns {o.model_result}, {engine} {o.real_result}")
        if not o.view_matches:
            lines.append("    view: the store read back does not show the model's view")
        for problem in o.store_problems:
            lines.append(f"    store: {problem}")
        if o.compared and (verbose or o.missing or o.unexpected):
            if verbose:
                lines.append("    model:   " + ("; ".join(o.model_steps) or "(none)"))
                lines.append(f"    {engine}: " + ("; ".join(o.observed_steps) or "(none)"))
            if o.missing or o.unexpected:
                lines.append(f"    only {engine}:   " + ("; ".join(o.unexpected) or "(none)"))
                lines.append("    only the model: " + ("; ".join(o.missing) or "(none)"))
    good = sum(o.conforms for o in ops)
    share = f"{100 * matched / real_total:.1f}%" if real_total else "n/a"
    lines.append(f"{good} of {len(ops)} ops conform; the model makes {matched} of {engine}'s {real_total} "
                 f"durable steps in order ({share})")
    return "\n".join(lines)


def progress_printer(total: int | None = None) -> Progress:
    """A progress bar on stderr when it is a terminal (`checker.progress`); `total`: the
    specs of the run."""
    return Progress(total)


#: what the model of each engine running here is, as reports name it
ENGINE_MODELS = {"dockerd": "dockerd (moby 20.10)", "podman": "podman (containers/storage 1.43)",
                 "containerd": "containerd (1.6)"}
def _dockerd_notes(r: RealResult) -> list[str]:
    out = []
    engine = r.implementation
    if r.model_prefix is not None:
        out.append(f"     expected: what the model of this {ENGINE_MODELS.get(engine, engine)} predicts for "
                   f"a process crash: {_verdict_cell(r.model_prefix[0], list(r.model_prefix[1]))}")
    file_ops = [o.record for o in r.outcomes if o.record.op.kind not in r.store_ops]
    for rec in file_ops:
        out.append(f"     op {rec.index} `{rec.text}` is a file op in a container: the kernel's, not crashed "
                   "here (real --impl kernel crash-tests overlayfs)")
    if not r.crash_points:
        out.append(f"     no store op: nothing to crash on {engine}")
    if r.missed:
        out.append(f"     {r.missed} kill run(s) made fewer calls than the counting run and were not killed "
                   f"({engine} did less that time)")
    return out


def real_summary(r: RealResult) -> str:
    mark = "ok  " if r.ok else "FAIL"
    inv = f" of {', '.join(r.violated)}" if r.violations else ""
    lines = [
        f"{mark} {r.verdict.upper():<9} {r.spec.file}: {r.spec.name}",
        f"     {r.implementation}: {r.calls} system calls, {r.crash_points} crash points, "
        f"{len(r.violations)} violations{inv}; expected {r.expected}; {r.seconds:.1f}s",
    ]
    if r.store_ops:
        lines.extend(_dockerd_notes(r))
    for o in r.disagreements:
        lines.append(
            f"     RESULT DIFFERS: op {o.record.index} `{o.record.text}` returns {o.record.result} "
            f"in the model and {o.real} on {r.implementation} (a model bug)"
        )
    lines.extend(op_lines(r))
    groups: dict[tuple[int, str, str], list[RealViolation]] = {}
    for v in r.violations:
        groups.setdefault((v.op, v.process, v.invariant), []).append(v)
    for (op, process, invariant), vs in groups.items():
        first = vs[0]
        lines.append(
            f"     {invariant} in op {op} (`{first.op_text}`) when the {process} is killed at call "
            f"{_ranges([v.crash_at_call for v in vs])}; e.g. at call {first.crash_at_call} "
            f"({first.syscall}): {first.message}"
        )
    return "\n".join(lines)


def recorded_report(found: RecordedResult, verbose: bool = False) -> str:
    """A recorded dockerd run checked under a persistence model: what was recorded per
    op, then the usual verdict and counterexamples, on dockerd's own files."""
    r, rec = found.result, found.recording
    engine = rec.implementation
    mark = "ok  " if found.ok else "FAIL"
    inv = f" of {', '.join(found.violated)}" if found.violated else ""
    bounded = f" [bounded: {r.why}]" if r.bounded else ""
    lines = [
        f"{mark} {found.verdict.upper():<9} {r.spec.file}: {r.spec.name}",
        f"     {engine} {rec.version}, recorded, under {r.persistence}: {r.steps} steps, "
        f"{r.crash_states} crash states ({r.unique_states} unique), violations{inv or ' none'} "
        f"in {'daemon' if engine == 'dockerd' else 'store'} ops; {r.seconds:.2f}s{bounded}",
        f"     expected: what the model of this {ENGINE_MODELS.get(engine, engine)} predicts under "
        f"{r.persistence}: {_verdict_cell(*found.predicted[:1], list(found.predicted[1]))}",
        "     the ops as recorded (system calls through strace):",
    ]
    for o in rec.ops:
        kind = ("daemon op" if engine == "dockerd" else "store op") if o.op.kind in rec.store_ops else \
            "file op in a container (the kernel's steps)"
        lines.append(f"       op {o.op.index} `{o.op.text}` = {o.result}: {len(o.steps)} steps ({kind}; "
                     f"{o.traced} from its system calls, {o.made_parents} parents made, "
                     f"{o.reconciled} to reach the tree {engine} left)")
    if r.violations:
        again = f"re-record: crashcheck real --impl {engine} --persistence {r.persistence} {r.spec.file}"
        for line in violation_report(r, verbose):
            lines.append(f"     {again}" if line.startswith("     reproduce: ") else line)
    return "\n".join(lines)


def dockerd_table(rows: list[tuple[Spec, Result, RealResult]], version: str, engine: str,
                  modelled: str) -> str:
    """The findings table of `real --impl dockerd|podman|containerd`: per spec, the model
    under the spec's persistence model and options, the model of this engine under a
    process crash (`prefix`, the version options at their defaults), and the engine
    killed at every call."""
    header = ["spec", "model (spec)", f"model of {modelled}, process crash", f"{engine} {version} killed",
              "crash points"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for spec, model, found in rows:
        predicted = found.model_prefix or (found.expected, ())
        cells = [
            f"`{Path(spec.file).stem}`",
            f"{_verdict_cell(model.verdict, model.violated)} ({model.persistence})",
            _verdict_cell(predicted[0], list(predicted[1])),
            _verdict_cell(found.verdict, found.violated) + ("" if found.ok else " **differs**"),
            str(found.crash_points) if found.crash_points else "0 (no store op)",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict_cell(verdict: str, invariants: list[str]) -> str:
    return verdict + (f" ({', '.join(invariants)})" if invariants else "")


def findings_table(
    rows: list[tuple[Spec, Result, list[RealResult]]], impls: list[str], release: str
) -> str:
    """The findings table: one row per spec, the model's verdict and each implementation's."""
    header = ["spec", "model"] + [f"{i} (Linux {release})" if i == "kernel" else i for i in impls]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for spec, model, found in rows:
        cells = [f"`{Path(spec.file).stem}`", _verdict_cell(model.verdict, model.violated)]
        cells += [_verdict_cell(r.verdict, r.violated) for r in found]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fix_lines(r: Result, found: FixResult) -> str:
    """The suggested fix, and what is left once it is applied."""
    if found.fix is None:
        return f"     no fix suggested: {found.why}"
    if not found.fix:
        return f"     no fsync helps: {found.why}"
    lines = [f"     suggested fix ({len(found.fix)} fsync(s), minimum; found in {found.rounds} rounds):"]
    lines.extend(f"       {f.describe(r.trace)}" for f in found.fix)
    if found.inherent:
        lines.append(f"     with it, {found.why}")
    else:
        lines.append("     with it, every crash state passes")
    return "\n".join(lines)


def explore_report(settings: Settings, found: ExploreReport, depth: int, sampled: int | None) -> str:
    options = ", ".join(f"{k}={v}" for k, v in settings.options)
    scope = (
        f"{sampled} random workloads of up to {depth} ops" if sampled
        else f"every workload of up to {depth} op(s)"
    )
    lines = [
        f"explore {settings.driver}{f' ({options})' if options else ''}, {settings.persistence} "
        f"persistence, {scope}:",
        f"  {found.workloads} workloads checked ({found.skipped} skipped: an op failed on the view), "
        f"{found.crash_states} crash states, {found.seconds:.1f}s",
        f"  driver-induced: {len(found.groups)} group(s) (invariant, op)",
    ]
    for (invariant, kind), outcome in sorted(found.groups.items()):
        ops = " ; ".join(" ".join(str(v) for v in op.values()) for op in outcome.ops)
        where = found.files.get((invariant, kind))
        lines.append(f"    {invariant} in {kind}: {ops} (initial files in {outcome.setup})"
                     + (f" -> {where}" if where else ""))
    lines.append(f"  inherent (also on plain): {found.inherent} violation(s)")
    work = found.work
    if work.run or work.reused:
        lines.append(f"  incremental: {work.run} op check(s) run, {work.reused} reused (the same op from "
                     "the same state);")
        lines.append(f"    {work.assessed} of the crash states assessed, the others covered by those checks; "
                     f"{work.reference} on {REFERENCE_DRIVER}")
    elif found.from_scratch and found.workloads:
        lines.append(f"  every workload checked from scratch: {found.from_scratch}")
    if found.reused:
        lines.append(f"  {found.reused} workload outcome(s) read from the store, not checked again")
    if found.pending:
        lines.append(f"  pending: {found.pending} workload(s) not checked yet (the run was interrupted; "
                     f"--resume finishes it)")
    if found.unknown:
        lines.append(f"  unknown: {found.unknown} workload(s) stopped by a budget before a verdict")
    return "\n".join(lines)


CAPABILITIES = (
    (capabilities.IdentityView, "symbolic engine"),
    (capabilities.UnionView, "symbolic engine"),
    (capabilities.KernelTwin, "confirm, conform and real on the kernel"),
    (capabilities.StoreChecks, "layer-store-consistent, no-layer-leak"),
    (capabilities.ScopedOps, "snapshot-isolation"),
    (capabilities.SpaceChecks, "no-space-leak"),
)


def drivers_report(known: dict[str, type[Driver]]) -> str:
    """Each driver: what it is, its options (type, default, meaning), its own ops and
    what the engine can do with it (from its capabilities)."""
    lines = []
    for name, cls in sorted(known.items()):
        lines.append(f"{name}: {cls.description}")
        for key, opt in sorted(cls.OPTIONS.items()):
            kinds = "|".join(str(c) for c in opt.choices) or " or ".join(t.__name__ for t in opt.types)
            lines.append(f"    option {key} ({kinds}; default {opt.default!r}): {opt.help}")
        ops = ", ".join(sorted(cls.EXTRA_OPS))
        lines.append("    ops: " + ("the file-system ops" if cls.FILE_OPS else "no file-system ops")
                     + (f"; {ops}" if ops else ""))
        can = list(dict.fromkeys(what for proto, what in CAPABILITIES if mount_can(cls.MOUNT, proto)))
        lines.append("    the engine can: " + ("; ".join(can) if can else "enumerate crash states"))
    return "\n".join(lines)
