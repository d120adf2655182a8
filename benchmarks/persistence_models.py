"""Benchmark: enumeration throughput (crash states checked per second) under each
persistence model, on the seed case scaled to N files (redirect_dir=off).

    python benchmarks/persistence_models.py [--files 3] [--max-states 100000]

Under prefix every crash state is enumerated; under ordered-metadata and weak the number
of crash states explodes with N, so the run stops at --max-states (the rate is what
matters here).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--max-states", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{'model':<18} {'steps':>6} {'crash states':>13} {'unique':>8} {'seconds':>8} {'states/s':>10}")
    for model in ("prefix", "ordered-metadata", "weak"):
        spec = parse_spec({
            "name": "bench", "driver": "overlayfs", "persistence": model,
            "options": {"redirect_dir": False},
            "layers": [{f"DirA/f{i}": f"content {i}" for i in range(args.files)}],
            "ops": [{"op": "mv", "src": "DirA", "dst": "DirX"}],
        })
        started = time.perf_counter()
        r = check(spec, engine="enumerate", budget=Budget(max_states=args.max_states))
        elapsed = time.perf_counter() - started
        print(f"{model:<18} {r.steps:>6} {r.crash_states:>13} {r.unique_states:>8} {elapsed:>8.2f} "
              f"{r.crash_states / elapsed:>10,.0f}")


if __name__ == "__main__":
    main()
