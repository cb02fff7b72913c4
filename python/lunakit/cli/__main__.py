"""`python -m lunakit.cli ...`, the same as the `lunakit` command."""

import sys

from lunakit.cli import main

sys.exit(main())
