"""Statistics over seeds: summaries with bootstrap CIs, rliable's robust aggregates (IQM, stratified
bootstrap, probability of improvement), two-sample tests, effect sizes, multiple-testing correction.

A sweep has few seeds per group (typically 3), so every function here has to stay finite and quiet
on the degenerate samples that small n produces all the time — a single seed, or seeds that all
score the same — where scipy returns NaN, raises, or warns. The callers write tables for people,
and a NaN or a wall of RuntimeWarnings there hides the numbers that are fine.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from toolrl.config import CORRECTIONS

# Success rates from different code paths (sum/len vs. mean) can differ in the last bit; scipy then
# sees a variance of ~1e-33 and reports a confident p-value for what is really a tie.
_CONSTANT_RTOL = 1e-12


def _as_sample(values: Sequence[float], name: str = "values") -> np.ndarray:
    """Reject empty or non-finite input here, where the message can still say which argument."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf: {x.tolist()}")
    return x


def _is_constant(x: np.ndarray) -> bool:
    return bool(np.ptp(x) <= _CONSTANT_RTOL * max(1.0, float(np.max(np.abs(x)))))


def summarize(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean, sample std and a bootstrap CI of the mean over seeds.

    The CI is the percentile bootstrap, not scipy's default BCa: BCa's acceleration term is a
    jackknife ratio that is 0/0 for 3 seeds with ties (common when success rates are k/64), so it
    comes out NaN with a warning. The percentile interval is always defined, and for n == 1 or a
    constant sample — where resampling has nothing to vary — it is the point itself, which is what
    the bootstrap would give anyway if scipy did not refuse n == 1. A fixed `seed` makes tables
    reproducible byte for byte.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _as_sample(values)
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    if x.size == 1 or np.ptp(x) == 0.0:
        low = high = mean
    else:
        res = sps.bootstrap(
            (x,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"mean": mean, "std": std, "n": int(x.size), "ci_low": low, "ci_high": high}


# --------------------------------------------------------------------------- rliable's estimators
#
# rliable (Agarwal et al., 2021) is the reference for honest RL statistics, but it is archived and
# its `arch` dependency breaks under pandas 3, which our stack resolves (measured: import fails), so
# its three estimators are rebuilt here on `scipy.stats.bootstrap`. Their inputs are score matrices
# of shape (runs, tasks): a row per seed, a column per task category (BFCL's base/miss_param/…, or a
# synthetic domain), each entry that run's success rate on that category. Tasks within a category
# are averaged first (they share the run's weights, so they are not independent evidence); the
# bootstrap then resamples seeds, separately within each category ("stratified"), because the seed
# is the unit of replication.


def _score_matrix(scores: Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(scores, dtype=float)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (runs, tasks) matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or inf: {m.tolist()}")
    return m


def iqm(scores: Sequence[float] | np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle 50% of all scores (rliable's aggregate_iqm).

    Robust to one outlying seed like the median, but uses half of the data rather than one point,
    so its CI is far narrower with few runs. For fewer than 4 values scipy cuts nothing, so the IQM
    equals the mean — which is the honest answer for 3 seeds of one category.
    """
    x = np.asarray(scores, dtype=float)
    if axis is None:
        return float(sps.trim_mean(x.ravel(), 0.25))
    return sps.trim_mean(x, 0.25, axis=axis)


def _interval(
    columns: list[np.ndarray], statistic: Any, point: Any, confidence: float, n_resamples: int, seed: int
) -> tuple[Any, Any]:
    """Percentile CI of `statistic` (a scalar, or a vector like a performance profile) under the
    stratified bootstrap: each column (a task of one group) is resampled on its own, which is what
    `scipy.stats.bootstrap` does with several unpaired samples. Every column needs two runs to
    vary, and a statistic that cannot vary gives the point itself (the percentile method, unlike
    BCa, never goes NaN on ties)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    scalar = np.ndim(point) == 0
    if any(c.size < 2 for c in columns) or all(np.ptp(c) == 0.0 for c in columns):
        return (point, point) if scalar else (point.copy(), point.copy())
    res = sps.bootstrap(
        tuple(columns),
        statistic,
        vectorized=True,
        paired=False,
        method="percentile",
        confidence_level=confidence,
        n_resamples=n_resamples,
        rng=np.random.default_rng(seed),
    )
    # Resampled IQMs can only land on values the data reaches; float noise must not put the bound
    # a hair outside the point for a statistic that barely varies.
    low = np.minimum(res.confidence_interval.low, point)
    high = np.maximum(res.confidence_interval.high, point)
    return (float(low), float(high)) if scalar else (low, high)


def iqm_interval(
    scores: Sequence[Sequence[float]] | np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """IQM over all runs × tasks with a stratified-bootstrap percentile CI (rliable's
    get_interval_estimates with aggregate_iqm)."""
    m = _score_matrix(scores, "scores")
    point = float(iqm(m))

    def stat(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
        return iqm(np.concatenate(cols, axis=axis), axis=axis)

    low, high = _interval(list(m.T), stat, point, confidence, n_resamples, seed)
    return {"iqm": point, "ci_low": low, "ci_high": high}


def _pairwise_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + ½·P(X = Y) over all pairs, along the last axis (the Mann–Whitney U statistic
    divided by n·m), for x of shape (..., n) and y of shape (..., m)."""
    diff = x[..., :, None] - y[..., None, :]
    return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))


def probability_of_improvement(
    x: Sequence[Sequence[float]] | np.ndarray,
    y: Sequence[Sequence[float]] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """P(X > Y): the probability that a run of recipe X beats a run of recipe Y on a task,
    averaged over tasks (rliable's probability_of_improvement), with a stratified-bootstrap CI
    that resamples both groups' runs within each task.

    Unlike a p-value it says how often X wins, and 0.5 means no difference; rliable calls an
    improvement meaningful when the CI's lower bound clears 0.5. x and y are (runs, tasks)
    matrices over the same tasks; their run counts may differ.
    """
    a, b = _score_matrix(x, "x"), _score_matrix(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must cover the same tasks, got {a.shape[1]} and {b.shape[1]} columns")
    t = a.shape[1]
    point = float(np.mean([_pairwise_greater(a[:, j], b[:, j]) for j in range(t)]))

    def stat(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([_pairwise_greater(cols[j], cols[t + j]) for j in range(t)], axis=0)

    low, high = _interval(list(a.T) + list(b.T), stat, point, confidence, n_resamples, seed)
    return {"poi": point, "ci_low": low, "ci_high": high}


def performance_profile(
    scores: Sequence[Sequence[float]] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Score distribution: the fraction of run × task scores above each threshold τ (rliable's
    performance profile), with a stratified-bootstrap percentile band.

    A profile shows the whole distribution, so a recipe that is excellent on one category and
    broken on another is not averaged into a mediocre number; one curve above another everywhere
    is stochastic dominance.
    """
    m = _score_matrix(scores, "scores")
    taus = np.asarray(thresholds, dtype=float)

    def stat(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
        x = np.concatenate(cols, axis=axis)
        # scipy expects the resample axis last in a vector-valued statistic's output.
        return np.moveaxis((x[..., None] > taus).mean(axis=-2), -1, 0)

    point = stat(*m.T)
    low, high = _interval(list(m.T), stat, point, confidence, n_resamples, seed)
    return {"fraction": point, "ci_low": low, "ci_high": high}


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Standardised mean difference of `a` over `b` with Hedges' small-sample correction.

    Cohen's d overstates effects by ~25% at 3 + 3 seeds; Hedges' factor J = 1 − 3/(4(n_a+n_b)−9)
    removes that bias. None where it is undefined: fewer than 2 runs on a side (no variance), or
    both samples constant (a pooled sd of 0 would make any difference infinitely large).
    """
    x, y = _as_sample(a, "a"), _as_sample(b, "b")
    if x.size < 2 or y.size < 2:
        return None
    pooled = math.sqrt(((x.size - 1) * np.var(x, ddof=1) + (y.size - 1) * np.var(y, ddof=1)) / (x.size + y.size - 2))
    if pooled <= _CONSTANT_RTOL * max(1.0, float(np.max(np.abs(np.concatenate([x, y]))))):
        return None
    j = 1.0 - 3.0 / (4.0 * (x.size + y.size) - 9.0)
    return float(j * (np.mean(x) - np.mean(y)) / pooled)


def _finite_or_none(p: float) -> float | None:
    return float(p) if math.isfinite(p) else None


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """Two-sided Welch t-test and Mann–Whitney U test of `a` against `b`, over seeds.

    Both, because with 3 seeds neither is trustworthy alone: Welch assumes normal per-seed means
    (plausible, unverifiable), Mann–Whitney assumes little but, for 3 vs 3, cannot go below p = 0.1
    without ties.
    A p-value is None where the test is undefined, so tables say "n/a" rather than a number that
    means nothing: Welch needs n >= 2 per sample, and when both samples are constant its
    Welch–Satterthwaite degrees of freedom are 0/0 — scipy then returns NaN for equal means but
    p = 0.0 for different ones, claiming infinite evidence from a handful of seeds.
    """
    x, y = _as_sample(a, "a"), _as_sample(b, "b")
    welch_defined = x.size >= 2 and y.size >= 2 and not (_is_constant(x) and _is_constant(y))
    with warnings.catch_warnings():
        # scipy warns about "catastrophic cancellation" whenever one sample is constant; the result
        # is still right (the other sample carries the variance), so the warning is only noise.
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = sps.ttest_ind(x, y, equal_var=False).pvalue if welch_defined else math.nan
        mwu = sps.mannwhitneyu(x, y, alternative="two-sided").pvalue
    return {
        "diff": float(np.mean(x) - np.mean(y)),
        "welch_p": _finite_or_none(float(welch)),
        "mwu_p": _finite_or_none(float(mwu)),
    }


def _defined(pvalues: Sequence[float | None]) -> tuple[list[int], np.ndarray]:
    """Indices and values of the p-values that exist; None marks a test that could not be run,
    which must not inflate the family size that the others are corrected for."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    p = np.array([pvalues[i] for i in idx], dtype=float)
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(f"p-values must be in [0, 1] (or None), got {list(pvalues)}")
    return idx, p


def _scatter(pvalues: Sequence[float | None], idx: list[int], adj: np.ndarray) -> list[float | None]:
    out: list[float | None] = [None] * len(pvalues)
    for i, q in zip(idx, adj, strict=True):
        out[i] = float(q)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values, in the input order.

    Holm rather than plain Bonferroni because it controls the same family-wise error rate and is
    uniformly more powerful, which matters when each group has only a few seeds. The running
    maximum keeps adjusted p-values monotone in the raw ones, so rejecting at level alpha is the
    same as comparing adjusted p <= alpha.
    """
    idx, p = _defined(pvalues)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.empty(m)
    adj[order] = np.maximum.accumulate(stepped)
    return _scatter(pvalues, idx, adj)


def bonferroni(pvalues: Sequence[float | None]) -> list[float | None]:
    """Bonferroni-adjusted p-values: kept for comparability with papers that report it."""
    idx, p = _defined(pvalues)
    return _scatter(pvalues, idx, np.minimum(1.0, p.size * p))


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini–Hochberg adjusted p-values (scipy's false_discovery_control): controls the false
    discovery rate instead of the family-wise error, the better trade when a sweep compares dozens
    of recipes and a few false leads among many real effects are acceptable."""
    idx, p = _defined(pvalues)
    return _scatter(pvalues, idx, sps.false_discovery_control(p, method="bh") if p.size else p)


def adjust(pvalues: Sequence[float | None], method: str) -> list[float | None]:
    """Dispatch on the config's `aggregate.correction`, so the name is checked in one place."""
    if method == "holm":
        return holm(pvalues)
    if method == "bonferroni":
        return bonferroni(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    if method == "none":
        idx, p = _defined(pvalues)
        return _scatter(pvalues, idx, p)
    raise ValueError(f"unknown correction '{method}' (choose from {', '.join(CORRECTIONS)})")


__all__ = [
    "CORRECTIONS",
    "adjust",
    "benjamini_hochberg",
    "bonferroni",
    "compare",
    "hedges_g",
    "holm",
    "iqm",
    "iqm_interval",
    "performance_profile",
    "probability_of_improvement",
    "summarize",
]
