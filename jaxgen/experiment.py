"""Running an experiment: its grid of runs (`grid`), as one vmapped sweep or one after another,
in one workdir, then its report."""

from __future__ import annotations

import contextlib
import os

import jax
import ml_collections

from jaxgen import config as config_lib
from jaxgen import grid, report, sharding
from jaxgen import workdir as workdir_lib
from jaxgen.errors import UserError


def run_experiment(config: ml_collections.ConfigDict, workdir: str,
                   configs_dir: str | None = None) -> None:
    """Trains (or resumes) every run of the experiment in `workdir`, then writes its report
    (`configs_dir`: the experiments' config files, for the report's command that reproduces
    the runs)."""
    config_lib.check_values(config)
    vmapped = sharding.resolve_sweep_mode(config.sweep_mode) == "vmap"
    runs, trainer = grid.expand_grid(config), grid.trainer_module(config)
    rows = config.mesh_sweep if vmapped else 1
    if vmapped and rows == 1 and config.batch_size % jax.device_count():
        # The batch does not split over every device: a mesh with sweep rows that fits it.
        rows = sharding.sweep_rows_for(config.batch_size, jax.device_count(), len(runs)) or 1
        if rows > 1:
            print(f"mesh: {rows} sweep rows of {jax.device_count() // rows} devices (batch "
                  f"{config.batch_size} does not split over {jax.device_count()}; "
                  f"--config.mesh_sweep={rows} chosen)")
    mesh = sharding.make_mesh(rows)
    sharding.check_batch_size(config.batch_size, mesh, len(runs))
    config_lib.check_workdir(workdir, config)
    if vmapped:
        sharding.check_members(len(runs), mesh)
    if not runs:
        raise UserError("The experiment's grid is empty. Fix: give at least one value to each of "
                        f"{', '.join(f for _, f, _ in trainer.SWEEP_AXES)}.")
    for run in runs:
        trainer.check_config(run)
    # Fails on bad data before anything is written; the folder resolved is recorded.
    config.data_dir = trainer.resolve_data(config)
    main = jax.process_index() == 0  # with several hosts, one writes the files all share
    if main:
        workdir_lib.check_writable(workdir)
    # One launch at a time on a workdir (the main process holds the lock for all hosts).
    with workdir_lib.hold(workdir) if main else contextlib.nullcontext():
        if main:
            config_lib.check_workdir(workdir, config)  # again: another launch may have written
            config_lib.write_config(workdir, config)
        trainer.train_runs(runs, workdir, mesh, sweep_mode=config.sweep_mode)
        if main:
            path = report.write_report(workdir, configs_dir)
            print(f"Report: {path}\nFigures: {os.path.join(workdir, report.FIGURES_DIR)}")
