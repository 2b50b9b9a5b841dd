"""A pinned codec (experiments/pin_codec.py) is the one later runs encode their dataset with."""

import json
import shutil

import pytest

from experiments.pin_codec import main as pin
from experiments.run import main as run
from phonelm.run_dir import RunDir


def tiny(out, data_root, seed):
    return ["--model", "delay", "--preset", "tiny", "--out", str(out), "--seed", str(seed),
            "--steps", "1", "--set", f"data.root={data_root}", "generate.limit=1",
            "generate.max_seconds=0.3"]  # fmt: skip


@pytest.mark.slow
def test_a_pinned_codec_is_the_one_later_runs_encode_with(tmp_path, capsys):
    data = tmp_path / "data"
    run(tiny(tmp_path / "a", data, 0))
    first = tmp_path / "a" / "delay-tiny-seed0"
    # another machine's fit: the same settings, other codebooks
    other = tmp_path / "elsewhere" / first.name
    shutil.copytree(first, other, ignore=shutil.ignore_patterns("checkpoints"))
    codec = RunDir(other).codec()
    codec.codebooks = codec.codebooks.flip(1).contiguous()
    codec.save(other / "codec.safetensors")
    manifest = json.loads((other / "data_manifest.json").read_text())
    (other / "data_manifest.json").write_text(
        json.dumps({**manifest, "codec_identity": codec.identity()})
    )
    assert codec.identity() != manifest["codec_identity"]
    path = pin([str(other)])
    assert path.parent == data / "codecs"
    run(tiny(tmp_path / "b", data, 1))
    later = tmp_path / "b" / "delay-tiny-seed1"
    assert json.loads((later / "data_manifest.json").read_text())["codec_identity"] == (
        codec.identity()
    )
    assert (later / "codec.safetensors").read_bytes() == (other / "codec.safetensors").read_bytes()
    # a codec state that is not the one the run's dataset was encoded with is refused
    shutil.copy(first / "codec.safetensors", other / "codec.safetensors")
    with pytest.raises(SystemExit) as refused:
        pin([str(other)])
    err = capsys.readouterr().err
    assert refused.value.code == 1 and "codec.safetensors" in err and "encoded with" in err
