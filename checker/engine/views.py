"""Helpers over views (user-visible trees): lookups by path, diffs, rendering."""

from __future__ import annotations

from models.tree import Dir, File, Node, Parts, Symlink, describe, join, lookup, split

MAX_VIEW_LINES = 40  # longer views are cut in reports; the JSON never is
MAX_DESCEND = 4  # a directory with more differing entries is reported as one path
BIG_DIR = 64  # a differing directory this large is reported as one path without a scan


def at(view: Dir, path: str) -> Node | None:
    return lookup(view, split(path))


def diff(a: Node | None, b: Node | None, prefix: Parts = (), limit: int = 20) -> list[str]:
    """Paths where two views differ, found by descending only into differing digests; a
    directory where more than MAX_DESCEND entries differ is reported as itself."""
    out: list[str] = []
    _diff(a, b, prefix, out, limit)
    return out


def _diff(a: Node | None, b: Node | None, prefix: Parts, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if a is not None and b is not None and a.digest == b.digest:
        return
    if isinstance(a, Dir) and isinstance(b, Dir):
        if a.mode != b.mode or a.xattrs != b.xattrs:
            out.append(join(prefix) or "/")
        ae, be = a.entries, b.entries
        if prefix and max(len(ae), len(be)) > BIG_DIR:
            out.append(join(prefix))
            return
        # Views share unchanged nodes (compared by identity), so a set difference of the
        # (name, node) pairs finds the differing names at C speed.
        names = {n for n, _ in ae.items() ^ be.items()}
        if len(names) > MAX_DESCEND and prefix:
            out.append(join(prefix))
            return
        for name in sorted(names):
            if len(out) >= limit:
                return
            _diff(ae.get(name), be.get(name), prefix + (name,), out, limit)
        return
    out.append(join(prefix) or "/")


def changed(a: Node | None, b: Node | None, wanted: set[str]) -> list[str]:
    """The paths of `wanted` whose node differs between two views (absent on one side
    counts), found by descending only into subtrees whose digests differ."""
    out: list[str] = []
    prefixes = {p.rsplit("/", i)[0] for p in wanted for i in range(p.count("/") + 1)}
    _changed(a, b, (), wanted, prefixes, out)
    return out


def _changed(a: Node | None, b: Node | None, prefix: Parts, wanted: set[str], prefixes: set[str],
             out: list[str]) -> None:
    if a is not None and b is not None and a.digest == b.digest:
        return
    path = join(prefix)
    if path in wanted:
        out.append(path)
    ae = a.entries if isinstance(a, Dir) else {}
    be = b.entries if isinstance(b, Dir) else {}
    for name in {n for n, _ in ae.items() ^ be.items()}:
        child = join(prefix + (name,))
        if child in prefixes:
            _changed(ae.get(name), be.get(name), prefix + (name,), wanted, prefixes, out)


def files(view: Node, prefix: Parts = ()) -> dict[str, File]:
    """Every regular file in a view by path."""
    out: dict[str, File] = {}
    if isinstance(view, File):
        out[join(prefix)] = view
    elif isinstance(view, Dir):
        for name in sorted(view.entries):
            out.update(files(view.entries[name], prefix + (name,)))
    return out


def render(view: Dir | None, indent: str = "    ", limit: int = MAX_VIEW_LINES) -> list[str]:
    """A view as lines `path  description`, directories with a trailing '/'."""
    if view is None:
        return [indent + "(no view: the mount is refused)"]
    lines: list[str] = []
    _render(view, (), lines)
    if not lines:
        return [indent + "(empty)"]
    width = min(max(len(p) for p, _ in lines), 40)
    shown = [f"{indent}{p.ljust(width)}  {d}" for p, d in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"{indent}... ({len(lines) - limit} more entries)")
    return shown


def _render(node: Node, prefix: Parts, lines: list[tuple[str, str]]) -> None:
    if not isinstance(node, Dir):
        return
    for name in sorted(node.entries):
        child = node.entries[name]
        path = join(prefix + (name,))
        if isinstance(child, Dir):
            lines.append((path + "/", describe(child)))
            _render(child, prefix + (name,), lines)
        elif isinstance(child, (File, Symlink)):
            lines.append((path, describe(child)))
        else:
            lines.append((path, describe(child)))
