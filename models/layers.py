"""Image layers in overlay format, as image tools handle them.

A layer is a directory tree in the format overlayfs and Docker's overlay2 use for a
layer's `diff`: a deleted name is a whiteout (character device 0/0) and a directory that
hides everything below it carries `trusted.overlay.opaque=y`. This module holds what
several drivers do with such trees: write one out as primitive steps (unpacking a layer
tarball, writing a squashed layer), flatten a stack of layers into one (squash), and
count the bytes a layer stores.
"""

from __future__ import annotations

from models.steps import Create, Fsync, MakeSymlink, Mkdir, MknodWhiteout, SetTimes, SetXattr, Step, Write
from models.tree import Dir, File, Node, Symlink, Whiteout, join, split, walk
from models.union import OPAQUE, union_view

Y = b"y"


def build_steps(tree: Dir, dest: str, *, fsync: bool = False, skip_root: bool = True) -> list[Step]:
    """The steps that write `tree` at `dest` (as tar extraction does: entries in name
    order, parents first; each file created, then written; xattrs after the entry, and
    the file's time last). Owners are given at creation (tar's lchown changes nothing a
    crash could keep apart). With `fsync`, each regular file is fsynced after it is written."""
    steps: list[Step] = []
    base = split(dest)
    for parts, node in walk(tree):
        if skip_root and not parts:
            continue
        path = join(base + parts)
        if isinstance(node, Dir):
            steps.append(Mkdir(path, node.mode, uid=node.uid, gid=node.gid))
        elif isinstance(node, File):
            steps.append(Create(path, node.mode, uid=node.uid, gid=node.gid))
            if node.content:
                steps.append(Write(path, node.content, 0, replace=True))
        elif isinstance(node, Symlink):
            steps.append(MakeSymlink(node.target, path, uid=node.uid, gid=node.gid))
        elif isinstance(node, Whiteout):
            steps.append(MknodWhiteout(path))
        steps.extend(SetXattr(path, k, v) for k, v in node.xattrs)
        if node.mtime is not None:
            steps.append(SetTimes(path, node.mtime))
        if fsync and isinstance(node, File):
            steps.append(Fsync(path))
    return steps


def is_opaque(node: Node | None) -> bool:
    return isinstance(node, Dir) and node.xattr(OPAQUE) == Y


def apply_layer(acc: Dir, layer: Dir) -> Dir:
    """The one layer equivalent to `acc` with `layer` stacked on top of it (both in
    overlay format): whiteouts and opaque directories of `layer` replace what `acc`
    has; a directory that replaces a non-directory (or a whiteout) becomes opaque, since
    in the stack it stopped the lookup from reaching anything below."""
    entries = dict(acc.entries)
    for name, node in layer.entries.items():
        below = entries.get(name)
        if isinstance(node, Dir) and not is_opaque(node):
            if isinstance(below, Dir):
                node = apply_layer(below, node).with_attrs(node.mode, _merged_xattrs(below, node), node.owner)
            elif below is not None:
                node = node.with_xattr(OPAQUE, Y)
        entries[name] = node
    return Dir(entries, acc.mode, acc.xattrs, uid=acc.uid, gid=acc.gid)


def _merged_xattrs(below: Dir, top: Dir) -> tuple[tuple[str, bytes], ...]:
    """The upper directory's xattrs; it stays opaque if the lower one was."""
    xattrs = dict(top.xattrs)
    if is_opaque(below):
        xattrs[OPAQUE] = Y
    return tuple(sorted(xattrs.items()))


def prune(diff: Dir, below: Dir | None) -> Dir:
    """`diff` without the markers that hide nothing in `below` (the merged view of the
    layers it will sit on): whiteouts of names `below` lacks, opaque markers on
    directories `below` lacks."""
    entries: dict[str, Node] = {}
    for name, node in diff.entries.items():
        under = below.entries.get(name) if below is not None else None
        if isinstance(node, Whiteout):
            if under is not None:
                entries[name] = node
            continue
        if isinstance(node, Dir):
            keep_below = under if isinstance(under, Dir) and not is_opaque(node) else None
            node = prune(node, keep_below)
            if is_opaque(node) and not isinstance(under, Dir):
                node = node.with_xattr(OPAQUE, None)
        entries[name] = node
    return Dir(entries, diff.mode, diff.xattrs, uid=diff.uid, gid=diff.gid)


def flatten(layers: list[Dir], below: list[Dir], apply_whiteouts: bool = True) -> Dir:
    """The single layer that replaces `layers` (bottom first) on top of `below` (bottom
    first; empty when the whole image is flattened, as export/import does).

    With `apply_whiteouts` the result is exact: stacked on `below` it shows what the
    original stack showed. Without, it is the naive copy of every layer's files with
    the newest version winning and whiteouts and opaque markers dropped, so files that
    a layer deleted come back."""
    if not apply_whiteouts:
        acc = Dir()
        for layer in layers:
            acc = apply_layer(acc, _without_markers(layer))
        return _without_markers(acc)
    acc = Dir()
    for layer in layers:
        acc = apply_layer(acc, layer)
    under = union_view(list(reversed(below))) if below else None
    return prune(acc, under)


def _without_markers(tree: Dir) -> Dir:
    entries: dict[str, Node] = {}
    for name, node in tree.entries.items():
        if isinstance(node, Whiteout):
            continue
        if isinstance(node, Dir):
            node = _without_markers(node).with_xattr(OPAQUE, None)
        entries[name] = node
    return Dir(entries, tree.mode, tuple((k, v) for k, v in tree.xattrs if k != OPAQUE), uid=tree.uid,
               gid=tree.gid)


def stored_bytes(tree: Node) -> int:
    """Bytes a layer stores: the contents of its regular files and symlink targets
    (directories, whiteouts and metadata are not counted)."""
    total = 0
    for _, node in walk(tree):
        if isinstance(node, File):
            total += len(node.content)
        elif isinstance(node, Symlink):
            total += len(node.target.encode())
    return total
