"""Watching every namespace change on one file system with fanotify (Linux >= 5.17).

inotify watches single directories, so it misses what happens inside a directory made
earlier in the same system call (overlayfs copies a directory up and fills it within one
rename(2)). A fanotify *filesystem* mark with `FAN_REPORT_DFID_NAME_TARGET` reports every
create, delete and rename on the file system with the parent directory's file handle,
the entry name and the entry's own handle. Each directory handle is linked to its parent
handle and name, learned by scanning the tree once and then updated by the events
themselves, so paths stay right across renames and RENAME_EXCHANGE.

The kernel may merge queued events for the same entry (a temp dir created and renamed
away becomes one record with both bits), so consumers should compare events as
multisets, not sequences.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from checker.errors import CrashcheckError

FAN_CLASS_NOTIF = 0x0
FAN_NONBLOCK = 0x2
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_TARGET_FID = 0x1000
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000
INFO_FID, INFO_DFID_NAME, INFO_OLD_DFID_NAME, INFO_NEW_DFID_NAME = 1, 2, 10, 12
AT_FDCWD = -100
MAX_HANDLE_SZ = 128
READ_BYTES = 1 << 16

_META = struct.Struct("IBBHQii")  # struct fanotify_event_metadata
_INFO = struct.Struct("BBH")  # struct fanotify_event_info_header


class FanotifyUnavailable(CrashcheckError):
    """fanotify cannot watch here (not root, old kernel, file system without handles)."""


@dataclass(frozen=True)
class Event:
    """One namespace change, in the words of `models.steps`: mkdir, create, rmdir,
    unlink, rename (with `path2`)."""

    kind: str
    path: str
    path2: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.path}" + (f" -> {self.path2}" if self.path2 else "")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_mark.argtypes = [
        ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p,
    ]
    libc.name_to_handle_at.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
    ]
    return libc


def file_handle(path: Path) -> bytes:
    """The kernel's file handle of `path` (type and bytes), as fanotify reports it."""
    libc = _libc()
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    struct.pack_into("Ii", buf, 0, MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), buf, ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        raise FanotifyUnavailable(f"name_to_handle_at({path}): {os.strerror(err)}")
    size, kind = struct.unpack_from("Ii", buf, 0)
    return struct.pack("i", kind) + buf.raw[8 : 8 + size]


class FsWatcher:
    """Every create/delete/rename under `root` (the root of its own file system), with
    paths relative to `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        libc = _libc()
        flags = (
            FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_REPORT_FID | FAN_REPORT_DIR_FID | FAN_REPORT_NAME
            | FAN_REPORT_TARGET_FID
        )
        fd = libc.fanotify_init(flags, os.O_RDONLY)
        if fd < 0:
            raise FanotifyUnavailable(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        self.fd = fd
        self.links: dict[bytes, tuple[bytes | None, str]] = {}  # dir -> (parent dir, name)
        self.rescan()
        mask = FAN_CREATE | FAN_DELETE | FAN_RENAME | FAN_ONDIR
        if libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, os.fsencode(root)) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise FanotifyUnavailable(f"fanotify_mark({root}): {os.strerror(err)}")

    def rescan(self) -> None:
        """Learn the handle of every directory under the root and where it hangs."""
        self.links = {file_handle(self.root): (None, "")}
        for dirpath, dirnames, _ in os.walk(self.root):
            parent = file_handle(Path(dirpath))
            for name in dirnames:
                self.links[file_handle(Path(dirpath) / name)] = (parent, name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def drain(self) -> list[Event]:
        """Every event queued so far, oldest first."""
        events: list[Event] = []
        while True:
            try:
                buf = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                return events
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    return events
                raise
            if not buf:
                return events
            events.extend(self._parse(buf))

    def dir_path(self, handle: bytes) -> str:
        """Where a directory is now, following the parent links."""
        parts: list[str] = []
        current: bytes | None = handle
        while current is not None:
            link = self.links.get(current)
            if link is None:
                parts.append(f"?{current.hex()[:8]}")
                break
            current, name = link
            if name:
                parts.append(name)
        return "/".join(reversed(parts))

    def _path(self, handle: bytes, name: str) -> str:
        parent = self.dir_path(handle)
        if name in (".", ""):
            return parent
        return f"{parent}/{name}" if parent else name

    def _parse(self, buf: bytes) -> list[Event]:
        out: list[Event] = []
        off = 0
        while off + _META.size <= len(buf):
            event_len, _vers, _, meta_len, mask, _fd, _pid = _META.unpack_from(buf, off)
            infos: dict[int, tuple[bytes, str]] = {}
            p = off + meta_len
            while p < off + event_len:
                kind, _pad, length = _INFO.unpack_from(buf, p)
                size, htype = struct.unpack_from("Ii", buf, p + 4 + 8)
                start = p + 4 + 8 + 8
                handle = struct.pack("i", htype) + buf[start : start + size]
                name = buf[start + size : p + length].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                infos[kind] = (handle, name)
                p += length
            out.extend(self._events(mask, infos))
            off += event_len
        return out

    def _events(self, mask: int, infos: dict[int, tuple[bytes, str]]) -> list[Event]:
        is_dir = bool(mask & FAN_ONDIR)
        out: list[Event] = []
        target = infos.get(INFO_FID)
        if mask & FAN_CREATE and INFO_DFID_NAME in infos:
            path = self._path(*infos[INFO_DFID_NAME])
            out.append(Event("mkdir" if is_dir else "create", path))
            if is_dir and target is not None:
                self.links[target[0]] = (infos[INFO_DFID_NAME][0], infos[INFO_DFID_NAME][1])
        if mask & FAN_RENAME and INFO_OLD_DFID_NAME in infos and INFO_NEW_DFID_NAME in infos:
            old = self._path(*infos[INFO_OLD_DFID_NAME])
            new = self._path(*infos[INFO_NEW_DFID_NAME])
            out.append(Event("rename", old, new))
            if is_dir and target is not None:
                self.links[target[0]] = infos[INFO_NEW_DFID_NAME]
        if mask & FAN_DELETE and INFO_DFID_NAME in infos:
            path = self._path(*infos[INFO_DFID_NAME])
            out.append(Event("rmdir" if is_dir else "unlink", path))
        return out
