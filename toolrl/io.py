"""Atomic file and directory writes, and JSON readers that name the file they choke on.

Snakemake treats an existing output as done; a job killed half-way through a write must
therefore leave either nothing or the complete file, never a prefix of it. A file damaged some
other way (a full disk, a copy cut short, an edit by hand) is caught by the readers, which say
which file and whether it is empty, truncated or invalid, and by `require`, which names a
missing or mistyped key.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def write_jsonl(path: Path, rows: list[Any]) -> None:
    write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))


def _unclosed(text: str) -> bool:
    """Whether `text` stops inside a string or before its last bracket closes: what a write cut
    short leaves, told apart from a file that is complete but wrong."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return in_string or depth > 0


def json_problem(text: str, error: json.JSONDecodeError) -> str:
    """What is wrong with a document that `json` refused, in words: empty, truncated or invalid."""
    if not text.strip():
        return "empty"
    return f"{'truncated' if _unclosed(text) else 'invalid'} ({error})"


def _json_text(path: Path) -> str:
    """The text of a JSON or JSON Lines file, failing with the file's name if missing or not UTF-8."""
    if not path.exists():
        raise FileNotFoundError(f"missing file '{path}'")
    try:
        return path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"corrupt JSON in '{path}': not UTF-8 text ({e})") from None


def read_json(path: Path) -> Any:
    text = _json_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt JSON in '{path}': {json_problem(text, e)}") from None


def read_jsonl(path: Path) -> list[Any]:
    text = _json_text(path)
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt JSON in '{path}' line {i}: {json_problem(line, e)}") from None
    return rows


_KIND_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def require(path: Path, doc: Any, key: str, kinds: type | tuple[type, ...], where: str = "") -> Any:
    """`doc[key]`, which must be there and of `kinds` (a bool is no number). A reader checks at
    load what its consumers use, so a damaged file fails naming the file and the key (`where`:
    the position inside the file) instead of a KeyError deep inside a consumer."""
    if not isinstance(doc, dict):
        raise ValueError(f"malformed '{path}'{where}: expected an object, got {type(doc).__name__}")
    if key not in doc:
        raise ValueError(f"malformed '{path}'{where}: missing key '{key}'")
    value = doc[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds if not (k is int and float in kinds))
        got = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"malformed '{path}'{where}: '{key}' must be {names}, got {got}")
    return value


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name beside `path`, then swap it in.

    A temporary folder that a killed writer of `path` left (a checkpoint: gigabytes for a real
    model) is removed first. Only one job writes a given output, so it is no live writer's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
