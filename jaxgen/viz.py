"""Figures, drawn from a workdir's logs and saved samples alone (never from live training state)."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxgen import log  # noqa: E402

SAMPLES_DIR = log.SAMPLES_DIR
LOSS_KEYS = (("d/loss", "D loss"), ("g/adv_loss", "G adversarial loss"),
             ("g/moment_mean_gap", "sum |mean gap| (batch)"),
             ("g/moment_var_gap", "sum |var gap| (batch)"))


def sample_steps(run_dir: str) -> list[int]:
    """The steps after which a run's samples were saved (`log.save_samples`), in order."""
    folder = os.path.join(run_dir, SAMPLES_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(f[5:-4]) for f in os.listdir(folder)
                  if f.startswith("step_") and f.endswith(".npz"))


def load_samples(run_dir: str, step: int) -> dict[str, np.ndarray]:
    with np.load(log.samples_path(run_dir, step)) as f:
        return dict(f)


def tile(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*H, cols*W) image (grayscale for C = 1, else
    (rows*H, cols*W, C)), with a 1-pixel gap, row-major."""
    n, h, w, c = images.shape
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
    for i in range(min(n, rows * cols)):
        r, k = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = images[i]
    return out[..., 0] if c == 1 else out


def progress_steps(steps: list[int], max_rows: int = 10) -> list[int]:
    """The reference's rows: every other epoch of 20; in general every k-th saved step, ending
    at the last, at most `max_rows`."""
    if not steps:
        return []
    every = max(1, math.ceil(len(steps) / max_rows))
    return steps[::-1][::every][::-1]


def sample_progress_figure(run_dir: str, title: str, modes: tuple[str, ...], cols: int = 6,
                           label: str = "BN: "):
    """The reference figure: a row of `cols` fixed-z samples per chosen step, one panel per
    batch-norm mode (or other key of the saved samples, titled `label` + key), side by side."""
    steps = progress_steps(sample_steps(run_dir))
    fig, axes = plt.subplots(1, len(modes), figsize=(2.2 * len(modes) * cols / 6 + 0.6,
                                                     0.45 * max(len(steps), 1) + 0.9),
                             squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [load_samples(run_dir, s)[mode][:cols] for s in steps]
        if rows:
            ax.imshow(tile(np.concatenate(rows), len(rows), cols), cmap="gray", vmin=0, vmax=255)
        ax.set_yticks([(i + 0.5) * 29 for i in range(len(steps))],
                      [f"step {s}" for s in steps], fontsize=7)
        ax.set_xticks([])
        ax.set_title(f"{label}{mode}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def runs_figure(workdir: str, grid: list[list[str]], mode: str, step: int | None = None,
                n: int = 36, title: str = ""):
    """Every run's samples (the last saved, or those of `step`) side by side; `grid` holds run
    names by row, `mode` the key of the saved samples shown."""
    rows, cols = len(grid), max(len(r) for r in grid)
    side = int(math.sqrt(n))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows), squeeze=False)
    for ax_row, names in zip(axes, grid):
        for ax, name in zip(ax_row, names):
            run_dir = os.path.join(workdir, name)
            steps = sample_steps(run_dir)
            shown = step if step in steps else (steps[-1] if steps else None)
            if shown is not None:
                images = load_samples(run_dir, shown)[mode]
                ax.imshow(tile(images, side, side), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{name}\nstep {shown}", fontsize=8)
            ax.axis("off")
        for ax in ax_row[len(names):]:
            ax.axis("off")
    fig.suptitle(title or f"Fixed-z samples of every run\n(G's batch norm: {mode})", fontsize=10)
    fig.tight_layout()
    return fig


def loss_figure(records: list[dict], runs: list[str]):
    """A row per run: D loss, G adversarial loss and the two batch moment gaps against epoch."""
    fig, axes = plt.subplots(len(runs), len(LOSS_KEYS), figsize=(3.2 * len(LOSS_KEYS),
                                                                  1.9 * len(runs) + 0.5),
                             squeeze=False, sharex=True)
    for ax_row, run in zip(axes, runs):
        for ax, (key, label) in zip(ax_row, LOSS_KEYS):
            _, epochs = log.series(records, run, "train", "epoch")
            steps, values = log.series(records, run, "train", key)
            if len(values):
                ax.plot(epochs[:len(values)], values, lw=0.8)
            if key.endswith("gap") and len(values) and np.all(values > 0):
                ax.set_yscale("log")
            ax.set_title(f"{run}: {label}", fontsize=7)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    return fig


def seed_curves_figure(panels: dict[str, dict[str, list[tuple]]],
                       anchors: dict[str, dict[str, float]] | None = None, dashed=None,
                       log_scale: tuple[str, ...] = ()):
    """One panel per metric: a thin line per seed and a thick one for the mean over seeds (at
    the steps every seed has), against step, coloured by the setting's first part (the learning
    rate of a GAN study), dashed where `dashed(setting)` (default: without the moment term); a
    run whose line stops early stopped there (diverged or early-stopped). `anchors`: per metric,
    named values drawn as grey horizontal lines; `log_scale`: metrics drawn on a log axis (as
    every `...fd` is)."""
    dashed = dashed or (lambda setting: setting.endswith("_moment0"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.9), squeeze=False)
    settings = sorted({s for p in panels.values() for s in p})
    lrs = sorted({s.split("_")[0] for s in settings})
    colors = {lr: plt.cm.viridis(0.85 * i / max(len(lrs) - 1, 1)) for i, lr in enumerate(lrs)}
    styles = ("-", ":", "-.")
    for ax, (key, per_setting) in zip(axes[0], panels.items()):
        for setting in settings:
            seeds = per_setting.get(setting, [])
            if not seeds:
                continue
            color, ls = colors[setting.split("_")[0]], "--" if dashed(setting) else "-"
            for steps, values in seeds:
                ax.plot(steps, values, color=color, ls=ls, lw=0.6, alpha=0.45)
            n = min(len(v) for _, v in seeds)
            ax.plot(seeds[0][0][:n], np.mean([v[:n] for _, v in seeds], 0), color=color, ls=ls,
                    lw=1.8, label=f"{setting} (mean of {len(seeds)})")
        for i, (name, value) in enumerate((anchors or {}).get(key, {}).items()):
            if np.isfinite(value):
                ax.axhline(value, color="grey", lw=0.9, ls=styles[i % len(styles)],
                           label=name)
        if key.endswith("fd") or key in log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def arm_samples_figure(workdir: str, columns: dict[str, tuple[str, str]], steps: list[int],
                       title: str, side: int = 4):
    """Same-z samples at matched steps: a row per step, a column per entry of `columns`
    (label -> (run, sampling mode)), each cell `side` x `side` of the fixed-z samples."""
    fig, axes = plt.subplots(len(steps), len(columns), squeeze=False,
                             figsize=(1.7 * len(columns) + 0.6, 1.7 * len(steps) + 0.7))
    for r, step in enumerate(steps):
        for c, (label, (run, mode)) in enumerate(columns.items()):
            ax = axes[r][c]
            path = log.samples_path(os.path.join(workdir, run), step)
            if os.path.exists(path):
                images = load_samples(os.path.join(workdir, run), step)[mode]
                ax.imshow(tile(images, side, side), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=7)
            if c == 0:
                ax.set_ylabel(f"step {step}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def schedule_figure(records: list[dict], runs: list[str]):
    """The learning rate each network trained with, against step, one line per run and network
    (logged by the train step as `g/lr` and `d/lr`)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for run in runs:
        for key, ls in (("g/lr", "-"), ("d/lr", "--")):
            steps, values = log.series(records, run, "train", key)
            if len(values):
                ax.plot(steps, values, ls=ls, lw=1.0, label=f"{run} {key[0].upper()}")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def heatmap_figure(rows: list[str], cols: list[str], values: np.ndarray, notes: list[list[str]],
                   title: str):
    """A grid of `values` (rows x cols, NaN blank), coloured on a log scale, each cell
    annotated with its note."""
    fig, ax = plt.subplots(figsize=(1.5 + 1.7 * len(cols), 0.9 + 0.42 * len(rows)))
    finite = values[np.isfinite(values)]
    norm = (matplotlib.colors.LogNorm(finite.min(), finite.max())
            if len(finite) and finite.min() > 0 else None)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", norm=norm, aspect="auto")
    for i, row in enumerate(notes):
        for j, note in enumerate(row):
            ax.text(j, i, note, ha="center", va="center", fontsize=7,
                    color="white" if np.isfinite(values[i, j]) else "black")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def save(fig, path: str, dpi: int = 110) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
