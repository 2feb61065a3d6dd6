import json
import os
import runpy
import shutil
import sys

import pytest
from conftest import CONFIGS_DIR, REPO, tiny_config

from jaxgen import experiment, grid, log, report, stability


def test_rerun_command_lists_the_overrides_only_with_the_configs_at_hand(synthetic_data_dir):
    config = tiny_config(synthetic_data_dir, batch_size="20")
    with_configs = "\n".join(report.rerun_lines("w", config, [], CONFIGS_DIR))
    assert "--exp=moment_stab_mnist" in with_configs and "--config.batch_size=20" in with_configs
    assert "--config.data_dir" not in with_configs and "left out" not in with_configs
    without = "\n".join(report.rerun_lines("w", config, []))
    assert "--config.batch_size" not in without and "overrides are left out" in without


def test_report_regenerates_from_logs_alone(tmp_path, synthetic_data_dir, monkeypatch):
    config = tiny_config(synthetic_data_dir, moment_weights="(0.0, 0.1)",
                         learning_rates="(0.01, 0.001)")
    workdir = str(tmp_path / "w")
    experiment.run_experiment(config, workdir, CONFIGS_DIR)  # as experiments/run.py does
    text = open(os.path.join(workdir, report.REPORT_FILE)).read()
    runs = [r.run.name for r in grid.expand_grid(config)]
    assert len(runs) == 4 and all(f"| {run} | 2 |" in text for run in runs)
    assert "lr0.01_moment0_seed0" in runs
    figures = sorted(os.listdir(os.path.join(workdir, report.FIGURES_DIR)))
    assert figures == sorted(["all_runs_batch_stats.png", "all_runs_moving_avg.png",
                              "eval_curves.png", "losses.png", "arms_lr0.01.png",
                              "arms_lr0.001.png"] + [f"samples_{r}.png" for r in runs])
    for anchor in (log.FLOOR, log.CEILING, log.MOMENT_MATCHED):
        assert f"| {anchor} |" in text, anchor
    assert text.splitlines()[2].startswith("Scale: 40 steps per run (2 epochs of 20 steps")
    assert "| lr0.001_moment0.1 | 1 |" in text  # a row per setting, over its seeds
    for claim in ("1. **The moment term speeds up training at every learning rate: ",
                  "2. **At lr 0.0001 the plain GAN collapses while the term draws digits: not "
                  "tested",
                  "3. **At lr 0.001 the two are closest: "):
        assert claim in text, claim
    # One seed per arm: no verdict; and the rules are stated.
    assert "no verdict" in text and "**Horizon.**" in text
    assert "### Sampling-mode artifact" in text
    assert report.run_grid(config) == [runs[:2], runs[2:]]  # rows: learning rates

    # Delete every figure and the checkpoints; the report comes back from the logs alone.
    shutil.rmtree(os.path.join(workdir, report.FIGURES_DIR))
    os.remove(os.path.join(workdir, report.REPORT_FILE))
    for run in runs:
        shutil.rmtree(os.path.join(workdir, run, "checkpoints"))
    # experiments/report.py as a user runs it, in this process (a fresh one adds only JAX's
    # start-up: the report keeps nothing in memory between calls).
    monkeypatch.setattr(sys, "argv", ["report.py", f"--workdir={workdir}"])
    runpy.run_path(os.path.join(REPO, "experiments", "report.py"), run_name="__main__")
    assert open(os.path.join(workdir, report.REPORT_FILE)).read() == text
    assert sorted(os.listdir(os.path.join(workdir, report.FIGURES_DIR))) == figures

    # Published: the small files, the log gzipped (the same bytes for the same log) and read back.
    dest = tmp_path / "published"
    for _ in range(2):
        report.publish(workdir, str(dest))
    assert sorted(os.listdir(dest)) == sorted([report.REPORT_FILE, "config.json", "figures",
                                                log.PUBLISHED_METRICS_FILE, "eval_bounds.json"])
    assert log.read_metrics(str(dest)) == log.read_metrics(workdir)
    # Reported again there, without the runs' sample arrays: the same report, and the sample
    # figures drawn before are kept as they were, not redrawn empty.
    drawn = {name: (dest / report.FIGURES_DIR / name).read_bytes() for name in figures}
    report.write_report(str(dest), CONFIGS_DIR)  # what experiments/report.py runs, as above
    assert (dest / report.REPORT_FILE).read_text() == text
    kept = [n for n in figures if n.startswith(("samples_", "arms_", "all_runs_"))]
    assert len(kept) == 8 and all(
        (dest / report.FIGURES_DIR / n).read_bytes() == drawn[n] for n in kept)


def test_metrics_reader_skips_torn_lines_and_keeps_newest(tmp_path):
    logger = log.MetricsLog(str(tmp_path), "r", tensorboard=False)
    logger.write(10, "train", {"d/loss": 1.0})
    logger.write(10, "train", {"d/loss": 2.0})  # the same step again, after a resume
    logger.write(20, "train", {"d/loss": float("nan")})
    logger.close()
    with open(tmp_path / log.METRICS_FILE, "a") as f:
        f.write('{"run": "r", "split": "tr')  # killed mid-line
    with pytest.warns(UserWarning, match="line 4: not a whole record"):
        records = log.read_metrics(str(tmp_path))
    assert [(r["step"], r["d/loss"]) for r in records] == [(10, 2.0), (20, None)]
    steps, values = log.series(records, "r", "train", "d/loss")
    assert steps.tolist() == [10] and values.tolist() == [2.0]
    # The next log (a resume) cuts the fragment off before appending: no record glued onto it.
    with pytest.warns(UserWarning, match="last line was cut short"):
        logger = log.MetricsLog(str(tmp_path), "r", tensorboard=False)
    logger.write(30, "train", {"d/loss": 3.0})
    logger.close()
    lines = (tmp_path / log.METRICS_FILE).read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)  # every line whole
    assert [r["step"] for r in log.read_metrics(str(tmp_path))] == [10, 20, 30]


def _train(run, step, **values):
    return {"run": run, "split": "train", "step": step, **values}


def test_balance_names_the_network_that_overpowers_the_other_and_since_when():
    records = []
    for step in range(10, 110, 10):
        late = step >= 60
        records.append(_train("d_wins", step, **{"d/acc_real": 0.95 if late else 0.7,
                                                 "d/acc_fake": 0.97 if late else 0.6,
                                                 "balance/loss_ratio": 0.1}))
        records.append(_train("g_wins", step, **{"d/acc_real": 0.6,
                                                 "d/acc_fake": 0.05 if step >= 90 else 0.5,
                                                 "balance/loss_ratio": 3.0}))
        records.append(_train("even", step, **{"d/acc_real": 0.6, "d/acc_fake": 0.5,
                                               "balance/loss_ratio": 1.0}))
    text = "\n".join(report.gan.balance_lines(records, ["d_wins", "g_wins", "even"]))
    assert "| d_wins | 0.95 | 0.97 | 0.1 | D overpowers G since step 60 |" in text
    assert "| g_wins | 0.60 | 0.05 | 3 | G overpowers D since step 90 |" in text
    assert "| even | 0.60 | 0.50 | 1 | balanced |" in text


def test_collapse_alerts_are_recomputed_from_the_logged_evaluations():
    def evaluation(run, step, coverage, recall):
        return {"run": run, "split": "eval", "step": step, "eval/coverage": coverage,
                "eval/recall": recall}

    records = [evaluation("a", 20, 10, 0.3), evaluation("a", 40, 3, 0.3),
               evaluation("b", 20, 10, 0.01), evaluation("b", 40, 10, 0.0)]  # recall noise
    stab = stability.with_defaults({})
    text = "\n".join(report.collapse_lines(records, ["a", "b"], stab))
    assert "## Mode-collapse alerts" in text
    assert "- **a** at step 40: mode collapse: eval/coverage 3 of 10 digits, down from 10" in text
    assert "**b**" not in text
    assert report.collapse_lines(records[2:], ["b"], stab) == []


def test_variant_grid_reports_paired_differences_the_hypothesis_and_term_diagnostics(tmp_path):
    """moment_why's four variants from constructed logs: the paired table, the hypothesis, and
    the terms' gradient diagnostics (first and last tenth of the logged steps)."""
    from jaxgen.report import gan as gan_report

    config = grid.config_lib.load_config("moment_why_parts", CONFIGS_DIR)
    records, runs = [], []
    for variant, healthy in (("plain", False), ("mean", False), ("var", True), ("both", True)):
        weight = "0" if variant == "plain" else "0.1"
        for seed in range(3):
            run = f"{variant}_lr0.0001_moment{weight}_seed{seed}"
            runs.append(run)
            spread = 0.8 + 0.01 * seed if healthy else 0.001 * (seed + 1)
            for step in (110, 220):
                records.append({"run": run, "split": "eval", "step": step,
                                "eval/fd": 30.0 if healthy else 130.0,
                                "eval/trace_ratio": spread, "eval/pixel_var_ratio": spread,
                                "eval/recall": 0.3 if healthy else 0.0,
                                "eval/precision": 0.4, "eval/mean_gap": 50.0 + seed})
            for step in range(10, 230, 10):
                row = _train(run, step, **{"g/moment_mean_gap": 40.0, "g/moment_var_gap": 20.0})
                if variant != "plain":  # diagnostics off in the plain variant, as configured
                    row.update({"diag/grad_cos": -0.5 if step <= 20 else 0.25,
                                "diag/grad_norm_ratio": 2.0, "diag/floor_moment_mean_gap": 20.0,
                                "diag/floor_moment_var_gap": 10.0})
                records.append(row)
    text = "\n".join(gan_report.variants_lines(str(tmp_path), config, records, runs))
    assert "| var_lr0.0001_moment0.1 (vs plain_lr0.0001_moment0) | 0/3 vs 3/3" in text
    assert "prevents the collapse*: **supported**" in text
    assert "fits the brightness early*: **not shown**" in text
    # 22 logged intervals a run: the first tenth is the first two (cosine -0.5), the last
    # tenth the last two (0.25); the gaps are twice their floor throughout.
    assert "| mean_lr0.0001_moment0.1 | 3 | -0.5 ± 0 | 0.25 ± 0 | 2 ± 0 | 2 ± 0 | 2 ± 0 | 2 ± 0 |" \
        in text
    assert "plain_lr0.0001_moment0 | 3 |" not in text
    assert os.path.exists(tmp_path / "figures" / "term_diagnostics.png")


def test_scale_line_gives_ranges_when_the_settings_differ_in_batch_size(synthetic_data_dir):
    config = tiny_config(synthetic_data_dir)
    meta = [{"run": f"b{b}_seed0", "split": "meta", "step": 0, "steps_per_epoch": 3200 // b,
             "total_steps": 4 * 3200 // b} for b in (32, 64)]
    line = report.common.scale_line(config, meta)
    assert line.startswith("Scale: 200 to 400 steps per run (2 epochs of 50 to 100 steps: the "
                           "settings differ in batch size or length") and "2 runs" in line
    same = report.common.scale_line(config, meta[:1])
    assert same.startswith("Scale: 400 steps per run (2 epochs of 100 steps, batch 10")


def test_anchors_say_when_a_log_predates_the_moment_matched_one(tmp_path):
    anchors = {"eval/fd": 1.0}
    for rows, says in (({log.FLOOR: anchors, log.CEILING: anchors}, "predates the third anchor"),
                       ({log.FLOOR: anchors, log.CEILING: anchors, log.MOMENT_MATCHED: anchors},
                        "the moment term's own optimum")):
        (tmp_path / log.BOUNDS_FILE).write_text(json.dumps(
            {**rows, "samples": 100, "reference": 100}))
        text = "\n".join(report.common.bounds_lines(str(tmp_path)))
        assert says in text and text.count("\n| ") == len(rows) + 1  # header and a row each
