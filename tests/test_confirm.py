"""`run --confirm`: findings re-checked on the Linux kernel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from checker import check, load_spec
from checker.real import kernel
from checker.real.confirm import confirm
from models.driver import Recovery
from models.overlayfs import OverlayFS, OverlayMount
from models.tree import Dir, Whiteout, replace, walk
from tests.conftest import ROOT, make_spec

REASON = kernel.overlay_unavailable_reason()
pytestmark = [pytest.mark.kernel, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

SEED = "specs/overlayfs/mv-lower-dir-redirect-off.toml"


def test_seed_case_is_confirmed_on_the_kernel():
    result = check(load_spec(ROOT / SEED))
    confirmations = confirm(result)
    assert len(confirmations) == len(result.violations) == 58
    assert {c.status for c in confirmations} == {"confirmed"}
    assert all(c.kernel == kernel.kernel_release() for c in confirmations)
    dual = next(c for v, c in zip(result.violations, confirmations, strict=True)
                if v.invariant == "no-dual-existence")
    assert "both DirA and DirX exist" in dual.detail


class WhiteoutEatingMount(OverlayMount):
    """A deliberately wrong model: it believes the next mount deletes every whiteout in
    upper, so lower files come back after a crash. The kernel does no such thing."""

    def recover(self, root: Dir) -> Recovery:
        rec = super().recover(root)
        assert rec.root is not None
        out = rec.root
        for parts, node in list(walk(rec.root.entries["upper"], ("upper",))):
            if isinstance(node, Whiteout):
                out = replace(out, parts, None)
        return Recovery(out)


class WhiteoutEatingRecovery(OverlayFS):
    MOUNT = WhiteoutEatingMount


def test_a_wrong_model_is_refuted_by_the_kernel():
    spec = make_spec("""
name = "unlink a lower file, then create another"
driver = "overlayfs"
check = ["atomicity"]
[[layers]]
"d/old" = "x"
[[ops]]
op = "unlink"
path = "d/old"
[[ops]]
op = "create"
path = "d/new"
""")
    assert check(spec).violations == []
    wrong = check(spec, driver=WhiteoutEatingRecovery())
    assert [v.crash_after_step for v in wrong.violations] == [9]
    confirmations = confirm(wrong)
    assert [c.status for c in confirmations] == ["refuted"]
    assert confirmations[0].detail.startswith("MODEL BUG")
    assert "d/old" in confirmations[0].detail


def test_cli_confirm_adds_confirmations_to_json_and_text():
    proc = subprocess.run(
        [sys.executable, "-m", "checker", "run", "--confirm", "--json", "specs/overlayfs/create-with-data.toml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0
    [spec] = json.loads(proc.stdout)["specs"]
    [violation] = spec["violations"]
    assert violation["confirmation"]["status"] == "confirmed"
    assert violation["confirmation"]["kernel"] == kernel.kernel_release()
    text = subprocess.run(
        [sys.executable, "-m", "checker", "run", "--confirm", "specs/overlayfs/create-with-data.toml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    ).stdout
    assert "1 confirmed, 0 refuted, 0 unavailable" in text
    assert "atomicity CONFIRMED: mounted on Linux" in text
