"""`llmkit chat MODEL`: a multi-turn conversation in the terminal.

Each turn renders the whole conversation with the model's chat template (or a chosen style)
and streams the reply. When the rendered prompt plus `max_new_tokens` would overflow the
context, the oldest exchanges are dropped (the system prompt always stays). The REPL reads
from any text stream and writes to any, so tests drive it with StringIO or a pipe.
"""

from __future__ import annotations

import sys
import time
from typing import Iterator, Optional, TextIO

from llmkit.errors import LLMKitError
from llmkit.generate import CHAT_MAX_NEW_TOKENS, COMMAND_DEFAULTS, SamplingParams, stream, with_style_stops
from llmkit.generate.cli import timing_line

HELP = "/reset clears the history, /exit (or an empty line, or Ctrl-D) quits."


class ChatSession:
    """A conversation with a model: history, prompt building with truncation, streamed replies."""

    def __init__(self, model, tokenizer, style, params: SamplingParams, system: Optional[str] = None):
        self.model, self.tokenizer, self.style, self.params = model, tokenizer, style, params
        self.system = system
        self.history: list[dict] = []  # user/assistant messages, oldest first
        with_stops, self.stop_ids = with_style_stops(params, style, tokenizer)
        self.stop = with_stops.stop
        self.context = model.max_seq_len
        self.last_completion = None

    def reset(self) -> None:
        self.history.clear()

    def _messages(self, history: list[dict], user: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + history + [{"role": "user", "content": user}]

    def build_prompt(self, user: str) -> tuple[list[int], int, int]:
        """(prompt ids, max new tokens, first history message kept) for the next turn.

        The oldest exchanges are left out while prompt + max_new_tokens exceeds the context.
        Raises LLMKitError if even the system prompt and this message alone leave no room.
        """
        start = 0
        while True:
            ids = self.style.encode(self.tokenizer, self._messages(self.history[start:], user))
            if len(ids) + self.params.max_new_tokens <= self.context or start == len(self.history):
                break
            # Leave out the oldest exchange: a user message and the reply that follows it.
            pair = start + 1 < len(self.history) and self.history[start + 1]["role"] == "assistant"
            start += 2 if pair else 1
        room = self.context - len(ids)
        if room < 1:
            raise LLMKitError(f"the message is too long: the prompt is {len(ids)} tokens and the context "
                              f"is {self.context}")
        return ids, min(self.params.max_new_tokens, room), start

    def reply(self, user: str) -> Iterator[str]:
        """Stream the reply to `user`. Once it is complete the exchange joins the history and
        the exchanges that no longer fit are forgotten."""
        ids, max_new, start = self.build_prompt(user)
        params = self.params.replace(max_new_tokens=max_new, stop=self.stop)
        gen = stream(self.model, self.tokenizer, ids, params, stop_ids=self.stop_ids)
        yield from gen
        self.last_completion = gen.completion
        self.history = self.history[start:] + [{"role": "user", "content": user},
                                               {"role": "assistant", "content": gen.completion.text}]


def _read_line(prompt: str, in_stream: TextIO, out_stream: TextIO) -> Optional[str]:
    """One line of input without its newline; None at end of input (Ctrl-D) or on Ctrl-C."""
    try:
        if in_stream is sys.stdin and out_stream is sys.stdout and sys.stdin.isatty():
            import readline  # noqa: F401  (gives input() line editing and history)

            return input(prompt)
        out_stream.write(prompt)
        out_stream.flush()
        line = in_stream.readline()
    except (EOFError, KeyboardInterrupt):
        out_stream.write("\n")
        return None
    if not line:
        out_stream.write("\n")
        return None
    return line.rstrip("\r\n")


def run_repl(session: ChatSession, in_stream: TextIO = sys.stdin, out_stream: TextIO = sys.stdout,
             err_stream: TextIO = sys.stderr) -> None:
    """The chat loop: read a message, stream the reply to `out_stream`, the timing line to
    `err_stream`."""
    out = out_stream
    print(f"Chatting ({session.style.name} prompt format). {HELP}", file=out)
    while True:
        line = _read_line(">> Prompt: ", in_stream, out)
        if line is None or not line.strip():
            return
        command = line.strip().lower()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            print("(history cleared)", file=out)
            continue
        if command == "/help":
            print(HELP, file=out)
            continue
        out.write(">> Reply: ")
        out.flush()
        t0 = time.perf_counter()
        try:
            for text in session.reply(line):
                out.write(text)
                out.flush()
        except KeyboardInterrupt:  # stop this reply, keep chatting; the turn is not remembered
            print("\n(interrupted)", file=out)
            continue
        except LLMKitError as e:
            print(f"\nerror: {e}", file=out)
            continue
        out.write("\n")
        out.flush()
        n = len(session.last_completion.token_ids)
        print(timing_line(time.perf_counter() - t0, n), file=err_stream, flush=True)


def chat(
    model: str,
    system: Optional[str] = None,
    style: Optional[str] = None,
    chat_template: Optional[str] = None,
    max_new_tokens: int = CHAT_MAX_NEW_TOKENS,
    temperature: float = COMMAND_DEFAULTS.temperature,
    top_k: Optional[int] = COMMAND_DEFAULTS.top_k,
    top_p: float = COMMAND_DEFAULTS.top_p,
    seed: Optional[int] = None,
    device: str = "cpu",
    dtype: Optional[str] = None,
) -> None:
    """Chat with a model in the terminal (multi-turn, streamed replies).

    Type a message and press Enter. /reset clears the history; an empty line, /exit or Ctrl-D
    quits. After each reply a timing line goes to stderr.

    Args:
        model: an llmkit checkpoint directory, a Hugging Face model directory or a hub repo id
            (with its tokenizer files).
        system: system prompt, kept at the start of the conversation.
        style: prompt format: "auto" (default: the model's chat template, else a style its
            vocabulary suggests, else alpaca) or alpaca, chatml, llama3, llama2, mistral, phi3,
            gemma, plain.
        chat_template: a Jinja chat template file to use instead of the model's.
        max_new_tokens: longest reply, in tokens.
        temperature: 0 for greedy decoding; higher is more random.
        top_k: sample among the k most likely tokens only (0 or null: all).
        top_p: nucleus sampling: the smallest set of tokens holding this probability, in (0, 1].
        seed: random seed, for reproducible replies.
        device: cpu, cuda, cuda:1, mps...
        dtype: float32 or bfloat16 (default: the checkpoint's).
    """
    from llmkit.generate import load_for_inference
    from llmkit.prompts import resolve_style

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    if max_new_tokens < 1:
        raise LLMKitError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    loaded, tokenizer = load_for_inference(model, device, dtype)
    session = ChatSession(loaded.model, tokenizer, resolve_style(tokenizer, style, chat_template), params, system)
    run_repl(session)
