"""What the tables' intervals and tests deliver, by simulation from the two-level model of a sweep.

A group's seed i draws a seed effect z_i ~ N(0, sd²) on the logit scale; each of its T tasks then
succeeds with probability expit(logit(m) + c + z_i), where c is its category's logit offset (one
category, c = 0, unless `offsets` names several; the tasks are split evenly among them). The
recipe's true success is the mean over categories of E[expit(logit(m) + c + z)] (Gauss–Hermite
quadrature), which is what a group's mean over seeds estimates. `tests/test_coverage.py`
asserts the results over `GRID`; `python -m toolrl coverage` prints them for any seeds and tasks, so a
sweep can check its own sample sizes. Everything is vectorised over simulated experiments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from toolrl.analysis import stats

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(80)


def true_mean(m: float, sd: float, offsets: Sequence[float] = (0.0,)) -> float:
    """Mean over categories of E[expit(logit(m) + c + sd·Z)], Z standard normal: the recipe's
    success over seeds."""
    p = expit(logit(m) + np.asarray(offsets, dtype=float)[:, None] + sd * _NODES)
    return float(np.mean(p @ _WEIGHTS) / np.sum(_WEIGHTS))


def simulate(
    m: float,
    sd: float,
    seeds: int,
    tasks: int,
    experiments: int,
    rng: np.random.Generator,
    offsets: Sequence[float] = (0.0,),
) -> np.ndarray:
    """(experiments, seeds) success rates drawn from the two-level model; a seed's effect is
    shared by all of its categories, and its rate is the mean over its tasks."""
    c = np.asarray(offsets, dtype=float)
    if tasks % c.size:
        raise ValueError(f"{tasks} tasks do not split evenly into {c.size} categories")
    p = expit(logit(m) + c + sd * rng.standard_normal((experiments, seeds, 1)))
    return (rng.binomial(tasks // c.size, p) / (tasks // c.size)).mean(axis=-1)


@dataclass(frozen=True)
class Setting:
    """One point of the model: seeds per group, tasks per split, centre success m, logit seed sd,
    and the task categories' logit offsets."""

    seeds: int
    tasks: int
    m: float
    sd: float
    offsets: tuple[float, ...] = (0.0,)


# The region the tables' claim is tested over: 3, 5 and 10 seeds, 64 and 400 tasks, success 0.1 to
# 0.9, seeds that differ by up to 0.5 on the logit scale (±12 points at 50%). docs/statistics.md
# gives the numbers outside it (0.05 and 0.95, a seed sd of 1.0).
GRID: tuple[Setting, ...] = tuple(
    Setting(n, t, m, sd) for n in (3, 5, 10) for t in (64, 400) for m in (0.1, 0.3, 0.5, 0.7, 0.9) for sd in (0.0, 0.5)
)


def mean_coverage(s: Setting, experiments: int = 2000, confidence: float = 0.95, seed: int = 0) -> float:
    """Fraction of simulated groups whose seed-clustered Wilson interval holds the true mean."""
    rng = np.random.default_rng([seed, s.seeds, s.tasks, round(1000 * s.m), round(1000 * s.sd)])
    rates = simulate(s.m, s.sd, s.seeds, s.tasks, experiments, rng, s.offsets)
    _, low, high = stats.clustered_wilson(rates, s.tasks, confidence)
    mu = true_mean(s.m, s.sd, s.offsets)
    return float(np.mean((low <= mu) & (mu <= high)))


def difference_coverage(
    a: Setting, b: Setting, experiments: int = 2000, confidence: float = 0.95, seed: int = 0
) -> float:
    """Fraction of simulated pairs of groups whose MOVER interval holds the true difference."""
    rng = np.random.default_rng([seed, a.seeds, b.seeds, a.tasks, round(1000 * a.m), round(1000 * b.m)])
    x = simulate(a.m, a.sd, a.seeds, a.tasks, experiments, rng, a.offsets)
    y = simulate(b.m, b.sd, b.seeds, b.tasks, experiments, rng, b.offsets)
    _, low, high = stats.difference(x, y, a.tasks, b.tasks, confidence)
    d = true_mean(a.m, a.sd, a.offsets) - true_mean(b.m, b.sd, b.offsets)
    return float(np.mean((low <= d) & (d <= high)))


def rejection_rate(s: Setting, alpha: float = 0.05, experiments: int = 2000, seed: int = 0) -> float:
    """How often the exact permutation test rejects at `alpha` when both groups come from `s`
    (the null): at most alpha for a valid test, exactly the smallest attainable p below it."""
    rng = np.random.default_rng([seed, s.seeds, s.tasks, round(1000 * s.m), round(1000 * s.sd), 1])
    x = simulate(s.m, s.sd, s.seeds, s.tasks, experiments, rng, s.offsets)
    y = simulate(s.m, s.sd, s.seeds, s.tasks, experiments, rng, s.offsets)
    return float(np.mean(stats.permutation_p(x, y) <= alpha))


def table(
    seeds: Iterable[int] = (3, 5, 10),
    tasks: Iterable[int] = (64,),
    means: Sequence[float] = (0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95),
    sds: Sequence[float] = (0.0, 0.5, 1.0),
    offsets: Sequence[float] = (0.0,),
    experiments: int = 2000,
    confidence: float = 0.95,
) -> str:
    """Markdown: the empirical coverage (%) of the nominal interval of a group's mean, a row per
    (tasks, m, sd) and a column per seed count, then the same for a difference of two groups at
    m and 0.5 with the same seeds. `success` is the true mean."""
    seeds, tasks, offsets = list(seeds), list(tasks), tuple(offsets)
    head = "| tasks | success | seed sd (logit) | " + " | ".join(f"{n} seeds" for n in seeds) + " |"
    rule = "|---:|---:|---:|" + "---:|" * len(seeds)
    measures = {
        f"Group mean: nominal {100 * confidence:g}%, {experiments} simulated groups per cell.": lambda a: mean_coverage(
            a, experiments, confidence
        ),
        f"Difference with a group at 0.5 (same seeds, tasks and sd): nominal {100 * confidence:g}%.": lambda a: (
            difference_coverage(a, Setting(a.seeds, a.tasks, 0.5, a.sd, a.offsets), experiments, confidence)
        ),
    }
    lines: list[str] = []
    for title, measure in measures.items():
        lines += ([""] if lines else []) + [title, "", head, rule]
        for t in tasks:
            for m in means:
                for sd in sds:
                    cov = [measure(Setting(n, t, m, sd, offsets)) for n in seeds]
                    lines.append(
                        f"| {t} | {true_mean(m, sd, offsets):.3f} | {sd:g} | "
                        + " | ".join(f"{100 * c:.1f}" for c in cov)
                        + " |"
                    )
    return "\n".join(lines) + "\n"


__all__ = [
    "GRID",
    "Setting",
    "difference_coverage",
    "mean_coverage",
    "rejection_rate",
    "simulate",
    "table",
    "true_mean",
]
