"""`python -m smoothgrad` runs the command line."""

import sys

from smoothgrad.cli import main

sys.exit(main())
