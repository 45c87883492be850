rule prepare:
    """Task splits and expert trajectories' sources, deterministic from world.seed."""
    input:
        config=RESOLVED,
    output:
        expand(f"{SWEEP}/data/{{name}}.jsonl", name=["warmup", "rl", "id", "content_ood"]),
    params:
        world=section_hash(CFG, "world"),
        out=f"{SWEEP}/data",
    log:
        f"{SWEEP}/logs/prepare.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl prepare --config {input.config} --out {params.out} 2> {log}"


rule mlflow_init:
    """Create the MLflow store and experiment once, before parallel jobs race to do it."""
    input:
        config=RESOLVED,
    output:
        f"{SWEEP}/mlflow/experiment.json",
    params:
        mlflow=section_hash(CFG, "mlflow"),
    log:
        f"{SWEEP}/logs/mlflow_init.log",
    conda:
        "../../envs/toolrl.yaml"
    shell:
        "python -m toolrl mlflow-init --config {input.config} --out {output} 2> {log}"
