"""Prompt styles: built-in formats render exact strings; model templates render exactly as
`transformers.apply_chat_template` does."""

import pytest

from llmkit.errors import LLMKitError
from llmkit.prompts import (
    ALPACA_PREAMBLE,
    Alpaca,
    ChatML,
    JinjaStyle,
    PromptStyle,
    alpaca_prompt,
    format_alpaca,
    resolve_style,
)
from tests.helpers import build_tokenizer

CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2?"},
]

EXPECTED = {
    "chatml": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
              "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2": "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] What is 2+2? [/INST]",
    "mistral": "[INST] You are terse.\n\nHi! [/INST] Hello.</s>[INST] What is 2+2? [/INST]",
    "phi3": "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
            "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n",
    "gemma": "<start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
             "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "alpaca": "You are terse.\n\n### Instruction:\nHi!\n\n### Response:\nHello.\n\n"
              "### Instruction:\nWhat is 2+2?\n\n### Response:\n",
    "plain": "You are terse.\nHi!\nHello.\nWhat is 2+2?",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_styles_render_exact_strings(name):
    style = PromptStyle.from_name(name)
    assert style.render(CONVO) == EXPECTED[name]


def test_generation_prompt_is_optional_and_names_resolve():
    assert PromptStyle.from_name("chatml").render(CONVO[:3], add_generation_prompt=False).endswith(
        "<|im_start|>assistant\nHello.<|im_end|>\n")
    assert PromptStyle.from_name("Llama-3").name == "llama3"
    assert PromptStyle.from_name("qwen").name == "chatml"
    assert set(PromptStyle.names()) == set(EXPECTED)
    with pytest.raises(LLMKitError, match="unknown prompt style 'vicuna'; choose from: alpaca, chatml"):
        PromptStyle.from_name("vicuna")


@pytest.mark.parametrize("messages,match", [
    ("hello", "messages must be a list"),
    ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
    ([{"role": "user"}], "must be a dict with 'role' and 'content'"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
])
def test_bad_messages_are_clear_errors(messages, match):
    with pytest.raises(LLMKitError, match=match):
        PromptStyle.from_name("chatml").render(messages)


def test_alpaca_record_split_into_prompt_and_response():
    prompt, response = format_alpaca({"instruction": "Add the numbers.", "input": "2, 3", "output": "5"})
    assert prompt == ("Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.\n\n"
                      "### Instruction:\nAdd the numbers.\n\n### Input:\n2, 3\n\n### Response:\n")
    assert response == "5"
    prompt, _ = format_alpaca({"instruction": "Say hi.", "input": "", "output": "Hi"})
    assert prompt == f"{ALPACA_PREAMBLE}\n\n### Instruction:\nSay hi.\n\n### Response:\n" == alpaca_prompt("Say hi.")
    # The chat style's single turn is the same prompt, so finetuned models chat as trained.
    assert PromptStyle.from_name("alpaca").render([{"role": "user", "content": "Say hi."}]) == prompt
    with pytest.raises(LLMKitError, match="needs a string 'output' field"):
        format_alpaca({"instruction": "x"})


# --- the families' own templates agree with the built-in styles ---------------------------------
# The published Jinja templates of Llama 2 Chat and Gemma (as on the Hub), rendered with their
# BOS/EOS strings, give the built-in style's text with the BOS the tokenizer adds in front.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)


def test_builtin_llama2_and_gemma_match_the_published_templates():
    llama2 = JinjaStyle(LLAMA2_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>"})
    assert llama2.render(CONVO) == "<s>" + PromptStyle.from_name("llama2").render(CONVO)
    gemma = JinjaStyle(GEMMA_TEMPLATE, {"bos_token": "<bos>", "eos_token": "<eos>"})
    no_system = CONVO[1:]
    assert gemma.render(no_system) == "<bos>" + PromptStyle.from_name("gemma").render(no_system)
    with pytest.raises(LLMKitError, match="chat template: System role not supported"):
        gemma.render(CONVO)


# --- model templates vs transformers ------------------------------------------------------------
# Real-looking templates: Qwen2.5-style ChatML with a default system prompt (whitespace control
# with {%- -%}), Llama 3.1-style with BOS, a dated system header, trimming and a namespace, and a
# Mistral/Zephyr-style one written with plain tags over several lines (exercises trim_blocks and
# lstrip_blocks) that rejects non-alternating roles.
QWEN_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'system' and loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- set ns = namespace(n_user=0) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}{% set ns.n_user = ns.n_user + 1 %}{% endif %}
{%- endfor %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
{{- '' if ns.n_user else '' }}
"""

MISTRAL_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ '[INST] ' + message['content'] + ' [/INST]' }}
    {% elif message['role'] == 'assistant' %}
        {{ message['content'] + eos_token }}
    {% endif %}
{% endfor %}
"""

TOJSON_TEMPLATE = """{% for message in messages %}{{ message | tojson }}
{% endfor %}{% if add_generation_prompt %}{{ {"role": "assistant", "note": "<b>é&</b>"} | tojson(indent=2) }}\
{% endif %}"""

TEMPLATES = {"qwen": QWEN_TEMPLATE, "llama3": LLAMA3_TEMPLATE, "mistral": MISTRAL_TEMPLATE, "tojson": TOJSON_TEMPLATE}
CONVERSATIONS = {
    "with-system": CONVO,
    "no-system": CONVO[1:],
    "ends-with-reply": CONVO[1:3],
    "html-and-unicode": [{"role": "user", "content": "  <b>Grüße</b> & \"quotes\"  "},
                         {"role": "assistant", "content": "ok ✓"}, {"role": "user", "content": "again"}],
}


@pytest.fixture(scope="module")
def template_dirs(tmp_path_factory):
    from transformers import AutoTokenizer

    out = {}
    for name, template in TEMPLATES.items():
        d = tmp_path_factory.mktemp(name)
        build_tokenizer(d, chat_template=template)
        out[name] = (d, AutoTokenizer.from_pretrained(d))
    return out


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("convo", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_model_template_renders_like_transformers(template_dirs, template, convo, gen):
    d, hf = template_dirs[template]
    messages = CONVERSATIONS[convo]
    style = PromptStyle.for_model(d)
    assert isinstance(style, JinjaStyle)
    try:
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    except Exception as e:  # the template refuses this conversation: so must we, with its message
        with pytest.raises(LLMKitError, match="Conversation roles must alternate"):
            style.render(messages, add_generation_prompt=gen)
        assert "Conversation roles must alternate" in str(e)
        return
    assert style.render(messages, add_generation_prompt=gen) == expected


def test_template_encoding_matches_transformers_tokens(template_dirs):
    d, hf = template_dirs["llama3"]
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(d)
    style = PromptStyle.for_model(tok)
    ids = style.encode(tok, CONVO)
    assert ids == hf.apply_chat_template(CONVO, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids.count(tok.bos_id) == 1  # the template writes BOS; encoding adds no second one


def test_template_variables_and_sandbox():
    style = JinjaStyle("{{ bos_token }}|{{ enable_thinking }}|{{ strftime_now('%Y') | length }}",
                       {"bos_token": "<s>"})
    assert style.render([], enable_thinking=True) == "<s>|True|4"
    with pytest.raises(LLMKitError, match="chat template"):
        JinjaStyle("{{ messages.__class__.__mro__ }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(LLMKitError, match="chat template"):
        JinjaStyle("{% set ns = namespace() %}{% set ns._x = 1 %}").render([])
    with pytest.raises(LLMKitError, match="syntax error"):
        JinjaStyle("{% for m in messages %}")
    assert JinjaStyle(QWEN_TEMPLATE).stop_strings == ("<|im_end|>",)


def test_auto_falls_back_to_vocabulary_hints_then_alpaca(tmp_path):
    """`auto`, the one rule of every command: the model's template, else the style its
    vocabulary names, else alpaca (what finetuning trains such a model on)."""
    from llmkit.tokenizer import Tokenizer

    build_tokenizer(tmp_path / "chatml")  # <|im_start|> is in its vocabulary
    tok = Tokenizer.from_dir(tmp_path / "chatml")
    style = PromptStyle.for_model(tok)
    assert style.name == "chatml"
    assert style.stop_token_ids(tok) == {tok.token_to_id("<|im_end|>")}
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    plain = Tokenizer(Backend(models.BPE(vocab={"a": 0, "b": 1}, merges=[])), config={})  # no markers
    assert PromptStyle.for_model(plain).name == "alpaca"
    assert resolve_style(plain, None).name == resolve_style(plain, "auto").name == "alpaca"
    assert resolve_style(tok, "auto").name == "chatml"
    assert resolve_style(plain, "plain").name == "plain"
    with pytest.raises(LLMKitError, match="no chat template"):
        resolve_style(plain, "chat_template")
    (tmp_path / "t.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert resolve_style(plain, str(tmp_path / "t.jinja")).render([{"role": "user", "content": "x"}]) == "[x]"
    assert resolve_style(plain, chat_template=tmp_path / "t.jinja").render([{"role": "user", "content": "y"}]) == "[y]"
    with pytest.raises(LLMKitError, match="not both"):
        resolve_style(plain, "chatml", chat_template=tmp_path / "t.jinja")


def test_builtin_style_encoding_lets_the_tokenizer_add_bos(tmp_path):
    from llmkit.tokenizer import Tokenizer

    build_tokenizer(tmp_path / "t", add_bos=True)
    tok = Tokenizer.from_dir(tmp_path / "t")
    ids = PromptStyle.from_name("chatml").encode(tok, CONVO)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.decode(ids[1:], skip_special=False) == EXPECTED["chatml"]


def test_builtin_style_templates_render_like_the_styles():
    """The Jinja versions that finetuning writes into a tuned model's folder render exactly as
    the built-in styles they stand for (with BOS in front where the tokenizer adds one)."""
    from llmkit.prompts import builtin_template

    convs = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
              {"role": "user", "content": "c"}]]
    for name, builtin in (("alpaca", Alpaca()), ("chatml", ChatML())):
        for add_bos, prefix in ((False, ""), (True, "<s>")):
            jinja = PromptStyle.from_template(builtin_template(name, add_bos=add_bos), {"bos_token": "<s>"})
            for c in convs:
                for gen in (True, False):
                    assert jinja.render(c, add_generation_prompt=gen) == prefix + builtin.render(c, add_generation_prompt=gen)
    assert builtin_template("llama3", add_bos=False) is None
