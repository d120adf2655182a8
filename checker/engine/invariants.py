"""Invariants (DESIGN section 5). Their names are part of the spec format.

An invariant sees the op in flight (its views before and after), the recovered view of
one crash state, and the trace; it never looks inside a driver. Crash-level invariants
return findings for one crash state; trace-level ones (`lower-immutable`) look at the
steps themselves.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from immutables import Map

from checker.engine import views
from models import drivers
from models.capabilities import ScopedOps, SpaceChecks, StoreChecks, can, mount_can
from models.clients import FULL_SYNC_OPS, SYNC_OPS
from models.driver import Mount, Recovery
from models.tree import Dir, File, join, lookup, moved_path, split

if TYPE_CHECKING:
    from checker.engine.aftercrash import AfterCrash, Continuation
    from checker.engine.trace import OpRecord, Trace
    from checker.spec import Spec

MAX_PATHS = 12  # paths listed per finding; enough to act on, short enough to read
CLOSEST_SPAN = 64  # prefix views compared to name the closest one in an atomicity finding


@dataclass(frozen=True)
class Finding:
    message: str
    paths: tuple[str, ...] = ()
    after_crash_op: int | None = None  # the later op that broke (usable-after-recovery)
    later: Continuation | None = field(default=None, compare=False)  # what the later ops did


@dataclass
class CrashContext:
    """Everything a crash-level invariant may look at."""

    trace: Trace
    op: OpRecord
    recovery: Recovery
    view: Dir | None  # the recovered view (after a refused mount: once its remedy is applied)
    mount: Mount
    recover: Callable[[Dir], Recovery]  # the mount's recovery (memoized by the explorer)
    prefix_views: list[Dir] = field(default_factory=list)  # views after 0, 1, ... ops
    generalized: bool = False  # the crash may keep any ideal of steps, not a prefix
    returned_syncs: int = 0  # how many fsync/sync ops (the first ones) returned before the crash
    after_crash: AfterCrash | None = None  # the ops after a `crash` op


class Invariant:
    name = ""
    description = ""
    needs = "nothing"  # what a spec must have for the invariant to check anything
    trace_level = False  # looks at the trace itself (check_trace)
    crash_level = True  # looks at each crash state (check)

    def applies(self, spec: Spec) -> bool:
        return True

    def check(self, ctx: CrashContext) -> list[Finding]:
        return []

    def check_trace(self, trace: Trace) -> list[tuple[int, Finding]]:
        """(step index, finding) pairs for trace-level invariants."""
        return []


def _matches_before_or_after(ctx: CrashContext) -> bool:
    assert ctx.view is not None
    d = ctx.view.digest
    return d == ctx.op.before.digest or d == ctx.op.after.digest


class Atomicity(Invariant):
    name = "atomicity"
    description = (
        "a crash recovers to the view after some prefix of the workload's ops (under "
        "prefix persistence: the view before or after the op in flight)"
    )

    def check(self, ctx: CrashContext) -> list[Finding]:
        if ctx.view is None or _matches_before_or_after(ctx):
            return []
        if ctx.generalized:
            if ctx.view.digest in prefix_digests(ctx.trace, ctx.prefix_views):
                return []
            # the views around the op in flight (all of them in a workload of up to
            # CLOSEST_SPAN ops): a message per crash state must not cost every op
            count = len(ctx.prefix_views)
            start = min(max(0, ctx.op.index + 1 - CLOSEST_SPAN // 2), max(0, count - CLOSEST_SPAN))
            near = range(start, min(count, start + CLOSEST_SPAN))
            closest = min(near, key=lambda k: len(views.diff(ctx.prefix_views[k], ctx.view, limit=MAX_PATHS)))
            differs = views.diff(ctx.prefix_views[closest], ctx.view, limit=MAX_PATHS)
            return [
                Finding(
                    f"the recovered view matches no prefix of the workload; the closest is the "
                    f"view after {closest} op(s), which differs at {_list(differs)}",
                    tuple(differs),
                )
            ]
        from_before = views.diff(ctx.op.before, ctx.view, limit=MAX_PATHS)
        from_after = views.diff(ctx.op.after, ctx.view, limit=MAX_PATHS)
        return [
            Finding(
                f"the recovered view is neither the view before `{ctx.op.text}` (differs at "
                f"{_list(from_before)}) nor the view after it (differs at {_list(from_after)})",
                tuple(sorted(set(from_before) | set(from_after)))[:MAX_PATHS],
            )
        ]


def prefix_digests(trace: Trace, prefix_views: list[Dir]) -> frozenset[bytes]:
    """The digests of the views after 0, 1, ... ops (computed once per trace)."""
    hit = trace.cache.get("prefix_digests")
    if not isinstance(hit, frozenset):
        hit = trace.cache["prefix_digests"] = frozenset(v.digest for v in prefix_views)
    return hit


def _moves(op: OpRecord) -> tuple[str, str] | None:
    """(src, dst) of a rename or mv op."""
    if op.op.kind in ("rename", "mv"):
        return op.op.arg("src"), op.op.arg("dst")
    return None


class NoDualExistence(Invariant):
    name = "no-dual-existence"
    description = "during a rename or mv, the source and destination never both exist"
    needs = "a rename or mv op"

    def applies(self, spec: Spec) -> bool:
        return any(op.kind in ("rename", "mv") for op in spec.ops)

    def check(self, ctx: CrashContext) -> list[Finding]:
        moves = _moves(ctx.op)
        if moves is None or ctx.view is None:
            return []
        src, dst = moves

        def both(view: Dir) -> bool:
            return views.at(view, src) is not None and views.at(view, dst) is not None

        if not both(ctx.view) or self._around(ctx.op, both):
            return []
        return [
            Finding(
                f"both {src} and {dst} exist after recovery (`{ctx.op.text}` was interrupted)",
                (src, dst),
            )
        ]

    @staticmethod
    def _around(op: OpRecord, both: Callable[[Dir], bool]) -> bool:
        """Do both names exist before or after the op (once per op, not per crash state)?"""
        hit = op.cache.get("both-around")
        if not isinstance(hit, bool):
            hit = op.cache["both-around"] = both(op.before) or both(op.after)
        return hit


MAX_DELTA_HOPS = 32  # how far back a directory's derivation chain is searched


@dataclass
class KeptGroup:
    """Files an op keeps, grouped by (old directory, new directory). Which of them a crash
    view has lost (whole at neither name) is updated from the last crash state's answer
    along the chains of directories each view directory was derived from (`Dir.base`),
    in a persistent map, so a crash state costs the entries that changed, not the number
    of files."""

    old_dir: tuple[str, ...]
    new_dir: tuple[str, ...]
    names: tuple[tuple[str, str], ...]  # (old name, new name) per file
    whole: tuple[frozenset[bytes], ...]  # acceptable contents per file
    old_index: dict[str, int]
    new_index: dict[str, int]
    last: tuple[Dir, Dir, Map[int, bool]] | None = None  # the pair asked last, and its answer

    def missing(self, old: object, new: object) -> Map[int, bool]:
        """Indices of the group's files that neither `old` nor `new` (view dirs, or not)
        holds whole."""
        if not (isinstance(old, Dir) and isinstance(new, Dir)):
            return self._missing(old, new, range(len(self.names)), Map())
        last = self.last
        if last is not None:
            old_changed = _changed_since(old, last[0])
            new_changed = _changed_since(new, last[1])
            if old_changed is not None and new_changed is not None:
                touched = {self.old_index[n] for n in old_changed if n in self.old_index}
                touched.update(self.new_index[n] for n in new_changed if n in self.new_index)
                found = self._missing(old, new, touched, last[2])
                self.last = (old, new, found)
                return found
        found = self._missing(old, new, range(len(self.names)), Map())
        self.last = (old, new, found)
        return found

    def _missing(
        self, old: object, new: object, indices: Iterable[int], start: Map[int, bool],
    ) -> Map[int, bool]:
        with start.mutate() as out:
            for i in indices:
                if self._holds(old, self.names[i][0], i) or self._holds(new, self.names[i][1], i):
                    out.pop(i, None)
                else:
                    out[i] = True
            return out.finish()

    def _holds(self, node: object, name: str, i: int) -> bool:
        child = node.entries.get(name) if isinstance(node, Dir) else None
        return isinstance(child, File) and child.content in self.whole[i]


def _changed_since(node: Dir, ancestor: Dir) -> set[str] | None:
    """The entry names that differ between `node` and `ancestor` when `node` was derived
    from it (within MAX_DELTA_HOPS), else None."""
    changed: set[str] = set()
    base: Dir | None = node
    for _ in range(MAX_DELTA_HOPS):
        if base is None:
            return None
        if base is ancestor or base.digest == ancestor.digest:
            return changed
        changed.update(base.changed)
        base = base.base
    return None


def kept_files(op: OpRecord) -> list[tuple[str, str, File, File]]:
    """(old path, new path, file before, file after) of every file the op keeps."""
    cached = op.cache.get("kept")
    if cached is not None:
        return cached  # type: ignore[return-value]
    before, after = views.files(op.before), views.files(op.after)
    moves = _moves(op)
    kept = []
    for path, node in before.items():
        new = moved_path(path, *moves) if moves else None
        if new is not None and new in after:
            kept.append((path, new, node, after[new]))
        elif path in after:
            kept.append((path, path, node, after[path]))
    op.cache["kept"] = kept
    return kept


def kept_groups(op: OpRecord) -> list[KeptGroup]:
    cached = op.cache.get("kept_groups")
    if cached is not None:
        return cached  # type: ignore[return-value]
    grouped: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[str, str, frozenset[bytes]]]] = {}
    for old, new, b, a in kept_files(op):
        op_, np_ = split(old), split(new)
        grouped.setdefault((op_[:-1], np_[:-1]), []).append(
            (op_[-1], np_[-1], frozenset((b.content, a.content)))
        )
    groups = [
        KeptGroup(
            old_dir, new_dir,
            tuple((o, n) for o, n, _ in files),
            tuple(w for _, _, w in files),
            {o: i for i, (o, _, _) in enumerate(files)},
            {n: i for i, (_, n, _) in enumerate(files)},
        )
        for (old_dir, new_dir), files in grouped.items()
    ]
    op.cache["kept_groups"] = groups
    return groups


class NoLoss(Invariant):
    name = "no-loss"
    description = "every file that op i keeps (at its old or new name) keeps its whole content"

    def check(self, ctx: CrashContext) -> list[Finding]:
        if ctx.view is None or _matches_before_or_after(ctx):
            return []
        lost = []
        for g in kept_groups(ctx.op):
            missing = g.missing(lookup(ctx.view, g.old_dir), lookup(ctx.view, g.new_dir))
            for i in sorted(missing):
                old, new = g.names[i]
                o, n = join(g.old_dir + (old,)), join(g.new_dir + (new,))
                lost.append(o if o == n else f"{o} -> {n}")
        if not lost:
            return []
        return [
            Finding(
                f"{len(lost)} file(s) kept by `{ctx.op.text}` are missing or cut after "
                f"recovery: {_list(lost)}",
                tuple(lost[:MAX_PATHS]),
            )
        ]


class LowerImmutable(Invariant):
    name = "lower-immutable"
    description = "no step writes to a lower layer (image layers are shared and read-only)"
    needs = "a driver with read-only lower layers (overlayfs, aufs)"
    trace_level = True
    crash_level = False

    def applies(self, spec: Spec) -> bool:
        return drivers()[spec.driver].layered

    def check_trace(self, trace: Trace) -> list[tuple[int, Finding]]:
        lowers = trace.mount.lower_devices()
        out = []
        for i, step in enumerate(trace.steps):
            hit = [p for p in step.writes() if trace.mount.device(split(p)) in lowers]
            if hit:
                out.append((i, Finding(f"step {i + 1} ({step}) writes the lower layer", tuple(hit))))
        return out


class Durability(Invariant):
    name = "durability"
    description = (
        "what a returned fsync (the file), sync or syncfs (every file) made durable survives the "
        "crash, unless a later op changed it"
    )
    needs = "an fsync, sync or syncfs op"

    def applies(self, spec: Spec) -> bool:
        return any(op.kind in SYNC_OPS for op in spec.ops)

    def check(self, ctx: CrashContext) -> list[Finding]:
        if ctx.view is None or not ctx.returned_syncs:
            return []
        lost: list[str] = []
        for path, digest, j in durable_index(ctx.trace, ctx.prefix_views).expected(
            ctx.op.index, ctx.returned_syncs
        ):
            now = views.at(ctx.view, path)
            if now is None or now.digest != digest:
                lost.append(f"{path} ({ctx.trace.ops[j].text if j >= 0 else 'a sync before this trace'})")
        if not lost:
            return []
        lost.sort()
        return [
            Finding(
                f"{len(lost)} file(s) made durable by a returned fsync/sync are missing or "
                f"different after recovery: {_list(lost)}",
                tuple(sorted(p.split(" (")[0] for p in lost))[:MAX_PATHS],
            )
        ]


EXPECTED_MEMO = 4096  # (op in flight, syncs returned) pairs remembered; a trace has about 2 per op


@dataclass
class DurableIndex:
    """What returned fsyncs and syncs made durable, indexed so that a crash state costs
    the paths it must check, not the number of ops (thousands of syncs stay linear).

    A sync op j makes durable the node each path it covers has in the view after it
    (fsync: its path; sync: every file). That holds for a crash during op i unless an op
    in j+1..i changed the path; of several returned syncs covering a path, the latest
    decides (a change after it is a change after the earlier ones too)."""

    sync_ops: list[int]  # op indices of the fsync/sync ops, in order
    covers: list[list[tuple[str, bytes]]]  # per sync op: (path, digest of its node then)
    full: list[bool]  # the sync op covers every file of the view (sync, not fsync)
    changes: dict[str, list[int]]  # path -> the ops that changed its node, in order
    memo: dict[tuple[int, int], list[tuple[str, bytes, int]]] = field(default_factory=dict)

    def next_change(self, path: str, after_op: int) -> float:
        ops = self.changes.get(path, ())
        k = bisect.bisect_right(ops, after_op)  # type: ignore[arg-type]
        return ops[k] if k < len(ops) else math.inf

    def expected(self, in_flight: int, returned: int) -> list[tuple[str, bytes, int]]:
        """(path, digest, sync op) that must survive a crash during op `in_flight` after
        the first `returned` sync ops returned."""
        key = (in_flight, returned)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        decided: set[str] = set()
        out: list[tuple[str, bytes, int]] = []
        seen_full = False
        for s in range(returned - 1, -1, -1):
            if self.full[s] and seen_full:
                continue  # its files are covered by a later sync, or changed since (gone)
            j = self.sync_ops[s]
            for path, digest in self.covers[s]:
                if path in decided:
                    continue
                decided.add(path)
                if self.next_change(path, j) > in_flight:
                    out.append((path, digest, j))
            seen_full = seen_full or self.full[s]
        if len(self.memo) >= EXPECTED_MEMO:
            self.memo.clear()
        self.memo[key] = out
        return out


CARRIED = "carried"  # trace.cache key: what syncs before the trace made durable


def durable_index(trace: Trace, prefix_views: list[Dir]) -> DurableIndex:
    """The index of a trace's syncs. A trace that continues a workload (incremental
    exploration checks one op at a time) carries what the earlier syncs made durable and
    no op since changed, `trace.cache[CARRIED]` as (path, digest) pairs: they count as one
    sync before the trace's first op (index -1), returned when the crash context says one
    more sync returned."""
    hit = trace.cache.get("durable")
    if isinstance(hit, DurableIndex):
        return hit
    sync_ops, covers, full = [], [], []
    wanted: set[str] = set()
    carried = trace.cache.get(CARRIED)
    if carried:
        sync_ops.append(-1)
        covers.append(sorted(carried))  # type: ignore[call-overload]
        full.append(False)
        wanted.update(p for p, _ in carried)  # type: ignore[union-attr]
    for record in trace.ops:
        op = record.op
        if op.kind not in SYNC_OPS:
            continue
        after = prefix_views[record.index + 1]
        paths = [op.arg("path")] if op.kind == "fsync" else list(views.files(after))
        cover = [(p, n.digest) for p in paths if (n := views.at(after, p)) is not None]
        sync_ops.append(record.index)
        covers.append(cover)
        full.append(op.kind in FULL_SYNC_OPS)
        wanted.update(p for p, _ in cover)
    changes: dict[str, list[int]] = {}
    for k in range(len(trace.ops)):
        for path in views.changed(prefix_views[k], prefix_views[k + 1], wanted):
            changes.setdefault(path, []).append(k)
    index = DurableIndex(sync_ops, covers, full, changes)
    trace.cache["durable"] = index
    return index


class Recoverable(Invariant):
    name = "recoverable"
    description = (
        "recovery succeeds (or refuses the mount with a reason that names the fix) and "
        "running it twice changes nothing"
    )

    def check(self, ctx: CrashContext) -> list[Finding]:
        rec = ctx.recovery
        if rec.refused:
            if rec.remedy:
                return []
            return [Finding(f"the mount is refused ({rec.refusal}) and nothing says how to fix it")]
        assert rec.root is not None
        again = ctx.recover(rec.root)
        if again.refused:
            return [Finding(f"recovery succeeds once, then refuses: {again.refusal}")]
        assert again.root is not None
        if again.root.digest != rec.root.digest:
            changed = views.diff(rec.root, again.root, limit=MAX_PATHS)
            return [Finding(f"running recovery twice changes {_list(changed)}", tuple(changed))]
        return []


class UsableAfterRecovery(Invariant):
    name = "usable-after-recovery"
    description = (
        "after a crash during the ops before a `crash` op and recovery, the ops after it "
        "return and leave what they do after some crash-free prefix of those ops, and bring "
        "about no store problem"
    )
    needs = "a crash op"

    def applies(self, spec: Spec) -> bool:
        return spec.crash_index is not None

    def check(self, ctx: CrashContext) -> list[Finding]:
        after = ctx.after_crash
        if after is None or not after.ops:
            return []
        first_later = after.ops[0].index
        root = ctx.recovery.root if ctx.recovery.root is not None else ctx.recovery.fallback
        if root is None:
            return [Finding(
                f"after a crash during `{ctx.op.text}` the store does not start again "
                f"({ctx.recovery.refusal}): the later ops cannot run", (), first_later,
            )]
        got = after.run(root)
        refs = [after.reference(k) for k in after.allowed(ctx.op.index, ctx.generalized)]
        for ref in refs:
            if got.results == ref.results and got.view.digest == ref.view.digest and (
                not got.problems or got.problems == ref.problems
            ):
                return []
        best = max(refs, key=lambda r: _common(r.results, got.results))
        j = _common(best.results, got.results)
        if j < len(got.results):
            op = after.ops[j]
            expected = " or ".join(str(r) for r in dict.fromkeys(
                ref.results[j] for ref in refs if ref.results[:j] == got.results[:j]
            ))
            return [Finding(
                f"after a crash during `{ctx.op.text}`, later op {op.index} `{op.text}` returns "
                f"{got.results[j]} where it returns {expected} after no crash", (), op.index, got,
            )]
        last = after.ops[-1].index
        if got.view.digest != best.view.digest:
            differs = views.diff(best.view, got.view, limit=MAX_PATHS)
            return [Finding(
                f"after a crash during `{ctx.op.text}`, the later ops end in a view no run "
                f"without the crash gives (differs at {_list(differs)})", tuple(differs), last, got,
            )]
        [found] = _problems(f"after a crash during `{ctx.op.text}`, the later ops leave the store "
                            "inconsistent", list(got.problems))
        return [Finding(found.message, found.paths, last, got)]


def _common(a: tuple[object, ...], b: tuple[object, ...]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


class ViewPreserved(Invariant):
    name = "view-preserved"
    description = (
        "an op that must not change what users see (a squash) leaves the view exactly as "
        "it was, when it completes and after any crash during it"
    )
    needs = "an op that must preserve the view (squash on the squash driver)"
    trace_level = True  # checks completed ops here, and crash states in `check`

    def applies(self, spec: Spec) -> bool:
        preserving = drivers()[spec.driver].VIEW_PRESERVING_OPS
        return any(op.kind in preserving for op in spec.ops)

    def check(self, ctx: CrashContext) -> list[Finding]:
        if ctx.view is None or ctx.op.op.kind not in ctx.mount.driver.VIEW_PRESERVING_OPS or ctx.op.errno:
            return []
        return self._differs(ctx.op, ctx.view, "after recovery")

    def check_trace(self, trace: Trace) -> list[tuple[int, Finding]]:
        preserving = trace.mount.driver.VIEW_PRESERVING_OPS
        return _at_op_ends(trace, lambda op: self._differs(op, op.after, "once it completes") if (
            op.op.kind in preserving and not op.errno) else [])

    def _differs(self, op: OpRecord, view: Dir, when: str) -> list[Finding]:
        if view.digest == op.before.digest:
            return []
        changed = views.diff(op.before, view, limit=MAX_PATHS)
        return [Finding(f"`{op.text}` changed the view {when}: {_list(changed)} differ", tuple(changed))]


def _can(spec: Spec, capability: type) -> bool:
    """Does the spec's driver mount with this capability (`models.capabilities`)?"""
    return mount_can(drivers()[spec.driver].MOUNT, capability)


class _StoreInvariant(Invariant):
    """Checks the backing store after recovery through the driver's `StoreChecks`, which
    list (path, problem) pairs."""

    what = ""

    def applies(self, spec: Spec) -> bool:
        return _can(spec, StoreChecks)

    def check(self, ctx: CrashContext) -> list[Finding]:
        rec = ctx.recovery
        if rec.refused or rec.root is None or not can(ctx.mount, StoreChecks):
            return []
        return _problems(self.what, self.problems(ctx.mount, rec.root))

    def problems(self, store: StoreChecks, root: Dir) -> list[tuple[str, str]]:
        raise NotImplementedError


class LayerStoreConsistent(_StoreInvariant):
    name = "layer-store-consistent"
    description = (
        "after recovery every registered layer, container mount and image resolves to "
        "complete data: cache-id, diff, link, lower and l/ symlink resolve, contents match"
    )
    needs = "a driver with a layer store (docker-overlay2)"
    what = "the layer store is inconsistent"

    def problems(self, store: StoreChecks, root: Dir) -> list[tuple[str, str]]:
        return store.store_problems(root)


class NoLayerLeak(_StoreInvariant):
    name = "no-layer-leak"
    description = (
        "after recovery nothing is left that no layer, container or image uses and nothing "
        "will remove (orphan layer dirs, dangling l/ links, temp write sets)"
    )
    needs = "a driver with a layer store (docker-overlay2)"
    what = "storage leaked"

    def problems(self, store: StoreChecks, root: Dir) -> list[tuple[str, str]]:
        return store.store_leaks(root)


class SnapshotIsolation(Invariant):
    name = "snapshot-isolation"
    description = (
        "an op on one container or image (device) never changes what another one shows, "
        "when it completes and after any crash during it"
    )
    trace_level = True
    needs = "a driver whose ops act on one container or image (docker-overlay2, devicemapper)"

    def applies(self, spec: Spec) -> bool:
        return _can(spec, ScopedOps)

    def check(self, ctx: CrashContext) -> list[Finding]:
        if ctx.view is None or not can(ctx.mount, ScopedOps):
            return []
        return self._others_changed(ctx.mount.op_scope(ctx.op.op), ctx.op, ctx.view, "after recovery")

    def check_trace(self, trace: Trace) -> list[tuple[int, Finding]]:
        if not can(trace.mount, ScopedOps):
            return []
        scope = trace.mount.op_scope
        done = "once it completes"
        return _at_op_ends(trace, lambda op: self._others_changed(scope(op.op), op, op.after, done))

    def _others_changed(self, scope: tuple[str, ...], op: OpRecord, view: Dir, when: str) -> list[Finding]:
        changed = []
        for group in sorted(set(op.before.entries) | set(view.entries)):
            old, new = op.before.entries.get(group), view.entries.get(group)
            for name in sorted(set(_entries(old)) | set(_entries(new))):
                path = f"{group}/{name}"
                if path in scope:
                    continue
                a = old.entries.get(name) if isinstance(old, Dir) else None
                b = new.entries.get(name) if isinstance(new, Dir) else None
                if (a.digest if a else None) != (b.digest if b else None):
                    changed.append(path)
        if not changed:
            return []
        message = f"`{op.text}` changed {_list(changed)} {when}, outside what it works on"
        return [Finding(message, tuple(changed))]


def _entries(node: object) -> dict[str, object]:
    return node.entries if isinstance(node, Dir) else {}  # type: ignore[return-value]


class NoSpaceLeak(Invariant):
    name = "no-space-leak"
    description = (
        "removing what was created returns the pool to its previous usage: after each op "
        "and after recovery, no thin device Docker does not know, no allocated block no "
        "device maps, and (after an op) no mapped block its file system does not use"
    )
    trace_level = True
    needs = "a driver with a thin pool (devicemapper)"

    def applies(self, spec: Spec) -> bool:
        return _can(spec, SpaceChecks)

    def check(self, ctx: CrashContext) -> list[Finding]:
        if ctx.recovery.root is None or not can(ctx.mount, SpaceChecks):
            return []
        found = ctx.mount.space_leaks(ctx.recovery.root, completed=False)
        return _problems("pool space leaked after recovery", found)

    def check_trace(self, trace: Trace) -> list[tuple[int, Finding]]:
        if not can(trace.mount, SpaceChecks):
            return []
        leaks = trace.mount.space_leaks
        return _at_op_ends(trace, lambda op: _problems(
            f"pool space leaked after `{op.text}`", leaks(trace.states[op.end_step], completed=True)
        ))


def _at_op_ends(trace: Trace, findings_of: Callable[[OpRecord], list[Finding]]) -> list[tuple[int, Finding]]:
    """Trace-level findings about each completed op, placed at its last step."""
    return [(max(op.end_step - 1, 0), f) for op in trace.ops for f in findings_of(op)]


def _problems(what: str, found: list[tuple[str, str]]) -> list[Finding]:
    """One finding listing a driver's (path, problem) pairs, or none."""
    if not found:
        return []
    shown = "; ".join(problem for _, problem in found[:MAX_PATHS])
    more = f" and {len(found) - MAX_PATHS} more" if len(found) > MAX_PATHS else ""
    return [Finding(f"{what}: {shown}{more}", tuple(p for p, _ in found[:MAX_PATHS]))]


def _list(paths: list[str]) -> str:
    if not paths:
        return "nothing"
    shown = ", ".join(paths[:MAX_PATHS])
    return shown + (f" and {len(paths) - MAX_PATHS} more" if len(paths) > MAX_PATHS else "")


INVARIANTS: dict[str, Invariant] = {
    inv.name: inv
    for inv in (
        Atomicity(), NoDualExistence(), NoLoss(), LowerImmutable(), Recoverable(), Durability(),
        ViewPreserved(), LayerStoreConsistent(), NoLayerLeak(), SnapshotIsolation(), NoSpaceLeak(),
        UsableAfterRecovery(),
    )
}


def selected(spec: Spec) -> list[Invariant]:
    """The invariants a spec checks: its `check` list, or every one that applies."""
    if spec.check is not None:
        return [INVARIANTS[n] for n in spec.check]
    return [inv for inv in INVARIANTS.values() if inv.applies(spec)]
