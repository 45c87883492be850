rule aggregate:
    """Mean ± bootstrap CI over seeds per cell and split (and the restoration probe), IQM and probability
    of improvement with stratified-bootstrap CIs, tests and effect sizes against the baseline, the
    collapse detector over each run's train log; the paper's tables (main, schemes, learning rates,
    categories) and figures (PNG and PDF); every evaluation's numbers go to its run in MLflow."""
    input:
        # Every cell's evaluations, train log and run record, unnamed on purpose: Snakemake (9.27)
        # hashes a named input list once per file in it when the rule also names another rule's
        # output, quadratic in the cells: 40% of `snakemake -n` on a 2,000-cell grid.
        expand("{run}/eval/{split}.json", run=RUN_DIRS, split=SPLITS),
        expand("{run}/train_log.jsonl", run=RUN_DIRS),
        expand("{run}/run.json", run=RUN_DIRS),
        experiment=rules.mlflow_init.output,
        base=expand(f"{SWEEP}/base/eval/{{split}}.json", split=SPLITS),
        warmup=rules.warmup.output.report,
    output:
        table=report(f"{SWEEP}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
        csv=f"{SWEEP}/tables/main.csv",
        tex=f"{SWEEP}/tables/main.tex",
        effects=report(f"{SWEEP}/tables/effects.md", caption="../report/effects_table.rst", category="Tables"),
        schemes=report(f"{SWEEP}/tables/schemes.md", caption="../report/schemes_table.rst", category="Tables"),
        schemes_csv=f"{SWEEP}/tables/schemes.csv",
        schemes_tex=f"{SWEEP}/tables/schemes.tex",
        lr=report(f"{SWEEP}/tables/lr.md", caption="../report/lr_table.rst", category="Tables"),
        lr_csv=f"{SWEEP}/tables/lr.csv",
        lr_tex=f"{SWEEP}/tables/lr.tex",
        categories=report(f"{SWEEP}/tables/categories.md", caption="../report/category_table.rst", category="Tables"),
        categories_csv=f"{SWEEP}/tables/categories.csv",
        plot=report(f"{SWEEP}/plots/success.png", caption="../report/success_plot.rst", category="Figures"),
        curves=report(f"{SWEEP}/plots/curves.png", caption="../report/curves_plot.rst", category="Figures"),
        lr_plot=report(f"{SWEEP}/plots/lr.png", caption="../report/lr_plot.rst", category="Figures"),
        profiles=report(f"{SWEEP}/plots/profiles.png", caption="../report/profiles_plot.rst", category="Figures"),
        pdfs=expand(f"{SWEEP}/plots/{{name}}.pdf", name=["success", "curves", "lr", "profiles"]),
        summary=f"{SWEEP}/summary.json",
    params:
        config=RESOLVED,
        stage=section_hash(CFG_DATA, "aggregate", "sweep", "diagnostics"),
    log:
        f"{SWEEP}/logs/aggregate.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl aggregate --config {params.config} --experiment {input.experiment} 2> {log}"
