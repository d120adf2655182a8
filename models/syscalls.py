"""System calls on the user's view, one typed value each.

A client program yields these; a driver's mount handles them (one handler per type,
found in a table: `models.driver.handles`). Each type declares which of its fields are
paths and whether path walk follows a symlink in the last component (open(2) follows;
lstat, unlink, rename, linkat without AT_SYMLINK_FOLLOW, fchownat(AT_SYMLINK_NOFOLLOW)
do not). Read-only calls produce no steps.

`str(call)` is the form reports print: `rename("a", "b", NOREPLACE)`, `mkdir("d", 0755)`.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
from dataclasses import dataclass
from typing import Any, ClassVar


class RenameFlags(enum.Enum):
    """renameat2(2) flags (plain rename, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT)."""

    NONE = ""
    NOREPLACE = "noreplace"
    EXCHANGE = "exchange"
    WHITEOUT = "whiteout"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Syscall:
    """One system call on the user's view, made by `user` (uid and gid; 0 is root)."""

    user: int = dataclasses.field(default=0, kw_only=True)
    NAME: ClassVar[str] = ""
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = ()  # (field, follow a symlink at the end)
    READ_ONLY: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.NAME

    def paths(self) -> list[tuple[str, str, bool]]:
        """(field, path, follow) for each path argument."""
        return [(f, getattr(self, f), follow) for f, follow in self.PATHS]

    def with_paths(self, changes: dict[str, str]) -> Syscall:
        return dataclasses.replace(self, **changes) if changes else self

    def __str__(self) -> str:
        shown = []
        flags = ""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "user":
                continue
            if isinstance(value, RenameFlags):
                flags = f", {value.value.upper()}" if value is not RenameFlags.NONE else ""
            elif isinstance(value, bool):
                continue
            elif isinstance(value, tuple):
                shown.append("|".join(value) or "0")
            elif isinstance(value, bytes):
                text = value.decode("utf-8", "backslashreplace")
                shown.append(repr(text if len(text) <= 24 else text[:21] + "..."))
            elif isinstance(value, int):
                shown.append(f"0{value:o}" if f.name == "mode" else str(value))
            else:
                shown.append(f'"{value}"')
        as_user = f" as uid {self.user}" if self.user else ""
        return f"{self.NAME}({', '.join(shown)}{flags}){as_user}"


def _path(name: str, follow: bool) -> tuple[tuple[str, bool], ...]:
    return ((name, follow),)


@dataclass(frozen=True)
class Create(Syscall):
    """open(O_CREAT|O_EXCL)."""

    path: str
    mode: int = 0o644
    NAME: ClassVar[str] = "create"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)


@dataclass(frozen=True)
class Write(Syscall):
    """open(O_WRONLY), pwrite(2) at 0 and ftruncate(2) to its length: the file becomes
    exactly `data` (no O_TRUNC, so overlayfs copies a lower file up with its data)."""

    path: str
    data: bytes
    NAME: ClassVar[str] = "write"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


#: open(2) flags a spec may name (the access mode is one of the first three)
ACCESS_MODES = ("O_RDONLY", "O_WRONLY", "O_RDWR")
OPEN_FLAGS = ACCESS_MODES + ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_DIRECTORY", "O_NOFOLLOW")


@dataclass(frozen=True)
class Open(Syscall):
    """open(2) with `flags` (names from OPEN_FLAGS, sorted), then, with `data`, one
    write(2) on the new descriptor (at the end of the file with O_APPEND, else at 0)."""

    path: str
    flags: tuple[str, ...]
    mode: int = 0o644
    data: bytes | None = None
    NAME: ClassVar[str] = "open"

    def paths(self) -> list[tuple[str, str, bool]]:
        """Path walk follows a symlink at the end unless O_NOFOLLOW or O_CREAT|O_EXCL."""
        return [("path", self.path, not self.nofollow and not (self.creates and self.exclusive))]

    @property
    def access(self) -> str:
        given = [f for f in self.flags if f in ACCESS_MODES]
        return given[0] if given else "O_RDONLY"

    @property
    def writable(self) -> bool:
        return self.access != "O_RDONLY"

    @property
    def creates(self) -> bool:
        return "O_CREAT" in self.flags

    @property
    def exclusive(self) -> bool:
        return "O_EXCL" in self.flags

    @property
    def truncates(self) -> bool:
        return "O_TRUNC" in self.flags

    @property
    def appends(self) -> bool:
        return "O_APPEND" in self.flags

    @property
    def nofollow(self) -> bool:
        return "O_NOFOLLOW" in self.flags

    @property
    def directory(self) -> bool:
        return "O_DIRECTORY" in self.flags

    @property
    def modifies(self) -> bool:
        """Opening changes the file itself (overlayfs copies it up): write access or O_TRUNC."""
        return self.writable or self.truncates


@dataclass(frozen=True)
class WriteFd(Syscall):
    """write(2) on the descriptor an `Open` of `path` just returned: at the end of the
    file (O_APPEND) or at 0; EBADF when it was opened read-only. The open checked the
    caller's permission; the write needs none."""

    path: str
    data: bytes
    append: bool = False
    writable: bool = True
    NAME: ClassVar[str] = "write"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class Pwrite(Syscall):
    """open(O_WRONLY) and pwrite(2) of `data` at `offset`: bytes in place are overwritten,
    a gap past the end reads as zeros; the rest of the file stays."""

    path: str
    offset: int
    data: bytes
    NAME: ClassVar[str] = "pwrite"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class Append(Syscall):
    path: str
    data: bytes
    NAME: ClassVar[str] = "append"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class Truncate(Syscall):
    path: str
    size: int
    NAME: ClassVar[str] = "truncate"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class Mkdir(Syscall):
    path: str
    mode: int = 0o755
    NAME: ClassVar[str] = "mkdir"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)


@dataclass(frozen=True)
class Rmdir(Syscall):
    path: str
    NAME: ClassVar[str] = "rmdir"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)


@dataclass(frozen=True)
class Unlink(Syscall):
    path: str
    NAME: ClassVar[str] = "unlink"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)


@dataclass(frozen=True)
class Rename(Syscall):
    src: str
    dst: str
    flags: RenameFlags = RenameFlags.NONE
    NAME: ClassVar[str] = "rename"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = (("src", False), ("dst", False))


@dataclass(frozen=True)
class Link(Syscall):
    src: str
    dst: str
    NAME: ClassVar[str] = "link"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = (("src", False), ("dst", False))


@dataclass(frozen=True)
class Symlink(Syscall):
    target: str
    path: str
    NAME: ClassVar[str] = "symlink"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)


@dataclass(frozen=True)
class Chmod(Syscall):
    path: str
    mode: int
    NAME: ClassVar[str] = "chmod"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class SetXattr(Syscall):
    path: str
    xattr: str
    value: bytes
    NAME: ClassVar[str] = "setxattr"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class Fsync(Syscall):
    path: str
    NAME: ClassVar[str] = "fsync"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class Sync(Syscall):
    NAME: ClassVar[str] = "sync"


@dataclass(frozen=True)
class Syncfs(Syscall):
    """syncfs(2) on a file descriptor of the mount: the file system it is on, only."""

    NAME: ClassVar[str] = "syncfs"


@dataclass(frozen=True)
class Remount(Syscall):
    """umount(2) of the file system, then mount(2) with the same options; with `rotate`,
    in between the upper dir becomes the top lower layer and a fresh one is made."""

    rotate: bool = False
    NAME: ClassVar[str] = "remount"

    def __str__(self) -> str:
        return "remount(rotate)" if self.rotate else "remount()"


@dataclass(frozen=True)
class Utimens(Syscall):
    """utimensat(2), following a symlink: the modification time becomes `mtime`, or, when
    it is None (cp -a copying a time the model does not know), an unpinned one."""

    path: str
    mtime: int | None = None
    NAME: ClassVar[str] = "utimens"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class LUtimens(Utimens):
    """utimensat(AT_SYMLINK_NOFOLLOW): a symlink's own times (not modelled)."""

    NAME: ClassVar[str] = "lutimens"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)


@dataclass(frozen=True)
class Chown(Syscall):
    """fchownat(AT_SYMLINK_NOFOLLOW); None leaves that id as it is (-1)."""

    path: str
    uid: int | None = None
    gid: int | None = None
    NAME: ClassVar[str] = "chown"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)


@dataclass(frozen=True)
class FChown(Chown):
    """fchown(2) on an open file: the open followed a symlink at the path."""

    NAME: ClassVar[str] = "fchown"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)


@dataclass(frozen=True)
class Stat(Syscall):
    """lstat(2); the result's value is the node."""

    path: str
    NAME: ClassVar[str] = "stat"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)
    READ_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Readdir(Syscall):
    """The names of a directory, sorted."""

    path: str
    NAME: ClassVar[str] = "readdir"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)
    READ_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Read(Syscall):
    path: str
    NAME: ClassVar[str] = "read"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", True)
    READ_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Readlink(Syscall):
    path: str
    NAME: ClassVar[str] = "readlink"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)
    READ_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Listxattr(Syscall):
    path: str
    NAME: ClassVar[str] = "listxattr"
    PATHS: ClassVar[tuple[tuple[str, bool], ...]] = _path("path", False)
    READ_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class RawStep(Syscall):
    """`op = "steps"`: one raw step, recorded in the trace as the call that made it."""

    text: str
    NAME: ClassVar[str] = "step"


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
