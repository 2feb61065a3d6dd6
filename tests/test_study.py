import math

import numpy as np
import pytest
from scipy import stats

from jaxgen import study

HEALTHY = {"eval/trace_ratio": 0.9, "eval/pixel_var_ratio": 0.95, "eval/recall": 0.5,
           "eval/precision": 0.7, "eval/class_kl": 0.1}
COLLAPSED = {"eval/trace_ratio": 0.01, "eval/pixel_var_ratio": 0.01, "eval/recall": 0.0,
             "eval/precision": 0.0, "eval/class_kl": 2.3}


def _records(run, fds, every=100, last=HEALTHY, early=None):
    """Eval records every `every` steps with the given eval/fd; `last` holds the diversity
    metrics of the final evaluation, `early` (default: `last`) those of the others."""
    out = []
    for i, fd in enumerate(fds, start=1):
        extra = last if i == len(fds) else (early or last)
        out.append({"run": run, "split": "eval", "step": every * i, "epoch": i / 5,
                    "eval/fd": float(fd), **extra})
    return out


def _verdicts(lines):
    return [line.split(": ", 1)[1].rstrip(".*") for line in lines
            if line[:3] in ("1. ", "2. ", "3. ")]


def _groups(records, threshold=20.0):
    runs = sorted({r["run"] for r in records})
    return study.by_setting(study.summarize(records, runs, threshold, failure_fd=529.0))


def test_paired_difference_is_the_t_interval_over_seeds():
    x = {0: 10.0, 1: 12.0, 2: 9.0, 3: 11.0}
    y = {0: 14.0, 1: 15.0, 2: 13.5, 3: 16.0, 9: 0.0}  # seed 9 has no partner: left out
    d = np.array([-4.0, -3.0, -4.5, -5.0])
    result = study.paired(x, y)
    se = d.std(ddof=1) / 2
    half = stats.t.ppf(0.975, 3) * se
    assert result.n == 4 and result.mean == pytest.approx(d.mean())
    assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result.p == pytest.approx(2 * stats.t.sf(abs(d.mean()) / se, 3))
    assert result.verdict() == "clear" and "95% CI" in result.text()
    # One seed per arm gives no verdict, whatever the size of the difference.
    one = study.paired({0: 1.0}, {0: 100.0})
    assert one.n == 1 and one.verdict().startswith("no verdict")
    assert study.paired({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.5}).verdict() == "within noise"
    assert study.paired({0: 1.0, 1: np.nan}, {0: 2.0, 1: 3.0}).n == 1


def test_holm_and_fisher_on_known_cases():
    adjusted = study.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": np.nan})
    assert adjusted["a"] == pytest.approx(0.03) and adjusted["c"] == pytest.approx(0.06)
    assert adjusted["b"] == pytest.approx(0.06) and math.isnan(adjusted["d"])
    assert study.fisher(5, 5, 0, 5) == pytest.approx(2 / math.comb(10, 5))  # 0.0079
    assert study.fisher(3, 5, 2, 5) == pytest.approx(1.0)


def test_collapse_rule_on_noise_real_images_and_a_collapsed_run():
    # The values the evaluator gives on 2,000 samples (`study.COLLAPSE_DIVERSITY`'s comment).
    noise = {"eval/trace_ratio": 0.064, "eval/pixel_var_ratio": 1.24, "eval/recall": 0.0}
    real = {"eval/trace_ratio": 0.98, "eval/pixel_var_ratio": 0.99, "eval/recall": 0.84}
    moment_matched = {"eval/trace_ratio": 0.125, "eval/pixel_var_ratio": 0.99, "eval/recall": 0}
    six_identical = {"eval/trace_ratio": 0.016, "eval/pixel_var_ratio": 0.009, "eval/recall": 0}
    assert [study.is_collapsed(m) for m in (noise, real, moment_matched, six_identical)] == [
        False, False, False, True]
    assert study.is_collapsed({"eval/coverage": 1}) is None  # old records: not measured


def test_summary_threshold_digits_and_a_diverged_run_counts_as_failed():
    early = {**HEALTHY, "eval/precision": 0.1}
    s = study.summarize(_records("lr0.01_moment0_seed3", [50, 30, 15, 10], early=early),
                        ["lr0.01_moment0_seed3"], 20.0)[0]
    assert (s.setting, s.seed, s.steps_to_threshold, s.first_digits) == (
        "lr0.01_moment0", 3, 300.0, 400.0)
    assert s.fd_auc == np.mean([50, 30, 15, 10]) and s.final["eval/fd"] == 10
    assert s.collapsed is False and s.censored_steps == 300.0
    # A collapsed generator whose one image looks like a digit (precision 1) draws no digits.
    one_digit = {**COLLAPSED, "eval/precision": 1.0}
    stuck = study.summarize(_records("y_seed0", [130, 120], last=one_digit), ["y_seed0"], 20.0)
    assert stuck[0].collapsed is True and np.isnan(stuck[0].first_digits)
    # The values of a published run with the term at its first digits (moment_stab_claim2,
    # seed 0, step 825) count; a diverse generator of two or three precise shapes does not.
    first = {**HEALTHY, "eval/precision": 0.435, "eval/class_kl": 0.179, "eval/recall": 0.003,
             "eval/trace_ratio": 0.33}
    few = {**HEALTHY, "eval/precision": 0.9, "eval/class_kl": 1.63, "eval/recall": 0.0,
           "eval/trace_ratio": 0.16}
    assert [study.summarize(_records("z_seed0", [60], last=m), ["z_seed0"], 20.0)[0].first_digits
            for m in (first, few)] == [100.0, pytest.approx(np.nan, nan_ok=True)]
    never = study.summarize(_records("x_seed1", [50, 40]), ["x_seed1"], 20.0)[0]
    assert np.isnan(never.steps_to_threshold) and never.censored_steps == 200.0
    records = _records("lr0.01_moment0_seed0", [50, 15]) + [
        {"run": "lr0.01_moment0_seed0", "split": "event", "step": 250, "diverged": 1.0}]
    failed = study.summarize(records, ["lr0.01_moment0_seed0"], 20.0, failure_fd=529.0)[0]
    assert failed.diverged_at == 250 and failed.collapsed is True
    assert failed.final["eval/fd"] == 529.0 and np.isnan(failed.final["eval/recall"])
    assert failed.steps_to_threshold == 200.0  # reached before it diverged
    # Diverged before its first evaluation: still there, and failed.
    early = study.summarize([{"run": "x_seed2", "split": "event", "step": 30, "diverged": 1.0}],
                            ["x_seed2"], 20.0, failure_fd=529.0)
    assert len(early) == 1 and early[0].collapsed is True and early[0].diverged_at == 30
    assert early[0].final["eval/fd"] == 529.0 and np.isnan(early[0].first_digits)
    assert early[0].censored_steps == 30.0 and study.curves(early, "eval/fd") == {}


def test_a_seed_where_neither_run_reached_the_threshold_is_left_out_of_the_steps():
    # Seed 0: only the variant reached it; seed 1: both; seed 2: neither, and the variant ran
    # twice as many steps (a smaller batch), which is no evidence that it is slower.
    variant = study.summarize(_records("v_seed0", [30, 10, 10]) + _records("v_seed1", [10, 10])
                              + _records("v_seed2", [40, 30, 30, 30]),
                              ["v_seed0", "v_seed1", "v_seed2"], 20.0)
    base = study.summarize(_records("b_seed0", [30, 30]) + _records("b_seed1", [30, 10])
                           + _records("b_seed2", [40, 30]), ["b_seed0", "b_seed1", "b_seed2"], 20.0)
    x, y = study.steps_by_seed(variant, base)
    assert (x, y) == ({0: 200.0, 1: 100.0}, {0: 200.0, 1: 200.0})
    d = study.paired(x, y)
    assert d.n == 2 and d.mean == -50.0


def _study(rng, lrs, plain_fds, term_fds, seeds=5, plain_last=HEALTHY, jitter=1.0):
    records = []
    for lr in lrs:
        for seed in range(seeds):
            noise = rng.normal(0, jitter, len(plain_fds[lr]))
            records += _records(f"lr{lr:g}_moment0_seed{seed}", plain_fds[lr] + noise,
                                last=plain_last if lr == 0.0001 else HEALTHY)
            records += _records(f"lr{lr:g}_moment0.1_seed{seed}", term_fds[lr] + noise)
    return records


LRS = (0.01, 0.001, 0.0001)
# 25 evaluations of 100 steps: the runs reach step 2,500, past the reference's horizons of
# claims 1 and 3 (2,200) and of the collapse (1,100).
STEPS = np.arange(1, 26)


def test_claims_reproduced_when_the_data_say_so():
    plain = {0.01: 200 / STEPS * 3, 0.001: 200 / STEPS * 1.2, 0.0001: np.full(25, 400.0)}
    term = {0.01: 200 / STEPS, 0.001: 200 / STEPS, 0.0001: 200 / STEPS}
    records = _study(np.random.default_rng(0), LRS, plain, term, plain_last=COLLAPSED)
    verdicts = _verdicts(study.claims(_groups(records), LRS, 20.0))
    assert verdicts == ["reproduced", "reproduced", "reproduced"], verdicts


def test_claims_not_reproduced_when_the_term_hurts():
    plain = {lr: 200 / STEPS for lr in LRS}
    term = {0.01: 200 / STEPS * 1.5, 0.001: 200 / STEPS * 4, 0.0001: np.full(25, 400.0)}
    records = _study(np.random.default_rng(1), LRS, plain, term)
    verdicts = _verdicts(study.claims(_groups(records), LRS, 20.0))
    assert [v.split(":")[0] for v in verdicts] == ["not reproduced"] * 3, verdicts


def test_noise_is_never_reproduced():
    same = {lr: 200 / STEPS for lr in LRS}
    for seed in range(3):
        records = _study(np.random.default_rng(seed), LRS, same, same, jitter=8.0)
        verdicts = _verdicts(study.claims(_groups(records), LRS, 20.0))
        assert not any(v == "reproduced" for v in verdicts), verdicts


def test_one_seed_per_arm_gives_no_verdict():
    plain = {0.01: 200 / STEPS * 3, 0.001: 200 / STEPS * 1.2, 0.0001: np.full(25, 400.0)}
    term = {lr: 200 / STEPS for lr in LRS}
    records = _study(np.random.default_rng(0), LRS, plain, term, seeds=1, plain_last=COLLAPSED)
    verdicts = _verdicts(study.claims(_groups(records), LRS, 20.0))
    assert all(v.startswith("no verdict") for v in verdicts), verdicts


def test_short_runs_are_not_testable_rather_than_not_reproduced():
    """Runs that stop at step 1,000, before the reference showed any of the effects, with the
    two arms alike and no plain run collapsed."""
    same = {lr: 400 / np.arange(1, 11) for lr in LRS}
    records = _study(np.random.default_rng(0), LRS, same, same)
    records = [r for r in records if r["step"] <= 1000]
    verdicts = _verdicts(study.claims(_groups(records), LRS, 20.0))
    assert all(v.startswith("not testable at this horizon") for v in verdicts), verdicts


def test_claim3_is_a_difference_of_differences():
    """The term saves about 800 steps at 0.01 and nothing at 0.001; each seed has its own pace,
    shared by its runs, that varies more than the effect (so only the paired design sees it)."""
    rng = np.random.default_rng(3)
    records = []
    for seed in range(4):
        pace = rng.uniform(1000, 2000)  # the seed's steps to the threshold without the term
        for lr, saved in ((0.01, 800 + rng.normal(0, 50)), (0.001, rng.normal(0, 50))):
            for name, steps_needed in (("moment0", pace), ("moment0.1", pace - saved)):
                # eval/fd falls below 20 at the first evaluation past `steps_needed`.
                records += _records(f"lr{lr:g}_{name}_seed{seed}",
                                    20 * steps_needed / (100 * STEPS) * 0.999)
    lines = study.claims(_groups(records), (0.01, 0.001), 20.0)
    assert _verdicts(lines)[2] == "reproduced", lines
    assert any("difference of differences" in line for line in lines)


def test_table_and_curves_use_ddof_1():
    records = []
    for seed, fd in enumerate((10.0, 12.0, 14.0)):
        records += _records(f"lr0.001_moment0_seed{seed}", [50, 30, fd])
    groups = _groups(records)
    table = study.settings_table(groups, 20.0)
    row = next(line for line in table if line.startswith("| lr0.001_moment0 |"))
    assert "| 12 ± 2 |" in row and "(3/3 reached)" in row and "| 0/3 |" in row
    assert study.num(1834.4, sign=True) == "+1,834" and study.num(0.01234) == "0.0123"
    summaries = [s for runs in groups.values() for s in runs]
    steps, mean, std = study.curves(summaries, "eval/fd")["lr0.001_moment0"]
    assert steps.tolist() == [100, 200, 300] and std[-1] == pytest.approx(2.0)
    assert len(study.seed_curves(summaries, "eval/fd")["lr0.001_moment0"]) == 3


def _parts(rng, mean_rescues, mean_gaps, seeds=3):
    """Runs of moment_why's four variants at lr 0.0001: plain collapsed, var and both healthy,
    mean healthy or collapsed; `mean_gaps` (by variant) the first evaluation's eval/mean_gap."""
    records = []
    for variant, healthy in (("plain", False), ("mean", mean_rescues), ("var", True),
                             ("both", True)):
        weight = "0" if variant == "plain" else "0.1"
        for seed in range(seeds):
            last = dict(HEALTHY if healthy else COLLAPSED)
            last["eval/trace_ratio"] += 0.01 * rng.normal()
            run = f"{variant}_lr0.0001_moment{weight}_seed{seed}"
            rows = _records(run, [200, 100 if healthy else 150], last=last)
            rows[0]["eval/mean_gap"] = mean_gaps[variant] + rng.normal()
            records += rows
    return _groups(records, threshold=50.0)


def test_parts_hypothesis_answers_from_the_paired_numbers():
    rng = np.random.default_rng(0)
    gaps = {"plain": 300.0, "mean": 40.0, "var": 200.0, "both": 45.0}
    lines = study.parts_hypothesis(_parts(rng, mean_rescues=False, mean_gaps=gaps))
    text = "\n".join(lines)
    assert "prevents the collapse*: **supported**" in text
    assert "fits the brightness early*: **supported**" in text
    assert "plain 3/3, mean alone 3/3, variance alone 0/3, both 0/3" in text
    # Either part alone rescues: the variance part is then not what prevents the collapse;
    # means alike at the first evaluation: the second half is not shown.
    gaps = {"plain": 300.0, "mean": 100.0, "var": 100.0, "both": 45.0}
    text = "\n".join(study.parts_hypothesis(_parts(rng, mean_rescues=True, mean_gaps=gaps)))
    assert "**not supported as stated**: either part alone prevents it" in text
    assert "fits the brightness early*: **not shown**" in text
    # One seed per variant: no verdict on either.
    text = "\n".join(study.parts_hypothesis(_parts(rng, False, gaps, seeds=1)))
    assert text.count("**no verdict**") == 2
    assert study.parts_hypothesis({}) == []


def test_versus_table_pairs_each_variant_with_its_baseline():
    rng = np.random.default_rng(1)
    gaps = {"plain": 300.0, "mean": 40.0, "var": 200.0, "both": 45.0}
    lines = study.versus_table(_parts(rng, False, gaps), "plain")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(rows) == {f"{v}_lr0.0001_moment0.1 (vs plain_lr0.0001_moment0)"
                         for v in ("mean", "var", "both")}
    var = rows["var_lr0.0001_moment0.1 (vs plain_lr0.0001_moment0)"]
    assert "0/3 vs 3/3 (Fisher p = 0.1)" in var  # 3 seeds can never give p < 0.05
    assert "-50 [95% CI -50, -50]" in var  # final eval/fd: 100 against 150 in every seed
