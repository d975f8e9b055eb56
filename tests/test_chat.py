"""The chat REPL: turns, history, /reset, truncation, timing line; driven in-process and via stdin."""

import io
import re
from types import SimpleNamespace

import pytest

from llmkit.chat import ChatSession, run_repl
from llmkit.generate import SamplingParams, generate, load_for_inference
from llmkit.prompts import PromptStyle
from tests.helpers import run_cli

TIMING = re.compile(r"^Time for inference: \d+\.\d\d sec total, \d+\.\d\d tokens/sec, \d+ tokens$", re.M)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    d = tiny_model_dir()
    loaded, tok = load_for_inference(str(d))
    return SimpleNamespace(dir=d, model=loaded.model, tok=tok, style=PromptStyle.for_model(tok))


def session(tiny, max_new_tokens=8, system=None):
    return ChatSession(tiny.model, tiny.tok, tiny.style, SamplingParams(max_new_tokens=max_new_tokens), system)


def test_repl_turns_reset_and_exit(tiny):
    s = session(tiny, system="Be brief.")
    out, err = io.StringIO(), io.StringIO()
    run_repl(s, io.StringIO("Hello\nHow are you?\n/reset\nAgain\n\nnever read\n"), out, err)
    text = out.getvalue()
    assert text.count(">> Reply: ") == 3 and "(history cleared)" in text and "never read" not in text
    assert len(TIMING.findall(err.getvalue())) == 3
    # After /reset only the last exchange is remembered; the system prompt is not history.
    assert [m["content"] for m in s.history if m["role"] == "user"] == ["Again"]


def test_each_turn_sees_the_whole_conversation(tiny):
    s = session(tiny, system="Be brief.")
    first = "".join(s.reply("Hello"))
    reply = "".join(s.reply("And then?"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    ids = tiny.style.encode(tiny.tok, messages)
    ref = generate(tiny.model, tiny.tok, ids, max_new_tokens=8, stop=tiny.style.stop_strings,
                   stop_ids=tiny.tok.eos_ids | tiny.style.stop_token_ids(tiny.tok))
    assert reply == ref.text and s.last_completion.token_ids == ref.token_ids


def test_history_is_truncated_from_the_oldest_turn_keeping_the_system_prompt(tiny):
    s = session(tiny, max_new_tokens=16, system="Sys.")
    for i in range(8):  # 128-token context: these turns cannot all fit
        "".join(s.reply(f"Turn {i}: the quick brown fox."))
        ids, max_new, _ = s.build_prompt("next")
        assert len(ids) + max_new <= tiny.model.max_seq_len
    users = [m["content"] for m in s.history if m["role"] == "user"]
    assert users[-1] == "Turn 7: the quick brown fox." and "Turn 0: the quick brown fox." not in users
    ids, _, start = s.build_prompt("next")
    kept = s.history[start:]
    assert kept and kept[0]["role"] == "user"  # whole exchanges are dropped
    assert tiny.tok.decode(ids, skip_special=False).startswith("<|im_start|>system\nSys.<|im_end|>")


def test_message_longer_than_the_context_is_reported_not_fatal(tiny):
    s = session(tiny)
    out = io.StringIO()
    run_repl(s, io.StringIO("fox " * 300 + "\nHi\n"), out, io.StringIO())
    assert "error: the message is too long" in out.getvalue() and out.getvalue().count(">> Reply: ") == 2


def test_chat_command_through_stdin(tiny):
    """A real process reading a pipe (its own stdin): it prints what the REPL prints in-process."""
    typed = "Hello\n/reset\nHi again\n"
    code, out, err = run_cli("chat", tiny.dir, "--max-new-tokens", "6", "--temperature", "0", "--system", "Be brief.",
                             input=typed, timeout=120)
    assert code == 0, err
    assert out.count(">> Reply: ") == 2 and "(history cleared)" in out
    assert len(TIMING.findall(err)) == 2  # EOF ended the session after the last reply
    expected = io.StringIO()
    greedy = ChatSession(tiny.model, tiny.tok, tiny.style, SamplingParams(max_new_tokens=6, temperature=0), "Be brief.")
    run_repl(greedy, io.StringIO(typed), expected, io.StringIO())
    assert out == expected.getvalue()
