"""Personal information in text for `llmkit data curate`: `find_pii` and `redact`.

Five kinds (`PII_TYPES`), each a cheap candidate pattern followed by a validator, because a
pattern alone cannot tell a card number from an order number:

* ``email``: the practical subset of RFC 5322's addr-spec that the HTML living standard's
  `<input type=email>` rule also uses, a dot-atom local part of letters, digits and ``_ % + -``
  of at most 64 characters (RFC 5321 sec. 4.5.3.1.1; letters of alphabetic scripts too, as
  RFC 6531 allows, but not of CJK, kana or Hangul, which are written without spaces), and
  an ASCII domain of LDH labels (RFC 1035 sec. 2.3.1; IDNs as punycode) ending in an
  alphabetic TLD. File names such as ``icon@2x.png`` are rejected: a TLD that is a common
  file extension and not a delegated top-level domain, or a first label like ``2x``. The
  search starts at each "@" and walks outwards, so it is linear in the text.
* ``phone``: Google's libphonenumber through its Python port `phonenumbers`
  (`PhoneNumberMatcher`, leniency VALID: the number must be valid in its numbering plan, not
  merely possible). International numbers written with ``+CC`` are found whatever the
  region; numbers in national format (and ``00CC``/``011CC`` international dialling) only
  for the `regions` given (default `DEFAULT_REGIONS`). The matcher is pure Python (a
  quarter of a millisecond a call), so it only sees windows of digits and phone punctuation
  holding at least `MIN_PHONE_DIGITS` digits, with 8 characters of context either side
  (its letter, currency and time-stamp checks look at them), region by region until every
  digit of the window is in a number, and only for a region whose numbers could begin
  there (`_region_gate`). What it accepts is then held to how numbers are written
  (`_written_ok`): national numbers with their trunk prefix ("030 1234567": to
  libphonenumber the bare German "1649" is valid), North American ones grouped 3-3-4, a
  country code without "+" only in 11 digits or more. Rejected as well: windows or matches
  that are dates, dotted quads or decimals ("02.01.1990" is a valid German number,
  "580.206.53.85" an Oklahoma one), matches cut out of a longer number or running into a
  decimal or a time (then tried once without their last group), groups of a hyphenated
  token (a UUID), numbers right after ``ISBN``/``ISSN``/``DOI`` (``0-306-40615-2`` is a
  Berlin number). An extension ("ext. 12") is left out of the span. Numbers of other
  regions written nationally, and two numbers written side by side with only a space
  between them, are the known misses (bench/bench_pii.py).
* ``ip_address``: IPv4 in dotted-quad and IPv6 in RFC 4291 sec. 2.2 text form (``::``
  compression, embedded IPv4), each checked by the standard library's `ipaddress` (which
  rejects ``999.1.1.1`` and, since Python 3.9.5, octets with leading zeros). A dotted quad
  glued to a letter (``v1.2.3.4``), inside a longer dotted number (``1.2.3.4.5``) or after
  ``version``/``release``/``build``/``ver``/``v`` is a version string, not an address.
* ``credit_card``: 13-19 digits, contiguous or in the printed groupings (4-4-4-4[-3],
  4-4-4-1, Amex 4-6-5, Diners 4-6-4) with one kind of separator (space or hyphen), that
  pass the Luhn check (ISO/IEC 7812-1 annex B) and start with an issuer prefix of a major
  scheme of a length that scheme issues (`CARD_SCHEMES`: Visa, Mastercard, Amex, Discover,
  JCB, Diners, UnionPay, Maestro, Mir). The prefix test rejects ISBN-13s (978/979) and
  most Luhn-valid accidents; cards of other schemes (RuPay, Troy, ...) are not found.
* ``iban``: ISO 13616 IBANs, upper-case, compact or in groups of four separated by single
  spaces (the paper format of the standard): the country's length from the SWIFT IBAN
  registry (`IBAN_LENGTHS`) and the ISO 7064 MOD 97-10 check (move the first four characters
  to the end, letters to numbers A=10 .. Z=35, the number mod 97 is 1; check digits 02-98).

Overlaps (an IBAN's digits look like a phone number, an e-mail address may hold a card
number) are resolved by one deterministic rule: candidates are taken in the order of
`PRIORITY` (email, whose "@" and domain make it the most specific, and which must go whole;
then the checksum-validated iban and credit_card; ip_address; phone, the loosest, last), then
longer first, then earlier first; a candidate that overlaps one already taken is dropped. The
result is sorted by start and never overlaps. Phone numbers are moreover not looked for in
the digits of card- or IBAN-shaped strings that fail their checks (16 digits in fours are
no phone number either: E.164 numbers have at most 15 digits).

Offsets are Python string indices (code points), so ``text[m.start:m.end] == m.text``.
Digits are ASCII digits. Speed: cheap pre-checks (no ``@``, no e-mail; fewer than 7 ASCII
digits, no phones; fewer than 13, no cards; no ``:`` followed by a hex digit or colon, no
IPv6), patterns that begin with a character class (the regex engine skips ahead by it) and
e-mail found from each "@" keep prose at ~100 MB/s and ordinary text with numbers at tens
of MB/s; text dense with digits runs at the matcher's pace (a few MB/s; tables of numbers
slower still, which the quality filters before PII in `llmkit data curate` mostly remove).
bench/bench_pii.py measures precision, recall and throughput on real sentences with
inserted PII and hard negatives.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from llmkit.errors import LLMKitError

PII_TYPES = ("email", "phone", "ip_address", "credit_card", "iban")
PLACEHOLDERS = {t: f"<{t.upper()}>" for t in PII_TYPES}
PRIORITY = ("email", "iban", "credit_card", "ip_address", "phone")  # overlap winner first
DEFAULT_REGIONS = ("US", "GB", "DE")  # regions whose national-format numbers are found
MIN_PHONE_DIGITS = 7  # digits a window needs before libphonenumber looks at it

_RANK = {t: i for i, t in enumerate(PRIORITY)}
_DIGITS = "0123456789"


@dataclass(frozen=True)
class PIIMatch:
    """One piece of personal information: its kind, ``text[start:end]`` and that text."""

    type: str
    start: int
    end: int
    text: str


def check_types(types: Iterable[str] | str) -> tuple[str, ...]:
    """The PII kinds named by `types` (names or one comma-separated string), without repeats,
    in the order given; an unknown name is an LLMKitError listing the valid ones."""
    names = types.split(",") if isinstance(types, str) else list(types)
    out: list[str] = []
    for name in names:
        t = str(name).strip().lower()
        if t not in PLACEHOLDERS:
            raise LLMKitError(f"unknown PII type '{str(name).strip()}' (valid: {', '.join(PII_TYPES)})")
        if t not in out:
            out.append(t)
    if not out:
        raise LLMKitError(f"no PII types given (valid: {', '.join(PII_TYPES)})")
    return tuple(out)


def find_pii(text: str, types: Iterable[str] = PII_TYPES, *,
             regions: Sequence[str] = DEFAULT_REGIONS) -> list[PIIMatch]:
    """The personal information of the kinds `types` in `text`, sorted by start and not
    overlapping (see the module docstring for what each kind is and the overlap rule).
    Asking for fewer kinds only filters: ``find_pii(t, ["phone"])`` is the phones of
    ``find_pii(t)`` (a card number is no phone whether cards are asked for or not).
    `regions`: ISO 3166 codes whose national-format phone numbers are found (international
    ones always are)."""
    wanted = PII_TYPES if types is PII_TYPES else check_types(types)
    if regions is not DEFAULT_REGIONS:
        _check_regions(regions)
    if not text:
        return []
    # the kinds asked for and those that win overlaps against them
    last = max(_RANK[t] for t in wanted)
    run = PRIORITY[:last + 1]
    spans: list[tuple[int, int, str]] = []
    if "@" in text:  # e-mail is always first in PRIORITY
        spans += _emails(text)
    digits = sum(map(text.count, _DIGITS))  # ASCII digits: C-speed counts, no regex
    shapes: list[tuple[int, int]] = []  # card- and IBAN-shaped strings, valid or not: no phones inside
    if digits >= 2 and "iban" in run:
        spans += _ibans(text, shapes)
    if digits >= 13 and "credit_card" in run:
        spans += _cards(text, shapes)
    if "ip_address" in run:
        if digits >= 4 and "." in text:
            spans += _ipv4(text)
        if text.count(":") >= 2:
            spans += _ipv6(text)
    if digits >= MIN_PHONE_DIGITS and "phone" in run:
        spans += _phones(text, regions, [(s, e) for s, e, _ in spans] + shapes)
    if not spans:
        return []
    return [PIIMatch(t, s, e, text[s:e]) for s, e, t in _resolve(spans) if t in wanted]


def redact(text: str, matches: list[PIIMatch]) -> str:
    """`text` with each match replaced by its kind's placeholder (``<EMAIL>``, ``<PHONE>``,
    ``<IP_ADDRESS>``, ``<CREDIT_CARD>``, ``<IBAN>``). `matches` are `find_pii`'s for this
    text: a match that overlaps another or whose text is not at its offsets is a ValueError."""
    parts: list[str] = []
    pos = 0
    for m in sorted(matches, key=lambda m: m.start):
        if m.start < pos or text[m.start:m.end] != m.text or m.type not in PLACEHOLDERS:
            raise ValueError(f"match {m} overlaps another or is not in this text")
        parts += (text[pos:m.start], PLACEHOLDERS[m.type])
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts)


def _resolve(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping spans, sorted by start: by PRIORITY, then longer, then earlier."""
    spans = sorted(set(spans), key=lambda c: (_RANK[c[2]], c[0] - c[1], c[0]))
    starts: list[int] = []  # kept spans, sorted by start (they never overlap each other)
    kept: list[tuple[int, int, str]] = []
    for c in spans:
        i = bisect_left(starts, c[0])
        if (i > 0 and kept[i - 1][1] > c[0]) or (i < len(kept) and kept[i][0] < c[1]):
            continue
        starts.insert(i, c[0])
        kept.insert(i, c)
    return kept


# --- e-mail --------------------------------------------------------------------------------

_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_DOMAIN_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63})(?![A-Za-z0-9-]|\.[A-Za-z0-9])")
# File extensions that are not delegated TLDs (so "logo@2x.png" or "a@b.pdf" is a file name).
_FILE_EXTENSIONS = frozenset("png jpg jpeg gif svg webp bmp tif tiff ico heic avif psd pdf css js json "
                             "html htm txt csv xml yaml yml toml py ipynb".split()) - {"py"}  # .py is Paraguay
_SCALE_LABEL_RE = re.compile(r"[0-9]+x\.", re.IGNORECASE)  # "@2x." high-DPI image names


def _local_char(c: str) -> bool:
    """A character of a local part: the ASCII ones, or a letter or digit of an alphabetic
    script (RFC 6531 allows UTF-8; scripts from U+2E80 on, CJK and kana and Hangul, are
    written without spaces, so a letter there belongs to the sentence, not the address)."""
    return c in _LOCAL_CHARS or ("\x80" <= c < "\u2e80" and c.isalnum())


def _emails(text: str) -> list[tuple[int, int, str]]:
    """Anchored on each "@" (never a regex scan of the whole text, which is quadratic on long
    runs of local-part characters): the local part to its left, the domain to its right."""
    out = []
    at = text.find("@")
    while at != -1:
        start = at
        while start > 0 and at - start < 64 and _local_char(text[start - 1]):
            start -= 1
        too_long = start > 0 and _local_char(text[start - 1])  # over 64 characters: not an address
        while start < at and text[start] == ".":
            start += 1  # a dot-atom does not begin with a dot
        local = text[start:at]
        if (local and not too_long and not local.endswith(".") and ".." not in local
                and not (start > 0 and text[start - 1] == "@")):
            m = _DOMAIN_RE.match(text, at + 1)
            if (m is not None and m.end() - at - 1 <= 253 and m.group(1).lower() not in _FILE_EXTENSIONS
                    and not _SCALE_LABEL_RE.match(text, at + 1)):
                out.append((start, m.end(), "email"))
        at = text.find("@", at + 1)
    return out


# --- IP addresses --------------------------------------------------------------------------

# Patterns begin with a character class and look behind only after it: the regex engine then
# skips ahead over the text by that class (a leading lookbehind costs 3x on prose).
_IPV4_RE = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?!\w|\.[0-9])")
_VERSION_RE = re.compile(r"\b(?:version|ver|release|rel|build|v)\.?\s*\Z", re.IGNORECASE)
# Hex groups and colons with at least two colons and one hex digit; the last group may be the
# first octet of an embedded IPv4 address (RFC 4291 sec. 2.2, form 3).
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)(?=[0-9A-Fa-f:]*[0-9A-Fa-f])"
    r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}(?!\w|:[0-9A-Fa-f:]|\.[0-9])")


def _ipv4(text: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _IPV4_RE.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if not _VERSION_RE.search(text, max(0, m.start() - 12), m.start()):
            out.append((m.start(), m.end(), "ip_address"))
    return out


_IPV6_TRIGGER_RE = re.compile(r":[0-9A-Fa-f:]")  # a literal first character: scanned at GB/s
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:")
_IPV6_RUN_RE = re.compile(r"[0-9A-Fa-f:]*")


def _ipv6(text: str) -> list[tuple[int, int, str]]:
    """Matched only where a colon is followed by a hex digit or a colon, from the start of that
    run of hex digits and colons (found by walking back at most 40 characters): only a run's
    first character can start an address, so each run is tried once (linear in the text)."""
    out = []
    done = 0
    for t in _IPV6_TRIGGER_RE.finditer(text):
        p = t.start()
        if p < done:
            continue
        start = p
        while start > 0 and p - start < 40 and text[start - 1] in _IPV6_CHARS:
            start -= 1
        done = _IPV6_RUN_RE.match(text, p).end()
        m = _IPV6_RE.match(text, start)
        if m is None:
            continue
        done = max(done, m.end())
        s = m.group()
        if s.endswith(":") and not s.endswith("::"):
            s = s[:-1]  # "address fe80::1: ..." - the colon is the sentence's
        if "::" not in s and s.count(":") < 6:
            continue  # uncompressed needs 8 groups (6 colons with an IPv4 tail): "12:30:45" is a time
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue
        out.append((m.start(), m.start() + len(s), "ip_address"))
    return out


# --- payment cards -------------------------------------------------------------------------

_CARD_RE = re.compile(
    r"[0-9](?<![\w.,+-][0-9])(?:"
    r"[0-9]{12,18}"
    r"|[0-9]{3}(?P<s>[ -])[0-9]{4}(?P=s)[0-9]{4}(?P=s)(?:[0-9]{4}(?P<tail>(?P=s)[0-9]{3})?|[0-9])"
    r"|[0-9]{3}(?P<a>[ -])[0-9]{6}(?P=a)[0-9]{4,5}"
    r")(?![\w]|[.,]?[0-9]|-[0-9])")
_13_19, _14_19, _16_19 = tuple(range(13, 20)), tuple(range(14, 20)), tuple(range(16, 20))
# (first digits low, high, card lengths): issuer identification numbers of the major schemes
# (ISO/IEC 7812; the schemes' published ranges as collected by e.g. Wikipedia's "Payment card
# number" table).
CARD_SCHEMES: dict[str, tuple[tuple[int, int, tuple[int, ...]], ...]] = {
    "visa": ((4, 4, (13, 16, 19)),),
    "mastercard": ((51, 55, (16,)), (2221, 2720, (16,))),
    "amex": ((34, 34, (15,)), (37, 37, (15,))),
    "discover": ((6011, 6011, _16_19), (644, 649, _16_19), (65, 65, _16_19)),
    "jcb": ((3528, 3589, _16_19),),
    "diners": ((300, 305, _14_19), (3095, 3095, _14_19), (36, 36, _14_19), (38, 39, _16_19)),
    "unionpay": ((62, 62, _16_19),),
    "maestro": ((5018, 5018, _13_19), (5020, 5020, _13_19), (5038, 5038, _13_19), (5893, 5893, _13_19),
                (6304, 6304, _13_19), (6759, 6759, _13_19), (6761, 6763, _13_19)),
    "mir": ((2200, 2204, _16_19),),
}
_CARD_RANGES = tuple((len(str(lo)), lo, hi, lengths) for ranges in CARD_SCHEMES.values()
                     for lo, hi, lengths in ranges)


def luhn_ok(number: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits: from the right, every second digit
    doubled (minus 9 above 9), the sum a multiple of 10 (ISO/IEC 7812-1 annex B)."""
    total = 0
    for i, c in enumerate(reversed(number)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_scheme_ok(number: str) -> bool:
    """Whether `number` (digits) starts with a major scheme's issuer prefix and has a length
    that scheme issues (`CARD_SCHEMES`)."""
    n = len(number)
    return any(lo <= int(number[:k]) <= hi and n in lengths for k, lo, hi, lengths in _CARD_RANGES)


def _cards(text: str, shapes: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Valid card numbers, none inside the IBAN-shaped `shapes` found before; the spans of
    grouped candidates that fail go to `shapes` too (16 digits in fours are no phone number
    either: E.164 numbers have at most 15). After a failed candidate the search goes on from
    its next character (the next group may begin a card)."""
    out = []
    ibans = sorted(shapes)
    starts = [s for s, _ in ibans]
    pos = 0
    while True:
        m = _CARD_RE.search(text, pos)
        if m is None:
            return out
        pos = m.start() + 1
        i = bisect_left(starts, m.end())
        if any(e > m.start() for _, e in ibans[max(0, i - 4):i]):
            continue  # the groups of an IBAN-shaped string ("DK39 3695 5568 ..."), valid or not
        ends = [m.end()] if m.group("tail") is None else [m.end(), m.start("tail")]  # 4-4-4-4-3, else 4-4-4-4
        for e in ends:
            digits = text[m.start():e].replace(" ", "").replace("-", "")
            if card_scheme_ok(digits) and luhn_ok(digits):
                out.append((m.start(), e, "credit_card"))
                pos = e
                break
        else:
            if m.group("s") or m.group("a"):
                shapes.append(m.span())


# --- IBAN ----------------------------------------------------------------------------------

# IBAN length by country: SWIFT's IBAN registry (ISO 13616 registration authority).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_IBAN_RE = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z][0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)"
    r"(?![A-Za-z0-9])")


def iban_ok(compact: str) -> bool:
    """The ISO 13616 check of an upper-case IBAN without spaces: its country's registered
    length, check digits 02-98, and MOD 97-10 (ISO 7064) of the rearranged number is 1."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum() or not compact.isascii() \
            or not compact[2:4].isdigit() or not "02" <= compact[2:4] <= "98":
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ibans(text: str, shapes: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Valid IBANs; the IBAN-shaped spans go to `shapes` (their digits are no card or phone
    number): the valid IBAN's own span, or the whole candidate when it fails. A failed
    candidate may have run on into a real IBAN ("... 4030 IBAN CH77 3653 ..." reads as groups
    of four), so the search goes on from its next character, not from its end."""
    out = []
    pos = 0
    while True:
        m = _IBAN_RE.search(text, pos)
        if m is None:
            return out
        s = m.group()
        length = IBAN_LENGTHS.get(s[:2])
        end = None
        if length is not None and " " in s:  # grouped: may run on into more groups; cut at the length
            taken = 0
            for i, c in enumerate(s):
                taken += c != " "
                if taken == length:
                    if i + 1 == len(s) or s[i + 1] == " ":  # (not inside a group of four)
                        end = m.start() + i + 1
                    break
        elif length == len(s):
            end = m.end()
        if end is not None and iban_ok(text[m.start():end].replace(" ", "")):
            out.append((m.start(), end, "iban"))
            shapes.append((m.start(), end))
            pos = end
        else:
            shapes.append(m.span())
            pos = m.start() + 1


# --- phone numbers -------------------------------------------------------------------------

_PHONE_WINDOW_RE = re.compile(r"[0-9][0-9 ()./\-\u00a0\u2010-\u2013]*[0-9]\)?")  # its "+(" lead: _lead
_PHONE_SKIP_RE = re.compile(r"\b(?:isbn(?:-1[03])?|issn|doi)\s*:?\s*\Z", re.IGNORECASE)
# Windows, or matches, that are a date, a dotted quad or a decimal, not a number: libphonenumber's
# own date filters miss dotted dates ("02.01.1990" is a valid German number to it), and
# "580.206.53.85" is a valid Oklahoma one.
_NOT_PHONE_RE = re.compile(r"(?:[0-9]{1,2}([./-])[0-9]{1,2}\1(?:[0-9]{2}|[0-9]{4})"
                           r"|[0-9]{4}([./-])[0-9]{1,2}\2[0-9]{1,2}"
                           r"|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|-?[0-9]+\.[0-9]+)\Z")
_DATE_IN_RE = re.compile(r"(?<![0-9.])(?:0?[1-9]|[12][0-9]|3[01])([./])(?:0?[1-9]|1[0-2])\1(?:19|20)[0-9]{2}"
                         r"(?![0-9]|\.[0-9])"
                         r"|(?<![0-9])(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])(?![0-9])")
_DECIMAL_TAIL_RE = re.compile(r"\s[0-9]+[.,][0-9]+\Z")  # "030 125864 0.000397": a number, then a decimal
_SENTENCE_STOP_RE = re.compile(r"[.,;] ")
_DECIMAL_HEAD_RE = re.compile(r"[0-9]+[.,][0-9]+\s")  # "0.5 30 1234567": a decimal, then a number
_DIGIT_RUN_RE = re.compile(r"[0-9]+")
_SEPARATORS_RE = re.compile(r"[^0-9]+")
# How North American numbers are grouped when written without "+1": 2125550123, 212-555-0123,
# (212) 555 0123, 1-212-555-0123, 212 5550123 (digit-group lengths).
_NANP_GROUPS = {(10,), (3, 3, 4), (1, 3, 3, 4), (3, 7), (1, 10), (11,), (1, 3, 7)}
# A window hyphenated into a longer token on both sides is one of its groups ("a0979add-0346-8895-bdfd").
_HYPHEN_BEFORE_RE = re.compile(r"[A-Za-z0-9]-")
_HYPHEN_AFTER_RE = re.compile(r"-[A-Za-z0-9]")
_CONTEXT = 8  # characters either side of a window that the matcher sees (its date/time checks)


def _ndigits(text: str, start: int, end: int) -> int:
    return sum(text.count(d, start, end) for d in _DIGITS)


def _check_regions(regions: Sequence[str]) -> None:
    import phonenumbers

    bad = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
    if bad or isinstance(regions, str):
        raise LLMKitError(f"unknown phone region(s) {bad or regions!r}: give ISO 3166 alpha-2 codes "
                          "that libphonenumber knows, e.g. US GB DE")


def _written_ok(raw: str, number, region: str) -> bool:
    """Whether a number the matcher found reads as people write it: at least MIN_PHONE_DIGITS
    digits and, in national format, with the region's trunk prefix ("030 1234567", not
    "301234567": libphonenumber accepts the bare form for Germany, which makes decimals and
    parts of longer numbers valid). North American numbers are written without their "1" but
    grouped 3-3-4 (`_NANP_GROUPS`: "51.4999 2011" is no Montreal number); a
    country code without its "+" (447911123456) needs 11 digits or more ("498 765 601" is a
    number with thousands separators, not +49 8765601)."""
    import phonenumbers

    digits = "".join(c for c in raw if c.isdigit())
    if len(digits) < MIN_PHONE_DIGITS:
        return False
    cc = number.country_code
    if raw.lstrip("(").startswith("+"):
        return True
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None or meta.country_code != cc:
        return True  # international dialling (00 44 ..., 011 44 ...)
    if cc == 1:
        return tuple(map(len, _DIGIT_RUN_RE.findall(raw))) in _NANP_GROUPS
    if digits == f"{cc}{number.national_number}" or digits.startswith(f"{cc}0"):
        return len(digits) >= 11
    return not meta.national_prefix or digits.startswith(meta.national_prefix)


def _phones(text: str, regions: Sequence[str], claimed: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Numbers libphonenumber finds in windows of digits and phone punctuation, minus the parts
    of windows in `claimed` spans (kinds that win overlaps, card- and IBAN-shaped strings)."""
    out: list[tuple[int, int, str]] = []
    claimed = sorted(claimed)
    starts = [s for s, _ in claimed]
    for w in _PHONE_WINDOW_RE.finditer(text):
        ws, we = w.span()
        if we - ws < MIN_PHONE_DIGITS or _ndigits(text, ws, we) < MIN_PHONE_DIGITS:
            continue
        ws = _lead(text, ws)
        i = bisect_left(starts, we)
        inside = [(s, e) for s, e in claimed[max(0, i - 8):i] if e > ws]
        if not inside:
            _phone_window(text, ws, we, regions, out)
            continue
        pos = ws  # the window's pieces outside the claimed spans, each cut to a window again
        for s, e in inside + [(we, we)]:
            if s > pos:
                for sub in _PHONE_WINDOW_RE.finditer(text, pos, s):
                    if _ndigits(text, *sub.span()) >= MIN_PHONE_DIGITS:
                        _phone_window(text, max(pos, _lead(text, sub.start())), sub.end(), regions, out)
            pos = max(pos, e)
    return out


_NANP_SHAPE = r"(?<![0-9])(?:1[ .-]?)?\(?[2-9][0-9]{2}\)?[ .-]?[2-9][0-9]{2}[ .-]?[0-9]{4}(?![0-9])"
_GATES: dict[str, Optional[re.Pattern]] = {}


def _region_gate(region: str) -> Optional[re.Pattern]:
    """A cheap pattern a window must contain before the region's (slow) matcher is run on it:
    a "+", or where a group begins, what a number that `_written_ok` accepts can begin with: a
    dialling prefix (which starts with "0" nearly everywhere; "011" in North America), the
    national trunk prefix, or the country code; for North America the 3-3-4 shape itself.
    None (always run) for regions without a trunk prefix."""
    if region not in _GATES:
        import phonenumbers

        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if meta is None:
            _GATES[region] = None
        elif meta.country_code == 1:
            _GATES[region] = re.compile(r"\+|(?<![0-9])011|" + _NANP_SHAPE)
        elif meta.national_prefix:
            starts = sorted({"0", re.escape(meta.national_prefix), str(meta.country_code)})
            _GATES[region] = re.compile(r"\+|(?<![0-9])(?:" + "|".join(starts) + ")")
        else:
            _GATES[region] = None
    return _GATES[region]


def _lead(text: str, start: int) -> int:
    """`start` moved back over a window's leading "+" and "(" characters."""
    while start > 0 and text[start - 1] in "+(":
        start -= 1
    return start


def _phone_window(text: str, ws: int, we: int, regions: Sequence[str], out: list, retry: bool = True) -> None:
    """The numbers of the window text[ws:we] (libphonenumber's matcher over it and a little
    context, region by region until every digit is in a number) appended to `out`. A match
    that runs into a following decimal or time ("030 125864 0.5", "030-122112 08:00") is tried
    once more without its last group; so is one whose last group looks like a small number
    after it ("07400 122716 16 replies", "+49.30.128621 40 miles"), kept if that finds nothing."""
    import phonenumbers

    chunk = text[ws:we]
    if _NOT_PHONE_RE.match(chunk.strip("()")) or (chunk.isdigit() and len(chunk) > 15 and chunk[0] != "0") \
            or (ws >= 2 and _HYPHEN_BEFORE_RE.match(text, ws - 2) and _HYPHEN_AFTER_RE.match(text, we)):
        return  # a date, a decimal, too long for E.164 without a dialling prefix, a token's part
    digits = _ndigits(text, ws, we)
    lo, hi = max(0, ws - _CONTEXT), min(len(text), we + (_CONTEXT if retry else 0))
    window = text[lo:hi]
    found: set[tuple[int, int]] = set()
    tentative: set[tuple[int, int]] = set()  # kept unless the shorter reading finds a number
    shorter = None  # where such a match would end without its last group
    for region in regions:
        gate = _region_gate(region)
        if gate is not None and not gate.search(chunk):
            continue  # nothing here that region's numbers could begin with
        for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID):
            raw, s = m.raw_string, lo + m.start
            if m.number.extension:  # "... ext. 12", "... INT32": the span ends with the number proper
                j = raw.rfind(m.number.extension)
                while j > 0 and not raw[j - 1].isdigit():
                    j -= 1
                raw = raw[:j]
            e = s + len(raw)
            if e <= ws or s >= we:
                continue  # in the context only: its own window finds it
            cut = raw.rstrip().rfind(" ")
            stop = _SENTENCE_STOP_RE.search(raw)
            if stop is not None:  # "030 120354. 1405, 1680": the number ended with the sentence
                shorter = s + stop.start()
                continue
            if _DECIMAL_TAIL_RE.search(raw) or (e + 1 < len(text) and text[e] in ".,:" and text[e + 1].isdigit()):
                if cut > 0:
                    shorter = s + cut
                continue
            if not _written_ok(raw, m.number, region) or _NOT_PHONE_RE.match(raw.strip("()")) \
                    or _DATE_IN_RE.search(raw) or _DECIMAL_HEAD_RE.match(raw) or (s > 0 and text[s - 1].isdigit()) \
                    or (s > 1 and text[s - 1] in ".," and text[s - 2].isdigit()):
                continue  # part of a longer number, or holding a date
            if text[s] == "(" and text.count("(", s, e) > text.count(")", s, e):
                s += 1  # "(+44 20 ...)": the bracket wraps the number, it is not "(020) ..."
                while text[s].isspace():
                    s += 1  # ":( +61 ...": a smiley's bracket
            if retry and cut > 0 and _small_tail(raw):
                shorter = s + cut if text[s] != "(" or raw[0] == "(" else s + cut - 1
                tentative.add((s, e))
                continue
            found.add((s, e))
        if (found or tentative) and sum(_ndigits(text, s, e) for s, e in found | tentative) >= digits:
            break  # every digit of the window is in a number: other regions add nothing
    tentative = {t for t in tentative if not any(t[0] <= s and e <= t[1] for s, e in found)}  # read shorter already
    if retry and shorter is not None and not any(s < shorter and shorter <= e for s, e in found):
        sub = _PHONE_WINDOW_RE.search(text, ws, shorter)
        if sub is not None and _ndigits(text, *sub.span()) >= MIN_PHONE_DIGITS:
            again: list = []
            _phone_window(text, max(ws, _lead(text, sub.start())), sub.end(), regions, again, retry=False)
            if again:
                tentative = set()
            out += again
    for s, e in found | tentative:
        if not _PHONE_SKIP_RE.search(text, max(0, s - 12), s):
            out.append((s, e, "phone"))


def _small_tail(raw: str) -> bool:
    """Whether the last digit group of a match reads as a separate small number: one or two
    digits after a group of five or more, or after a separator unlike the others."""
    groups = _DIGIT_RUN_RE.findall(raw)
    if len(groups) < 2 or len(groups[-1]) > 2:
        return False
    seps = _SEPARATORS_RE.findall(raw.lstrip("+("))
    return len(groups[-2]) >= 5 or (len(seps) >= 2 and seps[-1] != seps[-2])
