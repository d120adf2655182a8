"""aufs (aufs-standalone) as a driver model.

Branches: the read-only lower layers `lower0` (bottom) .. `lowerN-1` (top) and the
writable branch `rw`, each its own file system. aufs keeps its bookkeeping inside the
branches, as files with reserved names that users never see:

- a whiteout is `.wh.<name>`, a hard link to the branch's `.wh..wh.aufs`;
- an opaque directory holds `.wh..wh..opq`, also a hard link to the whiteout base
  (`link_or_create_wh` in whout.c: a new empty file only when there is no base);
- temporary names are `.wh..wh.<name>.<hex>`;
- with `dirren`, a renamed directory records its old name in `.wh..wh.hinfo`.

Operations are sequences of unjournaled steps with no fsync (design docs):

- copy-up: parent directories first (mkdir on `rw`), then the file through a temp
  `.wh..wh.<name>.<hex>` in the same directory: create, copy, attributes, rename;
- unlink of a name that exists below: the whiteout first, then the file on `rw`; a crash
  in between leaves both on one branch, and lookup fails with EIO;
- rmdir (`aufs_rmdir`, aufs-standalone 2d0a17c): the whiteout first if the name exists
  below, then rename the directory to a temp name (`renwh_and_rmdir`, `au_whtmp_ren`),
  remove the children, then the directory; a crash after the whiteout leaves the name and
  its whiteout on one branch (EIO);
- create or mkdir over a whiteout: create (mkdir adds the opaque marker), then unlink the
  whiteout;
- rename of a file (`aufs_rename`, `do_rename`): copy up, whiteout the source if it exists
  below (while the copy still has its name: EIO until the rename), rename on `rw`, then
  remove a whiteout left at the target; of a directory: EXDEV unless `dirren`.

Recovery is nothing: aufs has no journal and no mount-time clean-up; leftover temp names
stay hidden.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from models import syscalls as sc
from models.driver import REMOUNT_OP, Driver, FileSystemMount, Option, handles
from models.format import OPAQUE as OPAQUE_XATTR
from models.steps import (
    Chmod,
    CopyData,
    Create,
    Fsync,
    Link,
    MakeSymlink,
    Mkdir,
    Rename,
    Rmdir,
    SetTimes,
    SetXattr,
    StepLog,
    Syncfs,
    Truncate,
    Unlink,
    Write,
)
from models.steps import Chown as ChownStep
from models.syscalls import RenameFlags
from models.tree import (
    Dir,
    ErrorEntry,
    File,
    FsError,
    Node,
    Parts,
    Symlink,
    Whiteout,
    join,
    lookup,
    split,
    walk,
)
from models.union import MERGE_MEMO

RW: Parts = ("rw",)
WH = ".wh."
WH_BASE = ".wh..wh.aufs"
OPAQUE = ".wh..wh..opq"
HINFO = ".wh..wh.hinfo"
WH_MODE = 0o444  # aufs whiteouts are read-only empty files


def whiteout_name(name: str) -> str:
    return WH + name


def to_branch(tree: Dir) -> Dir:
    """A spec layer (whiteouts as devices, opaque as an xattr) the way aufs stores it."""

    def convert(node: Dir) -> Dir:
        entries: dict[str, Node] = {}
        for name, child in node.entries.items():
            if isinstance(child, Whiteout):
                entries[whiteout_name(name)] = File(b"", WH_MODE)
            elif isinstance(child, Dir):
                entries[name] = convert(child)
            else:
                entries[name] = child
        xattrs = tuple((k, v) for k, v in node.xattrs if k != OPAQUE_XATTR)
        if node.xattr(OPAQUE_XATTR) == b"y":
            entries[OPAQUE] = File(b"", WH_MODE)
        return Dir(entries, node.mode, xattrs, uid=node.uid, gid=node.gid)

    return convert(tree)


class AufsMount(FileSystemMount):
    """One aufs mount: the branches, and the merge memo of this run."""

    # -- layout and view ---------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        self._memo: dict[tuple[bytes, ...], Node] = {}
        self.lower_names = [f"lower{i}" for i in range(len(layers))]
        entries: dict[str, Node] = {
            n: to_branch(layer) for n, layer in zip(self.lower_names, layers, strict=True)
        }
        rw = to_branch(upper) if upper is not None else Dir()
        if WH_BASE not in rw.entries:
            rw = rw.with_child(WH_BASE, File(b"", WH_MODE))
        entries["rw"] = rw
        return Dir(entries)

    def device(self, parts: Parts) -> str:
        return parts[0] if parts else "rw"

    def lower_devices(self) -> frozenset[str]:
        return frozenset(self.lower_names)

    def _stack(self, root: Dir) -> tuple[tuple[int, Dir], ...]:
        """The branches, top first: rw is 0."""
        rw = root.entries["rw"]
        assert isinstance(rw, Dir)
        lowers = [root.entries[n] for n in reversed(self.lower_names)]
        return ((0, rw),) + tuple((i + 1, d) for i, d in enumerate(lowers) if isinstance(d, Dir))

    def view(self, root: Dir) -> Dir:
        merged = self._merge(self._stack(root))
        assert isinstance(merged, Dir)
        return merged

    def _lookup(self, stack: tuple[tuple[int, Dir], ...], name: str) -> list[tuple[int, Node]] | ErrorEntry:
        """The branches that hold `name` under a merged directory (top first)."""
        frames: list[tuple[int, Node]] = []
        look = name
        for branch, d in stack:
            has = look in d.entries
            if has and whiteout_name(look) in d.entries:
                return ErrorEntry(errno.EIO)
            if has:
                child = d.entries[look]
                if frames and not isinstance(child, Dir):
                    break  # a non-directory below a directory is ignored, and ends the search
                frames.append((branch, child))
                if not isinstance(child, Dir) or OPAQUE in child.entries:
                    break
                info = child.entries.get(HINFO)
                if isinstance(info, File) and info.content:
                    look = info.content.decode()  # dirren: lower branches hold the old name
            if whiteout_name(look) in d.entries:
                break
        return frames

    def _merge(self, stack: tuple[tuple[int, Dir], ...]) -> Node:
        key = tuple(d.digest for _, d in stack) + tuple(bytes([b]) for b, _ in stack)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        top = stack[0][1]
        names: set[str] = set()
        for _, d in stack:
            names.update(n for n in d.entries if not n.startswith(WH))
        entries: dict[str, Node] = {}
        for name in sorted(names):
            found = self._lookup(stack, name)
            if isinstance(found, ErrorEntry):
                entries[name] = found
            elif found:
                node = found[0][1]
                if isinstance(node, Dir):
                    entries[name] = self._merge(tuple((b, d) for b, d in found if isinstance(d, Dir)))
                elif isinstance(node, File):
                    entries[name] = File(node.content, node.mode, node.xattrs, uid=node.uid,
                                         gid=node.gid, mtime=node.mtime)
                else:
                    entries[name] = node
        merged = Dir(entries, top.mode, top.xattrs, uid=top.uid, gid=top.gid)
        if len(self._memo) >= MERGE_MEMO:
            self._memo.clear()
        self._memo[key] = merged
        return merged

    def _frames(self, root: Dir, parts: Parts) -> list[tuple[int, Node]]:
        """The branches holding a merged path (top first); [] when it does not exist."""
        stack = self._stack(root)
        frames: list[tuple[int, Node]] = [(b, d) for b, d in stack]
        for name in parts:
            dirs = tuple((b, d) for b, d in frames if isinstance(d, Dir))
            if not dirs:
                return []
            found = self._lookup(dirs, name)
            if isinstance(found, ErrorEntry) or not found:
                return []
            frames = found
        return frames

    def _in_rw(self, root: Dir, parts: Parts) -> Node | None:
        return lookup(root, RW + parts)

    def _lower_positive(self, root: Dir, parts: Parts) -> bool:
        """Does a lower branch show this name (under the merged parent)?"""
        parent = self._frames(root, parts[:-1]) if parts[:-1] else list(self._stack(root))
        lowers = tuple((b, d) for b, d in parent if b > 0 and isinstance(d, Dir))
        if not lowers:
            return False
        found = self._lookup(lowers, parts[-1])
        return bool(found) and not isinstance(found, ErrorEntry)

    # -- system calls ------------------------------------------------------------------

    def perform(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        if not isinstance(call, sc.Rename):
            self.check_call(log.root, call)  # aufs_rename checks in its own order
        return super().perform(call, log)

    @handles(sc.Rename)
    def rename(self, call: sc.Rename, log: StepLog) -> None:
        self._rename(log, split(call.src), split(call.dst), call.flags, call.user)

    def _temp(self, parts: Parts) -> str:
        return join(RW + parts[:-1] + (f".wh..wh.{parts[-1]}.{self.next('temp'):04x}",))

    def copy_up(self, log: StepLog, parts: Parts, truncate: bool = False) -> None:
        """Copy `parts` and its missing ancestors to rw (ancestors first); with
        `truncate` (an O_TRUNC open: `au_cpup` of length 0) the file without its data."""
        for depth in range(1, len(parts) + 1):
            here = parts[:depth]
            if self._in_rw(log.root, here) is not None:
                continue
            frames = self._frames(log.root, here)
            if not frames:
                raise FsError(errno.ENOENT, join(here))
            node = frames[0][1]
            target = join(RW + here)
            if isinstance(node, Dir):
                log.do(Mkdir(target, node.mode))
                for k, v in node.xattrs:
                    log.do(SetXattr(target, k, v))
                self._copy_attrs(log, target, node)
                continue
            temp = self._temp(here)
            if isinstance(node, File):
                log.do(Create(temp, node.mode, ino=self.next("ino", 1000)))
                if node.content and not (truncate and here == parts):
                    src = self.lower_names[len(self.lower_names) - frames[0][0]]
                    log.do(CopyData(join((src,) + here), temp))
            elif isinstance(node, Symlink):
                log.do(MakeSymlink(node.target, temp))
            for k, v in node.xattrs:
                log.do(SetXattr(temp, k, v))
            self._copy_attrs(log, temp, node)
            log.do(Rename(temp, target))

    def _copy_attrs(self, log: StepLog, path: str, node: Node) -> None:
        """`au_cpup_attr_all`: owner and times of the copy (mode came with its creation);
        nothing when the new inode already has them."""
        if node.uid or node.gid:
            log.do(ChownStep(path, node.uid, node.gid))
        if node.mtime is not None:
            log.do(SetTimes(path, node.mtime))

    def _whiteout(self, log: StepLog, parts: Parts) -> None:
        self._make_whiteout(log, RW + parts[:-1] + (whiteout_name(parts[-1]),))

    def _drop_whiteout(self, log: StepLog, parts: Parts) -> None:
        wh = RW + parts[:-1] + (whiteout_name(parts[-1]),)
        if lookup(log.root, wh) is not None:
            log.do(Unlink(join(wh)))

    def _add(self, log: StepLog, parts: Parts, make: object, is_dir: bool = False) -> None:
        """Create an entry on rw (copying the parent up), then the opaque marker for a
        directory over a whiteout, then remove the whiteout (the add_simple epilogue)."""
        self.copy_up(log, parts[:-1])
        over_whiteout = lookup(log.root, RW + parts[:-1] + (whiteout_name(parts[-1]),)) is not None
        log.do(make)  # type: ignore[arg-type]
        if is_dir and over_whiteout:
            self._make_whiteout(log, RW + parts + (OPAQUE,))
        self._drop_whiteout(log, parts)

    def _make_whiteout(self, log: StepLog, at: Parts) -> None:
        """`link_or_create_wh` (whout.c): a whiteout or the opaque marker is a hard link
        of the branch's whiteout base when there is one, else a new empty file."""
        if lookup(log.root, RW + (WH_BASE,)) is not None:
            log.do(Link(join(RW + (WH_BASE,)), join(at)))
        else:
            log.do(Create(join(at), WH_MODE, ino=self.next("ino", 1000)))

    @handles(sc.Create)
    def create(self, call: sc.Create, log: StepLog) -> None:
        parts = split(call.path)
        uid, gid = self.new_owner(log.root, call)
        made = Create(join(RW + parts), call.mode, ino=self.next("ino", 1000), uid=uid, gid=gid)
        self._add(log, parts, made)

    @handles(sc.Mkdir)
    def mkdir(self, call: sc.Mkdir, log: StepLog) -> None:
        parts = split(call.path)
        uid, gid = self.new_owner(log.root, call)
        mode = self.new_dir_mode(log.root, call)
        self._add(log, parts, Mkdir(join(RW + parts), mode, uid=uid, gid=gid), is_dir=True)

    @handles(sc.Symlink)
    def symlink(self, call: sc.Symlink, log: StepLog) -> None:
        parts = split(call.path)
        uid, gid = self.new_owner(log.root, call)
        self._add(log, parts, MakeSymlink(call.target, join(RW + parts), uid=uid, gid=gid))

    @handles(sc.Link)
    def link(self, call: sc.Link, log: StepLog) -> None:
        old, new = split(call.src), split(call.dst)
        self.copy_up(log, old)
        self._add(log, new, Link(join(RW + old), join(RW + new), ino=self.next("ino", 1000)))

    @handles(sc.Write)
    def write(self, call: sc.Write, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        log.do(Write(join(RW + parts), call.data, 0, replace=True))

    def prepare_write(self, parts: Parts, log: StepLog, truncate: bool) -> None:
        self.copy_up(log, parts, truncate=truncate)
        if truncate:
            log.do(Truncate(join(RW + parts), 0))

    @handles(sc.Pwrite)
    def pwrite(self, call: sc.Pwrite, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        log.do(Write(join(RW + parts), call.data, call.offset))

    @handles(sc.Append)
    def append(self, call: sc.Append, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        node = lookup(log.root, RW + parts)
        assert isinstance(node, File)
        log.do(Write(join(RW + parts), call.data, len(node.content)))

    @handles(sc.Truncate)
    def truncate(self, call: sc.Truncate, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        log.do(Truncate(join(RW + parts), call.size))

    @handles(sc.Chmod)
    def chmod(self, call: sc.Chmod, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        log.do(Chmod(join(RW + parts), call.mode))

    @handles(sc.SetXattr)
    def setxattr(self, call: sc.SetXattr, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        log.do(SetXattr(join(RW + parts), call.xattr, call.value))

    @handles(sc.Utimens, sc.LUtimens, sc.Chown, sc.FChown)
    def times_and_owner(self, call: sc.Utimens | sc.Chown, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        for step in self.attribute_steps(log.root, call, join(RW + parts)):
            log.do(step)

    @handles(sc.Fsync)
    def fsync(self, call: sc.Fsync, log: StepLog) -> None:
        parts = split(call.path)
        if self._in_rw(log.root, parts) is not None:
            log.do(Fsync(join(RW + parts)))

    @handles(sc.Sync, sc.Syncfs)
    def sync(self, call: sc.Syscall, log: StepLog) -> None:
        log.do(Syncfs("rw"))

    @handles(sc.Remount)
    def remount(self, call: sc.Remount, log: StepLog) -> None:
        """umount syncs the rw branch; aufs keeps nothing to clean at mount."""
        log.do(Syncfs("rw"))

    @handles(sc.Unlink)
    def unlink(self, call: sc.Unlink, log: StepLog) -> None:
        parts = split(call.path)
        below = self._lower_positive(log.root, parts)
        self.copy_up(log, parts[:-1])
        if below:
            self._whiteout(log, parts)  # first the whiteout...
        if self._in_rw(log.root, parts) is not None:
            log.do(Unlink(join(RW + parts)))  # ...then the file: EIO in between

    @handles(sc.Rmdir)
    def rmdir(self, call: sc.Rmdir, log: StepLog) -> None:
        parts = split(call.path)
        below = self._lower_positive(log.root, parts)
        self.copy_up(log, parts[:-1])
        node = self._in_rw(log.root, parts)
        temp = None
        if below:
            self._whiteout(log, parts)  # aufs_rmdir: the whiteout first (au_wh_create)
        if isinstance(node, Dir):
            temp = self._temp(parts)
            log.do(Rename(join(RW + parts), temp))  # then renwh_and_rmdir: au_whtmp_ren
        if temp is not None:
            tree = lookup(log.root, split(temp))
            assert isinstance(tree, Dir)
            for sub, child in sorted(walk(tree, split(temp)), key=lambda pc: -len(pc[0])):
                if sub == split(temp):
                    continue
                log.do(Rmdir(join(sub)) if isinstance(child, Dir) else Unlink(join(sub)))
            log.do(Rmdir(temp))

    def _rename(self, log: StepLog, old: Parts, new: Parts, flags: RenameFlags, user: int = 0) -> None:
        self.check_rename(log.root, old, new, flags, user)
        if old == new:
            return
        src = self.view_lookup(log.root, old)
        if isinstance(src, Dir) and not self.options["dirren"]:
            raise FsError(errno.EXDEV, join(old))
        self.check_rename_target_empty(log.root, new, flags)
        below = self._lower_positive(log.root, old)
        self.copy_up(log, old)
        self.copy_up(log, new[:-1])
        dst = self._in_rw(log.root, new)
        if isinstance(dst, Dir):
            log.do(Rmdir(join(RW + new))) if not dst.entries else None
        if below:
            # do_rename: the source's whiteout first (au_wh_create), while the source is
            # still on rw: a crash here leaves a name and its whiteout on one branch (EIO)
            self._whiteout(log, old)
        log.do(Rename(join(RW + old), join(RW + new)))
        if isinstance(src, Dir) and below:
            info = join(RW + new + (HINFO,))
            if lookup(log.root, split(info)) is None:
                log.do(Create(info, WH_MODE, ino=self.next("ino", 1000)))
                log.do(Write(info, old[-1].encode(), 0, replace=True))
        self._drop_whiteout(log, new)


class Aufs(Driver):
    name = "aufs"
    description = "aufs: .wh. whiteout files, copy-up through temp names, no journal"
    layered = True
    EXTRA_OPS = REMOUNT_OP
    OPTIONS = {
        "dirren": Option((bool,), False, "rename directories (recording the old name) instead of EXDEV"),
    }
    MOUNT = AufsMount
