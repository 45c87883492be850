rule evaluate:
    """Greedy evaluation of one model on every split (id, format_ood, content_ood) in one job, which
    loads the model once (a job per split spent half its time starting up): a trained cell's, or,
    with {run} = `base` (a pseudo-cell), the base model's: the row every cell is read against."""
    input:
        data=rules.prepare.output,
        model=f"{SWEEP}/{{run}}/model",
        # A run's restoration probe forbids what its own collapse showed (none for the base model).
        train_log=lambda w: [] if w.run == "base" else f"{SWEEP}/{w.run}/train_log.jsonl",
    output:
        expand(f"{SWEEP}/{{{{run}}}}/eval/{{split}}.json", split=SPLITS),
    params:
        config=RESOLVED,
        stage=section_hash(
            CFG_DATA,
            "rollout",
            "diagnostics.restore_splits",
            *(f"diagnostics.{k}" for k in ("window", "reward_drop", "token_shift", "pollution_rise")),
        ),
        data=data_dir,
        splits=" ".join(SPLITS),
        out=lambda wildcards, output: str(Path(output[0]).parent),
    threads: CFG.resources.threads
    resources:
        mem_mb=CFG.resources.eval_mem_mb,
        runtime=CFG.resources.eval_runtime,
        gpu=CFG.resources.gpus,
    log:
        f"{SWEEP}/logs/eval/{{run}}.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl evaluate --config {params.config} --data {params.data} --model {input.model}"
        " --splits {params.splits} --out-dir {params.out} --run {wildcards.run} --threads {threads} 2> {log}"
