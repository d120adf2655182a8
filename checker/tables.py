"""Findings tables for write-ups (`crashcheck report RESULTS.json --format
markdown|latex|csv`), from a `run --json` document.

Two tables: one row per spec (driver, persistence model, verdict, violated invariants,
crash states, unique crash states), and a pivot of driver and persistence model against
invariant (how many specs violate each). The JSON holds no timings, so neither do the
tables: the same results give the same bytes, fit for a paper.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMATS = ("markdown", "latex", "csv", "html")
SPEC_COLUMNS = ("spec", "driver", "persistence", "verdict", "violated", "crash states", "unique states")


def spec_rows(doc: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for s in doc["specs"]:
        violated = sorted({str(v["invariant"]) for v in s.get("violations") or []})
        rows.append(
            (
                Path(str(s["file"])).stem,
                str(s.get("driver", "")),
                str(s.get("persistence", "")),
                str(s["verdict"]),
                ", ".join(violated) or "-",
                str(s.get("crash_states", "")),
                str(s.get("unique_states", "")),
            )
        )
    return rows


def pivot(doc: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, ...]]]:
    """Columns (driver, persistence, specs, one per invariant) and rows: how many specs of
    each (driver, persistence) violate each invariant."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    invariants: set[str] = set()
    for s in doc["specs"]:
        groups.setdefault((str(s.get("driver", "")), str(s.get("persistence", ""))), []).append(s)
        invariants.update(str(v["invariant"]) for v in s.get("violations") or [])
    columns = ["driver", "persistence", "specs", *sorted(invariants)]
    rows = []
    for (driver, persistence), specs in sorted(groups.items()):
        counts = []
        for inv in sorted(invariants):
            n = sum(any(v["invariant"] == inv for v in s.get("violations") or []) for s in specs)
            counts.append(str(n) if n else "-")
        rows.append((driver, persistence, str(len(specs)), *counts))
    return columns, rows


def markdown(doc: Mapping[str, Any]) -> str:
    columns, rows = pivot(doc)
    return "\n".join(
        [
            "## Findings per spec",
            "",
            _md_table(SPEC_COLUMNS, spec_rows(doc)),
            "",
            "## Specs violating each invariant, per driver and persistence model",
            "",
            _md_table(columns, rows),
            "",
        ]
    )


def _md_table(columns: tuple[str, ...] | list[str], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex(doc: Mapping[str, Any]) -> str:
    """Two `tabular`s (booktabs rules: `\\usepackage{booktabs}`)."""
    columns, rows = pivot(doc)
    return "\n".join(
        [
            "% crashcheck findings per spec",
            _latex_table(SPEC_COLUMNS, spec_rows(doc), "lllllrr"),
            "",
            "% specs violating each invariant, per driver and persistence model",
            _latex_table(columns, rows, "llr" + "r" * (len(columns) - 3)),
            "",
        ]
    )


def _latex_table(columns: tuple[str, ...] | list[str], rows: list[tuple[str, ...]], align: str) -> str:
    lines = [
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(latex_escape(c) for c in columns) + r" \\",
        "\\midrule",
    ]
    lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def csv_text(doc: Mapping[str, Any]) -> str:
    """The per-spec table (one header row), RFC 4180 with \\n line ends."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SPEC_COLUMNS)
    writer.writerows(spec_rows(doc))
    return out.getvalue()


__all__ = ["FORMATS", "csv_text", "latex", "latex_escape", "markdown", "pivot", "spec_rows"]
