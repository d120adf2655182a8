"""crashcheck: a crash-consistency model checker for container storage drivers.

The public facade. Everything else (explorers, persistence models, trace building) lives
in private-by-convention modules of this package.

    from checker import load_spec, check
    result = check(load_spec("specs/overlayfs/mv-lower-dir-redirect-off.toml"))
    result.verdict, result.violations
"""

from checker.engine.check import Result, check
from checker.engine.explorer import CrashUnit, Violation, check_crash_state
from checker.engine.invariants import INVARIANTS, Invariant
from checker.errors import CrashcheckError, SpecError
from checker.spec import Spec, load_spec

__all__ = [
    "INVARIANTS",
    "CrashUnit",
    "CrashcheckError",
    "Invariant",
    "Result",
    "Spec",
    "SpecError",
    "Violation",
    "check",
    "check_crash_state",
    "load_spec",
]
