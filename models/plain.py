"""The `plain` driver: one ordinary file system, where every system call is one step.

It is the baseline: a violation that also shows up on `plain` comes from the workload
(e.g. `mv`'s copy fallback, or a multi-call `create`), not from a driver. A spec's
`[[layers]]` (and `[upper]`) are merged into plain's initial tree with overlay semantics,
so the same spec runs on both.
"""

from __future__ import annotations

from models.driver import OK, Driver, Session, Syscall, SysResult
from models.steps import (
    Chmod,
    Create,
    Fsync,
    Link,
    MakeSymlink,
    Mkdir,
    Rename,
    Rmdir,
    SetXattr,
    StepLog,
    Syncfs,
    Truncate,
    Unlink,
    Write,
)
from models.tree import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, Dir, File, Node, Parts, lookup, split
from models.union import union_view


class Plain(Driver):
    name = "plain"
    description = "one ordinary file system: rename(2) is one atomic step (the baseline)"
    layered = False
    OPTIONS = {}

    def mount(self, layers: list[Dir], upper: Dir | None) -> Dir:
        return union_view(list(reversed(layers)), upper)

    def view(self, root: Dir) -> Dir:
        return root

    def view_lookup(self, root: Dir, parts: Parts) -> Node | None:
        return lookup(root, parts)

    def perform(self, session: Session, call: Syscall, log: StepLog) -> SysResult:
        self.check_view_syscall(log.root, call)
        self._perform(session, call, log)
        return OK

    def _perform(self, s: Session, call: Syscall, log: StepLog) -> None:
        name, a = call.name, call.args
        if name == "create":
            log.do(Create(a[0], a[1] if len(a) > 1 else DEFAULT_FILE_MODE, ino=s.next("ino", 1000)))
        elif name == "mkdir":
            log.do(Mkdir(a[0], a[1] if len(a) > 1 else DEFAULT_DIR_MODE))
        elif name == "write":
            log.do(Write(a[0], a[1], 0, replace=True))
        elif name == "append":
            node = lookup(log.root, split(a[0]))
            assert isinstance(node, File)
            log.do(Write(a[0], a[1], len(node.content)))
        elif name == "truncate":
            log.do(Truncate(a[0], a[1]))
        elif name == "rmdir":
            log.do(Rmdir(a[0]))
        elif name == "unlink":
            log.do(Unlink(a[0]))
        elif name == "rename":
            if split(a[0]) != split(a[1]):
                log.do(Rename(a[0], a[1], "" if call.flags == "noreplace" else call.flags))
        elif name == "link":
            log.do(Link(a[0], a[1], ino=s.next("ino", 1000)))
        elif name == "symlink":
            log.do(MakeSymlink(a[0], a[1]))
        elif name == "chmod":
            log.do(Chmod(a[0], a[1]))
        elif name == "setxattr":
            log.do(SetXattr(a[0], a[1], a[2]))
        elif name == "fsync":
            log.do(Fsync(a[0]))
        elif name == "sync":
            log.do(Syncfs(""))
        elif name in ("utimens", "chown", "fchown"):
            pass  # times and owners are not modelled
        else:
            raise ValueError(f"plain: unsupported syscall {name}")
