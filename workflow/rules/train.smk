rule warmup:
    """The base model: built (tiny default) or loaded, then SFT on expert trajectories."""
    input:
        data=rules.prepare.output,
        experiment=rules.mlflow_init.output,
        pretrained=PRETRAINED,
    output:
        model=directory(f"{SWEEP}/base/model"),
        report=f"{SWEEP}/base/warmup.json",
    params:
        config=RESOLVED,
        stage=section_hash(CFG_DATA, "model", "warmup", "rollout"),
        data=data_dir,
        out=lambda wildcards, output: str(Path(output.report).parent),
    threads: CFG.resources.warmup_threads
    resources:
        mem_mb=CFG.resources.train_mem_mb,
        runtime=CFG.resources.train_runtime,
        gpu=CFG.resources.gpus,
    log:
        f"{SWEEP}/logs/warmup.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl warmup --config {params.config} --data {params.data} --experiment {input.experiment}"
        " --out {params.out} --threads {threads}"
        + (" --pretrained {input.pretrained}" if PRETRAINED else "")
        + " 2> {log}"


rule train:
    """One grid cell: the scheme's SFT and RL phases from the base model."""
    input:
        data=rules.prepare.output,
        base=rules.warmup.output.model,
        experiment=rules.mlflow_init.output,
    output:
        model=directory(f"{SWEEP}/runs/{CELL}/model"),
        log=f"{SWEEP}/runs/{CELL}/train_log.jsonl",
        run=f"{SWEEP}/runs/{CELL}/run.json",
    params:
        config=RESOLVED,
        stage=lambda w: train_stage(w.signal, w.scheme),
        data=data_dir,
        out=lambda wildcards, output: str(Path(output.run).parent),
    threads: CFG.resources.threads
    resources:
        mem_mb=CFG.resources.train_mem_mb,
        runtime=CFG.resources.train_runtime,
        gpu=CFG.resources.gpus,
        slurm_extra=TRAIN_SLURM_EXTRA,
    log:
        f"{SWEEP}/logs/train/{CELL}.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl train --config {params.config} --data {params.data} --base {input.base}"
        " --experiment {input.experiment} --out {params.out} --signal {wildcards.signal}"
        " --scheme {wildcards.scheme} --lr {wildcards.lr} --seed {wildcards.seed} --threads {threads} 2> {log}"
