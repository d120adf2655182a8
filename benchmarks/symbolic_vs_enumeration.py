"""Benchmark: the symbolic engine against enumeration as traces grow: `mv` of a lower
directory of N files (redirect_dir=off) under weak persistence.

    python benchmarks/symbolic_vs_enumeration.py [--files 5 20 50 100 200] [--enumerate-timeout 60]

For each N: the trace length, then enumeration (stopped at the timeout: how many crash
states it covered) and the symbolic engine (time to a decided verdict).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checker.engine.check import check  # noqa: E402
from checker.engine.explorer import Budget  # noqa: E402
from checker.spec import parse_spec  # noqa: E402


def spec_for(files: int, redirect: bool = False):
    return parse_spec(
        {
            "name": f"mv of a lower directory with {files} files",
            "driver": "overlayfs",
            "persistence": "weak",
            "options": {"redirect_dir": redirect},
            "layers": [{f"DirA/f{i:04d}": f"content {i}" for i in range(files)}],
            "ops": [{"op": "mv", "src": "DirA", "dst": "DirX"}],
        },
        f"<benchmark {files} files>",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[5, 20, 50, 100, 200])
    parser.add_argument("--enumerate-timeout", type=float, default=60.0)
    args = parser.parse_args()
    print(f"{'files':>5} {'steps':>6} | {'enumerate':>28} | {'symbolic':>24}")
    for n in args.files:
        spec = spec_for(n)
        started = time.perf_counter()
        enum = check(spec, engine="enumerate", budget=Budget(timeout=args.enumerate_timeout))
        enum_s = time.perf_counter() - started
        started = time.perf_counter()
        sym = check(spec, engine="symbolic", budget=Budget(timeout=600))
        sym_s = time.perf_counter() - started
        cut = " (cut)" if enum.bounded else ""
        enum_text = f"{enum.verdict} {enum.crash_states} states {enum_s:.1f}s{cut}"
        print(f"{n:>5} {sym.steps:>6} | {enum_text:>28} | {sym.verdict + f' {sym_s:.2f}s':>24}")


if __name__ == "__main__":
    main()
