"""The pieces of the dockerd crash modes that need no daemon: the crash-point tool on a
process of our own (it numbers a process's calls on a tree and kills it at the N-th),
the replay and reconciliation of recorded steps, and the workspace's notion of what
is ours."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checker.real import sandbox
from checker.real.crashpoints import build_crashpoint, parse_points
from checker.real.daemon_conform import DAEMON_OPS, comparable
from checker.real.dockerd import in_scope
from checker.real.recorded import reconcile, replay, stable
from checker.real.workspace import names
from checker.spec import Op
from models.steps import Chmod, Create, Mkdir, RemoveTree, Rename, SetXattr, StepLog, Unlink, Write
from models.tree import Dir, File, Symlink

CAN_TRACE = os.geteuid() == 0 and sandbox.compiler() is not None
needs_ptrace = pytest.mark.skipif(not CAN_TRACE, reason="the crash-point tool needs root and a C compiler")

#: a child that waits for `go`, then changes its tree (and a file outside it)
WORKLOAD = r"""
import os, sys, time
root, go, outside = sys.argv[1], sys.argv[2], sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.005)
os.mkdir(f"{root}/a")
with open(f"{root}/a/f", "w") as f:
    f.write("one")
with open(outside, "w") as f:
    f.write("not counted")
os.rename(f"{root}/a/f", f"{root}/a/g")
os.chmod(f"{root}/a/g", 0o600)
os.symlink("g", f"{root}/a/s")
os.unlink(f"{root}/a/s")
os.chdir(f"{root}/a")
os.mkdir("rel")
os.rmdir("rel")
open(f"{root}/a/g").close()
"""


def _traced_workload(tmp_path: Path, kill_at: int) -> tuple[list, bool, int, Path]:
    tool = build_crashpoint(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    go, outside, log = tmp_path / "go", tmp_path / "outside", tmp_path / "points"
    child = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(root), str(go), str(outside)])
    tracer = subprocess.Popen([str(tool), str(child.pid), str(root), str(kill_at), str(log)])
    try:
        deadline = time.monotonic() + 10
        while not (log.exists() and log.read_text().startswith("# attached")):
            assert time.monotonic() < deadline, "crashpoint did not attach"
            time.sleep(0.01)
        go.write_text("")
        status = child.wait(timeout=30)
        tracer.wait(timeout=30)
    finally:
        for p in (child, tracer):
            if p.poll() is None:
                p.kill()
                p.wait()
    calls, killed = parse_points(log.read_text())
    return calls, killed, status, root


@needs_ptrace
def test_crashpoint_counts_exactly_the_calls_that_change_the_tree(tmp_path: Path) -> None:
    calls, killed, status, root = _traced_workload(tmp_path, 0)
    assert status == 0 and not killed
    # the write outside the tree and the read-only open are not crash points; a path
    # relative to the cwd is resolved
    assert [(c.number, c.syscall, c.paths) for c in calls] == [
        (1, "mkdir", ("a",)),
        (2, "openat", ("a/f",)),
        (3, "write", ("a/f",)),
        (4, "rename", ("a/f", "a/g")),
        (5, "chmod", ("a/g",)),
        (6, "symlink", ("a/s",)),
        (7, "unlink", ("a/s",)),
        (8, "mkdir", ("a/rel",)),
        (9, "rmdir", ("a/rel",)),
    ]
    assert len({c.process for c in calls}) == 1  # one process, named by its comm


@needs_ptrace
def test_crashpoint_kills_the_process_on_entry_to_the_nth_call(tmp_path: Path) -> None:
    calls, killed, status, root = _traced_workload(tmp_path, 4)
    assert killed and status == -9
    assert calls[-1].syscall == "rename"
    # the rename never ran: everything before it is on disk, nothing after it
    assert (root / "a" / "f").read_text() == "one"
    assert not (root / "a" / "g").exists()


def test_names_is_a_path_not_a_prefix() -> None:
    assert names("dockerd --data-root /tmp/ws/d1/root", "/tmp/ws/d1")
    assert names("/tmp/ws/d1\0--flag", "/tmp/ws/d1")
    assert names("upperdir=/tmp/ws/d1/root/overlay2/x/diff,workdir=", "/tmp/ws/d1")
    assert not names("dockerd --data-root /tmp/ws/d12/root", "/tmp/ws/d1")
    assert not names("/tmp/ws/d1x", "/tmp/ws/d1")


def test_replay_makes_missing_parents_and_keeps_the_calls() -> None:
    before = Dir({"overlay2": Dir()})
    pairs = [(Create("overlay2/x/diff/f"), "openat(f)"), (Write("overlay2/x/diff/f", b"data"), "write(f)")]
    after = Dir({"overlay2": Dir({"x": Dir({"diff": Dir({"f": File(b"data")})})})})
    got = replay(Op(0, "pull", ()), 0, before, pairs, after, in_scope, DAEMON_OPS, "dockerd")
    assert [str(s) for s in got.steps] == [
        str(Mkdir("overlay2/x", 0o755)), str(Mkdir("overlay2/x/diff", 0o755)),
        str(Create("overlay2/x/diff/f")), str(Write("overlay2/x/diff/f", b"data")),
    ]
    assert got.calls == ["openat(f)", "openat(f)", "openat(f)", "write(f)"]
    assert (got.traced, got.made_parents, got.reconciled) == (2, 2, 0)


def test_replay_ends_where_dockerd_ended() -> None:
    """What the log does not show (the kernel's work dir, a mode) is reconciled at the end
    of the op, and steps outside the model's parts of the data root are left out."""
    before = Dir({"overlay2": Dir({"x": Dir({"link": File(b"")})})})
    pairs = [(Write("overlay2/x/link", b"L1"), "write(link)"), (Mkdir("network/files"), "mkdirat(network)")]
    after = Dir({"overlay2": Dir({"x": Dir({"link": File(b"L1", 0o600), "work": Dir({"work": Dir(mode=0)})})})})
    got = replay(Op(0, "run", ()), 0, before, pairs, after, in_scope, DAEMON_OPS, "dockerd")
    log = StepLog(before)
    log.do_all(got.steps)
    assert log.root.digest == after.digest
    assert got.traced == 1 and got.reconciled == 3
    assert got.calls[1:] == ["(the kernel's, below dockerd)"] * 3


def test_in_scope_puts_a_mount_path_in_the_layer_diff() -> None:
    assert str(in_scope(Create("overlay2/abc-init/merged/dev/console"))) == str(
        Create("overlay2/abc-init/diff/dev/console")
    )
    assert str(in_scope(Rename("image/overlay2/.tmp-r", "image/overlay2/repositories.json"))) == str(
        Rename("image/overlay2/.tmp-r", "image/overlay2/repositories.json")
    )
    assert in_scope(Mkdir("network/files/local-kv.db")) is None
    assert in_scope(Mkdir("volumes/x")) is None


def test_reconcile_turns_one_tree_into_another() -> None:
    have = Dir({"a": File(b"old"), "gone": Dir({"f": File(b"x")}), "s": Symlink("t"), "same": File(b"s")})
    want = Dir({"a": File(b"new", 0o600), "n": Dir({"f": File(b"y")}), "s": Symlink("u"), "same": File(b"s"),
                "x": File(b"", xattrs=(("user.k", b"v"),))})
    steps = reconcile(have, want)
    log = StepLog(have)
    log.do_all(steps)
    assert log.root.digest == want.digest
    assert isinstance(steps[0], RemoveTree) and steps[0].path == "gone"
    assert any(isinstance(s, Chmod) and s.path == "a" for s in steps)
    assert any(isinstance(s, Unlink) and s.path == "s" for s in steps)
    assert any(isinstance(s, SetXattr) and s.path == "x" for s in steps)
    assert reconcile(want, want) == []


def test_stable_json_names_no_random_id() -> None:
    doc = {"syscall": "renameat(AT_FDCWD, \"image/overlay2/layerdb/tmp/write-set-2834500907\", "
                      "\"image/overlay2/layerdb/sha256/" + "ab" * 32 + "\")",
           "message": ["overlay2/" + "0f" * 32 + "/link is empty", "2026-11-30T15:05:59.512345Z"]}
    assert stable(doc, comparable) == {
        "syscall": "renameat(AT_FDCWD, \"image/overlay2/layerdb/tmp/write-set-*\", "
                   "\"image/overlay2/layerdb/sha256/<id>\")",
        "message": ["overlay2/<id>/link is empty", "<time>"],
    }
