"""A worked example of a driver of your own: overlayfs, except that removing an upper
file that also exists below first unlinks the upper file and only then puts a whiteout
over the name (instead of renaming a whiteout over it in one step). A crash in between
shows the lower file again: crashcheck reports an atomicity violation."""

from __future__ import annotations

from models.overlayfs import UPPER, OverlayFS
from models.steps import MknodWhiteout, Unlink
from models.tree import join, lookup


class UnlinkFirstOverlay(OverlayFS):
    name = "overlayfs-unlink-first"
    description = "overlayfs that unlinks an upper file before creating its whiteout (buggy)"

    def _cleanup_and_whiteout(self, s, log, upper_path):  # type: ignore[no-untyped-def]
        node = lookup(log.root, tuple(upper_path.split("/")))
        if node is None or node.kind == "dir":
            return super()._cleanup_and_whiteout(s, log, upper_path)
        log.do(Unlink(upper_path))  # the lower file is visible again from here...
        log.do(MknodWhiteout(upper_path))  # ...until the whiteout exists


__all__ = ["UPPER", "UnlinkFirstOverlay", "join"]
