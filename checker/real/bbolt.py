"""Reading a bbolt database file (go.etcd.io/bbolt's on-disk format: `page.go`,
`node.go`, `bucket.go`, `db.go` meta), as containerd's `meta.db` and its snapshotter's
`metadata.db` are: two meta pages (magic 0xED0CDAED, version 2; the valid one with the
higher txid wins, its checksum an FNV-1a 64 of the meta before it), branch and leaf
pages, buckets as leaf values (a root page id and a sequence; root 0: an inline bucket
whose page follows the header in the value), overflow pages.

`read_db` returns the tree of buckets as nested dicts (bucket name -> dict, key ->
bytes) and each bucket's sequence under the key `SEQUENCE`, or None for a file bbolt
would refuse (no valid meta, a page out of the file). An empty file is an empty
database: `bolt.Open` initializes a file of size 0 (`db.go`: `if info.Size() == 0 {
db.init() }`), which is what a process killed between creating the file and its first
write leaves (containerd's snapshotter, confirmed by `real --impl containerd`).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

MAGIC = 0xED0CDAED
BRANCH, LEAF, META, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF = 0x01
SEQUENCE = "\0sequence"  # a bucket's sequence, beside its keys
HEADER = 16  # id u64, flags u16, count u16, overflow u32


class Corrupt(Exception):
    pass


def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _meta(data: bytes, offset: int) -> tuple[int, int, int, int] | None:
    """(txid, root pgid, root sequence, page size) of a valid meta page at `offset`."""
    raw = data[offset + HEADER: offset + HEADER + 64]
    if len(raw) < 64:
        return None
    magic, version, page_size, _flags, root, sequence, _freelist, _pgid, txid, checksum = struct.unpack(
        "<IIIIQQQQQQ", raw)
    if magic != MAGIC or version != 2 or _fnv64a(raw[:56]) != checksum:
        return None
    return txid, root, sequence, page_size


def _page(data: bytes, pgid: int, page_size: int) -> bytes:
    start = pgid * page_size
    if start + HEADER > len(data):
        raise Corrupt(f"page {pgid} is beyond the end of the file")
    overflow = struct.unpack_from("<I", data, start + 12)[0]
    end = start + (overflow + 1) * page_size
    if end > len(data):
        raise Corrupt(f"page {pgid} runs beyond the end of the file")
    return data[start:end]


def _items(data: bytes, page: bytes, page_size: int, depth: int = 0) -> list[tuple[bytes, int, bytes]]:
    """(key, flags, value) of every leaf element under `page`, in key order."""
    if depth > 64:
        raise Corrupt("page tree too deep")
    flags, count = struct.unpack_from("<HH", page, 8)
    out: list[tuple[bytes, int, bytes]] = []
    if flags & BRANCH:
        for i in range(count):
            _pos, _ksize, child = struct.unpack_from("<IIQ", page, HEADER + i * 16)
            out.extend(_items(data, _page(data, child, page_size), page_size, depth + 1))
    elif flags & LEAF:
        for i in range(count):
            base = HEADER + i * 16
            eflags, pos, ksize, vsize = struct.unpack_from("<IIII", page, base)
            start = base + pos
            key = page[start:start + ksize]
            value = page[start + ksize:start + ksize + vsize]
            if len(key) != ksize or len(value) != vsize:
                raise Corrupt("a leaf element runs beyond its page")
            out.append((key, eflags, value))
    else:
        raise Corrupt(f"page of unexpected type {flags:#x}")
    return out


def _bucket(data: bytes, root: int, sequence: int, page_size: int, inline: bytes | None,
            depth: int = 0) -> dict[str, Any]:
    if depth > 32:
        raise Corrupt("buckets nested too deep")
    page = inline if inline is not None else _page(data, root, page_size)
    out: dict[str, Any] = {SEQUENCE: sequence}
    for key, flags, value in _items(data, page, page_size):
        name = key.decode("utf-8", "surrogateescape")
        if flags & BUCKET_LEAF:
            sub_root, sub_sequence = struct.unpack_from("<QQ", value, 0)
            inline = value[16:] if sub_root == 0 else None
            out[name] = _bucket(data, sub_root, sub_sequence, page_size, inline, depth + 1)
        else:
            out[name] = value
    return out


def read_db(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return parse(data)


def parse(data: bytes) -> dict[str, Any] | None:
    if not data:
        return {SEQUENCE: 0}  # bbolt's Open initializes an empty file: an empty database
    metas = [m for m in (_meta(data, 0), _meta(data, 4096)) if m is not None]
    if not metas:
        return None
    _txid, root, sequence, page_size = max(metas)
    try:
        return _bucket(data, root, sequence, page_size, None)
    except (Corrupt, struct.error):
        return None


def varint(data: bytes) -> int:
    """Go's binary.Uvarint (containerd stores snapshot ids and sizes so)."""
    value = shift = 0
    for b in data:
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7
    return value


__all__ = ["SEQUENCE", "parse", "read_db", "varint"]
