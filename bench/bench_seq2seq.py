"""Encoder-decoders on CPU: llmkit vs transformers' T5, greedy decoding and span-corruption training.

    python bench/bench_seq2seq.py [--threads 1 2] [--rounds 5] [--new-tokens 64] [--src-tokens 32]
                                  [--decode-precision fp32] [--batch 8] [--src-len 128] [--tgt-len N]
                                  [--steps 3] [--warmup 1] [--train-rounds 2] [--precision fp32 bf16]
                                  [--vocab 32128] [--compile] [--skip-train] [--skip-decode]

One model, two libraries, the same weights: a random-weight T5 of t5-small's shape (T5 v1.0:
vocabulary 32128, width 512, 6 encoder + 6 decoder layers, 8 heads of 64, FFN 2048 with ReLU,
32 relative-position buckets up to distance 128, tied and rescaled output embedding; 60.5M
parameters) is built by transformers (`T5ForConditionalGeneration(T5Config(...))`, so T5's own
init: embeddings N(0, 1), q N(0, (512*64)^-0.5), ...; dropout 0, as llmkit has none), saved with
`save_pretrained` next to a T5-style Unigram tokenizer (llmkit's `train_tokenizer(kind="unigram")`
with 100 sentinels, trained on ../shared/data text, 32100 pieces as T5's), and that folder is
loaded by both: llmkit through `load_model` / `load_for_inference` (the HF -> llmkit conversion the
CLI runs on a real t5-small), transformers through `from_pretrained(..., attn_implementation="sdpa")`.
Before anything is timed, the fp32 logits of both on the same source/target batch must agree.

1. Batch-1 greedy decoding, tokens/s. Source: the first `--src-tokens` tokens of
   the-verdict.txt (EOS last, as T5's tokenizer ends a text); `--new-tokens` generated, forced:
   * transformers: `generate(input_ids, attention_mask, do_sample=False, num_beams=1,
     max_new_tokens=N, min_new_tokens=N, eos_token_id=None, pad_token_id=0)` in
     `torch.inference_mode()` (its default cache, an EncoderDecoderCache of DynamicCaches);
   * llmkit: `load_for_inference(folder, dtype=...)` (the generate/chat/serve commands' loader: it
     swaps in the MatVecLinear decode kernels) and `generate(model, tok, source_ids,
     max_new_tokens=N, stop_ids=set())` (greedy; detokenizes every token, as it streams);
   * "llmkit load_model", a diagnostic: the same call on `load_model(folder)`, i.e. without
     `prepare_for_decoding` (plain nn.Linear / MKL sgemm), to show what the decode kernels
     give on the machine at hand (they were tuned on an AMD EPYC, BENCHMARKS.md).
   With no stop token on either side both make exactly N tokens, and in fp32 they must be the
   same ids (greedy on the same weights). Two figures: "decode" leaves out the encoder and the
   first token ((N - 1) / (t(N) - t(1)): transformers from two `generate` calls, llmkit from its
   own timestamps); "end to end" is N / the wall time of one whole call (encoder, first token,
   per-call set-up). A round runs one call of each system (each going first in turn),
   after one warm-up call each; best and median of `--rounds`.

2. Span-corruption training step, tokens/s, with tokens = source + target tokens of a step
   (batch x (src_len + tgt_len); no padding, so this is also what `seq2seq_loss` counts).
   Batches: random ordinary token ids corrupted by llmkit's `data.spans` (`span_lengths`,
   `noise_mask`, `span_corrupt`: 15% noise, mean span 3, T5's sentinels), so a 128-token input
   has exactly `span_lengths(128)[1]` = 29 target tokens (T5's 512 -> 114); with `--tgt-len`
   set to another length, random source/target ids of those shapes instead. decoder input =
   [pad] + targets[:-1] (what transformers builds from `labels`). Both from the same weights,
   same optimizer (torch AdamW, fused, lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01
   on matrices only, clipping at 1.0), same precision (fp32, or `torch.autocast("cpu", bfloat16)`
   over fp32 weights), eager unless `--compile` (torch.compile of both models; it compiles for
   minutes on 2 cores, so it is off by default).
   * llmkit: the real `Trainer.fit()` (training/loop.py) with `seq2seq_loss` and
     `weight_fn=labelled_count`, as `llmkit pretrain --objective span` runs it; a step is timed
     from one `next(batches)` to the next; the checkpoint `fit` writes at its end (outside the
     timed steps) is skipped to save wall time (`trainer.save_checkpoint` replaced by a no-op).
   * transformers: a plain loop, `T5ForConditionalGeneration(input_ids, attention_mask,
     labels=labels).loss`, backward, clip, step, zero_grad, timed the same way.
   Each round runs `warmup + steps` steps of one system, then the other (order alternating);
   the warm-up steps are dropped. tokens/s: median over the measured steps of all rounds, and
   the best round's median (load only ever slows a step down). Weights keep training across
   rounds on both sides alike.

`--threads 1 2` repeats everything at 1 and then 2 torch threads (`torch.set_num_threads`);
`/proc/loadavg` is printed at the start and at the end, and the exact command line at the end.
`--vocab 8192` (e.g.) makes the whole model smaller-vocabulary (the tokenizer then has as many
pieces), where the 32128 x 512 vocabulary projection no longer dominates the decoder.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports tqdm (it reads TQDM_* once): progress bars would interleave with the table.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llmkit.config import ModelConfig
from llmkit.training.loop import TrainConfig, Trainer, setup_runtime
from llmkit.training.losses import labelled_count, seq2seq_loss
from llmkit.training.optim import param_groups

DATA = ROOT.parent / "shared" / "data"
LR, BETAS, EPS, WD, CLIP = 1e-4, (0.9, 0.999), 1e-8, 0.01, 1.0
PAD, EOS, UNK = 0, 1, 2  # T5's special ids (tokenizer.py T5_SPECIAL_TOKENS)
N_SENTINELS = 100
PLAIN = "llmkit load_model"  # the same model without prepare_for_decoding (a diagnostic)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def busy_warning() -> str:
    """A warning when other work already keeps the cores busy: threads then wait on each other
    (at 2 threads on 2 busy cores, decode steps were seen to take ~0.5 s instead of ~20 ms)."""
    try:
        one_minute = float(loadavg().split()[0])
    except (ValueError, IndexError):
        return ""
    cores = os.cpu_count() or 1
    if one_minute < 0.5 * cores:
        return ""
    return (f"WARNING: load average {one_minute:.1f} on {cores} cores before starting: other work shares the "
            "CPUs; figures will be slower and noisier, multi-thread ones worst")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        return "?"


# --- model folder -----------------------------------------------------------------------------------
def tokenizer_corpus(tmp: Path) -> tuple[Path, str]:
    """A text file to train the Unigram tokenizer on: Shakespeare, the summarization sources and
    the translation pairs of ../shared/data (~8 MB, enough for 32100 pieces), else synthetic text."""
    parts: list[str] = []
    shakespeare = DATA / "text" / "tinyshakespeare.txt"
    if shakespeare.is_file():
        parts.append(shakespeare.read_text(encoding="utf-8"))
    for split in ("train", "dev", "test"):
        f = DATA / "summarization" / f"{split}.jsonl"
        if f.is_file():
            parts += [" ".join(json.loads(ln)["source"]) for ln in f.read_text(encoding="utf-8").splitlines() if ln]
        f = DATA / "translation" / f"{split}.jsonl"
        if f.is_file():
            for ln in f.read_text(encoding="utf-8").splitlines():
                if ln:
                    r = json.loads(ln)
                    parts += [r.get("en", ""), r.get("de", "")]
    source = "../shared/data (tinyshakespeare, summarization, translation)"
    if not parts:
        import random

        rng = random.Random(0)
        letters = "abcdefghijklmnopqrstuvwxyz"
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 12))) for _ in range(60000)]
        parts = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(40000)]
        source = "synthetic words (no ../shared/data)"
    path = tmp / "corpus.txt"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path, source


def build_folder(tmp: Path, vocab: int) -> tuple[Path, str]:
    """A transformers T5 folder (t5-small's shape, random weights, T5's init) with a T5-style
    Unigram tokenizer in it. Returns (folder, where the tokenizer's text came from)."""
    from transformers import T5Config, T5ForConditionalGeneration

    from llmkit.checkpoint import copy_tokenizer_files
    from llmkit.tokenizer import train_tokenizer

    corpus, source = tokenizer_corpus(tmp)
    tok_dir = tmp / "tokenizer"
    # T5's tokenizer has 32100 pieces for 32128 embeddings (rows 32100.. are never produced).
    train_tokenizer([str(corpus)], vocab_size=min(vocab, 32100), out=str(tok_dir), kind="unigram",
                    extra_ids=N_SENTINELS)
    cfg = T5Config(vocab_size=vocab, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                   num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj="relu", tie_word_embeddings=True,
                   pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg)
    folder = tmp / "t5"
    model.save_pretrained(folder)
    copy_tokenizer_files(tok_dir, folder)
    return folder, source


def load_hf(folder: Path, dtype: torch.dtype = torch.float32):
    from transformers import T5ForConditionalGeneration

    model, info = T5ForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype,
                                                             output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model.eval()


def check_shape(cfg: ModelConfig, vocab: int) -> None:
    """The converted config is llmkit's t5-small preset (but for the vocabulary, if changed)."""
    ref = ModelConfig.from_name("t5-small", vocab_size=vocab)
    fields = ("vocab_size", "n_layer", "n_encoder_layer", "n_embd", "n_head", "head_size", "ffn_size", "mlp", "pos",
              "norm", "tie_embeddings", "lm_head_rescale", "rel_buckets", "rel_max_distance", "attn_scale")
    diff = {f: (getattr(cfg, f), getattr(ref, f)) for f in fields if getattr(cfg, f) != getattr(ref, f)}
    assert not diff, f"the converted model is not t5-small's shape: {diff}"


# --- decoding ---------------------------------------------------------------------------------------
def hf_generate(model, src: torch.Tensor, n: int) -> tuple[float, list[int]]:
    """(seconds, generated ids) of one forced-length greedy `generate` call."""
    kw = dict(do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=PAD)
    with torch.inference_mode():
        t = time.perf_counter()
        out = model.generate(input_ids=src, attention_mask=torch.ones_like(src), **kw)
        dt = time.perf_counter() - t
    return dt, out[0, 1:].tolist()  # out[0, 0] is the decoder-start token


def hf_decode(model, src: torch.Tensor, n: int) -> tuple[float, float, list[int]]:
    """(decode tok/s without the encoder and first token, end-to-end tok/s, ids)."""
    t1, _ = hf_generate(model, src, 1)
    tn, ids = hf_generate(model, src, n)
    return (n - 1) / max(tn - t1, 1e-9), n / tn, ids


def llmkit_decode(model, tok, src: list[int], n: int) -> tuple[float, float, list[int]]:
    from llmkit.generate import generate

    t = time.perf_counter()
    c = generate(model, tok, src, max_new_tokens=n, stop_ids=set())
    wall = time.perf_counter() - t
    return (n - 1) / max(c.total_time - c.time_to_first_token, 1e-9), n / wall, c.token_ids


# --- training ---------------------------------------------------------------------------------------
def make_batches(B: int, S: int, T: int | None, tok_vocab: int, n: int = 4) -> tuple[list[dict], str]:
    """`n` fixed batches {src, src_mask, idx, labels}: T5 span corruption of random ordinary ids
    (T None or equal to span_lengths' target length), else random ids of shapes (B, S) / (B, T)."""
    from llmkit.data.spans import noise_mask, span_corrupt, span_lengths

    g = torch.Generator().manual_seed(1)
    ordinary = (UNK + 1, tok_vocab - N_SENTINELS)  # ids between the specials and the sentinels
    sentinels = [tok_vocab - 1 - i for i in range(N_SENTINELS)]  # <extra_id_0> is the highest id
    raw, span_T = span_lengths(S)
    spans = T is None or T == span_T
    out = []
    for _ in range(n):
        if spans:
            rows = [span_corrupt(ids, noise_mask(raw, generator=g), sentinels, EOS)
                    for ids in torch.randint(*ordinary, (B, raw), generator=g)]
            src = torch.stack([r[0] for r in rows])  # (B, S)
            tgt = torch.stack([r[1] for r in rows])  # (B, span_T)
        else:
            src = torch.randint(*ordinary, (B, S), generator=g)
            tgt = torch.randint(*ordinary, (B, T), generator=g)
            src[:, -1] = tgt[:, -1] = EOS
        idx = torch.cat([torch.full((B, 1), PAD), tgt[:, :-1]], dim=1)  # (B, T): shifted right
        out.append({"src": src, "src_mask": torch.ones_like(src), "idx": idx, "labels": tgt})
    what = (f"span corruption (15% noise, mean span 3) of {raw} random tokens -> {S} inputs, {span_T} targets"
            if spans else f"random ids, {S} inputs, {T} targets (span corruption of {S} inputs gives {span_T})")
    return out, what


class TimedBatches:
    """Cycles through fixed batches and stamps the time of every `next`: the interval between
    two stamps is one whole optimizer step of the loop that consumes them."""

    def __init__(self, batches):
        self.batches, self.i, self.stamps = batches, 0, []

    def __iter__(self):
        return self

    def __next__(self):
        self.stamps.append(time.perf_counter())
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


def llmkit_round(model, batches, n_steps: int, precision: str, compile_: bool, out: Path):
    # One step more than measured: a step's time is read at the next step's `next(batches)`.
    cfg = TrainConfig(max_steps=n_steps + 1, micro_batch_size=batches[0]["src"].shape[0], lr=LR, warmup_steps=0,
                      min_lr_ratio=1.0, weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], grad_clip=CLIP,
                      precision=precision, compile=compile_, eval_every=0, log_every=10**9, save_every=0,
                      resume="none", tensorboard=False, device="cpu")
    it = TimedBatches(batches)
    trainer = Trainer(model, cfg, out, it, seq2seq_loss, runtime=setup_runtime(cfg), weight_fn=labelled_count)
    trainer.save_checkpoint = lambda: None  # the final checkpoint: after the timed steps, ~0.7 GB to write
    trainer.fit()
    losses = [h["loss"] for h in trainer.history][:n_steps]
    return [b - a for a, b in zip(it.stamps, it.stamps[1:])], losses


def hf_round(model, batches, n_steps: int, precision: str):
    # The same optimizer as llmkit's make_optimizer: AdamW, fused, decay on matrices only.
    # n_steps + 1 steps, as llmkit_round runs (its last one only closes the last interval),
    # so that both sides' weights stay the same from round to round.
    opt = torch.optim.AdamW(param_groups(model, WD), lr=LR, betas=BETAS, eps=EPS, fused=True)
    model.train()
    amp = precision == "bf16"
    stamps, losses = [], []
    for i in range(n_steps + 1):
        stamps.append(time.perf_counter())
        b = batches[i % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=b["src"], attention_mask=b["src_mask"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return [b - a for a, b in zip(stamps, stamps[1:])], losses[:n_steps]


# --- main -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads, one pass per value")
    ap.add_argument("--rounds", type=int, default=5, help="decode rounds (the systems alternate)")
    ap.add_argument("--new-tokens", type=int, default=64, help="decode: tokens generated (forced)")
    ap.add_argument("--src-tokens", type=int, default=32, help="decode: source tokens (EOS included)")
    ap.add_argument("--decode-precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8, help="training: rows per step")
    ap.add_argument("--src-len", type=int, default=128, help="training: source tokens per row")
    ap.add_argument("--tgt-len", type=int, default=None,
                    help="training: target tokens per row (default: what span corruption of --src-len gives)")
    ap.add_argument("--steps", type=int, default=3, help="training: measured steps per round")
    ap.add_argument("--warmup", type=int, default=1, help="training: unmeasured steps at the start of each round")
    ap.add_argument("--train-rounds", type=int, default=2, help="training rounds (default 2: a step takes seconds)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="training precision(s)")
    ap.add_argument("--compile", action="store_true", help="training: torch.compile both models (slow to compile)")
    ap.add_argument("--vocab", type=int, default=32128, help="model vocabulary (t5-small: 32128)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    # Both systems share this process: llmkit's Trainer raises glibc's malloc thresholds when it
    # starts (hardware.tune_cpu_allocator), which would then also hold for every later round of
    # transformers. Set once here, before any round, both run with it from the first round on,
    # whatever the order (LLMKIT_MALLOC=default: neither does).
    from llmkit.hardware import tune_cpu_allocator
    print(f"glibc malloc thresholds raised for both systems: {tune_cpu_allocator()}")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    print(f"load at start: {loadavg()}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__}", flush=True)
    busy = busy_warning()
    if busy:
        print(busy, flush=True)

    import transformers

    from llmkit.checkpoint import load_model
    from llmkit.generate import load_for_inference

    transformers.logging.set_verbosity_error()  # load reports: the keys are checked here instead
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        folder, tok_source = build_folder(tmp, args.vocab)
        ours = load_model(folder).model  # fp32, the training copy
        check_shape(ours.cfg, args.vocab)
        tok = load_model(folder).tokenizer
        n_params = sum(p.numel() for p in ours.parameters())
        print(f"t5-small shape, vocab {args.vocab}: {n_params / 1e6:.1f}M parameters; tokenizer {tok.vocab_size} "
              f"Unigram pieces from {tok_source}; transformers {transformers.__version__} (T5 attention: sdpa); "
              f"built in {time.perf_counter() - t0:.0f} s", flush=True)

        # Same weights: the fp32 logits must agree before any timing means much.
        theirs = load_hf(folder)
        g = torch.Generator().manual_seed(2)
        src = torch.randint(UNK + 1, tok.vocab_size - N_SENTINELS, (2, 24), generator=g)
        dec = torch.randint(UNK + 1, tok.vocab_size - N_SENTINELS, (2, 9), generator=g)
        mask = torch.ones_like(src)
        mask[1, 17:] = 0  # a padded source too
        with torch.no_grad():
            a = ours(dec, src=src, src_mask=mask)
            b = theirs(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        diff, scale = float((a - b).abs().max()), float(b.abs().max())
        print(f"logits max |llmkit - transformers| = {diff:.2e} (max |logit| {scale:.1f})")
        assert diff <= 1e-4 * max(1.0, scale), "the two models do not hold the same weights"

        decode_rows, train_rows, mismatched = [], [], []
        text = DATA / "text" / "the-verdict.txt"
        source_text = text.read_text(encoding="utf-8") if text.is_file() else "The quick brown fox jumps. " * 50
        src_ids = tok.encode(source_text)[: args.src_tokens - 1] + [EOS]
        N = args.new_tokens
        if not args.skip_decode:
            print(f"decode: {len(src_ids)} source tokens, {N} new tokens (forced), batch 1, greedy", flush=True)
        if not args.skip_train:
            batches, what = make_batches(args.batch, args.src_len, args.tgt_len, tok.vocab_size)
            B, S, T = args.batch, batches[0]["src"].shape[1], batches[0]["labels"].shape[1]
            print(f"training: batch {B} x ({S} source + {T} target) = {B * (S + T)} tokens a step; {what}; "
                  f"{'torch.compile' if args.compile else 'eager'}", flush=True)
            hf_train = load_hf(folder)
            with torch.no_grad():
                hf_train.eval()
                la = seq2seq_loss(ours, batches[0])["loss"].item()
                lb = hf_train(input_ids=batches[0]["src"], attention_mask=batches[0]["src_mask"],
                              labels=batches[0]["labels"]).loss.item()
            print(f"initial loss: llmkit {la:.6f}, transformers {lb:.6f}")
            assert abs(la - lb) < 1e-4 * max(1.0, abs(lb)), "the initial losses disagree"
            if args.compile:
                hf_train = torch.compile(hf_train)
        del theirs

        for nt in args.threads:
            torch.set_num_threads(nt)
            if not args.skip_decode:
                for precision in args.decode_precision:
                    tag = f"{nt}t {precision}"
                    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                    hf = load_hf(folder, dtype)
                    dname = "bfloat16" if precision == "bf16" else "float32"
                    loaded, dtok = load_for_inference(str(folder), dtype=dname)
                    models = {"llmkit": loaded.model,  # the CLI's path: decode kernels swapped in
                              PLAIN: load_model(folder, dtype=dname).model.requires_grad_(False)}
                    hf_decode(hf, torch.tensor([src_ids]), 4)  # warm-up: first calls pay one-off costs
                    for m in models.values():
                        llmkit_decode(m, dtok, src_ids, 4)
                    systems = ["transformers", "llmkit", PLAIN]
                    res = {w: [] for w in systems}
                    ids = {}
                    for r in range(args.rounds):
                        for who in systems[r % 3:] + systems[:r % 3]:  # each goes first in turn
                            if who == "transformers":
                                dec_rate, e2e, got = hf_decode(hf, torch.tensor([src_ids]), N)
                            else:
                                dec_rate, e2e, got = llmkit_decode(models[who], dtok, src_ids, N)
                            res[who].append((dec_rate, e2e))
                            ids[who] = got
                            print(f"  {tag} round {r} decode {who:<20} {dec_rate:7.1f} tok/s decode, "
                                  f"{e2e:7.1f} tok/s end to end", flush=True)
                    b_ids = ids["transformers"]
                    sames = []
                    for who in ("llmkit", PLAIN):
                        a_ids = ids[who]
                        same = sum(x == y for x, y in zip(a_ids, b_ids))
                        first_diff = next((i for i, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), None)
                        if len(a_ids) != N or len(b_ids) != N or (precision == "fp32" and same != N):
                            mismatched.append(f"{tag} {who}: {same}/{N} same ids as transformers (lengths "
                                              f"{len(a_ids)}, {len(b_ids)}; first difference at {first_diff})")
                        sames.append(f"{same}/{N}")
                    decode_rows.append((nt, precision, res, ", ".join(sames)))
                    del models
                    del hf, loaded
            if not args.skip_train:
                for precision in args.precision:
                    tag = f"{nt}t {precision}"
                    names = ["llmkit", "transformers"]
                    steps = {w: [] for w in names}
                    best = {w: float("inf") for w in names}
                    n = args.warmup + args.steps
                    for r in range(args.train_rounds):
                        for who in (names if r % 2 == 0 else names[::-1]):
                            if who == "llmkit":
                                dt, losses = llmkit_round(ours, batches, n, precision, args.compile,
                                                          tmp / f"run-{tag}-{r}")
                            else:
                                dt, losses = hf_round(hf_train, batches, n, precision)
                            kept = dt[args.warmup:]
                            steps[who] += kept
                            best[who] = min(best[who], statistics.median(kept))
                            med = statistics.median(kept)
                            print(f"  {tag} round {r} train {who:<12} median step {med * 1e3:7.0f} ms  (warm-up "
                                  f"{sum(dt[:args.warmup]):.1f} s)  loss {losses[0]:.3f} -> {losses[-1]:.3f}",
                                  flush=True)
                    tokens = B * (S + T)
                    train_rows.append((nt, precision, {w: tokens / statistics.median(v) for w, v in steps.items()},
                                       {w: tokens / v for w, v in best.items()}))

    print()
    if decode_rows:
        print(f"Greedy decoding at batch 1, t5-small shape (vocab {args.vocab}), {len(src_ids)} source tokens, "
              f"{N} new tokens: tokens/s, best / median of {args.rounds} rounds. llmkit = load_for_inference "
              f"(the CLI's loader, decode kernels in); {PLAIN} = load_model, plain nn.Linear")
        for k, what in ((0, "decode (no encoder, no first token)"), (1, "end to end (one whole call)")):
            print(f"{what}:")
            print(f"| threads | dtype | transformers | llmkit | ratio (best) | {PLAIN} | ratio (best) "
                  "| same greedy ids (llmkit, plain) |")
            print("|---|---|---|---|---|---|---|---|")
            for nt, precision, res, same in decode_rows:
                v = {w: [x[k] for x in xs] for w, xs in res.items()}
                cell = {w: f"{max(x):.1f} / {statistics.median(x):.1f}" for w, x in v.items()}
                ratio = {w: max(x) / max(v["transformers"]) for w, x in v.items()}
                print(f"| {nt} | {precision} | {cell['transformers']} | {cell['llmkit']} | **{ratio['llmkit']:.2f}x** "
                      f"| {cell[PLAIN]} | {ratio[PLAIN]:.2f}x | {same} |")
        print()
    if train_rows:
        print(f"Span-corruption training step, t5-small shape (vocab {args.vocab}), batch {B} x ({S} + {T}) tokens, "
              f"{'torch.compile' if args.compile else 'eager'}: source + target tokens/s")
        print("| threads | precision | transformers (median / best round) | llmkit (median / best round) "
              "| ratio (median) | ratio (best rounds) |")
        print("|---|---|---|---|---|---|")
        for nt, precision, tps, tps_best in train_rows:
            print(f"| {nt} | {precision} | {tps['transformers']:,.0f} / {tps_best['transformers']:,.0f} "
                  f"| {tps['llmkit']:,.0f} / {tps_best['llmkit']:,.0f} "
                  f"| **{tps['llmkit'] / tps['transformers']:.2f}x** "
                  f"| {tps_best['llmkit'] / tps_best['transformers']:.2f}x |")
        print()
    for nt, precision, res, _ in decode_rows:
        ratio = max(x[0] for x in res["llmkit"]) / max(x[0] for x in res["transformers"])
        print(f"goal llmkit/transformers >= 1.5x: decode {nt}t {precision} {ratio:.2f}x "
              f"{'met' if ratio >= 1.5 else 'NOT met'}")
    for nt, precision, tps, _ in train_rows:
        ratio = tps["llmkit"] / tps["transformers"]
        print(f"goal llmkit/transformers >= 1.1x: train {nt}t {precision} {ratio:.2f}x "
              f"{'met' if ratio >= 1.1 else 'NOT met'}")
    for m in mismatched:
        print(f"GREEDY IDS DIFFER: {m}")
    print(f"load at end: {loadavg()}")
    print(f"command: {command}")
    if mismatched:
        sys.exit(1)


if __name__ == "__main__":
    main()
