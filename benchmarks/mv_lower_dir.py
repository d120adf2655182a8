"""Benchmark: crash states checked per second for `mv` of a lower directory holding N
files under redirect_dir=off (the seed case, scaled up), prefix persistence, one core.

    python benchmarks/mv_lower_dir.py [--files 200] [--repeat 3]

Prints the trace size, crash states and unique states, then the best of --repeat runs
for: building the trace (running the workload on the model once), checking every crash
state (materialize, recover, view, invariants), and both together; with crash states
per second for checking and end to end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checker.engine.explorer import Context, explore  # noqa: E402
from checker.spec import parse_spec  # noqa: E402


def spec_for(files: int):
    return parse_spec(
        {
            "name": f"mv of a lower directory with {files} files, redirect_dir=off",
            "driver": "overlayfs",
            "options": {"redirect_dir": False},
            "layers": [{f"DirA/f{i:04d}": f"content {i}" for i in range(files)}],
            "ops": [{"op": "mv", "src": "DirA", "dst": "DirX"}],
        },
        f"<benchmark {files} files>",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    spec = spec_for(args.files)
    builds, checks = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        ctx = Context.build(spec, "prefix")
        built = time.perf_counter()
        found = explore(ctx)
        checks.append(time.perf_counter() - built)
        builds.append(built - started)
    build, check_s = min(builds), min(checks)
    total = min(b + c for b, c in zip(builds, checks, strict=True))
    n = found.crash_states
    print(f"files:              {args.files}")
    print(f"steps:              {len(ctx.trace.steps)}")
    print(f"crash states:       {n}")
    print(f"unique states:      {found.unique_states}")
    print(f"violations:         {len(found.violations)}")
    print(f"build trace:        {build * 1000:.0f} ms (best of {args.repeat})")
    print(f"check crash states: {check_s * 1000:.0f} ms -> {n / check_s:,.0f} crash states/s")
    print(f"end to end:         {total * 1000:.0f} ms -> {n / total:,.0f} crash states/s")


if __name__ == "__main__":
    main()
