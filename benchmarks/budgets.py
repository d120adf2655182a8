"""Benchmark: the worst cases for memory and time, each run under the default budget.

    python benchmarks/budgets.py [--suite-timeout 60]

Every case is a fresh `crashcheck run` process; the table shows what it ended with (a
verdict, or `unknown` and why), its crash states, seconds, peak resident memory, and the
bytes each visited crash state cost over a trivial run's peak. Before budgets, the
docker and overlayfs weak cases grew to 19 GB, the 2,000 syncs took 400 s, the weak
`pull, run, write` died with a traceback, and `truncate` to 10**18 ran out of memory.
`--suite-timeout` bounds each spec of the weak overlayfs suite (its largest spec has
tens of millions of crash states; under the memory budget alone it runs for about an
hour and stops at --max-memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PULL_RUN = 'name = "pull and run"\ndriver = "docker-overlay2"\n[[layers]]\n"etc/a" = "x"\n' \
           '[[ops]]\nop = "pull"\n[[ops]]\nop = "run"\n'
WRITE = '[[ops]]\nop = "write"\npath = "containers/app/etc/a"\ndata = "y"\n'
TRUNCATE = ('name = "truncate"\ndriver = "plain"\n[[ops]]\nop = "truncate"\npath = "a"\n'
            f"size = {10**18}\n")
SYNCS = 'name = "syncs"\ndriver = "overlayfs"\n[[layers]]\n"a" = "x"\n' + '[[ops]]\nop = "sync"\n' * 2000

WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "s = time.perf_counter() - t\n"
    "sys.stdout.write(p.stdout)\n"
    "print(p.returncode, s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.stderr.write(p.stderr)\n"
)


def measure(*args: str) -> tuple[int, float, int, str, str]:
    proc = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "checker", *args],
                          cwd=ROOT, capture_output=True, text=True)
    first, *rest = proc.stderr.split("\n", 1)
    code, seconds, peak = first.split()
    return int(code), float(seconds), int(peak), proc.stdout, rest[0] if rest else ""


def outcome(code: int, out: str, err: str) -> tuple[str, int]:
    """What a run ended with, and its crash states."""
    if code == 2:
        return "error: " + err.strip().split(": ", 3)[-1][:60], 0
    specs = json.loads(out)["specs"]
    states = sum(s["crash_states"] for s in specs)
    verdicts = {}
    for s in specs:
        verdicts[s["verdict"]] = verdicts.get(s["verdict"], 0) + 1
    text = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
    reasons = {s.get("reason", "").split(" after ")[0].split(":")[0] for s in specs if s.get("reason")}
    return text + (f" ({'; '.join(sorted(reasons))})" if reasons else ""), states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-timeout", default="60", help="seconds per spec of the weak overlayfs suite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crashcheck-bench-"))
    for name, text in {"pull-run": PULL_RUN, "pull-run-write": PULL_RUN + WRITE, "truncate": TRUNCATE,
                       "syncs": SYNCS}.items():
        (work / f"{name}.toml").write_text(text)
    cases = [
        ("weak pull, run (auto)", ["--persistence", "weak", str(work / "pull-run.toml")]),
        ("weak pull, run (enumerate, 256M)", ["--persistence", "weak", "--engine", "enumerate",
                                              "--max-memory", "256M", str(work / "pull-run.toml")]),
        ("weak pull, run, write (auto)", ["--persistence", "weak", str(work / "pull-run-write.toml")]),
        ("weak docker + devicemapper suites", ["--persistence", "weak", "specs/docker-overlay2",
                                               "specs/devicemapper"]),
        (f"weak overlayfs suite (enumerate, {args.suite_timeout}s/spec)",
         ["--persistence", "weak", "--engine", "enumerate", "--timeout", args.suite_timeout,
          "specs/overlayfs"]),
        ("truncate to 10**18", [str(work / "truncate.toml")]),
        ("2,000 syncs (prefix)", [str(work / "syncs.toml")]),
        ("2,000 syncs (weak)", ["--persistence", "weak", str(work / "syncs.toml")]),
    ]
    _, _, baseline, _, _ = measure("run", "--json", "specs/plain/mv-dir.toml")
    print(f"baseline (a trivial run): peak {baseline / 2**20:.0f} MiB")
    print("| case | outcome | crash states | seconds | peak MiB | bytes/state |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, argv in cases:
        code, seconds, peak, out, err = measure("run", "--json", *argv)
        text, states = outcome(code, out, err)
        per = f"{(peak - baseline) / states:,.0f}" if states else "-"
        print(f"| {name} | {text} | {states:,} | {seconds:.1f} | {peak / 2**20:.0f} | {per} |", flush=True)


if __name__ == "__main__":
    main()
