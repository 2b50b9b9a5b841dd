import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

import phonelm.dataset as dataset_module
from phonelm.batching import CODE_PAD, LengthBucketSampler, collate
from phonelm.config import CodecConfig, DataConfig
from phonelm.dataset import CodeDataset, Item, prepare
from phonelm.text import PAD

CODEC = CodecConfig(name="mel-rvq", n_codebooks=2)
ENCODEC = CodecConfig(name="encodec", weights="random", bandwidth=1.5)


def config(corpus_dir, tmp_path, **kw) -> DataConfig:
    return DataConfig(corpus=str(corpus_dir), root=str(tmp_path / "data"), shard_size=2, **kw)


def shard_mtimes(cache_dir):
    return {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("shard-*.safetensors")}


@pytest.mark.parametrize("codec", [CODEC, ENCODEC], ids=["mel-rvq", "encodec-random"])
def test_cache_holds_phonemes_and_codes(ljspeech_fixture, tmp_path, codec):
    prepared = prepare(config(ljspeech_fixture, tmp_path), codec, progress=False)
    m = prepared.manifest
    assert sum(m["utterances"].values()) == 6 and m["skipped"] == []
    assert m["frame_rate"] == 75.0 and m["codec"]["n_codebooks"] == 2
    assert m["codec"]["name"] == codec.name
    ds = CodeDataset(prepared.cache_dir, "train")
    item = ds[0]
    assert item.codes.shape[0] == 2 and item.codes.dtype == torch.int64
    assert 0 <= item.codes.min() and item.codes.max() < 1024
    # frames match the audio's duration at 75 frames/s
    seconds = sf.info(str(ljspeech_fixture / "wavs" / f"{item.id}.wav")).duration
    assert abs(item.codes.shape[1] - seconds * 75) <= 1
    assert item.phonemes.min() > PAD
    # one file per shard, not per item
    assert len(list(prepared.cache_dir.glob("shard-*.safetensors"))) == 3


def test_same_settings_reuse_the_cache(ljspeech_fixture, tmp_path):
    first = prepare(config(ljspeech_fixture, tmp_path), CODEC, progress=False)
    before = shard_mtimes(first.cache_dir)
    second = prepare(config(ljspeech_fixture, tmp_path), CODEC, progress=False)
    assert second.cache_dir == first.cache_dir and shard_mtimes(second.cache_dir) == before


def test_changed_settings_build_a_new_cache(ljspeech_fixture, tmp_path, monkeypatch):
    cfg = config(ljspeech_fixture, tmp_path)
    base = prepare(cfg, CODEC, progress=False).cache_dir
    other_codec = CodecConfig(name="mel-rvq", n_codebooks=3)
    assert prepare(cfg, other_codec, progress=False).cache_dir != base
    other_seed = CodecConfig(name="mel-rvq", n_codebooks=2, seed=1)
    assert prepare(cfg, other_seed, progress=False).cache_dir != base
    monkeypatch.setattr(dataset_module, "DATASET_VERSION", 999)
    assert prepare(cfg, CODEC, progress=False).cache_dir != base
    monkeypatch.undo()
    meta = ljspeech_fixture / "metadata.csv"
    meta.write_text(meta.read_text().replace("noon", "night"))
    assert prepare(cfg, CODEC, progress=False).cache_dir != base


def test_interrupted_build_resumes(ljspeech_fixture, tmp_path, monkeypatch):
    cfg = config(ljspeech_fixture, tmp_path)
    real = dataset_module._write_shard
    calls = []

    def crash_on_second(path, *args):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, *args)

    monkeypatch.setattr(dataset_module, "_write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, CODEC, progress=False)
    cache_dirs = list((tmp_path / "data" / "cache").iterdir())
    assert len(cache_dirs) == 1
    done = shard_mtimes(cache_dirs[0])
    assert list(done) == ["shard-00000.safetensors"]
    assert not (cache_dirs[0] / "manifest.json").exists()
    assert not list(cache_dirs[0].glob(".*tmp"))  # no half-written shard left behind

    monkeypatch.setattr(dataset_module, "_write_shard", real)
    prepared = prepare(cfg, CODEC, progress=False)
    assert (
        shard_mtimes(prepared.cache_dir)["shard-00000.safetensors"]
        == done["shard-00000.safetensors"]
    )
    assert sum(prepared.manifest["utterances"].values()) == 6


def test_unreadable_audio_is_skipped_and_reported(ljspeech_fixture, tmp_path):
    (ljspeech_fixture / "wavs" / "T-001.wav").write_bytes(b"not a wav file")
    (ljspeech_fixture / "wavs" / "T-004.wav").unlink()
    m = prepare(config(ljspeech_fixture, tmp_path), CODEC, progress=False).manifest
    assert sum(m["utterances"].values()) == 4
    reasons = {s["id"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"T-001", "T-004"}
    assert "cannot read audio" in reasons["T-001"] and "missing audio" in reasons["T-004"]


def test_length_filters_are_counted(ljspeech_fixture, tmp_path):
    prepared = prepare(config(ljspeech_fixture, tmp_path), CODEC, progress=False)
    full = CodeDataset(prepared.cache_dir, "train")
    longest = max(full.frame_lengths)
    short = CodeDataset(prepared.cache_dir, "train", max_frames=longest - 1)
    assert short.report["too_many_frames"] >= 1
    assert short.report["kept"] + short.report["too_many_frames"] == len(full)
    with pytest.raises(ValueError, match="empty after filtering"):
        CodeDataset(prepared.cache_dir, "train", max_phonemes=1)


def make_item(i: int, n_ph: int, n_frames: int, k: int = 3) -> Item:
    return Item(
        f"u{i}",
        torch.arange(4, 4 + n_ph),
        torch.zeros(k, n_frames, dtype=torch.long),  # code 0 is a real code, not padding
    )


def test_collate_pads_with_values_no_real_token_has():
    batch = collate([make_item(0, 5, 7), make_item(1, 3, 4)])
    assert batch.phonemes.shape == (2, 5) and batch.codes.shape == (2, 3, 7)
    assert batch.phoneme_lengths.tolist() == [5, 3] and batch.code_lengths.tolist() == [7, 4]
    assert (batch.phonemes[1, 3:] == PAD).all() and (batch.phonemes[1, :3] != PAD).all()
    assert (batch.codes[1, :, 4:] == CODE_PAD).all() and (batch.codes[1, :, :4] == 0).all()
    assert batch.code_mask.tolist()[1] == [True] * 4 + [False] * 3
    assert batch.padding_fraction == pytest.approx(3 / 14)
    assert batch.ids == ["u0", "u1"]


def test_bucketing_covers_everything_once_and_cuts_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 800, (1000,), generator=gen).tolist()
    sampler = LengthBucketSampler(lengths, batch_size=16, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))

    def padding(bs):
        return sum(16 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)

    random_batches = [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)]
    assert padding(batches) < 0.2 * padding(random_batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled per epoch


def test_distributed_ranks_get_disjoint_equal_shares():
    lengths = list(range(1, 101))
    shares = [
        list(LengthBucketSampler(lengths, batch_size=8, num_replicas=3, rank=r)) for r in range(3)
    ]
    assert len({len(s) for s in shares}) == 1  # same number of steps on every rank
    seen = [i for s in shares for b in s for i in b]
    assert set(seen) == set(range(100))
    assert len(seen) - 100 <= 2 * 8  # only the (at most 2) padding batches repeat
    with pytest.raises(ValueError, match="rank 3 outside"):
        LengthBucketSampler(lengths, batch_size=8, num_replicas=3, rank=3)


def test_manifest_is_json_with_split_hours(ljspeech_fixture, tmp_path):
    prepared = prepare(config(ljspeech_fixture, tmp_path), CODEC, progress=False)
    m = json.loads((prepared.cache_dir / "manifest.json").read_text())
    assert set(m["hours"]) == {"train", "valid", "test", "novel"}
    assert m["utterances"]["novel"] == 0  # LJSpeech names no novel split (no splits.csv)
    assert 0 < sum(m["hours"].values()) < 0.01


def test_empty_and_too_short_audio_is_skipped_and_named(ljspeech_fixture, tmp_path):
    sf.write(str(ljspeech_fixture / "wavs" / "T-002.wav"), torch.zeros(0).numpy(), 22_050)
    sf.write(str(ljspeech_fixture / "wavs" / "T-003.wav"), torch.zeros(100).numpy(), 22_050)
    m = prepare(config(ljspeech_fixture, tmp_path), CODEC, progress=False).manifest
    assert sum(m["utterances"].values()) == 4
    reasons = {s["id"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"T-002", "T-003"}, reasons
    assert "T-003.wav" in reasons["T-003"] and "too short" in reasons["T-003"]
    assert "T-002.wav" in reasons["T-002"]


def test_evaluation_loaders_cover_each_utterance_once_across_processes(monkeypatch):
    """Under torchrun, a training loader pads every process to the same number of batches
    (DDP steps together); an evaluation loader must not repeat any utterance, or the summed
    NLL counts it twice (158 evaluated of 150 before this was fixed)."""
    import torch.distributed

    from experiments.train import TrainConfig, loader_over

    class Split:
        frame_lengths = list(range(1, 151))

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    cfg = TrainConfig(micro_batch_size=8)
    for shuffle, covered in ((False, 150), (True, 152)):
        seen = []
        for rank in range(4):
            monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
            sampler, _ = loader_over(Split(), cfg, shuffle=shuffle)
            seen += [i for batch in sampler for i in batch]
        assert len(seen) >= covered and set(seen) == set(range(150))
        if not shuffle:
            assert len(seen) == 150


SHARDED_PREPARE = """
import json, sys
from pathlib import Path
import phonelm.dataset as dataset
from phonelm import distributed as dist
from phonelm.config import CodecConfig, DataConfig
dist.init()
written, real = [], dataset._write_shard
def recording(path, *args):
    written.append(path.name)
    real(path, *args)
dataset._write_shard = recording
cfg = DataConfig(corpus=sys.argv[1], root=sys.argv[2], shard_size=2)
prepared = dataset.prepare(cfg, CodecConfig(name="mel-rvq", n_codebooks=2), progress=False)
out = Path(sys.argv[2]) / f"rank{dist.rank()}.json"
out.write_text(json.dumps({"written": written, "manifest": prepared.manifest}))
dist.cleanup()
"""


@pytest.mark.slow
def test_two_ranks_encode_a_share_each_and_build_the_same_cache(ljspeech_fixture, tmp_path):
    """Under torchrun every rank encodes its shards (i % world); the cache is bitwise the one
    a single process builds, and both ranks read rank 0's manifest."""
    script = tmp_path / "prepare_ranks.py"
    script.write_text(SHARDED_PREPARE)
    root = tmp_path / "data"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script), str(ljspeech_fixture), str(root)]  # fmt: skip
    project = Path(__file__).parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(project)}
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["written"] == ["shard-00000.safetensors", "shard-00002.safetensors"]
    assert ranks[1]["written"] == ["shard-00001.safetensors"]
    assert ranks[0]["manifest"] == ranks[1]["manifest"]
    (cache,) = (root / "cache").iterdir()
    sharded = {p.name: p.read_bytes() for p in cache.glob("shard-*")}
    for path in cache.glob("*"):
        path.unlink()
    single = prepare(config(ljspeech_fixture, tmp_path), CODEC, progress=False)
    assert single.cache_dir == cache
    assert {p.name: p.read_bytes() for p in cache.glob("shard-*")} == sharded
    drop = lambda m: {k: v for k, v in m.items() if k != "build_seconds"}  # noqa: E731
    assert drop(single.manifest) == drop(ranks[0]["manifest"])
