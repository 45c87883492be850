rule aggregate:
    """Mean ± bootstrap CI over seeds per cell and split (and the restoration probe), tests against the
    baseline, the collapse detector over each run's train log, tables and plots; every evaluation's
    numbers go to its run in MLflow."""
    input:
        experiment=rules.mlflow_init.output,
        cells=expand("{run}/eval/{split}.json", run=RUN_DIRS, split=SPLITS),
        base=expand(f"{SWEEP}/base/eval/{{split}}.json", split=SPLITS),
        logs=expand("{run}/train_log.jsonl", run=RUN_DIRS),
        runs=expand("{run}/run.json", run=RUN_DIRS),
        warmup=rules.warmup.output.report,
    output:
        table=report(f"{SWEEP}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
        csv=f"{SWEEP}/tables/main.csv",
        tex=f"{SWEEP}/tables/main.tex",
        categories=report(f"{SWEEP}/tables/categories.md", caption="../report/category_table.rst", category="Tables"),
        categories_csv=f"{SWEEP}/tables/categories.csv",
        plot=report(f"{SWEEP}/plots/success.png", caption="../report/success_plot.rst", category="Figures"),
        curves=report(f"{SWEEP}/plots/curves.png", caption="../report/curves_plot.rst", category="Figures"),
        summary=f"{SWEEP}/summary.json",
    params:
        config=RESOLVED,
        stage=section_hash(CFG, "aggregate", "sweep", "diagnostics"),
    log:
        f"{SWEEP}/logs/aggregate.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl aggregate --config {params.config} --experiment {input.experiment} 2> {log}"
