"""`python -m sweeper ...` is the `sweeper` command."""
import sys

from sweeper.cli import main

sys.exit(main())
