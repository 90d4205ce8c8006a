"""`python -m skscratch <command>`: the command line of skscratch.cli."""

import sys

from skscratch.cli import main

sys.exit(main())
