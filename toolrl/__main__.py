import sys

from toolrl.cli import main

sys.exit(main(job=True))
