"""Language identification for `llmkit data curate`: `LanguageIdentifier`.

The model is py3langid's (Barbaresi's maintained fork of langid.py: Lui & Baldwin 2012,
"langid.py: An Off-the-shelf Language Identification Tool", ACL demo): a multinomial naive
Bayes over byte n-grams chosen by information gain across domains, found in the text by a DFA
walk. The model ships inside the py3langid package (`py3langid/data/model.npz.xz`, an LZMA'd
npz read by `py3langid.modelio.load_model` with `np.load(..., allow_pickle=False)`), so nothing
is downloaded at run time and loading it runs no pickle. It is loaded lazily, once per process
(about a second, ~100 MB), on the first prediction: a `LanguageIdentifier` pickles as its
settings only, which is what sending it to worker processes needs.

Classification is over *all* the model's languages (140 labels: mostly ISO 639-1 codes, a few
ISO 639-3 ones such as "ace" or "yue", and "zxx" for no linguistic content), never restricted
to the languages kept: restricted to en/de, French text would be forced to be one of the two.
The probability is py3langid's normalised posterior (softmax of the naive Bayes log scores over
all languages at temperature sqrt(bytes), py3langid >= 0.4, which keeps it comparable across
lengths); text without a single model feature (empty, digits, symbols) is "und" with
probability 0.

Cost is linear in bytes (a Python-level DFA walk, roughly 0.5-1 MB/s), so a long document is
judged by at most `max_chars` characters: the whole text when it is short enough, otherwise
`SAMPLE_WINDOWS` windows spread evenly over it (start, middle, ..., end; cut at whitespace), so
a boilerplate header or a foreign-language appendix cannot decide alone. bench/bench_langid.py
measures it on ~9,000-character English and German documents: the sample agrees with the
whole-text answer on all of them (also where the first quarter is in the other language, which
a 3,000-character prefix gets wrong every time) at 5-7x the speed.
"""

from __future__ import annotations

import math
import threading
import unicodedata
from typing import Optional, Sequence

import numpy as np

from llmkit.errors import LLMKitError

MAX_CHARS = 3000  # characters classified per document (see the module docstring)
SAMPLE_WINDOWS = 3  # windows a longer document is sampled in
UNDETERMINED = "und"  # ISO 639-2 "undetermined": text without any model feature

_MODEL: Optional["_Model"] = None
_LOCK = threading.Lock()


class _Model:
    """py3langid's packaged model, as the arrays the prediction below needs."""

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier as _PyLangId

        ident = _PyLangId.from_model_file(MODEL_FILE)  # its modelio: lzma + np.load(allow_pickle=False)
        self.nextmove = ident.tk_nextmove
        self.rowbase = [r << 8 for r in ident.tk_row]  # DFA rows are 256 wide: state -> row offset
        self.output = ident.tk_output  # state -> feature index, or -1
        self.ptc = np.asarray(ident.nb_ptc)  # (features, columns) float16 log P(feature | language)
        self.pc = np.asarray(ident.nb_pc, dtype=np.float32)  # (columns,) log prior
        # Some labels have two columns (a language in two scripts, e.g. Serbian): their
        # probabilities are summed into one label, as py3langid's own classify does.
        self.labels: tuple[str, ...] = tuple(dict.fromkeys(ident.nb_classes))
        index = {label: i for i, label in enumerate(self.labels)}
        self.column_label = np.array([index[c] for c in ident.nb_classes], dtype=np.intp)


def _model() -> _Model:
    global _MODEL
    if _MODEL is None:
        with _LOCK:
            if _MODEL is None:
                _MODEL = _Model()
    return _MODEL


def model_languages() -> tuple[str, ...]:
    """Every label of the packaged model, in its order (loads the model)."""
    return _model().labels


def parse_languages(spec: str | Sequence[str]) -> tuple[str, ...]:
    """("en", "de") from "en,de", "en de" or ["en", "de"] (or ["en,de"]): lower-cased, duplicates
    dropped, each checked against the model's languages (an unknown code is a one-line error)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    codes: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise LLMKitError(f"language codes must be strings, got {type(item).__name__}")
        codes += [c.strip().lower() for c in item.replace(",", " ").split() if c.strip()]
    if not codes:
        raise LLMKitError("no language codes given (e.g. 'en' or 'en,de')")
    known = set(model_languages())
    unknown = [c for c in codes if c not in known]
    if unknown:
        some = ", ".join(sorted(known & {"en", "de", "fr", "es", "it", "nl", "pt", "ru", "zh", "ja", "ar", "hi"}))
        raise LLMKitError(f"unknown language code{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                          f"expected ISO 639-1 codes of py3langid's {len(known)} languages, e.g. {some}")
    return tuple(dict.fromkeys(codes))


def sample_text(text: str, max_chars: int, windows: int = SAMPLE_WINDOWS) -> str:
    """`text` if it has at most `max_chars` characters, else `windows` pieces of about
    max_chars / windows characters spread evenly from its start to its end, each cut at
    whitespace so that no word is split (a split word would add byte n-grams of no language)."""
    if len(text) <= max_chars:
        return text
    width = max_chars // windows
    if windows <= 1 or width < 200:  # too narrow to be worth spreading: the prefix
        return _cut(text, 0, max_chars)
    step = (len(text) - width) / (windows - 1)
    return "\n".join(_cut(text, int(round(k * step)), width) for k in range(windows))


def _cut(text: str, start: int, width: int) -> str:
    end = min(len(text), start + width)
    if start > 0:  # begin after the first whitespace of the window
        s = next((i for i in range(start, min(end, start + 50)) if text[i].isspace()), start)
        start = s
    if end < len(text):  # end before the last whitespace of the window
        e = next((i for i in range(end, max(start, end - 50), -1) if text[i - 1].isspace()), end)
        end = e
    return text[start:end].strip()


class LanguageIdentifier:
    """Which language a text is in, and whether it is one of `languages`.

    Args:
        languages: ISO 639-1 codes to accept (e.g. ("en", "de")); None accepts every language
            (then only `threshold` applies).
        threshold: smallest probability of the identified language for `accepts`.
        max_chars: characters of a document that are classified (see `sample_text`); None for
            the whole text.
        windows: how many pieces a longer document is sampled in (1: its first max_chars).
    """

    def __init__(self, languages: Optional[Sequence[str]] = None, threshold: float = 0.0,
                 max_chars: Optional[int] = MAX_CHARS, windows: int = SAMPLE_WINDOWS):
        self.languages: Optional[tuple[str, ...]] = None if languages is None else parse_languages(languages)
        if not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0 or math.isnan(threshold):
            raise LLMKitError(f"language threshold must be a probability in [0, 1], got {threshold!r}")
        if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
            raise LLMKitError(f"max_chars must be a positive integer or None, got {max_chars!r}")
        if not isinstance(windows, int) or windows < 1:
            raise LLMKitError(f"windows must be a positive integer, got {windows!r}")
        self.threshold = float(threshold)
        self.max_chars, self.windows = max_chars, windows

    # Pickled as its settings; the model is the per-process `_model()`, loaded on first use.
    def __getstate__(self) -> dict:
        return {"languages": self.languages, "threshold": self.threshold, "max_chars": self.max_chars,
                "windows": self.windows}

    def __setstate__(self, state: dict) -> None:
        self.languages, self.threshold = state["languages"], state["threshold"]
        self.max_chars, self.windows = state["max_chars"], state["windows"]

    def __repr__(self) -> str:
        return (f"LanguageIdentifier(languages={self.languages}, threshold={self.threshold}, "
                f"max_chars={self.max_chars}, windows={self.windows})")

    def probabilities(self, text: str) -> dict[str, float]:
        """P(language | text) for every language of the model (summing to 1), or {} for text
        without any model feature."""
        probs = self._probs(text)
        if probs is None:
            return {}
        return dict(zip(_model().labels, probs.tolist()))

    def predict(self, text: str) -> tuple[str, float]:
        """(language code, probability) of the most likely of all the model's languages;
        ("und", 0.0) for text without any model feature (empty, digits, punctuation)."""
        probs = self._probs(text)
        if probs is None:
            return UNDETERMINED, 0.0
        i = int(probs.argmax())
        return _model().labels[i], float(probs[i])

    def accepts(self, text: str) -> bool:
        """Whether `text` is identified as one of `languages` (any, if None) with at least
        `threshold` probability."""
        lang, prob = self.predict(text)
        if lang == UNDETERMINED:
            return False
        return (self.languages is None or lang in self.languages) and prob >= self.threshold

    def _probs(self, text: str) -> Optional[np.ndarray]:
        """Per-label probabilities, as py3langid's `rank` with norm_probs=True computes them."""
        from py3langid.langid import visit_counts

        if not isinstance(text, str):
            raise LLMKitError(f"language identification needs a str, got {type(text).__name__}")
        m = _model()
        if self.max_chars is not None:
            text = sample_text(text, self.max_chars, self.windows)
        # py3langid's normalisation of its input: all-capitals lower-cased, Unicode NFC, UTF-8.
        if text.isupper():
            text = text.lower()
        data = unicodedata.normalize("NFC", text).encode("utf-8", errors="surrogatepass")
        visits = visit_counts(m.nextmove, m.rowbase, m.output, data)
        if not visits:
            return None
        idx = np.fromiter(visits.keys(), dtype=np.intp, count=len(visits))
        counts = np.fromiter(visits.values(), dtype=np.float32, count=len(visits))
        # log(1 + count) weighting of feature counts and float32 sums, as py3langid's scorer.
        scores = np.log1p(counts) @ m.ptc[idx].astype(np.float32) + m.pc
        scores *= 1.0 / math.sqrt(len(data))
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
        return np.bincount(m.column_label, weights=scores, minlength=len(m.labels))
