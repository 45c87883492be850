# toolrl: supervisory signals × training schemes × learning rates × seeds → train → evaluate ×3 →
# aggregate. Every rule is one `python -m toolrl <stage>` line; the logic lives in the package, the
# config, grid and paths every rule file reads in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        rules.aggregate.output,


onsuccess:
    from toolrl.tracking import read_experiment, ui_command

    exp = Path(SWEEP) / "mlflow" / "experiment.json"
    if exp.exists():
        uri = read_experiment(exp)["tracking_uri"]
        print(f"\nResults: {rules.aggregate.output.table}\nMLflow:  {ui_command(uri)}\n")
