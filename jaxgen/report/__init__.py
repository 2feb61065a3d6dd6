"""`report.md` and `figures/` of a workdir, regenerated from its logs and saved samples alone:
`python experiments/report.py --workdir=DIR` redraws them without training.

`common` holds what every family's report shares (the header with the command that reproduces
the runs, the metrics' floor and ceiling, divergences, the instability monitor, writing and
publishing); `gan`, `ddpm` and `sd` each add one family's sections (`report_lines`), chosen by
the experiment's `trainer`.
"""

from __future__ import annotations

from jaxgen import config as config_lib
from jaxgen import log
from jaxgen.errors import UserError
from jaxgen.report import ddpm, gan, sd
from jaxgen.report.common import (
    FIGURES_DIR,
    REPORT_FILE,
    collapse_lines,
    divergence_lines,
    publish,
    rerun_lines,
    run_grid,
    trained_runs,
    write,
)

# Each trainer's report sections, by `config.trainer`.
FAMILIES = {"gan": gan, "diffusion": ddpm, "sd_finetune": sd}

# Used from outside the package (the family modules import `common` themselves).
__all__ = ["FAMILIES", "FIGURES_DIR", "REPORT_FILE", "collapse_lines", "divergence_lines",
           "publish", "rerun_lines", "run_grid", "write_report"]


def write_report(workdir: str, configs_dir: str | None = None) -> str:
    """Draws every figure and writes `report.md`; returns the report's path. `configs_dir`: the
    experiments' config files, for the command that reproduces the runs (`rerun_lines`)."""
    config = config_lib.read_config(workdir)
    records = log.read_metrics(workdir)
    if not records:
        raise UserError(f"{workdir} has no metrics yet. Fix: train first with "
                        f"python experiments/run.py --exp={config.exp} --workdir={workdir}.")
    runs = trained_runs(config, records)
    lines = [f"# {config.exp}", ""] + rerun_lines(workdir, config, records, configs_dir)
    return write(workdir, lines + FAMILIES[config.trainer].report_lines(workdir, config,
                                                                        records, runs))
