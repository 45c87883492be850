#!/usr/bin/env python3
"""commit-msg hook: refuse a commit whose subject (first line) is over 72 characters.

Usage: check_commit_subject.py COMMIT_MSG_FILE (what git, or pre-commit, passes to a commit-msg
hook). Lines git strips (comments, leading blank lines) are skipped. Subjects git writes itself
(merges, reverts, fixup!/squash!/amend!) pass whatever their length.
"""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 72
GENERATED = ("Merge ", 'Revert "', "fixup! ", "squash! ", "amend! ")


def subject(message: str) -> str:
    for line in message.splitlines():
        if line.strip() and not line.startswith("#"):
            return line.rstrip()
    return ""


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} COMMIT_MSG_FILE", file=sys.stderr)
        return 2
    first = subject(Path(argv[1]).read_text(encoding="utf-8", errors="replace"))
    if len(first) <= LIMIT or first.startswith(GENERATED):
        return 0
    print(
        f"commit subject is {len(first)} characters, over {LIMIT}:\n  {first}\n  {' ' * LIMIT}^ cut here;"
        " the details go in the body, after a blank line",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
