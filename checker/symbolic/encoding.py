"""The symbolic engine (`--engine symbolic`): z3 decides whether any crash state of the
constraint DAG violates the checked invariants, without enumerating crash states.

The encoding:

- one integer per step: how many of its blocks persisted (0..m), with `some(v) ->
  full(u)` for every edge u -> v of the DAG (an edge from a step to every later step, as
  an fsync makes, becomes one implication on a suffix-or chain);
- the backing store after the persisted steps, applied in trace order, as a symbolic
  node per path of a finite universe (every path a step names, closed under the renames
  that move subtrees): kind, data, mode and xattrs are integer terms with the finite set
  of concrete values each can take, so data written by torn writes is tracked exactly;
- the view: for `plain` the backing store itself; for `overlayfs` the union lookup of
  `models.union`, run concretely for each combination of the values the upper entries on
  a path can take (kind, opaque, redirect), guarded by the conditions under which they do;
- the invariants (atomicity, no-dual-existence, no-loss, durability) over the view,
  the op in flight and the fsyncs that returned, exactly as the concrete checker defines
  them.

A model of the solver is a crash state; the concrete checker replays it, and the reported
violation always comes from that replay (if a replay ever disagrees, the state is blocked
and the search goes on, so an encoding gap cannot produce a false report). `recoverable`
holds by construction for the drivers encoded here (overlayfs recovery empties the work
dir, or refuses a volatile mount with its remedy), and `lower-immutable` is checked on
the trace. A solver timeout gives `unknown`.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import z3

from checker.engine.budget import Budget, checkpoint, z3_memory_megabytes
from checker.engine.explorer import Context, Exploration, Violation, trace_level_violations, violations_at
from checker.engine.invariants import kept_files
from checker.engine.persistence import CrashState, apply_amount, copy_sources
from models.capabilities import IdentityView, UnionView, can
from models.clients import FULL_SYNC_OPS, SYNC_OPS
from models.format import METACOPY, OPAQUE, OVL_PREFIX, REDIRECT
from models.steps import Effect, Link, Rename, SetXattr, Step
from models.syscalls import RenameFlags
from models.tree import Dir, File, Node, Parts, Symlink, Whiteout, join, lookup, split
from models.union import Entry, Frame

ABSENT, FILE, DIR, SYMLINK, WHITEOUT = 0, 1, 2, 3, 4
KIND = {File: FILE, Dir: DIR, Symlink: SYMLINK, Whiteout: WHITEOUT}
MAX_REPLAYS = 64  # solver models replayed before giving up on a disagreeing encoding


def unsupported(ctx: Context) -> str | None:
    """Why the symbolic engine cannot decide this trace, or None."""
    if ctx.spec.crash_index is not None:
        return "the ops after a crash op (usable-after-recovery)"
    if not (can(ctx.trace.mount, UnionView) or can(ctx.trace.mount, IdentityView)):
        return f"no symbolic encoding of driver {ctx.spec.driver}"  # models.capabilities
    if getattr(ctx.trace.mount, "options", {}).get("userxattr"):
        return "userxattr (overlay's xattrs in the user.overlay.* namespace)"
    if getattr(ctx.trace.mount, "index_all", False):
        return "nfs_export (lookups verify the inodes index: a bad index entry makes a name unreadable)"
    states = ctx.trace.states
    for i, step in enumerate(ctx.trace.steps):
        if isinstance(step, Link) and isinstance(lookup(states[i], split(step.src)), File):
            return "hard links of regular files (writes through one name change the other)"
        if isinstance(step, SetXattr) and step.name == METACOPY:
            return "metacopy files (their data is read from a lower layer)"
        if isinstance(step, Rename) and step.src == "upper":
            return "remount rotate (the lower layers change mid-workload)"
    if any(n.xattr(METACOPY) is not None for _, n in _walk(ctx.trace.initial)):
        return "metacopy files (their data is read from a lower layer)"
    return None


# --- interning concrete values -----------------------------------------------------------


class Interner:
    """Small integers for byte strings (contents, xattr values, symlink targets)."""

    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}
        self.values: list[bytes] = [b""]

    def id(self, value: bytes) -> int:
        got = self.ids.get(value)
        if got is None:
            got = self.ids[value] = len(self.values)
            self.values.append(value)
        return got


@dataclass
class Term:
    """A z3 integer term and the concrete values it can take."""

    expr: z3.ArithRef
    values: frozenset[int]

    @staticmethod
    def const(v: int) -> Term:
        return Term(z3.IntVal(v), frozenset([v]))


def ite(cond: z3.BoolRef, a: Term, b: Term) -> Term:
    if a.values == b.values and len(a.values) == 1:
        return a
    if z3.is_true(cond):
        return a
    if z3.is_false(cond):
        return b
    return Term(z3.If(cond, a.expr, b.expr), a.values | b.values)


def cases(term: Term) -> Iterable[tuple[int, z3.BoolRef]]:
    """(value, condition) for every value the term can take."""
    if len(term.values) == 1:
        (v,) = term.values
        yield v, z3.BoolVal(True)
        return
    for v in sorted(term.values):
        yield v, term.expr == v


@dataclass
class SymNode:
    kind: Term
    data: Term  # content id (files), target id (symlinks)
    mode: Term
    xattrs: dict[str, Term] = field(default_factory=dict)  # value id, 0 = absent

    def xattr(self, name: str) -> Term:
        return self.xattrs.get(name, Term.const(0))


def node_ite(cond: z3.BoolRef, a: SymNode, b: SymNode) -> SymNode:
    names = sorted(set(a.xattrs) | set(b.xattrs))  # sorted: formulas never depend on hash order
    return SymNode(
        ite(cond, a.kind, b.kind),
        ite(cond, a.data, b.data),
        ite(cond, a.mode, b.mode),
        {n: ite(cond, a.xattr(n), b.xattr(n)) for n in names},
    )


ABSENT_NODE = SymNode(Term.const(ABSENT), Term.const(0), Term.const(0))


# Owners and pinned times ride along as xattrs no real name can take (a NUL first):
# compared, set and carried exactly like xattrs.
OWNER_ATTR = "\0owner"
MTIME_ATTR = "\0mtime"


def meta_attrs(node: Node) -> dict[str, bytes]:
    """The owner and pinned time of a node as pseudo-xattr values (none by default)."""
    out: dict[str, bytes] = {}
    if node.uid or node.gid:
        out[OWNER_ATTR] = owner_value(node.uid, node.gid)
    if node.mtime is not None:
        out[MTIME_ATTR] = str(node.mtime).encode()
    return out


def owner_value(uid: int, gid: int) -> bytes:
    return f"{uid}:{gid}".encode()


def const_node(node: Node | None, interner: Interner) -> SymNode:
    if node is None:
        return ABSENT_NODE
    data = 0
    if isinstance(node, File):
        data = interner.id(node.content)
    elif isinstance(node, Symlink):
        data = interner.id(node.target.encode())
    mode = node.mode if isinstance(node, (File, Dir)) else 0
    attrs = dict(node.xattrs) | meta_attrs(node)
    return SymNode(
        Term.const(KIND[type(node)]),
        Term.const(data),
        Term.const(mode),
        {k: Term.const(interner.id(v)) for k, v in sorted(attrs.items())},
    )


# --- the symbolic backing store -------------------------------------------------------------


def universe(ctx: Context) -> set[Parts]:
    """Every backing path a crash state can have an entry at: paths the steps name, the
    initial entries, their ancestors, closed under the subtree moves of renames."""
    paths: set[Parts] = set()
    for parts, _ in _walk(ctx.trace.initial):
        paths.add(parts)
    for step in ctx.trace.steps:
        for value in step.paths():
            if value:
                paths.add(split(value))
    moves = [(split(sh.src), split(sh.dst)) for sh in (s.shape() for s in ctx.trace.steps)
             if sh.effect is Effect.MOVE]
    changed = True
    while changed:
        changed = False
        index = PathIndex(paths)
        for src, dst in moves:
            for a, b in ((src, dst), (dst, src)):
                for p in index.under(a):
                    q = b + p[len(a) :]
                    if q not in paths:
                        paths.add(q)
                        changed = True
    for p in list(paths):
        for d in range(1, len(p)):
            paths.add(p[:d])
    return paths


class PathIndex:
    """Paths sorted as strings, so the paths under a directory are one bisected range."""

    def __init__(self, paths: Iterable[Parts]) -> None:
        self.keys = sorted(("\0".join(p) + "\0", p) for p in paths)
        self.strings = [k for k, _ in self.keys]

    def under(self, top: Parts) -> list[Parts]:
        prefix = "\0".join(top) + "\0" if top else ""
        lo = bisect.bisect_left(self.strings, prefix)
        hi = bisect.bisect_left(self.strings, prefix + "\uffff")
        return [p for _, p in self.keys[lo:hi]]


def _walk(node: Node, prefix: Parts = ()) -> Iterable[tuple[Parts, Node]]:
    yield prefix, node
    if isinstance(node, Dir):
        for name, child in node.entries.items():
            yield from _walk(child, prefix + (name,))


class Encoding:
    """The formula for one trace: persistence variables, the backing store after them,
    the view, and the invariants."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.trace = ctx.trace
        self.c = ctx.constraints
        self.interner = Interner()
        n = len(self.trace.steps)
        # A Boolean per atomic step (most of them: the problem stays propositional), an
        # integer 0..m only for a data step that can be torn into m blocks.
        self.amount: list[z3.ArithRef] = []
        self.some: list[z3.BoolRef] = []
        self.full: list[z3.BoolRef] = []
        for i in range(n):
            m = self.c.pieces[i]
            if m == 1:
                p = z3.Bool(f"p{i}")
                self.some.append(p)
                self.full.append(p)
                self.amount.append(z3.If(p, 1, 0))
            else:
                a = z3.Int(f"a{i}")
                self.some.append(a >= 1)
                self.full.append(a == m)
                self.amount.append(a)
        self.later = self._suffix_or()  # later[i]: some step after i persisted
        self.facts: list[z3.BoolRef] = []
        self._persistence()
        self.paths = universe(ctx)
        self.index = PathIndex(self.paths)
        self.nodes: dict[Parts, SymNode] = {
            p: const_node(lookup(self.trace.initial, p), self.interner) for p in sorted(self.paths)
        }
        self._run_steps()

    # -- persistence -------------------------------------------------------------------

    def _suffix_or(self) -> list[z3.BoolRef]:
        n = len(self.trace.steps)
        later: list[z3.BoolRef] = [z3.BoolVal(False)] * n
        acc: z3.BoolRef = z3.BoolVal(False)
        for i in range(n - 1, -1, -1):
            later[i] = acc
            acc = z3.Or(acc, self.some[i]) if i < n else acc
        self.any_step = acc
        return later

    def _persistence(self) -> None:
        n = len(self.trace.steps)
        for i in range(n):
            if self.c.pieces[i] > 1:
                self.facts.append(z3.And(self.amount[i] >= 0, self.amount[i] <= self.c.pieces[i]))
        graph = self.c.graph
        for u in range(n):
            succ = sorted(graph.successors(u))
            if succ and len(succ) == n - 1 - u and succ[0] == u + 1:
                self.facts.append(z3.Implies(self.later[u], self.full[u]))
                continue
            for v in succ:
                self.facts.append(z3.Implies(self.some[v], self.full[u]))

    # -- steps -------------------------------------------------------------------------

    def _under(self, top: Parts) -> list[Parts]:
        return self.index.under(top)

    def _run_steps(self) -> None:
        for i, step in enumerate(self.trace.steps):
            checkpoint()
            self._step(i, step)

    def _set(self, p: Parts, cond: z3.BoolRef, node: SymNode) -> None:
        self.nodes[p] = node_ite(cond, node, self.nodes[p])

    def _new(self, kind: int, data: int = 0, mode: int = 0) -> SymNode:
        return SymNode(Term.const(kind), Term.const(data), Term.const(mode))

    def _step(self, i: int, step: Step) -> None:
        """What a step does, from its own description (`Step.shape`)."""
        g = self.some[i]
        shape = step.shape()
        match shape.effect:
            case Effect.MAKE:
                self._set(split(shape.path), g, self._made(shape.node))
            case Effect.LINK:
                self._set(split(shape.dst), g, self.nodes[split(shape.src)])
            case Effect.MOVE:
                self._rename(g, split(shape.src), split(shape.dst), shape.flags)
            case Effect.REMOVE:
                for p in self._under(split(shape.path)):
                    self._set(p, g, ABSENT_NODE)
            case Effect.TOUCH if step.is_data:
                self._data(i, step, split(shape.path))
            case Effect.TOUCH if shape.xattr is not None:
                name, value = shape.xattr
                value_id = 0 if value is None else self.interner.id(value)  # 0: removed
                self._attr(split(shape.path), g, xattr=(name, value_id))
            case Effect.TOUCH if shape.owner is not None or shape.sets_mtime:
                p = split(shape.path)
                if shape.owner is not None:
                    uid, gid = shape.owner
                    self._attr(p, g, xattr=(OWNER_ATTR, self.interner.id(owner_value(uid, gid))
                                            if uid or gid else 0))
                    if shape.mode is not None:
                        self._mode(p, g, shape.mode)
                else:
                    node = self.nodes[p]
                    is_file = z3.And(g, node.kind.expr == FILE)
                    value = 0 if shape.mtime is None else self.interner.id(str(shape.mtime).encode())
                    self._attr(p, is_file, xattr=(MTIME_ATTR, value))
            case Effect.TOUCH if shape.mode is not None:
                self._mode(split(shape.path), g, shape.mode)
            case Effect.FSYNC | Effect.SYNCFS:
                pass
            case _:
                raise NotImplementedError(f"symbolic engine: step {step}")

    def _mode(self, p: Parts, g: z3.BoolRef, mode: int) -> None:
        node = self.nodes[p]
        ok = z3.And(g, z3.Or(node.kind.expr == FILE, node.kind.expr == DIR))
        self.nodes[p] = SymNode(node.kind, node.data, ite(ok, Term.const(mode), node.mode), node.xattrs)

    def _made(self, node: Node | None) -> SymNode:
        """The symbolic node of what a MAKE step creates."""
        if isinstance(node, Dir):
            made = self._new(DIR, 0, node.mode)
        elif isinstance(node, File):
            made = self._new(FILE, self.interner.id(node.content), node.mode)
        elif isinstance(node, Symlink):
            made = self._new(SYMLINK, self.interner.id(node.target.encode()))
        else:
            return self._new(WHITEOUT)
        for name, value in meta_attrs(node).items():
            made.xattrs[name] = Term.const(self.interner.id(value))
        return made

    def _attr(self, p: Parts, g: z3.BoolRef, xattr: tuple[str, int]) -> None:
        node = self.nodes[p]
        name, value = xattr
        xattrs = dict(node.xattrs)
        xattrs[name] = ite(g, Term.const(value), node.xattr(name))
        self.nodes[p] = SymNode(node.kind, node.data, node.mode, xattrs)

    def _rename(self, g: z3.BoolRef, s: Parts, d: Parts, flags: RenameFlags) -> None:
        old = dict(self.nodes)
        for p in self._under(d):
            src = s + p[len(d) :]
            self.nodes[p] = node_ite(g, old.get(src, ABSENT_NODE), old[p])
        for p in self._under(s):
            if flags is RenameFlags.EXCHANGE:
                repl = old.get(d + p[len(s) :], ABSENT_NODE)
            elif flags is RenameFlags.WHITEOUT and p == s:
                repl = self._new(WHITEOUT)
            else:
                repl = ABSENT_NODE
            self.nodes[p] = node_ite(g, repl, old[p])

    def _data(self, i: int, step: Step, path: Parts) -> None:
        """Data steps: the new content for every content the file can have before (for
        a copy: the data it read when the trace ran)."""
        node = self.nodes[path]
        m = self.c.pieces[i]
        bs = self.ctx.block_size
        source = copy_sources(self.trace)[i]
        before = node.data if source is None else Term.const(self.interner.id(source))
        result = node.data
        for k in range(1, m + 1):
            cond = self.amount[i] == k
            options: list[tuple[int, z3.BoolRef]] = []
            for v, when in cases(before):
                after = self._apply_content(step, path, k, m, bs, self.interner.values[v], source is not None)
                options.append((self.interner.id(after), when))
            term = _select(options)
            result = ite(cond, term, result)
        is_file = node.kind.expr == FILE
        written = z3.And(self.some[i], is_file)
        xattrs = dict(node.xattrs)
        if MTIME_ATTR in xattrs:  # new data: the time is the clock's again
            xattrs[MTIME_ATTR] = ite(written, Term.const(0), xattrs[MTIME_ATTR])
        self.nodes[path] = SymNode(node.kind, ite(written, result, node.data), node.mode, xattrs)

    def _apply_content(self, step: Step, path: Parts, k: int, m: int, bs: int, before: bytes,
                       copy: bool) -> bytes:
        """The content a data step leaves, given the content before it (for a copy: what
        it copies), applying its first k of m blocks: the step itself, applied to a
        scratch file (`persistence.apply_amount`)."""
        target = join(path)
        concrete = step.moved(lambda p: "f" if p == target else "src")
        scratch = Dir({"f": File(b"" if copy else before)})
        out = apply_amount(scratch, concrete, k, m, bs, lambda p: "fs", before if copy else None)
        node = out.entries["f"]
        assert isinstance(node, File)
        return node.content


def _select(options: list[tuple[int, z3.BoolRef]]) -> Term:
    values = frozenset(v for v, _ in options)
    if len(values) == 1:
        return Term.const(next(iter(values)))
    expr: z3.ArithRef = z3.IntVal(options[-1][0])
    for v, when in reversed(options[:-1]):
        expr = z3.If(when, v, expr)
    return Term(expr, values)


# --- views ------------------------------------------------------------------------------


@dataclass
class ViewNode:
    """A view entry: exists, and (when it does) its kind, data, mode and user xattrs."""

    exists: z3.BoolRef
    node: SymNode


class Viewer:
    def __init__(self, enc: Encoding) -> None:
        self.enc = enc
        self.mount = enc.trace.mount
        self.cache: dict[Parts, ViewNode] = {}

    def view(self, v: Parts) -> ViewNode:
        raise NotImplementedError

    def view_paths(self) -> set[Parts]:
        raise NotImplementedError


class PlainViewer(Viewer):
    def view(self, v: Parts) -> ViewNode:
        node = self.enc.nodes.get(v, ABSENT_NODE)
        exists = node.kind.expr != ABSENT
        for d in range(1, len(v)):
            parent = self.enc.nodes.get(v[:d], ABSENT_NODE)
            exists = z3.And(exists, parent.kind.expr == DIR)
        return ViewNode(exists, node)

    def view_paths(self) -> set[Parts]:
        return set(self.enc.paths) - {()}


class OverlayViewer(Viewer):
    """The union lookup, run concretely per combination of upper-entry values."""

    def __init__(self, enc: Encoding) -> None:
        super().__init__(enc)
        assert can(self.mount, UnionView)
        self.union, self.upper = self.mount.union_layers()
        self.interner = enc.interner
        self.entry_cases: dict[Parts, list[tuple[z3.BoolRef, Entry]]] = {}

    def view_paths(self) -> set[Parts]:
        out: set[Parts] = set()
        n = len(self.upper)
        for p in self.enc.paths:
            if p[:n] == self.upper and len(p) > n:
                out.add(p[n:])
        for frame in self.union.lower_roots:
            for parts, _ in _walk(frame.node):
                if parts:
                    out.add(parts)
        return out

    def _stub(self, kind: int, opaque: int, redirect: int) -> Node | None:
        xattrs = []
        if opaque:
            xattrs.append((OPAQUE, self.interner.values[opaque]))
        if redirect:
            xattrs.append((REDIRECT, self.interner.values[redirect]))
        if kind == DIR:
            return Dir({}, 0o755, tuple(sorted(xattrs)))
        if kind == FILE:
            return File(b"")
        if kind == SYMLINK:
            return Symlink("x")
        if kind == WHITEOUT:
            return Whiteout()
        return None

    def cases_of(self, v: Parts) -> list[tuple[z3.BoolRef, Entry]]:
        """(condition, concrete entry) for the merged path v; the upper frames of the
        entries hold stub nodes standing for the symbolic upper entries."""
        hit = self.entry_cases.get(v)
        if hit is not None:
            return hit
        if not v:
            root = self.union.root(Dir())
            out = [(z3.BoolVal(True), root)]
        else:
            out = []
            upper_node = self.enc.nodes.get(self.upper + v, ABSENT_NODE)
            for cond, parent in self.cases_of(v[:-1]):
                if not parent.is_dir:
                    continue
                for kind, kc in cases(upper_node.kind):
                    for opaque, oc in cases(upper_node.xattr(OPAQUE)):
                        for redirect, rc in cases(upper_node.xattr(REDIRECT)):
                            stub = self._stub(
                                kind, opaque if kind == DIR else 0, redirect if kind == DIR else 0
                            )
                            up = parent.upper
                            if up is not None:
                                up_dir = Dir({v[-1]: stub} if stub is not None else {}, 0o755)
                                frames = (Frame(0, up_dir, up.path),) + parent.lowers
                                probe = Entry(parent.path, frames, parent.whiteout, parent.opaque)
                            elif stub is not None:
                                continue  # no upper parent: no upper entry can be there
                            else:
                                probe = parent
                            child = self.union.lookup(probe, v[-1])
                            out.append((z3.And(cond, kc, oc, rc), child))
        self.entry_cases[v] = out
        return out

    def view(self, v: Parts) -> ViewNode:
        hit = self.cache.get(v)
        if hit is not None:
            return hit
        upper_node = self.enc.nodes.get(self.upper + v, ABSENT_NODE)
        exists: list[z3.BoolRef] = []
        result = ABSENT_NODE
        for cond, entry in self.cases_of(v):
            if not entry.exists:
                continue
            exists.append(cond)
            top = entry.stack[0]
            if top.layer == 0:
                node = SymNode(
                    upper_node.kind,
                    upper_node.data,
                    upper_node.mode,
                    {k: t for k, t in upper_node.xattrs.items() if not k.startswith(OVL_PREFIX)},
                )
            else:
                node = const_node(
                    self.union.view(entry) if not isinstance(top.node, Dir) else top.node, self.interner
                )
                node = SymNode(
                    node.kind,
                    node.data,
                    node.mode,
                    {k: t for k, t in node.xattrs.items() if not k.startswith(OVL_PREFIX)},
                )
            result = node_ite(cond, node, result)
        view = ViewNode(z3.Or(*exists) if exists else z3.BoolVal(False), result)
        self.cache[v] = view
        return view


def viewer_for(enc: Encoding) -> Viewer:
    """The view encoder of the mount's capability (`UnionView` or `IdentityView`)."""
    return OverlayViewer(enc) if can(enc.trace.mount, UnionView) else PlainViewer(enc)


# --- invariants -------------------------------------------------------------------------


class Invariants:
    def __init__(self, enc: Encoding, viewer: Viewer) -> None:
        self.enc, self.viewer = enc, viewer
        self.trace = enc.trace
        self.paths = sorted(viewer.view_paths() | self._concrete_paths())
        self.refused = self._refused()

    def _concrete_paths(self) -> set[Parts]:
        out: set[Parts] = set()
        for view in self.enc.ctx.prefix_views:
            for parts, _ in _walk(view):
                if parts:
                    out.add(parts)
        return out

    def _refused(self) -> Dir | None:
        """A driver whose every recovery refuses (a volatile overlay) is judged on the
        view its remedy leaves, the same for every crash state."""
        rec = self.enc.ctx.recover(self.trace.initial)
        if rec.refused:
            return self.enc.ctx.recovered(self.trace.initial)[1]
        return None

    def node_at(self, v: Parts) -> ViewNode:
        if self.refused is not None:
            return const_view(lookup(self.refused, v), self.enc.interner)
        return self.viewer.view(v)

    def equals(self, view: Dir) -> z3.BoolRef:
        """The crash view is exactly `view`."""
        parts = []
        for v in self.paths:
            parts.append(self.node_equals(v, lookup(view, v)))
        return z3.And(*parts)

    def node_equals(self, v: Parts, want: Node | None) -> z3.BoolRef:
        got = self.node_at(v)
        if want is None:
            return z3.Not(got.exists)
        w = const_node(want, self.enc.interner)
        conds = [got.exists, got.node.kind.expr == w.kind.expr]
        if isinstance(want, (File, Symlink)):
            conds.append(got.node.data.expr == w.data.expr)
        if isinstance(want, (File, Dir)):
            conds.append(got.node.mode.expr == w.mode.expr)
        names = sorted(set(w.xattrs) | set(got.node.xattrs))
        for name in names:
            conds.append(got.node.xattr(name).expr == w.xattr(name).expr)
        return z3.And(*conds)

    # -- the op in flight ---------------------------------------------------------------

    def inflight(self) -> list[z3.BoolRef]:
        """inflight[j]: op j is the op in flight (`Persistence.op_in_flight`)."""
        enc = self.enc
        n = len(self.trace.steps)
        m = len(self.trace.ops)
        if m == 1:
            return [z3.BoolVal(True)]  # one op: it is the op in flight
        lost = [z3.And(z3.Not(enc.full[i]), enc.later[i]) for i in range(n)]
        first: list[z3.BoolRef] = []
        none_before: z3.BoolRef = z3.BoolVal(True)
        for i in range(n):
            first.append(z3.And(lost[i], none_before))
            none_before = z3.And(none_before, z3.Not(lost[i]))
        no_lost = none_before
        # t == k (1 + the last step with anything persisted)
        t_is = [z3.Not(enc.any_step)] + [
            z3.And(enc.some[k - 1], z3.Not(enc.later[k - 1])) for k in range(1, n + 1)
        ]
        out = []
        for j in range(m):
            terms = [first[i] for i in range(n) if self.trace.step_op[i] == j]
            terms += [z3.And(no_lost, t_is[k]) for k in range(n + 1) if self.trace.op_at_step(k) == j]
            out.append(z3.Or(*terms) if terms else z3.BoolVal(False))
        return out

    def violation(self, names: set[str], generalized: bool) -> dict[str, z3.BoolRef]:
        """A formula per checked invariant that holds exactly when a crash state violates it."""
        ops = self.trace.ops
        views = self.enc.ctx.prefix_views
        inflight = self.inflight()
        eq = [self.equals(v) for v in views]
        before_after = [z3.Or(eq[j], eq[j + 1]) for j in range(len(ops))]
        out: dict[str, z3.BoolRef] = {}
        if "atomicity" in names:
            if generalized:
                out["atomicity"] = z3.Not(z3.Or(*eq))
            else:
                out["atomicity"] = z3.Or(
                    *[z3.And(inflight[j], z3.Not(before_after[j])) for j in range(len(ops))]
                )
        if "no-dual-existence" in names:
            terms = []
            for j, op in enumerate(ops):
                if op.op.kind not in ("rename", "mv"):
                    continue
                src, dst = split(op.op.arg("src")), split(op.op.arg("dst"))
                if all(lookup(v, p) is not None for v in (op.before,) for p in (src, dst)):
                    continue
                if all(lookup(op.after, p) is not None for p in (src, dst)):
                    continue
                terms.append(z3.And(inflight[j], self.node_at(src).exists, self.node_at(dst).exists))
            out["no-dual-existence"] = z3.Or(*terms) if terms else z3.BoolVal(False)
        if "no-loss" in names:
            terms = []
            for j, op in enumerate(ops):
                lost = []
                for old, new, b, a in kept_files(op):
                    whole = {self.enc.interner.id(b.content), self.enc.interner.id(a.content)}
                    lost.append(z3.And(*[z3.Not(self._file_in(split(p), whole)) for p in sorted({old, new})]))
                if lost:
                    terms.append(z3.And(inflight[j], z3.Not(before_after[j]), z3.Or(*lost)))
            out["no-loss"] = z3.Or(*terms) if terms else z3.BoolVal(False)
        if "durability" in names:
            out["durability"] = self._durability(inflight)
        return out

    def _file_in(self, v: Parts, whole: set[int]) -> z3.BoolRef:
        got = self.node_at(v)
        return z3.And(
            got.exists, got.node.kind.expr == FILE, z3.Or(*[got.node.data.expr == w for w in whole])
        )

    def _durability(self, inflight: list[z3.BoolRef]) -> z3.BoolRef:
        enc = self.enc
        n = len(self.trace.steps)
        ops = self.trace.ops
        views = enc.ctx.prefix_views
        everything = z3.And(*[enc.full[i] for i in range(n)]) if n else z3.BoolVal(True)
        terms = []
        for j, op in enumerate(ops):
            if op.op.kind not in SYNC_OPS:
                continue
            e = op.end_step  # returned: a step issued after the op persisted, or everything did
            returned = z3.Or(everything, *[enc.some[i] for i in range(e, n)])
            synced = views[j + 1]
            files = [op.op.arg("path")] if op.op.kind == "fsync" else []
            if op.op.kind in FULL_SYNC_OPS:
                from checker.engine import views as view_helpers

                files = list(view_helpers.files(synced))
            for k in range(len(ops)):  # k < j too: a sync op without steps returns with the op before it
                later = views[j + 2 : k + 2]
                bad = []
                for path in files:
                    node = lookup(synced, split(path))
                    if node is None or any(
                        (x := lookup(v, split(path))) is None or x.digest != node.digest for v in later
                    ):
                        continue
                    bad.append(z3.Not(self.node_equals(split(path), node)))
                if bad:
                    terms.append(z3.And(inflight[k], returned, z3.Or(*bad)))
        return z3.Or(*terms) if terms else z3.BoolVal(False)


def const_view(node: Node | None, interner: Interner) -> ViewNode:
    return ViewNode(z3.BoolVal(node is not None), const_node(node, interner))


# --- solving ----------------------------------------------------------------------------


def solve(ctx: Context, budget: Budget) -> Exploration:
    """Find a violating crash state (or prove there is none) with z3."""
    reason = unsupported(ctx)
    if reason is not None:
        from checker.errors import UsageError

        raise UsageError(f"{ctx.spec.file}: --engine symbolic: {reason} (use --engine enumerate)")
    started = time.monotonic()
    violations = trace_level_violations(ctx)
    names = {inv.name for inv in ctx.invariants if inv.crash_level}
    supported = names & {"atomicity", "no-dual-existence", "no-loss", "durability"}
    if not ctx.trace.ops or not supported:
        return Exploration(0, 0, violations)
    if ctx.recover(ctx.trace.initial).refused and ctx.recovered(ctx.trace.initial)[1] is None:
        return Exploration(0, 0, violations)  # every mount refuses and nothing is left to judge
    enc = Encoding(ctx)
    inv = Invariants(enc, viewer_for(enc))
    generalized = ctx.persistence.name != "prefix"
    formulas = inv.violation(supported, generalized)
    solver = z3.Solver()
    megabytes = z3_memory_megabytes(budget)
    if megabytes is not None:
        z3.set_param("memory_max_size", megabytes)  # z3 answers unknown instead of aborting
    solver.add(*enc.facts)
    replays = 0
    replayed: set[CrashState] = set()
    violated = {v.invariant for v in violations}
    # One invariant at a time, the cheapest formulas first; a replay reports every
    # invariant its crash state violates, so each invariant is decided once.
    order = sorted(formulas, key=lambda name: COST.get(name, 9))
    for name in order:
        if name in violated:
            continue
        solver.push()
        solver.add(formulas[name])
        while True:
            if budget.timeout is not None:
                left = budget.timeout - (time.monotonic() - started)
                if left <= 0:
                    why = f"stopped at --timeout {budget.timeout:g}s"
                    return _found(replays, violations, True, why)
                solver.set("timeout", max(1, int(left * 1000)))
            answer = solver.check()
            if answer == z3.unsat:
                break
            if answer == z3.unknown:
                why = f"the solver gave up ({solver.reason_unknown()})"
                return _found(replays, violations, True, why)
            crash = crash_from_model(ctx, enc, solver.model())
            replays += 1
            if crash not in replayed:
                replayed.add(crash)
                found = violations_at(ctx, crash)
                violations.extend(found)
                violated |= {v.invariant for v in found}
            if name in violated:
                break
            if replays >= MAX_REPLAYS:
                why = f"{replays} solver models did not replay as violations"
                return _found(replays, violations, True, why)
            solver.add(z3.Or(*[_differs(enc, i, a) for i, a in enumerate(_amounts(ctx, crash))]))
        solver.pop()
    return _found(replays, violations)


def _found(replays: int, violations: list[Violation], bounded: bool = False, why: str = "") -> Exploration:
    """The replayed violations in the enumerator's order."""
    violations.sort(key=lambda v: (v.crash_after_step, v.persisted or "", v.op, v.invariant))
    return Exploration(replays, replays, violations, bounded, why)


COST = {"atomicity": 0, "no-dual-existence": 1, "durability": 2, "no-loss": 3}


def _differs(enc: Encoding, i: int, amount: int) -> z3.BoolRef:
    if enc.c.pieces[i] == 1:
        return enc.some[i] if amount == 0 else z3.Not(enc.some[i])
    return enc.amount[i] != amount


def _amounts(ctx: Context, crash: CrashState) -> list[int]:
    n = len(ctx.trace.steps)
    return [crash.amount(i, ctx.constraints.pieces[i]) for i in range(n)]


def crash_from_model(ctx: Context, enc: Encoding, model: z3.ModelRef) -> CrashState:
    amounts = [
        (1 if z3.is_true(model.eval(enc.some[i], model_completion=True)) else 0)
        if enc.c.pieces[i] == 1 else model.eval(enc.amount[i], model_completion=True).as_long()
        for i in range(len(enc.amount))
    ]
    last = max((i + 1 for i, a in enumerate(amounts) if a), default=0)
    if ctx.persistence.name == "prefix":
        return CrashState(last)  # the same representation the enumerator uses
    return CrashState(last, tuple(amounts[:last]))


def violation_formula(ctx: Context) -> tuple[Encoding, z3.BoolRef]:
    """The encoding and the disjunction of the violation formulas (for tests)."""
    enc = Encoding(ctx)
    inv = Invariants(enc, viewer_for(enc))
    names = {i.name for i in ctx.invariants if i.crash_level}
    formulas = inv.violation(
        names & {"atomicity", "no-dual-existence", "no-loss", "durability"}, ctx.persistence.name != "prefix"
    )
    return enc, z3.Or(*formulas.values()) if formulas else z3.BoolVal(False)


__all__ = ["solve", "unsupported", "violation_formula"]
