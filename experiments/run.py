"""Trains an experiment: python experiments/run.py --exp=NAME [--workdir=DIR] [--data_dir=DIR]
[--config.KEY=VALUE ...]. Rerunning the same command resumes it. Configs: experiments/configs/."""

import os
import sys

from jaxgen.cli import guarded, run_main

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

if __name__ == "__main__":
    guarded(lambda: run_main(sys.argv[1:], CONFIGS_DIR))
