"""Incremental exploration (`checker/workloads/incremental.py`): a workload's outcome
from its ops' cached checks equals checking it from scratch (`check_workload`)."""

from __future__ import annotations

import itertools
import random

import pytest

from checker.workloads.explore import (
    SETUPS,
    Settings,
    check_unit,
    check_workload,
    explore,
    explorer_for,
    incremental_outcome,
    op_space,
)
from checker.workloads.incremental import Stats
from models.driver import Mount

REDIRECT_OFF = Settings("overlayfs", (("redirect_dir", "off"),), "prefix")


def _json(outcome: object) -> object:
    return outcome.to_json() if outcome is not None else None  # type: ignore[attr-defined]


def _compare(settings: Settings, workloads: list[tuple[str, tuple[int, ...]]]) -> int:
    """Compare every workload both ways; the number that ran (no op failed)."""
    space = op_space()
    live = 0
    for setup, picks in workloads:
        fast = incremental_outcome(settings, setup, picks)
        slow = check_workload(settings, setup, [space[o] for o in picks])
        assert _json(fast) == _json(slow), (setup, [space[o] for o in picks])
        live += fast is not None
    return live


def _sample(settings: Settings, seed: int, per_depth: int) -> list[tuple[str, tuple[int, ...]]]:
    """Every 1-op workload, then `per_depth` extensions of random workloads that ran, at
    depth 2 and 3 (so most of them run too)."""
    rng = random.Random(seed)
    n = len(op_space())
    ones = [(setup, (o,)) for setup in SETUPS for o in range(n)]
    out = list(ones)
    live = [w for w in ones if incremental_outcome(settings, *w) is not None]
    for _ in (2, 3):
        longer = [(setup, picks + (rng.randrange(n),)) for setup, picks in rng.choices(live, k=per_depth)]
        out += longer
        live = [w for w in longer if incremental_outcome(settings, *w) is not None]
    return out


@pytest.mark.parametrize("driver,options", [
    ("overlayfs", (("redirect_dir", "off"),)),
    ("overlayfs", (("index", True), ("nfs_export", True))),
    ("overlayfs", (("metacopy", True), ("redirect_dir", "on"))),
    ("aufs", ()),
    ("plain", ()),
])
def test_outcomes_equal_checking_from_scratch(driver: str, options: tuple[tuple[str, object], ...]):
    settings = Settings(driver, options, "prefix")
    assert explorer_for(settings).forks()
    assert _compare(settings, _sample(settings, 14, 1000)) > 900


def test_ops_without_steps_and_syncs_in_every_order():
    """fsync of a lower file and `rm` of nothing make no step: the initial tree then
    belongs to the next op, and a workload ending in them ends an earlier op with their
    syncs counted. Every order of 1..3 such ops among others, in every setup."""
    space = op_space()
    texts = ["rm B/bar", "fsync A/bar", "fsync A", "sync", "write A/foo new", "mv A B/bar",
             "rename A/foo B/bar", "fsync A/foo"]
    picks = [i for i, op in enumerate(space) if " ".join(map(str, op.values())) in texts]
    assert len(picks) == len(texts)
    workloads = [(setup, p) for k in (1, 2, 3) for setup in SETUPS for p in itertools.product(picks, repeat=k)]
    assert _compare(REDIRECT_OFF, workloads) == 1221


def test_depth_2_gives_the_figures_of_checking_every_workload_from_scratch():
    """The figures below are those of the engine that checked each workload from scratch
    (commit 1cd856c, before incremental exploration): byte-identical JSON."""
    found = explore(REDIRECT_OFF, 2, jobs=2)
    assert (found.workloads, found.skipped, found.crash_states, found.inherent) == (18163, 94163, 224307, 1084)
    assert set(found.groups) == {("atomicity", "mv"), ("no-dual-existence", "mv")}
    assert found.groups[("atomicity", "mv")].ops == [{"op": "mv", "src": "A", "dst": "B/bar"}]
    work = found.work
    assert work.run + work.reused > 0 and 0 < work.assessed < found.crash_states


def test_a_unit_reuses_what_an_earlier_unit_checked():
    settings = Settings("overlayfs", (("redirect_dir", "on"),), "prefix")
    mv = op_space().index({"op": "mv", "src": "A", "dst": "B/bar"})
    first, work = check_unit((settings, "lower", (mv,), False))
    again, repeat = check_unit((settings, "lower", (mv,), True))
    assert [_json(o) for o in first] == [_json(o) for o in again]
    assert work.run > 0 and repeat == Stats(0, work.run + work.reused, 0, 0)


def test_other_persistence_models_check_from_scratch_and_say_why():
    found = explore(Settings("overlayfs", (("redirect_dir", "off"),), "ordered-metadata"), 1, jobs=2)
    assert (found.workloads, found.skipped) == (239, 340)
    assert found.work == Stats() and "ordered-metadata persistence" in found.from_scratch


def test_a_fork_owns_its_in_memory_state():
    settings = Settings("overlayfs", (("redirect_dir", "off"), ("index", True)), "prefix")
    mount = explorer_for(settings).walker("lower", False).start.mount
    twin = mount.fork()
    assert isinstance(twin, Mount) and twin is not mount
    twin.counters["temp"] = 99
    twin._fresh_index.add(("x",))  # type: ignore[attr-defined]
    assert "temp" not in mount.counters and ("x",) not in mount._fresh_index  # type: ignore[attr-defined]
    assert twin.lifetime_key() != mount.lifetime_key()


def test_states_equal_but_for_inode_numbers_are_different_frontiers():
    """A digest leaves inode numbers out, but which names are one file decides ops (`mv`
    of two links of one file fails): creating B/bar and then copying up A/foo gives them
    other inode numbers than the other order, so the two are different frontiers. (Found
    by two depth-3 runs that disagreed on 22 workloads before the key had them.)"""
    space = op_space()
    ex = explorer_for(REDIRECT_OFF)
    create = space.index({"op": "create", "path": "B/bar"})
    write = space.index({"op": "write", "path": "A/foo", "data": "new"})
    one, two = ex.walk("lower", (write, create)), ex.walk("lower", (create, write))
    assert one is not None and two is not None
    first, second = one.checks[-1].after, two.checks[-1].after
    assert first is not None and second is not None
    assert first.root.digest == second.root.digest and first.key != second.key


def test_a_fork_has_its_own_memos():
    """Memos keyed by digests may hold another tree's nodes (other inode numbers): a
    fork starts them afresh."""
    mount = explorer_for(REDIRECT_OFF).walker("lower", False).start.mount
    twin = mount.fork()
    assert twin is not None
    assert twin._resolved is not mount._resolved and twin.union is not mount.union  # type: ignore[attr-defined]
