"""Running spec ops on a real mount: system calls from Python, client programs as the
real coreutils binaries (`mv -T`, `rm -rf`, `cp -a -T`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from checker.spec import Op

CLIENT_TIMEOUT = 60  # seconds for one real mv/rm/cp


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


def run_op(mountpoint: Path, op: Op) -> int:
    """Perform one op under `mountpoint`; returns the errno it failed with (0 on success,
    -1 for a client program that failed)."""
    argv = client_argv(op)
    if argv is not None:
        proc = subprocess.run(argv, cwd=mountpoint, capture_output=True, timeout=CLIENT_TIMEOUT)
        return 0 if proc.returncode == 0 else -1
    for call in raw_calls(mountpoint, op):
        try:
            call()
        except OSError as e:
            return e.errno or -1
    return 0


def raw_calls(m: Path, op: Op) -> list[Callable[[], None]]:
    """A raw op as the system calls the model makes for it, one callable each (so a
    crash can fall between them). Modes are applied exactly (umask 0), as in the model."""
    a = dict(op.args)

    def p(key: str) -> Path:
        return m / a[key]

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
    raise ValueError(f"no real system call for op {op.kind}")


def _write_at(path: Path, data: bytes, flags: int, offset: int | None) -> None:
    fd = os.open(path, flags)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
