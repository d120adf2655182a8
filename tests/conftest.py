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
