"""What changed between two runs of a suite (`crashcheck diff`, `run --baseline`), and
the same specs on several driver variants side by side (`crashcheck compare`).

A finding is an (invariant, op) pair of one spec: the crash states that violate that
invariant during that op, counted. Between an old and a new result document (`run
--json`), spec by spec (matched by file):
- `new`: a finding the new run has and the old one does not; `fixed`: the reverse;
  `unchanged`: both (the crash-state counts may differ, and are shown);
- a verdict change (`pass` -> `violation` ...), and an expectation that stopped or
  started holding (`ok`);
- specs only in the new run (added) or only in the old one (removed).

Worse means: a new finding, a verdict that became `violation` or `unknown`, or a spec
that met its expectation and no longer does. `crashcheck diff` exits 1 when anything is
worse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker.engine.check import Result, check
from checker.errors import CrashcheckError
from checker.spec import Spec
from models import drivers
from models.driver import Driver, OptionError

Finding = tuple[str, int, str]  # (invariant, op index, op text)
WORSE_VERDICTS = {("pass", "violation"), ("pass", "unknown"), ("violation", "unknown")}


class ResultsError(CrashcheckError):
    """A result document that cannot be read; the message names the file."""


def load_json(path: str | Path) -> dict[str, Any]:
    """A JSON document crashcheck wrote (an object)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ResultsError(f"{path}: not a JSON document: {e}") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"{path}: not a crashcheck JSON document (not an object)")
    return doc


def load_results(path: str | Path) -> dict[str, Any]:
    """A `crashcheck run --json` document."""
    doc = load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("specs"), list):
        raise ResultsError(f'{path}: not a crashcheck result document (no "specs" list)')
    for i, spec in enumerate(doc["specs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("file"), str) or "verdict" not in spec:
            raise ResultsError(f'{path}: specs[{i}] is not a spec result (no "file" or "verdict")')
    return doc


def findings(spec: Mapping[str, Any]) -> dict[Finding, int]:
    """(invariant, op, op text) -> crash states listed, of one spec's result (beyond
    10,000 per finding the document only counts them: the finding is still there)."""
    out: dict[Finding, int] = {}
    for v in spec.get("violations") or []:
        key = (str(v.get("invariant")), int(v.get("op", -1)), str(v.get("op_text", "")))
        out[key] = out.get(key, 0) + 1
    return out


@dataclass
class SpecDiff:
    file: str
    name: str
    old_verdict: str
    new_verdict: str
    old_ok: bool
    new_ok: bool
    new: dict[Finding, int] = field(default_factory=dict)
    fixed: dict[Finding, int] = field(default_factory=dict)
    unchanged: dict[Finding, tuple[int, int]] = field(default_factory=dict)

    @property
    def worse(self) -> bool:
        verdict = (self.old_verdict, self.new_verdict) in WORSE_VERDICTS
        return bool(self.new) or verdict or (self.old_ok and not self.new_ok)

    @property
    def changed(self) -> bool:
        return (
            bool(self.new or self.fixed) or self.old_verdict != self.new_verdict or self.old_ok != self.new_ok
        )

    def to_json(self) -> dict[str, Any]:
        def listed(found: Mapping[Finding, Any], key: str) -> list[dict[str, Any]]:
            return [
                {"invariant": i, "op": op, "op_text": text, key: n}
                for (i, op, text), n in sorted(found.items())
            ]

        return {
            "file": self.file,
            "name": self.name,
            "old_verdict": self.old_verdict,
            "new_verdict": self.new_verdict,
            "old_ok": self.old_ok,
            "new_ok": self.new_ok,
            "worse": self.worse,
            "new": listed(self.new, "crash_states"),
            "fixed": listed(self.fixed, "crash_states"),
            "unchanged": [
                {"invariant": i, "op": op, "op_text": text, "old_crash_states": a, "new_crash_states": b}
                for (i, op, text), (a, b) in sorted(self.unchanged.items())
            ],
        }


@dataclass
class Diff:
    old: str
    new: str
    specs: list[SpecDiff]
    added: list[str]
    removed: list[str]

    @property
    def worse(self) -> bool:
        return any(s.worse for s in self.specs)

    @property
    def changed(self) -> list[SpecDiff]:
        return [s for s in self.specs if s.changed]

    def to_json(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "worse": self.worse,
            "changed": [s.to_json() for s in self.changed],
            "unchanged_specs": sum(not s.changed for s in self.specs),
            "added": self.added,
            "removed": self.removed,
        }


def diff(
    old: Mapping[str, Any], new: Mapping[str, Any], old_name: str = "OLD", new_name: str = "NEW"
) -> Diff:
    before = {s["file"]: s for s in old["specs"]}
    after = {s["file"]: s for s in new["specs"]}
    out: list[SpecDiff] = []
    for file in sorted(set(before) & set(after)):
        a, b = before[file], after[file]
        fa, fb = findings(a), findings(b)
        out.append(
            SpecDiff(
                file,
                str(b.get("name", "")),
                str(a["verdict"]),
                str(b["verdict"]),
                bool(a.get("ok")),
                bool(b.get("ok")),
                {k: n for k, n in fb.items() if k not in fa},
                {k: n for k, n in fa.items() if k not in fb},
                {k: (fa[k], fb[k]) for k in sorted(set(fa) & set(fb))},
            )
        )
    return Diff(old_name, new_name, out, sorted(set(after) - set(before)), sorted(set(before) - set(after)))


# --- reports -----------------------------------------------------------------------------------


def _finding_text(f: Finding, count: str) -> str:
    invariant, op, text = f
    return f"{invariant} in op {op} `{text}` ({count} crash states)"


def diff_text(d: Diff) -> str:
    worse = sum(s.worse for s in d.specs)
    lines = [
        f"crashcheck diff {d.old} -> {d.new}: {len(d.changed)} spec(s) changed, {worse} worse, "
        f"{len(d.specs) - len(d.changed)} unchanged, {len(d.added)} added, {len(d.removed)} removed"
    ]
    for s in d.changed:
        mark = "WORSE " if s.worse else "better" if (s.fixed or not s.new) else "changed"
        verdict = s.new_verdict if s.old_verdict == s.new_verdict else f"{s.old_verdict} -> {s.new_verdict}"
        expectation = (
            ""
            if s.old_ok == s.new_ok
            else ("; now meets its expectation" if s.new_ok else "; no longer meets its expectation")
        )
        lines.append(f"  {mark:<6} {s.file}: {verdict}{expectation}")
        lines.extend(f"           new: {_finding_text(f, str(n))}" for f, n in sorted(s.new.items()))
        lines.extend(f"           fixed: {_finding_text(f, str(n))}" for f, n in sorted(s.fixed.items()))
        lines.extend(
            f"           unchanged: {_finding_text(f, f'{a} -> {b}' if a != b else str(a))}"
            for f, (a, b) in sorted(s.unchanged.items())
        )
    lines.extend(f"  added   {f}" for f in d.added)
    lines.extend(f"  removed {f}" for f in d.removed)
    if not d.changed and not d.added and not d.removed:
        lines.append("  no change")
    return "\n".join(lines)


def diff_markdown(d: Diff) -> str:
    worse = sum(s.worse for s in d.specs)
    head = "**crashcheck: worse**" if d.worse else "**crashcheck: nothing got worse**"
    lines = [
        f"{head}: {len(d.changed)} spec(s) changed, {worse} worse, {len(d.specs) - len(d.changed)} "
        f"unchanged, {len(d.added)} added, {len(d.removed)} removed",
        "",
    ]
    if d.changed:
        lines += ["| spec | verdict | new findings | fixed findings |", "| --- | --- | --- | --- |"]
        for s in d.changed:
            verdict = (
                s.new_verdict if s.old_verdict == s.new_verdict else f"{s.old_verdict} → {s.new_verdict}"
            )
            new = "<br>".join(_finding_text(f, str(n)) for f, n in sorted(s.new.items())) or "none"
            fixed = "<br>".join(_finding_text(f, str(n)) for f, n in sorted(s.fixed.items())) or "none"
            name = f"`{s.file}`" + (" :warning:" if s.worse else "")
            lines.append(f"| {name} | {verdict} | {new} | {fixed} |")
        lines.append("")
    lines.extend(f"- added: `{f}`" for f in d.added)
    lines.extend(f"- removed: `{f}`" for f in d.removed)
    return "\n".join(lines).rstrip() + "\n"


# --- driver variants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """`NAME=DRIVER[:k=v,...]`: a driver with options, under a name for the table."""

    name: str
    driver: str
    options: tuple[tuple[str, Any], ...]


def parse_variant(text: str) -> Variant:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise CrashcheckError(f"--variant {text!r}: write NAME=DRIVER[:KEY=VALUE,...]")
    driver, _, opts = rest.partition(":")
    options: list[tuple[str, Any]] = []
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CrashcheckError(f"--variant {text!r}: option {item!r}: write KEY=VALUE")
        options.append((key, option_value(value)))
    return Variant(name, driver, tuple(options))


@dataclass(frozen=True)
class Comparison:
    variants: list[Variant]
    rows: list[tuple[Spec, list[Result]]]

    def to_json(self) -> dict[str, Any]:
        return {
            "variants": [
                {"name": v.name, "driver": v.driver, "options": dict(v.options)} for v in self.variants
            ],
            "specs": [
                {
                    "file": spec.file,
                    "name": spec.name,
                    "results": {
                        v.name: {
                            "verdict": r.verdict,
                            "violated": r.violated,
                            "steps": r.steps,
                            "crash_states": r.crash_states,
                        }
                        for v, r in zip(self.variants, results, strict=True)
                    },
                }
                for spec, results in self.rows
            ],
        }

    def table(self) -> str:
        header = ["spec"] + [f"{v.name} ({v.driver}{_options_text(v)})" for v in self.variants]
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for spec, results in self.rows:
            cells = [f"`{Path(spec.file).stem}`"]
            for r in results:
                inv = f" ({', '.join(r.violated)})" if r.violated else ""
                cells.append(f"{r.verdict}{inv}, {r.crash_states} states")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _options_text(v: Variant) -> str:
    shown = [f"{k}={json.dumps(val).strip(chr(34))}" for k, val in v.options]  # true, not True
    return (": " + ", ".join(shown)) if shown else ""


def variant_driver(v: Variant, spec: Spec) -> Driver:
    """The variant's driver for a spec: its options over the spec's own when it is the
    spec's driver, else its options alone."""
    known = drivers()
    if v.driver not in known:
        raise CrashcheckError(
            f"--variant {v.name}: unknown driver {v.driver!r} (known: {', '.join(sorted(known))})"
        )
    options = dict(spec.options) if v.driver == spec.driver else {}
    options.update(v.options)
    try:
        return known[v.driver](options)
    except OptionError as e:
        raise CrashcheckError(f"--variant {v.name}: {e}") from None


def compare(specs: list[Spec], variants: list[Variant], persistence: str | None = None) -> Comparison:
    """Each spec on each variant."""
    rows = []
    for spec in specs:
        rows.append((spec, [check(spec, persistence, driver=variant_driver(v, spec)) for v in variants]))
    return Comparison(variants, rows)


def option_value(text: str) -> object:
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


__all__ = [
    "Comparison",
    "Diff",
    "ResultsError",
    "SpecDiff",
    "Variant",
    "compare",
    "diff",
    "diff_markdown",
    "diff_text",
    "findings",
    "load_results",
    "parse_variant",
]
