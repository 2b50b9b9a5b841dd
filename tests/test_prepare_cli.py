import pytest

from phonelm.prepare import main


@pytest.mark.slow
def test_prepare_builds_embedded_corpus_and_cache_end_to_end(tmp_path, capsys):
    args = ["--root", str(tmp_path), "--sentences", "24", "--codebooks", "2", "--batch-size", "4"]
    report = main(args)
    assert sum(report["utterances"].values()) == 24 and report["skipped"] == 0
    assert report["hours"] > 0 and report["cache_mb"] > 0
    assert 0 <= report["padding_fraction"] < 0.5
    assert "padding_fraction" in capsys.readouterr().out
    again = main(args)  # second run reuses corpus and cache
    assert again["cache"] == report["cache"]
