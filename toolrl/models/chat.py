"""Chat-template text: a conversation rendered by the model's own template, and what the environment
inserts between two assistant messages. Here, below the rollout engine, because the GGUF conversion
checks a converted template with the same function the rollout relies on."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

Message = dict[str, str]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def continuation(tokenizer: PreTrainedTokenizerBase, history: list[Message], new: list[Message]) -> str:
    """The text the environment inserts after the model's `<|im_end|>`: whatever the chat template
    puts between the end of the last assistant message and the next assistant header. Computed
    from the model's own template, so a real checkpoint's layout is followed exactly."""
    before = render(tokenizer, history, False)
    after = render(tokenizer, history + new, True)
    if not after.startswith(before):
        raise ValueError("the chat template is not prefix-preserving; multi-turn rollouts need one that is")
    eos = tokenizer.eos_token
    cut = before.rindex(eos) + len(eos)
    return after[cut:]
