import sys

import pytest
import torch

from phonelm.codecs import CodecError, build_codec, codec_class
from phonelm.codecs.encodec import EncodecCodec, import_encodec
from phonelm.codecs.kmeans import fit_residual_codebooks, kmeans, residual_decode, residual_encode
from phonelm.config import CodecConfig
from phonelm.io import file_digest


@pytest.fixture(scope="module")
def calibration():
    """40 grammar sentences (never the one encoded below): ~10k frames, about 10 per entry.

    With fewer frames per codebook entry the deep levels collapse onto a few entries, and how few
    depends on the CPU's float rounding. Synthesised once: espeak-ng's audio differs slightly from
    call to call."""
    from phonelm.audio import conform
    from phonelm.espeak import synthesize
    from phonelm.sentences import sentences

    return [conform(*synthesize(text), 24_000) for text in sentences(40, seed=1)]


@pytest.fixture(scope="module")
def codec(calibration):
    c = EncodecCodec(weights="random", bandwidth=3.0)
    c.fit(calibration)
    return c


def test_bandwidth_picks_codebooks():
    assert EncodecCodec(weights="random", bandwidth=1.5).n_codebooks == 2
    assert EncodecCodec(weights="random", n_codebooks=16).bandwidth == 12.0
    with pytest.raises(CodecError, match="bandwidth must be one of"):
        EncodecCodec(weights="random", bandwidth=5.0)
    with pytest.raises(CodecError, match="means 4 codebooks"):
        EncodecCodec(weights="random", bandwidth=3.0, n_codebooks=8)


def test_unknown_codec_lists_valid_names():
    with pytest.raises(CodecError, match="valid codecs: .*encodec"):
        codec_class("nope")


def test_random_codec_must_be_fitted(speech):
    with pytest.raises(CodecError, match="fitted"):
        EncodecCodec(weights="random", bandwidth=1.5).encode(speech, 24_000)


def test_round_trip_shapes_and_non_degenerate_codes(codec, speech):
    codes = codec.encode(speech, 24_000)
    frames = -(-speech.shape[0] // 320)
    assert codes.shape == (4, frames) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 1024
    # k-means-initialised codebooks: codes spread over many entries, not all index 0
    assert [len(codes[k].unique()) > 20 for k in range(4)] == [True] * 4
    wav = codec.decode(codes)
    assert wav.shape == (frames * 320,) and torch.isfinite(wav).all()
    assert 0 <= wav.shape[0] - speech.shape[0] < 320


def test_encode_is_deterministic_and_refit_is_identical(codec, speech, calibration):
    assert torch.equal(codec.encode(speech, 24_000), codec.encode(speech, 24_000))
    again = EncodecCodec(weights="random", bandwidth=3.0)
    again.fit(calibration)
    assert again.identity() == codec.identity()
    assert torch.equal(again.encode(speech, 24_000), codec.encode(speech, 24_000))


@pytest.mark.parametrize(
    ("wav", "sr", "frames"),
    [
        (torch.zeros(24_000), 24_000, 75),  # silence
        (torch.ones(2, 44_100) * 3.0, 44_100, 75),  # clipped stereo at 44.1 kHz
        (torch.randn(10) * 0.1, 16_000, 1),  # shorter than one frame
        (torch.randn(1, 8_000) * 0.1, 8_000, 75),  # mono with a channel axis
    ],
)
def test_any_rate_channels_and_length(codec, wav, sr, frames):
    codes = codec.encode(wav, sr)
    assert codes.shape == (4, frames)
    assert codec.decode(codes).shape == (frames * 320,)


def test_bad_codes_are_rejected(codec):
    with pytest.raises(ValueError, match=r"codes \[4, F\]"):
        codec.decode(torch.zeros(8, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        codec.decode(torch.full((4, 10), 1024))


def test_saved_state_restores_bit_exactly(codec, speech, tmp_path):
    codec.save(tmp_path / "c.safetensors")
    other = EncodecCodec(weights="random", bandwidth=3.0)
    other.load(tmp_path / "c.safetensors")
    assert other.identity() == codec.identity()
    assert torch.equal(other.encode(speech, 24_000), codec.encode(speech, 24_000))


def test_local_checkpoint_path(codec, speech, tmp_path):
    path = tmp_path / "encodec_24khz.th"
    torch.save(codec.model.state_dict(), path)
    loaded = build_codec(CodecConfig(name="encodec", weights=str(path), bandwidth=3.0))
    assert not loaded.needs_fit
    assert torch.equal(loaded.encode(speech, 24_000), codec.encode(speech, 24_000))
    with pytest.raises(CodecError, match="does not exist"):
        EncodecCodec(weights=str(tmp_path / "missing.th"))
    # the checkpoint is named by its content: a copy elsewhere is the same codec, and a changed
    # file at the same path is another (a dataset cache keyed by it is never reused stale)
    copy = tmp_path / "elsewhere" / "renamed.th"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    moved = build_codec(CodecConfig(name="encodec", weights=str(copy), bandwidth=3.0))
    assert moved.identity() == loaded.identity() and str(tmp_path) not in str(moved.settings())
    state = codec.model.state_dict()
    state[next(iter(state))] = state[next(iter(state))] + 1
    torch.save(state, path)
    changed = build_codec(CodecConfig(name="encodec", weights=str(path), bandwidth=3.0))
    assert changed.identity() != loaded.identity()


def test_untrained_checkpoint_is_refused(tmp_path):
    """A state dict saved from an untrained model has all-zero codebooks: every code would be 0."""
    path = tmp_path / "untrained.th"
    torch.save(
        import_encodec().EncodecModel.encodec_model_24khz(pretrained=False).state_dict(), path
    )
    with pytest.raises(
        CodecError, match=r"untrained.th: EnCodec codebooks \[1, 2, 3, 4\] were never initialised"
    ):
        build_codec(CodecConfig(name="encodec", weights=str(path), bandwidth=3.0))


def test_a_runs_codec_is_rebuilt_where_the_same_checkpoint_lies_elsewhere(
    codec, speech, tmp_path, monkeypatch
):
    from phonelm.codecs.encodec import WEIGHTS_ENV
    from phonelm.run_dir import RunDir

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = tmp_path / "made" / "encodec_24khz.th"
    path.parent.mkdir()
    torch.save(codec.model.state_dict(), path)
    cfg = CodecConfig(name="encodec", weights=str(path), bandwidth=3.0)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.save_codec(cfg.__dict__, build_codec(cfg))
    saved = run.read_json(run.codec_config)
    assert saved["provenance"]["checkpoint_sha256"] == file_digest(path)
    expected = codec.encode(speech, 24_000)
    assert torch.equal(run.codec().encode(speech, 24_000), expected)  # where it was made

    moved = tmp_path / "elsewhere" / "encodec_24khz.th"  # another machine: the file is elsewhere
    moved.parent.mkdir()
    path.rename(moved)
    with pytest.raises(CodecError, match=f"codec.json: .* is not on this machine .*{WEIGHTS_ENV}"):
        run.codec()
    for given in (moved, moved.parent):  # the file, or its folder
        monkeypatch.setenv(WEIGHTS_ENV, str(given))
        assert torch.equal(run.codec().encode(speech, 24_000), expected)
    monkeypatch.delenv(WEIGHTS_ENV)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)  # or torch hub's own folder
    moved.rename(tmp_path / "hub" / "checkpoints" / moved.name)
    assert torch.equal(run.codec().encode(speech, 24_000), expected)

    state = codec.model.state_dict()  # other weights at the recorded path are not the run's
    state[next(iter(state))] = state[next(iter(state))] + 1
    torch.save(state, path)
    (tmp_path / "hub" / "checkpoints" / moved.name).unlink()
    with pytest.raises(CodecError, match="is not on this machine"):
        run.codec()


def test_pretrained_unavailable_says_how_to_get_it(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CodecError, match="codec.weights=/path/to/encodec_24khz"):
        EncodecCodec(weights="pretrained")


def test_encodec_imports_without_a_working_torchaudio():
    encodec = import_encodec()
    assert hasattr(encodec, "EncodecModel")
    torchaudio = sys.modules["torchaudio"]
    out = torchaudio.transforms.Resample(16_000, 24_000)(torch.randn(16_000))
    assert out.shape == (24_000,)


def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=gen) for c in centres])
    found = kmeans(x, 3, seed=1)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.2
    assert torch.equal(found, kmeans(x, 3, seed=1))  # deterministic


def test_residual_vq_reduces_error_level_by_level():
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    books = fit_residual_codebooks(x, levels=3, size=16, seed=0)
    codes = residual_encode(x, books)
    assert codes.shape == (3, 2000)
    errors = [(x - residual_decode(codes[:k], books)).pow(2).mean() for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


def test_residual_vq_warns_when_too_few_frames_per_entry():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning) as caught:
        books = fit_residual_codebooks(x, levels=2, size=64, seed=0)
    assert books.shape == (2, 64, 8)  # still fitted, only warned about
    assert any("only 100 frames (want >= 256)" in str(w.message) for w in caught)
