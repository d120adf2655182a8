"""Generators of small layered states and op sequences over a fixed name space.

The generation logic is written once against a `Chooser`; hypothesis draws through it in
property tests (with shrinking), and a seeded `random.Random` through it in the kernel
tests, which need an exact number of cases.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

NAMES = ["A", "B", "A/x", "A/y", "B/x", "A/C", "A/C/z"]
CONTENTS = ["", "1", "22", "three"]
REDIRECTS = ["x", "y", "C", "B", "/A", "/B", "/A/C", "/B/x"]
LOWER_KINDS = ("file", "dir", "dir", "symlink")
MIDDLE_KINDS = LOWER_KINDS + ("whiteout", "opaque", "redirect")
UPPER_KINDS = ("file", "dir", "opaque", "whiteout", "redirect")
OPS = [
    "create", "write", "append", "truncate", "mkdir", "rmdir", "unlink", "rename", "mv",
    "link", "symlink", "chmod", "setxattr", "rm", "cp", "fsync", "syncfs", "open", "open",
    "pwrite", "chown", "utimes", "remount",
]
USERS = [0, 0, 0, 1000]  # one system call in four runs as uid 1000
OWNERS = [None, None, 1000]  # one entry in three belongs to uid 1000
TIMES = [None, 1_000_000, 2_000_000]
CLIENT_OPS = ("mv", "rm", "cp")
OPEN_EXTRA_FLAGS = ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_DIRECTORY", "O_NOFOLLOW")
SLASHED = [False] * 5 + [True]  # one path in six ends in '/' (system calls only)


class Chooser:
    """Where the choices come from."""

    def choice(self, options: Sequence[T]) -> T:
        raise NotImplementedError

    def coin(self) -> bool:
        return self.choice([False, True])


class RandomChooser(Chooser):
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(list(options))


class DrawChooser(Chooser):
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def choice(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(list(options)))


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _is_dir(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("type") == "dir"


def _entry(c: Chooser, kind: str) -> Any:
    entry = _plain_entry(c, kind)
    if kind in ("file", "dir", "symlink"):
        owner = c.choice(OWNERS)
        mtime = c.choice(TIMES) if kind == "file" else None
        if owner is not None or mtime is not None:
            entry = entry if isinstance(entry, dict) else {"type": "file", "content": entry}
            if owner is not None:
                entry = entry | {"uid": owner, "gid": owner}
            if mtime is not None:
                entry = entry | {"mtime": mtime}
    return entry


def _plain_entry(c: Chooser, kind: str) -> Any:
    if kind == "file":
        return c.choice(CONTENTS)
    if kind == "dir":
        return {"type": "dir"}
    if kind == "opaque":
        return {"type": "dir", "opaque": True}
    if kind == "redirect":
        return {"type": "dir", "redirect": c.choice(REDIRECTS)}
    if kind == "whiteout":
        return {"type": "whiteout"}
    # Relative targets only: on the real mount an absolute one (or .. at the top) would
    # resolve on the host; the model resolves them inside the view, as in a container.
    return {"type": "symlink", "target": c.choice(["A", "B/x", "nowhere", "C", "x"])}


def gen_layer(c: Chooser, kinds: Sequence[str]) -> dict[str, Any]:
    """A layer table that never puts a child under a non-directory."""
    table: dict[str, Any] = {}
    for name in NAMES:
        parts = name.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in table and not _is_dir(table[a]) for a in ancestors):
            continue
        if not c.coin():
            continue
        for a in ancestors:
            table.setdefault(a, {"type": "dir"})
        table[name] = _entry(c, c.choice(kinds))
    return table


def with_hardlinks(c: Chooser, table: dict[str, Any]) -> dict[str, Any]:
    """`table` with further names of some of its files (hard links) where names are free."""
    files = [p for p, e in table.items() if isinstance(e, str) or (isinstance(e, dict) and e.get("type") == "file")]
    out = dict(table)
    for name in NAMES:
        parents = name.split("/")[:-1]
        parent = "/".join(parents)
        if not files or name in out or (parent and not _is_dir(out.get(parent))) or not c.coin():
            continue
        out[name] = {"type": "hardlink", "target": c.choice(files)}
    return out


def gen_op(c: Chooser, extended: bool = False) -> dict[str, Any]:
    """One op; `extended` adds the newer choices (`remount rotate`, xattrs in overlay's
    own namespaces)."""
    op = _gen_op(c)
    if op["op"] == "remount" and extended and c.coin():
        op["rotate"] = True
    if op["op"] == "setxattr" and extended:  # overlay's own names: escaped (6.7 and later)
        op["name"] = c.choice(["user.tag", "trusted.overlay.tag", "user.overlay.tag"])
    if op["op"] not in CLIENT_OPS + ("remount",):
        for key in ("path", "src", "dst"):
            if key in op and c.choice(SLASHED):
                op[key] += "/"
        user = c.choice(USERS)
        if user:
            op["user"] = user
    return op


def _gen_op(c: Chooser) -> dict[str, Any]:
    kind = c.choice(OPS)
    if kind in ("syncfs", "remount"):
        return {"op": kind}
    if kind in ("rename", "mv", "link"):
        return {"op": kind, "src": c.choice(NAMES), "dst": c.choice(NAMES)}
    if kind == "cp":
        # Copying a directory into itself makes coreutils copy part of it before giving
        # up; the model refuses up front instead, so that case is not generated.
        src = c.choice(NAMES)
        return {"op": kind, "src": src, "dst": c.choice([n for n in NAMES if not _within(n, src)])}
    if kind == "symlink":
        return {"op": kind, "target": c.choice(["A", "B/x", "nowhere"]), "path": c.choice(NAMES)}
    out: dict[str, Any] = {"op": kind, "path": c.choice(NAMES)}
    if kind == "open":
        out["flags"] = [c.choice(["O_RDONLY", "O_WRONLY", "O_RDWR"])]
        out["flags"] += [f for f in OPEN_EXTRA_FLAGS if c.choice([False, False, True])]
        if c.coin():
            out["data"] = c.choice(CONTENTS[1:])
    elif kind == "chown":
        out["uid"] = out["gid"] = c.choice([0, 1000, 2000])
    elif kind == "utimes":
        out["mtime"] = c.choice(TIMES[1:])
    elif kind == "pwrite":
        out["offset"] = c.choice(range(6))
        out["data"] = c.choice(CONTENTS[1:])
    elif kind in ("write", "append") or kind == "create" and c.coin():
        out["data"] = c.choice(CONTENTS[1:])
    elif kind == "truncate":
        out["size"] = c.choice(range(5))
    elif kind == "chmod":
        out["mode"] = c.choice([0o700, 0o644, 0o755])
    elif kind == "setxattr":
        out["name"] = "user.tag"
        out["value"] = c.choice(CONTENTS[1:])
    return out


def gen_workload(
    c: Chooser, max_ops: int = 6, options: dict[str, Any] | None = None, redirects: bool = True,
    extended: bool = False,
) -> dict[str, Any]:
    """Two lower layers, an upper layer and a few ops. Without `redirects`, no generated
    layer holds a redirect (ops may still create them). `extended` adds the newer
    choices: hard links in the bottom layer and `remount rotate` (off, the choices and so
    every seed's workload stay what they were before these existed)."""

    def kinds(base: tuple[str, ...]) -> tuple[str, ...]:
        return base if redirects else tuple(k for k in base if k != "redirect")

    bottom = gen_layer(c, LOWER_KINDS)
    if extended:
        bottom = with_hardlinks(c, bottom)
    return {
        "name": "generated",
        "driver": "overlayfs",
        "options": dict(options or {}),
        "layers": [bottom, gen_layer(c, kinds(MIDDLE_KINDS))],
        "upper": gen_layer(c, kinds(UPPER_KINDS)),
        "ops": [gen_op(c, extended) for _ in range(c.choice(range(1, max_ops + 1)))],
    }


@st.composite
def workload(draw: st.DrawFn, max_ops: int = 6, redirects: bool = True) -> dict[str, Any]:
    return gen_workload(DrawChooser(draw), max_ops, redirects=redirects)
