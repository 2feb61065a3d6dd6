"""Experiment configs: loading one by name, applying `--config.KEY=VALUE` overrides, and guarding a
workdir against a different experiment.

An experiment is a file `experiments/configs/<name>.py` with a `get_config()` that returns an
`ml_collections.ConfigDict`. The returned config is locked: a misspelt key is an error, not a new
field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os

import ml_collections

from jaxgen.errors import UserError

CONFIG_FILE = "config.json"


def known_experiments(configs_dir: str) -> list[str]:
    return sorted(f[:-3] for f in os.listdir(configs_dir)
                  if f.endswith(".py") and not f.startswith("_"))


def _did_you_mean(name: str, options: list[str], flag: str) -> str:
    close = difflib.get_close_matches(name, options, n=3)
    return f" Did you mean {', '.join(flag + c for c in close)}?" if close else ""


def load_config(exp: str, configs_dir: str) -> ml_collections.ConfigDict:
    known = known_experiments(configs_dir)
    if exp not in known:
        hint = _did_you_mean(exp, known, "--exp=")
        raise UserError(f"Unknown experiment {exp!r}.{hint} Known experiments: "
                        f"{', '.join(known)}. Fix: pass --exp=NAME with one of these, or add "
                        f"{os.path.join(configs_dir, exp + '.py')} with a get_config().")
    spec = importlib.util.spec_from_file_location(f"jaxgen_configs.{exp}",
                                                  os.path.join(configs_dir, exp + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    with config.unlocked():
        config.exp = exp
    config.lock()
    return config


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += _all_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def _parse(text: str, current):
    """A command-line string as a value of the type of the field's current value."""
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError("expected true or false")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError("not a Python literal") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (tuple, list)):
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if current and all(isinstance(c, float) for c in current):
            value = tuple(float(v) if isinstance(v, int) else v for v in value)
        kinds = {type(c) for c in current}
        if current and not all(type(v) in kinds for v in value):
            raise ValueError(f"expected a list of {' or '.join(k.__name__ for k in kinds)}")
        return type(current)(value)
    if type(value) is not type(current):
        raise ValueError(f"expected {type(current).__name__}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str],
                    exp: str = "") -> ml_collections.ConfigDict:
    """Sets dotted keys (`model.g_hidden`) from strings, typed like the defaults they replace."""
    keys = _all_keys(config)
    for key, text in overrides.items():
        if key not in keys:
            hint = _did_you_mean(key, keys, "--config.")
            raise UserError(f"Unknown config key --config.{key} for experiment {exp or config.exp}."
                            f"{hint} Fix: use one of the keys of "
                            f"experiments/configs/{exp or config.exp}.py: {', '.join(keys)}.")
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        current = node[leaf]
        try:
            value = _parse(text, current)
            node[leaf] = value
        except (ValueError, TypeError) as e:
            raise UserError(f"--config.{key}={text} has the wrong type ({e}); its default is "
                            f"{current!r} ({type(current).__name__}). Fix: give a value of that "
                            f"type, e.g. --config.{key}={current!r}.") from None
    return config


# Values a study's fields must have: (test, what it must be, an example of a good value).
_VALUE_RULES = {
    "batch_size": (lambda v: v >= 1, "a positive integer", "100"),
    "epochs": (lambda v: v >= 1, "a positive integer", "20"),
    "train_examples": (lambda v: v == -1 or v >= 1, "-1 (all) or a positive count", "-1"),
    "log_every_steps": (lambda v: v >= 1, "a positive integer", "10"),
    "eval_every_steps": (lambda v: v >= 0, "0 (by epoch) or a positive step count", "0"),
    "checkpoint_every_steps": (lambda v: v >= 0, "0 (none extra) or a positive step count",
                               "0"),
    "keep_checkpoints": (lambda v: v >= 1, "a positive integer", "2"),
    "learning_rates": (lambda v: all(math.isfinite(x) and x > 0 for x in v),
                       "finite and positive", "(0.001,)"),
    "moment_weights": (lambda v: all(math.isfinite(x) and x >= 0 for x in v),
                       "finite and at least 0", "(0.0, 0.1)"),
}


def check_values(config: ml_collections.ConfigDict) -> None:
    """Refuses a study field with a value no run can train with (a batch of 0, no epochs, a
    negative or infinite learning rate or moment weight, ...), before anything is written."""
    for key, (ok, must, example) in _VALUE_RULES.items():
        if key not in config:
            continue
        value = config[key]
        if not ok(value):
            raise UserError(f"--config.{key}={_show(value)} cannot train: it must be {must}. "
                            f"Fix: give e.g. --config.{key}={example}.")


def _show(value) -> str:
    return str(tuple(value)) if isinstance(value, (list, tuple)) else str(value)


# Fields that may change between invocations on the same workdir: more epochs continue training,
# more seeds or settings add runs, and the rest are bookkeeping.
_MUTABLE_FIELDS = {"epochs", "data_dir", "learning_rates", "moment_weights", "seeds", "schedules",
                   "eval_every_steps", "fd_threshold", "collapse_coverage", "full_study_steps",
                   "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "tensorboard",
                   "steps_per_dispatch", "sweep_mode", "mesh_sweep", "variants"}


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir that holds another experiment, or this one with another model or data
    setup, whose checkpoints could not be resumed; never changes anything on refusal."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        if os.path.isdir(workdir) and any(os.path.isdir(os.path.join(workdir, d, "checkpoints"))
                                          for d in os.listdir(workdir)):
            raise UserError(f"The workdir {workdir} holds checkpoints but no {CONFIG_FILE}, so "
                            "jaxgen cannot tell which experiment wrote them. Fix: pass a new "
                            "--workdir, or move the old runs away.")
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e}). Fix: pass a new --workdir, or restore "
                        "that file from a backup.") from None
    if saved.get("exp") != config.exp:
        raise UserError(f"The workdir {workdir} holds the experiment {saved.get('exp')!r}, not "
                        f"{config.exp!r}; resuming would mix their checkpoints. Fix: pass a new "
                        f"--workdir for {config.exp}, or --exp={saved.get('exp')} to resume it.")
    new = json.loads(config.to_json())
    changed = sorted(k for k in set(saved) | set(new)
                     if k not in _MUTABLE_FIELDS and saved.get(k) != new.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise UserError(f"The workdir {workdir} was trained with a different {config.exp} setup "
                        f"({diffs}), so its checkpoints cannot be resumed with this one. Fix: pass "
                        "a new --workdir, or drop the overrides that changed these fields.")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(config.to_json(indent=2, sort_keys=True))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(f"{workdir} has no {CONFIG_FILE}: it is not a jaxgen workdir. Fix: pass "
                        "the --workdir that an experiment was run with.")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


# Fields that the host reads (data sizes, the evaluation, logging and checkpoint cadences, the
# figures' samples) and no compiled function does: jitted functions built for setups that differ
# only in these are the same, so `compiled_part` leaves them out of the key that caches them.
HOST_FIELDS = ("exp", "trainer", "data_format", "train_examples", "val_examples", "data_seed",
               "eval_examples", "eval_samples", "eval_reference", "eval_every_epochs",
               "eval_every_steps", "fd_threshold", "full_study_steps", "log_every_steps",
               "steps_per_dispatch",
               "checkpoint_every_steps", "keep_checkpoints", "num_fixed_samples", "tensorboard")


def compiled_part(static: ml_collections.FrozenConfigDict) -> ml_collections.FrozenConfigDict:
    """`static` (a `static_part`) without `HOST_FIELDS`: what a trainer's `build` caches its
    jitted functions by, and all that it sees, so a build that read a host field would fail
    at once rather than serve a setup it was not built for."""
    return ml_collections.FrozenConfigDict({k: v for k, v in static.items()
                                            if k not in HOST_FIELDS})


def static_part(config: ml_collections.ConfigDict,
                run_fields: tuple[str, ...]) -> ml_collections.FrozenConfigDict:
    """A run config without `run_fields` (the run's own values and bookkeeping), frozen: the part
    that shapes a trainer's compiled functions, hashable to cache them. Lists become tuples, so
    that a config read back from `config.json` finds the same compiled functions."""
    def tuples(value):
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(tuples(v) for v in value) if isinstance(value, (list, tuple)) else value

    return ml_collections.FrozenConfigDict({k: tuples(v) for k, v in config.to_dict().items()
                                            if k not in run_fields})
