"""`python -m pac.cli` runs the `pac` command (useful where the console script is not on PATH)."""

import sys

from pac.cli import main

sys.exit(main())
