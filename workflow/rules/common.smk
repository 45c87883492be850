# The validated config, the grid of cells, their paths and wildcards: what every rule file reads.
import functools
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from toolrl.analysis.outputs import OUTPUTS
from toolrl.config import (
    MLFLOW_JOB_KEYS,
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
from toolrl.schema import for_snakemake

config.update(coerce_scalars(config))
# The committed schema (built-ins), or one generated with the installed plugins' sections.
validate(config, str(for_snakemake(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml", Path.cwd())))
try:
    CFG = from_snakemake(config)
except ConfigError as e:
    raise WorkflowError(str(e))

SWEEP = str(CFG.sweep_dir)
# Jobs read the resolved config (file + --config overrides + defaults), written only when it
# changes so its mtime does not retrigger the DAG.
RESOLVED = Path(SWEEP) / "config.yaml"
# The config as plain data, once: every `section_hash` reads it (a conversion is ~0.1 s).
CFG_DATA = to_dict(CFG)
_resolved_text = yaml.safe_dump(CFG_DATA, sort_keys=False)
# Not a rule's output: while an upstream job reruns, Snakemake skips the params checks below it.
if not RESOLVED.exists() or RESOLVED.read_text() != _resolved_text:
    write_text(RESOLVED, _resolved_text)

CELLS = grid(CFG)


@functools.cache
def train_stage(signal: str, scheme: str) -> str:
    """The config hash of a train job's sections, once per signal × scheme pair: hashing for every
    job of a 150-cell grid was most of `snakemake -n`."""
    return section_hash(CFG_DATA, *cell_sections(signal, scheme))


def data_dir(wildcards, input):
    """The folder of the task splits, from a job's `data` input."""
    return str(Path(input.data[0]).parent)


# A GGUF model is converted once (rule convert_model) and the warm-up starts from the result.
PRETRAINED = [f"{SWEEP}/pretrained"] if is_gguf(CFG.model.name_or_path) else []
# On Slurm (snakemake-executor-plugin-slurm) a train job is warned with SIGURG before its time
# limit, and checkpoints and exits; other executors ignore the resource. SIGURG: every process
# between the batch script and the job ignores it (SIGUSR1 would kill them); no `B:`, which would
# signal the batch shell alone.
TRAIN_SLURM_EXTRA = f"'--signal=URG@{CFG.resources.signal_lead}'"
CELL = "signal={signal}/scheme={scheme}/lr={lr}/seed={seed}"
CELL_WILDCARDS = {"signal": "[a-z_]+", "scheme": "[a-z_]+", "lr": "[0-9.e+-]+", "seed": "[0-9]+"}
RUN_DIRS = expand(
    f"{SWEEP}/runs/{CELL}",
    zip,
    signal=[c.signal for c in CELLS],
    scheme=[c.scheme for c in CELLS],
    lr=[format_lr(c.lr) for c in CELLS],
    seed=[c.seed for c in CELLS],
)


def aggregate_output(o):
    """One of toolrl.analysis.outputs.OUTPUTS as an output of the aggregate rule: in the sweep
    folder, and in `snakemake --report` where it has a caption (in workflow/report/)."""
    path = f"{SWEEP}/{o.path}"
    if o.caption is None:
        return path
    return report(path, caption=f"../report/{o.caption}", category=o.category)


# The aggregate rule's outputs, by the list its job writes by.
AGGREGATE_OUTPUTS = {o.name: aggregate_output(o) for o in OUTPUTS}


wildcard_constraints:
    **CELL_WILDCARDS,
    # An evaluated model's folder under the sweep: the base model (a pseudo-cell) or a cell's run.
    run=f"base|runs/{CELL.format(**CELL_WILDCARDS)}",
