"""The real modes are safe to run as root on a spec from anyone: ops are confined to the
mount (symlinks and `..` resolve inside it, as in a container), nothing outside their
own workspace is touched, and every mount, daemon and temp dir goes away on success,
failure, SIGINT, SIGTERM, and (by the next run, or `crashcheck clean`) after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checker import check
from checker.real.confirm import confirm
from checker.real.conform import conform
from checker.real.crash import real_check, unavailable_reason
from checker.real.workspace import OWNER, PREFIX, mounts_under, processes_using
from tests.conftest import ROOT, make_spec

KERNEL = unavailable_reason("kernel")
FUSE = unavailable_reason("fuse-overlayfs")
kernel_only = pytest.mark.skipif(KERNEL is not None, reason=KERNEL or "")
fuse_only = pytest.mark.skipif(FUSE is not None, reason=FUSE or "")
pytestmark = pytest.mark.kernel

OFF = "specs/overlayfs/mv-lower-dir-redirect-off.toml"


def escape_spec(canary: Path, inside: bool) -> str:
    """Symlinks that point out of the image (absolute, and climbing with `..`), used by
    every kind of op; with `inside`, the view holds the same paths, so the ops succeed
    there (as in a container) instead of failing with ENOENT."""
    c = str(canary)
    climb = "../" * 12 + c.lstrip("/")
    mirror = f'"{c.lstrip("/")}/target" = "inside"\n"{c.lstrip("/")}/victim" = "inside"\n' if inside else ""
    return f'''
name = "symlinks out of the image"
driver = "overlayfs"
[[layers]]
"A/abs" = {{ type = "symlink", target = "{c}/target" }}
"A/rel" = {{ type = "symlink", target = "{climb}/target" }}
"A/d" = {{ type = "symlink", target = "{c}" }}
"A/up" = {{ type = "symlink", target = "{climb}" }}
"A/f" = "payload"
{mirror}
[[ops]]
op = "write"
path = "A/abs"
data = "changed"
[[ops]]
op = "append"
path = "A/rel"
data = "changed"
[[ops]]
op = "unlink"
path = "A/d/victim"
[[ops]]
op = "truncate"
path = "A/up/target"
size = 1
[[ops]]
op = "setxattr"
path = "A/abs"
name = "user.x"
value = "y"
[[ops]]
op = "chmod"
path = "A/d"
mode = 0o777
[[ops]]
op = "cp"
src = "A/f"
dst = "A/abs"
[[ops]]
op = "mv"
src = "A/f"
dst = "A/up/moved"
[[ops]]
op = "rm"
path = "A/d"
[[ops]]
op = "symlink"
target = "/etc/shadow"
path = "A/up/new"
'''


def plant(tmp_path: Path) -> Path:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "target").write_text("original")
    (canary / "victim").write_text("original")
    os.chmod(canary, 0o755)
    return canary


def untouched(canary: Path) -> None:
    assert sorted(os.listdir(canary)) == ["target", "victim"]
    assert (canary / "target").read_text() == "original"
    assert (canary / "victim").read_text() == "original"
    assert os.stat(canary).st_mode & 0o777 == 0o755
    assert os.listxattr(canary / "target") == []


@kernel_only
@pytest.mark.parametrize("inside", [False, True])
def test_real_kernel_and_conform_stay_inside_the_mount(tmp_path: Path, inside: bool):
    canary = plant(tmp_path)
    spec = make_spec(escape_spec(canary, inside))
    model = check(spec)
    # Outside the image nothing is there (ENOENT; `rm -rf A/d` removes the link itself);
    # with the same paths inside the view, every op works there.
    expected = [0] * 10 if inside else ["ENOENT"] * 8 + [0, "ENOENT"]
    assert [op.result for op in model.trace.ops] == expected
    r = real_check(spec, "kernel")
    untouched(canary)
    assert r.disagreements == [], [(o.record.text, o.record.result, o.real) for o in r.disagreements]
    ops = conform(spec)
    untouched(canary)
    assert all(o.conforms for o in ops), [(o.text, o.model_result, o.real_result) for o in ops]


@fuse_only
def test_real_fuse_overlayfs_stays_inside_the_mount(tmp_path: Path):
    canary = plant(tmp_path)
    spec = make_spec(escape_spec(canary, inside=True))
    r = real_check(spec, "fuse-overlayfs")
    untouched(canary)
    assert r.disagreements == []


@kernel_only
def test_confirm_stays_inside_the_mount(tmp_path: Path):
    canary = plant(tmp_path)
    c = str(canary)
    spec = make_spec(f'''
name = "mv of a lower dir holding symlinks out of the image"
driver = "overlayfs"
[[layers]]
"D/abs" = {{ type = "symlink", target = "{c}/target" }}
"D/up" = {{ type = "symlink", target = "{"../" * 12}{c.lstrip("/")}" }}
"D/f" = "x"
[[ops]]
op = "mv"
src = "D"
dst = "E"
''')
    result = check(spec)
    assert result.violations
    confirmations = confirm(result)
    untouched(canary)
    assert {c.status for c in confirmations} == {"confirmed"}


# --- interrupts ----------------------------------------------------------------------------------


def leftovers(tmp: Path) -> list[str]:
    """What runs with TMPDIR=tmp left: workspaces, mounts and processes under it."""
    found = [str(p) for p in mounts_under(tmp)]
    found += [f"pid {p}" for p in processes_using(tmp)]
    found += [p.name for p in tmp.iterdir() if p.name.startswith(PREFIX)]
    return found


def start(tmp: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.Popen([sys.executable, "-m", "checker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


SIGNALS = 30  # 10 per real mode, at seeded random moments
MODES = [
    ("real", "--impl", "kernel", OFF),
    ("real", "--impl", "fuse-overlayfs", OFF),
    ("run", "--confirm", OFF),
]


@fuse_only
def test_signals_at_random_moments_leave_nothing_behind(tmp_path: Path):
    rng = random.Random(8)
    outcomes = []
    for i in range(SIGNALS):
        tmp = tmp_path / f"t{i}"
        tmp.mkdir()
        mode = MODES[i % len(MODES)]
        sig = signal.SIGINT if i % 2 else signal.SIGTERM
        proc = start(tmp, *mode)
        wait_for_workspace(tmp, proc)  # from then on, at a random moment
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        # 130: interrupted; 0 or 1: it had finished; -sig: it was past main(), in the
        # interpreter's exit, where Python has restored the default handlers
        assert proc.returncode in (0, 1, 130, -sig), (mode, sig, proc.returncode, err)
        assert leftovers(tmp) == [], (mode, sig, err)
        outcomes.append(proc.returncode)
    assert outcomes.count(130) >= SIGNALS // 2, "most signals must land while the run works"


def wait_for_workspace(tmp: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(PREFIX) for p in tmp.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its workspace"
        time.sleep(0.005)


def wait_for_mount(tmp: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not mounts_under(tmp):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before mounting"
        time.sleep(0.01)


@fuse_only
def test_a_sigkilled_run_is_cleaned_up_by_the_next_run(tmp_path: Path):
    proc = start(tmp_path, "real", "--impl", "fuse-overlayfs", OFF)
    wait_for_mount(tmp_path, proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    assert leftovers(tmp_path), "a SIGKILLed run cannot clean up after itself"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    after = subprocess.run([sys.executable, "-m", "checker", "real", "--impl", "kernel",
                            "specs/overlayfs/create-with-data.toml"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr
    assert "left by a run that was killed" in after.stderr
    assert leftovers(tmp_path) == []


def workspace_of(tmp: Path, proc: subprocess.Popen[str]) -> Path | None:
    for path in sorted(tmp.iterdir()):
        try:
            owner = json.loads((path / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if owner.get("pid") == proc.pid:
            return path
    return None


def wait_for_own_mount(tmp: Path, proc: subprocess.Popen[str]) -> None:
    """Until the run has a mount in its own workspace."""
    deadline = time.monotonic() + 60
    while (ws := workspace_of(tmp, proc)) is None or not mounts_under(ws):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before mounting"
        time.sleep(0.01)


@fuse_only
def test_crashcheck_clean_removes_what_a_killed_run_left(tmp_path: Path):
    live = start(tmp_path, "real", "--impl", "kernel", OFF)  # a live run is never touched
    wait_for_own_mount(tmp_path, live)
    proc = start(tmp_path, "real", "--impl", "fuse-overlayfs", OFF)
    wait_for_own_mount(tmp_path, proc)
    proc.kill()
    proc.wait(timeout=30)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    cleaned = subprocess.run([sys.executable, "-m", "checker", "clean"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr
    [line] = cleaned.stdout.splitlines()
    assert line.startswith(f"removed {tmp_path}/{PREFIX}real-") and "killed" in line
    assert live.wait(timeout=300) == 0  # the live run went on to its verdict, as expected
    assert leftovers(tmp_path) == []
    again = subprocess.run([sys.executable, "-m", "checker", "clean"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.startswith("nothing to clean")
