"""`crashcheck conform`: the model's steps against what the kernel does, op by op."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from checker import load_spec
from checker.real import kernel
from checker.real.conform import conform, normalize
from models.overlayfs import OverlayFS, OverlayMount
from models.steps import MknodWhiteout, StepLog
from tests.conftest import ROOT

REASON = kernel.overlay_unavailable_reason()
pytestmark = [pytest.mark.kernel, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

OVERLAY_SPECS = sorted((ROOT / "specs/overlayfs").glob("*.toml"))


@pytest.mark.parametrize("path", OVERLAY_SPECS, ids=[p.stem for p in OVERLAY_SPECS])
def test_every_overlayfs_spec_of_the_suite_conforms(path: Path):
    ops = conform(load_spec(path))
    assert ops, "the spec has ops"
    for o in ops:
        assert o.conforms, f"op {o.op} `{o.text}`: only in model {o.missing}, only on kernel {o.unexpected}"


def test_seed_case_observed_steps_exactly():
    [op] = conform(load_spec(ROOT / "specs/overlayfs/mv-lower-dir-redirect-off.toml"))
    assert op.observed_steps[:7] == [
        "mkdir upper/DirX",
        "mkdir work/work/#1",
        "rename work/work/#1 -> upper/DirA",
        "create upper/DirA/f1",
        "rename upper/DirA/f1 -> upper/DirX/f1",
        "create upper/DirA/f2",
        "rename upper/DirA/f2 -> upper/DirX/f2",
    ]
    assert len(op.observed_steps) == 18


class UnsharedWhiteoutsMount(OverlayMount):
    """A model variant that makes a fresh whiteout each time instead of linking the
    mount's shared one, as kernels before 5.8 did; the kernel here shares them."""

    def whiteout(self, log: StepLog) -> str:
        path = self.temp_name()
        log.do(MknodWhiteout(path))
        return path


class UnsharedWhiteouts(OverlayFS):
    MOUNT = UnsharedWhiteoutsMount


def test_a_model_that_differs_from_the_kernel_does_not_conform():
    spec = load_spec(ROOT / "specs/overlayfs/rmdir-merged-dir-with-whiteouts.toml")
    ops = conform(spec, UnsharedWhiteouts())
    # Only the first whiteout of a mount tells them apart: the kernel makes one and links it.
    assert [o.conforms for o in ops] == [False, True, True]
    assert ops[0].missing == [] and ops[0].unexpected == ["create work/work/#*"]


def test_normalize_numbers_temp_names_in_order():
    assert normalize(["mkdir work/work/#5f", "rename work/work/#5f -> upper/a", "create work/work/#60"]) == [
        "mkdir work/work/#1", "rename work/work/#1 -> upper/a", "create work/work/#2",
    ]


def test_cli_conform_json_shape():
    proc = subprocess.run(
        [sys.executable, "-m", "checker", "conform", "--json", "specs/overlayfs/rename-lower-file.toml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [op] = doc["ops"]
    assert set(op) >= {"op", "model_steps", "observed_steps", "conforms"}
    assert op["conforms"] is True
    assert op["observed_steps"][-1] == "rename upper/logs/today.log -> upper/archive/today.log"
