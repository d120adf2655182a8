"""A worked example of a driver of your own: overlayfs, except that removing an upper
file that also exists below first unlinks the upper file and only then puts a whiteout
over the name (instead of renaming a whiteout over it in one step). A crash in between
shows the lower file again: crashcheck reports an atomicity violation.

It uses only the public driver interface: a `Mount` subclass that overrides one
documented extension point of the overlayfs mount (`cleanup_and_whiteout`), and a
`Driver` subclass that names it.
"""

from __future__ import annotations

from models.overlayfs import OverlayFS, OverlayMount
from models.steps import MknodWhiteout, StepLog, Unlink
from models.tree import Dir, lookup, split


class UnlinkFirstMount(OverlayMount):
    def cleanup_and_whiteout(self, log: StepLog, upper_path: str) -> None:
        if isinstance(lookup(log.root, split(upper_path)), Dir):
            super().cleanup_and_whiteout(log, upper_path)
            return
        log.do(Unlink(upper_path))  # the lower file is visible again from here...
        log.do(MknodWhiteout(upper_path))  # ...until the whiteout exists


class UnlinkFirstOverlay(OverlayFS):
    name = "overlayfs-unlink-first"
    description = "overlayfs that unlinks an upper file before creating its whiteout (buggy)"
    MOUNT = UnlinkFirstMount


__all__ = ["UnlinkFirstMount", "UnlinkFirstOverlay"]
