import hashlib

import pytest

from phonelm.text import BOS, EOS, PAD, UNK, VOCAB, Phonemizer, TextError, decode, normalize


@pytest.fixture(scope="module")
def g2p():
    return Phonemizer()


def test_vocabulary_is_stable():
    # Changing the vocabulary silently would invalidate every cache and checkpoint: pin it.
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert VOCAB[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert len(VOCAB) == len(set(VOCAB)) == 78
    assert hashlib.sha256("|".join(VOCAB).encode()).hexdigest()[:12] == "69f50e1ce7d1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello World", "hello world"),
        ("I have $250.", "i have two hundred fifty dollars."),
        ("It cost $3.50!", "it cost three dollars, fifty cents!"),
        ("Dr. Smith met Mrs. Jones.", "doctor smith met misess jones."),
        ("On the 21st of Jan. 1999", "on the twenty first of january nineteen ninety nine"),
        ("See No. 5 & more", "see number five and more"),
        ("I said no.", "i said no."),
        ("about 12% more", "about twelve percent more"),
        ("at 10:30; then 9:05", "at ten thirty, then nine oh five"),
        ("a well-known \u201cfact\u201d (really)", "a well known fact really"),
        ("Caf\u00e9 na\u00efve", "cafe naive"),
        ("wait -- what...", "wait, what."),
        ("It's 1,000 miles", "it's one thousand miles"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text", ["", "   \n\t", None])
def test_empty_text_is_an_error(text):
    with pytest.raises(TextError, match="empty text"):
        normalize(text)


@pytest.mark.parametrize(("text", "bad"), [("hello \u4f60\u597d", "\u4f60"), ("#1 fan", "#")])
def test_unspeakable_characters_are_reported(text, bad):
    with pytest.raises(TextError, match="cannot speak") as err:
        normalize(text)
    assert bad in str(err.value) and text in str(err.value)


def test_no_words_is_an_error():
    with pytest.raises(TextError, match="no speakable words"):
        normalize("... !!")


def test_phonemes_with_word_boundaries_and_punctuation(g2p):
    out = g2p("Hello, world!")
    assert out.tokens == ["HH", "AH0", "L", "OW1", ",", "_", "W", "ER1", "L", "D", "!"]
    assert decode(out.ids) == out.tokens
    assert min(out.ids) > UNK  # never a reserved id


def test_out_of_dictionary_word_is_predicted(g2p):
    tokens = g2p("blorptastic").tokens
    assert tokens and all(t in VOCAB for t in tokens) and "_" not in tokens


def test_frontend_runs_offline_and_says_how(g2p):
    g2p("test")
    assert g2p.tagger in {"fixed-noun", "nltk-averaged-perceptron"}
    assert len(g2p.version) == 16
