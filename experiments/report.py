"""Redraws a workdir's figures and report.md from its logs alone, without training:
python experiments/report.py --workdir=DIR."""

import sys

from jaxgen.cli import guarded, report_main

if __name__ == "__main__":
    guarded(lambda: report_main(sys.argv[1:]))
