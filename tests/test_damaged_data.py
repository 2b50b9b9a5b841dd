"""Derived files under data/ (dataset shards, the cache manifest, fitted codecs, converted ASR
weights) are rebuilt when damaged, with a warning naming the file, into bitwise what they were;
relative data paths mean the project's folder, not the working directory's (issue 25)."""

import json
import shutil
from pathlib import Path

import pytest

from phonelm.dataset import prepare

DAMAGE = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\x00garbage" * 16,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny preset's data root, prepared once: (its config, root, every file's bytes)."""
    from experiments.presets import preset

    cfg = preset("tiny", "delay")
    root = tmp_path_factory.mktemp("data")
    cfg.data.root = str(root)
    prepare(cfg.data, cfg.codec, progress=False)
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "cache" in p.parts}
    files |= {p: p.read_bytes() for p in (root / "codecs").glob("*.safetensors")}
    return cfg, root, files


def _copy(built, tmp_path):
    cfg, root, files = built
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    cfg.data.root = str(copy)
    return cfg, {copy / p.relative_to(root): data for p, data in files.items()}


def _timeless(manifest: bytes) -> dict:
    """A manifest less its build time and where the corpus was (the copy is elsewhere)."""
    return {k: v for k, v in json.loads(manifest).items() if k not in ("build_seconds", "corpus")}


@pytest.mark.parametrize("how", sorted(DAMAGE))
@pytest.mark.parametrize("which", ["shard", "manifest", "codec"])
def test_a_damaged_derived_file_is_named_and_made_again_bitwise(
    which, how, built, tmp_path, capsys
):
    cfg, files = _copy(built, tmp_path)
    [target] = [
        p
        for p in files
        if (which == "shard" and p.name == "shard-00000.safetensors")
        or (which == "manifest" and p.name == "manifest.json")
        or (which == "codec" and p.parent.name == "codecs")
    ]
    target.write_bytes(DAMAGE[how](files[target]))
    capsys.readouterr()
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    err = capsys.readouterr().err
    assert f"warning: {target} is damaged" in err, err
    for path, data in files.items():  # every derived file as it was (build time aside)
        if path.name == "manifest.json":
            assert _timeless(path.read_bytes()) == _timeless(data)
        else:
            assert path.read_bytes() == data, path
    assert prepared.manifest["shards"] >= 1


def test_a_manifest_that_is_valid_json_but_no_object_is_made_again(built, tmp_path, capsys):
    cfg, files = _copy(built, tmp_path)
    [manifest] = [p for p in files if p.name == "manifest.json"]
    manifest.write_text("[1, 2, 3]")
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    assert "expected a JSON object" in capsys.readouterr().err
    assert prepared.manifest["utterances"] == json.loads(files[manifest])["utterances"]


def test_intact_files_are_read_not_rebuilt(built, tmp_path, capsys):
    cfg, files = _copy(built, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    prepare(cfg.data, cfg.codec, progress=False)
    assert "damaged" not in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_stale_temp_files_of_a_killed_build_are_removed(built, tmp_path):
    import os
    import time

    cfg, files = _copy(built, tmp_path)
    cache = next(p for p in files if p.name == "manifest.json").parent
    old, new = cache / ".shard-00001.safetensors.abc.tmp", cache / ".shard-00002.safetensors.x.tmp"
    for tmp in (old, new):
        tmp.write_bytes(b"half a shard")
    an_hour_ago = time.time() - 7200
    os.utime(old, (an_hour_ago, an_hour_ago))
    (cache / "manifest.json").unlink()  # the build resumes: it tidies up first
    prepare(cfg.data, cfg.codec, progress=False)
    assert not old.exists() and new.exists()  # a young one may be another process's write


def test_relative_data_paths_mean_the_project_folder_not_the_working_directory(
    built, tmp_path, monkeypatch
):
    import phonelm.config as config

    cfg, _ = _copy(built, tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("")
    shutil.move(cfg.data.root, project / "data")
    monkeypatch.setattr(config, "PROJECT", project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg.data.root = "data"
    for manifest in (project / "data").rglob("manifest.json"):
        manifest.unlink()  # written again: it records where the corpus is
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    assert prepared.cache_dir.parent.parent == project / "data"
    assert not (elsewhere / "data").exists()  # nothing built beside the working directory
    assert prepared.manifest["corpus"].startswith("data/embedded-")
    assert config.project_path("/abs/path") == Path("/abs/path")


def test_a_damaged_converted_whisper_checkpoint_is_named_and_converted_again(tmp_path, capsys):
    from eval.asr import Asr

    first = Asr("tiny.en", cache_dir=tmp_path)
    [converted] = tmp_path.glob("whisper-tiny.en-*.pt")
    sha = first.describe()["tensors_sha256"]
    converted.write_bytes(converted.read_bytes()[:1000])
    again = Asr("tiny.en", cache_dir=tmp_path)
    assert f"warning: {converted} is damaged" in capsys.readouterr().err
    assert again.describe()["tensors_sha256"] == sha
