import numpy as np

from jaxgen import study


def _records(run, fds, coverage=10, recall=0.5):
    return [{"run": run, "split": "eval", "step": 10 * e, "epoch": e, "eval/fd": fd,
             "eval/coverage": coverage, "eval/recall": recall, "eval/precision": 0.5,
             "eval/kid": 0.01} for e, fd in enumerate(fds, start=1)]


def _study(plain_fds, term_fds, plain_cov=10, lrs=(0.01, 0.001, 0.0001), seeds=3, jitter=0.5):
    records, rng = [], np.random.default_rng(0)
    for lr in lrs:
        for seed in range(seeds):
            noise = rng.normal(0, jitter, len(plain_fds[lr]))
            records += _records(f"lr{lr:g}_moment0_seed{seed}",
                                list(np.asarray(plain_fds[lr]) + noise),
                                coverage=plain_cov if lr == min(lrs) else 10)
            records += _records(f"lr{lr:g}_moment0.1_seed{seed}",
                                list(np.asarray(term_fds[lr]) + noise))
    runs = sorted({r["run"] for r in records})
    return study.by_setting(study.summarize(records, runs, fd_threshold=20.0))


def _verdicts(lines):
    return [line.split(": ")[-1].rstrip(".*") for line in lines if line[:2] in ("1.", "2.", "3.")]


def test_summary_epochs_to_threshold_and_auc():
    run = "lr0.01_moment0_seed0"
    s = study.summarize(_records(run, [50, 30, 15, 10]), [run], fd_threshold=20.0)[0]
    assert s.setting == "lr0.01_moment0" and s.epochs_to_threshold == 3.0
    assert s.fd_auc == np.mean([50, 30, 15, 10]) and s.final["eval/fd"] == 10
    never = study.summarize(_records("x_seed1", [50, 40]), ["x_seed1"], 20.0)[0]
    assert np.isnan(never.epochs_to_threshold)


def test_claims_reproduced_when_the_data_say_so():
    plain = {0.01: [60, 40, 30, 25], 0.001: [50, 30, 15, 10], 0.0001: [90, 85, 80, 80]}
    term = {0.01: [40, 25, 15, 12], 0.001: [45, 25, 12, 9.5], 0.0001: [70, 40, 18, 12]}
    groups = _study(plain, term, plain_cov=2)
    verdicts = _verdicts(study.claims(groups, (0.01, 0.001, 0.0001), 20.0, 3))
    assert verdicts == ["reproduced", "reproduced", "reproduced"]


def test_claims_not_reproduced_when_the_term_hurts():
    plain = {0.01: [40, 25, 15, 12], 0.001: [50, 30, 15, 10], 0.0001: [60, 30, 15, 12]}
    term = {0.01: [60, 40, 30, 25], 0.001: [80, 70, 60, 50], 0.0001: [90, 85, 80, 80]}
    verdicts = _verdicts(study.claims(_study(plain, term), (0.01, 0.001, 0.0001), 20.0, 3))
    assert verdicts == ["not reproduced", "not reproduced", "not reproduced"]


def test_noise_gives_unclear_or_not_reproduced_never_reproduced():
    same = {lr: [50, 30, 20, 15] for lr in (0.01, 0.001, 0.0001)}
    verdicts = _verdicts(study.claims(_study(same, same, jitter=5.0), (0.01, 0.001, 0.0001),
                                      20.0, 3))
    assert "reproduced" not in verdicts


def test_table_and_curves():
    plain = {0.001: [50, 30, 15, 10]}
    groups = _study(plain, plain, lrs=(0.001,))
    table = study.settings_table(groups, 20.0, 3)
    row = next(line for line in table if line.startswith("| lr0.001_moment0 |"))
    assert row.startswith("| lr0.001_moment0 | 3 | 10") and "(3/3 reached)" in row
    summaries = [s for runs in groups.values() for s in runs]
    epochs, mean, std = study.curves(summaries, "eval/fd")["lr0.001_moment0"]
    assert epochs.tolist() == [1, 2, 3, 4] and mean[0] > mean[-1] and std.shape == (4,)
    assert study.compare([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]) == (-4.0, "clear")
    assert study.compare([1.0, 3.0], [2.0, 2.5])[1] == "within noise"
