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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from toolrl.collapse import CURVES, detect, series
from toolrl.config import SPLITS, Cell, CellFilter, DiagnosticsConfig, parse_cell
from toolrl.io import read_json, read_jsonl, write_bytes, write_text
from toolrl.stats import CORRECTIONS, adjust, compare, summarize

log = logging.getLogger(__name__)

BASE = "base"
MIN_SEEDS = 3
TESTS = ("welch", "mwu")
_TEST_NAMES = {"welch": "Welch", "mwu": "MWU"}


@dataclass
class Run:
    """One evaluated run: its success per split, the restoration probe where it ran, and its training log."""

    cell: Cell | None  # None for the base model
    rates: dict[str, float]  # split → success rate
    restored: dict[str, float] = field(default_factory=dict)  # split → success with the collapse mask
    collapse: dict[str, Any] | None = None  # `collapse.detect` on the train log; None without one
    # split → category (a task's domain: BFCL's base/miss_param/…) → success rate
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # CURVES title → step → value


@dataclass
class Group:
    """The runs of one (signal, scheme, lr) — or the warm-up base model every cell starts from — with their rates."""

    name: str
    cells: list[Cell]  # one per seed, by seed; empty for the base model
    rates: dict[str, list[float]]  # split → one success rate per seed, in `cells` order
    # split → restored success per seed, for the splits where every seed of the group has it.
    restored: dict[str, list[float]] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)  # in `cells` order


# --------------------------------------------------------------------------- reading


def _read_restored(path: Path, doc: dict[str, Any]) -> float | None:
    """The restoration probe's success rate, or None when this split was not probed."""
    if "restored" not in doc:
        return None
    restored = doc["restored"]
    rate = restored.get("success_rate") if isinstance(restored, dict) else None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"evaluation file {path}: 'restored.success_rate' must be a number in [0, 1], got {rate!r}")
    return float(rate)


def _categories(doc: dict[str, Any]) -> dict[str, float]:
    """Success per task category (the task's domain), from the per-task records."""
    by: dict[str, list[bool]] = {}
    for t in doc.get("tasks", []):
        by.setdefault(str(t.get("domain", "all")), []).append(bool(t.get("success")))
    return {d: sum(v) / len(v) for d, v in sorted(by.items())}


def _read_eval(path: Path, split: str, cell: Cell | None) -> tuple[float, float | None, dict[str, float]]:
    """One run's success rate, restored rate and per-category rates, checked against where the
    file lies so a misplaced copy fails here."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"corrupt evaluation file {path}: expected a JSON object")  # noqa: TRY004 (bad data, not a bad call)
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
    return float(rate), _read_restored(path, doc), _categories(doc)


def _read_train_log(path: Path, diag: DiagnosticsConfig) -> tuple[dict[str, Any] | None, dict[str, dict[int, float]]]:
    """The collapse verdict and the curves of one run; (None, {}) without a log, so a sweep
    aggregated from evaluations alone still gets its tables (the column then says n/a)."""
    if not path.exists():
        log.warning("no training log %s: collapse and curves unknown for this run", path)
        return None, {}
    rows = read_jsonl(path)
    try:
        verdict = detect(rows, diag.window, diag.reward_drop, diag.token_shift)
    except ValueError as e:
        raise ValueError(f"training log {path}: {e}") from None
    return verdict, {title: series(rows, keys) for title, keys in CURVES}


def _read_run(eval_dir: Path, splits: Sequence[str], cell: Cell | None) -> Run | None:
    """All splits of one run, or None for a run with no evaluation at all (not run, or stale).

    A run with some splits but not others is an error, not a skip: silently dropping that seed
    from one split would compare splits over different seeds.
    """
    if not any((eval_dir / f"{s}.json").exists() for s in splits):
        return None
    read = {s: _read_eval(eval_dir / f"{s}.json", s, cell) for s in splits}
    return Run(cell, {s: r for s, (r, _, _) in read.items()},
               {s: q for s, (_, q, _) in read.items() if q is not None},
               categories={s: c for s, (_, _, c) in read.items()})


def _restored_per_seed(name: str, runs: Sequence[Run], splits: Sequence[str]) -> dict[str, list[float]]:
    """split → restored rate per seed. Some seeds probed and others not means stale evaluation
    files (restore_splits changed under them): an error, for the same reason as a missing split."""
    out = {}
    for s in splits:
        have = [s in r.restored for r in runs]
        if all(have):
            out[s] = [r.restored[s] for r in runs]
        elif any(have):
            lacking = [r.cell.seed if r.cell else BASE for r, h in zip(runs, have) if not h]
            raise ValueError(f"group {name}: split {s} has restoration results for some seeds but not "
                             f"for seeds {lacking}; re-run their evaluation")
    return out


def _load_groups(
    sweep_dir: Path, splits: Sequence[str], diag: DiagnosticsConfig
) -> tuple[Group | None, list[Group]]:
    """The base model (if evaluated) and the trained groups, sorted by (signal, scheme, lr)."""
    runs: dict[tuple[str, str, float], list[Run]] = {}
    for run_dir in sorted((sweep_dir / "runs").glob("signal=*/scheme=*/lr=*/seed=*")):
        if not run_dir.is_dir():
            continue
        wildcards = [part.split("=", 1)[1] for part in run_dir.parts[-4:]]
        try:
            cell = parse_cell(*wildcards)
        except ValueError:
            raise ValueError(f"cannot parse the cell of run directory {run_dir}") from None
        run = _read_run(run_dir / "eval", splits, cell)
        if run is None:
            log.warning("skipping %s: no evaluation files", run_dir)
            continue
        run.collapse, run.curves = _read_train_log(run_dir / "train_log.jsonl", diag)
        runs.setdefault((cell.signal, cell.scheme, cell.lr), []).append(run)
    groups = []
    for key in sorted(runs):
        members = sorted(runs[key], key=lambda r: r.cell.seed if r.cell else -1)
        cells = [r.cell for r in members if r.cell is not None]
        name = cells[0].group
        groups.append(Group(name, cells, {s: [r.rates[s] for r in members] for s in splits},
                            _restored_per_seed(name, members, splits), members))
    base_run = _read_run(sweep_dir / BASE / "eval", splits, None)
    base = None
    if base_run is not None:
        base = Group(BASE, [], {s: [base_run.rates[s]] for s in splits},
                     {s: [q] for s, q in base_run.restored.items()}, [base_run])
    return base, groups


def _find_baseline(groups: Sequence[Group], baseline: Mapping[str, Any] | CellFilter) -> Group:
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
) -> dict[str, dict[str, dict[str, float | None]]]:
    """group → split → raw and adjusted p-values.

    The family for the correction is one split and one test across the groups, because each split
    answers its own question (in-distribution vs. OOD) and a reader reads each test on its own.
    """
    out: dict[str, dict[str, dict[str, float | None]]] = {
        g.name: {s: compare(g.rates[s], ref.rates[s]) for s in splits} for g in others
    }
    for s in splits:
        for test in TESTS:
            adjusted = adjust([out[g.name][s][f"{test}_p"] for g in others], correction)
            for g, q in zip(others, adjusted):
                out[g.name][s][f"{test}_p_adj"] = q
    return out


def _collapse_record(g: Group) -> dict[str, Any] | None:
    """Collapsed runs over the runs with a training log, and each seed's verdict (None: no log)."""
    if g.name == BASE:
        return None
    per_seed = [{"seed": c.seed, **(r.collapse or {"collapsed": None, "step": None})} for c, r in zip(g.cells, g.runs)]
    judged = [p for p in per_seed if p["collapsed"] is not None]
    return {"collapsed": sum(p["collapsed"] for p in judged), "runs": len(judged), "per_seed": per_seed}


def _group_record(
    g: Group, splits: Sequence[str], stats: dict[str, dict[str, Any]], comparison: dict[str, Any] | None,
    restored: dict[str, dict[str, Any]],
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
        "restored": {s: {**restored[s], "values": g.restored[s]} for s in restored},
        "collapse": _collapse_record(g),
        "comparison": comparison,
    }


# --------------------------------------------------------------------------- formatting


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"p={p:.3g}"


def _correction_words(correction: str) -> str:
    return {"holm": "Holm-corrected", "bonferroni": "Bonferroni-corrected", "none": "uncorrected"}[correction]


def _collapse_rate(g: dict[str, Any]) -> str:
    """"2/3": collapsed runs over the runs with a training log; "—" for the base model (no RL),
    "n/a" for a group without any log."""
    c = g["collapse"]
    if c is None:
        return "—"
    return f"{c['collapsed']}/{c['runs']}" if c["runs"] else "n/a"


def _few_seed_groups(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Trained groups below MIN_SEEDS; the base model has one evaluation by design, so it is exempt."""
    return [g for g in summary["groups"] if g["name"] != BASE and g["n"] < MIN_SEEDS]


def _diagnostics_caption(summary: dict[str, Any], code: str = "`") -> str:
    d = summary["diagnostics"]
    text = (
        f" {code}collapsed{code}: runs in which the collapse detector fired, over the group's runs with a "
        f"training log: success (rolling mean over {d['window']} RL steps) fell to at most "
        f"{100 * (1 - d['reward_drop']):g}% of its first-{d['window']}-step mean while a control-token "
        f"probability moved by at least {d['token_shift']:g} (absolute) from its start."
    )
    if summary["restored_splits"]:
        text += (
            f" {code}<split> restored{code}: the same greedy evaluation with the collapsed control-token "
            f"patterns forbidden by a logit mask (the restoration probe), mean over seeds with the same CI."
        )
    return text


def _stat_cell(st: dict[str, Any] | None, n: int) -> str:
    if st is None:
        return "—"
    ci = "" if n == 1 else f" [{_pct(st['ci_low'])}, {_pct(st['ci_high'])}]"
    return _pct(st["mean"]) + ci


def _markdown(summary: dict[str, Any]) -> str:
    splits, groups, restored = summary["splits"], summary["groups"], summary["restored_splits"]
    n_compared = sum(g["comparison"] is not None for g in groups)
    caption = (
        f"Task success (%) per split: the mean over seeds of each run's success rate, with a "
        f"{100 * summary['confidence']:g}% percentile-bootstrap CI over seeds "
        f"({summary['n_resamples']} resamples) in brackets. p-values are two-sided Welch t-tests and "
        f"Mann–Whitney U tests of each group against the baseline `{summary['baseline']}` over seeds, "
        f"{_correction_words(summary['correction'])} per split and per test across the {n_compared} "
        f"compared groups. `{BASE}` is the warm-up (SFT) model every cell starts from, before any RL (one evaluation, no CI)."
        + _diagnostics_caption(summary)
    )
    header = (["group", "n"] + list(splits) + [f"{s} restored" for s in restored] + ["collapsed"]
              + [f"{s} {_TEST_NAMES[t]}" for s in splits for t in TESTS])
    rows = []
    for g in groups:
        cells = [g["name"], str(g["n"])]
        cells += [_stat_cell(g["splits"][s], g["n"]) for s in splits]
        cells += [_stat_cell(g["restored"].get(s), g["n"]) for s in restored]
        cells.append(_collapse_rate(g))
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


_STAT_KEYS = ("mean", "std", "ci_low", "ci_high")


def _csv(summary: dict[str, Any]) -> str:
    """Long format, one row per group and split. The restored statistics sit on their split's row
    (empty where the split was not probed); the collapse count is per group, repeated on each row."""
    columns = ["group", "signal", "scheme", "lr", "split", "n", *_STAT_KEYS,
               "welch_p", "mwu_p", "welch_p_adj", "mwu_p_adj",
               *(f"restored_{k}" for k in _STAT_KEYS), "collapsed", "collapse_rate"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for g in summary["groups"]:
        c = g["collapse"]
        for s in summary["splits"]:
            st = g["splits"][s]
            comp = (g["comparison"] or {}).get(s, {})
            rst = g["restored"].get(s, {})
            row = {"group": g["name"], "signal": g["signal"], "scheme": g["scheme"], "lr": g["lr"],
                   "split": s, "n": g["n"], **{k: st[k] for k in _STAT_KEYS},
                   **{k: comp.get(k) for k in ("welch_p", "mwu_p", "welch_p_adj", "mwu_p_adj")},
                   **{f"restored_{k}": rst.get(k) for k in _STAT_KEYS},
                   "collapsed": c["collapsed"] if c and c["runs"] else None,
                   "collapse_rate": _collapse_rate(g) if c and c["runs"] else None}
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def _tex_stat(st: dict[str, Any] | None, n: int, best: float | None) -> str:
    if st is None:
        return "--"
    value = _pct(st["mean"])
    if round(100 * st["mean"], 1) == best:
        value = rf"\textbf{{{value}}}"
    if n > 1:
        value += rf" $\pm$ {_pct((st['ci_high'] - st['ci_low']) / 2)}"
    return value


def _latex(summary: dict[str, Any]) -> str:
    """A booktabs table for the paper: mean ± CI half-width, the best mean per column in bold.

    ± half-width is the conventional compact form; the exact (asymmetric) bounds are in the CSV.
    """
    splits, groups, restored = summary["splits"], summary["groups"], summary["restored_splits"]
    columns = [(s, "splits") for s in splits] + [(s, "restored") for s in restored]
    best = {
        (s, kind): max((round(100 * g[kind][s]["mean"], 1) for g in groups if s in g[kind]), default=None)
        for s, kind in columns
    }
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l r " + "r " * len(columns) + "c}",
        r"\toprule",
        " & ".join(["Group", "$n$"] + [_tex_escape(s) for s in splits]
                   + [_tex_escape(f"{s} restored") for s in restored] + ["Collapsed"]) + r" \\",
        r"\midrule",
    ]
    for g in groups:
        cells = [_tex_escape(g["name"]), str(g["n"])]
        cells += [_tex_stat(g[kind].get(s), g["n"], best[(s, kind)]) for s, kind in columns]
        cells.append(_collapse_rate(g).replace("—", "--"))
        lines.append(" & ".join(cells) + r" \\")
    caption = (
        f"Task success (\\%), mean over seeds $\\pm$ half-width of the {100 * summary['confidence']:g}\\% "
        f"percentile-bootstrap CI; best per column in bold. Baseline: {_tex_escape(summary['baseline'])}."
        + _tex_escape(_diagnostics_caption(summary, code="")).replace("<", r"\textless{}").replace(">", r"\textgreater{}")
    )
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:main}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def category_rows(groups: Sequence[Group], splits: Sequence[str]) -> list[dict[str, Any]]:
    """Per group, split and task category: the mean over seeds of each run's success on that
    category, with the min and max over seeds; plus `average`, the mean over categories (the
    paper's BFCL table reports the four categories and their average)."""
    rows = []
    for g in groups:
        for s in splits:
            per_seed: dict[str, list[float]] = {}
            for r in g.runs:
                for cat, rate in r.categories.get(s, {}).items():
                    per_seed.setdefault(cat, []).append(rate)
            if not per_seed:
                continue
            cats = sorted(per_seed)
            seeds = [sum(per_seed[c][i] for c in cats) / len(cats) for i in range(min(len(v) for v in per_seed.values()))]
            for cat, v in [(c, per_seed[c]) for c in cats] + [("average", seeds)]:
                rows.append({"group": g.name, "split": s, "category": cat, "n": len(v),
                             "mean": sum(v) / len(v), "min": min(v), "max": max(v)})
    return rows


def _category_markdown(rows: Sequence[dict[str, Any]], splits: Sequence[str]) -> str:
    lines = ["Task success (%) per task category: the mean over seeds, with the range over seeds in "
             "brackets; `average` is the mean over categories.", ""]
    for s in splits:
        mine = [r for r in rows if r["split"] == s]
        if not mine:
            continue
        cats = list(dict.fromkeys(r["category"] for r in mine if r["category"] != "average")) + ["average"]
        lines += [f"**{s}**", "", "| group | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        for name in dict.fromkeys(r["group"] for r in mine):
            by = {r["category"]: r for r in mine if r["group"] == name}
            cells = ["—" if c not in by else _pct(by[c]["mean"]) + (
                "" if by[c]["n"] == 1 else f" [{_pct(by[c]['min'])}, {_pct(by[c]['max'])}]") for c in cats]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _category_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["group", "split", "category", "n", "mean", "min", "max"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    return buf.getvalue()


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
    return _png(fig)


def _band(per_seed: Sequence[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """steps, mean, min, max over the seeds that have a value at each step."""
    steps = sorted({t for s in per_seed for t in s})
    values = [[s[t] for s in per_seed if t in s] for t in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _curves_plot(groups: Sequence[Group]) -> bytes:
    """One panel per training metric (`collapse.CURVES`), one line per group: the mean over seeds
    at each global step, a band from the seeds' min to max (with 3 seeds a std says little), and a
    dotted vertical line at each seed's collapse step. A single figure rather than one per group,
    because the point is to see which recipes collapse and when, side by side."""
    trained = [g for g in groups if any(r.curves for r in g.runs)]
    cols = 3
    rows = -(-(len(CURVES) + 1) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    colors = [f"C{i % 10}" for i in range(len(trained))]
    for ax, (title, _) in zip(axes, CURVES):
        for g, color in zip(trained, colors):
            steps, mean, lo, hi = _band([r.curves.get(title, {}) for r in g.runs])
            if steps:
                ax.plot(steps, mean, color=color, lw=1.5, label=f"{g.name} (n={len(g.runs)})")
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
            for r in g.runs:
                if r.collapse and r.collapse["collapsed"]:
                    ax.axvline(r.collapse["step"], color=color, ls=":", lw=1.2)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("global step (RL steps only)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        if not trained:
            ax.text(0.5, 0.5, "no training logs", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(CURVES):]:
        ax.axis("off")
    legend_ax = axes[len(CURVES)]
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        legend_ax.legend(handles, labels, loc="center", fontsize="small",
                         title="mean over seeds; band: min–max;\ndotted: a seed's collapse step")
    return _png(fig)


def aggregate(
    sweep_dir: Path,
    baseline: Mapping[str, Any] | CellFilter,
    splits: Sequence[str] = SPLITS,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    correction: str = "holm",
    seed: int = 0,
    diagnostics: DiagnosticsConfig | None = None,
) -> dict[str, Any]:
    """Summarise every group of a sweep, test each against the baseline, write tables and plots.

    `baseline` is a partial cell (None = any); the first group in sorted order that has a matching
    run is the baseline, so `{"signal": "none", "scheme": "rl"}` picks the smallest learning rate.
    `diagnostics` holds the collapse detector's thresholds (None: the config's defaults); each
    run's `train_log.jsonl` is judged with them and drawn in `plots/curves.png`.
    Returns what it writes to `summary.json`.
    """
    sweep_dir = Path(sweep_dir)
    splits = tuple(splits)
    diag = diagnostics if diagnostics is not None else DiagnosticsConfig()
    if not splits:
        raise ValueError("splits must not be empty")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction '{correction}' (choose from {', '.join(CORRECTIONS)})")
    base, groups = _load_groups(sweep_dir, splits, diag)
    if not groups:
        raise ValueError(f"no evaluated runs under {sweep_dir / 'runs'}")
    ref = _find_baseline(groups, baseline)
    others = [g for g in groups if g is not ref]
    comparisons = _compare_all(others, ref, splits, correction)

    ordered = ([base] if base else []) + [ref] + others
    records = []
    for g in ordered:
        stats = {s: summarize(g.rates[s], confidence, n_resamples, seed) for s in splits}
        restored = {s: summarize(v, confidence, n_resamples, seed) for s, v in g.restored.items()}
        records.append(_group_record(g, splits, stats, comparisons.get(g.name), restored))
    summary: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "splits": list(splits),
        "restored_splits": [s for s in splits if any(s in g.restored for g in ordered)],
        "baseline": ref.name,
        "baseline_filter": dict(vars(baseline)) if isinstance(baseline, CellFilter) else dict(baseline),
        "correction": correction,
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
        "diagnostics": {"window": diag.window, "reward_drop": diag.reward_drop, "token_shift": diag.token_shift},
        "groups": records,
    }
    for g in _few_seed_groups(summary):
        log.warning("group %s has only %d seed(s); its CI and p-values are unreliable", g["name"], g["n"])

    write_text(sweep_dir / "tables" / "main.md", _markdown(summary))
    write_text(sweep_dir / "tables" / "main.csv", _csv(summary))
    write_text(sweep_dir / "tables" / "main.tex", _latex(summary))
    cat_rows = category_rows(ordered, splits)
    write_text(sweep_dir / "tables" / "categories.md", _category_markdown(cat_rows, splits))
    write_text(sweep_dir / "tables" / "categories.csv", _category_csv(cat_rows))
    write_bytes(sweep_dir / "plots" / "success.png", _plot(summary))
    write_bytes(sweep_dir / "plots" / "curves.png", _curves_plot(ordered))
    # allow_nan=False: a NaN that slipped through would be invalid JSON for every strict reader.
    write_text(sweep_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    log.info("wrote tables, plots and summary under %s (baseline %s)", sweep_dir, ref.name)
    return summary


__all__ = ["aggregate"]
