"""crashcheck as a pytest plugin (registered through the `pytest11` entry point): every
spec file is a test item.

    pytest specs/                          # one item per spec, named after it
    pytest specs/ -m overlayfs -k mv       # a driver's specs (a marker per driver), by name
    pytest specs/ -n 2 --junitxml=out.xml  # pytest-xdist, JUnit XML
    pytest specs/ --crashcheck-persistence weak --crashcheck-max-states 5000

A `.toml` file is a spec when its top level has `driver`, `ops` or `layers` (so
`pyproject.toml` and other configuration files are left alone); one that does not parse
or does not validate is a collection error that names the file and the problem. An item
passes when its spec meets its expectation (`[expect]`, or pass); a failure shows the
text report of its counterexamples, not a traceback into crashcheck.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from checker import report
from checker.engine.budget import Budget
from checker.engine.check import ENGINES, Result, check
from checker.engine.persistence import MODELS
from checker.errors import CrashcheckError
from checker.spec import load_spec

SPEC_KEYS = ("driver", "ops", "layers")  # a TOML file with one of these at the top is a spec
NOT_SPECS = ("pyproject.toml",)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("crashcheck", "crashcheck spec files")
    group.addoption("--crashcheck-persistence", choices=sorted(MODELS), default=None,
                    help="check every spec under this persistence model (default: each spec's own)")
    group.addoption("--crashcheck-engine", choices=ENGINES, default="auto",
                    help="the crash-state engine (default auto)")
    group.addoption("--crashcheck-max-states", type=int, default=None,
                    help="stop a spec after this many crash states (the item fails: unknown)")


def pytest_configure(config: pytest.Config) -> None:
    from models import drivers

    for name in sorted(drivers()):
        config.addinivalue_line("markers", f"{name}: crashcheck specs of the {name} driver")
    config.addinivalue_line("markers", "crashcheck: a crashcheck spec file")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".toml" or file_path.name in NOT_SPECS:
        return None
    try:
        top = tomllib.loads(file_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return SpecFile.from_parent(parent, path=file_path)  # collecting it says what is wrong
    if not any(key in top for key in SPEC_KEYS):
        return None
    return SpecFile.from_parent(parent, path=file_path)


class SpecFile(pytest.File):
    """One spec file: one item."""

    def collect(self) -> list[pytest.Item]:
        try:
            spec = load_spec(self.path)
        except CrashcheckError as e:
            raise self.CollectError(f"crashcheck: error: {e}") from None
        item = SpecItem.from_parent(self, name=self.path.stem, spec=spec)
        item.add_marker("crashcheck")
        item.add_marker(spec.driver)
        return [item]


class SpecFailed(Exception):
    """A spec that does not meet its expectation: its report."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class SpecItem(pytest.Item):
    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def runtest(self) -> None:
        options = self.config.option
        budget = Budget(max_states=options.crashcheck_max_states)
        try:
            result = check(self.spec, options.crashcheck_persistence, engine=options.crashcheck_engine,
                           budget=budget)
        except CrashcheckError as e:
            raise SpecFailed(f"crashcheck: error: {e}") from None
        if not result.ok:
            raise SpecFailed(failure_text(result))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, SpecFailed):
            return excinfo.value.text
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.spec.driver} spec: {self.spec.name}"


def failure_text(result: Result) -> str:
    """What a failing item shows: the summary, each op, and the counterexamples."""
    lines = [report.summary_line(result), *report.op_lines(result)]
    if result.verdict == "unknown":
        lines.append(f"     no verdict: {result.why}")
    lines.extend(report.violation_report(result))
    return "\n".join(lines).rstrip()
