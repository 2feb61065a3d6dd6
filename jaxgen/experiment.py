"""Running an experiment: its grid of runs, as one vmapped sweep or one after another, in one
workdir, then its report."""

from __future__ import annotations

import importlib
import itertools
import os

import jax
import ml_collections

from jaxgen import config as config_lib
from jaxgen import report, sharding
from jaxgen.errors import UserError


def trainer_module(config: ml_collections.ConfigDict):
    """The trainer named by `config.trainer` (`jaxgen/trainers/<name>.py`). Every trainer
    exposes `SWEEP_AXES`, `check_config(run_config)`, `resolve_data(config)` (the data folder,
    checked) and `train_runs(run_configs, workdir, mesh, sweep_mode)`; one with a report of its
    own also `report_lines(workdir, config, records, runs)`."""
    return importlib.import_module(f"jaxgen.trainers.{config.trainer}")


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`"name:key=value,key=value"` -> (name, overrides); commas inside brackets belong to the
    value (`model.d_channels=(4,8)`)."""
    name, _, body = text.partition(":")
    if not name or not name.replace("-", "").replace(".", "").isalnum():
        raise UserError(f"Variant {text!r} has no usable name. Fix: write it as "
                        "\"name:key=value,key=value\" with a name of letters, digits, - or .")
    items, depth, current = [], 0, ""
    for ch in body:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    overrides = {}
    for item in filter(None, (i.strip() for i in items)):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"Variant {name!r}: {item!r} is not key=value. Fix: write "
                            f"\"{name}:key=value,key=value\".")
        overrides[key.strip()] = value.strip()
    return name, overrides


def expand_grid(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """One run config per point of the grid: each variant (`config.variants`, or the config as
    it is) crossed with the trainer's sweep axes. Each has a `run` field holding the point's
    values and its folder name (e.g. `lr0.001_moment0.1_seed0`, `clip1_lr0.001_...`)."""
    axes = trainer_module(config).SWEEP_AXES
    variants = [parse_variant(v) for v in config.get("variants", ())] or [("", {})]
    names = [name for name, _ in variants]
    if len(set(names)) != len(names):
        raise UserError(f"Variant names repeat: {names}. Fix: give each variant its own name.")
    runs = []
    for variant, overrides in variants:
        base = ml_collections.ConfigDict(config.to_dict())
        if overrides:
            config_lib.apply_overrides(base, overrides, config.get("exp", ""))
        for values in itertools.product(*(base[field] for _, field, _ in axes)):
            run = ml_collections.ConfigDict({name: v for (name, _, _), v in zip(axes, values)})
            run.name = "_".join(([variant] if variant else []) + [
                f"{short}{_fmt(v)}" for (_, _, short), v in zip(axes, values)])
            run.variant = variant
            run_config = ml_collections.ConfigDict(base.to_dict())
            run_config.run = run
            run_config.lock()
            runs.append(run_config)
    return runs


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains (or resumes) every run of the experiment in `workdir`, then writes its report."""
    vmapped = sharding.resolve_sweep_mode(config.sweep_mode) == "vmap"
    mesh = sharding.make_mesh(config.mesh_sweep if vmapped else 1)
    sharding.check_batch_size(config.batch_size, mesh)
    config_lib.check_workdir(workdir, config)
    runs = expand_grid(config)
    if vmapped:
        sharding.check_members(len(runs), mesh)
    if not runs:
        raise UserError("The experiment's grid is empty. Fix: give at least one value to each of "
                        f"{', '.join(f for _, f, _ in trainer_module(config).SWEEP_AXES)}.")
    trainer = trainer_module(config)
    for run in runs:
        trainer.check_config(run)
    # Fails on bad data before anything is written; the folder resolved is recorded.
    config.data_dir = trainer.resolve_data(config)
    main = jax.process_index() == 0  # with several hosts, one writes the files all share
    if main:
        config_lib.write_config(workdir, config)
    trainer.train_runs(runs, workdir, mesh, sweep_mode=config.sweep_mode)
    if main:
        path = report.write_report(workdir)
        print(f"Report: {path}\nFigures: {os.path.join(workdir, report.FIGURES_DIR)}")
