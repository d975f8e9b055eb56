"""Builders the test files share (this module holds no tests), one copy each:

- tiny tokenizers and model directories: `build_tokenizer` + `build_model_dir` (ChatML-style
  specials, the generation / chat / finetuning tests) and `save_tokenizer` + `make_model_dir`
  (<pad>/<s>/</s>, optional BOS, the evaluation tests);
- LoRA adapters that differ from the base: `randomize_adapters`;
- token shards from synthetic text: `make_token_shards`;
- encoder tokenizers (the data tests for NER, QA, masking): `build_wordpiece` (BERT) and
  `build_roberta` (byte-level BPE with RoBERTa's `<s> A </s></s> B </s>` template);
- the CLI two ways: `run_cli` (a real `python -m llmkit` subprocess, for what needs its own
  process: the entry point itself, signals, stdin, environment read at import) and, in this
  process, `cli_run` / `cli_error` (`llmkit.cli.main` with pytest's `capsys`).

The session-scoped fixture over `build_model_dir` (`tiny_model_dir`: each tiny model built once
per session and shared read-only) is in conftest.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_HF, make_hf_model

# --- tiny tokenizer + model directory (ChatML-style specials) ------------------------------------
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today?",
    "A language model predicts the next token; tokens are pieces of words such as the, and, ing.",
    "Once upon a time there was a small model that learned to write short stories about foxes.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(out_dir, chat_template=None, vocab_size=320, add_bos=False):
    """Train a tiny byte-level BPE (specials: <|endoftext|> = BOS/pad, <|im_end|> = EOS) and save it."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    from llmkit.tokenizer import Tokenizer

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TRAIN_TEXT * 4, trainer=trainer)
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "add_bos_token": add_bos}
    tok = Tokenizer(backend, config=config, chat_template=chat_template)
    tok.save(out_dir)
    return Tokenizer.from_dir(out_dir)


def build_model_dir(out_dir, family="llama", chat_template=CHATML_TEMPLATE, seed=0, context=None) -> Path:
    """A tiny random HF model of `family` with a matching tokenizer (vocab 320) in `out_dir`."""
    out_dir = Path(out_dir)
    if context is None:
        model = make_hf_model(family, seed)
    else:  # the same family with a longer context
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(family, **{**TINY_HF[family], "max_position_embeddings": context})
        model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out_dir)
    build_tokenizer(out_dir, chat_template)
    return out_dir


# --- tiny tokenizer + model directory (<pad>/<s>/</s>, for the evaluation tests) ------------------
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Question: what is the capital of France? Answer: Paris.",
    "A cat sat on the mat and looked at the moon, then went to sleep.",
    "Numbers: 1 2 3 4 5 6 7 8 9 10. Colours: red, green, blue, yellow.",
] * 5


def save_tokenizer(out: Path, vocab_size: int, bos: bool) -> None:
    """Byte-level BPE with <pad>=0, <s>=1, </s>=2 (the tiny HF configs' ids). With `bos`, the
    tokenizer.json post-processor prepends <s> (Llama's convention), otherwise nothing (GPT-2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() == vocab_size
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def make_model_dir(root: Path, family: str = "llama", bos: bool = True, seed: int = 0,
                   context: int | None = None) -> Path:
    """A tiny HF model of `family` plus its tokenizer in root/<family>-<bos>-<seed>[-<context>].

    `context` raises the context length (RoPE families only) for prompts longer than the tiny
    configs' 128 tokens, e.g. a judge's grading prompt."""
    d = Path(root) / (f"{family}-{'bos' if bos else 'nobos'}-{seed}" + (f"-{context}" if context else ""))
    if not (d / "tokenizer.json").exists():
        model = make_hf_model(family, seed)
        if context:
            model.config.max_position_embeddings = context
        model.save_pretrained(d)
        save_tokenizer(d, model.config.vocab_size, bos)
    return d


def randomize_adapters(model, seed: int = 1) -> None:
    """Give every LoRALinear's B a random value: a fresh adapter (B = 0) is exactly the base,
    so a trained-looking one is needed to tell adapted from unadapted outputs."""
    from llmkit.lora import LoRALinear

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.copy_(torch.randn(m.lora_b.shape, generator=g) * 0.1)


# --- token shards from synthetic text ------------------------------------------------------------
def make_token_shards(root: Path, words: list[str], n_docs: int, max_words: int, min_words: int = 60,
                      vocab_size: int = 300, seq_len: int = 32, val_fraction: float = 0.1, seed: int = 0) -> Path:
    """`n_docs` text files of random `words` (min_words..max_words each) in root/docs, a BPE
    tokenizer trained on them (root/tok) and `llmkit data prepare` shards (root/data, returned)."""
    from llmkit.data.prepare import prepare
    from llmkit.tokenizer import train_tokenizer

    root = Path(root)
    docs = root / "docs"
    docs.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(n_docs):
        (docs / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))) + ".\n")
    train_tokenizer([str(docs)], vocab_size=vocab_size, out=str(root / "tok"))
    prepare([str(docs)], tokenizer=str(root / "tok"), out=str(root / "data"), seq_len=seq_len, val_fraction=val_fraction)
    return root / "data"


# --- the CLI --------------------------------------------------------------------------------------
def run_cli(*args, env: dict | None = None, input: str | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """Run the real console entry point (`python -m llmkit ARGS`) in a subprocess, offline:
    (exit code, stdout, stderr). For what needs its own process; otherwise use `cli_run`."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "llmkit", *map(str, args)], capture_output=True, text=True, env=e,
                       timeout=timeout, input=input)
    return p.returncode, p.stdout, p.stderr


def cli_run(capsys, argv) -> tuple[int, str, str]:
    """`llmkit ARGV` in this process (`llmkit.cli.main`): (exit code, stdout, stderr)."""
    from llmkit.cli import main

    capsys.readouterr()  # drop what earlier steps of the test printed
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def cli_error(capsys, argv, *needles: str) -> str:
    """`llmkit ARGV` in this process must fail as a user should see it: exit code 1 and, on
    stderr, exactly one line `error: ...` (no traceback) containing every one of `needles`.
    Returns that line."""
    from llmkit.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1, err[-2000:]
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# --- encoder tokenizers (BERT WordPiece, RoBERTa byte-level BPE) ---------------------------------------
ENCODER_TEXT = [
    "Super Bowl 50 was an American football game played in Santa Clara, California, on February 7, 2016.",
    "The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.",
    "Frederic Chopin was a Polish composer and virtuoso pianist of the Romantic era who wrote for the piano.",
    "Apple released the iPod in 2001; Steve Jobs called it a thousand songs in your pocket.",
    "Who won the game? Where was it played? When did the composer die, and what did he write?",
    "She visited Paris and London with her sister, then flew home to New York on Tuesday night.",
] * 3


def build_wordpiece(out_dir, vocab_size: int = 600, lowercase: bool = True) -> Path:
    """A tiny BERT WordPiece tokenizer ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4) trained on
    ENCODER_TEXT with `train_tokenizer(kind="wordpiece")`; loads in both llmkit and transformers."""
    from llmkit.tokenizer import train_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "corpus.txt").write_text("\n".join(ENCODER_TEXT) + "\n", encoding="utf-8")
    train_tokenizer([str(out_dir / "corpus.txt")], vocab_size=vocab_size, out=str(out_dir / "tok"),
                    min_frequency=1, kind="wordpiece", lowercase=lowercase)
    return out_dir / "tok"


def build_roberta(out_dir, vocab_size: int = 500, add_prefix_space: bool = True) -> Path:
    """A tiny RoBERTa-style tokenizer: byte-level BPE, specials in RoBERTa's order (<s>=0 <pad>=1
    </s>=2 <unk>=3 <mask>=4) and its post-processor (`<s> A </s>`, pairs `<s> A </s></s> B </s>`,
    trimmed offsets); `add_prefix_space` as RoBERTa needs it for pre-tokenized words."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(ENCODER_TEXT, trainer=trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                          add_prefix_space=add_prefix_space)
    backend.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
              "mask_token": "<mask>", "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out_dir


def build_encoder_dir(out_dir, family: str = "bert", task: str = "lm", seed: int = 0, num_labels: int = 3,
                      id2label: dict | None = None, noise: float = 0.2) -> Path:
    """A tiny transformers encoder checkpoint (BertForMaskedLM by default, or the `task`'s class)
    with random weights, saved with its tokenizer (WordPiece for bert/distilbert/modernbert, the
    RoBERTa BPE for roberta) in one folder that both llmkit and transformers load."""
    import shutil

    import torch
    import transformers as T

    from tests.test_encoders import CLASSES, tiny_hf_config

    out_dir = Path(out_dir)
    tok = build_roberta(out_dir / "_tok") if family == "roberta" else build_wordpiece(out_dir / "_tok")
    from llmkit.tokenizer import Tokenizer

    vocab = Tokenizer.from_dir(tok).vocab_size
    kw = dict(num_labels=len(id2label) if id2label else (2 if task == "span" else num_labels))
    if id2label:
        kw.update(id2label=dict(enumerate(id2label)) if isinstance(id2label, list) else id2label,
                  label2id={v: k for k, v in (enumerate(id2label) if isinstance(id2label, list) else id2label.items())})
    cfg = tiny_hf_config(family, vocab_size=vocab, **kw)
    torch.manual_seed(seed)
    model = getattr(T, CLASSES[task]).from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    d = out_dir / f"{family}-{task}"
    model.save_pretrained(d)
    for f in tok.iterdir():
        if f.is_file():
            shutil.copy(f, d / f.name)
    shutil.rmtree(out_dir / "_tok")
    return d


def build_t5_tokenizer(out_dir, vocab_size: int = 160, extra_ids: int = 8) -> Path:
    """A tiny T5-style Unigram tokenizer (<pad>=0 </s>=1 <unk>=2, sentinels at the top) trained
    with llmkit's own `tokenizer train --kind unigram`."""
    from llmkit.tokenizer import train_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "_text.txt"
    text.write_text("\n".join(ENCODER_TEXT + TRAIN_TEXT) * 3, encoding="utf-8")
    train_tokenizer([str(text)], vocab_size=vocab_size, out=str(out_dir), kind="unigram", extra_ids=extra_ids)
    text.unlink()
    return out_dir


def build_seq2seq_dir(out_dir, family: str = "t5", seed: int = 0, noise: float = 0.2) -> Path:
    """A tiny transformers encoder-decoder (T5 v1.1 / "t5" v1.0 / BART) with random weights,
    saved with its tokenizer (T5: a Unigram one; BART: RoBERTa's BPE) in one folder."""
    import shutil

    import transformers as T

    from llmkit.tokenizer import Tokenizer
    from tests.test_seq2seq_models import tiny_hf_config

    out_dir = Path(out_dir)
    tok = build_roberta(out_dir / "_tok") if family == "bart" else build_t5_tokenizer(out_dir / "_tok")
    vocab = Tokenizer.from_dir(tok).vocab_size
    depth = {"num_decoder_layers": 2} if family.startswith("t5") else {"decoder_layers": 2}
    cfg = tiny_hf_config(family, vocab, **depth)
    torch.manual_seed(seed)
    model = T.AutoModelForSeq2SeqLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
        if family == "t5v1.1":
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.3)
    d = out_dir / family
    model.save_pretrained(d)
    for f in tok.iterdir():
        if f.is_file():
            shutil.copy(f, d / f.name)
    shutil.rmtree(tok)
    return d


def assert_sigterm_resume_equals_uninterrupted(args, ref: Path, out: Path, loss: str, steps: int, at: int = 4) -> None:
    """Run `llmkit args(dir)` into `ref`; run it into `out` in a process that gets a real SIGTERM
    during the `at`-th call of `llmkit.recipes.pretrain.<loss>` (exit 143 after a checkpoint),
    resume it with --train.resume auto, and require the same losses at every step and the same
    final weights bit for bit."""
    import csv
    import signal
    import subprocess
    import sys

    from llmkit.checkpoint import load_weights

    code, _, err = run_cli(*args(ref))
    assert code == 0, err[-2000:]
    script = f"""
import os, signal
import llmkit.recipes.pretrain as p
orig, calls = p.{loss}, [0]
def loss(m, b):
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.SIGTERM)
    return orig(m, b)
p.{loss} = loss
from llmkit.cli import main
main({args(out)!r})
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-2000:]
    code, _, err = run_cli(*args(out), "--train.resume", "auto")
    assert code == 0, err[-2000:]

    def losses(d):
        with open(Path(d) / "metrics.csv") as f:
            return {int(x["step"]): float(x["value"]) for x in csv.DictReader(f) if x["metric"] == "loss"}

    a, b = losses(ref), losses(out)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert a == b, [(s, a[s], b[s]) for s in a if a[s] != b[s]]
    wa, wb = load_weights(ref / "final"), load_weights(out / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
