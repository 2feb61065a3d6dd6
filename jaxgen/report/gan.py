"""The GAN families' sections of a study's report (`report_lines`): the moment study's claims,
technique rankings, G/D balance, the conditional metrics, both batch-norm sampling modes."""

from __future__ import annotations

import os

import numpy as np

from jaxgen import config as config_lib
from jaxgen import grid, log, stability, study, viz
from jaxgen.log import BN_MODES
from jaxgen.report.common import (
    FIGURES_DIR,
    LARGE_GRID,
    bounds,
    bounds_lines,
    collapse_lines,
    divergence_lines,
    last,
    monitor_lines,
    run_grid,
    sample_figure,
    trained_runs,
)

TRAIN_COLUMNS = (("d/loss", "D loss"), ("g/adv_loss", "G adv. loss"),
                 ("g/moment_loss", "G moment loss"), ("g/moment_mean_gap", "batch mean gap"),
                 ("g/moment_var_gap", "batch var gap"))
VAL_COLUMNS = tuple((f"{m}/{g}", f"val {g.replace('_', ' ')} ({m})")
                    for m in BN_MODES for g in ("mean_gap", "var_gap"))




def _last_epoch_mean(records: list[dict], run: str, key: str, steps_per_epoch: int) -> float:
    steps, values = log.series(records, run, "train", key)
    if not len(values):
        return float("nan")
    return float(values[steps > steps[-1] - steps_per_epoch].mean())


def metrics_table(workdir: str) -> str:
    """The table of final losses and moment gaps per run (markdown), with its legend."""
    config, records = config_lib.read_config(workdir), log.read_metrics(workdir)
    return _metrics_table(records, trained_runs(config, records))


def _metrics_table(records: list[dict], runs: list[str]) -> str:
    header = ["run", "epochs"] + [c for _, c in TRAIN_COLUMNS] + [c for _, c in VAL_COLUMNS]
    lines = ["Train columns average the last epoch's logged steps; G's adversarial and moment "
             "losses are logged apart, so G losses compare across runs with the term on and "
             "off. Gaps are sum over pixels of |difference| of per-pixel means or variances; "
             "`val` gaps compare generated images with the held-out validation set, sampling G "
             "with batch statistics or with its moving averages.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        meta = [r for r in records if r["run"] == run and r["split"] == "meta"]
        spe = meta[-1]["steps_per_epoch"] if meta else 1
        _, epochs = log.series(records, run, "val", "epoch")
        cells = [run, str(int(epochs[-1])) if len(epochs) else "0"]
        cells += [f"{_last_epoch_mean(records, run, k, spe):.4g}" for k, _ in TRAIN_COLUMNS]
        cells += [f"{last(records, run, 'val', k):.4g}" for k, _ in VAL_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    nonfinite = [r for r in runs if np.any(log.series(records, r, "train", "finite")[1] < 1)]
    if nonfinite:
        lines += ["", f"Non-finite losses or gradients occurred in: {', '.join(nonfinite)}."]
    return "\n".join(lines)


def study_section(workdir: str, config, records: list[dict], runs: list[str]) -> list[str]:
    """Eval metrics per setting over seeds, per-seed curves against the anchors, same-z samples
    of both arms at matched steps, and the verdicts on the claims (`jaxgen.study`)."""
    anchors = bounds(workdir)
    failure = anchors.get(log.CEILING, {}).get("eval/fd", float("nan"))
    summaries = study.summarize(records, runs, config.fd_threshold, failure_fd=failure)
    if not summaries:
        return []
    groups = study.by_setting(summaries)
    lines = ["## Sample quality and collapse", "",
             "Metrics of `jaxgen.evaluator` (the jaxgen MNIST classifier's features; `eval/fd` "
             "is the Fréchet distance on them, not FID). Values are mean ± standard deviation "
             "(ddof 1) over seeds at the last evaluation; collapse, digits and failed runs as "
             "in the rules below. Columns marked moving-average BN score samples drawn with G's "
             "batch norm in inference mode.", ""]
    lines += bounds_lines(workdir)
    lines += study.settings_table(groups, config.fd_threshold) + [""]
    keys = [k for k in ("eval/fd", "eval/recall", "eval/trace_ratio")
            if any(k in s.curves for s in summaries)]
    panels = {k: study.seed_curves(summaries, k) for k in keys}
    lines_at = {k: {name: values.get(k, float("nan")) for name, values in anchors.items()}
                for k in keys}
    if keys:  # none when every run diverged before its first evaluation
        path = viz.save(viz.seed_curves_figure(panels, lines_at),
                        os.path.join(workdir, FIGURES_DIR, "eval_curves.png"))
        lines += ["Per-seed curves (thin) and their mean (thick) against steps; grey lines are "
                  "the anchors of the table above.", "",
                  f"![eval curves]({os.path.relpath(path, workdir)})", ""]
    is_moment_study = ("moment_weights" in config and "learning_rates" in config
                       and not config.get("variants"))
    if is_moment_study:
        lines += ["## The study's claims", "", "The rules (`jaxgen.study`):", "", study.RULES,
                  ""]
        lines += study.claims(groups, config.learning_rates, config.fd_threshold)
        lines += arm_samples_lines(workdir, config, summaries)
    lines += ["### Sampling-mode artifact", ""] + study.artifact_lines(summaries) + [""]
    return lines


def arm_samples_lines(workdir: str, config, summaries: list[study.RunSummary]) -> list[str]:
    """Per learning rate, the fixed-z samples of one seed with and without the term at the
    same steps, in both batch-norm modes."""
    lines = []
    groups = study.by_setting(summaries)
    for lr in config.learning_rates:
        both = study.arms(groups, lr)
        if not both:
            continue
        seed = min(s.seed for s in both[0])
        pair = [next((s.run for s in arm if s.seed == seed), None) for arm in both]
        if None in pair:
            continue
        common = sorted(set(viz.sample_steps(os.path.join(workdir, pair[0])))
                        & set(viz.sample_steps(os.path.join(workdir, pair[1]))))
        steps = viz.progress_steps(common, max_rows=6)
        columns = {f"{'plain' if i == 0 else 'term'}, {mode}": (run, mode)
                   for mode in BN_MODES for i, run in enumerate(pair)}
        lines += sample_figure(
            workdir, pair if steps else [],
            os.path.join(workdir, FIGURES_DIR, f"arms_lr{lr:g}.png"), f"both arms at lr {lr:g}",
            viz.arm_samples_figure, workdir, columns, steps, f"lr {lr:g}, seed {seed}")
    if not lines:  # no arms with samples (nor figures drawn before)
        return []
    return ["### Both arms at matched steps", "",
            "The same fixed z, the same seed (initialization and data order), the same steps; "
            "columns without and with the term, G's batch norm on batch statistics and on its "
            "moving averages (the reference's figures).", "", *lines]


# G/D balance from the logged interval means: D "wins" when it is right on most real and most fake
# images, G when D takes most fakes for real.
D_WINS, G_WINS = 0.9, 0.1


def _streak_start(steps: np.ndarray, flags: np.ndarray) -> int | None:
    """The first step of the streak of True flags that runs to the end, or None."""
    if not len(flags) or not flags[-1]:
        return None
    start = len(flags) - 1
    while start > 0 and flags[start - 1]:
        start -= 1
    return int(steps[start])


def balance_lines(records: list[dict], runs: list[str]) -> list[str]:
    """Per run, the generator/discriminator balance: D's accuracy on real and fake images and
    the loss ratio over the last logged tenth of training, and whether (and from which step to
    the end) one network overpowers the other."""
    if not any(log.series(records, r, "train", "balance/loss_ratio")[1].size for r in runs):
        return []
    lines = ["## Generator/discriminator balance", "",
             f"D accuracy on real and on fake images and D loss / G loss, means over the last "
             f"tenth of the logged steps. D overpowers G when its accuracy on both is above "
             f"{D_WINS:.0%} (G's gradient then vanishes); G overpowers D when D takes more than "
             f"{1 - G_WINS:.0%} of the fakes for real. \"since\" is the step from which that held "
             "at every logged interval to the end.", "",
             "| run | D acc real | D acc fake | loss ratio D/G | balance |",
             "|---|---|---|---|---|"]
    for run in runs:
        steps, real = log.series(records, run, "train", "d/acc_real")
        _, fake = log.series(records, run, "train", "d/acc_fake")
        _, ratio = log.series(records, run, "train", "balance/loss_ratio")
        if not len(real) or len(real) != len(fake) or len(ratio) != len(real):
            continue
        tail = slice(len(real) - max(1, len(real) // 10), None)
        d_wins = _streak_start(steps, (real > D_WINS) & (fake > D_WINS))
        g_wins = _streak_start(steps, fake < G_WINS)
        verdict = (f"D overpowers G since step {d_wins}" if d_wins is not None else
                   f"G overpowers D since step {g_wins}" if g_wins is not None else "balanced")
        lines.append(f"| {run} | {real[tail].mean():.2f} | {fake[tail].mean():.2f} | "
                     f"{ratio[tail].mean():.3g} | {verdict} |")
    return lines + [""]


def conditional_lines(records: list[dict], runs: list[str]) -> list[str]:
    """For a conditional GAN: per setting (seeds pooled), how often the classifier reads each
    sample as the digit it was asked to be, and the per-digit Fréchet distance, at the last
    evaluation."""
    if not any(log.series(records, r, "eval", "eval/cond_acc")[1].size for r in runs):
        return []
    settings: dict[str, list[str]] = {}
    for run in runs:
        settings.setdefault(study.setting_of(run), []).append(run)
    lines = ["## Conditional generation", "",
             "Does G draw the digit it is asked for? `eval/cond_acc`: the share of samples the "
             "evaluator's classifier reads as the requested digit (chance 10%), at the last "
             "evaluation, mean ± standard deviation over seeds; the worst digit is the one "
             "least often drawn as asked (its accuracy); `eval/fd_class_mean`: the Fréchet "
             "distance of each digit's samples to the test images of that digit, averaged over "
             "digits.", "",
             "| setting | seeds | cond. accuracy | worst digit | per-digit FD (mean) |",
             "|---|---|---|---|---|"]
    for setting, members in settings.items():
        acc = [last(records, r, "eval", "eval/cond_acc") for r in members]
        fd = [last(records, r, "eval", "eval/fd_class_mean") for r in members]
        per_digit = np.nanmean([[last(records, r, "eval", f"eval/cond_acc_{d}")
                                 for d in range(10)] for r in members], axis=0)
        worst = int(np.nanargmin(per_digit)) if np.isfinite(per_digit).any() else None
        lines.append(f"| {setting} | {len(members)} | {study.fmt(acc)} | "
                     f"{'' if worst is None else f'{worst} ({per_digit[worst]:.2f})'} | "
                     f"{study.fmt(fd)} |")
    return lines + [""]


def schedule_lines(workdir: str, records: list[dict], runs: list[str]) -> list[str]:
    """The learning-rate schedule of every run whose learning rate changed while training."""
    scheduled = [r for r in runs if any(np.ptp(v) > 0 for v in (
        log.series(records, r, "train", k)[1] for k in ("g/lr", "d/lr")) if len(v))]
    if not scheduled:
        return []
    path = viz.save(viz.schedule_figure(records, scheduled),
                    os.path.join(workdir, FIGURES_DIR, "lr_schedules.png"))
    return ["## Learning-rate schedules", "",
            f"![learning-rate schedules]({os.path.relpath(path, workdir)})", ""]


def ranking_lines(workdir: str, config, records: list[dict], runs: list[str]) -> list[str]:
    """For a grid of variants: every setting ranked, compared with the first variant, and a
    heatmap of final `eval/fd` (variants down, the other settings across)."""
    variants = [grid.parse_variant(v)[0] for v in config.get("variants", ())]
    if len(variants) < 2 or not config.get("eval_samples"):
        return []
    baseline = variants[0]
    ranks = study.rank_techniques(records, runs, config.fd_threshold, baseline)
    if not ranks:
        return []
    # Columns: the baseline's settings; a variant's setting goes in its baseline's column.
    rests = sorted(r.setting[len(baseline) + 1:] for r in ranks
                   if study.variant_of(r.setting) == baseline)
    settings = [r.setting for r in ranks]
    values = np.full((len(variants), len(rests)), np.nan)
    notes = [["" for _ in rests] for _ in variants]
    for r in ranks:
        base = study.baseline_of(r.setting, baseline, settings) or r.setting
        if base[len(baseline) + 1:] not in rests or study.variant_of(r.setting) not in variants:
            continue
        i, j = variants.index(study.variant_of(r.setting)), rests.index(base[len(baseline) + 1:])
        if r.final_fd:
            values[i, j] = np.mean(list(r.final_fd.values()))
            notes[i][j] = f"{values[i, j]:.3g}"
        if r.diverged:
            notes[i][j] += f" ({r.diverged}/{r.seeds} div.)"
        if r.setting.split("_", 1)[1] != rests[j]:  # not the column's own values
            notes[i][j] += f"\n{r.setting.split('_', 1)[1]}"
    path = viz.save(viz.heatmap_figure(variants, rests, values, notes,
                                       "final eval/fd, mean over seeds (lower is better)"),
                    os.path.join(workdir, FIGURES_DIR, "technique_heatmap.png"))
    return ["## Techniques ranked", "",
            f"Each variant changes one switch of the baseline (`{baseline}`); settings are "
            "ranked with every seed trained first, then by mean final `eval/fd`. A difference "
            "from the baseline is paired by seed, with its 95% t interval and p-value "
            "(exploratory: uncorrected over the variants). Diverged seeds are counted apart "
            "and left out of the means.", "",
            *study.ranking_table(ranks, config.fd_threshold, baseline), "",
            f"![technique heatmap]({os.path.relpath(path, workdir)})", ""]


DIAGNOSTICS = (("diag/grad_cos", "cosine of the terms' and the adversarial gradient"),
               ("diag/grad_norm_ratio", "norm of the terms' gradient / the adversarial one's"),
               ("diag/gap_over_floor", "moment gaps / their batch-noise floor"))


def _diagnostic_series(records: list[dict], run: str, key: str):
    """(steps, values) of a logged diagnostic; `diag/gap_over_floor` is the batch's two moment
    gaps summed over the same sum for two independent real batches (1: at batch noise)."""
    if key != "diag/gap_over_floor":
        return log.series(records, run, "train", key)
    steps, gap = log.series(records, run, "train", "g/moment_mean_gap")
    _, var_gap = log.series(records, run, "train", "g/moment_var_gap")
    floor_steps, floor = log.series(records, run, "train", "diag/floor_moment_mean_gap")
    _, var_floor = log.series(records, run, "train", "diag/floor_moment_var_gap")
    if not len(floor_steps) or len(floor_steps) != len(steps):
        return np.asarray([]), np.asarray([])
    return steps, (gap + var_gap) / np.maximum(floor + var_floor, 1e-12)


def variants_lines(workdir: str, config, records: list[dict], runs: list[str]) -> list[str]:
    """For a grid of variants: each against the baseline variant on every measure, paired by
    seed; the answer to `moment_why`'s hypothesis where its variants ran
    (`study.parts_hypothesis`); and, where the runs logged them (`loss.term_diagnostics`), how
    the terms' gradient relates to the adversarial one over training."""
    variants = [grid.parse_variant(v)[0] for v in config.get("variants", ())]
    if len(variants) < 2 or not config.get("eval_samples"):
        return []
    summaries = study.summarize(records, runs, config.fd_threshold)
    groups = study.by_setting(summaries)
    if not any(study.variant_of(s) == variants[0] for s in groups):
        return []
    lines = ["## Variants against the baseline", "",
             f"Each setting minus the `{variants[0]}` setting it compares with, paired by seed "
             "(mean difference [95% t interval], p, n seeds; exploratory, uncorrected over the "
             "variants). Collapse by the diversity rule below, with Fisher's exact test.", "",
             *study.versus_table(groups, variants[0]), ""]
    lines += study.parts_hypothesis(groups)
    logged = [r for r in runs if len(log.series(records, r, "train", "diag/grad_cos")[0])]
    if not logged:
        return lines
    header = ["setting", "seeds"] + [f"{label}, {part}" for _, label in DIAGNOSTICS
                                     for part in ("first tenth", "last tenth")]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    panels = {key: {} for key, _ in DIAGNOSTICS}
    for setting in dict.fromkeys(study.setting_of(r) for r in logged):
        members = [r for r in logged if study.setting_of(r) == setting]
        cells = [setting, str(len(members))]
        for key, _ in DIAGNOSTICS:
            series = [_diagnostic_series(records, r, key) for r in members]
            series = [(s, v) for s, v in series if len(v)]
            if series:
                panels[key][setting] = series
            tenth = [max(1, len(v) // 10) for _, v in series]
            cells += [study.fmt([v[:t].mean() for (_, v), t in zip(series, tenth)], 2),
                      study.fmt([v[-t:].mean() for (_, v), t in zip(series, tenth)], 2)]
        table.append("| " + " | ".join(cells) + " |")
    path = viz.save(viz.seed_curves_figure({k: v for k, v in panels.items() if v},
                                           {"diag/grad_cos": {"orthogonal": 0.0},
                                            "diag/gap_over_floor": {"batch-noise floor": 1.0}},
                                           log_scale=("diag/grad_norm_ratio",
                                                      "diag/gap_over_floor")),
                    os.path.join(workdir, FIGURES_DIR, "term_diagnostics.png"))
    lines += ["### The terms' gradients", "",
              "Logged every step (means over each logging interval): the cosine between the "
              "gradient of G's extra terms and that of its adversarial loss on G's parameters, "
              "the ratio of their norms, and the batch's moment gaps over their batch-noise "
              "floor (the same gaps between two independent real batches: 1 means the term "
              "sees nothing but batch noise). Means ± standard deviations over seeds of each "
              "run's first and last tenth of logged intervals.", "", *table, "",
              f"![term diagnostics]({os.path.relpath(path, workdir)})", ""]
    return lines


def report_lines(workdir: str, config, records: list[dict], runs: list[str]) -> list[str]:
    """A GAN study's report below its header: divergences, the technique ranking, the study's
    claims, conditional metrics, collapse alerts, G/D balance, the instability monitor,
    schedules, the final metrics and the samples."""
    rows = run_grid(config)
    figures = os.path.join(workdir, FIGURES_DIR)
    lines = divergence_lines(records)
    if config.get("data_format", "mnist") != "mnist":
        lines += ["## Sample quality", "",
                  f"The runs trained on a folder of images ({config.data_dir}), not MNIST. The "
                  "evaluator's metrics (Fréchet distance, precision, recall, coverage and the "
                  "spreads, all on the features of jaxgen's MNIST classifier) do not apply to "
                  "it and are left out; the per-pixel moment gaps between generated and "
                  "held-out images are in the table of final losses and moment gaps below, and "
                  "the samples in the figures.", ""]
    lines += ranking_lines(workdir, config, records, runs)
    lines += variants_lines(workdir, config, records, runs)
    lines += study_section(workdir, config, records, runs)
    lines += conditional_lines(records, runs)
    lines += collapse_lines(records, runs, stability.with_defaults(config.get("stability")))
    lines += balance_lines(records, runs)
    lines += monitor_lines(records, runs)
    lines += schedule_lines(workdir, records, runs)
    lines += ["## Final losses and moment gaps", "", _metrics_table(records, runs)]

    lines += ["", "## Samples of all runs", "",
              "The same fixed z for every run and epoch. G's batch norm normalizes with the "
              "sample batch's statistics (as in training) or with its moving averages (TF's "
              "inference mode, as the reference drew its figures); a collapse seen in one mode "
              "only is an artifact of sampling, not of training.", ""]
    large = len(runs) > LARGE_GRID  # figures per run would be too many and too large
    for mode in BN_MODES:
        lines += sample_figure(
            workdir, runs, os.path.join(figures, f"all_runs_{mode}.png"), f"all runs, {mode}",
            viz.runs_figure, workdir, rows, mode, n=9 if large else 36,
            dpi=50 if large else 110)

    if large:
        lines += ["## Losses and samples per run", "",
                  f"Not drawn for a grid of {len(runs)} runs: each run's losses are in "
                  "`metrics.jsonl` and TensorBoard, its samples in `<run>/samples/`.", ""]
    else:
        path = viz.save(viz.loss_figure(records, runs), os.path.join(figures, "losses.png"))
        lines += ["## Losses and moment gaps", "",
                  f"![losses]({os.path.relpath(path, workdir)})", ""]
        lines += ["## Samples per run", "", "Rows are epochs; columns six fixed z.", ""]
        for run in runs:
            lines += sample_figure(
                workdir, [run], os.path.join(figures, f"samples_{run}.png"), run,
                viz.sample_progress_figure, os.path.join(workdir, run), run, BN_MODES)

    return lines
