from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from toolrl.analysis.stats import (
    adjust,
    benjamini_hochberg,
    bonferroni,
    clustered_wilson,
    degenerate,
    difference,
    difference_interval,
    exact_test,
    hedges_g,
    holm,
    level,
    min_p,
    permutation_p,
    seeds_needed,
    sign_flip_p,
    summarize,
)

# --------------------------------------------------------------------------- intervals


def _wilson_by_hand(rates, tasks, crit):
    """The roots of (m − μ)² = crit² φ μ(1 − μ) / n, φ = s² / (m(1 − m)), by numpy.roots."""
    x = np.asarray(rates, dtype=float)
    n, m = x.size, x.mean()
    s2 = x.var(ddof=1) if np.ptp(x) > 0 else m * (1 - m) / tasks
    k = crit**2 * s2 / (m * (1 - m)) / n
    return sorted(np.roots([1 + k, -(2 * m + k), m * m]).real)


@pytest.mark.parametrize("rates", [[0.5, 0.6, 0.7], [0.17, 0.19, 0.31], [0.05, 0.1, 0.02, 0.08, 0.0]])
def test_clustered_wilson_solves_the_score_equation(rates):
    lo, hi = _wilson_by_hand(rates, 64, sps.t.ppf(0.975, len(rates) - 1))
    s = summarize(rates, 64)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    assert s["std"] == pytest.approx(np.std(rates, ddof=1))


def test_constant_seeds_get_the_binomial_spread_and_a_mark():
    s = summarize([0.25, 0.25, 0.25], 64)
    lo, hi = _wilson_by_hand([0.25, 0.25, 0.25], 64, sps.t.ppf(0.975, 2))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    assert s["constant"] and s["ci_low"] < 0.25 < s["ci_high"]
    zero = summarize([0.0, 0.0, 0.0], 64)
    # 0 of 192 tasks: the Wilson bound k / (1 + k), k = t² / (n T).
    k = sps.t.ppf(0.975, 2) ** 2 / 192
    assert zero["ci_low"] == 0.0 and zero["ci_high"] == pytest.approx(k / (1 + k))
    assert summarize([1.0, 1.0, 1.0], 64)["ci_high"] == 1.0


def test_more_tasks_narrow_only_what_the_tasks_explain():
    """With spread between seeds, T barely matters; without it, the interval is the binomial one."""
    spread = [summarize([0.4, 0.5, 0.6], t) for t in (64, 400)]
    assert spread[0]["ci_low"] == pytest.approx(spread[1]["ci_low"])
    tied = [summarize([0.5, 0.5, 0.5], t) for t in (64, 400)]
    assert tied[1]["ci_high"] - tied[1]["ci_low"] < tied[0]["ci_high"] - tied[0]["ci_low"]


def test_interval_widens_with_confidence_and_narrows_with_seeds():
    x = [0.3, 0.5, 0.4, 0.45, 0.35]
    narrow, wide = summarize(x, 64, confidence=0.5), summarize(x, 64, confidence=0.99)
    assert wide["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < wide["ci_high"]
    three, ten = summarize(x[:3], 64), summarize(x + x, 64)
    assert ten["ci_high"] - ten["ci_low"] < three["ci_high"] - three["ci_low"]


def test_interval_stays_in_range_and_batches_agree():
    rng = np.random.default_rng(0)
    rates = rng.binomial(64, rng.uniform(0, 1, size=(500, 1)), size=(500, 3)) / 64
    mean, lo, hi = clustered_wilson(rates, 64)
    assert np.all((lo >= 0) & (lo <= mean) & (mean <= hi) & (hi <= 1))
    for i in range(0, 500, 97):
        s = summarize(rates[i], 64)
        assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo[i], hi[i]))


def test_one_seed_has_no_interval():
    s = summarize([0.4], 64)
    assert s == {"mean": 0.4, "std": None, "n": 1, "ci_low": None, "ci_high": None, "constant": False}
    with pytest.raises(ValueError, match="at least 2 seeds"):
        clustered_wilson([0.4], 64)


@pytest.mark.parametrize("values", [[], [float("nan"), 0.1], [float("inf")]])
def test_summarize_rejects_bad_input(values):
    with pytest.raises(ValueError):
        summarize(values, 64)


@pytest.mark.parametrize("kw", [{"confidence": 0.0}, {"confidence": 1.0}, {"tasks": 0}])
def test_summarize_rejects_bad_settings(kw):
    with pytest.raises(ValueError):
        summarize([0.1, 0.2], **({"tasks": 64} | kw))


def test_difference_is_mover_over_the_two_intervals():
    a, b = [0.5, 0.6, 0.7], [0.2, 0.25, 0.4]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    crit = sps.t.ppf(0.975, df)
    (la, ua), (lb, ub) = _wilson_by_hand(a, 64, crit), _wilson_by_hand(b, 64, crit)
    d = np.mean(a) - np.mean(b)
    r = difference_interval(a, b, 64, 64)
    assert r["diff"] == pytest.approx(d)
    assert r["ci_low"] == pytest.approx(d - math.hypot(np.mean(a) - la, ub - np.mean(b)))
    assert r["ci_high"] == pytest.approx(d + math.hypot(ua - np.mean(a), np.mean(b) - lb))


def test_difference_is_antisymmetric_and_shifts_against_a_fixed_score():
    a, b = [0.5, 0.6, 0.7], [0.2, 0.25, 0.4]
    ab, ba = difference_interval(a, b, 64, 64), difference_interval(b, a, 64, 64)
    assert (ab["ci_low"], ab["ci_high"]) == pytest.approx((-ba["ci_high"], -ba["ci_low"]))
    vs_base, own = difference_interval(a, [0.45], 64, 64, fixed_b=True), summarize(a, 64)
    assert (vs_base["ci_low"], vs_base["ci_high"]) == pytest.approx((own["ci_low"] - 0.45, own["ci_high"] - 0.45))
    assert difference_interval([0.3], a, 64, 64)["ci_low"] is None
    # One seed of a reference that varies is not a fixed score: no interval rather than a narrow one.
    assert difference_interval(a, [0.45], 64, 64)["ci_low"] is None
    with pytest.raises(ValueError, match="a fixed reference is one score"):
        difference_interval(a, a, 64, 64, fixed_b=True)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        difference([0.3], [0.2, 0.4], 64, 64)


def test_difference_of_two_all_zero_groups_is_finite():
    r = difference_interval([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 64, 64)
    assert r["diff"] == 0.0 and r["ci_low"] < 0.0 < r["ci_high"]


# --------------------------------------------------------------------------- exact tests


def _two_sample_by_enumeration(a, b):
    """Two-sided p as scipy defines it: twice the smaller one-sided tail, over every split."""
    pooled, n = np.array(a + b), len(a)
    obs = np.mean(a) - np.mean(b)
    diffs = np.array(
        [
            pooled[list(i)].mean() - np.delete(pooled, list(i)).mean()
            for i in itertools.combinations(range(len(pooled)), n)
        ]
    )
    return min(1.0, 2 * min(np.mean(diffs >= obs - 1e-12), np.mean(diffs <= obs + 1e-12)))


def test_permutation_p_matches_enumeration():
    rng = np.random.default_rng(1)
    for na, nb in ((3, 3), (4, 3), (2, 5), (5, 5)):
        for _ in range(5):
            a, b = list(rng.integers(0, 65, na) / 64), list(rng.integers(0, 65, nb) / 64)
            assert float(permutation_p(a, b)) == pytest.approx(_two_sample_by_enumeration(a, b))


def test_permutation_floor_at_three_seeds():
    assert float(permutation_p([0.5, 0.6, 0.7], [0.1, 0.2, 0.3])) == pytest.approx(0.1)
    assert float(permutation_p([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])) == 1.0
    assert min_p(3, 3) == pytest.approx(0.1) and min_p(5, 5) == pytest.approx(2 / 252)
    assert min_p(6) == 0.03125 and min_p(600, 600) == 0.0


def test_sign_flip_matches_enumeration_and_floor():
    a, ref = [0.5, 0.55, 0.62, 0.41, 0.7], 0.45
    d = np.array(a) - ref
    flips = [abs((d * s).mean()) for s in itertools.product([-1, 1], repeat=len(a))]
    assert float(sign_flip_p(a, ref)) == pytest.approx(np.mean(np.array(flips) >= abs(d.mean()) - 1e-12))
    assert float(sign_flip_p([0.6, 0.7, 0.8], 0.1)) == pytest.approx(0.25) == min_p(3)


def test_exact_test_dispatches_on_the_reference_size():
    assert exact_test([0.6, 0.7, 0.8], [0.1], fixed_b=True) == {"p": pytest.approx(0.25), "min_p": 0.25}
    assert exact_test([0.6, 0.7, 0.8], [0.1, 0.2, 0.3]) == {"p": pytest.approx(0.1), "min_p": pytest.approx(0.1)}
    # A single seed on a side that varies: no test (a 6-vs-1 split cannot go below 2/7, and a
    # sign-flip test would treat that seed as a fixed score).
    assert exact_test([0.3, 0.31, 0.32, 0.33, 0.34, 0.35], [0.2]) == {"p": None, "min_p": None}
    assert exact_test([0.3], [0.2, 0.25]) == {"p": None, "min_p": None}
    assert exact_test([0.3], [0.2], fixed_b=True) == {"p": None, "min_p": None}


def test_permutation_is_exact_in_rate_across_batches():
    """P(p <= alpha) under the null is the largest attainable p at or below alpha."""
    rng = np.random.default_rng(5)
    x, y = rng.random((20000, 3)), rng.random((20000, 3))
    assert np.mean(permutation_p(x, y) <= 0.1) == pytest.approx(0.1, abs=0.007)


# --------------------------------------------------------------------------- effects and power


def test_degenerate_names_the_case():
    assert degenerate([0.0, 0.0, 0.0]) == "all zero"
    assert degenerate([1.0, 1.0]) == "all one"
    assert degenerate([0.1 + 0.2, 0.3, 0.3]) == "constant"  # 0.30000000000000004: a tie, not a spread
    assert degenerate([0.3, 0.4]) is None and degenerate([0.0]) is None


def test_seeds_needed_respects_the_permutation_floor():
    # A huge effect with little spread: power is no constraint, the floor is.
    assert seeds_needed([0.9, 0.91, 0.89], [0.1, 0.11, 0.09], 64, 64, alpha=0.05) == 4  # 2/70 <= 0.05
    assert seeds_needed([0.9, 0.91, 0.89], [0.1], 64, 64, alpha=0.05, fixed_b=True) == 6  # 2/64 <= 0.05
    assert seeds_needed([0.9, 0.91, 0.89], [0.1], 64, 64, alpha=0.01, fixed_b=True) == 8
    assert seeds_needed([0.9, 0.91, 0.89], [0.1], 64, 64) is None  # one seed of a varying reference


def test_seeds_needed_grows_with_noise_and_is_none_without_a_difference():
    small = seeds_needed([0.5, 0.52, 0.48], [0.4, 0.42, 0.38], 64, 64)
    noisy = seeds_needed([0.5, 0.7, 0.3], [0.4, 0.6, 0.2], 64, 64)
    assert small is not None and noisy is not None and small < noisy
    assert seeds_needed([0.5, 0.6], [0.6, 0.5], 64, 64) is None
    assert seeds_needed([0.5, 0.9, 0.1], [0.5001, 0.9, 0.1], 64, 64) is None  # beyond MAX_SEEDS


def test_seeds_needed_gives_the_power_it_claims():
    """Simulate Welch t-tests at the returned n (power >= 0.8) and one fewer (below it)."""
    a, b = [0.55, 0.62, 0.5], [0.45, 0.5, 0.41]
    n = seeds_needed(a, b, 64, 64, alpha=0.05, power=0.8)
    assert n is not None and n > 4
    rng = np.random.default_rng(3)
    d, sa, sb = np.mean(a) - np.mean(b), np.std(a, ddof=1), np.std(b, ddof=1)

    def power(k):
        x = rng.normal(d, sa, (20000, k))
        y = rng.normal(0.0, sb, (20000, k))
        return np.mean(sps.ttest_ind(x, y, axis=1, equal_var=False).pvalue <= 0.05)

    assert power(n) >= 0.78 and power(n - 1) < 0.8


def test_level_divides_alpha_by_the_family():
    assert level(0.05, "holm", 4) == pytest.approx(0.0125)
    assert level(0.05, "none", 4) == 0.05
    with pytest.raises(ValueError, match="unknown correction"):
        level(0.05, "fdr", 2)


# --------------------------------------------------------------------------- corrections


def test_holm_known_values():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_holm_caps_at_one_and_keeps_none():
    assert holm([0.6, None, 0.3]) == [pytest.approx(0.6), None, pytest.approx(0.6)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]
    assert holm([None, None]) == [None, None]
    assert holm([]) == []


def test_none_does_not_count_in_family_size():
    assert holm([0.01, None, None, None]) == [pytest.approx(0.01), None, None, None]
    assert bonferroni([0.01, None, 0.02]) == [pytest.approx(0.02), None, pytest.approx(0.04)]


def _holm_brute_force(p):
    """Straight from the definition: adj_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    for rank, i in enumerate(order):
        adj[i] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    return adj


def test_holm_matches_brute_force_on_random_pvalues():
    rng = np.random.default_rng(0)
    for m in range(1, 12):
        for _ in range(20):
            p = rng.uniform(0, 1, size=m) ** 3  # skewed towards 0 so some survive
            if m > 2:
                p[1] = p[0]  # ties
            assert holm(p.tolist()) == pytest.approx(_holm_brute_force(p.tolist()), abs=1e-15)


def test_holm_rejection_set_equals_step_down_procedure():
    """Holm's adjusted p <= alpha iff the classic step-down procedure rejects at alpha."""
    rng = np.random.default_rng(7)
    alpha = 0.05
    for _ in range(200):
        p = (rng.uniform(0, 1, size=6) ** 4).tolist()
        rejected = set()
        for rank, i in enumerate(sorted(range(6), key=lambda i: p[i])):
            if p[i] > alpha / (6 - rank):
                break
            rejected.add(i)
        assert {i for i, q in enumerate(holm(p)) if q <= alpha} == rejected


def test_holm_between_raw_and_bonferroni():
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 9):
        p = rng.uniform(0, 0.3, size=m).tolist()
        for raw, h, b in zip(p, holm(p), bonferroni(p), strict=True):
            assert raw <= h + 1e-15 and h <= b + 1e-15


def test_holm_is_monotone_in_raw_pvalues():
    p = [0.02, 0.001, 0.04, 0.03, 0.5]
    adj = holm(p)
    for i, j in itertools.permutations(range(len(p)), 2):
        if p[i] <= p[j]:
            assert adj[i] <= adj[j]


def test_adjust_dispatches():
    p = [0.01, None, 0.04]
    assert adjust(p, "holm") == holm(p)
    assert adjust(p, "bonferroni") == bonferroni(p)
    assert adjust(p, "none") == [0.01, None, 0.04]
    with pytest.raises(ValueError, match="unknown correction 'fdr'"):
        adjust(p, "fdr")


@pytest.mark.parametrize("p", [[0.5, 1.5], [-0.1], [float("nan")]])
def test_corrections_reject_invalid_pvalues(p):
    with pytest.raises(ValueError):
        holm(p)


# --------------------------------------------------------------------------- Hedges' g and BH


def test_hedges_g_known_value():
    # Means 0.85 and 0.55, both sd 0.05: d = 6, J = 1 - 3/(4·6 - 9) = 0.8.
    assert hedges_g([0.8, 0.85, 0.9], [0.5, 0.55, 0.6]) == pytest.approx(4.8)
    assert hedges_g([0.5, 0.55, 0.6], [0.8, 0.85, 0.9]) == pytest.approx(-4.8)


@pytest.mark.parametrize(
    "a,b", [([0.5], [0.1, 0.2]), ([0.5, 0.5], [0.2, 0.2]), ([0.3, 0.5], [0.0, 0.0]), ([0.0, 0.0], [0.3, 0.5])]
)
def test_hedges_g_undefined(a, b):
    assert hedges_g(a, b) is None


def test_benjamini_hochberg_known_values_and_none():
    # The step-up procedure by hand: sorted p (0.01, 0.03, 0.04, 0.2), m = 4:
    # 0.04·4/1, min(0.03·4/2, 0.04·4/3), 0.04·4/3, 0.2.
    assert benjamini_hochberg([0.01, 0.04, 0.03, None, 0.2]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, None, 0.2])
    assert adjust([0.01, 0.04, 0.03, None, 0.2], "bh") == benjamini_hochberg([0.01, 0.04, 0.03, None, 0.2])
    assert benjamini_hochberg([None]) == [None]


def test_benjamini_hochberg_is_between_raw_and_holm():
    rng = np.random.default_rng(6)
    p = list(rng.random(12) ** 3)
    for raw, bh, hm in zip(p, benjamini_hochberg(p), holm(p), strict=True):
        assert raw - 1e-12 <= bh <= hm + 1e-12
