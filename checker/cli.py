"""The `crashcheck` command line (DESIGN section 7).

Exit status: 0 when every spec meets its expectation, 1 when any does not, 2 for a usage
or input error, reported as one line `crashcheck: error: FILE: what is wrong`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from checker import regression, report, tables
from checker.distribute import default_jobs
from checker.engine.budget import DEFAULT_MAX_MEMORY, Budget, cap_address_space, parse_size, size_text
from checker.engine.check import ENGINES, Result, check
from checker.engine.persistence import MODELS
from checker.errors import CrashcheckError, UsageError, one_line
from checker.figures import FIGURE_FORMATS, PLOTS, figure, plot, plot_explore
from checker.html_report import html_report
from checker.junit import junit_xml
from checker.real import kernel, workspace
from checker.real.confirm import confirm
from checker.real.conform import conform, modelled_kernel, running_series
from checker.real.containerd_daemon import ContainerdSession
from checker.real.crash import IMPLEMENTATIONS, RealResult, real_check, unavailable_reason
from checker.real.daemon_conform import DockerdSession
from checker.real.engine import EngineSession, EngineUnavailable, conform_engine, crash_engine
from checker.real.engine_recorded import recorded_engine_check
from checker.real.podman import PodmanSession
from checker.spec import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Spec, load_spec
from checker.suite import RunSettings, check_specs
from checker.tables import FORMATS
from checker.workloads import explore as explore_mod
from checker.workloads.store import ExploreStore
from models import DEFAULT_DRIVER, DriverLoadError
from models.driver import OptionError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _block_size(text: str) -> int:
    value = _positive(text)
    if not (MIN_BLOCK_SIZE <= value <= MAX_BLOCK_SIZE and value & (value - 1) == 0):
        raise argparse.ArgumentTypeError(
            f"{text} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        )
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crashcheck",
        description="Crash-consistency model checker for container storage drivers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="check spec files (directories are searched for *.toml)")
    run.add_argument("paths", nargs="+", metavar="PATH")
    run.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    run.add_argument(
        "--persistence", choices=sorted(MODELS), help="override every spec's persistence model"
    )
    run.add_argument(
        "--crash-after", type=int, metavar="K",
        help="check only the crash state that keeps the first K steps (to reproduce one violation)",
    )
    run.add_argument(
        "--persisted", metavar="STEPS",
        help="check only the crash state that keeps these steps, e.g. 1-5,7,8:2 (8:2 = the "
        "first 2 blocks of step 8)",
    )
    run.add_argument("--engine", choices=ENGINES, default="auto",
                     help="enumerate crash states, decide with z3 (symbolic), or pick (auto)")
    run.add_argument("--block-size", type=_block_size, metavar="BYTES",
                     help="data writes can be torn at this size (default: the spec's, else 4096)")
    run.add_argument("--max-states", type=_positive, metavar="N",
                     help="stop after N crash states; an unfinished search is `unknown`")
    run.add_argument("--timeout", type=_positive_float, metavar="S",
                     help="stop after S seconds per spec; an unfinished search is `unknown`")
    run.add_argument("--max-memory", type=_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                     help=f"stop when memory reaches SIZE, e.g. 2G (default "
                     f"{size_text(DEFAULT_MAX_MEMORY)}); an unfinished search is `unknown`")
    run.add_argument(
        "--confirm", action="store_true",
        help="mount each violating crash state on the Linux kernel and re-check it there",
    )
    run.add_argument(
        "--suggest-fix", action="store_true",
        help="for a violating spec, the fewest fsyncs to insert that remove every violation",
    )
    run.add_argument("--jobs", type=_positive, default=1,
                     help="check N specs at a time on local worker processes (default 1)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="check the specs on the workers of this Dask scheduler (tcp://HOST:PORT)")
    run.add_argument("--junit", metavar="FILE", help="also write JUnit XML: one testcase per spec")
    run.add_argument("--baseline", metavar="OLD.json",
                     help="diff this run against an earlier `run --json` document (exit 1: worse)")
    run.add_argument("-v", "--verbose", action="store_true", help="show every violating crash point")
    run.add_argument("-q", "--quiet", action="store_true", help="only the summary line of each spec")
    ex = sub.add_parser("explore", help="generate small workloads and find driver-induced violations")
    ex.add_argument("--depth", type=_positive, default=1, help="ops per workload (default 1)")
    ex.add_argument("--driver", default=DEFAULT_DRIVER, help=f"driver to explore (default {DEFAULT_DRIVER})")
    ex.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a driver option, e.g. redirect_dir=off (repeatable)")
    ex.add_argument("--persistence", choices=sorted(MODELS), default="prefix")
    ex.add_argument("--out", metavar="DIR", help="write one minimal spec per driver-induced group here")
    ex.add_argument("--random", type=_positive, metavar="N",
                    help="sample N longer workloads instead, and shrink what they find")
    ex.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    ex.add_argument("--max-ops", type=_positive, default=6, help="ops per --random workload (default 6)")
    ex.add_argument("--jobs", type=_positive, default=None, help="worker processes (default: cores)")
    ex.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="check the workloads on the workers of this Dask scheduler (tcp://HOST:PORT) "
                    "instead of local processes")
    ex.add_argument("--store", metavar="FILE",
                    help="write each workload's outcome to this SQLite file as it finishes")
    ex.add_argument("--resume", action="store_true",
                    help="continue the run of --store FILE: stored workloads are not checked again")
    ex.add_argument("--report", action="store_true",
                    help="print what --store FILE holds (a finished run or part of one); check nothing")
    ex.add_argument("--max-memory", type=_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                    help=f"memory of each process (default {size_text(DEFAULT_MAX_MEMORY)}); a workload "
                    "that hits it is counted as unknown")

    conform_p = sub.add_parser(
        "conform", help="run a spec on the kernel and compare its steps with the model's"
    )
    conform_p.add_argument("spec", metavar="SPEC")
    conform_p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    conform_p.add_argument("-v", "--verbose", action="store_true", help="list every step of every op")
    real = sub.add_parser(
        "real",
        help="crash-test a real implementation (the kernel, fuse-overlayfs, dockerd) at every system call",
    )
    real.add_argument(
        "paths", nargs="*", metavar="SPEC",
        help="spec files or dirs (--table: specs/overlayfs, or specs/docker-overlay2 for dockerd)",
    )
    real.add_argument("--impl", choices=IMPLEMENTATIONS + tuple(ENGINE_IMPLS), action="append",
                      help="implementation to crash (repeatable; --table: default kernel and fuse-overlayfs)")
    real.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    real.add_argument("--table", action="store_true",
                      help="a findings table: the model's verdict and each implementation's, per spec")
    real.add_argument("--persistence", choices=sorted(MODELS),
                      help="with --impl dockerd, podman or containerd: power loss instead of a kill; the "
                           "engine's system calls are recorded and checked under this persistence model")
    real.add_argument("--max-states", type=_positive, metavar="N",
                      help="with --persistence: check at most N crash states of the recording (default: "
                           "as `run`, 20,000 when the symbolic engine cannot decide it)")
    real.add_argument("-v", "--verbose", action="store_true", help="show every violating crash state")
    diff_p = sub.add_parser("diff", help="what changed between two `run --json` documents (exit 1: worse)")
    diff_p.add_argument("old", metavar="OLD.json")
    diff_p.add_argument("new", metavar="NEW.json")
    fmt = diff_p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    fmt.add_argument("--markdown", action="store_true", help="Markdown, for a pull-request comment")
    compare_p = sub.add_parser("compare", help="the same specs on several driver variants, side by side")
    compare_p.add_argument("paths", nargs="+", metavar="SPEC")
    compare_p.add_argument("--variant", action="append", default=[], metavar="NAME=DRIVER[:K=V,...]",
                           help="a driver with options (repeatable; at least two)")
    compare_p.add_argument("--persistence", choices=sorted(MODELS),
                           help="override every spec's persistence model")
    compare_p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    report_p = sub.add_parser(
        "report", help="findings tables (markdown, latex, csv) or an HTML report from `run --json`"
    )
    report_p.add_argument("results", metavar="RESULTS.json")
    report_p.add_argument("--format", choices=FORMATS, default="markdown")
    report_p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    figure_p = sub.add_parser("figure", help="a counterexample as a picture, or plots of crash states")
    figure_p.add_argument("paths", nargs="+", metavar="SPEC")
    what = figure_p.add_mutually_exclusive_group(required=True)
    what.add_argument("--crash-after", type=int, metavar="K",
                      help="the crash state that keeps the first K steps")
    what.add_argument("--persisted", metavar="STEPS",
                      help="the crash state that keeps these steps (1-5,7,8:2)")
    what.add_argument("--plot", choices=PLOTS,
                      help="ops: crash states and violating ones per op; persistence: crash states per "
                           "model; explore: driver-induced groups per op kind (SPEC: an explore --json file)")
    figure_p.add_argument("--persistence", choices=sorted(MODELS),
                          help="override the spec's persistence model")
    figure_p.add_argument("--out", required=True, metavar="FILE", help="FILE.svg, FILE.pdf or FILE.png")
    sub.add_parser("drivers", help="the drivers: their options, ops and what the engine can do with them")
    sub.add_parser(
        "clean",
        help="remove what killed real-mode runs left (mounts, daemons, temp dirs under $TMPDIR)",
    )
    return parser


def spec_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(path.rglob("*.toml"))
            if not found:
                raise UsageError(f"{p}: no *.toml spec files in this directory")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"{p}: no such file or directory")
    return files


def cmd_run(args: argparse.Namespace) -> int:
    files = spec_files(args.paths)
    specs = [load_spec(f) for f in files]  # every input error before any work
    if args.confirm:
        reason = kernel.overlay_unavailable_reason()
        if reason is not None:
            raise UsageError(f"run --confirm: {reason}")
    baseline = regression.load_results(args.baseline) if args.baseline else None
    budget = Budget(args.max_states, args.timeout, args.max_memory)
    cap_address_space(args.max_memory)
    started = time.perf_counter()
    results: list[Result] = []
    progress = report.progress_printer(len(specs))
    failed: list[tuple[str, str]] = []  # (file, why) of specs this run could not check; the others go on
    settings = RunSettings(args.persistence, args.crash_after, args.engine, args.block_size, budget,
                           args.persisted, args.suggest_fix)
    for done in check_specs(specs, settings, args.jobs, args.scheduler, progress):
        progress("")
        if done.result is None:
            failed.append((done.spec.file, done.error or ""))
            print(one_line(f"crashcheck: error: {done.error}"), file=sys.stderr, flush=True)
            continue
        progress.advance()
        result, fix_note = done.result, done.fix_note
        if args.confirm:
            result = replace(result, confirmations=confirm(result))
        results.append(result)
        if not args.json:
            print(report.summary_line(result), flush=True)
            for line in report.op_lines(result):
                print(line)
            confirmed = report.confirmation_line(result)
            if confirmed:
                print(confirmed)
            if fix_note:
                print(fix_note)
            if result.violations and not args.quiet:
                print("\n".join(report.violation_report(result, args.verbose)))
    if args.json:
        report.write_json(results, sys.stdout)
    else:
        print(report.totals_line(results, time.perf_counter() - started))
    if args.junit:
        Path(args.junit).write_text(junit_xml(results, failed), encoding="utf-8")
    if failed:
        return 2  # each said why in its own line
    if baseline is not None:
        found = regression.diff(baseline, json.loads(report.to_json(results)), args.baseline, "this run")
        print(regression.diff_text(found), file=sys.stderr if args.json else sys.stdout)
        return 1 if found.worse else 0
    return 0 if all(r.ok for r in results) else 1


def cmd_diff(args: argparse.Namespace) -> int:
    found = regression.diff(regression.load_results(args.old), regression.load_results(args.new),
                            args.old, args.new)
    if args.json:
        sys.stdout.write(json.dumps(found.to_json(), indent=2) + "\n")
    elif args.markdown:
        sys.stdout.write(regression.diff_markdown(found))
    else:
        print(regression.diff_text(found))
    return 1 if found.worse else 0


def cmd_report(args: argparse.Namespace) -> int:
    doc = regression.load_results(args.results)
    if args.format == "html":
        text = html_report(doc)
    else:
        text = {"markdown": tables.markdown, "latex": tables.latex, "csv": tables.csv_text}[args.format](doc)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lstrip(".").lower() not in FIGURE_FORMATS:
        raise UsageError(f"{out}: write the figure as .svg, .pdf or .png")
    if args.plot == "explore":
        if len(args.paths) != 1:
            raise UsageError("figure --plot explore: give the JSON document of `crashcheck explore --json`")
        plot_explore(regression.load_json(args.paths[0]), out)
        return 0
    if args.plot:
        specs = [load_spec(f) for f in spec_files(args.paths)]
        plot(specs, args.plot, out, args.persistence)
        return 0
    if len(args.paths) != 1:
        raise UsageError("figure: a counterexample is of one SPEC")
    cx = figure(load_spec(args.paths[0]), out, args.crash_after, args.persisted, args.persistence)
    verdict = "; ".join(cx.findings) if cx.findings else "no invariant violated in this crash state"
    print(f"{out}: op `{cx.op_text}`, crash after step {cx.crash_after}: {verdict}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    variants = [regression.parse_variant(v) for v in args.variant]
    if len(variants) < 2:
        raise UsageError("compare: give at least two --variant NAME=DRIVER[:K=V,...]")
    if len({v.name for v in variants}) != len(variants):
        raise UsageError("compare: each --variant needs a name of its own")
    specs = [load_spec(f) for f in spec_files(args.paths)]
    for spec in specs:
        for v in variants:
            regression.variant_driver(v, spec)  # every input error before any work
    found = regression.compare(specs, variants, args.persistence)
    if args.json:
        sys.stdout.write(json.dumps(found.to_json(), indent=2) + "\n")
    else:
        print(found.table())
    return 0


#: engines checked through `checker.real.engine`, each the model of its spec driver
ENGINE_SESSIONS: tuple[type[EngineSession], ...] = (DockerdSession, PodmanSession, ContainerdSession)
ENGINE_IMPLS = {session.implementation: session for session in ENGINE_SESSIONS}


def engine_session_for(spec: Spec) -> type[EngineSession] | None:
    """The engine that runs the spec (its driver is the engine's model), if any."""
    return next((session for session in ENGINE_SESSIONS if session.runs(spec)), None)


def cmd_real(args: argparse.Namespace) -> int:
    impls = args.impl or (list(IMPLEMENTATIONS) if args.table else [])
    if not impls:
        raise UsageError(f"real: choose --impl {', '.join(IMPLEMENTATIONS + tuple(ENGINE_IMPLS))}")
    engines = [i for i in impls if i in ENGINE_IMPLS]
    if engines and len(impls) > 1:
        raise UsageError(f"real: --impl {engines[0]} runs {ENGINE_IMPLS[engines[0]].driver} specs; "
                         "crash it on its own")
    if engines:
        return _real_engine(args, ENGINE_IMPLS[engines[0]])
    if args.persistence:
        raise UsageError("real: --persistence is for --impl dockerd, podman or containerd (a recorded run); "
                         "--impl kernel and fuse-overlayfs crash the process")
    paths = args.paths or (["specs/overlayfs"] if args.table else [])
    if not paths:
        raise UsageError("real: give at least one SPEC")
    specs = [load_spec(f) for f in spec_files(paths)]
    for impl in impls:
        reason = unavailable_reason(impl)
        if reason is not None:
            raise UsageError(f"real --impl {impl}: {reason}")
    progress = report.progress_printer()
    rows = []
    results: list[RealResult] = []
    for spec in specs:
        model = check(spec)
        found = [real_check(spec, impl, progress) for impl in impls]
        results.extend(found)
        rows.append((spec, model, found))
        if not args.json and not args.table:
            for r in found:
                print(report.real_summary(r), flush=True)
    progress("")
    if args.table:
        print(report.findings_table(rows, impls, kernel.kernel_release()))
        return 0
    if args.json:
        doc = {"version": 1, "specs": [r.to_json() for r in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


def _real_engine(args: argparse.Namespace, session: type[EngineSession]) -> int:
    """`real --impl dockerd|podman|containerd`: each store op of each spec, the engine
    killed at each of its calls on the store (`checker.real.engine`)."""
    if args.persistence:
        return _recorded_engine(args, session)
    specs = _engine_specs(args.paths or ([f"specs/{session.driver}"] if args.table else []), session)
    progress = report.progress_printer()
    rows = []
    results: list[RealResult] = []
    for spec in specs:
        found = crash_engine(spec, session, progress)
        results.append(found)
        rows.append((spec, check(spec), found))
        if not args.json and not args.table:
            print(report.real_summary(found), flush=True)
    progress("")
    if args.table:
        print(report.dockerd_table(rows, session.version(), session.implementation, session.MODELLED))
        return 0
    if args.json:
        doc = {"version": 1, "specs": [r.to_json() for r in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


def _engine_specs(paths: list[str], session: type[EngineSession]) -> list[Spec]:
    """The specs of `real --impl dockerd|podman|containerd`: each of the engine's
    driver, and the engine able to run here."""
    if not paths:
        raise UsageError("real: give at least one SPEC")
    specs = [load_spec(f) for f in spec_files(paths)]
    for spec in specs:
        if not session.runs(spec):
            raise UsageError(f"{spec.file}: real --impl {session.implementation} runs {session.driver} "
                             f"specs, not {spec.driver}")
    reason = session.unavailable()
    if reason is not None:
        raise UsageError(f"real --impl {session.implementation}: {reason}")
    return specs


def _real_limits(args: argparse.Namespace) -> dict[str, Any]:
    return {"budget": Budget(max_states=args.max_states)} if args.max_states else {}


def _recorded_engine(args: argparse.Namespace, session: type[EngineSession]) -> int:
    """`real --impl dockerd|podman|containerd --persistence P`: each spec recorded on the
    engine and the recording checked under P (`checker.real.engine_recorded`)."""
    if args.table:
        raise UsageError("real: --table is for kill runs (without --persistence)")
    specs = _engine_specs(args.paths, session)
    progress = report.progress_printer()
    results = []
    for spec in specs:
        found = recorded_engine_check(spec, session, args.persistence, progress, **_real_limits(args))
        progress("")
        results.append(found)
        if not args.json:
            print(report.recorded_report(found, args.verbose), flush=True)
    if args.json:
        doc = {"version": 1, "specs": [r.to_json() for r in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


def cmd_explore(args: argparse.Namespace) -> int:
    from models import drivers

    if (args.resume or args.report) and not args.store:
        raise UsageError("explore: --resume and --report need --store FILE")
    if args.report:
        return explore_store_report(args)
    known = drivers()
    if args.driver not in known:
        raise UsageError(f"explore: unknown driver {args.driver!r} (known: {', '.join(sorted(known))})")
    if not known[args.driver].FILE_OPS:
        raise UsageError(f"explore: driver {args.driver} takes no file-system ops (explore generates those)")
    options: dict[str, object] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"explore: --option {item!r}: write KEY=VALUE")
        options[key] = regression.option_value(value)
    try:
        known[args.driver].resolve_options(options)
    except OptionError as e:
        raise UsageError(f"explore: {e}") from None
    settings = explore_mod.Settings(args.driver, tuple(sorted(options.items())), args.persistence)
    cap_address_space(args.max_memory)
    jobs = args.jobs or default_jobs()
    progress = report.progress_printer()
    items = explore_mod.random_items(args.random, args.seed, args.max_ops) if args.random else None
    depth = args.max_ops if args.random else args.depth
    store = None
    if args.store:
        run = {"driver": settings.driver, "options": [list(kv) for kv in settings.options],
               "persistence": settings.persistence, "depth": depth, "random": args.random or 0,
               "seed": args.seed if args.random else 0}
        store = ExploreStore(Path(args.store), run, resume=args.resume)
    try:
        found = explore_mod.explore(settings, depth, jobs, progress, items, store=store,
                                    scheduler=args.scheduler)
    finally:
        if store is not None:
            store.close()
    return _explore_output(args, settings, found, depth)


def explore_store_report(args: argparse.Namespace) -> int:
    """`explore --store FILE --report`: the report of what the store holds."""
    store = ExploreStore(Path(args.store), {}, read_only=True)
    try:
        run = store.run
        settings = explore_mod.Settings(run["driver"], tuple((k, v) for k, v in run["options"]),
                                        run["persistence"])
        items = explore_mod.random_items(run["random"], run["seed"], run["depth"]) if run["random"] else None
        args.random = run["random"] or None
        args.out = None
        found = explore_mod.explore(settings, run["depth"], 1, None, items, store=store, replay=True)
    finally:
        store.close()
    return _explore_output(args, settings, found, run["depth"])


def _explore_output(args: argparse.Namespace, settings: explore_mod.Settings, found: explore_mod.Report,
                    depth: int) -> int:
    if args.random:
        for key, outcome in list(found.groups.items()):
            found.groups[key] = explore_mod.shrink(settings, outcome, key)
    if args.out:
        explore_mod.write_specs(settings, found, Path(args.out))
    if args.json:
        sys.stdout.write(json.dumps(found.to_json(), indent=2) + "\n")
    else:
        print(report.explore_report(settings, found, depth, args.random))
    return 0


def conform_on_engine(spec: Spec, args: argparse.Namespace, session: type[EngineSession]) -> int:
    """`conform` of a docker-overlay2, containers-storage or containerd spec: the workload
    on dockerd, podman or containerd, in a private root."""
    reason = session.unavailable()
    if reason is not None:
        raise UsageError(f"conform {spec.file}: {session.implementation} cannot run here: {reason}")
    try:
        ops = conform_engine(spec, session, report.progress_printer())
    except EngineUnavailable as e:
        raise UsageError(f"conform {spec.file}: {e}") from None
    version = session.version()
    other = any(k in spec.options and spec.options[k] != _default_option(spec, k)
                for k in session.VERSION_OPTIONS)
    if args.json:
        doc = {"file": spec.file, "implementation": session.implementation, "version": version,
               "ops": [o.to_json() for o in ops]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(report.daemon_conformance_report(spec, ops, version, args.verbose, session.implementation,
                                               other))
    return 0 if all(o.conforms for o in ops) else 1


def _default_option(spec: Spec, key: str) -> object:
    from models import driver_named

    return driver_named(spec.driver).OPTIONS[key].default


def cmd_conform(args: argparse.Namespace) -> int:
    [path] = spec_files([args.spec])
    spec = load_spec(path)
    session = engine_session_for(spec)
    if session is not None:
        return conform_on_engine(spec, args, session)
    ops = conform(spec)
    if args.json:
        doc = {"file": spec.file, "kernel": kernel.kernel_release(),
               "model_kernel": running_series() if modelled_kernel(spec) else None,
               "syncs_traced": all(o.observed_syncs is not None for o in ops),
               "ops": [o.to_json() for o in ops]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(report.conformance_report(spec, ops, kernel.kernel_release(), args.verbose))
    return 0 if all(o.conforms for o in ops) else 1


def cmd_drivers(args: argparse.Namespace) -> int:
    from models import drivers

    print(report.drivers_report(drivers()))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    """Tear down the workspaces of dead runs; exit 1 if one cannot be removed."""
    found = workspace.clean_stale()
    for stale in found:
        print(stale.describe())
    if not found:
        print(f"nothing to clean: no workspace of a dead run under {tempfile.gettempdir()}")
    return 0 if all(s.removed for s in found) else 1


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds every workspace: mounts undone, processes ended


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "conform": cmd_conform, "real": cmd_real, "explore": cmd_explore, "diff": cmd_diff,
    "compare": cmd_compare, "report": cmd_report, "figure": cmd_figure, "clean": cmd_clean,
    "drivers": cmd_drivers,
}


def main(argv: Sequence[str] | None = None) -> int:
    # Behave like other Unix tools in a pipeline (`crashcheck run ... | head`).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)
    try:
        args = build_parser().parse_args(argv)
        command = COMMANDS.get(args.command)
        if command is not None:
            return command(args)
        raise UsageError(f"unknown command {args.command}")
    except (CrashcheckError, DriverLoadError) as e:
        print(one_line(f"crashcheck: error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crashcheck: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # outside a check (each check turns its own into `unknown`)
        print("crashcheck: error: out of memory outside a check (raise --max-memory)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
