from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from toolrl.report import aggregate

SPLITS = ("id", "format_ood", "content_ood")
BASELINE = {"signal": "none", "scheme": "rl", "lr": None, "seed": None}

# Per-seed success rates: `sft` beats the baseline in distribution and is tied with it on
# format_ood (every seed at 0.5), where Welch is undefined.
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
            {"task_id": f"{split}-{i:04d}", "success": i < k, "turns": 1, "turns_completed": 1,
             "format_errors": 0, "messages": 3}
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
    sweep, summary = aggregated
    md = (sweep / "tables" / "main.md").read_text()
    rows = _table_rows(md)
    assert list(rows) == ["base", "none/rl/lr=1e-4", "sft/rl/lr=1e-4"]
    header = [c.strip() for c in next(l for l in md.splitlines() if l.startswith("| ")).strip("|").split("|")]
    assert header[:5] == ["group", "n", "id", "format_ood", "content_ood"]
    assert rows["base"][1] == "1" and rows["sft/rl/lr=1e-4"][1] == "3"
    # id column: mean 85.0 with a CI in brackets; base has no CI.
    assert rows["sft/rl/lr=1e-4"][2].startswith("85.0 [")
    assert rows["base"][2] == "12.5"
    # p-value columns: dashes for base and baseline, n/a where Welch is undefined (format_ood).
    assert set(rows["base"][5:]) == {"—"} and set(rows["none/rl/lr=1e-4"][5:]) == {"—"}
    p_cells = dict(zip(header[5:], rows["sft/rl/lr=1e-4"][5:]))
    assert p_cells["format_ood Welch"] == "n/a"
    assert p_cells["id Welch"].startswith("p=")
    assert "none/rl/lr=1e-4" in md.split("|")[0]  # caption names the baseline
    assert "Holm" in md and "Warning" not in md


def test_csv_rows_and_values(aggregated):
    sweep, summary = aggregated
    with open(sweep / "tables" / "main.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(SPLITS)
    assert {(r["group"], r["split"]) for r in rows} == {
        (g, s) for g in ("base", "none/rl/lr=1e-4", "sft/rl/lr=1e-4") for s in SPLITS
    }
    for r in rows:
        low, mean, high = float(r["ci_low"]), float(r["mean"]), float(r["ci_high"])
        assert math.isfinite(low) and math.isfinite(high)
        assert 0.0 <= low <= mean <= high <= 1.0
    by = {(r["group"], r["split"]): r for r in rows}
    sft_id = by[("sft/rl/lr=1e-4", "id")]
    assert float(sft_id["mean"]) == pytest.approx(0.85)
    assert float(sft_id["std"]) == pytest.approx(0.05)
    assert (sft_id["signal"], sft_id["scheme"], float(sft_id["lr"]), sft_id["n"]) == ("sft", "rl", 1e-4, "3")
    # Welch 0.85±0.05 vs 0.55±0.05, n=3 each: t = 7.35, df = 4.
    assert float(sft_id["welch_p"]) == pytest.approx(0.00183, rel=0.01)
    # One comparison per split, so Holm leaves it unchanged.
    assert float(sft_id["welch_p_adj"]) == pytest.approx(float(sft_id["welch_p"]))
    assert by[("sft/rl/lr=1e-4", "format_ood")]["welch_p"] == ""
    assert by[("none/rl/lr=1e-4", "id")]["welch_p"] == "" and by[("base", "id")]["mwu_p"] == ""
    assert by[("base", "id")]["signal"] == "" and by[("base", "id")]["n"] == "1"


def test_tex_is_booktabs_with_bold_best(aggregated):
    sweep, summary = aggregated
    tex = (sweep / "tables" / "main.tex").read_text()
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert cmd in tex
    assert r"\textbf{85.0} $\pm$" in tex  # best on id is sft
    assert r"format\_ood" in tex and "format_ood" not in tex.replace(r"format\_ood", "")
    assert tex.count(r"\textbf") == 4  # sft on id and content_ood; none and sft tied at 50.0 on format_ood
    assert "55.0 $\\pm$" in tex


def test_png_written(aggregated):
    sweep, summary = aggregated
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
    assert groups["sft/rl/lr=1e-4"]["comparison"]["format_ood"]["welch_p"] is None
    assert groups["none/rl/lr=1e-4"]["comparison"] is None and groups["base"]["comparison"] is None
    assert not list(sweep.rglob("*.tmp"))


def test_holm_across_groups_and_few_seed_warning(tmp_path):
    rates = dict(RATES)
    rates[("sft", "sequential")] = {"id": [0.6, 0.7], "format_ood": [0.4, 0.6], "content_ood": [0.1, 0.2]}
    _write_sweep(tmp_path, rates, base=False)
    summary = aggregate(tmp_path, {"signal": "none"}, n_resamples=200)
    names = [g["name"] for g in summary["groups"]]
    assert names == ["none/rl/lr=1e-4", "sft/rl/lr=1e-4", "sft/sequential/lr=1e-4"]
    comps = [g["comparison"]["id"] for g in summary["groups"][1:]]
    raw = sorted(c["welch_p"] for c in comps)
    adj = sorted(c["welch_p_adj"] for c in comps)
    assert adj == pytest.approx([2 * raw[0], max(2 * raw[0], raw[1])])
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "Warning" in md and "`sft/sequential/lr=1e-4` (n=2)" in md


def test_uncorrected_and_unknown_correction(sweep):
    raw = aggregate(sweep, BASELINE, n_resamples=100, correction="none")
    comp = raw["groups"][2]["comparison"]["id"]
    assert comp["welch_p_adj"] == comp["welch_p"]
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
