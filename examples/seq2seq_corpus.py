"""Build the pretraining corpus of the encoder-decoder results in the README (JSONL, one document
per line) from ../shared/data: only training splits and plain text, never the dev/test texts the
tasks are scored on: the SciTLDR training abstracts and TLDRs, both sides of the NTREX en-de
training set (so the vocabulary and the encoder know German), tinyshakespeare, the-verdict and
the Python standard library's docstrings (the quickstart's offline corpus).

    python examples/seq2seq_corpus.py ../shared/data out/seq2seq/corpus.jsonl
"""

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
    for line in (root / "summarization/train.jsonl").read_text().splitlines():
        r = json.loads(line)
        docs.append(" ".join(r["source"]) + "\n\n" + " ".join(r["target"]))
    rows = [json.loads(line) for line in (root / "translation/train.jsonl").read_text().splitlines()]
    by_doc: dict = {}
    for r in rows:  # the news documents, each side as one document
        by_doc.setdefault(r["doc_id"], []).append(r)
    for parts in by_doc.values():
        docs.append(" ".join(r["en"] for r in parts))
        docs.append(" ".join(r["de"] for r in parts))
    with open(dst, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    print(f"{len(docs):,} documents, {sum(len(d.encode()) for d in docs) / 1e6:.1f} MB -> {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
