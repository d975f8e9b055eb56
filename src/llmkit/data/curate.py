"""`llmkit data curate`: filter, scrub, de-duplicate, decontaminate and mix a pretraining corpus.

Each document is kept or removed by the first rule it fails, in this order:

1. Quality heuristics of Gopher (Rae et al. 2021, appendix A.1.1 and table A1) and C4 (Raffel
   et al. 2020, sec. 2.2) kind, see `QualityFilter`: cheap statistics that remove boilerplate,
   lists, tables, spam and machine-generated repetition.
2. `language`: not in `languages` by py3langid's packaged model (`data.langid`).
3. `quality_classifier`: a hashed n-gram logistic regression trained on reference text against
   the corpus (GPT-3 appendix A; FineWeb-Edu) scores it below the threshold (`data.quality_model`).
4. `contaminated`: shares an n-gram (13 words, as GPT-3's appendix C) with an evaluation set.
5. `pii` (with pii="remove"): holds personal information (`data.pii`); "redact" instead
   replaces it with placeholders before the steps below, "report" only counts it.
6. `exact_duplicate`: the same text (lower-cased, whitespace collapsed) as an earlier document.
7. `near_duplicate`: MinHash LSH (Broder 1997; Leskovec et al., "Mining of Massive Datasets",
   ch. 3) finds an earlier kept document whose estimated Jaccard similarity of word shingles is
   at least the threshold.

Rules 1-5 look at one document, so they run in parallel tasks (`data.engine`: datatrove's local
or Ray executor) that also compute each survivor's exact-duplicate key and MinHash signature;
one step over all keys and signatures then finds the duplicates ("earlier" = in reading order,
whatever ran the tasks); parallel tasks write the output. Only keys, signatures and candidate
pairs are ever held in memory, never the documents. "Words" in every count are
whitespace-separated words.

With `weights`, the kept documents of each source are then re-sampled to a mixture, as in the
GPT-3 (table 2.2) and Llama (table 1) data tables: source i gets weight_i of the output words,
which may mean several epochs of a small high-quality source and a sample of a large one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator, Literal, Optional, Union

import numpy as np

from llmkit.data import CURATE_REPORT, TextUnit, claim_output_dir
from llmkit.data.decontaminate import Decontaminator
from llmkit.data.dedup import MinHashLSH, exact_key
from llmkit.data.engine import (TASK_MB, Executor, Task, TaskProgress, check_executor, dump_json, fingerprint, plan_tasks,
                               run_tasks, save_npy, work_dir)
from llmkit.data.filters import QualityFilter
from llmkit.data.mix import mix_sources, parse_weights
from llmkit.data.ngrams import normalized_words
from llmkit.errors import LLMKitError
from llmkit.fileio import atomic_write_text


# --- output ----------------------------------------------------------------------------------------
class _JsonlShards:
    """PREFIX00000.jsonl, PREFIX00001.jsonl, ... of at most `shard_docs` documents each, each
    written under a temporary name and renamed when complete."""

    def __init__(self, out: Path, shard_docs: int, prefix: str = "curated_", staged: bool = False):
        self.out, self.shard_docs, self.prefix, self.staged = out, shard_docs, prefix, staged
        self.files: list[str] = []
        self.docs = self.words = 0
        self._f: Optional[IO[str]] = None
        self._n = 0

    def write(self, text: str, source: str, words: int) -> None:
        if self._f is None or self._n == self.shard_docs:
            self.close()
            name = f"{self.prefix}{len(self.files):05d}.jsonl"
            self._f = open(self.out / (name + ".tmp"), "w", encoding="utf-8")
            self.files.append(name)
            self._n = 0
        record = {"text": text, "source": source, **({"_words": words} if self.staged else {})}
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._n += 1
        self.docs += 1
        self.words += words

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            name = self.files[-1]
            os.replace(self.out / (name + ".tmp"), self.out / name)
            self._f = None


@dataclass
class _Tally:
    docs: int = 0
    words: int = 0

    def add(self, words: int) -> None:
        self.docs += 1
        self.words += words

    def merge(self, d: dict) -> None:
        self.docs += d["docs"]
        self.words += d["words"]


@dataclass
class _SourceStats:
    docs_in: _Tally = field(default_factory=_Tally)
    kept: _Tally = field(default_factory=_Tally)
    removed: dict[str, _Tally] = field(default_factory=dict)


def _example(location: str, text: str, **extra) -> dict:
    return {"location": location, "text": text[:300] + ("…" if len(text) > 300 else ""), **extra}


# --- stage 1, per task: the rules that look at one document --------------------------------------
@dataclass
class _DocRules:
    """The per-document rules, in the order they apply; sent to every worker (picklable)."""

    quality: Optional[QualityFilter]
    languages: Optional[object]  # llmkit.data.langid.LanguageIdentifier
    classifier: Optional[object]  # llmkit.data.quality_model.QualityClassifier
    classifier_threshold: float
    decon: Optional[Decontaminator]
    pii: Optional[str]  # "redact" | "remove" | "report"
    pii_types: tuple[str, ...]
    lsh: Optional[MinHashLSH]  # only its signature() is used per task
    dedup: bool

    def names(self) -> list[str]:
        return [*(QualityFilter.RULES if self.quality else ()), *(["language"] if self.languages else []),
                *(["quality_classifier"] if self.classifier else []), *(["contaminated"] if self.decon else []),
                *(["pii"] if self.pii == "remove" else [])]


class _FilterTask:
    """Task `rank`: read its documents, apply the per-document rules, and write the survivors
    (filter/RANK.jsonl), their exact-duplicate keys and MinHash signatures (.npy), and the
    task's tallies and examples (filter/RANK.json, last: its presence means done)."""

    def __init__(self, tasks: list[Task], work: Path, rules: _DocRules, text_field: str, text_unit: str,
                 examples: int):
        self.tasks, self.work, self.rules = tasks, work, rules
        self.text_field, self.text_unit, self.examples = text_field, text_unit, examples

    def __call__(self, rank: int) -> None:
        from llmkit.data import read_part

        task, r = self.tasks[rank], self.rules
        folder = self.work / "filter"
        folder.mkdir(exist_ok=True)
        progress = TaskProgress(self.work / "filter" / "progress", rank)
        tallies = {"docs_in": _Tally(), "kept": _Tally(), "removed": {n: _Tally() for n in r.names()}}
        examples: dict[str, list[dict]] = {n: [] for n in r.names()}
        languages: dict[str, int] = {}
        pii_counts = {t: 0 for t in r.pii_types} if r.pii else {}
        pii_docs = 0
        pii_examples: list[dict] = []
        passed: list[dict] = []  # examples the classifier kept, with their scores
        scores = np.zeros(20, dtype=np.int64)  # histogram of classifier scores, kept and removed
        keys: list[bytes] = []
        sigs: list[np.ndarray] = []
        kept_path = folder / f"{rank:05d}.jsonl"
        with open(kept_path.with_name(kept_path.name + ".tmp"), "w", encoding="utf-8") as kept:
            for doc in read_part(task.source, Path(task.path), self.text_field, self.text_unit, task.part):
                text = doc.text
                progress.add(len(text.encode("utf-8", "surrogatepass")))
                n_words = len(text.split())
                tallies["docs_in"].add(n_words)
                rule: Optional[str] = None
                info: dict = {}
                if r.quality is not None:
                    failed = r.quality.check(text)
                    rule = failed[0] if failed else None
                if rule is None and r.languages is not None:
                    lang, prob = r.languages.predict(text)
                    languages[lang] = languages.get(lang, 0) + 1
                    if lang not in r.languages.languages or prob < r.languages.threshold:
                        rule, info = "language", {"language": lang, "probability": round(prob, 3)}
                if rule is None and r.classifier is not None:
                    score = float(r.classifier.score(text))
                    scores[min(int(score * 20), 19)] += 1
                    if score < r.classifier_threshold:
                        rule, info = "quality_classifier", {"score": round(score, 4)}
                    elif len(passed) < self.examples:
                        passed.append(_example(doc.location, text, score=round(score, 4)))
                norm = normalized_words(text) if (rule is None and r.decon) else []
                if rule is None and r.decon is not None and r.decon.contaminated(norm):
                    rule = "contaminated"
                if rule is None and r.pii:
                    from llmkit.data.pii import find_pii, redact

                    matches = find_pii(text, r.pii_types)
                    if matches:
                        pii_docs += 1
                        for m in matches:
                            pii_counts[m.type] += 1
                        if len(pii_examples) < self.examples:
                            # Redacted (the report is shared), from just before the first match.
                            cut = max(0, min(m.start for m in matches) - 100)
                            shown = ("…" if cut else "") + redact(text, matches)[cut:]
                            pii_examples.append(_example(doc.location, shown, found=[m.type for m in matches]))
                        if r.pii == "remove":
                            rule = "pii"
                        elif r.pii == "redact":
                            text = redact(text, matches)
                            n_words = len(text.split())
                if rule is not None:
                    tallies["removed"][rule].add(n_words)
                    if len(examples[rule]) < self.examples:
                        examples[rule].append(_example(doc.location, text, **info))
                    continue
                if r.dedup:
                    keys.append(exact_key(text))
                if r.lsh is not None:
                    sigs.append(r.lsh.signature(normalized_words(text)))
                kept.write(json.dumps({"text": text, "location": doc.location, "words": n_words},
                                      ensure_ascii=False) + "\n")
                tallies["kept"].add(n_words)
        os.replace(kept_path.with_name(kept_path.name + ".tmp"), kept_path)
        n = tallies["kept"].docs
        if r.dedup:
            save_npy(folder / f"{rank:05d}.keys.npy", np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, 16))
        if r.lsh is not None:
            num_perm = r.lsh.num_perm
            save_npy(folder / f"{rank:05d}.sigs.npy",
                      np.stack(sigs) if sigs else np.empty((0, num_perm), dtype=np.uint32))
        progress.flush()
        dump_json(folder / f"{rank:05d}.json", {
            "docs_in": asdict(tallies["docs_in"]), "kept": asdict(tallies["kept"]),
            "removed": {k: asdict(v) for k, v in tallies["removed"].items()}, "examples": examples,
            "languages": languages, "pii": pii_counts, "pii_docs": pii_docs, "pii_examples": pii_examples,
            "classifier_scores": scores.tolist(), "classifier_kept": passed})


# --- stage 2, once: de-duplication over every task's keys and signatures -------------------------
KEEP, EXACT, NEAR = 0, 1, 2
_MAX_PAIRS_PER_DOC = 16  # candidates per band: the first members of a bucket (see _near_duplicates)


class _Signatures:
    """The MinHash signatures of every document, (n, num_perm) uint32 in one file, read in blocks
    of rows or row by row: the de-duplication holds a few numbers per document, never the matrix
    (512 bytes per document; 160 MB for a 1 GB corpus, more with every GB: a memory map's pages
    stay mapped, and counted, once read)."""

    BLOCK = 1 << 14  # rows per read (8 MB at 128 permutations)

    def __init__(self, path: Path, n: int, width: int):
        self.path, self.n, self.width = path, n, width
        self.row_bytes = 4 * width

    def blocks(self, ids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(offset into ids, the rows of ids[offset:offset + k]) for sorted ids: the file is read in
        windows of BLOCK rows (however sparse ids are), each window's ids selected from it."""
        with open(self.path, "rb") as f:
            for lo in range(0, self.n, self.BLOCK):
                a, b = np.searchsorted(ids, [lo, lo + self.BLOCK])
                if a == b:
                    continue
                hi = min(lo + self.BLOCK, self.n)
                f.seek(lo * self.row_bytes)
                rows = np.frombuffer(f.read((hi - lo) * self.row_bytes), dtype=np.uint32).reshape(hi - lo, self.width)
                yield int(a), rows[ids[a:b] - lo]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of `ids` (sorted, unique), one read each."""
        out = np.empty((len(ids), self.width), dtype=np.uint32)
        with open(self.path, "rb") as f:
            for k, i in enumerate(ids.tolist()):
                f.seek(i * self.row_bytes)
                out[k] = np.frombuffer(f.read(self.row_bytes), dtype=np.uint32)
        return out


def _band_hashes(sigs: _Signatures, ids: np.ndarray, band: int, rows: int) -> np.ndarray:
    """A 64-bit hash of the rows of `band` of each of the signatures `ids` (equal rows, equal hash)."""
    h = np.full(len(ids), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a, block in sigs.blocks(ids):
            hb = h[a:a + len(block)]
            for c in range(band * rows, (band + 1) * rows):
                hb = (hb ^ block[:, c].astype(np.uint64)) * np.uint64(0x100000001B3)
                hb ^= hb >> np.uint64(29)
            h[a:a + len(block)] = hb
    return h


def _near_duplicates(sigs: _Signatures, alive: np.ndarray, lsh: MinHashLSH) -> np.ndarray:
    """Boolean mask of near duplicates among the `alive` rows of `sigs` (in document order).

    The rule of the sequential index, over all documents at once: a document is a near duplicate
    when an earlier document that is kept shares one of its LSH bands and the signatures agree in
    at least `threshold` of their positions. Per band the documents are sorted by the band's
    hash; each is paired with the first `_MAX_PAIRS_PER_DOC` documents of its bucket (a bucket of
    near-identical documents keeps its first one, which every later one is paired with). Only
    hashes and candidate pairs are held (and the signatures of the documents in a pair), not an
    index of every band of every document nor the signatures of all."""
    ids = np.flatnonzero(alive)
    pairs = []
    for band in range(lsh.bands):
        h = _band_hashes(sigs, ids, band, lsh.rows) if len(ids) else np.empty(0, dtype=np.uint64)
        order = np.argsort(h, kind="stable")  # stable: document order within a bucket
        hs = h[order]
        starts = np.flatnonzero(np.concatenate([[True], hs[1:] != hs[:-1]])) if len(hs) else np.empty(0, int)
        start_of = np.repeat(starts, np.diff(np.concatenate([starts, [len(hs)]])))
        pos = np.arange(len(hs)) - start_of
        for k in range(_MAX_PAIRS_PER_DOC):
            later = np.flatnonzero(pos > k)
            if not len(later):
                break
            pairs.append(np.stack([ids[order[start_of[later] + k]], ids[order[later]]], axis=1))
    if not pairs:
        return np.zeros(sigs.n, dtype=bool)
    cand = np.unique(np.concatenate(pairs), axis=0)  # (i, j), i < j, sorted by i then j
    members = np.unique(cand)
    held = sigs.rows(members)  # the signatures of the documents in a pair only
    same = np.empty(len(cand), dtype=bool)
    for a in range(0, len(cand), 1 << 16):  # bounded temporaries
        c = np.searchsorted(members, cand[a:a + (1 << 16)])
        same[a:a + len(c)] = (held[c[:, 0]] == held[c[:, 1]]).mean(axis=1) >= lsh.threshold
    del held
    cand = cand[same]
    cand = cand[np.lexsort((cand[:, 0], cand[:, 1]))]  # by j, then i
    removed = np.zeros(sigs.n, dtype=bool)
    for i, j in cand.tolist():  # in document order of j: removed if a kept earlier one matches
        if not removed[i]:
            removed[j] = True
    return removed


def _dedup(work: Path, counts: list[int], dedup: bool, lsh: Optional[MinHashLSH]) -> dict[str, int]:
    """Write dedup/RANK.npy (KEEP / EXACT / NEAR per surviving document of each task)."""
    folder = work / "dedup"
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    folder.mkdir(exist_ok=True)
    n = sum(counts)
    codes = np.zeros(n, dtype=np.uint8)
    if dedup and n:
        keys = np.concatenate([np.load(work / "filter" / f"{t:05d}.keys.npy") for t in range(len(counts))])
        _, first = np.unique(keys.view("V16").ravel(), return_index=True)  # the first copy of each text
        is_first = np.zeros(n, dtype=bool)
        is_first[first] = True
        codes[~is_first] = EXACT
        del keys
    if lsh is not None and n:
        sigs_path = folder / "signatures.u32"  # all tasks' signatures in one file, read by row
        with open(sigs_path, "wb") as f:
            for t in range(len(counts)):
                f.write(np.load(work / "filter" / f"{t:05d}.sigs.npy", mmap_mode="r").tobytes())
        codes[_near_duplicates(_Signatures(sigs_path, n, lsh.num_perm), codes == KEEP, lsh)] = NEAR
        sigs_path.unlink()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    for t in range(len(counts)):
        save_npy(folder / f"{t:05d}.npy", codes[offsets[t]:offsets[t + 1]])
    summary = {"exact": int((codes == EXACT).sum()), "near": int((codes == NEAR).sum())}
    dump_json(done, summary)
    return summary


# --- stage 3, per task: write what survived ------------------------------------------------------
class _WriteTask:
    """Task `rank`: its surviving documents minus the duplicates, to OUT/curated_RANK_*.jsonl
    (or, when mixing, to the staging file work/keep/RANK.jsonl); tallies in write/RANK.json."""

    def __init__(self, tasks: list[Task], work: Path, out_dir: Path, shard_docs: int, staged: bool, examples: int):
        self.tasks, self.work, self.out_dir = tasks, work, out_dir
        self.shard_docs, self.staged, self.examples = shard_docs, staged, examples

    def __call__(self, rank: int) -> None:
        task = self.tasks[rank]
        codes = np.load(self.work / "dedup" / f"{rank:05d}.npy")
        (self.work / "write").mkdir(exist_ok=True)
        progress = TaskProgress(self.work / "write" / "progress", rank)
        if self.staged:
            (self.work / "keep").mkdir(exist_ok=True)
            writer = _JsonlShards(self.work / "keep", 1 << 62, prefix=f"{rank:05d}_", staged=True)
        else:
            writer = _JsonlShards(self.out_dir, self.shard_docs, prefix=f"curated_{rank:05d}_")
        removed = {"exact_duplicate": _Tally(), "near_duplicate": _Tally()}
        examples: dict[str, list[dict]] = {k: [] for k in removed}
        with open(self.work / "filter" / f"{rank:05d}.jsonl", encoding="utf-8") as f:
            for line, code in zip(f, codes.tolist()):
                rec = json.loads(line)
                progress.add(len(line))
                if code == KEEP:
                    writer.write(rec["text"], task.source, rec["words"])
                    continue
                rule = "exact_duplicate" if code == EXACT else "near_duplicate"
                removed[rule].add(rec["words"])
                if len(examples[rule]) < self.examples:
                    examples[rule].append(_example(rec["location"], rec["text"]))
        writer.close()
        progress.flush()
        dump_json(self.work / "write" / f"{rank:05d}.json", {
            "files": writer.files, "docs": writer.docs, "words": writer.words,
            "removed": {k: asdict(v) for k, v in removed.items()}, "examples": examples})


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
           languages: Optional[list[str]] = None, language_threshold: float = 0.5,
           quality_model: Optional[str] = None, quality_threshold: float = 0.5,
           pii: Optional[Literal["redact", "remove", "report"]] = None,
           pii_types: Optional[list[str]] = None,
           dedup: bool = True, near_dedup: bool = True, near_dup_threshold: float = 0.8, num_perm: int = 128,
           bands: Optional[int] = None, shingle_size: int = 5, decontaminate_ngram: int = 13,
           shard_docs: int = 100_000, examples: int = 2, executor: Executor = "local",
           workers: Optional[int] = None, task_mb: float = TASK_MB, overwrite: bool = False) -> dict:
    """Filter, de-duplicate, decontaminate, scrub and mix text sources into curated JSONL shards.

    Writes out/curated_*.jsonl ({"text", "source"} per line; `llmkit data prepare OUT` reads
    them) and out/report.json + out/report.md (documents and whitespace-separated words in,
    kept and removed per rule and per source, with example removals). A rule's threshold set to
    null disables it. The work runs as tasks (a file, or a ~task_mb part of a large JSONL or
    Parquet file) on datatrove's local or Ray executor; the output does not depend on which, or
    on the number of workers, and a run interrupted is resumed by running it again.

    Args:
        sources: text files, JSONL/JSON/CSV/Parquet files (.gz/.zst too) or folders (as for
            `llmkit data prepare`).
        out: output folder.
        weights: mixture weights, one number per source in order or SOURCE:WEIGHT entries;
            normalised to sum 1. Sources are then up- or down-sampled deterministically to these
            shares of the output words. Default: every kept document once.
        decontaminate: evaluation files (any supported format; all string fields of a record are
            used) whose n-grams must not appear in the output.
        text_field: field (JSONL/JSON) or column (CSV/Parquet) holding the text.
        text_unit: document unit of text files: "file", "paragraph" (blank-line separated) or "line".
        seed: seed of the mixture sampling.
        total_words: with weights, the size of the mixture in words (default: all kept words).
        quality: apply the quality heuristics below (false: only the other rules).
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
        languages: keep only documents in these languages (ISO 639-1 codes, e.g. en de), as
            identified by py3langid's packaged model.
        language_threshold: smallest probability of the identified language to keep a document.
        quality_model: a classifier folder written by `llmkit data quality-train`: documents
            scoring below quality_threshold are removed.
        quality_threshold: smallest classifier score (P(reference-like)) to keep a document.
        pii: personal information (e-mail addresses, phone numbers, IP addresses, credit card and
            IBAN numbers): "redact" replaces each with a placeholder (<EMAIL>, ...), "remove" drops
            the document, "report" only counts them. Default: not looked for.
        pii_types: the kinds to look for (default: all of email phone ip_address credit_card iban).
        dedup: remove exact duplicates (text compared lower-cased with whitespace collapsed).
        near_dedup: remove near duplicates with MinHash LSH.
        near_dup_threshold: Jaccard similarity of word shingles from which documents are near duplicates.
        num_perm: MinHash signature length.
        bands: LSH bands (rows = num_perm // bands); default: the best for the threshold.
        shingle_size: words per shingle for MinHash.
        decontaminate_ngram: n-gram length (words) for decontamination (GPT-3: 13).
        shard_docs: most documents per output JSONL file.
        examples: example removed documents kept per rule in the report.
        executor: "local" (processes on this machine) or "ray" (the Ray cluster RAY_ADDRESS names,
            or a local one).
        workers: tasks run at once (default: the CPU cores).
        task_mb: size of a task's part of a large JSONL or Parquet file, in MB.
        overwrite: replace an existing curation in `out`.
    """
    t0 = time.perf_counter()
    if isinstance(sources, str):
        sources = [sources]
    sources = [str(s) for s in sources]
    if len(set(sources)) != len(sources):
        raise LLMKitError("a source is listed twice")
    if shard_docs < 1:
        raise LLMKitError(f"shard_docs must be >= 1, got {shard_docs}")
    workers = check_executor(executor, workers)
    mix = parse_weights(weights, sources) if weights else None
    if pii is not None and pii not in ("redact", "remove", "report"):
        raise LLMKitError(f"pii must be redact, remove or report, got '{pii}'")
    types: tuple[str, ...] = ()
    if pii is not None:
        from llmkit.data.pii import PII_TYPES, check_types

        types = check_types(pii_types) if pii_types else PII_TYPES
    elif pii_types:
        raise LLMKitError("pii_types needs --pii redact|remove|report")
    lang_id = None
    if languages:
        from llmkit.data.langid import LanguageIdentifier, parse_languages

        lang_id = LanguageIdentifier(parse_languages(languages), threshold=language_threshold)
    classifier = None
    if quality_model is not None:
        from llmkit.data.quality_model import QualityClassifier

        classifier = QualityClassifier.load(quality_model)
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
    tasks = plan_tasks(sources, task_mb)  # checks every path now
    decon = Decontaminator(decontaminate, decontaminate_ngram) if decontaminate else None
    rules = _DocRules(quality_filter, lang_id, classifier, quality_threshold, decon, pii, types, lsh, dedup)

    out_dir = claim_output_dir(out, CURATE_REPORT, "a curated corpus", overwrite)
    settings = {k: v for k, v in locals().items() if k in _RESULT_SETTINGS}
    settings["quality_model"] = _sha256_dir(quality_model) if quality_model else None
    settings["decontaminate"] = [(f, os.stat(f).st_mtime_ns) for f in decontaminate or []]
    work, resumed = work_dir(out_dir, fingerprint(tasks, settings))
    if not resumed:
        for old in [out_dir / CURATE_REPORT, out_dir / "report.md", *out_dir.glob("curated_*.jsonl")]:
            old.unlink(missing_ok=True)

    run = dict(executor=executor, workers=workers)
    ran = {}
    ran["filter"] = run_tasks("filter", _FilterTask(tasks, work, rules, text_field, text_unit, examples), tasks, work,
                    desc="curating", **run)
    stats = [json.loads((work / "filter" / f"{t.index:05d}.json").read_text(encoding="utf-8")) for t in tasks]
    if sum(s["docs_in"]["docs"] for s in stats) == 0:
        shutil.rmtree(work)
        raise LLMKitError(f"empty corpus: no text in {', '.join(sources)}")
    _dedup(work, [s["kept"]["docs"] for s in stats], dedup, lsh)
    ran["write"] = run_tasks("write", _WriteTask(tasks, work, out_dir, shard_docs, bool(mix), examples), tasks, work,
                     desc="writing", **run)
    written = [json.loads((work / "write" / f"{t.index:05d}.json").read_text(encoding="utf-8")) for t in tasks]

    # The report: per-task tallies summed in task order (examples: the first ones of the corpus).
    names = [*rules.names(), *(["exact_duplicate"] if dedup else []), *(["near_duplicate"] if lsh else [])]
    per_source = {s: _SourceStats(removed={r: _Tally() for r in names}) for s in sources}
    removed_examples: dict[str, list[dict]] = {r: [] for r in names}
    extra = {"languages": {}, "pii": {t: 0 for t in types}, "pii_docs": 0, "pii_examples": [],
             "classifier_scores": [0] * 20, "classifier_kept": []}
    for task, st, wr in zip(tasks, stats, written):
        ps = per_source[task.source]
        ps.docs_in.merge(st["docs_in"])
        for r, tally in [*st["removed"].items(), *wr["removed"].items()]:
            if r in ps.removed:
                ps.removed[r].merge(tally)
        for r, exs in [*st["examples"].items(), *wr["examples"].items()]:
            if r in removed_examples:
                removed_examples[r] += exs[: examples - len(removed_examples[r])]
        for lang, k in st["languages"].items():
            extra["languages"][lang] = extra["languages"].get(lang, 0) + k
        for t, k in st["pii"].items():
            extra["pii"][t] += k
        extra["pii_docs"] += st["pii_docs"]
        extra["pii_examples"] += st["pii_examples"][: examples - len(extra["pii_examples"])]
        extra["classifier_scores"] = [a + b for a, b in zip(extra["classifier_scores"], st["classifier_scores"])]
        extra["classifier_kept"] += st["classifier_kept"][: examples - len(extra["classifier_kept"])]
    for ps in per_source.values():
        ps.kept.docs = ps.docs_in.docs - sum(t.docs for t in ps.removed.values())
        ps.kept.words = ps.docs_in.words - sum(t.words for t in ps.removed.values())

    writer = _JsonlShards(out_dir, shard_docs)
    mixing, mix_error = None, None
    if mix:
        staged: dict[str, list[Path]] = {}
        for task, wr in zip(tasks, written):
            staged.setdefault(task.source, []).extend(work / "keep" / f for f in wr["files"])
        try:
            mixing = mix_sources(staged, sources, {s: per_source[s].kept.words for s in sources}, mix,
                                 total_words, seed, writer.write)
        except LLMKitError as e:  # still write the report: it shows what removed the documents
            mix_error = e
        finally:
            writer.close()
    else:
        for wr in written:
            writer.files += wr["files"]
            writer.docs += wr["docs"]
            writer.words += wr["words"]

    report = _report(sources, per_source, names, removed_examples, writer, mixing, mix_error, decon, lsh,
                     quality_filter, seed=seed, text_field=text_field, text_unit=text_unit, dedup=dedup,
                     seconds=time.perf_counter() - t0)
    report["filters"] = _filter_report(extra, lang_id, classifier, quality_threshold, pii, types)
    report["run"] = {"executor": executor, "workers": workers, "tasks": len(tasks),
                     "tasks_run": ran, "resumed": resumed}  # tasks_run: per stage
    atomic_write_text(out_dir / "report.md", _markdown(report))
    atomic_write_text(out_dir / CURATE_REPORT, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(work)  # last but one: the report marks the folder as a finished curation
    if mix_error is not None:
        raise LLMKitError(f"{mix_error} (see {out_dir / 'report.md'})")

    t = report["totals"]
    print(f"curated {t['docs_in']:,} docs ({t['words_in']:,} words): kept {t['docs_kept']:,} docs "
          f"({t['words_kept']:,} words), wrote {writer.docs:,} docs ({writer.words:,} words) to "
          f"{len(writer.files)} file(s) in {report['seconds']:.1f}s -> {out_dir}")
    if writer.docs == 0:
        print("warning: every document was removed; see report.md", file=sys.stderr)
    return report


# Arguments that change the result (the work folder of an interrupted run is reused only when
# they are the same); executor, workers and overwrite do not.
_RESULT_SETTINGS = {
    "sources", "weights", "text_field", "text_unit", "seed", "total_words", "quality", "min_words", "max_words",
    "min_mean_word_length", "max_mean_word_length", "max_symbol_word_ratio", "max_bullet_line_fraction",
    "max_ellipsis_line_fraction", "min_alpha_word_fraction", "max_digit_fraction", "min_stop_words",
    "max_duplicate_line_fraction", "max_duplicate_line_char_fraction", "max_top_ngram_fraction",
    "max_duplicate_ngram_fraction", "languages", "language_threshold", "quality_threshold", "pii", "pii_types",
    "dedup", "near_dedup", "near_dup_threshold", "num_perm", "bands", "shingle_size", "decontaminate_ngram",
    "shard_docs", "examples", "task_mb"}


def _sha256_dir(folder: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _filter_report(extra: dict, lang_id, classifier, threshold: float, pii: Optional[str], types) -> dict:
    out: dict = {}
    if lang_id is not None:
        out["language"] = {"keep": list(lang_id.languages), "threshold": lang_id.threshold,
                           "identified": dict(sorted(extra["languages"].items(), key=lambda kv: -kv[1]))}
    if classifier is not None:
        out["quality_classifier"] = {"threshold": threshold, "score_histogram": extra["classifier_scores"],
                                     "bins": "20 equal bins of [0, 1]", "kept_examples": extra["classifier_kept"]}
    if pii is not None:
        out["pii"] = {"mode": pii, "types": list(types), "matches": extra["pii"], "docs_with_pii": extra["pii_docs"],
                      "examples": extra["pii_examples"]}
    return out


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


def _snippet(ex: dict, *keys: str) -> str:
    extra = ", ".join(f"{k} {ex[k]}" for k in keys if k in ex)
    text = ex["text"].replace("\n", " ⏎ ").replace("|", "\\|")
    return f"- `{ex['location']}`" + (f" ({extra})" if extra else "") + f": {text}"


def _filters_markdown(filters: dict, per_rule: dict) -> list[str]:
    """The language, classifier and PII sections of report.md (what report.json's "filters" holds)."""
    lines: list[str] = []
    if "language" in filters:
        f = filters["language"]
        lines += ["## Languages", "", f"Kept: {', '.join(f['keep'])} with probability >= {f['threshold']}. "
                  "Identified (documents that reached the check):", "", "| language | docs |", "|---|---:|"]
        lines += [f"| {lang} | {n:,} |" for lang, n in f["identified"].items()] + [""]
    if "quality_classifier" in filters:
        f = filters["quality_classifier"]
        hist, n = f["score_histogram"], sum(f["score_histogram"])
        removed = per_rule.get("quality_classifier", {})
        lines += ["## Quality classifier", "",
                  f"{n:,} documents scored; {removed.get('docs', 0):,} scored below {f['threshold']} and were "
                  f"removed, {n - removed.get('docs', 0):,} kept.", "", "| score | docs | |", "|---|---:|---|"]
        top = max(hist) or 1
        for i, k in enumerate(hist):
            lines.append(f"| {i / 20:.2f}-{(i + 1) / 20:.2f} | {k:,} | {'█' * round(24 * k / top)} |")
        lines += ["", "Kept (score >= threshold):"] + [_snippet(ex, "score") for ex in f["kept_examples"]]
        lines += ["", "Removed:"] + [_snippet(ex, "score") for ex in removed.get("examples", [])] + [""]
    if "pii" in filters:
        f = filters["pii"]
        lines += ["## Personal information", "", f"Mode: {f['mode']}; {f['docs_with_pii']:,} documents held "
                  "some (counted among documents that passed the rules before it).", "",
                  "| type | matches |", "|---|---:|"]
        lines += [f"| {t} | {k:,} |" for t, k in f["matches"].items()]
        lines += ["", "Examples (redacted here whatever the mode):"] + [_snippet(ex, "found") for ex in f["examples"]] + [""]
    return lines


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
    lines += _filters_markdown(report.get("filters") or {}, report["per_rule"])
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
