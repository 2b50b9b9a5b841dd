import torch

from eval.report import _audio_tag
from phonelm.audio import conform, save_audio


def test_an_empty_generation_gets_a_note_not_a_player(tmp_path):
    """A model may stop before its first frame: the clip is empty, and the report says so
    where a player would fail to load it."""
    assert conform(torch.zeros(0), 24_000, 16_000).shape == (0,)
    save_audio(tmp_path / "empty.wav", torch.zeros(0), 24_000)
    save_audio(tmp_path / "speech.wav", 0.1 * torch.randn(2400), 24_000)
    assert _audio_tag(tmp_path / "empty.wav") == "<em>no audio: the model stopped at once</em>"
    tag = _audio_tag(tmp_path / "speech.wav")
    assert tag.startswith("<audio controls") and "base64," in tag
