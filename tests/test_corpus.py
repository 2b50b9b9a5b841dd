import pytest

from phonelm.corpus import (
    Corpus,
    CorpusError,
    EmbeddedSettings,
    build_embedded,
    read_ljspeech,
    split_of,
)
from phonelm.sentences import sentences


def test_reader_on_ljspeech_layout(ljspeech_fixture):
    corpus = read_ljspeech(ljspeech_fixture)
    assert len(corpus.items) == 6 and corpus.skipped == []
    first = corpus.items[0]
    assert first.id == "T-000" and first.text == "The old clock stopped at noon."
    assert first.wav.is_file()


def test_malformed_line_names_file_and_line(ljspeech_fixture):
    meta = ljspeech_fixture / "metadata.csv"
    lines = meta.read_text().splitlines()
    lines.insert(2, "T-999 has no separators")
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"metadata.csv:3: expected 'id\|text\|normalized_text'"):
        read_ljspeech(ljspeech_fixture)


def test_duplicate_id_is_an_error(ljspeech_fixture):
    meta = ljspeech_fixture / "metadata.csv"
    meta.write_text(meta.read_text() + "T-000|again|again\n")
    with pytest.raises(CorpusError, match=r":7: duplicate id 'T-000'"):
        read_ljspeech(ljspeech_fixture)


def test_missing_wav_is_skipped_and_reported(ljspeech_fixture):
    (ljspeech_fixture / "wavs" / "T-002.wav").unlink()
    corpus = read_ljspeech(ljspeech_fixture)
    assert [u.id for u in corpus.items] == ["T-000", "T-001", "T-003", "T-004", "T-005"]
    assert corpus.skipped[0]["id"] == "T-002" and "missing audio" in corpus.skipped[0]["reason"]


def test_missing_metadata_says_what_is_expected(tmp_path):
    with pytest.raises(CorpusError, match="LJSpeech-layout"):
        read_ljspeech(tmp_path)


def test_fingerprint_changes_with_the_data(ljspeech_fixture):
    before = read_ljspeech(ljspeech_fixture).fingerprint()
    assert read_ljspeech(ljspeech_fixture).fingerprint() == before
    meta = ljspeech_fixture / "metadata.csv"
    meta.write_text(meta.read_text().replace("noon", "night"))
    assert read_ljspeech(ljspeech_fixture).fingerprint() != before


def test_splits_are_deterministic_text_disjoint_and_sized():
    texts = sentences(2000, seed=3)
    splits = [split_of(t) for t in texts]
    assert splits == [split_of(t) for t in texts]
    # The same words (casing, punctuation aside) always land in the same split.
    assert split_of("Hello, World!") == split_of("hello world")
    by_split = {
        s: {t.lower() for t, x in zip(texts, splits, strict=True) if x == s} for s in splits
    }
    assert not (by_split["train"] & by_split["test"]) and not (by_split["valid"] & by_split["test"])
    assert 60 <= splits.count("test") <= 140 and 60 <= splits.count("valid") <= 140


def test_sentence_generator_is_deterministic_and_distinct():
    a, b = sentences(500, seed=1), sentences(500, seed=1)
    assert a == b and len(set(a)) == 500
    assert sentences(50, seed=2) != a[:50]
    assert any(c.isdigit() for s in a for c in s)  # the front-end's spelling-out gets exercised


def test_embedded_corpus_is_built_once(tmp_path):
    settings = EmbeddedSettings(n_sentences=8)
    corpus = build_embedded(tmp_path, settings)
    assert isinstance(corpus, Corpus) and len(corpus.items) == 8
    wav = corpus.items[0].wav
    mtime = wav.stat().st_mtime_ns
    again = build_embedded(tmp_path, settings)
    assert again.fingerprint() == corpus.fingerprint() and wav.stat().st_mtime_ns == mtime
    other = build_embedded(tmp_path, EmbeddedSettings(n_sentences=8, rate=120))
    assert other.root != corpus.root  # other settings never reuse this audio
    import soundfile as sf

    info = sf.info(str(wav))
    assert info.samplerate == 24_000 and info.channels == 1 and 0.5 < info.duration < 15
    # the metadata's third column is what was spoken: the front-end's normalised text
    assert all(u.normalized_text == u.normalized_text.lower() for u in corpus.items)


def test_an_embedded_build_gives_the_same_wavs_resumed_twice_at_once_or_after_other_speech(
    tmp_path,
):
    """eSpeak NG carries state from one utterance to the next: a build resumed from a part,
    two builds of one folder at once, or a build in a process that spoke before must each
    give the wavs of one uninterrupted build."""
    import hashlib
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from phonelm.espeak import synthesize

    def wavs(corpus):
        return {u.id: hashlib.sha256(u.wav.read_bytes()).hexdigest() for u in corpus.items}

    settings = EmbeddedSettings(n_sentences=6)
    clean = build_embedded(tmp_path / "clean", settings)
    reference = wavs(clean)
    # an interrupted build: no metadata yet, one wav missing, one from another build order
    part = tmp_path / "part" / clean.root.name
    shutil.copytree(clean.root, part)
    (part / "metadata.csv").unlink()
    (part / "corpus.json").unlink()
    ids = sorted(reference)
    (part / "wavs" / f"{ids[1]}.wav").unlink()
    shutil.copy(part / "wavs" / f"{ids[4]}.wav", part / "wavs" / f"{ids[3]}.wav")
    untouched = (part / "wavs" / f"{ids[0]}.wav").stat().st_mtime_ns
    synthesize("Something else is spoken first.", voice=settings.voice, rate=settings.rate)
    resumed = build_embedded(tmp_path / "part", settings)
    assert wavs(resumed) == reference
    assert (part / "wavs" / f"{ids[0]}.wav").stat().st_mtime_ns == untouched  # left as it was
    with ThreadPoolExecutor(2) as pool:  # two builds of one folder at once
        both = list(pool.map(lambda _: build_embedded(tmp_path / "twice", settings), range(2)))
    assert wavs(both[0]) == wavs(both[1]) == reference


def test_ljspeech_download_reuses_an_unpacked_copy(tmp_path, monkeypatch):
    import torch.hub

    from phonelm.corpus import download_ljspeech

    root = tmp_path / "LJSpeech-1.1"
    root.mkdir()
    (root / "metadata.csv").write_text("")

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the corpus is already there")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert download_ljspeech(tmp_path) == root


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z']+", text.lower()))


def test_novel_sentences_use_no_content_word_of_the_corpus_grammar():
    from phonelm.sentences import NOVEL_FUNCTION_WORDS, novel_sentences

    heard = set().union(*map(_words, sentences(3000)))
    novel = novel_sentences(100)
    assert novel == novel_sentences(100) and len(set(novel)) == 100
    content = set().union(*map(_words, novel)) - NOVEL_FUNCTION_WORDS
    assert len(content) > 50 and not content & heard
    assert NOVEL_FUNCTION_WORDS <= heard  # only articles and prepositions are shared


def test_the_embedded_novel_split_is_fixed_by_the_corpus_and_leaves_the_rest_as_it_was(tmp_path):
    import hashlib
    import subprocess
    import sys

    from phonelm.dataset import split_for

    # each built in a fresh process: eSpeak's voice carries state from one call to the next
    for folder, novel in (("a", 0), ("b", 3)):
        code = (
            "from phonelm.corpus import EmbeddedSettings, build_embedded; "
            f"build_embedded({str(tmp_path / folder)!r}, EmbeddedSettings(n_sentences=6, "
            f"n_novel={novel}))"
        )
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    plain = build_embedded(tmp_path / "a", EmbeddedSettings(n_sentences=6))
    with_novel = build_embedded(tmp_path / "b", EmbeddedSettings(n_sentences=6, n_novel=3))
    assert len(with_novel.items) == 9 and plain.fixed_splits == {}
    novel = [u for u in with_novel.items if with_novel.fixed_splits.get(u.id) == "novel"]
    assert [u.id for u in novel] == ["EMB00-N0000", "EMB00-N0001", "EMB00-N0002"]
    from phonelm.config import DataConfig

    assert all(split_for(DataConfig(), with_novel, u) == "novel" for u in novel)
    digest = lambda u: hashlib.sha256(u.wav.read_bytes()).hexdigest()  # noqa: E731
    # spoken after the others: the other utterances' audio is bitwise what it was without them
    assert [digest(u) for u in plain.items] == [digest(u) for u in with_novel.items[:6]]
    assert read_ljspeech(with_novel.root).fixed_splits == with_novel.fixed_splits


def test_a_bad_splits_file_names_its_line(ljspeech_fixture):
    (ljspeech_fixture / "splits.csv").write_text("T-000|novel\nT-001|holdout\n")
    with pytest.raises(CorpusError, match=r"splits.csv:2: expected 'id\|split'"):
        read_ljspeech(ljspeech_fixture)
    (ljspeech_fixture / "splits.csv").write_text("T-000|novel\n")
    corpus = read_ljspeech(ljspeech_fixture)
    assert corpus.fixed_splits == {"T-000": "novel"}
    before = corpus.fingerprint()
    (ljspeech_fixture / "splits.csv").write_text("T-001|novel\n")
    assert read_ljspeech(ljspeech_fixture).fingerprint() != before


def test_a_corpus_without_the_novel_split_keeps_the_folder_it_had_before_it_existed(tmp_path):
    """Runs saved before n_novel existed load with n_novel=0 and must find their corpus: its
    folder name is the hash of the settings without the new field."""
    from dataclasses import asdict

    from phonelm.corpus import EMBEDDED_VERSION
    from phonelm.io import digest

    settings = EmbeddedSettings(n_sentences=2)
    old = {"version": EMBEDDED_VERSION, **asdict(settings)}
    del old["n_novel"]
    assert build_embedded(tmp_path, settings).root.name == f"embedded-{digest(old)}"
    assert build_embedded(tmp_path, EmbeddedSettings(n_sentences=2, n_novel=1)).root.name != (
        f"embedded-{digest(old)}"
    )
