"""A daemon's file-system system calls, as `strace -f -y` records them, turned into the
primitive steps they make on one directory tree (a data root).

`parse` reads the log: calls split across threads (`<unfinished ...>` / `<... resumed>`)
are joined, failed calls dropped, and every path made absolute: a dirfd's path comes
from `-y` (`AT_FDCWD</cwd>`, `3</dir>`), and a process that pivoted into a directory
(moby's chrootarchive bind-mounts a directory onto itself and pivot_roots into it to
untar a layer) has its paths taken relative to that directory.

`steps` keeps what changes the tree below the root, in order, as the model's steps:
mkdir, create (an open with O_CREAT of a name that was not there), write and pwrite
(with their data), truncate, chmod, rename, unlink, rmdir, symlink, link, mknod,
setxattr, fsync and fdatasync (`Fsync`), sync and syncfs (`Syncfs`). Paths are relative
to the root; a call on a file outside it is left out. A write through a descriptor
that was opened before the recording began is kept as a write at its offset.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from models.steps import (
    Chmod,
    Create,
    Fsync,
    Link,
    MakeSymlink,
    Mkdir,
    MknodWhiteout,
    Rename,
    Rmdir,
    SetXattr,
    Step,
    Syncfs,
    Truncate,
    Unlink,
    Write,
)

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<body>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|\?)(?P<rest>.*)$")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<tail>.*)$")
_FD = re.compile(r"^(?P<fd>AT_FDCWD|-?\d+)<(?P<path>.*)>$", re.S)


@dataclass
class Call:
    """One successful system call: its name, arguments as strace printed them, result."""

    pid: int
    name: str
    args: list[str]
    ret: int
    line: int  # 1-based line in the log


def parse(text: str) -> list[Call]:
    """The successful calls of an `strace -f -y -qq` log, in order of completion."""
    pending: dict[int, tuple[str, int]] = {}
    out: list[Call] = []
    for number, raw in enumerate(text.splitlines(), 1):
        m = _LINE.match(raw)
        if not m:
            continue
        pid, body = int(m.group("pid")), m.group("body")
        if body.startswith(("---", "+++")):
            continue
        if body.endswith(_UNFINISHED):
            pending[pid] = (body[: -len(_UNFINISHED)], number)
            continue
        resumed = _RESUMED.match(body)
        if resumed:
            head, number = pending.pop(pid, ("", number))
            if not head:
                continue
            body = head + resumed.group("tail")
        call = _CALL.match(body)
        if not call or call.group("ret") == "?" or int(call.group("ret")) < 0:
            continue
        args = split_args(call.group("args"))
        out.append(Call(pid, call.group("name"), args, int(call.group("ret")), number))
    return out


def split_args(text: str) -> list[str]:
    """Top-level arguments of a call (commas inside quotes, brackets and <paths> stay)."""
    args, depth, quote, escape, start = [], 0, False, False, 0
    for i, ch in enumerate(text):
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                quote = False
        elif ch == '"':
            quote = True
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    if tail:
        args.append(tail)
    return args


def string(arg: str) -> bytes:
    """A quoted strace string as bytes (`-xx` hex escapes and C escapes); a truncated
    string (`"..."...`) gives what was printed."""
    body = arg.removesuffix("...")
    if not (body.startswith('"') and body.endswith('"')):
        return b""
    return ast.literal_eval("b" + body) if body.isascii() else body[1:-1].encode()


def fd_path(arg: str) -> str | None:
    m = _FD.match(arg)
    return m.group("path") if m else None


@dataclass
class Recorder:
    """Turns the calls into steps on the tree below `root` (an absolute path)."""

    root: str
    existing: set[str] = field(default_factory=set)  # relative paths there before the calls
    chroots: dict[int, str] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # a file's write position (threads share fds)
    #: bind mounts of a path on itself that are not a chroot (a driver making its home
    #: a private mount, as containers/storage's overlay Init does)
    not_chroots: frozenset[str] = frozenset()
    #: bind mounts of one path at another (containerd applies a base layer through a bind
    #: mount of the snapshot's `fs` under `tmpmounts/`): target -> source
    binds: dict[str, str] = field(default_factory=dict)
    #: files opened O_SYNC (each write is durable: a write then an fsync)
    synced: set[str] = field(default_factory=set)

    def relative(self, path: str | None) -> str | None:
        if path is None:
            return None
        path = os.path.normpath(path)
        for target, source in self.binds.items():
            if path.startswith(target + "/"):  # below the mount point: the bound tree
                path = source + path[len(target):]
                break
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1 :]
        return None

    def resolve(self, call: Call, dirfd: str | None, name: str) -> str | None:
        """The absolute path of `name` (a quoted argument) relative to `dirfd`."""
        text = string(name).decode("utf-8", "surrogateescape")
        base = self.chroots.get(call.pid, "")
        if text.startswith("/"):
            # before its pivot_root the process still names host paths
            return base + text if base and not text.startswith(base + "/") else text
        where = fd_path(dirfd) if dirfd is not None else None
        if where is None:
            return None
        if base and where.startswith("/") and not where.startswith(base):
            where = base + where if where != "/" else base
        return os.path.join(where, text)

    def fd_target(self, call: Call, arg: str) -> str | None:
        where = fd_path(arg)
        if where is None:
            return None
        base = self.chroots.get(call.pid, "")
        if base and not where.startswith(base):
            return base + where if where != "/" else base
        return where

    def steps(self, calls: list[Call]) -> list[tuple[Step, Call]]:
        out: list[tuple[Step, Call]] = []
        for call in calls:
            for step in self.step_of(call):
                out.append((step, call))
        return out

    def step_of(self, call: Call) -> list[Step]:  # noqa: C901 - one case per system call
        a, n = call.args, call.name
        if n == "mount" and len(a) >= 4 and "MS_BIND" in a[3]:
            src, dst = string(a[0]).decode(errors="replace"), string(a[1]).decode(errors="replace")
            if src and src == dst and os.path.normpath(src) not in self.not_chroots:
                self.chroots[call.pid] = os.path.normpath(src)  # chrootarchive: pivot_root into it
            elif src and dst and src != dst:
                self.binds[os.path.normpath(dst)] = os.path.normpath(src)
            return []
        if n in ("mkdir", "mkdirat"):
            path = self.resolve(call, a[0] if n == "mkdirat" else None, a[-2])
            return self.made(path, lambda p: Mkdir(p, int(a[-1], 8)))
        if n in ("open", "openat", "openat2", "creat"):
            return self.opened(call)
        if n in ("write", "pwrite64", "writev", "pwritev", "pwritev2"):
            return self.written(call)
        if n == "ftruncate":
            path = self.relative(self.fd_target(call, a[0]))
            return [Truncate(path, int(a[1]))] if path else []
        if n == "truncate":
            path = self.relative(self.resolve(call, None, a[0]))
            return [Truncate(path, int(a[1]))] if path else []
        if n in ("unlink", "unlinkat", "rmdir"):
            dirfd = a[0] if n == "unlinkat" else None
            path = self.relative(self.resolve(call, dirfd, a[1] if n == "unlinkat" else a[0]))
            if path is None or path == "":
                return []
            self.existing.discard(path)
            rmdir = n == "rmdir" or (n == "unlinkat" and "AT_REMOVEDIR" in a[2])
            return [Rmdir(path) if rmdir else Unlink(path)]
        if n in ("rename", "renameat", "renameat2"):
            if n == "rename":
                src, dst = self.resolve(call, None, a[0]), self.resolve(call, None, a[1])
            else:
                src, dst = self.resolve(call, a[0], a[1]), self.resolve(call, a[2], a[3])
            rs, rd = self.relative(src), self.relative(dst)
            if rs is None or rd is None:
                return []
            self.moved(rs, rd)
            return [Rename(rs, rd)]
        if n in ("symlink", "symlinkat"):
            target = string(a[0]).decode("utf-8", "surrogateescape")
            path = self.resolve(call, a[1] if n == "symlinkat" else None, a[-1])
            return self.made(path, lambda p: MakeSymlink(target, p))
        if n in ("link", "linkat"):
            src = self.resolve(call, a[0] if n == "linkat" else None, a[1] if n == "linkat" else a[0])
            dst = self.resolve(call, a[2] if n == "linkat" else None, a[3] if n == "linkat" else a[1])
            rs, rd = self.relative(src), self.relative(dst)
            if rs is None or rd is None:
                return []
            self.existing.add(rd)
            return [Link(rs, rd)]
        if n in ("mknod", "mknodat"):
            path = self.resolve(call, a[0] if n == "mknodat" else None, a[-3] if n == "mknodat" else a[0])
            return self.made(path, MknodWhiteout)
        if n in ("fchmodat", "chmod", "fchmod"):
            if n == "fchmod":
                path = self.relative(self.fd_target(call, a[0]))
            else:
                path = self.relative(self.resolve(call, a[0] if n == "fchmodat" else None, a[-2]))
            return [Chmod(path, int(a[-1], 8))] if path else []
        if n in ("setxattr", "lsetxattr", "fsetxattr"):
            path = (self.relative(self.fd_target(call, a[0])) if n == "fsetxattr"
                    else self.relative(self.resolve(call, None, a[0])))
            name = string(a[1]).decode(errors="replace")
            return [SetXattr(path, name, string(a[2]))] if path is not None else []
        if n in ("fsync", "fdatasync"):
            path = self.relative(self.fd_target(call, a[0]))
            return [Fsync(path)] if path is not None else []
        if n in ("sync", "syncfs"):
            return [Syncfs("")]
        return []

    def made(self, path: str | None, make: object) -> list[Step]:
        rel = self.relative(path)
        if rel is None or rel == "":
            return []
        self.existing.add(rel)
        return [make(rel)]  # type: ignore[operator]

    def moved(self, src: str, dst: str) -> None:
        for p in [p for p in self.existing if p == src or p.startswith(src + "/")]:
            self.existing.discard(p)
            self.existing.add(dst + p[len(src):])

    def opened(self, call: Call) -> list[Step]:
        a = call.args
        if call.name == "creat":
            path, flags = self.resolve(call, None, a[0]), "O_CREAT|O_TRUNC"
        elif call.name == "open":
            path, flags = self.resolve(call, None, a[0]), a[1]
        else:
            flags = a[2] if call.name == "openat" else a[2]
            path = self.resolve(call, a[0], a[1])
        rel = self.relative(path)
        if rel is None or rel == "" or "O_CREAT" not in flags and "O_TRUNC" not in flags:
            return []
        self.offsets[rel] = 0
        if "O_SYNC" in flags or "O_DSYNC" in flags:
            self.synced.add(rel)
        else:
            self.synced.discard(rel)
        if "O_CREAT" in flags and rel not in self.existing:
            self.existing.add(rel)
            mode = int(a[-1], 8) if call.name != "openat2" and a[-1].startswith("0") else 0o644
            return [Create(rel, mode & 0o7777)]
        if "O_TRUNC" in flags:
            return [Truncate(rel, 0)]
        return []

    def written(self, call: Call) -> list[Step]:
        a = call.args
        path = self.relative(self.fd_target(call, a[0]))
        if path is None or path == "":
            return []
        sync: list[Step] = [Fsync(path)] if path in self.synced else []
        if call.name == "pwrite64":
            return [Write(path, string(a[1])[: call.ret], int(a[3])), *sync] if call.ret else []
        data = string(a[1])[: call.ret] if call.name == "write" else b""
        offset = self.offsets.get(path, 0)
        self.offsets[path] = offset + call.ret
        return [Write(path, data, offset), *sync] if call.ret else []


def recorded_steps(log: Path, root: Path, existing: set[str]) -> list[tuple[Step, Call]]:
    """The steps an strace log shows on the tree below `root`."""
    calls = parse(log.read_text(errors="surrogateescape"))
    return Recorder(os.path.normpath(str(root)), set(existing)).steps(calls)


def tree_paths(root: Path) -> set[str]:
    """Every path below `root`, relative to it (what exists before a recording)."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            out.add(name if rel == "." else f"{rel}/{name}")
    return out
