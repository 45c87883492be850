"""The aggregation stage: per-seed evaluation JSON → tables (Markdown, CSV, LaTeX), a plot, a summary.

The seed is the unit of replication: tasks within one run share its weights, so they are not
independent evidence about a training recipe. Each run's `success_rate` (already the mean over its
tasks) is one observation, and statistics go over seeds. Every output is written atomically, so a
Snakemake job killed half-way never leaves a truncated table that looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from toolrl.config import SPLITS, Cell, CellFilter, parse_cell
from toolrl.io import read_json, write_bytes, write_text
from toolrl.stats import CORRECTIONS, adjust, compare, summarize

log = logging.getLogger(__name__)

BASE = "base"
MIN_SEEDS = 3
TESTS = ("welch", "mwu")
_TEST_NAMES = {"welch": "Welch", "mwu": "MWU"}


@dataclass
class Group:
    """The runs of one (signal, scheme, lr) — or the warm-up base model every cell starts from — with their rates."""

    name: str
    cells: list[Cell]  # one per seed, by seed; empty for the base model
    rates: dict[str, list[float]]  # split → one success rate per seed, in `cells` order


# --------------------------------------------------------------------------- reading


def _read_eval(path: Path, split: str, cell: Optional[Cell]) -> float:
    """One run's success rate, checked against where the file lies so a misplaced copy fails here."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"corrupt evaluation file {path}: expected a JSON object")
    if doc.get("split") != split:
        raise ValueError(f"evaluation file {path} is for split {doc.get('split')!r}, expected {split!r}")
    if cell is not None and isinstance(doc.get("cell"), dict):
        try:
            claimed = parse_cell(*(str(doc["cell"][k]) for k in ("signal", "scheme", "lr", "seed")))
        except (KeyError, ValueError) as e:
            raise ValueError(f"evaluation file {path} has a malformed 'cell': {e}") from None
        if not claimed.matches(CellFilter(**vars(cell))):
            raise ValueError(f"evaluation file {path} is for cell {claimed.path}, not {cell.path}")
    rate = doc.get("success_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"evaluation file {path}: 'success_rate' must be a number in [0, 1], got {rate!r}")
    return float(rate)


def _read_run(eval_dir: Path, splits: Sequence[str], cell: Optional[Cell]) -> Optional[dict[str, float]]:
    """All splits of one run, or None for a run with no evaluation at all (not run, or stale).

    A run with some splits but not others is an error, not a skip: silently dropping that seed
    from one split would compare splits over different seeds.
    """
    if not any((eval_dir / f"{s}.json").exists() for s in splits):
        return None
    return {s: _read_eval(eval_dir / f"{s}.json", s, cell) for s in splits}


def _load_groups(sweep_dir: Path, splits: Sequence[str]) -> tuple[Optional[Group], list[Group]]:
    """The base model (if evaluated) and the trained groups, sorted by (signal, scheme, lr)."""
    runs: dict[tuple[str, str, float], list[tuple[Cell, dict[str, float]]]] = {}
    for run_dir in sorted((sweep_dir / "runs").glob("signal=*/scheme=*/lr=*/seed=*")):
        if not run_dir.is_dir():
            continue
        wildcards = [part.split("=", 1)[1] for part in run_dir.parts[-4:]]
        try:
            cell = parse_cell(*wildcards)
        except ValueError:
            raise ValueError(f"cannot parse the cell of run directory {run_dir}") from None
        rates = _read_run(run_dir / "eval", splits, cell)
        if rates is None:
            log.warning("skipping %s: no evaluation files", run_dir)
            continue
        runs.setdefault((cell.signal, cell.scheme, cell.lr), []).append((cell, rates))
    groups = []
    for key in sorted(runs):
        members = sorted(runs[key], key=lambda cr: cr[0].seed)
        groups.append(
            Group(
                name=members[0][0].group,
                cells=[c for c, _ in members],
                rates={s: [r[s] for _, r in members] for s in splits},
            )
        )
    base_rates = _read_run(sweep_dir / BASE / "eval", splits, None)
    base = None if base_rates is None else Group(BASE, [], {s: [base_rates[s]] for s in splits})
    return base, groups


def _find_baseline(groups: Sequence[Group], baseline: Union[Mapping[str, Any], CellFilter]) -> Group:
    """Match runs, not group names, so the filter means what the config's exclude filters mean
    (an lr written 0.0001 or 1e-4, even a seed) and a typo in a key fails instead of matching all."""
    if not isinstance(baseline, CellFilter):
        allowed = {f.name for f in fields(CellFilter)}
        unknown = set(baseline) - allowed
        if unknown:
            raise ValueError(f"baseline has unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
        baseline = CellFilter(**baseline)
    for g in groups:
        if any(c.matches(baseline) for c in g.cells):
            return g
    raise ValueError(f"baseline {vars(baseline)} matches none of the groups: {[g.name for g in groups]}")


# --------------------------------------------------------------------------- statistics


def _compare_all(
    others: Sequence[Group], ref: Group, splits: Sequence[str], correction: str
) -> dict[str, dict[str, dict[str, Optional[float]]]]:
    """group → split → raw and adjusted p-values.

    The family for the correction is one split and one test across the groups, because each split
    answers its own question (in-distribution vs. OOD) and a reader reads each test on its own.
    """
    out: dict[str, dict[str, dict[str, Optional[float]]]] = {
        g.name: {s: compare(g.rates[s], ref.rates[s]) for s in splits} for g in others
    }
    for s in splits:
        for test in TESTS:
            adjusted = adjust([out[g.name][s][f"{test}_p"] for g in others], correction)
            for g, q in zip(others, adjusted):
                out[g.name][s][f"{test}_p_adj"] = q
    return out


def _group_record(
    g: Group, splits: Sequence[str], stats: dict[str, dict[str, Any]], comparison: Optional[dict[str, Any]]
) -> dict[str, Any]:
    first = g.cells[0] if g.cells else None
    return {
        "name": g.name,
        "signal": first.signal if first else None,
        "scheme": first.scheme if first else None,
        "lr": first.lr if first else None,
        "seeds": [c.seed for c in g.cells],
        "n": len(g.rates[splits[0]]),
        "splits": {s: {**stats[s], "values": g.rates[s]} for s in splits},
        "comparison": comparison,
    }


# --------------------------------------------------------------------------- formatting


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _fmt_p(p: Optional[float]) -> str:
    return "n/a" if p is None else f"p={p:.3g}"


def _correction_words(correction: str) -> str:
    return {"holm": "Holm-corrected", "bonferroni": "Bonferroni-corrected", "none": "uncorrected"}[correction]


def _few_seed_groups(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Trained groups below MIN_SEEDS; the base model has one evaluation by design, so it is exempt."""
    return [g for g in summary["groups"] if g["name"] != BASE and g["n"] < MIN_SEEDS]


def _markdown(summary: dict[str, Any]) -> str:
    splits, groups = summary["splits"], summary["groups"]
    n_compared = sum(g["comparison"] is not None for g in groups)
    caption = (
        f"Task success (%) per split: the mean over seeds of each run's success rate, with a "
        f"{100 * summary['confidence']:g}% percentile-bootstrap CI over seeds "
        f"({summary['n_resamples']} resamples) in brackets. p-values are two-sided Welch t-tests and "
        f"Mann–Whitney U tests of each group against the baseline `{summary['baseline']}` over seeds, "
        f"{_correction_words(summary['correction'])} per split and per test across the {n_compared} "
        f"compared groups. `{BASE}` is the warm-up (SFT) model every cell starts from, before any RL (one evaluation, no CI)."
    )
    header = ["group", "n"] + list(splits) + [f"{s} {_TEST_NAMES[t]}" for s in splits for t in TESTS]
    rows = []
    for g in groups:
        cells = [g["name"], str(g["n"])]
        for s in splits:
            st = g["splits"][s]
            ci = "" if g["n"] == 1 else f" [{_pct(st['ci_low'])}, {_pct(st['ci_high'])}]"
            cells.append(_pct(st["mean"]) + ci)
        for s in splits:
            for t in TESTS:
                cells.append("—" if g["comparison"] is None else _fmt_p(g["comparison"][s][f"{t}_p_adj"]))
        rows.append(cells)
    lines = [caption, ""]
    few = _few_seed_groups(summary)
    if few:
        names = ", ".join(f"`{g['name']}` (n={g['n']})" for g in few)
        lines += [f"**Warning:** fewer than {MIN_SEEDS} seeds, so CIs and p-values are unreliable: {names}.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(summary: dict[str, Any]) -> str:
    columns = ["group", "signal", "scheme", "lr", "split", "n", "mean", "std", "ci_low", "ci_high",
               "welch_p", "mwu_p", "welch_p_adj", "mwu_p_adj"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for g in summary["groups"]:
        for s in summary["splits"]:
            st = g["splits"][s]
            comp = (g["comparison"] or {}).get(s, {})
            row = {"group": g["name"], "signal": g["signal"], "scheme": g["scheme"], "lr": g["lr"],
                   "split": s, "n": g["n"], **{k: st[k] for k in ("mean", "std", "ci_low", "ci_high")},
                   **{k: comp.get(k) for k in columns[-4:]}}
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def _latex(summary: dict[str, Any]) -> str:
    """A booktabs table for the paper: mean ± CI half-width, the best mean per split in bold.

    ± half-width is the conventional compact form; the exact (asymmetric) bounds are in the CSV.
    """
    splits, groups = summary["splits"], summary["groups"]
    best = {s: max(round(100 * g["splits"][s]["mean"], 1) for g in groups) for s in splits}
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l r " + "r " * len(splits) + "}",
        r"\toprule",
        " & ".join(["Group", "$n$"] + [_tex_escape(s) for s in splits]) + r" \\",
        r"\midrule",
    ]
    for g in groups:
        cells = [_tex_escape(g["name"]), str(g["n"])]
        for s in splits:
            st = g["splits"][s]
            value = _pct(st["mean"])
            if round(100 * st["mean"], 1) == best[s]:
                value = rf"\textbf{{{value}}}"
            if g["n"] > 1:
                value += rf" $\pm$ {_pct((st['ci_high'] - st['ci_low']) / 2)}"
            cells.append(value)
        lines.append(" & ".join(cells) + r" \\")
    caption = (
        f"Task success (\\%), mean over seeds $\\pm$ half-width of the {100 * summary['confidence']:g}\\% "
        f"percentile-bootstrap CI; best per split in bold. Baseline: {_tex_escape(summary['baseline'])}."
    )
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:main}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any]) -> bytes:
    """A grouped bar chart as PNG bytes; drawn on an explicit Agg canvas so that importing this
    module never switches the process-wide pyplot backend (Snakemake jobs have no display)."""
    splits, groups = summary["splits"], summary["groups"]
    width = 0.8 / len(groups)
    fig = Figure(figsize=(max(6.0, 1.2 * len(splits) * (1 + 0.4 * len(groups))), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(splits))]
        st = [g["splits"][s] for s in splits]
        means = [100 * x["mean"] for x in st]
        err = [[100 * (x["mean"] - x["ci_low"]) for x in st], [100 * (x["ci_high"] - x["mean"]) for x in st]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=f"{g['name']} (n={g['n']})")
    ax.set_xticks(range(len(splits)), list(splits))
    ax.set_xlabel("evaluation split")
    ax.set_ylabel("task success (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Success by split: mean over seeds, {100 * summary['confidence']:g}% bootstrap CI")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    return buf.getvalue()


def aggregate(
    sweep_dir: Path,
    baseline: Union[Mapping[str, Any], CellFilter],
    splits: Sequence[str] = SPLITS,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    correction: str = "holm",
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise every group of a sweep, test each against the baseline, write tables and a plot.

    `baseline` is a partial cell (None = any); the first group in sorted order that has a matching
    run is the baseline, so `{"signal": "none", "scheme": "rl"}` picks the smallest learning rate.
    Returns what it writes to `summary.json`.
    """
    sweep_dir = Path(sweep_dir)
    splits = tuple(splits)
    if not splits:
        raise ValueError("splits must not be empty")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction '{correction}' (choose from {', '.join(CORRECTIONS)})")
    base, groups = _load_groups(sweep_dir, splits)
    if not groups:
        raise ValueError(f"no evaluated runs under {sweep_dir / 'runs'}")
    ref = _find_baseline(groups, baseline)
    others = [g for g in groups if g is not ref]
    comparisons = _compare_all(others, ref, splits, correction)

    ordered = ([base] if base else []) + [ref] + others
    records = []
    for g in ordered:
        stats = {s: summarize(g.rates[s], confidence, n_resamples, seed) for s in splits}
        records.append(_group_record(g, splits, stats, comparisons.get(g.name)))
    summary: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "splits": list(splits),
        "baseline": ref.name,
        "baseline_filter": dict(vars(baseline)) if isinstance(baseline, CellFilter) else dict(baseline),
        "correction": correction,
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
        "groups": records,
    }
    for g in _few_seed_groups(summary):
        log.warning("group %s has only %d seed(s); its CI and p-values are unreliable", g["name"], g["n"])

    write_text(sweep_dir / "tables" / "main.md", _markdown(summary))
    write_text(sweep_dir / "tables" / "main.csv", _csv(summary))
    write_text(sweep_dir / "tables" / "main.tex", _latex(summary))
    write_bytes(sweep_dir / "plots" / "success.png", _plot(summary))
    # allow_nan=False: a NaN that slipped through would be invalid JSON for every strict reader.
    write_text(sweep_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    log.info("wrote tables, plot and summary under %s (baseline %s)", sweep_dir, ref.name)
    return summary


__all__ = ["aggregate"]
