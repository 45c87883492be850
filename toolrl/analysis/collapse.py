"""The collapse detector, and the per-step series that the training curves plot, from a run's
`train_log.jsonl`.

The paper's failure mode has two faces at once: the policy stops succeeding, and the probability
it puts on control tokens where content should follow swings to an extreme — either `<tool_call>`
vanishes from the first position (the model writes malformed calls or plain text) or `<|im_end|>`
takes over right after `<tool_call>` (a bare opener, then the end of the message). Neither face
alone is evidence of collapse, so the detector asks for both at the same step:

* a drop in success alone can be noise or a batch of hard tasks — with a handful of prompts per
  GRPO step, success swings by tens of points from one step to the next;
* a large move of a control-token probability alone can be healthy learning — a model that learns
  to call a tool first drives p(<tool_call>) at the first position from 0.5 to 1, and its success
  rises with it.

Only RL rows (`"phase": "rl"`) are read: SFT rows carry a loss and no rollouts, and the global
step counter of a scheme with SFT phases counts them, so steps are used as labels, never as
positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The control-token probes the detector compares against their start: probabilities at the first
# position of a sampled assistant message and right after a sampled `<tool_call>`, and the same on
# the fixed expert trajectories (`core.expert_probe`), where call and reply turns are read apart.
# Not the `/sampled` probes: those are conditioned on the token having been sampled, so they say
# nothing about how often it is.
PROBES = (
    "p_tool_call/first",
    "p_im_end/first",
    "p_content/first",
    "p_im_end/after_tool_call",
    "p_tool_call/after_tool_call",
    "p_content/after_tool_call",
    *(
        f"probe/p_{token}/{where}"
        for where in ("call", "reply", "after_call")
        for token in ("tool_call", "im_end", "content")
    ),
)

# The metrics of `plots/curves.png`: (title, keys whose sum is the value). A step with any key
# missing has no value: half of a sum would read as an improvement.
CURVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("success", ("success",)),
    ("p(<tool_call>) at first position", ("p_tool_call/first",)),
    ("p(<|im_end|>) after <tool_call>", ("p_im_end/after_tool_call",)),
    ("p(content) at first position", ("p_content/first",)),
    ("text_pollution + full_collapse", ("state/text_pollution", "state/full_collapse")),
)

# The share of a step's messages that are not healthy: what rises in a content collapse (the JSON
# inside the tags turns to garbage) while the control-token probes stay where they were.
POLLUTION = ("state/text_pollution", "state/full_collapse")

# Success and probes are means of ratios; a threshold that is hit exactly (0.9 → 0.6 with a shift
# of 0.3) must not depend on the last bit of a float subtraction.
_EPS = 1e-9


def _number(value: Any) -> float | None:
    """A finite float, or None for a missing, null, NaN or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def rl_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The GRPO steps of a log, in step order."""
    return sorted((r for r in rows if r.get("phase") == "rl"), key=lambda r: r["step"])


def _check_thresholds(window: int, reward_drop: float, token_shift: float, pollution_rise: float | None) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if not 0.0 < reward_drop <= 1.0:
        raise ValueError(f"reward_drop must be in (0, 1], got {reward_drop!r}")
    if not 0.0 < token_shift <= 1.0:
        raise ValueError(f"token_shift must be in (0, 1], got {token_shift!r}")
    if pollution_rise is not None and not 0.0 < pollution_rise <= 1.0:
        raise ValueError(f"pollution_rise must be in (0, 1], got {pollution_rise!r}")


def detect(
    rows: Sequence[Mapping[str, Any]],
    window: int,
    reward_drop: float,
    token_shift: float,
    pollution_rise: float | None = None,
) -> dict[str, Any]:
    """Find the first step at which one run collapsed, and how.

    baseline = mean success of the first `window` RL steps. At every later RL step (the
    `window`+1-th on), the rolling mean over the last `window` RL steps is compared with it: the
    run is collapsed at the first step where rolling success <= (1 - `reward_drop`) × baseline
    (with baseline > 0: a run that never succeeded has nothing to lose) AND some probe in
    `PROBES`, as a rolling mean over the same window, has moved by at least `token_shift`
    (absolute) from its mean over the first `window` RL steps. Missing probe values are skipped;
    a probe with no value in either window is not compared at that step.

    That is `mode` "token", the paper's. With `pollution_rise`, a second detector: at a step
    where success has dropped as above but no probe has moved by `token_shift`, the run is
    collapsed in `mode` "content" if the share of polluted and empty messages (`POLLUTION`, as
    a rolling mean) has risen by at least `pollution_rise` from its first window: the calls
    break inside their tags while the control tokens stay where they were.

    Returns `collapsed`, `mode` ("token", "content" or None), `step` (the global step, or
    None), `baseline_success`, `min_success` (the lowest rolling success of the run, the first
    window included), `probe` / `shift`: what moved most at the collapse step and its
    signed shift (the probe; for a content collapse "pollution"; None when not collapsed), and
    `shifts`: every probe's signed shift at the collapse step (empty when not collapsed), from
    which `core.diagnostics.shown_patterns` reads the patterns the run shows.
    Raises ValueError on a log without RL rows or an RL row without a numeric `success`: a run
    that cannot be judged must not count as healthy.
    """
    _check_thresholds(window, reward_drop, token_shift, pollution_rise)
    rl = rl_rows(rows)
    if not rl:
        raise ValueError("the log has no RL rows (phase 'rl')")
    success: list[float] = []
    for r in rl:
        s = _number(r.get("success"))
        if s is None:
            raise ValueError(f"RL row at step {r.get('step')!r} has no numeric 'success'")
        success.append(s)
    probes = {k: [_number(r.get(k)) for r in rl] for k in PROBES}
    parts = [[_number(r.get(k)) for k in POLLUTION] for r in rl]
    pollution = [sum(v) if all(x is not None for x in v) else None for v in parts]  # type: ignore[misc]

    head = min(window, len(rl))
    baseline = sum(success[:head]) / head
    start = {k: _mean(v[:head]) for k, v in probes.items()}
    start_pollution = _mean(pollution[:head])
    result: dict[str, Any] = {
        "collapsed": False,
        "mode": None,
        "step": None,
        "baseline_success": baseline,
        "min_success": baseline,
        "probe": None,
        "shift": None,
        "shifts": {},
    }
    for i in range(window, len(rl)):
        lo = i - window + 1
        rolling = sum(success[lo : i + 1]) / window
        result["min_success"] = min(result["min_success"], rolling)
        if result["collapsed"] or baseline <= 0.0 or rolling > (1.0 - reward_drop) * baseline + _EPS:
            continue
        shifts = {
            k: now - start[k]
            for k, v in probes.items()
            if start[k] is not None and (now := _mean(v[lo : i + 1])) is not None
        }
        probe = max(shifts, key=lambda k: abs(shifts[k])) if shifts else None
        if probe is not None and abs(shifts[probe]) >= token_shift - _EPS:
            result.update(collapsed=True, mode="token", step=int(rl[i]["step"]), probe=probe, shift=shifts[probe])
            result["shifts"] = shifts
        elif pollution_rise is not None and start_pollution is not None:
            now_pollution = _mean(pollution[lo : i + 1])
            if now_pollution is not None and now_pollution - start_pollution >= pollution_rise - _EPS:
                rise = now_pollution - start_pollution
                result.update(collapsed=True, mode="content", step=int(rl[i]["step"]), probe="pollution", shift=rise)
                result["shifts"] = shifts
    return result


def series(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[int, float]:
    """step → the sum of `keys` on each RL row that has all of them (see `CURVES`)."""
    out: dict[int, float] = {}
    for r in rl_rows(rows):
        values = [_number(r.get(k)) for k in keys]
        if all(v is not None for v in values):
            out[int(r["step"])] = sum(v for v in values if v is not None)
    return out


__all__ = ["CURVES", "POLLUTION", "PROBES", "detect", "rl_rows", "series"]
