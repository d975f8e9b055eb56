"""`llmkit data curate`: filter, de-duplicate, decontaminate and mix a pretraining corpus.

A streaming pipeline: documents are read one at a time and each is kept or removed by the first
rule it fails, in this order:

1. `exact_duplicate`: the same text (lower-cased, whitespace collapsed) was seen before.
2. Quality heuristics of Gopher (Rae et al. 2021, appendix A.1.1 and table A1) and C4 (Raffel
   et al. 2020, sec. 2.2) kind, see `QualityFilter`: cheap statistics that remove boilerplate,
   lists, tables, spam and machine-generated repetition.
3. `contaminated`: shares an n-gram (13 words, as GPT-3's appendix C) with an evaluation set.
4. `near_duplicate`: MinHash LSH (Broder 1997; Leskovec et al., "Mining of Massive Datasets",
   ch. 3) finds an earlier kept document whose estimated Jaccard similarity of word shingles is
   at least the threshold.

Only signatures are indexed (exact-dup digests, MinHash signatures and LSH band keys, eval
n-gram hashes), never the documents. "Words" in every count are whitespace-separated words.

With `weights`, the kept documents of each source are then re-sampled to a mixture, as in the
GPT-3 (table 2.2) and Llama (table 1) data tables: source i gets weight_i of the output words,
which may mean several epochs of a small high-quality source and a sample of a large one.

Each step has its module: `data.filters` (the quality heuristics), `data.dedup` (exact key and
MinHash LSH), `data.decontaminate`, `data.mix` (weights, re-sampling, interleaving), over the word
hashing of `data.ngrams`. This module runs them in order, writes the shards and the report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Optional, Union

from llmkit.data import CURATE_REPORT, TextUnit, claim_output_dir, iter_documents
from llmkit.data.decontaminate import Decontaminator
from llmkit.data.dedup import MinHashLSH, exact_key
from llmkit.data.filters import QualityFilter
from llmkit.data.mix import mix_sources, parse_weights, staging_path
from llmkit.data.ngrams import normalized_words
from llmkit.errors import LLMKitError


# --- output ---------------------------------------------------------------------------------------
class _JsonlShards:
    """curated_00000.jsonl, curated_00001.jsonl, ... of at most `shard_docs` documents each."""

    def __init__(self, out: Path, shard_docs: int):
        self.out, self.shard_docs = out, shard_docs
        self.files: list[str] = []
        self.docs = self.words = 0
        self._f: Optional[IO[str]] = None
        self._n = 0

    def write(self, text: str, source: str, words: int) -> None:
        if self._f is None or self._n == self.shard_docs:
            self.close()
            name = f"curated_{len(self.files):05d}.jsonl"
            self._f = open(self.out / name, "w", encoding="utf-8")
            self.files.append(name)
            self._n = 0
        self._f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        self._n += 1
        self.docs += 1
        self.words += words

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


@dataclass
class _Tally:
    docs: int = 0
    words: int = 0

    def add(self, words: int) -> None:
        self.docs += 1
        self.words += words


@dataclass
class _SourceStats:
    docs_in: _Tally = field(default_factory=_Tally)
    kept: _Tally = field(default_factory=_Tally)
    removed: dict[str, _Tally] = field(default_factory=dict)


# --- the command ----------------------------------------------------------------------------------
def curate(sources: list[str], out: str, weights: Optional[list[Union[float, str]]] = None,
           decontaminate: Optional[list[str]] = None, text_field: str = "text", text_unit: TextUnit = "file",
           seed: int = 0, total_words: Optional[int] = None,
           quality: bool = True, min_words: Optional[int] = 50, max_words: Optional[int] = 100_000,
           min_mean_word_length: Optional[float] = 3.0, max_mean_word_length: Optional[float] = 10.0,
           max_symbol_word_ratio: Optional[float] = 0.1, max_bullet_line_fraction: Optional[float] = 0.9,
           max_ellipsis_line_fraction: Optional[float] = 0.3, min_alpha_word_fraction: Optional[float] = 0.8,
           max_digit_fraction: Optional[float] = 0.2, min_stop_words: Optional[int] = 2,
           max_duplicate_line_fraction: Optional[float] = 0.3,
           max_duplicate_line_char_fraction: Optional[float] = 0.2,
           max_top_ngram_fraction: Optional[tuple[float, ...]] = (0.20, 0.18, 0.16),
           max_duplicate_ngram_fraction: Optional[tuple[float, ...]] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10),
           dedup: bool = True, near_dedup: bool = True, near_dup_threshold: float = 0.8, num_perm: int = 128,
           bands: Optional[int] = None, shingle_size: int = 5, decontaminate_ngram: int = 13,
           shard_docs: int = 100_000, examples: int = 2, overwrite: bool = False) -> dict:
    """Filter, de-duplicate, decontaminate and mix text sources into curated JSONL shards.

    Writes out/curated_*.jsonl ({"text", "source"} per line; `llmkit data prepare OUT` reads
    them) and out/report.json + out/report.md (documents and whitespace-separated words in,
    kept and removed per rule and per source, with example removals). A rule's threshold set to
    null disables it.

    Args:
        sources: text files, JSONL/JSON/Parquet files or folders (as for `llmkit data prepare`).
        out: output folder.
        weights: mixture weights, one number per source in order or SOURCE:WEIGHT entries;
            normalised to sum 1. Sources are then up- or down-sampled deterministically to these
            shares of the output words. Default: every kept document once.
        decontaminate: evaluation files (any supported format; all string fields of a record are
            used) whose n-grams must not appear in the output.
        text_field: field (JSONL/JSON) or column (Parquet) holding the text.
        text_unit: document unit of text files: "file", "paragraph" (blank-line separated) or "line".
        seed: seed of the mixture sampling.
        total_words: with weights, the size of the mixture in words (default: all kept words).
        quality: apply the quality heuristics below (false: only dedup/decontamination/mixing).
        min_words: fewest words in a document.
        max_words: most words in a document.
        min_mean_word_length: smallest mean word length (characters).
        max_mean_word_length: largest mean word length (characters).
        max_symbol_word_ratio: most "#" (or "..." / "…") per word.
        max_bullet_line_fraction: most lines starting with a bullet.
        max_ellipsis_line_fraction: most lines ending with an ellipsis.
        min_alpha_word_fraction: fewest words containing a letter.
        max_digit_fraction: most digits per character of words.
        min_stop_words: fewest distinct English stop words of (the, be, to, of, and, that, have, with).
        max_duplicate_line_fraction: most lines that repeat an earlier line.
        max_duplicate_line_char_fraction: most characters in repeated lines.
        max_top_ngram_fraction: for n = 2, 3, 4: most characters covered by the most frequent n-gram.
        max_duplicate_ngram_fraction: for n = 5..10: most characters inside repeated n-grams.
        dedup: remove exact duplicates (text compared lower-cased with whitespace collapsed).
        near_dedup: remove near duplicates with MinHash LSH.
        near_dup_threshold: Jaccard similarity of word shingles from which documents are near duplicates.
        num_perm: MinHash signature length.
        bands: LSH bands (rows = num_perm // bands); default: the best for the threshold.
        shingle_size: words per shingle for MinHash.
        decontaminate_ngram: n-gram length (words) for decontamination (GPT-3: 13).
        shard_docs: documents per output JSONL file.
        examples: example removed documents kept per rule in the report.
        overwrite: replace an existing curation in `out`.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    if isinstance(sources, str):
        sources = [sources]
    sources = [str(s) for s in sources]
    if len(set(sources)) != len(sources):
        raise LLMKitError("a source is listed twice")
    if shard_docs < 1:
        raise LLMKitError(f"shard_docs must be >= 1, got {shard_docs}")
    mix = parse_weights(weights, sources) if weights else None
    quality_filter = QualityFilter(
        min_words=min_words, max_words=max_words, min_mean_word_length=min_mean_word_length,
        max_mean_word_length=max_mean_word_length, max_symbol_word_ratio=max_symbol_word_ratio,
        max_bullet_line_fraction=max_bullet_line_fraction, max_ellipsis_line_fraction=max_ellipsis_line_fraction,
        min_alpha_word_fraction=min_alpha_word_fraction, max_digit_fraction=max_digit_fraction,
        min_stop_words=min_stop_words, max_duplicate_line_fraction=max_duplicate_line_fraction,
        max_duplicate_line_char_fraction=max_duplicate_line_char_fraction,
        max_top_ngram_fraction=tuple(max_top_ngram_fraction) if max_top_ngram_fraction else None,
        max_duplicate_ngram_fraction=tuple(max_duplicate_ngram_fraction) if max_duplicate_ngram_fraction else None,
    ) if quality else None
    lsh = MinHashLSH(num_perm, near_dup_threshold, bands, shingle_size) if near_dedup else None
    docs = iter_documents(sources, text_field=text_field, text_unit=text_unit)  # checks every path now
    decon = Decontaminator(decontaminate, decontaminate_ngram) if decontaminate else None
    out_dir = claim_output_dir(out, CURATE_REPORT, "a curated corpus", overwrite)
    for old in [out_dir / CURATE_REPORT, out_dir / "report.md", *out_dir.glob("curated_*.jsonl")]:
        old.unlink(missing_ok=True)

    rules = ["exact_duplicate", *(QualityFilter.RULES if quality_filter else ()),
             *(["contaminated"] if decon else []), *(["near_duplicate"] if lsh else [])]
    stats = {s: _SourceStats(removed={r: _Tally() for r in rules}) for s in sources}
    removed_examples: dict[str, list[dict]] = {r: [] for r in rules}
    seen: set[bytes] = set()
    writer = _JsonlShards(out_dir, shard_docs)
    tmp_files: dict[str, IO[str]] = {}
    tmp_dir = out_dir / ".curate_tmp"
    if mix:
        tmp_dir.mkdir(exist_ok=True)
        tmp_files = {s: open(staging_path(tmp_dir, i), "w", encoding="utf-8") for i, s in enumerate(sources)}

    try:
        with tqdm(docs, desc="curating", unit=" docs", disable=None) as bar:
            for doc in bar:
                text = doc.text
                n_words = len(text.split())
                st = stats[doc.source]
                st.docs_in.add(n_words)
                rule: Optional[str] = None
                if dedup:
                    digest = exact_key(text)
                    if digest in seen:
                        rule = "exact_duplicate"
                    else:
                        seen.add(digest)
                if rule is None and quality_filter is not None:
                    failed = quality_filter.check(text)
                    rule = failed[0] if failed else None
                norm = normalized_words(text) if (rule is None and (decon or lsh)) else []
                if rule is None and decon is not None and decon.contaminated(norm):
                    rule = "contaminated"
                if rule is None and lsh is not None:
                    sig = lsh.signature(norm)
                    if lsh.query(sig) is not None:
                        rule = "near_duplicate"
                    else:
                        lsh.insert(sig)
                if rule is not None:
                    st.removed[rule].add(n_words)
                    if len(removed_examples[rule]) < examples:
                        removed_examples[rule].append({"location": doc.location,
                                                       "text": text[:300] + ("…" if len(text) > 300 else "")})
                    continue
                st.kept.add(n_words)
                if mix:
                    tmp_files[doc.source].write(json.dumps({"text": text, "source": doc.source, "_words": n_words},
                                                           ensure_ascii=False) + "\n")
                else:
                    writer.write(text, doc.source, n_words)
        for f in tmp_files.values():
            f.close()

        total_in = sum(s.docs_in.docs for s in stats.values())
        if total_in == 0:
            raise LLMKitError(f"empty corpus: no text in {', '.join(sources)}")
        mixing, mix_error = None, None
        if mix:
            try:
                mixing = mix_sources(tmp_dir, sources, {s: stats[s].kept.words for s in sources}, mix,
                                     total_words, seed, writer.write)
            except LLMKitError as e:  # still write the report: it shows what removed the documents
                mix_error = e
    finally:
        writer.close()
        for f in tmp_files.values():
            f.close()
        if tmp_dir.exists():
            for f in tmp_dir.iterdir():
                f.unlink()
            tmp_dir.rmdir()

    report = _report(sources, stats, rules, removed_examples, writer, mixing, mix_error, decon, lsh,
                     quality_filter, seed=seed, text_field=text_field, text_unit=text_unit, dedup=dedup,
                     seconds=time.perf_counter() - t0)
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    tmp_report = out_dir / (CURATE_REPORT + ".tmp")
    tmp_report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_report, out_dir / CURATE_REPORT)  # last: marks the folder as a finished curation
    if mix_error is not None:
        raise LLMKitError(f"{mix_error} (see {out_dir / 'report.md'})")

    t = report["totals"]
    print(f"curated {t['docs_in']:,} docs ({t['words_in']:,} words): kept {t['docs_kept']:,} docs "
          f"({t['words_kept']:,} words), wrote {writer.docs:,} docs ({writer.words:,} words) to "
          f"{len(writer.files)} file(s) in {report['seconds']:.1f}s -> {out_dir}")
    if writer.docs == 0:
        print("warning: every document was removed; see report.md", file=sys.stderr)
    return report


# --- report ---------------------------------------------------------------------------------------
def _report(sources, stats, rules, removed_examples, writer, mixing, mix_error, decon, lsh, quality_filter,
            **settings) -> dict:
    def tally(t: _Tally) -> dict:
        return {"docs": t.docs, "words": t.words}

    per_source = {}
    for s in sources:
        st = stats[s]
        per_source[s] = {"docs_in": st.docs_in.docs, "words_in": st.docs_in.words, "docs_kept": st.kept.docs,
                         "words_kept": st.kept.words, "removed": {r: tally(t) for r, t in st.removed.items() if t.docs}}
    per_rule = {}
    for r in rules:
        docs = sum(stats[s].removed[r].docs for s in sources)
        words = sum(stats[s].removed[r].words for s in sources)
        per_rule[r] = {"docs": docs, "words": words, "examples": removed_examples[r]}
    totals = {k: sum(v[k] for v in per_source.values()) for k in ("docs_in", "words_in", "docs_kept", "words_kept")}
    totals["docs_removed"] = totals["docs_in"] - totals["docs_kept"]
    totals["words_removed"] = totals["words_in"] - totals["words_kept"]
    seconds = settings.pop("seconds")
    settings["quality"] = asdict(quality_filter) if quality_filter else None
    if lsh is not None:
        settings["near_dedup"] = {"threshold": lsh.threshold, "num_perm": lsh.num_perm, "bands": lsh.bands,
                                  "rows": lsh.rows, "shingle_size": lsh.shingle_size}
    if decon is not None:
        settings["decontamination"] = {"ngram": decon.n, "eval_docs": decon.eval_docs,
                                       "eval_docs_shorter_than_ngram": decon.short_docs,
                                       "eval_ngrams": int(len(decon.ngrams))}
    return {
        "tool": "llmkit data curate",
        "version": 1,
        "unit": "words = whitespace-separated words",
        "sources": sources,
        "totals": totals,
        "per_source": per_source,
        "per_rule": per_rule,
        "mixing": mixing,
        "mixing_error": str(mix_error) if mix_error else None,
        "output": {"files": writer.files, "docs": writer.docs, "words": writer.words},
        "settings": settings,
        "seconds": round(seconds, 3),
    }


def _markdown(report: dict) -> str:
    t = report["totals"]
    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.1f}%" if b else "-"

    lines = ["# Curation report", "",
             f"Words are whitespace-separated words. {t['docs_in']:,} documents in, {t['docs_kept']:,} kept "
             f"({pct(t['docs_kept'], t['docs_in'])}); {t['words_in']:,} words in, {t['words_kept']:,} kept "
             f"({pct(t['words_kept'], t['words_in'])}).", "",
             "## Per source", "", "| source | docs in | docs kept | words in | words kept |",
             "|---|---:|---:|---:|---:|"]
    for s, v in report["per_source"].items():
        lines.append(f"| `{s}` | {v['docs_in']:,} | {v['docs_kept']:,} | {v['words_in']:,} | {v['words_kept']:,} |")
    lines += ["", "## Removed per rule (first rule failed)", "", "| rule | docs | words | % of docs in |",
              "|---|---:|---:|---:|"]
    for r, v in report["per_rule"].items():
        lines.append(f"| {r} | {v['docs']:,} | {v['words']:,} | {pct(v['docs'], t['docs_in'])} |")
    if report["mixing_error"]:
        lines += ["", f"**Mixing failed:** {report['mixing_error']}. No output was written."]
    if report["mixing"]:
        lines += ["", "## Mixture", "",
                  "| source | weight | words kept | multiplier | docs out | words out | share out |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s, v in report["mixing"].items():
            lines.append(f"| `{s}` | {v['weight']:.3f} | {v['words_kept']:,} | {v['multiplier']:.3f} | "
                         f"{v['docs_out']:,} | {v['words_out']:,} | {v['share_out']:.3f} |")
    o = report["output"]
    files = ", ".join(o["files"]) or "no files"
    lines += ["", f"Output: {o['docs']:,} documents, {o['words']:,} words in {files}.", ""]
    examples = [(r, v["examples"]) for r, v in report["per_rule"].items() if v["examples"]]
    if examples:
        lines += ["## Examples of removed documents", ""]
        for r, exs in examples:
            lines.append(f"### {r}")
            for ex in exs:
                snippet = ex["text"].replace("\n", " ⏎ ").replace("|", "\\|")
                lines.append(f"- `{ex['location']}`: {snippet}")
            lines.append("")
    return "\n".join(lines)
