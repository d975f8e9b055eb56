"""Build the English pretraining corpus of the encoder results in the README (JSONL, one
document per line) from ../shared/data: only training splits and plain text, never the dev/test
texts the tasks are scored on, plus the Python standard library's docstrings (the quickstart's
offline corpus).

    python examples/encoder_corpus.py ../shared/data out/encoders/corpus.jsonl
"""

import csv
import json
import sys
from pathlib import Path

from llmkit.recipes.quickstart import stdlib_docstrings


def main(shared: str, out: str) -> None:
    root, dst = Path(shared), Path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".stdlib.jsonl")
    stdlib_docstrings(tmp)
    docs = [json.loads(line)["text"] for line in tmp.read_text().splitlines()]
    tmp.unlink()
    docs += [p for p in (root / "text/tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    docs.append((root / "text/the-verdict.txt").read_text())
    for art in json.loads((root / "qa/train-v1.1.first11articles.json").read_text())["data"]:
        docs += [p["context"] for p in art["paragraphs"]]
    with open(root / "sentiment/train.tsv", encoding="utf-8") as f:
        docs += [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    for line in (root / "summarization/train.jsonl").read_text().splitlines():
        docs.append(" ".join(json.loads(line)["source"]))
    for line in (root / "translation/train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        docs.append(rec.get("en") or rec.get("source") or next(iter(rec.values())))
    sent, words = [], []
    for line in (root / "ner/train.conll").read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.append(line.split()[0])
        elif words:
            sent.append(" ".join(words))
            words = []
    docs += sent
    with open(dst, "w", encoding="utf-8") as f:
        for d in docs:
            if d.strip():
                f.write(json.dumps({"text": d}) + "\n")
    print(f"{len(docs):,} documents, {sum(len(d.encode()) for d in docs) / 1e6:.1f} MB -> {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
