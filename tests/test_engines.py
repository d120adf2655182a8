"""Two engines, one answer: enumeration and the symbolic engine give the same verdict and
the same violated invariants on the whole built-in suite under every persistence model,
choose their counterexamples deterministically, and a spec one engine cannot decide is
reported for itself while the others are checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from checker import check, load_spec
from checker.engine.budget import Budget
from checker.engine.explorer import Context
from checker.symbolic.encoding import unsupported
from tests.conftest import ROOT, make_spec

MODELS = ("prefix", "ordered-metadata", "weak")
ENUMERATE_BUDGET = 200_000  # crash states; beyond it enumeration is incomplete (checked as such)


def decidable() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "specs").glob("*/*.toml")):
        spec = load_spec(path)
        for model in MODELS:
            if unsupported(Context.build(spec, model)) is None:
                out.append((str(path.relative_to(ROOT)), model))
    return out


CASES = decidable()


def test_the_symbolic_engine_covers_the_overlayfs_and_plain_suites():
    # overlayfs and plain specs x 3 persistence models, less link-and-symlink (hard links),
    # the 4 metacopy specs (their data is read from a lower layer), and the 4 nfs_export
    # specs (lookups verify the inodes index)
    assert len(CASES) == 108


@pytest.mark.parametrize(("path", "model"), CASES)
def test_engines_agree_on_the_built_in_suite(path: str, model: str):
    spec = load_spec(ROOT / path)
    enumerated = check(spec, model, engine="enumerate", budget=Budget(max_states=ENUMERATE_BUDGET))
    symbolic = check(spec, model, engine="symbolic", budget=Budget(timeout=300))
    assert not symbolic.bounded, symbolic.why
    if enumerated.bounded:  # enumeration saw part of the states: what it found, z3 finds too
        assert set(enumerated.violated) <= set(symbolic.violated)
    else:
        assert (symbolic.verdict, symbolic.violated) == (enumerated.verdict, enumerated.violated)


def test_volatile_fsync_of_an_append_to_a_lower_file_is_lost_for_both_engines():
    """The symbolic engine passed this: a sync op without steps (volatile skips the
    fsync) returns together with the op before it, so that op can be in flight."""
    spec = make_spec('''
name = "append to a lower file, fsync, volatile mount"
driver = "overlayfs"
[options]
volatile = true
[[layers]]
"f" = "one"
[[ops]]
op = "append"
path = "f"
data = "two"
[[ops]]
op = "fsync"
path = "f"
''')
    for model in MODELS:
        for engine in ("enumerate", "symbolic"):
            r = check(spec, model, engine=engine)
            assert (r.verdict, r.violated) == ("violation", ["durability"]), (model, engine)


def run_json(*args: str, seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    proc = subprocess.run([sys.executable, "-m", "checker", "run", "--json", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def test_symbolic_counterexamples_do_not_depend_on_the_hash_seed():
    args = ("--persistence", "weak", "--engine", "symbolic", "specs/overlayfs/three-layers-rm.toml",
            "specs/overlayfs/mv-lower-dir-redirect-off.toml", "specs/overlayfs/volatile-fsync-lost.toml",
            "specs/overlayfs/mkdir-over-whiteout.toml")
    outputs = {run_json(*args, seed=seed) for seed in ("0", "1", "2", "3")}
    assert len(outputs) == 1


def test_a_spec_the_symbolic_engine_cannot_decide_does_not_stop_the_others(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "checker", "run", "-q", "--engine", "symbolic", "specs/aufs/rename-lower-file.toml",
         "specs/plain"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "crashcheck: error: specs/aufs/rename-lower-file.toml: --engine symbolic: no symbolic encoding "
        "of driver aufs (use --engine enumerate)",
    ]
    assert proc.stdout.count("[engine symbolic]") == 5  # every plain spec was still checked
