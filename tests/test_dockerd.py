"""The docker-overlay2 model against dockerd 20.10 running here: every op's durable steps,
results and views (`crashcheck conform`), the recorder of its system calls, the archive
it loads, and a private daemon that leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from checker import load_spec
from checker.real.daemon_conform import comparable, conform_dockerd
from checker.real.dockerd import unavailable_reason
from checker.real.store_events import unordered_removals
from checker.real.syscall_log import Recorder, parse
from checker.real.workspace import PREFIX, mounts_under
from models.docker_archive import archive_of, image_tarball, layer_tar
from models.format import OPAQUE
from models.tree import Dir, File, Symlink, Whiteout
from tests.conftest import ROOT, make_spec

REASON = unavailable_reason()
needs_dockerd = pytest.mark.skipif(REASON is not None, reason=f"dockerd cannot run here: {REASON}")
DOCKER_SPECS = sorted((ROOT / "specs/docker-overlay2").glob("*.toml"))
LIFECYCLE = '''name = "a whole lifecycle"
driver = "docker-overlay2"
[[layers]]
"bin/sh" = "shell"
[[layers]]
"app/main" = "code"
"gone" = "x"
[[ops]]
op = "pull"
[[ops]]
op = "pull"
[[ops]]
op = "tag"
tag = "web"
[[ops]]
op = "rmi"
image = "web"
[[ops]]
op = "run"
container = "c1"
[[ops]]
op = "write"
path = "containers/c1/app/main"
data = "changed"
[[ops]]
op = "unlink"
path = "containers/c1/gone"
[[ops]]
op = "commit"
container = "c1"
image = "snap"
[[ops]]
op = "rm-container"
container = "c1"
[[ops]]
op = "rmi"
image = "snap"
'''


def _what_if(spec) -> bool:
    """A spec that models another write discipline than this dockerd's."""
    o = spec.options
    return o.get("moby", "20.10") != "20.10" or o.get("link_files", "moby") != "moby" or bool(
        o.get("sync_before_register"))


@needs_dockerd
@pytest.mark.parametrize("path", DOCKER_SPECS, ids=[p.stem for p in DOCKER_SPECS])
def test_every_docker_spec_of_the_suite_runs_on_dockerd(path: Path):
    spec = load_spec(path)
    ops = conform_dockerd(spec)
    assert len(ops) == len(spec.ops) - (spec.crash_index is not None)
    for o in ops:
        assert o.same_result, f"op {o.op} `{o.text}`: model {o.model_result}, dockerd {o.real_result}"
        assert o.view_matches, f"op {o.op} `{o.text}`: the data root does not show the model's view"
        assert not o.store_problems, o.store_problems
        if o.compared and not _what_if(spec):
            assert o.conforms and o.matched == len(o.observed_steps), (
                f"op {o.op} `{o.text}`: only dockerd {o.unexpected}, only the model {o.missing}")


@needs_dockerd
def test_the_model_makes_every_durable_step_dockerd_makes_in_a_lifecycle():
    ops = conform_dockerd(make_spec(LIFECYCLE))
    assert all(o.conforms for o in ops), [(o.text, o.missing, o.unexpected) for o in ops if not o.conforms]
    counted = [(o.text, len(o.observed_steps)) for o in ops if o.compared]
    assert counted == [
        ("pull", 66), ("pull", 19), ("tag web", 7), ("rmi web", 3), ("run c1", 70),
        ("commit snap c1", 36), ("rm-container c1", 64), ("rmi snap", 23),
    ]
    assert sum(o.matched for o in ops if o.compared) == 288


@needs_dockerd
def test_a_tag_store_in_place_differs_from_dockerd_20_10_as_it_should():
    """moby 1.11's in-place tag store is not what dockerd 20.10 does: conform says so."""
    [op] = conform_dockerd(load_spec(ROOT / "specs/docker-overlay2/tag-store-in-place.toml"))
    assert not op.conforms and op.same_result and op.view_matches
    assert op.unexpected == [  # what only dockerd does
        "create image/overlay2/.tmp-repositories.json*",
        "fsync image/overlay2/.tmp-repositories.json*",
        "rename image/overlay2/.tmp-repositories.json* -> image/overlay2/repositories.json",
    ]


@needs_dockerd
def test_conform_cli_json_names_the_implementation(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "checker.cli", "conform", "--json",
                           str(ROOT / "specs/docker-overlay2/tag-store-atomic.toml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["implementation"] == "dockerd" and doc["version"].startswith("20.10")
    [op] = doc["ops"]
    assert op["conforms"] and op["matched"] == 7 and op["view_matches"]


def _ours() -> tuple[list[int], list[Path]]:
    """Processes and mounts of any dockerd workspace on this machine."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if f"{PREFIX}dockerd".encode() in cmd and b"dockerd" in cmd.split(b"\0")[0]:
                pids.append(int(entry))
    mounts = [m for m in mounts_under(Path("/tmp")) if m.name.startswith(f"{PREFIX}dockerd") or
              f"/{PREFIX}dockerd" in str(m)]
    return pids, mounts


def _wait_for_dockerd(proc: subprocess.Popen[bytes]) -> None:
    """Until a daemon of the run has a container mounted: well into the run (a conform
    run takes under 2 s after that, so a fixed wait could outlast it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pids, mounts = _ours()
        if pids and mounts:
            return
        time.sleep(0.01)
    raise AssertionError("dockerd never started")


MODES = {
    "conform": ["conform"],
    "kill": ["real", "--impl", "dockerd"],
    "recorded": ["real", "--impl", "dockerd", "--persistence", "weak"],
}


@needs_dockerd
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_leave_no_daemon_mount_or_directory(sig: int, mode: str):
    proc = subprocess.Popen([sys.executable, "-m", "checker.cli", *MODES[mode],
                             str(ROOT / "specs/docker-overlay2/commit-container.toml")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_dockerd(proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert _ours() == ([], [])
    assert not any(p.name.startswith(f"{PREFIX}dockerd") for p in Path("/tmp").iterdir())


@needs_dockerd
def test_a_killed_run_is_cleaned_by_the_next_one():
    proc = subprocess.Popen([sys.executable, "-m", "checker.cli", "conform",
                             str(ROOT / "specs/docker-overlay2/commit-container.toml")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_dockerd(proc)
    proc.kill()
    proc.wait(timeout=60)
    pids, _ = _ours()
    assert pids, "the daemon outlives a SIGKILL of crashcheck"
    clean = subprocess.run([sys.executable, "-m", "checker.cli", "clean"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert "removed" in clean.stdout + clean.stderr
    assert _ours() == ([], [])


# --- without a daemon ------------------------------------------------------------------------


def test_the_recorder_joins_threads_resolves_dirfds_and_pivoted_helpers():
    log = "\n".join([
        '10  mkdirat(AT_FDCWD</>, "/r/overlay2/L", 0710) = 0',
        '11  openat(AT_FDCWD</>, "/r/overlay2/L/link", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644 <unfinished ...>',
        '12  fsync(5</r/x>) = 0',
        '11  <... openat resumed>) = 7</r/overlay2/L/link>',
        '11  write(7</r/overlay2/L/link>, "AB\\n", 3) = 3',
        '13  mount("/r/overlay2/L/diff", "/r/overlay2/L/diff", 0xc0, MS_BIND|MS_REC, NULL) = 0',
        '13  mkdirat(AT_FDCWD</work>, "/r/overlay2/L/diff/.pivot_root7", 0700) = 0',
        '13  unlinkat(AT_FDCWD</>, "/.pivot_root7", AT_REMOVEDIR) = 0',
        '13  openat(AT_FDCWD</>, "/etc/motd", O_WRONLY|O_CREAT|O_CLOEXEC, 0644) = 8</etc/motd>',
        '13  write(8</etc/motd>, "hi", 2) = 2',
        '14  openat(AT_FDCWD</>, "/r/old", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3</r/old>',
        '14  unlinkat(3</r/overlay2>, "gone", 0) = 0',
        '14  renameat(AT_FDCWD</>, "/r/a", AT_FDCWD</>, "/r/b") = 0',
        '14  unlink("/elsewhere/f") = 0',
        '14  openat(AT_FDCWD</>, "/r/missing", O_RDONLY) = -1 ENOENT (No such file or directory)',
        '14  +++ exited with 0 +++',
    ])
    steps = [str(s) for s, _ in Recorder("/r", {"old", "a"}).steps(parse(log))]
    assert steps == [
        "mkdir overlay2/L mode 710",
        "fsync x",
        "create overlay2/L/link",
        "write overlay2/L/link @0 +'AB\\n'",
        "mkdir overlay2/L/diff/.pivot_root7 mode 700",
        "rmdir overlay2/L/diff/.pivot_root7",
        "create overlay2/L/diff/etc/motd",
        "write overlay2/L/diff/etc/motd @0 +'hi'",
        "truncate old 0",  # O_CREAT of a name that is there: no new name
        "unlink overlay2/gone",
        "rename a -> b",
    ]


def test_names_are_compared_without_their_ids():
    assert comparable("overlay2/" + "a" * 64 + "-init/merged/etc/hosts") == "overlay2/<id>-init/diff/etc/hosts"
    assert comparable("overlay2/ctr-app-init/diff/etc/hosts", ("app",)) == "overlay2/<id>-init/diff/etc/hosts"
    assert comparable("overlay2/l/ABCDEFGHIJKLMNOPQRSTUVWXYZ") == comparable("overlay2/l/L3") == "overlay2/l/<link>"
    assert comparable("containers/app/app-json.log", ("app",)) == "containers/<id>/<id>-json.log"
    assert comparable("image/overlay2/.tmp-repositories.json3198309576") == \
        comparable("image/overlay2/.tmp-repositories.json2") == "image/overlay2/.tmp-repositories.json*"
    assert comparable("image/overlay2/layerdb/sha256/4bbb3f810261-1-removing") == \
        comparable(f"image/overlay2/layerdb/sha256/{'b' * 64}-{'c' * 64}-removing")
    assert unordered_removals(["mkdir a", "unlink a/y", "unlink a/x", "rmdir a", "mkdir b"]) == [
        "mkdir a", "rmdir a", "unlink a/x", "unlink a/y", "mkdir b"]


def test_the_archive_is_what_docker_load_reads():
    layer = Dir({
        "etc": Dir({"motd": File(b"hi", 0o600, (("user.k", b"v"),))}),
        "gone": Whiteout(),
        "opaque": Dir({"kept": File(b"")}, 0o755, ((OPAQUE, b"y"),)),
        "sh": Symlink("/bin/busybox"),
    })
    with tarfile.open(fileobj=io.BytesIO(layer_tar(layer))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["etc", "etc/motd", ".wh.gone", "opaque", "opaque/.wh..wh..opq",
                               "opaque/kept", "sh"] or sorted(members) == sorted(
        ["etc", "etc/motd", ".wh.gone", "opaque", "opaque/.wh..wh..opq", "opaque/kept", "sh"])
    assert members["etc/motd"].mode == 0o600 and members["etc/motd"].pax_headers["SCHILY.xattr.user.k"] == "v"
    assert members["sh"].issym() and members["sh"].linkname == "/bin/busybox"
    assert image_tarball([layer], "x") == image_tarball([layer], "x")  # byte for byte
    archive = archive_of([layer], "x")
    assert json.loads(archive.manifest)[0]["RepoTags"] == ["x:latest"]
