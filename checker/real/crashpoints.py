"""The crash-point tool of the engine crash runs (`crashpoint.c`): built into a run's
workspace, attached with ptrace to an engine (dockerd, containerd, or podman's own
process), it numbers across every thread and helper each system call that changes
something under the engine's root, and with `kill_at` N kills the engine on entry to
call N. Its log is one line per call (`number<TAB>process<TAB>syscall<TAB>paths...`),
`# attached` first and `# killed` when it killed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from checker.real import sandbox
from checker.real.crash import RealUnavailable

CRASHPOINT_SOURCE = Path(__file__).with_name("crashpoint.c")
KILLED = "killed"  # an op's result when the engine died under it


def build_crashpoint(directory: Path) -> Path:
    """Compile `crashpoint.c` into `directory` (a workspace of ours)."""
    cc = sandbox.compiler()
    if cc is None:
        raise RealUnavailable("no C compiler (cc) to build the crash-point tool (apt-get install gcc)")
    tool = directory / "crashpoint"
    proc = subprocess.run([cc, "-O2", "-o", str(tool), str(CRASHPOINT_SOURCE)], capture_output=True,
                          text=True, timeout=sandbox.COMPILE_TIMEOUT)
    if proc.returncode != 0:
        raise RealUnavailable(f"cannot build the crash-point tool: {proc.stderr.strip()[:200]}")
    return tool


@dataclass(frozen=True)
class Call:
    """One crash point as crashpoint logs it."""

    number: int
    process: str  # the engine, or a helper it runs (dockerd's `exe`: its chrooted untar)
    syscall: str
    paths: tuple[str, ...]  # relative to the engine's root

    def text(self, generic: Callable[[str], str] = str) -> str:
        """The call as findings show it, its paths made generic."""
        return f"{self.syscall}({', '.join(generic(p) for p in self.paths)})"


def parse_points(text: str) -> tuple[list[Call], bool]:
    """The calls of a crashpoint log, and whether it killed the engine."""
    calls: list[Call] = []
    killed = False
    for line in text.splitlines():
        if line == "# killed":
            killed = True
        if not line or line.startswith("#"):
            continue
        number, process, syscall, *paths = line.split("\t")
        calls.append(Call(int(number), process, syscall, tuple(paths)))
    return calls, killed
