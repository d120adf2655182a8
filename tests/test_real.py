"""`crashcheck real`: crash-testing the kernel and fuse-overlayfs at every system call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checker import load_spec
from checker.real.crash import real_check, unavailable_reason
from tests.conftest import ROOT

OFF = "specs/overlayfs/mv-lower-dir-redirect-off.toml"
ON = "specs/overlayfs/mv-lower-dir-redirect-on.toml"
KERNEL = unavailable_reason("kernel")
FUSE = unavailable_reason("fuse-overlayfs")
kernel_only = pytest.mark.skipif(KERNEL is not None, reason=KERNEL or "")
fuse_only = pytest.mark.skipif(FUSE is not None, reason=FUSE or "")
pytestmark = pytest.mark.kernel


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checker", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, **kwargs)


@kernel_only
def test_kernel_mv_of_lower_dir_without_redirect_dir_shows_both_dirs():
    r = real_check(load_spec(ROOT / OFF), "kernel")
    assert r.verdict == "violation" and r.violated == ["atomicity", "no-dual-existence"]
    dual = [v for v in r.violations if v.invariant == "no-dual-existence"]
    # Killed after mkdirat(DirX) and before unlinkat(DirA): every call in between.
    assert dual and all(v.process == "client" for v in dual)
    assert dual[0].syscall.startswith('openat(AT_FDCWD, "DirA"')
    assert dual[-1].syscall.startswith('unlinkat(AT_FDCWD, "DirA"')
    assert len(dual) == 9 and r.crash_points == r.calls


@kernel_only
def test_kernel_mv_of_lower_dir_with_redirect_dir_passes():
    r = real_check(load_spec(ROOT / ON), "kernel")
    assert r.verdict == "pass" and r.violations == [] and r.crash_points > 0


@kernel_only
def test_real_json_schema():
    proc = cli("real", "--impl", "kernel", "--json", "specs/overlayfs/create-with-data.toml")
    assert proc.returncode == 0, proc.stderr
    [spec] = json.loads(proc.stdout)["specs"]
    assert (spec["engine"], spec["implementation"], spec["verdict"]) == ("real", "kernel", "violation")
    assert spec["crash_points"] == spec["crash_states"] == 2
    [v] = spec["violations"]
    assert (v["invariant"], v["crash_at_call"], v["process"]) == ("atomicity", 2, "client")
    assert v["syscall"] == "write(\"dir/new\", 'payload')"


def readme_row(stem: str, header: str = "| spec | model | kernel") -> list[str]:
    """The row of `stem` in the README table whose header starts with `header`."""
    in_table = False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("|"):
            in_table = in_table or line.startswith(header)
            if in_table and line.startswith(f"| `{stem}` |"):
                return [c.strip() for c in line.strip("|").split("|")]
        else:
            in_table = False
    raise AssertionError(f"no README table row for {stem}")


@fuse_only
@pytest.mark.parametrize("path", [OFF, ON])
def test_fuse_overlayfs_results_are_the_ones_in_the_readme_table(path: str):
    spec = load_spec(ROOT / path)
    row = readme_row(Path(path).stem)
    for column, impl in ((2, "kernel"), (3, "fuse-overlayfs")):
        r = real_check(spec, impl)
        cell = r.verdict + (f" ({', '.join(r.violated)})" if r.violated else "")
        assert row[column] == cell, (impl, row, cell)
    daemon = [v for v in real_check(spec, "fuse-overlayfs").violations if v.process == "daemon"]
    assert daemon, "killing the daemon itself interrupts the mv fallback too"


def test_missing_tools_are_one_line_errors(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mount", "umount", "strace", "cp", "findmnt"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = dict(os.environ, PATH=str(bin_dir))
    proc = cli("real", "--impl", "fuse-overlayfs", OFF, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "crashcheck: error: real --impl fuse-overlayfs: " + (
            "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)" if os.geteuid() == 0
            else "real fuse-overlayfs checks need root (mounts and trusted.* xattrs)"
        )
    ]


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """`crashcheck ARGS` run by an unprivileged user (skips where that cannot be done)."""
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    if os.geteuid() != 0 or runuser is None:
        pytest.skip("needs root to drop to an unprivileged user (runuser)")
    cmd = [runuser, "-u", "nobody", "--"] if runuser.endswith("runuser") else [
        runuser, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    import sysconfig

    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{sysconfig.get_paths()['purelib']}", HOME="/tmp")
    # An interpreter the unprivileged user can run (a venv under /root may not be).
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    proc = subprocess.run(cmd + [python, "-m", "checker", *args], cwd="/tmp", capture_output=True, text=True,
                          env=env, timeout=120)
    if "crashcheck: error" not in proc.stderr:
        pytest.skip(f"the unprivileged user cannot run this checkout: {proc.stderr.strip()[-200:]}")
    return proc


NEED_ROOT = "real overlayfs checks need root (mount(2) and trusted.* xattrs)"


def test_not_root_is_a_one_line_error():
    proc = as_nobody("real", "--impl", "kernel", str(ROOT / OFF))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"crashcheck: error: real --impl kernel: {NEED_ROOT}"


def test_confirm_without_root_is_a_one_line_error():
    proc = as_nobody("run", "--confirm", str(ROOT / OFF))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"crashcheck: error: run --confirm: {NEED_ROOT}"


def test_traced_calls_hold_no_times_or_addresses():
    from checker.real.crash import stable_call

    call = ('utimensat(AT_FDCWD, "DirX", [{tv_sec=1796038610, tv_nsec=548764779} /* 2026-11-30T11:36:50'
            '.548764779+0000 */, {tv_sec=1796038610, tv_nsec=548514496} /* 2026-11-30T11:36:50.548514496+0000 */]'
            ', AT_SYMLINK_NOFOLLOW)')
    assert stable_call(call) == 'utimensat(AT_FDCWD, "DirX", [{...}, {...}], AT_SYMLINK_NOFOLLOW)'
    assert stable_call("mmap(0x7f3a2b1c0000, 4096)") == "mmap(0x..., 4096)"


@kernel_only
def test_real_json_is_reproducible():
    """`mv`'s fallback restores times (utimensat): they used to land in the JSON."""
    first = cli("real", "--impl", "kernel", "--json", OFF)
    second = cli("real", "--impl", "kernel", "--json", OFF)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert "tv_sec=1" not in first.stdout and "utimensat" in first.stdout
