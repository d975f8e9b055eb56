"""Encoders on CPU: llmkit vs transformers' BERT, masked-LM training and sentence embeddings.

    python bench/bench_encoders.py [--shape micro-bert|base-small] [--batch 16] [--seq-len 128]
                                   [--steps 8] [--warmup 2] [--rounds 3] [--precision fp32 bf16]
                                   [--threads N [N ...]] [--sentences 2000] [--embed-batch 32]

Two measurements in one run, the systems alternating round by round:

1. Masked-LM training, tokens/s (input tokens, batch x seq_len). Both sides train the same
   BERT-style model (default llmkit's `micro-bert` preset with an 8192 vocabulary: 6 layers,
   width 256, 8 heads, FFN 1024, post-norm, tied MLM head with its dense+GELU+LayerNorm
   transform; `--shape base-small`: 4 layers, width 512, FFN 2048) from the same weights
   (llmkit's init exported with the production converter, `config_to_hf` + `state_dict_to_hf`,
   into `BertForMaskedLM` with SDPA attention), on the same masked batches (random ids between
   [CLS] and [SEP], masked once in advance by llmkit's `mask_tokens`: 15%, 80/10/10), with the
   same optimizer (torch AdamW, fused, identical lr/betas/eps, weight decay on matrices only,
   clipping at 1.0) and precision (fp32, or `torch.autocast("cpu", bfloat16)` with fp32 master
   weights). The first losses must agree before anything is timed.
   llmkit side: the real `Trainer.fit()` (training/loop.py) with `mlm_loss` and
   `weight_fn=mlm_targets`, as `llmkit pretrain --objective mlm` runs it: the vocabulary
   projection is computed at the masked positions only (`predict=`). A step is timed from one
   `next(batches)` to the next, so checkpoint writing and logger setup at the ends of `fit` are
   not counted. transformers side: a plain PyTorch loop, `BertForMaskedLM(input_ids,
   labels=labels).loss` (its own loss over full-vocabulary logits), backward, clip, step,
   zero_grad, timed the same way.
   Each round runs `warmup + steps` steps of one system, then the other (order alternating per
   round); warmup steps are excluded. tokens/s is the median over the measured steps of all
   rounds (the machine may be shared: load only ever slows a step down, so the best round is
   shown too). MFU = flops_per_token (config.py: 6N + attention, N without the embeddings, so
   without the vocabulary projection in which the two sides differ) * tokens/s / the device's
   measured peak (`device_peak_flops`).

2. Sentence embeddings, sentences/s. One model folder written by `llmkit.checkpoint.save_hf`
   (the same initial weights, plus a WordPiece tokenizer trained by
   `train_tokenizer(kind="wordpiece")` on SNLI dev sentences from ../shared/data/nli/dev.jsonl
   when present, else on synthetic ones); both sides load that folder (bf16: in bfloat16) and
   encode the same `--sentences` texts (SNLI premises and hypotheses, else synthetic) with the
   same batch size: mean pooling over real tokens in float32, L2-normalised.
   llmkit side: `load_model(folder)` + `recipes.embed.encode_texts` (tokenizes all texts at once,
   batches them longest first). transformers side: `AutoModel` (SDPA, no pooler) and
   `AutoTokenizer` from the folder; per batch `tokenizer(batch, padding=True, truncation=True)`,
   forward under `torch.inference_mode()`, attention-mask mean pooling, `F.normalize`; "plain"
   takes the texts in input order, "sorted" in order of length (characters, longest first, as
   sentence-transformers' `encode` does) and puts the rows back in input order. The ratio is
   taken against the faster of the two. Timed: the whole call, tokenization included; the
   agreement check (fp32: max |diff| < 1e-4) is the warmup; each round times one pass of each.

`--threads 1 2` repeats everything with 1 and then 2 torch threads (the Rust tokenizers use
their own thread pool, the same for both sides). `cat /proc/loadavg` is printed at the start and
the end: figures taken under load are slower and noisier for both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports tqdm (it reads TQDM_* once): the Trainer's progress bar would
# interleave with the table.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.training.loop import TrainConfig, Trainer, device_peak_flops, setup_runtime
from llmkit.training.losses import IGNORE_INDEX, mlm_loss, mlm_targets
from llmkit.training.optim import param_groups

SHAPES = {
    # llmkit's micro-bert preset with an 8192 vocabulary: 6 layers, width 256, 8 heads, FFN 1024 (~6.9M).
    "micro-bert": dict(),
    # A wider, shallower encoder: 4 layers, width 512, 8 heads, FFN 2048 (~17M).
    "base-small": dict(n_layer=4, n_embd=512, n_head=8, intermediate_size=2048),
}
VOCAB = 8192
LR, BETAS, EPS, WD, CLIP = 1e-4, (0.9, 0.999), 1e-8, 0.01, 1.0
# BERT's wordpiece specials are ids 0..4 (tokenizer.py BERT_SPECIAL_TOKENS).
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
NLI = ROOT.parent / "shared" / "data" / "nli" / "dev.jsonl"


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        return "?"


# --- models ---------------------------------------------------------------------------------------
def build(shape: str):
    from transformers import BertConfig, BertForMaskedLM

    from llmkit.convert.hf import config_to_hf, state_dict_to_hf

    cfg = ModelConfig.from_name("micro-bert", vocab_size=VOCAB, **SHAPES[shape])
    torch.manual_seed(0)
    ours = Transformer(cfg)
    hf_cfg = {k: v for k, v in config_to_hf(cfg, "bert").items() if k not in ("architectures", "model_type")}
    theirs = BertForMaskedLM(BertConfig(**hf_cfg, attn_implementation="sdpa"))
    missing, unexpected = theirs.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg, "bert"), strict=False)
    # The tied decoder is not saved: it is the word embedding again, nothing else may be missing.
    assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight"}, (missing, unexpected)
    assert theirs.cls.predictions.decoder.weight.data_ptr() == theirs.bert.embeddings.word_embeddings.weight.data_ptr()
    assert theirs.config._attn_implementation == "sdpa", theirs.config._attn_implementation
    return cfg, ours, theirs


def masked_batches(B: int, T: int, n: int = 4) -> list[dict]:
    """`n` fixed masked-LM batches: [CLS] + random ordinary ids + [SEP], masked by llmkit's
    `mask_tokens` (the same tensors go to both sides)."""
    from llmkit.data.masking import mask_tokens

    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(MASK + 1, VOCAB, (B, T), generator=g)
        ids[:, 0], ids[:, -1] = CLS, SEP
        x, y = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=[PAD, UNK, CLS, SEP, MASK], generator=g)
        out.append({"idx": x, "labels": y})
    return out


# --- masked-LM training ---------------------------------------------------------------------------
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


def llmkit_round(model, batches, n_steps: int, precision: str, out: Path) -> tuple[list[float], list[float]]:
    # One step more than measured: a step's time is read at the next step's `next(batches)`.
    cfg = TrainConfig(max_steps=n_steps + 1, micro_batch_size=batches[0]["idx"].shape[0], lr=LR, warmup_steps=0,
                      min_lr_ratio=1.0, weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], grad_clip=CLIP,
                      precision=precision, eval_every=0, log_every=10**9, save_every=0, resume="none",
                      tensorboard=False, device="cpu")
    it = TimedBatches(batches)
    trainer = Trainer(model, cfg, out, it, mlm_loss, runtime=setup_runtime(cfg), weight_fn=mlm_targets)
    trainer.fit()
    losses = [h["loss"] for h in trainer.history][:n_steps]
    return [b - a for a, b in zip(it.stamps, it.stamps[1:])], losses


def hf_round(model, batches, n_steps: int, precision: str) -> tuple[list[float], list[float]]:
    # The same optimizer as llmkit's make_optimizer: AdamW, fused, decay on matrices only.
    opt = torch.optim.AdamW(param_groups(model, WD), lr=LR, betas=BETAS, eps=EPS, fused=True)
    model.train()
    amp = precision == "bf16"
    stamps, losses = [], []
    for i in range(n_steps):
        stamps.append(time.perf_counter())
        b = batches[i % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=b["idx"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])], losses


# --- embeddings -----------------------------------------------------------------------------------
_WORDS = ("a man woman child dog group of people is are sitting standing walking running on in the near with "
          "street park beach table red blue small large old young two three playing ball music guitar water "
          "bicycle building crowd looking at camera while holding wearing shirt hat outside inside").split()


def sentences(n: int) -> tuple[list[str], list[str], str]:
    """(`n` texts to encode, texts to train the tokenizer on, where they came from)."""
    if NLI.is_file():
        texts: dict[str, None] = {}
        for line in NLI.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                texts.setdefault(r["premise"].strip(), None)
                texts.setdefault(r["hypothesis"].strip(), None)
        pool = [t for t in texts if t]
        rng = random.Random(0)
        chosen = rng.sample(pool, min(n, len(pool)))
        while len(chosen) < n:  # more asked for than the file has: repeat it
            chosen += rng.sample(pool, min(n - len(chosen), len(pool)))
        return chosen, pool, f"SNLI dev ({NLI}), {len(pool)} distinct sentences"
    rng = random.Random(0)
    pool = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 30))).capitalize() + " ." for _ in range(5000)]
    return pool[:n] if n <= len(pool) else [pool[i % len(pool)] for i in range(n)], pool, "synthetic (no SNLI file)"


def export_folder(model: Transformer, train_texts: list[str], tmp: Path) -> Path:
    """A Hugging Face folder (save_hf) of `model` with a WordPiece tokenizer trained on `train_texts`."""
    from llmkit.checkpoint import save_hf
    from llmkit.tokenizer import train_tokenizer

    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in train_texts), encoding="utf-8")
    tok_dir = tmp / "tokenizer"
    train_tokenizer([str(corpus)], vocab_size=model.cfg.vocab_size, out=str(tok_dir), kind="wordpiece")
    folder = tmp / "encoder"
    save_hf(folder, model, tokenizer_dir=tok_dir)
    return folder


def load_both(folder: Path, precision: str):
    from transformers import AutoModel, AutoTokenizer

    from llmkit.checkpoint import load_model

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    loaded = load_model(folder, dtype=dtype)
    ours = loaded.model.requires_grad_(False).eval()
    theirs, info = AutoModel.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype,
                                             add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    return ours, loaded.tokenizer, theirs.eval(), AutoTokenizer.from_pretrained(folder)


def llmkit_encode(model, tok, texts: list[str], bs: int) -> torch.Tensor:
    from llmkit.recipes.embed import encode_texts

    return encode_texts(model, tok, texts, batch_size=bs)


def hf_encode(model, tok, texts: list[str], bs: int, sort: bool, max_len: int) -> torch.Tensor:
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i])) if sort else list(range(len(texts)))
    out = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for s in range(0, len(order), bs):
            chunk = order[s:s + bs]
            enc = tok([texts[i] for i in chunk], padding=True, truncation=True, max_length=max_len,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state.float()  # (B, T, d)
            m = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            out[chunk] = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
    return out


# --- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="micro-bert")
    ap.add_argument("--batch", type=int, default=16, help="masked-LM rows per step")
    ap.add_argument("--seq-len", type=int, default=128, help="masked-LM tokens per row")
    ap.add_argument("--steps", type=int, default=8, help="measured masked-LM steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured masked-LM steps at the start of each round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="torch intra-op threads, one pass per value (default: torch's, i.e. all cores)")
    ap.add_argument("--sentences", type=int, default=2000, help="texts encoded per embedding round")
    ap.add_argument("--embed-batch", type=int, default=32, help="texts per embedding batch (both sides)")
    ap.add_argument("--skip", choices=["mlm", "embed"], default=None, help="leave one of the two measurements out")
    args = ap.parse_args()
    # Both systems share this process: llmkit's Trainer raises glibc's malloc thresholds when it
    # starts (hardware.tune_cpu_allocator), which would then also hold for every later round of
    # transformers. Set once here, before any round, both run with it from the first round on,
    # whatever the order (LLMKIT_MALLOC=default: neither does).
    from llmkit.hardware import tune_cpu_allocator
    print(f"glibc malloc thresholds raised for both systems: {tune_cpu_allocator()}")
    threads = args.threads or [torch.get_num_threads()]

    print(f"load at start: {loadavg()}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__}", flush=True)

    import transformers

    transformers.logging.set_verbosity_error()  # load reports: the keys are checked here instead
    cfg, ours, theirs = build(args.shape)
    B, T = args.batch, args.seq_len
    batches = masked_batches(B, T)
    n_params = sum(p.numel() for p in ours.parameters())
    fpt = cfg.flops_per_token(T)
    masked = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches) / (len(batches) * B * T)
    print(f"shape {args.shape}: {n_params / 1e6:.1f}M parameters, {cfg.n_layer} layers, width {cfg.n_embd}, "
          f"heads {cfg.n_head}, FFN {cfg.ffn_size}, vocab {cfg.vocab_size}; MLM batch {B} x {T} tokens, "
          f"{masked:.1%} with a label; {fpt / 1e6:.1f} MFLOP/token; transformers {transformers.__version__}")

    # Same weights, same batch: the first losses must agree (fp32) before any timing means much.
    with torch.no_grad():
        theirs.eval()
        a = mlm_loss(ours, batches[0])["loss"]
        b = theirs(input_ids=batches[0]["idx"], labels=batches[0]["labels"]).loss
    print(f"initial MLM loss: llmkit {a.item():.6f}, transformers {b.item():.6f}")
    assert abs(a.item() - b.item()) < 1e-4, "the two models do not hold the same weights"

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        texts, corpus, source = sentences(args.sentences)
        if args.skip != "embed":
            folder = export_folder(ours, corpus, tmp)  # before any training: the initial weights
            from llmkit.tokenizer import Tokenizer

            n_tok = sum(len(t) for t in Tokenizer.from_dir(folder).encode_batch(texts))
            print(f"embeddings: {len(texts)} texts from {source}; {n_tok / len(texts):.1f} tokens a text "
                  f"([CLS]/[SEP] included); batch {args.embed_batch}")

        mlm_rows, emb_rows = [], []
        for nt in threads:
            torch.set_num_threads(nt)
            for precision in args.precision:
                tag = f"{nt}t {precision}"
                peak = device_peak_flops(torch.device("cpu"), torch.bfloat16 if precision == "bf16" else None)
                if args.skip != "embed":
                    e_ours, e_tok, e_theirs, e_hftok = load_both(folder, precision)
                    ref = llmkit_encode(e_ours, e_tok, texts, args.embed_batch)  # agreement check = warmup
                    diff = max(float((ref - hf_encode(e_theirs, e_hftok, texts, args.embed_batch, s, e_ours.max_seq_len))
                                     .abs().max()) for s in (False, True))
                    print(f"  {tag} embeddings max |llmkit - transformers| = {diff:.2e}", flush=True)
                    assert diff < (1e-4 if precision == "fp32" else 5e-2), "the embeddings disagree"
                mlm_names = ["llmkit", "transformers"]
                emb_names = ["llmkit", "transformers plain", "transformers sorted"]
                steps: dict[str, list[float]] = {w: [] for w in mlm_names}
                best: dict[str, float] = {w: float("inf") for w in mlm_names}
                secs: dict[str, list[float]] = {w: [] for w in emb_names}
                n = args.warmup + args.steps
                for r in range(args.rounds):
                    if args.skip != "mlm":
                        for who in (mlm_names if r % 2 == 0 else mlm_names[::-1]):
                            if who == "llmkit":
                                dt, losses = llmkit_round(ours, batches, n, precision, tmp / f"run-{tag}-{r}")
                            else:
                                dt, losses = hf_round(theirs, batches, n, precision)
                            kept = dt[args.warmup:]
                            steps[who] += kept
                            best[who] = min(best[who], statistics.median(kept))
                            print(f"  {tag} round {r} MLM {who:<20} median step {statistics.median(kept) * 1e3:7.1f} ms"
                                  f"  loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
                    if args.skip != "embed":
                        for who in (emb_names if r % 2 == 0 else emb_names[::-1]):
                            t0 = time.perf_counter()
                            if who == "llmkit":
                                llmkit_encode(e_ours, e_tok, texts, args.embed_batch)
                            else:
                                hf_encode(e_theirs, e_hftok, texts, args.embed_batch, who.endswith("sorted"),
                                          e_ours.max_seq_len)
                            secs[who].append(time.perf_counter() - t0)
                            print(f"  {tag} round {r} embed {who:<20} {secs[who][-1]:7.2f} s "
                                  f"({len(texts) / secs[who][-1]:,.0f} sentences/s)", flush=True)
                if args.skip != "mlm":
                    tps = {w: B * T / statistics.median(v) for w, v in steps.items()}
                    tps_best = {w: B * T / v for w, v in best.items()}
                    mlm_rows.append((nt, precision, tps, tps_best, peak))
                if args.skip != "embed":
                    sps = {w: len(texts) / statistics.median(v) for w, v in secs.items()}
                    sps_best = {w: len(texts) / min(v) for w, v in secs.items()}
                    emb_rows.append((nt, precision, sps, sps_best))
                    del e_ours, e_theirs

    print()
    if mlm_rows:
        print(f"Masked-LM training, {args.shape}, batch {B} x {T}: input tokens/s")
        print("| threads | precision | transformers tok/s (median / best round) | llmkit tok/s (median / best round) "
              "| MFU transformers | MFU llmkit | ratio (median) |")
        print("|---|---|---|---|---|---|---|")
        for nt, precision, tps, tps_best, peak in mlm_rows:
            mfu = {w: fpt * v / peak for w, v in tps.items()}
            print(f"| {nt} | {precision} | {tps['transformers']:,.0f} / {tps_best['transformers']:,.0f} "
                  f"| {tps['llmkit']:,.0f} / {tps_best['llmkit']:,.0f} | {mfu['transformers']:.1%} "
                  f"| {mfu['llmkit']:.1%} | **{tps['llmkit'] / tps['transformers']:.2f}x** |")
        for nt, precision, _, _, peak in mlm_rows:
            print(f"peak ({nt} threads, {precision} matmul, measured): {peak / 1e9:.0f} GFLOP/s")
        print()
    if emb_rows:
        print(f"Sentence embeddings, {args.shape}, {len(texts)} texts, batch {args.embed_batch}: sentences/s")
        print("| threads | precision | transformers plain (median / best) | transformers sorted (median / best) "
              "| llmkit encode_texts (median / best) | ratio vs better transformers (median) |")
        print("|---|---|---|---|---|---|")
        for nt, precision, sps, sps_best in emb_rows:
            hf_best = max(sps["transformers plain"], sps["transformers sorted"])
            print(f"| {nt} | {precision} | "
                  + " | ".join(f"{sps[w]:,.0f} / {sps_best[w]:,.0f}"
                               for w in ("transformers plain", "transformers sorted", "llmkit"))
                  + f" | **{sps['llmkit'] / hf_best:.2f}x** |")
        print()
    goals = [(f"MLM {nt}t {p}", tps["llmkit"] / tps["transformers"]) for nt, p, tps, _, _ in mlm_rows]
    goals += [(f"embed {nt}t {p}", sps["llmkit"] / max(sps["transformers plain"], sps["transformers sorted"]))
              for nt, p, sps, _ in emb_rows]
    for name, ratio in goals:
        print(f"goal llmkit/transformers >= 1.2x: {name} {ratio:.2f}x {'met' if ratio >= 1.2 else 'NOT met'}")
    print(f"load at end: {loadavg()}")


if __name__ == "__main__":
    main()
