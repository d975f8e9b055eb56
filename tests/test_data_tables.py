"""Labelled tables (`data.tables`): TSV keeps quotes while CSV unquotes, bad tables are one-line
errors naming the file, and the stratified split and class balancing are proportional and seeded."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from llmkit.data.tables import balanced, read_labeled, stratified_split
from llmkit.errors import LLMKitError


def write_table(path: Path, rows, header=("label", "text"), delimiter="\t") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n",
                       quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL, escapechar="\\")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_tsv_keeps_quotes_and_csv_unquotes(tmp_path):
    # SMS Spam Collection style: a message may start with a double quote, which TSV keeps.
    tsv = tmp_path / "a.tsv"
    tsv.write_text('Label\tSMS\nham\t"Hi" she said, ok\nspam\tWIN "now"\n')
    t = read_labeled(tsv, "sms", "label")  # case-insensitive column match
    assert t.texts == ['"Hi" she said, ok', 'WIN "now"'] and t.labels == ["ham", "spam"]
    c = write_table(tmp_path / "b.csv", [("x", 'a, "quoted" text'), ("y", "line one")], delimiter=",")
    t = read_labeled(c)
    assert t.texts == ['a, "quoted" text', "line one"] and t.labels == ["x", "y"]


@pytest.mark.parametrize("content,kwargs,match", [
    ("", {}, "empty file"),
    ("label\ttext\n", {}, "only a header row"),
    ("label\ttext\nx\thello\n", {"label_col": "category"}, "no label column 'category' (columns found: 'label', 'text')"),
    ("label\ttext\nx\thello\n", {"text_col": "body"}, "no text column 'body'"),
    ("label\ttext\nx\t  \n", {}, "line 2: empty text"),
    ("label\ttext\n\thello\n", {}, "line 2: empty label"),
    ("label\ttext\tother\nx\n", {}, "line 2 has 1 field(s)"),
])
def test_bad_tables_are_one_line_errors(tmp_path, content, kwargs, match):
    p = tmp_path / "t.tsv"
    p.write_text(content)
    with pytest.raises(LLMKitError) as e:
        read_labeled(p, **kwargs)
    assert match in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_stratified_split_keeps_proportions_and_balance_downsamples():
    labels = ["a"] * 80 + ["b"] * 20
    val, test, train = stratified_split(labels, (0.1, 0.2), seed=3)
    assert sorted(val + test + train) == list(range(100))  # disjoint and complete
    count = lambda idx, y: sum(labels[i] == y for i in idx)  # noqa: E731
    assert (count(val, "a"), count(val, "b")) == (8, 2)
    assert (count(test, "a"), count(test, "b")) == (16, 4)
    assert stratified_split(labels, (0.1, 0.2), seed=3) == [val, test, train]  # seeded
    kept = balanced(list(range(100)), labels, seed=0)
    assert count(kept, "a") == count(kept, "b") == 20 and set(i for i in kept if labels[i] == "b") == set(range(80, 100))
