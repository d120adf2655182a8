"""`crashcheck explore`: ACE-style workloads, driver-induced versus inherent violations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from checker.workloads.explore import Settings, explore, op_space, random_items, shrink
from tests.conftest import ROOT, DaskCluster, free_port


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


def _store_rows(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0  # connecting would make the file, and the checker would find a store there
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_a_store_survives_sigkill_and_resume_gives_the_same_json(tmp_path: Path):
    """`--store` commits each outcome as it comes: SIGKILL of the checker loses at most
    the units in flight, and `--resume` ends with the bytes of an uninterrupted run,
    checking only what the store lacks; `--report` shows a partial store as pending."""
    run = ["--random", "4000", "--max-ops", "4", "--seed", "7", "--json", "--jobs", "1"]
    whole = cli("explore", *run)
    assert whole.returncode == 0, whole.stderr
    store = tmp_path / "explore.db"
    _kill_mid_run(run, store, 200)
    kept = _store_rows(store)
    assert 200 <= kept < 3000, kept  # killed in the middle, every committed unit still there
    partial = cli("explore", "--store", str(store), "--report")
    assert partial.returncode == 0 and "pending:" in partial.stdout, partial.stdout + partial.stderr
    again = cli("explore", *run, "--store", str(store))
    assert again.returncode == 2 and "give --resume" in again.stderr
    resumed = cli("explore", *run, "--store", str(store), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == whole.stdout
    rows = _store_rows(store)
    text = cli("explore", *run[:-3], "--store", str(store), "--resume")  # nothing left to check
    assert "workload outcome(s) read from the store, not checked again" in text.stdout
    assert _store_rows(store) == rows and "pending" not in text.stdout
    report = cli("explore", "--store", str(store), "--report", "--json")
    assert report.stdout == whole.stdout


def test_an_exhaustive_search_killed_with_its_workers_resumes_to_the_same_json(tmp_path: Path):
    """Depth 2 over 2 processes, units of a prefix and its extensions: SIGKILL of the
    checker takes its worker processes with it, and `--resume` gives the JSON of an
    uninterrupted run."""
    import time

    run = ["--depth", "2", "--option", "redirect_dir=off", "--json", "--jobs", "2"]
    whole = cli("explore", *run)
    assert whole.returncode == 0, whole.stderr
    store = tmp_path / "explore.db"
    workers = _kill_mid_run(run, store, 2000)
    assert workers, "the search ran no worker processes"
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived the checker"
    assert 2000 <= _store_rows(store) < 46706  # killed in the middle (579 + 239 x 193 rows in all)
    resumed = cli("explore", *run, "--store", str(store), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == whole.stdout


def _kill_mid_run(run: list[str], store: Path, rows: int) -> list[int]:
    """Start `explore RUN --store STORE`, SIGKILL it once the store holds `rows` rows;
    the worker processes it had then."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "checker", "explore", *run, "--store", str(store)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _store_rows(store) < rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return workers


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        out.extend(int(c) for c in children)
    return out


def test_a_store_refuses_another_run(tmp_path: Path):
    store = tmp_path / "s.db"
    assert cli("explore", "--depth", "1", "--store", str(store), "--jobs", "1").returncode == 0
    other = cli("explore", "--depth", "1", "--option", "redirect_dir=on", "--store", str(store), "--resume")
    assert other.returncode == 2
    assert other.stderr.startswith(f"crashcheck: error: {store}: the store holds another run")
    assert cli("explore", "--report").returncode == 2


def test_explore_on_a_dask_cluster_gives_the_local_json_even_when_a_worker_dies(dask_cluster: DaskCluster):
    """The cluster's JSON is the local one's; a worker killed mid-run is restarted by its
    nanny and its chunks run again, and the JSON is still the same."""
    import signal
    import time

    import psutil

    address = dask_cluster.address
    depth2 = ["--depth", "2", "--option", "redirect_dir=off", "--json"]  # 242 prefix units
    assert cli("explore", *depth2, "--scheduler", address).stdout == cli("explore", *depth2).stdout
    sample = ["--random", "4000", "--max-ops", "4", "--seed", "3", "--json"]
    local = cli("explore", *sample, "--jobs", "1")
    run = subprocess.Popen([sys.executable, "-m", "checker", "explore", *sample, "--scheduler", address],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    victims = psutil.Process(dask_cluster.procs[1].pid).children(recursive=True)
    assert victims, "the nanny has no worker process"
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert out == local.stdout


def test_an_unreachable_scheduler_is_one_line():
    proc = cli("explore", "--depth", "1", "--scheduler", f"tcp://127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("crashcheck: error: explore: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert proc.stderr.count("\n") == 1
