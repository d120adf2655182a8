"""Spec format v1 (DESIGN section 6): loading and validating a TOML spec file.

Every mistake becomes a `SpecError` that names the file and the key, e.g.
`specs/x.toml: ops[2].op: unknown op 'mvv' (known: append, chmod, ...)`.
"""

from __future__ import annotations

import errno as errno_module
import hashlib
import json
import os
import stat
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from checker.engine.invariants import INVARIANTS, selected
from checker.engine.persistence import DEFAULT_BLOCK_SIZE, MODELS
from checker.errors import SpecError
from models import DriverLoadError, driver_named, drivers
from models.driver import OptionError
from models.format import OPAQUE, REDIRECT
from models.syscalls import ACCESS_MODES, OPEN_FLAGS, RenameFlags
from models.tree import (
    DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
    Dir,
    File,
    Node,
    Symlink,
    Whiteout,
    lookup,
    name_problem,
    replace,
    split,
)

VERDICTS = ("pass", "violation", "unknown")
TOP_KEYS = (
    "name", "description", "driver", "persistence", "block_size", "check", "options", "layers",
    "upper", "ops", "expect",
)

# --- limits: every input is bounded before any work (README "Limits") ---------------------
MAX_SPEC_BYTES = 4 * 1024 * 1024  # a spec is a small text; more is not a spec (or /dev/zero)
MAX_NAME_BYTES = 255  # NAME_MAX: the longest name Linux file systems take
MAX_PATH_BYTES = 4095  # PATH_MAX less the NUL: the longest path a system call takes
MAX_PATH_DEPTH = 64  # components of one spec path; deeper trees are not crash-consistency workloads
MAX_DATA_BYTES = 16 * 1024 * 1024  # file contents and sizes: the model keeps data in memory
MAX_XATTR_VALUE = 65536  # XATTR_SIZE_MAX
MAX_ENTRIES = 100_000  # entries of one layer table
MAX_OPS = 100_000  # ops of one workload
MAX_TEXT = 65536  # names, descriptions and other free text
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 512, 1 << 30  # a sector .. 1 GiB; torn writes are cut at this size
ERRNO_NAMES = tuple(sorted(errno_module.errorcode.values()))

# op -> (required arguments, optional arguments)
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "create": (("path",), ("data", "mode")),
    "write": (("path", "data"), ()),
    "append": (("path", "data"), ()),
    "open": (("path", "flags"), ("mode", "data")),
    "pwrite": (("path", "offset", "data"), ()),
    "truncate": (("path", "size"), ()),
    "mkdir": (("path",), ("mode",)),
    "rmdir": (("path",), ()),
    "unlink": (("path",), ()),
    "rename": (("src", "dst"), ()),
    "link": (("src", "dst"), ()),
    "symlink": (("target", "path"), ()),
    "chmod": (("path", "mode"), ()),
    "chown": (("path", "uid", "gid"), ()),
    "utimes": (("path", "mtime"), ()),
    "setxattr": (("path", "name", "value"), ()),
    "fsync": (("path",), ()),
    "sync": ((), ()),
    "syncfs": ((), ()),
    "mv": (("src", "dst"), ()),
    "rm": (("path",), ()),
    "cp": (("src", "dst"), ()),
    "crash": ((), ()),  # at most one: the ops after it run on every recovered crash state
}
PATH_ARGS = ("path", "src", "dst")
INT_ARGS = ("size", "mode", "from_layer", "offset")
ID_ARGS = ("uid", "gid", "user")
BOOL_ARGS = ("rotate",)
#: client programs: their paths take no trailing slash (coreutils treats one its own way)
CLIENT_OPS = ("mv", "rm", "cp")
NAME_ARGS = ("image", "container", "tag")
#: `op = "steps"`: raw primitive steps on the backing store ("what if the driver did this")
STEPS_OP = (("steps",), ())

CRASH_OP = "crash"

ENTRY_KEYS = {
    "file": ("type", "content", "mode", "xattrs", "uid", "gid", "mtime"),
    "dir": ("type", "opaque", "redirect", "mode", "xattrs", "uid", "gid"),
    "symlink": ("type", "target", "xattrs", "uid", "gid"),
    "whiteout": ("type", "xattrs"),
    "hardlink": ("type", "target"),  # another name of a file in the same table
}
#: inode numbers of hard-linked files in spec trees: far above those models allocate
HARDLINK_INO_BASE = 1_000_000
HARDLINK_INO_STRIDE = 100_000  # per tree, so the layers' inodes stay apart
MAX_ID = 65534  # uids and gids: below nobody's (65535 is "no change" to chown)
MAX_TIME = 2**32  # seconds since the epoch, to 2106


@dataclass(frozen=True)
class Op:
    """One workload op on the merged view."""

    index: int
    kind: str
    args: tuple[tuple[str, Any], ...]
    expect_error: str = ""  # the errno name the op is expected to fail with ("": success)

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
            elif key == "flags":
                shown.append("|".join(value))
            elif key == "user":
                shown.append(f"as uid {value}")
            elif isinstance(value, bool):
                shown.extend([key] if value else [])
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
    def crash_index(self) -> int | None:
        """The index of the `crash` op, if the spec has one."""
        return next((op.index for op in self.ops if op.kind == CRASH_OP), None)

    @property
    def before_crash(self) -> list[Op]:
        """The ops whose crash states are checked (all of them without a `crash` op)."""
        k = self.crash_index
        return self.ops if k is None else self.ops[:k]

    @property
    def after_crash(self) -> list[Op]:
        """The ops that run on each recovered crash state of the ops before the crash."""
        k = self.crash_index
        return [] if k is None else self.ops[k + 1 :]

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
                "ops": [[op.kind, [[k, str(v)] for k, v in op.args], op.expect_error] for op in self.ops],
                "check": self.check,
                "block_size": self.block_size,
            },
            sort_keys=True,
        )
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def load_spec(path: str | Path) -> Spec:
    """Read and validate one spec file (a regular file of UTF-8 TOML, at most
    MAX_SPEC_BYTES; a leading byte-order mark is accepted)."""
    file = str(path)
    raw = read_spec_bytes(file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(file, "invalid TOML: not UTF-8 text") from None
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(file, f"invalid TOML: {e}") from None
    except RecursionError:
        raise SpecError(file, "invalid TOML: arrays or tables nested too deeply") from None
    return parse_spec(data, file)


def read_spec_bytes(file: str) -> bytes:
    """The bytes of a spec file; only a regular file is read (a FIFO would block, a
    device never ends), and at most MAX_SPEC_BYTES of it."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise SpecError(file, f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(file, "not a regular file (a spec is a TOML text file)")
        if st.st_size > MAX_SPEC_BYTES:
            raise SpecError(file, f"too large ({st.st_size} bytes; a spec is at most {MAX_SPEC_BYTES})")
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SPEC_BYTES:
            raise SpecError(file, f"too large (a spec is at most {MAX_SPEC_BYTES} bytes)")
        return b"".join(chunks)
    except OSError as e:
        raise SpecError(file, f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)


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
        raise SpecError(file, f"unknown driver {driver!r} (known: {', '.join(sorted(known))})", "driver")
    persistence = data.get("persistence", "prefix")
    if not isinstance(persistence, str) or persistence not in MODELS:
        raise SpecError(
            file, f"unknown persistence model {persistence!r} (known: {', '.join(MODELS)})",
            "persistence",
        )
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_TEXT:
        raise SpecError(file, f"must be a string of at most {MAX_TEXT} characters", "description")
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
    layers = [build_tree(t, file, f"layers[{i}]", i) for i, t in enumerate(layers_raw)]
    upper = None
    if "upper" in data:
        if not isinstance(data["upper"], dict):
            raise SpecError(file, "must be a table ([upper])", "upper")
        upper = build_tree(data["upper"], file, "upper", len(layers))

    ops = _parse_ops(data, file, known[driver].EXTRA_OPS)
    wrong = known[driver].check_workload(resolved, layers, upper, ops)
    if wrong:
        raise SpecError(file, wrong)
    block_size = data.get("block_size", DEFAULT_BLOCK_SIZE)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not (
        MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE and block_size & (block_size - 1) == 0
    ):
        raise SpecError(
            file, f"must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} (bytes)", "block_size"
        )
    spec = Spec(
        file=file, name=name, driver=driver, persistence=persistence, description=description,
        check=None, options=dict(options), layers=layers, upper=upper, ops=ops, expect=None,
        block_size=block_size,
    )
    spec.check = _parse_check(data, file, spec)
    spec.expect = _parse_expect(data, file, spec)
    return spec


def _required_str(data: dict[str, Any], key: str, file: str) -> str:
    if key not in data:
        raise SpecError(file, f"missing required key '{key}'")
    value = data[key]
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise SpecError(file, f"must be a non-empty string of at most {MAX_TEXT} characters", key)
    return value


def check_path(path: Any, file: str, key: str, trailing_slash: bool = False) -> str:
    """A relative, '/'-separated path without '.' or '..' components, within the limits
    of a real system call (NAME_MAX, PATH_MAX, no NUL byte) and MAX_PATH_DEPTH; with
    `trailing_slash`, one '/' may end it (the kernel's meaning: `models.vfs`)."""
    if not isinstance(path, str) or not path:
        raise SpecError(file, "must be a non-empty path string", key)
    if path.startswith("/"):
        raise SpecError(file, f"path {_short(path)} must be relative (no leading '/')", key)
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise SpecError(file, f"path {_short(path)} is longer than {MAX_PATH_BYTES} bytes (PATH_MAX)", key)
    parts = path.split("/")
    if trailing_slash and len(parts) > 1 and parts[-1] == "" and parts[-2] != "":
        parts = parts[:-1]
    if len(parts) > MAX_PATH_DEPTH:
        raise SpecError(file, f"path {_short(path)} has more than {MAX_PATH_DEPTH} components", key)
    if any(p in (".", "..") for p in parts):
        raise SpecError(file, f"path {_short(path)} must not contain '.' or '..' components", key)
    if any(p == "" for p in parts):
        raise SpecError(file, f"path {_short(path)} has an empty component", key)
    for part in parts:
        wrong = name_problem(part)
        if wrong:
            raise SpecError(file, f"path {_short(path)}: {wrong}", key)
    return path


def _short(text: str) -> str:
    """A value quoted for an error line, cut to stay one readable line."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _text(value: Any, file: str, key: str, limit: int = MAX_DATA_BYTES, nul: bool = True) -> str:
    """A string argument: its UTF-8 encoding at most `limit` bytes; NUL only where the
    kernel takes it (file data, not names)."""
    if not isinstance(value, str):
        raise SpecError(file, "must be a string", key)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SpecError(file, "must be valid Unicode text (no lone surrogates)", key) from None
    if size > limit:
        raise SpecError(file, f"is {size} bytes long; at most {limit} bytes are allowed", key)
    if not nul and "\0" in value:
        raise SpecError(file, "must not contain a NUL byte", key)
    return value


def _mode(value: Any, file: str, key: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise SpecError(file, f"mode {value!r} is not an octal number", key) from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise SpecError(file, "mode must be an integer (e.g. 0o755) or an octal string", key)
    return value


XATTR_NAMESPACES = ("user.", "trusted.")  # what the models and a real overlay upper store


def check_xattr_name(name: Any, file: str, key: str) -> str:
    if not isinstance(name, str) or not name.startswith(XATTR_NAMESPACES) or name in XATTR_NAMESPACES:
        raise SpecError(
            file, f"xattr name {name!r} must start with {' or '.join(XATTR_NAMESPACES)} and go on", key
        )
    _text(name, file, key, MAX_NAME_BYTES, nul=False)
    return name


def _xattrs(value: Any, file: str, key: str) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpecError(file, "xattrs must be a table of name = \"value\" strings", key)
    for k, v in value.items():
        check_xattr_name(k, file, f"{key}.{k}")
        _text(v, file, f"{key}.{k}", MAX_XATTR_VALUE)
    return tuple(sorted((k, v.encode()) for k, v in value.items()))


def check_target(value: Any, file: str, key: str) -> str:
    """A symlink target: any path text the kernel takes (symlink(2)): not empty, no NUL,
    at most PATH_MAX bytes. Absolute and climbing targets are allowed: they resolve
    inside the view, as in a container."""
    if not isinstance(value, str) or not value:
        raise SpecError(file, "a symlink needs a non-empty string 'target'", key)
    return _text(value, file, key, MAX_PATH_BYTES, nul=False)


def build_node(value: Any, file: str, key: str) -> Node:
    """A spec entry (a string, or a table with `type`) as a tree node."""
    if isinstance(value, str):
        return File(_text(value, file, key).encode(), DEFAULT_FILE_MODE)
    if not isinstance(value, dict):
        raise SpecError(file, "an entry is a string (file content) or a table with 'type'", key)
    kind = value.get("type", "file")
    if not isinstance(kind, str) or kind not in ENTRY_KEYS:
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
    uid = _number(value.get("uid", 0), file, key + ".uid", MAX_ID)
    gid = _number(value.get("gid", 0), file, key + ".gid", MAX_ID)
    if kind == "file":
        content = _text(value.get("content", ""), file, key + ".content")
        mode = _mode(value.get("mode", DEFAULT_FILE_MODE), file, key + ".mode")
        mtime = value.get("mtime")
        if mtime is not None:
            mtime = _number(mtime, file, key + ".mtime", MAX_TIME)
        return File(content.encode(), mode, xattrs, uid=uid, gid=gid, mtime=mtime)
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
            _text(redirect, file, key + ".redirect", MAX_PATH_BYTES, nul=False)
            extra[REDIRECT] = redirect.encode()
        return Dir({}, mode, tuple(sorted(extra.items())), uid=uid, gid=gid)
    if kind == "symlink":
        return Symlink(check_target(value.get("target"), file, key + ".target"), xattrs, uid=uid, gid=gid)
    return Whiteout(xattrs)


def _number(value: Any, file: str, key: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise SpecError(file, f"must be an integer from 0 to {limit}", key)
    return value


def build_tree(entries: dict[str, Any], file: str, where: str, tree_index: int = 0) -> Dir:
    """A layer table (path -> entry) as a tree; parents are implied directories, and
    `hardlink` entries are further names of a file of the same table (one inode)."""
    if len(entries) > MAX_ENTRIES:
        raise SpecError(file, f"{len(entries)} entries; a layer holds at most {MAX_ENTRIES}", where)
    for path in entries:
        check_path(path, file, f'{where}."{path[:60]}"')
    links = {p: v for p, v in entries.items() if isinstance(v, dict) and v.get("type") == "hardlink"}
    root = Dir()
    for path in sorted(entries, key=lambda p: (p.count("/"), p)):
        key = f'{where}."{path}"'
        if path in links:
            node: Node = File(b"")  # a placeholder: linked to its target below
            _check_hardlink(links[path], entries, file, key)
        else:
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
            node = Dir(existing.entries, node.mode, node.xattrs, uid=node.uid, gid=node.gid)  # keep children
        root = replace(root, parts, node)
    return _link_files(root, links, HARDLINK_INO_BASE + tree_index * HARDLINK_INO_STRIDE)


def _check_hardlink(value: dict[str, Any], entries: dict[str, Any], file: str, key: str) -> None:
    for k in value:
        if k not in ENTRY_KEYS["hardlink"]:
            known = ", ".join(ENTRY_KEYS["hardlink"])
            raise SpecError(file, f"unknown key for a hardlink entry (known: {known})", f"{key}.{k}")
    target = value.get("target")
    if not isinstance(target, str) or target not in entries:
        raise SpecError(file, "a hardlink's 'target' must be the path of a file in the same table",
                        key + ".target")
    other = entries[target]
    if isinstance(other, dict) and other.get("type", "file") != "file":
        raise SpecError(file, f"a hardlink's target must be a regular file, not a {other.get('type')}",
                        key + ".target")


def _link_files(root: Dir, links: dict[str, Any], ino: int) -> Dir:
    """Give each file named by `hardlink` entries its extra names: one inode number per
    group, nlink the number of names."""
    groups: dict[str, list[str]] = {}
    for path, value in sorted(links.items()):
        groups.setdefault(value["target"], []).append(path)
    for n, (target, names) in enumerate(sorted(groups.items())):
        node = lookup(root, split(target))
        assert isinstance(node, File)
        linked = node.with_links(ino + n + 1, len(names) + 1)
        for path in [target, *names]:
            root = replace(root, split(path), linked)
    return root


def _parse_ops(
    data: dict[str, Any], file: str, extra: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
) -> list[Op]:
    table_of_ops = dict(OPS) | dict(extra) | {"steps": STEPS_OP}
    raw = data.get("ops", [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise SpecError(file, "must be an array of tables ([[ops]])", "ops")
    if len(raw) > MAX_OPS:
        raise SpecError(file, f"{len(raw)} ops; a workload has at most {MAX_OPS}", "ops")
    ops = []
    for i, table in enumerate(raw):
        key = f"ops[{i}]"
        kind = table.get("op")
        if kind is None:
            raise SpecError(file, "missing 'op'", key)
        if not isinstance(kind, str) or kind not in table_of_ops:
            known_ops = ", ".join(sorted(table_of_ops))
            raise SpecError(file, f"unknown op {kind!r} for this driver (known: {known_ops})", key + ".op")
        required, optional = table_of_ops[kind]
        for arg in required:
            if arg not in table:
                raise SpecError(file, f"{kind} needs '{arg}'", key)
        args: list[tuple[str, Any]] = []
        expect_error = ""
        for arg, value in table.items():
            if arg == "op":
                continue
            if arg == "expect_error":
                expect_error = _errno_name(value, file, f"{key}.{arg}")
                continue
            if arg == "user":
                if kind not in OPS or kind in CLIENT_OPS or kind == CRASH_OP:
                    raise SpecError(file, "only a system-call op runs as another user", f"{key}.user")
                args.append((arg, _number(value, file, f"{key}.user", MAX_ID)))
                continue
            if arg not in required + optional:
                allowed = ", ".join(required + optional + ("expect_error", "user"))
                raise SpecError(file, f"unknown argument for {kind} (allowed: {allowed})", f"{key}.{arg}")
            args.append((arg, _op_arg(kind, arg, value, file, f"{key}.{arg}")))
        order = required + optional + ("user",)
        args.sort(key=lambda kv: order.index(kv[0]))
        ops.append(Op(i, kind, tuple(args), expect_error))
    crashes = [op.index for op in ops if op.kind == CRASH_OP]
    if len(crashes) > 1:
        raise SpecError(file, "a workload has at most one crash op", f"ops[{crashes[1]}]")
    if crashes and ops[crashes[0]].expect_error:
        raise SpecError(file, "a crash op has no result to expect", f"ops[{crashes[0]}].expect_error")
    return ops


def _open_flags(value: Any, file: str, key: str) -> tuple[str, ...]:
    """open(2) flag names, each at most once and one access mode at most; kept in the
    order of OPEN_FLAGS (so equal sets are equal ops)."""
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise SpecError(file, "must be a list of open(2) flag names such as [\"O_WRONLY\", \"O_TRUNC\"]", key)
    unknown = [f for f in value if f not in OPEN_FLAGS]
    if unknown:
        raise SpecError(file, f"unknown open flag {unknown[0]!r} (known: {', '.join(OPEN_FLAGS)})", key)
    if len(set(value)) != len(value):
        raise SpecError(file, "a flag is named twice", key)
    if sum(f in ACCESS_MODES for f in value) > 1:
        raise SpecError(file, f"at most one of {', '.join(ACCESS_MODES)}", key)
    return tuple(f for f in OPEN_FLAGS if f in value)


def _errno_name(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or value not in ERRNO_NAMES:
        raise SpecError(file, f"must be an errno name such as \"ENOENT\" or \"EXDEV\", not {value!r}", key)
    return value


def _op_arg(kind: str, arg: str, value: Any, file: str, key: str) -> Any:
    if arg == "steps":
        return _steps(value, file, key)
    if arg in PATH_ARGS:
        return check_path(value, file, key, trailing_slash=kind not in CLIENT_OPS)
    if arg == "flags":
        return _open_flags(value, file, key)
    if arg in BOOL_ARGS:
        if not isinstance(value, bool):
            raise SpecError(file, "must be true or false", key)
        return value
    if arg in ID_ARGS:
        return _number(value, file, key, MAX_ID)
    if arg == "mtime":
        return _number(value, file, key, MAX_TIME)
    if arg == "mode":
        return _mode(value, file, key)
    if arg in INT_ARGS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(file, "must be a non-negative integer", key)
        if arg in ("size", "offset") and value > MAX_DATA_BYTES:
            raise SpecError(
                file, f"{value} bytes is beyond the model's file size limit of {MAX_DATA_BYTES} bytes", key
            )
        if arg == "from_layer" and value > MAX_ENTRIES:
            raise SpecError(file, f"layer {value} does not exist", key)
        return value
    if arg == "target":
        return check_target(value, file, key)
    if arg == "name" and kind == "setxattr":
        return check_xattr_name(value, file, key)
    if arg in NAME_ARGS:
        if not isinstance(value, str) or name_problem(value) or value.startswith("."):
            raise SpecError(file, f"{value!r} is not a {arg} name (no '/', not empty, no leading '.')", key)
        return value
    limit = MAX_XATTR_VALUE if arg == "value" else MAX_DATA_BYTES
    return _text(value, file, key, limit)


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
        if not isinstance(kind, str) or kind not in STEP_TYPES:
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
        return _text(raw, file, key).encode()
    if "bool" in kind:
        if not isinstance(raw, bool):
            raise SpecError(file, "must be true or false", key)
        return raw
    if "int" in kind:
        if name == "mode":
            return _mode(raw, file, key)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_DATA_BYTES:
            raise SpecError(file, f"must be an integer from 0 to {MAX_DATA_BYTES}", key)
        return raw
    if not isinstance(raw, str):
        raise SpecError(file, "must be a string", key)
    if name in ("path", "src", "dst"):
        check_path(raw, file, key)
    _text(raw, file, key, MAX_PATH_BYTES, nul=False)
    if name == "flags":
        known = [f.value for f in RenameFlags]
        if raw not in known:
            raise SpecError(file, f"must be one of {', '.join(repr(k) for k in known)}", key)
        return RenameFlags(raw)
    return raw


def _parse_check(data: dict[str, Any], file: str, spec: Spec) -> tuple[str, ...] | None:
    """The `check` list: known invariants, each of which checks something in this spec
    (an invariant that cannot apply would pass vacuously, so naming one is an error)."""
    if "check" not in data:
        return None
    raw = data["check"]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise SpecError(file, "must be an array of invariant names", "check")
    applicable = [name for name, inv in INVARIANTS.items() if inv.applies(spec)]
    if not raw:
        raise SpecError(
            file, f"an empty list checks nothing; name invariants (here: {', '.join(applicable)}) "
            "or leave 'check' out to check every one that applies", "check",
        )
    for i, name in enumerate(raw):
        if name not in INVARIANTS:
            raise SpecError(
                file, f"unknown invariant {name!r} (known: {', '.join(INVARIANTS)})", f"check[{i}]"
            )
        if name not in applicable:
            raise SpecError(
                file, f"invariant {name!r} checks nothing here: it needs {INVARIANTS[name].needs} "
                f"(invariants that apply: {', '.join(applicable)})", f"check[{i}]",
            )
    if len(set(raw)) != len(raw):
        raise SpecError(file, "names an invariant twice", "check")
    return tuple(raw)


def _parse_expect(data: dict[str, Any], file: str, spec: Spec) -> Expect | None:
    if "expect" not in data:
        return None
    raw = data["expect"]
    if not isinstance(raw, dict):
        raise SpecError(file, "must be a table ([expect])", "expect")
    for key in raw:
        if key not in ("verdict", "invariants"):
            raise SpecError(file, "unknown key (known: verdict, invariants)", f"expect.{key}")
    verdict = raw.get("verdict", "pass")
    if not isinstance(verdict, str) or verdict not in VERDICTS:
        raise SpecError(file, f"must be one of {', '.join(VERDICTS)}", "expect.verdict")
    invariants = raw.get("invariants", [])
    if not isinstance(invariants, list) or not all(isinstance(x, str) for x in invariants):
        raise SpecError(file, "must be an array of invariant names", "expect.invariants")
    checked = [inv.name for inv in selected(spec)]
    for i, name in enumerate(invariants):
        if name not in INVARIANTS:
            raise SpecError(
                file, f"unknown invariant {name!r} (known: {', '.join(INVARIANTS)})",
                f"expect.invariants[{i}]",
            )
        if name not in checked:
            raise SpecError(
                file, f"{name!r} is not checked in this spec, so it can never be violated "
                f"(checked: {', '.join(checked)})", f"expect.invariants[{i}]",
            )
    if invariants and verdict != "violation":
        raise SpecError(file, "invariants are only expected with verdict = \"violation\"", "expect")
    return Expect(verdict, tuple(invariants))
