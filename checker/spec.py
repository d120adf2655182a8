"""Spec format v1 (DESIGN section 6): loading and validating a TOML spec file.

Every mistake becomes a `SpecError` that names the file and the key, e.g.
`specs/x.toml: ops[2].op: unknown op 'mvv' (known: append, chmod, ...)`.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from checker.errors import SpecError
from models import DriverLoadError, driver_named, drivers
from models.driver import OptionError
from models.tree import (
    DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
    Dir,
    File,
    Node,
    Symlink,
    Whiteout,
    lookup,
    replace,
    split,
)
from models.union import OPAQUE, REDIRECT

PERSISTENCE_MODELS = ("prefix", "ordered-metadata", "weak")  # checker.persistence.MODELS
VERDICTS = ("pass", "violation", "unknown")
TOP_KEYS = (
    "name", "description", "driver", "persistence", "block_size", "check", "options", "layers",
    "upper", "ops", "expect",
)
DEFAULT_BLOCK_SIZE = 4096  # bytes a disk writes atomically (a page; ext4's default block)

# op -> (required arguments, optional arguments)
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "create": (("path",), ("data", "mode")),
    "write": (("path", "data"), ()),
    "append": (("path", "data"), ()),
    "truncate": (("path", "size"), ()),
    "mkdir": (("path",), ("mode",)),
    "rmdir": (("path",), ()),
    "unlink": (("path",), ()),
    "rename": (("src", "dst"), ()),
    "link": (("src", "dst"), ()),
    "symlink": (("target", "path"), ()),
    "chmod": (("path", "mode"), ()),
    "setxattr": (("path", "name", "value"), ()),
    "fsync": (("path",), ()),
    "sync": ((), ()),
    "mv": (("src", "dst"), ()),
    "rm": (("path",), ()),
    "cp": (("src", "dst"), ()),
}
PATH_ARGS = ("path", "src", "dst")
TEXT_ARGS = ("data", "value", "name", "target")
INT_ARGS = ("size", "mode", "from_layer")
NAME_ARGS = ("image", "container")
#: `op = "steps"`: raw primitive steps on the backing store ("what if the driver did this")
STEPS_OP = (("steps",), ())

ENTRY_KEYS = {
    "file": ("type", "content", "mode", "xattrs"),
    "dir": ("type", "opaque", "redirect", "mode", "xattrs"),
    "symlink": ("type", "target", "xattrs"),
    "whiteout": ("type", "xattrs"),
}


@dataclass(frozen=True)
class Op:
    """One workload op on the merged view."""

    index: int
    kind: str
    args: tuple[tuple[str, Any], ...]

    def arg(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)

    @cached_property
    def text(self) -> str:
        shown = []
        for key, value in self.args:
            if key in ("data", "value"):
                text = value if len(value) <= 24 else value[:21] + "..."
                shown.append(repr(text))
            elif key == "mode":
                shown.append(f"{value:o}")
            elif key == "steps":
                shown.append("; ".join(str(step) for step in value))
            else:
                shown.append(str(value))
        return " ".join([self.kind] + shown)


@dataclass(frozen=True)
class Expect:
    verdict: str = "pass"
    invariants: tuple[str, ...] = ()


@dataclass
class Spec:
    file: str
    name: str
    driver: str
    persistence: str = "prefix"
    description: str = ""
    check: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    layers: list[Dir] = field(default_factory=list)
    upper: Dir | None = None
    ops: list[Op] = field(default_factory=list)
    expect: Expect | None = None
    block_size: int = DEFAULT_BLOCK_SIZE

    @property
    def expected(self) -> str:
        return self.expect.verdict if self.expect else "pass"

    def fingerprint(self) -> str:
        """A stable id of everything that determines the check's result."""
        payload = json.dumps(
            {
                "driver": self.driver,
                "persistence": self.persistence,
                "options": self.options,
                "layers": [layer.digest.hex() for layer in self.layers],
                "upper": self.upper.digest.hex() if self.upper else None,
                "ops": [[op.kind, [[k, str(v)] for k, v in op.args]] for op in self.ops],
                "check": self.check,
                "block_size": self.block_size,
            },
            sort_keys=True,
        )
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def load_spec(path: str | Path) -> Spec:
    """Read and validate one spec file."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise SpecError(file, f"cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(file, "invalid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(file, f"invalid TOML: {e}") from None
    return parse_spec(data, file)


def parse_spec(data: dict[str, Any], file: str = "<spec>") -> Spec:
    """Validate a decoded spec table."""
    for key in data:
        if key not in TOP_KEYS:
            raise SpecError(file, f"unknown key (known: {', '.join(TOP_KEYS)})", key)
    name = _required_str(data, "name", file)
    driver = _required_str(data, "driver", file)
    known = drivers()
    if driver not in known:
        try:
            driver_named(driver)
        except DriverLoadError as e:
            raise SpecError(file, str(e), "driver") from None
        except KeyError:
            pass
        raise SpecError(file, f"unknown driver '{driver}' (known: {', '.join(sorted(known))})", "driver")
    persistence = data.get("persistence", "prefix")
    if persistence not in PERSISTENCE_MODELS:
        raise SpecError(
            file, f"unknown persistence model {persistence!r} (known: {', '.join(PERSISTENCE_MODELS)})",
            "persistence",
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SpecError(file, "must be a string", "description")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise SpecError(file, "must be a table", "options")
    try:
        resolved = known[driver].resolve_options(options)
    except OptionError as e:
        raise SpecError(file, str(e), "options") from None

    layers_raw = data.get("layers", [])
    if not isinstance(layers_raw, list) or not all(isinstance(t, dict) for t in layers_raw):
        raise SpecError(file, "must be an array of tables ([[layers]])", "layers")
    layers = [build_tree(t, file, f"layers[{i}]") for i, t in enumerate(layers_raw)]
    upper = None
    if "upper" in data:
        if not isinstance(data["upper"], dict):
            raise SpecError(file, "must be a table ([upper])", "upper")
        upper = build_tree(data["upper"], file, "upper")

    ops = _parse_ops(data, file, known[driver].EXTRA_OPS)
    wrong = known[driver].check_workload(resolved, layers, upper, ops)
    if wrong:
        raise SpecError(file, wrong)
    check = _parse_check(data, file)
    expect = _parse_expect(data, file)
    block_size = data.get("block_size", DEFAULT_BLOCK_SIZE)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise SpecError(file, "must be a positive integer (bytes)", "block_size")
    return Spec(
        file=file, name=name, driver=driver, persistence=persistence, description=description,
        check=check, options=dict(options), layers=layers, upper=upper, ops=ops, expect=expect,
        block_size=block_size,
    )


def _required_str(data: dict[str, Any], key: str, file: str) -> str:
    if key not in data:
        raise SpecError(file, f"missing required key '{key}'")
    value = data[key]
    if not isinstance(value, str) or not value:
        raise SpecError(file, "must be a non-empty string", key)
    return value


def check_path(path: Any, file: str, key: str) -> str:
    """A relative, '/'-separated path without '.' or '..' components."""
    if not isinstance(path, str) or not path:
        raise SpecError(file, "must be a non-empty path string", key)
    if path.startswith("/"):
        raise SpecError(file, f"path {path!r} must be relative (no leading '/')", key)
    parts = path.split("/")
    if any(p in (".", "..") for p in parts):
        raise SpecError(file, f"path {path!r} must not contain '.' or '..' components", key)
    if any(p == "" for p in parts):
        raise SpecError(file, f"path {path!r} has an empty component", key)
    return path


def _mode(value: Any, file: str, key: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise SpecError(file, f"mode {value!r} is not an octal number", key) from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise SpecError(file, "mode must be an integer (e.g. 0o755) or an octal string", key)
    return value


def _xattrs(value: Any, file: str, key: str) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpecError(file, "xattrs must be a table of name = \"value\" strings", key)
    return tuple(sorted((k, v.encode()) for k, v in value.items()))


def build_node(value: Any, file: str, key: str) -> Node:
    """A spec entry (a string, or a table with `type`) as a tree node."""
    if isinstance(value, str):
        return File(value.encode(), DEFAULT_FILE_MODE)
    if not isinstance(value, dict):
        raise SpecError(file, "an entry is a string (file content) or a table with 'type'", key)
    kind = value.get("type", "file")
    if kind not in ENTRY_KEYS:
        raise SpecError(
            file, f"unknown entry type {kind!r} (known: {', '.join(ENTRY_KEYS)})", key + ".type"
        )
    for k in value:
        if k not in ENTRY_KEYS[kind]:
            raise SpecError(
                file, f"unknown key for a {kind} entry (known: {', '.join(ENTRY_KEYS[kind])})",
                f"{key}.{k}",
            )
    xattrs = _xattrs(value.get("xattrs", {}), file, key + ".xattrs")
    if kind == "file":
        content = value.get("content", "")
        if not isinstance(content, str):
            raise SpecError(file, "must be a string", key + ".content")
        mode = _mode(value.get("mode", DEFAULT_FILE_MODE), file, key + ".mode")
        return File(content.encode(), mode, xattrs)
    if kind == "dir":
        mode = _mode(value.get("mode", DEFAULT_DIR_MODE), file, key + ".mode")
        extra = dict(xattrs)
        opaque = value.get("opaque", False)
        if not isinstance(opaque, bool):
            raise SpecError(file, "must be true or false", key + ".opaque")
        if opaque:
            extra[OPAQUE] = b"y"
        if "redirect" in value:
            redirect = value["redirect"]
            if not isinstance(redirect, str) or not redirect or (
                not redirect.startswith("/") and "/" in redirect
            ):
                raise SpecError(
                    file, "a redirect is an absolute path '/a/b' or a name in the same parent",
                    key + ".redirect",
                )
            extra[REDIRECT] = redirect.encode()
        return Dir({}, mode, tuple(sorted(extra.items())))
    if kind == "symlink":
        target = value.get("target")
        if not isinstance(target, str) or not target:
            raise SpecError(file, "a symlink needs a non-empty string 'target'", key + ".target")
        return Symlink(target, xattrs)
    return Whiteout(xattrs)


def build_tree(entries: dict[str, Any], file: str, where: str) -> Dir:
    """A layer table (path -> entry) as a tree; parents are implied directories."""
    root = Dir()
    for path in sorted(entries, key=lambda p: (p.count("/"), p)):
        key = f'{where}."{path}"'
        check_path(path, file, key)
        node = build_node(entries[path], file, key)
        parts = split(path)
        for i in range(1, len(parts)):
            existing = lookup(root, parts[:i])
            if existing is None:
                root = replace(root, parts[:i], Dir())
            elif not isinstance(existing, Dir):
                raise SpecError(file, f"'{'/'.join(parts[:i])}' is not a directory", key)
        existing = lookup(root, parts)
        if isinstance(existing, Dir) and isinstance(node, Dir):
            node = Dir(existing.entries, node.mode, node.xattrs)  # keep implied children
        root = replace(root, parts, node)
    return root


def _parse_ops(
    data: dict[str, Any], file: str, extra: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
) -> list[Op]:
    table_of_ops = dict(OPS) | dict(extra) | {"steps": STEPS_OP}
    raw = data.get("ops", [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise SpecError(file, "must be an array of tables ([[ops]])", "ops")
    ops = []
    for i, table in enumerate(raw):
        key = f"ops[{i}]"
        kind = table.get("op")
        if kind is None:
            raise SpecError(file, "missing 'op'", key)
        if kind not in table_of_ops:
            known_ops = ", ".join(sorted(table_of_ops))
            raise SpecError(file, f"unknown op {kind!r} for this driver (known: {known_ops})", key + ".op")
        required, optional = table_of_ops[kind]
        for arg in required:
            if arg not in table:
                raise SpecError(file, f"{kind} needs '{arg}'", key)
        args: list[tuple[str, Any]] = []
        for arg, value in table.items():
            if arg == "op":
                continue
            if arg not in required + optional:
                allowed = ", ".join(required + optional) or "none"
                raise SpecError(file, f"unknown argument for {kind} (allowed: {allowed})", f"{key}.{arg}")
            args.append((arg, _op_arg(kind, arg, value, file, f"{key}.{arg}")))
        order = required + optional
        args.sort(key=lambda kv: order.index(kv[0]))
        ops.append(Op(i, kind, tuple(args)))
    return ops


def _op_arg(kind: str, arg: str, value: Any, file: str, key: str) -> Any:
    if arg == "steps":
        return _steps(value, file, key)
    if arg in PATH_ARGS:
        return check_path(value, file, key)
    if arg == "mode":
        return _mode(value, file, key)
    if arg in INT_ARGS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(file, "must be a non-negative integer", key)
        return value
    if not isinstance(value, str):
        raise SpecError(file, "must be a string", key)
    if arg == "target" and not value:
        raise SpecError(file, "must not be empty", key)
    if arg in NAME_ARGS and (not value or "/" in value or value.startswith(".")):
        raise SpecError(file, f"{value!r} is not a {arg} name (no '/', not empty, no leading '.')", key)
    return value


def _steps(value: Any, file: str, key: str) -> tuple[Any, ...]:
    """`steps = [{ step = "rename", src = "upper/a", dst = "upper/b" }, ...]` as Step values."""
    import dataclasses

    from models.steps import STEP_TYPES
    from models.thinpool import BLOCK_STEP_TYPES

    STEP_TYPES = STEP_TYPES | BLOCK_STEP_TYPES  # noqa: N806

    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise SpecError(file, "must be a non-empty array of tables, each with 'step'", key)
    out = []
    for i, table in enumerate(value):
        where = f"{key}[{i}]"
        kind = table.get("step")
        if kind not in STEP_TYPES:
            raise SpecError(
                file, f"unknown step {kind!r} (known: {', '.join(sorted(STEP_TYPES))})", where + ".step"
            )
        cls = STEP_TYPES[kind]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        args: dict[str, Any] = {}
        for name, raw in table.items():
            if name == "step":
                continue
            if name not in fields:
                raise SpecError(file, f"unknown field for step {kind!r} (known: {', '.join(fields)})",
                                f"{where}.{name}")
            args[name] = _step_field(name, raw, fields[name].type, file, f"{where}.{name}")
        missing = [n for n, f in fields.items() if n not in args and f.default is dataclasses.MISSING]
        if missing:
            raise SpecError(file, f"step {kind!r} needs {', '.join(repr(m) for m in missing)}", where)
        out.append(cls(**args))
    return tuple(out)


def _step_field(name: str, raw: Any, annotation: Any, file: str, key: str) -> Any:
    kind = str(annotation)
    if "bytes" in kind:
        if not isinstance(raw, str):
            raise SpecError(file, "must be a string", key)
        return raw.encode()
    if "bool" in kind:
        if not isinstance(raw, bool):
            raise SpecError(file, "must be true or false", key)
        return raw
    if "int" in kind:
        if name == "mode":
            return _mode(raw, file, key)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise SpecError(file, "must be a non-negative integer", key)
        return raw
    if not isinstance(raw, str):
        raise SpecError(file, "must be a string", key)
    if name in ("path", "src", "dst"):
        check_path(raw, file, key)
    if name == "flags" and raw not in ("", "noreplace", "exchange", "whiteout"):
        raise SpecError(file, "must be one of '', 'noreplace', 'exchange', 'whiteout'", key)
    return raw


def _parse_check(data: dict[str, Any], file: str) -> tuple[str, ...] | None:
    from checker.invariants import INVARIANTS

    if "check" not in data:
        return None
    raw = data["check"]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise SpecError(file, "must be an array of invariant names", "check")
    for i, name in enumerate(raw):
        if name not in INVARIANTS:
            raise SpecError(
                file, f"unknown invariant {name!r} (known: {', '.join(INVARIANTS)})", f"check[{i}]"
            )
    return tuple(raw)


def _parse_expect(data: dict[str, Any], file: str) -> Expect | None:
    from checker.invariants import INVARIANTS

    if "expect" not in data:
        return None
    raw = data["expect"]
    if not isinstance(raw, dict):
        raise SpecError(file, "must be a table ([expect])", "expect")
    for key in raw:
        if key not in ("verdict", "invariants"):
            raise SpecError(file, "unknown key (known: verdict, invariants)", f"expect.{key}")
    verdict = raw.get("verdict", "pass")
    if verdict not in VERDICTS:
        raise SpecError(file, f"must be one of {', '.join(VERDICTS)}", "expect.verdict")
    invariants = raw.get("invariants", [])
    if not isinstance(invariants, list) or not all(isinstance(x, str) for x in invariants):
        raise SpecError(file, "must be an array of invariant names", "expect.invariants")
    for i, name in enumerate(invariants):
        if name not in INVARIANTS:
            raise SpecError(
                file, f"unknown invariant {name!r} (known: {', '.join(INVARIANTS)})",
                f"expect.invariants[{i}]",
            )
    if invariants and verdict == "pass":
        raise SpecError(file, "invariants are only expected with verdict = \"violation\"", "expect")
    return Expect(verdict, tuple(invariants))
