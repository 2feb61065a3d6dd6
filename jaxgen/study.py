"""A study's answer: eval metrics aggregated over seeds per setting, and verdicts on its claims.

A *setting* is a point of the grid without its seed (e.g. `lr0.001_moment0.1`). For each run the
summary holds its final eval metrics, the epochs until `eval/fd` first falls below the
config's `fd_threshold`, and the mean `eval/fd` over its evaluations (the area under the curve,
a speed measure that needs no threshold).

The verdict rules, stated in every report:
- a difference between two settings is *clear* when it exceeds twice its standard error over
  seeds (Welch), otherwise *within noise*;
- claim 1 (the term speeds up training at every learning rate): reproduced if the term's mean
  `eval/fd` over epochs is clearly lower at every learning rate; not reproduced if it is
  clearly higher at some learning rate or within noise at all of them; unclear otherwise;
- claim 2 (at the smallest learning rate the plain GAN fails, the term makes digits):
  reproduced if most plain seeds end above the threshold or collapsed and most seeds with the
  term end below it and not collapsed; not reproduced if most plain seeds end below the
  threshold, or most term seeds do not; unclear otherwise;
- claim 3 (at 0.001 the two are closest): reproduced if the gap between the final `eval/fd`
  with and without the term is smallest at 0.001 and clearly smaller than at the other rates;
  not reproduced if it is clearly larger than at another rate; unclear otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from jaxgen import log


@dataclass
class RunSummary:
    run: str
    setting: str
    final: dict[str, float]
    epochs: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    epochs_to_threshold: float = float("nan")  # nan: never reached
    fd_auc: float = float("nan")


def setting_of(run: str) -> str:
    return re.sub(r"_seed\d+$", "", run)


def summarize(records: list[dict], runs: list[str], fd_threshold: float) -> list[RunSummary]:
    out = []
    for run in runs:
        evals = [r for r in records if r["run"] == run and r["split"] == "eval"]
        if not evals:
            continue
        epochs = np.asarray([r["epoch"] for r in evals], float)
        keys = [k for k in evals[-1] if k.startswith("eval")]
        curves = {k: np.asarray([np.nan if r.get(k) is None else r[k] for r in evals], float)
                  for k in keys}
        fd = curves["eval/fd"]
        below = np.flatnonzero(fd < fd_threshold)
        out.append(RunSummary(
            run=run, setting=setting_of(run), epochs=epochs, curves=curves,
            final={k: float(v[-1]) for k, v in curves.items()},
            epochs_to_threshold=float(epochs[below[0]]) if len(below) else float("nan"),
            fd_auc=float(np.nanmean(fd))))
    return out


def by_setting(summaries: list[RunSummary]) -> dict[str, list[RunSummary]]:
    groups: dict[str, list[RunSummary]] = {}
    for s in summaries:
        groups.setdefault(s.setting, []).append(s)
    return groups


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(values, digits: int = 3) -> str:
    mean, std = mean_std(values)
    return "n/a" if np.isnan(mean) else f"{mean:.{digits}g} ± {std:.2g}"


def compare(a, b) -> tuple[float, str]:
    """mean(a) - mean(b) and whether it is clear (beyond twice its Welch standard error)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a.mean() - b.mean()
    se = np.sqrt((a.var(ddof=1) / len(a) if len(a) > 1 else 0.0)
                 + (b.var(ddof=1) / len(b) if len(b) > 1 else 0.0))
    clear = abs(diff) > 2 * se and (len(a) > 1 and len(b) > 1 or se == 0 and diff != 0)
    return float(diff), "clear" if clear else "within noise"


def collapsed(s: RunSummary, collapse_coverage: int) -> bool:
    return s.final.get("eval/coverage", 10) <= collapse_coverage


def settings_table(groups: dict[str, list[RunSummary]], fd_threshold: float,
                   collapse_coverage: int) -> list[str]:
    has_movavg = any("eval_movavg/fd" in s.final for g in groups.values() for s in g)
    header = ["setting", "seeds", "final eval/fd", f"epochs to eval/fd < {fd_threshold:g}",
              "mean eval/fd over epochs", "final coverage", "final recall", "final precision",
              "final eval/kid", "collapsed seeds"]
    if has_movavg:
        header += ["final eval/fd, moving-average BN", "final coverage, moving-average BN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, runs in groups.items():
        reached = [s.epochs_to_threshold for s in runs if np.isfinite(s.epochs_to_threshold)]
        to_threshold = (f"{fmt(reached)} ({len(reached)}/{len(runs)} reached)" if reached
                        else f"never (0/{len(runs)})")
        cells = [setting, str(len(runs)), fmt([s.final["eval/fd"] for s in runs]), to_threshold,
                 fmt([s.fd_auc for s in runs]), fmt([s.final["eval/coverage"] for s in runs]),
                 fmt([s.final["eval/recall"] for s in runs]),
                 fmt([s.final["eval/precision"] for s in runs]),
                 fmt([s.final["eval/kid"] for s in runs]),
                 str(sum(collapsed(s, collapse_coverage) for s in runs))]
        if has_movavg:
            cells += [fmt([s.final.get("eval_movavg/fd", np.nan) for s in runs]),
                      fmt([s.final.get("eval_movavg/coverage", np.nan) for s in runs])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pair(groups, lr_name: str):
    """(plain, with the term) run lists at one learning rate, or None."""
    plain = groups.get(f"{lr_name}_moment0")
    term = [runs for setting, runs in groups.items()
            if setting.startswith(lr_name + "_moment") and setting != f"{lr_name}_moment0"]
    return (plain, term[0]) if plain and term else None


def claims(groups: dict[str, list[RunSummary]], learning_rates, fd_threshold: float,
           collapse_coverage: int) -> list[str]:
    """The verdict on each of the study's claims, with the numbers behind it (markdown)."""
    pairs = {lr: _pair(groups, f"lr{lr:g}") for lr in learning_rates}
    pairs = {lr: p for lr, p in pairs.items() if p}
    if not pairs:
        return ["No setting has runs both with and without the moment term."]
    lines = []

    # Claim 1: faster at every learning rate.
    evidence, faster, slower = [], [], []
    for lr, (plain, term) in pairs.items():
        diff, clear = compare([s.fd_auc for s in term], [s.fd_auc for s in plain])
        reach_t = [s.epochs_to_threshold for s in term]
        reach_p = [s.epochs_to_threshold for s in plain]
        evidence.append(f"lr {lr:g}: mean eval/fd over epochs {fmt([s.fd_auc for s in term])} "
                        f"with the term vs {fmt([s.fd_auc for s in plain])} without "
                        f"(difference {diff:+.3g}, {clear}); epochs to the threshold "
                        f"{_reach(reach_t)} vs {_reach(reach_p)}")
        (faster if diff < 0 and clear == "clear" else
         slower if diff > 0 and clear == "clear" else []).append(lr)
    verdict = ("reproduced" if len(faster) == len(pairs) else
               "not reproduced" if slower or not faster else "unclear")
    lines += [f"1. **The moment term speeds up training at every learning rate: {verdict}.**",
              *[f"   - {e}" for e in evidence], ""]

    # Claim 2: the smallest learning rate of the study, 0.0001.
    if 0.0001 not in pairs:
        lines += ["2. **At lr 0.0001 the plain GAN fails while the term makes digits: not "
                  "tested** (this study has no lr 0.0001).", ""]
    else:
        lr = 0.0001
        plain, term = pairs[lr]
        plain_fail = sum(s.final["eval/fd"] >= fd_threshold or collapsed(s, collapse_coverage)
                         for s in plain)
        term_ok = sum(s.final["eval/fd"] < fd_threshold and not collapsed(s, collapse_coverage)
                      for s in term)
        if plain_fail > len(plain) / 2 and term_ok > len(term) / 2:
            verdict = "reproduced"
        elif plain_fail < len(plain) / 2 or term_ok < len(term) / 2:
            verdict = "not reproduced"
        else:
            verdict = "unclear"
        lines += [f"2. **At lr {lr:g} the plain GAN fails while the term makes digits: "
                  f"{verdict}.**",
                  f"   - without the term {plain_fail}/{len(plain)} seeds end with eval/fd ≥ "
                  f"{fd_threshold:g} or collapsed (final eval/fd "
                  f"{fmt([s.final['eval/fd'] for s in plain])}, coverage "
                  f"{fmt([s.final['eval/coverage'] for s in plain])}); with it "
                  f"{term_ok}/{len(term)} end below the threshold and not collapsed (final eval/fd "
                  f"{fmt([s.final['eval/fd'] for s in term])}, coverage "
                  f"{fmt([s.final['eval/coverage'] for s in term])})", ""]

    # Claim 3: closest at 0.001.
    if len(pairs) < 2 or 0.001 not in pairs:
        lines.append("3. **At lr 0.001 the two are closest: unclear** (needs lr 0.001 and at "
                     "least one other learning rate).")
        return lines
    gaps = {lr: np.abs(np.subtract(
        np.mean([s.final["eval/fd"] for s in term]),
        [s.final["eval/fd"] for s in plain])) for lr, (plain, term) in pairs.items()}
    others = [lr for lr in pairs if lr != 0.001]
    comparisons = {lr: compare(gaps[0.001], gaps[lr]) for lr in others}
    if all(d < 0 and c == "clear" for d, c in comparisons.values()):
        verdict = "reproduced"
    elif any(d > 0 and c == "clear" for d, c in comparisons.values()):
        verdict = "not reproduced"
    else:
        verdict = "unclear"
    lines += [f"3. **At lr 0.001 the two are closest: {verdict}.**",
              *[f"   - lr {lr:g}: |final eval/fd with the term − without| = "
                f"{fmt(gaps[lr])}" for lr in pairs]]
    return lines


def _reach(values) -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return f"never (0/{len(values)})"
    return f"{np.mean(finite):.3g} ({len(finite)}/{len(values)} reached)"


def artifact_lines(summaries: list[RunSummary], collapse_coverage: int) -> list[str]:
    """Does sampling with moving-average batch norm change the verdict on a run?"""
    pairs = [(s, s.final["eval/fd"], s.final["eval_movavg/fd"]) for s in summaries
             if "eval_movavg/fd" in s.final]
    if not pairs:
        return ["G has no batch norm: samples are the same in both modes."]
    ratio = np.median([m / b for _, b, m in pairs])
    one_mode = [s.run for s, _, _ in pairs if collapsed(s, collapse_coverage) != (
        s.final["eval_movavg/coverage"] <= collapse_coverage)]
    return [f"Median ratio of final eval/fd with moving-average batch norm to batch statistics: "
            f"{ratio:.3g} over {len(pairs)} runs. Runs collapsed in one sampling mode only: "
            f"{', '.join(one_mode) if one_mode else 'none'}."]


def curves(summaries: list[RunSummary], key: str) -> dict[str, tuple]:
    """Per setting: (epochs, mean, std) of one eval metric over seeds (common epochs only)."""
    out = {}
    for setting, runs in by_setting(summaries).items():
        n = min(len(s.epochs) for s in runs)
        values = np.stack([s.curves[key][:n] for s in runs])
        out[setting] = (runs[0].epochs[:n], values.mean(0), values.std(0))
    return out


def train_mean(records: list[dict], run: str, key: str) -> float:
    """A train metric of one run averaged over its logged steps (NaN if never logged)."""
    _, values = log.series(records, run, "train", key)
    return float(values.mean()) if len(values) else float("nan")


def variant_of(setting: str) -> str:
    """`clip1_lr0.002_moment0` -> `clip1`; a setting without a variant -> ``."""
    return "" if re.match(r"lr[\d.e+-]+_", setting) else setting.split("_", 1)[0]


def baseline_of(setting: str, baseline: str, settings: list[str]) -> str | None:
    """The baseline's setting that `setting` is compared with: the one with the same other
    values, else (a variant that sets its own moment weights, say) the one at the same
    learning rate, if there is exactly one."""
    rest = setting[len(variant_of(setting)):]
    if baseline + rest in settings:
        return baseline + rest
    first = rest.split("_")[1] if rest.count("_") > 1 else rest
    same = [s for s in settings if variant_of(s) == baseline
            and s[len(baseline):].split("_")[1] == first]
    return same[0] if len(same) == 1 else None


@dataclass
class SettingRank:
    setting: str
    seeds: int
    diverged: int
    final_fd: list[float]  # final eval/fd of the runs that did not diverge
    coverage: list[float]
    epochs_to_threshold: list[float]
    spikes: list[float]  # fraction of logged intervals with a spike, per run
    saturated: list[float]  # mean fraction of steps with D saturated, per run
    versus_baseline: str = ""


def rank_techniques(records: list[dict], runs: list[str], fd_threshold: float,
                    baseline: str) -> list[SettingRank]:
    """Every setting of a grid of variants, best first: settings whose runs all trained before
    those with diverged runs, then by mean final `eval/fd`. Each is compared with the setting
    of the `baseline` variant that shares its other values (learning rate, moment weight)."""
    summaries = {s.run: s for s in summarize(records, runs, fd_threshold)}
    diverged = {r["run"] for r in records if r["split"] == "event" and r.get("diverged")}
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(setting_of(run), []).append(run)

    ranks = {}
    for setting, members in groups.items():
        ok = [summaries[r] for r in members if r not in diverged and r in summaries]
        ranks[setting] = SettingRank(
            setting=setting, seeds=len(members), diverged=sum(r in diverged for r in members),
            final_fd=[s.final["eval/fd"] for s in ok],
            coverage=[s.final["eval/coverage"] for s in ok],
            epochs_to_threshold=[s.epochs_to_threshold for s in ok],
            spikes=[train_mean(records, r, "monitor/spike") for r in members],
            saturated=[train_mean(records, r, "monitor/d_saturated") for r in members])
    for setting, rank in ranks.items():
        base = ranks.get(baseline_of(setting, baseline, list(ranks)))
        if base is None or base is rank:
            continue
        if rank.final_fd and base.final_fd:
            diff, clear = compare(rank.final_fd, base.final_fd)
            rank.versus_baseline = f"{diff:+.3g} ({clear})"
        elif rank.diverged:
            rank.versus_baseline = "diverged"
    return sorted(ranks.values(), key=lambda r: (r.diverged > 0 or not r.final_fd,
                                                 np.mean(r.final_fd) if r.final_fd else np.inf))


def ranking_table(ranks: list[SettingRank], fd_threshold: float, baseline: str) -> list[str]:
    header = ["rank", "setting", "diverged seeds", "final eval/fd",
              f"final eval/fd vs {baseline} (difference, Welch 2 s.e.)",
              f"epochs to eval/fd < {fd_threshold:g}", "final coverage",
              "logged intervals with a loss/grad spike", "steps with D saturated"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(ranks, 1):
        lines.append("| " + " | ".join([
            str(i), r.setting, f"{r.diverged}/{r.seeds}", fmt(r.final_fd),
            r.versus_baseline or "(baseline)" if variant_of(r.setting) == baseline
            else r.versus_baseline or "n/a",
            _reach(r.epochs_to_threshold) if r.final_fd else "n/a", fmt(r.coverage),
            f"{np.nanmean(r.spikes):.1%}", f"{np.nanmean(r.saturated):.1%}"]) + " |")
    return lines
