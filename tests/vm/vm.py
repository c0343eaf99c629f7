#!/usr/bin/env python3
"""Compatibility entry point: `python3 tests/vm/vm.py ARGS` is `python3 -m tests.vm ARGS`.
The harness is the package tests/vm (see tests/vm/README.md); run it as a module from the
repository root."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0]: the repository root takes its place, so
    # the package imports as tests.vm (and none of its modules as a top-level name).
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    from tests.vm.__main__ import main
    sys.exit(main())
