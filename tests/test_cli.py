"""The real `crashcheck` command: exit codes, JSON contract, one-line input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SEED = "specs/overlayfs/mv-lower-dir-redirect-off.toml"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "checker", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_builtin_suite_meets_every_expectation():
    proc = run("run", "-q", "specs/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "as expected, 0 not" in proc.stdout


def test_seed_text_report_names_dirs_crash_point_and_invariant():
    proc = run("run", SEED)
    assert proc.returncode == 0
    out = proc.stdout
    assert "no-dual-existence violated in op 0 (`mv DirA DirX`)" in out
    assert "crash after step 14 of 31: rename upper/DirA/f1 -> upper/DirX/f1 (whiteout)" in out
    assert "both DirA and DirX exist after recovery" in out
    assert ">>> crash here" in out
    assert "view before the op:" in out and "view after the op:" in out
    assert "view after the crash and recovery (mount succeeded):" in out
    assert f"reproduce: crashcheck run {SEED} --crash-after 14" in out


def test_json_matches_the_contract_and_is_reproducible():
    first = run("run", "--json", SEED, "specs/plain/mv-dir.toml")
    second = run("run", "--json", SEED, "specs/plain/mv-dir.toml")
    assert first.returncode == 0
    assert first.stdout == second.stdout  # byte-identical
    doc = json.loads(first.stdout)
    assert doc["version"] == 1
    seed, plain = doc["specs"]
    for key in ("file", "name", "driver", "persistence", "verdict", "expected", "ok", "steps",
                "crash_states", "violations"):
        assert key in seed
    assert (seed["file"], seed["driver"], seed["persistence"]) == (SEED, "overlayfs", "prefix")
    assert (seed["verdict"], seed["expected"], seed["ok"]) == ("violation", "violation", True)
    assert (seed["steps"], seed["crash_states"]) == (31, 32)
    v = seed["violations"][0]
    assert set(v) >= {"invariant", "op", "crash_after_step", "message", "paths"}
    assert (v["invariant"], v["op"], v["crash_after_step"]) == ("atomicity", 0, 1)
    assert (plain["verdict"], plain["violations"]) == ("pass", [])


def test_persistence_override_and_unmet_expectation_exit_1(tmp_path: Path):
    spec = tmp_path / "wrong.toml"
    spec.write_text(Path(ROOT / SEED).read_text().replace('verdict = "violation"', 'verdict = "pass"')
                    .replace('invariants = ["no-dual-existence", "atomicity"]', ""))
    proc = run("run", "-q", str(spec))
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL VIOLATION")
    assert run("run", "-q", "--persistence", "prefix", SEED).returncode == 0


BAD = [
    ("name = \n", "invalid TOML: Invalid value (at line 1, column 8)"),
    ('driver = "overlayfs"\n', "missing required key 'name'"),
    ('name = "x"\n', "missing required key 'driver'"),
    ('name = "x"\ndriver = "zfs"\n', "driver: unknown driver 'zfs' (known: aufs, containerd, containers-storage, devicemapper, docker-overlay2, overlayfs, plain, squash)"),
    ('name = "x"\ndriver = "overlayfs"\n[[ops]]\nop = "mvv"\n', "ops[0].op: unknown op 'mvv' for this driver (known: "),
    ('name = "x"\ndriver = "overlayfs"\n[options]\nlowerdir = "/"\n',
     "options: unknown option 'lowerdir' for driver overlayfs (known: copy_up_fsync, fsync, index, kernel, "
     "metacopy, nfs_export, redirect_dir, userxattr, volatile, xino)"),
    ('name = "x"\ndriver = "overlayfs"\n[options]\nvolatile = "yes"\n',
     "options: option 'volatile' must be a boolean, not str"),
    ('name = "x"\ndriver = "overlayfs"\n[options]\nredirect_dir = 1\n',
     "options: option 'redirect_dir' must be a boolean or a string, not int"),
    ('name = "x"\ndriver = "overlayfs"\ncheck = ["atomic"]\n', "check[0]: unknown invariant 'atomic'"),
    ('name = "x"\ndriver = "overlayfs"\n[[layers]]\n"/etc/x" = "y"\n', "must be relative"),
    ('name = "x"\ndriver = "overlayfs"\n[[layers]]\n"a/../b" = "y"\n', "must not contain '.' or '..'"),
    ('name = "x"\ndriver = "overlayfs"\n[[ops]]\nop = "rm"\npath = "./a"\n', "ops[0].path: path './a'"),
    ('name = "x"\ndriver = "overlayfs"\n[[layers]]\n"a" = { type = "fifo" }\n',
     "unknown entry type 'fifo' (known: file, dir, symlink, whiteout, hardlink)"),
    ('name = "x"\ndriver = "overlayfs"\nops = "mv a b"\n', "ops: must be an array of tables ([[ops]])"),
    ('name = "x"\ndriver = "overlayfs"\n[[ops]]\nop = "mv"\nsrc = "a"\n', "ops[0]: mv needs 'dst'"),
    ('name = "x"\ndriver = "overlayfs"\npersistence = "eventual"\n', "unknown persistence model 'eventual'"),
    ('name = "x"\ndriver = "overlayfs"\n[expect]\nverdict = "maybe"\n', "expect.verdict: must be one of"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, text: str, message: str):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    proc = run("run", str(spec))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"crashcheck: error: {spec}: ")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_usage_errors_are_one_line_too(tmp_path: Path):
    for args in (["run", str(tmp_path / "missing.toml")], ["run"], ["frobnicate"],
                 ["run", "--crash-after", "99", SEED], ["run", "--persistence", "weird", SEED]):
        proc = run(*args)
        assert proc.returncode == 2, args
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("crashcheck: error: ")


def test_console_script_is_installed():
    import shutil

    beside = Path(sys.executable).parent / "crashcheck"
    exe = str(beside) if beside.exists() else shutil.which("crashcheck")
    if exe is None:
        pytest.skip("crashcheck is not installed in this environment (pip install -e .)")
    proc = subprocess.run([exe, "run", "-q", "specs/plain"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    assert "as expected, 0 not" in proc.stdout


def test_whole_suite_json_is_byte_identical_across_processes_and_hash_seeds():
    import os

    outputs = []
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-m", "checker", "run", "--json", "specs/"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    drivers = {spec["driver"] for spec in json.loads(outputs[0])["specs"]}
    assert drivers == {"aufs", "containerd", "containers-storage", "devicemapper", "docker-overlay2", "overlayfs", "plain",
                       "squash"}


# --- nothing silent ---------------------------------------------------------------------------


MOTD = '''
name = "a write outside the container"
driver = "docker-overlay2"
[[ops]]
op = "pull"
[[ops]]
op = "run"
[[ops]]
op = "write"
path = "etc/motd"
data = "hello"
{declared}
'''


def test_a_failed_op_is_said_in_the_text_and_the_json(tmp_path: Path):
    spec = tmp_path / "motd.toml"
    spec.write_text(MOTD.format(declared=""))
    text = run("run", "-q", "--persistence", "prefix", str(spec))
    assert ("     warning: op 2 `write etc/motd 'hello'` failed with EPERM, so it changed nothing "
            "(add expect_error = \"EPERM\" to the op if that is what you meant)") in text.stdout.splitlines()
    doc = json.loads(run("run", "--json", str(spec)).stdout)
    assert doc["specs"][0]["ops"] == [
        {"op": 0, "op_text": "pull", "result": 0},
        {"op": 1, "op_text": "run", "result": 0},
        {"op": 2, "op_text": "write etc/motd 'hello'", "result": "EPERM"},
    ]


def test_expect_error_declares_a_failure_and_a_mismatch_fails_the_spec(tmp_path: Path):
    spec = tmp_path / "motd.toml"
    spec.write_text(MOTD.format(declared='expect_error = "EPERM"'))
    declared = run("run", "-q", str(spec))
    assert "warning" not in declared.stdout
    [op] = [o for o in json.loads(run("run", "--json", str(spec)).stdout)["specs"][0]["ops"] if o["op"] == 2]
    assert op == {"op": 2, "op_text": "write etc/motd 'hello'", "result": "EPERM", "expect_error": "EPERM"}
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(MOTD.format(declared='expect_error = "ENOENT"'))
    proc = run("run", "-q", str(wrong))
    assert "     op 2 `write etc/motd 'hello'` failed with EPERM, but the spec expects ENOENT" in proc.stdout
    ok = tmp_path / "ok.toml"
    ok.write_text('name = "x"\ndriver = "plain"\n[[ops]]\nop = "mkdir"\npath = "d"\nexpect_error = "EEXIST"\n')
    proc = run("run", "-q", str(ok))
    assert proc.returncode == 1 and "`mkdir d` succeeded, but the spec expects EEXIST" in proc.stdout


def test_explore_random_writes_nothing_into_the_working_directory(tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    proc = run("explore", "--random", "60", "--seed", "3", "--max-ops", "3", "--option", "redirect_dir=off",
               "--jobs", "1", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "driver-induced: 2 group(s)" in proc.stdout  # so hypothesis shrank something
    assert list(work.iterdir()) == []
