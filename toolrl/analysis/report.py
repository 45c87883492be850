"""The aggregation stage: per-seed evaluation JSON → statistics → tables (`tables.py`), figures
(`plots.py`) and `summary.json`.

The seed is the unit of replication: tasks within one run share its weights, so they are not
independent evidence about a training recipe. Each run's `success_rate` (already the mean over its
tasks) is one observation, and statistics go over seeds. Every output is written atomically, so a
Snakemake job killed half-way never leaves a truncated table that looks finished.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from toolrl.analysis import plots, stats, tables
from toolrl.analysis.collapse import CURVES, detect, series
from toolrl.analysis.outputs import BY_NAME, OUTPUTS
from toolrl.analysis.tables import BASE, REFERENCES
from toolrl.config import SPLITS, Cell, CellFilter, DiagnosticsConfig, parse_cell
from toolrl.io import read_json, read_jsonl, require, write_bytes, write_text
from toolrl.paper import PAPER_SPLIT, PUBLISHED, published_for

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One evaluated run: its success per split, the restoration probe where it ran, and its training log."""

    cell: Cell | None  # None for the base model
    rates: dict[str, float]  # split → success rate
    tasks: dict[str, int]  # split → number of tasks the rate is over
    restored: dict[str, float] = field(default_factory=dict)  # split → success with the collapse mask
    # split → what the restoration probe forbade: the run's collapse `mode` and its `patterns`
    shown: dict[str, dict[str, Any]] = field(default_factory=dict)
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

    def tasks(self, split: str) -> int:
        """Tasks per run on `split`; the fewest if stale files disagree, which only makes the
        interval of seeds that tie wider."""
        return min(r.tasks[split] for r in self.runs)


# --------------------------------------------------------------------------- reading


def _rate(path: Path, doc: dict[str, Any], key: str, within: str = "") -> float:
    """`doc[key]`, a number in [0, 1]; `within` names the key `doc` sits under, for the message."""
    rate = require(path, doc, key, (int, float), f" {within}" if within else "")
    if not 0.0 <= rate <= 1.0:
        name = f"{within}.{key}" if within else key
        raise ValueError(f"evaluation file {path}: '{name}' must be a number in [0, 1], got {rate!r}")
    return float(rate)


def read_eval(path: Path) -> dict[str, Any]:
    """An evaluation file, checked at load for every key its readers use (the tables here, the
    MLflow logging in `cli`), so that a damaged one fails naming the file and the key."""
    doc = read_json(path)
    require(path, doc, "split", str)
    _rate(path, doc, "success_rate")
    _rate(path, doc, "format_error_rate")
    for i, task in enumerate(require(path, doc, "tasks", list)):
        require(path, task, "success", bool, f" tasks[{i}]")
    if "restored" in doc:
        restored = require(path, doc, "restored", dict)
        _rate(path, restored, "success_rate", "restored")
        if restored.get("mode") not in (None, "token", "content"):
            raise ValueError(f"evaluation file {path}: 'restored.mode' must be token, content or null")
        require(path, restored, "patterns", list, " restored")
    return doc


def _categories(doc: dict[str, Any]) -> dict[str, float]:
    """Success per task category (the task's domain), from the per-task records."""
    by: dict[str, list[bool]] = {}
    for t in doc["tasks"]:
        by.setdefault(str(t.get("domain", "all")), []).append(t["success"])
    return {d: sum(v) / len(v) for d, v in sorted(by.items())}


def _read_eval(path: Path, split: str, cell: Cell | None) -> dict[str, Any]:
    """One run's evaluation, checked against where the file lies so a misplaced copy fails here."""
    doc = read_eval(path)
    if doc["split"] != split:
        raise ValueError(f"evaluation file {path} is for split {doc['split']!r}, expected {split!r}")
    if cell is not None and isinstance(doc.get("cell"), dict):
        try:
            claimed = parse_cell(*(str(doc["cell"][k]) for k in ("signal", "scheme", "lr", "seed")))
        except (KeyError, ValueError) as e:
            raise ValueError(f"evaluation file {path} has a malformed 'cell': {e}") from None
        if not claimed.matches(CellFilter(**vars(cell))):
            raise ValueError(f"evaluation file {path} is for cell {claimed.path}, not {cell.path}")
    if not doc["tasks"]:
        raise ValueError(f"evaluation file {path} has no tasks")
    return doc


def _read_train_log(path: Path, diag: DiagnosticsConfig) -> tuple[dict[str, Any] | None, dict[str, dict[int, float]]]:
    """The collapse verdict and the curves of one run; (None, {}) without a log, so a sweep
    aggregated from evaluations alone still gets its tables (the column then says n/a)."""
    if not path.exists():
        log.warning("no training log %s: collapse and curves unknown for this run", path)
        return None, {}
    rows = read_jsonl(path)
    for i, row in enumerate(rows, 1):
        require(path, row, "step", int, f" line {i}")
    try:
        verdict = detect(rows, diag.window, diag.reward_drop, diag.token_shift, diag.pollution_rise)
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
    return Run(
        cell,
        {s: float(d["success_rate"]) for s, d in read.items()},
        {s: len(d["tasks"]) for s, d in read.items()},
        {s: float(d["restored"]["success_rate"]) for s, d in read.items() if "restored" in d},
        {
            s: {"mode": d["restored"].get("mode"), "patterns": d["restored"]["patterns"]}
            for s, d in read.items()
            if "restored" in d
        },
        categories={s: _categories(d) for s, d in read.items()},
    )


def _restored_per_seed(name: str, runs: Sequence[Run], splits: Sequence[str]) -> dict[str, list[float]]:
    """split → restored rate per seed. Some seeds probed and others not means stale evaluation
    files (restore_splits changed under them): an error, for the same reason as a missing split."""
    out = {}
    for s in splits:
        have = [s in r.restored for r in runs]
        if all(have):
            out[s] = [r.restored[s] for r in runs]
        elif any(have):
            lacking = [r.cell.seed if r.cell else BASE for r, h in zip(runs, have, strict=True) if not h]
            raise ValueError(
                f"group {name}: split {s} has restoration results for some seeds but not "
                f"for seeds {lacking}; re-run their evaluation"
            )
    return out


def _load_groups(sweep_dir: Path, splits: Sequence[str], diag: DiagnosticsConfig) -> tuple[Group | None, list[Group]]:
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
        groups.append(
            Group(
                name,
                cells,
                {s: [r.rates[s] for r in members] for s in splits},
                _restored_per_seed(name, members, splits),
                members,
            )
        )
    base_run = _read_run(sweep_dir / BASE / "eval", splits, None)
    base = None
    if base_run is not None:
        base = Group(
            BASE,
            [],
            {s: [base_run.rates[s]] for s in splits},
            {s: [q] for s, q in base_run.restored.items()},
            [base_run],
        )
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


def score_matrix(g: Group, split: str) -> np.ndarray:
    """(seeds, task categories): each run's success rate per category, the input of the
    performance profiles. Categories are those every run of the group has (they come from the same split
    file, so they agree unless evaluations are stale); a split without categories is one column of
    the runs' overall rates."""
    cats = sorted(set.intersection(*(set(r.categories.get(split, {})) for r in g.runs))) if g.runs else []
    if not cats:
        return np.array([[r.rates[split]] for r in g.runs])
    return np.array([[r.categories[split][c] for c in cats] for r in g.runs])


@dataclass(frozen=True)
class Settings:
    """The aggregate config's statistics settings, passed as one."""

    confidence: float
    alpha: float
    power: float
    correction: str
    n_resamples: int
    seed: int


def _compare(g: Group, ref: Group, split: str, st: Settings, fixed: bool) -> dict[str, Any]:
    """One group against one reference on one split: the difference with its interval, the
    exact test, Hedges' g (None where a side is degenerate, which is named instead). `fixed`: the
    reference is one fixed score (the base model: one model, one greedy evaluation)."""
    a, b = g.rates[split], ref.rates[split]
    ta, tb = g.tasks(split), ref.tasks(split)
    return {
        **stats.difference_interval(a, b, ta, tb, st.confidence, fixed_b=fixed),
        **stats.exact_test(a, b, st.n_resamples, st.seed, fixed_b=fixed),
        "hedges_g": stats.hedges_g(a, b),
        "group_degenerate": stats.degenerate(a),
        "reference_degenerate": stats.degenerate(b),
    }


def _compare_all(
    groups: Sequence[Group], ref: Group, splits: Sequence[str], st: Settings
) -> dict[str, dict[str, dict[str, Any]]]:
    """group → split → `_compare` against `ref`, with `p_adj` corrected across the groups.

    The family for the correction is one reference and one split, because each split answers its
    own question (in-distribution vs. OOD) and each reference its own (did RL help at all; does a
    recipe beat the baseline recipe). The base model is a fixed reference, no seed to vary."""
    fixed = ref.name == BASE
    out = {g.name: {s: _compare(g, ref, s, st, fixed) for s in splits} for g in groups}
    for s in splits:
        adjusted = stats.adjust([out[g.name][s]["p"] for g in groups], st.correction)
        family = sum(q is not None for q in adjusted)
        alpha = stats.level(st.alpha, st.correction, family)
        for g, q in zip(groups, adjusted, strict=True):
            c = out[g.name][s]
            c["p_adj"] = q
            c["seeds_needed"] = stats.seeds_needed(
                g.rates[s], ref.rates[s], g.tasks(s), ref.tasks(s), alpha, st.power, fixed_b=fixed
            )
    return out


def _collapse_record(g: Group) -> dict[str, Any] | None:
    """Collapsed runs over the runs with a training log (`content`: how many of them in the
    content mode), and each seed's verdict (None: no log)."""
    if g.name == BASE:
        return None
    per_seed = [
        {"seed": c.seed, **(r.collapse or {"collapsed": None, "step": None})}
        for c, r in zip(g.cells, g.runs, strict=True)
    ]
    judged = [p for p in per_seed if p["collapsed"] is not None]
    return {
        "collapsed": sum(p["collapsed"] for p in judged),
        "content": sum(p.get("mode") == "content" for p in judged),
        "runs": len(judged),
        "per_seed": per_seed,
    }


def _by_mode(g: Group, split: str) -> dict[str, dict[str, Any]]:
    """Per collapse mode, the group's runs in it: seeds, mean success and mean restored success,
    and the patterns their restoration probes forbade (none for a content collapse)."""
    out: dict[str, dict[str, Any]] = {}
    for mode in ("token", "content"):
        runs = [r for r in g.runs if r.shown.get(split, {}).get("mode") == mode]
        if runs:
            out[mode] = {
                "seeds": [r.cell.seed for r in runs if r.cell is not None],
                "success": sum(r.rates[split] for r in runs) / len(runs),
                "restored": sum(r.restored[split] for r in runs) / len(runs),
                "patterns": sorted({p for r in runs for p in r.shown[split]["patterns"]}),
            }
    return out


def _paper_record(paper: str | None, first: Cell | None) -> dict[str, Any] | None:
    pub = published_for(paper, first.signal if first else None, first.scheme if first else None)
    return (
        None if pub is None else {"recipe": pub.recipe, "score": pub.score, "split": PAPER_SPLIT, "source": pub.source}
    )


def _group_record(
    g: Group,
    splits: Sequence[str],
    split_stats: dict[str, dict[str, Any]],
    comparison: dict[str, Any],
    restored: dict[str, dict[str, Any]],
    paper: str | None,
) -> dict[str, Any]:
    first = g.cells[0] if g.cells else None
    return {
        "name": g.name,
        "signal": first.signal if first else None,
        "scheme": first.scheme if first else None,
        "lr": first.lr if first else None,
        "seeds": [c.seed for c in g.cells],
        "n": len(g.rates[splits[0]]),
        "tasks": {s: g.tasks(s) for s in splits},
        "splits": {s: {**split_stats[s], "values": g.rates[s]} for s in splits},
        "restored": {s: {**restored[s], "values": g.restored[s], "by_mode": _by_mode(g, s)} for s in restored},
        "collapse": _collapse_record(g),
        "comparison": comparison,
        "paper": _paper_record(paper, first),
    }


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
            seeds = [
                sum(per_seed[c][i] for c in cats) / len(cats) for i in range(min(len(v) for v in per_seed.values()))
            ]
            for cat, v in [(c, per_seed[c]) for c in cats] + [("average", seeds)]:
                rows.append(
                    {
                        "group": g.name,
                        "split": s,
                        "category": cat,
                        "n": len(v),
                        "mean": sum(v) / len(v),
                        "min": min(v),
                        "max": max(v),
                    }
                )
    return rows


def aggregate(
    sweep_dir: Path,
    baseline: Mapping[str, Any] | CellFilter,
    splits: Sequence[str] = SPLITS,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    correction: str = "holm",
    seed: int = 0,
    diagnostics: DiagnosticsConfig | None = None,
    paper: str | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, Any]:
    """Summarise every group of a sweep, compare each with the base model and the baseline, write
    tables and plots.

    `baseline` is a partial cell (None = any); the first group in sorted order that has a matching
    run is the baseline, so `{"signal": "none", "scheme": "rl"}` picks the smallest learning rate.
    `n_resamples` only matters for tests too large to enumerate (stats.EXACT_LIMIT); `alpha` and
    `power` set the level and power of the seeds-needed numbers. `diagnostics` holds the collapse
    detector's thresholds (None: the config's defaults); each run's `train_log.jsonl` is judged
    with them and drawn in `plots/curves.png`. `paper` names the published numbers
    (`toolrl.paper.PUBLISHED`) to set beside ours. Returns what it writes to `summary.json`.
    """
    sweep_dir = Path(sweep_dir)
    splits = tuple(splits)
    diag = diagnostics if diagnostics is not None else DiagnosticsConfig()
    if not splits:
        raise ValueError("splits must not be empty")
    if correction not in stats.CORRECTIONS:
        raise ValueError(f"unknown correction '{correction}' (choose from {', '.join(stats.CORRECTIONS)})")
    if paper is not None and paper not in PUBLISHED:
        raise ValueError(f"unknown paper reference '{paper}' (choose from {', '.join(PUBLISHED)})")
    for name, value in (("confidence", confidence), ("alpha", alpha), ("power", power)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    st = Settings(confidence, alpha, power, correction, n_resamples, seed)
    base, groups = _load_groups(sweep_dir, splits, diag)
    if not groups:
        raise ValueError(f"no evaluated runs under {sweep_dir / 'runs'}")
    ref = _find_baseline(groups, baseline)
    others = [g for g in groups if g is not ref]
    ordered = ([base] if base else []) + [ref] + others
    vs = {"baseline": _compare_all(others, ref, splits, st)}
    if base is not None:
        vs["base"] = _compare_all([ref, *others], base, splits, st)

    records = []
    for g in ordered:
        split_stats = {s: stats.summarize(g.rates[s], g.tasks(s), confidence) for s in splits}
        restored = {s: stats.summarize(v, g.tasks(s), confidence) for s, v in g.restored.items()}
        comparison = {r: vs[r].get(g.name) for r in REFERENCES if r in vs}
        records.append(_group_record(g, splits, split_stats, comparison, restored, paper))
    summary: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "splits": list(splits),
        "restored_splits": [s for s in splits if any(s in g.restored for g in ordered)],
        "baseline": ref.name,
        "baseline_filter": dict(vars(baseline)) if isinstance(baseline, CellFilter) else dict(baseline),
        "references": list(vs),
        "interval": stats.INTERVAL_METHOD,
        "confidence": confidence,
        "correction": correction,
        "alpha": alpha,
        "power": power,
        "n_resamples": n_resamples,
        "seed": seed,
        "diagnostics": {
            "window": diag.window,
            "reward_drop": diag.reward_drop,
            "token_shift": diag.token_shift,
            "pollution_rise": diag.pollution_rise,
        },
        "paper": paper,
        "groups": records,
    }
    for g in tables.few_seed_groups(summary):
        log.warning("group %s has only %d seed(s); its interval and p-values are unreliable", g["name"], g["n"])
    for line in tables.underpowered(summary):
        log.warning("underpowered: %s", line)

    cat_rows = category_rows(ordered, splits)
    figures = {
        "plot": plots.success(summary),
        "curves": plots.curves(ordered),
        "lr_plot": plots.lr_sensitivity(summary),
        "profiles": plots.profiles(summary, {g.name: {s: score_matrix(g, s) for s in splits} for g in ordered}),
    }
    # What each file of OUTPUTS holds, by its name; the paths come from OUTPUTS alone.
    render: dict[str, Callable[[], str | bytes]] = {
        "table": partial(tables.main_markdown, summary),
        "csv": partial(tables.main_csv, summary),
        "tex": partial(tables.main_latex, summary),
        "effects": partial(tables.effects_markdown, summary),
        "categories": partial(tables.category_markdown, cat_rows, splits),
        "categories_csv": partial(tables.category_csv, cat_rows),
        # allow_nan=False: a NaN that slipped through would be invalid JSON for every strict reader.
        "summary": lambda: json.dumps(summary, indent=2, allow_nan=False) + "\n",
    }
    for name in tables.PIVOTS:
        render[name] = partial(tables.pivot_markdown, summary, name)
        render[f"{name}_csv"] = partial(tables.pivot_csv, summary, name)
        render[f"{name}_tex"] = partial(tables.pivot_latex, summary, name)
    for name, fig in figures.items():
        render[name] = partial(plots.render, fig, "png")
        render[f"{name}_pdf"] = partial(plots.render, fig, "pdf")
    if set(render) != set(BY_NAME):
        raise RuntimeError(
            f"aggregate outputs without a renderer: {sorted(set(BY_NAME) - set(render))}; "
            f"renderers without an output: {sorted(set(render) - set(BY_NAME))}"
        )
    for out in OUTPUTS:
        data = render[out.name]()
        (write_text if isinstance(data, str) else write_bytes)(sweep_dir / out.path, data)
    log.info("wrote tables, plots and summary under %s (baseline %s)", sweep_dir, ref.name)
    return summary


__all__ = ["aggregate", "read_eval"]
