"""Statistics over seeds: summaries with bootstrap CIs, two-sample tests, multiple-testing correction.

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

CORRECTIONS = ("holm", "bonferroni", "none")

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
    for i, q in zip(idx, adj):
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


def adjust(pvalues: Sequence[float | None], method: str) -> list[float | None]:
    """Dispatch on the config's `aggregate.correction`, so the name is checked in one place."""
    if method == "holm":
        return holm(pvalues)
    if method == "bonferroni":
        return bonferroni(pvalues)
    if method == "none":
        idx, p = _defined(pvalues)
        return _scatter(pvalues, idx, p)
    raise ValueError(f"unknown correction '{method}' (choose from {', '.join(CORRECTIONS)})")


__all__ = ["CORRECTIONS", "adjust", "bonferroni", "compare", "holm", "summarize"]
