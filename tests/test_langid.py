"""Language identification (`llmkit.data.langid`): predictions on sentences written here,
agreement with py3langid's own classifier, long-document sampling, validation, pickling."""

from __future__ import annotations

import pickle

import pytest

from llmkit.data import langid
from llmkit.data.langid import LanguageIdentifier, parse_languages, sample_text
from llmkit.errors import LLMKitError

ENGLISH = [
    "The committee will publish its final report on the new railway line next spring.",
    "She walked to the market early in the morning to buy fresh bread and vegetables.",
    "Scientists have found that the river's water quality improved after the factory closed.",
]
GERMAN = [
    "Der Ausschuss wird seinen Abschlussbericht über die neue Bahnstrecke im nächsten Frühjahr veröffentlichen.",
    "Sie ging früh am Morgen auf den Markt, um frisches Brot und Gemüse zu kaufen.",
    "Wissenschaftler haben herausgefunden, dass sich die Wasserqualität des Flusses verbessert hat.",
]
FRENCH = [
    "Le comité publiera son rapport final sur la nouvelle ligne de chemin de fer au printemps prochain.",
    "Elle est allée au marché tôt le matin pour acheter du pain frais et des légumes.",
]


@pytest.fixture(scope="module")
def en_de() -> LanguageIdentifier:
    return LanguageIdentifier(["en", "de"], threshold=0.5)


def test_predicts_english_german_french(en_de):
    for texts, code in ((ENGLISH, "en"), (GERMAN, "de"), (FRENCH, "fr")):
        for text in texts:
            lang, prob = en_de.predict(text)
            assert lang == code, (text, lang, prob)
            assert 0.5 < prob <= 1.0


def test_accepts_only_kept_languages(en_de):
    assert all(en_de.accepts(t) for t in ENGLISH + GERMAN)
    # French is identified as French (classification is over all languages), so not accepted.
    assert not any(en_de.accepts(t) for t in FRENCH)
    assert all(LanguageIdentifier(["fr"]).accepts(t) for t in FRENCH)
    assert all(LanguageIdentifier().accepts(t) for t in ENGLISH + FRENCH)  # no languages: any
    # threshold: a probability of 1.0 is demanded and a one-word text cannot reach it
    strict = LanguageIdentifier(["en"], threshold=1.0)
    assert not strict.accepts("Hello")


def test_probabilities_over_all_languages(en_de):
    probs = en_de.probabilities(GERMAN[0])
    assert len(probs) == len(langid.model_languages()) > 90
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(probs, key=probs.get) == "de"
    assert en_de.predict(GERMAN[0])[1] == pytest.approx(probs["de"])


def test_matches_py3langid(en_de):
    """The prediction is py3langid's normalised classifier over all languages."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier as PyLangId

    ref = PyLangId.from_model_file(MODEL_FILE, norm_probs=True)
    whole = LanguageIdentifier(max_chars=None)
    for text in ENGLISH + GERMAN + FRENCH + ["SHOUTING IN CAPITALS IS STILL ENGLISH TEXT"]:
        code, prob = ref.classify(text)
        assert whole.predict(text) == (code, pytest.approx(prob, abs=1e-5))


def test_featureless_text_is_undetermined(en_de):
    for text in ("", "   \n", "!!!"):
        assert en_de.predict(text) == ("und", 0.0)
        assert not en_de.accepts(text)
        assert en_de.probabilities(text) == {}
    with pytest.raises(LLMKitError, match="needs a str"):
        en_de.predict(b"bytes")  # type: ignore[arg-type]


def test_long_documents_are_sampled(en_de):
    # German body with an English header of a quarter of the text: the prefix alone says
    # English, windows spread over the whole text say German, like the whole text does.
    german = " ".join(GERMAN * 40)
    english = " ".join(ENGLISH * 14)
    doc = english + " " + german
    assert len(doc) > 10_000
    sampled = sample_text(doc, 3000)
    assert len(sampled) <= 3000 and sampled.startswith("The committee")
    assert all(w in doc for w in sampled.split())  # whole words only: no word cut in two
    assert LanguageIdentifier(max_chars=None).predict(doc)[0] == "de"
    assert en_de.predict(doc)[0] == "de"
    assert LanguageIdentifier(windows=1).predict(doc)[0] == "en"
    assert sample_text("short text", 3000) == "short text"


def test_parse_languages():
    assert parse_languages("en,de") == ("en", "de")
    assert parse_languages(" EN, de ,en") == ("en", "de")
    assert parse_languages(["en", "de"]) == ("en", "de")
    assert parse_languages(["en,fr"]) == ("en", "fr")
    assert LanguageIdentifier("de,fr").languages == ("de", "fr")


@pytest.mark.parametrize("spec, match", [("en,xx", "unknown language code 'xx'"), ("", "no language codes"),
                                         (["en", "klingon", "zz"], "unknown language codes 'klingon', 'zz'"),
                                         ([3], "must be strings")])
def test_parse_languages_errors(spec, match):
    with pytest.raises(LLMKitError, match=match) as e:
        parse_languages(spec)
    assert "\n" not in str(e.value)
    if "unknown" in match:
        assert "e.g." in str(e.value) and "en" in str(e.value)  # lists some valid codes


@pytest.mark.parametrize("kwargs, match", [({"threshold": 1.5}, "threshold"), ({"threshold": float("nan")}, "threshold"),
                                           ({"max_chars": 0}, "max_chars"), ({"windows": 0}, "windows")])
def test_settings_validated(kwargs, match):
    with pytest.raises(LLMKitError, match=match):
        LanguageIdentifier(["en"], **kwargs)


def test_pickles_as_settings(en_de):
    en_de.predict("load the model in this process")
    data = pickle.dumps(en_de)
    assert len(data) < 1000  # the ~100 MB model is not in it: each process loads its own
    back = pickle.loads(data)
    assert (back.languages, back.threshold, back.max_chars, back.windows) == (("en", "de"), 0.5, 3000, 3)
    assert [back.predict(t) for t in ENGLISH + GERMAN] == [en_de.predict(t) for t in ENGLISH + GERMAN]


def test_model_loads_lazily_in_a_fresh_process(tmp_path):
    """Unpickled in a new interpreter, the identifier loads the packaged model on first use
    (no download: the model is inside the py3langid package)."""
    import subprocess
    import sys

    (tmp_path / "lid.pkl").write_bytes(pickle.dumps(LanguageIdentifier(["de"])))
    code = ("import pickle, sys; from llmkit.data import langid; "
            f"lid = pickle.load(open({str(tmp_path / 'lid.pkl')!r}, 'rb')); "
            "assert langid._MODEL is None; "
            f"print(lid.predict({GERMAN[1]!r})[0], lid.accepts({ENGLISH[1]!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["de", "False"]
