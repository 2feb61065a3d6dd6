"""An experiment's grid of runs: its variants crossed with its trainer's sweep axes, each run a
config of its own with a `run` field (`expand_grid`), and the trainer that trains them
(`trainer_module`). Below the launcher (`experiment`) and the report, which both read it."""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable

import jax
import ml_collections

from jaxgen import checkpoint
from jaxgen import config as config_lib
from jaxgen.errors import UserError


def trainer_module(config: ml_collections.ConfigDict):
    """The trainer named by `config.trainer` (`jaxgen/trainers/<name>.py`). Every trainer
    exposes `SWEEP_AXES`, `check_config(run_config)`, `resolve_data(config)` (the data folder,
    checked) and `train_runs(run_configs, workdir, mesh, sweep_mode)`; its report's sections are
    `jaxgen.report.FAMILIES[name]`."""
    # Looked up by name when a grid is expanded, as a registry: the one import that points up
    # the layers (`tests/test_layering.py` reads the static imports).
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


def run_config(workdir: str, run: str) -> ml_collections.ConfigDict:
    """The config of run `run` of a workdir, from the experiment config saved there."""
    runs = {r.run.name: r for r in expand_grid(config_lib.read_config(workdir))}
    if run not in runs:
        raise UserError(f"{workdir} has no run {run!r}. Fix: pass one of {', '.join(runs)}.")
    return runs[run]


def restore_run(workdir: str, run: str, build: Callable, init: Callable, best: bool = False):
    """(run config, compiled functions, state) of a trained run, for notebooks and analyses:
    its config from the workdir's saved one, `build(config)` (a trainer's `Compiled`), and its
    latest checkpoint (or, `best`, its early-stopping best) restored into the state that
    `init(fns, config, key)` builds, described by `jax.eval_shape` (nothing is computed)."""
    config = run_config(workdir, run)
    fns = build(config)
    abstract = jax.eval_shape(lambda key: init(fns, config, key), jax.random.PRNGKey(0))
    return config, fns, checkpoint.restore_run(workdir, config, abstract, best=best)
