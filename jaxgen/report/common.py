"""The report machinery every family shares: the header with the command that reproduces the
runs, the metrics' floor and ceiling, divergences, collapse alerts, the instability monitor, the
run grid, writing and publishing."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil

from jaxgen import config as config_lib
from jaxgen import grid, log, stability, study, viz
from jaxgen.log import BOUNDS_FILE

FIGURES_DIR = "figures"
LARGE_GRID = 24  # runs beyond which per-run figures are left out of the report
REPORT_FILE = "report.md"


def last(records: list[dict], run: str, split: str, key: str) -> float:
    """The last logged value of one metric of one run (NaN if none)."""
    _, values = log.series(records, run, split, key)
    return float(values[-1]) if len(values) else float("nan")


def run_grid(config) -> list[list[str]]:
    """Run names laid out with the variants (or else the first sweep axis) down and the rest
    across."""
    names = [r.run.name for r in grid.expand_grid(config)]
    first_axis = grid.trainer_module(config).SWEEP_AXES[0][1]
    rows = len(config.get("variants", ())) or max(1, len(config[first_axis]))
    cols = len(names) // rows
    return [names[i * cols:(i + 1) * cols] for i in range(rows)]


def trained_runs(config, records: list[dict]) -> list[str]:
    trained = {r["run"] for r in records}
    return [name for row in run_grid(config) for name in row if name in trained]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def rerun_lines(workdir: str, config, records: list[dict],
                configs_dir: str | None = None) -> list[str]:
    """The scale of the runs and the one command that reproduces them: the experiment plus the
    overrides by which its config.json differs from the experiment's file in `configs_dir`
    (the launcher's `experiments/configs`). Without that file, the command says that the
    overrides are missing from it."""
    overrides, known = [], bool(configs_dir) and os.path.exists(
        os.path.join(configs_dir, config.exp + ".py"))
    if known:
        default = _flat(json.loads(config_lib.load_config(config.exp, configs_dir).to_json()))
        saved = _flat(json.loads(config.to_json()))
        # Fields the experiment's file no longer has (written by an older jaxgen) cannot be
        # given on the command line; they are listed apart.
        overrides = [f"--config.{k}={shlex.quote(str(tuple(v) if isinstance(v, list) else v))}"
                     for k, v in saved.items()
                     if k != "data_dir" and k in default and default[k] != v]
        stale = sorted(k for k in saved if k not in default)
    scale = scale_line(config, records)
    command = " ".join(["python experiments/run.py", f"--exp={config.exp}",
                        "--workdir=runs/" + config.exp, *overrides])
    lines = [scale + ".", "", "Reproduce (then `python experiments/report.py "
             f"--workdir=runs/{config.exp}`):", "", f"    {command}", ""]
    if known and stale:
        lines += [f"(Fields of this workdir's config.json that {config.exp}'s file no longer has, "
                  f"left out of the command: {', '.join(stale)}.)", ""]
    if not known:
        lines += [f"(The overrides are left out: this report was written without {config.exp}'s "
                  "config file. Add `--config.KEY=VALUE` for each field where `config.json` "
                  "differs from it, or regenerate the report with `python experiments/report.py "
                  "--workdir=DIR`.)", ""]
    return lines


def scale_line(config, records: list[dict]) -> str:
    """What the runs can show: steps per run, training images, seeds, the share of the full
    study (`full_study_steps`) and the evaluation's size and cadence."""
    last = {r["run"]: r for r in records if r["split"] == "meta"}  # each run's newest
    spes = sorted({r["steps_per_epoch"] for r in last.values()}) or [0]
    totals = sorted({r["total_steps"] for r in last.values()}) or [0]
    total, runs = totals[-1], len(last)
    if len(spes) == 1 and len(totals) == 1:
        scale = (f"Scale: {total:,} steps per run ({config.epochs} epochs of {spes[0]} steps, "
                 f"batch {config.batch_size}, so {spes[0] * config.batch_size:,} training "
                 f"images an epoch); {runs} runs, seeds {tuple(config.seeds)}")
    else:  # the settings differ in batch size or length: their ranges
        scale = (f"Scale: {totals[0]:,} to {total:,} steps per run ({config.epochs} epochs of "
                 f"{spes[0]} to {spes[-1]} steps: the settings differ in batch size or length; "
                 f"each run's in its meta records); {runs} runs, seeds {tuple(config.seeds)}")
    if config.get("full_study_steps") and total:
        scale += f"; {total / config.full_study_steps:.1%} of the full study's " \
                 f"{config.full_study_steps:,} steps per run"
    if config.get("eval_samples"):
        every = (f"every {config.eval_every_steps} steps" if config.get("eval_every_steps")
                 else f"every {config.eval_every_epochs} epoch(s)")
        scale += (f"; {config.eval_samples:,} generated images scored against "
                  f"{config.eval_reference:,} MNIST test images {every}")
    return scale


def bounds(workdir: str) -> dict[str, dict[str, float]]:
    """The anchors of every eval metric (`eval_bounds.json`): set name -> metrics."""
    path = os.path.join(workdir, BOUNDS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if isinstance(v, dict)}


def bounds_lines(workdir: str) -> list[str]:
    path = os.path.join(workdir, BOUNDS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        bounds = json.load(f)
    rows = {k: v for k, v in bounds.items() if isinstance(v, dict)}
    keys = [k for k in next(iter(rows.values())) if not k[-1].isdigit()]  # per-digit ones out
    anchors = ("the floor (real images), the ceiling (uniform noise) and moment-matched noise "
               "(independent pixels with the training images' per-pixel distribution, the "
               "moment term's own optimum), so that a gain can be told from matching the moments"
               if log.MOMENT_MATCHED in rows else "the floor (real images) and the ceiling "
               "(uniform noise); this log predates the third anchor, moment-matched noise")
    lines = [f"Anchors of every metric ({bounds['samples']} images against "
             f"{bounds['reference']} MNIST test images): {anchors}:", "",
             "| set | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k]:.4g}" for k in keys) + " |")
    return lines + [""]


def divergence_lines(records: list[dict]) -> list[str]:
    """The runs that diverged (frozen by the trainer) or that early stopping ended, each with
    its message."""
    lines = []
    for event, title in (("diverged", "Diverged runs"), ("early_stopped", "Early-stopped runs")):
        events = [r for r in records if r["split"] == "event" and r.get(event)]
        if events:
            lines += [f"## {title}", "", *(f"- **{r['run']}** at step {r['step']}: "
                                           f"{r['message']}" for r in events), ""]
    return lines


# The z-scores of the spike detectors in the monitor table: (logged key, column), GAN's default.
GAN_SPIKES = (("monitor/g_loss_z", "g/loss"), ("monitor/d_grad_norm_z", "d/grad_norm"))


def monitor_lines(records: list[dict], runs: list[str],
                  spikes: tuple[tuple[str, str], ...] = GAN_SPIKES) -> list[str]:
    """Per run, what the train step's instability detectors saw (`jaxgen.stability`): bad
    steps, spikes, D's saturation if logged (a GAN's), and the largest z-score of each of
    `spikes` ((logged key, column) pairs)."""
    def peak(run, key):
        _, values = log.series(records, run, "train", key)
        return float(values.max()) if len(values) else float("nan")

    if not any(log.series(records, r, "train", "monitor/spike")[1].size for r in runs):
        return []
    saturation = any(log.series(records, r, "train", "monitor/d_saturated")[1].size
                     for r in runs)
    columns = ["bad steps", "intervals with a spike", *(["D saturated"] if saturation else []),
               *(f"largest {label} z" for _, label in spikes)]
    lines = ["## Instability monitor", "",
             "Bad steps were skipped (non-finite, or a loss above `stability.max_loss`); a "
             "spike is a logged loss or gradient norm more than `stability.spike_z` running "
             "standard deviations above its running mean"
             + ("; D is saturated when it is right on nearly every real and fake image"
                if saturation else "") + ". Fractions are of logged intervals (means over "
             "their steps).", "",
             "| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for run in runs:
        cells = [f"{int(peak(run, 'skipped'))}",
                 f"{study.train_mean(records, run, 'monitor/spike'):.1%}"]
        if saturation:
            cells.append(f"{study.train_mean(records, run, 'monitor/d_saturated'):.1%}")
        cells += [f"{peak(run, key):.3g}" for key, _ in spikes]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return lines + [""]


def collapse_lines(records: list[dict], runs: list[str], stab) -> list[str]:
    """Every mode-collapse alert of the runs (`stability.collapse_alert` with the workdir's
    `stab` config), recomputed from their logged evaluations, as training raised them."""
    lines = []
    for run in runs:
        evals = [r for r in records if r["run"] == run and r["split"] == "eval"]
        for i in range(len(evals)):
            alert = stability.collapse_alert(evals[:i + 1], stab)
            if alert:
                lines.append(f"- **{run}** at step {evals[i]['step']}: {alert}")
    if not lines:
        return []
    return ["## Mode-collapse alerts", "",
            f"Raised after an evaluation whose `eval/coverage` fell by "
            f"{stab.collapse_coverage_drop:g} or more digits from the run's best, or whose "
            f"`eval/recall` lost more than {stab.collapse_recall_drop:.0%} of its best once that "
            f"best had reached {stab.collapse_min_recall:g} (`stability.collapse_*`).", "",
            *lines, ""]


def sample_figure(workdir: str, runs, path: str, alt: str, draw, *args, dpi: int = 110,
                  **kwargs) -> list[str]:
    """The report lines of a figure drawn from runs' saved samples by `draw(*args, **kwargs)`:
    drawn when the workdir holds any of their sample arrays; in a published folder, which keeps
    the figures but not the arrays (`publish`), the figure drawn before is kept, never redrawn
    empty; no lines when there is neither."""
    if any(viz.sample_steps(os.path.join(workdir, run)) for run in runs):
        viz.save(draw(*args, **kwargs), path, dpi=dpi)
    elif not os.path.exists(path):
        return []
    return [f"![{alt}]({os.path.relpath(path, workdir)})", ""]


def write(workdir: str, lines: list[str]) -> str:
    """Writes `report.md` whole or not at all; returns its path."""
    out = os.path.join(workdir, REPORT_FILE)
    with open(out + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(out + ".tmp", out)
    return out


PUBLISHED = (REPORT_FILE, config_lib.CONFIG_FILE, BOUNDS_FILE)


def publish(workdir: str, dest: str) -> str:
    """Copies a workdir's small files (report, figures, config, bounds) to `dest`, e.g.
    `experiments/results/<exp>/`, with the metrics log gzipped (`log.PUBLISHED_METRICS_FILE`,
    byte for byte the same for the same log; `experiments/report.py --workdir=DEST` reads it);
    checkpoints and samples stay behind."""
    os.makedirs(os.path.join(dest, FIGURES_DIR), exist_ok=True)
    for name in PUBLISHED:
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copy(os.path.join(workdir, name), os.path.join(dest, name))
    with open(os.path.join(workdir, log.METRICS_FILE), "rb") as f:
        raw = f.read()
    with open(os.path.join(dest, log.PUBLISHED_METRICS_FILE), "wb") as f:
        f.write(gzip.compress(raw, mtime=0))
    stale = os.path.join(dest, log.METRICS_FILE)  # an uncompressed copy published before
    if os.path.exists(stale):
        os.remove(stale)
    for name in os.listdir(os.path.join(workdir, FIGURES_DIR)):
        shutil.copy(os.path.join(workdir, FIGURES_DIR, name), os.path.join(dest, FIGURES_DIR))
    return dest
