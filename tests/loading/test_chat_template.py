"""Chat templates render exactly like transformers' apply_chat_template."""

from __future__ import annotations

import pytest

from mistralrs_cli.errors import TokenizerError
from mistralrs_cli.loading.chat_template import ChatTemplate

TEMPLATES = {
    "mistral": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for message in messages %}\n"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr-with-system": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
    ),
    "tojson-and-namespace": (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{{ m | tojson }}{% endfor %}{{ ns.n }}{% if add_generation_prompt %}<gen>{% endif %}"
    ),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3? ünï 日本 🙂 <b>&</b>"},
    ],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_mistral_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_mistral_dir))


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_transformers(hf_tokenizer, name, conv, add_generation_prompt):
    messages = CONVERSATIONS[conv]
    source = TEMPLATES[name]
    ours = ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None})
    try:
        expected = hf_tokenizer.apply_chat_template(
            messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # the template itself raised: we must raise too, with its message
        with pytest.raises(TokenizerError, match="alternate"):
            ours.render(messages, add_generation_prompt=add_generation_prompt)
        assert "alternate" in str(e)
        return
    assert ours.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_invalid_template_is_a_one_line_error():
    with pytest.raises(TokenizerError, match="invalid chat template"):
        ChatTemplate("{% for m in messages %}", {}, "x")


def test_sandbox_blocks_attribute_escape():
    t = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(TokenizerError):
        t.render([{"role": "user", "content": "x"}])
