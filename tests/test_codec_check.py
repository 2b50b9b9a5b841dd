import pandas as pd
import pytest

from eval.codec_check import main


@pytest.mark.slow
def test_codec_check_scores_original_and_each_k(plain_ljspeech_fixture, tmp_path):
    out = tmp_path / "out"
    args = [
        "--corpus",
        str(plain_ljspeech_fixture),
        "--root",
        str(tmp_path / "data"),
        "--split",
        "train",
        "--limit",
        "6",
        "--codebooks",
        "1",
        "2",
        "--out",
        str(out),
    ]
    table = main(args)
    assert list(table["audio"]) == ["original", "mel-rvq", "mel-rvq"]
    assert list(table["codebooks"].fillna(0)) == [0, 1, 2]
    assert (table["words"] == 45).all()
    # bounds a broken ASR (empty or hallucinated transcripts: WER >= ~1) or a codec that decodes
    # to noise would break. The fixture's samples depend on what the process spoke before (eSpeak
    # carries pitch and phase over) and tiny.en's greedy decoding on the CPU's arithmetic, so the
    # bounds leave room (seen here: 0.16 original, 0.24-0.42 resynthesis); a failure shows the
    # transcripts. (Until eSpeak's breath noise was seeded, one CI run scored 0.67 original.)
    transcripts = (out / "mel-rvq.jsonl").read_text()
    assert table.loc[0, "wer"] <= 0.4, (table["wer"], transcripts)
    assert (table.loc[1:, "wer"] <= 0.8).all(), (table["wer"], transcripts)
    assert table.loc[0, "log_mel_l1"] == 0 and (table.loc[1:, "log_mel_l1"] > 0).all()
    assert table["asr_model"].eq("tiny.en").all()
    saved = pd.read_csv(out / "mel-rvq.csv")
    assert len(saved) == 3 and (out / "mel-rvq.md").read_text().count("|") > 10
    assert len(transcripts.splitlines()) == 3 * 6
