"""Statistics over seeds that keep their stated properties at the 3 to 10 seeds a sweep has.

The seed is the unit of replication; a run's success rate on a split is the mean of T Bernoulli
task outcomes. Every interval here is checked by simulation from that two-level model (a seed
effect, then Bernoulli tasks) in `toolrl.analysis.coverage` and `tests/test_coverage.py`, and
every test is exact at its n. Bootstrap intervals are absent on purpose: over 3 seeds a percentile
bootstrap is the seeds' minimum and maximum, which covers about 75%, not 95%.

Functions stay finite and quiet on what small n produces all the time (one seed, seeds that all
score the same), because their callers write tables for people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from toolrl.config import CORRECTIONS

# Success rates from different code paths (sum/len vs. mean) can differ in the last bit; a spread
# of ~1e-17 is a tie, not evidence.
_CONSTANT_RTOL = 1e-12

# An exact permutation test enumerates every relabelling up to this many (10 vs 10 seeds has
# 184,756); beyond it scipy draws `n_resamples` at random.
EXACT_LIMIT = 200_000

INTERVAL_METHOD = "seed-clustered Wilson"


def _as_sample(values: Sequence[float], name: str = "values") -> np.ndarray:
    """Reject empty or non-finite input here, where the message can still say which argument."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf: {x.tolist()}")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _ties(x: np.ndarray) -> np.ndarray:
    """Whether the values along the last axis are all equal, up to rounding."""
    return np.ptp(x, axis=-1) <= _CONSTANT_RTOL * np.maximum(1.0, np.max(np.abs(x), axis=-1))


def _is_constant(x: np.ndarray) -> bool:
    return bool(_ties(x))


def degenerate(values: Sequence[float]) -> str | None:
    """'all zero', 'all one' or 'constant' for seeds that all score the same, else None.

    Against such a reference a standardised effect divides by a spread of zero, so the tables
    name the case instead of printing one."""
    x = _as_sample(values)
    if x.size < 2 or not _is_constant(x):
        return None
    if np.all(x == 0.0):
        return "all zero"
    if np.all(x == 1.0):
        return "all one"
    return "constant"


# --------------------------------------------------------------------------- intervals


def _dispersion(rates: np.ndarray, tasks: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance of one seed's rate, and phi = that variance / (mean (1 - mean)), along the
    last axis. Seeds that all score the same give no spread to estimate from: phi is then the
    binomial 1/T, i.e. no seed effect. Only then: raising every smaller estimate to 1/T as well
    would over-cover (98–100% without a seed effect), so a tie gives a wider interval than seeds
    that differ by one task."""
    n = rates.shape[-1]
    mean = rates.mean(axis=-1)
    var = rates.var(axis=-1, ddof=1) if n > 1 else np.zeros_like(mean)
    tasks = np.asarray(tasks, dtype=float)
    var = np.where(_ties(rates), mean * (1.0 - mean) / tasks, var)
    pq = mean * (1.0 - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(pq > 0, var / pq, 1.0 / tasks)
    return mean, var, phi


def _wilson(mean: np.ndarray, phi: np.ndarray, n: int, crit: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The μ with (mean − μ)² ≤ crit² · phi · μ(1 − μ) / n: a Wilson score interval whose
    variance is the observed one scaled to each μ, so it bends towards 0.5 near the floor and
    ceiling where a symmetric interval would cross them."""
    k = np.asarray(crit, dtype=float) ** 2 * phi / n
    centre = (2.0 * mean + k) / (2.0 * (1.0 + k))
    half = np.sqrt(np.maximum(k * k + 4.0 * k * mean * (1.0 - mean), 0.0)) / (2.0 * (1.0 + k))
    # The mean always solves the inequality; rounding must not push a bound of 0 or 1 past it.
    return np.clip(np.minimum(centre - half, mean), 0.0, 1.0), np.clip(np.maximum(centre + half, mean), 0.0, 1.0)


def clustered_wilson(
    rates: ArrayLike, tasks: ArrayLike, confidence: float = 0.95, crit: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) of the seed-clustered Wilson interval, along the last axis of `rates`
    (one success rate per seed, each over `tasks` tasks; leading axes are batches).

    It is the Wilson score interval over all n × T task outcomes with Kish's effective sample
    size (the outcomes of one seed share its weights, so they count as fewer) and Student's t
    with n − 1 degrees of freedom in place of the normal quantile, since the spread comes from
    n seeds. `crit` overrides that quantile (`difference` passes the Welch one). Needs n ≥ 2.
    """
    _check_confidence(confidence)
    x = np.asarray(rates, dtype=float)
    n = x.shape[-1]
    if n < 2:
        raise ValueError("an interval over seeds needs at least 2 seeds")
    mean, _, phi = _dispersion(x, tasks)
    if crit is None:
        crit = sps.t.ppf(0.5 + confidence / 2.0, n - 1)
    low, high = _wilson(mean, phi, n, crit)
    return mean, low, high


def summarize(values: Sequence[float], tasks: int, confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample sd and the seed-clustered Wilson interval of one group's seeds.

    One seed has no spread and no interval (None); `constant` marks seeds that all scored the
    same, whose interval assumes no seed effect."""
    x = _as_sample(values)
    _check_confidence(confidence)
    if tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {tasks}")
    mean = float(np.mean(x))
    if x.size == 1:
        return {"mean": mean, "std": None, "n": 1, "ci_low": None, "ci_high": None, "constant": False}
    _, low, high = clustered_wilson(x, tasks, confidence)
    return {
        "mean": mean,
        "std": float(np.std(x, ddof=1)),
        "n": int(x.size),
        "ci_low": float(low),
        "ci_high": float(high),
        "constant": _is_constant(x),
    }


def _welch_df(var_a: np.ndarray, n_a: int, var_b: np.ndarray, n_b: int) -> np.ndarray:
    """Welch–Satterthwaite degrees of freedom of a difference of two means; both spreads zero
    (only possible at a 0 or 1 floor) leaves the smaller group's n − 1."""
    va, vb = var_a / n_a, var_b / n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return np.where(np.isfinite(df), df, min(n_a, n_b) - 1)


def difference(
    a: ArrayLike, b: ArrayLike, tasks_a: ArrayLike, tasks_b: ArrayLike, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean(a) − mean(b), low, high) by MOVER (Zou & Donner 2008): each group's seed-clustered
    Wilson interval, both at the Welch–Satterthwaite t quantile, combined so that the interval
    keeps the asymmetry each one has near 0 and 1. Along the last axes; both need ≥ 2 seeds."""
    _check_confidence(confidence)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = x.shape[-1], y.shape[-1]
    if na < 2 or nb < 2:
        raise ValueError("a difference of two groups needs at least 2 seeds in each")
    ma, va, pa = _dispersion(x, tasks_a)
    mb, vb, pb = _dispersion(y, tasks_b)
    crit = sps.t.ppf(0.5 + confidence / 2.0, _welch_df(va, na, vb, nb))
    la, ua = _wilson(ma, pa, na, crit)
    lb, ub = _wilson(mb, pb, nb, crit)
    d = ma - mb
    return d, d - np.sqrt((ma - la) ** 2 + (ub - mb) ** 2), d + np.sqrt((ua - ma) ** 2 + (mb - lb) ** 2)


def _fixed(y: np.ndarray, fixed_b: bool) -> None:
    if fixed_b and y.size != 1:
        raise ValueError(f"a fixed reference is one score, got {y.size}")


def difference_interval(
    a: Sequence[float],
    b: Sequence[float],
    tasks_a: int,
    tasks_b: int,
    confidence: float = 0.95,
    fixed_b: bool = False,
) -> dict[str, float | None]:
    """`difference` for two groups' seeds. With `fixed_b`, `b` is one fixed score (the base model:
    a single starting point evaluated greedily on fixed tasks) and the interval is a's own,
    shifted. No interval (None) where a side that varies has fewer than 2 seeds."""
    x, y = _as_sample(a, "a"), _as_sample(b, "b")
    _fixed(y, fixed_b)
    diff = float(np.mean(x) - np.mean(y))
    if x.size < 2 or (y.size < 2 and not fixed_b):
        return {"diff": diff, "ci_low": None, "ci_high": None}
    if fixed_b:
        _, low, high = clustered_wilson(x, tasks_a, confidence)
        return {"diff": diff, "ci_low": float(low) - float(y[0]), "ci_high": float(high) - float(y[0])}
    _, low, high = difference(x, y, tasks_a, tasks_b, confidence)
    return {"diff": diff, "ci_low": float(low), "ci_high": float(high)}


# --------------------------------------------------------------------------- exact tests


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _round(x: np.ndarray) -> np.ndarray:
    """Rates are k/T; the same relabelling summed in another order differs in the last bit, and
    scipy's tolerance for such ties is relative to the statistic. Rounding is safer."""
    return np.round(x, 12)


def _exact(
    data: tuple[np.ndarray, ...], statistic: Any, kind: str, count: int, n_resamples: int, seed: int
) -> np.ndarray:
    """scipy's two-sided permutation test over all `count` relabellings when there are at most
    EXACT_LIMIT of them (scipy enumerates when asked for as many), else `n_resamples` random ones."""
    res = sps.permutation_test(
        tuple(_round(x) for x in data),
        statistic,
        permutation_type=kind,
        vectorized=True,
        n_resamples=count if count <= EXACT_LIMIT else n_resamples,
        alternative="two-sided",
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    return np.minimum(res.pvalue, 1.0)


def permutation_p(a: ArrayLike, b: ArrayLike, n_resamples: int = 9999, seed: int = 0) -> np.ndarray:
    """Two-sided p of the exact permutation test of equal means: every split of the pooled seeds
    into groups of the two sizes (up to EXACT_LIMIT of them; Monte Carlo beyond). Valid at any n
    under exchangeability; with 3 vs 3 seeds it cannot go below 0.1 (2 of 20 splits)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    splits = math.comb(x.shape[-1] + y.shape[-1], x.shape[-1])
    return _exact((x, y), _mean_diff, "independent", splits, n_resamples, seed)


def sign_flip_p(a: ArrayLike, reference: ArrayLike, n_resamples: int = 9999, seed: int = 0) -> np.ndarray:
    """Two-sided p of the exact one-sample permutation test that the seeds' rates are symmetric
    about a fixed `reference` (the base model's score): every flip of the signs of their
    differences from it. With 3 seeds it cannot go below 0.25 (2 of 8 flips)."""
    d = np.asarray(a, dtype=float) - np.asarray(reference, dtype=float)[..., None]
    return _exact((d,), _mean, "samples", 2 ** d.shape[-1], n_resamples, seed)


def min_p(n_a: int, n_b: int | None = None) -> float:
    """The smallest two-sided p the exact test can return: 2 / C(n_a + n_b, n_a) for two groups,
    2 / 2^n_a against a fixed reference (n_b None)."""
    total = 2**n_a if n_b is None else math.comb(n_a + n_b, n_a)
    return min(1.0, 2 / total)  # int division: correctly rounded, and 0.0 for counts past a float


def exact_test(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 9999, seed: int = 0, fixed_b: bool = False
) -> dict[str, float | None]:
    """The exact test that fits the pair: the two-sample permutation test, or with `fixed_b` the
    sign-flip test against `b`, one fixed score (the base model). `min_p` is what the test could
    reach. None where a side that varies has a single seed: no relabelling can tell anything."""
    x, y = _as_sample(a, "a"), _as_sample(b, "b")
    _fixed(y, fixed_b)
    if fixed_b:
        if x.size < 2:
            return {"p": None, "min_p": None}
        return {"p": float(sign_flip_p(x, y[0], n_resamples, seed)), "min_p": min_p(x.size)}
    if x.size < 2 or y.size < 2:
        return {"p": None, "min_p": None}
    return {"p": float(permutation_p(x, y, n_resamples, seed)), "min_p": min_p(x.size, y.size)}


# --------------------------------------------------------------------------- effect sizes and power


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Standardised mean difference of `a` over `b` with Hedges' small-sample correction.

    Cohen's d overstates effects by ~25% at 3 + 3 seeds; Hedges' factor J = 1 − 3/(4(n_a+n_b)−9)
    removes that bias. None where it is undefined: fewer than 2 runs on a side, or a degenerate
    side (its seeds all equal: the pooled sd is then the other group's alone and g reads as huge).
    """
    x, y = _as_sample(a, "a"), _as_sample(b, "b")
    if x.size < 2 or y.size < 2 or _is_constant(x) or _is_constant(y):
        return None
    pooled = math.sqrt(((x.size - 1) * np.var(x, ddof=1) + (y.size - 1) * np.var(y, ddof=1)) / (x.size + y.size - 2))
    j = 1.0 - 3.0 / (4.0 * (x.size + y.size) - 9.0)
    return float(j * (np.mean(x) - np.mean(y)) / pooled)


MAX_SEEDS = 1000


def _seed_var(x: np.ndarray, tasks: int) -> float:
    """One seed's variance: the sample variance, or the binomial p(1 − p)/T where the seeds tie."""
    _, var, _ = _dispersion(x, tasks)
    return float(var)


def seeds_needed(
    a: Sequence[float],
    b: Sequence[float],
    tasks_a: int,
    tasks_b: int,
    alpha: float = 0.05,
    power: float = 0.8,
    fixed_b: bool = False,
) -> int | None:
    """Seeds per group for `power` to detect the observed difference at two-sided level `alpha`,
    taking the observed difference and spreads as the truth (a planning number, not evidence).

    Power is the Welch t-test's (noncentral t), which the exact permutation test approaches,
    and n is at least what the permutation test needs to reach `alpha` at all. With `fixed_b`
    (`b` one fixed score, the base model) it is the one-sample version. None: a side that varies
    has one seed (no spread to plan with), no difference to detect, or more than MAX_SEEDS.
    """
    x, y = _as_sample(a, "a"), _as_sample(b, "b")
    _fixed(y, fixed_b)
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    diff = abs(float(np.mean(x) - np.mean(y)))
    if diff <= _CONSTANT_RTOL or x.size < 2 or (y.size < 2 and not fixed_b):
        return None
    one_sample = fixed_b
    va = _seed_var(x, tasks_a)
    vb = 0.0 if one_sample else _seed_var(y, tasks_b)
    for n in range(2, MAX_SEEDS + 1):
        if (min_p(n) if one_sample else min_p(n, n)) > alpha:
            continue
        se = math.sqrt((va + vb) / n)
        if se == 0.0:
            return n
        df = n - 1 if one_sample else float(_welch_df(np.array(va), n, np.array(vb), n))
        crit = sps.t.ppf(1 - alpha / 2, df)
        nc = diff / se
        # The far tail is negligible for nc >= 0, and scipy returns NaN for it at large nc.
        achieved = sps.nct.sf(crit, df, nc) + np.nan_to_num(sps.nct.cdf(-crit, df, nc))
        if achieved >= power:
            return n
    return None


# --------------------------------------------------------------------------- multiple testing


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


def level(alpha: float, correction: str, family: int) -> float:
    """The level one comparison must reach to count under the correction, when it stands alone
    in a family of `family`: alpha / family for the three corrections (their first step), alpha
    uncorrected. Seeds-needed numbers are computed at this level."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction '{correction}' (choose from {', '.join(CORRECTIONS)})")
    return alpha if correction == "none" else alpha / max(1, family)


__all__ = [
    "CORRECTIONS",
    "EXACT_LIMIT",
    "INTERVAL_METHOD",
    "MAX_SEEDS",
    "adjust",
    "benjamini_hochberg",
    "bonferroni",
    "clustered_wilson",
    "degenerate",
    "difference",
    "difference_interval",
    "exact_test",
    "hedges_g",
    "holm",
    "level",
    "min_p",
    "permutation_p",
    "seeds_needed",
    "sign_flip_p",
    "summarize",
]
