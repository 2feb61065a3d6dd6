"""The Stable Diffusion fine-tuning report (`report_lines`): per run its losses, the exported
pipeline, the loss curves and the prompts' samples over training."""

from __future__ import annotations

import json
import os

from jaxgen import log, sd, viz


def report_lines(workdir: str, config, records: list[dict], runs: list[str]) -> list[str]:
    """Per run: losses, the exported pipeline, the loss curves and the samples over training."""
    import matplotlib.pyplot as plt

    lines = ["## Fine-tuning", "",
             f"Pretrained pipeline `{config.pretrained}`, images `{config.data_dir}` at "
             f"{sd.training_resolution(config)} px ({config.crop} crop"
             f"{', random flips' if config.random_flip else ''}); "
             f"{'bf16' if config.bf16 else 'fp32'} compute; "
             f"{'EMA ' + format(config.ema_decay, 'g') if config.ema_decay else 'no EMA'}. "
             "Train loss: the mean of the last logged interval. Validation loss: held-out "
             "pairs at fixed timesteps and noise (comparable across evaluations).", "",
             "| run | steps | train loss | val loss (first -> last) | pipeline |",
             "|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run in runs:
        steps, train = log.series(records, run, "train", "loss")
        val_steps, val = log.series(records, run, "val", "loss")
        pipeline = os.path.join(run, sd.PIPELINE_DIR)
        exported = os.path.isfile(os.path.join(workdir, pipeline, "model_index.json"))
        lines.append(f"| {run} | {int(steps[-1]) if len(steps) else 0} | "
                     f"{train[-1] if len(train) else float('nan'):.4g} | "
                     + (f"{val[0]:.4g} -> {val[-1]:.4g}" if len(val) else "") + " | "
                     + (f"`{pipeline}`" if exported else "not yet saved") + " |")
        ax.plot(steps, train, label=f"{run} train")
        ax.plot(val_steps, val, "o-", label=f"{run} val")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss")
    ax.legend(fontsize=7)
    path = viz.save(fig, os.path.join(workdir, "figures", "losses.png"))
    lines += ["", f"![losses]({os.path.relpath(path, workdir)})", "",
              "## Samples", "", f"Prompts, left to right: {json.dumps(list(config.sample_prompts))}"
              f"; {config.num_inference_steps} DDIM steps, guidance {config.guidance_scale:g}, "
              "the same starting noise at every evaluation.", ""]
    for run in runs:
        for step in sd.sample_steps(os.path.join(workdir, run)):
            lines += [f"{run}, step {step}:", "",
                      f"![{run} step {step}]({run}/{log.SAMPLES_DIR}/step_{step:06d}.png)", ""]
    lines += ["Load a fine-tuned pipeline with `FlaxStableDiffusionPipeline.frompretrained("
              "PATH)` (pass `safety_checker=None, feature_extractor=None` if it was saved "
              "without them), or, when it was saved with `export_pytorch` (or after "
              "`jaxgen.sd.add_pytorch_weights(PATH)`), with torch's "
              "`StableDiffusionPipeline.frompretrained(PATH)`.", ""]
    return lines
