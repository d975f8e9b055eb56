#!/usr/bin/env bash
# The README's encoder-decoder results: a small T5 (micro-t5) pretrained with span corruption on
# this machine's CPU, then finetuned for summarization (SciTLDR) and English->German translation
# (NTREX train, FLORES-200 devtest), each scored next to its trivial baselines.
#
#   bash examples/seq2seq.sh [OUT] [PRETRAIN_SECONDS] [FINETUNE_SECONDS]   (default out/seq2seq, 1200, 600)
#
# Every step is an llmkit command; each resumes if interrupted (run the script again).
set -euo pipefail
OUT=${1:-out/seq2seq}
PRETRAIN_S=${2:-1200}
FT_S=${3:-600}
SHARED=${SHARED:-../shared/data}
mkdir -p "$OUT"
T=(--train.eval-every 0 --train.save-every 200 --train.log-every 50 --train.tensorboard false)

# 1. Corpus (training splits + plain text), a T5-style Unigram tokenizer with 100 sentinels, shards.
[ -f "$OUT/corpus.jsonl" ] || python examples/seq2seq_corpus.py "$SHARED" "$OUT/corpus.jsonl"
[ -f "$OUT/tok/tokenizer.json" ] || llmkit tokenizer train "$OUT/corpus.jsonl" --kind unigram --vocab-size 8192 --out "$OUT/tok"
[ -f "$OUT/data/manifest.json" ] || llmkit data prepare "$OUT/corpus.jsonl" --tokenizer "$OUT/tok" --out "$OUT/data" --seq-len 256 --val-fraction 0.01

# 2. Span-corruption pretraining of micro-t5 (4+4 layers, d256) for PRETRAIN_S seconds: 128-token
#    inputs (15% noise in spans of mean 3, T5's setting), targets 32 tokens.
[ -d "$OUT/pretrain/final" ] || llmkit pretrain --model micro-t5 --data "$OUT/data" --out "$OUT/pretrain" --seq-len 128 \
  --objective span --train.max-time "$PRETRAIN_S" --train.max-steps null --train.micro-batch-size 32 --train.lr 2e-3 \
  --train.warmup-steps 200 --train.eval-every 500 --train.save-every 500 --train.log-every 50 --train.tensorboard false
T5="$OUT/pretrain/final"

# 3. Summarization: SciTLDR-A train (1,992 abstracts), scored on test (618, 2-4 TLDRs each).
[ -d "$OUT/sum/final" ] || llmkit finetune "$T5" "$SHARED/summarization/train.jsonl" --val-data "$SHARED/summarization/dev.jsonl" \
  --prefix "summarize: " --method full --max-source-len 384 --max-target-len 64 --out "$OUT/sum" \
  --train.max-time "$FT_S" --train.max-steps null --train.micro-batch-size 16 --train.lr 1e-3 --train.warmup-steps 50 \
  --eval-batches 8 "${T[@]}"
[ -f "$OUT/sum-eval/results.json" ] || llmkit evaluate "$OUT/sum/final" --generate-data "$SHARED/summarization/test.jsonl" \
  --prefix "summarize: " --max-new-tokens 48 --batch-size 32 --out "$OUT/sum-eval"

# 4. Translation en->de: NTREX train (1,997 sentences), scored on FLORES-200 devtest (1,012).
[ -d "$OUT/mt/final" ] || llmkit finetune "$T5" "$SHARED/translation/train.jsonl" --source-field en --target-field de \
  --prefix "translate English to German: " --method full --max-source-len 128 --max-target-len 128 --out "$OUT/mt" \
  --train.max-time "$FT_S" --train.max-steps null --train.micro-batch-size 16 --train.lr 1e-3 --train.warmup-steps 50 \
  --eval-batches 8 "${T[@]}"
[ -f "$OUT/mt-eval/results.json" ] || llmkit evaluate "$OUT/mt/final" --generate-data "$SHARED/translation/test.jsonl" \
  --source-field en --target-field de --prefix "translate English to German: " --max-new-tokens 96 --batch-size 32 \
  --out "$OUT/mt-eval"

cat "$OUT/sum-eval/results.md" "$OUT/mt-eval/results.md"
