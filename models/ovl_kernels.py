"""Which overlayfs behaviour each Linux version has: the `kernel` option of the overlayfs
model ("X.Y" or "X.Y.Z"; default this machine's series, 6.18).

The behaviours that change crash states, each with the commit that changed it:

- copy-up fsyncs the copied data before linking it into upper since 4.9 (641089c1549d,
  "ovl: fsync after copy-up"); before, a crash could keep the link and lose the data;
- syncfs(2) reaches the upper file system's `sync_fs` since 4.11 (e593b2bf513d, "ovl:
  properly implement sync_filesystem()"), and writes back upper dirty data only since
  4.15 (e8d4bfe3a715, "ovl: Sync upper dirty data when syncing overlayfs", also in
  4.14 stable): between the two, syncfs commits metadata and leaves data unwritten;
- `redirect_dir` exists since 4.10, `index` since 4.13 (02bcd1577400, "ovl: introduce the
  inodes index dir feature"), `xino` since 4.17 (795939a93e60, "ovl: add support for
  "xino" mount and config options"), `metacopy` since 4.19 (d5791044d2e5, "ovl: Provide a
  mount option metacopy=on/off for metadata copyup"), `volatile` since 5.10, `userxattr`
  since 5.11 (2d2f2d7322ff, "ovl: user xattr"), redirect_dir=nofollow since 4.15;
- a user's xattr in overlay's own namespace is stored escaped (`trusted.overlay.X` as
  `trusted.overlay.overlay.X` in upper) since 6.7 ("ovl: Support escaped overlay.*
  xattrs", for composefs's nested overlays); before, setting one failed with EOPNOTSUPP;
- `nfs_export` exists since 4.16 ("ovl: add support for "nfs_export" configuration",
  Amir Goldstein's NFS export series); a directory copied up
  under it gets its index entry (`ovl_create_index`) after its xattrs and attributes
  until 6.16, and right after the temp directory is made since 6.17 (NeilBrown's
  2025 series narrowing overlayfs's directory locking moved the call ahead of
  `ovl_copy_up_metadata`; the exact release is inferred from the series' date; seen on
  6.18 with inotify: the index entry is renamed into place before the temp directory's
  attributes change);
- the work dir's whiteout is made once and shared by hard links since 5.8 (c21c839b8448,
  "ovl: whiteout inode sharing"); before, each removal made its own;
- "ovl: fsync after metadata copy-up" (7d6899fb69d2, 6.12) fsyncs every copied-up file
  and directory after its attributes unless `metacopy=on` ("ctx.metadata_fsync =
  !OVL_FS(dentry->d_sb)->config.metacopy && ..."); the performance regression
  it caused was answered by the `fsync=ordered|strict|volatile` mount option ("ovl:
  fsync after metadata copy-up via mount option fsync=strict", Fei Lv, Cc stable 6.12),
  which makes the metadata fsync opt-in again. This machine's 6.18.44 carries it (a
  `chmod` of a lower directory makes no fsync; with `fsync=strict` it makes one, seen
  through ext4's `ext4_sync_file_enter` trace event), so the model gives 6.12 to 6.17
  the metadata fsync by default and 6.18 and later the option.

Copy-up data is copied only for a regular file with a size (`ovl_copy_up_data`: "if
(!S_ISREG(c->stat.mode) || c->metacopy || !c->stat.size) return 0"), so an empty file
makes no data fsync.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_KERNEL = "6.18"
Version = tuple[int, int, int]

COPY_UP_DATA_FSYNC = (4, 9, 0)
SYNCFS_UPPER = (4, 11, 0)
SYNCFS_UPPER_DATA = (4, 15, 0)
SHARED_WHITEOUT = (5, 8, 0)
METADATA_FSYNC = (6, 12, 0)
FSYNC_OPTION = (6, 18, 0)
ESCAPED_XATTRS = (6, 7, 0)
DIR_INDEX_FIRST = (6, 17, 0)

#: mount options and the version that added them: (option, value that needs it) -> version
OPTION_SINCE: dict[tuple[str, object], Version] = {
    ("redirect_dir", "on"): (4, 10, 0),
    ("index", True): (4, 13, 0),
    ("xino", "on"): (4, 17, 0),
    ("xino", "auto"): (4, 17, 0),
    ("redirect_dir", "nofollow"): (4, 15, 0),
    ("userxattr", True): (5, 11, 0),
    ("nfs_export", True): (4, 16, 0),
    ("redirect_dir", "follow"): (4, 10, 0),
    ("metacopy", True): (4, 19, 0),
    ("volatile", True): (5, 10, 0),
    ("fsync", "strict"): FSYNC_OPTION,
}

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_kernel(text: str) -> Version | None:
    """(major, minor, patch) of "6.18" or "4.14.3", or None when it is not a version."""
    m = _VERSION.fullmatch(text.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def shown(version: Version) -> str:
    return f"{version[0]}.{version[1]}" + (f".{version[2]}" if version[2] else "")


def missing_option(version: Version, options: dict[str, object]) -> str | None:
    """Why `options` cannot run on `version` (one line naming the version that added the
    first option it lacks), or None."""
    for (name, value), since in sorted(OPTION_SINCE.items(), key=lambda kv: (kv[1], kv[0][0])):
        if options.get(name) == value and version < since:
            return (f"option {name} = {value!r} needs Linux {shown(since)} or later "
                    f"(kernel = \"{shown(version)}\" does not have it)")
    return None


@dataclass(frozen=True)
class KernelBehaviour:
    """What a kernel version (with the mount's options) does where crashes can tell."""

    version: Version
    volatile: bool = False
    fsync_mode: str = "ordered"  # `fsync=`: ordered (default) or strict
    copy_up_fsync: bool | None = None  # the legacy option: overrides the data fsync
    metacopy: bool = False

    @property
    def should_sync(self) -> bool:
        """`ovl_should_sync`: fsync reaches upper (not on a volatile mount)."""
        return not self.volatile

    @property
    def data_fsync(self) -> bool:
        """fsync the copied-up data before linking it into upper."""
        if not self.should_sync:
            return False
        if self.copy_up_fsync is not None:
            return self.copy_up_fsync
        return self.version >= COPY_UP_DATA_FSYNC

    @property
    def metadata_fsync(self) -> bool:
        """fsync a copied-up file or directory after its attributes (`ctx.metadata_fsync`)."""
        if not self.should_sync or self.copy_up_fsync is False:
            return False
        if self.version >= FSYNC_OPTION:
            return self.fsync_mode == "strict"
        return self.version >= METADATA_FSYNC and not self.metacopy

    @property
    def syncfs_upper(self) -> bool:
        """syncfs(2) reaches the upper file system at all."""
        return self.should_sync and self.version >= SYNCFS_UPPER

    @property
    def syncfs_data(self) -> bool:
        """syncfs(2) also writes back the upper file system's dirty data."""
        return self.version >= SYNCFS_UPPER_DATA

    @property
    def shared_whiteout(self) -> bool:
        return self.version >= SHARED_WHITEOUT

    @property
    def dir_index_first(self) -> bool:
        """A directory copy-up under nfs_export makes its index entry before it copies
        the directory's xattrs and attributes (else after them)."""
        return self.version >= DIR_INDEX_FIRST

    @property
    def escaped_xattrs(self) -> bool:
        """setxattr of one of overlay's own names stores it escaped, `<prefix>overlay.X`,
        instead of failing with EOPNOTSUPP (for nested overlays; seen on 6.18)."""
        return self.version >= ESCAPED_XATTRS
