import os
import sys

from toolrl.cli import STAGES, main

# A workflow stage's own output belongs in its job's log, which the rules fill from stderr:
# libraries print to stdout too (TRL a dictionary per step), and that would otherwise reach the
# console of `snakemake --cores all`. At the file-descriptor level, so C extensions follow.
# Redirecting in the rules instead would change every rule's shell command and make Snakemake
# rerun every finished job of an existing sweep.
if len(sys.argv) > 1 and sys.argv[1] in STAGES:
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

sys.exit(main())
