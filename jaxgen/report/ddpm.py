"""The DDPM study's report (`report_lines`): likelihood and sample quality per setting, cosine
against linear schedules, the validation curves, the instability monitor and the samples."""

from __future__ import annotations

from jaxgen import log, study, viz
from jaxgen.diffusion import SAMPLERS
from jaxgen.report.common import (
    FIGURES_DIR,
    LARGE_GRID,
    bounds_lines,
    divergence_lines,
    last,
    monitor_lines,
    run_grid,
    sample_figure,
)

# The report's table: (split, key, column), final values, mean +- std over seeds per setting.
REPORT_COLUMNS = (("val", "loss", "val loss"), ("val", "loss_ema", "val loss (average)"),
                  ("eval", "eval/bpd", "bits/dim"), ("eval", "eval/bpd_decoder", "decoder term"),
                  ("eval", "eval/fd", "eval/fd"), ("eval", "eval/coverage", "coverage"),
                  ("eval", "eval/precision", "precision"), ("eval", "eval/recall", "recall"))


def _val_curves(records: list[dict], runs: list[str], key: str) -> dict[str, list[tuple]]:
    """Per setting, (steps, values) of a validation metric for each seed."""
    out: dict[str, list[tuple]] = {}
    for run in runs:
        steps, values = log.series(records, run, "val", key)
        if len(values):
            out.setdefault(study.setting_of(run), []).append((steps, values))
    return out


def report_lines(workdir: str, config, records: list[dict], runs: list[str]) -> list[str]:
    """The study's report: final metrics per setting over seeds, cosine against linear at each
    learning rate, the validation curves, and every run's samples of both samplers."""
    figures = f"{workdir}/{FIGURES_DIR}"
    settings = list(dict.fromkeys(study.setting_of(r) for r in runs))
    finals = {r: {key: last(records, r, split, key) for split, key, _ in REPORT_COLUMNS}
              for r in runs}
    seeds_of = {s: [r for r in runs if study.setting_of(r) == s] for s in settings}
    header = ["setting", "seeds", *(c for _, _, c in REPORT_COLUMNS)]
    lines = divergence_lines(records)
    lines += ["## Likelihood and sample quality", "",
              "Final values, mean ± standard deviation over seeds. Bits/dim: the variational "
              f"bound on the first {config.bpd_examples} MNIST test images (8-bit, a "
              "discretized Gaussian decoder), its "
              + ("KL terms summed exactly" if config.bpd_terms == config.diffusion.timesteps - 1
                 else f"{config.diffusion.timesteps - 1} KL terms estimated from "
                 f"{config.bpd_terms} stratified timesteps per image")
              + "; for scale, flows reach about 1 bit/dim on MNIST and the decoder term alone "
              "is bounded below by the fixed variance of the last step. Sample metrics: "
              f"{config.eval_samples} {config.sampler.eval.upper()} samples "
              f"({config.sampler[config.sampler.eval + '_steps']} steps) of the parameters' "
              "average, scored by `jaxgen.evaluator` (eval/fd is the Fréchet distance on the "
              "jaxgen MNIST classifier's features, not FID).", ""]
    lines += bounds_lines(workdir)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in settings:
        cells = [study.fmt([finals[r][key] for r in seeds_of[setting]], 4)
                 for _, key, _ in REPORT_COLUMNS]
        lines.append(f"| {setting} | {len(seeds_of[setting])} | " + " | ".join(cells) + " |")
    lines += [""]

    lines += ["## Cosine against linear", "",
              "Differences cosine minus linear at each learning rate (negative: cosine lower), "
              "paired by seed, with their 95% t interval and p-value (`jaxgen.study.paired`; "
              "one seed per arm gives no verdict). The validation "
              "loss is left out: under each schedule the simple loss weights the noise levels "
              "differently, so its values do not compare across schedules; bits/dim and the "
              "sample metrics do.", ""]
    for lr in config.learning_rates:
        pair = [seeds_of.get(f"sched{s}_lr{lr:g}", []) for s in ("cosine", "linear")]
        if not all(pair):
            continue
        parts = []
        for key in ("eval/bpd", "eval/fd", "eval/recall"):
            a, b = ({study.seed_of(r): finals[r][key] for r in runs_} for runs_ in pair)
            parts.append(f"{key} {study.paired(a, b).text(4)}")
        lines.append(f"- lr {lr:g}: " + "; ".join(parts))
    lines += [""]

    panels = {k: _val_curves(records, runs, k) for k in ("loss", "loss_ema")}
    lowest_lr = f"_lr{min(config.learning_rates):g}"
    path = viz.save(viz.seed_curves_figure({f"val/{k}": v for k, v in panels.items()},
                                           dashed=lambda s: s.endswith(lowest_lr)),
                    f"{figures}/val_curves.png")
    lines += ["## Validation loss", "", "The simple objective on held-out training images at "
              "fixed timesteps and noise, every epoch; a thin line per seed and their mean; "
              "colour by schedule, dashed at the lowest learning rate.", "",
              f"![validation curves]({path[len(workdir) + 1:]})", ""]
    lines += monitor_lines(records, runs, (("monitor/loss_z", "loss"),
                                                  ("monitor/grad_norm_z", "grad_norm")))

    rows = run_grid(config)
    lines += ["## Samples", "", "The same keys for every run and epoch, from the parameters' "
              f"average: DDPM ancestral sampling over {config.sampler.ddpm_steps} timesteps "
              f"and DDIM over {config.sampler.ddim_steps}.", ""]
    for sampler in SAMPLERS:
        lines += sample_figure(
            workdir, runs, f"{figures}/all_runs_{sampler}.png", sampler, viz.runs_figure,
            workdir, rows, sampler, title=f"{sampler.upper()} samples of every run (last epoch)")
    if len(runs) <= LARGE_GRID:
        lines += ["Per run, rows are epochs.", ""]
        for run in runs:
            lines += sample_figure(
                workdir, [run], f"{figures}/samples_{run}.png", run,
                viz.sample_progress_figure, f"{workdir}/{run}", run, tuple(SAMPLERS), label="")
    return lines
