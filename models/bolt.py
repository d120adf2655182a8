"""A bbolt database file at the level of detail crash checks need (go.etcd.io/bbolt
`tx.go` `Commit`, `db.go` `meta.validate`; containerd keeps its metadata in two of them).

bbolt never overwrites live data: a transaction writes its changed pages to free space,
fdatasyncs, then writes the meta page of the other of two slots (its txid, root page and
a checksum of the meta itself) and fdatasyncs again. Opening the file takes the valid
meta with the highest txid, so a crash keeps the last committed transaction, whatever
the file system kept of the one in flight, as long as the data pages were durable before
the meta (the first fdatasync). A data page the meta points to that did not survive is
a corrupt database: containerd does not start.

Here the whole state of a database is one JSON "page", appended to the file per
transaction (real bbolt reuses freed pages once no reader needs them; appending keeps
every older version readable, which is what the two-meta scheme promises). Meta slots
are two 64-byte records at offsets 0 and 64.
"""

from __future__ import annotations

import json
import re
from hashlib import blake2b
from typing import Any

from models.steps import Fsync, Step, Write
from models.tree import Dir, File, lookup, split

META_SIZE = 64
DATA_START = 2 * META_SIZE
_META = re.compile(rb"bolt txid=(\d+) page=(\d+)\+(\d+) sum=([0-9a-f]{16})")


def _checksum(txid: int, offset: int, length: int) -> str:
    return blake2b(f"{txid} {offset} {length}".encode(), digest_size=8).hexdigest()


def meta_record(txid: int, offset: int, length: int) -> bytes:
    text = f"bolt txid={txid} page={offset}+{length} sum={_checksum(txid, offset, length)}".encode()
    return text.ljust(META_SIZE - 1, b" ") + b"\n"


def page(state: dict[str, Any]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def initial_file(state: dict[str, Any]) -> File:
    """A new database holding `state` as transaction 1 (bbolt's init writes both metas)."""
    data = page(state)
    return File(meta_record(0, DATA_START, len(data)) + meta_record(1, DATA_START, len(data)) + data, 0o600)


def _metas(content: bytes) -> list[tuple[int, int, int]]:
    found = []
    for slot in (0, 1):
        raw = content[slot * META_SIZE:(slot + 1) * META_SIZE]
        m = _META.match(raw)
        if m is None:
            continue
        txid, offset, length = int(m[1]), int(m[2]), int(m[3])
        if m[4].decode() == _checksum(txid, offset, length):
            found.append((txid, offset, length))
    return sorted(found, reverse=True)


def read(root: Dir, path: str) -> dict[str, Any] | None:
    """The state of the last committed transaction; {} when there is no file (or an
    empty one), None when the file is corrupt (no valid meta, or the page it names does
    not decode)."""
    node = lookup(root, split(path))
    if node is None:
        return {}
    if not isinstance(node, File):
        return None
    if not node.content:
        return {}  # bbolt initializes an empty file when it opens it
    metas = _metas(node.content)
    if not metas:
        return None
    _, offset, length = metas[0]
    try:
        doc = json.loads(node.content[offset:offset + length])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def commit(root: Dir, path: str, state: dict[str, Any]) -> list[Step]:
    """The steps of committing a transaction that leaves the database holding `state`:
    the page, fdatasync, the meta in the other slot, fdatasync."""
    node = lookup(root, split(path))
    content = node.content if isinstance(node, File) else b""
    metas = _metas(content)
    txid = metas[0][0] + 1 if metas else 1
    data = page(state)
    offset = max(len(content), DATA_START)
    return [Write(path, data, offset), Fsync(path),
            Write(path, meta_record(txid, offset, len(data)), (txid % 2) * META_SIZE), Fsync(path)]
