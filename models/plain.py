"""The `plain` driver: one ordinary file system, where every system call is one step.

It is the baseline: a violation that also shows up on `plain` comes from the workload
(e.g. `mv`'s copy fallback, or a multi-call `create`), not from a driver. A spec's
`[[layers]]` (and `[upper]`) are merged into plain's initial tree with overlay semantics,
so the same spec runs on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models import syscalls as sc
from models.driver import REMOUNT_OP, Driver, FileSystemMount, handles
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
from models.tree import Dir, File, Node, Parts, join, lookup, split
from models.union import union_view


class PlainMount(FileSystemMount):
    """One file system whose view is its backing tree: every call is one step."""

    LIFETIME = ()  # nothing but the counters lives only in memory

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any]) -> Dir:
        return union_view(list(reversed(layers)), upper)

    def identity_view(self) -> bool:
        return True  # models.capabilities.IdentityView

    def view(self, root: Dir) -> Dir:
        return root

    def view_lookup(self, root: Dir, parts: Parts) -> Node | None:
        return lookup(root, parts)

    def perform(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        self.check_call(log.root, call)
        return super().perform(call, log)

    @handles(sc.Create)
    def create(self, call: sc.Create, log: StepLog) -> None:
        uid, gid = self.new_owner(log.root, call)
        log.do(Create(call.path, call.mode, ino=self.next("ino", 1000), uid=uid, gid=gid))

    @handles(sc.Mkdir)
    def mkdir(self, call: sc.Mkdir, log: StepLog) -> None:
        uid, gid = self.new_owner(log.root, call)
        log.do(Mkdir(call.path, self.new_dir_mode(log.root, call), uid=uid, gid=gid))

    @handles(sc.Write)
    def write(self, call: sc.Write, log: StepLog) -> None:
        log.do(Write(call.path, call.data, 0, replace=True))

    def prepare_write(self, parts: Parts, log: StepLog, truncate: bool) -> None:
        if truncate:
            log.do(Truncate(join(parts), 0))

    @handles(sc.Pwrite)
    def pwrite(self, call: sc.Pwrite, log: StepLog) -> None:
        log.do(Write(call.path, call.data, call.offset))

    @handles(sc.Append)
    def append(self, call: sc.Append, log: StepLog) -> None:
        node = lookup(log.root, split(call.path))
        assert isinstance(node, File)
        log.do(Write(call.path, call.data, len(node.content)))

    @handles(sc.Truncate)
    def truncate(self, call: sc.Truncate, log: StepLog) -> None:
        log.do(Truncate(call.path, call.size))

    @handles(sc.Rmdir)
    def rmdir(self, call: sc.Rmdir, log: StepLog) -> None:
        log.do(Rmdir(call.path))

    @handles(sc.Unlink)
    def unlink(self, call: sc.Unlink, log: StepLog) -> None:
        log.do(Unlink(call.path))

    @handles(sc.Rename)
    def rename(self, call: sc.Rename, log: StepLog) -> None:
        if split(call.src) != split(call.dst):  # the VFS checked NOREPLACE already
            flags = sc.RenameFlags.NONE if call.flags is sc.RenameFlags.NOREPLACE else call.flags
            log.do(Rename(call.src, call.dst, flags))

    @handles(sc.Link)
    def link(self, call: sc.Link, log: StepLog) -> None:
        log.do(Link(call.src, call.dst, ino=self.next("ino", 1000)))

    @handles(sc.Symlink)
    def symlink(self, call: sc.Symlink, log: StepLog) -> None:
        uid, gid = self.new_owner(log.root, call)
        log.do(MakeSymlink(call.target, call.path, uid=uid, gid=gid))

    @handles(sc.Chmod)
    def chmod(self, call: sc.Chmod, log: StepLog) -> None:
        log.do(Chmod(call.path, call.mode))

    @handles(sc.SetXattr)
    def setxattr(self, call: sc.SetXattr, log: StepLog) -> None:
        log.do(SetXattr(call.path, call.xattr, call.value))

    @handles(sc.Fsync)
    def fsync(self, call: sc.Fsync, log: StepLog) -> None:
        log.do(Fsync(call.path))

    @handles(sc.Sync, sc.Syncfs)
    def sync(self, call: sc.Syscall, log: StepLog) -> None:
        log.do(Syncfs(""))

    @handles(sc.Remount)
    def remount(self, call: sc.Remount, log: StepLog) -> None:
        """umount syncs the file system; the mount changes nothing."""
        log.do(Syncfs(""))

    @handles(sc.Utimens, sc.LUtimens, sc.Chown, sc.FChown)
    def times_and_owner(self, call: sc.Syscall, log: StepLog) -> None:
        for step in self.attribute_steps(log.root, call, call.path):  # type: ignore[attr-defined]
            log.do(step)


class Plain(Driver):
    name = "plain"
    description = "one ordinary file system: rename(2) is one atomic step (the baseline)"
    layered = False
    OPTIONS = {}
    EXTRA_OPS = REMOUNT_OP
    MOUNT = PlainMount
