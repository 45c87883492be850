rule evaluate:
    """Greedy evaluation of one trained cell on one split (id, format_ood, content_ood)."""
    input:
        data=rules.prepare.output,
        model=rules.train.output.model,
    output:
        f"{SWEEP}/runs/{CELL}/eval/{{split}}.json",
    params:
        config=RESOLVED,
        stage=section_hash(CFG_DATA, "rollout", "diagnostics.restore_splits", "diagnostics.forbid"),
        data=f"{SWEEP}/data",
    threads: CFG.resources.threads
    resources:
        mem_mb=CFG.resources.eval_mem_mb,
        runtime=CFG.resources.eval_runtime,
        gpu=CFG.resources.gpus,
    log:
        f"{SWEEP}/logs/eval/{CELL}/{{split}}.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl evaluate --config {params.config} --data {params.data} --model {input.model}"
        " --split {wildcards.split} --out {output}"
        " --signal {wildcards.signal} --scheme {wildcards.scheme} --lr {wildcards.lr} --seed {wildcards.seed}"
        " --threads {threads} 2> {log}"


rule evaluate_base:
    """The base model on the same splits: the row every cell is read against."""
    input:
        data=rules.prepare.output,
        model=rules.warmup.output.model,
    output:
        f"{SWEEP}/base/eval/{{split}}.json",
    params:
        config=RESOLVED,
        stage=section_hash(CFG_DATA, "rollout", "diagnostics.restore_splits", "diagnostics.forbid"),
        data=f"{SWEEP}/data",
    threads: CFG.resources.threads
    resources:
        mem_mb=CFG.resources.eval_mem_mb,
        runtime=CFG.resources.eval_runtime,
        gpu=CFG.resources.gpus,
    log:
        f"{SWEEP}/logs/eval/base/{{split}}.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl evaluate --config {params.config} --data {params.data} --model {input.model}"
        " --split {wildcards.split} --out {output}"
        " --threads {threads} 2> {log}"
