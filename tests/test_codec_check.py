import pandas as pd
import pytest

from eval.codec_check import main


@pytest.mark.slow
def test_codec_check_scores_original_and_each_k(ljspeech_fixture, tmp_path):
    out = tmp_path / "out"
    args = [
        "--corpus",
        str(ljspeech_fixture),
        "--root",
        str(tmp_path / "data"),
        "--split",
        "train",
        "--limit",
        "3",
        "--codebooks",
        "1",
        "2",
        "--out",
        str(out),
    ]
    table = main(args)
    assert list(table["audio"]) == ["original", "mel-rvq", "mel-rvq"]
    assert list(table["codebooks"].fillna(0)) == [0, 1, 2]
    # bounds a broken ASR (empty or hallucinated transcripts: WER >= ~1) or a codec that decodes
    # to noise would break: eSpeak speech scores ~0.3 with tiny.en, its mel-rvq resynthesis
    # ~0.35-0.76 on these 3 sentences (21 words; the fixture's audio and so the fitted codec
    # differ slightly between machines: a fresh clone gave 0.76)
    assert table.loc[0, "wer"] <= 0.5 and (table.loc[1:, "wer"] <= 0.9).all(), table["wer"]
    assert (table["words"] > 0).all()
    assert table.loc[0, "log_mel_l1"] == 0 and (table.loc[1:, "log_mel_l1"] > 0).all()
    assert table["asr_model"].eq("tiny.en").all()
    saved = pd.read_csv(out / "mel-rvq.csv")
    assert len(saved) == 3 and (out / "mel-rvq.md").read_text().count("|") > 10
    assert len((out / "mel-rvq.jsonl").read_text().splitlines()) == 3 * 3
