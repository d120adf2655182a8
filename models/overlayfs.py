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
  refuses while it is there;
- index=on (`ovl_get_indexdir`, `ovl_need_index`, `ovl_do_copy_up`, `ovl_link_up`,
  `ovl_nlink_start`/`ovl_nlink_end`, `ovl_cleanup_index`, `ovl_indexdir_cleanup`,
  `ovl_verify_index`, `ovl_get_nlink`): `work/index` is the work dir (temp names and
  whiteouts are made there; seen on 6.18); a lower file with several links is copied up
  once, into `work/index/<origin>` (the kernel names it by the hex of its origin file
  handle, the model by its origin path with ':' for '/'), and each name is then linked
  up from it; the union nlink lives in `trusted.overlay.nlink` ("U+n"/"L+n", relative
  to the upper or the lower inode); unlink, rename over and link of such a name copy
  it up first; an index entry whose union nlink drops to 0 is removed. At mount, temp
  entries, orphans (union nlink 0) and stale entries (origin not the name) are removed,
  and an index file without an origin makes the mount fail (ENODATA, seen on 6.18).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from typing import Any

from models import syscalls as sc
from models.driver import ROTATING_REMOUNT_OP, Driver, FileSystemMount, Option, OptionError, Recovery, handles
from models.format import INDEX_DIR, TRUSTED, USER, OverlayXattrs
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
    ErrorEntry,
    File,
    FsError,
    Node,
    Parts,
    Symlink,
    Whiteout,
    find_inode,
    identity,
    join,
    lookup,
    replace,
    split,
    walk,
)
from models.union import Entry, Frame, Union

UPPER: Parts = ("upper",)
WORK: Parts = ("work", "work")
INDEX: Parts = ("work", INDEX_DIR)
INDEX_REMEDY = ("delete work/index (hard links copied up from lower files become separate "
                "files) or mount with index=off")
VOLATILE_REMEDY = (
    "the volatile mount did not end cleanly, so upper may be inconsistent: discard upper and "
    "work and recreate the container layer; every change since the mount is lost"
)
Y = b"y"
EMPTY_WORKDIR = Dir(mode=0)  # what the kernel leaves in work/work after a mount
RESOLVE_MEMO = 200_000  # memoized path lookups kept before the memo starts over


def index_name(origin: str) -> str:
    """The model's name of an index entry: its origin, with ':' for '/' (the kernel's is
    the hex of the origin's file handle; `checker.real.kernel` translates)."""
    return origin.replace("/", ":")


def index_origin(name: str) -> str | None:
    """The origin an index entry's model name stands for (`index_name` backwards), or
    None for a name that is not one (a temp entry)."""
    return name.replace(":", "/") if name.startswith("lower") and ":" in name else None


def stored_nlink(upper: Node, lower: File, fallback: int, names: OverlayXattrs = TRUSTED,
                 in_memory: bool = False) -> int:
    """`ovl_get_nlink`: the union nlink an indexed upper inode stores, or `fallback`
    (a lower file of one link, no or a bad xattr, a result below 1). With `in_memory`,
    what the overlay inode of a one-link lower file copied up in this mount counts: the
    stored value too (the fallback applies only when the inode is looked up again)."""
    raw = upper.xattr(names.nlink)
    if (lower.nlink == 1 and not in_memory) or raw is None or not isinstance(upper, File):
        return fallback
    text = raw.decode("ascii", "replace")
    if len(text) < 3 or text[0] not in "LU" or text[1] not in "+-" or not text[2:].isdigit():
        return fallback
    nlink = (lower.nlink if text[0] == "L" else upper.nlink) + int(text[1:])
    return nlink if nlink > 0 else fallback


def dirs_by_origin(tree: Node, keys: tuple[str, ...]) -> dict[bytes, Parts]:
    """The directories of an upper tree by the origin they carry (the first xattr of
    `keys` each has; the first dir in walk order for an origin): how a directory index's
    record of its upper dir is decoded (the kernel decodes a file handle)."""
    out: dict[bytes, Parts] = {}
    for parts, node in walk(tree):
        if isinstance(node, Dir):
            origin = next((v for k in keys if (v := node.xattr(k)) is not None), None)
            if origin is not None:
                out.setdefault(origin, parts)
    return out


def _cleanup_steps(path: str, node: Node) -> list[Step]:
    """Remove an entry, a directory entry by entry and depth first (`ovl_workdir_cleanup`)."""
    if not isinstance(node, Dir):
        return [Unlink(path)]
    steps: list[Step] = []
    for name in sorted(node.entries):
        steps.extend(_cleanup_steps(join(split(path) + (name,)), node.entries[name]))
    return steps + [Rmdir(path)]


def _user_xattr_options(given: Mapping[str, Any], resolved: dict[str, Any]) -> None:
    """`ovl_fs_params_verify` with userxattr: an explicit redirect_dir other than
    nofollow, or metacopy=on, conflicts; otherwise both are silently turned off."""
    if "redirect_dir" in given and resolved["redirect_dir"] != "nofollow":
        raise OptionError(f"options userxattr and redirect_dir = \"{resolved['redirect_dir']}\" conflict "
                          f"(the kernel refuses userxattr,redirect_dir={resolved['redirect_dir']}; "
                          f"only \"nofollow\" goes with userxattr)")
    if resolved["metacopy"]:
        raise OptionError("options userxattr and metacopy = true conflict (the kernel refuses "
                          "userxattr,metacopy=on)")
    resolved["redirect_dir"] = "nofollow"


def _nfs_export_options(given: Mapping[str, Any], resolved: dict[str, Any]) -> None:
    """`ovl_fs_params_verify` with nfs_export: index=off given as well, or metacopy=on,
    conflicts; otherwise index is turned on."""
    if "index" in given and not resolved["index"]:
        raise OptionError("options nfs_export = true and index = false conflict (the kernel "
                          "refuses nfs_export=on,index=off)")
    if resolved["metacopy"]:
        raise OptionError("options nfs_export = true and metacopy = true conflict (the kernel "
                          "refuses nfs_export=on,metacopy=on)")
    resolved["index"] = True


def in_namespace(node: Node, names: OverlayXattrs) -> Node:
    """A spec tree with overlay's xattrs (written trusted.overlay.*, and `opaque` and
    `redirect`) in the namespace of `names` (user.overlay.* under userxattr)."""
    if names is TRUSTED:
        return node
    for key, value in node.xattrs:
        if key.startswith(TRUSTED.prefix):
            node = node.with_xattr(key, None).with_xattr(names.prefix + key[len(TRUSTED.prefix):], value)
    if isinstance(node, Dir):
        entries = {n: in_namespace(c, names) for n, c in node.entries.items()}
        node = Dir(entries, node.mode, node.xattrs, uid=node.uid, gid=node.gid)
    return node


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

    LIFETIME = ("_whiteout_source", "_fresh_index", "_mounted", "_layer_roots", "_linked_paths")
    FORK_COPIES = ("_origins",)

    def forget_memos(self) -> None:
        self._resolved = {}
        self._rotated_unions = {}
        self._union = self._union.fresh()

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        if self.options.get("userxattr"):
            layers = [in_namespace(layer, USER) for layer in layers]  # type: ignore[misc]
            upper = in_namespace(upper, USER) if upper is not None else None  # type: ignore[assignment]
        self.lower_names = [f"lower{i}" for i in range(len(layers))]
        self._start([(layers[i], (self.lower_names[i],)) for i in reversed(range(len(layers)))])
        self._layer_roots = {(n,): tree for n, tree in zip(self.lower_names, layers, strict=True)}
        self._linked_paths = sorted({
            parts for tree in layers for parts, node in walk(tree)
            if isinstance(node, File) and node.nlink > 1
        })
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
        mount._start([(node, split(path)) for path, node in lowers])
        return mount

    def clean_shutdown(self, root: Dir) -> Dir:
        """A clean umount removes a volatile mount's dirty marker (`ovl_put_super`)."""
        if lookup(root, WORK + ("incompat",)) is None:
            return root
        return remove_subtree(root, WORK + ("incompat",))

    def new_lifetime(self) -> None:
        self._whiteout_source = None
        self._fresh_index = set()
        self._mounted = self.initial

    def _start(self, lowers: list[tuple[Dir, Parts]]) -> None:
        """Set the mount up over `lowers` ((tree, backing path), top first)."""
        self.x = USER if self.options.get("userxattr") else TRUSTED  # overlay's xattr names
        self._union = self._make_union(lowers)
        self.redirect_on = self.options["redirect_dir"] == "on"
        version = parse_kernel(self.options["kernel"])
        assert version is not None  # checked by OverlayFS.resolve_options
        self.kernel = KernelBehaviour(
            version, volatile=self.options["volatile"], fsync_mode=self.options["fsync"],
            copy_up_fsync=self.options["copy_up_fsync"], metacopy=self.options["metacopy"],
        )
        self._resolved: dict[tuple[tuple[bytes, ...], bytes, Parts], tuple[Entry, Entry]] = {}
        self._rotated_unions: dict[tuple[bytes, ...], Union] = {}
        self._whiteout_source: str | None = None  # `ovl_whiteout`'s shared whiteout in work
        self._fresh_index: set[Parts] = set()  # index entries copied up in this mount's lifetime
        self.index_on = bool(self.options["index"])
        self.index_all = self.index_on and bool(self.options["nfs_export"])  # `ovl_index_all`
        self.workdir = INDEX if self.index_on else WORK  # where temp entries are made
        self._layer_roots: dict[Parts, Dir] = {}
        self._linked_paths: list[Parts] = []  # merged paths of hard-linked lower files
        self._origins: dict[tuple[Parts, int], str] = {}

    @property
    def union(self) -> Union:
        return self._union

    def _make_union(self, lowers: list[tuple[Dir, Parts]]) -> Union:
        return Union(lowers, names=self.x, follow_redirects=self.options.get("redirect_dir") != "nofollow")

    def _empty_index(self) -> Dir:
        """What index=on's first mount makes: work/index, recording the upper root."""
        return Dir(mode=0, xattrs=((self.x.upper, b"upper"),))

    def rotated(self, root: Dir) -> list[str]:
        """The upper layers `remount rotate` moved into the lower stack: `lowerN` and
        on, after the spec's layers, bottom first (they live on the upper file system)."""
        out: list[str] = []
        n = len(self.lower_names)
        while f"lower{n}" in root.entries:
            out.append(f"lower{n}")
            n += 1
        return out

    def union_of(self, root: Dir) -> Union:
        """The union a backing store mounts as: the spec's lower layers under the rotated
        upper layers it holds (a crash state before a rotation has none)."""
        return self._union_keyed(root)[1]

    def _union_keyed(self, root: Dir) -> tuple[tuple[bytes, ...], Union]:
        """`union_of`, with its key: the digests of the rotated layers."""
        rotated = self.rotated(root)
        if not rotated:
            return (), self._union
        key = tuple(identity(root.entries[n]) for n in rotated)
        hit = self._rotated_unions.get(key)
        if hit is None:
            layers = [(root.entries[n], (n,)) for n in reversed(rotated)]
            hit = self._make_union(layers + [(f.node, f.path) for f in self._union.lower_roots])  # type: ignore[misc]
            self._rotated_unions[key] = hit
        return key, hit

    def union_layers(self) -> tuple[Union, Parts]:
        """The lower layers' union and where upper lives (models.capabilities.UnionView)."""
        return self._union, UPPER

    def kernel_mount_options(self) -> list[str]:
        """The kernel mount options of this model's options (models.capabilities.KernelTwin)."""
        redirect = self.options["redirect_dir"]
        extra = ["volatile"] if self.options["volatile"] else []
        if self.options["userxattr"]:
            extra.append("userxattr")
        if self.options["metacopy"]:
            extra.append("metacopy=on")
        if self.index_on:
            extra.append("index=on")
        if self.index_all:
            extra.append("nfs_export=on")
        if self.options["xino"] != "off":
            extra.append(f"xino={self.options['xino']}")
        if self.options["fsync"] != "ordered":
            extra.append(f"fsync={self.options['fsync']}")
        return [f"redirect_dir={redirect}"] + extra

    def refusal_remedy(self) -> str:
        return VOLATILE_REMEDY if self.options["volatile"] else ""

    def device(self, parts: Parts) -> str:
        top = parts[0] if parts else ""
        if top in ("upper", "work", "") or (top.startswith("lower") and top not in self.lower_names):
            return "upper"  # rotated upper layers stay on the upper file system
        return top

    def lower_devices(self) -> frozenset[str]:
        return frozenset(self.lower_names)

    # -- view --------------------------------------------------------------------------

    def _upper(self, root: Dir) -> Dir:
        upper = root.entries["upper"]
        assert isinstance(upper, Dir)
        return upper

    def view(self, root: Dir) -> Dir:
        union = self.union_of(root)
        merged = union.view(union.root(self._upper(root)))
        assert isinstance(merged, Dir)
        if self._linked_paths:
            merged = self._linked_view(root, merged)
        if self.index_all:
            merged = self._verified_view(root, merged)
        return merged

    def _verified_view(self, root: Dir, merged: Dir) -> Dir:
        """nfs_export: names whose index entry fails `ovl_lookup_index`'s checks fail
        their lookup with EIO. The index names an origin, and the model looks for the
        entry at the origin's own path (an entry renamed away from it is not checked)."""
        index = lookup(root, INDEX)
        if not isinstance(index, Dir):
            return merged
        for name in sorted(index.entries):
            origin = index_origin(name)
            parts = split(origin)[1:] if origin is not None else ()
            if not parts or lookup(merged, parts) is None:
                continue
            _, entry = self.resolve(root, parts)
            reason = self.index_error(root, entry)
            if reason:
                merged = replace(merged, parts, ErrorEntry(errno.EIO, reason))
        return merged

    def index_error(self, root: Dir, entry: Entry) -> str:
        """Why `ovl_lookup_index` fails an entry with EIO ("" when it does not): its
        index entry is a whiteout (all its names were removed), of another type, or
        (a directory, nfs_export) there is no upper dir or another one is recorded."""
        if not entry.exists or (entry.is_dir and (not self.index_all or not entry.lowers)):
            return ""
        index = self.index_path(entry)
        node = lookup(root, index) if index is not None else None
        if node is None:
            return ""
        if isinstance(node, Whiteout):
            return "bad index: its index entry is a whiteout"
        if isinstance(node, Dir) != entry.is_dir:
            return "bad index: its index entry is of another type"
        if entry.is_dir:
            if entry.upper is None:
                return ("suspected uncovered redirected dir: its index entry records an upper dir "
                        "it does not have")
            if node.xattr(self.x.upper) != entry.upper.node.xattr(self.x.origin):
                return "failed to verify upper: its index entry records another upper dir"
        return ""

    def lookup_in(self, root: Dir) -> Any:
        """Lookups through the view; walking into a name whose lookup fails raises its
        errno (an index entry the kernel rejects: EIO)."""
        def find(parts: Parts) -> Node | None:
            node = self.view_lookup(root, parts)
            if isinstance(node, ErrorEntry):
                raise FsError(node.errno, join(parts))
            return node
        return find

    def _linked_view(self, root: Dir, merged: Dir) -> Dir:
        """Hard-linked lower files as the kernel shows them: through their index entry
        (index=on) and with the union nlink (`ovl_get_nlink`)."""
        union = self.union_of(root)
        for parts in self._linked_paths:
            shown = lookup(merged, parts)
            if not isinstance(shown, File):
                continue
            _, entry = self.resolve(root, parts)
            if not entry.exists or not isinstance(entry.node, File):
                continue
            node = union.view(entry)
            if isinstance(node, File):
                node = node.with_links(node.ino, self.overlay_nlink(root, entry))
            if node.digest != shown.digest:
                merged = replace(merged, parts, node)
        return merged

    def resolve(self, root: Dir, parts: Parts) -> tuple[Entry, Entry]:
        """(parent entry, entry) of a merged path; memoized per upper tree. With
        index=on a hard-linked lower file not copied up under this name is found through
        its index entry (`ovl_lookup_index`): an upper inode with no upper name yet."""
        upper = self._upper(root)
        rotation, union = self._union_keyed(root)
        key = (rotation, identity(upper), parts)
        hit = self._resolved.get(key)
        if hit is None:
            if len(self._resolved) > RESOLVE_MEMO:
                self._resolved.clear()
            hit = self._resolved[key] = union.resolve(upper, parts)
        if self.index_on and hit[1].exists and hit[1].upper is None:
            index = self.index_path(hit[1])
            node = lookup(root, index) if index is not None else None
            if isinstance(node, File | Symlink):
                parent, entry = hit
                return parent, Entry(entry.path, (Frame(0, node, index),) + entry.stack, opaque=entry.opaque)
        return hit

    def view_lookup(self, root: Dir, parts: Parts) -> Node | None:
        for depth in range(1, len(parts) + 1 if self.index_all else 0):
            _, entry = self.resolve(root, parts[:depth])
            if not entry.exists:
                return None
            if reason := self.index_error(root, entry):
                return ErrorEntry(errno.EIO, reason)
        _, entry = self.resolve(root, parts)
        return self.union_of(root).view(entry) if entry.exists else None

    def read(self, root: Dir, call: sc.Syscall) -> sc.SysResult:
        if isinstance(call, sc.Readdir):  # a listing shows what the union shows
            try:
                node = self.existing(root, split(call.path))
            except FsError as e:
                return sc.fail(e.errno)
            if not isinstance(node, Dir):
                return sc.fail(errno.ENOTDIR)
            _, entry = self.resolve(root, split(call.path))
            return sc.SysResult(0, self.union_of(root).listing(entry))
        return super().read(root, call)

    # -- recovery (mount) --------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        if not isinstance(root.entries.get("upper"), Dir):
            remedied = self._mount_workdir(replace(root, UPPER, Dir()))
            return Recovery(None, refusal="upperdir is missing (a crash in the middle of `remount rotate`)",
                            remedy="make an empty upper dir", fallback=remedied.root)
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
        left = base.entries.get("work") if isinstance(base, Dir) else None
        if left is not work and (left is None or left.digest != work.digest):  # equal: nothing to clean
            root = remove_subtree(root, WORK, work)
        if self.index_on:
            return self._mount_index(root)
        return Recovery(root)

    def _mount_index(self, root: Dir) -> Recovery:
        """`ovl_get_indexdir`: make work/index at the first mount, else clean it up."""
        if lookup(root, INDEX) is None:
            return Recovery(replace(root, INDEX, self._empty_index()))
        steps, refusal = self.index_cleanup(root)
        if refusal:
            return Recovery(None, refusal=refusal, remedy=INDEX_REMEDY,
                            fallback=remove_subtree(root, INDEX, self._empty_index()))
        for step in steps:
            root = step.apply(root, self.device)
        return Recovery(root)

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
        self._nlink_start(log, old)
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
        """`ovl_xattr_set`: one of overlay's own names is stored escaped (6.7 and later)
        or refused."""
        name = call.xattr
        if name.startswith(self.x.prefix):
            if not self.kernel.escaped_xattrs:
                return sc.fail(errno.EOPNOTSUPP)
            name = self.x.prefix + "overlay." + name[len(self.x.prefix):]
        parts = split(call.path)
        self.copy_up(log, parts, data=False)
        log.do(SetXattr(join(UPPER + parts), name, call.value))
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
        if call.rotate:
            self._rotate(log)
        work = lookup(log.root, WORK)
        if isinstance(work, Dir):
            log.do_all(_cleanup_steps(join(WORK), work))  # ovl_workdir_cleanup
        log.do(Mkdir(join(WORK), 0))
        self._probe_workdir(log)
        if self.index_on:
            if lookup(log.root, INDEX) is None:
                log.do(Mkdir(join(INDEX), 0))
                log.do(SetXattr(join(INDEX), self.x.upper, b"upper"))
            steps, refusal = self.index_cleanup(log.root)
            if refusal:
                raise FsError(errno.ENODATA, join(INDEX))
            log.do_all(steps)
        if self.options["volatile"]:
            log.do(Mkdir(join(incompat), 0o755))
            log.do(Mkdir(join(incompat + ("volatile",)), 0o755))
            log.do(Create(join(incompat + ("volatile", "dirty")), 0o644, ino=self.next("ino", 1000)))
        self.new_lifetime()
        self._mounted = log.root

    def _rotate(self, log: StepLog) -> None:
        """`remount rotate` between umount and mount: the upper dir becomes the top
        lower layer, `lowerN` beside it on the upper file system, and a fresh upper dir
        is made; under index=on the index, which records the old upper root, goes too
        (the mount would fail with ESTALE)."""
        name = f"lower{len(self.lower_names) + len(self.rotated(log.root))}"
        layer = self._upper(log.root)
        log.do(Rename("upper", name))
        log.do(Mkdir("upper", 0o755))
        if self.index_on and lookup(log.root, INDEX) is not None:
            log.do(RemoveTree(join(INDEX)))
        self._layer_roots[(name,)] = layer
        linked = {p for p, n in walk(layer) if isinstance(n, File) and n.nlink > 1}
        self._linked_paths = sorted(set(self._linked_paths) | linked)

    def _probe_workdir(self, log: StepLog) -> None:
        """`ovl_make_workdir`'s feature probes on a new work dir: an overlay xattr set
        and removed, and RENAME_WHITEOUT tried on a temp file and cleaned up."""
        log.do(SetXattr(join(WORK), self.x.opaque, b"0"))
        log.do(RemoveXattr(join(WORK), self.x.opaque))
        temp, dest = self.temp_name(WORK), self.temp_name(WORK)
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

    def temp_name(self, where: Parts | None = None) -> str:
        """`ovl_lookup_temp`: a fresh `#<hex>` name in the work dir (for variants too)."""
        return join((where or self.workdir) + (f"#{self.next('temp'):x}",))

    def _set_impure(self, log: StepLog, upper_dir: Parts) -> None:
        """`ovl_set_impure`: mark an upper dir that may hold non-pure entries (once)."""
        node = lookup(log.root, upper_dir)
        if node is not None and node.xattr(self.x.impure) is None:
            log.do(SetXattr(join(upper_dir), self.x.impure, Y))

    def _has_origin(self, entry: Entry) -> bool:
        """OVL_TYPE_ORIGIN: an upper entry copied up from (or merged with) a lower one."""
        up = entry.upper
        return up is not None and (bool(entry.lowers) or up.node.xattr(self.x.origin) is not None)

    def _private_xattr(self, name: str) -> bool:
        """`ovl_is_private_xattr`: overlay's own name, and not an escaped one (6.7)."""
        return name.startswith(self.x.prefix) and not (
            self.kernel.escaped_xattrs and name.startswith(self.x.prefix + "overlay."))

    def _allow_offline_changes(self) -> bool:
        """`ovl_allow_offline_changes`: "we allow lower changes only if none of the new
        features are used" (index, metacopy, redirect_dir, xino=on)."""
        return not (self.redirect_on or self.index_on or self.kernel.metacopy or self.options["xino"] == "on")

    # -- index ---------------------------------------------------------------------------

    def origin_of(self, frame: Frame) -> str:
        """The model's origin of a lower node: its backing path; for a file of several
        links, the first of its names (a file handle names the inode, not a name)."""
        node = frame.node
        if not isinstance(node, File) or node.nlink < 2:
            return join(frame.path)
        base = next((b for b in self._layer_roots if frame.path[:len(b)] == b), None)
        if base is None:
            return join(frame.path)
        key = (base, node.ino)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = join(base + min(find_inode(self._layer_roots[base], node.ino)))
        return origin

    def _entry_origin(self, entry: Entry) -> str | None:
        """The origin of any entry: the lower one found below it, or the one its upper
        entry's origin xattr names."""
        if entry.lowers:
            return self.origin_of(entry.lowers[0])
        up = entry.upper
        value = up.node.xattr(self.x.origin) if up is not None else None
        return value.decode("utf-8", "replace") if value is not None else None

    def _origin_file(self, entry: Entry) -> tuple[str, File] | None:
        """The lower file an entry comes from, with its origin: the lower one found
        below it, or the one its upper file's origin xattr names (`ovl_check_origin`)."""
        if entry.lowers:
            lower = entry.lowers[0]
            return (self.origin_of(lower), lower.node) if isinstance(lower.node, File) else None
        up = entry.upper
        origin = up.node.xattr(self.x.origin) if up is not None and isinstance(up.node, File) else None
        if origin is None:
            return None
        text = origin.decode("utf-8", "replace")
        node = self._origin_node(text)
        return (text, node) if node is not None else None

    def index_path(self, entry: Entry) -> Parts | None:
        """`ovl_need_index`: where a lower file of several links (under nfs_export, any
        entry with an origin) is (or will be) indexed, or None."""
        if not self.index_on:
            return None
        if self.index_all:
            origin = self._entry_origin(entry)
            return INDEX + (index_name(origin),) if origin is not None else None
        found = self._origin_file(entry)
        if found is None or found[1].nlink < 2:
            return None
        return INDEX + (index_name(found[0]),)

    def overlay_nlink(self, root: Dir, entry: Entry) -> int:
        """The union nlink of a file (`ovl_get_nlink`): the upper inode's, or, for an
        indexed one, from its nlink xattr relative to the upper or the lower inode (with
        the index entry gone, the kernel shows the upper inode's; seen on 6.18). A
        one-link lower file indexed under nfs_export counts its upper inode's links (the
        index entry's among them) once looked up again, but its names while the inode
        that copied it up lives (seen on 6.18: 1, then 2 after a remount)."""
        node = entry.node
        assert isinstance(node, File)
        up = entry.upper
        found = self._origin_file(entry)
        index = self.index_path(entry)
        if up is None or found is None or index is None or lookup(root, index) is None:
            return node.nlink
        return stored_nlink(up.node, found[1], fallback=node.nlink, names=self.x,
                            in_memory=index in self._fresh_index)

    def _no_alias(self, entry: Entry) -> bool:
        """An upper inode found through the index that has no upper name yet."""
        up = entry.upper
        return up is not None and up.path[:2] == INDEX

    def _link_up(self, log: StepLog, entry: Entry) -> None:
        """`ovl_link_up`: give an indexed inode its upper name: mark the parent impure,
        store the union nlink relative to the lower inode, link, then relative to upper."""
        up = entry.upper
        assert up is not None
        found = self._origin_file(entry)
        nlink, lower_nlink = (self.overlay_nlink(log.root, entry), found[1].nlink) if found else (1, 1)
        index = join(up.path)
        self._set_impure(log, UPPER + entry.path[:-1])
        log.do(SetXattr(index, self.x.nlink, f"L{nlink - lower_nlink:+d}".encode()))
        log.do(Link(index, join(UPPER + entry.path)))
        self._set_nlink_upper(log, index, nlink, links=2)

    def _set_nlink_upper(self, log: StepLog, upper_path: str, nlink: int, links: int = 1) -> None:
        """`ovl_set_nlink_upper`: the union nlink relative to the upper inode's (the
        model counts the links of a file; of a symlink, which it does not, `links`)."""
        node = lookup(log.root, split(upper_path))
        own = node.nlink if isinstance(node, File) else links
        log.do(SetXattr(upper_path, self.x.nlink, f"U{nlink - own:+d}".encode()))

    def _nlink_start(self, log: StepLog, parts: Parts) -> int | None:
        """`ovl_nlink_start` before unlink, rename over or link of a file: a lower file
        that needs an index is copied up first (data and all); an indexed one stores its
        union nlink. Returns that nlink (None when not indexed)."""
        _, entry = self.resolve(log.root, parts)
        if not entry.exists or self.index_path(entry) is None:
            return None
        if entry.upper is None or self._no_alias(entry):
            self.copy_up(log, parts)
            _, entry = self.resolve(log.root, parts)
        index = self.index_path(entry)
        assert index is not None and entry.upper is not None
        if lookup(log.root, index) is None:
            return None  # copied up before index=on: not indexed
        if entry.is_dir or not isinstance(entry.node, File):
            return 1  # no nlink is stored for these (`ovl_nlink_start`): rmdir or unlink ends it
        nlink = self.overlay_nlink(log.root, entry)
        self._set_nlink_upper(log, join(entry.upper.path), nlink)
        return nlink

    def _nlink_end(self, log: StepLog, index: Parts | None, nlink: int) -> None:
        """`ovl_nlink_end`: an indexed inode whose union nlink reached 0 loses its index
        entry (`ovl_cleanup_index`), unless upper links remain (then it only stores the
        nlink it can still see)."""
        if index is None or nlink > 0:
            return
        node = lookup(log.root, index)
        if not isinstance(node, File | Symlink | Dir):
            return
        if isinstance(node, File) and node.nlink != 1:
            self._set_nlink_upper(log, join(index), node.nlink - 1)  # "cleanup linked index"
            return
        if self.index_all:
            self.cleanup_and_whiteout(log, join(index))  # "to block future open by handle"
        else:
            log.do(Unlink(join(index)))

    def index_cleanup(self, root: Dir) -> tuple[list[Step], str]:
        """`ovl_indexdir_cleanup` at mount: the steps that remove temp entries, stale
        entries (origin not the name) and orphans (union nlink 0); or why the mount
        fails (`ovl_verify_index`: an index file without an origin is ENODATA)."""
        index = lookup(root, INDEX)
        if not isinstance(index, Dir):
            return [], ""
        steps: list[Step] = []
        upper_dirs: dict[bytes, Parts] | None = None
        for name in sorted(index.entries):
            node = index.entries[name]
            path = join(INDEX + (name,))
            if name.startswith("#"):
                steps.extend(_cleanup_steps(path, node))
                continue
            if isinstance(node, Dir) and self.index_all:
                if upper_dirs is None:
                    upper_dirs = dirs_by_origin(self._upper(root), (self.x.origin,))
                steps.extend(self._verify_dir_index(path, node, upper_dirs, len(steps)))
                continue
            if not isinstance(node, File):
                continue  # a whiteout is kept; so is a directory index without nfs_export
            origin = node.xattr(self.x.origin)
            if origin is None:
                return [], (f"failed to verify index ({path}: no origin xattr, ENODATA); "
                            f"overlayfs refuses to mount")
            text = origin.decode("utf-8", "replace")
            lower = self._origin_node(text)
            if index_name(text) != name or lower is None:
                steps.append(Unlink(path))  # stale
            elif node.nlink == 1 and stored_nlink(node, lower, fallback=0, names=self.x) == 0:
                steps.extend(self._orphan_index(path, node, len(steps)))
        return steps, ""

    def _orphan_index(self, path: str, node: Node, serial: int) -> list[Step]:
        """An orphan index entry at mount: removed, or under nfs_export replaced by a
        whiteout ("to block future open by handle": `ovl_cleanup_and_whiteout`)."""
        if not self.index_all:
            return [Unlink(path)]
        temp = join(INDEX + (f"#r{serial:x}",))
        if isinstance(node, Dir):
            return [MknodWhiteout(temp), Rename(temp, path, RenameFlags.EXCHANGE),
                    *_cleanup_steps(temp, node)]
        return [MknodWhiteout(temp), Rename(temp, path)]

    def _verify_dir_index(self, path: str, node: Dir, upper_dirs: dict[bytes, Parts],
                          serial: int) -> list[Step]:
        """`ovl_verify_index` of a directory's index entry (nfs_export): without its
        `upper` record it is stale (removed); an upper dir that no longer exists makes it
        an orphan (whited out); one whose origin is not the entry's name, stale."""
        recorded = node.xattr(self.x.upper)
        if recorded is None:
            return _cleanup_steps(path, node)
        if recorded not in upper_dirs:
            return self._orphan_index(path, node, serial)
        if index_name(recorded.decode("utf-8", "replace")) != split(path)[-1]:
            return _cleanup_steps(path, node)
        return []


    def _origin_node(self, origin: str) -> File | None:
        parts = split(origin)
        tree = self._layer_roots.get(parts[:1])
        node = lookup(tree, parts[1:]) if tree is not None else None
        return node if isinstance(node, File) else None

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
            if entry.upper is not None and not self._no_alias(entry):
                if data and self._is_metacopy(entry):
                    self._copy_up_data(log, entry, truncate)
                return
            for i in range(1, len(parts) + 1):
                _, anc = self.resolve(log.root, parts[:i])
                if self._no_alias(anc):
                    self._link_up(log, anc)  # copied up under another name: link it here
                    break
                if anc.upper is None:
                    last = i == len(parts)
                    self._copy_up_one(log, anc, truncate=truncate and last,
                                      metacopy=self.kernel.metacopy and last and not data)
                    break

    def _is_metacopy(self, entry: Entry) -> bool:
        up = entry.upper
        return up is not None and isinstance(up.node, File) and up.node.xattr(self.x.metacopy) is not None

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
        log.do(RemoveXattr(join(up.path), self.x.metacopy))

    def _copy_up_one(self, log: StepLog, entry: Entry, truncate: bool = False,
                     metacopy: bool = False) -> None:
        """`ovl_copy_up_one`: build the copy in the work dir (`ovl_copy_up_tmpfile` for a
        file, `ovl_copy_up_workdir` otherwise), copy data (`ovl_copy_up_data`, fsynced
        unless the metadata fsync will do it), then xattrs, origin and attributes
        (`ovl_copy_up_metadata`, fsynced with `ctx.metadata_fsync`), then link or rename."""
        lower = entry.stack[0]
        node = lower.node
        index = self.index_path(entry)  # a file of several links goes to the index first
        dir_index = index if isinstance(node, Dir) else None  # nfs_export: see _create_index
        if dir_index is not None:
            index = None
        dest = join(index if index is not None else UPPER + entry.path)
        if index is None:
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
            if dir_index is not None and self.kernel.dir_index_first:
                self._create_index(log, dir_index, lower)
        elif isinstance(node, Symlink):
            log.do(MakeSymlink(node.target, temp))
        else:
            raise FsError(errno.EIO, dest)
        for name, value in node.xattrs:
            if not self._private_xattr(name):
                log.do(SetXattr(temp, name, value))
        if not isinstance(node, File) or node.nlink == 1 or index is not None:
            # no origin for one name of a lower hard link: "breaking the association"
            log.do(SetXattr(temp, self.x.origin, self.origin_of(lower).encode()))
        if metacopy:
            log.do(SetXattr(temp, self.x.metacopy, b""))
            if node.content:
                log.do(Truncate(temp, len(node.content)))  # ovl_set_size: a sparse file
        self._set_attr(log, temp, node)
        if metadata_fsync:
            log.do(Fsync(temp))
        if dir_index is not None and not self.kernel.dir_index_first:
            self._create_index(log, dir_index, lower)
        if isinstance(node, File):
            log.do(LinkTmpfile(temp, dest))
        else:
            log.do(Rename(temp, dest))
        if index is not None:
            self._fresh_index.add(index)
            links = node.nlink if isinstance(node, File) else 1
            self._set_nlink_upper(log, dest, links)  # "initialize nlink"
            _, entry = self.resolve(log.root, entry.path)
            self._link_up(log, entry)

    def _create_index(self, log: StepLog, index: Parts, lower: Frame) -> None:
        """`ovl_create_index` (nfs_export): a directory's index entry, made as a temp dir
        that records the upper dir and renamed into place. The kernel records the upper
        dir by its file handle; the model by the origin that dir carries, which follows
        it through renames just as the handle does."""
        temp = self.temp_name()
        log.do(Mkdir(temp, 0))
        log.do(SetXattr(temp, self.x.upper, self.origin_of(lower).encode()))
        log.do(Rename(temp, join(index)))

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
            log.do(SetXattr(dest, self.x.opaque, Y))  # "just an optimization"

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
            log.do(SetXattr(temp, self.x.opaque, Y))
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
            if not self._private_xattr(name):
                log.do(SetXattr(temp, name, value))
        log.do(SetXattr(temp, self.x.opaque, Y))
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
        nlink = self._nlink_start(log, parts)  # a dir has an index path only under nfs_export
        parent, entry = self.resolve(log.root, parts)
        upper_path = join(UPPER + parts)
        if whiteouts:
            self._clear_empty(log, entry, whiteouts)
        if not lower_positive:
            node = lookup(log.root, UPPER + parts)
            if is_dir and isinstance(node, Dir) and node.entries:
                raise FsError(errno.ENOTEMPTY, join(parts))  # vfs_rmdir of a pure upper dir
            log.do(Rmdir(upper_path) if is_dir else Unlink(upper_path))
        else:
            self.cleanup_and_whiteout(log, upper_path)
        if nlink is not None:
            self._nlink_end(log, self.index_path(entry), nlink - 1)

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
        nlink = None
        if not overwrite:
            self.copy_up(log, new, data=False)
        elif n.exists:
            nlink = self._nlink_start(log, new)  # the target's union nlink drops (nfs_export: a dir's too)
        replaced_index = self.index_path(n) if nlink is not None else None
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
        old_opaque = o.upper is not None and o.upper.node.xattr(self.x.opaque) == Y
        if (o.is_dir and o.merge_or_lower) or self._is_metacopy(o):
            self._set_redirect(log, o, samedir)
        elif is_dir and not old_opaque and n_parent.is_merge:
            log.do(SetXattr(old_upper, self.x.opaque, Y))
        if not overwrite:
            new_opaque = n.upper is not None and n.upper.node.xattr(self.x.opaque) == Y
            if (n.is_dir and n.merge_or_lower) or self._is_metacopy(n):
                self._set_redirect(log, n, samedir)
            elif new_is_dir and not new_opaque and o_parent.is_merge:
                log.do(SetXattr(new_upper, self.x.opaque, Y))

        target = lookup(log.root, UPPER + new)
        exchange = real_flags is RenameFlags.EXCHANGE
        if overwrite and isinstance(target, Dir) and target.entries and not exchange:
            # A pure upper target is only checked by the upper file system's rename, after
            # the copy-ups and xattrs above have been written.
            raise FsError(errno.ENOTEMPTY, join(new))
        log.do(Rename(old_upper, new_upper, real_flags))
        if cleanup_whiteout:
            log.do(Unlink(old_upper))
        if nlink is not None:
            self._nlink_end(log, replaced_index, nlink - 1)

    def _set_redirect(self, log: StepLog, entry: Entry, samedir: bool) -> None:
        """`ovl_set_redirect`: relative (same parent) or absolute redirect to the origin."""
        up = entry.upper
        assert up is not None
        current = up.node.xattr(self.x.redirect)
        absolute = not samedir
        if current is not None and (not absolute or current.startswith(b"/")):
            return
        value = entry.path[-1] if not absolute else self._absolute_redirect(log.root, entry.path)
        log.do(SetXattr(join(up.path), self.x.redirect, value.encode()))

    def _absolute_redirect(self, root: Dir, parts: Parts) -> str:
        """`ovl_get_redirect`: the origin path, built from each ancestor's redirect."""
        names: list[str] = []
        for depth in range(len(parts), 0, -1):
            node = lookup(root, UPPER + parts[:depth])
            redirect = node.xattr(self.x.redirect) if node is not None else None
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
    EXTRA_OPS = ROTATING_REMOUNT_OP
    OPTIONS = {
        "redirect_dir": Option(
            (bool, str), "off",
            "on: rename of merged/lower directories sets a redirect xattr; off/follow: "
            "such renames fail with EXDEV (redirects already present are followed); "
            "nofollow: EXDEV, and redirects present are not followed either",
            choices=("on", "off", "follow", "nofollow"), normalize=_redirect_dir,
        ),
        "userxattr": Option(
            (bool,), False,
            "overlay's xattrs are user.overlay.* instead of trusted.overlay.* (unprivileged "
            "mounts); implies redirect_dir = \"nofollow\" and no metacopy, as the kernel "
            "does (5.11)",
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
        "index": Option(
            (bool,), False,
            "inodes index (work/index): a lower file of several links is copied up once, "
            "its names stay one inode; the work dir moves into work/index (4.13)",
        ),
        "nfs_export": Option(
            (bool,), False,
            "every lower entry copied up is indexed (work/index/<origin>; a directory's "
            "entry records its upper dir), removed ones leave a whiteout in the index, and "
            "lookups verify the index (EIO on a mismatch); implies index = true, conflicts "
            "with metacopy, as the kernel does (4.16)",
        ),
        "xino": Option(
            (str,), "off",
            "inode numbers composed from the layer's and the real one (st_ino, d_ino only: "
            "no step changes, but on, like index, ends offline lower changes, so new "
            "directories in merged ones are made opaque) (4.17)",
            choices=("off", "auto", "on"),
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
        if resolved["userxattr"]:
            _user_xattr_options(given, resolved)
        if resolved["metacopy"]:
            if "redirect_dir" in given and resolved["redirect_dir"] != "on":
                raise OptionError(f"option metacopy = true needs redirect_dir = \"on\" (the kernel "
                                  f"refuses metacopy=on,redirect_dir={resolved['redirect_dir']})")
            resolved["redirect_dir"] = "on"  # as the kernel does when only metacopy=on is given
        if resolved["nfs_export"]:
            _nfs_export_options(given, resolved)
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
