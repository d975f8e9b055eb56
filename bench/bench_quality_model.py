"""The learned quality filter (`llmkit.data.quality_model`) on a real-text experiment.

Built from ../shared/data (see each folder's README for sources and licences):

* reference (label 1, well-formed prose): SciTLDR paper abstracts (summarization/), SQuAD
  Wikipedia paragraphs (qa/), SNLI premise sentences five to a document (nli/). Half of the
  abstracts and of the paragraphs are kept aside for the corpus's shuffled documents.
* corpus (label 0, a noisier mix): SMS messages, ham and spam (sms_spam/); the other half of
  the abstracts and paragraphs with their words shuffled (the same vocabulary as the reference,
  only the order is wrong: unigram features cannot see it, bigrams can); boilerplate-like
  documents generated here (navigation menus, cookie and copyright notices, tag lists, product
  listings, "click here" calls).

Each source is split 80/20 by document (seeded); the classifier trains on the 80% and is scored
on the 20%: accuracy (threshold 0.5), ROC AUC, and per kind of document the mean score and the
share on the right side of 0.5. Speeds are one process: featurizing (documents/s), fitting
(document-epochs/s), and scoring raw text end to end (documents/s and MB/s of UTF-8).

    python bench/bench_quality_model.py
    python bench/bench_quality_model.py --data ../shared/data --ngrams 1 2 3 --epochs 5 --dim 1048576
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llmkit.data.quality_model import BATCH_SIZE, L2, LR, QualityClassifier, roc_auc  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def boilerplate(rng: random.Random, n: int) -> list[str]:
    """Web-page furniture of the kinds quality filters exist to remove, varied by `rng`."""
    sites = ["Acme News", "ShopRight", "TechDaily", "the Riverside Gazette", "BestDeals Online", "MyBlog", "CityGuide"]
    menu = ["Home", "About", "About Us", "Contact", "Blog", "News", "Shop", "Cart", "Login", "Register", "FAQ",
            "Privacy Policy", "Terms of Use", "Sitemap", "Careers", "Help", "Search", "Subscribe", "Archive"]
    tags = ["travel", "food", "tech", "deals", "review", "2019", "best", "cheap", "news", "sports", "video",
            "free", "download", "online", "photos", "top 10", "how to", "guide", "sale", "new"]
    products = ["Wireless Mouse", "USB-C Cable", "Phone Case", "LED Lamp", "Coffee Mug", "Backpack", "Headphones",
                "Water Bottle", "T-Shirt", "Sneakers", "Desk Chair", "Notebook"]
    pieces = [
        lambda: " | ".join(rng.sample(menu, rng.randint(5, 10))),
        lambda: (f"We use cookies to improve your experience on {rng.choice(sites)}. By continuing to browse "
                 f"you agree to our use of cookies. {rng.choice(['Accept', 'OK', 'Learn more', 'Accept all'])}"),
        lambda: f"Copyright © {rng.randint(2005, 2023)} {rng.choice(sites)}. All rights reserved.",
        lambda: "Tags: " + ", ".join(rng.sample(tags, rng.randint(4, 9))),
        lambda: "\n".join(f"{rng.choice(products)} - ${rng.randint(3, 99)}.{rng.randint(0, 99):02d} "
                          f"{rng.choice(['Add to cart', 'In stock', 'Sold out', 'Free shipping'])}"
                          for _ in range(rng.randint(2, 6))),
        lambda: (f"Click here to {rng.choice(['subscribe', 'download', 'read more', 'sign up', 'win'])}! "
                 f"{rng.choice(['Limited offer', 'Act now', 'Do not miss out', 'Only today'])}!!! "
                 f"{rng.choice(['Share', 'Tweet', 'Like'])} | {rng.choice(['Share', 'Tweet', 'Like'])}"),
        lambda: f"Posted by {rng.choice(['admin', 'editor', 'guest'])} on {rng.randint(1, 28)}/{rng.randint(1, 12)}/"
                f"{rng.randint(2010, 2023)} | {rng.randint(0, 200)} comments | Read more »",
        lambda: "Page " + " ".join(str(i) for i in range(1, rng.randint(4, 12))) + " Next »",
    ]
    return ["\n".join(rng.choice(pieces)() for _ in range(rng.randint(1, 6))) for _ in range(n)]


def build(data: Path, seed: int = 0) -> dict[str, tuple[int, list[str]]]:
    """kind -> (label, documents)."""
    rng = random.Random(seed)
    need = [data / "summarization", data / "qa" / "dev-v1.1.json", data / "nli" / "dev.jsonl",
            data / "sms_spam" / "SMSSpamCollection.tsv"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        sys.exit(f"bench_quality_model: missing {', '.join(missing)} (pass --data FOLDER: the shared data folder)")
    abstracts = [" ".join(r["source"]) for split in ("train", "dev", "test")
                 for r in read_jsonl(data / "summarization" / f"{split}.jsonl")]
    contexts = []
    for name in ("dev-v1.1.json", "train-v1.1.first11articles.json"):
        path = data / "qa" / name
        if path.exists():
            squad = json.loads(path.read_text(encoding="utf-8"))
            contexts += [p["context"] for art in squad["data"] for p in art["paragraphs"]]
    contexts = list(dict.fromkeys(contexts))
    premises = list(dict.fromkeys(r["premise"] for r in read_jsonl(data / "nli" / "dev.jsonl")))
    captions = [" ".join(premises[i:i + 5]) for i in range(0, len(premises) - 4, 5)]
    with open(data / "sms_spam" / "SMSSpamCollection.tsv", encoding="utf-8", newline="") as f:
        sms = [row["SMS"] for row in csv.DictReader(f, delimiter="\t") if row["SMS"].strip()]
    rng.shuffle(abstracts)
    rng.shuffle(contexts)
    half_a, half_c = len(abstracts) // 2, len(contexts) // 2

    def shuffled(text: str) -> str:
        words = text.split()
        rng.shuffle(words)
        return " ".join(words)

    return {
        "reference: abstracts": (1, abstracts[:half_a]),
        "reference: wikipedia paragraphs": (1, contexts[:half_c]),
        "reference: snli captions": (1, captions),
        "corpus: sms": (0, sms),
        "corpus: shuffled abstracts": (0, [shuffled(t) for t in abstracts[half_a:]]),
        "corpus: shuffled paragraphs": (0, [shuffled(t) for t in contexts[half_c:]]),
        "corpus: boilerplate": (0, boilerplate(rng, 2000)),
    }


def split(kinds: dict[str, tuple[int, list[str]]], test_fraction: float, seed: int):
    """(train texts, train labels, test texts, test labels, test kinds), seeded, per kind."""
    rng = np.random.default_rng(seed)
    tr_x, tr_y, te_x, te_y, te_k = [], [], [], [], []
    for kind, (label, docs) in kinds.items():
        test = set(rng.choice(len(docs), size=int(round(len(docs) * test_fraction)), replace=False).tolist())
        for i, d in enumerate(docs):
            if i in test:
                te_x.append(d)
                te_y.append(label)
                te_k.append(kind)
            else:
                tr_x.append(d)
                tr_y.append(label)
    return tr_x, np.array(tr_y), te_x, np.array(te_y), te_k


def run(kinds, ngrams: int, epochs: int, dim: int, seed: int) -> dict:
    from llmkit.data.quality_model import _Rows, featurize

    tr_x, tr_y, te_x, te_y, te_k = split(kinds, 0.2, seed)
    # Featurizing and fitting timed apart (QualityClassifier.train does both).
    t0 = time.perf_counter()
    rows = _Rows()
    for t in tr_x:
        rows.append(*featurize(t, dim, ngrams))
    X = rows.csr()
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = QualityClassifier._fit(X, tr_y.astype(np.int8), dim=dim, ngrams=ngrams, epochs=epochs,
                                   lr=LR, l2=L2, batch_size=BATCH_SIZE, seed=seed)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = model.scores(te_x)
    t_score = time.perf_counter() - t0
    mb = sum(len(t.encode("utf-8")) for t in te_x) / 1e6
    per_kind = {}
    for kind in kinds:
        mask = np.array([k == kind for k in te_k])
        right = (p[mask] >= 0.5) == (te_y[mask] == 1)
        per_kind[kind] = {"docs": int(mask.sum()), "mean_score": float(p[mask].mean()), "right": float(right.mean())}
    return {"ngrams": ngrams, "train_docs": len(tr_x), "test_docs": len(te_x),
            "accuracy": float(((p >= 0.5) == (te_y == 1)).mean()), "auc": roc_auc(p, te_y),
            "featurize_docs_per_s": len(tr_x) / t_feat, "fit_doc_epochs_per_s": len(tr_x) * epochs / t_fit,
            "train_docs_per_s": len(tr_x) / (t_feat + t_fit), "train_seconds": t_feat + t_fit,
            "score_docs_per_s": len(te_x) / t_score, "score_mb_per_s": mb / t_score, "per_kind": per_kind}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder")
    ap.add_argument("--ngrams", type=int, nargs="+", default=[1, 2], help="n-gram orders to compare")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dim", type=int, default=2**20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    kinds = build(Path(args.data), args.seed)
    print("documents: " + ", ".join(f"{k} {len(d):,}" for k, (_, d) in kinds.items()))
    results = []
    for n in args.ngrams:
        r = run(kinds, n, args.epochs, args.dim, args.seed)
        results.append(r)
        print(f"\nngrams={n}: train {r['train_docs']:,} docs, held out {r['test_docs']:,}: accuracy {r['accuracy']:.4f}, "
              f"AUC {r['auc']:.4f}")
        print(f"  speed: featurize {r['featurize_docs_per_s']:,.0f} docs/s, fit {r['fit_doc_epochs_per_s']:,.0f} "
              f"doc-epochs/s, training {r['train_docs_per_s']:,.0f} docs/s ({r['train_seconds']:.1f}s for "
              f"{args.epochs} epochs); scoring {r['score_docs_per_s']:,.0f} docs/s, {r['score_mb_per_s']:.2f} MB/s")
        for kind, s in r["per_kind"].items():
            print(f"  {kind:34s} {s['docs']:5d} docs  mean score {s['mean_score']:.3f}  right side of 0.5 {s['right']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
