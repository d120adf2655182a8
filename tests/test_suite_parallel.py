"""`run --jobs N` and `run --scheduler`: the specs are checked elsewhere, the output is
the same byte for byte."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, DaskCluster, free_port

SUITE = ["specs/aufs", "specs/devicemapper", "specs/containerd"]  # 41 specs, some violating


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checker", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def _timeless(text: str) -> str:
    return re.sub(r"\b[0-9]+\.[0-9]+s\b", "<time>", text)


def test_run_on_two_processes_prints_what_one_prints():
    one = cli("run", "--json", *SUITE)
    two = cli("run", "--json", "--jobs", "2", *SUITE)
    assert one.returncode == two.returncode == 0  # every spec as expected (violations included)
    assert len(one.stdout) > 100_000
    assert two.stdout == one.stdout
    text_one, text_two = cli("run", *SUITE), cli("run", "--jobs", "2", *SUITE)
    assert _timeless(text_two.stdout) == _timeless(text_one.stdout)
    assert text_one.stdout.count("\n") > 200


def test_a_spec_that_cannot_be_checked_among_parallel_ones_is_one_line_and_the_others_are_checked():
    args = ("run", "--json", "--engine", "symbolic", "specs/plain/" + _first("specs/plain"),
            "specs/aufs/rename-lower-file.toml", "specs/plain")
    serial, parallel = cli(*args), cli(*args[:2], "--jobs", "2", *args[2:])
    assert serial.returncode == parallel.returncode == 2
    assert parallel.stderr == serial.stderr == (
        "crashcheck: error: specs/aufs/rename-lower-file.toml: --engine symbolic: no symbolic encoding "
        "of driver aufs (use --engine enumerate)\n")
    assert parallel.stdout == serial.stdout
    assert parallel.stdout.count('"engine": "symbolic"') == 6  # every plain spec, the first one twice


def _first(directory: str) -> str:
    return sorted(p.name for p in (ROOT / directory).glob("*.toml"))[0]


def test_run_on_a_dask_cluster_gives_the_local_json(dask_cluster: DaskCluster):
    local = cli("run", "--json", *SUITE)
    remote = cli("run", "--json", "--scheduler", dask_cluster.address, *SUITE)
    assert remote.returncode == local.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout


def test_run_with_an_unreachable_scheduler_is_one_line():
    proc = cli("run", "--scheduler", f"tcp://127.0.0.1:{free_port()}", "specs/plain")
    assert proc.returncode == 2
    assert proc.stderr.startswith("crashcheck: error: run: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert proc.stderr.count("\n") == 1
