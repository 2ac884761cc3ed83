import sys

from recsys_core.cli import main

sys.exit(main(prog="python -m recsys_core"))
