"""The two LLM clients a sweep may call: a local causal LM (`HFChat`) and an OpenAI-compatible
endpoint (`OpenAIChat`). Both answer `chat(messages)`; PRS's judges and ACEBench's simulated user
are built on them, so neither the judges nor the environments own the other's code."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from toolrl.config import JudgeConfig

Message = dict[str, str]


class HFChat:
    """A local causal LM, loaded once; greedy, so the same chat gets the same reply.

    `where` is the config path that errors name (the last part names the role)."""

    def __init__(self, cfg: JudgeConfig, where: str = "signals.prs.judge"):
        role = where.rsplit(".", 1)[-1]
        if not cfg.model:
            raise ValueError(f"{where}.model: the hf {role} needs a model path")
        # torch and transformers are imported only when this judge is used
        from toolrl.models.model import load

        try:
            self.model, self.tokenizer = load(cfg.model)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{where}.model: {e}") from None
        self.model.eval()
        self.max_new_tokens = cfg.max_new_tokens

    def chat(self, messages: list[Message], cue: str = "Reply:") -> str:
        """The model's greedy reply to a chat. A tokenizer without a chat template gets the
        contents as plain text, ended by `cue`."""
        import torch

        tok = self.tokenizer
        if tok.chat_template:
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            prompt = "\n\n".join(m["content"] for m in messages) + f"\n\n{cue}\n"
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **enc, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id
            )
        return str(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint, at temperature 0. `where` is the config
    path that errors name (the last part names the role)."""

    def __init__(self, cfg: JudgeConfig, where: str = "signals.prs.judge"):
        self.role = where.rsplit(".", 1)[-1]
        if not cfg.url or not cfg.model:
            raise ValueError(f"{where}: the openai {self.role} needs `url` and `model`")
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ValueError(
                f"{where}: the environment variable '{cfg.api_key_env}' (api_key_env) holding the API key is not set"
            )
        self.url = cfg.url.rstrip("/") + "/chat/completions"
        self.model = cfg.model
        self.timeout_s = cfg.timeout_s
        self._key = key

    def chat(self, messages: list[Message]) -> str:
        """The endpoint's reply to a chat (urllib, so no client package is needed)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0})
        req = urllib.request.Request(
            self.url,
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        where = f"{self.role} endpoint {self.url}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise ValueError(f"{where} returned HTTP {e.code}") from None
        except (urllib.error.URLError, TimeoutError) as e:
            raise ValueError(f"{where} is unreachable: {e}") from None
        except json.JSONDecodeError:
            raise ValueError(f"{where} returned invalid JSON") from None
        try:
            return str(data["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{where} returned no choices[0].message.content") from None
