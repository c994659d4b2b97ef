"""`python -m sweeper ...` is the `sweeper` command."""
import sys

from .cli import main

sys.exit(main())
