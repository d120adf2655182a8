"""overlayfs (Linux 6.x, fs/overlayfs) as a driver model.

The backing store holds the lower layers `lower0` (bottom, the spec's first layer) ..
`lowerN-1` (top), each its own read-only file system, and one upper file system with
`upper/` and `work/` (renames between them must stay on one file system). The work dir
proper is `work/work`, as the kernel makes it; temp entries are named `#<hex>`.

Each system call becomes the steps the kernel performs on the upper file system:

- copy-up (`ovl_copy_up_flags`, `ovl_do_copy_up`): topmost missing ancestor first; mark
  the parent impure; a file goes through an O_TMPFILE (`ovl_copy_up_tmpfile`): data and
  its fsync (none for an empty file), xattrs, origin, then link into
  upper; a directory or symlink is built in the work dir (`ovl_copy_up_workdir`) and
  renamed into upper. Which syncs a copy-up makes depends on the kernel version and
  `fsync=` (`models.ovl_kernels`: 6.12 to 6.17, and `fsync=strict`, fsync every copied
  file and directory after its attributes; 6.18 by default does not);
- create/mkdir/symlink/link (`ovl_create_upper`, `ovl_create_over_whiteout`): directly in
  upper, or over a whiteout by building in work and renaming (an EXCHANGE and cleanup
  for a directory, which is made opaque);
- unlink/rmdir (`ovl_do_remove`, `ovl_remove_and_whiteout`, `ovl_clear_empty`): a merged
  directory holding whiteouts is first swapped for an empty opaque one; a name that
  exists below is replaced by a whiteout made in work (shared by hard link, as the kernel
  does) and renamed over it;
- rename (`ovl_rename`): EXDEV for a merged or lower directory unless `redirect_dir`;
  RENAME_WHITEOUT when the source exists below; a redirect xattr (relative in the same
  parent, else absolute) on a moved merged directory;
- mount (`ovl_workdir_create`, `ovl_check_incompat`): `work/work` is emptied; a
  `volatile` mount leaves `work/work/incompat/volatile/dirty`, and any later mount
  refuses while it is there.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from typing import Any

from models import syscalls as sc
from models.driver import REMOUNT_OP, Driver, FileSystemMount, Option, OptionError, Recovery, handles
from models.ovl_kernels import DEFAULT_KERNEL, KernelBehaviour, missing_option, parse_kernel, shown
from models.steps import (
    Chmod,
    CopyData,
    Create,
    Fsync,
    Link,
    LinkTmpfile,
    MakeSymlink,
    Mkdir,
    MknodWhiteout,
    RemoveTree,
    RemoveXattr,
    Rename,
    Rmdir,
    SetTimes,
    SetXattr,
    Step,
    StepLog,
    Syncfs,
    Tmpfile,
    Truncate,
    Unlink,
    Write,
    remove_subtree,
)
from models.steps import Chown as ChownStep
from models.syscalls import RenameFlags
from models.tree import (
    Dir,
    File,
    FsError,
    Node,
    Parts,
    Symlink,
    Whiteout,
    join,
    lookup,
    replace,
    split,
)
from models.union import IMPURE, METACOPY, OPAQUE, ORIGIN, OVL_PREFIX, REDIRECT, Entry, Union

UPPER: Parts = ("upper",)
WORK: Parts = ("work", "work")
VOLATILE_REMEDY = (
    "the volatile mount did not end cleanly, so upper may be inconsistent: discard upper and "
    "work and recreate the container layer; every change since the mount is lost"
)
Y = b"y"
EMPTY_WORKDIR = Dir(mode=0)  # what the kernel leaves in work/work after a mount
RESOLVE_MEMO = 200_000  # memoized path lookups kept before the memo starts over


def _redirect_dir(value: object) -> str:
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


class OverlayMount(FileSystemMount):
    """One overlayfs mount: the union of the lower layers, the lookup memo, the temp-name
    counter and the work dir's shared whiteout. Implements `UnionView` (the symbolic
    engine) and `KernelTwin` (confirm, conform, real)."""

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        self.lower_names = [f"lower{i}" for i in range(len(layers))]
        self._start(Union([(layers[i], (self.lower_names[i],)) for i in reversed(range(len(layers)))]))
        entries: dict[str, Node] = dict(zip(self.lower_names, layers, strict=True))
        entries["upper"] = upper if upper is not None else Dir()
        entries["work"] = Dir()
        recovered = self._mount_workdir(Dir(entries))
        assert recovered.root is not None
        self._mounted = recovered.root  # the backing store as the mount left it
        return recovered.root

    @classmethod
    def of_layers(cls, driver: Driver, lowers: list[tuple[str, Dir]]) -> OverlayMount:
        """A mount whose lower layers live elsewhere in a bigger store (Docker's
        overlay2): (path, tree) top first; steps that read them use those real paths, and
        origin xattrs name the real lower files. The caller relocates upper and work."""
        mount = driver.mount([])
        assert isinstance(mount, cls)
        mount.lower_names = [f"lower{i}" for i in range(len(lowers))]
        mount._start(Union([(node, split(path)) for path, node in lowers]))
        return mount

    def clean_shutdown(self, root: Dir) -> Dir:
        """A clean umount removes a volatile mount's dirty marker (`ovl_put_super`)."""
        if lookup(root, WORK + ("incompat",)) is None:
            return root
        return remove_subtree(root, WORK + ("incompat",))

    def new_lifetime(self) -> None:
        self._whiteout_source = None
        self._mounted = self.initial

    def _start(self, union: Union) -> None:
        self._union = union
        self.redirect_on = self.options["redirect_dir"] == "on"
        version = parse_kernel(self.options["kernel"])
        assert version is not None  # checked by OverlayFS.resolve_options
        self.kernel = KernelBehaviour(
            version, volatile=self.options["volatile"], fsync_mode=self.options["fsync"],
            copy_up_fsync=self.options["copy_up_fsync"], metacopy=self.options["metacopy"],
        )
        self._resolved: dict[tuple[bytes, Parts], tuple[Entry, Entry]] = {}
        self._whiteout_source: str | None = None  # `ovl_whiteout`'s shared whiteout in work

    @property
    def union(self) -> Union:
        return self._union

    def union_layers(self) -> tuple[Union, Parts]:
        """The lower layers' union and where upper lives (models.capabilities.UnionView)."""
        return self._union, UPPER

    def kernel_mount_options(self) -> list[str]:
        """The kernel mount options of this model's options (models.capabilities.KernelTwin)."""
        redirect = self.options["redirect_dir"]
        extra = ["volatile"] if self.options["volatile"] else []
        if self.options["metacopy"]:
            extra.append("metacopy=on")
        if self.options["fsync"] != "ordered":
            extra.append(f"fsync={self.options['fsync']}")
        return [f"redirect_dir={redirect}"] + extra

    def refusal_remedy(self) -> str:
        return VOLATILE_REMEDY if self.options["volatile"] else ""

    def device(self, parts: Parts) -> str:
        top = parts[0] if parts else ""
        return "upper" if top in ("upper", "work", "") else top

    def lower_devices(self) -> frozenset[str]:
        return frozenset(self.lower_names)

    # -- view --------------------------------------------------------------------------

    def _upper(self, root: Dir) -> Dir:
        upper = root.entries["upper"]
        assert isinstance(upper, Dir)
        return upper

    def view(self, root: Dir) -> Dir:
        merged = self.union.view(self.union.root(self._upper(root)))
        assert isinstance(merged, Dir)
        return merged

    def resolve(self, root: Dir, parts: Parts) -> tuple[Entry, Entry]:
        """(parent entry, entry) of a merged path; memoized per upper tree."""
        upper = self._upper(root)
        key = (upper.digest, parts)
        hit = self._resolved.get(key)
        if hit is None:
            if len(self._resolved) > RESOLVE_MEMO:
                self._resolved.clear()
            hit = self._resolved[key] = self.union.resolve(upper, parts)
        return hit

    def view_lookup(self, root: Dir, parts: Parts) -> Node | None:
        _, entry = self.resolve(root, parts)
        return self.union.view(entry) if entry.exists else None

    def read(self, root: Dir, call: sc.Syscall) -> sc.SysResult:
        if isinstance(call, sc.Readdir):  # a listing shows what the union shows
            try:
                node = self.existing(root, split(call.path))
            except FsError as e:
                return sc.fail(e.errno)
            if not isinstance(node, Dir):
                return sc.fail(errno.ENOTDIR)
            _, entry = self.resolve(root, split(call.path))
            return sc.SysResult(0, self.union.listing(entry))
        return super().read(root, call)

    # -- recovery (mount) --------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        return self._mount_workdir(root)

    def _mount_workdir(self, root: Dir) -> Recovery:
        """`ovl_workdir_create`: refuse on incompat features, then empty work/work."""
        incompat = lookup(root, WORK + ("incompat",))
        if isinstance(incompat, Dir):
            for feature, node in sorted(incompat.entries.items()):
                if isinstance(node, Dir) and node.entries:
                    return Recovery(
                        None,
                        refusal=f"overlay with incompat feature '{feature}' cannot be mounted "
                        f"(work/work/incompat/{feature} is not empty)",
                        remedy=VOLATILE_REMEDY if feature == "volatile" else
                        f"remove work/work/incompat/{feature} only if upper is known intact",
                        fallback=self._mounted if feature == "volatile" else None,
                    )
        work = EMPTY_WORKDIR
        if self.options["volatile"]:
            work = Dir(
                {"incompat": Dir({"volatile": Dir({"dirty": File(b"", 0o644)}, 0o755)}, 0o755)},
                mode=0,
            )
        base = root.entries.get("work")
        if not isinstance(base, Dir):
            root = replace(root, ("work",), Dir())
        elif base.entries.get("work") is work:
            return Recovery(root)  # nothing to clean
        return Recovery(remove_subtree(root, WORK, work))

    # -- system calls ------------------------------------------------------------------

    def perform(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        if not isinstance(call, sc.Rename | sc.Sync | sc.Syncfs):
            self.check_call(log.root, call)  # ovl_rename checks in its own order
        return super().perform(call, log)

    @handles(sc.Create)
    def create(self, call: sc.Create, log: StepLog) -> None:
        owner = self.new_owner(log.root, call)
        self._create_object(log, split(call.path), "file", mode=call.mode, owner=owner)

    @handles(sc.Mkdir)
    def mkdir(self, call: sc.Mkdir, log: StepLog) -> None:
        owner = self.new_owner(log.root, call)
        mode = self.new_dir_mode(log.root, call)
        self._create_object(log, split(call.path), "dir", mode=mode, owner=owner)

    @handles(sc.Symlink)
    def symlink(self, call: sc.Symlink, log: StepLog) -> None:
        owner = self.new_owner(log.root, call)
        self._create_object(log, split(call.path), "symlink", target=call.target, owner=owner)

    @handles(sc.Link)
    def link(self, call: sc.Link, log: StepLog) -> None:
        """`ovl_link`: copy up the source and the new parent, then link in upper."""
        old, new = split(call.src), split(call.dst)
        self.copy_up(log, old, data=False)
        self.copy_up(log, new[:-1])
        _, entry = self.resolve(log.root, old)
        if self._is_metacopy(entry):
            self._set_redirect(log, entry, samedir=False)  # the new name finds the data by it
            _, entry = self.resolve(log.root, old)
        self._create_object(log, new, "link", hardlink=UPPER + old, origin=self._has_origin(entry))

    @handles(sc.Write)
    def write(self, call: sc.Write, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)  # open(O_WRONLY): the data is copied up (and fsynced)
        log.do(Write(join(UPPER + parts), call.data, 0, replace=True))

    def prepare_write(self, parts: Parts, log: StepLog, truncate: bool) -> None:
        """`ovl_open`: write access or O_TRUNC copies the file up (`ovl_maybe_copy_up`).
        With O_TRUNC the copy-up takes no data ("maybe truncate regular file"), then
        the VFS truncates the upper file."""
        self.copy_up(log, parts, truncate=truncate)
        if truncate:
            log.do(Truncate(join(UPPER + parts), 0))

    @handles(sc.Pwrite)
    def pwrite(self, call: sc.Pwrite, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        log.do(Write(join(UPPER + parts), call.data, call.offset))

    @handles(sc.Append)
    def append(self, call: sc.Append, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        node = lookup(log.root, UPPER + parts)
        assert isinstance(node, File)
        log.do(Write(join(UPPER + parts), call.data, len(node.content)))

    @handles(sc.Truncate)
    def truncate(self, call: sc.Truncate, log: StepLog) -> None:
        parts = split(call.path)
        self.copy_up(log, parts)
        log.do(Truncate(join(UPPER + parts), call.size))

    @handles(sc.Chmod)
    def chmod(self, call: sc.Chmod, log: StepLog) -> None:
        """`ovl_setattr`: copy up (metadata only under metacopy), then change the upper inode."""
        parts = split(call.path)
        self.copy_up(log, parts, data=False)
        log.do(Chmod(join(UPPER + parts), call.mode))

    @handles(sc.Utimens, sc.LUtimens, sc.Chown, sc.FChown)
    def times_and_owner(self, call: sc.Utimens | sc.Chown, log: StepLog) -> None:
        """`ovl_setattr`: copy up (even when nothing changes; metadata only under
        metacopy), then the upper inode."""
        parts = split(call.path)
        self.copy_up(log, parts, data=False)
        for step in self.attribute_steps(log.root, call, join(UPPER + parts)):
            log.do(step)

    @handles(sc.SetXattr)
    def setxattr(self, call: sc.SetXattr, log: StepLog) -> sc.SysResult:
        if call.xattr.startswith(OVL_PREFIX):
            return sc.fail(errno.EOPNOTSUPP)  # overlay refuses its own private xattrs
        parts = split(call.path)
        self.copy_up(log, parts, data=False)
        log.do(SetXattr(join(UPPER + parts), call.xattr, call.value))
        return sc.OK

    @handles(sc.Fsync)
    def fsync(self, call: sc.Fsync, log: StepLog) -> None:
        """`ovl_fsync`: fsync the real upper file; nothing for a lower file or volatile."""
        _, entry = self.resolve(log.root, split(call.path))
        if entry.upper is not None and self.kernel.should_sync:
            log.do(Fsync(join(entry.upper.path)))

    @handles(sc.Syncfs)
    def syncfs(self, call: sc.Syncfs, log: StepLog) -> None:
        """syncfs(2): `ovl_sync_fs` syncs the upper file system (a volatile mount skips
        it; before 4.11 nothing reached upper, before 4.15 only its metadata)."""
        if self.kernel.syncfs_upper:
            log.do(Syncfs("upper", data=self.kernel.syncfs_data))

    @handles(sc.Sync)
    def sync(self, call: sc.Sync, log: StepLog) -> None:
        """sync(2) syncs every file system, the upper one on its own account: even under
        a volatile overlay (seen through ext4's sync_fs event) and on any version."""
        log.do(Syncfs("upper"))

    @handles(sc.Remount)
    def remount(self, call: sc.Remount, log: StepLog) -> None:
        """umount (`ovl_sync_fs` syncs upper, unless volatile; a clean umount removes a
        volatile mount's dirty marker), then mount: `ovl_workdir_create` removes
        work/work whatever it holds and makes it again (mode 0), `ovl_make_workdir`
        probes it, and a volatile mount puts its marker inside. Nothing the mount kept
        in memory survives."""
        if self.kernel.should_sync:
            log.do(Syncfs("upper"))
        incompat = WORK + ("incompat",)
        if lookup(log.root, incompat) is not None:
            log.do(RemoveTree(join(incompat)))
        work = lookup(log.root, WORK)
        if isinstance(work, Dir):
            self._cleanup_tree(log, WORK, work)  # ovl_workdir_cleanup
        log.do(Mkdir(join(WORK), 0))
        self._probe_workdir(log)
        if self.options["volatile"]:
            log.do(Mkdir(join(incompat), 0o755))
            log.do(Mkdir(join(incompat + ("volatile",)), 0o755))
            log.do(Create(join(incompat + ("volatile", "dirty")), 0o644, ino=self.next("ino", 1000)))
        self.new_lifetime()
        self._mounted = log.root

    def _cleanup_tree(self, log: StepLog, parts: Parts, node: Dir) -> None:
        """Remove a directory entry by entry, depth first, then the directory."""
        for name in sorted(node.entries):
            child = node.entries[name]
            if isinstance(child, Dir):
                self._cleanup_tree(log, parts + (name,), child)
            else:
                log.do(Unlink(join(parts + (name,))))
        log.do(Rmdir(join(parts)))

    def _probe_workdir(self, log: StepLog) -> None:
        """`ovl_make_workdir`'s feature probes on a new work dir: an overlay xattr set
        and removed, and RENAME_WHITEOUT tried on a temp file and cleaned up."""
        log.do(SetXattr(join(WORK), OPAQUE, b"0"))
        log.do(RemoveXattr(join(WORK), OPAQUE))
        temp, dest = self.temp_name(), self.temp_name()
        log.do(Create(temp, 0, ino=self.next("ino", 1000)))
        log.do(Rename(temp, dest, RenameFlags.WHITEOUT))
        log.do(Unlink(temp))
        log.do(Unlink(dest))

    @handles(sc.Unlink)
    def unlink(self, call: sc.Unlink, log: StepLog) -> None:
        self._remove(log, split(call.path), is_dir=False)

    @handles(sc.Rmdir)
    def rmdir(self, call: sc.Rmdir, log: StepLog) -> None:
        self._remove(log, split(call.path), is_dir=True)

    @handles(sc.Rename)
    def rename(self, call: sc.Rename, log: StepLog) -> None:
        self._rename(log, split(call.src), split(call.dst), call.flags, call.user)

    # -- helpers -----------------------------------------------------------------------

    def temp_name(self) -> str:
        """`ovl_lookup_temp`: a fresh `#<hex>` name in the work dir (for variants too)."""
        return join(WORK + (f"#{self.next('temp'):x}",))

    def _set_impure(self, log: StepLog, upper_dir: Parts) -> None:
        """`ovl_set_impure`: mark an upper dir that may hold non-pure entries (once)."""
        node = lookup(log.root, upper_dir)
        if node is not None and node.xattr(IMPURE) is None:
            log.do(SetXattr(join(upper_dir), IMPURE, Y))

    def _has_origin(self, entry: Entry) -> bool:
        """OVL_TYPE_ORIGIN: an upper entry copied up from (or merged with) a lower one."""
        up = entry.upper
        return up is not None and (bool(entry.lowers) or up.node.xattr(ORIGIN) is not None)

    def _allow_offline_changes(self) -> bool:
        return not self.redirect_on

    # -- copy-up -----------------------------------------------------------------------

    def copy_up(self, log: StepLog, parts: Parts, truncate: bool = False, data: bool = True) -> None:
        """`ovl_copy_up_flags`: copy up `parts`, topmost missing ancestor first (with
        `truncate`, an O_TRUNC open's, the file itself without its data). Without `data`
        (a metadata change: `ovl_copy_up` with no open flags) a regular file is copied
        up metadata only under metacopy=on; with it, a metacopy file gets its data."""
        while True:
            _, entry = self.resolve(log.root, parts)
            if not entry.exists:
                return
            if entry.upper is not None:
                if data and self._is_metacopy(entry):
                    self._copy_up_data(log, entry, truncate)
                return
            for i in range(1, len(parts) + 1):
                _, anc = self.resolve(log.root, parts[:i])
                if anc.upper is None:
                    last = i == len(parts)
                    self._copy_up_one(log, anc, truncate=truncate and last,
                                      metacopy=self.kernel.metacopy and last and not data)
                    break

    def _is_metacopy(self, entry: Entry) -> bool:
        up = entry.upper
        return up is not None and isinstance(up.node, File) and up.node.xattr(METACOPY) is not None

    def _copy_up_data(self, log: StepLog, entry: Entry, truncate: bool) -> None:
        """`ovl_copy_up_meta_inode_data`: copy the lower data into the upper file (and
        fsync it, except with fsync=strict), then drop the metacopy mark; an O_TRUNC
        open copies nothing."""
        up = entry.upper
        lower = self.union.lowerdata(entry)
        assert up is not None
        if lower is None:
            raise FsError(errno.EIO, join(entry.path))
        assert isinstance(lower.node, File)
        if lower.node.content and not truncate:
            log.do(CopyData(join(lower.path), join(up.path)))
            # As in a full copy-up, the data fsync is left to the metadata fsync when
            # there is one (fsync=strict) - but this path makes none (6.18, observed):
            if self.kernel.data_fsync and not self.kernel.metadata_fsync:
                log.do(Fsync(join(up.path)))
        log.do(RemoveXattr(join(up.path), METACOPY))

    def _copy_up_one(self, log: StepLog, entry: Entry, truncate: bool = False,
                     metacopy: bool = False) -> None:
        """`ovl_copy_up_one`: build the copy in the work dir (`ovl_copy_up_tmpfile` for a
        file, `ovl_copy_up_workdir` otherwise), copy data (`ovl_copy_up_data`, fsynced
        unless the metadata fsync will do it), then xattrs, origin and attributes
        (`ovl_copy_up_metadata`, fsynced with `ctx.metadata_fsync`), then link or rename."""
        lower = entry.stack[0]
        node = lower.node
        dest = join(UPPER + entry.path)
        self._set_impure(log, UPPER + entry.path[:-1])
        temp = self.temp_name()
        metadata_fsync = self.kernel.metadata_fsync and isinstance(node, (File, Dir))
        metacopy = metacopy and isinstance(node, File)
        if isinstance(node, File):
            log.do(Tmpfile(temp, node.mode, ino=self.next("ino", 1000)))
            if node.content and not truncate and not metacopy:
                log.do(CopyData(join(lower.path), temp))
                if self.kernel.data_fsync and not metadata_fsync:
                    log.do(Fsync(temp))
        elif isinstance(node, Dir):
            log.do(Mkdir(temp, 0))  # "can't properly set mode on creation" (umask)
        elif isinstance(node, Symlink):
            log.do(MakeSymlink(node.target, temp))
        else:
            raise FsError(errno.EIO, dest)
        for name, value in node.xattrs:
            if not name.startswith(OVL_PREFIX):
                log.do(SetXattr(temp, name, value))
        log.do(SetXattr(temp, ORIGIN, join(lower.path).encode()))
        if metacopy:
            log.do(SetXattr(temp, METACOPY, b""))
            if node.content:
                log.do(Truncate(temp, len(node.content)))  # ovl_set_size: a sparse file
        self._set_attr(log, temp, node)
        if metadata_fsync:
            log.do(Fsync(temp))
        if isinstance(node, File):
            log.do(LinkTmpfile(temp, dest))
        else:
            log.do(Rename(temp, dest))

    def _set_attr(self, log: StepLog, temp: str, node: Node) -> None:
        """`ovl_set_attr`: mode (a file was made with it already), owner, times; an
        owner or time equal to what the new inode has makes no change, so no step."""
        if isinstance(node, Dir):
            log.do(Chmod(temp, node.mode))
        if node.uid or node.gid:
            log.do(ChownStep(temp, node.uid, node.gid))
        if node.mtime is not None:
            log.do(SetTimes(temp, node.mtime))

    # -- create ------------------------------------------------------------------------

    def _create_object(
        self, log: StepLog, parts: Parts, kind: str, *, mode: int = 0,
        target: str = "", hardlink: Parts = (), origin: bool = False,
        owner: tuple[int, int] = (0, 0),
    ) -> None:
        """`ovl_create_or_link`: copy up the parent, then create in upper, owned by the
        caller (the creds it overrides keep the caller's fsuid and fsgid)."""
        self.copy_up(log, parts[:-1])
        parent, entry = self.resolve(log.root, parts)
        if origin:
            self._set_impure(log, UPPER + parts[:-1])
        if entry.whiteout:
            self._create_over_whiteout(log, parts, kind, mode, target, hardlink, owner)
            return
        dest = join(UPPER + parts)
        log.do(self._make(kind, dest, mode, target, hardlink, owner))
        if kind == "dir" and parent.is_merge and not self._allow_offline_changes():
            log.do(SetXattr(dest, OPAQUE, Y))  # "just an optimization"

    def _make(self, kind: str, path: str, mode: int, target: str, hardlink: Parts,
              owner: tuple[int, int] = (0, 0)) -> Step:
        uid, gid = owner
        if kind == "file":
            return Create(path, mode, ino=self.next("ino", 1000), uid=uid, gid=gid)
        if kind == "dir":
            return Mkdir(path, mode, uid=uid, gid=gid)
        if kind == "symlink":
            return MakeSymlink(target, path, uid=uid, gid=gid)
        return Link(join(hardlink), path, ino=self.next("ino", 1000))

    def _create_over_whiteout(
        self, log: StepLog, parts: Parts, kind: str, mode: int, target: str,
        hardlink: Parts, owner: tuple[int, int] = (0, 0),
    ) -> None:
        """`ovl_create_over_whiteout`: build in work, then rename over the whiteout."""
        dest = join(UPPER + parts)
        temp = self.temp_name()
        log.do(self._make(kind, temp, mode, target, hardlink, owner))
        if kind == "dir":
            log.do(SetXattr(temp, OPAQUE, Y))
            log.do(Rename(temp, dest, RenameFlags.EXCHANGE))
            log.do(Unlink(temp))  # the whiteout, now in work
        else:
            log.do(Rename(temp, dest))

    # -- remove ------------------------------------------------------------------------

    def _lower_positive(self, parent: Entry, entry: Entry) -> bool:
        """`ovl_lower_positive`: does a lower layer hold this name (by its own name)?"""
        if not entry.exists:
            return entry.opaque
        if entry.upper is None:
            return True
        name = entry.path[-1]
        for frame in parent.lowers:
            if isinstance(frame.node, Dir):
                child = frame.node.entries.get(name)
                if child is not None:
                    return not isinstance(child, Whiteout)
        return False

    def whiteout(self, log: StepLog) -> str:
        """`ovl_whiteout`: a whiteout in the work dir, ready to be renamed over a name;
        one per mount is made and then shared by hard links (since 5.8; before, a fresh
        one each time)."""
        if not self.kernel.shared_whiteout:
            fresh = self.temp_name()
            log.do(MknodWhiteout(fresh))
            return fresh
        cached = self._whiteout_source
        if cached is None or lookup(log.root, split(cached)) is None:
            cached = self.temp_name()
            log.do(MknodWhiteout(cached))
            self._whiteout_source = cached
        link = self.temp_name()
        log.do(Link(cached, link))
        return link

    def _cleanup(self, log: StepLog, path: str) -> None:
        """`ovl_cleanup`: rmdir or unlink an entry in the work dir."""
        node = lookup(log.root, split(path))
        log.do(Rmdir(path) if isinstance(node, Dir) else Unlink(path))

    def _clear_empty(self, log: StepLog, entry: Entry, whiteouts: list[str]) -> None:
        """`ovl_clear_empty`: swap a dir holding only whiteouts for an empty opaque one."""
        up = entry.upper
        assert up is not None and isinstance(up.node, Dir)
        temp = self.temp_name()
        log.do(Mkdir(temp, up.node.mode))
        for name, value in up.node.xattrs:
            if not name.startswith(OVL_PREFIX):
                log.do(SetXattr(temp, name, value))
        log.do(SetXattr(temp, OPAQUE, Y))
        if up.node.uid or up.node.gid:
            log.do(ChownStep(temp, up.node.uid, up.node.gid))  # its ovl_set_attr
        log.do(Rename(temp, join(up.path), RenameFlags.EXCHANGE))
        for name in whiteouts:
            log.do(Unlink(join(split(temp) + (name,))))
        log.do(Rmdir(temp))

    def _pure_upper(self, entry: Entry) -> bool:
        """`ovl_pure_upper`: no lower entry and no reason to expect whiteouts inside."""
        return not entry.lowers and not self.union.may_hold_whiteouts(entry)

    def _remove(self, log: StepLog, parts: Parts, is_dir: bool) -> None:
        """`ovl_do_remove`."""
        parent, entry = self.resolve(log.root, parts)
        lower_positive = self._lower_positive(parent, entry)
        whiteouts: list[str] = []
        if is_dir and (lower_positive or not self._pure_upper(entry)):
            whiteouts = self.union.upper_whiteouts(entry)  # ovl_check_empty_dir's list
        self.copy_up(log, parts[:-1])
        parent, entry = self.resolve(log.root, parts)
        upper_path = join(UPPER + parts)
        if whiteouts:
            self._clear_empty(log, entry, whiteouts)
        if not lower_positive:
            node = lookup(log.root, UPPER + parts)
            if is_dir and isinstance(node, Dir) and node.entries:
                raise FsError(errno.ENOTEMPTY, join(parts))  # vfs_rmdir of a pure upper dir
            log.do(Rmdir(upper_path) if is_dir else Unlink(upper_path))
            return
        self.cleanup_and_whiteout(log, upper_path)

    def cleanup_and_whiteout(self, log: StepLog, upper_path: str) -> None:
        """`ovl_cleanup_and_whiteout`: rename a fresh whiteout over the upper entry at
        `upper_path` (an extension point: a variant may do it in other steps)."""
        whiteout = self.whiteout(log)
        if isinstance(lookup(log.root, split(upper_path)), Dir):
            log.do(Rename(whiteout, upper_path, RenameFlags.EXCHANGE))
            self._cleanup(log, whiteout)
        else:
            log.do(Rename(whiteout, upper_path))

    # -- rename ------------------------------------------------------------------------

    def _can_move(self, entry: Entry) -> bool:
        """`ovl_can_move`: merged or lower directories move only with redirect_dir=on."""
        return self.redirect_on or not entry.is_dir or not entry.merge_or_lower

    def _rename(self, log: StepLog, old: Parts, new: Parts, flags: RenameFlags, user: int = 0) -> None:
        """`ovl_rename`."""
        self.check_rename(log.root, old, new, flags, user)
        if old == new:
            return
        overwrite = flags is not RenameFlags.EXCHANGE
        _, o = self.resolve(log.root, old)
        _, n = self.resolve(log.root, new)
        if not self._can_move(o) or (not overwrite and not self._can_move(n)):
            raise FsError(errno.EXDEV, join(old))
        if overwrite and n.is_dir and not self._pure_upper(n):
            self.check_rename_target_empty(log.root, new, flags)  # ovl_check_empty_dir
        is_dir = o.is_dir
        new_is_dir = n.is_dir
        samedir = old[:-1] == new[:-1]
        whiteouts = (
            self.union.upper_whiteouts(n)
            if overwrite and new_is_dir and not self._pure_upper(n) else []
        )

        real_flags = RenameFlags.NONE
        cleanup_whiteout = False
        if overwrite:
            old_parent, _ = self.resolve(log.root, old)
            if self._lower_positive(old_parent, o):
                real_flags = RenameFlags.EXCHANGE if n.whiteout else RenameFlags.WHITEOUT
            elif is_dir and n.whiteout:
                real_flags = RenameFlags.EXCHANGE
                cleanup_whiteout = True
        else:
            real_flags = RenameFlags.EXCHANGE

        self.copy_up(log, old, data=False)
        self.copy_up(log, new[:-1])
        if not overwrite:
            self.copy_up(log, new, data=False)
        _, o = self.resolve(log.root, old)
        n_parent, n = self.resolve(log.root, new)
        o_parent, _ = self.resolve(log.root, old)

        if whiteouts:
            self._clear_empty(log, n, whiteouts)
        if not samedir:
            if self._has_origin(o):
                self._set_impure(log, UPPER + new[:-1])
            if not overwrite and self._has_origin(n):
                self._set_impure(log, UPPER + old[:-1])

        old_upper = join(UPPER + old)
        new_upper = join(UPPER + new)
        old_opaque = o.upper is not None and o.upper.node.xattr(OPAQUE) == Y
        if (o.is_dir and o.merge_or_lower) or self._is_metacopy(o):
            self._set_redirect(log, o, samedir)
        elif is_dir and not old_opaque and n_parent.is_merge:
            log.do(SetXattr(old_upper, OPAQUE, Y))
        if not overwrite:
            new_opaque = n.upper is not None and n.upper.node.xattr(OPAQUE) == Y
            if (n.is_dir and n.merge_or_lower) or self._is_metacopy(n):
                self._set_redirect(log, n, samedir)
            elif new_is_dir and not new_opaque and o_parent.is_merge:
                log.do(SetXattr(new_upper, OPAQUE, Y))

        target = lookup(log.root, UPPER + new)
        exchange = real_flags is RenameFlags.EXCHANGE
        if overwrite and isinstance(target, Dir) and target.entries and not exchange:
            # A pure upper target is only checked by the upper file system's rename, after
            # the copy-ups and xattrs above have been written.
            raise FsError(errno.ENOTEMPTY, join(new))
        log.do(Rename(old_upper, new_upper, real_flags))
        if cleanup_whiteout:
            log.do(Unlink(old_upper))

    def _set_redirect(self, log: StepLog, entry: Entry, samedir: bool) -> None:
        """`ovl_set_redirect`: relative (same parent) or absolute redirect to the origin."""
        up = entry.upper
        assert up is not None
        current = up.node.xattr(REDIRECT)
        absolute = not samedir
        if current is not None and (not absolute or current.startswith(b"/")):
            return
        value = entry.path[-1] if not absolute else self._absolute_redirect(log.root, entry.path)
        log.do(SetXattr(join(up.path), REDIRECT, value.encode()))

    def _absolute_redirect(self, root: Dir, parts: Parts) -> str:
        """`ovl_get_redirect`: the origin path, built from each ancestor's redirect."""
        names: list[str] = []
        for depth in range(len(parts), 0, -1):
            node = lookup(root, UPPER + parts[:depth])
            redirect = node.xattr(REDIRECT) if node is not None else None
            name = redirect.decode() if redirect is not None else parts[depth - 1]
            if name.startswith("/"):
                names.append(name.lstrip("/"))
                break
            names.append(name)
        return "/" + "/".join(reversed(names))


class OverlayFS(Driver):
    name = "overlayfs"
    description = "Linux overlayfs: lower layers, one upper file system with upper/ and work/"
    layered = True
    EXTRA_OPS = REMOUNT_OP
    OPTIONS = {
        "redirect_dir": Option(
            (bool, str), "off",
            "on: rename of merged/lower directories sets a redirect xattr; off/follow: "
            "such renames fail with EXDEV (redirects already present are followed)",
            choices=("on", "off", "follow"), normalize=_redirect_dir,
        ),
        "volatile": Option(
            (bool,), False,
            "skip every fsync/syncfs; a crash leaves work/work/incompat/volatile/dirty and "
            "the next mount refuses",
        ),
        "copy_up_fsync": Option(
            (bool,), None,
            "fsync copied-up data before linking it into upper (default: as `kernel` does; "
            "false models kernels before 4.9)",
        ),
        "metacopy": Option(
            (bool,), False,
            "chmod, chown, utimes, setxattr, link and rename copy up only the metadata "
            "(data stays below, `trusted.overlay.metacopy`) until the first write (4.19; "
            "implies redirect_dir = \"on\")",
        ),
        "fsync": Option(
            (str,), "ordered",
            "ordered: copy-up fsyncs copied data only; strict: also every copied-up file "
            "and directory after its attributes (Linux 6.18 and later)",
            choices=("ordered", "strict"),
        ),
        "kernel": Option(
            (str,), DEFAULT_KERNEL,
            "the Linux version whose overlayfs to model (\"X.Y\" or \"X.Y.Z\"): copy-up "
            "and syncfs syncs, shared whiteouts, and the options it has",
        ),
    }

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options, checked against the kernel version that must have them."""
        resolved = super().resolve_options(given)
        if resolved["metacopy"]:
            if "redirect_dir" in given and resolved["redirect_dir"] != "on":
                raise OptionError(f"option metacopy = true needs redirect_dir = \"on\" (the kernel "
                                  f"refuses metacopy=on,redirect_dir={resolved['redirect_dir']})")
            resolved["redirect_dir"] = "on"  # as the kernel does when only metacopy=on is given
        version = parse_kernel(resolved["kernel"])
        if version is None:
            raise OptionError(
                f"option 'kernel' must be a Linux version like \"6.18\" or \"4.14.3\", "
                f"not {resolved['kernel']!r}"
            )
        lacking = missing_option(version, resolved)
        if lacking:
            raise OptionError(lacking)
        if resolved["volatile"] and resolved["fsync"] == "strict":
            raise OptionError("options volatile and fsync = 'strict' exclude each other "
                              "(volatile is fsync=volatile)")
        resolved["kernel"] = shown(version)
        return resolved

    MOUNT = OverlayMount
