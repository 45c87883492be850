"""The tables' intervals and tests hold what their captions say, at the sample sizes sweeps have.

Simulated from the two-level model (`toolrl.analysis.coverage`): a seed effect on the logit scale,
then Bernoulli tasks. 2,000 seeded experiments per setting, so a true 95% lands in 93–97% with
about four standard errors to spare; the whole file runs in seconds because every interval is
computed for all experiments at once.
"""

from __future__ import annotations

import numpy as np
import pytest

from toolrl.analysis import coverage, stats
from toolrl.analysis.coverage import GRID, Setting


@pytest.mark.parametrize("setting", GRID, ids=lambda s: f"n{s.seeds}-T{s.tasks}-m{s.m}-sd{s.sd}")
def test_group_interval_covers_the_true_mean(setting):
    assert 0.93 <= coverage.mean_coverage(setting, experiments=2000) <= 0.97


@pytest.mark.parametrize("seeds", [3, 5, 10])
@pytest.mark.parametrize("m", [0.1, 0.5, 0.7])
def test_group_interval_covers_with_task_categories(seeds, m):
    """Three categories of unequal difficulty sharing each seed's effect (BFCL's and the synthetic
    world's splits mix categories): the seed's rate is no longer one binomial, the check holds."""
    s = Setting(seeds, 192, m, 0.5, (-0.5, 0.0, 0.5))
    assert 0.93 <= coverage.mean_coverage(s, experiments=2000) <= 0.97


# A difference at 3 vs 3 seeds is conservative: 96.5–97.1% with 20,000 experiments, Welch's
# degrees of freedom being too few when the spreads are alike (docs/statistics.md). The upper
# bound allows that and no more.
@pytest.mark.parametrize(
    "a,b",
    [
        (s, Setting(s.seeds, s.tasks, m_b, s.sd))
        for s in GRID
        if s.m <= 0.5 and s.tasks == 64
        for m_b in (s.m, 0.5, 0.9)
    ],
    ids=lambda s: f"n{s.seeds}-m{s.m}-sd{s.sd}",
)
def test_difference_interval_covers_the_true_difference(a, b):
    assert 0.93 <= coverage.difference_coverage(a, b, experiments=2000) <= 0.975


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("m", [0.1, 0.5])
@pytest.mark.parametrize("sd", [0.0, 0.5])
def test_permutation_test_holds_its_level(seeds, m, sd):
    """Under the null the exact test rejects at most alpha of the time (plus simulation noise)."""
    rate = coverage.rejection_rate(Setting(seeds, 64, m, sd), alpha=0.1, experiments=2000)
    assert rate <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 2000)


def test_the_coverage_check_can_fail():
    """The same simulation flags an interval that is too narrow: an 80% interval passed off as 95%,
    and the old percentile bootstrap over 3 seeds (the seeds' min and max)."""
    s = Setting(3, 64, 0.3, 0.5)
    assert coverage.mean_coverage(s, experiments=2000, confidence=0.8) < 0.85
    rng = np.random.default_rng(0)
    rates = coverage.simulate(s.m, s.sd, s.seeds, s.tasks, 2000, rng)
    mu = coverage.true_mean(s.m, s.sd)
    minmax = np.mean((rates.min(axis=1) <= mu) & (mu <= rates.max(axis=1)))
    assert minmax == pytest.approx(0.75, abs=0.03)  # 1 − 2 · (1/2)³
    _, lo, hi = stats.clustered_wilson(rates, s.tasks)
    assert np.mean((lo <= mu) & (mu <= hi)) > minmax + 0.15


def test_true_mean_is_the_expectation_over_seeds():
    rng = np.random.default_rng(1)
    draws = coverage.simulate(0.2, 1.0, 1, 10_000, 200_000, rng)
    assert coverage.true_mean(0.2, 1.0) == pytest.approx(draws.mean(), abs=0.002)
    assert coverage.true_mean(0.3, 0.0) == pytest.approx(0.3)
    offsets = (-0.5, 0.0, 0.5)
    draws = coverage.simulate(0.2, 1.0, 1, 3 * 10_000, 100_000, rng, offsets)
    assert coverage.true_mean(0.2, 1.0, offsets) == pytest.approx(draws.mean(), abs=0.002)
    with pytest.raises(ValueError, match="do not split evenly"):
        coverage.simulate(0.2, 1.0, 1, 64, 10, rng, offsets)


def test_table_prints_a_row_per_setting():
    text = coverage.table(seeds=(3, 5), tasks=(64,), means=(0.5,), sds=(0.0, 0.5), experiments=200)
    rows = [line for line in text.splitlines() if line.startswith("| 64 |")]
    assert len(rows) == 4  # two settings, two tables
    assert all(len(r.split("|")) == 7 for r in rows)


def test_cli_prints_the_table(capsys):
    from toolrl.cli import main

    assert main(["coverage", "--seeds", "3", "--tasks", "64", "--experiments", "100"]) in (0, None)
    out = capsys.readouterr().out
    assert "| tasks | success | seed sd (logit) | 3 seeds |" in out and out.count("| 64 |") == 42
