"""Running spec ops on a real mount: system calls from Python, client programs as the
real coreutils binaries (`mv -T`, `rm -rf`, `cp -a -T`), every one of them confined to
the mount (`checker.real.sandbox`): paths resolve inside it as inside a container."""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checker.real import sandbox
from checker.spec import Op

CLIENT_TIMEOUT = 60  # seconds for one real mv/rm/cp
CLIENT_FAILED = "failed"  # the result of a client program that exits non-zero
INSIDE = Path("/")  # the mount, as the confined op sees it


def client_argv(op: Op) -> list[str] | None:
    """The real command for a client-program op, or None for a raw system call."""
    a = dict(op.args)
    if op.kind == "mv":
        return ["mv", "-T", a["src"], a["dst"]]
    if op.kind == "rm":
        return ["rm", "-rf", a["path"]]
    if op.kind == "cp":
        return ["cp", "-a", "-T", a["src"], a["dst"]]
    return None


def result_name(code: int) -> int | str:
    return errno_module.errorcode.get(code, str(code)) if code else 0


def agrees(model: int | str, real: int | str) -> bool:
    """The real result is the model's: the same errno for a system call; for a client
    program (which only says failed or not), failure on both sides or on neither."""
    if real == CLIENT_FAILED:
        return model != 0
    return model == real


def run_op(mountpoint: Path, op: Op, shim: Path, remount: Callable[[bool], None] | None = None) -> int | str:
    """Perform one op confined to `mountpoint`: 0, the errno name a system call failed
    with, or CLIENT_FAILED for a client program that exited non-zero. A `remount` op
    calls `remount(rotate)` (the caller's umount and mount of the same file system)."""
    if op.kind == "remount":
        if remount is None:
            raise ValueError("a remount op needs the caller's remount")
        remount(bool(op.arg("rotate", False)))
        return 0
    argv = client_argv(op)
    if argv is not None:
        proc = subprocess.run(
            argv, cwd="/", env=sandbox.client_env(mountpoint, shim), capture_output=True,
            timeout=CLIENT_TIMEOUT,
        )
        if proc.returncode == sandbox.CONFINE_FAILED:
            raise sandbox.SandboxUnavailable(proc.stderr.decode(errors="replace").strip())
        return 0 if proc.returncode == 0 else CLIENT_FAILED
    results = sandbox.run_raw(mountpoint, raw_calls(INSIDE, op))
    return result_name(results[-1]) if results else 0


def raw_calls(m: Path, op: Op) -> list[Callable[[], None]]:
    """A raw op as the system calls the model makes for it (`op_calls`), each made by
    the op's `user` when it has one."""
    calls = op_calls(m, op)
    user = op.arg("user", 0)
    return [as_user(fn, user) for fn in calls] if user else calls


def as_user(fn: Callable[[], None], user: int) -> Callable[[], None]:
    """`fn` run with effective uid and gid `user` and no supplementary groups (the
    confined child is root again afterwards)."""
    def run() -> None:
        os.setgroups([])
        os.setegid(user)
        os.seteuid(user)
        try:
            fn()
        finally:
            os.seteuid(0)
            os.setegid(0)
    return run


def op_calls(m: Path, op: Op) -> list[Callable[[], None]]:
    """A raw op as the system calls the model makes for it, one callable each (so a
    crash can fall between them), with paths under `m` (the root of a confined child).
    Modes are applied exactly (umask 0), as in the model."""
    a = dict(op.args)

    def p(key: str) -> str:
        return str(m / a[key]) + ("/" if a[key].endswith("/") else "")  # Path drops it

    def exact(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            old = os.umask(0)
            try:
                fn()
            finally:
                os.umask(old)
        return run

    match op.kind:
        case "create":
            def create() -> None:
                os.close(os.open(p("path"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, a.get("mode", 0o644)))

            def fill() -> None:
                _write_at(p("path"), a["data"].encode(), os.O_WRONLY, 0)

            return [exact(create)] + ([fill] if "data" in a else [])
        case "write":
            def replace() -> None:
                data = a["data"].encode()
                _write_at(p("path"), data, os.O_WRONLY, 0)
                os.truncate(p("path"), len(data))

            return [replace]
        case "open":
            return _open_calls(p("path"), a, exact)
        case "pwrite":
            return [lambda: _write_at(p("path"), a["data"].encode(), os.O_WRONLY, a["offset"])]
        case "append":
            return [lambda: _write_at(p("path"), a["data"].encode(), os.O_WRONLY | os.O_APPEND, None)]
        case "truncate":
            return [lambda: os.truncate(p("path"), a["size"])]
        case "mkdir":
            return [exact(lambda: os.mkdir(p("path"), a.get("mode", 0o755)))]
        case "rmdir":
            return [lambda: os.rmdir(p("path"))]
        case "unlink":
            return [lambda: os.unlink(p("path"))]
        case "rename":
            return [lambda: os.rename(p("src"), p("dst"))]
        case "link":
            return [lambda: os.link(p("src"), p("dst"), follow_symlinks=False)]
        case "symlink":
            return [lambda: os.symlink(a["target"], p("path"))]
        case "chmod":
            return [lambda: os.chmod(p("path"), a["mode"])]
        case "chown":
            return [lambda: os.chown(p("path"), a["uid"], a["gid"], follow_symlinks=False)]
        case "utimes":
            return [lambda: os.utime(p("path"), (a["mtime"], a["mtime"]))]
        case "setxattr":
            return [lambda: os.setxattr(p("path"), a["name"], a["value"].encode())]
        case "fsync":
            def fsync() -> None:
                fd = os.open(p("path"), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

            return [fsync]
        case "sync":
            return [os.sync]
        case "syncfs":
            return [lambda: syncfs(m)]
        case "remount":
            return []  # the caller unmounts and mounts (real crash tests: every op's own cycle)
    raise ValueError(f"no real system call for op {op.kind}")


def syncfs(root: Path) -> None:
    """syncfs(2) on the mount (Python has no binding: libc's, through ctypes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


def _open_calls(path: str, a: dict[str, Any],
                exact: Callable[[Callable[[], None]], Callable[[], None]]) -> list[Callable[[], None]]:
    """open(2) with the spec's flags and, with data, write(2) on its descriptor: two
    calls, as in the model (the child holds the descriptor between them)."""
    flags = 0
    for name in a["flags"]:
        flags |= getattr(os, name)
    fds: list[int] = []

    def opener() -> None:
        fd = os.open(path, flags, a.get("mode", 0o644))
        if "data" in a:
            fds.append(fd)
        else:
            os.close(fd)

    def writer() -> None:
        fd = fds.pop()
        try:
            os.write(fd, a["data"].encode())
        finally:
            os.close(fd)

    return [exact(opener)] + ([writer] if "data" in a else [])


def _write_at(path: str, data: bytes, flags: int, offset: int | None) -> None:
    fd = os.open(path, flags)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
