"""Shared helpers for the test suite."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from checker.spec import Spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent


def make_spec(text: str, file: str = "<test>") -> Spec:
    """A spec from TOML text (validated exactly like a spec file)."""
    return parse_spec(tomllib.loads(text), file)


@pytest.fixture
def spec_text():
    return make_spec


def suite_counts(directory: Path) -> dict[str, tuple[int, int, list[str]]]:
    """(steps, crash states, violated invariants) of each built-in spec in a directory,
    checking on the way that each meets its expectation."""
    from checker import check, load_spec

    counts = {}
    for path in sorted(directory.glob("*.toml")):
        r = check(load_spec(path))
        assert r.ok, path.name
        counts[path.stem] = (r.steps, r.crash_states, r.violated)
    return counts
