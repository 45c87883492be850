"""What the aggregate stage writes, one entry per file: `report.aggregate` writes exactly these
files and the aggregate rule (workflow/rules/aggregate.smk) declares exactly these outputs, both
from this list, so a file added here is written and tracked without a second spelling of its path.

Plain data on purpose: Snakemake imports this module while it parses the workflow, so nothing
here may pull in numpy or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    name: str  # the aggregate rule's output keyword; `report.aggregate` renders each file by it
    path: str  # relative to the sweep folder
    caption: str | None = None  # a file in workflow/report/: the output goes into `snakemake --report`
    category: str | None = None  # its section in that report


OUTPUTS: tuple[Output, ...] = (
    Output("table", "tables/main.md", "main_table.rst", "Tables"),
    Output("csv", "tables/main.csv"),
    Output("tex", "tables/main.tex"),
    Output("effects", "tables/effects.md", "effects_table.rst", "Tables"),
    Output("schemes", "tables/schemes.md", "schemes_table.rst", "Tables"),
    Output("schemes_csv", "tables/schemes.csv"),
    Output("schemes_tex", "tables/schemes.tex"),
    Output("lr", "tables/lr.md", "lr_table.rst", "Tables"),
    Output("lr_csv", "tables/lr.csv"),
    Output("lr_tex", "tables/lr.tex"),
    Output("categories", "tables/categories.md", "category_table.rst", "Tables"),
    Output("categories_csv", "tables/categories.csv"),
    Output("plot", "plots/success.png", "success_plot.rst", "Figures"),
    Output("plot_pdf", "plots/success.pdf"),
    Output("curves", "plots/curves.png", "curves_plot.rst", "Figures"),
    Output("curves_pdf", "plots/curves.pdf"),
    Output("lr_plot", "plots/lr.png", "lr_plot.rst", "Figures"),
    Output("lr_plot_pdf", "plots/lr.pdf"),
    Output("profiles", "plots/profiles.png", "profiles_plot.rst", "Figures"),
    Output("profiles_pdf", "plots/profiles.pdf"),
    # Last: written once every table and figure is.
    Output("summary", "summary.json"),
)

BY_NAME: dict[str, Output] = {o.name: o for o in OUTPUTS}


def path(name: str) -> str:
    """The file of the output `name`, relative to the sweep folder."""
    return BY_NAME[name].path


__all__ = ["BY_NAME", "OUTPUTS", "Output", "path"]
