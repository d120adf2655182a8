"""The driver interface: what every storage-driver model provides.

A driver model is small (DESIGN section 2):

- `mount(layers, upper)` builds the initial backing tree from a spec's layers;
- `start(root)` returns a `Session`, the in-memory state of a mounted driver;
- `execute(session, syscall, log)` performs one system call on the user's view: it
  checks POSIX errors on the view, then records the primitive steps it performs on the
  backing store in `log` (a `StepLog`, which applies them one by one) and returns the
  result the caller sees;
- `view(root)` is the tree a user sees for a backing tree;
- `recover(root)` is what the next mount (or daemon start) does after a crash.

Drivers know nothing of crashes; the checker never looks inside a driver.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from models.steps import Device, StepLog, one_device
from models.tree import Dir, File, FsError, Node, Parts, Symlink, join, split

# --- system calls ------------------------------------------------------------------

#: System calls a client can make on the view. Read-only calls produce no steps.
MUTATING_SYSCALLS = (
    "create", "write", "append", "truncate", "mkdir", "rmdir", "unlink", "rename", "link",
    "symlink", "chmod", "setxattr", "removexattr", "fsync", "sync", "utimens", "chown", "fchown",
)
READ_SYSCALLS = ("stat", "readdir", "read", "readlink", "listxattr")

#: For each system call, which arguments are paths and whether their last component is
#: followed when it is a symlink (open(2) without O_NOFOLLOW follows; lstat, unlink,
#: rename, linkat without AT_SYMLINK_FOLLOW, fchownat(AT_SYMLINK_NOFOLLOW) do not).
PATH_ARGS: dict[str, tuple[tuple[int, bool], ...]] = {
    "create": ((0, False),), "write": ((0, True),), "append": ((0, True),),
    "truncate": ((0, True),), "mkdir": ((0, False),), "rmdir": ((0, False),),
    "unlink": ((0, False),), "rename": ((0, False), (1, False)),
    "link": ((0, False), (1, False)), "symlink": ((1, False),), "chmod": ((0, True),),
    "setxattr": ((0, True),), "removexattr": ((0, True),), "fsync": ((0, True),),
    "sync": (), "utimens": ((0, True),), "chown": ((0, False),), "fchown": ((0, True),),
    "stat": ((0, False),),
    "readdir": ((0, True),), "read": ((0, True),), "readlink": ((0, False),),
    "listxattr": ((0, False),),
}
MAX_SYMLINKS = 40  # as the kernel's MAXSYMLINKS: more hops is ELOOP


@dataclass(frozen=True)
class Syscall:
    """One system call on the user's view, e.g. Syscall('rename', ('a', 'b'), flags='noreplace')."""

    name: str
    args: tuple[Any, ...] = ()
    flags: str = ""

    def __str__(self) -> str:
        shown = []
        for a in self.args:
            if isinstance(a, bytes):
                text = a.decode("utf-8", "backslashreplace")
                shown.append(repr(text if len(text) <= 24 else text[:21] + "..."))
            elif isinstance(a, int):
                shown.append(f"0{a:o}" if self.name in ("chmod", "mkdir", "create") else str(a))
            else:
                shown.append(f'"{a}"')
        flag = f", {self.flags.upper()}" if self.flags else ""
        return f"{self.name}({', '.join(shown)}{flag})"


@dataclass(frozen=True)
class SysResult:
    errno: int = 0
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.errno == 0

    def __str__(self) -> str:
        if self.errno:
            return "-1 " + errno.errorcode.get(self.errno, str(self.errno))
        return "0"


def fail(code: int) -> SysResult:
    return SysResult(code)


OK = SysResult()


# --- recovery -----------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """The outcome of mounting a crashed backing store: a tree, or a refusal."""

    root: Dir | None
    refusal: str = ""  # why the mount is refused
    remedy: str = ""  # what the operator must do; a refusal without one is a bug
    fallback: Dir | None = None  # the backing store once the remedy is applied

    @property
    def refused(self) -> bool:
        return self.root is None


# --- options ------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """A driver option: its accepted Python types, default and meaning."""

    types: tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    normalize: Callable[[Any], Any] | None = None


class OptionError(ValueError):
    """An option value is not acceptable; the message says what is."""


# --- sessions and drivers ------------------------------------------------------------


@dataclass
class Session:
    """The in-memory state of a mounted driver (counters, caches); never persisted."""

    root: Dir
    counters: dict[str, int] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def next(self, name: str, start: int = 1) -> int:
        value = self.counters.get(name, start)
        self.counters[name] = value + 1
        return value


class Driver:
    """Base class of driver models. Subclasses set `name`, `OPTIONS` and implement the
    abstract methods; `check_view_syscall` gives them POSIX error checks for free."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    layered: ClassVar[bool] = False  # has read-only lower layers
    OPTIONS: ClassVar[dict[str, Option]] = {}
    #: ops of this driver beyond the file-system ones: name -> (required, optional args)
    EXTRA_OPS: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    #: ops that must leave the view exactly as it was (checked by `view-preserved`)
    VIEW_PRESERVING_OPS: ClassVar[tuple[str, ...]] = ()
    #: False for drivers whose view takes no file-system ops (the squash image store)
    FILE_OPS: ClassVar[bool] = True
    #: where in the view file ops act ("" = the root; the Docker drivers' running
    #: container is at "containers/app"): `explore` puts generated paths there
    WORKLOAD_ROOT: ClassVar[str] = ""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = self.resolve_options(options or {})

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        resolved = {k: o.default for k, o in cls.OPTIONS.items()}
        for key, value in given.items():
            if key not in cls.OPTIONS:
                known = ", ".join(sorted(cls.OPTIONS)) or "none"
                raise OptionError(f"unknown option '{key}' for driver {cls.name} (known: {known})")
            opt = cls.OPTIONS[key]
            if isinstance(value, bool) and bool not in opt.types:
                raise OptionError(f"option '{key}' must be {_type_names(opt)}, not a boolean")
            if not isinstance(value, opt.types):
                raise OptionError(
                    f"option '{key}' must be {_type_names(opt)}, not {type(value).__name__}"
                )
            if opt.choices and value not in opt.choices and not isinstance(value, bool):
                choices = ", ".join(repr(c) for c in opt.choices)
                raise OptionError(f"option '{key}' must be one of {choices}, not {value!r}")
            resolved[key] = opt.normalize(value) if opt.normalize else value
        return resolved

    @classmethod
    def check_workload(cls, options: Mapping[str, Any], layers: list[Dir], upper: Dir | None,
                       ops: Sequence[Any]) -> str | None:
        """What is wrong with a spec's layers, upper layer and ops for this driver (one
        line, reported as a spec error), or None."""
        return None

    # -- to implement ----------------------------------------------------------------

    def plan(self, ops: Sequence[Any]) -> None:
        """Called with the spec's ops before `mount`: a driver whose initial state
        depends on the workload (an image a `pull` op will fetch is not there yet)
        looks here."""

    def mount(self, layers: list[Dir], upper: Dir | None) -> Dir:
        raise NotImplementedError

    def start(self, root: Dir) -> Session:
        return Session(root)

    def execute(self, session: Session, call: Syscall, log: StepLog) -> SysResult:
        """Resolve symlinks in the call's paths, answer read-only calls from the view, and
        let `perform` record the steps of the others; any FsError is the call's result."""
        try:
            call = self.resolve_call(log.root, call)
            if call.name in READ_SYSCALLS:
                return self.read_syscall(log.root, call)
            return self.perform(session, call, log)
        except FsError as e:
            return fail(e.errno)

    def perform(self, session: Session, call: Syscall, log: StepLog) -> SysResult:
        """Check and perform one mutating system call (raise FsError to fail it)."""
        raise NotImplementedError

    def view(self, root: Dir) -> Dir:
        raise NotImplementedError

    def recover(self, root: Dir) -> Recovery:
        return Recovery(root)

    def client(self, kind: str, args: Mapping[str, Any]) -> Any:
        """The client program (a generator of Syscalls) for one of EXTRA_OPS; the
        driver executes the system calls it yields, named after the op."""
        return None

    def accounting(self, trace: Any) -> dict[str, Any] | None:
        """Figures the report adds for this driver (e.g. storage before and after), or None."""
        return None

    def device(self, parts: Parts) -> str:
        return one_device(parts)

    def lower_devices(self) -> frozenset[str]:
        """Devices that hold read-only image layers (for `lower-immutable`)."""
        return frozenset()

    # -- shared helpers --------------------------------------------------------------

    def step_device(self) -> Device:
        return self.device

    def view_lookup(self, root: Dir, parts: Parts) -> Node | None:
        """The node a user sees at `parts` (default: walk the full view)."""
        node: Node | None = self.view(root)
        for name in parts:
            if not isinstance(node, Dir):
                return None
            node = node.entries.get(name)
        return node

    def resolve_call(self, root: Dir, call: Syscall) -> Syscall:
        """The call with symlinks in its paths resolved as path walk does (FsError on
        ENOENT, ENOTDIR or ELOOP)."""
        args = list(call.args)
        for index, follow in PATH_ARGS.get(call.name, ()):
            args[index] = join(self.resolve_path(root, split(args[index]), follow))
        return Syscall(call.name, tuple(args), call.flags)

    def resolve_path(self, root: Dir, parts: Parts, follow_last: bool, hops: int = 0) -> Parts:
        """`parts` with every symlink among its ancestors (and the last component when
        `follow_last`) replaced by its target; absolute targets start at the view root."""
        done: list[str] = []
        todo = list(parts)
        while todo:
            name = todo.pop(0)
            if name == "." or name == "":
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            node = self.view_lookup(root, tuple(done) + (name,))
            if isinstance(node, Symlink) and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise FsError(errno.ELOOP, join(parts))
                target = node.target.split("/")
                if node.target.startswith("/"):
                    done = []
                todo = target + todo
                continue
            if todo and node is None:
                raise FsError(errno.ENOENT, join(tuple(done) + (name,)))
            if todo and not isinstance(node, Dir):
                raise FsError(errno.ENOTDIR, join(tuple(done) + (name,)))
            done.append(name)
        return tuple(done)

    def read_syscall(self, root: Dir, call: Syscall) -> SysResult:
        """stat, readdir, read, readlink, listxattr on the view."""
        parts = split(call.args[0])
        try:
            node = self.existing(root, parts)
        except FsError as e:
            return fail(e.errno)
        if call.name == "stat":
            return SysResult(0, node)
        if call.name == "readdir":
            if not isinstance(node, Dir):
                return fail(errno.ENOTDIR)
            return SysResult(0, node.names())
        if call.name == "read":
            if isinstance(node, Dir):
                return fail(errno.EISDIR)
            if not isinstance(node, File):
                return fail(errno.EINVAL)
            return SysResult(0, node.content)
        if call.name == "readlink":
            if not isinstance(node, Symlink):
                return fail(errno.EINVAL)
            return SysResult(0, node.target)
        if call.name == "listxattr":
            return SysResult(0, dict(node.xattrs))
        raise ValueError(f"not a read syscall: {call.name}")

    def existing(self, root: Dir, parts: Parts) -> Node:
        """The view node at `parts`, or FsError(ENOENT/ENOTDIR)."""
        node = self.view_lookup(root, parts)
        if node is None:
            self.parent_of(root, parts)
            raise FsError(errno.ENOENT, join(parts))
        return node

    def parent_of(self, root: Dir, parts: Parts) -> Dir:
        """The view directory holding `parts`, or FsError(ENOENT/ENOTDIR)."""
        if not parts:
            raise FsError(errno.EBUSY, "/")
        parent = self.view_lookup(root, parts[:-1])
        if parent is None:
            for i in range(1, len(parts)):
                node = self.view_lookup(root, parts[:i])
                if node is None:
                    raise FsError(errno.ENOENT, join(parts[:i]))
                if not isinstance(node, Dir):
                    raise FsError(errno.ENOTDIR, join(parts[:i]))
        if not isinstance(parent, Dir):
            raise FsError(errno.ENOTDIR, join(parts[:-1]))
        return parent

    def check_view_syscall(self, root: Dir, call: Syscall) -> None:
        """POSIX errors every driver reports the same way, checked on the view.

        Raises FsError; driver-specific errors (EXDEV, ...) are the driver's business.
        """
        name, args = call.name, call.args
        if name in ("sync",):
            return
        parts = split(args[0]) if name != "symlink" else split(args[1])
        if name in ("create", "mkdir", "symlink"):
            self._check_absent(root, parts)
        elif name in ("write", "append", "truncate"):
            node = self.existing(root, parts)
            if isinstance(node, Dir):
                raise FsError(errno.EISDIR, join(parts))
            if not isinstance(node, File):
                raise FsError(errno.EINVAL, join(parts))
        elif name == "unlink":
            if isinstance(self.existing(root, parts), Dir):
                raise FsError(errno.EISDIR, join(parts))
        elif name == "rmdir":
            node = self.existing(root, parts)
            if not isinstance(node, Dir):
                raise FsError(errno.ENOTDIR, join(parts))
            if node.entries:
                raise FsError(errno.ENOTEMPTY, join(parts))
        elif name == "link":
            src = self.existing(root, parts)
            self._check_absent(root, split(args[1]))  # filename_create() before vfs_link()
            if isinstance(src, Dir):
                raise FsError(errno.EPERM, join(parts))
        elif name == "rename":
            self.check_rename_vfs(root, parts, split(args[1]), call.flags)
            if parts != split(args[1]):
                self.check_rename_target_empty(root, split(args[1]), call.flags)
        else:  # chmod, setxattr, removexattr, fsync, utimens, chown, fchown
            self.existing(root, parts)

    def _check_absent(self, root: Dir, parts: Parts) -> None:
        self.parent_of(root, parts)
        if self.view_lookup(root, parts) is not None:
            raise FsError(errno.EEXIST, join(parts))

    def check_rename_vfs(self, root: Dir, sp: Parts, dp: Parts, flags: str) -> None:
        """The checks the VFS makes (`do_renameat2`, `vfs_rename`) before a file system's
        rename runs, in the kernel's order."""
        src = self.existing(root, sp)
        self.parent_of(root, dp)
        dst = self.view_lookup(root, dp)
        if flags == "noreplace" and dst is not None:
            raise FsError(errno.EEXIST, join(dp))
        if flags == "exchange" and dst is None:
            raise FsError(errno.ENOENT, join(dp))
        if sp == dp:
            return
        if dp[: len(sp)] == sp:  # source is an ancestor of the target
            raise FsError(errno.EINVAL, join(dp))
        if sp[: len(dp)] == dp:  # target is an ancestor of the source
            raise FsError(errno.EINVAL if flags == "exchange" else errno.ENOTEMPTY, join(dp))
        if dst is None or flags == "exchange":
            return
        if isinstance(src, Dir) and not isinstance(dst, Dir):
            raise FsError(errno.ENOTDIR, join(dp))
        if not isinstance(src, Dir) and isinstance(dst, Dir):
            raise FsError(errno.EISDIR, join(dp))

    def check_rename_target_empty(self, root: Dir, dp: Parts, flags: str) -> None:
        """A rename may replace a directory only when it is empty (the file system's check)."""
        dst = self.view_lookup(root, dp)
        if flags != "exchange" and isinstance(dst, Dir) and dst.entries:
            raise FsError(errno.ENOTEMPTY, join(dp))


def _type_names(opt: Option) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", float: "a number"}
    return " or ".join(names.get(t, t.__name__) for t in opt.types)
