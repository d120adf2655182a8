"""Driver models for crashcheck: one module per storage driver, plus the shared
backing-store tree (`tree`), primitive steps (`steps`), union semantics (`union`) and
client programs (`clients`)."""

from __future__ import annotations

from models.driver import Driver
from models.overlayfs import OverlayFS
from models.plain import Plain

BUILTIN_DRIVERS: dict[str, type[Driver]] = {
    OverlayFS.name: OverlayFS,
    Plain.name: Plain,
}


def drivers() -> dict[str, type[Driver]]:
    """Every known driver model by name."""
    return dict(BUILTIN_DRIVERS)


__all__ = ["BUILTIN_DRIVERS", "Driver", "drivers"]
