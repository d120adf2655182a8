"""Drivers of your own (entry point `crashcheck.drivers`) and `op = "steps"` in specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checker import check
from checker.engine.trace import build_trace
from tests.conftest import ROOT, make_spec

EXAMPLE = ROOT / "examples/crashcheck-unlink-first"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """The example plug-in installed as a package (wheel built by pip, as a user would)."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0 and "Could not" in proc.stderr and "setuptools" in proc.stderr:
        pytest.skip(f"cannot build the example plug-in here (no setuptools from PyPI): {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("crashcheck_unlink_first-*.dist-info/entry_points.txt"))
    return target


def crashcheck(site: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}" if site else str(ROOT)
    return subprocess.run([sys.executable, "-m", "checker", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plugin_driver_is_found_through_its_entry_point_and_its_bug_is_caught(installed_plugin):
    spec = str(EXAMPLE / "unlink-copied-up.toml")
    proc = crashcheck(installed_plugin, "run", "--json", spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(proc.stdout)["specs"]
    assert result["driver"] == "overlayfs-unlink-first"
    assert result["verdict"] == "violation" and result["ok"]
    assert (result["steps"], result["crash_states"]) == (14, 15)
    # Only the crash between the unlink and the whiteout: it shows the lower motd again.
    assert [(v["invariant"], v["op"], v["crash_after_step"]) for v in result["violations"]] == [
        ("atomicity", 1, 13)
    ]
    text = crashcheck(installed_plugin, "run", spec, "--crash-after", "13").stdout
    assert "crash after step 13 of 14: unlink upper/etc/motd" in text


def test_without_the_plugin_installed_the_driver_name_is_a_one_line_error():
    proc = crashcheck(None, "run", str(EXAMPLE / "unlink-copied-up.toml"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("crashcheck: error: ")
    assert "overlayfs-unlink-first" in proc.stderr and proc.stderr.count("\n") == 1


def test_the_same_workload_on_builtin_overlayfs_passes():
    text = (EXAMPLE / "unlink-copied-up.toml").read_text()
    text = text.replace('driver = "overlayfs-unlink-first"', 'driver = "overlayfs"')
    text = text.replace('verdict = "violation"\ninvariants = ["atomicity"]', 'verdict = "pass"')
    r = check(make_spec(text))
    assert r.verdict == "pass" and r.ok


RAW = """
name = "what if unlink went first"
driver = "overlayfs"
[[layers]]
"etc/motd" = "lower"
[upper]
"etc/motd" = "upper"
[[ops]]
op = "steps"
steps = [
  { step = "unlink", path = "upper/etc/motd" },
  { step = "mknod_whiteout", path = "upper/etc/motd" },
]
"""


def test_raw_steps_op_applies_exactly_the_given_steps_and_is_checked():
    spec = make_spec(RAW)
    trace = build_trace(spec)
    assert [str(s) for s in trace.steps] == ["unlink upper/etc/motd", "mknod upper/etc/motd c 0 0 (whiteout)"]
    r = check(spec)
    assert (r.steps, r.crash_states) == (2, 3)
    assert [(v.invariant, v.crash_after_step) for v in r.violations] == [("atomicity", 1)]


def test_raw_steps_op_stops_at_the_first_failing_step():
    spec = make_spec(RAW.replace('"unlink", path = "upper/etc/motd"', '"unlink", path = "upper/etc/nope"'))
    op = build_trace(spec).ops[0]
    assert op.errno == 2 and op.end_step == op.first_step


@pytest.mark.parametrize(("steps", "message"), [
    ('[{ step = "frobnicate", path = "a" }]', "unknown step 'frobnicate'"),
    ('[{ step = "unlink" }]', "step 'unlink' needs 'path'"),
    ('[{ step = "unlink", path = "a", colour = 1 }]', "unknown field for step 'unlink'"),
    ('[{ step = "rename", src = "a", dst = "b", flags = "sideways" }]', "must be one of"),
    ("[]", "must be a non-empty array"),
])
def test_bad_raw_steps_are_one_line_errors(tmp_path, steps, message):
    f = tmp_path / "bad.toml"
    f.write_text(f'name = "t"\ndriver = "plain"\n[[ops]]\nop = "steps"\nsteps = {steps}\n')
    proc = crashcheck(None, "run", str(f))
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith(f"crashcheck: error: {f}: ") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_broken_plugin_is_an_error_only_for_specs_that_use_it(tmp_path):
    info = tmp_path / "site" / "broken_driver-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[crashcheck.drivers]\nbroken = no_such_module:Driver\n")
    spec = tmp_path / "uses.toml"
    spec.write_text('name = "t"\ndriver = "broken"\n')
    proc = crashcheck(tmp_path / "site", "run", str(spec))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"crashcheck: error: {spec}: driver: driver plug-in broken (no_such_module:Driver) failed to load: "
        "No module named 'no_such_module'\n"
    )
    ok = crashcheck(tmp_path / "site", "run", "-q", "specs/plain/mv-dir.toml")
    assert ok.returncode == 0, ok.stderr
