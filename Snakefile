# toolrl: supervisory signals × training schemes × learning rates × seeds → train → evaluate ×3 →
# aggregate. Every rule is one `python -m toolrl <stage>` line; the logic lives in the package.
import functools
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from toolrl.config import (
    SPLITS,
    ConfigError,
    coerce_scalars,
    format_lr,
    from_snakemake,
    grid,
    is_gguf,
    cell_sections,
    section_hash,
    to_dict,
)
from toolrl.io import write_text

min_version("9.0")


configfile: "config.yaml"


config.update(coerce_scalars(config))
validate(config, "workflow/schemas/config.schema.yaml")
try:
    CFG = from_snakemake(config)
except ConfigError as e:
    raise WorkflowError(str(e))

SWEEP = str(CFG.sweep_dir)
# Jobs read the resolved config (file + --config overrides + defaults), written only when it
# changes so its mtime does not retrigger the DAG.
RESOLVED = Path(SWEEP) / "config.yaml"
# The config as plain data, once: every `section_hash` below reads it (a conversion is ~0.1 s).
CFG_DATA = to_dict(CFG)
_resolved_text = yaml.safe_dump(CFG_DATA, sort_keys=False)
if not RESOLVED.exists() or RESOLVED.read_text() != _resolved_text:
    write_text(RESOLVED, _resolved_text)

CELLS = grid(CFG)


@functools.cache
def train_stage(signal: str, scheme: str) -> str:
    """The config hash of a train job's sections, once per signal × scheme pair: hashing for every
    job of a 150-cell grid was most of `snakemake -n`."""
    return section_hash(CFG_DATA, *cell_sections(signal, scheme))


# A GGUF model is converted once (rule convert_model) and the warm-up starts from the result.
PRETRAINED = [f"{SWEEP}/pretrained"] if is_gguf(CFG.model.name_or_path) else []
CELL = "signal={signal}/scheme={scheme}/lr={lr}/seed={seed}"
RUN_DIRS = expand(
    f"{SWEEP}/runs/{CELL}",
    zip,
    signal=[c.signal for c in CELLS],
    scheme=[c.scheme for c in CELLS],
    lr=[format_lr(c.lr) for c in CELLS],
    seed=[c.seed for c in CELLS],
)


wildcard_constraints:
    signal="[a-z_]+",
    scheme="[a-z]+",
    lr="[0-9.e+-]+",
    seed="[0-9]+",
    split="|".join(SPLITS),


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
        print(f"\nResults: {SWEEP}/tables/main.md\nMLflow:  {ui_command(read_experiment(exp)['tracking_uri'])}\n")
