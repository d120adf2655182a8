"""Shared helpers for the test suite."""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from checker.real import kernel, sandbox
from checker.spec import Spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent

#: why real overlayfs mounts with confined clients cannot run here, or None
NO_OVERLAY = kernel.overlay_unavailable_reason() or sandbox.unavailable_reason()
#: marks a test that mounts the kernel's overlayfs and runs confined clients on it
NEEDS_OVERLAY = pytest.mark.skipif(NO_OVERLAY is not None, reason=f"needs real overlayfs mounts: {NO_OVERLAY}")


def make_spec(text: str, file: str = "<test>") -> Spec:
    """A spec from TOML text (validated exactly like a spec file)."""
    return parse_spec(tomllib.loads(text), file)


@pytest.fixture
def spec_text():
    return make_spec


def suite_counts(directory: Path) -> dict[str, tuple[int, int, list[str]]]:
    """(steps, crash states, violated invariants) of each built-in spec in a directory,
    checking on the way that each meets its expectation."""
    from checker import check, load_spec

    counts = {}
    for path in sorted(directory.glob("*.toml")):
        r = check(load_spec(path))
        assert r.ok, path.name
        counts[path.stem] = (r.steps, r.crash_states, r.violated)
    return counts


def assert_enumeration_only(spec: Spec, why: str) -> None:
    """`auto` checks `spec` by enumeration, and the symbolic engine says why it cannot."""
    from checker import check

    assert check(spec).engine == "enumerate"
    with pytest.raises(Exception, match=why):
        check(spec, engine="symbolic")


def assert_conforms(spec: Spec, ops: int) -> None:
    """Every one of the spec's `ops` ops conforms with the kernel: steps, result, syncs."""
    from checker.real.conform import conform

    found = conform(spec)
    assert len(found) == ops and all(o.conforms for o in found), [o.to_json() for o in found if not o.conforms]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DaskCluster:
    address: str
    procs: list[subprocess.Popen[bytes]]  # the scheduler, then one nanny per worker


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and 2 workers on this machine, started as the README starts them
    (`dask scheduler`, `dask worker`); every process is ended afterwards."""
    import os
    import sys
    import time

    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "TMPDIR": str(tmp)}  # dask's scratch space goes to tempfile.gettempdir()
    port = address.rsplit(":", 1)[1]
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                              cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1)
        for n in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--local-directory", str(tmp / f"w{n}")],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield DaskCluster(address, procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
