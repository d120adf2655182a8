"""`syncfs` as its own op: syncfs(2) on the mount syncs the file system the view is on
(overlayfs: `ovl_sync_fs`, the upper; nothing on a volatile mount), so what is in the
view when it returns survives a crash; both engines agree, and the kernel returns what
the model does."""

from __future__ import annotations

import pytest

from checker import check
from checker.engine.trace import build_trace
from checker.real import kernel
from checker.real.conform import conform
from checker.real.crash import real_check
from tests.conftest import make_spec

APPEND_SYNCFS = '''name = "append, then syncfs"
driver = "{driver}"
persistence = "weak"
check = ["durability", "recoverable"]  # the copy-up of var has its own window on 6.18
{options}
[[layers]]
"var/log" = "old"
[[ops]]
op = "append"
path = "var/log"
data = " new"
[[ops]]
op = "syncfs"
'''
NO_OVERLAY = kernel.overlay_unavailable_reason()


def _spec(driver: str = "overlayfs", options: str = ""):
    return make_spec(APPEND_SYNCFS.format(driver=driver, options=options))


def test_syncfs_on_overlayfs_syncs_the_upper_file_system():
    trace = build_trace(_spec())
    op = trace.ops[1]
    assert [str(trace.steps[i]) for i in range(op.first_step, op.end_step)] == ["syncfs upper"]
    assert [str(c.call) for c in op.syscalls] == ["syncfs()"]


@pytest.mark.parametrize("engine", ["enumerate", "symbolic"])
def test_what_syncfs_returned_on_survives_a_crash_on_both_engines(engine: str):
    r = check(_spec(), engine=engine)
    assert r.verdict == "pass" and "durability" in r.invariants


@pytest.mark.parametrize("engine", ["enumerate", "symbolic"])
def test_syncfs_on_a_volatile_mount_syncs_nothing(engine: str):
    spec = _spec(options="[options]\nvolatile = true")
    trace = build_trace(spec)
    assert trace.ops[1].end_step == trace.ops[1].first_step  # no step
    r = check(spec, engine=engine)
    assert r.verdict == "violation" and r.violated == ["durability"]


@pytest.mark.parametrize("driver", ["plain", "aufs"])
def test_every_file_system_driver_takes_syncfs(driver: str):
    """aufs copies up without an fsync, so under weak the append itself is not atomic;
    what syncfs covers is durable on both."""
    r = check(_spec(driver))
    assert [o.result for o in r.trace.ops] == [0, 0] and "durability" not in r.violated
    assert str(r.trace.steps[r.trace.ops[1].first_step]).startswith("syncfs")


@pytest.mark.kernel
@pytest.mark.skipif(NO_OVERLAY is not None, reason=f"no overlayfs here: {NO_OVERLAY}")
def test_syncfs_conforms_and_survives_a_kill_on_the_kernel():
    ops = conform(_spec())
    assert [(o.text, o.conforms, o.real_result) for o in ops] == [
        ("append var/log ' new'", True, 0), ("syncfs", True, 0)]
    r = real_check(_spec(), "kernel")
    assert r.verdict == "pass" and not r.disagreements
