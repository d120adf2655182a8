"""Benchmark: the dockerd modes on a few docker-overlay2 specs, measured in one run (root,
docker.io, busybox-static, strace and a C compiler needed).

    python benchmarks/dockerd_modes.py

For each spec: the model under its own persistence model, dockerd killed at every call
of its daemon ops (`real --impl dockerd`: a fresh daemon brought to the state before the
op per crash point, killed, started again, checked), and dockerd's recorded calls
checked under ordered-metadata (`real --impl dockerd --persistence ordered-metadata`:
one recording, then the model checker). Kill runs cost about a daemon's set-up each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checker.engine.check import check  # noqa: E402
from checker.real.dockerd_crash import (  # noqa: E402
    dockerd_check,
    dockerd_unavailable_reason,
    recorded_check,  # noqa: E402
)
from checker.spec import load_spec  # noqa: E402

SPECS = ("tag-store-atomic", "pull-prefix-consistent", "run-killed-leaks-layers")


def main() -> None:
    reason = dockerd_unavailable_reason()
    if reason:
        print(f"dockerd modes unavailable: {reason}")
        return
    print(f"{'spec':<26} {'mode':<34} {'states':>7} {'seconds':>8} {'states/s':>9}")
    for stem in SPECS:
        spec = load_spec(ROOT / f"specs/docker-overlay2/{stem}.toml")
        runs = []
        started = time.perf_counter()
        model = check(spec)
        runs.append((f"model ({model.persistence})", model.crash_states, time.perf_counter() - started))
        started = time.perf_counter()
        killed = dockerd_check(spec)
        runs.append(("dockerd killed at each call", killed.crash_points, time.perf_counter() - started))
        started = time.perf_counter()
        recorded = recorded_check(spec, "ordered-metadata")
        runs.append(("dockerd recorded, ordered-metadata", recorded.result.crash_states,
                     time.perf_counter() - started))
        for mode, states, seconds in runs:
            print(f"{stem:<26} {mode:<34} {states:>7} {seconds:>8.2f} {states / seconds:>9,.1f}")


if __name__ == "__main__":
    main()
