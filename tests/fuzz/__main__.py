"""`python -m tests.fuzz`: the fuzzer's CLI (tests/fuzz/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
