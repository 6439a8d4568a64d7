"""`python -m open_clip_dive.evaluate` (see cli.py and docs/evaluating.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
