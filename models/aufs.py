"""aufs (aufs-standalone) as a driver model.

Read step for step against aufs-standalone (branch aufs6.x-rcN, commit 2d0a17c; aufs5
has the same orders for rename, rmdir and copy-up): cpup.c, i_op_ren.c, i_op_del.c,
i_op_add.c, whout.c, dirren.c, plink.c, dentry.c. aufs cannot run on this machine, so
the model is only as good as that reading; `crashcheck conform` has no aufs twin.

Branches: the read-only lower layers `lower0` (bottom) .. `lowerN-1` (top) and the
writable branch `rw`, each its own file system. aufs keeps its bookkeeping inside the
branches, as files with reserved names that users never see:

- a whiteout is `.wh.<name>`, a hard link to the branch's `.wh..wh.aufs`;
- an opaque directory holds `.wh..wh..opq`, also a hard link to the whiteout base
  (`link_or_create_wh` in whout.c: a new empty file only when there is no base);
- temporary names are `.wh..wh.<name>.<hex>`;
- with `plink` (the default), `.wh..wh.plnk/` holds pseudo-links (`au_wh_init_rw`);
- with `dirren`, a renamed directory's copy on rw records its old name for each lower
  branch in `.wh..wh..dr.<branch>`, and `.wh..wh.hino` at rw's root lists the renamed
  directories (written at umount only).

Operations are sequences of unjournaled steps with no fsync:

- copy-up (`au_cpup_dirs`, `au_cpup_simple`, `au_cpup_single`, `cpup_entry`,
  `cpup_iattr`, `au_do_ren_after_cpup`): parent directories first, then the entry, each
  through a temp `.wh..wh.<name>.<hex>` in the same directory: mkdir (with the lower
  mode), or create 0600 and copy the data, or symlink; then mode, owner and times (one
  notify_change), then xattrs, then rename to the name;
- unlink of a name that exists below: the whiteout first, then the file on `rw`; a crash
  in between leaves both on one branch;
- rmdir (`aufs_rmdir`): the whiteout first if the name exists below, then rename the
  directory to a temp name (`renwh_and_rmdir`, `au_whtmp_ren`), remove the children, then
  the directory;
- create or mkdir over a whiteout: create (mkdir adds the opaque marker), then unlink the
  whiteout;
- link (`aufs_link`): with plink a source only below is copied up under the new name in
  place and kept as a pseudo-link (`au_cpup_or_link`, `au_plink_append`); with noplink
  the source is copied up and linked (`au_cpup_before_link`);
- rename (`aufs_rename`, `do_rename`): a directory whose lower branch holds children is
  EXDEV unless `dirren` (`may_rename_srcdir`); the target's parent is copied up, then the
  source; dirren's records (`au_dr_rename`); the source's whiteout if it exists below;
  a target directory moved to a temp name; the rename; the opaque marker when the new
  name exists below or over a whiteout (`au_ren_diropq`, not with dirren); the target's
  whiteout removed; the temp directory removed.

Lookup (`au_do_lookup`): a whiteout on a branch that takes them (rw, and lower branches
mounted `ro+wh` as Docker mounts them: `au_br_whable`) ends the search; a name beside its
own whiteout is EIO on the first branch searched unless `udba=none`, and deleted below.
Recovery: aufs has no journal and cleans nothing at mount; leftover temp names stay
hidden. dirren's list is loaded at mount, and a renamed directory missing from it (its
rename was after the last clean umount) is looked up by its new name only: the model
drops its records, since aufs never reads them again.

Not modelled (documented limits): the in-memory pseudo-link of plink (a change through
one name of a linked pair shows through the other while aufs is mounted), the xino
files, asynchronous removal of large temp directories, and udba=notify's inotify.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from models import syscalls as sc
from models.driver import REMOUNT_OP, Driver, FileSystemMount, Option, Recovery, handles
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
    remove_subtree,
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
    identity,
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
DR_INFO = ".wh..wh..dr."  # + the lower branch: dirren's record of a renamed dir's old name
HINO = ".wh..wh.hino"  # dirren's list of renamed directories, at the rw branch's root
PLNK = ".wh..wh.plnk"  # plink's pseudo-link dir, at the rw branch's root
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

    LIFETIME = ()  # nothing but the counters lives only in memory

    def forget_memos(self) -> None:
        self._memo = {}

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
        if self.options["plink"] and PLNK not in rw.entries:
            rw = rw.with_child(PLNK, Dir(mode=0o700))  # au_wh_init_rw: the pseudo-link dir
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
        """The branches that hold `name` under a merged directory (top first): `au_do_lookup`
        per branch. A whiteout on a branch that takes them (rw, or a lower branch mounted
        `ro+wh`, `au_br_whable`) ends the search; a name beside its own whiteout is EIO on
        the first branch searched (udba other than none), and deleted below. With dirren
        the lower branches are searched by the old name their record gives
        (`au_dr_lkup_name`)."""
        frames: list[tuple[int, Node]] = []
        renamed: dict[int, str] = {}
        for i, (branch, d) in enumerate(stack):
            look = renamed.get(branch, name)
            whable = branch == 0 or self.options["lower_whiteouts"]
            if whable and whiteout_name(look) in d.entries:
                if look in d.entries and i == 0 and self.options["udba"] != "none":
                    return ErrorEntry(errno.EIO)
                break
            child = d.entries.get(look)
            if child is None:
                continue
            if frames and not isinstance(child, Dir):
                break  # a non-directory below a directory is ignored, and ends the search
            frames.append((branch, child))
            if not isinstance(child, Dir) or OPAQUE in child.entries:
                break
            if len(frames) == 1 and self.options["dirren"]:
                renamed = self._old_names(child)
        return frames

    def _old_names(self, d: Dir) -> dict[int, str]:
        """dirren: the old name of a renamed directory on each lower branch, from the
        records (`.wh..wh..dr.<branch>`) in its copy on rw."""
        out: dict[int, str] = {}
        for i, lower in enumerate(self.lower_names):
            info = d.entries.get(DR_INFO + lower)
            if isinstance(info, File) and b":" in info.content:
                out[len(self.lower_names) - i] = info.content.split(b":", 1)[1].decode()
        return out

    def _merge(self, stack: tuple[tuple[int, Dir], ...]) -> Node:
        key = tuple(identity(d) for _, d in stack) + tuple(bytes([b]) for b, _ in stack)
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
            temp = self._temp(here)  # au_cpup_simple: au_lkup_neg(..., wh=1), a temp name
            self._cpup_entry(log, frames, here, temp, data=not (truncate and here == parts))
            log.do(Rename(temp, join(RW + here)))  # au_do_ren_after_cpup

    def _cpup_entry(self, log: StepLog, frames: list[tuple[int, Node]], src: Parts, dest: str,
                    data: bool = True, ino: int | None = None) -> None:
        """`cpup_entry`, then `cpup_iattr`: the topmost of `frames` made at `dest` (a dir
        with the lower mode, a file 0600 filled with its data unless `data` is false, a
        symlink), then its mode, owner and times, then its xattrs (`au_cpup_xattr`)."""
        node = frames[0][1]
        made = 0o600  # cpup_entry: vfsub_create(h_dir, &h_path, 0600)
        if isinstance(node, Dir):
            made = node.mode
            log.do(Mkdir(dest, node.mode))
        elif isinstance(node, File):
            log.do(Create(dest, 0o600, ino=self.next("ino", 1000) if ino is None else ino))
            if node.content and data:
                branch = self.lower_names[len(self.lower_names) - frames[0][0]]
                log.do(CopyData(join((branch,) + src), dest))
        elif isinstance(node, Symlink):
            log.do(MakeSymlink(node.target, dest))
        self._copy_attrs(log, dest, node, made)
        for k, v in node.xattrs:
            log.do(SetXattr(dest, k, v))

    def _copy_attrs(self, log: StepLog, path: str, node: Node, made: int) -> None:
        """`cpup_iattr`: mode (a file is made 0600), owner and times of the copy in one
        notify_change; nothing when the new inode already has them."""
        if not isinstance(node, Symlink) and node.mode != made:
            log.do(Chmod(path, node.mode))
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
        """`aufs_link`: with plink (the default) a source only below is copied up under
        the new name itself and kept as a pseudo-link (`au_cpup_or_link`); without it,
        or for a source on rw, the source is copied up and linked (`au_cpup_before_link`)."""
        old, new = split(call.src), split(call.dst)
        if self.options["plink"] and self._in_rw(log.root, old) is None:
            self.copy_up(log, new[:-1])
            self._copy_as(log, old, new)
            self._drop_whiteout(log, new)
            return
        self.copy_up(log, old)
        self._add(log, new, Link(join(RW + old), join(RW + new), ino=self.next("ino", 1000)))

    def _copy_as(self, log: StepLog, old: Parts, new: Parts) -> None:
        """`au_cpup_or_link` with plink: `au_sio_cpup_single` of the source to the new
        name in place (no temp name: a crash leaves the new name half made), then
        `au_plink_append`: a hard link in `.wh..wh.plnk/<ino>.<hino>` (`whplink`). The
        pseudo-link ties the two names into one inode while aufs is mounted; the model
        does not follow that tie (a change through one name shows only there), and the
        next mount forgets it too."""
        target = join(RW + new)
        ino = self.next("ino", 1000)
        self._cpup_entry(log, self._frames(log.root, old), old, target, ino=ino)
        if lookup(log.root, RW + (PLNK,)) is not None:
            log.do(Link(target, join(RW + (PLNK, f"{self.next('ino', 1000)}.{ino}"))))

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
        """umount writes dirren's list of renamed directories, then syncs the rw branch;
        aufs keeps nothing to clean at mount."""
        if self.options["dirren"]:
            self._flush_renamed(log)
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
            self._remove_tree(log, temp)

    def _rename(self, log: StepLog, old: Parts, new: Parts, flags: RenameFlags, user: int = 0) -> None:
        """`aufs_rename` (i_op_ren.c): may the directory move (`may_rename_srcdir`), the
        target's parent copied up, then the source (`au_sio_cpup_simple`), dirren's
        records (`au_dr_rename`), then `do_rename`: the source's whiteout, a target
        directory moved to a temp name (`au_whtmp_ren`), the rename, the opaque marker
        (`au_ren_diropq`), the target's whiteout removed, the temp directory removed."""
        self.check_rename(log.root, old, new, flags, user)
        if old == new:
            return
        src = self.view_lookup(log.root, old)
        is_dir = isinstance(src, Dir)
        dirren = is_dir and self.options["dirren"]
        if is_dir and not dirren and not self._may_rename_srcdir(log.root, old):
            raise FsError(errno.EXDEV, join(old))  # "renaming dir who has child(ren) on multiple branches"
        self.check_rename_target_empty(log.root, new, flags)
        below = self._lower_positive(log.root, old)
        lower_names = self._lower_names(log.root, old) if dirren else {}
        dst_below = bool(self._frames(log.root, new)) and any(b > 0 for b, _ in self._frames(log.root, new))
        self.copy_up(log, new[:-1])  # "prepare the writable parent dir on the same branch"
        self.copy_up(log, old)
        if dirren and lower_names:
            self._store_old_names(log, old, new[-1], lower_names)
        if below:
            # do_rename: the source's whiteout first (au_wh_create), while the source is
            # still on rw: a crash here leaves a name and its whiteout on one branch (EIO)
            self._whiteout(log, old)
        dst = self._in_rw(log.root, new)
        whtmp = None
        if isinstance(dst, Dir):
            whtmp = self._temp(new)
            log.do(Rename(join(RW + new), whtmp))  # au_whtmp_ren
        dst_wh = lookup(log.root, RW + new[:-1] + (whiteout_name(new[-1]),)) is not None
        log.do(Rename(join(RW + old), join(RW + new)))
        moved = self._in_rw(log.root, new)
        if (is_dir and not dirren and isinstance(moved, Dir) and OPAQUE not in moved.entries
                and (dst_wh or dst_below)):
            self._make_whiteout(log, RW + new + (OPAQUE,))  # au_ren_diropq: hide the lowers
        self._drop_whiteout(log, new)
        if whtmp is not None:
            self._remove_tree(log, whtmp)  # au_ren_del_whtmp

    def _may_rename_srcdir(self, root: Dir, parts: Parts) -> bool:
        """`may_rename_srcdir`: a directory not on rw moves only when it is logically
        empty; one on rw and below only when no lower branch holds children (whiteouts
        included); one only on rw always."""
        frames = self._frames(root, parts)
        if not frames or frames[0][0] != 0:
            node = self.view_lookup(root, parts)
            return isinstance(node, Dir) and not node.entries
        return all(not any(not n.startswith(".wh..wh.") for n in d.entries)
                   for _, d in frames[1:] if isinstance(d, Dir))

    def _lower_names(self, root: Dir, parts: Parts) -> dict[int, str]:
        """The name a directory has on each lower branch that holds it (dirren)."""
        frames = self._frames(root, parts)
        top = frames[0][1] if frames else None
        old = self._old_names(top) if isinstance(top, Dir) and frames[0][0] == 0 else {}
        return {b: old.get(b, parts[-1]) for b, d in frames if b > 0 and isinstance(d, Dir)}

    def _store_old_names(self, log: StepLog, parts: Parts, new_name: str, names: dict[int, str]) -> None:
        """`au_dr_rename`, `au_drinfo_store`: for each lower branch that holds the
        directory, its record in the copy on rw: `.wh..wh..dr.<branch>` created 0600 and
        written with the name there; the record goes when the new name is that name
        ("renameback"). The directory joins the in-memory list of renamed directories,
        which reaches `.wh..wh.hino` only at umount. The model keeps the directory's
        number in its records (aufs: its inode number on rw)."""
        number = self._dir_number(log.root, parts)
        for branch, name in sorted(names.items()):
            info = join(RW + parts + (DR_INFO + self.lower_names[len(self.lower_names) - branch],))
            exists = lookup(log.root, split(info)) is not None
            if name == new_name:
                if exists:
                    log.do(Unlink(info))
                continue
            if not exists:
                log.do(Create(info, 0o600, ino=self.next("ino", 1000)))
            log.do(Write(info, f"{number}:{name}".encode(), 0, replace=True))

    def _dir_number(self, root: Dir, parts: Parts) -> int:
        node = self._in_rw(root, parts)
        if isinstance(node, Dir):
            for entry, child in sorted(node.entries.items()):
                if entry.startswith(DR_INFO) and isinstance(child, File) and b":" in child.content:
                    return int(child.content.split(b":", 1)[0])
        return self.next("ino", 1000)

    def _remove_tree(self, log: StepLog, temp: str) -> None:
        """Remove a directory moved to a temp name, children first (`au_whtmp_rmdir`)."""
        tree = lookup(log.root, split(temp))
        assert isinstance(tree, Dir)
        for sub, child in sorted(walk(tree, split(temp)), key=lambda pc: -len(pc[0])):
            if sub != split(temp):
                log.do(Rmdir(join(sub)) if isinstance(child, Dir) else Unlink(join(sub)))
        log.do(Rmdir(temp))

    # -- mount and umount ----------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        """The next mount: aufs keeps nothing to clean, but dirren loads its list of
        renamed directories from `.wh..wh.hino` (`au_dr_br_init`), and the records of a
        directory not in it are never read (`au_dr_lkup` is not called for it). The model
        drops those records, which is what ignoring them means for every later lookup."""
        if not self.options["dirren"]:
            return Recovery(root)
        listed = self._listed(root)
        for parts, node in list(walk(root.entries["rw"], RW)):
            if not (isinstance(node, File) and parts[-1].startswith(DR_INFO)):
                continue
            number = node.content.split(b":", 1)[0].decode("ascii", "replace")
            if number not in listed:
                root = remove_subtree(root, parts)
        return Recovery(root)

    def _listed(self, root: Dir) -> set[str]:
        hino = lookup(root, RW + (HINO,))
        return set(hino.content.decode("ascii", "replace").split()) if isinstance(hino, File) else set()

    def _flush_renamed(self, log: StepLog) -> None:
        """`au_dr_br_fin` at umount: the in-memory list of renamed directories is written
        to `.wh..wh.hino` (created 0600 when missing, truncated to its entries), or the
        file removed when the list is empty."""
        numbers = sorted({node.content.split(b":", 1)[0].decode()
                          for parts, node in walk(log.root.entries["rw"])
                          if isinstance(node, File) and parts and parts[-1].startswith(DR_INFO)
                          and b":" in node.content}, key=int)
        path = join(RW + (HINO,))
        exists = lookup(log.root, RW + (HINO,)) is not None
        if not numbers:
            if exists:
                log.do(Unlink(path))
            return
        if not exists:
            log.do(Create(path, 0o600, ino=self.next("ino", 1000)))
        log.do(Write(path, "".join(f"{n}\n" for n in numbers).encode(), 0, replace=True))


class Aufs(Driver):
    name = "aufs"
    description = "aufs: .wh. whiteout files, copy-up through temp names, no journal"
    layered = True
    EXTRA_OPS = REMOUNT_OP
    OPTIONS = {
        "dirren": Option((bool,), False, "rename directories with children below (recording their old "
                                         "names) instead of EXDEV"),
        "plink": Option((bool,), True, "link of a lower file copies it up under the new name and keeps a "
                                       "pseudo-link in .wh..wh.plnk (aufs's default); false: noplink, the "
                                       "source is copied up and linked"),
        "udba": Option((str,), "reval", "how aufs treats changes made beside it: none, reval (the default) "
                                        "or notify; a name beside its own whiteout on the first branch is "
                                        "EIO unless none", choices=("none", "reval", "notify")),
        "lower_whiteouts": Option((bool,), True, "lower branches are mounted ro+wh, as Docker mounts them: "
                                                 "their whiteouts hide the names below; false: plain ro "
                                                 "branches, whose whiteouts aufs ignores"),
    }
    MOUNT = AufsMount
