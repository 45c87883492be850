from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from toolrl.analysis.stats import (
    adjust,
    benjamini_hochberg,
    bonferroni,
    compare,
    hedges_g,
    holm,
    iqm,
    iqm_interval,
    performance_profile,
    probability_of_improvement,
    summarize,
)


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """The point of the module is to stay quiet on small samples: any warning fails a test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- summarize


def test_summarize_known_values():
    s = summarize([0.5, 0.6, 0.7])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(0.1)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert 0.5 - 1e-12 <= s["ci_low"] < s["mean"] < s["ci_high"] <= 0.7 + 1e-12


def test_summarize_ci_contains_mean_and_is_finite_on_random_samples():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 10):
        x = rng.integers(0, 65, size=n) / 64
        if np.ptp(x) == 0:
            continue
        s = summarize(x, n_resamples=500)
        assert all(math.isfinite(s[k]) for k in ("mean", "std", "ci_low", "ci_high"))
        assert s["ci_low"] <= s["mean"] <= s["ci_high"]
        assert x.min() - 1e-12 <= s["ci_low"] and s["ci_high"] <= x.max() + 1e-12


def test_summarize_is_reproducible_and_seed_dependent():
    x = [0.1, 0.35, 0.4, 0.8, 0.9]
    assert summarize(x, seed=3) == summarize(x, seed=3)
    assert summarize(x, seed=3) != summarize(x, seed=4)


def test_summarize_wider_confidence_gives_wider_interval():
    x = [0.1, 0.35, 0.4, 0.8, 0.9]
    narrow, wide = summarize(x, confidence=0.5), summarize(x, confidence=0.99)
    assert wide["ci_low"] <= narrow["ci_low"] and narrow["ci_high"] <= wide["ci_high"]
    assert wide["ci_high"] - wide["ci_low"] > narrow["ci_high"] - narrow["ci_low"]


@pytest.mark.parametrize("values", [[0.7], [0.25, 0.25, 0.25], [0.0, 0.0], [1.0] * 5])
def test_summarize_degenerate_is_a_finite_point(values):
    s = summarize(values)
    assert s["ci_low"] == s["ci_high"] == s["mean"] == pytest.approx(values[0])
    assert s["std"] == 0.0
    assert s["n"] == len(values)


def test_summarize_ties_but_not_constant():
    """BCa would be NaN here (jackknife 0/0); the percentile interval must not be."""
    s = summarize([0.5, 0.5, 0.75])
    assert 0.5 <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= 0.75


@pytest.mark.parametrize("values", [[], [0.5, float("nan")], [float("inf")]])
def test_summarize_rejects_bad_input(values):
    with pytest.raises(ValueError):
        summarize(values)


def test_summarize_rejects_bad_confidence():
    with pytest.raises(ValueError, match="confidence"):
        summarize([0.1, 0.2], confidence=95)


# --------------------------------------------------------------------------- compare


def _welch_by_hand(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return 2 * sps.t.sf(abs(t), df)


@pytest.mark.parametrize(
    "a, b",
    [
        ([0.5, 0.6, 0.7], [0.3, 0.35, 0.5]),
        ([0.9, 0.8, 0.95, 0.7], [0.1, 0.4]),
        ([0.5, 0.6, 0.7], [0.5, 0.5, 0.5]),  # one constant sample: still defined
    ],
)
def test_compare_welch_matches_hand_computation(a, b):
    r = compare(a, b)
    assert r["welch_p"] == pytest.approx(_welch_by_hand(a, b), rel=1e-10)
    assert r["diff"] == pytest.approx(np.mean(a) - np.mean(b))


def test_compare_mwu_known_value():
    # 3 vs 3, complete separation, no ties: exact two-sided p = 2 / C(6, 3) = 0.1.
    r = compare([0.7, 0.8, 0.9], [0.1, 0.2, 0.3])
    assert r["mwu_p"] == pytest.approx(0.1)
    assert r["diff"] == pytest.approx(0.6)


def test_compare_is_symmetric_in_p_and_antisymmetric_in_diff():
    a, b = [0.5, 0.6, 0.7, 0.65], [0.3, 0.35, 0.5]
    ab, ba = compare(a, b), compare(b, a)
    assert ab["welch_p"] == pytest.approx(ba["welch_p"])
    assert ab["mwu_p"] == pytest.approx(ba["mwu_p"])
    assert ab["diff"] == pytest.approx(-ba["diff"])


@pytest.mark.parametrize(
    "a, b",
    [
        ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # scipy: NaN
        ([0.5, 0.5, 0.5], [0.75, 0.75, 0.75]),  # scipy: p = 0.0
        ([0.1 + 0.2, 0.3, 0.3], [0.3, 0.3, 0.3]),  # last-bit noise; scipy: p = 0.23
    ],
)
def test_compare_welch_undefined_for_two_constant_samples(a, b):
    r = compare(a, b)
    assert r["welch_p"] is None
    assert r["mwu_p"] is None or 0.0 <= r["mwu_p"] <= 1.0


def test_compare_single_seed():
    r = compare([0.5], [0.6, 0.7])
    assert r["welch_p"] is None
    assert r["mwu_p"] is not None and 0.0 <= r["mwu_p"] <= 1.0
    assert r["diff"] == pytest.approx(-0.15)


def test_compare_rejects_empty():
    with pytest.raises(ValueError, match="b is empty"):
        compare([0.5, 0.6], [])


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


# --------------------------------------------------------------------------- rliable's estimators


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 scores: the 2 lowest and the 2 highest are cut.
    assert iqm([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 1.0]) == pytest.approx((0.2 + 0.3 + 0.4 + 0.5) / 4)
    # Fewer than 4 scores: nothing is cut, the IQM is the mean.
    assert iqm([0.0, 0.5, 1.0]) == pytest.approx(0.5)
    # A matrix is flattened over runs and tasks (rliable's aggregate_iqm).
    assert iqm([[0.0, 1.0], [0.2, 0.4]]) == pytest.approx(0.3)


def test_iqm_interval_contains_point_and_stays_in_range():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 21, size=(5, 4)) / 20
    r = iqm_interval(m, n_resamples=500)
    assert r["iqm"] == pytest.approx(float(sps.trim_mean(m.ravel(), 0.25)))
    assert m.min() <= r["ci_low"] <= r["iqm"] <= r["ci_high"] <= m.max()
    assert iqm_interval(m, n_resamples=500) == r  # seeded


def test_iqm_interval_is_stratified_by_task():
    """Each task's column is resampled on its own: a task whose runs all agree contributes no
    variance, so a matrix whose only varying task has a tiny spread gets a tiny interval. An
    unstratified bootstrap over whole rows would behave the same here, so also check that moving
    scores between tasks of the same run changes nothing only when stratification is respected:
    the interval is a function of each column's multiset of values."""
    m = np.array([[0.0, 1.0, 0.50], [0.0, 1.0, 0.52], [0.0, 1.0, 0.54]])
    r = iqm_interval(m, n_resamples=1000)
    assert r["ci_high"] - r["ci_low"] <= 0.04 + 1e-12
    shuffled = m.copy()
    shuffled[:, 2] = shuffled[::-1, 2]  # reorder runs within one task only
    assert iqm_interval(shuffled, n_resamples=1000) == pytest.approx(r)


def test_iqm_interval_matches_brute_force_stratified_bootstrap():
    rng = np.random.default_rng(3)
    m = rng.integers(0, 11, size=(4, 3)) / 10
    ours = iqm_interval(m, confidence=0.9, n_resamples=4000, seed=1)
    boot = []
    for _ in range(4000):
        cols = [m[rng.integers(0, 4, size=4), j] for j in range(3)]
        boot.append(sps.trim_mean(np.concatenate(cols), 0.25))
    lo, hi = np.percentile(boot, [5, 95])
    assert ours["ci_low"] == pytest.approx(lo, abs=0.03)
    assert ours["ci_high"] == pytest.approx(hi, abs=0.03)


@pytest.mark.parametrize("m", [[[0.4, 0.6]], [[0.5, 0.5], [0.5, 0.5]]])
def test_iqm_interval_degenerate_is_the_point(m):
    r = iqm_interval(m)
    assert r["ci_low"] == r["ci_high"] == r["iqm"]


@pytest.mark.parametrize("m", [[], [[]], [0.1, 0.2], [[0.1, float("nan")]]])
def test_iqm_interval_rejects_bad_matrices(m):
    with pytest.raises(ValueError, match="scores"):
        iqm_interval(m)


def test_probability_of_improvement_known_values():
    # Task 0: x = {1, 0}, y = {0, 0}: pairs 1>0 twice, 0=0 twice → (2 + 0.5·2) / 4 = 0.75.
    # Task 1: x = {1, 1} beats y = {0, 1} in 2 pairs and ties in 2 → (2 + 1) / 4 = 0.75.
    x = [[1.0, 1.0], [0.0, 1.0]]
    y = [[0.0, 0.0], [0.0, 1.0]]
    assert probability_of_improvement(x, y)["poi"] == pytest.approx(0.75)


def test_probability_of_improvement_equals_mann_whitney_per_task():
    rng = np.random.default_rng(4)
    x, y = rng.random((5, 3)), rng.random((3, 3))
    expected = np.mean([sps.mannwhitneyu(x[:, j], y[:, j]).statistic / (5 * 3) for j in range(3)])
    assert probability_of_improvement(x, y)["poi"] == pytest.approx(expected)


def test_probability_of_improvement_is_complementary_and_half_against_itself():
    rng = np.random.default_rng(5)
    x, y = rng.random((4, 2)), rng.random((3, 2))
    assert (probability_of_improvement(x, y)["poi"] + probability_of_improvement(y, x)["poi"]) == pytest.approx(1.0)
    same = probability_of_improvement(x, x, n_resamples=500)
    assert same["poi"] == pytest.approx(0.5)
    assert same["ci_low"] < 0.5 < same["ci_high"]


def test_probability_of_improvement_separated_groups():
    x = [[0.9, 0.8], [0.95, 0.85], [0.92, 0.81]]
    y = [[0.1, 0.2], [0.15, 0.25], [0.12, 0.3]]
    r = probability_of_improvement(x, y, n_resamples=500)
    assert r["poi"] == r["ci_low"] == r["ci_high"] == 1.0


def test_probability_of_improvement_single_run_has_no_interval():
    r = probability_of_improvement([[0.7, 0.2]], [[0.1, 0.3], [0.2, 0.4]])
    assert r["poi"] == pytest.approx(0.5) and r["ci_low"] == r["ci_high"] == r["poi"]


def test_probability_of_improvement_rejects_different_tasks():
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement([[0.1, 0.2]], [[0.1]])


def test_hedges_g_known_value():
    # Means 0.85 and 0.55, both sd 0.05: d = 6, J = 1 - 3/(4·6 - 9) = 0.8.
    assert hedges_g([0.8, 0.85, 0.9], [0.5, 0.55, 0.6]) == pytest.approx(4.8)
    assert hedges_g([0.5, 0.55, 0.6], [0.8, 0.85, 0.9]) == pytest.approx(-4.8)


@pytest.mark.parametrize("a,b", [([0.5], [0.1, 0.2]), ([0.5, 0.5], [0.2, 0.2])])
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


# rliable 1.2.0 cannot be installed beside our pins (its `arch` dependency fails to import under
# pandas 3, which mlflow resolves), so its numbers on this matrix were computed once in a side
# venv with pandas<3 (IQM: 50,000 reps; PoI: 20,000 reps) and are checked here. The points must
# agree exactly; the interval bounds within bootstrap noise.
RLIABLE_X = [[0.9, 0.40, 0.55], [0.7, 0.35, 0.60], [0.8, 0.50, 0.45], [0.6, 0.45, 0.70], [0.85, 0.30, 0.65]]
RLIABLE_Y = [[0.5, 0.45, 0.30], [0.6, 0.20, 0.35], [0.4, 0.30, 0.50], [0.55, 0.25, 0.40]]


@pytest.mark.parametrize(
    "scores,expected",
    [
        (RLIABLE_X, (0.5777777777777778, 0.5277777777777778, 0.6333333333333333)),
        (RLIABLE_Y, (0.4, 0.3416666666666666, 0.4666666666666666)),
    ],
)
def test_iqm_interval_matches_rliable(scores, expected):
    r = iqm_interval(scores, n_resamples=20000)
    assert r["iqm"] == pytest.approx(expected[0], abs=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(expected[1:], abs=0.02)


def test_probability_of_improvement_matches_rliable():
    r = probability_of_improvement(RLIABLE_X, RLIABLE_Y, n_resamples=20000)
    assert r["poi"] == pytest.approx(0.9083333333333332, abs=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.7666666666666666, 1.0), abs=0.02)


def test_performance_profile_counts_scores_above_each_threshold():
    m = [[0.1, 0.5], [0.9, 0.3], [0.5, 0.7]]
    r = performance_profile(m, [0.0, 0.4, 0.5, 1.0], n_resamples=500)
    assert r["fraction"] == pytest.approx([1.0, 4 / 6, 2 / 6, 0.0])
    assert np.all(r["ci_low"] <= r["fraction"]) and np.all(r["fraction"] <= r["ci_high"])
    assert r["ci_low"][0] == r["ci_high"][0] == 1.0  # every score beats 0: nothing to vary
    assert r["ci_low"][1] < r["ci_high"][1]


def test_performance_profile_single_run_is_its_point():
    r = performance_profile([[0.2, 0.8]], [0.5])
    assert r["fraction"] == r["ci_low"] == r["ci_high"] == pytest.approx([0.5])
