"""Hypothesis strategies: small layered states and op sequences over a fixed name space."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NAMES = ["A", "B", "A/x", "A/y", "B/x", "A/C", "A/C/z"]
CONTENTS = ["", "1", "22", "three"]


def _entry(kind: str, content: str) -> Any:
    if kind == "file":
        return content
    if kind == "dir":
        return {"type": "dir"}
    if kind == "opaque":
        return {"type": "dir", "opaque": True}
    if kind == "whiteout":
        return {"type": "whiteout"}
    return {"type": "symlink", "target": content or "A"}


def _is_dir(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("type") == "dir"


@st.composite
def layer(draw: st.DrawFn, kinds: tuple[str, ...]) -> dict[str, Any]:
    """A layer table that never puts a child under a non-directory."""
    table: dict[str, Any] = {}
    for name in NAMES:
        parts = name.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in table and not _is_dir(table[a]) for a in ancestors):
            continue
        if not draw(st.booleans()):
            continue
        kind = draw(st.sampled_from(kinds))
        for a in ancestors:
            table.setdefault(a, {"type": "dir"})
        table[name] = _entry(kind, draw(st.sampled_from(CONTENTS)))
    return table


@st.composite
def op(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([
        "create", "write", "append", "truncate", "mkdir", "rmdir", "unlink", "rename", "mv",
        "link", "symlink", "chmod", "setxattr", "rm", "cp", "fsync",
    ]))
    path = st.sampled_from(NAMES)
    data = st.sampled_from(CONTENTS[1:])
    if kind in ("rename", "mv", "link", "cp"):
        return {"op": kind, "src": draw(path), "dst": draw(path)}
    if kind == "symlink":
        return {"op": kind, "target": draw(st.sampled_from(["A", "B/x", "nowhere"])), "path": draw(path)}
    out: dict[str, Any] = {"op": kind, "path": draw(path)}
    if kind in ("write", "append") or kind == "create" and draw(st.booleans()):
        out["data"] = draw(data)
    elif kind == "truncate":
        out["size"] = draw(st.integers(0, 4))
    elif kind == "chmod":
        out["mode"] = draw(st.sampled_from([0o700, 0o644, 0o755]))
    elif kind == "setxattr":
        out["name"] = "user.tag"
        out["value"] = draw(data)
    return out


@st.composite
def workload(draw: st.DrawFn, max_ops: int = 6) -> dict[str, Any]:
    lower_kinds = ("file", "dir", "dir", "symlink")
    upper_kinds = ("file", "dir", "opaque", "whiteout")
    spec: dict[str, Any] = {
        "name": "generated",
        "driver": "overlayfs",
        "layers": [draw(layer(lower_kinds)), draw(layer(lower_kinds + ("whiteout", "opaque")))],
        "upper": draw(layer(upper_kinds)),
        "ops": draw(st.lists(op(), min_size=1, max_size=max_ops)),
    }
    return spec
