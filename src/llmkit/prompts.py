"""Prompt styles: how a conversation (a list of messages) becomes the text a model continues.

A message is `{"role": "system" | "user" | "assistant", "content": str}`. Two kinds of style:

* **Built-in styles** (`alpaca`, `chatml`, `llama3`, `llama2`, `mistral`, `phi3`, `gemma`, `plain`)
  write the format each model family was trained on, as documented by its authors. They leave
  out the leading BOS token: the tokenizer adds it (`Tokenizer.add_bos`), as for any other text.
* **A model's own Jinja `chat_template`** (tokenizer_config.json, chat_template.jinja) is
  rendered exactly as `transformers`' `apply_chat_template(..., tokenize=False)` renders it:
  the same sandboxed Jinja environment (`trim_blocks`, `lstrip_blocks`, loop controls,
  `raise_exception`, `strftime_now`, a `tojson` that does not HTML-escape) and the tokenizer's
  special-token strings (`bos_token`, `eos_token`, ...) as variables. Such templates write
  their special tokens themselves, so their text is encoded without adding BOS (HF does the
  same: `apply_chat_template(tokenize=True)` encodes with `add_special_tokens=False`).

`resolve_style(tokenizer, style)` is the one place a command's `--style` / `--prompt-style`
becomes a style, with one rule for `auto` (every command: generate, chat, serve, finetune, dpo,
evaluate): the model's own chat template when its tokenizer folder has one, otherwise the
built-in style whose markers are tokens of its vocabulary (a `<|im_start|>` token means
ChatML), otherwise `alpaca` (what instruction finetuning trains a model without a template on;
the finetuned folder then carries alpaca's Jinja version, `builtin_template`, so `auto` finds
the same format again). Nothing here looks at a model's name.

Alpaca is also the instruction-tuning format: `format_alpaca(record)` splits an
`{"instruction", "input", "output"}` record into the prompt (loss-masked during finetuning) and
the response (trained on).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from llmkit.errors import LLMKitError

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

Message = Mapping[str, Any]
ROLES = ("system", "user", "assistant")


def check_messages(messages: Sequence[Message]) -> list[dict]:
    """Validate a conversation; return it as plain dicts (role, content).

    The system message may only come first; roles are system, user, assistant.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise LLMKitError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise LLMKitError(f"message {i} must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise LLMKitError(f"message {i}: unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise LLMKitError(f"message {i}: content must be a string, got {type(m['content']).__name__}")
        if m["role"] == "system" and i != 0:
            raise LLMKitError(f"message {i}: a system message may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _split_system(messages: list[dict]) -> tuple[Optional[str], list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _merge_system_into_first_user(messages: list[dict], sep: str = "\n\n") -> list[dict]:
    """For formats without a system role (Mistral, Gemma): prepend it to the first user turn,
    as those models' own templates do."""
    system, rest = _split_system(messages)
    if system is None:
        return rest
    rest = [dict(m) for m in rest]
    for m in rest:
        if m["role"] == "user":
            m["content"] = system + sep + m["content"]
            return rest
    return [{"role": "user", "content": system}] + rest


class PromptStyle(ABC):
    """Base class: a conversation -> prompt text, plus the strings that end a reply."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    stop_strings: tuple[str, ...] = ()
    # Whether rendered text already carries the model's special tokens (BOS included), so that
    # encoding must not add BOS again. True for Jinja chat templates.
    writes_special_tokens: bool = False

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages`; with `add_generation_prompt`, ending where the
        assistant's next reply begins."""
        return self._render(check_messages(messages), add_generation_prompt)

    @abstractmethod
    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """Render validated messages (see `check_messages`)."""

    def encode(self, tokenizer: "Tokenizer", messages: Sequence[Message],
               add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered prompt (BOS added by the tokenizer unless the text has it)."""
        text = self.render(messages, add_generation_prompt)
        return tokenizer.encode(text, bos=False if self.writes_special_tokens else None)

    def stop_token_ids(self, tokenizer: "Tokenizer") -> set[int]:
        """Stop strings that are single tokens of `tokenizer` (e.g. `<|im_end|>`), as ids.

        Special tokens are dropped from decoded text, so a stop string such as `<|eot_id|>`
        can only be caught as a token id."""
        ids = set()
        for s in self.stop_strings:
            tid = tokenizer.token_to_id(s)
            if tid is not None:
                ids.add(tid)
        return ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # --- constructors -------------------------------------------------------------------------
    @staticmethod
    def names() -> list[str]:
        return sorted(BUILTIN_STYLES)

    @classmethod
    def from_name(cls, name: str) -> "PromptStyle":
        """A built-in style by name (see `PromptStyle.names()`)."""
        key = name.lower().replace("-", "").replace("_", "")
        for style_name, style_cls in BUILTIN_STYLES.items():
            if key == style_name or key in style_cls.aliases:
                return style_cls()
        raise LLMKitError(f"unknown prompt style '{name}'; choose from: {', '.join(cls.names())}")

    @classmethod
    def from_template(cls, template: str, special_tokens: Optional[Mapping[str, str]] = None) -> "JinjaStyle":
        return JinjaStyle(template, special_tokens)

    @classmethod
    def for_model(cls, source: "Tokenizer | str | Path") -> "PromptStyle":
        """The style a model expects (`auto`, see `resolve_style`). `source` is a `Tokenizer`
        or a directory holding the tokenizer files."""
        if isinstance(source, (str, Path)):
            from llmkit.tokenizer import Tokenizer

            source = Tokenizer.from_dir(source)
        return resolve_style(source, "auto")


# --- built-in styles ----------------------------------------------------------------------------
class Plain(PromptStyle):
    """No markup: message contents joined by newlines (base models, raw completion)."""

    name, aliases = "plain", ("default", "none", "raw")

    def _render(self, messages, add_generation_prompt):
        return "\n".join(m["content"] for m in messages)


ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                              "provides further context. Write a response that appropriately completes the request.")


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt (Taori et al. 2023, the Stanford Alpaca repo's two templates), ending
    with "### Response:\\n" where the response starts."""
    if input:
        return (f"{ALPACA_PREAMBLE_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n"
                f"### Input:\n{input}\n\n### Response:\n")
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def format_alpaca(record: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, response) of an Alpaca record {"instruction", "input" (optional), "output"}.

    prompt + response is the training text; only the response tokens (and the EOS the
    finetuning data appends) are trained on.
    """
    if not isinstance(record, Mapping):
        raise LLMKitError(f"an Alpaca record must be a dict, got {type(record).__name__}")
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise LLMKitError(f"Alpaca record needs a string '{key}' field; got keys {sorted(record)}")
    inp = record.get("input") or ""
    if not isinstance(inp, str):
        raise LLMKitError(f"Alpaca record's 'input' must be a string, got {type(inp).__name__}")
    return alpaca_prompt(record["instruction"], inp), record["output"]


class Alpaca(PromptStyle):
    """Alpaca instruction format. A system message replaces the preamble; each user turn is an
    "### Instruction:" block and each reply a "### Response:" block, so a one-turn conversation
    renders exactly as `alpaca_prompt(instruction)`."""

    name, aliases = "alpaca", ()
    stop_strings = ("### Instruction:", "### Input:", "### Response:")

    def _render(self, messages, add_generation_prompt):
        system, turns = _split_system(messages)
        out = (ALPACA_PREAMBLE if system is None else system) + "\n\n"
        for m in turns:
            if m["role"] == "user":
                out += f"### Instruction:\n{m['content']}\n\n"
            else:
                out += f"### Response:\n{m['content']}\n\n"
        if add_generation_prompt:
            out += "### Response:\n"
        return out


class ChatML(PromptStyle):
    """ChatML (OpenAI; used by Qwen, SmolLM2-Instruct, ...):
    `<|im_start|>role\\ncontent<|im_end|>\\n` per message."""

    name, aliases = "chatml", ("qwen",)
    stop_strings = ("<|im_end|>",)

    def _render(self, messages, add_generation_prompt):
        out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class Llama3(PromptStyle):
    """Llama 3 / 3.1 / 3.2 Instruct (Meta's model card format); contents are trimmed, as in
    Meta's template. BOS (`<|begin_of_text|>`) comes from the tokenizer."""

    name, aliases = "llama3", ("llama31", "llama32")
    stop_strings = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")

    def _render(self, messages, add_generation_prompt):
        out = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
                      for m in messages)
        return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


class Llama2(PromptStyle):
    """Llama 2 Chat (Meta's `chat_completion` format): the system prompt is wrapped in
    <<SYS>> inside the first [INST]; each exchange is `<s>[INST] user [/INST] reply </s>`
    (the first `<s>` is the tokenizer's BOS)."""

    name, aliases = "llama2", ()
    stop_strings = ("</s>", "[INST]")

    def _render(self, messages, add_generation_prompt):
        system, turns = _split_system(messages)
        out, first_user = "", True
        for m in turns:
            if m["role"] == "user":
                content = m["content"].strip()
                if first_user and system is not None:
                    content = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{content}"
                out += ("" if not out else "<s>") + f"[INST] {content} [/INST]"
                first_user = False
            else:
                out += f" {m['content'].strip()} </s>"
        return out  # "[/INST]" already is the generation prompt


class Mistral(PromptStyle):
    """Mistral Instruct (v0.1-v0.3): `[INST] user [/INST] reply</s>`; no system role, so a
    system prompt is prepended to the first user turn, as Mistral's templates do."""

    name, aliases = "mistral", ("mixtral",)
    stop_strings = ("</s>", "[INST]")

    def _render(self, messages, add_generation_prompt):
        out = ""
        for m in _merge_system_into_first_user(messages):
            if m["role"] == "user":
                out += f"[INST] {m['content']} [/INST]"
            else:
                out += f" {m['content']}</s>"
        return out


class Phi3(PromptStyle):
    """Phi-3 / Phi-3.5 Instruct: `<|role|>\\ncontent<|end|>\\n` per message."""

    name, aliases = "phi3", ("phi35",)
    stop_strings = ("<|end|>", "<|endoftext|>")

    def _render(self, messages, add_generation_prompt):
        out = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
        return out + ("<|assistant|>\n" if add_generation_prompt else "")


class Gemma(PromptStyle):
    """Gemma / Gemma 2 / Gemma 3 instruction-tuned: turns `<start_of_turn>user|model ...
    <end_of_turn>`, contents trimmed; a system prompt is prepended to the first user turn."""

    name, aliases = "gemma", ("gemma2", "gemma3")
    stop_strings = ("<end_of_turn>",)

    def _render(self, messages, add_generation_prompt):
        out = ""
        for m in _merge_system_into_first_user(messages):
            role = "model" if m["role"] == "assistant" else "user"
            out += f"<start_of_turn>{role}\n{m['content'].strip()}<end_of_turn>\n"
        return out + ("<start_of_turn>model\n" if add_generation_prompt else "")


BUILTIN_STYLES: dict[str, type[PromptStyle]] = {
    cls.name: cls for cls in (Alpaca, ChatML, Llama3, Llama2, Mistral, Phi3, Gemma, Plain)
}
# A marker token in the vocabulary -> the format that tokenizer was built for (checked in order).
_VOCAB_HINTS = (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"), ("<start_of_turn>", "gemma"),
                ("<|assistant|>", "phi3"), ("[INST]", "mistral"))
# End-of-turn markers: when a chat template writes one, it also ends the model's replies.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


# --- Jinja chat templates -----------------------------------------------------------------------
def _jinja_env():
    """The environment `transformers` renders chat templates in (chat_template_utils), rebuilt
    here: templates come from the Hub and are untrusted, hence the immutable sandbox."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
        HF; rendering just emits the body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson HTML-escapes (<, >, &, '): wrong for prompts.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class SafeNamespace(jinja2.utils.Namespace):
        # namespace(...) attributes are set without the sandbox's attribute checks: refuse
        # underscore names so a template cannot reach Python internals through them.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for key in attrs:
                SafeNamespace._check(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, key, value):
            SafeNamespace._check(key)
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check(key):
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat template may not set namespace attribute {key!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    class DictConstructor:
        # `dict(...)` and `dict.fromkeys(...)` for templates, without exposing the type itself.
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, namespace=SafeNamespace,
                       dict=DictConstructor())
    return env


_ENV = None


class JinjaStyle(PromptStyle):
    """A model's own Jinja chat template, rendered as `transformers.apply_chat_template` does."""

    name = "chat_template"
    writes_special_tokens = True

    def _render(self, messages, add_generation_prompt):
        return self.render(messages, add_generation_prompt)

    def __init__(self, template: str, special_tokens: Optional[Mapping[str, str]] = None):
        import jinja2

        global _ENV
        if _ENV is None:
            _ENV = _jinja_env()
        try:
            self.template = _ENV.from_string(template)
        except jinja2.TemplateSyntaxError as e:
            raise LLMKitError(f"chat template has a syntax error (line {e.lineno}): {e.message}") from None
        self.source = template
        self.special_tokens = dict(special_tokens or {})
        self.stop_strings = tuple(s for s in _END_OF_TURN if s in template)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render like HF: special-token strings and `kwargs` (e.g. `tools`, or template
        options such as `enable_thinking`) are visible to the template.

        Messages are passed through as plain dicts (extra keys kept), since templates may read
        more than role and content."""
        import jinja2

        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise LLMKitError(f"messages must be a list of dicts, got {type(messages).__name__}")
        try:  # plain JSON data only: a template must never see live Python objects
            plain = [json.loads(json.dumps(dict(m))) for m in messages]
        except (TypeError, ValueError) as e:
            raise LLMKitError(f"messages must be JSON-like dicts: {e}") from None
        variables = {**self.special_tokens, "tools": None, "documents": None, **kwargs}
        try:
            return self.template.render(messages=plain, add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as e:  # raise_exception(...) in the template, or a sandbox violation
            raise LLMKitError(f"chat template: {e}") from None


# --- choosing a style: the one rule ---------------------------------------------------------------
def resolve_style(tokenizer: "Tokenizer", style: Optional[str] = None,
                  chat_template: Optional[str | Path] = None) -> PromptStyle:
    """The prompt style a command uses, from its `--style` (`--prompt-style`) and
    `--chat-template` options. One rule for every command:

    * None or "auto": the model's own chat template when its tokenizer has one, else the
      built-in style whose markers are tokens of its vocabulary, else alpaca;
    * "chat_template" (or "template"): the model's own template, which must exist;
    * a Jinja file (`*.jinja`, `*.j2`, or any existing file), or `chat_template=FILE`: that template;
    * a built-in style name (see `PromptStyle.names()`).
    """
    if chat_template is not None and style not in (None, "auto"):
        raise LLMKitError("give either a style or a chat template file, not both")
    if chat_template is not None:
        style = str(chat_template)
        if not Path(style).is_file():
            raise LLMKitError(f"chat template file '{style}' does not exist")
    if style is None or style == "auto":
        if tokenizer.chat_template:
            return JinjaStyle(tokenizer.chat_template, tokenizer.special_tokens)
        for marker, name in _VOCAB_HINTS:
            if tokenizer.token_to_id(marker) is not None:
                return PromptStyle.from_name(name)
        return Alpaca()
    if style in ("chat_template", "template"):
        if not tokenizer.chat_template:
            raise LLMKitError(f"prompt style '{style}': the model's tokenizer has no chat template; "
                              f"choose a built-in style: {', '.join(PromptStyle.names())}")
        return JinjaStyle(tokenizer.chat_template, tokenizer.special_tokens)
    if style.endswith((".jinja", ".j2")) or Path(style).is_file():
        path = Path(style)
        if not path.is_file():
            raise LLMKitError(f"chat template file '{style}' does not exist")
        return JinjaStyle(path.read_text(encoding="utf-8"), tokenizer.special_tokens)
    return PromptStyle.from_name(style)


# Jinja versions of built-in styles. Instruction finetuning writes one into the finetuned model's
# folder when the base has no chat template of its own, so that `auto` (chat, serve, dpo, ...)
# prompts the tuned model in the format it was trained on. Each renders exactly as its built-in
# style (tests/test_prompts.py checks this).
_BUILTIN_JINJA = {
    "alpaca": (
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}"
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "{% endif %}{{ '\\n\\n' }}{% for m in messages %}{% if m['role'] == 'user' %}"
        "{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}{% elif m['role'] == 'assistant' %}"
        "{{ '### Response:\\n' + m['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


def builtin_template(style_name: str, add_bos: bool) -> Optional[str]:
    """The Jinja chat template of a built-in style, or None if it has none. A template writes its
    special tokens itself (its text is encoded without BOS), so it starts with BOS where the
    tokenizer would add one."""
    t = _BUILTIN_JINJA.get(style_name)
    return None if t is None else ("{{ bos_token }}" if add_bos else "") + t
