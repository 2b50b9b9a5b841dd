import pytest
import torch

from eval.metrics import log_mel_distance
from phonelm.audio import conform
from phonelm.codecs import CodecError, build_codec
from phonelm.codecs.mel_rvq import MelRvqCodec, mel_filterbank
from phonelm.config import CodecConfig
from phonelm.espeak import synthesize


@pytest.fixture(scope="module")
def train_audio():
    """~24 sentences (~6000 frames): more frames than entries at every level."""
    from phonelm.sentences import sentences

    return [conform(*synthesize(text), 24_000) for text in sentences(24, seed=5)]


@pytest.fixture(scope="module")
def speech():
    """A held-out sentence (not in train_audio)."""
    return conform(*synthesize("Wendy opened the golden box before sunrise."), 24_000)


def small(**kw) -> MelRvqCodec:
    return MelRvqCodec(n_codebooks=kw.pop("n_codebooks", 3), kmeans_iters=5, **kw)


@pytest.fixture(scope="module")
def codec(train_audio):
    c = small()
    c.fit(train_audio)
    return c


def test_filterbank_is_slaney_shaped():
    bank = mel_filterbank(sample_rate=24_000, n_fft=1024, n_mels=100, f_max=12_000)
    assert bank.shape == (100, 513) and (bank >= 0).all()
    assert (bank.sum(dim=1) > 0).all()  # no empty band
    peaks = bank.argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all()  # bands ascend in frequency


def test_fit_is_deterministic(train_audio, codec):
    again = small()
    again.fit(train_audio)
    assert torch.equal(again.codebooks, codec.codebooks)
    assert again.identity() == codec.identity()
    other_seed = small(seed=1)
    other_seed.fit(train_audio)
    assert other_seed.identity() != codec.identity()


def test_round_trip_length_range_and_spread(codec, speech):
    codes = codec.encode(speech, 24_000)
    assert codes.shape == (3, -(-len(speech) // 320))
    assert 0 <= codes.min() and codes.max() < 1024
    assert [len(codes[k].unique()) > 10 for k in range(3)] == [True] * 3  # not collapsed
    wav = codec.decode(codes)
    assert abs(len(wav) - len(speech)) < 320  # within one frame
    assert torch.isfinite(wav).all() and 0.5 < wav.abs().max() <= 1.0


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_clips_shorter_than_the_stft_window_decode(codec, speech, frames):
    """A model that stops after one frame yields a clip shorter than n_fft / 2 samples, which a
    centred STFT cannot pad: it still decodes, to frames x hop finite, non-silent samples."""
    codes = codec.encode(speech, 24_000)[:, 40 : 40 + frames]
    wav = codec.decode(codes)
    assert wav.shape == (frames * 320,)
    assert torch.isfinite(wav).all() and 0.5 < wav.abs().max() <= 1.0


def test_more_codebooks_quantise_finer(train_audio, speech):
    from phonelm.codecs.kmeans import residual_decode

    four = small(n_codebooks=4)
    four.fit(train_audio)
    codes = four.encode(speech, 24_000)
    target = four.features(speech)[: codes.shape[1]]
    errors = [
        float((residual_decode(codes[:k], four.codebooks) - target).abs().mean()) for k in (1, 2, 4)
    ]
    assert errors[0] > errors[1] > errors[2]


def test_resynthesis_stays_within_a_spectral_distance_bound(codec, speech):
    wav = codec.decode(codec.encode(speech, 24_000))
    # log-mel L1 in natural-log units; noise in place of speech scores above 2
    assert log_mel_distance(wav, speech) < 1.0
    assert log_mel_distance(torch.randn_like(speech) * 0.1, speech) > 2.0


def test_save_load_is_bit_exact(codec, speech, tmp_path):
    codec.save(tmp_path / "m.safetensors")
    loaded = small()
    loaded.load(tmp_path / "m.safetensors")
    assert torch.equal(loaded.codebooks, codec.codebooks)
    codes = codec.encode(speech, 24_000)
    assert torch.equal(loaded.encode(speech, 24_000), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_errors_are_clear(speech):
    with pytest.raises(CodecError, match="fitted"):
        small().encode(speech, 24_000)
    with pytest.raises(CodecError, match="1..8 codebooks"):
        MelRvqCodec(n_codebooks=9)
    with pytest.raises(CodecError, match="not codec.bandwidth"):
        build_codec(CodecConfig(name="mel-rvq", bandwidth=6.0))
    with pytest.raises(CodecError, match=r"must be \[3, 1024, 100\]"):
        small().load_state({"codebooks": torch.zeros(2, 1024, 100)})


def test_registry_builds_it_by_name():
    codec = build_codec(CodecConfig(name="mel-rvq", n_codebooks=2))
    assert isinstance(codec, MelRvqCodec) and codec.n_codebooks == 2 and codec.needs_fit
    assert codec.frame_rate == 75.0 and codec.codebook_size == 1024
