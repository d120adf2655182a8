"""`crashcheck explore`: ACE-style workloads, driver-induced versus inherent violations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from checker.workloads.explore import Settings, explore, op_space, random_items, shrink
from tests.conftest import ROOT


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checker", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_op_space_covers_every_op_kind_over_the_fixed_names():
    kinds = {op["op"] for op in op_space()}
    assert kinds == {"create", "write", "append", "truncate", "mkdir", "rmdir", "unlink", "rename",
                     "link", "symlink", "setxattr", "fsync", "sync", "mv", "rm"}
    assert len(op_space()) == 193


def test_depth_1_finds_dual_existence_only_without_redirect_dir():
    off = explore(Settings("overlayfs", (("redirect_dir", "off"),), "prefix"), 1, jobs=2)
    assert set(off.groups) == {("atomicity", "mv"), ("no-dual-existence", "mv")}
    assert off.groups[("no-dual-existence", "mv")].ops == [{"op": "mv", "src": "A", "dst": "B/bar"}]
    assert (off.workloads, off.skipped) == (239, 340)
    on = explore(Settings("overlayfs", (("redirect_dir", "on"),), "prefix"), 1, jobs=2)
    assert on.groups == {} and on.workloads == 243
    assert on.inherent == off.inherent == 9  # rm -rf of a directory, on any file system


def test_docker_drivers_run_the_workloads_in_their_container():
    """The same 1-op workloads inside container `app`: overlay2 finds overlayfs's mv
    finding (same counts), devicemapper (a real file system) finds nothing."""
    docker = explore(Settings("docker-overlay2", (("redirect_dir", "off"),), "prefix"), 1, jobs=2)
    assert set(docker.groups) == {("atomicity", "mv"), ("no-dual-existence", "mv")}
    assert (docker.workloads, docker.skipped, docker.inherent) == (239, 340, 9)
    dm = explore(Settings("devicemapper", (), "prefix"), 1, jobs=2)
    assert dm.groups == {} and (dm.workloads, dm.inherent) == (243, 9)


def test_cli_writes_specs_that_reproduce(tmp_path: Path):
    out = tmp_path / "found"
    proc = cli("explore", "--depth", "1", "--option", "redirect_dir=off", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["workloads"] == 239 and doc["inherent"] == 9
    groups = {(g["invariant"], g["op"]): g["spec"] for g in doc["driver_induced"]}
    assert set(groups) == {("atomicity", "mv"), ("no-dual-existence", "mv")}
    assert all(Path(p).exists() for p in groups.values())
    run = cli("run", "-q", str(out))
    assert run.returncode == 0 and "2 as expected" in run.stdout


def test_random_sampling_is_reproducible_and_shrinks():
    assert random_items(20, 7, 5) == random_items(20, 7, 5)
    settings = Settings("overlayfs", (("redirect_dir", "off"),), "prefix")
    space = op_space()
    mv = {"op": "mv", "src": "A", "dst": "B/bar"}
    picks = (space.index({"op": "setxattr", "path": "B", "name": "user.k", "value": "v"}), space.index(mv))
    found = explore(settings, 2, items=[("lower", picks)])
    key = ("no-dual-existence", "mv")
    assert len(found.groups[key].ops) == 2
    assert shrink(settings, found.groups[key], key).ops == [mv]  # the setxattr does not matter


def test_bad_arguments_exit_2():
    for args in (["explore", "--driver", "zfs"], ["explore", "--option", "nonsense"],
                 ["explore", "--option", "redirect_dir=sideways"], ["explore", "--depth", "0"]):
        proc = cli(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("crashcheck: error: ") and len(proc.stderr.splitlines()) == 1


def test_explore_refuses_a_driver_without_file_ops():
    proc = cli("explore", "--driver", "squash", "--depth", "1")
    assert proc.returncode == 2
    assert proc.stderr == "crashcheck: error: explore: driver squash takes no file-system ops (explore generates those)\n"
