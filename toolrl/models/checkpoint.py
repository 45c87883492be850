"""What a checkpoint folder must hold, checked before transformers reads it.

Transformers fails on a damaged checkpoint deep inside safetensors, json or tokenizers, without
saying which file, and some damage it does not notice at all: without tokenizer.json it builds a
tokenizer of 7 tokens, and a corrupt generation_config.json is skipped with a warning. These
checks read the small JSON files and the safetensors headers, never the tensors: 2 ms for
SmolLM2-135M's checkpoint, whose load takes about 1 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolrl.io import json_problem

# Large (SmolLM2's: 3.5 MB, 0.26 s to parse, a quarter of the whole load) and parsed by
# tokenizers anyway, so `check` leaves it out; `model.load` reads it only after the tokenizer
# failed to load, to say whether the file is damaged.
TOKENIZER_JSON = "tokenizer.json"
# Any one of these lets transformers build the tokenizer (fast, sentencepiece, BPE, WordPiece).
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer.model", "vocab.json", "vocab.txt")
# Weights that cannot be checked from a header; torch's own errors are wrapped by `model.load`.
TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# safetensors' own limit on the header: a larger length is garbage, not a big header.
MAX_HEADER = 100_000_000


class CorruptCheckpoint(ValueError):
    def __init__(self, folder: Path, what: str):
        super().__init__(f"corrupt checkpoint '{folder}': {what}")


def read_json(folder: Path, name: str) -> Any:
    """One JSON file of the checkpoint; CorruptCheckpoint naming it if it is not JSON."""
    try:
        text = (folder / name).read_text()
    except UnicodeDecodeError as e:
        raise CorruptCheckpoint(folder, f"{name} is not UTF-8 text ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptCheckpoint(folder, f"{name} is {json_problem(text, e)}") from None


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole, from its size and header alone; None if it can.
    The header lists every tensor's byte range, so a file cut short is told from garbage."""
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, shorter than the header's length field)"
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER:
            return f"not a safetensors file (its first 8 bytes give a header of {n:,} bytes)"
        if 8 + n > size:
            return f"truncated ({size:,} bytes; the header alone needs {8 + n:,})"
        raw = f.read(n)
    try:
        header = json.loads(raw)
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, IndexError):
        return "not a safetensors file (its header is not a tensor table)"
    if not all(isinstance(e, int) for e in ends):
        return "not a safetensors file (its header is not a tensor table)"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"truncated ({size:,} of {expected:,} bytes)"
    if size > expected:
        return f"damaged ({size:,} bytes where its header accounts for {expected:,})"
    return None


def _weight_files(folder: Path, docs: dict[str, Any]) -> list[str]:
    """The safetensors files the checkpoint's weights are in (one, or the shards its index lists)."""
    if "model.safetensors.index.json" in docs:
        index = docs["model.safetensors.index.json"]
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptCheckpoint(folder, "model.safetensors.index.json has no 'weight_map'")
        return sorted(set(map(str, weight_map.values())))
    return ["model.safetensors"]


def check(folder: Path) -> None:
    """Raise CorruptCheckpoint naming the first missing or damaged file of a local checkpoint."""
    if not (folder / "config.json").exists():
        raise CorruptCheckpoint(folder, "config.json is missing")
    # config, generation config, tokenizer config, the shard index: all are read at load.
    docs = {f.name: read_json(folder, f.name) for f in sorted(folder.glob("*.json")) if f.name != TOKENIZER_JSON}
    config = docs["config.json"]
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CorruptCheckpoint(folder, "config.json has no 'model_type'")
    if not any((folder / n).exists() for n in TOKENIZER_FILES):
        raise CorruptCheckpoint(folder, "no tokenizer: tokenizer.json is missing")
    if any((folder / n).exists() for n in TORCH_WEIGHTS) and not any(folder.glob("*.safetensors*")):
        return
    for name in _weight_files(folder, docs):
        if not (folder / name).exists():
            raise CorruptCheckpoint(folder, f"no weights: {name} is missing")
        problem = safetensors_problem(folder / name)
        if problem:
            raise CorruptCheckpoint(folder, f"{name} is {problem}")


__all__ = ["TOKENIZER_JSON", "CorruptCheckpoint", "check", "read_json", "safetensors_problem"]
