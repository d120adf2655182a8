"""`python -m checker` is the `crashcheck` command."""

import sys

from checker.cli import main

sys.exit(main())
