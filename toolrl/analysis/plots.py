"""The sweep's figures, each written as PNG (for the Snakemake report) and PDF (for the paper):
success per split with intervals, training curves with seed bands, the learning-rate sensitivity
curve, and performance profiles (rliable's score distributions)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from toolrl.analysis.collapse import CURVES
from toolrl.config import format_lr

if TYPE_CHECKING:
    from toolrl.analysis.report import Group

BASE = "base"


def _errors(stats: Sequence[dict[str, Any]]) -> list[list[float]]:
    """Error-bar lengths (points) below and above each mean; none for a single seed."""
    low = [0.0 if x["ci_low"] is None else 100 * (x["mean"] - x["ci_low"]) for x in stats]
    high = [0.0 if x["ci_high"] is None else 100 * (x["ci_high"] - x["mean"]) for x in stats]
    return [low, high]


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG (150 dpi, for the report and READMEs) or PDF (vector, for the paper)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    """Drawn on an explicit Agg canvas so that importing this module never switches the
    process-wide pyplot backend (Snakemake jobs have no display)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def success(summary: dict[str, Any]) -> Figure:
    """Success per split, a bar per group with its interval over seeds."""
    splits, groups = summary["splits"], summary["groups"]
    width = 0.8 / len(groups)
    fig = _figure(max(6.0, 1.2 * len(splits) * (1 + 0.4 * len(groups))), 4.5)
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(splits))]
        st = [g["splits"][s] for s in splits]
        means = [100 * x["mean"] for x in st]
        ax.bar(xs, means, width, yerr=_errors(st), capsize=3, label=f"{g['name']} (n={g['n']})")
    ax.set_xticks(range(len(splits)), list(splits))
    ax.set_xlabel("evaluation split")
    ax.set_ylabel("task success (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Success by split: mean over seeds, {100 * summary['confidence']:g}% {summary['interval']} interval")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _band(per_seed: Sequence[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """steps, mean, min, max over the seeds that have a value at each step."""
    steps = sorted({t for s in per_seed for t in s})
    values = [[s[t] for s in per_seed if t in s] for t in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def curves(groups: Sequence[Group]) -> Figure:
    """One panel per training metric (`collapse.CURVES`), one line per group: the mean over seeds
    at each global step, a band from the seeds' min to max (with 3 seeds a std says little), and a
    dotted vertical line at each seed's collapse step. A single figure rather than one per group,
    because the point is to see which recipes collapse and when, side by side."""
    trained = [g for g in groups if any(r.curves for r in g.runs)]
    cols = 3
    rows = -(-(len(CURVES) + 1) // cols)
    fig = _figure(4.6 * cols, 3.6 * rows)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    colors = [f"C{i % 10}" for i in range(len(trained))]
    # The grid has more axes than curves (the spare ones hold the legend or stay empty).
    for ax, (title, _) in zip(axes, CURVES, strict=False):
        for g, color in zip(trained, colors, strict=True):
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
    for ax in axes[len(CURVES) :]:
        ax.axis("off")
    legend_ax = axes[len(CURVES)]
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        legend_ax.legend(
            handles,
            labels,
            loc="center",
            fontsize="small",
            title="mean over seeds; band: min–max;\ndotted: a seed's collapse step",
        )
    return fig


def _split_panels(summary: dict[str, Any]) -> tuple[Figure, list[Any]]:
    """A row of panels, one per split, with room on the right for one shared legend."""
    n = len(summary["splits"])
    fig = _figure(4.2 * n + 2.2, 3.8)
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def _finish_panels(fig: Figure, axes: list[Any], ylabel: str, legend_title: str) -> Figure:
    axes[0].set_ylabel(ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small", title=legend_title)
    return fig


def lr_sensitivity(summary: dict[str, Any]) -> Figure:
    """Success against the RL learning rate, a panel per split, a line per (signal, scheme) with
    interval bars over seeds; the base model as a dashed line. Where the paper's question is whether a
    signal keeps training stable at rates that make vanilla GRPO collapse, this is the picture."""
    splits = summary["splits"]
    trained = [g for g in summary["groups"] if g["name"] != BASE]
    base = next((g for g in summary["groups"] if g["name"] == BASE), None)
    recipes = list(dict.fromkeys((g["signal"], g["scheme"]) for g in trained))
    fig, axes = _split_panels(summary)
    for ax, s in zip(axes, splits, strict=True):
        for i, (signal, scheme) in enumerate(recipes):
            pts = sorted((g["lr"], g["splits"][s]) for g in trained if (g["signal"], g["scheme"]) == (signal, scheme))
            xs = [lr for lr, _ in pts]
            means = [100 * st["mean"] for _, st in pts]
            ax.errorbar(
                xs,
                means,
                yerr=_errors([st for _, st in pts]),
                marker="o",
                capsize=3,
                color=f"C{i % 10}",
                label=f"{signal}/{scheme}",
            )
        if base is not None:
            ax.axhline(100 * base["splits"][s]["mean"], color="0.4", ls="--", lw=1, label="base (before RL)")
        ax.set_xscale("log")
        lrs = sorted({g["lr"] for g in trained})
        ax.set_xticks(lrs, [format_lr(x) for x in lrs])
        ax.minorticks_off()
        ax.set_title(s)
        ax.set_xlabel("RL learning rate")
        ax.set_ylim(-3, 103)
    title = f"mean over seeds, {100 * summary['confidence']:g}%\n{summary['interval']} interval"
    return _finish_panels(fig, axes, "task success (%)", title)


THRESHOLDS = np.linspace(0.0, 1.0, 101)


def profiles(summary: dict[str, Any], scores: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Performance profiles: for each group, the fraction of its seed × task-category success
    rates above τ (rliable's score distributions), a panel per split; `scores` is group name →
    split → (seeds, categories) matrix. No band: at 3 to 10 seeds no bootstrap band over seeds has
    its stated coverage (docs/statistics.md), so the curve shows the data and claims nothing more."""
    fig, axes = _split_panels(summary)
    for ax, s in zip(axes, summary["splits"], strict=True):
        for i, g in enumerate(summary["groups"]):
            fraction = (scores[g["name"]][s].ravel()[:, None] > THRESHOLDS).mean(axis=0)
            ax.plot(
                100 * THRESHOLDS,
                fraction,
                color="0.3" if g["name"] == BASE else f"C{i % 10}",
                lw=1.5,
                ls="--" if g["name"] == BASE else "-",
                label=f"{g['name']} (n={g['n']})",
                drawstyle="steps-post",
            )
        ax.set_title(s)
        ax.set_xlabel("success threshold τ (%)")
        ax.set_ylim(-0.03, 1.03)
    return _finish_panels(fig, axes, "fraction of seeds × categories > τ", "seeds × categories")
