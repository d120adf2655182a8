"""Benchmark: crash states per second, model vs real kernel vs fuse-overlayfs, on one
spec, measured in one run (root, overlayfs, fuse-overlayfs and strace needed).

    python benchmarks/real_vs_model.py [SPEC]   (default: the seed case)

The model enumerates crash states of its trace; the real engines each mount a fresh
copy, run the op until it is killed at one system call, unmount, remount and read the
view, per crash point.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checker.engine.check import check  # noqa: E402
from checker.real.crash import real_check, unavailable_reason  # noqa: E402
from checker.spec import load_spec  # noqa: E402

DEFAULT = Path(__file__).resolve().parent.parent / "specs/overlayfs/mv-lower-dir-redirect-off.toml"


def main() -> None:
    spec = load_spec(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
    print(f"spec: {spec.file}")
    print(f"{'engine':<16} {'crash states':>12} {'seconds':>9} {'states/s':>10}")
    started = time.perf_counter()
    model = check(spec)
    elapsed = time.perf_counter() - started
    print(f"{'model':<16} {model.crash_states:>12} {elapsed:>9.3f} {model.crash_states / elapsed:>10,.0f}")
    for impl in ("kernel", "fuse-overlayfs"):
        reason = unavailable_reason(impl)
        if reason:
            print(f"{impl:<16} unavailable: {reason}")
            continue
        started = time.perf_counter()
        real = real_check(spec, impl)
        elapsed = time.perf_counter() - started
        print(f"{impl:<16} {real.crash_points:>12} {elapsed:>9.3f} {real.crash_points / elapsed:>10,.1f}")


if __name__ == "__main__":
    main()
