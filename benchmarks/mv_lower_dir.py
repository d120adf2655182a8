"""Benchmark: crash states checked per second for `mv` of a lower directory holding N
files under redirect_dir=off (the seed case, scaled up), prefix persistence, one core.

    python benchmarks/mv_lower_dir.py [--files 200] [--repeat 3] [--profile]

Prints the trace size, crash states and unique states, then the best of --repeat runs
for: building the trace (running the workload on the model once), checking every crash
state (materialize, recover, view, invariants), and both together; with crash states
per second for checking and end to end. --profile adds where a crash state's time goes
(recovery, view, each invariant, the rest).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
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
    parser.add_argument("--profile", action="store_true", help="print where a crash state's time goes")
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak memory:        {peak / 2**20:.0f} MB -> {peak / found.unique_states:,.0f} bytes per unique "
          "state (the process, interpreter included)")
    if args.profile:
        profile(ctx, args.repeat)


def profile(ctx: Context, repeat: int) -> None:
    """Where a crash state's time goes: each part on its own over every crash state
    (best of `repeat`, the trace built and the mount's memos warm), in microseconds."""
    from checker.engine.invariants import CrashContext

    states = [root for _, root in ctx.persistence.crash_states(ctx.trace, ctx.constraints, ctx.block_size)]
    mount, n = ctx.trace.mount, len(states)

    def best(part: Callable[[], object]) -> float:
        times = []
        for _ in range(repeat):
            ctx.drop_caches()
            started = time.perf_counter()
            part()
            times.append(time.perf_counter() - started)
        return min(times) / n * 1e6

    whole = best(lambda: explore(ctx))
    recovered = [mount.recover(root) for root in states]
    recover = best(lambda: [mount.recover(root) for root in states])
    views = [mount.view(r.root) for r in recovered]
    view = best(lambda: [mount.view(r.root) for r in recovered])
    contexts = [
        CrashContext(ctx.trace, ctx.trace.op_record(ctx.trace.op_at_step(k)), r, v, mount, ctx.recover,
                     prefix_views=ctx.prefix_views)
        for k, (r, v) in enumerate(zip(recovered, views, strict=True))
    ]
    each = {inv.name: best(lambda inv=inv: [inv.check(c) for c in contexts])
            for inv in ctx.invariants if inv.crash_level}
    rest = whole - recover - view - sum(each.values())
    parts = " + ".join(f"{k} {v:.1f}" for k, v in each.items())
    print(f"profile, per crash state (us): check phase {whole:.1f} = recover {recover:.1f} + "
          f"view {view:.1f} + {parts} + the rest {rest:.1f} (findings memo, violation records, bookkeeping)")


if __name__ == "__main__":
    main()
