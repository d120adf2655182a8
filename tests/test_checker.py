"""The checker end to end: exact crash-state counts and violation sets."""

from __future__ import annotations

import pickle

from checker import CrashUnit, check, check_crash_state, load_spec
from checker.engine.persistence import CrashState
from models import syscalls as sc
from models.driver import Recovery, handles
from models.overlayfs import OverlayFS, OverlayMount
from models.plain import Plain, PlainMount
from models.steps import Create, StepLog, Unlink, Write
from models.tree import Dir, File, replace
from tests.conftest import ROOT, make_spec

SEED = ROOT / "specs/overlayfs/mv-lower-dir-redirect-off.toml"


def points(result, invariant: str) -> list[int]:
    return [v.crash_after_step for v in result.violations if v.invariant == invariant]


def test_seed_case_exact_counts_and_violations():
    r = check(load_spec(SEED))
    assert (r.steps, r.crash_states, r.unique_states) == (31, 32, 30)
    assert r.verdict == "violation" and r.ok
    assert r.violated == ["atomicity", "no-dual-existence"]
    # Every crash after mkdir DirX and before the whiteout replaces DirA shows both.
    assert points(r, "no-dual-existence") == list(range(1, 30))
    assert points(r, "atomicity") == list(range(1, 30))
    assert points(r, "no-loss") == []  # each file is in exactly one of the two dirs
    assert {v.op for v in r.violations} == {0}


def test_same_mv_with_redirect_dir_on_and_on_plain_passes():
    on = check(load_spec(ROOT / "specs/overlayfs/mv-lower-dir-redirect-on.toml"))
    assert (on.steps, on.crash_states, on.unique_states, on.violations) == (7, 8, 8, [])
    plain = check(load_spec(ROOT / "specs/plain/mv-dir.toml"))
    assert (plain.steps, plain.crash_states, plain.unique_states, plain.violations) == (1, 2, 2, [])


def test_create_with_data_violates_atomicity_only_between_its_two_calls():
    r = check(load_spec(ROOT / "specs/plain/create-with-data.toml"))
    assert (r.steps, r.crash_states) == (2, 3)
    assert [(v.invariant, v.crash_after_step) for v in r.violations] == [("atomicity", 1)]


def test_fsync_steps_make_duplicate_crash_states_that_are_deduplicated():
    r = check(make_spec("""
name = "t"
driver = "plain"
[[ops]]
op = "create"
path = "f"
[[ops]]
op = "fsync"
path = "f"
[[ops]]
op = "sync"
"""))
    assert (r.steps, r.crash_states, r.unique_states) == (3, 4, 2)


def test_crash_after_checks_exactly_one_state():
    r = check(load_spec(SEED), crash_after=15)
    assert r.crash_states == 1
    assert [(v.invariant, v.crash_after_step) for v in r.violations] == [
        ("atomicity", 15), ("no-dual-existence", 15)
    ]
    assert check(load_spec(SEED), crash_after=0).violations == []


def test_a_crash_unit_is_picklable_and_independent():
    spec = load_spec(SEED)
    unit = CrashUnit(spec, "prefix", CrashState(15))
    clone = pickle.loads(pickle.dumps(unit))
    found = check_crash_state(clone)
    assert sorted(v.invariant for v in found) == ["atomicity", "no-dual-existence"]
    assert all(v.crash_after_step == 15 for v in found)


class LowerWritingMount(OverlayMount):
    """A broken variant: unlink removes the lower file instead of whiting it out."""

    @handles(sc.Unlink)
    def unlink(self, call: sc.Unlink, log: StepLog) -> None:
        log.do(Unlink("lower0/" + call.path))


class LowerWritingOverlay(OverlayFS):
    MOUNT = LowerWritingMount


def test_lower_immutable_catches_a_driver_that_writes_a_lower_layer():
    spec = make_spec('name = "t"\ndriver = "overlayfs"\n[[layers]]\n"f" = "x"\n[[ops]]\nop = "unlink"\npath = "f"\n')
    assert check(spec).violations == []
    r = check(spec, driver=LowerWritingOverlay())
    lower = [v for v in r.violations if v.invariant == "lower-immutable"]
    assert [(v.crash_after_step, v.paths) for v in lower] == [(1, ("lower0/f",))]


class LossyRenameMount(PlainMount):
    """A broken variant: rename of a file removes the source before writing the copy."""

    @handles(sc.Rename)
    def rename(self, call: sc.Rename, log: StepLog) -> None:
        node = log.root
        for p in call.src.split("/"):
            node = node.entries[p]
        log.do(Unlink(call.src))
        log.do(Create(call.dst))
        log.do(Write(call.dst, node.content, replace=True))


class LossyRename(Plain):
    MOUNT = LossyRenameMount


def test_no_loss_catches_a_rename_that_drops_the_source_first():
    spec = make_spec('name = "t"\ndriver = "plain"\n[[layers]]\n"a" = "precious"\n[[ops]]\nop = "rename"\nsrc = "a"\ndst = "b"\n')
    assert check(spec).violations == []
    r = check(spec, driver=LossyRename())
    assert points(r, "no-loss") == [1, 2]
    assert points(r, "no-dual-existence") == []


class ForgetfulRecoveryMount(OverlayMount):
    """A broken variant: every recovery adds a marker file, so it is never idempotent."""

    def recover(self, root: Dir) -> Recovery:
        rec = super().recover(root)
        assert rec.root is not None
        upper = rec.root.entries["upper"]
        n = len(upper.entries)
        return Recovery(replace(rec.root, ("upper", f"marker{n}"), File(b"")))


class ForgetfulRecovery(OverlayFS):
    MOUNT = ForgetfulRecoveryMount


def test_recoverable_catches_recovery_that_is_not_idempotent_and_accepts_refusal_with_remedy():
    spec = make_spec('name = "t"\ndriver = "overlayfs"\ncheck = ["recoverable"]\n[[ops]]\nop = "mkdir"\npath = "d"\n')
    assert check(spec).violations == []
    bad = ForgetfulRecovery()
    r = check(spec, driver=bad)
    assert points(r, "recoverable") == [0, 1]
    volatile = check(load_spec(ROOT / "specs/overlayfs/volatile-mount.toml"))
    assert volatile.violations == [] and volatile.unique_states == 12


def test_violation_messages_name_the_directories():
    r = check(load_spec(SEED), crash_after=15)
    dual = next(v for v in r.violations if v.invariant == "no-dual-existence")
    assert dual.paths == ("DirA", "DirX")
    assert "both DirA and DirX exist" in dual.message


def test_one_driver_instance_checks_two_specs_like_fresh_instances():
    """A memo of the first mount (path lookups keyed by the upper tree alone) must not
    answer for the second: the second spec's `create d/x` gave EEXIST and no steps."""
    from models.overlayfs import OverlayFS

    first = make_spec('name = "a"\ndriver = "overlayfs"\n[[layers]]\n"d/x" = "lower"\n'
                      '[[ops]]\nop = "unlink"\npath = "d/x"\n')
    second = make_spec('name = "b"\ndriver = "overlayfs"\n[[layers]]\n"d/y" = "lower"\n'
                       '[[ops]]\nop = "create"\npath = "d/x"\n')
    shared = OverlayFS(first.options)
    for spec in (first, second):
        reused = check(spec, driver=shared)
        fresh = check(spec)
        assert [str(s) for s in reused.trace.steps] == [str(s) for s in fresh.trace.steps]
        assert [op.errno for op in reused.trace.ops] == [0]
    assert len(check(second, driver=shared).trace.steps) == 6
