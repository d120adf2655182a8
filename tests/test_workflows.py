"""Where users run crashcheck: as a pytest plugin (spec files as test items, xdist,
JUnit), `run --junit`, regression checks (`diff`, `run --baseline`) and driver variants
side by side (`compare`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from checker.regression import diff, parse_variant
from tests.conftest import ROOT

SPECS = ROOT / "specs"
MV_ON = SPECS / "overlayfs/mv-lower-dir-redirect-on.toml"
RENAME = SPECS / "overlayfs/rename-lower-file.toml"


def _run(args: list[str], cwd: Path = ROOT, module: str = "checker.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """The same two specs, the second time with redirect_dir flipped off in one."""
    for side in ("old", "new"):
        (tmp_path / side).mkdir()
        shutil.copy(RENAME, tmp_path / side / "rename.toml")
    shutil.copy(MV_ON, tmp_path / "old" / "mv.toml")
    (tmp_path / "new" / "mv.toml").write_text(MV_ON.read_text().replace("redirect_dir = true",
                                                                        "redirect_dir = false"))
    for side in ("old", "new"):
        proc = _run(["run", "--json", "."], cwd=tmp_path / side)
        (tmp_path / f"{side}.json").write_text(proc.stdout)
    return tmp_path / "old.json", tmp_path / "new.json"


# --- the pytest plugin ------------------------------------------------------------------------


def test_pytest_collects_one_item_per_spec_of_the_suite():
    proc = _run(["--collect-only", "-q", "-p", "no:cacheprovider", "specs/"], module="pytest")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    items = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(items) == len(list(SPECS.rglob("*.toml"))) == 132
    assert "specs/overlayfs/mv-lower-dir-redirect-off.toml::mv-lower-dir-redirect-off" in items


def test_pytest_runs_the_suite_in_parallel_with_junit(tmp_path: Path):
    out = tmp_path / "junit.xml"
    proc = _run(["-q", "-p", "no:cacheprovider", "-n", "2", f"--junitxml={out}", "specs/overlayfs",
                 "specs/aufs"], module="pytest")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "61 passed" in proc.stdout
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "61" and suite.get("failures") == "0"


def test_pytest_selects_by_driver_marker_and_name():
    proc = _run(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "docker-overlay2", "-k", "tag",
                 "specs/"], module="pytest")
    assert [line for line in proc.stdout.splitlines() if "::" in line] == [
        "specs/docker-overlay2/tag-store-atomic.toml::tag-store-atomic",
        "specs/docker-overlay2/tag-store-in-place.toml::tag-store-in-place",
    ]


def test_a_failing_spec_shows_its_counterexample_not_a_traceback(tmp_path: Path):
    text = MV_ON.read_text().replace("redirect_dir = true", "redirect_dir = false")
    (tmp_path / "flipped.toml").write_text(text)
    proc = _run(["-q", "-p", "no:cacheprovider", str(tmp_path)], module="pytest")
    assert proc.returncode == 1
    assert "FAIL VIOLATION" in proc.stdout and "crash after step 14 of 31" in proc.stdout
    assert ">>> crash here" in proc.stdout and "reproduce: crashcheck run" in proc.stdout
    assert "Traceback" not in proc.stdout and "checker/" not in proc.stdout


def test_a_malformed_spec_is_a_collection_error_naming_the_file(tmp_path: Path):
    (tmp_path / "bad.toml").write_text('name = "x"\ndriver = "nosuch"\n')
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'not a spec'\n")
    (tmp_path / "config.toml").write_text("[tool]\nkey = 1\n")  # no spec keys: not collected
    proc = _run(["-q", "-p", "no:cacheprovider", str(tmp_path)], module="pytest")
    assert proc.returncode == 2
    assert "ERROR collecting bad.toml" in proc.stdout
    assert f"crashcheck: error: {tmp_path / 'bad.toml'}: driver: unknown driver 'nosuch'" in proc.stdout
    assert "1 error" in proc.stdout


def test_pytest_options_reach_the_checker(tmp_path: Path):
    shutil.copy(SPECS / "docker-overlay2/pull-prefix-consistent.toml", tmp_path / "spec.toml")
    proc = _run(["-q", "-p", "no:cacheprovider", "--crashcheck-persistence", "ordered-metadata",
                 "--crashcheck-max-states", "10", str(tmp_path)], module="pytest")
    assert proc.returncode == 1
    assert "docker-overlay2/ordered-metadata" in proc.stdout


# --- run --junit ---------------------------------------------------------------------------------


def test_run_junit_has_one_testcase_per_spec_and_is_reproducible(tmp_path: Path):
    old, new = _two_runs(tmp_path)
    junit = []
    for i in range(2):
        out = tmp_path / f"j{i}.xml"
        _run(["run", "-q", "--junit", str(out), "."], cwd=tmp_path / "new")
        junit.append(out.read_bytes())
    assert junit[0] == junit[1]
    suite = ET.fromstring(junit[0]).find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"mv", "rename"}
    failure = cases["mv"].find("failure")
    assert failure is not None and cases["rename"].find("failure") is None
    assert failure.get("message") == ("violation of atomicity, no-dual-existence, expected pass: "
                                      "32 crash states, 58 violations")


# --- regression ---------------------------------------------------------------------------------


def test_diff_reports_a_planted_regression_as_new_findings(tmp_path: Path):
    old, new = _two_runs(tmp_path)
    proc = _run(["diff", str(old), str(new)])
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[1:] == [
        "  WORSE  mv.toml: pass -> violation; no longer meets its expectation",
        "           new: atomicity in op 0 `mv DirA DirX` (29 crash states)",
        "           new: no-dual-existence in op 0 `mv DirA DirX` (29 crash states)",
    ]
    back = _run(["diff", "--json", str(new), str(old)])
    assert back.returncode == 0  # the way back only fixes
    [change] = json.loads(back.stdout)["changed"]
    assert change["worse"] is False and [f["invariant"] for f in change["fixed"]] == [
        "atomicity", "no-dual-existence"]
    md = _run(["diff", "--markdown", str(old), str(new)])
    assert md.stdout.startswith("**crashcheck: worse**") and "| `mv.toml` :warning: |" in md.stdout


def test_diff_of_identical_runs_is_no_change(tmp_path: Path):
    old, _ = _two_runs(tmp_path)
    proc = _run(["diff", str(old), str(old)])
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[-1] == "  no change"


def test_diff_names_added_and_removed_specs():
    a = {"specs": [{"file": "a.toml", "verdict": "pass", "ok": True, "violations": []}]}
    b = {"specs": [{"file": "b.toml", "verdict": "pass", "ok": True, "violations": []}]}
    d = diff(a, b)
    assert (d.added, d.removed, d.worse) == (["b.toml"], ["a.toml"], False)


def test_run_baseline_runs_and_diffs_in_one_go(tmp_path: Path):
    old, _ = _two_runs(tmp_path)
    worse = _run(["run", "-q", "--baseline", str(old), "."], cwd=tmp_path / "new")
    assert worse.returncode == 1 and "WORSE  mv.toml: pass -> violation" in worse.stdout
    same = _run(["run", "-q", "--baseline", str(old), "."], cwd=tmp_path / "old")
    assert same.returncode == 0 and same.stdout.splitlines()[-1] == "  no change"


def test_diff_refuses_what_is_not_a_result_document(tmp_path: Path):
    (tmp_path / "x.json").write_text('{"specs": 3}')
    proc = _run(["diff", str(tmp_path / "x.json"), str(tmp_path / "x.json")])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f'crashcheck: error: {tmp_path / "x.json"}: not a crashcheck result document (no "specs" list)'


def test_compare_puts_driver_variants_side_by_side():
    proc = _run(["compare", str(MV_ON), "--variant", "on=overlayfs:redirect_dir=true",
                 "--variant", "off=overlayfs:redirect_dir=false", "--variant", "plain=plain"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "| spec | on (overlayfs: redirect_dir=true) | off (overlayfs: redirect_dir=false) | plain (plain) |",
        "| --- | --- | --- | --- |",
        "| `mv-lower-dir-redirect-on` | pass, 8 states | violation (atomicity, no-dual-existence), 32 states "
        "| pass, 2 states |",
    ]
    doc = json.loads(_run(["compare", "--json", str(MV_ON), "--variant", "a=overlayfs",
                           "--variant", "b=overlayfs:redirect_dir=false"]).stdout)
    assert doc["specs"][0]["results"]["b"]["violated"] == ["atomicity", "no-dual-existence"]


def test_compare_input_errors_are_one_line():
    assert parse_variant("x=overlayfs:redirect_dir=false,volatile=true").options == (
        ("redirect_dir", False), ("volatile", True))
    for variants, message in [
        (["a=nosuch", "b=plain"], "--variant a: unknown driver 'nosuch'"),
        (["a=overlayfs:bogus=1", "b=plain"], "--variant a: unknown option 'bogus' for driver overlayfs"),
        (["a=plain"], "compare: give at least two --variant"),
        (["broken", "b=plain"], "--variant 'broken': write NAME=DRIVER"),
    ]:
        args = ["compare", str(MV_ON)]
        for v in variants:
            args += ["--variant", v]
        proc = _run(args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1
