"""Driver models for crashcheck: one module per storage driver, plus the shared
backing-store tree (`tree`), primitive steps (`steps`), union semantics (`union`) and
client programs (`clients`).

Drivers of your own are found through the `crashcheck.drivers` entry point group: a
package that declares

    [project.entry-points."crashcheck.drivers"]
    my-driver = "my_package.module:MyDriver"

makes `driver = "my-driver"` usable in specs (see `models.driver.Driver`).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from models.aufs import Aufs
from models.containerd import Containerd
from models.containers_storage import ContainersStorage
from models.devicemapper import DeviceMapper
from models.docker_overlay2 import DockerOverlay2
from models.driver import Driver
from models.errors import CrashcheckError
from models.overlayfs import OverlayFS
from models.plain import Plain
from models.squash import Squash

ENTRY_POINT_GROUP = "crashcheck.drivers"
DEFAULT_DRIVER = OverlayFS.name  # what `crashcheck explore` explores unless told
REFERENCE_DRIVER = Plain.name  # the baseline a violation is compared with: one atomic step per call

BUILTIN_DRIVERS: dict[str, type[Driver]] = {
    OverlayFS.name: OverlayFS,
    Plain.name: Plain,
    Aufs.name: Aufs,
    Squash.name: Squash,
    DockerOverlay2.name: DockerOverlay2,
    DeviceMapper.name: DeviceMapper,
    ContainersStorage.name: ContainersStorage,
    Containerd.name: Containerd,
}


class DriverLoadError(CrashcheckError):
    """A plug-in driver could not be loaded; the message names it and why."""


@lru_cache(maxsize=1)
def _plugins() -> tuple[dict[str, type[Driver]], dict[str, str]]:
    """Plug-ins that load, and why the others do not (reported only when one is asked for:
    a broken plug-in must not break specs that do not use it)."""
    found: dict[str, type[Driver]] = {}
    broken: dict[str, str] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in BUILTIN_DRIVERS:
            continue  # a built-in name cannot be taken over
        try:
            cls = ep.load()
        except Exception as e:  # noqa: BLE001 - any failure of foreign code is the plug-in's
            broken[ep.name] = f"driver plug-in {ep.name} ({ep.value}) failed to load: {e}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, Driver)):
            broken[ep.name] = f"driver plug-in {ep.name} ({ep.value}) is not a models.driver.Driver"
            continue
        found[ep.name] = cls
    return found, broken


def plugin_drivers() -> dict[str, type[Driver]]:
    return dict(_plugins()[0])


def drivers() -> dict[str, type[Driver]]:
    """Every known driver model by name: built-in ones, then plug-ins that load."""
    return dict(BUILTIN_DRIVERS) | plugin_drivers()


def driver_named(name: str) -> type[Driver]:
    """The driver called `name`; KeyError if none, DriverLoadError if its plug-in is broken."""
    known = drivers()
    if name in known:
        return known[name]
    broken = _plugins()[1]
    if name in broken:
        raise DriverLoadError(broken[name])
    raise KeyError(name)


__all__ = [
    "BUILTIN_DRIVERS", "DEFAULT_DRIVER", "REFERENCE_DRIVER", "Driver", "DriverLoadError", "driver_named",
    "drivers",
]
