"""`remount rotate` (issue 12): the upper layer becomes the top lower layer mid-workload;
crash states before the rotation mount the old stack, after it the new one; on the model
(exact steps, views, recovery) and against the kernel (conform, confirm, real runs)."""

from __future__ import annotations

import pytest

from checker import check, load_spec
from checker.engine.trace import build_trace
from checker.real.confirm import confirm
from checker.real.crash import real_check
from checker.spec import SpecError
from models.steps import StepLog
from models.tree import Dir, File, Whiteout, lookup
from tests.conftest import NEEDS_OVERLAY, ROOT, assert_conforms, assert_enumeration_only, make_spec

SPEC = ROOT / "specs" / "overlayfs" / "remount-rotate.toml"

# a merged dir whose upper part is rotated, then copied up again from the rotated layer
ROTATED_DIR = '''
name = "rotated dir"
driver = "overlayfs"
persistence = "weak"
check = ["atomicity"]
[[layers]]
"d/f" = "x"
[upper]
"d/g" = "y"
[[ops]]
op = "remount"
rotate = true
[[ops]]
op = "chmod"
path = "d"
mode = 0o700
'''


def test_rotate_steps():
    trace = build_trace(load_spec(SPEC))
    op = trace.ops[3]
    assert op.text == "remount rotate"
    assert [str(s) for s in trace.steps[op.first_step:op.end_step]] == [
        "syncfs upper",
        "rename upper -> lower1",
        "mkdir upper",
        "unlink work/work/#3",
        "rmdir work/work",
        "mkdir work/work mode 0",
        "setxattr work/work trusted.overlay.opaque='0'",
        "removexattr work/work trusted.overlay.opaque",
        "create work/work/#5",
        "rename work/work/#5 -> work/work/#6 (whiteout)",
        "unlink work/work/#5",
        "unlink work/work/#6",
    ]
    after = trace.states[op.end_step - 1]
    assert isinstance(lookup(after, ("lower1", "etc", "motd")), Whiteout)  # the old upper, now below
    fresh = lookup(after, ("upper",))
    assert isinstance(fresh, Dir) and fresh.entries == {}
    copy = trace.steps[trace.ops[4].first_step:trace.ops[4].end_step]
    assert "setxattr work/work/#8 trusted.overlay.origin='lower1/etc/hosts'" in [str(s) for s in copy]
    view = trace.ops[6].after
    assert isinstance(lookup(view, ("etc", "motd")), Dir)  # a plain upper dir over the lower whiteout
    hosts = lookup(view, ("etc", "hosts"))
    assert isinstance(hosts, File) and hosts.content == b"127.0.0.1 localhost\n10.0.0.2 db\n10.0.0.3 cache\n"


def test_crash_between_rename_and_new_upper_refuses_until_an_upper_is_made():
    trace = build_trace(load_spec(SPEC))
    op = trace.ops[3]
    log = StepLog(trace.initial, trace.mount.device)
    log.do_all(list(trace.steps[:op.first_step + 2]))  # synced, renamed, no new upper yet
    rec = trace.mount.recover(log.root)
    assert rec.refused and "upperdir is missing" in rec.refusal and rec.remedy == "make an empty upper dir"
    assert rec.fallback is not None
    assert trace.mount.view(rec.fallback).digest == op.after.digest  # nothing is lost


def test_crash_states_before_the_rotation_mount_the_old_stack():
    result = check(make_spec(ROTATED_DIR))
    assert (result.steps, result.crash_states, len(result.violations)) == (17, 873, 96)
    # every violation is the copied-up dir's mode, lost after the rotation (6.18: no fsync)
    assert result.context is not None
    for v in result.violations:
        state = result.context.materialize(v.crash)
        rec = result.trace.mount.recover(state)  # type: ignore[union-attr]
        assert "lower1" in state.entries and rec.root is not None
        mode = lookup(result.trace.mount.view(rec.root), ("d",))  # type: ignore[union-attr]
        assert isinstance(mode, Dir) and mode.mode != 0o700
    assert check(load_spec(SPEC)).violations == []


def test_rotate_is_overlayfs_only_and_a_boolean():
    with pytest.raises(SpecError, match=r"unknown argument for remount"):
        make_spec('name = "x"\ndriver = "plain"\n[[ops]]\nop = "remount"\nrotate = true\n')
    with pytest.raises(SpecError, match="must be true or false"):
        make_spec('name = "x"\ndriver = "overlayfs"\n[[layers]]\n"a" = "x"\n[[ops]]\nop = "remount"\nrotate = 1\n')


def test_symbolic_engine_says_it_cannot_decide_rotate():
    assert_enumeration_only(load_spec(SPEC), "remount rotate")


@NEEDS_OVERLAY
def test_rotate_conforms_with_syncs():
    assert_conforms(load_spec(SPEC), 7)


@NEEDS_OVERLAY
def test_rotated_crash_states_are_confirmed_by_the_kernel():
    found = confirm(check(make_spec(ROTATED_DIR)))
    assert len(found) == 96 and {c.status for c in found} == {"confirmed"}, {c.detail for c in found}


@NEEDS_OVERLAY
def test_real_kernel_crash_run_passes_the_rotate_spec():
    result = real_check(load_spec(SPEC), "kernel")
    assert result.ok and len(result.outcomes) == 7, result.to_json()
