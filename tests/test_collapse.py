from __future__ import annotations

import pytest

from toolrl.analysis.collapse import PROBES, detect, series

HEALTHY = {
    "p_tool_call/first": 0.95,
    "p_im_end/first": 0.01,
    "p_content/first": 0.04,
    "p_im_end/after_tool_call": 0.02,
    "p_tool_call/after_tool_call": 0.01,
    "p_content/after_tool_call": 0.97,
}


def _log(success, probes=None, start=0, sft=0):
    """An RL log: `success` per step, `probes` key → one value per step (None = missing)."""
    rows = [{"phase": "sft", "step": s, "sft_loss": 1.0 / (s + 1)} for s in range(sft)]
    for i, s in enumerate(success):
        row = {"phase": "rl", "step": start + sft + i, "success": s, "reward": s, **HEALTHY}
        for k, values in (probes or {}).items():
            if values[i] is None:
                row.pop(k, None)
            else:
                row[k] = values[i]
        rows.append(row)
    return rows


def test_catches_tool_call_vanishing_at_first_position():
    """Mode 1: the model stops opening calls (malformed output): p(<tool_call>) at the first position ~1 → ~0."""
    success = [0.8, 0.8, 0.7, 0.5, 0.1, 0.0, 0.0]
    p_first = [0.95, 0.95, 0.9, 0.6, 0.1, 0.02, 0.01]
    r = detect(_log(success, {"p_tool_call/first": p_first}), window=2, reward_drop=0.5, token_shift=0.3)
    assert r["collapsed"] is True
    # step 4: rolling success (0.5 + 0.1)/2 = 0.3 <= 0.4, probe (0.6 + 0.1)/2 - 0.95 = -0.6.
    assert r["step"] == 4
    assert r["probe"] == "p_tool_call/first" and r["shift"] == pytest.approx(-0.6)
    assert r["baseline_success"] == pytest.approx(0.8)
    assert r["min_success"] == pytest.approx(0.0)


def test_catches_im_end_after_tool_call():
    """Mode 2: a bare `<tool_call>` then the end: p(<|im_end|>) after <tool_call> ~0 → ~1."""
    success = [0.6, 0.6, 0.6, 0.2, 0.1, 0.0]
    p_end = [0.02, 0.02, 0.1, 0.9, 0.98, 0.99]
    r = detect(_log(success, {"p_im_end/after_tool_call": p_end}), window=2, reward_drop=0.5, token_shift=0.3)
    assert r["collapsed"] is True and r["step"] == 4
    assert r["probe"] == "p_im_end/after_tool_call" and r["shift"] == pytest.approx(0.92)


def test_reward_drop_without_token_shift_is_not_collapse():
    """A run of hard batches: success falls, the control tokens stay where they were."""
    r = detect(_log([0.8, 0.8, 0.2, 0.0, 0.0, 0.1]), window=2, reward_drop=0.5, token_shift=0.3)
    assert r["collapsed"] is False and r["step"] is None and r["probe"] is None and r["shift"] is None
    assert r["min_success"] == pytest.approx(0.0)


def test_token_shift_without_reward_drop_is_not_collapse():
    """Healthy learning: the model learns to call first, p(<tool_call>) 0.3 → 1, success rises."""
    p_first = [0.3, 0.3, 0.6, 0.9, 1.0, 1.0]
    r = detect(
        _log([0.3, 0.3, 0.4, 0.6, 0.8, 0.9], {"p_tool_call/first": p_first}), window=2, reward_drop=0.5, token_shift=0.3
    )
    assert r["collapsed"] is False and r["min_success"] == pytest.approx(0.3)


def test_stable_run_is_not_collapse():
    r = detect(_log([0.5, 0.6, 0.5, 0.6, 0.5, 0.6, 0.5]), window=3, reward_drop=0.5, token_shift=0.3)
    assert r == {
        "collapsed": False,
        "mode": None,
        "step": None,
        "baseline_success": pytest.approx(1.6 / 3),
        "min_success": pytest.approx(1.6 / 3),
        "probe": None,
        "shift": None,
        "shifts": {},
    }


def test_zero_baseline_never_collapses():
    """A run that never succeeded has no success to lose, however its tokens move."""
    r = detect(_log([0.0] * 6, {"p_tool_call/first": [1, 1, 0, 0, 0, 0]}), window=2, reward_drop=1.0, token_shift=0.3)
    assert r["collapsed"] is False and r["baseline_success"] == 0.0


@pytest.mark.parametrize(
    "drop, shift, collapsed",
    [
        (0.5, 0.3, True),  # exactly at both thresholds: success 0.4 = 0.5 × 0.8, |shift| = 0.3
        (0.49, 0.3, True),  # a smaller required drop is met too
        (0.51, 0.3, False),  # needs success <= 0.392
        (0.5, 0.31, False),
    ],  # needs a larger shift
)
def test_threshold_edges_are_inclusive(drop, shift, collapsed):
    success = [0.8, 0.8, 0.4, 0.4]
    p_first = [0.9, 0.9, 0.6, 0.6]
    r = detect(_log(success, {"p_tool_call/first": p_first}), window=1, reward_drop=drop, token_shift=shift)
    assert r["collapsed"] is collapsed
    assert r["step"] == (2 if collapsed else None)


def test_window_averages_a_one_step_dip_away():
    """One bad step (success 0, probes swung) is a collapse with window 1 and noise with window 3."""
    success = [0.8, 0.8, 0.8, 0.0, 0.8, 0.8, 0.8]
    p_first = [0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9]
    rows = _log(success, {"p_tool_call/first": p_first})
    assert detect(rows, window=1, reward_drop=0.5, token_shift=0.3)["step"] == 3
    r3 = detect(rows, window=3, reward_drop=0.5, token_shift=0.3)
    assert r3["collapsed"] is False
    assert r3["min_success"] == pytest.approx(1.6 / 3)


def test_first_window_is_never_a_collapse_step():
    """The baseline window is the reference: a run shorter than window + 1 RL steps cannot collapse."""
    rows = _log([0.8, 0.0], {"p_tool_call/first": [0.9, 0.0]})
    r = detect(rows, window=2, reward_drop=0.5, token_shift=0.3)
    assert r["collapsed"] is False and r["baseline_success"] == pytest.approx(0.4)
    short = detect(_log([0.8]), window=5, reward_drop=0.5, token_shift=0.3)
    assert short["collapsed"] is False and short["baseline_success"] == pytest.approx(0.8)


def test_missing_probe_values_are_skipped():
    """No `<tool_call>` was sampled in the baseline's first step, none on the collapse step's first:
    the means go over the steps that measured something."""
    success = [0.8, 0.8, 0.8, 0.1, 0.1]
    p_end = [None, 0.0, 0.0, None, 0.9]
    rows = _log(success, {"p_im_end/after_tool_call": p_end})
    r = detect(rows, window=2, reward_drop=0.5, token_shift=0.3)
    assert r["collapsed"] is True and r["step"] == 4
    assert r["probe"] == "p_im_end/after_tool_call" and r["shift"] == pytest.approx(0.9)


def test_probe_absent_from_the_whole_log_and_nan_values():
    success = [0.8, 0.8, 0.1, 0.1]
    rows = _log(success, {k: [None] * 4 for k in PROBES})
    assert detect(rows, window=2, reward_drop=0.5, token_shift=0.3)["collapsed"] is False
    rows = _log(success, {"p_tool_call/first": [0.9, 0.9, float("nan"), 0.0]})
    r = detect(rows, window=2, reward_drop=0.5, token_shift=0.3)
    assert r["collapsed"] is True and r["step"] == 3 and r["shift"] == pytest.approx(-0.9)


def test_sft_rows_are_ignored_and_steps_are_global():
    """A sequential run: 5 SFT steps first, so RL steps are 5..; SFT rows would zero the baseline."""
    success = [0.8, 0.8, 0.1, 0.1]
    rows = _log(success, {"p_tool_call/first": [0.9, 0.9, 0.1, 0.1]}, sft=5)
    r = detect(rows, window=2, reward_drop=0.5, token_shift=0.3)
    assert r["baseline_success"] == pytest.approx(0.8)
    assert r["collapsed"] is True and r["step"] == 5 + 3


def test_interleaved_sft_between_rl_phases_and_unsorted_rows():
    rows = _log([0.8, 0.8, 0.1, 0.1], {"p_tool_call/first": [0.9, 0.9, 0.1, 0.1]})
    rows[2:2] = [{"phase": "sft", "step": 100 + i, "sft_loss": 0.5} for i in range(3)]
    rows.append({"step": 1, "note": "no phase: not an RL row"})
    r = detect(list(reversed(rows)), window=2, reward_drop=0.5, token_shift=0.3)
    assert r["collapsed"] is True and r["step"] == 3 and r["baseline_success"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"phase": "sft", "step": 0, "sft_loss": 1.0}], "no RL rows"),
        ([{"phase": "rl", "step": 0, "reward": 0.5}], "step 0 has no numeric 'success'"),
    ],
)
def test_unjudgeable_log_raises(rows, message):
    with pytest.raises(ValueError, match=message):
        detect(rows, window=2, reward_drop=0.5, token_shift=0.3)


@pytest.mark.parametrize("kw", [{"window": 0}, {"reward_drop": 0.0}, {"token_shift": 1.5}])
def test_bad_thresholds_raise(kw):
    args = {"window": 2, "reward_drop": 0.5, "token_shift": 0.3, **kw}
    with pytest.raises(ValueError, match=next(iter(kw))):
        detect(_log([0.5, 0.5, 0.5]), **args)


def test_series_sums_keys_and_skips_incomplete_steps():
    rows = _log([0.5, 0.5, 0.5], sft=2)
    rows[2]["state/text_pollution"], rows[2]["state/full_collapse"] = 0.25, 0.5
    rows[3]["state/text_pollution"] = 0.1  # full_collapse missing: no value
    rows[4]["state/text_pollution"], rows[4]["state/full_collapse"] = 0.0, 0.0
    assert series(rows, ("state/text_pollution", "state/full_collapse")) == {2: 0.75, 4: 0.0}
    assert series(rows, ("success",)) == {2: 0.5, 3: 0.5, 4: 0.5}


# A content collapse: success falls from 0.6 to 0.1 while the share of polluted messages rises from
# 0.05 to 0.7 and every control-token probe stays healthy.
CONTENT_SUCCESS = [0.6, 0.6, 0.6, 0.1, 0.1, 0.1]
POLLUTED = {"state/text_pollution": [0.05, 0.05, 0.05, 0.6, 0.7, 0.7], "state/full_collapse": [0.0] * 6}


def test_a_content_collapse_is_found_only_by_the_second_detector():
    r = detect(_log(CONTENT_SUCCESS, POLLUTED), window=2, reward_drop=0.5, token_shift=0.3, pollution_rise=0.3)
    assert (r["collapsed"], r["mode"], r["step"], r["probe"]) == (True, "content", 4, "pollution")
    assert r["shift"] == pytest.approx(0.65 - 0.05)
    # The token detector alone misses it, as the one vanilla seed of the tiny model was missed.
    assert detect(_log(CONTENT_SUCCESS, POLLUTED), window=2, reward_drop=0.5, token_shift=0.3)["collapsed"] is False
    # A rise below the threshold, or pollution without a success drop, is not a collapse.
    assert not detect(_log(CONTENT_SUCCESS, POLLUTED), window=2, reward_drop=0.5, token_shift=0.3, pollution_rise=0.7)[
        "collapsed"
    ]
    steady = [0.6] * 6
    assert not detect(_log(steady, POLLUTED), window=2, reward_drop=0.5, token_shift=0.3, pollution_rise=0.3)[
        "collapsed"
    ]


def test_a_token_shift_makes_it_a_token_collapse():
    probes = {**POLLUTED, "p_tool_call/first": [0.95, 0.95, 0.95, 0.1, 0.1, 0.1]}
    r = detect(_log(CONTENT_SUCCESS, probes), window=2, reward_drop=0.5, token_shift=0.3, pollution_rise=0.3)
    assert (r["mode"], r["probe"]) == ("token", "p_tool_call/first")


def test_pollution_rise_must_be_a_share():
    with pytest.raises(ValueError, match="pollution_rise"):
        detect(_log(CONTENT_SUCCESS, POLLUTED), window=2, reward_drop=0.5, token_shift=0.3, pollution_rise=0.0)
