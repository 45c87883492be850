rule prepare:
    """Task splits of the synthetic world, deterministic from world.seed."""
    output:
        expand(f"{SWEEP}/data/{{name}}.jsonl", name=["warmup", "rl", "id", "content_ood"]),
    params:
        config=RESOLVED,
        world=section_hash(CFG, "world"),
        out=f"{SWEEP}/data",
    log:
        f"{SWEEP}/logs/prepare.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl prepare --config {params.config} --out {params.out} 2> {log}"


rule mlflow_init:
    """Create the MLflow store and experiment once, before parallel jobs race to do it."""
    output:
        f"{SWEEP}/mlflow/experiment.json",
    params:
        config=RESOLVED,
        mlflow=section_hash(CFG, "mlflow"),
    log:
        f"{SWEEP}/logs/mlflow_init.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl mlflow-init --config {params.config} --out {output} 2> {log}"
