"""`moment_why`'s first four variants (plain, the mean part alone, the variance part alone, both
parts as published) at seeds 0-2: the test of its hypothesis (the variance part prevents the
collapse at lr 0.0001, the mean part fits the brightness early) that one 3-hour session on a
2-core CPU runs.

Command:
    python experiments/run.py --exp=moment_why_parts --workdir=$HOME/jaxgen-runs/moment_why_parts
    python experiments/report.py --workdir=$HOME/jaxgen-runs/moment_why_parts \\
        --publish=experiments/results/moment_why_parts

Runtime: 2-core CPU, about 80 minutes for the 12 runs on an Intel Xeon with AVX-512 (0.25 s a
plain step, 0.38 s with a term and its diagnostics; measured 2026-12-02); on an AMD EPYC with
AVX2 about 11 minutes a plain run and 16 with a term (2026-12-03), so about 3 hours. The
published part (`experiments/results/moment_why_parts/`) is its first three variants at seeds 0
and 1 (`--config.seeds='(0,1)'`, which a workdir accepts and later extends).
"""

import importlib.util
import os

from jaxgen.config import load_config


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("moment_why", os.path.join(here, "moment_why.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = load_config("moment_why", here)
    c.seeds = (0, 1, 2)
    c.variants = module.variants(("plain", "mean", "var", "both"))
    return c
