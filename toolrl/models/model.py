"""Models and tokenizers: build the tiny default, or load any Hugging Face causal LM by path.

The tiny default is saved as an ordinary HF checkpoint (config, safetensors, tokenizer.json, chat
template), so every later stage loads it exactly as it would load Qwen2.5-1.5B-Instruct.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from toolrl.config import TinyModelConfig
from toolrl.io import atomic_dir
from toolrl.models import checkpoint
from toolrl.models.guards import check_finite, nonfinite_weights

PAD, EOS, BOS = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
CONTROL_TOKENS = [PAD, BOS, EOS, "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# ChatML as Qwen2.5 renders it: consecutive tool results merge into one user message of
# <tool_response> blocks. The {% generation %} markers let TRL's SFTTrainer train on assistant
# tokens only, and they include <|im_end|> so the model learns to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer(corpus: Iterable[str], value_tokens: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the world's own text, plus each argument value as one token.

    The values are added *after* BPE training: added before, BPE's merges swallow some of them
    (measured: "12" came out as `1 2`). As single tokens a value has the same id in the user's
    words, inside JSON and inside a Python call, which is what lets a 1 M model learn to copy."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CONTROL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(v, single_word=False, normalized=False) for v in value_tokens])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    fast.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS[1:]})
    return fast


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
    )
    model = Qwen2ForCausalLM(config)
    _sync_generation_config(model, tokenizer)
    return model


def _sync_generation_config(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> None:
    gc = model.generation_config
    gc.eos_token_id = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = None


def load(path: str | Path, enable_thinking: bool | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Load a checkpoint (local path or hub id) for training or generation on this machine.

    A damaged checkpoint fails here with one message naming the folder and the file: the files
    are checked first (`toolrl.models.checkpoint`), then what transformers made of them. Weights that
    do not fit config.json, weights config.json needs but the file lacks (transformers would
    initialise them at random) and NaN or inf weights (`save` never writes them; one found here
    was damaged or written elsewhere, and would evaluate to 0%, which reads as a collapse) are
    refused.

    `enable_thinking` (Qwen3) is set inside the chat template itself, so the base checkpoint the
    warm-up saves renders every prompt in that mode without each caller passing the flag."""
    p = Path(path)
    local = str(path).startswith((".", "/")) or p.exists()
    if local:
        if not p.is_dir():
            raise FileNotFoundError(f"model checkpoint '{p}' not found")
        checkpoint.check(p)
    # tokenizers and safetensors raise bare Exceptions on bad files; any failure here is the checkpoint's.
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        if local and (p / checkpoint.TOKENIZER_JSON).exists():
            checkpoint.read_json(p, checkpoint.TOKENIZER_JSON)  # names it if the file is not JSON
        raise ValueError(f"cannot load the tokenizer of model checkpoint '{path}': {_first_line(e)}") from e
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, ignore_mismatched_sizes=True, output_loading_info=True
        )
    except Exception as e:
        raise ValueError(f"cannot load model checkpoint '{path}': {_first_line(e)}") from e
    if info["mismatched_keys"]:
        name, stored, wanted = min(info["mismatched_keys"])
        raise checkpoint.CorruptCheckpoint(
            p,
            f"config.json does not fit the weights: {name} is {list(stored)} in the "
            f"file, {list(wanted)} by config.json "
            f"({_tensors(len(info['mismatched_keys']))} differ)",
        )
    if info["missing_keys"]:
        raise checkpoint.CorruptCheckpoint(
            p,
            f"the weights lack {_tensors(len(info['missing_keys']))} that config.json "
            f"needs (first: {min(info['missing_keys'])})",
        )
    bad = nonfinite_weights(model)
    if bad:
        raise checkpoint.CorruptCheckpoint(p, f"{_tensors(len(bad))} of weights hold NaN or inf (first: {bad[0]})")
    tokenizer.padding_side = "left"
    if enable_thinking is not None and tokenizer.chat_template:
        flag = "true" if enable_thinking else "false"
        tokenizer.chat_template = f"{{%- set enable_thinking = {flag} %}}" + tokenizer.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _sync_generation_config(model, tokenizer)
    return model, tokenizer


def _tensors(n: int) -> str:
    return f"{n} tensor" + ("" if n == 1 else "s")


def _first_line(e: BaseException) -> str:
    """An exception in one line: transformers' messages run to tables of every tensor."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Write the checkpoint atomically: a killed job never leaves a half-written model that a
    rerun would take for finished, and never weights with a NaN in them."""
    check_finite(model, f"model for {out}")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def trainer_defaults(seed: int, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """TrainingArguments shared by every SFT and GRPO run. bf16 only where the GPU has it (TRL's
    default does not run on a CPU); gradient checkpointing only when the config asks
    (`model.gradient_checkpointing`: a 1.5B model's 16k-token rollouts need it, the tiny model
    would only run slower); no checkpoints unless a stage asks (GRPO's go through
    `training.checkpoints`, atomically); every random choice is seeded."""
    on_gpu = torch.cuda.is_available()
    return {
        "use_cpu": not on_gpu,
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        # Always passed: TRL's configs default it to on, which only slows the tiny model on a CPU.
        "gradient_checkpointing": gradient_checkpointing,
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "data_seed": seed,
    }


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_threads(threads: int) -> None:
    """One knob for every thread pool torch and the tokenizers use; jobs that fight over two cores
    were measured 3–35× slower than one job at a time."""
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
