"""dockerd 20.10 crash-tested on this machine: killed at its N-th call on the data root
and started again (`real --impl dockerd`), and its recorded system calls checked under
power-loss models (`real --impl dockerd --persistence ...`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from checker import load_spec
from checker.real.dockerd_crash import dockerd_check, recorded_check
from tests.conftest import ROOT, make_spec
from tests.test_dockerd import LIFECYCLE, REASON

needs_dockerd = pytest.mark.skipif(REASON is not None, reason=f"dockerd cannot run here: {REASON}")
DOCKER = ROOT / "specs/docker-overlay2"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checker.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


@needs_dockerd
def test_a_tag_killed_at_each_of_its_nine_calls_keeps_the_store_whole():
    """`docker tag` makes 9 calls on the data root (the tag store and the image's
    lastUpdated, each temp file, write, chmod, rename; a mkdir); dockerd killed at each
    starts again with a whole store, as the model of 20.10 predicts."""
    proc = _cli("real", "--impl", "dockerd", "--json", str(DOCKER / "tag-store-atomic.toml"))
    assert proc.returncode == 0, proc.stderr
    [doc] = json.loads(proc.stdout)["specs"]
    assert doc["implementation"] == "dockerd" and doc["engine"] == "real"
    assert (doc["verdict"], doc["expected"], doc["ok"]) == ("pass", "pass", True)
    assert (doc["crash_points"], doc["missed_points"]) == (9, 0)
    assert doc["ops"] == [{"op": 0, "op_text": "tag web", "result": 0, "real_result": 0}]
    assert "engine-view" in doc["invariants"]


@needs_dockerd
def test_a_run_killed_before_its_config_leaks_the_init_layer():
    """Killed on entry to its 2nd call (the init layer's diff/, after its dir), the
    restarted daemon shows no container and the layer dir stays: no-layer-leak, as the
    model predicts; the finding names the call and the daemon's own path."""
    r = dockerd_check(load_spec(DOCKER / "run-killed-leaks-layers.toml"), only=[2])
    assert r.crash_points == 1 and r.verdict == "violation"
    [v] = r.violations
    assert (v.invariant, v.op, v.crash_at_call, v.process) == ("no-layer-leak", 0, 2, "dockerd")
    assert v.syscall == "mkdirat(overlay2/<id>-init/diff)"
    assert v.message == "storage leaked: layer directory overlay2/<id>-init belongs to no layer or container"
    doc = r.to_json()["violations"][0]
    assert {"crash_at_call", "syscall", "process"} <= set(doc)


@needs_dockerd
def test_the_ops_after_a_crash_run_on_the_restarted_daemon():
    """pull, crash, pull: dockerd killed at its first call, in the middle of the first
    layer and of the second, started again, and the second pull must load the image as
    after no crash (dockerd's start empties its staging dir and the re-pull registers
    what is missing)."""
    spec = load_spec(DOCKER / "pull-crash-pull.toml")
    r = dockerd_check(spec, only=[1, 24, 50])
    assert r.crash_points == 3 and r.missed == 0
    assert [v.invariant for v in r.violations if v.invariant == "usable-after-recovery"] == []
    assert r.ok, [(v.invariant, v.crash_at_call, v.message) for v in r.violations]


@needs_dockerd
def test_a_recorded_tag_passes_under_power_loss():
    """The tag store through AtomicWriteFile, as dockerd really writes it: 11 steps from
    its system calls, none to reconcile, and no ordered-metadata crash state loses it."""
    r = recorded_check(load_spec(DOCKER / "tag-store-atomic.toml"), "ordered-metadata")
    [op] = r.recording.ops
    assert (len(op.steps), op.traced, op.made_parents, op.reconciled) == (11, 11, 0, 0)
    assert op.calls[0].startswith("openat(AT_FDCWD, \"image/overlay2/.tmp-repositories.json")
    assert (r.verdict, r.predicted, r.ok) == ("pass", ("pass", ()), True)
    assert (r.result.steps, r.result.crash_states) == (11, 12)


@needs_dockerd
def test_a_recorded_pull_loses_its_link_file_under_power_loss():
    """dockerd never fsyncs `link` or the layer's files, while its layerdb entry is
    fsynced and renamed: recorded and replayed under ordered-metadata, a crash state has
    the layer registered and incomplete, as the model predicts."""
    proc = _cli("real", "--impl", "dockerd", "--persistence", "ordered-metadata", "--json",
                str(DOCKER / "pull-power-loss-empty-link.toml"))
    assert proc.returncode == 0, proc.stderr
    [doc] = json.loads(proc.stdout)["specs"]
    assert doc["implementation"] == "dockerd" and doc["engine"] == "recorded"
    assert doc["verdict"] == "violation" and doc["ok"]
    assert {"atomicity", "layer-store-consistent"} <= set(doc["expected_invariants"])
    found = {v["invariant"] for v in doc["violations"]}
    assert {"atomicity", "layer-store-consistent"} <= found
    broken = next(v for v in doc["violations"] if v["invariant"] == "layer-store-consistent")
    assert broken["process"] == "dockerd" and broken["syscall"]
    assert "<id>" in broken["message"] and not any(c in broken["message"] for c in ("ws-dockerd",))
    [op] = doc["recorded_ops"]
    assert op["op_text"] == "pull" and op["traced_steps"] > 90 and op["reconciled_steps"] <= 2


@needs_dockerd
def test_recorded_power_loss_runs_on_pull_run_commit_rm_and_rmi(tmp_path: Path):
    spec = make_spec(LIFECYCLE)
    from checker.engine.budget import Budget

    r = recorded_check(spec, "ordered-metadata", budget=Budget(max_states=2000))
    kinds = [o.op.kind for o in r.recording.ops]
    assert kinds == ["pull", "pull", "tag", "rmi", "run", "write", "unlink", "commit", "rm-container", "rmi"]
    for o in r.recording.ops:
        assert o.result == 0, o.op.text
        if o.op.kind not in ("write", "unlink"):
            assert o.traced > 0, o.op.text  # from dockerd's own calls
        else:
            assert o.traced == 0 and o.reconciled > 0  # a file op: the kernel's changes
    assert r.result.crash_states > 0 and r.verdict in ("violation", "pass", "unknown")


def test_real_dockerd_refuses_other_drivers_and_mixed_impls():
    proc = _cli("real", "--impl", "dockerd", str(ROOT / "specs/overlayfs/rename-lower-file.toml"))
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("real --impl dockerd runs docker-overlay2 specs, not overlayfs")
    proc = _cli("real", "--impl", "dockerd", "--impl", "kernel", str(DOCKER / "tag-store-atomic.toml"))
    assert proc.returncode == 2 and "on its own" in proc.stderr
    proc = _cli("real", "--impl", "kernel", "--persistence", "weak", str(ROOT / "specs/overlayfs"))
    assert proc.returncode == 2 and "--persistence is for --impl dockerd" in proc.stderr
