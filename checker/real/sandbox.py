"""Confining the ops of the real modes to the mount, as a container confines them.

A spec comes from anyone, and the real modes run as root. Inside a container an absolute
symlink target, or a `..` that climbs past the top, resolves inside the container's root;
so does it here, and so does the model (`Driver.resolve_path`). Every op of a real run
runs with the mount as its root directory:

- client programs (the real `mv`, `rm`, `cp` binaries) get a tiny preloaded library whose
  constructor chroots into the mount before `main` runs: the binary and its shared
  libraries are loaded from the host first, then nothing outside the mount can be named.
  Before `main` the program has read no argument, so no spec path is ever resolved
  outside the mount. It is compiled once per workspace with the system C compiler.
- raw system calls run in a forked child of crashcheck that chroots into the mount and
  reports each call's errno through a pipe.

chroot(2) keeps `..` at the new root and restarts absolute paths there, which is exactly
the path walk of a process whose root is the container's. Nothing here opens a path of
the host on a spec's behalf.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from checker.errors import CrashcheckError

ROOT_ENV = "CRASHCHECK_ROOT"
COMPILE_TIMEOUT = 60  # seconds for the C compiler; a hung compiler is an environment problem

SHIM_SOURCE = r"""
/* crashcheck: confine a client program to a mount (chroot before main). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void crashcheck_confine(void) {
    const char *root = getenv("CRASHCHECK_ROOT");
    if (root == NULL)
        return;
    if (chdir(root) != 0 || chroot(".") != 0 || chdir("/") != 0) {
        perror("crashcheck: cannot confine the client to its mount");
        _exit(125);
    }
    unsetenv("CRASHCHECK_ROOT");
    unsetenv("LD_PRELOAD");
}
"""
CONFINE_FAILED = 125  # the shim's exit status when it cannot chroot


class SandboxUnavailable(CrashcheckError):
    """Ops cannot be confined here (no C compiler for the shim, not root)."""


def compiler() -> str | None:
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "confining ops to the mount needs root (chroot)"
    if compiler() is None:
        return "no C compiler (cc) to build the confinement shim (apt-get install gcc)"
    return None


def build_shim(directory: Path) -> Path:
    """Compile the confinement shim into `directory` (a workspace of ours)."""
    cc = compiler()
    if cc is None:
        raise SandboxUnavailable(unavailable_reason() or "no C compiler")
    source = directory / "confine.c"
    source.write_text(SHIM_SOURCE)
    shim = directory / "confine.so"
    proc = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source)],
        capture_output=True, text=True, timeout=COMPILE_TIMEOUT,
    )
    if proc.returncode != 0:
        raise SandboxUnavailable(f"cannot build the confinement shim: {proc.stderr.strip()[:200]}")
    return shim


def client_env(root: Path, shim: Path) -> dict[str, str]:
    """The environment of a client confined to `root`: C locale (nothing to load after the
    chroot), the shim preloaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "LC_"))}
    env.update({"LC_ALL": "C", ROOT_ENV: str(root), "LD_PRELOAD": str(shim)})
    return env


def strace_env_args(root: Path, shim: Path) -> list[str]:
    """strace's `-E` options that give only the traced client the confining environment
    (strace itself must keep the host's root to write its log)."""
    return ["-E", "LC_ALL=C", "-E", f"{ROOT_ENV}={root}", "-E", f"LD_PRELOAD={shim}"]


RawCall = Callable[[], None]


def run_raw(root: Path, calls: list[RawCall]) -> list[int]:
    """Run system calls one after the other in a child confined to `root`; stop at the
    first that fails. Returns the errno of each call made (0 = success)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: confine, run, report, never return into crashcheck
        code = 0
        try:
            os.close(read_end)
            os.chdir(root)
            os.chroot(".")
            os.chdir("/")
            results: list[int] = []
            for call in calls:
                try:
                    call()
                    results.append(0)
                except OSError as e:
                    results.append(e.errno or -1)
                    break
            os.write(write_end, json.dumps(results).encode())
        except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
            code = CONFINE_FAILED
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    try:
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not chunks:
        raise SandboxUnavailable(f"could not run the op confined to {root}")
    return list(json.loads(b"".join(chunks)))
