"""Benchmark: how the cost per crash state grows with the work (issue 14, item 6).

    python benchmarks/size_sweep.py [--sizes 200,400,800,1600,3200] [--case mv|writes]
                                    [--plot FILE.svg]

For each N, in a fresh process (so peak memory is that run's own), prefix persistence,
one core: `--case mv` (the default), `mv` of a lower directory of N files under
redirect_dir=off (benchmarks/mv_lower_dir.py's case, one op of many steps); `--case
writes`, a trace of N small ops (a write to each of N lower files, each copied up).
Prints steps, crash states, unique states, the check phase's crash states per second,
peak resident memory, and memory per step and per crash state; then how the rate at the
largest N compares with the smallest (the target: within 25%). With --plot, a figure of
crash states per second and peak memory against N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def writes_spec(files: int):  # type: ignore[no-untyped-def]
    from checker.spec import parse_spec

    return parse_spec({
        "name": f"a write to each of {files} lower files", "driver": "overlayfs",
        "options": {"redirect_dir": False},
        "layers": [{f"DirA/f{i:04d}": f"content {i}" for i in range(files)}],
        "ops": [{"op": "write", "path": f"DirA/f{i:04d}", "data": "new"} for i in range(files)],
    }, f"<benchmark {files} writes>")


def measure(files: int, case: str = "mv") -> dict[str, float]:
    """One size, in this process: the build and the check phase, and peak memory."""
    from benchmarks.mv_lower_dir import spec_for
    from checker.engine.explorer import Context, explore

    spec = spec_for(files) if case == "mv" else writes_spec(files)
    started = time.perf_counter()
    ctx = Context.build(spec, "prefix")
    built = time.perf_counter()
    found = explore(ctx)
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "files": files, "steps": len(ctx.trace.steps), "crash_states": found.crash_states,
        "unique_states": found.unique_states, "build_s": built - started, "check_s": done - built,
        "peak_bytes": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,400,800,1600,3200")
    parser.add_argument("--plot", metavar="FILE", help="write a figure (svg, pdf or png)")
    parser.add_argument("--case", choices=("mv", "writes"), default="mv")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child's size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.case)))
        return 0
    rows = []
    print(f"{'files':>6} {'steps':>7} {'crash states':>13} {'unique':>8} {'check s':>8} {'states/s':>9} "
          f"{'peak MB':>8} {'KB/step':>8} {'KB/state':>9}")
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--case", args.case],
                             capture_output=True, text=True,
                             check=True, cwd=ROOT)
        row = json.loads(out.stdout)
        rows.append(row)
        rate = row["crash_states"] / row["check_s"]
        kib = row["peak_bytes"] / 1024
        print(f"{n:>6} {row['steps']:>7} {row['crash_states']:>13,} {row['unique_states']:>8,} "
              f"{row['check_s']:>8.2f} {rate:>9,.0f} {kib / 1024:>8.0f} "
              f"{kib / row['steps']:>8.1f} {kib / row['crash_states']:>9.1f}", flush=True)
    first, last = rows[0], rows[-1]
    ratio = (last["crash_states"] / last["check_s"]) / (first["crash_states"] / first["check_s"])
    print(f"rate at {last['files']} files is {ratio:.0%} of the rate at {first['files']} "
          f"(flat means within 25%: {'yes' if ratio >= 0.75 else 'no'})")
    if args.plot:
        plot(rows, Path(args.plot))
    return 0


def plot(rows: list[dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [r["files"] for r in rows]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.plot(files, [r["crash_states"] / r["check_s"] for r in rows], "o-", label="crash states/s (check)")
    left.set_xscale("log", base=2)
    left.set_xlabel("files in the moved directory")
    left.set_ylabel("crash states per second")
    right = left.twinx()
    right.plot(files, [r["peak_bytes"] / 2**20 for r in rows], "s--", color="tab:red", label="peak MB")
    right.set_ylabel("peak resident memory (MB)")
    fig.legend(loc="upper center", ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None} if out.suffix == ".svg" else None)


if __name__ == "__main__":
    sys.exit(main())
