"""The file system inside a thin device: a small, documented stand-in for ext4.

It works in 4 KiB blocks; block 0 holds the metadata (every entry: path, type, mode,
xattrs, and for a file its size, inode, link count and block list), files hold their
data in blocks allocated lowest-free from block 1, written in full (no holes). Like
ext4 with `data=ordered`, one operation is one transaction:

1. the data of every file the operation made or changed goes to newly allocated
   blocks (file data is never overwritten in place, and blocks freed by the operation
   are not reused by it);
2. a flush (the journal's pre-commit flush; dm-thin commits its mappings);
3. block 0 with the new metadata;
4. a FUA write (the commit record; dm-thin commits again).

With `discard` (the `discard` mount option), a pool block whose file-system blocks are
all free afterwards is discarded, so the pool unmaps it.

The namespace semantics are the `plain` driver's: the same errors, the same results.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from models.errors import CrashcheckError
from models.tree import Dir, ErrorEntry, File, Node, Symlink, join, split, walk

FS_BLOCK = 4096
META_BLOCK = 0


@dataclass(frozen=True)
class Inode:
    kind: str  # "dir" | "file" | "symlink"
    mode: int
    xattrs: tuple[tuple[str, bytes], ...]
    size: int = 0
    blocks: tuple[int, ...] = ()
    ino: int = 0
    nlink: int = 1
    target: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int | None = None  # files only (`models.tree.Node`)

    @property
    def meta_word(self) -> str:
        """The mode, and owner and time when they are not the defaults: `644` or
        `644:1000:1000:` (no pinned time) or `644:0:0:1700000000`."""
        if not (self.uid or self.gid or self.mtime is not None):
            return f"{self.mode:o}"
        return f"{self.mode:o}:{self.uid}:{self.gid}:{'' if self.mtime is None else self.mtime}"


def _meta(word: str) -> tuple[int, int, int, int | None]:
    """(mode, uid, gid, mtime) of a meta word."""
    fields = word.split(":")
    if len(fields) == 1:
        return int(word, 8), 0, 0, None
    mode, uid, gid, mtime = fields
    return int(mode, 8), int(uid), int(gid), int(mtime) if mtime else None


@dataclass
class Image:
    """The decoded metadata: path -> inode, paths sorted, "" is the root."""

    inodes: dict[str, Inode] = field(default_factory=dict)

    def used_blocks(self) -> set[int]:
        used = {META_BLOCK}
        for node in self.inodes.values():
            used.update(node.blocks)
        return used


class CorruptFs(CrashcheckError):
    """Block 0 does not hold valid metadata."""


def encode(image: Image) -> bytes:
    lines = ["thinfs 1"]
    for path in sorted(image.inodes):
        n = image.inodes[path]
        xattrs = ",".join(f"{k}={v.hex()}" for k, v in n.xattrs)
        blocks = ",".join(str(b) for b in n.blocks)
        extra = f"{n.size} {blocks or '-'} {n.ino} {n.nlink}" if n.kind == "file" else n.target.encode().hex()
        lines.append(f"{path.encode().hex() or '.'} {n.kind} {n.meta_word} {xattrs or '-'} {extra}".rstrip())
    return ("\n".join(lines) + "\n").encode()


def decode(data: bytes) -> Image:
    try:
        text = data.decode()
        lines = text.splitlines()
        if not lines or lines[0] != "thinfs 1":
            raise CorruptFs("no thinfs superblock in block 0")
        image = Image()
        for line in lines[1:]:
            words = line.split(" ")
            path = "" if words[0] == "." else bytes.fromhex(words[0]).decode()
            kind = words[1]
            mode, uid, gid, mtime = _meta(words[2])
            xattrs = () if words[3] == "-" else tuple(
                (k, bytes.fromhex(v)) for k, v in (x.split("=") for x in words[3].split(","))
            )
            if kind == "file":
                size, blocks, ino, nlink = int(words[4]), words[5], int(words[6]), int(words[7])
                numbers = () if blocks == "-" else tuple(int(b) for b in blocks.split(","))
                image.inodes[path] = Inode(kind, mode, xattrs, size, numbers, ino, nlink,
                                           uid=uid, gid=gid, mtime=mtime)
            else:
                target = bytes.fromhex(words[4]).decode() if len(words) > 4 else ""
                image.inodes[path] = Inode(kind, mode, xattrs, target=target, uid=uid, gid=gid)
        if "" not in image.inodes:
            raise CorruptFs("no root directory")
        return image
    except (CorruptFs, ValueError, IndexError, UnicodeDecodeError) as e:
        raise CorruptFs(f"unreadable metadata: {e}") from None


def tree_of(image: Image, read_block: object) -> Node:
    """The directory tree the image describes, reading file data with `read_block(k)`
    (bytes of fs block k; zeros where nothing was written)."""
    try:
        nodes: dict[str, Node] = {}
        children: dict[str, dict[str, Node]] = {}
        for path in sorted(image.inodes, key=lambda p: -len(split(p))):
            n = image.inodes[path]
            if n.kind == "dir":
                node: Node = Dir(children.get(path, {}), n.mode, n.xattrs, uid=n.uid, gid=n.gid)
            elif n.kind == "symlink":
                node = Symlink(n.target, n.xattrs, uid=n.uid, gid=n.gid)
            else:
                data = b"".join(read_block(b) for b in n.blocks)[: n.size]  # type: ignore[operator]
                data = data + b"\0" * (n.size - len(data))
                node = File(data, n.mode, n.xattrs, ino=n.ino, nlink=n.nlink, uid=n.uid, gid=n.gid,
                            mtime=n.mtime)
            nodes[path] = node
            if path:
                parts = split(path)
                children.setdefault(join(parts[:-1]), {})[parts[-1]] = node
        return nodes[""]
    except KeyError as e:
        return ErrorEntry(errno.EUCLEAN, f"corrupt file system: missing {e}")


@dataclass
class Transaction:
    """What one operation writes: data blocks (fs block -> 4 KiB), the new image, and
    the blocks it frees."""

    data: dict[int, bytes]
    image: Image
    freed: set[int]


def plan(old_tree: Dir, old: Image, new_tree: Dir) -> Transaction | None:
    """The transaction that turns `old_tree` (described by `old`) into `new_tree`, or
    None when nothing changes. Files whose node and content are unchanged keep their
    blocks (also across renames); hard links share blocks."""
    old_blocks: dict[int, tuple[int, ...]] = {}  # id(node) -> blocks
    by_path: dict[str, tuple[bytes, tuple[int, ...]]] = {}
    by_ino: dict[int, tuple[bytes, tuple[int, ...]]] = {}
    for parts, node in walk(old_tree):
        path = join(parts)
        inode = old.inodes.get(path)
        if isinstance(node, File) and inode is not None:
            old_blocks[id(node)] = inode.blocks
            by_path[path] = (node.content, inode.blocks)
            if node.ino and node.nlink > 1:
                by_ino[node.ino] = (node.content, inode.blocks)
    taken = {META_BLOCK}
    pending: list[tuple[str, File]] = []
    new = Image()
    for parts, node in walk(new_tree):
        path = join(parts)
        if isinstance(node, Dir):
            new.inodes[path] = Inode("dir", node.mode, node.xattrs, uid=node.uid, gid=node.gid)
        elif isinstance(node, Symlink):
            new.inodes[path] = Inode("symlink", 0o777, node.xattrs, target=node.target,
                                     uid=node.uid, gid=node.gid)
        elif isinstance(node, File):
            blocks = old_blocks.get(id(node))
            if blocks is None:
                for known in (by_path.get(path), by_ino.get(node.ino) if node.ino else None):
                    if known is not None and known[0] == node.content:
                        blocks = known[1]
                        break
            if blocks is None:
                pending.append((path, node))
                continue
            taken.update(blocks)
            new.inodes[path] = _file_inode(node, blocks)
    freed = old.used_blocks() - taken
    avoid = taken | old.used_blocks()  # freed blocks are not reused before the commit
    data: dict[int, bytes] = {}
    shared: dict[int, tuple[int, ...]] = {}
    for path, node in pending:
        if node.ino and node.nlink > 1 and node.ino in shared:
            new.inodes[path] = _file_inode(node, shared[node.ino])
            continue
        chunks = [node.content[i : i + FS_BLOCK] for i in range(0, len(node.content), FS_BLOCK)]
        blocks = []
        for chunk in chunks:
            b = _lowest_free(avoid)
            avoid.add(b)
            blocks.append(b)
            data[b] = chunk
        if node.ino and node.nlink > 1:
            shared[node.ino] = tuple(blocks)
        new.inodes[path] = _file_inode(node, tuple(blocks))
    freed -= set().union(*(n.blocks for n in new.inodes.values())) if new.inodes else set()
    if encode(new) == encode(old) and not data:
        return None
    return Transaction(data, new, freed)


def _file_inode(node: File, blocks: tuple[int, ...]) -> Inode:
    return Inode("file", node.mode, node.xattrs, len(node.content), blocks, node.ino, node.nlink,
                 uid=node.uid, gid=node.gid, mtime=node.mtime)


def _lowest_free(taken: set[int]) -> int:
    b = META_BLOCK + 1
    while b in taken:
        b += 1
    return b


def mkfs() -> Image:
    return Image({"": Inode("dir", 0o755, ())})
