"""Benchmark: each driver's built-in specs (specs/<driver>/), checked end to end.

    python benchmarks/drivers.py [--repeat 3]

For each driver: the number of specs, steps and crash states of its suite, and the best
of --repeat runs of checking all of it (trace, crash states, invariants), with crash
states per second. A run of a fresh process per driver would add start-up; this is the
checking alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checker.engine.check import check  # noqa: E402
from checker.engine.explorer import clear_contexts  # noqa: E402
from checker.spec import load_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'driver':<16} {'specs':>5} {'steps':>6} {'crash states':>13} {'seconds':>8} {'states/s':>9}")
    for directory in sorted(p for p in (ROOT / "specs").iterdir() if p.is_dir()):
        specs = [load_spec(p) for p in sorted(directory.glob("*.toml"))]
        best = float("inf")
        steps = states = 0
        for _ in range(args.repeat):
            clear_contexts()  # no cached traces between runs
            started = time.perf_counter()
            results = [check(spec) for spec in specs]
            best = min(best, time.perf_counter() - started)
            steps = sum(r.steps for r in results)
            states = sum(r.crash_states for r in results)
        rate = states / best
        print(f"{directory.name:<16} {len(specs):>5} {steps:>6} {states:>13} {best:>8.3f} {rate:>9,.0f}")


if __name__ == "__main__":
    main()
