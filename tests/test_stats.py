from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from toolrl.stats import adjust, bonferroni, compare, holm, summarize


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
        for raw, h, b in zip(p, holm(p), bonferroni(p)):
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
    with pytest.raises(ValueError, match="unknown correction 'bh'"):
        adjust(p, "bh")


@pytest.mark.parametrize("p", [[0.5, 1.5], [-0.1], [float("nan")]])
def test_corrections_reject_invalid_pvalues(p):
    with pytest.raises(ValueError):
        holm(p)
