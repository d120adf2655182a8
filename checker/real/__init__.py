"""The real implementations: private workspaces (`workspace`), ops confined to a mount
(`sandbox`, `ops`), the kernel's overlayfs (`kernel`), fanotify (`fanotify`), and the
three ways of checking the model against them: `confirm`, `conform`, `crash`."""
