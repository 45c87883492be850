from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from toolrl.analysis.report import aggregate

SPLITS = ("id", "format_ood", "content_ood")
BASELINE = {"signal": "none", "scheme": "rl", "lr": None, "seed": None}

# Per-seed success rates: `sft` beats the baseline in distribution and is tied with it on
# format_ood (every seed at 0.5), where both groups are degenerate.
RATES = {
    ("none", "rl"): {"id": [0.50, 0.55, 0.60], "format_ood": [0.5, 0.5, 0.5], "content_ood": [0.20, 0.25, 0.30]},
    ("sft", "rl"): {"id": [0.80, 0.85, 0.90], "format_ood": [0.5, 0.5, 0.5], "content_ood": [0.30, 0.20, 0.40]},
}
BASE_RATES = {"id": 0.125, "format_ood": 0.0, "content_ood": 0.0625}


def _eval_doc(cell, split, rate):
    n = 64
    k = round(rate * n)
    return {
        "cell": cell,
        "split": split,
        "format": "json" if split != "format_ood" else "python",
        "n": n,
        "success_rate": rate,
        "format_error_rate": 0.0,
        "tasks": [
            {
                "task_id": f"{split}-{i:04d}",
                "success": i < k,
                "turns": 1,
                "turns_completed": 1,
                "format_errors": 0,
                "messages": 3,
            }
            for i in range(n)
        ],
    }


def _run_dir(d: Path, signal: str, scheme: str, seed: int, lr_dir: str = "1e-4") -> Path:
    return d / "runs" / f"signal={signal}" / f"scheme={scheme}" / f"lr={lr_dir}" / f"seed={seed}"


def _write_sweep(d: Path, rates=RATES, base=True) -> None:
    for (signal, scheme), by_split in rates.items():
        for split, values in by_split.items():
            for seed, rate in enumerate(values):
                cell = {"signal": signal, "scheme": scheme, "lr": 0.0001, "seed": seed}
                path = _run_dir(d, signal, scheme, seed) / "eval" / f"{split}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(_eval_doc(cell, split, rate)))
    if base:
        for split, rate in BASE_RATES.items():
            path = d / "base" / "eval" / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_eval_doc(None, split, rate)))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A fresh sweep for tests that damage it."""
    _write_sweep(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory) -> tuple[Path, dict]:
    """One aggregation shared by the tests that only read its outputs (plotting is the slow part)."""
    d = tmp_path_factory.mktemp("sweep")
    _write_sweep(d)
    return d, aggregate(d, BASELINE, n_resamples=500)


def _table_rows(md: str) -> dict[str, list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    return {cells[0]: cells for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows[1:])}


def test_markdown_has_one_row_per_group_in_order(aggregated):
    sweep, _ = aggregated
    md = (sweep / "tables" / "main.md").read_text()
    rows = _table_rows(md)
    assert list(rows) == ["base", "none/rl/lr=1e-4", "sft/rl/lr=1e-4"]
    header = [c.strip() for c in next(line for line in md.splitlines() if line.startswith("| ")).strip("|").split("|")]
    assert header[:5] == ["group", "n", "id", "format_ood", "content_ood"]
    assert rows["base"][1] == "1" and rows["sft/rl/lr=1e-4"][1] == "3"
    # id column: mean 85.0 with its interval in brackets; base has none; tied seeds are marked.
    assert rows["sft/rl/lr=1e-4"][2].startswith("85.0 [") and not rows["sft/rl/lr=1e-4"][2].endswith("†")
    assert rows["sft/rl/lr=1e-4"][3].startswith("50.0 [") and rows["sft/rl/lr=1e-4"][3].endswith("]†")
    assert rows["base"][2] == "12.5"
    # No train logs, no restoration probe: collapse unknown (n/a; — for base), no restored column.
    assert header[5] == "collapsed" and not any("restored" in h for h in header)
    assert rows["base"][5] == "—" and rows["sft/rl/lr=1e-4"][5] == "n/a"
    # p-value columns: against the baseline, then against base; dashes where there is no comparison.
    assert header[6:9] == [f"{s} p vs baseline" for s in SPLITS] and header[9:] == [f"{s} p vs base" for s in SPLITS]
    assert set(rows["base"][6:]) == {"—"} and set(rows["none/rl/lr=1e-4"][6:9]) == {"—"}
    p_cells = dict(zip(header[6:], rows["sft/rl/lr=1e-4"][6:], strict=True))
    assert p_cells["id p vs baseline"] == "p=0.1"  # the exact test's floor at 3 vs 3
    assert p_cells["format_ood p vs baseline"] == "p=1"  # identical seeds
    assert p_cells["id p vs base"] == "p=0.5"  # the floor 0.25 at 3 seeds, Holm over the 2 groups
    caption = md.split("|")[0]
    assert "none/rl/lr=1e-4" in caption and "seed-clustered Wilson" in caption and "id 64" in caption
    assert "no p can be below 0.1" in caption and "no p can be below 0.25" in caption
    assert "Holm" in md and "Warning" not in md


def test_csv_rows_and_values(aggregated):
    sweep, _ = aggregated
    with open(sweep / "tables" / "main.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(SPLITS)
    assert {(r["group"], r["split"]) for r in rows} == {
        (g, s) for g in ("base", "none/rl/lr=1e-4", "sft/rl/lr=1e-4") for s in SPLITS
    }
    for r in rows:
        if r["group"] == "base":  # one evaluation: no spread, no interval
            assert r["ci_low"] == r["ci_high"] == r["std"] == ""
            continue
        low, mean, high = float(r["ci_low"]), float(r["mean"]), float(r["ci_high"])
        assert math.isfinite(low) and math.isfinite(high)
        assert 0.0 <= low <= mean <= high <= 1.0
    by = {(r["group"], r["split"]): r for r in rows}
    sft_id = by[("sft/rl/lr=1e-4", "id")]
    assert float(sft_id["mean"]) == pytest.approx(0.85)
    assert float(sft_id["std"]) == pytest.approx(0.05)
    assert (sft_id["signal"], sft_id["scheme"], float(sft_id["lr"]), sft_id["n"]) == ("sft", "rl", 1e-4, "3")
    assert sft_id["tasks"] == "64" and sft_id["constant"] == "False"
    # Every seed of sft above every seed of none: 2 of the 20 splits are as extreme.
    assert float(sft_id["baseline_p"]) == pytest.approx(0.1) == float(sft_id["baseline_min_p"])
    # One comparison against the baseline per split, so Holm leaves it unchanged.
    assert float(sft_id["baseline_p_adj"]) == pytest.approx(float(sft_id["baseline_p"]))
    assert float(sft_id["baseline_diff"]) == pytest.approx(0.3)
    assert float(sft_id["baseline_ci_low"]) < 0.3 < float(sft_id["baseline_ci_high"])
    assert float(sft_id["base_diff"]) == pytest.approx(0.85 - 0.125)
    fmt = by[("sft/rl/lr=1e-4", "format_ood")]
    assert fmt["baseline_hedges_g"] == "" and fmt["baseline_reference_degenerate"] == "constant"
    assert by[("none/rl/lr=1e-4", "id")]["baseline_p"] == "" and by[("base", "id")]["base_p"] == ""
    assert by[("base", "id")]["signal"] == "" and by[("base", "id")]["n"] == "1"


def test_tex_is_booktabs_with_bold_best(aggregated):
    sweep, _ = aggregated
    tex = (sweep / "tables" / "main.tex").read_text()
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert cmd in tex
    assert r"\textbf{85.0} {\scriptsize [" in tex  # best on id is sft
    assert r"format\_ood" in tex and "format_ood" not in tex.replace(r"format\_ood", "")
    assert tex.count(r"\textbf") == 4  # sft on id and content_ood; none and sft tied at 50.0 on format_ood
    assert "55.0 {\\scriptsize [" in tex and r"$^\dagger$" in tex
    assert "seed-clustered Wilson" in tex and "$n$ seeds" in tex


def test_png_written(aggregated):
    sweep, _ = aggregated
    png = sweep / "plots" / "success.png"
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_json_is_strict_and_matches_return(aggregated):
    sweep, summary = aggregated
    text = (sweep / "summary.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert loaded == json.loads(json.dumps(summary))
    assert loaded["baseline"] == "none/rl/lr=1e-4" and loaded["correction"] == "holm"
    groups = {g["name"]: g for g in loaded["groups"]}
    assert groups["sft/rl/lr=1e-4"]["seeds"] == [0, 1, 2]
    assert groups["sft/rl/lr=1e-4"]["splits"]["id"]["values"] == [0.80, 0.85, 0.90]
    assert groups["sft/rl/lr=1e-4"]["comparison"]["baseline"]["format_ood"]["p"] == 1.0
    assert groups["none/rl/lr=1e-4"]["comparison"] == {
        "baseline": None,
        "base": groups["none/rl/lr=1e-4"]["comparison"]["base"],
    }
    assert groups["base"]["comparison"] == {"baseline": None, "base": None}
    assert loaded["references"] == ["baseline", "base"] and loaded["interval"] == "seed-clustered Wilson"
    assert not list(sweep.rglob("*.tmp"))


def test_holm_across_groups_and_few_seed_warning(tmp_path):
    rates = dict(RATES)
    rates[("sft", "sequential")] = {"id": [0.6, 0.7], "format_ood": [0.4, 0.6], "content_ood": [0.1, 0.2]}
    _write_sweep(tmp_path, rates, base=False)
    summary = aggregate(tmp_path, {"signal": "none"}, n_resamples=200)
    names = [g["name"] for g in summary["groups"]]
    assert names == ["none/rl/lr=1e-4", "sft/rl/lr=1e-4", "sft/sequential/lr=1e-4"]
    comps = [g["comparison"]["baseline"]["content_ood"] for g in summary["groups"][1:]]
    raw = sorted(c["p"] for c in comps)
    adj = sorted(c["p_adj"] for c in comps)
    assert raw[0] < raw[1] < 1.0
    assert adj == pytest.approx([2 * raw[0], max(2 * raw[0], raw[1])])
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "Warning" in md and "`sft/sequential/lr=1e-4` (n=2)" in md


def test_uncorrected_and_unknown_correction(sweep):
    raw = aggregate(sweep, BASELINE, n_resamples=100, correction="none")
    comp = raw["groups"][2]["comparison"]["base"]["id"]
    assert comp["p_adj"] == comp["p"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown correction"):
        aggregate(sweep, BASELINE, correction="fdr")


def test_baseline_must_match(sweep):
    with pytest.raises(ValueError, match="matches none"):
        aggregate(sweep, {"signal": "hbg"})
    other = aggregate(sweep, {"signal": "sft"}, n_resamples=100)
    assert other["baseline"] == "sft/rl/lr=1e-4"
    assert other["groups"][1]["name"] == "sft/rl/lr=1e-4"


def test_missing_split_raises_with_path(sweep):
    missing = _run_dir(sweep, "sft", "rl", 1) / "eval" / "content_ood.json"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        aggregate(sweep, BASELINE)


def test_missing_base_split_raises_with_path(sweep):
    missing = sweep / "base" / "eval" / "id.json"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        aggregate(sweep, BASELINE)


def test_corrupt_json_raises_with_path(sweep):
    bad = _run_dir(sweep, "none", "rl", 2) / "eval" / "format_ood.json"
    bad.write_text('{"split": "format_ood", "success_rate": 0.')
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        aggregate(sweep, BASELINE)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"success_rate": None}, "success_rate"),
        ({"success_rate": 1.5}, "success_rate"),
        ({"split": "id"}, "is for split 'id'"),
        ({"cell": {"signal": "sft", "scheme": "rl", "lr": 0.0001, "seed": 0}}, "is for cell"),
    ],
)
def test_invalid_eval_content_raises_with_path(sweep, patch, message):
    path = _run_dir(sweep, "none", "rl", 0) / "eval" / "content_ood.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, **patch}))
    with pytest.raises(ValueError, match=message) as err:
        aggregate(sweep, BASELINE)
    assert str(path) in str(err.value)


def test_run_without_any_eval_is_skipped(sweep):
    (_run_dir(sweep, "sft", "rl", 7) / "eval").mkdir(parents=True)
    summary = aggregate(sweep, BASELINE, n_resamples=100)
    assert summary["groups"][2]["seeds"] == [0, 1, 2]


def test_no_runs_raises(tmp_path):
    with pytest.raises(ValueError, match="no evaluated runs"):
        aggregate(tmp_path, BASELINE)


# --------------------------------------------------------------------------- collapse, restoration, curves

# sft/rl: seed 0 collapses by losing `<tool_call>` at the first position, seed 2 by `<|im_end|>` right
# after `<tool_call>`; seed 1 and every none/rl seed stay healthy.
LOG_MODES = {("none", "rl"): [None, None, None], ("sft", "rl"): ["first", None, "end"]}
SFT_STEPS = {"none": 0, "sft": 5}  # sft/rl logs start with SFT rows, so RL steps are global (5..12)
RESTORED = {("none", "rl"): {"id": [0.60, 0.65, 0.70]}, ("sft", "rl"): {"id": [0.90, 0.95, 1.00]}}
BASE_RESTORED = {"id": 0.25}
# What each log mode's restoration probe forbade (written by the evaluate job from the train log).
SHOWN = {
    None: (None, []),
    "first": ("token", ["a call turn opens with text"]),
    "end": ("token", ["a call closed at once"]),
}


def _train_log(mode, sft_steps=0, n=8):
    """`n` RL steps at success 0.7; from the 5th on, a collapsed run succeeds 10% of the time and its
    probe has swung (detector, window 2: rolling success 0.1 <= 0.35 at the 6th RL step)."""
    rows = [{"phase": "sft", "step": i, "sft_loss": 1.0 / (i + 1)} for i in range(sft_steps)]
    for i in range(n):
        bad = mode is not None and i >= 4
        rows.append(
            {
                "phase": "rl",
                "step": sft_steps + i,
                "success": 0.1 if bad else 0.7,
                "reward": 0.1 if bad else 0.7,
                "p_tool_call/first": 0.02 if bad and mode == "first" else 0.95,
                "p_im_end/first": 0.01,
                "p_content/first": 0.04,
                "p_im_end/after_tool_call": 0.97 if bad and mode == "end" else 0.02,
                "state/text_pollution": 0.8 if bad else 0.05,
                "state/full_collapse": 0.1 if bad else 0.0,
                "format_error_rate": 0.9 if bad else 0.05,
            }
        )
    return rows


def _write_diagnostics(d: Path, modes=LOG_MODES, restored=RESTORED, base_restored=BASE_RESTORED) -> None:
    for (signal, scheme), per_seed in modes.items():
        for seed, mode in enumerate(per_seed):
            rows = _train_log(mode, SFT_STEPS[signal])
            path = _run_dir(d, signal, scheme, seed) / "train_log.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    targets = [
        (_run_dir(d, sig, sch, seed) / "eval" / f"{split}.json", rate, SHOWN[modes[sig, sch][seed]])
        for (sig, sch), by_split in restored.items()
        for split, values in by_split.items()
        for seed, rate in enumerate(values)
    ]
    targets += [(d / "base" / "eval" / f"{split}.json", rate, SHOWN[None]) for split, rate in base_restored.items()]
    for path, rate, (mode, patterns) in targets:
        doc = json.loads(path.read_text())
        doc["restored"] = {"success_rate": rate, "format_error_rate": 0.0, "n": doc["n"], "mode": mode}
        doc["restored"] |= {"patterns": patterns, "probed": bool(patterns)}
        path.write_text(json.dumps(doc))


def _diagnosed_sweep(d: Path) -> Path:
    _write_sweep(d)
    _write_diagnostics(d)
    return d


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory) -> tuple[Path, dict]:
    d = _diagnosed_sweep(tmp_path_factory.mktemp("diagnosed"))
    return d, aggregate(d, BASELINE, n_resamples=500)


def _header(md: str) -> list[str]:
    return [c.strip() for c in next(line for line in md.splitlines() if line.startswith("| ")).strip("|").split("|")]


def test_markdown_collapse_rate_and_restored_column(diagnosed):
    sweep, _ = diagnosed
    md = (sweep / "tables" / "main.md").read_text()
    header = _header(md)
    assert header[:8] == [
        "group", "n", "id", "format_ood", "content_ood", "id restored", "id restored by mode", "collapsed"
    ]  # fmt: skip
    assert "format_ood restored" not in header  # only probed splits get a column
    rows = {name: dict(zip(header, cells, strict=True)) for name, cells in _table_rows(md).items()}
    assert rows["sft/rl/lr=1e-4"]["collapsed"] == "2/3"
    assert rows["none/rl/lr=1e-4"]["collapsed"] == "0/3"
    assert rows["base"]["collapsed"] == "—"
    assert rows["sft/rl/lr=1e-4"]["id restored"].startswith("95.0 [")
    assert rows["none/rl/lr=1e-4"]["id restored"].startswith("65.0 [")
    assert rows["base"]["id restored"] == "25.0"
    plain = sum(
        json.loads((_run_dir(sweep, "sft", "rl", s) / "eval/id.json").read_text())["success_rate"] for s in (0, 2)
    )
    assert rows["sft/rl/lr=1e-4"]["id restored by mode"] == f"token 2: {50 * plain:.1f} → 95.0"
    assert rows["none/rl/lr=1e-4"]["id restored by mode"] == rows["base"]["id restored by mode"] == "—"
    assert rows["sft/rl/lr=1e-4"]["id"].startswith("85.0 [")  # the plain column is untouched
    assert rows["sft/rl/lr=1e-4"]["id p vs baseline"].startswith("p=")
    assert "restoration probe" in md and "2 RL steps" in md and "50% of its first-2-step mean" in md


def test_csv_collapse_and_restored(diagnosed):
    sweep, _ = diagnosed
    with open(sweep / "tables" / "main.csv", newline="") as f:
        by = {(r["group"], r["split"]): r for r in csv.DictReader(f)}
    sft_id = by[("sft/rl/lr=1e-4", "id")]
    assert float(sft_id["restored_mean"]) == pytest.approx(0.95)
    assert float(sft_id["restored_std"]) == pytest.approx(0.05)
    assert float(sft_id["restored_ci_low"]) <= 0.95 <= float(sft_id["restored_ci_high"])
    assert (sft_id["collapsed"], sft_id["collapse_rate"]) == ("2", "2/3")
    assert by[("sft/rl/lr=1e-4", "format_ood")]["restored_mean"] == ""
    assert by[("sft/rl/lr=1e-4", "format_ood")]["collapse_rate"] == "2/3"
    assert by[("none/rl/lr=1e-4", "id")]["collapsed"] == "0"
    assert float(by[("base", "id")]["restored_mean"]) == pytest.approx(0.25)
    assert by[("base", "id")]["collapsed"] == "" and by[("base", "id")]["collapse_rate"] == ""


def test_tex_collapse_and_restored(diagnosed):
    sweep, _ = diagnosed
    tex = (sweep / "tables" / "main.tex").read_text()
    assert r"id restored & Collapsed \\" in tex
    sft = next(line for line in tex.splitlines() if line.startswith(r"sft/rl/lr=1e-4 &"))
    assert sft.endswith(r"& 2/3 \\") and r"\textbf{95.0} {\scriptsize [" in sft
    base = next(line for line in tex.splitlines() if line.startswith("base &"))
    assert base.endswith(r"25.0 & -- \\")
    assert r"\textless{}split\textgreater{} restored" in tex


def test_summary_collapse_per_seed_and_restored(diagnosed):
    sweep, summary = diagnosed
    loaded = json.loads((sweep / "summary.json").read_text())
    assert loaded == json.loads(json.dumps(summary))
    assert loaded["restored_splits"] == ["id"]
    assert loaded["diagnostics"] == {"window": 2, "reward_drop": 0.5, "token_shift": 0.3, "pollution_rise": 0.3}
    groups = {g["name"]: g for g in loaded["groups"]}
    sft = groups["sft/rl/lr=1e-4"]["collapse"]
    assert (sft["collapsed"], sft["runs"]) == (2, 3)
    per_seed = {p["seed"]: p for p in sft["per_seed"]}
    # The 6th RL step, after 5 SFT steps: the global step counter includes SFT.
    assert [per_seed[s]["step"] for s in (0, 1, 2)] == [10, None, 10]
    assert per_seed[0]["probe"] == "p_tool_call/first" and per_seed[0]["shift"] == pytest.approx(-0.93)
    assert per_seed[2]["probe"] == "p_im_end/after_tool_call" and per_seed[2]["shift"] == pytest.approx(0.95)
    assert per_seed[1]["collapsed"] is False and per_seed[0]["baseline_success"] == pytest.approx(0.7)
    assert [per_seed[s]["mode"] for s in (0, 1, 2)] == ["token", None, "token"] and sft["content"] == 0
    assert groups["none/rl/lr=1e-4"]["collapse"]["collapsed"] == 0
    assert groups["base"]["collapse"] is None
    restored = groups["sft/rl/lr=1e-4"]["restored"]
    assert list(restored) == ["id"] and restored["id"]["values"] == [0.90, 0.95, 1.00]
    assert restored["id"]["mean"] == pytest.approx(0.95)
    token = restored["id"]["by_mode"]["token"]
    assert token["seeds"] == [0, 2] and token["restored"] == pytest.approx(0.95)
    assert token["patterns"] == ["a call closed at once", "a call turn opens with text"]
    assert list(restored["id"]["by_mode"]) == ["token"] and groups["base"]["restored"]["id"]["by_mode"] == {}
    assert groups["base"]["restored"]["id"]["mean"] == 0.25 and groups["base"]["restored"]["id"]["n"] == 1


def _color_pixels(png: Path, rgb: tuple[float, float, float]) -> int:
    from matplotlib.image import imread

    img = imread(png)[..., :3]
    return int((abs(img - rgb) < 0.04).all(axis=-1).sum())


C0, C1 = (0.122, 0.467, 0.706), (1.0, 0.498, 0.055)  # matplotlib's first two cycle colours


def test_curves_png_draws_every_group(diagnosed, aggregated):
    sweep, _ = diagnosed
    png = sweep / "plots" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # One line (and band) per group, in the cycle's colours: none/rl first, then sft/rl.
    assert _color_pixels(png, C0) > 500 and _color_pixels(png, C1) > 500
    # Without train logs the figure is written (Snakemake declares it) but has no group on it.
    empty = aggregated[0] / "plots" / "curves.png"
    assert empty.stat().st_size > 1000 and _color_pixels(empty, C0) == 0 and _color_pixels(empty, C1) == 0


def test_detector_thresholds_are_passed_through(tmp_path):
    from toolrl.config import DiagnosticsConfig

    sweep = _diagnosed_sweep(tmp_path)
    strict = aggregate(
        sweep, BASELINE, n_resamples=100, diagnostics=DiagnosticsConfig(token_shift=0.99, pollution_rise=1.0)
    )
    assert strict["diagnostics"]["token_shift"] == 0.99
    assert [g["collapse"]["collapsed"] for g in strict["groups"][1:]] == [0, 0]
    assert (
        "0/3" in (sweep / "tables" / "main.md").read_text() and "2/3" not in (sweep / "tables" / "main.md").read_text()
    )
    # No token shift counts, but the collapsed runs' messages turned to pollution (0.05 → 0.9):
    # the second detector calls them content collapses.
    content = aggregate(sweep, BASELINE, n_resamples=100, diagnostics=DiagnosticsConfig(token_shift=0.99))
    sft = content["groups"][2]["collapse"]
    assert (sft["collapsed"], sft["content"]) == (2, 2)
    assert "2/3 (2 content)" in (sweep / "tables" / "main.md").read_text()
    # A window as long as the run leaves no step to judge.
    assert (
        aggregate(sweep, BASELINE, n_resamples=100, diagnostics=DiagnosticsConfig(window=8))["groups"][2]["collapse"][
            "collapsed"
        ]
        == 0
    )


def test_cmd_aggregate_reads_diagnostics_from_config(tmp_path):
    from toolrl.cli import main

    sweep = _diagnosed_sweep(tmp_path / "results" / "s")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"results_dir: {tmp_path / 'results'}\n"
        "sweep: {name: s, signals: [none], schemes: [rl], learning_rates: [1.0e-4]}\n"
        "aggregate: {n_resamples: 100}\ndiagnostics: {window: 3, reward_drop: 0.8, token_shift: 0.5}\n"
    )
    from toolrl import tracking

    exp = tmp_path / "experiment.json"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp_id = tracking.init_store(uri, "t", tmp_path / "artifacts", exp)
    run_ids = {}
    for info in [sweep / "base" / "warmup.json"] + [p.parent / "run.json" for p in (sweep / "runs").rglob("eval")]:
        with tracking.RunLogger(uri, exp_id, info.parent.name, {}, {}) as run:
            run_ids[info.parent] = run.run_id
        info.write_text(json.dumps({"mlflow_run_id": run.run_id}))
    assert main(["aggregate", "--config", str(cfg), "--experiment", str(exp)]) == 0
    # Every evaluation of the grid's runs reached its run in MLflow, the restoration probe included;
    # the sft directories lie outside this config's grid and are left alone.
    client = tracking.MlflowClient(uri)
    for run_dir, run_id in run_ids.items():
        metrics = client.get_run(run_id).data.metrics
        if "signal=sft" in run_dir.as_posix():
            assert not metrics
            continue
        want = json.loads((run_dir / "eval" / "id.json").read_text())["success_rate"]
        assert metrics["id/success"] == want and "content_ood/success" in metrics
        assert "id/restored_success" in metrics
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["diagnostics"] == {"window": 3, "reward_drop": 0.8, "token_shift": 0.5, "pollution_rise": 0.3}
    sft = next(g for g in summary["groups"] if g["name"] == "sft/rl/lr=1e-4")["collapse"]
    # window 3: rolling success (0.7 + 0.1 + 0.1)/3 = 0.3 > 0.2 × 0.7, so it fires one step later.
    assert sft["collapsed"] == 2 and [p["step"] for p in sft["per_seed"]] == [11, None, 11]
    assert (sweep / "plots" / "curves.png").exists()


def test_run_without_train_log_counts_over_logged_runs(tmp_path):
    sweep = _diagnosed_sweep(tmp_path)
    (_run_dir(sweep, "sft", "rl", 2) / "train_log.jsonl").unlink()
    summary = aggregate(sweep, BASELINE, n_resamples=100)
    sft = summary["groups"][2]["collapse"]
    assert (sft["collapsed"], sft["runs"]) == (1, 2)
    assert sft["per_seed"][2] == {"seed": 2, "collapsed": None, "step": None}
    assert _table_rows((sweep / "tables" / "main.md").read_text())["sft/rl/lr=1e-4"][7] == "1/2"


def test_unjudgeable_train_log_raises_with_path(tmp_path):
    sweep = _diagnosed_sweep(tmp_path)
    path = _run_dir(sweep, "none", "rl", 1) / "train_log.jsonl"
    path.write_text(json.dumps({"phase": "sft", "step": 0, "sft_loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no RL rows") as err:
        aggregate(sweep, BASELINE, n_resamples=100)
    assert str(path) in str(err.value)


def test_restored_on_some_seeds_only_raises(tmp_path):
    sweep = _diagnosed_sweep(tmp_path)
    path = _run_dir(sweep, "sft", "rl", 1) / "eval" / "id.json"
    doc = json.loads(path.read_text())
    del doc["restored"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"sft/rl/lr=1e-4: split id .* seeds \[1\]"):
        aggregate(sweep, BASELINE, n_resamples=100)


def test_invalid_restored_raises_with_path(tmp_path):
    sweep = _diagnosed_sweep(tmp_path)
    path = _run_dir(sweep, "none", "rl", 0) / "eval" / "id.json"
    doc = json.loads(path.read_text())
    doc["restored"] = {"success_rate": 2.0}
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"restored\.success_rate") as err:
        aggregate(sweep, BASELINE, n_resamples=100)
    assert str(path) in str(err.value)


def test_category_table_per_split_with_average(sweep):
    """Tasks 0–31 are category `a`, 32–63 `b`; success is `i < k`, so a run at rate r has
    a = min(1, 2r) and b = max(0, 2r − 1): e.g. sft's id seeds 0.80/0.85/0.90 give b ≈ 0.6/0.7/0.8."""
    for path in sweep.rglob("eval/*.json"):
        doc = json.loads(path.read_text())
        for i, t in enumerate(doc["tasks"]):
            t["domain"] = "a" if i < 32 else "b"
        path.write_text(json.dumps(doc))
    aggregate(sweep, BASELINE, n_resamples=100)
    rows = {
        (r["group"], r["split"], r["category"]): r for r in csv.DictReader((sweep / "tables" / "categories.csv").open())
    }
    sft = [0.80, 0.85, 0.90]
    b = [(round(r * 64) - 32) / 32 for r in sft]
    got = rows[("sft/rl/lr=1e-4", "id", "b")]
    assert float(got["mean"]) == pytest.approx(sum(b) / 3) and float(got["min"]) == pytest.approx(min(b))
    assert float(rows[("sft/rl/lr=1e-4", "id", "a")]["mean"]) == 1.0
    avg = rows[("sft/rl/lr=1e-4", "id", "average")]
    assert float(avg["mean"]) == pytest.approx((1.0 + sum(b) / 3) / 2) and avg["n"] == "3"
    assert rows[("base", "id", "average")]["n"] == "1"
    md = (sweep / "tables" / "categories.md").read_text()
    assert "| group | a | b | average |" in md and "**content_ood**" in md


# --------------------------------------------------------------------------- categories, effects, paper tables, figures


def _with_categories(sweep: Path) -> None:
    """Tasks 0–31 are category `a`, 32–63 `b` (see test_category_table_per_split_with_average)."""
    for path in sweep.rglob("eval/*.json"):
        doc = json.loads(path.read_text())
        for i, t in enumerate(doc["tasks"]):
            t["domain"] = "a" if i < 32 else "b"
        path.write_text(json.dumps(doc))


def test_profiles_and_effects_read_seed_by_category_scores(sweep):
    """Categories change the profiles' input, not the per-seed rates the statistics use."""
    plain = aggregate(sweep, BASELINE, n_resamples=200)
    _with_categories(sweep)
    summary = aggregate(sweep, BASELINE, n_resamples=200)
    assert [g["splits"] for g in summary["groups"]] == [g["splits"] for g in plain["groups"]]
    comp = {g["name"]: g for g in summary["groups"]}["sft/rl/lr=1e-4"]["comparison"]["baseline"]["id"]
    assert comp["hedges_g"] == pytest.approx(4.8)  # 0.85±0.05 vs 0.55±0.05: d = 6, J = 0.8
    assert (sweep / "plots" / "profiles.png").stat().st_size > 1000


def test_effects_table(aggregated):
    sweep, _ = aggregated
    md = (sweep / "tables" / "effects.md").read_text()
    id_part = md.split("**id**")[1].split("**format_ood**")[0]
    rows = _table_rows(id_part)
    sft = rows["sft/rl/lr=1e-4"]
    main = _table_rows((sweep / "tables" / "main.md").read_text())
    assert sft[1] == "3" and sft[2] == main["sft/rl/lr=1e-4"][2]  # the same mean and interval as main.md
    assert re.fullmatch(r"\+30\.0 \[\+\d+\.\d, \+\d+\.\d\]", sft[3])  # the interval excludes 0
    # 30 points with spreads of 5: power is no constraint at 4 seeds, where 2/70 clears 0.05 / 1.
    assert sft[4] == "+4.80" and sft[5] == "p=0.1" and sft[6] == "4"
    # Against base (2 groups, level 0.025): 2/2^7 clears it.
    assert sft[7].startswith("+72.5 [") and sft[8] == "p=0.5" and sft[9] == "7"
    assert rows["none/rl/lr=1e-4"][3:7] == ["—"] * 4 and rows["none/rl/lr=1e-4"][7].startswith("+42.5 [")
    assert rows["base"][3:] == ["—"] * 7
    fmt = _table_rows(md.split("**format_ood**")[1].split("**content_ood**")[0])
    assert fmt["sft/rl/lr=1e-4"][4] == "n/a (baseline constant)" and fmt["sft/rl/lr=1e-4"][6] == "—"
    assert "**Degenerate reference:** the baseline `none/rl/lr=1e-4` on format_ood (constant)" in md
    assert "**Underpowered**" in md and "`sft/rl/lr=1e-4` (n=3) vs base" in md


def _grid_sweep(d: Path) -> None:
    """Two schemes × two learning rates for `sft`, one cell for `none`: the pivots' shape."""
    rates = {"id": [0.5, 0.6, 0.7], "format_ood": [0.1, 0.2, 0.3], "content_ood": [0.2, 0.2, 0.4]}
    for signal, scheme, lr, bump in [
        ("none", "rl", 1e-4, 0.0),
        ("sft", "rl", 1e-4, 0.1),
        ("sft", "rl", 1e-3, -0.3),
        ("sft", "synchronous", 1e-4, 0.2),
    ]:
        lr_dir = f"{lr:.0e}".replace("e-0", "e-")
        for split, values in rates.items():
            for seed, rate in enumerate(values):
                cell = {"signal": signal, "scheme": scheme, "lr": lr, "seed": seed}
                path = _run_dir(d, signal, scheme, seed, lr_dir) / "eval" / f"{split}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(_eval_doc(cell, split, max(0.0, rate + bump))))


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("grid")
    _grid_sweep(d)
    return d, aggregate(d, BASELINE, n_resamples=200, correction="bh", paper="hao2026-qwen2.5-1.5b")


def test_schemes_table_pivots_schemes_into_columns(grid):
    sweep, _ = grid
    md = (sweep / "tables" / "schemes.md").read_text()
    id_rows = [r for r in md.split("**id**")[1].split("**format_ood**")[0].splitlines() if r.startswith("| ")]
    assert id_rows[0] == "| signal | lr | rl | synchronous |"
    cells = {
        tuple(c.strip() for c in r.strip("|").split("|")[:2]): [c.strip() for c in r.strip("|").split("|")[2:]]
        for r in id_rows[1:]
    }
    assert [c.split(" [")[0] for c in cells[("sft", "1e-4")]] == ["70.0", "80.0"]
    assert cells[("sft", "1e-3")][1] == "—" and cells[("none", "1e-4")][1] == "—"
    rows = list(csv.DictReader((sweep / "tables" / "schemes.csv").open()))
    sft = next(r for r in rows if r["signal"] == "sft" and r["lr"] == "0.0001")
    assert float(sft["id synchronous"]) == pytest.approx(0.8) and sft["id synchronous n"] == "3"
    assert float(sft["id synchronous ci_low"]) <= 0.8 <= float(sft["id synchronous ci_high"])


def test_lr_table_pivots_learning_rates_with_collapse(grid):
    sweep, _ = grid
    md = (sweep / "tables" / "lr.md").read_text()
    assert "| signal | scheme | 1e-4 | 1e-3 |" in md  # columns in increasing learning rate
    rows = [
        [c.strip() for c in r.strip("|").split("|")]
        for r in md.split("**id**")[1].split("**format_ood**")[0].splitlines()
        if r.startswith("| ")
    ][1:]
    by = {(r[0], r[1]): [c.split(" [")[0] for c in r[2:]] for r in rows}
    assert by[("sft", "rl")] == ["70.0", "30.0"]  # 0.5…0.7 shifted by +0.1 and −0.3
    assert by[("sft", "synchronous")] == ["80.0", "—"] and by[("none", "rl")] == ["60.0", "—"]
    collapsed = md.split("**collapsed**")[1]
    assert "| sft | rl | n/a | n/a |" in collapsed  # no training logs in this sweep


@pytest.mark.parametrize("name", ["main", "schemes", "lr"])
def test_latex_tables_are_balanced_booktabs(grid, name):
    sweep, _ = grid
    tex = (sweep / "tables" / f"{name}.tex").read_text()
    assert tex.startswith(r"\begin{table}") and tex.rstrip().endswith(r"\end{table}")
    assert tex.count("{") == tex.count("}") and r"\toprule" in tex and r"\bottomrule" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    header = tex.split(r"\toprule")[1].split(r"\midrule")[0].strip().splitlines()[-1]
    n_cols = header.count("&") + 1
    assert all(line.count("&") + 1 == n_cols for line in body.strip().splitlines())
    assert r"\textbf{" in body and r"{\scriptsize [" in body


def test_pivot_latex_bolds_the_best_per_column(grid):
    sweep, _ = grid
    tex = (sweep / "tables" / "schemes.tex").read_text()
    assert r"\multicolumn{2}{c}{id}" in tex and r"\cmidrule(lr){3-4}" in tex
    sft = next(line for line in tex.splitlines() if line.startswith("sft & 1e-4"))
    assert sft.split(" & ")[2].startswith(r"\textbf{70.0}") and sft.split(" & ")[3].startswith(r"\textbf{80.0}")


def test_paper_numbers_sit_beside_ours(grid):
    sweep, summary = grid
    md = (sweep / "tables" / "main.md").read_text()
    rows = _table_rows(md)
    assert rows["none/rl/lr=1e-4"][-1] == "3.50"
    assert rows["sft/rl/lr=1e-4"][-1] == "—"
    assert "Hao et al. (2026)" in md
    assert r"Paper" in (sweep / "tables" / "main.tex").read_text()
    none_id = next(
        r
        for r in csv.DictReader((sweep / "tables" / "main.csv").open())
        if r["group"] == "none/rl/lr=1e-4" and r["split"] == "id"
    )
    assert none_id["paper"] == "3.5"
    paper = {g["name"]: g["paper"] for g in summary["groups"]}
    assert paper["none/rl/lr=1e-4"] == {
        "recipe": "vanilla RL (GRPO)",
        "score": 3.5,
        "split": "id",
        "source": "BFCL-V3 multi-turn average, Qwen2.5-1.5B-Instruct",
    }
    assert paper["sft/synchronous/lr=1e-4"] is None


def test_benjamini_hochberg_correction_applies(grid):
    _, summary = grid
    from toolrl.analysis.stats import benjamini_hochberg

    compared = [g for g in summary["groups"] if g["comparison"]["baseline"]]
    raw = [g["comparison"]["baseline"]["id"]["p"] for g in compared]
    assert [g["comparison"]["baseline"]["id"]["p_adj"] for g in compared] == pytest.approx(benjamini_hochberg(raw))
    assert "Benjamini–Hochberg-corrected" in (grid[0] / "tables" / "main.md").read_text()


def test_unknown_paper_reference_raises(sweep):
    with pytest.raises(ValueError, match="unknown paper reference 'hao2099'"):
        aggregate(sweep, BASELINE, paper="hao2099")


@pytest.mark.parametrize("name", ["success", "curves", "lr", "profiles"])
def test_every_figure_in_png_and_pdf(grid, name):
    sweep, _ = grid
    assert (sweep / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep / "plots" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_single_seed_groups_get_no_test_and_no_interval(tmp_path):
    """One evaluated seed: the group is listed and warned about, with n/a where a spread is needed;
    a one-seed baseline is not mistaken for the fixed base model."""
    rates = dict(RATES)
    rates[("sft", "sequential")] = {"id": [0.7], "format_ood": [0.4], "content_ood": [0.2]}
    _write_sweep(tmp_path, rates)
    summary = aggregate(tmp_path, BASELINE, n_resamples=100)
    one = {g["name"]: g for g in summary["groups"]}["sft/sequential/lr=1e-4"]
    assert one["splits"]["id"]["ci_low"] is None
    for ref in ("baseline", "base"):
        c = one["comparison"][ref]["id"]
        assert c["p"] is None and c["p_adj"] is None and c["ci_low"] is None and c["seeds_needed"] is None
    # The other group's correction counts only the comparisons that have a p.
    other = {g["name"]: g for g in summary["groups"]}["sft/rl/lr=1e-4"]["comparison"]["baseline"]["id"]
    assert other["p_adj"] == pytest.approx(other["p"])
    rows = _table_rows((tmp_path / "tables" / "main.md").read_text())
    assert rows["sft/sequential/lr=1e-4"][2] == "70.0" and "n/a" in rows["sft/sequential/lr=1e-4"]
    single_base = aggregate(tmp_path, {"signal": "sft", "scheme": "sequential"}, n_resamples=100)
    c = {g["name"]: g for g in single_base["groups"]}["sft/rl/lr=1e-4"]["comparison"]["baseline"]["id"]
    assert c["p"] is None and c["ci_low"] is None
