"""A study's answer: per-run summaries, comparisons paired by seed, and verdicts on its claims.

A *setting* is a point of the grid without its seed (e.g. `lr0.001_moment0.1`). Runs of one seed
share their initialization, z stream and data order across settings, so two settings compare
*paired by seed*. For each run the summary holds its eval curves against steps, its final eval
metrics, the steps until `eval/fd` first falls below the config's `fd_threshold`, the step of
its first digits, whether it collapsed, and whether it diverged.

The rules, stated in every report (`RULES`):
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from jaxgen import log

ALPHA = 0.05  # significance level of every test; Holm's correction where several are read
# Collapse, by diversity: at its final evaluation a run's classifier-feature spread
# (`eval/trace_ratio`) and pixel spread (`eval/pixel_var_ratio`), each as a share of the real
# images', are both below this, and its recall below COLLAPSE_RECALL. Scored on 2,000 samples:
# real images 0.98 and 0.99, uniform noise 0.06 and 1.24, moment-matched noise 0.13 and 0.99,
# one digit repeated 0 and 0, the published lr0.001_moment0.1_seed2 (six identical samples)
# 0.016 and 0.009.
COLLAPSE_DIVERSITY = 0.1
COLLAPSE_RECALL = 0.05
# A run draws digits from the first evaluation at which it has not collapsed, at least
# DIGITS_PRECISION of its samples lie on the real images' manifold (`eval/precision`: real
# images 0.84, moment-matched noise 0.01, uniform noise 0; the published runs with the term that
# draw clear digits plateau at 0.33-0.47, so 0.5 would miss them), and the classifier reads its
# samples as several digits (`eval/class_kl`, KL(class histogram || uniform), at most
# DIGITS_CLASS_KL: real images 0.003; every sample one digit, as noise and collapsed runs give,
# ln 10 = 2.30; a fair share of six digits ln(10/6) = 0.51). Precision alone is not enough: a
# generator drawing two or three digit-like shapes scores 0.5-0.9 with class_kl above 1.
DIGITS_PRECISION = 0.2
DIGITS_CLASS_KL = 0.5
# When the reference showed each effect, read off its notebooks' sample figures (a row every
# other epoch, 550 steps an epoch, one run per setting): the plain GAN at lr 0.0001 is collapsed
# onto one sample from epoch 2 to 20; with the term it draws digits from epoch 6; at lr 0.01 the
# term draws digits by epoch 4 while the plain GAN does so from about epoch 10, and at lr 0.001
# the two are alike from epoch 4 on.
REFERENCE_STEPS = {"collapse": 1100, "digits": 3300, "speed": 2200}

RULES = f"""\
- **Pairing.** Settings are compared paired by seed: the difference per seed, its mean, the 95%
  interval of the mean from the t distribution with n - 1 degrees of freedom, and the two-sided
  p-value. A difference is *clear* when p < {ALPHA:g} (after Holm's correction where several are
  read as one claim). One seed per arm gives no verdict.
- **Collapse** is measured by diversity: a run has collapsed when, at its last evaluation, both
  its feature spread (`eval/trace_ratio`, the trace of the generated features' covariance over
  the real images') and its pixel spread (`eval/pixel_var_ratio`) are below
  {COLLAPSE_DIVERSITY:g} and its recall is below {COLLAPSE_RECALL:g}. Class coverage is not used:
  uniform noise covers one class as a collapsed generator does.
- **Digits** appear at the first evaluation where `eval/precision` (the share of samples on the
  real images' manifold) reaches {DIGITS_PRECISION:g}, the classifier reads the samples as
  several digits (`eval/class_kl` at most {DIGITS_CLASS_KL:g}; real images 0.003, every sample one
  digit 2.30, a fair share of six digits 0.51), and the run has not collapsed by the rule
  above (a collapsed generator whose one image looks like a digit scores a precision of 1).
- **Diverged runs** count as failed from their divergence on: collapsed, without digits, and
  with the ceiling's `eval/fd` as their final value, also when they diverged before their first
  evaluation; they are never summarized by their last good evaluation.
- **Censoring.** A run that never reaches the `eval/fd` threshold counts at its last step: the
  true time is later, so a difference in steps is then a bound that understates the slower arm.
  A seed at which neither run reached it is left out of the difference (two bounds say nothing
  about which is faster).
- **Spreads** are standard deviations over seeds with ddof 1, in the tables and in the curves.
- **Horizon.** The reference showed the plain GAN's collapse at lr 0.0001 by step
  {REFERENCE_STEPS['collapse']:,}, the term's digits there by step {REFERENCE_STEPS['digits']:,},
  and the speed differences of claims 1 and 3 by step {REFERENCE_STEPS['speed']:,} (its figures;
  see `jaxgen.study.REFERENCE_STEPS`). A claim whose runs stop before that point, and that the
  runs do not already show, is *not testable at this horizon*, never *not reproduced*.
- **Claim 1** (the term speeds training at every learning rate): the primary measure is the
  steps until `eval/fd` first falls below the threshold, with the term minus without, paired by
  seed, Holm-corrected over the learning rates. Reproduced if it is clearly negative at every
  learning rate; not reproduced if clearly positive at one; otherwise unclear (or not testable).
- **Claim 2** (at lr 0.0001 the plain GAN collapses, and the term rescues it and draws digits):
  the collapse rate per arm with Fisher's exact test, and the step of the first digits.
  Reproduced if the plain arm collapses clearly more often and most runs with the term draw
  digits.
- **Claim 3** (at lr 0.001 the two are closest) is an interaction: per seed, the term's effect
  on the primary measure at 0.001 minus its effect at each other learning rate (a difference of
  differences), with its interval. Reproduced if the effect at 0.001 is clearly smaller in size
  than at every other rate; not reproduced if clearly larger than at one.
"""
__doc__ += "\n" + RULES


def setting_of(run: str) -> str:
    return re.sub(r"_seed\d+$", "", run)


def seed_of(run: str) -> int:
    match = re.search(r"_seed(\d+)$", run)
    return int(match.group(1)) if match else 0


@dataclass
class RunSummary:
    run: str
    setting: str
    seed: int
    steps: np.ndarray  # the steps of its evaluations
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)  # failed values if it diverged
    last_step: int = 0
    steps_to_threshold: float = float("nan")  # nan: never reached
    first_digits: float = float("nan")  # nan: never
    fd_auc: float = float("nan")  # mean eval/fd over its evaluations
    collapsed: bool | None = None  # None: the records lack the diversity metrics
    diverged_at: int | None = None

    @property
    def censored_steps(self) -> float:
        """Steps to the threshold, or the last step if it never got there (`RULES`)."""
        return self.steps_to_threshold if np.isfinite(self.steps_to_threshold) else float(
            self.last_step)


def steps_by_seed(runs: list[RunSummary], base: list[RunSummary]
                  ) -> tuple[dict[int, float], dict[int, float]]:
    """The censored steps to the threshold of `runs` and of `base`, by seed, leaving out the
    seeds at which neither reached it: both values are then bounds, and their difference (the
    difference of the two runs' lengths) says nothing about which is faster (`RULES`)."""
    x, y = (by_seed(arm, lambda s: s.censored_steps) for arm in (runs, base))
    reached = {s.seed for s in runs + base if np.isfinite(s.steps_to_threshold)}
    return ({k: v for k, v in x.items() if k in reached},
            {k: v for k, v in y.items() if k in reached})


def is_collapsed(metrics: dict[str, float], prefix: str = "eval/") -> bool | None:
    """The collapse rule of `RULES` on one evaluation's metrics (None if they lack it)."""
    keys = [prefix + k for k in ("trace_ratio", "pixel_var_ratio", "recall")]
    if any(metrics.get(k) is None for k in keys):
        return None
    trace, pixels, recall = (metrics[k] for k in keys)
    return bool(trace < COLLAPSE_DIVERSITY and pixels < COLLAPSE_DIVERSITY
                and recall < COLLAPSE_RECALL)


def summarize(records: list[dict], runs: list[str], fd_threshold: float,
              failure_fd: float = float("nan")) -> list[RunSummary]:
    """A summary per run that has evaluations; `failure_fd` is the final `eval/fd` a diverged
    run counts with (the ceiling's)."""
    diverged = {}
    for r in records:
        if r["split"] == "event" and r.get("diverged") and r["run"] not in diverged:
            diverged[r["run"]] = int(r["step"])
    out = []
    for run in runs:
        evals = [r for r in records if r["run"] == run and r["split"] == "eval"]
        if not evals and run in diverged:  # diverged before its first evaluation: failed
            out.append(RunSummary(
                run=run, setting=setting_of(run), seed=seed_of(run), steps=np.zeros(0),
                final={"eval/fd": failure_fd}, last_step=diverged[run], collapsed=True,
                diverged_at=diverged[run]))
            continue
        if not evals:
            continue
        steps = np.asarray([r["step"] for r in evals], float)
        keys = sorted({k for r in evals for k in r if k.startswith("eval")})
        curves = {k: np.asarray([np.nan if r.get(k) is None else r[k] for r in evals], float)
                  for k in keys}
        fd = curves["eval/fd"]
        below = np.flatnonzero(fd < fd_threshold)
        # Digits: precise samples of several digits from a generator that has not collapsed (one
        # digit-like image for every z is precise too).
        diverse = np.asarray([is_collapsed(r) is not True for r in evals])
        never = np.full(len(evals), np.nan)
        digits = np.flatnonzero((curves.get("eval/precision", never) >= DIGITS_PRECISION)
                                & (curves.get("eval/class_kl", never) <= DIGITS_CLASS_KL)
                                & diverse)
        final = {k: float(v[-1]) for k, v in curves.items()}
        summary = RunSummary(
            run=run, setting=setting_of(run), seed=seed_of(run), steps=steps, curves=curves,
            final=final, last_step=int(steps[-1]),
            steps_to_threshold=float(steps[below[0]]) if len(below) else float("nan"),
            first_digits=float(steps[digits[0]]) if len(digits) else float("nan"),
            fd_auc=float(np.nanmean(fd)), collapsed=is_collapsed(final))
        if run in diverged:
            summary.diverged_at = diverged[run]
            summary.collapsed = True
            summary.first_digits = float("nan")
            summary.final = {k: float("nan") for k in final} | {"eval/fd": failure_fd}
            summary.last_step = max(summary.last_step, diverged[run])
        out.append(summary)
    return out


def by_setting(summaries: list[RunSummary]) -> dict[str, list[RunSummary]]:
    groups: dict[str, list[RunSummary]] = {}
    for s in summaries:
        groups.setdefault(s.setting, []).append(s)
    return groups


def mean_std(values) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1; 0 for one value) of the finite values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def num(x: float, digits: int = 3, sign: bool = False) -> str:
    """`x` to `digits` significant digits, or as a whole number (with thousands separators)
    from 100 up."""
    plus = "+" if sign else ""
    return f"{x:{plus},.0f}" if abs(x) >= 100 else f"{x:{plus}.{digits}g}"


def fmt(values, digits: int = 3) -> str:
    mean, std = mean_std(values)
    return "n/a" if np.isnan(mean) else f"{num(mean, digits)} ± {num(std, 2)}"


@dataclass(frozen=True)
class Paired:
    """A difference x - y paired by seed: its mean over `n` seeds, the 95% t interval and the
    two-sided p-value (nan with fewer than two seeds)."""

    n: int
    mean: float
    low: float
    high: float
    p: float

    def verdict(self, p: float | None = None) -> str:
        """`clear` or `within noise` at ALPHA (`p`: a corrected p-value), or no verdict."""
        if self.n < 2:
            return f"no verdict ({self.n} paired seed{'s' if self.n != 1 else ''})"
        return "clear" if (self.p if p is None else p) < ALPHA else "within noise"

    def text(self, digits: int = 3, p: float | None = None) -> str:
        if self.n < 2:
            return f"{num(self.mean, digits, True)} ({self.verdict()})"
        shown = self.p if p is None else p
        which = "p" if p is None else "Holm-adjusted p"
        return (f"{num(self.mean, digits, True)} [95% CI {num(self.low, digits, True)}, "
                f"{num(self.high, digits, True)}], {which} = {shown:.2g}, n = {self.n}: "
                f"{self.verdict(p)}")


def paired(x: dict[int, float], y: dict[int, float]) -> Paired:
    """x - y over the seeds both have a finite value for (`x`, `y`: value by seed)."""
    seeds = sorted(s for s in set(x) & set(y) if np.isfinite(x[s]) and np.isfinite(y[s]))
    d = np.asarray([x[s] - y[s] for s in seeds], float)
    n = len(d)
    if n == 0:
        return Paired(0, float("nan"), float("nan"), float("nan"), float("nan"))
    mean = float(d.mean())
    if n == 1:
        return Paired(1, mean, float("nan"), float("nan"), float("nan"))
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:
        return Paired(n, mean, mean, mean, 1.0 if mean == 0 else 0.0)
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return Paired(n, mean, mean - half, mean + half, p)


def holm(pvalues: dict) -> dict:
    """Holm's step-down correction of a family of p-values (nan stays nan)."""
    finite = sorted((p, k) for k, p in pvalues.items() if np.isfinite(p))
    out, running = {k: float("nan") for k in pvalues}, 0.0
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - i) * p))
        out[k] = running
    return out


def fisher(a_yes: int, a_n: int, b_yes: int, b_n: int) -> float:
    """Fisher's exact test, two-sided, of a_yes/a_n against b_yes/b_n."""
    return float(stats.fisher_exact([[a_yes, a_n - a_yes], [b_yes, b_n - b_yes]])[1])


def by_seed(runs: list[RunSummary], value) -> dict[int, float]:
    return {s.seed: float(value(s)) for s in runs}


def _count(flags) -> str:
    known = [f for f in flags if f is not None]
    return f"{sum(known)}/{len(known)}" if known else "not measured"


def _reach(values) -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return f"never (0/{len(values)})"
    return f"{fmt(finite)} ({len(finite)}/{len(values)} reached)"


def settings_table(groups: dict[str, list[RunSummary]], fd_threshold: float) -> list[str]:
    has_movavg = any("eval_movavg/fd" in s.final for g in groups.values() for s in g)
    header = ["setting", "seeds", "diverged", "collapsed", "final eval/fd",
              f"steps to eval/fd < {fd_threshold:g}", "step of the first digits",
              "final recall", "final precision", "final trace ratio", "final pixel-var ratio"]
    if has_movavg:
        header += ["final eval/fd, moving-average BN", "collapsed, moving-average BN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, runs in groups.items():
        cells = [setting, str(len(runs)), str(sum(s.diverged_at is not None for s in runs)),
                 _count([s.collapsed for s in runs]), fmt([s.final["eval/fd"] for s in runs]),
                 _reach([s.steps_to_threshold for s in runs]),
                 _reach([s.first_digits for s in runs])]
        cells += [fmt([s.final.get(f"eval/{k}", np.nan) for s in runs])
                  for k in ("recall", "precision", "trace_ratio", "pixel_var_ratio")]
        if has_movavg:
            cells += [fmt([s.final.get("eval_movavg/fd", np.nan) for s in runs]),
                      _count([True if s.diverged_at is not None else
                              is_collapsed(s.final, "eval_movavg/") for s in runs])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def arms(groups: dict[str, list[RunSummary]], lr: float):
    """(plain, with the term) summaries at one learning rate, or None."""
    name = f"lr{lr:g}"
    plain = groups.get(f"{name}_moment0")
    term = [runs for setting, runs in groups.items()
            if setting.startswith(name + "_moment") and setting != f"{name}_moment0"]
    return (plain, term[0]) if plain and term else None


def horizon(summaries: list[RunSummary]) -> int:
    """The steps every run of the study reached."""
    return min(s.last_step for s in summaries) if summaries else 0


def _testable(verdict: str, steps: int, needed: int, shown: bool) -> str:
    """The horizon rule: a verdict other than a positive one, short of the reference's point."""
    if steps < needed and not shown:
        return (f"not testable at this horizon (the runs stop at step {steps:,}; the reference "
                f"showed it by step {needed:,})")
    return verdict


def claims(groups: dict[str, list[RunSummary]], learning_rates, fd_threshold: float
           ) -> list[str]:
    """The verdict on each of the study's claims, with the numbers behind it (markdown)."""
    pairs = {lr: p for lr in learning_rates if (p := arms(groups, lr))}
    if not pairs:
        return ["No learning rate has runs both with and without the moment term."]
    steps = horizon([s for runs in groups.values() for s in runs])
    lines = [f"Every run reached step {steps:,}.", ""]
    effects = {lr: paired(*_effect_by_seed(plain, term)) for lr, (plain, term) in pairs.items()}
    lines += _claim1(pairs, effects, steps, fd_threshold)
    lines += _claim2(pairs, steps)
    lines += _claim3(pairs, effects, steps)
    return lines


def _seeds(plain, term) -> int:
    """How many seeds both arms have a run of."""
    return len({s.seed for s in plain} & {s.seed for s in term})


def _effect_by_seed(plain, term) -> tuple[dict[int, float], dict[int, float]]:
    """(with the term, without) of the primary measure (censored steps to the threshold), by
    seed."""
    return steps_by_seed(term, plain)


def _claim1(pairs, effects, steps, fd_threshold) -> list[str]:
    adjusted = holm({lr: e.p for lr, e in effects.items()})
    faster = [lr for lr, e in effects.items() if e.n >= 2 and adjusted[lr] < ALPHA and e.mean < 0]
    slower = [lr for lr, e in effects.items() if e.n >= 2 and adjusted[lr] < ALPHA and e.mean > 0]
    if any(_seeds(*arms) < 2 for arms in pairs.values()):
        verdict = "no verdict (fewer than two paired seeds at some learning rate)"
    elif any(e.n < 2 for e in effects.values()):
        verdict = _testable("unclear (at some learning rate the runs of at most one seed reached "
                            "the threshold)", steps, REFERENCE_STEPS["speed"], False)
    elif len(faster) == len(effects):
        verdict = ("reproduced" if len(effects) > 1 else
                   f"reproduced at lr {next(iter(effects)):g}, the only learning rate here")
    elif slower:
        verdict = _testable("not reproduced", steps, REFERENCE_STEPS["speed"], False)
    else:
        verdict = _testable("unclear", steps, REFERENCE_STEPS["speed"], False)
    lines = [f"1. **The moment term speeds up training at every learning rate: {verdict}.**"]
    for lr, (plain, term) in pairs.items():
        auc = paired(by_seed(term, lambda s: s.fd_auc), by_seed(plain, lambda s: s.fd_auc))
        lines.append(
            f"   - lr {lr:g}: steps to eval/fd < {fd_threshold:g}, with the term minus without: "
            f"{effects[lr].text(p=adjusted[lr])} (with "
            f"{_reach([s.steps_to_threshold for s in term])}, without "
            f"{_reach([s.steps_to_threshold for s in plain])}); mean eval/fd over the "
            f"evaluations: {auc.text()}")
    return lines + [""]


def _claim2(pairs, steps) -> list[str]:
    lr = 0.0001
    if lr not in pairs:
        return ["2. **At lr 0.0001 the plain GAN collapses while the term draws digits: not "
                "tested** (this study has no lr 0.0001).", ""]
    plain, term = pairs[lr]
    flags = [[s.collapsed for s in arm] for arm in (plain, term)]
    if any(f is None for arm in flags for f in arm):
        return ["2. **At lr 0.0001 the plain GAN collapses while the term draws digits: not "
                "measured** (the records lack the diversity metrics of the collapse rule).", ""]
    (c_plain, n_plain), (c_term, n_term) = ((sum(f), len(f)) for f in flags)
    p = fisher(c_plain, n_plain, c_term, n_term)
    digits = sum(np.isfinite(s.first_digits) for s in term)
    if min(n_plain, n_term) < 2:
        verdict = "no verdict (one seed per arm)"
    elif c_plain <= n_plain / 2:
        verdict = _testable("not reproduced: most plain runs did not collapse", steps,
                            REFERENCE_STEPS["collapse"], False)
    elif c_term > n_term / 2:
        verdict = "not reproduced: most runs with the term collapsed too"
    elif p >= ALPHA:
        verdict = "unclear (the collapse rates do not differ clearly)"
    elif digits > n_term / 2:
        verdict = "reproduced"
    else:
        verdict = ("the term prevents the collapse; its digits: " + _testable(
            "not reproduced (most runs with the term drew none)", steps,
            REFERENCE_STEPS["digits"], False))
    return [f"2. **At lr {lr:g} the plain GAN collapses while the term draws digits: "
            f"{verdict}.**",
            f"   - collapsed: {c_plain}/{n_plain} without the term, {c_term}/{n_term} with it "
            f"(Fisher's exact test, two-sided: p = {p:.2g})",
            f"   - step of the first digits: with the term {_reach([s.first_digits for s in term])}"
            f", without {_reach([s.first_digits for s in plain])}",
            f"   - final feature spread (trace ratio): without {_final(plain, 'trace_ratio')}, "
            f"with {_final(term, 'trace_ratio')}; final recall: without "
            f"{_final(plain, 'recall')}, with {_final(term, 'recall')}", ""]


def _final(runs: list[RunSummary], key: str) -> str:
    return fmt([s.final.get(f"eval/{key}", np.nan) for s in runs])


def _claim3(pairs, effects, steps) -> list[str]:
    others = [lr for lr in pairs if lr != 0.001]
    if 0.001 not in pairs or not others:
        return ["3. **At lr 0.001 the two are closest: not tested** (needs lr 0.001 and another "
                "learning rate).", ""]
    def effect(lr) -> dict[int, float]:  # the term's effect per seed, term minus plain
        term, plain = _effect_by_seed(*pairs[lr])
        return {seed: term[seed] - plain[seed] for seed in term.keys() & plain.keys()}

    here = effect(0.001)
    results = {lr: (paired(here, effect(lr)), effects[lr].mean) for lr in others}
    adjusted = holm({lr: d.p for lr, (d, _) in results.items()})

    def smaller(lr):  # the effect at 0.001 clearly smaller in size than at lr
        d, other = results[lr]
        return adjusted[lr] < ALPHA and abs(effects[0.001].mean) < abs(other) and (
            np.sign(d.mean) == -np.sign(other))

    def larger(lr):
        d, other = results[lr]
        return adjusted[lr] < ALPHA and abs(effects[0.001].mean) > abs(other)

    if any(_seeds(*arms) < 2 for arms in pairs.values()):
        verdict = "no verdict (fewer than two paired seeds)"
    elif any(d.n < 2 for d, _ in results.values()):
        verdict = _testable("unclear (the runs of at most one seed reached the threshold at "
                            "some learning rate)", steps, REFERENCE_STEPS["speed"], False)
    elif all(smaller(lr) for lr in others):
        verdict = "reproduced"
    elif any(larger(lr) for lr in others):
        verdict = _testable("not reproduced", steps, REFERENCE_STEPS["speed"], False)
    else:
        verdict = _testable("unclear", steps, REFERENCE_STEPS["speed"], False)
    lines = [f"3. **At lr 0.001 the two are closest: {verdict}.**",
             f"   - the term's effect on the steps to the threshold at lr 0.001: "
             f"{effects[0.001].text()}"]
    for lr, (d, _) in results.items():
        lines.append(f"   - effect at 0.001 minus effect at {lr:g} (difference of differences): "
                     f"{d.text(p=adjusted[lr])}; the effect at {lr:g}: {effects[lr].text()}")
    return lines + [""]


def artifact_lines(summaries: list[RunSummary]) -> list[str]:
    """Does sampling with moving-average batch norm change the verdict on a run?"""
    pairs = [(s, s.final["eval/fd"], s.final["eval_movavg/fd"]) for s in summaries
             if "eval_movavg/fd" in s.final and s.diverged_at is None]
    if not pairs:
        return ["G has no batch norm: samples are the same in both modes."]
    ratio = np.median([m / b for _, b, m in pairs])
    one_mode = [s.run for s, _, _ in pairs
                if s.collapsed != is_collapsed(s.final, "eval_movavg/")]
    return [f"Median ratio of final eval/fd with moving-average batch norm to batch statistics: "
            f"{ratio:.3g} over {len(pairs)} runs. Runs collapsed in one sampling mode only: "
            f"{', '.join(one_mode) if one_mode else 'none'}."]


def seed_curves(summaries: list[RunSummary], key: str) -> dict[str, list[tuple]]:
    """Per setting, (steps, values) of one eval metric for each seed."""
    out: dict[str, list[tuple]] = {}
    for s in summaries:
        if key in s.curves:
            out.setdefault(s.setting, []).append((s.steps, s.curves[key]))
    return out


def curves(summaries: list[RunSummary], key: str) -> dict[str, tuple]:
    """Per setting: (steps, mean, std with ddof 1) of one eval metric over seeds, at the
    evaluations every seed has."""
    out = {}
    for setting, runs in by_setting([s for s in summaries if key in s.curves]).items():
        n = min(len(s.steps) for s in runs)
        values = np.stack([s.curves[key][:n] for s in runs])
        std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(n)
        out[setting] = (runs[0].steps[:n], values.mean(0), std)
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
    final_fd: dict[int, float]  # final eval/fd by seed, of the runs that did not diverge
    collapsed: list[bool | None]
    steps_to_threshold: list[float]
    spikes: list[float]  # fraction of logged intervals with a spike, per run
    saturated: list[float]  # mean fraction of steps with D saturated, per run
    versus_baseline: str = ""


def rank_techniques(records: list[dict], runs: list[str], fd_threshold: float,
                    baseline: str) -> list[SettingRank]:
    """Every setting of a grid of variants, best first: settings whose runs all trained before
    those with diverged runs, then by mean final `eval/fd`. Each is compared with the setting
    of the `baseline` variant that shares its other values (learning rate, moment weight),
    paired by seed."""
    summaries = {s.run: s for s in summarize(records, runs, fd_threshold)}
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(setting_of(run), []).append(run)

    ranks = {}
    for setting, members in groups.items():
        done = [summaries[r] for r in members if r in summaries]
        ok = [s for s in done if s.diverged_at is None]
        ranks[setting] = SettingRank(
            setting=setting, seeds=len(members),
            diverged=sum(s.diverged_at is not None for s in done),
            final_fd={s.seed: s.final["eval/fd"] for s in ok},
            collapsed=[s.collapsed for s in done],
            steps_to_threshold=[s.steps_to_threshold for s in ok],
            spikes=[train_mean(records, r, "monitor/spike") for r in members],
            saturated=[train_mean(records, r, "monitor/d_saturated") for r in members])
    for setting, rank in ranks.items():
        base = ranks.get(baseline_of(setting, baseline, list(ranks)))
        if base is None or base is rank:
            continue
        if rank.final_fd and base.final_fd:
            rank.versus_baseline = paired(rank.final_fd, base.final_fd).text()
        elif rank.diverged:
            rank.versus_baseline = "diverged"
    return sorted(ranks.values(), key=lambda r: (
        r.diverged > 0 or not r.final_fd,
        np.mean(list(r.final_fd.values())) if r.final_fd else np.inf))


def ranking_table(ranks: list[SettingRank], fd_threshold: float, baseline: str) -> list[str]:
    header = ["rank", "setting", "diverged seeds", "collapsed seeds", "final eval/fd",
              f"final eval/fd vs {baseline} (paired by seed)",
              f"steps to eval/fd < {fd_threshold:g}",
              "logged intervals with a loss/grad spike", "steps with D saturated"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(ranks, 1):
        lines.append("| " + " | ".join([
            str(i), r.setting, f"{r.diverged}/{r.seeds}", _count(r.collapsed),
            fmt(list(r.final_fd.values())),
            r.versus_baseline or "(baseline)" if variant_of(r.setting) == baseline
            else r.versus_baseline or "n/a",
            _reach(r.steps_to_threshold) if r.final_fd else "n/a",
            f"{np.nanmean(r.spikes):.1%}", f"{np.nanmean(r.saturated):.1%}"]) + " |")
    return lines


def _values(value):
    """(runs, base) -> the value of each by seed, for `VERSUS_MEASURES`."""
    return lambda runs, base: (by_seed(runs, value), by_seed(base, value))


# Measures of a variant against the baseline variant, each paired by seed (`versus_table`):
# (label, (runs, base) -> their values by seed, digits).
VERSUS_MEASURES = (
    ("final eval/fd", _values(lambda s: s.final.get("eval/fd", np.nan)), 3),
    ("final recall", _values(lambda s: s.final.get("eval/recall", np.nan)), 2),
    ("final trace ratio", _values(lambda s: s.final.get("eval/trace_ratio", np.nan)), 2),
    ("final pixel-var ratio", _values(lambda s: s.final.get("eval/pixel_var_ratio", np.nan)), 2),
    ("steps to the eval/fd threshold (censored)", steps_by_seed, 3),
    ("eval/mean_gap at the first evaluation",
     _values(lambda s: first_value(s, "eval/mean_gap")), 3),
)


def first_value(summary: RunSummary, key: str) -> float:
    """A run's eval metric at its first evaluation (nan if not logged)."""
    values = summary.curves.get(key)
    return float(values[0]) if values is not None and len(values) else float("nan")


def versus(runs: list[RunSummary], base: list[RunSummary], value) -> Paired:
    """`value` of `runs` minus that of `base`, paired by seed."""
    return paired(*_values(value)(runs, base))


def collapse_test(runs: list[RunSummary], base: list[RunSummary]) -> str:
    """Collapsed runs of a setting against the baseline's, with Fisher's exact test."""
    a = [s.collapsed for s in runs if s.collapsed is not None]
    b = [s.collapsed for s in base if s.collapsed is not None]
    if not a or not b:
        return "not measured"
    p = fisher(sum(a), len(a), sum(b), len(b))
    return f"{sum(a)}/{len(a)} vs {sum(b)}/{len(b)} (Fisher p = {p:.2g})"


def versus_table(groups: dict[str, list[RunSummary]], baseline: str) -> list[str]:
    """Every setting of a grid of variants against the setting of the `baseline` variant it
    compares with (`baseline_of`): collapse counts and each of `VERSUS_MEASURES` as a
    difference paired by seed (exploratory: uncorrected over the variants)."""
    header = ["setting", "collapsed (vs baseline)"] + [label for label, _, _ in VERSUS_MEASURES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, runs in groups.items():
        against = baseline_of(setting, baseline, list(groups))
        if against is None or against == setting:
            continue
        base = groups[against]
        cells = [f"{setting} (vs {against})", collapse_test(runs, base)]
        for _, values, digits in VERSUS_MEASURES:
            d = paired(*values(runs, base))
            cells.append(d.text(digits) if np.isfinite(d.mean) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _setting_named(groups: dict[str, list[RunSummary]], variant: str) -> str | None:
    names = [s for s in groups if variant_of(s) == variant]
    return names[0] if len(names) == 1 else None


def parts_hypothesis(groups: dict[str, list[RunSummary]]) -> list[str]:
    """The answer to `moment_why`'s hypothesis, from runs of the variants `plain`, `mean` (the
    term's mean part alone), `var` (its variance part alone) and, if present, `both`; [] if a
    variant is missing.

    - *The variance part prevents the collapse*: supported when `var` keeps clearly more of the
      real images' feature spread than `plain` (final trace ratio, paired by seed) and none of
      its runs collapsed, while `mean` does not (some of its runs collapsed, or its spread is
      not clearly above `plain`'s). If `mean` prevents it as well, either part alone suffices.
    - *The mean part fits the brightness early*: supported when, at the first evaluation, the
      per-pixel mean gap (`eval/mean_gap`) of `mean` is clearly below `var`'s (paired).
    """
    names = {v: _setting_named(groups, v) for v in ("plain", "mean", "var", "both")}
    if not all(names[v] for v in ("plain", "mean", "var")):
        return []
    plain, mean, var = (groups[names[v]] for v in ("plain", "mean", "var"))

    def spread(s):
        return s.final.get("eval/trace_ratio", np.nan)

    def rescued(runs):
        d = versus(runs, plain, spread)
        none_collapsed = all(s.collapsed is False for s in runs)
        return d, (d.n >= 2 and d.p < ALPHA and d.mean > 0 and none_collapsed)

    var_d, var_ok = rescued(var)
    mean_d, mean_ok = rescued(mean)
    if var_ok and not mean_ok:
        first = ("**supported**: the variance part alone prevents it and the mean part alone "
                 "does not")
    elif var_ok and mean_ok:
        first = ("**not supported as stated**: either part alone prevents it, so the variance "
                 "part is not what prevents it")
    elif mean_ok:
        first = ("**not supported**: the mean part alone prevents it, the variance part alone "
                 "does not")
    elif min(var_d.n, mean_d.n) < 2:
        first = "**no verdict** (fewer than two paired seeds)"
    else:
        first = "**not supported at this scale**: neither part alone clearly prevents it"
    early = versus(mean, var, lambda s: first_value(s, "eval/mean_gap"))
    if early.n < 2:
        second = "**no verdict** (fewer than two paired seeds)"
    elif early.p < ALPHA and early.mean < 0:
        second = "**supported**"
    elif early.p < ALPHA:
        second = "**not supported**: the variance part alone fits the means sooner"
    else:
        second = "**not shown**: the two are within noise"
    step = int(mean[0].steps[0]) if len(mean[0].steps) else 0
    lines = ["### The hypothesis", "",
             "1. *The variance part prevents the collapse*: " + first + ". Final feature spread "
             "(trace ratio) against the plain GAN's, paired by seed: the variance part alone "
             f"{var_d.text(2)}; the mean part alone {mean_d.text(2)}. Collapsed runs: plain "
             f"{sum(bool(s.collapsed) for s in plain)}/{len(plain)}, mean alone "
             f"{sum(bool(s.collapsed) for s in mean)}/{len(mean)}, variance alone "
             f"{sum(bool(s.collapsed) for s in var)}/{len(var)}"
             + (f", both {sum(bool(s.collapsed) for s in groups[names['both']])}/"
                f"{len(groups[names['both']])}" if names["both"] else "") + ".",
             f"2. *The mean part fits the brightness early*: {second}. At the first evaluation "
             f"(step {step:,}) the per-pixel mean gap of the mean part alone minus that of the "
             f"variance part alone: {early.text(3)} (the plain GAN: "
             f"{fmt([first_value(s, 'eval/mean_gap') for s in plain])}; the mean part alone: "
             f"{fmt([first_value(s, 'eval/mean_gap') for s in mean])}; the variance part "
             f"alone: {fmt([first_value(s, 'eval/mean_gap') for s in var])}).", ""]
    return lines
