"""The on-disk format of overlay-style layers (overlayfs, and the layers Docker, squash
and aufs take from a spec): a whiteout is a character device 0/0 (`models.tree.Whiteout`),
an opaque directory and a redirect are these xattrs. The spec format writes them as
`type = "whiteout"`, `opaque = true`, `redirect = "..."`."""

from __future__ import annotations

OVL_PREFIX = "trusted.overlay."
OPAQUE = OVL_PREFIX + "opaque"  # "y": the directory hides every lower one
REDIRECT = OVL_PREFIX + "redirect"  # a merged directory's lower directory is found here
ORIGIN = OVL_PREFIX + "origin"  # the lower file an upper one was copied up from
IMPURE = OVL_PREFIX + "impure"  # an upper directory that may hold non-pure entries
METACOPY = OVL_PREFIX + "metacopy"  # an upper file whose data is still the lower file's
NLINK = OVL_PREFIX + "nlink"  # an indexed upper inode's union nlink: "U+n"/"L-n" from upper/lower
UPPER_FH = OVL_PREFIX + "upper"  # the index dir's record of the upper root it belongs to
INDEX_DIR = "index"  # work/index: copies of hard-linked lower files, named by origin


class OverlayXattrs:
    """The names of overlay's private xattrs in one namespace: `trusted.overlay.*`, or
    `user.overlay.*` on a `userxattr` mount (5.11: "ovl: user xattr")."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.opaque = prefix + "opaque"
        self.redirect = prefix + "redirect"
        self.origin = prefix + "origin"
        self.impure = prefix + "impure"
        self.metacopy = prefix + "metacopy"
        self.nlink = prefix + "nlink"
        self.upper = prefix + "upper"

    def __repr__(self) -> str:
        return f"OverlayXattrs({self.prefix!r})"


TRUSTED = OverlayXattrs(OVL_PREFIX)
USER = OverlayXattrs("user.overlay.")
