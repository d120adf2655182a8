"""Fidelity: generated op sequences on the overlayfs model and on this machine's kernel
(root and overlayfs needed; syncs are compared where ext4 trace events can be had).

    python benchmarks/fidelity.py [--sequences N] [--first-seed S]

Sequence k uses seed S + k (tests/strategies.py: two lower layers, an upper layer, 1 to 6
ops over a small name space, among them mv/rm/cp through coreutils) and the mount
options of combination (seed - 100,000) mod 6: redirect_dir off or on with fsync ordered or strict,
and metacopy on with fsync ordered or strict. Seeds from 200,000 on add the generator's
newer choices (hard links in the bottom layer, `remount rotate`, xattrs in overlay's own
namespaces) and run combination (seed - 200,000) mod 6: index=on with fsync ordered or
strict or with redirect_dir on, none of the options, userxattr, or xino=on. Seeds from
300,000 on run the newer choices under nfs_export=on, combination (seed - 300,000) mod 3:
alone, with redirect_dir on, or with fsync strict. For
every op the result, the merged view and the syncs must be the model's, and at the end
the upper dirs. Prints the agreement figure and every disagreement with its seed.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checker.real import kernel, sandbox, synctrace  # noqa: E402
from checker.real.fidelity import compare_workload  # noqa: E402
from checker.spec import parse_spec  # noqa: E402
from tests.strategies import RandomChooser, gen_workload  # noqa: E402

COMBINATIONS = [
    {"redirect_dir": redirect, "fsync": fsync}
    for redirect, fsync in itertools.product(("off", "on"), ("ordered", "strict"))
] + [{"metacopy": True, "fsync": fsync} for fsync in ("ordered", "strict")]


INDEX_COMBINATIONS = [
    {"index": True}, {"index": True, "fsync": "strict"}, {"index": True, "redirect_dir": "on"}, {},
    {"userxattr": True}, {"xino": "on"},
]

NFS_COMBINATIONS = [
    {"nfs_export": True}, {"nfs_export": True, "redirect_dir": "on"}, {"nfs_export": True, "fsync": "strict"},
]

FIRST_SEED = 100_000
INDEX_SEED = 200_000
NFS_SEED = 300_000


def options_of(seed: int) -> dict[str, object]:
    """The mount options of sequence `seed`: the same whatever --first-seed (so one
    seed of a report is re-run alone with --first-seed SEED --sequences 1)."""
    if seed >= NFS_SEED:
        return dict(NFS_COMBINATIONS[(seed - NFS_SEED) % len(NFS_COMBINATIONS)])
    if seed >= INDEX_SEED:
        return dict(INDEX_COMBINATIONS[(seed - INDEX_SEED) % len(INDEX_COMBINATIONS)])
    return dict(COMBINATIONS[(seed - FIRST_SEED) % len(COMBINATIONS)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    args = parser.parse_args()
    reason = kernel.overlay_unavailable_reason() or sandbox.unavailable_reason()
    if reason:
        print(f"fidelity: cannot run here: {reason}")
        return 2
    started = time.perf_counter()
    ops = agreeing = 0
    failures: list[str] = []
    with kernel.workspace("fidelity") as ws:
        shim = sandbox.build_shim(ws.root)
        fs = ws.path("fs")
        tracer = synctrace.traced_file_system(ws, fs, 256)
        if tracer is None:
            print(f"syncs not compared: {synctrace.unavailable_reason() or 'the trace could not be set up'}")
        for k in range(args.sequences):
            seed = args.first_seed + k
            options = options_of(seed)
            table = gen_workload(RandomChooser(seed), options=dict(options), redirects=False,
                                 extended=seed >= INDEX_SEED)
            spec = parse_spec(table, f"<sequence {seed}>")
            count, found = compare_workload(ws, shim, spec, fs / f"q{seed}", tracer)
            ops += count
            if found:
                failures += [f"seed {seed} {options}: {d}" for d in found]
                for line in failures[-len(found):]:
                    print("  disagreement: " + line, flush=True)
            else:
                agreeing += 1
            if (k + 1) % 1000 == 0:
                print(f"  {k + 1} sequences, {agreeing} agree ({time.perf_counter() - started:.0f} s)",
                      flush=True)
        if tracer is not None:
            tracer.close()
    elapsed = time.perf_counter() - started
    share = 100.0 * agreeing / args.sequences if args.sequences else 100.0
    print(f"{args.sequences} sequences ({ops} ops) on Linux {kernel.kernel_release()}: {agreeing} agree "
          f"with the model ({share:.2f}%), results, views, syncs and upper dirs; {elapsed:.0f} s")
    for line in failures:
        print("  " + line)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
