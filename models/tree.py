"""Immutable file-system trees with stable, incremental fingerprints.

A backing store (and a user-visible view) is a tree of `Dir`, `File`, `Symlink` and
`Whiteout` nodes. Nodes never change: every update builds new nodes along the path
from the root (path copying) and shares every untouched subtree, so keeping the state
after each step of a trace costs a few nodes per step.

Each node carries a 128-bit blake2b digest of a canonical encoding. A directory's
digest covers the *sum* (mod 2**128) of its entries' digests, so replacing one entry
costs two entry hashes instead of rehashing the whole directory. Digests never depend
on Python's per-process `hash()`, so fingerprints are stable across runs and machines.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterator, Mapping, MutableMapping
from hashlib import blake2b

from immutables import Map

from models.errors import CrashcheckError

DIGEST_BYTES = 16  # 128 bits: collisions are negligible for the state counts we explore
_MOD = 1 << (8 * DIGEST_BYTES)
LARGE_DIR = 128  # entries from which a directory's changes share its entry table

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
SYMLINK_MODE = 0o777

Xattrs = tuple[tuple[str, bytes], ...]
NO_XATTRS: Xattrs = ()


class FsError(CrashcheckError):
    """A POSIX error from a file-system operation: `errno` plus the path involved."""

    def __init__(self, code: int, path: str = "") -> None:
        self.errno = code
        self.path = path
        super().__init__(f"{_errno.errorcode.get(code, code)}: {path}")

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


def _h(data: bytes) -> bytes:
    return blake2b(data, digest_size=DIGEST_BYTES).digest()


def _xattr_bytes(xattrs: Xattrs) -> bytes:
    if not xattrs:
        return b""
    return b"".join(
        len(k).to_bytes(2, "big") + k.encode() + len(v).to_bytes(4, "big") + v for k, v in xattrs
    )


def _meta_bytes(uid: int, gid: int, mtime: int | None = None) -> bytes:
    """The owner and the pinned modification time in a digest; nothing when they are the
    defaults (root, unpinned), so trees without owners keep their digests."""
    out = b""
    if uid or gid:
        out += b"|O" + uid.to_bytes(4, "big") + gid.to_bytes(4, "big")
    if mtime is not None:
        out += b"|T" + mtime.to_bytes(8, "big", signed=True)
    return out


def entry_hash(name: str, child: Node) -> int:
    """Hash of one directory entry; a directory digest covers the sum of these."""
    return int.from_bytes(_h(name.encode() + b"\0" + child.digest), "big")


class Node:
    """Base of all tree nodes. Subclasses are immutable after construction.

    Every node has an owner (`uid`, `gid`; root by default). A file also has `mtime`, its
    modification time in seconds when the workload pinned it (a layer's `mtime`, a
    `utimes` op, a copy-up that preserved it), or None: whatever the clock said, which
    no comparison looks at. Writing data unpins it. Directory times are not modelled:
    every entry change moves them."""

    __slots__ = ("digest", "xattrs")
    kind = "node"
    digest: bytes
    xattrs: Xattrs
    uid = 0
    gid = 0
    mtime: int | None = None

    @property
    def owner(self) -> tuple[int, int]:
        return (self.uid, self.gid)

    def with_owner(self, uid: int, gid: int) -> Node:
        raise NotImplementedError

    def xattr(self, name: str) -> bytes | None:
        for k, v in self.xattrs:
            if k == name:
                return v
        return None

    def with_xattr(self, name: str, value: bytes | None) -> Node:
        raise NotImplementedError

    def _xattrs_set(self, name: str, value: bytes | None) -> Xattrs:
        kept = [(k, v) for k, v in self.xattrs if k != name]
        if value is not None:
            kept.append((name, value))
        return tuple(sorted(kept))


class File(Node):
    """A regular file. `ino` identifies the inode of hard links (`nlink` > 1); it is not
    part of the digest, which covers what a user can observe."""

    __slots__ = ("content", "mode", "ino", "nlink", "uid", "gid", "mtime")
    kind = "file"

    def __init__(
        self,
        content: bytes = b"",
        mode: int = DEFAULT_FILE_MODE,
        xattrs: Xattrs = NO_XATTRS,
        ino: int = 0,
        nlink: int = 1,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
    ) -> None:
        self.content = content
        self.mode = mode
        self.xattrs = xattrs
        self.ino = ino
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        # The link count is visible (stat); inode numbers are arbitrary, so they stay out.
        link = b"" if nlink <= 1 else nlink.to_bytes(4, "big")
        self.digest = _h(
            b"F" + mode.to_bytes(2, "big") + link + _meta_bytes(uid, gid, mtime) + b"|"
            + _xattr_bytes(xattrs) + b"|" + content
        )

    def _with(self, **changes: object) -> File:
        fields: dict[str, object] = {
            "content": self.content, "mode": self.mode, "xattrs": self.xattrs, "ino": self.ino,
            "nlink": self.nlink, "uid": self.uid, "gid": self.gid, "mtime": self.mtime,
        }
        fields.update(changes)
        return File(**fields)  # type: ignore[arg-type]

    def with_content(self, content: bytes) -> File:
        """New data: the modification time is the clock's again (unpinned)."""
        return self._with(content=content, mtime=None)

    def with_mode(self, mode: int) -> File:
        return self._with(mode=mode)

    def with_links(self, ino: int, nlink: int) -> File:
        return self._with(ino=ino, nlink=nlink)

    def with_xattr(self, name: str, value: bytes | None) -> File:
        return self._with(xattrs=self._xattrs_set(name, value))

    def with_owner(self, uid: int, gid: int) -> File:
        return self._with(uid=uid, gid=gid)

    def with_mtime(self, mtime: int | None) -> File:
        return self._with(mtime=mtime)

    def __repr__(self) -> str:
        return f"File({self.content!r}, mode={self.mode:o})"


class Symlink(Node):
    __slots__ = ("target", "uid", "gid")
    kind = "symlink"
    mode = SYMLINK_MODE

    def __init__(self, target: str, xattrs: Xattrs = NO_XATTRS, *, uid: int = 0, gid: int = 0) -> None:
        self.target = target
        self.xattrs = xattrs
        self.uid = uid
        self.gid = gid
        self.digest = _h(b"L" + target.encode() + _meta_bytes(uid, gid) + b"|" + _xattr_bytes(xattrs))

    def with_xattr(self, name: str, value: bytes | None) -> Symlink:
        return Symlink(self.target, self._xattrs_set(name, value), uid=self.uid, gid=self.gid)

    def with_owner(self, uid: int, gid: int) -> Symlink:
        return Symlink(self.target, self.xattrs, uid=uid, gid=gid)

    def __repr__(self) -> str:
        return f"Symlink({self.target!r})"


class Whiteout(Node):
    """A character device 0/0: overlayfs' mark that hides a lower entry."""

    __slots__ = ()
    kind = "whiteout"
    mode = 0

    def __init__(self, xattrs: Xattrs = NO_XATTRS) -> None:
        self.xattrs = xattrs
        self.digest = _h(b"W|" + _xattr_bytes(xattrs))

    def with_xattr(self, name: str, value: bytes | None) -> Whiteout:
        return Whiteout(self._xattrs_set(name, value))

    def with_owner(self, uid: int, gid: int) -> Whiteout:
        return self  # the kernel makes whiteouts as the mounter; owners are not kept

    def __repr__(self) -> str:
        return "Whiteout()"


class ErrorEntry(Node):
    """A name a user can see in a directory listing but not open: lookup fails with
    `errno` (aufs when a name and its whiteout are on one branch). Only views hold it;
    no invariant accepts it, since no valid state shows it."""

    __slots__ = ("errno", "reason")
    kind = "error"
    mode = 0

    def __init__(self, code: int, reason: str = "") -> None:
        self.errno = code
        self.reason = reason  # what the driver says, e.g. "layer sha256:... does not exist"
        self.xattrs = NO_XATTRS
        self.digest = _h(b"E" + code.to_bytes(2, "big") + reason.encode())

    def with_xattr(self, name: str, value: bytes | None) -> ErrorEntry:
        return self

    def with_owner(self, uid: int, gid: int) -> ErrorEntry:
        return self

    def __repr__(self) -> str:
        return f"ErrorEntry({_errno.errorcode.get(self.errno, self.errno)})"


def _change(entries: MutableMapping[str, Node], esum: int, changes: Mapping[str, Node | None]) -> int:
    """Apply `changes` to a directory's entry table; its new entry-hash sum."""
    for name, child in changes.items():
        old = entries.get(name)
        if old is child:
            continue
        if old is not None:
            esum -= entry_hash(name, old)
            del entries[name]
        if child is not None:
            esum += entry_hash(name, child)
            entries[name] = child
    return esum


class Dir(Node):
    """A directory. `base`/`changed` record which entries differ from the directory
    this one was derived from, so a view can be updated instead of recomputed."""

    __slots__ = ("entries", "mode", "esum", "base", "changed", "uid", "gid")
    kind = "dir"

    def __init__(
        self,
        entries: Mapping[str, Node] | None = None,
        mode: int = DEFAULT_DIR_MODE,
        xattrs: Xattrs = NO_XATTRS,
        *,
        uid: int = 0,
        gid: int = 0,
        _esum: int | None = None,
        _base: Dir | None = None,
        _changed: tuple[str, ...] = (),
    ) -> None:
        self.entries: dict[str, Node] = dict(entries) if entries else {}
        self.mode = mode
        self.xattrs = xattrs
        self.uid = uid
        self.gid = gid
        if _esum is None:
            _esum = sum(entry_hash(n, c) for n, c in self.entries.items()) % _MOD
        self.esum = _esum
        self.base = _base
        self.changed = _changed
        self.digest = _h(
            b"D"
            + mode.to_bytes(2, "big")
            + _esum.to_bytes(DIGEST_BYTES, "big")
            + _meta_bytes(uid, gid)
            + b"|"
            + _xattr_bytes(xattrs)
        )

    def get(self, name: str) -> Node | None:
        return self.entries.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def with_child(self, name: str, child: Node | None) -> Dir:
        """This directory with entry `name` set to `child` (or removed when None)."""
        return self.with_children({name: child})

    def with_children(self, changes: Mapping[str, Node | None]) -> Dir:
        """This directory with the entries of `changes` set (None: removed). A large
        directory keeps its entries in a persistent map (`immutables.Map`, a hash array
        mapped trie): a change shares all but O(log n) of it with the directory it came
        from, so a trace of many steps in a directory of many entries costs the steps,
        not steps times entries (benchmarks/size_sweep.py)."""
        source = self.entries
        if isinstance(source, Map) or len(source) >= LARGE_DIR:
            return self._with_changes_shared(source if isinstance(source, Map) else Map(source), changes)
        entries = source.copy()
        esum = _change(entries, self.esum, changes)
        return self._derived(entries, esum, changes)

    def _with_changes_shared(self, source: Map[str, Node], changes: Mapping[str, Node | None]) -> Dir:
        with source.mutate() as entries:
            esum = _change(entries, self.esum, changes)
            shared = entries.finish()
        return self._derived(shared, esum, changes)

    def _derived(self, entries: Mapping[str, Node], esum: int, changes: Mapping[str, Node | None]) -> Dir:
        d = Dir.__new__(Dir)
        Dir.__init__(
            d,
            None,
            self.mode,
            self.xattrs,
            uid=self.uid,
            gid=self.gid,
            _esum=esum % _MOD,
            _base=self,
            _changed=tuple(changes),
        )
        d.entries = entries  # type: ignore[assignment]
        return d

    def with_mode(self, mode: int) -> Dir:
        return self.with_attrs(mode, self.xattrs)

    def with_xattr(self, name: str, value: bytes | None) -> Dir:
        return self.with_attrs(self.mode, self._xattrs_set(name, value))

    def with_owner(self, uid: int, gid: int) -> Dir:
        return self.with_attrs(self.mode, self.xattrs, (uid, gid))

    def with_attrs(self, mode: int, xattrs: Xattrs, owner: tuple[int, int] | None = None) -> Dir:
        """This directory with other mode, xattrs (and owner), sharing its entries."""
        uid, gid = owner if owner is not None else (self.uid, self.gid)
        d = Dir.__new__(Dir)
        Dir.__init__(d, None, mode, xattrs, uid=uid, gid=gid, _esum=self.esum, _base=self, _changed=())
        d.entries = self.entries
        return d

    def __repr__(self) -> str:
        return f"Dir({sorted(self.entries)}, mode={self.mode:o})"


# --- paths -------------------------------------------------------------------------

Parts = tuple[str, ...]
NAME_MAX = 255  # bytes of one name (Linux file systems)


def name_problem(name: str) -> str | None:
    """What makes `name` unusable as one directory entry on Linux, or None."""
    if not name or name in (".", ".."):
        return f"{name!r} is not a name"
    if "/" in name:
        return f"name {name[:60]!r} contains '/'"
    if "\0" in name:
        return f"name {name[:60]!r} contains a NUL byte"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"name {name[:60]!r} is not valid Unicode (a lone surrogate)"
    if size > NAME_MAX:
        return f"name {name[:40]!r}... is {size} bytes long (NAME_MAX is {NAME_MAX})"
    return None


def split(path: str) -> Parts:
    """'a/b/c' -> ('a', 'b', 'c'); '' -> (); empty components are dropped."""
    if not path:
        return ()
    parts = path.split("/")
    return tuple(parts) if all(parts) else tuple(p for p in parts if p)


def join(parts: Parts) -> str:
    return "/".join(parts)


def moved_path(path: str, src: str, dst: str) -> str | None:
    """Where `path` is after `src` moved to `dst` (it, or something below it), or None
    when the move does not touch it."""
    if path == src:
        return dst
    if path.startswith(src + "/"):
        return dst + path[len(src) :]
    return None


def lookup(root: Dir, parts: Parts) -> Node | None:
    """The node at `parts` (no symlink following), or None."""
    node: Node | None = root
    for name in parts:
        if not isinstance(node, Dir):
            return None
        node = node.entries.get(name)
        if node is None:
            return None
    return node


def parent_dir(root: Dir, parts: Parts) -> Dir:
    """The directory that holds `parts`; ENOENT/ENOTDIR when it does not exist."""
    node: Node | None = root
    for i, name in enumerate(parts[:-1]):
        assert isinstance(node, Dir)
        node = node.entries.get(name)
        if node is None:
            raise FsError(_errno.ENOENT, join(parts[: i + 1]))
        if not isinstance(node, Dir):
            raise FsError(_errno.ENOTDIR, join(parts[: i + 1]))
    assert isinstance(node, Dir)
    return node


def replace(root: Dir, parts: Parts, node: Node | None) -> Dir:
    """A new root where `parts` holds `node` (removed when None); path copying."""
    return replace_many(root, parts[:-1], {parts[-1]: node})


def replace_many(root: Dir, dir_parts: Parts, changes: Mapping[str, Node | None]) -> Dir:
    """A new root where the directory at `dir_parts` has `changes` applied."""
    chain: list[Dir] = [root]
    node: Node = root
    for i, name in enumerate(dir_parts):
        assert isinstance(node, Dir)
        child = node.entries.get(name)
        if child is None:
            raise FsError(_errno.ENOENT, join(dir_parts[: i + 1]))
        if not isinstance(child, Dir):
            raise FsError(_errno.ENOTDIR, join(dir_parts[: i + 1]))
        chain.append(child)
        node = child
    new: Dir = chain[-1].with_children(changes)
    for depth in range(len(dir_parts) - 1, -1, -1):
        new = chain[depth].with_child(dir_parts[depth], new)
    return new


def ensure_dirs(root: Dir, parts: Parts) -> Dir:
    """`root` with a directory at `parts` and at each of its ancestors (whatever was not
    a directory there is replaced), as mkdir -p without the errors."""
    for depth in range(1, len(parts) + 1):
        if not isinstance(lookup(root, parts[:depth]), Dir):
            root = replace(root, parts[:depth], Dir())
    return root


def walk(node: Node, prefix: Parts = ()) -> Iterator[tuple[Parts, Node]]:
    """Every (path, node) below `node`, depth first, names sorted (deterministic)."""
    yield prefix, node
    if isinstance(node, Dir):
        for name in sorted(node.entries):
            yield from walk(node.entries[name], prefix + (name,))


def find_inode(root: Dir, ino: int) -> list[Parts]:
    """Paths of every file with inode number `ino` (hard links)."""
    return [p for p, n in walk(root) if isinstance(n, File) and n.ino == ino and n.nlink > 1]


_LINKED: dict[bytes, bool] = {}
LINKED_MEMO = 100_000  # subtrees remembered before the memo starts over


def has_hard_links(node: Node) -> bool:
    """Does the subtree hold a file with more than one link? Memoized by digest (a
    file's digest covers its link count), so a directory derived from one already seen
    costs only its changed entries: when the directory it was derived from (`Dir.base`)
    has no hard link, only the entries that changed can bring one (a directory of
    thousands of whiteouts taken apart entry by entry costs one entry per state)."""
    if isinstance(node, File):
        return node.nlink > 1
    if not isinstance(node, Dir):
        return False
    hit = _LINKED.get(node.digest)
    if hit is None:
        if len(_LINKED) > LINKED_MEMO:
            _LINKED.clear()
        base = node.base
        if base is not None and _LINKED.get(base.digest) is False:
            changed = (node.entries.get(name) for name in node.changed)
            hit = any(has_hard_links(c) for c in changed if c is not None)
        else:
            hit = any(has_hard_links(c) for c in node.entries.values())
        _LINKED[node.digest] = hit
    return hit


def link_signature(node: Node) -> bytes:
    """Which names are one file below `node`: the path, inode number and link count of
    every file of several links; empty when there is none. The digest leaves inode
    numbers out (they are not what a user compares), so two trees can share a digest and
    differ only in which names are hard links of each other."""
    if not has_hard_links(node):
        return b""
    return b"".join(
        f"{join(path)}\0{n.ino}\0{n.nlink}\n".encode()
        for path, n in _linked_files(node, ())
    )


def _linked_files(node: Node, prefix: Parts) -> Iterator[tuple[Parts, File]]:
    """The files of several links below `node`, names sorted; subtrees without one skipped."""
    if isinstance(node, File):
        if node.nlink > 1:
            yield prefix, node
    elif isinstance(node, Dir) and has_hard_links(node):
        for name in sorted(node.entries):
            yield from _linked_files(node.entries[name], prefix + (name,))


def identity(node: Node) -> bytes:
    """A key for memos of work that reads inode numbers (recovery's link counts, a view's
    inode numbers): the digest, plus the hard links' inode numbers when the tree has any
    (`link_signature`). Two trees with one identity are interchangeable for such work."""
    links = link_signature(node)
    return node.digest if not links else node.digest + _h(links)


def _meta_text(node: Node) -> str:
    """Owner and pinned time for reports, when not the defaults."""
    out = f" owner {node.uid}:{node.gid}" if node.uid or node.gid else ""
    return out + (f" mtime {node.mtime}" if node.mtime is not None else "")


def describe(node: Node | None) -> str:
    """A short human description of a node for reports."""
    if node is None:
        return "(absent)"
    if isinstance(node, File):
        text = node.content.decode("utf-8", "backslashreplace")
        if len(text) > 40:
            text = text[:37] + "..."
        return f"file {text!r} mode {node.mode:o}{_meta_text(node)}"
    if isinstance(node, Dir):
        return f"dir mode {node.mode:o}{_meta_text(node)}"
    if isinstance(node, Symlink):
        return f"symlink -> {node.target}{_meta_text(node)}"
    if isinstance(node, ErrorEntry):
        text = f"unreadable: lookup fails with {_errno.errorcode.get(node.errno, node.errno)}"
        return f"{text} ({node.reason})" if node.reason else text
    return "whiteout (c 0/0)"
