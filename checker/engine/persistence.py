"""Persistence models: which subsets of a trace's steps a crash can leave on disk.

The constraints of a trace are a DAG (networkx) of "must persist before" edges between
steps; a crash state is a downward-closed set of it (an ideal): if a step persisted, so
did everything it depends on. A data step (write, copy, truncate) of m blocks may also
be torn: the crash keeps its first k blocks, 0 < k < m (`--block-size`, default 4096).

- `prefix`: a chain, steps are atomic: a crash keeps steps 0..k-1 (a process crash, or a
  strongly ordered file system).
- `ordered-metadata` (ext4 `data=ordered`-like): namespace and attribute steps persist
  in order and atomically; data is written without ordering against them, so data not
  covered by a later fsync may be missing or cut at block granularity even though a
  later metadata step (a rename over the file, say) persisted.
- `weak` (ALICE-style): namespace steps persist in order only where their paths overlap
  (one is the other or an ancestor of it); an attribute or data step needs only the step
  that made its path; everything else may reorder.

In every model, steps on a file before an fsync of it (steps on any file before a
syncfs; only its metadata steps before a metadata-only syncfs) persist before every step
after the fsync, and a step needs the steps that created the entries it works on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from checker.engine.budget import checkpoint

if TYPE_CHECKING:
    import networkx as nx
from checker.engine.trace import Trace
from models.steps import CopyData, Device, Effect, Step, Syncfs, Write
from models.syscalls import RenameFlags
from models.tree import Dir, File, Parts, lookup, split

DEFAULT_BLOCK_SIZE = 4096  # bytes a disk writes atomically (a page; ext4's default block)


@dataclass(frozen=True)
class CrashState:
    """What a crash left: for each of the first `crash_after_step` steps, how many of its
    pieces persisted (`amounts`; None means all of them: the prefix)."""

    crash_after_step: int
    amounts: tuple[int, ...] | None = None

    def amount(self, i: int, pieces: int = 1) -> int:
        if i >= self.crash_after_step:
            return 0
        return pieces if self.amounts is None else self.amounts[i]

    @property
    def is_prefix(self) -> bool:
        return self.amounts is None

    def describe(self, pieces: list[int]) -> str:
        """'persisted 1-5, 7; torn 8 (1/3 blocks)' (steps 1-based)."""
        if self.amounts is None:
            return f"persisted 1-{self.crash_after_step}" if self.crash_after_step else "nothing persisted"
        whole = [i + 1 for i, a in enumerate(self.amounts) if a and a == pieces[i]]
        torn = [f"{i + 1} ({a}/{pieces[i]} blocks)" for i, a in enumerate(self.amounts) if 0 < a < pieces[i]]
        text = "persisted " + (_ranges(whole) if whole else "nothing")
        return text + (f"; torn {', '.join(torn)}" if torn else "")

    def token(self, pieces: list[int]) -> str:
        """The `--persisted` argument that reproduces this state: '1-5,7,8:1'."""
        if self.amounts is None:
            return _ranges(list(range(1, self.crash_after_step + 1))).replace(" ", "") or "none"
        parts = []
        for i, a in enumerate(self.amounts):
            if a == pieces[i] and a:
                parts.append(str(i + 1))
            elif a:
                parts.append(f"{i + 1}:{a}")
        return _compress(parts) or "none"


def _ranges(points: list[int]) -> str:
    out: list[str] = []
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        out.append(str(points[i]) if i == j else f"{points[i]}-{points[j]}")
        i = j + 1
    return ", ".join(out)


def _compress(parts: list[str]) -> str:
    plain = [p for p in parts if ":" not in p]
    ranged = _ranges([int(p) for p in plain]).replace(" ", "") if plain else ""
    torn = [p for p in parts if ":" in p]
    return ",".join(x for x in [ranged] + torn if x)


def parse_persisted(text: str, n: int, pieces: list[int]) -> CrashState:
    """The crash state a `--persisted` argument names (steps 1-based, 'a-b' ranges,
    'k:j' for the first j blocks of step k, 'none')."""
    amounts = [0] * n
    if text.strip() != "none":
        for item in text.split(","):
            item = item.strip()
            if ":" in item:
                k, j = item.split(":", 1)
                amounts[int(k) - 1] = int(j)
            elif "-" in item:
                a, b = item.split("-", 1)
                for k in range(int(a), int(b) + 1):
                    amounts[k - 1] = pieces[k - 1]
            elif item:
                amounts[int(item) - 1] = pieces[int(item) - 1]
    last = max((i + 1 for i, a in enumerate(amounts) if a), default=0)
    return CrashState(last, tuple(amounts[:last]))


@dataclass
class Constraints:
    """The "must persist before" DAG over step indices, and each step's piece count."""

    graph: nx.DiGraph
    pieces: list[int]
    preds: list[tuple[int, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.preds = [tuple(sorted(self.graph.predecessors(i))) for i in range(len(self.pieces))]

    def allows(self, crash: CrashState) -> bool:
        """Is `crash` downward closed (a step persisted only if what it needs did)?"""
        n = len(self.pieces)
        for i in range(n):
            if crash.amount(i, self.pieces[i]) and any(
                crash.amount(p, self.pieces[p]) != self.pieces[p] for p in self.preds[i]
            ):
                return False
        return True


def count_ideals(c: Constraints, limit: int) -> int:
    """The number of crash states of `c`, counting no further than `limit`."""
    n = len(c.pieces)
    amounts = [0] * n
    top = [0] * n
    count = 0
    i = 0
    while True:
        if i < n:
            top[i] = c.pieces[i] if all(amounts[p] == c.pieces[p] for p in c.preds[i]) else 0
            amounts[i] = 0
            i += 1
            continue
        count += 1
        checkpoint()
        if count >= limit:
            return count
        i = n - 1
        while i >= 0 and amounts[i] == top[i]:
            i -= 1
        if i < 0:
            return count
        amounts[i] += 1
        i += 1


# --- what steps touch -----------------------------------------------------------------

def is_namespace(step: Step) -> bool:
    return step.is_namespace


def _under(path: Parts, top: Parts) -> bool:
    return path[: len(top)] == top


@dataclass
class StepFacts:
    """Per step: the inodes it touches, the step that made the entry it works on, and
    the inode an fsync covers."""

    touches: list[frozenset[int]]
    creator: list[int | None]
    fsynced: list[int | None]
    written: list[dict[str, int]]  # inode of each path a step leaves in place, after it
    #: the inodes whose last name a step removes (unlink, rmdir, a tree removal, a rename
    #: over them): after it nothing can see their data
    dies: list[frozenset[int]] = field(default_factory=list)


def _latest(*steps: int | None) -> int | None:
    return max((s for s in steps if s is not None), default=None)


def step_facts(trace: Trace) -> StepFacts:
    """Follow inodes and entries through the trace (paths move with renames)."""
    inode: dict[Parts, int] = {}
    made: dict[Parts, int] = {}  # path -> the step that created it or moved it there
    counter = [0]

    def ino(p: Parts) -> int:
        if p not in inode:
            counter[0] += 1
            inode[p] = counter[0]
        return inode[p]

    def fresh(p: Parts) -> int:
        counter[0] += 1
        inode[p] = counter[0]
        return counter[0]

    def move(src: Parts, dst: Parts, i: int) -> None:
        moved_ino = {dst + k[len(src) :]: v for k, v in inode.items() if _under(k, src)}
        for k in [k for k in inode if _under(k, src) or _under(k, dst)]:
            del inode[k]
        inode.update(moved_ino)
        moved = {dst + k[len(src) :]: i for k in made if _under(k, src)}
        for k in [k for k in made if _under(k, src) or _under(k, dst)]:
            del made[k]
        made.update(moved)
        made[dst] = i

    def drop(p: Parts) -> None:
        for table in (inode, made):
            for k in [k for k in table if _under(k, p)]:
                del table[k]

    def creator_of(p: Parts) -> int | None:
        found = [made[p[:d]] for d in range(1, len(p) + 1) if p[:d] in made]
        return max(found) if found else None

    touches: list[frozenset[int]] = []
    creators: list[int | None] = []
    fsynced: list[int | None] = []
    written: list[dict[str, int]] = []
    dies: list[frozenset[int]] = []

    def gone(before: set[int]) -> frozenset[int]:
        return frozenset(before - set(inode.values()))

    for i, step in enumerate(trace.steps):
        checkpoint()
        f: int | None = None
        died: frozenset[int] = frozenset()
        shape = step.shape()
        effect = shape.effect
        if effect in (Effect.MOVE, Effect.LINK):
            s, d = split(shape.src), split(shape.dst)
            creators.append(_latest(creator_of(s), creator_of(d[:-1])))
            if effect is Effect.LINK:
                t = {ino(s), ino(d[:-1])}
                inode[d] = ino(s)
                made[d] = i
            else:
                t = {ino(s), ino(s[:-1]), ino(d[:-1])}
                replaced = {v for k, v in inode.items() if _under(k, d)}
                if d in inode:
                    t.add(inode[d])
                if shape.flags is RenameFlags.EXCHANGE:
                    a = {k: v for k, v in inode.items() if _under(k, s)}
                    b = {k: v for k, v in inode.items() if _under(k, d)}
                    for k in list(a) + list(b):
                        inode.pop(k, None)
                    inode.update({d + k[len(s) :]: v for k, v in a.items()})
                    inode.update({s + k[len(d) :]: v for k, v in b.items()})
                    made[s] = made[d] = i
                else:
                    move(s, d, i)
                    if shape.flags is RenameFlags.WHITEOUT:
                        fresh(s)
                        made[s] = i
                    died = gone(replaced)
        elif effect is Effect.REMOVE:
            p = split(shape.path)
            creators.append(creator_of(p))
            t = {ino(p), ino(p[:-1])}
            removed = {v for k, v in inode.items() if _under(k, p)}
            drop(p)
            died = gone(removed)
        elif effect is Effect.MAKE:
            p = split(shape.path)
            creators.append(creator_of(p[:-1]))
            t = {fresh(p), ino(p[:-1])}
            made[p] = i
        elif effect is Effect.FSYNC:
            creators.append(creator_of(split(shape.path)))
            t = set()
            f = ino(split(shape.path))
        elif effect is Effect.SYNCFS:
            creators.append(None)
            t = set()
        else:  # TOUCH: data and attribute steps on one path
            p = split(shape.path)
            creators.append(creator_of(p))
            t = {ino(p)}
        touches.append(frozenset(t))
        fsynced.append(f)
        dies.append(died)
        written.append({p: inode[split(p)] for p in step.writes() if split(p) in inode})
    return StepFacts(touches, creators, fsynced, written, dies)


def pieces_of(trace: Trace, block_size: int, tear: bool) -> list[int]:
    """How many blocks each step has (1 for every non-data step, or when not tearing)."""
    if not tear:
        return [1] * len(trace.steps)
    return [step.pieces(block_size, trace.states[i]) for i, step in enumerate(trace.steps)]


def copy_sources(trace: Trace) -> list[bytes | None]:
    """For each copy step, the data it copies as the trace ran (None for other steps).
    A copy reads its source when it runs; what the crash keeps of the source's own steps
    does not change the data the copy wrote."""
    hit = trace.cache.get("copy_sources")
    if isinstance(hit, list):
        return hit
    out: list[bytes | None] = []
    for i, step in enumerate(trace.steps):
        if isinstance(step, CopyData):
            src = lookup(trace.states[i], split(step.src))
            out.append(src.content if isinstance(src, File) else b"")
        else:
            out.append(None)
    trace.cache["copy_sources"] = out
    return out


def apply_amount(root: Dir, step: Step, amount: int, pieces: int, block_size: int, device: Device,
                 source: bytes | None = None) -> Dir:
    """Apply all of a step, or the first `amount` blocks of a torn data step; a copy
    writes `source` (what it read when the trace ran) when given."""
    if isinstance(step, CopyData) and source is not None and amount >= pieces:
        return Write(step.dst, source, 0, replace=True).apply(root, device)
    if amount >= pieces:
        return step.apply(root, device)
    return step.torn(root, amount, block_size, device, source)


# --- the models -------------------------------------------------------------------------


class Persistence:
    name = ""
    description = ""
    tears = True  # data steps may be cut at block boundaries
    follows_inodes = True  # the edges need step_facts (a chain does not)

    def constraints(self, trace: Trace, block_size: int = DEFAULT_BLOCK_SIZE) -> Constraints:
        import networkx as nx  # imported when needed: the CLI starts fast and without it

        graph = nx.DiGraph()
        graph.add_nodes_from(range(len(trace.steps)))
        facts = step_facts(trace) if self.follows_inodes else StepFacts([], [], [], [])
        self.add_edges(trace, graph, facts)
        if self.tears:
            self._block_edges(trace, graph, facts, block_size)
        return Constraints(graph, pieces_of(trace, block_size, self.tears))

    def add_edges(self, trace: Trace, graph: nx.DiGraph, facts: StepFacts) -> None:
        raise NotImplementedError

    def crash_states(
        self, trace: Trace, c: Constraints, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> Iterator[tuple[CrashState, Dir]]:
        """Every ideal of the DAG with the tree it leaves, depth first (iteratively): each
        step is applied once per branch, sharing the trees of common prefixes."""
        n = len(trace.steps)
        if n == 0:
            yield CrashState(0, ()), trace.initial
            return
        device = trace.mount.device
        sources = copy_sources(trace)
        amounts = [0] * n
        top = [0] * n  # the largest amount step i may have, given the steps before it
        roots: list[Dir] = [trace.initial] * (n + 1)
        last = [0] * (n + 1)  # last[i]: 1 + the last step before i with something persisted
        i = 0
        while True:
            if i < n:  # enter step i with amount 0
                top[i] = c.pieces[i] if all(amounts[p] == c.pieces[p] for p in c.preds[i]) else 0
                amounts[i] = 0
                roots[i + 1] = roots[i]
                last[i + 1] = last[i]
                i += 1
                continue
            k = last[n]
            yield CrashState(k, tuple(amounts[:k])), roots[n]
            i = n - 1
            while i >= 0 and amounts[i] == top[i]:
                i -= 1
            if i < 0:
                return
            amounts[i] += 1
            roots[i + 1] = apply_amount(roots[i], trace.steps[i], amounts[i], c.pieces[i], block_size, device,
                                        sources[i])
            last[i + 1] = i + 1
            i += 1

    def materialize(self, trace: Trace, crash: CrashState, c: Constraints, block_size: int) -> Dir:
        if crash.is_prefix:
            return trace.states[crash.crash_after_step]
        root = trace.initial
        sources = copy_sources(trace)
        for i in range(crash.crash_after_step):
            k = crash.amount(i, c.pieces[i])
            if k:
                root = apply_amount(root, trace.steps[i], k, c.pieces[i], block_size, trace.mount.device,
                                    sources[i])
        return root

    def op_in_flight(self, trace: Trace, crash: CrashState, c: Constraints) -> int:
        """The op of the first step a crash lost (a step before the last persisted one
        that is missing or torn); without such a step, the op of the last persisted step."""
        if crash.amounts is not None:
            for i, a in enumerate(crash.amounts):
                if a < c.pieces[i]:
                    return trace.step_op[i]
        return trace.op_at_step(crash.crash_after_step)

    def _sync_edges(self, trace: Trace, graph: nx.DiGraph, facts: StepFacts) -> None:
        """fsync(f): steps on f before it persist before it, and it before every later
        step; syncfs: every earlier step before it, it before every later one.

        Edges that others imply are left out, so that thousands of syncs keep the graph
        linear: a later step needs only the latest fsync/syncfs (which needs the one
        before it), and a step before the latest syncfs reaches a later barrier through
        it. The crash states (the ideals) are the same."""
        barrier: int | None = None  # the latest fsync/syncfs step
        since_syncfs = 0  # steps before the latest syncfs are ordered before it
        unsynced: list[int] = []  # steps a syncfs left unordered (data of a metadata-only
        # one, steps on another device than a syncfs of one device)
        touching: dict[int, list[int]] = {}  # inode -> steps that touched it
        steps = trace.steps
        for j, step in enumerate(steps):
            if barrier is not None:
                graph.add_edge(barrier, j)
            effect = step.shape().effect
            if effect is Effect.SYNCFS:
                before = unsynced + list(range(since_syncfs, j))
                synced_by = self._synced_by(trace, step)
                covered = [i for i in before if synced_by(steps[i])]
                graph.add_edges_from((i, j) for i in covered)
                unsynced = sorted(set(before) - set(covered))
                since_syncfs = barrier = j
            elif effect is Effect.FSYNC and facts.fsynced[j] is not None:
                f = facts.fsynced[j]
                left = set(unsynced)
                graph.add_edges_from(
                    (i, j) for i in touching.get(f, ()) if i >= since_syncfs or i in left
                )
                barrier = j
            for inode in facts.touches[j]:
                touching.setdefault(inode, []).append(j)

    @staticmethod
    def _synced_by(trace: Trace, sync: Step) -> Callable[[Step], bool]:
        """Which earlier steps syncfs step `sync` makes durable: not the data of a
        metadata-only one, and not a step on another device than the one a syncfs of a
        path covers (a dm-thin pool commit orders the pool's devices only)."""
        if not isinstance(sync, Syncfs):
            return lambda step: True
        device = trace.mount.device
        scope = device(split(sync.path)) if sync.path else None

        def synced(step: Step) -> bool:
            if not sync.data and step.is_data:
                return False
            paths = step.writes()
            return scope is None or not paths or any(device(split(p)) == scope for p in paths)
        return synced

    @staticmethod
    def _dead_data_edges(trace: Trace, graph: nx.DiGraph, facts: StepFacts) -> None:
        """Data written to a file whose last name a later step removes persists before
        that removal: once the removal persisted nothing can see the data, so a crash
        state that lost the data and one that kept it look the same, and only one of them
        is enumerated (fewer crash states, the same views)."""
        death: dict[int, int] = {}
        for j in range(len(trace.steps) - 1, -1, -1):  # death: the first removal after j
            if trace.steps[j].is_data:
                ends = [death[x] for x in facts.touches[j] if x in death]
                if ends:
                    graph.add_edge(j, min(ends))
            for inode in facts.dies[j]:
                death[inode] = j

    def _block_edges(self, trace: Trace, graph: nx.DiGraph, facts: StepFacts, block_size: int) -> None:
        """Data written to the same block of a file persists in order: the page cache
        writes a block as it is, with every earlier write to it."""
        seen: dict[int, list[tuple[int, int, float]]] = {}
        for i, step in enumerate(trace.steps):
            if not step.is_data:
                continue
            lo, hi = step.block_range(block_size)
            for inode in facts.touches[i]:
                for j, a, b in seen.get(inode, ()):
                    if a < hi and lo < b:
                        graph.add_edge(j, i)
                seen.setdefault(inode, []).append((i, lo, hi))


class Prefix(Persistence):
    name = "prefix"
    description = "steps persist in order, each atomically (a process crash)"
    tears = False
    follows_inodes = False

    def add_edges(self, trace: Trace, graph: nx.DiGraph, facts: StepFacts) -> None:
        graph.add_edges_from((i, i + 1) for i in range(len(trace.steps) - 1))

    def crash_states(
        self, trace: Trace, c: Constraints, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> Iterator[tuple[CrashState, Dir]]:
        for k in range(len(trace.steps) + 1):
            yield CrashState(k), trace.states[k]


class OrderedMetadata(Persistence):
    name = "ordered-metadata"
    description = (
        "namespace and attribute steps persist in order; unsynced file data may be missing "
        "or cut at block granularity (ext4 data=ordered-like)"
    )

    def add_edges(self, trace: Trace, graph: nx.DiGraph, facts: StepFacts) -> None:
        meta = [i for i, s in enumerate(trace.steps) if not s.is_data]
        graph.add_edges_from(zip(meta, meta[1:], strict=False))
        for i, step in enumerate(trace.steps):
            if step.is_data and facts.creator[i] is not None:
                graph.add_edge(facts.creator[i], i)
        self._sync_edges(trace, graph, facts)
        self._dead_data_edges(trace, graph, facts)


class Weak(Persistence):
    name = "weak"
    description = (
        "steps may persist in any order, except that namespace steps on overlapping paths "
        "keep their order, a step needs the step that made its path, and fsync/syncfs order"
    )

    def add_edges(self, trace: Trace, graph: nx.DiGraph, facts: StepFacts) -> None:
        at: dict[Parts, list[int]] = {}  # path -> namespace steps on exactly it
        under: dict[Parts, list[int]] = {}  # path -> namespace steps strictly below it
        for i, step in enumerate(trace.steps):
            checkpoint()
            if not is_namespace(step):
                continue
            for path in step.writes():
                p = split(path)
                for d in range(1, len(p) + 1):
                    for j in at.get(p[:d], ()):
                        graph.add_edge(j, i)
                for j in under.get(p, ()):
                    graph.add_edge(j, i)
            for path in step.writes():
                p = split(path)
                at.setdefault(p, []).append(i)
                for d in range(1, len(p)):
                    under.setdefault(p[:d], []).append(i)
        for i, step in enumerate(trace.steps):
            if not is_namespace(step):
                c = facts.creator[i]
                if c is not None and c < i:
                    graph.add_edge(c, i)
        self._sync_edges(trace, graph, facts)
        self._dead_data_edges(trace, graph, facts)


MODELS: dict[str, Persistence] = {m.name: m for m in (Prefix(), OrderedMetadata(), Weak())}
