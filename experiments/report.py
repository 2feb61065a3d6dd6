"""Redraws a workdir's figures and report.md from its logs alone, without training:
python experiments/report.py --workdir=DIR."""

import os
import sys

from jaxgen.cli import guarded, report_main

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

if __name__ == "__main__":
    guarded(lambda: report_main(sys.argv[1:], CONFIGS_DIR))
