"""Figures for write-ups (`crashcheck figure`).

A counterexample (`figure SPEC --crash-after K | --persisted LIST --out FILE`): the
op's steps as a timeline, each marked persisted, lost or torn, with the crash line
after step K; the persistence model's "must persist before" edges that matter (between
a persisted and a lost step of the op, transitively reduced with networkx); and the
three views (before the op, after it, after the crash and recovery) side by side, the
paths where the recovered view differs from both marked. It is written as Graphviz DOT
and laid out by `dot` (SVG, PDF or PNG); the same input gives the same file.

Plots (`figure SPEC... --plot ops|persistence --out FILE`, matplotlib): crash states
and violating crash states per op of each spec; crash states of each spec under each
persistence model. SVG output carries no date and a fixed hash salt, so it is
reproducible too.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checker.engine import views
from checker.engine.check import check
from checker.engine.explorer import Context
from checker.engine.persistence import MODELS, CrashState, parse_persisted
from checker.errors import CrashcheckError, UsageError
from checker.spec import Spec
from models.tree import Dir

FIGURE_FORMATS = ("svg", "pdf", "png")
DOT_TIMEOUT = 60  # seconds for Graphviz to lay a figure out
MAX_SHOWN_STEPS = 40  # steps of the op drawn around the crash line
MAX_VIEW_LINES = 30  # entries of each view drawn


class FigureUnavailable(CrashcheckError):
    """Graphviz or matplotlib is missing; the message says what to install."""


@dataclass(frozen=True)
class Counterexample:
    """One crash state of a spec, ready to draw."""

    spec: Spec
    persistence: str
    op_text: str
    steps: list[tuple[int, str, str]]  # (1-based index, text, "persisted" | "lost" | "torn")
    crash_after: int
    edges: list[tuple[int, int]]  # must-persist-before edges that matter (1-based)
    before: list[str]
    after: list[str]
    recovered: list[str]
    refusal: str
    differing: set[str]
    findings: list[str]


def counterexample(
    spec: Spec, crash_after: int | None, persisted: str | None, persistence: str | None = None
) -> Counterexample:
    import networkx as nx

    model = persistence or spec.persistence
    ctx = Context.build(spec, model)
    trace, c = ctx.trace, ctx.constraints
    n = len(trace.steps)
    if persisted is not None:
        crash = parse_persisted(persisted, n, c.pieces)
    else:
        if crash_after is None or not 0 <= crash_after <= n:
            raise UsageError(
                f"{spec.file}: --crash-after must be between 0 and {n} (the trace has {n} steps)"
            )
        crash = CrashState(crash_after)
    if not c.allows(crash):
        raise UsageError(f"{spec.file}: {persisted or crash_after}: {model} does not allow this crash state")
    op = trace.ops[ctx.persistence.op_in_flight(trace, crash, c)]
    first, end = op.first_step, max(op.end_step, crash.crash_after_step)
    lo = max(first, min(crash.crash_after_step - MAX_SHOWN_STEPS // 2, end - MAX_SHOWN_STEPS))
    hi = min(end, lo + MAX_SHOWN_STEPS)
    steps = [(i + 1, str(trace.steps[i]), _status(crash, i, c.pieces[i])) for i in range(lo, hi)]
    shown = {i for i, _, _ in steps}
    status = {i: s for i, _, s in steps}
    sub = nx.DiGraph(c.graph.subgraph(i - 1 for i in shown))
    reduced = nx.transitive_reduction(sub) if nx.is_directed_acyclic_graph(sub) else sub
    edges = sorted(
        (a + 1, b + 1)
        for a, b in reduced.edges
        if status[a + 1] == "persisted" and status[b + 1] != "persisted"
    )
    state = ctx.persistence.materialize(trace, crash, c, ctx.block_size)
    rec = trace.mount.recover(state)
    root = rec.root if rec.root is not None else rec.fallback
    recovered_view = trace.mount.view(root) if root is not None else None
    differing: set[str] = set()
    if recovered_view is not None:
        differing = set(views.diff(op.before, recovered_view, limit=200)) & set(
            views.diff(op.after, recovered_view, limit=200)
        )
    result = check(spec, model, crash_after if persisted is None else None, persisted=persisted)
    found = sorted({f"{v.invariant}: {v.message}" for v in result.violations})
    return Counterexample(
        spec,
        model,
        op.text,
        steps,
        crash.crash_after_step,
        edges,
        _view_lines(op.before),
        _view_lines(op.after),
        _view_lines(recovered_view) if recovered_view is not None else [],
        rec.refusal if rec.refused else "",
        differing,
        found,
    )


def _status(crash: CrashState, i: int, pieces: int) -> str:
    got = crash.amount(i, pieces)
    return "persisted" if got == pieces else ("torn" if got else "lost")


def _view_lines(view: Dir) -> list[str]:
    lines = [line.strip() for line in views.render(view, "")]
    return lines[:MAX_VIEW_LINES] + (
        [f"... {len(lines) - MAX_VIEW_LINES} more"] if len(lines) > MAX_VIEW_LINES else []
    )


# --- DOT -------------------------------------------------------------------------------------

COLORS = {"persisted": "#2e7d32", "lost": "#9e9e9e", "torn": "#ef6c00"}
FILL = {"persisted": "#e8f5e9", "lost": "#ffffff", "torn": "#fff3e0"}


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def dot_source(cx: Counterexample) -> str:
    """The figure as Graphviz DOT (deterministic: everything in a fixed order)."""
    title = f"{cx.spec.name} — {cx.persistence}, crash after step {cx.crash_after}"
    out = [
        "digraph counterexample {",
        '  graph [rankdir=TB, fontname="DejaVu Sans", fontsize=12, labelloc=t, newrank=true,'
        " nodesep=0.3, ranksep=0.15,"
        f" label=<<b>{_esc(title)}</b>>];",
        '  node [fontname="DejaVu Sans Mono", fontsize=10, shape=box, style="rounded,filled"];',
        '  edge [fontname="DejaVu Sans", fontsize=9];',
        f"  subgraph cluster_timeline {{ label=<op <i>{_esc(cx.op_text)}</i>: steps>;"
        ' style=rounded; color="#607d8b";',
    ]
    previous = ""
    for i, text, status in cx.steps:
        node = f"s{i}"
        style = "rounded,filled" + (",dashed" if status == "lost" else "")
        label = _esc(f"{i}  {text}" if len(text) <= 60 else f"{i}  {text[:57]}...")
        out.append(
            f'    {node} [id="step{i}", class="{status}", label="{label}\\l", color="{COLORS[status]}",'
            f' fillcolor="{FILL[status]}", style="{style}", tooltip="{status}"];'
        )
        if previous:
            out.append(f"    {previous} -> {node} [color=\"#b0bec5\", arrowsize=0.5, weight=10];")
        previous = node
        if i == cx.crash_after:
            out.append(
                '    crash [id="crash-line", label="crash", shape=plaintext, style="", fontcolor="#c62828",'
                ' fontname="DejaVu Sans Bold"];'
            )
            out.append(f'    {node} -> crash [color="#c62828", penwidth=3, arrowhead=none, weight=10];')
            previous = "crash"
    if not any(i == cx.crash_after for i, _, _ in cx.steps):
        out.append(
            '    crash [id="crash-line", label="crash (before these steps)", shape=plaintext, style="",'
            ' fontcolor="#c62828"];'
        )
    out.append("  }")
    for a, b in cx.edges:
        out.append(
            f'  s{a} -> s{b} [class="dependency", color="#1565c0", constraint=false,'
            ' label="must persist first", fontcolor="#1565c0"];'
        )
    out.append('  subgraph cluster_views { label=<views>; style=rounded; color="#607d8b";')
    for key, name, lines in (
        ("before", "before the op", cx.before),
        ("after", "after the op", cx.after),
        ("recovered", "after the crash and recovery", cx.recovered),
    ):
        rows = "".join(
            _view_row(line, key == "recovered" and _path_of(line) in cx.differing) for line in lines
        )
        if key == "recovered" and cx.refusal:
            rows = (
                f'<tr><td align="left"><font color="#c62828">{_esc(cx.refusal[:90])}</font></td></tr>' + rows
            )
        rows = rows or '<tr><td align="left"><i>(empty)</i></td></tr>'
        out.append(
            f'    view_{key} [id="view-{key}", shape=plaintext, style="", label=<<table border="1"'
            f' cellborder="0" cellspacing="0" cellpadding="3"><tr><td bgcolor="#eceff1"><b>{_esc(name)}</b>'
            f"</td></tr>{rows}</table>>];"
        )
    out.append("  }")
    first = f"s{cx.steps[0][0]}" if cx.steps else "crash"
    out.append(f"  {{ rank=same; {first}; view_before; view_after; view_recovered; }}")
    out.append("  view_before -> view_after -> view_recovered [style=invis];")
    if cx.findings:
        text = "".join(f'<tr><td align="left">{_esc(f[:110])}</td></tr>' for f in cx.findings[:6])
        out.append(
            '  findings [id="findings", shape=plaintext, style="",'
            f' label=<<table border="0"><tr><td align="left"><b>violated</b></td></tr>{text}</table>>];'
        )
        out.append("  view_recovered -> findings [style=invis];")
    out.append("}")
    return "\n".join(out) + "\n"


def _path_of(line: str) -> str:
    return line.split()[0].rstrip("/") if line.split() else ""


def _view_row(line: str, marked: bool) -> str:
    text = _esc(line)
    if marked:
        return f'<tr><td align="left" bgcolor="#ffebee"><font color="#c62828"><b>{text}</b></font></td></tr>'
    return f'<tr><td align="left">{text}</td></tr>'


def layout(source: str, fmt: str) -> bytes:
    """The DOT source laid out by Graphviz's `dot` as `fmt` (svg, pdf, png)."""
    dot = shutil.which("dot")
    if dot is None:
        raise FigureUnavailable("figures need Graphviz's dot (apt-get install graphviz)")
    proc = subprocess.run([dot, f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=DOT_TIMEOUT)
    if proc.returncode != 0:
        raise FigureUnavailable(f"dot failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return proc.stdout


def render_dot(source: str, out: Path) -> None:
    """Lay the DOT source out into `out` (its suffix picks the format)."""
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise UsageError(f"{out}: the figure must be .svg, .pdf or .png")
    out.write_bytes(layout(source, fmt))


def figure(
    spec: Spec, out: Path, crash_after: int | None, persisted: str | None, persistence: str | None = None
) -> Counterexample:
    cx = counterexample(spec, crash_after, persisted, persistence)
    render_dot(dot_source(cx), out)
    return cx


# --- plots ------------------------------------------------------------------------------------

PLOTS = ("ops", "persistence", "explore")


PLOT_STATES = 20_000  # crash states counted per spec for a plot


def states_per_op(spec: Spec, persistence: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """Per op: the crash states during it (its op in flight), and how many violate an
    invariant (the first PLOT_STATES crash states of the spec)."""
    model = persistence or spec.persistence
    ctx = Context.build(spec, model)
    trace, c = ctx.trace, ctx.constraints
    per_op = {op.index: 0 for op in trace.ops}
    for n, (crash, _) in enumerate(ctx.persistence.crash_states(trace, c, ctx.block_size)):
        if n >= PLOT_STATES:
            break
        op = ctx.persistence.op_in_flight(trace, crash, c)
        per_op[op] = per_op.get(op, 0) + 1
    violating: dict[int, set[CrashState]] = {}
    for v in check(spec, model).violations:
        violating.setdefault(v.op, set()).add(v.crash)
    return per_op, {op: len(found) for op, found in violating.items()}


def plot(specs: list[Spec], kind: str, out: Path, persistence: str | None = None) -> None:
    """A matplotlib plot of the specs: crash states and violating ones per op (`ops`), or
    crash states under each persistence model (`persistence`)."""
    plt = _pyplot()
    fmt = _plot_format(out)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(specs) + 3), 4))
    if kind == "ops":
        labels, states, bad = [], [], []
        for spec in specs:
            per_op, violating = states_per_op(spec, persistence)
            for index in sorted(per_op):
                labels.append(f"{Path(spec.file).stem}\nop {index}")
                states.append(per_op[index])
                bad.append(violating.get(index, 0))
        x = range(len(labels))
        ax.bar(x, states, color="#90caf9", label="crash states during the op")
        ax.bar(x, bad, color="#e57373", label="of which violate an invariant")
        ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("crash states")
    elif kind == "persistence":
        models = sorted(MODELS)
        width = 0.8 / len(models)
        for k, model in enumerate(models):
            counts = [check(spec, model).crash_states for spec in specs]
            ax.bar([i + k * width for i in range(len(specs))], counts, width, label=model)
        names = [Path(s.file).stem for s in specs]
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(specs))], names, rotation=45, ha="right",
                      fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("crash states (log)")
    else:
        raise UsageError(f"--plot must be one of {', '.join(PLOTS)}")
    _save(fig, ax, out, fmt)


def plot_explore(doc: dict[str, object], out: Path) -> None:
    """The driver-induced groups an `explore --json` run found, per op kind, stacked by
    invariant."""
    groups = doc.get("driver_induced")
    if not isinstance(groups, list):
        raise UsageError("--plot explore takes the JSON document of `crashcheck explore --json`")
    plt = _pyplot()
    fmt = _plot_format(out)
    counts: dict[str, dict[str, int]] = {}
    for g in groups:
        if isinstance(g, dict):
            by_op = counts.setdefault(str(g.get("invariant")), {})
            by_op[str(g.get("op"))] = by_op.get(str(g.get("op")), 0) + 1
    ops = sorted({op for by_op in counts.values() for op in by_op})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(ops) + 3), 4))
    bottom = [0] * len(ops)
    for invariant in sorted(counts):
        heights = [counts[invariant].get(op, 0) for op in ops]
        ax.bar(ops, heights, bottom=bottom, label=invariant)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("driver-induced groups")
    ax.set_title(f"explore: {doc.get('workloads')} workloads, {doc.get('crash_states')} crash states",
                 fontsize=9)
    _save(fig, ax, out, fmt)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise FigureUnavailable("plots need matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "crashcheck"  # the same SVG ids every run
    matplotlib.rcParams["font.family"] = "DejaVu Sans"
    return plt


def _plot_format(out: Path) -> str:
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise UsageError(f"{out}: the plot must be .svg, .pdf or .png")
    return fmt


def _save(fig: Any, ax: Any, out: Path, fmt: str) -> None:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)


__all__ = [
    "Counterexample", "FigureUnavailable", "counterexample", "dot_source", "figure", "plot", "plot_explore",
]
