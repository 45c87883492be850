rule aggregate:
    """Mean and seed-clustered Wilson interval per cell and split (and the restoration probe); the
    difference from the baseline and the base model with its interval, exact permutation tests,
    effect sizes and seeds needed; the collapse detector over each run's train log; the paper's tables (main, schemes, learning rates,
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
        # toolrl.analysis.outputs.OUTPUTS: the files the job writes, by the same list.
        **AGGREGATE_OUTPUTS,
    params:
        config=RESOLVED,
        stage=section_hash(CFG_DATA, "aggregate", "sweep", "diagnostics"),
    log:
        f"{SWEEP}/logs/aggregate.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl aggregate --config {params.config} --experiment {input.experiment} 2> {log}"
