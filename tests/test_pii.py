"""PII detection and redaction (`llmkit.data.pii`): every kind with exact spans, the checksum
and shape negatives, the overlap rule, redaction, type validation, offsets in Unicode text.
No data files needed; the numbers are test values (IBAN registry examples, card-scheme test
numbers, 555-01xx / Ofcom drama-range phone numbers)."""

from __future__ import annotations

import pytest

from llmkit.data.pii import (PII_TYPES, PIIMatch, _resolve, card_scheme_ok, check_types, find_pii, iban_ok,
                             luhn_ok, redact)
from llmkit.errors import LLMKitError


def spans(text: str, types=PII_TYPES, **kw) -> list[tuple[str, str]]:
    """(type, text) of each match, checking the offsets on the way."""
    out = []
    for m in find_pii(text, types, **kw):
        assert text[m.start:m.end] == m.text
        out.append((m.type, m.text))
    return out


# --- e-mail ---------------------------------------------------------------------------------

def test_email_spans():
    text = "Mail bob.smith+tag@mail.example.co.uk, or <ann_lee-2@uni-berlin.de>. Also X%Y@EXAMPLE.ORG."
    assert spans(text) == [("email", "bob.smith+tag@mail.example.co.uk"), ("email", "ann_lee-2@uni-berlin.de"),
                           ("email", "X%Y@EXAMPLE.ORG")]
    m = find_pii("write to jo@samaritans.org now")[0]
    assert (m.start, m.end) == (9, 26)


@pytest.mark.parametrize("text", ["icon@2x.png", "logo@3x.jpg", "see report@final.pdf", "user@localhost",
                                  "mAP@0.5 and Recall@20", "31p.msg@150p", "@handle", "a@b.c", "x@-bad.com"])
def test_email_negatives(text):
    assert spans(text, ["email"]) == []


def test_email_local_part_edges():
    assert spans("..dots.@example.com") == []  # a dot-atom neither ends with a dot...
    assert spans("see .ann@example.com") == [("email", "ann@example.com")]  # ...nor begins with one
    assert spans("a..b@example.com") == []
    assert spans("x" * 65 + "@example.com") == []  # RFC 5321: at most 64 characters
    assert spans("x" * 64 + "@example.com") == [("email", "x" * 64 + "@example.com")]


# --- phone ----------------------------------------------------------------------------------

@pytest.mark.parametrize("number", ["+44 20 7946 0958", "+1 212-555-0123", "+81 90-1234-5678", "+33 1 23 45 67 89",
                                    "+442079460958", "(212) 555-0123", "212.555.0123", "020 7946 0958",
                                    "07700 900123", "030 12345678", "0044 20 7946 0958"])
def test_phone_spans(number):
    assert spans(f"Call {number} today.") == [("phone", number)]


def test_phone_brackets_and_context():
    assert spans("fax (+81 90-1234-5678) please") == [("phone", "+81 90-1234-5678")]  # the brackets wrap it
    assert spans("tel:+1-212-555-0123") == [("phone", "+1-212-555-0123")]
    assert spans("a new bong &gt;:( +61-412-345-807 Oh") == [("phone", "+61-412-345-807")]
    assert spans("Tel.: 030 12345678, Fax: 030 12345679") == [("phone", "030 12345678"), ("phone", "030 12345679")]


@pytest.mark.parametrize("text", ["on 2023-10-05 at 12:30:45", "born 02.01.1990", "due 12/10/2023",
                                  "ISBN 0-306-40615-2", "ISBN 978-3-16-148410-0", "1,234,567 people",
                                  "pi is 3.14159265", "order #482913", "in 1999-2004", "at 51.5074, -0.1278",
                                  "301234567", "498 765 601 votes", "id a0979add-0346-8895-bdfd-a2b6098d13bc"])
def test_phone_negatives(text):
    assert spans(text) == []


def test_phone_next_to_other_numbers():
    assert spans("fax 07400 122716 16 replies") == [("phone", "07400 122716")]  # a count after it
    assert spans("Tel: +49.30.128621 40 miles") == [("phone", "+49.30.128621")]
    assert spans("ring 030 120354. 1405, 1680") == [("phone", "030 120354")]  # the sentence ended
    assert spans("Tel 030 125864 0.000397") == [("phone", "030 125864")]  # then a decimal
    assert spans("fax 030-122112 08:00-14:30") == [("phone", "030-122112")]  # then a time


def test_phone_written_forms():
    import phonenumbers

    from llmkit.data.pii import _written_ok

    def ok(raw: str, region: str) -> bool:
        return _written_ok(raw, phonenumbers.parse(raw, region), region)

    assert ok("030 1234567", "DE") and not ok("30 1234567", "DE")  # the trunk prefix is written
    assert ok("212-555-0123", "US") and ok("1 212 555 0123", "US") and not ok("51.4999 2011", "US")
    assert ok("447911123456", "GB") and not ok("498 765 601", "DE")  # a country code without "+"
    assert ok("+49 30 1234567", "US") and ok("0049 30 1234567", "GB")
    assert spans("0.5 30 1234567") == [] and spans("x 0.030 1234567") == []


def test_phone_regions():
    assert spans("ring 01 23 45 67 89") == []  # French national format: not a default region
    assert spans("ring 01 23 45 67 89", regions=("FR",)) == [("phone", "01 23 45 67 89")]
    assert spans("ring +33 1 23 45 67 89", regions=("FR",)) == [("phone", "+33 1 23 45 67 89")]
    assert spans("(212) 555-0123", regions=("GB",)) == []
    with pytest.raises(LLMKitError, match="region"):
        find_pii("x", regions=("XX",))
    with pytest.raises(LLMKitError, match="region"):
        find_pii("x", regions="US")  # a string is not a tuple of regions


# --- IP addresses ---------------------------------------------------------------------------

def test_ip_spans():
    text = "from 192.168.1.10. Then 8.8.8.8:53, fe80::1ff:fe23:4567:890a and ::ffff:192.0.2.128 or [2001:DB8::1]:443"
    assert spans(text) == [("ip_address", "192.168.1.10"), ("ip_address", "8.8.8.8"),
                           ("ip_address", "fe80::1ff:fe23:4567:890a"), ("ip_address", "::ffff:192.0.2.128"),
                           ("ip_address", "2001:DB8::1")]
    assert spans("host 2001:db8::2: down") == [("ip_address", "2001:db8::2")]  # the colon is the sentence's


@pytest.mark.parametrize("text", ["999.1.1.1", "1.2.3", "1.2.3.4.5", "v1.2.3.4", "version 10.0.0.1",
                                  "release 2.0.1.3", "01.02.03.04", "at 12:30:45", "MAC 00:1A:2B:3C:4D:5E",
                                  "f :: Int", "std::vector", "a:b:c", "Recall: 12"])
def test_ip_negatives(text):
    assert spans(text) == []


# --- cards ----------------------------------------------------------------------------------

def test_luhn_and_scheme():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")  # the usual worked example
    assert luhn_ok("4111111111111111") and card_scheme_ok("4111111111111111")
    assert luhn_ok("9999999999999995") and not card_scheme_ok("9999999999999995")  # no such issuer
    assert not card_scheme_ok("411111111111111")  # Visa issues 13, 16 or 19 digits, not 15
    assert card_scheme_ok("378282246310005") and not card_scheme_ok("3782822463100051")


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                  "5555 5555 5555 4444", "2221 0000 0000 0009", "378282246310005",
                                  "3782 822463 10005", "3056 930902 5904", "6011 1111 1111 1117",
                                  "3530 1113 3330 0000", "6759 6498 2643 8453 011", "4222222222222"])
def test_card_spans(card):
    assert spans(f"card no. {card}, exp 12/27") == [("credit_card", card)]


@pytest.mark.parametrize("text", ["4111 1111 1111 1112", "4111111111111112", "9999 9999 9999 9995",
                                  "ISBN 9783161484100", "4111 1111-1111 1111", "4111-1111-1111-1111-1",
                                  "41111111111111111111", "1234.4111111111111111", "40.4111111111111111",
                                  "x4111111111111111", "4111111111111111kg"])
def test_card_negatives(text):
    assert spans(text) == []


def test_card_stops_at_its_length():
    assert spans("4111 1111 1111 1111 123 Main St") == [("credit_card", "4111 1111 1111 1111")]


# --- IBAN -----------------------------------------------------------------------------------

REGISTRY = ["DE89 3704 0044 0532 0130 00", "GB29 NWBK 6016 1331 9268 19", "FR14 2004 1010 0505 0001 3M02 606",
            "NL91ABNA0417164300", "BE68539007547034", "NO93 8601 1117 947", "MT84 MALT 0110 0001 2345 MTLC AST0 01S"]


@pytest.mark.parametrize("iban", REGISTRY)
def test_iban_spans(iban):
    assert iban_ok(iban.replace(" ", ""))
    assert spans(f"IBAN: {iban}. Thanks") == [("iban", iban)]


def test_iban_check_and_length():
    assert not iban_ok("DE89370400440532013001")  # one digit changed: MOD 97-10 sees it
    assert not iban_ok("DE8937040044053201300")  # Germany's IBANs have 22 characters
    assert not iban_ok("ZZ89370400440532013000")  # no such country in the registry
    assert spans("IBAN DE89 3704 0044 0532 0130 01 and de89370400440532013000") == []
    # a word of capitals after the last full group is not taken in (the length is Belgium's)
    assert spans("BE68 5390 0754 7034 DATE 2024") == [("iban", "BE68 5390 0754 7034")]


# --- overlaps, kinds, redaction -------------------------------------------------------------

def test_iban_after_a_failed_candidate():
    # the bad German candidate reads "IBAN" and "CH93" as its groups; the Swiss IBAN is still found
    assert spans("DE12 0293 9004 0351 4030 IBAN CH93 0076 2011 6238 5295 7 ok") == \
        [("iban", "CH93 0076 2011 6238 5295 7")]
    assert spans("BE68 5390 0754 7034 4111 1111 1111 1111") == [("iban", "BE68 5390 0754 7034"),
                                                                ("credit_card", "4111 1111 1111 1111")]


def test_no_phone_inside_cards_or_ibans():
    for text in ["4111 1111 1111 1111", "4111 1111 1111 1112", "GB29 NWBK 6016 1331 9268 19",
                 "GB29 NWBK 6016 1331 9268 18", "DE89 3704 0044 0532 0130 01"]:
        assert find_pii(text, ["phone"]) == [], text
    assert spans("4111111111111111@example.com") == [("email", "4111111111111111@example.com")]
    # a Luhn-valid UnionPay-looking group inside an IBAN-shaped string that fails its check
    assert not iban_ok("IT77L547627054666478901510") and luhn_ok("6270546664789015")
    assert spans("at IT77 L547 6270 5466 6478 9015 108 now") == []


def test_resolve_rule():
    # priority first (email > iban > credit_card > ip_address > phone), then longer, then earlier
    assert _resolve([(0, 20, "phone"), (5, 10, "credit_card")]) == [(5, 10, "credit_card")]
    assert _resolve([(0, 5, "phone"), (3, 12, "phone"), (12, 14, "phone")]) == [(3, 12, "phone"), (12, 14, "phone")]
    assert _resolve([(0, 5, "phone"), (4, 9, "phone")]) == [(0, 5, "phone")]
    assert _resolve([(10, 12, "iban"), (0, 3, "email"), (2, 11, "ip_address")]) == [(0, 3, "email"), (10, 12, "iban")]


def test_all_kinds_sorted_and_redacted():
    text = ("Zoë (zoë.x@example.com, +44 20 7946 0958) paid 4111 1111 1111 1111 from IBAN "
            "DE89 3704 0044 0532 0130 00 at 10.0.0.1 on 2023-10-05.")
    matches = find_pii(text)
    assert [m.type for m in matches] == ["email", "phone", "credit_card", "iban", "ip_address"]
    assert all(a.end <= b.start for a, b in zip(matches, matches[1:]))
    assert redact(text, matches) == ("Zoë (<EMAIL>, <PHONE>) paid <CREDIT_CARD> from IBAN <IBAN> at <IP_ADDRESS> "
                                     "on 2023-10-05.")
    assert [m.type for m in find_pii(text, ["iban", "phone"])] == ["phone", "iban"]
    assert find_pii(text, "email") == matches[:1]


def test_unicode_offsets():
    text = "Straße 5, Zoë’s 电话：+44 20 7946 0958，邮件 zhang@example.com谢谢 😀 10.0.0.1"
    got = find_pii(text)
    assert [(m.type, m.text) for m in got] == [("phone", "+44 20 7946 0958"), ("email", "zhang@example.com"),
                                               ("ip_address", "10.0.0.1")]
    assert got[0].start == text.index("+44") and got[2].end == len(text)
    assert all(text[m.start:m.end] == m.text for m in got)
    assert redact(text, got).endswith("邮件 <EMAIL>谢谢 😀 <IP_ADDRESS>")


def test_empty_and_clean_text():
    assert find_pii("") == []
    assert find_pii("To be, or not to be: that is the question. 1603, act 3 scene 1.") == []
    assert redact("nothing here", []) == "nothing here"


def test_redact_rejects_foreign_matches():
    text = "mail a@example.com"
    with pytest.raises(ValueError):
        redact(text, [PIIMatch("email", 0, 4, "mail"), PIIMatch("email", 2, 6, "il a")])  # overlapping
    with pytest.raises(ValueError):
        redact(text, [PIIMatch("email", 5, 18, "b@example.com")])  # not this text


def test_check_types():
    assert check_types(["phone", "email", "phone"]) == ("phone", "email")
    assert check_types("email, IBAN") == ("email", "iban")
    assert check_types(PII_TYPES) == PII_TYPES
    with pytest.raises(LLMKitError) as e:
        check_types(["email", "ssn"])
    msg = str(e.value)
    assert "'ssn'" in msg and "\n" not in msg and all(t in msg for t in PII_TYPES)
    with pytest.raises(LLMKitError):
        check_types([])
    with pytest.raises(LLMKitError, match="ssn"):
        find_pii("text", ["ssn"])
