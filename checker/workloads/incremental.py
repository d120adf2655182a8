"""Incremental exploration: the workloads of k ops as extensions of the checked
workloads of k-1 ops (issue 14), under prefix persistence.

Under `prefix` the crash states of op k are the backing trees after each of its steps,
and what they show depends on four things only: the backing tree before op k, the mount's
in-memory state then (`Mount.lifetime_key`: temp-name and inode counters, overlayfs's
shared whiteout and fresh index entries), op k itself, and what the earlier fsyncs and
syncs made durable that no op changed since ((path, node digest) pairs, the
`durability` invariant's obligations). How the earlier ops got there does not matter.
So each op is run and checked once per such key (`OpCheck`, cached per process), on a
fork of the mount the prefix left (`Mount.fork`: trees shared, nothing replayed), and a
workload's findings are the union of its ops' findings. Workloads that reach the same
state by different ops share one check.

Two details keep the result equal to checking each workload from scratch
(`explore.check_workload`, which tests compare against this at depth 1 and 2):
- The last crash state of a workload (every step persisted) counts every sync op as
  returned; in a longer workload the same tree, the end of op k, is a crash during op k
  before its sync returned. Each op keeps both answers (`open` for a prefix, `closed`
  for the workload's last op).
- The initial tree is a crash state of the first op only (`first` is part of the key).

- An op that makes no step (fsync of a lower file, `rm` of nothing) has no crash state of
  its own: the initial tree belongs to the first op that makes a step, and when the
  last ops make none, the workload's last state ends an earlier op and counts their
  syncs (`Walker.final`).

A workload is checked from scratch instead when its crash states exceed the explore
budget, or when its driver does not declare its in-memory state (`Mount.LIFETIME` is
None).

The reference driver (`plain`) is walked along for every workload (its steps count
toward its budget), and checked only for the workloads in which the driver found
something: a violation is driver-induced when plain does not show it in that op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field, replace
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

from checker.engine.explorer import Context, bounded_put
from checker.engine.invariants import CARRIED, INVARIANTS, Invariant, durable_index
from checker.engine.persistence import MODELS, Constraints
from checker.engine.trace import OpRecord, Recorder, Trace, make_driver, perform_op
from checker.spec import parse_spec
from models import REFERENCE_DRIVER
from models.clients import SYNC_OPS
from models.driver import Mount
from models.steps import StepLog
from models.tree import Dir, File, walk

if TYPE_CHECKING:
    from checker.spec import Op, Spec
    from checker.workloads.explore import Settings

Obligations = frozenset[tuple[str, bytes]]  # (path, digest) a returned sync made durable
# Op checks a walker remembers before its cache starts over: with the frontier after them
# (a forked mount, its tree and view: about 6 KB each), and without (the last op of the
# search's workloads: findings only).
OP_CHECKS = 60_000
LEAF_CHECKS = 300_000


@dataclass(frozen=True)
class Frontier:
    """Where a workload prefix left one driver: the mount (its in-memory state), the
    backing tree, and what returned syncs made durable."""

    mount: Mount
    root: Dir
    carried: Obligations

    @cached_property
    def key(self) -> bytes:
        """The frontier's state: the tree's digest, the inode numbers of its files (which
        names are one file is not in the digest, and `mv` of two links of one file fails),
        the mount's in-memory state, the durability obligations."""
        inodes = [(parts, node.ino) for parts, node in walk(self.root) if isinstance(node, File) and node.ino]
        text = repr((self.root.digest, inodes, self.mount.lifetime_key(), sorted(self.carried)))
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    @cached_property
    def view(self) -> Dir:
        return self.mount.view(self.root)


@dataclass
class Stats:
    """What a process did for its units: op checks run and reused from its cache, crash
    states assessed (recovered and checked; the others were covered by checks made for
    other workloads)."""

    run: int = 0
    reused: int = 0
    assessed: int = 0  # on the driver
    reference: int = 0  # on the reference driver

    def __add__(self, other: Stats) -> Stats:
        return Stats(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: Stats) -> Stats:
        return Stats(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def count(self, states: int, reference: bool) -> None:
        if reference:
            self.reference += states
        else:
            self.assessed += states


@dataclass
class OpCheck:
    """One op run from one frontier: what it returned, how many steps (crash states) it
    made, the frontier after it, and the invariants its crash states violate: `inner`
    (all but its last crash state, and the trace-level ones), `open` (with the last as a
    crash before the op returned: a prefix of a longer workload), `closed` (with the
    last as the workload's end)."""

    errno: int
    steps: int
    after: Frontier | None
    trace: Trace | None = field(default=None, repr=False)  # kept until the op is assessed
    first: bool = False  # no op before it made a step
    inner: frozenset[str] | None = None
    open: frozenset[str] = frozenset()
    closed: frozenset[str] = frozenset()


class Walker:
    """One driver's walk over the workloads of one setup: the single-op specs of the op
    space, the first frontier, and the per-process caches of op checks and recoveries."""

    def __init__(self, settings: Settings, space: Sequence[dict[str, Any]], setup: str, driver: str,
                 keeps_failed: bool) -> None:
        self.keeps_failed = keeps_failed  # go on after an op that failed (the reference)
        self.specs: list[Spec] = [
            parse_spec(settings.table(setup, [op], driver), "<explore>") for op in space
        ]
        self.driver = make_driver(self.specs[0])
        self.invariants: list[Invariant] = _union_invariants(self.specs)
        self.checks: dict[tuple[bytes, int, bool], OpCheck] = {}  # with the frontier after
        self.leaves: dict[tuple[bytes, int, bool], OpCheck] = {}  # the last op of workloads
        self.finals: dict[tuple[bytes, tuple[int, ...]], frozenset[str]] = {}
        self.stats = Stats()
        self.recoveries: dict[bytes, Any] = {}
        self.recover_memo: dict[bytes, Any] = {}
        spec = self.specs[0]
        mount = self.driver.mount(list(spec.layers), spec.upper, ())
        self.start = Frontier(mount, mount.initial, frozenset())
        self.forks = mount.LIFETIME is not None

    def op(self, o: int) -> Op:
        return self.specs[o].ops[0]

    def run(self, frontier: Frontier, o: int, first: bool, leaf: bool = False) -> OpCheck:
        """Op `o` from `frontier` (cached by the frontier's key); `first`: no op before it
        made a step (the initial tree is one of its crash states); `leaf`: no workload of
        this run extends it (its check keeps no frontier: a search's last level is by far
        its largest)."""
        key = (frontier.key, o, first)
        hit = self.checks.get(key) or (self.leaves.get(key) if leaf else None)
        if hit is not None:
            self.stats.reused += 1
            return hit
        self.stats.run += 1
        check = self._check(frontier, o, first)
        if leaf:
            check.after = None
            bounded_put(self.leaves, key, check, LEAF_CHECKS)
        else:
            bounded_put(self.checks, key, check, OP_CHECKS)
        return check

    def _check(self, frontier: Frontier, o: int, first: bool) -> OpCheck:
        trace = self._trace(frontier, (o,), stop_on_failure=not self.keeps_failed)
        if isinstance(trace, int):
            return OpCheck(trace, 0, None)  # the op failed: the workload stops here
        record = trace.ops[0]
        index = durable_index(trace, [record.before, record.after])
        carried = frozenset((p, d) for p, d, _ in index.expected(0, len(index.sync_ops)))
        after = Frontier(trace.mount, trace.states[-1], carried)
        return OpCheck(record.errno, len(trace.records), after, trace, first)

    def _trace(
        self, frontier: Frontier, picks: tuple[int, ...], stop_on_failure: bool = False,
    ) -> Trace | int:
        """The trace of ops `picks` run on a fork of `frontier`, carrying its durability
        obligations; with `stop_on_failure`, the errno of the first op that fails
        instead (no views computed)."""
        mount = frontier.mount.fork()
        assert mount is not None
        rec = Recorder(mount)
        rec.log = StepLog(frontier.root, mount.device)
        records = []
        before = frontier.view
        for i, o in enumerate(picks):
            op = self.op(o) if i == 0 else replace(self.op(o), index=i)
            first = len(rec.records)
            calls, failed = perform_op(mount, op, rec)
            if failed and stop_on_failure:
                return failed
            after = mount.view(rec.log.root) if len(rec.records) > first else before
            records.append(OpRecord(op, calls, first, len(rec.records), failed, before, after))
            before = after
        trace = Trace(self.specs[picks[0]], mount, frontier.root, rec.records, records)
        trace.cache[CARRIED] = frontier.carried
        return trace

    def findings(self, check: OpCheck) -> OpCheck:
        """The op check with its findings (computed once)."""
        if check.inner is None:
            trace = check.trace
            assert trace is not None
            check.inner, check.open, check.closed = self._assess(trace, check.first)
            check.trace = None  # the check is all that is needed from now on
        return check

    def _context(self, trace: Trace) -> Context:
        """A context for a single-op trace, sharing this walker's bounded recovery memos."""
        return Context(trace.spec, MODELS["prefix"], trace, self.invariants, _no_constraints(),
                       recoveries=self.recoveries, recover_memo=self.recover_memo)

    def _assess(self, trace: Trace, first: bool) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """(inner, open, closed) of a single-op trace: the invariants its crash states
        violate but the last one (and the trace-level ones), then with the last one as
        a crash before the op returned, then as the workload's end (its sync returned)."""
        ctx = self._context(trace)
        self.stats.count(len(trace.records) + (1 if first else 0), self.keeps_failed)
        carried = 1 if trace.cache.get(CARRIED) else 0  # the syncs before the op, as one
        inner: set[str] = set()
        states = trace.states
        last = len(states) - 1
        if first and last:
            inner.update(name for name, _ in ctx.assess(states[0], 0, 0))  # nothing had returned
        for s in range(1, last):
            inner.update(name for name, _ in ctx.assess(states[s], 0, carried))
        inner.update(inv.name for inv in self.invariants if inv.trace_level and inv.check_trace(trace))
        last_open = {name for name, _ in ctx.assess(states[last], 0, carried)}
        if trace.ops[0].op.kind in SYNC_OPS:
            last_closed = {name for name, _ in ctx.assess(states[last], 0, carried + 1)}
        else:
            last_closed = last_open
        return frozenset(inner), frozenset(inner | last_open), frozenset(inner | last_closed)

    def final(self, frontier: Frontier, picks: tuple[int, ...]) -> frozenset[str]:
        """What the last crash state of a workload shows (every step persisted, every
        sync returned) when its last ops made no step: the state ends op `picks[0]` (or
        is the initial tree, when no op made a step), and the syncs after it count."""
        key = (frontier.key, picks)
        hit = self.finals.get(key)
        if hit is None:
            trace = self._trace(frontier, picks)
            assert isinstance(trace, Trace)
            syncs = sum(r.op.kind in SYNC_OPS for r in trace.ops) + (1 if frontier.carried else 0)
            hit = frozenset(name for name, _ in self._context(trace).assess(trace.states[-1], 0, syncs))
            self.stats.count(1, self.keeps_failed)
            bounded_put(self.finals, key, hit, LEAF_CHECKS)
        return hit


def _union_invariants(specs: list[Spec]) -> list[Invariant]:
    """Every invariant any workload of the op space checks, in their order: one that
    applies only to some ops (no-dual-existence, durability, view-preserved) finds
    nothing in the others."""
    from checker.engine.invariants import selected

    names = {inv.name for spec in specs for inv in selected(spec)}
    return [inv for name, inv in INVARIANTS.items() if name in names]


@cache
def _no_constraints() -> Constraints:
    """The constraints of a single-op trace's context: never read (crash states are
    assessed directly)."""
    import networkx as nx

    return Constraints(nx.DiGraph(), [])


@dataclass
class Walk:
    """A workload's ops on one driver: the frontier before each op and each op's check."""

    picks: tuple[int, ...]
    frontiers: list[Frontier]
    checks: list[OpCheck]

    @property
    def crash_states(self) -> int:
        return 1 + sum(c.steps for c in self.checks)


class Explorer:
    """The walkers of one explore run's settings in this process: per setup, the driver
    (a workload stops at its first failed op) and the reference driver (it goes on)."""

    def __init__(self, settings: Settings, space: Sequence[dict[str, Any]]) -> None:
        self.settings = settings
        self.space = space  # the op space: the ops a workload's picks index
        self.walkers: dict[tuple[str, bool], Walker] = {}

    def walker(self, setup: str, reference: bool) -> Walker:
        hit = self.walkers.get((setup, reference))
        if hit is None:
            driver = REFERENCE_DRIVER if reference else self.settings.driver
            hit = Walker(self.settings, self.space, setup, driver, reference)
            self.walkers[(setup, reference)] = hit
        return hit

    def stats(self) -> Stats:
        return sum((w.stats for w in self.walkers.values()), Stats())

    def forks(self) -> bool:
        """Can this run's drivers be walked incrementally (prefix persistence, mounts
        that declare their in-memory state)?"""
        return not self.why_not()

    def why_not(self) -> str:
        """Why this run's workloads are checked from scratch ("" when they are not)."""
        if self.settings.persistence != "prefix":
            return (f"under {self.settings.persistence} persistence a crash during op k may keep or "
                    "lose unsynced steps of earlier ops, so its crash states depend on more than the "
                    "tree before op k")
        for reference in (False, True):
            walker = self.walker("lower", reference)
            if not walker.forks:
                return f"driver {walker.driver.name} does not declare its in-memory state (Mount.LIFETIME)"
        return ""

    def walk(
        self, setup: str, picks: tuple[int, ...], reference: bool = False, leaf: bool = False,
    ) -> Walk | None:
        """The op checks of `picks` on the driver (None when an op failed) or on the
        reference driver; `leaf`: no workload of this run extends this one."""
        walker = self.walker(setup, reference)
        frontier: Frontier | None = walker.start
        frontiers, checks = [], []
        first = True
        for k, o in enumerate(picks):
            assert frontier is not None
            check = walker.run(frontier, o, first, leaf and k == len(picks) - 1)
            if check.errno and not reference:
                return None  # the driver's op failed
            frontiers.append(frontier)
            checks.append(check)
            first = first and not check.steps
            frontier = check.after
        return Walk(picks, frontiers, checks)

    def found(self, setup: str, walk: Walk, reference: bool = False) -> set[tuple[str, int]]:
        """(invariant, op index) of a workload's crash states. A crash state belongs to
        the op of its last step (the initial tree to the first op that makes a step), so
        an op without steps has none; the workload's last state counts every sync."""
        walker = self.walker(setup, reference)
        checks = walk.checks
        stepped = [k for k, c in enumerate(checks) if c.steps]
        end = stepped[-1] if stepped else 0  # the op the last crash state belongs to
        out: set[tuple[str, int]] = set()
        for k in stepped:
            check = walker.findings(checks[k])
            if k != end:
                out.update((name, k) for name in check.open)
            elif k == len(checks) - 1:
                out.update((name, k) for name in check.closed)
            else:
                out.update((name, k) for name in check.inner)
        if end != len(checks) - 1 or not stepped:
            out.update((name, end) for name in walker.final(walk.frontiers[end], walk.picks[end:]))
        return out
