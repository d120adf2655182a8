"""Benchmark: `crashcheck explore` at depth 2 and 3 (issue 14, items 1 and 2).

    python benchmarks/explore_depth.py [--depths 2,3] [--jobs N] [--option KEY=VALUE ...]

Runs `crashcheck explore --depth D` (overlayfs, redirect_dir=off, prefix persistence by
default) in a fresh process per depth, as a user would, and prints the wall time, the
workloads checked and skipped, the crash states they cover, what the incremental search
ran and reused, peak memory, and the driver-induced groups. The target: depth 3 within
10 minutes on a 2-core machine, depth 2 in seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(depth: int, jobs: int, options: list[str]) -> dict[str, object]:
    args = [sys.executable, "-m", "checker", "explore", "--depth", str(depth), "--jobs", str(jobs)]
    for option in options:
        args += ["--option", option]
    started = time.perf_counter()
    text = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest process
    figures = {
        "workloads": _number(r"(\d+) workloads checked", text),
        "skipped": _number(r"\((\d+) skipped", text),
        "crash_states": _number(r"(\d+) crash states,", text),
        "ops_run": _number(r"(\d+) op check\(s\) run", text),
        "ops_reused": _number(r"(\d+) reused \(the same op", text),
        "assessed": _number(r"(\d+) of the crash states assessed", text),
        "groups": re.findall(r"^    (\S+ in \S+):", text, re.M),
    }
    return {"depth": depth, "jobs": jobs, "seconds": round(seconds, 1), "peak_mb": peak // 2**20, **figures}


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,3")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--option", action="append", default=None)
    parser.add_argument("--json", action="store_true", help="one JSON line per depth")
    args = parser.parse_args()
    options = args.option if args.option is not None else ["redirect_dir=off"]
    for depth in (int(d) for d in args.depths.split(",")):
        row = run(depth, args.jobs, options)
        if args.json:
            print(json.dumps(row), flush=True)
            continue
        print(f"depth {depth} ({args.jobs} processes, {', '.join(options) or 'defaults'}): "
              f"{row['seconds']} s wall, peak {row['peak_mb']} MB per process", flush=True)
        print(f"  {row['workloads']:,} workloads checked, {row['skipped']:,} skipped, "
              f"{row['crash_states']:,} crash states covered, {row['assessed']:,} assessed", flush=True)
        print(f"  op checks: {row['ops_run']:,} run, {row['ops_reused']:,} reused; driver-induced: "
              f"{', '.join(row['groups']) or 'none'}", flush=True)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
