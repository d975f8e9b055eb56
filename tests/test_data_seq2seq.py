"""(source, target) records for seq2seq finetuning: field detection on the shapes of the real
files (SciTLDR, NTREX / FLORES, Alpaca), errors naming file, record and field; tokenizing with
one EOS, truncation that keeps it, ids equal to transformers' tokenizers (a T5-style and a
BART-style one); batches equal to HF's `shift_tokens_right`; the resumable shuffled epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmkit.data.seq2seq import (FIELD_PAIRS, Seq2SeqBatches, Seq2SeqExample, Seq2SeqExamples, collate_seq2seq,
                                 detect_fields, end_with_eos, eval_batches, load_pairs, load_references,
                                 read_seq2seq)
from llmkit.errors import LLMKitError
from tests.conftest import SHARED_DATA
from tests.helpers import ENCODER_TEXT, build_roberta

# Records shaped as the shared files are (fields and value types copied; texts shortened).
SCITLDR = [
    {"source": ["Mixed precision training (MPT) is becoming a practical technique.", "We propose a fix. "],
     "source_labels": [0, 1], "rouge_scores": [0.1, 0.4], "paper_id": "rJlnfaNYvB",
     "target": ["We devise adaptive loss scaling.", "Proposal for an adaptive loss scaling method. "],
     "title": "Adaptive Loss Scaling for Mixed Precision Training"},
    {"source": ["Incremental class learning involves sequentially learning classes."], "source_labels": [1],
     "rouge_scores": [0.3], "paper_id": "SJ1Xmf-Rb", "target": ["FearNet is a memory efficient network."],
     "title": "FearNet"},
]
NTREX = [{"id": "ntrex128-0", "doc_id": "bbc.381790", "en": "Welsh AMs worried about 'looking like muppets'",
          "de": "Mitglieder der Nationalversammlung für Wales befürchten Verwechslungen mit den Muppets"}]
FLORES = [{"id": "flores200-devtest-0", "en": "\"We now have 4-month-old mice,\" he added.",
           "de": "„Wir haben jetzt 4 Monate alte Mäuse“, fügte er hinzu.", "domain": "wikinews",
           "topic": "disease, research, canada", "url": "https://en.wikinews.org/wiki/x"}]
ALPACA = [{"instruction": "Edit the following sentence for grammar.", "input": "He go to the park every day.",
           "output": "He goes to the park every day."},
          {"instruction": "Name a primary color.", "input": "", "output": "Red."}]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# --- reading -------------------------------------------------------------------------------------
def test_scitldr_shape_joins_the_sentences_and_keeps_every_reference(tmp_path):
    f = write_jsonl(tmp_path / "dev.jsonl", SCITLDR)
    pairs = load_pairs(f)
    assert pairs[0] == ("Mixed precision training (MPT) is becoming a practical technique. We propose a fix.",
                        "We devise adaptive loss scaling.")
    assert pairs[1][1] == "FearNet is a memory efficient network."
    sources, refs = load_references(f)
    assert sources == [p[0] for p in pairs]
    assert refs == [["We devise adaptive loss scaling.", "Proposal for an adaptive loss scaling method."],
                    ["FearNet is a memory efficient network."]]
    assert read_seq2seq(f)[0].where == f"{f}: line 1"


def test_translation_shapes_and_direction(tmp_path):
    for records in (NTREX, FLORES):
        f = write_jsonl(tmp_path / "t.jsonl", records)
        assert load_pairs(f) == [(records[0]["en"], records[0]["de"])]  # en -> de detected
        assert load_pairs(f, source_field="de", target_field="en",
                          prefix="translate German to English: ") == [
            ("translate German to English: " + records[0]["de"], records[0]["en"])]


def test_alpaca_records_map_instruction_and_input(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps(ALPACA), encoding="utf-8")
    assert load_pairs(f) == [("Edit the following sentence for grammar.\n\nHe go to the park every day.",
                              "He goes to the park every day."),
                             ("Name a primary color.", "Red.")]
    assert read_seq2seq(f)[1].where == f"{f}: record 2"
    # Named explicitly, the instruction field is just that field.
    assert load_pairs(f, source_field="instruction", target_field="output")[0][0] == ALPACA[0]["instruction"]


@pytest.mark.parametrize("src,tgt", FIELD_PAIRS)
def test_every_known_field_pair_is_detected(src, tgt):
    assert detect_fields({src: "a", tgt: "b", "id": 3}, "x") == (src, tgt)


def test_detection_priority_and_partial_names():
    record = {"source": "s", "target": "t", "en": "e", "de": "d"}
    assert detect_fields(record, "x") == ("source", "target")
    assert detect_fields(record, "x", target_field="de") == ("en", "de")
    assert detect_fields({"article": "a", "highlights": "h"}, "x") == ("article", "highlights")
    with pytest.raises(LLMKitError, match="record keys: a, b"):
        detect_fields({"a": "x", "b": "y"}, "f.jsonl: line 1")


def test_prefix_on_every_source(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"src": "one", "tgt": "1"}, {"src": "two", "tgt": "2"}])
    assert load_pairs(f, prefix="summarize: ") == [("summarize: one", "1"), ("summarize: two", "2")]


def test_csv_and_tsv_tables(tmp_path):
    (tmp_path / "t.tsv").write_text("en\tde\nHello\tHallo\nThanks\tDanke\n", encoding="utf-8")
    assert load_pairs(tmp_path / "t.tsv") == [("Hello", "Hallo"), ("Thanks", "Danke")]
    (tmp_path / "t.csv").write_text('document,summary\n"A long, long text.",Short.\n', encoding="utf-8")
    assert load_pairs(tmp_path / "t.csv") == [("A long, long text.", "Short.")]


@pytest.mark.parametrize("records,needles", [
    ([{"source": "a", "target": "b"}, {"source": "c"}], ["line 2", "missing target field 'target'"]),
    ([{"source": "a", "target": "b"}, {"source": 3, "target": "d"}], ["line 2", "source field 'source'", "int"]),
    ([{"source": "a", "target": ["b", 4]}], ["line 1", "target field 'target'", "int"]),
    ([{"source": "a", "target": []}], ["line 1", "empty target field 'target'"]),
    ([{"source": "  ", "target": "b"}], ["line 1", "empty source field 'source'"]),
    ([{"source": "a", "target": None}], ["line 1", "missing target field"]),
    ([{"instruction": "a", "input": 5, "output": "b"}], ["line 1", "'input'", "int"]),
    ([{"instruction": "a", "input": "x"}], ["line 1", "missing target field 'output'"]),
    ([{"source": "a", "target": "b"}, "just text"], ["line 2", "expected a JSON object, got str"]),
])
def test_bad_records_name_file_record_and_field(tmp_path, records, needles):
    f = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(LLMKitError) as e:
        load_pairs(f)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg
    for needle in needles:
        assert needle in msg


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(LLMKitError, match="empty file"):
        load_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "none.json").write_text("[]", encoding="utf-8")
    with pytest.raises(LLMKitError, match="no records"):
        load_pairs(tmp_path / "none.json")
    with pytest.raises(LLMKitError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    f = write_jsonl(tmp_path / "given.jsonl", [{"en": "a", "de": "b"}])
    with pytest.raises(LLMKitError, match="missing source field 'fr'"):
        load_pairs(f, source_field="fr", target_field="de")


# --- the real files (skipped without ../shared/data) -----------------------------------------------
needs_data = pytest.mark.skipif(not (SHARED_DATA / "summarization").is_dir(), reason="shared data folder absent")


@needs_data
def test_real_summarization_files():
    for split, n in (("train", 1992), ("dev", 619), ("test", 618)):
        path = SHARED_DATA / "summarization" / f"{split}.jsonl"
        raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        sources, refs = load_references(path)
        assert len(sources) == len(refs) == n
        assert all(1 <= len(r) <= 4 for r in refs)
        assert [p[1] for p in load_pairs(path)] == [r[0] for r in refs]
        # The data set's README recipe, up to whitespace.
        assert [" ".join(s.split()) for s in sources] == [" ".join(" ".join(r["source"]).split()) for r in raw]
    assert all(len(r) == 1 for r in load_references(SHARED_DATA / "summarization" / "train.jsonl")[1])


@needs_data
def test_real_translation_and_instruction_files():
    for split, n in (("train", 1997), ("test", 1012)):
        path = SHARED_DATA / "translation" / f"{split}.jsonl"
        raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert load_pairs(path) == [(r["en"], r["de"]) for r in raw]
        assert load_pairs(path, source_field="de", target_field="en")[0] == (raw[0]["de"], raw[0]["en"])
    pairs = load_pairs(SHARED_DATA / "instruct" / "instruction-data.json")
    assert len(pairs) == 1100 and pairs[0][0].endswith("\n\nfreind --> friend")


# --- tokens --------------------------------------------------------------------------------------
def build_t5_style(out_dir: Path) -> Path:
    """A tiny T5-like tokenizer: <pad>=0 </s>=1 <unk>=2, Metaspace BPE, template `$A </s>`."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    out_dir.mkdir(parents=True, exist_ok=True)
    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, special_tokens=["<pad>", "</s>", "<unk>"],
                                  show_progress=False)
    backend.train_from_iterator(ENCODER_TEXT, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    backend.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
              "unk_token": "<unk>", "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out_dir


@pytest.fixture(scope="module")
def tokenizers_t5_bart(tmp_path_factory):
    from llmkit.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("tok")
    return {"t5": build_t5_style(root / "t5"), "bart": build_roberta(root / "bart")}, Tokenizer


TEXTS = [("summarize: The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third title.",
          "The Broncos won."),
         ("summarize: Who won the game?", "She visited Paris and London with her sister, then flew home.")]


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_ids_equal_transformers_tokenizer_with_one_eos(tokenizers_t5_bart, kind):
    from transformers import AutoTokenizer

    dirs, Tokenizer = tokenizers_t5_bart
    tok, hf = Tokenizer.from_dir(dirs[kind]), AutoTokenizer.from_pretrained(str(dirs[kind]))
    ex = Seq2SeqExamples(TEXTS, tok, max_source_len=512, max_target_len=128)
    for (s, t), e in zip(TEXTS, ex):
        assert e.src == hf(s)["input_ids"]
        assert e.tgt == hf(text_target=t)["input_ids"]
        assert e.tgt[-1] == tok.eos_id and e.tgt.count(tok.eos_id) == 1
    # Truncation keeps the EOS last, as HF truncates before adding its specials.
    short = Seq2SeqExamples(TEXTS, tok, max_source_len=6, max_target_len=4)
    for (s, t), e in zip(TEXTS, short):
        assert e.src == hf(s, max_length=6, truncation=True)["input_ids"] and len(e.src) == 6
        assert e.tgt == hf(text_target=t, max_length=4, truncation=True)["input_ids"] and e.tgt[-1] == tok.eos_id
    assert short.stats.truncated_sources == 2 and short.stats.truncated_targets == 2
    assert "2 sources and 2 targets truncated" in short.stats.line("train")
    if kind == "bart":
        assert short[0].src[0] == tok.bos_id  # BART's <s> stays first


def test_eos_written_in_the_text_is_not_doubled(tokenizers_t5_bart):
    dirs, Tokenizer = tokenizers_t5_bart
    tok = Tokenizer.from_dir(dirs["t5"])
    a, b = Seq2SeqExamples([("x", "The Broncos won.</s>"), ("x", "The Broncos won.")], tok)
    assert a.tgt == b.tgt and a.tgt.count(tok.eos_id) == 1
    assert end_with_eos([5, 6, 1, 1], 1) == ([5, 6, 1], False)
    assert end_with_eos([5, 6, 7, 8], 1, max_len=3) == ([5, 6, 1], True)
    assert end_with_eos([5, 1], 1, max_len=2) == ([5, 1], False)


def test_drop_and_bad_settings(tokenizers_t5_bart):
    dirs, Tokenizer = tokenizers_t5_bart
    tok = Tokenizer.from_dir(dirs["t5"])
    ex = Seq2SeqExamples(TEXTS + [("a", "b")], tok, max_source_len=6, max_target_len=4, truncation="drop")
    assert len(ex) == 1 and ex.stats.dropped == 2 and ex.stats.truncated_sources == 0
    with pytest.raises(LLMKitError, match="max_target_len must be >= 2"):
        Seq2SeqExamples(TEXTS, tok, max_target_len=1)
    with pytest.raises(LLMKitError, match="truncation must be one of"):
        Seq2SeqExamples(TEXTS, tok, truncation="cut")
    tok.eos_id = None
    with pytest.raises(LLMKitError, match="no EOS token"):
        Seq2SeqExamples(TEXTS, tok)


# --- batches -------------------------------------------------------------------------------------
def test_collate_by_hand_and_equal_to_hf_shift_tokens_right():
    from transformers.models.bart.modeling_bart import shift_tokens_right

    examples = [Seq2SeqExample(src=[7, 8, 9, 1], tgt=[4, 5, 1]), Seq2SeqExample(src=[6, 1], tgt=[3, 4, 5, 6, 1])]
    b = collate_seq2seq(examples, pad_id=0, decoder_start_id=0)
    assert b["src"].tolist() == [[7, 8, 9, 1], [6, 1, 0, 0]]
    assert b["src_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["labels"].tolist() == [[4, 5, 1, -100, -100], [3, 4, 5, 6, 1]]
    assert b["idx"].tolist() == [[0, 4, 5, 1, 0], [0, 3, 4, 5, 6]]
    assert all(v.dtype == torch.long for v in b.values())
    assert torch.equal(b["idx"], shift_tokens_right(b["labels"], 0, 0))
    bart = collate_seq2seq(examples, pad_id=1, decoder_start_id=2)  # BART: pad 1, decoder start </s> = 2
    assert torch.equal(bart["idx"], shift_tokens_right(bart["labels"], 1, 2))
    assert bart["src"].tolist()[1] == [6, 1, 1, 1]
    with pytest.raises(LLMKitError):
        collate_seq2seq([], 0, 0)


def test_loss_contract_with_a_toy_model():
    """The batch dict drives the loss the recipe computes; padding contributes nothing."""
    examples = [Seq2SeqExample([7, 8, 1], [4, 5, 1]), Seq2SeqExample([6, 1], [3, 1])]
    b = collate_seq2seq(examples, 0, 0)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 10)

    def model(idx, src, src_mask):  # (B, T, V): decoder inputs plus the mean of the real source tokens
        ctx = (emb(src) * src_mask[..., None]).sum(1, keepdim=True) / src_mask.sum(1)[:, None, None]
        return emb(idx) + ctx

    logits = model(b["idx"], src=b["src"], src_mask=b["src_mask"])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=-100)
    one = [torch.nn.functional.cross_entropy(
        model(**{k: v for k, v in collate_seq2seq([e], 0, 0).items() if k != "labels"})[0],
        torch.tensor(e.tgt), reduction="sum") for e in examples]
    assert loss.item() == pytest.approx((one[0] + one[1]).item() / 5, rel=1e-5)


def test_shuffled_epochs_resume_exactly_and_eval_batches_sorted():
    examples = [Seq2SeqExample([i + 2] * (1 + i % 3) + [1], [i + 2] * (1 + i % 4) + [1]) for i in range(10)]
    a = Seq2SeqBatches(examples, batch_size=3, pad_id=0, decoder_start_id=0, seed=5)
    first = [next(a) for _ in range(7)]  # crosses two epoch boundaries
    stream = [int(x) for batch in first for x in batch["src"][:, 0]]
    assert sorted(stream[:10]) == sorted(stream[10:20]) == list(range(2, 12))  # each epoch: every pair once
    assert stream[:10] != stream[10:20]  # a new permutation each epoch
    b = Seq2SeqBatches(examples, batch_size=3, pad_id=0, decoder_start_id=0, seed=5)
    for _ in range(4):
        next(b)
    state = b.state_dict()
    c = Seq2SeqBatches(examples, batch_size=3, pad_id=0, decoder_start_id=0, seed=5)
    c.load_state_dict(state)
    for want in first[4:]:
        got = next(c)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert a.steps_per_epoch == 4
    other = Seq2SeqBatches(examples[:-1], batch_size=3, pad_id=0, decoder_start_id=0, seed=5)
    with pytest.raises(LLMKitError, match="cannot resume"):
        other.load_state_dict(state)
    with pytest.raises(LLMKitError, match="no training pairs"):
        Seq2SeqBatches([], 3, 0, 0)
    batches = eval_batches(examples, batch_size=4, pad_id=0, decoder_start_id=0)
    assert [len(x["src"]) for x in batches] == [4, 4, 2]
    lengths = [n for x in batches for n in x["src_mask"].sum(1).tolist()]
    assert lengths == sorted(len(e.src) for e in examples) == [2, 2, 2, 2, 3, 3, 3, 4, 4, 4]
