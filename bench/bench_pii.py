"""PII detection (`llmkit.data.pii.find_pii`): precision, recall and speed on real text.

Data: real sentences from ../shared/data (see each folder's README for licences):
text/tinyshakespeare.txt lines, nli/ premises and hypotheses (SNLI), summarization/ source
sentences (paper abstracts, full of numbers, percentages and versions), translation/ English
and German news sentences (NTREX-128, FLORES-200: dates, prices, German umlauts), and
sms_spam/ messages (UCI SMS Spam Collection). A carrier sentence that itself may hold PII is
left out, by rules that do not use the detector: any sentence with "@" or with a run of 7 or
more digits (spaces and hyphens allowed): the SMS spam holds real UK numbers (scored
separately below), the news a US police number; 10 sentences outside the SMS go with them.

Into documents of 1-4 carrier sentences, known values are inserted at word boundaries (bare,
or after a context phrase such as "call" / "IBAN:", sometimes wrapped in brackets or followed
by punctuation), seeded and deterministic:

* positives, with their exact span: e-mail addresses of several shapes; phone numbers of 20
  countries in E.164, international (spaces, hyphens, dots, "tel:" URIs) and, for the
  detector's default regions (US, GB, DE), national formats (spaces, hyphens, dots, bracketed
  area codes), "+44 (0)20 ..." and "0044 ..." forms: random numbers that libphonenumber's
  metadata calls valid (so "valid" is libphonenumber's word, which the
  detector also uses: this measures finding and delimiting them in text, not the numbering
  plans); IPv4 and IPv6 (full, compressed, embedded IPv4, upper case); Luhn-valid card numbers
  of Visa 13/16/19, Mastercard (51-55 and 2-series), Amex, Discover, JCB, Diners, UnionPay,
  Maestro, contiguous and in 4-4-4-4 / 4-6-5 / 4-6-4 groups with spaces or hyphens; IBANs of
  22 countries, check digits computed (ISO 7064 MOD 97-10), compact and in groups of four;
* hard negatives, which must not be reported: dates, times, time ranges, prices, ISBN-10/13,
  order and invoice numbers, Luhn-invalid 16-digit numbers with real card prefixes,
  IBAN-shaped strings with a wrong check, version strings (v1.2.3.4, "version 2.10.3.1"),
  decimals, years and year ranges, thousands-grouped numbers, invalid dotted quads, MAC
  addresses, UUIDs, coordinates, file names like icon@2x.png, "mAP@0.5", @handles; plus
  whatever the real sentences hold (citations, percentages, model names, German dates).

Scoring is span-level exact match per type: a prediction is a true positive only when its
type, start and end all equal an inserted value's. A partial overlap (right type, wrong
boundaries) counts as one false positive and one false negative; those are also counted
apart ("partial"), as are predictions of the wrong type on an inserted value. The detector's
rules were worked out against seeds 0-3 and 7; another seed is the fairer test.

Speed: MB/s of UTF-8 text through `find_pii` (all types, one process, best of `--repeat`
runs) on the labelled documents (every one dense with numbers: the slow case), on the real
carrier sentences without insertions, on the SMS collection as it is (hundreds of real phone
numbers), and on clean prose (tinyshakespeare.txt), each in ~2 kB documents or messages.

A second, independent check on real PII: every UK number in the SMS spam collection found by
a plain rule (11 digits starting with 0, or 12 starting with 44, spaces allowed), and how many
of them find_pii reports as phones with exactly those boundaries.

    python bench/bench_pii.py
    python bench/bench_pii.py --data ../shared/data --docs 6000 --seed 1 --save ../runs/pii/testset.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import phonenumbers  # noqa: E402

from llmkit.data.pii import DEFAULT_REGIONS, IBAN_LENGTHS, PII_TYPES, find_pii, luhn_ok  # noqa: E402

_LONG_NUMBER = re.compile(r"[0-9](?:[ -]?[0-9]){6,}")


# --- carriers ------------------------------------------------------------------------------

def load_carriers(data: Path) -> dict[str, list[str]]:
    """source -> real sentences without PII of their own (see the module docstring)."""
    out: dict[str, list[str]] = {}

    def keep(s: str) -> bool:
        return len(s.split()) >= 4 and "@" not in s and not _LONG_NUMBER.search(s)

    shakespeare = data / "text" / "tinyshakespeare.txt"
    if shakespeare.is_file():
        out["shakespeare"] = [s.strip() for s in shakespeare.read_text(encoding="utf-8").splitlines() if keep(s)]
    nli = []
    for split in ("dev", "test"):
        p = data / "nli" / f"{split}.jsonl"
        if p.is_file():
            for line in p.open(encoding="utf-8"):
                rec = json.loads(line)
                nli += [rec["premise"], rec["hypothesis"]]
    if nli:
        out["nli"] = sorted({s for s in nli if keep(s)})
    summ = []
    for split in ("train", "dev", "test"):
        p = data / "summarization" / f"{split}.jsonl"
        if p.is_file():
            for line in p.open(encoding="utf-8"):
                summ += json.loads(line)["source"]
    if summ:
        out["summarization"] = [s for s in summ if keep(s)]
    news = []
    for split in ("train", "test"):
        p = data / "translation" / f"{split}.jsonl"
        if p.is_file():
            for line in p.open(encoding="utf-8"):
                rec = json.loads(line)
                news += [rec.get("en", ""), rec.get("de", "")]
    if news:
        out["news_en_de"] = [s for s in news if keep(s)]
    sms = load_sms(data)
    if sms:
        out["sms"] = [s for s in sms if keep(s)]
    return out


def load_sms(data: Path) -> list[str]:
    p = data / "sms_spam" / "SMSSpamCollection.tsv"
    if not p.is_file():
        return []
    lines = p.read_text(encoding="utf-8").splitlines()[1:]  # header: Label, SMS
    return [line.split("\t", 1)[1] for line in lines if "\t" in line]


# --- positives -----------------------------------------------------------------------------

FIRST = ["john", "maria", "wei", "fatima", "olga", "james", "anna", "luca", "sofia", "ahmed", "yuki", "liam", "emma"]
LAST = ["smith", "garcia", "zhang", "khan", "ivanova", "brown", "rossi", "mueller", "tanaka", "oconnor", "nguyen"]
DOMAINS = ["example.com", "mail.example.co.uk", "uni-berlin.de", "gmail.com", "outlook.com", "company.io",
           "dept.research.example.org", "xn--mnchen-3ya.de", "post.example.museum", "a1-telecom.at", "web.de"]


def make_email(rng: random.Random) -> str:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{f}.{last}", f"{f[0]}{last}{rng.randint(1, 99)}", f"{f}_{last}", f"{f}+news",
                        f"{f}.{last}-{rng.randint(1970, 2005)}", f"{last}%{f}", f"{f[0]}.{last[0]}.{last}",
                        f"{f.upper()}.{last.capitalize()}", f"{rng.randint(100, 9999)}{f}"])
    return f"{local}@{rng.choice(DOMAINS)}"


PHONE_REGIONS = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "BR", "JP", "AU", "CN", "MX", "ZA", "NG", "CA",
                 "CH", "SE", "PL", "KR"]
PNF = phonenumbers.PhoneNumberFormat


def random_number(rng: random.Random, region: str):
    """A random number libphonenumber calls valid: a fixed-line or mobile example with its
    last digits redrawn."""
    kind = rng.choice([phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE])
    ex = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
    nsn = str(ex.national_number)
    for _ in range(200):
        k = min(4, len(nsn) - 3)
        cand = nsn[:-k] + "".join(rng.choice("0123456789") for _ in range(k))
        num = phonenumbers.parse(f"+{ex.country_code}{cand}")
        if phonenumbers.is_valid_number(num):
            return num
    return ex


def make_phone(rng: random.Random) -> tuple[str, str]:
    """(written number, its format), national formats only for the default regions."""
    national = rng.random() < 0.45
    region = rng.choice(DEFAULT_REGIONS) if national else rng.choice(PHONE_REGIONS)
    num = random_number(rng, region)
    if national:
        text = phonenumbers.format_number(num, PNF.NATIONAL)
        if region == "US":
            d = str(num.national_number)
            text = rng.choice([text, f"{d[:3]}-{d[3:6]}-{d[6:]}", f"{d[:3]}.{d[3:6]}.{d[6:]}", d,
                               f"1-{d[:3]}-{d[3:6]}-{d[6:]}", f"{d[:3]} {d[3:6]} {d[6:]}"])
        elif rng.random() < 0.4:  # GB / DE: hyphens, or the area code in brackets
            area, _, rest = text.partition(" ")
            text = rng.choice([f"{area}-{rest.replace(' ', '')}", f"({area}) {rest}", text.replace(" ", "")])
        return text, f"national-{region}"
    intl = phonenumbers.format_number(num, PNF.INTERNATIONAL)
    style = rng.choice(["intl", "intl", "e164", "dashes", "dots", "rfc3966", "trunk", "idd"])
    if style == "trunk" and region in ("GB", "DE", "FR", "IT", "NL", "CH", "AU", "US"):
        cc, _, rest = intl.partition(" ")  # "+44 (0)20 7946 0958", "+1 (212) 555-0123"
        if region == "US":
            return f"{cc} ({rest[:3]}) {rest[4:]}", "intl-trunk"
        return (f"{cc} (0){rest}" if region != "IT" else f"{cc} {rest}"), "intl-trunk"
    if style in ("trunk", "idd"):  # dialled from Germany / the UK: 00 instead of +
        return "00" + intl[1:], "idd-00"
    if style == "e164":
        return phonenumbers.format_number(num, PNF.E164), "e164"
    if style == "dashes":
        return intl.replace(" ", "-"), "intl-dashes"
    if style == "dots":
        return intl.replace(" ", ".").replace("-", "."), "intl-dots"
    if style == "rfc3966":
        return phonenumbers.format_number(num, PNF.RFC3966)[4:], "rfc3966"  # "tel:" kept as context
    return intl, "intl"


def make_ip(rng: random.Random) -> tuple[str, str]:
    import ipaddress

    r = rng.random()
    if r < 0.5:
        a = rng.choice([10, 172, 192, rng.randint(1, 223)])
        return ".".join(str(x) for x in (a, rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254))), "ipv4"
    addr = ipaddress.IPv6Address(rng.choice([0x20010DB8 << 96, 0xFE80 << 112, 0x2A00 << 112, 0x2600 << 112])
                                 | rng.getrandbits(64) | (rng.choice([0, rng.getrandbits(16)]) << 64))
    style = rng.choice(["compressed", "exploded", "upper", "mapped"])
    if style == "exploded":
        return addr.exploded, "ipv6-full"
    if style == "upper":
        return addr.compressed.upper(), "ipv6-upper"
    if style == "mapped":
        return f"::ffff:{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}", \
            "ipv6-mapped"
    return addr.compressed, "ipv6"


CARD_BRANDS = [("visa", ["4"], 16), ("visa13", ["4"], 13), ("visa19", ["4"], 19),
               ("mastercard", ["51", "52", "53", "54", "55", "2221", "2500", "2720"], 16),
               ("amex", ["34", "37"], 15), ("discover", ["6011", "65", "644"], 16), ("jcb", ["3528", "3589"], 16),
               ("diners", ["36", "300", "305"], 14), ("unionpay", ["62"], 16), ("unionpay19", ["62"], 19),
               ("maestro", ["6759", "5018"], 19)]


def luhn_complete(body: str) -> str:
    """`body` with the digit appended that makes it pass the Luhn check."""
    for d in "0123456789":
        if luhn_ok(body + d):
            return body + d
    raise AssertionError


def card_digits(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


def group_card(d: str, sep: str) -> str:
    if len(d) == 15:
        parts = [d[:4], d[4:10], d[10:]]
    elif len(d) == 14:
        parts = [d[:4], d[4:10], d[10:]]
    else:
        parts = [d[i:i + 4] for i in range(0, 16, 4)] + ([d[16:]] if len(d) > 16 else [])
    return sep.join(parts)


def make_card(rng: random.Random) -> tuple[str, str]:
    brand, prefixes, length = rng.choice(CARD_BRANDS)
    d = card_digits(rng, rng.choice(prefixes), length)
    sep = rng.choice(["", " ", " ", "-"])
    return (group_card(d, sep) if sep else d), brand


# BBAN shapes ("a" letter, "n" digit) per country, after the SWIFT registry's formats; "c"
# (alphanumeric) positions are drawn as digits.
IBAN_BBAN = {"DE": "n18", "GB": "a4n14", "FR": "n23", "ES": "n20", "IT": "a1n22", "NL": "a4n10", "BE": "n12",
             "CH": "n17", "AT": "n16", "PL": "n24", "PT": "n21", "SE": "n20", "DK": "n14", "FI": "n14",
             "NO": "n11", "IE": "a4n14", "LU": "n16", "CZ": "n20", "HU": "n24", "GR": "n23", "TR": "n22",
             "SA": "n20"}


def iban_with_check(country: str, bban: str) -> str:
    n = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - n % 97:02d}{bban}"


def random_bban(rng: random.Random, shape: str) -> str:
    out = ""
    for kind, count in re.findall(r"([an])(\d+)", shape):
        chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if kind == "a" else "0123456789"
        out += "".join(rng.choice(chars) for _ in range(int(count)))
    return out


def group4(s: str) -> str:
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


def make_iban(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(IBAN_BBAN))
    iban = iban_with_check(country, random_bban(rng, IBAN_BBAN[country]))
    assert len(iban) == IBAN_LENGTHS[country], country
    return (group4(iban) if rng.random() < 0.6 else iban), country


MAKERS = {"email": lambda rng: (make_email(rng), "email"), "phone": make_phone, "ip_address": make_ip,
          "credit_card": make_card, "iban": make_iban}
CONTEXT = {
    "email": ["email", "e-mail:", "write to", "contact", "mailto:", "from", ""],
    "phone": ["call", "Tel:", "phone", "ring me on", "tel:", "mobile", "fax", ""],
    "ip_address": ["IP", "from", "server", "host", "address", ""],
    "credit_card": ["card", "card no.", "Visa", "paid with", "CC#", ""],
    "iban": ["IBAN", "IBAN:", "account", "Kontonummer", "pay to", ""],
}


# --- hard negatives ------------------------------------------------------------------------

def make_negative(rng: random.Random) -> tuple[str, str]:
    """(text, kind) of something none of the types is."""
    r = rng.randint
    y, m, d = r(1950, 2030), r(1, 12), r(1, 28)
    kinds = {
        "date-iso": lambda: f"{y}-{m:02d}-{d:02d}",
        "date-slash": lambda: f"{d:02d}/{m:02d}/{y}",
        "date-dots": lambda: f"{d:02d}.{m:02d}.{y}",
        "datetime": lambda: f"{y}-{m:02d}-{d:02d} {r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}",
        "time": lambda: f"{r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}",
        "time-range": lambda: f"{r(6, 11):02d}:00-{r(12, 20)}:30",
        "price": lambda: rng.choice([f"${r(1, 99999):,}.{r(0, 99):02d}", f"€{r(1, 999)},{r(0, 99):02d}",
                                     f"£{r(1000, 9999999):,}", f"USD {r(10 ** 6, 10 ** 9):,}"]),
        "isbn13": lambda: isbn13(rng),
        "isbn10": lambda: "ISBN " + isbn10(rng),
        "order": lambda: rng.choice([f"order #{r(10000, 999999)}", f"INV-{y}-{r(1, 99999):05d}",
                                     f"PO {r(1000, 9999)}-{r(10, 99)}", f"ticket {r(100000, 999999)}"]),
        "luhn-invalid": lambda: luhn_invalid(rng),
        "iban-bad-check": lambda: iban_bad(rng),
        "version": lambda: rng.choice([f"v{r(0, 9)}.{r(0, 20)}.{r(0, 20)}.{r(0, 99)}",
                                       f"version {r(1, 9)}.{r(0, 20)}.{r(0, 9)}.{r(0, 999)}",
                                       f"{r(1, 3)}.{r(0, 12)}.{r(0, 20)}"]),
        "decimal": lambda: rng.choice([f"{rng.uniform(0, 1000):.6f}", f"0.000{r(100, 999)}",
                                       f"-{rng.uniform(0, 100):.3f}", f"{rng.uniform(0, 100):.2f}%"]),
        "year": lambda: rng.choice([str(y), f"{y}-{y + r(1, 9)}", f"{y}–{str(y + 3)[2:]}"]),
        "thousands": lambda: rng.choice([f"{r(10 ** 6, 10 ** 9):,}", f"{r(10 ** 6, 10 ** 9):,}".replace(",", "."),
                                         f"{r(10 ** 6, 10 ** 9):,}".replace(",", " ")]),
        "bad-ipv4": lambda: rng.choice([f"{r(256, 999)}.{r(0, 255)}.{r(0, 255)}.{r(0, 255)}",
                                        f"{r(1, 255)}.{r(0, 255)}.{r(0, 255)}",
                                        f"{r(1, 9)}.{r(0, 9)}.{r(0, 9)}.{r(0, 9)}.{r(0, 9)}"]),
        "mac": lambda: ":".join(f"{r(0, 255):02X}" for _ in range(6)),
        "uuid": lambda: str(uuid.UUID(int=rng.getrandbits(128))),
        "coordinates": lambda: f"{rng.uniform(-90, 90):.4f}, {rng.uniform(-180, 180):.4f}",
        "at-not-email": lambda: rng.choice(["icon@2x.png", "logo@3x.jpg", f"mAP@0.{r(5, 9)}", f"Recall@{r(1, 100)}",
                                            "@" + rng.choice(FIRST), "user@localhost", f"{r(10, 99)}p.msg@150p"]),
        "scripture": lambda: f"{r(1, 20)}:{r(1, 40)}-{r(1, 40)}",
    }
    kind = rng.choice(sorted(kinds))
    return kinds[kind](), kind


def isbn13(rng: random.Random) -> str:
    body = rng.choice(["978", "979"]) + "".join(rng.choice("0123456789") for _ in range(9))
    check = (10 - sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body)) % 10) % 10
    digits = body + str(check)
    return rng.choice([digits, f"{digits[:3]}-{digits[3]}-{digits[4:6]}-{digits[6:12]}-{digits[12]}",
                       f"ISBN {digits[:3]}-{digits[3:5]}-{digits[5:9]}-{digits[9:12]}-{digits[12]}"])


def isbn10(rng: random.Random) -> str:
    body = "".join(rng.choice("0123456789") for _ in range(9))
    s = sum((10 - i) * int(c) for i, c in enumerate(body))
    check = (11 - s % 11) % 11
    digits = body + ("X" if check == 10 else str(check))
    return rng.choice([digits, f"{digits[0]}-{digits[1:4]}-{digits[4:9]}-{digits[9]}"])


def luhn_invalid(rng: random.Random) -> str:
    """A Visa, Mastercard, Amex or Discover number with its check digit changed."""
    _, prefixes, length = rng.choice([b for b in CARD_BRANDS if b[0] in ("visa", "mastercard", "amex", "discover")])
    d = card_digits(rng, rng.choice(prefixes), length)
    d = d[:-1] + str((int(d[-1]) + rng.randint(1, 9)) % 10)
    sep = rng.choice(["", " ", "-"])
    return group_card(d, sep) if sep else d


def iban_bad(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_BBAN))
    iban = iban_with_check(country, random_bban(rng, IBAN_BBAN[country]))
    i = rng.randint(4, len(iban) - 1)  # one character changed: MOD 97-10 detects every one-digit error
    c = iban[i]
    new = rng.choice([x for x in ("0123456789" if c.isdigit() else "ABCDEFGHIJKLMNOPQRSTUVWXYZ") if x != c])
    iban = iban[:i] + new + iban[i + 1:]
    return group4(iban) if rng.random() < 0.6 else iban


# --- documents -----------------------------------------------------------------------------

def token(rng: random.Random, item: str, context: str) -> tuple[str, int]:
    """`item` after its `context` phrase, maybe wrapped in brackets or followed by punctuation,
    as one unit to insert between two words; the item's offset in it."""
    wrap = rng.random()
    before, after = "", ""
    if wrap < 0.1:
        before, after = "(", ")"
    elif wrap < 0.15:
        before, after = "<", ">"
    elif wrap < 0.35:
        after = rng.choice([",", ".", ";", ":", "!"])
    if context.endswith(":"):
        lead = context + rng.choice(["", " "])
    else:
        lead = context + " " if context else ""
    lead += before
    return lead + item + after, len(lead)


def build(carriers: dict[str, list[str]], n_docs: int, seed: int) -> list[dict]:
    """`n_docs` documents of 1-4 carrier sentences (sources in turn) with 0-3 insertions each,
    60% PII and 40% hard negatives; records carry exact offsets (asserted)."""
    rng = random.Random(seed)
    sources = sorted(carriers)
    docs = []
    for i in range(n_docs):
        source = sources[i % len(sources)]
        # a sentence is a list of words; an inserted unit is one "word" (str, offset, record, positive)
        sentences: list[list] = [rng.choice(carriers[source]).split(" ") for _ in range(rng.randint(1, 4))]
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
            if rng.random() < 0.6:
                t = rng.choice(PII_TYPES)
                value, fmt = MAKERS[t](rng)
                context = "tel:" if fmt == "rfc3966" else rng.choice(CONTEXT[t])
                rec, positive = {"type": t, "format": fmt, "text": value}, True
            else:
                value, kind = make_negative(rng)
                context = rng.choice(["", "", "on", "ref", "see", "at", "no."])
                rec, positive = {"kind": kind, "text": value}, False
            unit, off = token(rng, value, context)
            words = rng.choice(sentences)
            words.insert(rng.randint(0, len(words)), (unit, off, rec, positive))
        sep = "\n" if source == "shakespeare" else " "
        parts: list[str] = []
        pos = 0
        gold: list[dict] = []
        negatives: list[dict] = []
        for si, words in enumerate(sentences):
            for wi, w in enumerate(words):
                if wi:
                    parts.append(" ")
                    pos += 1
                if isinstance(w, tuple):
                    unit, off, rec, positive = w
                    start = pos + off
                    (gold if positive else negatives).append(dict(rec, start=start, end=start + len(rec["text"])))
                    w = unit
                parts.append(w)
                pos += len(w)
            if si < len(sentences) - 1:
                parts.append(sep)
                pos += len(sep)
        text = "".join(parts)
        for rec in gold + negatives:
            assert text[rec["start"]:rec["end"]] == rec["text"], rec
        docs.append({"id": i, "source": source, "text": text, "pii": sorted(gold, key=lambda r: r["start"]),
                     "negatives": sorted(negatives, key=lambda r: r["start"])})
    return docs


# --- scoring -------------------------------------------------------------------------------

def score(docs: list[dict]) -> dict:
    tp, fp, fn, partial = Counter(), Counter(), Counter(), Counter()
    wrong_type: Counter = Counter()
    fp_examples: dict[str, list] = defaultdict(list)
    fn_examples: dict[str, list] = defaultdict(list)
    fn_formats: Counter = Counter()
    formats: Counter = Counter()
    neg_hits: Counter = Counter()
    neg_kinds: Counter = Counter()
    for doc in docs:
        text = doc["text"]
        pred = {(m.type, m.start, m.end) for m in find_pii(text)}
        gold = {(g["type"], g["start"], g["end"]) for g in doc["pii"]}
        fmt = {(g["type"], g["start"], g["end"]): g["format"] for g in doc["pii"]}
        for g in gold:
            formats[(g[0], fmt[g])] += 1
        for p in pred:
            if p in gold:
                tp[p[0]] += 1
                continue
            fp[p[0]] += 1
            overlaps = [g for g in gold if g[1] < p[2] and p[1] < g[2]]
            if any(g[0] == p[0] for g in overlaps):
                partial[p[0]] += 1
            elif overlaps:
                wrong_type[(overlaps[0][0], p[0])] += 1
            for n in doc["negatives"]:
                if n["start"] < p[2] and p[1] < n["end"]:
                    neg_hits[(n["kind"], p[0])] += 1
            if len(fp_examples[p[0]]) < 6:
                fp_examples[p[0]].append((text[p[1]:p[2]], text[max(0, p[1] - 25):p[2] + 25].replace("\n", " ")))
        for g in gold - pred:
            fn[g[0]] += 1
            fn_formats[(g[0], fmt[g])] += 1
            if len(fn_examples[g[0]]) < 6:
                context = text[max(0, g[1] - 25):g[2] + 25].replace("\n", " ")
                fn_examples[g[0]].append((text[g[1]:g[2]], fmt[g], context))
        for n in doc["negatives"]:
            neg_kinds[n["kind"]] += 1
    per = {}
    for t in PII_TYPES:
        p = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else float("nan")
        r = tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else float("nan")
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per[t] = {"gold": tp[t] + fn[t], "tp": tp[t], "fp": fp[t], "fn": fn[t], "partial": partial[t],
                  "precision": p, "recall": r, "f1": f1}
    return {"per_type": per, "wrong_type": wrong_type, "fp_examples": fp_examples, "fn_examples": fn_examples,
            "fn_formats": fn_formats, "formats": formats, "negative_hits": neg_hits, "negative_kinds": neg_kinds}


def throughput(texts: list[str], repeat: int) -> float:
    """MB/s (UTF-8) of find_pii over `texts`, best of `repeat` runs."""
    size = sum(len(t.encode("utf-8")) for t in texts)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for t in texts:
            find_pii(t)
        best = min(best, time.perf_counter() - t0)
    return size / 1e6 / best


_UK_RULE = re.compile(r"(?<![\w+])(?:0[0-9](?: ?[0-9]){9}|44(?: ?[0-9]){10})(?![\w])")


def sms_check(sms: list[str]) -> dict:
    """Real UK numbers of the SMS spam collection (found by a plain rule) against find_pii."""
    found = exact = 0
    total = 0
    misses = []
    other = Counter()
    for msg in sms:
        rule = {(m.start(), m.end()) for m in _UK_RULE.finditer(msg)}
        pred = [m for m in find_pii(msg, ("phone",))]
        spans = {(m.start, m.end) for m in pred}
        total += len(rule)
        for s, e in rule:
            if (s, e) in spans:
                exact += 1
            if any(ps < e and s < pe for ps, pe in spans):
                found += 1
            elif len(misses) < 8:
                misses.append(msg[s:e])
        for m in pred:
            if not any(s < m.end and m.start < e for s, e in rule):
                other[m.text] += 1
    return {"numbers": total, "exact": exact, "overlapping": found, "misses": misses,
            "other_phone_matches": sum(other.values()), "other_examples": other.most_common(8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--docs", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="speed: best of this many runs")
    ap.add_argument("--save", type=Path, help="write the labelled test set here (JSON Lines)")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench_pii: data folder {args.data} not found (the shared data sets: text/, nli/, "
                 "summarization/, translation/, sms_spam/); pass --data PATH")
    carriers = load_carriers(args.data)
    if not carriers:
        sys.exit(f"bench_pii: no carrier text under {args.data} (expected text/tinyshakespeare.txt, nli/, "
                 "summarization/, translation/ or sms_spam/)")
    print("carriers:", ", ".join(f"{k} {len(v)}" for k, v in carriers.items()))
    docs = build(carriers, args.docs, args.seed)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        with open(args.save, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        print(f"test set: {args.save}")
    n_gold = sum(len(d["pii"]) for d in docs)
    n_neg = sum(len(d["negatives"]) for d in docs)
    size = sum(len(d["text"].encode("utf-8")) for d in docs)
    print(f"documents: {len(docs)} ({size / 1e6:.2f} MB), inserted PII: {n_gold}, inserted hard negatives: {n_neg}, "
          f"seed {args.seed}")
    res = score(docs)
    print("\nspan-level exact match (partial overlaps count as 1 FP + 1 FN, and are also shown apart)")
    print(f"{'type':<12} {'gold':>5} {'tp':>5} {'fp':>4} {'fn':>4} {'partial':>7} {'precision':>9} "
          f"{'recall':>7} {'f1':>6}")
    for t, r in res["per_type"].items():
        print(f"{t:<12} {r['gold']:>5} {r['tp']:>5} {r['fp']:>4} {r['fn']:>4} {r['partial']:>7} "
              f"{r['precision']:>9.4f} {r['recall']:>7.4f} {r['f1']:>6.4f}")
    if res["wrong_type"]:
        print("wrong type on an inserted value (gold -> predicted):",
              ", ".join(f"{g}->{p} {n}" for (g, p), n in res["wrong_type"].items()))
    if res["negative_hits"]:
        print("hard negatives reported:",
              ", ".join(f"{k} as {t} {n}" for (k, t), n in res["negative_hits"].most_common()))
    print("hard negatives inserted:", ", ".join(f"{k} {n}" for k, n in sorted(res["negative_kinds"].items())))
    if res["fn_formats"]:
        print("misses by format:", ", ".join(f"{t}/{f} {n}/{res['formats'][(t, f)]}"
                                             for (t, f), n in res["fn_formats"].most_common()))
    for t in PII_TYPES:
        for value, ctx in res["fp_examples"].get(t, []):
            print(f"  FP {t}: {value!r} in ...{ctx!r}...")
        for value, fmt, ctx in res["fn_examples"].get(t, []):
            print(f"  FN {t} ({fmt}): {value!r} in ...{ctx!r}...")

    sms = load_sms(args.data)
    if sms:
        s = sms_check(sms)
        print(f"\nreal UK numbers in the SMS spam collection (rule-labelled): {s['numbers']}, "
              f"found as phone with exact span {s['exact']} ({s['exact'] / max(1, s['numbers']):.1%}), "
              f"overlapping {s['overlapping']} ({s['overlapping'] / max(1, s['numbers']):.1%}); "
              f"misses e.g. {s['misses']}")
        print(f"  other phone matches in the SMS messages (not by the rule): {s['other_phone_matches']}, "
              f"e.g. {s['other_examples']}")

    texts = [d["text"] for d in docs]
    print("\nspeed (MB/s of UTF-8 through find_pii, all types, one process, best of "
          f"{args.repeat}):")
    print(f"  labelled documents (every one dense with numbers): {throughput(texts, args.repeat):.1f}")
    real = [s for source in sorted(carriers) for s in carriers[source]]
    print(f"  the real carrier sentences, no insertions, in ~2 kB documents: "
          f"{throughput(chunks(' '.join(real)), args.repeat):.1f}")
    if sms:
        print(f"  the SMS spam collection as is, one message a document (real numbers): "
              f"{throughput(sms, args.repeat):.1f}")
    shakespeare = args.data / "text" / "tinyshakespeare.txt"
    if shakespeare.is_file():
        prose = chunks(shakespeare.read_text(encoding="utf-8"))
        print(f"  clean prose (tinyshakespeare.txt in ~2 kB documents): {throughput(prose, args.repeat):.1f}")


def chunks(text: str, size: int = 2000) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


if __name__ == "__main__":
    main()
