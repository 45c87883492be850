"""The sweep's tables, from the summary that `report.aggregate` builds: Markdown for reading,
CSV (long format, one row per group × split × column) for pandas, LaTeX (booktabs, best per column in
bold, the interval in brackets) for the paper.

* `main`: every group × split, mean over seeds with its interval, the restoration probe, the
  collapse rate, the exact tests against the baseline and the base model and, for a sweep that
  names one, the paper's numbers.
* `effects`: how each group differs from the baseline and from the base model — the difference
  with its interval, Hedges' g, the exact test and the seeds a conclusive test would need.
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

from toolrl.analysis import stats
from toolrl.config import format_lr
from toolrl.paper import PAPER_SPLIT

BASE = "base"
MIN_SEEDS = 3
# What every group is compared with, in column order: the configured baseline recipe, and the
# warm-up model every cell starts from.
REFERENCES = ("baseline", "base")
DAGGER = "†"


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
    """ "2/3": collapsed runs over the runs with a training log, "2/3 (1 content)" when some were
    content collapses; "—" for the base model (no RL), "n/a" for a group without any log."""
    c = g["collapse"]
    if c is None:
        return "—"
    if not c["runs"]:
        return "n/a"
    content = c.get("content", 0)
    return f"{c['collapsed']}/{c['runs']}" + (f" ({content} content)" if content else "")


def _by_mode_cell(st: dict[str, Any] | None) -> str:
    """ "token 2: 0.0 → 3.1; content 1: 0.0": per collapse mode, runs and success → restored."""
    parts = []
    for mode, m in ((st or {}).get("by_mode") or {}).items():
        n = len(m["seeds"])
        if mode == "token":
            parts.append(f"{mode} {n}: {_pct(m['success'])} → {_pct(m['restored'])}")
        else:
            parts.append(f"{mode} {n}: {_pct(m['success'])}")
    return "; ".join(parts) or "—"


def few_seed_groups(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Trained groups below MIN_SEEDS; the base model has one evaluation by design, so it is exempt."""
    return [g for g in summary["groups"] if g["name"] != BASE and g["n"] < MIN_SEEDS]


def _diagnostics_caption(summary: dict[str, Any], code: str = "`") -> str:
    d = summary["diagnostics"]
    text = (
        f" {code}collapsed{code}: runs in which the collapse detector fired, over the group's runs with a "
        f"training log: success (rolling mean over {d['window']} RL steps) fell to at most "
        f"{100 * (1 - d['reward_drop']):g}% of its first-{d['window']}-step mean while a control-token "
        f"probability moved by at least {d['token_shift']:g} (absolute) from its start"
    )
    if d.get("pollution_rise") is not None:
        text += (
            f", or, with no such move, the share of polluted and empty messages rose by at least "
            f"{d['pollution_rise']:g} (a content collapse, counted in brackets)"
        )
    text += "."
    if summary["restored_splits"]:
        text += (
            f" {code}<split> restored{code}: the same greedy evaluation with the control-token patterns each "
            "run's own collapse showed forbidden by a logit mask (the restoration probe; the patterns follow "
            "from the probes that moved by the token shift, e.g. a call turn forced to open with "
            "`<tool_call>` where that probe fell), mean over seeds with the same interval; a run that showed no "
            f"pattern (not collapsed, a content collapse) keeps its own rate. {code}by mode{code}: per collapse "
            "mode, the number of runs and their mean success → mean restored success (content: nothing to forbid)."
        )
    return text


def _stat_cell(st: dict[str, Any] | None, n: int) -> str:
    if st is None:
        return "—"
    if n == 1:
        return _pct(st["mean"])
    mark = DAGGER if st.get("constant") else ""
    return f"{_pct(st['mean'])} [{_pct(st['ci_low'])}, {_pct(st['ci_high'])}]{mark}"


def _tasks_words(summary: dict[str, Any]) -> str:
    """'id 64, format_ood 64, …': the tasks T per run on each split (a range if groups differ)."""
    parts = []
    for s in summary["splits"]:
        ts = sorted({g["tasks"][s] for g in summary["groups"]})
        parts.append(f"{s} {ts[0]}" if len(ts) == 1 else f"{s} {ts[0]}–{ts[-1]}")
    return ", ".join(parts)


def _trained_ns(summary: dict[str, Any]) -> list[int]:
    """The seed count of every trained group (the base model has one evaluation by design)."""
    return [g["n"] for g in summary["groups"] if g["name"] != BASE]


def _seeds_words(summary: dict[str, Any]) -> str:
    """'n = 3' or 'n = 2 to 5, per group in main.md': the seeds of the trained groups."""
    ns = sorted(set(_trained_ns(summary)))
    if not ns:
        return "n = 1"
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]} to {ns[-1]}, per group in main.md"


def interval_caption(summary: dict[str, Any]) -> str:
    """What the brackets hold, with n and T: the one sentence every table that prints them shares."""
    method = (
        "the Wilson score interval over all n × T task outcomes, with Kish's effective sample size from the "
        "spread of the seeds' rates and Student's t with n − 1 degrees of freedom; its simulated coverage is "
        "in docs/statistics.md"
    )
    return (
        f"In brackets: the {100 * summary['confidence']:g}% {summary['interval']} interval over the group's n "
        f"seeds ({_seeds_words(summary)}; {method}). T, tasks per run: {_tasks_words(summary)}. "
        f"{DAGGER}: every seed scored the same, so the interval assumes no seed effect."
    )


def _common_n(summary: dict[str, Any]) -> int:
    ns = _trained_ns(summary)
    return max(set(ns), key=ns.count) if ns else 1


def tests_caption(summary: dict[str, Any]) -> str:
    """Which exact tests the p-values come from, and the smallest p each can give at this sweep's n."""
    n = _common_n(summary)
    m = next(g["n"] for g in summary["groups"] if g["name"] == summary["baseline"])
    text = (
        f"p-values are two-sided permutation tests over seeds, exact (every relabelling, up to "
        f"{stats.EXACT_LIMIT:,}; random ones beyond), {_correction_words(summary['correction'])} per split and "
        f"reference across the compared groups: against the baseline `{summary['baseline']}`, every split of "
        f"the two groups' seeds (at {n} vs {m} seeds no p can be below {stats.min_p(n, m):.3g})"
    )
    if "base" in summary["references"]:
        text += (
            f"; against `{BASE}` (one fixed model), every sign flip of the seeds' differences from its score "
            f"(at {n} seeds no p can be below {stats.min_p(n):.3g})"
        )
    return text + "."


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


def _comparison(g: dict[str, Any], ref: str, split: str) -> dict[str, Any] | None:
    return (g["comparison"].get(ref) or {}).get(split)


def main_markdown(summary: dict[str, Any]) -> str:
    splits, groups, restored = summary["splits"], summary["groups"], summary["restored_splits"]
    caption = (
        "Task success (%) per split: the mean over seeds of each run's success rate. "
        + interval_caption(summary)
        + " "
        + tests_caption(summary)
        + f" Effect sizes, intervals of the differences and the seeds a conclusive test needs: `effects.md`. "
        f"`{BASE}` is the warm-up (SFT) model every cell starts from, before any RL (one evaluation, no interval)."
        + _diagnostics_caption(summary)
        + _paper_caption(summary)
    )
    refs = summary["references"]
    header = (
        ["group", "n"]
        + list(splits)
        + [f"{s} restored" for s in restored]
        + [f"{s} restored by mode" for s in restored]
        + ["collapsed"]
        + [f"{s} p vs {r}" for r in refs for s in splits]
        + (["paper"] if summary.get("paper") else [])
    )
    rows = []
    for g in groups:
        cells = [g["name"], str(g["n"])]
        cells += [_stat_cell(g["splits"][s], g["n"]) for s in splits]
        cells += [_stat_cell(g["restored"].get(s), g["n"]) for s in restored]
        cells += [_by_mode_cell(g["restored"].get(s)) for s in restored]
        cells.append(_collapse_rate(g))
        for r in refs:
            for s in splits:
                c = _comparison(g, r, s)
                cells.append("—" if c is None else _fmt_p(c["p_adj"]))
        if summary.get("paper"):
            cells.append(_paper_cell(g))
        rows.append(cells)
    lines = [caption, ""]
    few = few_seed_groups(summary)
    if few:
        names = ", ".join(f"`{g['name']}` (n={g['n']})" for g in few)
        lines += [f"**Warning:** fewer than {MIN_SEEDS} seeds, so intervals and p-values are unreliable: {names}.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_STAT_KEYS = ("mean", "std", "ci_low", "ci_high", "constant")
_COMPARISON_KEYS = (
    "diff",
    "ci_low",
    "ci_high",
    "p",
    "p_adj",
    "min_p",
    "hedges_g",
    "group_degenerate",
    "reference_degenerate",
    "seeds_needed",
)


_BY_MODE_COLUMNS = ("restored_token_runs", "restored_token_success", "restored_token_restored", "restored_content_runs")


def _by_mode_columns(by_mode: dict[str, Any]) -> dict[str, Any]:
    token, content = by_mode.get("token"), by_mode.get("content")
    return {
        "restored_token_runs": len(token["seeds"]) if token else 0,
        "restored_token_success": token["success"] if token else None,
        "restored_token_restored": token["restored"] if token else None,
        "restored_content_runs": len(content["seeds"]) if content else 0,
    }


def main_csv(summary: dict[str, Any]) -> str:
    """Long format, one row per group and split. The restored statistics sit on their split's row
    (empty where the split was not probed); the collapse count is per group, repeated on each row;
    `<reference>_<key>` holds the comparison with the baseline and with the base model."""
    columns = [
        "group",
        "signal",
        "scheme",
        "lr",
        "split",
        "n",
        "tasks",
        *_STAT_KEYS,
        *(f"{r}_{k}" for r in REFERENCES for k in _COMPARISON_KEYS),
        *(f"restored_{k}" for k in _STAT_KEYS),
        *_BY_MODE_COLUMNS,
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
            rst = g["restored"].get(s, {})
            row = {
                "group": g["name"],
                "signal": g["signal"],
                "scheme": g["scheme"],
                "lr": g["lr"],
                "split": s,
                "n": g["n"],
                "tasks": g["tasks"][s],
                **{k: st[k] for k in _STAT_KEYS},
                **{f"{r}_{k}": (_comparison(g, r, s) or {}).get(k) for r in REFERENCES for k in _COMPARISON_KEYS},
                **{f"restored_{k}": rst.get(k) for k in _STAT_KEYS},
                **_by_mode_columns(rst.get("by_mode") or {}),
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


def _tex_caption(text: str) -> str:
    """Caption prose (Markdown conventions) as LaTeX: escaped, with the dagger and the < > of
    `<split>` set as symbols."""
    return (
        _tex_escape(text.replace("`", ""))
        .replace(DAGGER, r"$^\dagger$")
        .replace("<", r"\textless{}")
        .replace(">", r"\textgreater{}")
    )


def _tex_stat(st: dict[str, Any] | None, n: int, best: float | None) -> str:
    """mean {\\scriptsize [low, high]}: the interval is asymmetric near 0 and 100, so no ±."""
    if st is None:
        return "--"
    value = _pct(st["mean"])
    if round(100 * st["mean"], 1) == best:
        value = rf"\textbf{{{value}}}"
    if n > 1:
        mark = r"$^\dagger$" if st.get("constant") else ""
        value += rf" {{\scriptsize [{_pct(st['ci_low'])}, {_pct(st['ci_high'])}]}}{mark}"
    return value


def main_latex(summary: dict[str, Any]) -> str:
    """A booktabs table for the paper: mean and interval, the best mean per column in bold; the
    caption names the interval, n and T."""
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
    caption = _tex_caption(
        f"Task success (%), mean over $n$ seeds; best per column in bold. Baseline: {summary['baseline']}. "
        + interval_caption(summary)
        + _diagnostics_caption(summary, code="")
        + _paper_caption(summary, code="")
    ).replace(r"\$n\$", "$n$")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:main}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def category_markdown(rows: Sequence[dict[str, Any]], splits: Sequence[str]) -> str:
    lines = [
        (
            "Task success (%) per task category: the mean over seeds, with the range over seeds in "
            "brackets (the lowest and highest seed, not an interval); `average` is the mean over categories."
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


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _diff_cell(c: dict[str, Any]) -> str:
    if c["ci_low"] is None:
        return _pts(c["diff"])
    return f"{_pts(c['diff'])} [{_pts(c['ci_low'])}, {_pts(c['ci_high'])}]"


def _g_cell(c: dict[str, Any]) -> str:
    if c["reference_degenerate"]:
        return f"n/a (baseline {c['reference_degenerate']})"
    if c["group_degenerate"]:
        return f"n/a ({c['group_degenerate']})"
    return "n/a" if c["hedges_g"] is None else f"{c['hedges_g']:+.2f}"


def _seeds_cell(c: dict[str, Any]) -> str:
    if c["p"] is None:
        return "n/a"
    if abs(c["diff"]) <= 1e-12:
        return "—"
    return f">{stats.MAX_SEEDS}" if c["seeds_needed"] is None else str(c["seeds_needed"])


def _level_words(summary: dict[str, Any]) -> str:
    if summary["correction"] == "none":
        return f"{summary['alpha']:g}"
    return (
        f"{summary['alpha']:g} divided by the number of compared groups (what the correction asks of a "
        f"comparison that stands alone)"
    )


def underpowered(summary: dict[str, Any]) -> list[str]:
    """One line per group and reference whose difference is not significant and would need more
    seeds than the group has: the comparisons a reader must not read as 'no effect'."""
    lines = []
    for g in summary["groups"]:
        for r in summary["references"]:
            short = []
            for s in summary["splits"]:
                c = _comparison(g, r, s)
                if c is None or c["p_adj"] is None or abs(c["diff"]) <= 1e-12 or c["p_adj"] <= summary["alpha"]:
                    continue
                if c["seeds_needed"] is None or c["seeds_needed"] > g["n"]:
                    short.append(f"{s} {_seeds_cell(c)}")
            if short:
                lines.append(f"`{g['name']}` (n={g['n']}) vs {r}: " + ", ".join(short))
    return lines


def effects_markdown(summary: dict[str, Any]) -> str:
    """Each group against the baseline and the base model: how large the difference is and how sure
    (its interval), whether the exact test can tell, and how many seeds it would take."""
    refs = summary["references"]
    lines = [
        (
            f"Each group against the baseline `{summary['baseline']}`"
            + (f" and against `{BASE}`, the model every cell starts from" if "base" in refs else "")
            + f", per split. `mean`: success (%) over seeds. {interval_caption(summary)} "
            f"`Δ`: difference of means in points, with its {100 * summary['confidence']:g}% interval (MOVER: the two "
            f"groups' intervals at the Welch–Satterthwaite t quantile, combined; against `{BASE}`, whose score is one "
            f"fixed number, the group's own interval shifted). `g`: Hedges' g, the small-sample-corrected "
            f"standardised difference; not given where one side's seeds all scored the same, since it then "
            f"divides by the other group's spread alone and reads as huge. `p`: {tests_caption(summary)} "
            f"`seeds`: seeds per group for {100 * summary['power']:g}% power to detect "
            f"the observed difference with the observed spread at level {_level_words(summary)}, taking both as "
            f"the truth: a planning number, not evidence (n/a: a single seed has no spread)."
        ),
        "",
    ]
    few = few_seed_groups(summary)
    if few:
        lines += [
            f"**Warning:** fewer than {MIN_SEEDS} seeds: " + ", ".join(f"`{g['name']}` (n={g['n']})" for g in few),
            "",
        ]
    degenerate = sorted(
        {
            (r, summary["baseline"] if r == "baseline" else BASE, s, c["reference_degenerate"])
            for g in summary["groups"]
            for r in refs
            for s in summary["splits"]
            if (c := _comparison(g, r, s)) is not None and c["reference_degenerate"]
        }
    )
    if degenerate:
        lines += [
            "**Degenerate reference:** "
            + "; ".join(f"the {label} `{name}` on {s} ({what})" for label, name, s, what in degenerate)
            + ". A difference from it is still measured and tested, but a standardised effect is not.",
            "",
        ]
    short = underpowered(summary)
    if short:
        lines += [
            "**Underpowered** (not significant, and the seeds a conclusive test would need exceed the seeds run; "
            "absence of evidence, not evidence of absence): " + "; ".join(short) + ".",
            "",
        ]
    head = ["group", "n", "mean"]
    for r in refs:
        head += [f"Δ {r}"] + (["g"] if r == "baseline" else []) + [f"p {r}", f"seeds {r}"]
    for s in summary["splits"]:
        lines += [f"**{s}**", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for g in summary["groups"]:
            cells = [g["name"], str(g["n"]), _stat_cell(g["splits"][s], g["n"])]
            for r in refs:
                c = _comparison(g, r, s)
                width = 4 if r == "baseline" else 3
                if c is None:
                    cells += ["—"] * width
                    continue
                cells.append(_diff_cell(c))
                if r == "baseline":
                    cells.append(_g_cell(c))
                cells += [_fmt_p(c["p_adj"]), _seeds_cell(c)]
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
        _PIVOT_CAPTIONS[name] + " Mean over seeds. " + interval_caption(summary) + " `—`: not in the sweep.",
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
    """Wide, like the table: one row per row label, `<split> <value>` columns with their interval bounds."""
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
    """booktabs: a column group per split, a column per scheme (or learning rate) under it; mean and
    interval, the best mean per column in bold."""
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
    caption = _tex_caption(
        _PIVOT_CAPTIONS[name].split(":")[0]
        + ": task success (%), mean over seeds; best per column in bold. "
        + interval_caption(summary)
    )
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:{name}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"
