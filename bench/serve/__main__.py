"""``python -m bench.serve``: the same as ``tollgate bench serve``."""

import sys

from bench.serve.cli import main

raise SystemExit(main(sys.argv[1:]))
