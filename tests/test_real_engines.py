"""The containers-storage and containerd models against podman 4.3 and containerd 1.6
running here, each on a private root: every store op's durable steps, results and views
(`crashcheck conform`), the engine killed at each of its calls (`real --impl`), the
bbolt reader on containerd's real databases, and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checker import load_spec
from checker.real.bbolt import SEQUENCE, parse, read_db
from checker.real.containerd_daemon import ContainerdSession
from checker.real.engine import conform_engine, crash_engine
from checker.real.podman import PodmanSession
from checker.real.workspace import OWNER, PREFIX, mounts_under
from tests.conftest import ROOT

PODMAN = PodmanSession.unavailable()
CONTAINERD = ContainerdSession.unavailable()
needs_podman = pytest.mark.skipif(PODMAN is not None, reason=f"podman cannot run here: {PODMAN}")
needs_containerd = pytest.mark.skipif(CONTAINERD is not None, reason=f"containerd cannot run here: {CONTAINERD}")
CS = ROOT / "specs/containers-storage"
CD = ROOT / "specs/containerd"
SYSTEM_ROOTS = (Path("/var/lib/containers"), Path("/var/lib/containerd"), Path("/dev/shm/libpod_lock"))


@pytest.fixture
def untouched_system():
    """The system's own engine roots are exactly as they were, and no workspace of ours
    stays behind (nothing mounted under it, the dir gone)."""
    before = {p: p.exists() for p in SYSTEM_ROOTS}
    yield
    assert {p: p.exists() for p in SYSTEM_ROOTS} == before
    left = [p for p in Path("/tmp").glob(PREFIX + "*") if _owner(p) == os.getpid()]  # this test's own
    assert not left, left
    assert not any(mounts_under(p) for p in left)


def _owner(ws: Path) -> int | None:
    try:
        return int(json.loads((ws / OWNER).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@needs_podman
def test_podman_import_makes_every_durable_step_of_the_model_in_order(untouched_system):
    [op] = conform_engine(load_spec(CS / "pull-power-loss-incomplete-layer.toml"), PodmanSession)
    assert op.conforms, (op.missing, op.unexpected)
    assert op.matched == len(op.observed_steps) == len(op.model_steps) == 93


@needs_podman
def test_podman_commit_rmi_after_a_crash_and_mounts_conform(untouched_system):
    """write and create in a mounted container, commit (60 of 60 durable steps), then the
    ops after a crash on a restarted store: results and views as the model's."""
    ops = conform_engine(load_spec(CS / "rmi-after-power-loss-links-recreated.toml"), PodmanSession)
    assert [o.conforms for o in ops] == [True] * 5
    commit = ops[2]
    assert commit.compared and commit.matched == len(commit.observed_steps) == 60


@needs_podman
def test_podman_rm_goroutines_conform_as_a_multiset(untouched_system):
    ops = conform_engine(load_spec(CS / "rm-container-crash-rm.toml"), PodmanSession)
    assert all(o.conforms for o in ops)
    assert ops[1].real_result == ops[1].model_result == "ENOENT"


@needs_podman
def test_podman_killed_at_every_call_of_rm_shows_what_the_model_predicts(untouched_system):
    """`podman rm` killed at each of its calls: the model of c/storage 1.43 predicts a
    leaked layer; podman shows it, and more: its goroutines race (a layer gone under a
    listed container) and libpod's own database still lists a container the store
    dropped (engine-view)."""
    r = crash_engine(load_spec(CS / "rm-container-killed.toml"), PodmanSession)
    assert r.model_prefix == ("violation", ("no-layer-leak",))
    assert r.ok and r.verdict == "violation"
    assert "no-layer-leak" in r.violated and "engine-view" in r.violated
    assert r.crash_points >= 80 and r.crash_points + r.missed == r.calls
    doc = r.to_json()
    assert doc["implementation"] == "podman"
    assert all("<id>" in v["message"] or "containers" in v["message"] for v in doc["violations"])


@needs_containerd
def test_containerd_create_and_rm_conform_step_for_step(untouched_system):
    [create] = conform_engine(load_spec(CD / "create-container-killed.toml"), ContainerdSession)
    assert create.conforms and create.matched == len(create.observed_steps) == 18
    ops = conform_engine(load_spec(CD / "rm-container-killed-leaks.toml"), ContainerdSession)
    assert all(o.conforms for o in ops)
    assert ops[1].matched == len(ops[1].observed_steps) == 14


@needs_containerd
def test_containerd_import_conforms(untouched_system):
    """ctr images import of one layer: every durable step of containerd the model makes,
    but bbolt's syncs when it grows meta.db (not modelled)."""
    [op] = conform_engine(load_spec(CD / "pull-power-loss-empty-files.toml"), ContainerdSession)
    assert op.same_result and op.view_matches and not op.store_problems
    # meta.db's transactions: the collection after the import runs on containerd's own
    # schedule (in or just after the traced window), and bbolt syncs when it grows the file
    assert not [e for e in op.unexpected if "meta.db" not in e]
    assert not [e for e in op.missing if "meta.db" not in e]
    assert op.matched >= len(op.observed_steps) - 6


@needs_containerd
def test_containerd_killed_at_every_call_of_create_passes_as_predicted(untouched_system):
    r = crash_engine(load_spec(CD / "create-container-killed.toml"), ContainerdSession)
    assert r.model_prefix == ("pass", ())
    assert r.ok and r.verdict == "pass" and r.crash_points >= 40 and r.missed == 0


@needs_containerd
def test_the_bbolt_reader_reads_containerds_real_databases(tmp_path: Path):
    """A containerd of ours imports an image; both databases parse, with the image, its
    blobs' GC labels and the snapshot chain where containerd keeps them."""
    from checker.engine.trace import build_trace
    from checker.real.workspace import workspace

    spec = load_spec(CD / "create-container-killed.toml")
    with workspace("engine") as ws:
        session = ContainerdSession(ws, spec, build_trace(spec), "db")
        session.start()
        try:
            meta = read_db(session.data / "io.containerd.metadata.v1.bolt/meta.db")
            snaps = read_db(session.data / "io.containerd.snapshotter.v1.overlayfs/metadata.db")
        finally:
            session.stop()
    assert meta is not None and snaps is not None
    ns = meta["v1"]["default"]
    assert [k for k in ns["images"] if k != SEQUENCE] == ["docker.io/library/image:latest"]
    blobs = [r for k, r in ns["content"]["blob"].items() if k != SEQUENCE]
    labels = [r.get("labels", {}) for r in blobs]
    assert any("containerd.io/gc.ref.snapshot.overlayfs" in lab for lab in labels)
    assert any("containerd.io/gc.ref.content.config" in lab for lab in labels)  # the manifest
    backend = {k: r for k, r in snaps["v1"]["snapshots"].items() if k != SEQUENCE}
    assert snaps["v1"]["snapshots"][SEQUENCE] >= 1  # the snapshotter's ids: its bucket's sequence
    assert [k.split("/", 2)[2][:7] for k in backend] == ["sha256:"]  # the image's one layer (its chain id)


def test_an_empty_bbolt_file_is_an_empty_database():
    """bbolt's Open initializes a file of size 0, so the reader does not call it corrupt."""
    assert parse(b"") == {SEQUENCE: 0}
    assert parse(b"\0" * 8192) is None  # no valid meta: bbolt refuses it


@needs_containerd
def test_containerd_killed_before_the_snapshotters_first_write_starts_with_an_empty_database(untouched_system):
    """The snapshotter's metadata.db is made during the first import; a kill on entry to
    its first write leaves an empty file, which containerd opens as a new database. The
    reader once called that file corrupt (`layer-store-consistent`, and `engine-view`
    since containerd listed the image); found by `real --impl containerd --table`."""
    from checker.engine.trace import build_trace
    from checker.real.engine import EngineCrashRun
    from checker.real.workspace import workspace

    spec = load_spec(CD / "pull-power-loss-sync-fs.toml")
    trace = build_trace(spec)
    with workspace("containerd") as ws:
        run = EngineCrashRun(ws, spec, trace, ContainerdSession, None)
        [base] = run.baselines()
        db = ("io.containerd.snapshotter.v1.overlayfs/metadata.db",)
        made = next(c.number for c in base.points if c.paths == db)
        written = next(c.number for c in base.points if c.syscall == "pwrite64" and c.paths == db)
        # call numbers shift a little from run to run (containerd's goroutines): every
        # point from the file's creation to a little past its first write
        run.crash_op(trace.ops[0], base, only=range(made, written + 4))
    assert run.points == written + 4 - made - run.missed and run.points >= written - made
    assert run.violations == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checker", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONHASHSEED="0"))


@needs_podman
def test_cli_conform_and_real_for_podman(untouched_system):
    proc = _cli("conform", "--json", str(CS / "rm-container-crash-rm.toml"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["implementation"] == "podman" and all(o["conforms"] for o in doc["ops"])
    proc = _cli("real", "--impl", "podman", str(CD / "create-container-killed.toml"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"crashcheck: error: {CD / 'create-container-killed.toml'}: real --impl podman runs containers-storage "
        "specs, not containerd"]


@needs_podman
def test_podman_recorded_under_power_loss_shows_podman_12337(untouched_system):
    """podman's own calls of a commit, replayed under ordered-metadata: a recorded layer
    whose `link` (or `lower`) came back empty, as the model of c/storage 1.43 predicts."""
    from checker.real.engine_recorded import recorded_engine_check

    r = recorded_engine_check(load_spec(CS / "commit-power-loss-empty-lower.toml"), PodmanSession,
                              "ordered-metadata")
    assert r.predicted == ("violation", ("layer-store-consistent",))
    assert r.ok and r.violated == ["layer-store-consistent"]
    messages = {v.message for v in r.result.violations}
    assert any("link is missing or empty" in m or "lower is missing or empty" in m for m in messages)
    doc = r.to_json()
    assert doc["implementation"] == "podman" and doc["engine"] == "recorded"
    assert all(v["process"] == "podman" and v["syscall"] for v in doc["violations"])


@needs_containerd
def test_containerd_recorded_under_power_loss_shows_containerd_5854(untouched_system):
    from checker.engine.budget import Budget
    from checker.real.engine_recorded import recorded_engine_check

    r = recorded_engine_check(load_spec(CD / "pull-power-loss-empty-files.toml"), ContainerdSession,
                              "ordered-metadata", budget=Budget(max_states=100_000))
    assert r.ok and r.verdict == "violation" and r.violated == ["layer-store-consistent"]
    assert any("differs from its layer" in v.message for v in r.result.violations)


@needs_podman
def test_a_killed_podman_run_leaves_its_namespace_to_crashcheck_clean(untouched_system):
    """SIGKILL the checker while podman's namespace holder and a podman live: `crashcheck
    clean` ends them (the holder takes the namespace and its mounts along) and removes
    the workspace."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "checker", "real", "--impl", "podman",
                             str(CS / "rm-container-killed.toml")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    before = set(Path("/tmp").glob(PREFIX + "podman-*"))
    deadline = time.monotonic() + 120
    ours: set[Path] = set()
    while time.monotonic() < deadline and not ours:
        time.sleep(0.2)
        ours = {p for p in set(Path("/tmp").glob(PREFIX + "podman-*")) - before
                if any(str(p) in _cmdline(pid) for pid in _pids() if "crashcheck-podman" in _cmdline(pid))}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ours, "the run never started podman's namespace"
    [ws] = ours
    assert ws.exists()
    clean = _cli("clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not ws.exists()
    assert not [pid for pid in _pids() if str(ws) in _cmdline(pid)]


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
