"""``python -m benchmarks [--only NAME] [--quick] [--repeat N]``."""

import argparse

from benchmarks.runner import main

p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
p.add_argument("--only", help="run modules whose name contains this")
p.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
p.add_argument("--repeat", type=int, default=1, help="repeats; medians are reported")
a = p.parse_args()
main(only=a.only, quick=a.quick, repeat=a.repeat)
