"""Union-mount lookup and merge: how overlayfs turns layers into one view.

This is the kernel's lookup (`ovl_lookup`, `ovl_lookup_layer`, `ovl_lookup_single`,
`ovl_check_redirect` in fs/overlayfs/namei.c) and readdir merge (`ovl_dir_read_merged`
in readdir.c) over immutable trees:

- layers are searched top down: the upper layer (index 0), then the lower layers;
- a whiteout (char device 0/0) hides the name in every layer below;
- a directory with `trusted.overlay.opaque=y` stops the search in layers below;
- a non-directory stops the search; a lower non-directory below a directory is ignored;
- a directory with `trusted.overlay.redirect` makes the layers below look up another
  name: relative (`"name"`, same parent) or absolute (`"/a/b"`, from the layer roots).

The merge is memoized by the digests of the layer nodes involved, and a directory
derived from an already-merged one (see `Dir.base`) is merged by patching only its
changed entries, so views of successive crash states cost little.
"""

from __future__ import annotations

import copy
import errno
from dataclasses import dataclass

from models.format import (  # noqa: F401 - the names are re-exported
    IMPURE,
    METACOPY,
    OPAQUE,
    ORIGIN,
    OVL_PREFIX,
    REDIRECT,
    TRUSTED,
    OverlayXattrs,
)
from models.tree import Dir, ErrorEntry, File, Node, Parts, Symlink, Whiteout, Xattrs, identity, split

MAX_DELTA_HOPS = 32  # how far back a directory's derivation chain is searched for a merged base
MERGE_MEMO = 50_000  # merged directories and leaves remembered before a memo starts over


@dataclass(frozen=True)
class Frame:
    """One layer's part of a merged entry: layer index (0 = upper), node, backing path."""

    layer: int
    node: Node
    path: Parts


@dataclass(frozen=True)
class Entry:
    """An overlay dentry: the merged path and the layer stack that backs it."""

    path: Parts
    stack: tuple[Frame, ...]
    whiteout: bool = False  # negative because the upper layer holds a whiteout
    opaque: bool = False  # lookup met a whiteout or an opaque directory

    @property
    def exists(self) -> bool:
        return bool(self.stack)

    @property
    def node(self) -> Node | None:
        return self.stack[0].node if self.stack else None

    @property
    def upper(self) -> Frame | None:
        if self.stack and self.stack[0].layer == 0:
            return self.stack[0]
        return None

    @property
    def lowers(self) -> tuple[Frame, ...]:
        return tuple(f for f in self.stack if f.layer > 0)

    @property
    def is_dir(self) -> bool:
        return isinstance(self.node, Dir)

    @property
    def is_merge(self) -> bool:
        """A directory present in the upper layer and in at least one lower layer."""
        return self.is_dir and self.upper is not None and bool(self.lowers)

    @property
    def merge_or_lower(self) -> bool:
        return self.is_merge or (self.exists and self.upper is None)


def visible_xattrs(xattrs: Xattrs, prefix: str = OVL_PREFIX) -> Xattrs:
    """The extended attributes a user sees: overlay's private ones are hidden, escaped
    ones (`<prefix>overlay.X`, a user's own `<prefix>X`) shown unescaped."""
    if not xattrs or not any(k.startswith(prefix) for k, _ in xattrs):
        return xattrs
    escaped = prefix + "overlay."
    shown = [(k, v) for k, v in xattrs if not k.startswith(prefix)]
    shown += [(prefix + k[len(escaped):], v) for k, v in xattrs if k.startswith(escaped)]
    return tuple(sorted(shown))


class _LookupData:
    """`struct ovl_lookup_data`: the name being looked up and the search flags."""

    __slots__ = ("name", "absolute", "is_dir", "opaque", "stop", "x", "follow")

    def __init__(self, name: str, x: OverlayXattrs = TRUSTED, follow: bool = True) -> None:
        self.x = x  # the mount's xattr names
        self.follow = follow  # redirects are followed (not redirect_dir=nofollow)
        self.name: list[str] = [name]
        self.absolute = False
        self.is_dir = False
        self.opaque = False
        self.stop = False


def _lookup_single(this: Node | None, d: _LookupData, idx: int) -> Node | None:
    """`ovl_lookup_single` for component `idx` of d.name, already looked up as `this`."""
    if this is None:
        return None
    last = idx == len(d.name) - 1
    if isinstance(this, Whiteout):
        d.stop = d.opaque = True
        return None
    if not isinstance(this, Dir):
        if d.is_dir or not last:
            d.stop = True
            return None
        # A regular file or symlink ends the search, unless it is a metacopy file: its
        # data is further down, under its own name or its redirect.
        d.stop = not (isinstance(this, File) and this.xattr(d.x.metacopy) is not None)
        if d.stop:
            return this
    else:
        if last:
            d.is_dir = True
        if this.xattr(d.x.opaque) == b"y":
            d.stop = True
            if last:
                d.opaque = True
            return this
    redirect = this.xattr(d.x.redirect) if d.follow else None
    if redirect is not None:
        target = redirect.decode("utf-8", "replace")
        post = d.name[idx + 1 :]
        if target.startswith("/"):
            d.stop = False
            d.absolute = True
            d.name = list(split(target)) + post
        else:
            d.name = d.name[:idx] + [target] + post
    return this


def _lookup_layer(base: Dir, base_path: Parts, d: _LookupData) -> tuple[Node | None, Parts]:
    """`ovl_lookup_layer`: look d.name up in one layer, component by component."""
    if not d.absolute:
        name = d.name[0]
        return _lookup_single(base.entries.get(name), d, 0), base_path + (name,)
    node: Node | None = base
    path = base_path
    remaining = len(d.name)  # counted from the end: a redirect may rewrite the prefix
    while isinstance(node, Dir):
        idx = len(d.name) - remaining
        name = d.name[idx]
        last = idx == len(d.name) - 1  # before a redirect found here rewrites d.name
        path = path + (name,)
        node = _lookup_single(node.entries.get(name), d, idx)
        if last:
            return node, path
        remaining -= 1
    return None, path


class Union:
    """Lookup and merge over one set of layers: an upper tree and lower trees (top first).

    `upper` may be None (a read-only stack, e.g. an image with no container layer).
    Layer index 0 is the upper layer; lower layer i is index i + 1.
    """

    def __init__(self, lower_roots: list[tuple[Dir, Parts]], names: OverlayXattrs = TRUSTED,
                 follow_redirects: bool = True) -> None:
        self.lower_roots = tuple(Frame(i + 1, node, path) for i, (node, path) in enumerate(lower_roots))
        self.x = names
        self.follow_redirects = follow_redirects
        self._memo: dict[tuple[tuple[int, bytes], ...], Node] = {}
        self._leaf: dict[tuple[bytes, int], Node] = {}

    def fresh(self) -> Union:
        """This union with empty merge memos."""
        twin = copy.copy(self)
        twin._memo = {}
        twin._leaf = {}
        return twin

    def root(self, upper: Dir | None, upper_path: Parts = ("upper",)) -> Entry:
        stack = () if upper is None else (Frame(0, upper, upper_path),)
        return Entry((), stack + self.lower_roots)

    def lookup(self, parent: Entry, name: str) -> Entry:
        """`ovl_lookup` of `name` in the merged directory `parent`."""
        d = _LookupData(name, self.x, self.follow_redirects)
        stack: list[Frame] = []
        whiteout = False
        up = parent.upper
        if up is not None and isinstance(up.node, Dir):
            this = up.node.entries.get(name)
            whiteout = isinstance(this, Whiteout)
            found = _lookup_single(this, d, 0)
            if found is not None:
                stack.append(Frame(0, found, up.path + (name,)))
        if not d.stop:
            lowers = self.lower_roots if d.absolute else tuple(
                f for f in parent.stack if f.layer > 0 and isinstance(f.node, Dir)
            )
            on_roots = d.absolute
            i = 0
            while i < len(lowers) and not d.stop:
                frame = lowers[i]
                assert isinstance(frame.node, Dir)
                found, path = _lookup_layer(frame.node, frame.path, d)
                if found is not None:
                    stack.append(Frame(frame.layer, found, path))
                if d.stop:
                    break
                if d.absolute and not on_roots:
                    # An absolute redirect found in this layer: continue from the
                    # layer roots, starting with the next layer down.
                    on_roots = True
                    lowers = self.lower_roots
                    i = frame.layer  # lower_roots[frame.layer] is the next layer
                    continue
                i += 1
        return Entry(parent.path + (name,), tuple(stack), whiteout, d.opaque)

    def resolve(self, upper: Dir | None, parts: Parts) -> tuple[Entry, Entry]:
        """(parent entry, entry) for a merged path; the parent may be negative."""
        entry = self.root(upper)
        parent = entry
        for name in parts:
            parent = entry
            if not parent.is_dir:
                return parent, Entry(parent.path + (name,), ())
            entry = self.lookup(parent, name)
        return parent, entry

    def names(self, entry: Entry) -> list[str]:
        """Merged readdir: names whose topmost occurrence is not a whiteout."""
        seen: dict[str, bool] = {}
        for frame in entry.stack:
            if isinstance(frame.node, Dir):
                for name, child in frame.node.entries.items():
                    if name not in seen:
                        seen[name] = isinstance(child, Whiteout)
        return sorted(n for n, hidden in seen.items() if not hidden)

    def listing(self, entry: Entry) -> list[str]:
        """What readdir(2) returns (`ovl_iterate`). A directory the kernel does not
        expect to hold whiteouts (not merged, one layer, no origin xattr: no OVL_WHITEOUTS
        flag) is iterated as the real directory, so whiteouts in it are listed, although
        looking them up finds nothing."""
        top = entry.stack[0].node
        if isinstance(top, Dir) and not self.may_hold_whiteouts(entry):
            return sorted(top.entries)
        return self.names(entry)

    def may_hold_whiteouts(self, entry: Entry) -> bool:
        """OVL_WHITEOUTS (`ovl_get_inode`): the root, a merged directory, one with several
        lower layers, or one with a copy-up origin."""
        top = entry.stack[0].node
        return (
            entry.path == ()
            or len(entry.stack) > 1
            or top.xattr(self.x.origin) is not None
        )

    def upper_whiteouts(self, entry: Entry) -> list[str]:
        """Whiteouts in the upper directory of `entry` (what rmdir must clean up)."""
        up = entry.upper
        if up is None or not isinstance(up.node, Dir):
            return []
        return sorted(n for n, c in up.node.entries.items() if isinstance(c, Whiteout))

    # -- merged view ------------------------------------------------------------------

    def view(self, entry: Entry) -> Node:
        """The node a user sees for an existing entry (directories merged recursively)."""
        top = entry.stack[0].node
        if isinstance(top, File) and top.xattr(self.x.metacopy) is not None:
            return self._metacopy_view(entry, top)
        if not isinstance(top, Dir):
            return self._leaf_view(top)
        key = tuple((f.layer, identity(f.node)) for f in entry.stack)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        merged = self._merge_delta(entry, key)
        if merged is None:
            merged = self._merge_full(entry)
        if len(self._memo) >= MERGE_MEMO:
            self._memo.clear()  # merges patch the latest ones: a fresh memo refills at once
        self._memo[key] = merged
        return merged

    def lowerdata(self, entry: Entry) -> Frame | None:
        """The file a metacopy entry's data comes from: the first one below it that is
        not a metacopy file itself (`ovl_lookup`'s lowerdata)."""
        for frame in entry.stack[1:]:
            if isinstance(frame.node, File) and frame.node.xattr(self.x.metacopy) is None:
                return frame
        return None

    def _metacopy_view(self, entry: Entry, top: File) -> Node:
        """A metacopy file: its metadata, the lower file's data; without lower data the
        lookup fails (EIO)."""
        data = self.lowerdata(entry)
        if data is None:
            return ErrorEntry(errno.EIO, "metacopy file without its lower data")
        assert isinstance(data.node, File)
        return File(data.node.content, top.mode, visible_xattrs(top.xattrs, self.x.prefix), nlink=top.nlink,
                    uid=top.uid, gid=top.gid, mtime=top.mtime)

    def _leaf_view(self, node: Node) -> Node:
        """A file or symlink as shown: without overlay's xattrs; a file of several links
        keeps its inode number (tools such as cp tell hard links apart by it)."""
        linked = node.ino if isinstance(node, File) and node.nlink > 1 else 0
        key = (node.digest, linked)
        hit = self._leaf.get(key)
        if hit is not None:
            return hit
        shown: Node
        if isinstance(node, File):
            shown = File(node.content, node.mode, visible_xattrs(node.xattrs, self.x.prefix), ino=linked,
                         nlink=node.nlink, uid=node.uid, gid=node.gid, mtime=node.mtime)
        elif isinstance(node, Symlink):
            shown = Symlink(node.target, visible_xattrs(node.xattrs, self.x.prefix), uid=node.uid,
                            gid=node.gid)
        else:
            shown = node
        if len(self._leaf) >= MERGE_MEMO:
            self._leaf.clear()
        self._leaf[key] = shown
        return shown

    def _merge_full(self, entry: Entry) -> Dir:
        top = entry.stack[0].node
        assert isinstance(top, Dir)
        entries: dict[str, Node] = {}
        for name in self.names(entry):
            child = self.lookup(entry, name)
            if child.exists:
                entries[name] = self.view(child)
        return Dir(entries, top.mode, visible_xattrs(top.xattrs, self.x.prefix), uid=top.uid, gid=top.gid)

    def _merge_delta(self, entry: Entry, key: tuple[tuple[int, bytes], ...]) -> Dir | None:
        """Patch the merge of the directory this upper directory was derived from."""
        top = entry.stack[0].node
        if entry.stack[0].layer != 0 or not isinstance(top, Dir):
            return None
        changed: set[str] = set()
        base: Dir | None = top
        for _ in range(MAX_DELTA_HOPS):
            assert base is not None
            changed.update(base.changed)
            base = base.base
            if base is None:
                return None
            old = self._memo.get(((0, identity(base)),) + key[1:])
            if isinstance(old, Dir):
                break
        else:
            return None
        changes: dict[str, Node | None] = {}
        for name in changed:
            child = self.lookup(entry, name)
            changes[name] = self.view(child) if child.exists else None
        merged = old.with_children(changes) if changes else old
        xattrs = visible_xattrs(top.xattrs, self.x.prefix)
        if merged.mode != top.mode or merged.xattrs != xattrs or merged.owner != top.owner:
            merged = merged.with_attrs(top.mode, xattrs, top.owner)
        return merged


def union_view(lowers_top_first: list[Dir], upper: Dir | None = None) -> Dir:
    """The merged view of read-only layers (and an optional upper layer)."""
    union = Union([(layer, (f"layer{i}",)) for i, layer in enumerate(lowers_top_first)])
    merged = union.view(union.root(upper if upper is not None else Dir()))
    assert isinstance(merged, Dir)
    return merged
