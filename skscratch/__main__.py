import sys

from skscratch.cli import main

sys.exit(main())
