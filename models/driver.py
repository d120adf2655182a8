"""The driver interface: a `Driver` is its configuration, a `Mount` is one run of it.

A driver model is small (DESIGN section 2):

- `Driver(options)` holds only the resolved options, and `driver.mount(layers, upper,
  ops)` returns a fresh `Mount` for one workload: every memo, counter and cache lives
  there, so two mounts never share state;
- `mount.initial` is the backing tree before the workload;
- `mount.execute(call, log)` performs one system call (a `models.syscalls` value) on the
  user's view: path walk first, read-only calls answered from the view, then the
  handler of the call's type records the primitive steps it performs in `log` (a
  `StepLog`, which applies them one by one) and returns the result the caller sees;
- `mount.view(root)` is the tree a user sees for a backing tree;
- `mount.recover(root)` is what the next mount (or daemon start) does after a crash.

Handlers are methods marked `@handles(SyscallType, ...)`; the table is built from the
marks when the class is defined, and a subclass inherits and overrides entries. What a
driver can do beyond that (a symbolic view encoding, a kernel twin, store checks, scoped
ops) it declares by implementing the protocols of `models.capabilities`.

Drivers know nothing of crashes; the checker never looks inside a driver.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from models import syscalls as sc
from models import vfs
from models.clients import syscall
from models.errors import CrashcheckError
from models.steps import Chown as ChownStep
from models.steps import SetTimes, Step, StepLog, one_device
from models.tree import Dir, File, FsError, Node, Parts, split

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
    """A driver option: its accepted Python types, default and meaning (the meaning is
    what `crashcheck` documents; keep it one line)."""

    types: tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    normalize: Callable[[Any], Any] | None = None


class OptionError(CrashcheckError):
    """An option value is not acceptable; the message says what is."""


# --- handlers -------------------------------------------------------------------------

Handler = TypeVar("Handler", bound=Callable[..., Any])


def handles(*types: type[sc.Syscall]) -> Callable[[Handler], Handler]:
    """Mark a Mount method as the handler of these system call types."""

    def mark(fn: Handler) -> Handler:
        fn.__crashcheck_handles__ = types  # type: ignore[attr-defined]
        return fn

    return mark


# --- drivers and mounts ---------------------------------------------------------------


def _frozen(value: Any) -> Any:
    """A value of a mount's in-memory state as plain data: a tree by its digest, dicts
    and sets sorted."""
    if isinstance(value, Node):
        return value.digest
    if isinstance(value, dict):
        return sorted((repr(k), _frozen(v)) for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return sorted(repr(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_frozen(v) for v in value]
    return value


class Mount:
    """A mounted driver: the backing tree before the workload, and all the state of one
    run (memos, counters, caches). Subclasses implement `build` and `view`, mark their
    handlers with `@handles`, and may override `recover`, `device`, `lower_devices`."""

    HANDLERS: ClassVar[dict[type[sc.Syscall], str]] = {}  # call type -> method name
    # The attributes an op may change that live only in memory, besides `counters`: what
    # `fork` copies and `lifetime_key` names. None: not declared, and the mount cannot be
    # forked (incremental exploration then runs this driver's workloads from the start).
    LIFETIME: ClassVar[tuple[str, ...] | None] = None
    FORK_COPIES: ClassVar[tuple[str, ...]] = ()  # memos a fork copies but its key leaves out

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = dict(cls.HANDLERS)
        for attr, value in cls.__dict__.items():
            for kind in getattr(value, "__crashcheck_handles__", ()):
                table[kind] = attr
        cls.HANDLERS = table

    def __init__(self, driver: Driver, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> None:
        self.driver = driver
        self.options = driver.options
        self.counters: dict[str, int] = {}
        self.initial = self.build(layers, upper, ops)

    # -- to implement ----------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any]) -> Dir:
        """The backing tree before the workload (`ops` tells a driver whose initial
        state depends on the workload, e.g. an image a `pull` op will fetch)."""
        raise NotImplementedError

    def view(self, root: Dir) -> Dir:
        raise NotImplementedError

    def recover(self, root: Dir) -> Recovery:
        return Recovery(root)

    def clean_shutdown(self, root: Dir) -> Dir:
        """What a clean unmount or daemon stop leaves of `root` (no crash)."""
        return root

    def device(self, parts: Parts) -> str:
        return one_device(parts)

    def lower_devices(self) -> frozenset[str]:
        """Devices that hold read-only image layers (for `lower-immutable`)."""
        return frozenset()

    def accounting(self, trace: Any) -> dict[str, Any] | None:
        """Figures the report adds for this driver (e.g. storage before and after), or None."""
        return None

    # -- system calls ----------------------------------------------------------------

    def execute(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        """Resolve symlinks in the call's paths, answer read-only calls from the view, and
        let the handler of the call's type record its steps; any FsError is the result."""
        try:
            call = self.resolve_call(log.root, call)
            if call.READ_ONLY:
                return self.read(log.root, call)
            return self.perform(call, log)
        except FsError as e:
            return sc.fail(e.errno)

    def perform(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        """Check and perform one mutating system call (a handler raises FsError to fail)."""
        name = self.HANDLERS.get(type(call))
        if name is None:
            raise FsError(errno.ENOSYS, f"{self.driver.name} has no {call.NAME}")
        result: sc.SysResult | None = getattr(self, name)(call, log)
        return sc.OK if result is None else result

    def restart(self, root: Dir) -> Mount:
        """The driver started again on `root` (the backing store the next mount or daemon
        start finds, recovered): a new lifetime with nothing kept in memory but the
        counters, which go on, so names the driver makes stay fresh (as random ids do)."""
        again = copy.copy(self)
        again.counters = dict(self.counters)
        again.initial = root
        again.new_lifetime()
        return again

    def new_lifetime(self) -> None:
        """Forget what lives only in memory while the driver runs (mounted containers,
        a work dir's shared whiteout); content-keyed memos may stay."""

    def fork(self) -> Mount | None:
        """A twin of this mount that runs on independently (incremental exploration
        extends one workload prefix by many ops): shared trees, its own copy of the
        in-memory state, and empty memos (`forget_memos`: a memo keyed by digests may
        hold nodes of another tree with that digest, whose inode numbers differ). None
        when the driver does not declare that state (`LIFETIME`)."""
        if self.LIFETIME is None:
            return None
        twin = copy.copy(self)
        twin.counters = dict(self.counters)
        for name in self.LIFETIME + self.FORK_COPIES:
            value = getattr(self, name)
            if isinstance(value, (dict, set, list)):
                setattr(twin, name, copy.copy(value))
        twin.forget_memos()
        return twin

    def forget_memos(self) -> None:
        """Start this mount's content-keyed memos afresh (a fork's own)."""

    def lifetime_key(self) -> str:
        """The in-memory state an op's behaviour may depend on, as text: two mounts of one
        driver with equal keys over equal backing trees make the same steps."""
        assert self.LIFETIME is not None
        return repr((sorted(self.counters.items()), [_frozen(getattr(self, n)) for n in self.LIFETIME]))

    def next(self, counter: str, start: int = 1) -> int:
        """The next value of a named counter of this mount (temp names, inode numbers)."""
        value = self.counters.get(counter, start)
        self.counters[counter] = value + 1
        return value

    # -- the view through the VFS ---------------------------------------------------

    def view_lookup(self, root: Dir, parts: Parts) -> Node | None:
        """The node a user sees at `parts` (default: walk the full view)."""
        node: Node | None = self.view(root)
        for name in parts:
            if not isinstance(node, Dir):
                return None
            node = node.entries.get(name)
        return node

    def lookup_in(self, root: Dir) -> vfs.Lookup:
        return lambda parts: self.view_lookup(root, parts)

    def resolve_call(self, root: Dir, call: sc.Syscall) -> sc.Syscall:
        return vfs.resolve_call(self.lookup_in(root), call)

    def read(self, root: Dir, call: sc.Syscall) -> sc.SysResult:
        return vfs.read(self.lookup_in(root), call)

    def existing(self, root: Dir, parts: Parts) -> Node:
        return vfs.existing(self.lookup_in(root), parts)

    def check_call(self, root: Dir, call: sc.Syscall) -> None:
        """The POSIX errors of `models.vfs.check_call`, on this mount's view."""
        vfs.check_call(self.lookup_in(root), call)

    def check_rename(self, root: Dir, sp: Parts, dp: Parts, flags: sc.RenameFlags, user: int = 0) -> None:
        vfs.check_rename(self.lookup_in(root), sp, dp, flags, user)

    def check_rename_target_empty(self, root: Dir, dp: Parts, flags: sc.RenameFlags) -> None:
        vfs.check_rename_target_empty(self.lookup_in(root), dp, flags)


class FileSystemMount(Mount):
    """A mount whose view takes the file-system ops directly (plain, overlayfs, aufs):
    open(2) and the write on its descriptor through the subclass's own handlers and its
    `prepare_write`, and the owners, modes and times new entries and attribute changes
    get."""

    # -- open(2) ------------------------------------------------------------------------

    @handles(sc.Open)
    def open_file(self, call: sc.Open, log: StepLog) -> None:
        """open(2) and its optional write, through the driver's own handlers: a new file
        is `create`d; an existing regular file opened for writing or with O_TRUNC goes
        through `prepare_write` first; the data is a `pwrite` at 0 or an `append`."""
        outcome = vfs.check_open(self.lookup_in(log.root), call)
        if outcome == vfs.OPEN_CREATE:
            self.perform(sc.Create(call.path, call.mode, user=call.user), log)
        elif outcome in (vfs.OPEN_TRUNCATE, vfs.OPEN_WRITE):
            self.prepare_write(split(call.path), log, truncate=outcome == vfs.OPEN_TRUNCATE)
        if call.data is not None:
            self.write_fd(sc.WriteFd(call.path, call.data, call.appends, call.writable), log)

    @handles(sc.WriteFd)
    def write_fd(self, call: sc.WriteFd, log: StepLog) -> None:
        """write(2) on the descriptor of an open: the driver's `append` or `pwrite` at 0,
        as root (the open checked the caller's permission; the descriptor keeps it)."""
        if not call.writable:
            raise FsError(errno.EBADF, call.path)  # a read-only descriptor
        write = sc.Append(call.path, call.data) if call.append else sc.Pwrite(call.path, 0, call.data)
        self.perform(write, log)

    def prepare_write(self, parts: Parts, log: StepLog, truncate: bool) -> None:
        """What opening the existing regular file at `parts` for writing (or with O_TRUNC,
        which empties it) does before any write; a driver with layers copies it up."""
        raise NotImplementedError

    # -- owners and times ---------------------------------------------------------------

    def new_owner(self, root: Dir, call: sc.Syscall) -> tuple[int, int]:
        """(uid, gid) of an entry `call` creates (`inode_init_owner`): the caller's, with
        the group of a set-group-ID parent directory."""
        parent = self.view_lookup(root, split(call.path)[:-1])  # type: ignore[attr-defined]
        if isinstance(parent, Dir) and parent.mode & 0o2000:
            return call.user, parent.gid
        return call.user, call.user

    def new_dir_mode(self, root: Dir, call: sc.Mkdir) -> int:
        """A directory made in a set-group-ID directory is set-group-ID too."""
        parent = self.view_lookup(root, split(call.path)[:-1])
        return call.mode | 0o2000 if isinstance(parent, Dir) and parent.mode & 0o2000 else call.mode

    def attribute_steps(self, root: Dir, call: sc.Syscall, path: str) -> list[Step]:
        """The inode update of chown(2) or utimensat(2) at backing path `path`, or none
        when it changes nothing the model keeps (a chown to the same owner of a file
        without set-ID bits; a time on a directory, which is not modelled)."""
        node = self.view_lookup(root, split(call.path))  # type: ignore[attr-defined]
        if node is None:
            return []
        if isinstance(call, sc.Chown):
            uid = node.uid if call.uid is None else call.uid
            gid = node.gid if call.gid is None else call.gid
            mode = vfs.mode_after_chown(node)
            if (uid, gid) == node.owner and mode is None:
                return []
            return [ChownStep(path, uid, gid, mode)]
        if isinstance(call, sc.Utimens) and isinstance(node, File) and node.mtime != call.mtime:
            return [SetTimes(path, call.mtime)]
        return []


class Driver:
    """Base class of driver models: a name, options, and the Mount class that runs it.
    Subclasses set `name`, `OPTIONS` and `MOUNT`."""

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
    MOUNT: ClassVar[type[Mount]] = Mount

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = self.resolve_options(options or {})

    def mount(self, layers: list[Dir], upper: Dir | None = None, ops: Sequence[Any] = ()) -> Mount:
        """A fresh mount of the spec's layers for one workload."""
        return self.MOUNT(self, list(layers), upper, ops)

    def client(self, kind: str, args: Mapping[str, Any]) -> Any:
        """The client program (a generator of system calls) for one of EXTRA_OPS."""
        if kind == "remount":
            return syscall(sc.Remount(rotate=bool(args.get("rotate", False))))
        return None

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


#: the op of drivers that can be unmounted and mounted again mid-workload
REMOUNT_OP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {"remount": ((), ())}
#: overlayfs's remount may also rotate the upper layer into the lower stack
ROTATING_REMOUNT_OP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {"remount": ((), ("rotate",))}


def _type_names(opt: Option) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", float: "a number"}
    return " or ".join(names.get(t, t.__name__) for t in opt.types)


def path_of(call: sc.Syscall) -> Parts:
    """The split `path` argument of a call that has one."""
    return split(call.path)  # type: ignore[attr-defined]
