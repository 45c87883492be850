"""The sweep's tables, from the summary that `report.aggregate` builds: Markdown for reading,
CSV (long format, one row per group × split × column) for pandas, LaTeX (booktabs, best per column in
bold, CI as ±) for the paper.

* `main`: every group × split, mean over seeds with a bootstrap CI, the restoration probe, the
  collapse rate, the tests against the baseline and, for a sweep that names one, the paper's numbers.
* `effects`: how each group differs from the baseline — difference, Hedges' g, probability of
  improvement — and the IQM, the robust aggregates rliable recommends for few runs.
* `schemes`: the scheme comparison, one column per training scheme.
* `lr`: the learning-rate analysis, one column per RL learning rate, with the collapse rate.
* `categories`: per task category (BFCL's base/miss_param/…), as the paper reports BFCL.

Only formatting lives here; every number comes from the summary, so the tables cannot disagree.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from typing import Any

from toolrl.config import format_lr
from toolrl.paper import PAPER_SPLIT

BASE = "base"
MIN_SEEDS = 3
TESTS = ("welch", "mwu")
_TEST_NAMES = {"welch": "Welch", "mwu": "MWU"}


# --------------------------------------------------------------------------- shared pieces


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"p={p:.3g}"


def _correction_words(correction: str) -> str:
    return {
        "holm": "Holm-corrected",
        "bonferroni": "Bonferroni-corrected",
        "bh": "Benjamini–Hochberg-corrected",
        "none": "uncorrected",
    }[correction]


def _collapse_rate(g: dict[str, Any]) -> str:
    """ "2/3": collapsed runs over the runs with a training log; "—" for the base model (no RL),
    "n/a" for a group without any log."""
    c = g["collapse"]
    if c is None:
        return "—"
    return f"{c['collapsed']}/{c['runs']}" if c["runs"] else "n/a"


def few_seed_groups(summary: dict[str, Any]) -> list[dict[str, Any]]:
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


def _paper_caption(summary: dict[str, Any], code: str = "`") -> str:
    if not summary.get("paper"):
        return ""
    return (
        f" {code}paper{code}: the number Hao et al. (2026) published for the same recipe "
        f"({summary['paper']}: BFCL-V3 multi-turn average, comparable with our {code}{PAPER_SPLIT}{code} "
        f"column); see toolrl/paper.py for the sources."
    )


def _paper_cell(g: dict[str, Any]) -> str:
    return "—" if not g.get("paper") else f"{g['paper']['score']:.2f}"


def main_markdown(summary: dict[str, Any]) -> str:
    splits, groups, restored = summary["splits"], summary["groups"], summary["restored_splits"]
    n_compared = sum(g["comparison"] is not None for g in groups)
    caption = (
        f"Task success (%) per split: the mean over seeds of each run's success rate, with a "
        f"{100 * summary['confidence']:g}% percentile-bootstrap CI over seeds "
        f"({summary['n_resamples']} resamples) in brackets. p-values are two-sided Welch t-tests and "
        f"Mann–Whitney U tests of each group against the baseline `{summary['baseline']}` over seeds, "
        f"{_correction_words(summary['correction'])} per split and per test across the {n_compared} "
        f"compared groups (effect sizes, probability of improvement and IQM: `effects.md`). `{BASE}` is the "
        f"warm-up (SFT) model every cell starts from, before any RL (one evaluation, no CI)."
        + _diagnostics_caption(summary)
        + _paper_caption(summary)
    )
    header = (
        ["group", "n"]
        + list(splits)
        + [f"{s} restored" for s in restored]
        + ["collapsed"]
        + [f"{s} {_TEST_NAMES[t]}" for s in splits for t in TESTS]
        + (["paper"] if summary.get("paper") else [])
    )
    rows = []
    for g in groups:
        cells = [g["name"], str(g["n"])]
        cells += [_stat_cell(g["splits"][s], g["n"]) for s in splits]
        cells += [_stat_cell(g["restored"].get(s), g["n"]) for s in restored]
        cells.append(_collapse_rate(g))
        for s in splits:
            for t in TESTS:
                cells.append("—" if g["comparison"] is None else _fmt_p(g["comparison"][s][f"{t}_p_adj"]))
        if summary.get("paper"):
            cells.append(_paper_cell(g))
        rows.append(cells)
    lines = [caption, ""]
    few = few_seed_groups(summary)
    if few:
        names = ", ".join(f"`{g['name']}` (n={g['n']})" for g in few)
        lines += [f"**Warning:** fewer than {MIN_SEEDS} seeds, so CIs and p-values are unreliable: {names}.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_STAT_KEYS = ("mean", "std", "ci_low", "ci_high")


def main_csv(summary: dict[str, Any]) -> str:
    """Long format, one row per group and split. The restored statistics sit on their split's row
    (empty where the split was not probed); the collapse count is per group, repeated on each row."""
    columns = [
        "group",
        "signal",
        "scheme",
        "lr",
        "split",
        "n",
        *_STAT_KEYS,
        "iqm",
        "iqm_ci_low",
        "iqm_ci_high",
        "diff",
        "hedges_g",
        "poi",
        "poi_ci_low",
        "poi_ci_high",
        "welch_p",
        "mwu_p",
        "welch_p_adj",
        "mwu_p_adj",
        *(f"restored_{k}" for k in _STAT_KEYS),
        "collapsed",
        "collapse_rate",
        "paper",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for g in summary["groups"]:
        c = g["collapse"]
        for s in summary["splits"]:
            st = g["splits"][s]
            comp = (g["comparison"] or {}).get(s, {})
            rst = g["restored"].get(s, {})
            row = {
                "group": g["name"],
                "signal": g["signal"],
                "scheme": g["scheme"],
                "lr": g["lr"],
                "split": s,
                "n": g["n"],
                **{k: st[k] for k in _STAT_KEYS},
                **{k: st[k] for k in ("iqm", "iqm_ci_low", "iqm_ci_high")},
                **{
                    k: comp.get(k)
                    for k in (
                        "diff",
                        "hedges_g",
                        "poi",
                        "poi_ci_low",
                        "poi_ci_high",
                        "welch_p",
                        "mwu_p",
                        "welch_p_adj",
                        "mwu_p_adj",
                    )
                },
                **{f"restored_{k}": rst.get(k) for k in _STAT_KEYS},
                "collapsed": c["collapsed"] if c and c["runs"] else None,
                "collapse_rate": _collapse_rate(g) if c and c["runs"] else None,
                "paper": g["paper"]["score"] if g.get("paper") and s == PAPER_SPLIT else None,
            }
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


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


def main_latex(summary: dict[str, Any]) -> str:
    """A booktabs table for the paper: mean ± CI half-width, the best mean per column in bold.

    ± half-width is the conventional compact form; the exact (asymmetric) bounds are in the CSV.
    """
    splits, groups, restored = summary["splits"], summary["groups"], summary["restored_splits"]
    paper = bool(summary.get("paper"))
    columns = [(s, "splits") for s in splits] + [(s, "restored") for s in restored]
    best = {
        (s, kind): max((round(100 * g[kind][s]["mean"], 1) for g in groups if s in g[kind]), default=None)
        for s, kind in columns
    }
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l r " + "r " * len(columns) + "c" + (" r" if paper else "") + "}",
        r"\toprule",
        " & ".join(
            ["Group", "$n$"]
            + [_tex_escape(s) for s in splits]
            + [_tex_escape(f"{s} restored") for s in restored]
            + ["Collapsed"]
            + (["Paper"] if paper else [])
        )
        + r" \\",
        r"\midrule",
    ]
    for g in groups:
        cells = [_tex_escape(g["name"]), str(g["n"])]
        cells += [_tex_stat(g[kind].get(s), g["n"], best[(s, kind)]) for s, kind in columns]
        cells.append(_collapse_rate(g).replace("—", "--"))
        if paper:
            cells.append(_paper_cell(g).replace("—", "--"))
        lines.append(" & ".join(cells) + r" \\")
    caption = (
        f"Task success (\\%), mean over seeds $\\pm$ half-width of the {100 * summary['confidence']:g}\\% "
        f"percentile-bootstrap CI; best per column in bold. Baseline: {_tex_escape(summary['baseline'])}."
        + _tex_escape(_diagnostics_caption(summary, code="") + _paper_caption(summary, code=""))
        .replace("<", r"\textless{}")
        .replace(">", r"\textgreater{}")
    )
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:main}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def category_markdown(rows: Sequence[dict[str, Any]], splits: Sequence[str]) -> str:
    lines = [
        (
            "Task success (%) per task category: the mean over seeds, with the range over seeds in "
            "brackets; `average` is the mean over categories."
        ),
        "",
    ]
    for s in splits:
        mine = [r for r in rows if r["split"] == s]
        if not mine:
            continue
        cats = list(dict.fromkeys(r["category"] for r in mine if r["category"] != "average")) + ["average"]
        lines += [f"**{s}**", "", "| group | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        for name in dict.fromkeys(r["group"] for r in mine):
            by = {r["category"]: r for r in mine if r["group"] == name}
            cells = [
                "—"
                if c not in by
                else _pct(by[c]["mean"]) + ("" if by[c]["n"] == 1 else f" [{_pct(by[c]['min'])}, {_pct(by[c]['max'])}]")
                for c in cats
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def category_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["group", "split", "category", "n", "mean", "min", "max"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- effects


def _ci_text(lo: float, hi: float) -> str:
    return f" [{_pct(lo)}, {_pct(hi)}]"


def effects_markdown(summary: dict[str, Any]) -> str:
    """The comparison with the baseline, in the measures rliable recommends for few runs, beside
    the p-values: with 3 seeds a p-value says little, an effect size and P(improvement) with an
    honest interval say how large and how reliable a difference is."""
    lines = [
        (
            f"Each group against the baseline `{summary['baseline']}`, per split. `mean`: over seeds, "
            f"{100 * summary['confidence']:g}% percentile-bootstrap CI. `IQM`: the interquartile mean of the "
            f"seed × task-category success rates, with a stratified-bootstrap CI (seeds resampled within each "
            f"category; the seed is the unit of replication, tasks are averaged within a category first). "
            f"`Δ`: difference of means (points). `g`: Hedges' g, the small-sample-corrected standardised "
            f"difference (n/a without variance). `P(>baseline)`: the probability that a run of the group "
            f"beats a run of the baseline on a category (ties count half), averaged over categories, with a "
            f"stratified-bootstrap CI; 50 is no difference, and rliable calls an improvement meaningful when "
            f"the lower bound clears 50. Welch and MWU p-values are {_correction_words(summary['correction'])}."
        ),
        "",
    ]
    few = few_seed_groups(summary)
    if few:
        lines += [
            f"**Warning:** fewer than {MIN_SEEDS} seeds: " + ", ".join(f"`{g['name']}` (n={g['n']})" for g in few),
            "",
        ]
    ref_n = next(g["n"] for g in summary["groups"] if g["name"] == summary["baseline"])
    for s in summary["splits"]:
        lines += [
            f"**{s}**",
            "",
            "| group | n | mean | IQM | Δ | g | P(>baseline) | Welch | MWU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for g in summary["groups"]:
            st, c = g["splits"][s], (g["comparison"] or {}).get(s)
            cells = [
                g["name"],
                str(g["n"]),
                _stat_cell(st, g["n"]),
                _pct(st["iqm"]) + ("" if g["n"] == 1 else _ci_text(st["iqm_ci_low"], st["iqm_ci_high"])),
            ]
            if c is None:
                cells += ["—"] * 5
            else:
                g_eff = "n/a" if c["hedges_g"] is None else f"{c['hedges_g']:+.2f}"
                both = g["n"] > 1 and ref_n > 1
                poi = _pct(c["poi"]) + (_ci_text(c["poi_ci_low"], c["poi_ci_high"]) if both else "")
                cells += [f"{100 * c['diff']:+.1f}", g_eff, poi, _fmt_p(c["welch_p_adj"]), _fmt_p(c["mwu_p_adj"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- scheme and learning-rate tables

# table → (the field that becomes columns, the fields that label a row)
PIVOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "schemes": ("scheme", ("signal", "lr")),
    "lr": ("lr", ("signal", "scheme")),
}


def _label(field: str, value: Any) -> str:
    return format_lr(value) if field == "lr" else str(value)


def _pivot(summary: dict[str, Any], name: str) -> tuple[list[Any], dict[tuple[Any, ...], dict[Any, dict[str, Any]]]]:
    """Column values (sorted) and rows: row labels → column value → group record."""
    field, keys = PIVOTS[name]
    trained = [g for g in summary["groups"] if g["name"] != BASE]
    values = sorted({g[field] for g in trained})
    rows: dict[tuple[Any, ...], dict[Any, dict[str, Any]]] = {}
    for g in trained:
        rows.setdefault(tuple(g[k] for k in keys), {})[g[field]] = g
    return values, rows


_PIVOT_CAPTIONS = {
    "schemes": "The scheme comparison: task success (%) of each signal under each training scheme (how SFT and "
    "RL are combined), one table per split and learning rate row.",
    "lr": "The learning-rate analysis: task success (%) of each recipe at each RL learning rate, one table per "
    "split, and the collapse rate (runs in which the collapse detector fired, over runs with a training log).",
}


def _base_line(summary: dict[str, Any]) -> str | None:
    base = next((g for g in summary["groups"] if g["name"] == BASE), None)
    if base is None:
        return None
    return (
        "`base` (the warm-up model, before RL): "
        + ", ".join(f"{s} {_pct(base['splits'][s]['mean'])}" for s in summary["splits"])
        + "."
    )


def pivot_markdown(summary: dict[str, Any], name: str) -> str:
    field, keys = PIVOTS[name]
    values, rows = _pivot(summary, name)
    lines = [
        _PIVOT_CAPTIONS[name] + f" Mean over seeds with a {100 * summary['confidence']:g}% percentile-bootstrap "
        "CI in brackets; `—`: not in the sweep.",
        "",
    ]
    if (base := _base_line(summary)) is not None:
        lines += [base, ""]
    head = "| " + " | ".join(list(keys) + [_label(field, v) for v in values]) + " |"
    rule = "|" + "---|" * len(keys) + "---:|" * len(values)
    sections: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        (s, lambda g, s=s: _stat_cell(g["splits"][s], g["n"])) for s in summary["splits"]
    ]
    if name == "lr":
        sections.append(("collapsed", _collapse_rate))
    for title, cell in sections:
        lines += [f"**{title}**", "", head, rule]
        for key, by in rows.items():
            labels = [_label(k, v) for k, v in zip(keys, key, strict=True)]
            lines.append("| " + " | ".join(labels + [cell(by[v]) if v in by else "—" for v in values]) + " |")
        lines.append("")
    return "\n".join(lines)


def pivot_csv(summary: dict[str, Any], name: str) -> str:
    """Wide, like the table: one row per row label, `<split> <value>` columns with their CI bounds."""
    field, keys = PIVOTS[name]
    values, rows = _pivot(summary, name)
    columns = list(keys)
    for s in summary["splits"]:
        for v in values:
            col = f"{s} {_label(field, v)}"
            columns += [col, f"{col} ci_low", f"{col} ci_high", f"{col} n"]
    if name == "lr":
        columns += [f"collapsed {_label(field, v)}" for v in values]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for key, by in rows.items():
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for s in summary["splits"]:
            for v in values:
                if v in by:
                    st, col = by[v]["splits"][s], f"{s} {_label(field, v)}"
                    row |= {
                        col: st["mean"],
                        f"{col} ci_low": st["ci_low"],
                        f"{col} ci_high": st["ci_high"],
                        f"{col} n": by[v]["n"],
                    }
        if name == "lr":
            for v in values:
                c = by[v]["collapse"] if v in by else None
                row[f"collapsed {_label(field, v)}"] = _collapse_rate(by[v]) if c and c["runs"] else None
        w.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def pivot_latex(summary: dict[str, Any], name: str) -> str:
    """booktabs: a column group per split, a column per scheme (or learning rate) under it; mean ±
    CI half-width, the best mean per column in bold."""
    field, keys = PIVOTS[name]
    values, rows = _pivot(summary, name)
    splits = summary["splits"]
    k = len(values)
    best = {
        (s, v): max((round(100 * by[v]["splits"][s]["mean"], 1) for by in rows.values() if v in by), default=None)
        for s in splits
        for v in values
    }
    first = len(keys) + 1
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + "l" * len(keys) + (" " + "r" * k) * len(splits) + "}",
        r"\toprule",
        " & ".join([""] * len(keys) + [rf"\multicolumn{{{k}}}{{c}}{{{_tex_escape(s)}}}" for s in splits]) + r" \\",
        " ".join(rf"\cmidrule(lr){{{first + i * k}-{first + (i + 1) * k - 1}}}" for i in range(len(splits))),
        " & ".join(
            [_tex_escape(x.capitalize() if x != "lr" else "LR") for x in keys]
            + [_tex_escape(_label(field, v)) for _ in splits for v in values]
        )
        + r" \\",
        r"\midrule",
    ]
    for key, by in rows.items():
        cells = [_tex_escape(_label(kf, kv)) for kf, kv in zip(keys, key, strict=True)]
        cells += [
            _tex_stat(by[v]["splits"][s], by[v]["n"], best[(s, v)]) if v in by else "--" for s in splits for v in values
        ]
        lines.append(" & ".join(cells) + r" \\")
    caption = _tex_escape(
        _PIVOT_CAPTIONS[name].split(":")[0] + f": task success (%), mean over seeds $\\pm$ half-width "
        f"of the {100 * summary['confidence']:g}% percentile-bootstrap CI; best per column in bold."
    )
    caption = caption.replace(r"\$\textbackslash{}pm\$", r"$\pm$")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:{name}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"
