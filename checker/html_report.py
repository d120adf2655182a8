"""The HTML report (`crashcheck report RESULTS.json --format html`): one self-contained
file (no external script, style or font) with the findings table, each finding (spec,
invariant, op) with the picture of its first counterexample (inline SVG from
`checker.figures`) and the command that reproduces it, and filters by driver and
invariant. A filter can also be given in the address (`report.html#driver=overlayfs&invariant=atomicity`),
so a link shows a filtered page. Script errors are counted in `data-errors` on the body.

The figures need the spec files the results name (paths as in the JSON, relative to
the directory the report is made from); a finding whose spec is not there is listed
without a picture, and says so.
"""

from __future__ import annotations

import html
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from checker.errors import CrashcheckError
from checker.figures import counterexample, dot_source, layout
from checker.spec import load_spec
from checker.tables import pivot, spec_rows

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #263238; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #cfd8dc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #eceff1; }
td.violation { color: #c62828; font-weight: bold; } td.pass { color: #2e7d32; } td.unknown { color: #ef6c00; }
.finding { border: 1px solid #cfd8dc; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }
.finding svg { max-width: 100%; height: auto; }
code.reproduce { background: #f5f5f5; padding: 0.2em 0.4em; display: inline-block; }
.filters { position: sticky; top: 0; background: #fff; padding: 0.5em 0; border-bottom: 1px solid #cfd8dc; }
[hidden] { display: none !important; }
"""

SCRIPT = """
(function () {
  var errors = 0;
  window.addEventListener('error', function () { errors += 1; document.body.dataset.errors = errors; });
  function apply() {
    var driver = document.getElementById('filter-driver').value;
    var invariant = document.getElementById('filter-invariant').value;
    var shown = 0;
    document.querySelectorAll('[data-driver]').forEach(function (el) {
      var invs = (el.dataset.invariants || '').split(' ');
      var ok = (!driver || el.dataset.driver === driver) && (!invariant || invs.indexOf(invariant) >= 0);
      el.hidden = !ok;
      if (ok && el.classList.contains('finding')) { shown += 1; }
    });
    document.getElementById('shown').textContent = shown;
    var hash = [];
    if (driver) { hash.push('driver=' + encodeURIComponent(driver)); }
    if (invariant) { hash.push('invariant=' + encodeURIComponent(invariant)); }
    history.replaceState(null, '', hash.length ? '#' + hash.join('&') : location.pathname);
  }
  function fromHash() {
    location.hash.replace(/^#/, '').split('&').forEach(function (part) {
      var kv = part.split('=');
      var el = document.getElementById('filter-' + kv[0]);
      if (el && kv.length === 2) { el.value = decodeURIComponent(kv[1]); }
    });
  }
  document.addEventListener('DOMContentLoaded', function () {
    document.body.dataset.errors = errors;
    fromHash();
    document.getElementById('filter-driver').addEventListener('change', apply);
    document.getElementById('filter-invariant').addEventListener('change', apply);
    apply();
    document.body.dataset.ready = 'yes';
  });
})();
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _svg(source: str) -> str:
    """DOT laid out as inline SVG (the XML prolog and doctype dropped)."""
    text = layout(source, "svg").decode()
    return text[text.index("<svg") :] if "<svg" in text else text


def findings(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per (spec, op, invariant): its first violation."""
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    for s in doc["specs"]:
        for v in s.get("violations") or []:
            key = (str(s["file"]), int(v["op"]), str(v["invariant"]))
            if key not in out:
                out[key] = {"spec": s, "violation": v, "count": 0}
            out[key]["count"] += 1
    return [out[k] for k in sorted(out)]


def reproduce(spec: Mapping[str, Any], v: Mapping[str, Any]) -> list[str]:
    args = ["crashcheck", "run", str(spec["file"])]
    if v.get("persisted"):
        args += ["--persisted", str(v["persisted"])]
    else:
        args += ["--crash-after", str(v["crash_after_step"])]
    args += ["--persistence", str(spec.get("persistence", "prefix"))]
    return args


def _figure(spec: Mapping[str, Any], v: Mapping[str, Any]) -> str:
    path = Path(str(spec["file"]))
    if not path.is_file():
        return f'<p class="nofigure">no figure: {_esc(path)} is not here</p>'
    try:
        loaded = load_spec(path)
        cx = counterexample(
            loaded,
            None if v.get("persisted") else int(v["crash_after_step"]),
            v.get("persisted"),
            str(spec.get("persistence") or loaded.persistence),
        )
    except CrashcheckError as e:
        return f'<p class="nofigure">no figure: {_esc(e)}</p>'
    svg = _svg(dot_source(cx))
    return re.sub(r"<!--.*?-->\s*", "", svg, flags=re.S)  # Graphviz's comments name its version


def html_report(doc: Mapping[str, Any], title: str = "crashcheck findings") -> str:
    rows = spec_rows(doc)
    specs = doc["specs"]
    drivers = sorted({str(s.get("driver", "")) for s in specs})
    invariants = sorted({str(v["invariant"]) for s in specs for v in s.get("violations") or []})
    found = findings(doc)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        f"<style>{STYLE}</style>",
        f"<script>{SCRIPT}</script>",
        "</head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p>{len(specs)} specs, {sum(s['verdict'] == 'violation' for s in specs)} with violations, "
        f"{len(found)} findings (spec, op, invariant).</p>",
        '<div class="filters">driver <select id="filter-driver"><option value="">all</option>',
        *[f'<option value="{_esc(d)}">{_esc(d)}</option>' for d in drivers],
        '</select> invariant <select id="filter-invariant"><option value="">all</option>',
        *[f'<option value="{_esc(i)}">{_esc(i)}</option>' for i in invariants],
        '</select> <span id="shown"></span> findings shown</div>',
        "<h2>Findings per spec</h2>",
        '<table id="specs"><tr>',
        *[
            f"<th>{_esc(c)}</th>"
            for c in ("spec", "driver", "persistence", "verdict", "violated", "crash states", "unique states")
        ],
        "</tr>",
    ]
    for s, row in zip(specs, rows, strict=True):
        invs = " ".join(sorted({str(v["invariant"]) for v in s.get("violations") or []}))
        cells = "".join(
            f'<td class="{_esc(c)}">{_esc(c)}</td>' if i == 3 else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(row)
        )
        out.append(
            f'<tr data-driver="{_esc(s.get("driver", ""))}" data-invariants="{_esc(invs)}">{cells}</tr>'
        )
    out.append("</table>")
    columns, pivot_rows = pivot(doc)
    out += [
        "<h2>Specs violating each invariant</h2>",
        '<table id="pivot"><tr>',
        *[f"<th>{_esc(c)}</th>" for c in columns],
        "</tr>",
    ]
    out += ["<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in pivot_rows]
    out += ["</table>", "<h2>Findings</h2>"]
    for n, f in enumerate(found):
        s, v = f["spec"], f["violation"]
        out += [
            f'<div class="finding" id="finding-{n}" data-driver="{_esc(s.get("driver", ""))}"'
            f' data-invariants="{_esc(v["invariant"])}">',
            f"<h3>{_esc(v['invariant'])} in op {_esc(v['op'])}"
            f" (<code>{_esc(v.get('op_text', ''))}</code>) of "
            f"<code>{_esc(s['file'])}</code></h3>",
            f"<p>{_esc(s.get('name', ''))}: {f['count']} violating crash state(s) listed; the first: "
            f"{_esc(v['message'])}</p>",
            f'<p>reproduce: <code class="reproduce">{_esc(shlex.join(reproduce(s, v)))}</code></p>',
            _figure(s, v),
            "</div>",
        ]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


__all__ = ["findings", "html_report", "reproduce"]
