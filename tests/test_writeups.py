"""Tables, figures, plots and the HTML report for write-ups, and the progress bar."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from checker.tables import latex_escape
from tests.conftest import ROOT

SEED = ROOT / "specs/overlayfs/mv-lower-dir-redirect-off.toml"
SVG = "{http://www.w3.org/2000/svg}"
NEEDS_DOT = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checker.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def suite_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    proc = _cli("run", "--json", "specs/")
    assert proc.returncode == 0, proc.stderr
    out.write_text(proc.stdout)
    return out


def test_report_tables_in_three_formats_are_reproducible(suite_json: Path):
    for fmt in ("markdown", "latex", "csv"):
        first, second = _cli("report", str(suite_json), "--format", fmt), _cli("report", str(suite_json),
                                                                            "--format", fmt)
        assert first.returncode == 0 and first.stdout == second.stdout, fmt
    md = _cli("report", str(suite_json)).stdout
    assert "| mv-lower-dir-redirect-off | overlayfs | prefix | violation | atomicity, no-dual-existence | 32 | 30 |" in md
    assert "| overlayfs | prefix | 24 |" in md  # the pivot: 24 overlayfs specs under prefix
    csv_lines = _cli("report", str(suite_json), "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "spec,driver,persistence,verdict,violated,crash states,unique states"
    assert len(csv_lines) == 133
    tex = _cli("report", str(suite_json), "--format", "latex").stdout
    assert tex.count("\\begin{tabular}") == 2 and "\\toprule" in tex and "no-dual-existence" in tex
    assert latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"


@NEEDS_DOT
def test_the_seed_counterexample_as_svg_has_the_crash_line_and_three_views(tmp_path: Path):
    out = tmp_path / "mv.svg"
    proc = _cli("figure", str(SEED), "--crash-after", "15", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "atomicity" in proc.stdout and "no-dual-existence" in proc.stdout
    root = ET.parse(out).getroot()
    ids = {g.get("id"): g for g in root.iter(f"{SVG}g") if g.get("id")}
    assert {"crash-line", "view-before", "view-after", "view-recovered"} <= set(ids)
    classes = {g.get("id"): g.get("class") for g in root.iter(f"{SVG}g")}
    assert classes["step15"] == "node persisted" and classes["step16"] == "node lost"
    texts = ["".join(t.itertext()) for t in ids["view-recovered"].iter(f"{SVG}text")]
    assert "after the crash and recovery" in texts and any(t.startswith("DirA/") for t in texts)
    assert any(t.startswith("DirX/") for t in texts)
    again = tmp_path / "again.svg"
    _cli("figure", str(SEED), "--crash-after", "15", "--out", str(again))
    assert out.read_bytes() == again.read_bytes()


@NEEDS_DOT
def test_a_weak_crash_state_shows_lost_steps_and_the_edges_that_matter(tmp_path: Path):
    spec = ROOT / "specs/overlayfs/create-with-data.toml"
    out = tmp_path / "weak.svg"
    proc = _cli("figure", str(spec), "--persisted", "1", "--persistence", "weak", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(out).getroot()
    classes = [g.get("class") for g in root.iter(f"{SVG}g")]
    assert "node persisted" in classes and "node lost" in classes
    bad = _cli("figure", str(SEED), "--crash-after", "999", "--out", str(out))
    assert bad.returncode == 2 and "--crash-after must be between 0 and 31" in bad.stderr
    bad = _cli("figure", str(SEED), "--crash-after", "3", "--out", str(tmp_path / "x.gif"))
    assert bad.returncode == 2 and ".svg, .pdf or .png" in bad.stderr


def test_plots_are_written_and_reproducible(tmp_path: Path):
    specs = [str(SEED), str(ROOT / "specs/overlayfs/create-with-data.toml")]
    for kind in ("ops", "persistence"):
        a, b = tmp_path / f"{kind}-a.svg", tmp_path / f"{kind}-b.svg"
        for out in (a, b):
            proc = _cli("figure", *specs, "--plot", kind, "--out", str(out))
            assert proc.returncode == 0, proc.stderr
        assert a.read_bytes() == b.read_bytes() and b"<svg" in a.read_bytes()
    png = tmp_path / "ops.png"
    assert _cli("figure", str(SEED), "--plot", "ops", "--out", str(png)).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@NEEDS_DOT
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_html_report_loads_filters_and_renders_in_a_real_browser(suite_json: Path, tmp_path: Path):
    page = tmp_path / "report.html"
    proc = _cli("report", str(suite_json), "--format", "html", "--out", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "<script src" not in text and "<link" not in text and "http://" not in text.split("<svg")[0]
    assert text.count('class="finding"') == 87 and text.count("<svg") == 87
    assert _cli("report", str(suite_json), "--format", "html").stdout == text  # reproducible
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(browser + ["--enable-logging=stderr", "--v=0", "--dump-dom",
                                    f"{page.as_uri()}#driver=overlayfs&invariant=atomicity"],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-errors="0"' in dom.stdout and 'data-ready="yes"' in dom.stdout
    assert "Uncaught" not in dom.stderr and ":ERROR:CONSOLE" not in dom.stderr
    assert '<span id="shown">14</span>' in dom.stdout  # 14 overlayfs findings of atomicity
    hidden = dom.stdout.count('class="finding" id="finding-')
    assert hidden == 87 and dom.stdout.count(' hidden=""') >= 87 - 14
    shot = tmp_path / "report.png"
    subprocess.run(browser + ["--window-size=1280,1600", f"--screenshot={shot}",
                              f"{page.as_uri()}#driver=docker-overlay2"], capture_output=True, timeout=180)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_progress_is_a_bar_on_a_terminal_and_silent_in_a_pipe():
    proc = subprocess.run([sys.executable, "-m", "checker.cli", "run", "-q", "specs/plain"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stderr == ""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "checker.cli", "run", "-q", "specs/overlayfs"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=child, stdin=child)
    os.close(child)
    seen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    p.wait(timeout=60)
    os.close(main)
    assert b"/45 [" in seen and b"spec/s" in seen  # tqdm: n of the 45 specs, a rate


def test_explore_results_plot_per_op_kind(tmp_path: Path):
    doc = {"workloads": 3, "skipped": 0, "crash_states": 40, "inherent": 0, "driver_induced": [
        {"invariant": "atomicity", "op": "mv"}, {"invariant": "no-dual-existence", "op": "mv"},
        {"invariant": "atomicity", "op": "rmdir"}]}
    src = tmp_path / "explore.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "explore.svg"
    proc = _cli("figure", str(src), "--plot", "explore", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert ET.parse(out).getroot().tag == f"{SVG}svg"
    src.write_text('{"specs": []}')
    bad = _cli("figure", str(src), "--plot", "explore", "--out", str(out))
    assert bad.returncode == 2 and "explore --json" in bad.stderr
