#!/usr/bin/env bash
# The README's encoder results: a small BERT pretrained on this machine's CPU, then finetuned and
# scored on five real tasks from ../shared/data, each next to a trivial baseline.
#
#   bash examples/encoders.sh [OUT] [PRETRAIN_SECONDS]      (default out/encoders, 2100 s)
#
# Every step is an llmkit command; each resumes if interrupted (run the script again).
set -euo pipefail
OUT=${1:-out/encoders}
PRETRAIN_S=${2:-2100}
SHARED=${SHARED:-../shared/data}
mkdir -p "$OUT"
T=(--train.eval-every 0 --train.save-every 500 --train.log-every 50 --train.tensorboard false)

# 1. Corpus (training splits + plain text only), WordPiece tokenizer, token shards.
[ -f "$OUT/corpus.jsonl" ] || python examples/encoder_corpus.py "$SHARED" "$OUT/corpus.jsonl"
[ -f "$OUT/tok/tokenizer.json" ] || llmkit tokenizer train "$OUT/corpus.jsonl" --kind wordpiece --vocab-size 8192 --out "$OUT/tok"
[ -f "$OUT/data/manifest.json" ] || llmkit data prepare "$OUT/corpus.jsonl" --tokenizer "$OUT/tok" --out "$OUT/data" --seq-len 128 --val-fraction 0.01

# 2. Masked-LM pretraining of micro-bert (6 layers, d256, 7.1M parameters) for PRETRAIN_S seconds.
[ -d "$OUT/pretrain/final" ] || llmkit pretrain --model micro-bert --data "$OUT/data" --out "$OUT/pretrain" --seq-len 128 \
  --train.max-time "$PRETRAIN_S" --train.max-steps null --train.micro-batch-size 32 --train.lr 1e-3 \
  --train.warmup-steps 200 --train.eval-every 500 --train.save-every 500 --train.log-every 50 --train.tensorboard false
BERT="$OUT/pretrain/final"

# 3. Sentence polarity (accuracy; majority baseline 50%).
llmkit classify train "$BERT" --data "$SHARED/sentiment/train.tsv" --text-col sentence --label-col label \
  --test-data "$SHARED/sentiment/dev.tsv" --val-fraction 0.05 --test-fraction 0 --max-seq-len 64 \
  --out "$OUT/sentiment" --train.max-steps 500 --train.micro-batch-size 32 --train.lr 2e-4 --train.warmup-steps 50 "${T[@]}"

# 4. NLI on SNLI: train on dev, test on test (accuracy; majority baseline ~34%).
llmkit classify train "$BERT" --data "$SHARED/nli/dev.jsonl" --text-col premise --text-pair-col hypothesis \
  --label-col label --test-data "$SHARED/nli/test.jsonl" --val-fraction 0.05 --test-fraction 0 --max-seq-len 96 \
  --out "$OUT/nli" --train.max-steps 500 --train.micro-batch-size 32 --train.lr 2e-4 --train.warmup-steps 50 "${T[@]}"

# 5. WNUT-17 named entities (entity F1; the all-O baseline scores 0).
llmkit ner train "$BERT" --data "$SHARED/ner/train.conll" --val-data "$SHARED/ner/dev.conll" \
  --test-data "$SHARED/ner/test.conll" --max-seq-len 128 --out "$OUT/ner" --train.max-steps 500 \
  --train.micro-batch-size 16 --train.lr 3e-4 --train.warmup-steps 50 "${T[@]}"

# 6. SQuAD v1.1: train on the 11-article subset, score all of dev (EM/F1; first-sentence baseline).
llmkit qa train "$BERT" --data "$SHARED/qa/train-v1.1.first11articles.json" --val-data "$SHARED/qa/dev-v1.1.json" \
  --max-seq-len 128 --stride 48 --out "$OUT/qa" --train.max-steps 600 --train.micro-batch-size 16 \
  --train.lr 3e-4 --train.warmup-steps 60 "${T[@]}"

# 7. Sentence embeddings: contrastive on SNLI dev entailment pairs, retrieval on test
#    (the untrained model's retrieval accuracy is the baseline, measured by the same command).
llmkit embed train "$BERT" --data "$SHARED/nli/dev.jsonl" --val-data "$SHARED/nli/test.jsonl" --max-seq-len 64 \
  --out "$OUT/embed" --train.max-steps 300 --train.micro-batch-size 32 --train.lr 2e-4 --train.warmup-steps 30 "${T[@]}"

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
o = Path(sys.argv[1])
for name in ("pretrain", "sentiment", "nli", "ner", "qa", "embed"):
    f = o / name / "summary.json"
    if f.exists():
        s = json.loads(f.read_text())
        print(name, {k: v for k, v in s.items() if isinstance(v, (int, float)) and k not in ("tokens",)})
PY
