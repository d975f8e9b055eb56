"""Language identification (`llmkit.data.langid`, py3langid's model) on English and German text.

Data: ../shared/data/translation (NTREX-128 en-de as "train", FLORES-200 devtest as "test"; see
its README), every English and every German line a separate example. Classification is over
all of the model's languages; `--languages` are the ones kept, as `llmkit data curate
--languages` would. Reported per split:

* accuracy (predicted language == the line's language), per-language precision and recall of
  the prediction, and what else was predicted (the confusion), for all lines and for short
  lines (< 40 characters) separately, plus "snippets": each line cut to its first words
  below 40 characters, a harder short-text test than the few naturally short lines;
* kept: the share of each language's lines that `accepts` (predicted language in
  `--languages`, probability >= `--threshold`);
* speed: lines/s and MB/s of UTF-8 text, one process;
* long documents: consecutive lines joined into ~9,000-character documents, English, German,
  and mixed ones (a quarter of the text a header in the other language), classified whole
  against the default bounded sample (max_chars=3000 in 3 windows) and a plain 3000-character
  prefix: accuracy (majority language by characters), agreement with the whole-text answer,
  and docs/s.

    python bench/bench_langid.py
    python bench/bench_langid.py --data ../shared/data --languages en,de --threshold 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llmkit.data.langid import MAX_CHARS, LanguageIdentifier, parse_languages  # noqa: E402

SHORT = 40


def load(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """split -> [(language, line)]: every "en" and "de" value of the split's JSONL file."""
    splits = {}
    for split in ("train", "test"):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            continue
        items = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    items += [(lang, rec[lang]) for lang in ("en", "de") if rec.get(lang, "").strip()]
        splits[split] = items
    return splits


def snippet(text: str, limit: int = SHORT) -> str:
    """The first words of `text`, fewer than `limit` characters (at least one word)."""
    words, out = text.split(), ""
    for w in words:
        if len(out) + len(w) + (1 if out else 0) >= limit:
            break
        out = f"{out} {w}" if out else w
    return out or words[0][: limit - 1]


def evaluate(lid: LanguageIdentifier, items: list[tuple[str, str]], keep: tuple[str, ...]) -> dict:
    t0 = time.perf_counter()
    preds = [lid.predict(text) for _, text in items]
    seconds = time.perf_counter() - t0
    n = len(items)
    truth = [lang for lang, _ in items]
    out: dict = {"lines": n, "accuracy": sum(p == t for (p, _), t in zip(preds, truth)) / n if n else float("nan")}
    per = {}
    for lang in sorted(set(truth)):
        tp = sum(p == lang and t == lang for (p, _), t in zip(preds, truth))
        predicted = sum(p == lang for p, _ in preds)
        actual = sum(t == lang for t in truth)
        kept = sum(t == lang and p in keep and pr >= lid.threshold for (p, pr), t in zip(preds, truth))
        confused = Counter(p for (p, _), t in zip(preds, truth) if t == lang and p != lang)
        per[lang] = {"n": actual, "precision": tp / predicted if predicted else float("nan"),
                     "recall": tp / actual, "kept": kept / actual, "confused_with": dict(confused.most_common(8))}
    out["per_language"] = per
    nbytes = sum(len(text.encode("utf-8")) for _, text in items)
    out["lines_per_s"] = n / seconds
    out["mb_per_s"] = nbytes / seconds / 1e6
    return out


def long_documents(items: list[tuple[str, str]], target: int = 9000) -> list[tuple[str, str, bool]]:
    """(majority language, text, mixed): consecutive lines of each language joined to about
    `target` characters, then mixed documents: one language's document with its first quarter
    replaced by the other language's lines (a header or boilerplate in the wrong language)."""
    docs: dict[str, list[str]] = {"en": [], "de": []}
    for lang in docs:
        buf: list[str] = []
        for l, text in items:
            if l != lang:
                continue
            buf.append(text)
            if sum(map(len, buf)) >= target:
                docs[lang].append(" ".join(buf))
                buf = []
    out = [(lang, d, False) for lang in docs for d in docs[lang]]
    for lang, other in (("en", "de"), ("de", "en")):
        for body, head in zip(docs[lang], docs[other]):
            k = len(body) // 4
            header = head[: head.find(" ", k)]  # about a quarter of the characters, whole words
            out.append((lang, header + " " + body[body.find(" ", k) + 1:], True))
    return out


def bench_long(items: list[tuple[str, str]]) -> dict:
    docs = long_documents(items)
    if not docs:
        return {}
    settings = {"whole text": LanguageIdentifier(max_chars=None),
                f"sample {MAX_CHARS} chars in 3 windows (default)": LanguageIdentifier(),
                f"prefix {MAX_CHARS} chars": LanguageIdentifier(windows=1)}
    out: dict = {"docs": len(docs), "mixed": sum(m for _, _, m in docs),
                 "mean_chars": sum(len(d) for _, d, _ in docs) / len(docs), "settings": {}}
    reference = None
    for name, lid in settings.items():
        t0 = time.perf_counter()
        preds = [lid.predict(text)[0] for _, text, _ in docs]
        seconds = time.perf_counter() - t0
        reference = preds if reference is None else reference
        right = [p == t for p, (t, _, _) in zip(preds, docs)]
        pure = [r for r, (_, _, m) in zip(right, docs) if not m]
        mixed = [r for r, (_, _, m) in zip(right, docs) if m]
        out["settings"][name] = {
            "accuracy_pure": sum(pure) / max(1, len(pure)), "accuracy_mixed": sum(mixed) / max(1, len(mixed)),
            "agreement_with_whole": sum(p == r for p, r in zip(preds, reference)) / len(docs),
            "docs_per_s": len(docs) / seconds, "mb_per_s": sum(len(d.encode()) for _, d, _ in docs) / seconds / 1e6}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder holding translation/")
    ap.add_argument("--languages", default="en,de", help="languages kept (comma-separated ISO 639-1 codes)")
    ap.add_argument("--threshold", type=float, default=0.5, help="smallest probability to keep (curate's default)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    folder = Path(args.data) / "translation"
    splits = load(folder)
    if not splits:
        sys.exit(f"bench_langid: no {folder}/train.jsonl or test.jsonl (pass --data FOLDER holding translation/)")
    keep = parse_languages(args.languages)
    lid = LanguageIdentifier(keep, threshold=args.threshold)
    lid.predict("warm up: load the model")
    results = {}
    for split, items in splits.items():
        short = [(lang, t) for lang, t in items if len(t) < SHORT]
        snippets = [(lang, snippet(t)) for lang, t in items]
        results[split] = {"all": evaluate(lid, items, keep),
                          "short (<40 chars)": evaluate(lid, short, keep) if short else None,
                          "snippets (<40 chars)": evaluate(lid, snippets, keep),
                          "long documents": bench_long(items)}
    for split, r in results.items():
        print(f"\n== {split} ({folder / (split + '.jsonl')}) keep {','.join(keep)}, threshold {args.threshold}")
        for name in ("all", "short (<40 chars)", "snippets (<40 chars)"):
            e = r[name]
            if e is None:
                continue
            print(f"{name:22s} {e['lines']:5d} lines  accuracy {e['accuracy']:.4f}  "
                  f"{e['lines_per_s']:,.0f} lines/s  {e['mb_per_s']:.2f} MB/s")
            for lang, p in e["per_language"].items():
                conf = ", ".join(f"{k}:{v}" for k, v in p["confused_with"].items()) or "-"
                print(f"    {lang}: n {p['n']:5d}  precision {p['precision']:.4f}  recall {p['recall']:.4f}  "
                      f"kept {p['kept']:.4f}  also predicted: {conf}")
        lg = r["long documents"]
        if lg:
            print(f"long documents: {lg['docs']} of {lg['mean_chars']:,.0f} chars on average, {lg['mixed']} of them "
                  "mixed (the first quarter in the other language)")
            for name, s in lg["settings"].items():
                print(f"    {name:42s} accuracy pure {s['accuracy_pure']:.4f} mixed {s['accuracy_mixed']:.4f}  "
                      f"agreement with whole {s['agreement_with_whole']:.4f}  {s['docs_per_s']:,.1f} docs/s "
                      f"(of the whole text: {s['mb_per_s']:.2f} MB/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
