"""Running spec ops on a real mount: system calls from Python, client programs as the
real coreutils binaries (`mv -T`, `rm -rf`, `cp -a -T`)."""

from __future__ import annotations

import errno
import os
import subprocess
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
    old = os.umask(0)  # the model applies modes exactly as given
    try:
        _syscall(mountpoint, op)
    except OSError as e:
        return e.errno or -1
    finally:
        os.umask(old)
    return 0


def _syscall(m: Path, op: Op) -> None:
    a = dict(op.args)

    def p(key: str) -> Path:
        return m / a[key]

    match op.kind:
        case "create":
            fd = os.open(p("path"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, a.get("mode", 0o644))
            try:
                if "data" in a:
                    os.write(fd, a["data"].encode())
            finally:
                os.close(fd)
        case "write":
            fd = os.open(p("path"), os.O_WRONLY)
            try:
                data = a["data"].encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)
        case "append":
            fd = os.open(p("path"), os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, a["data"].encode())
            finally:
                os.close(fd)
        case "truncate":
            os.truncate(p("path"), a["size"])
        case "mkdir":
            os.mkdir(p("path"), a.get("mode", 0o755))
        case "rmdir":
            os.rmdir(p("path"))
        case "unlink":
            if os.path.isdir(p("path")) and not os.path.islink(p("path")):
                raise OSError(errno.EISDIR, "is a directory")
            os.unlink(p("path"))
        case "rename":
            os.rename(p("src"), p("dst"))
        case "link":
            os.link(p("src"), p("dst"), follow_symlinks=False)
        case "symlink":
            os.symlink(a["target"], p("path"))
        case "chmod":
            os.chmod(p("path"), a["mode"])
        case "setxattr":
            os.setxattr(p("path"), a["name"], a["value"].encode())
        case "fsync":
            fd = os.open(p("path"), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        case "sync":
            os.sync()
        case _:
            raise ValueError(f"no real system call for op {op.kind}")
