"""`mel-rvq`: an offline stand-in codec with EnCodec's code layout, fitted on the corpus.

Features: |STFT| (n_fft = win = 1024, hop 320, Hann) -> 100 Slaney mel bands 0-12 kHz -> log.
Quantiser: greedy residual VQ, K levels x 1024 entries, each level k-means-fitted on the previous
level's residual over training frames. Decoder: sum of code vectors -> exp -> mel pseudo-inverse
refined by multiplicative NNLS updates -> Griffin-Lim (fixed seed) -> peak normalisation.
75 frames/s at 24 kHz, like EnCodec, so every backend and metric is unchanged.
"""

import math
from functools import cache

import torch

from phonelm.codecs.base import Codec, CodecError
from phonelm.codecs.kmeans import fit_residual_codebooks, residual_decode, residual_encode

MAX_LEVELS = 8


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(
        f >= min_log_hz, min_log_hz / f_sp + torch.log(f / min_log_hz) / logstep, lin
    )


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(
        m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m
    )


def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, f_max: float) -> torch.Tensor:
    """Slaney-normalised triangular filters [n_mels, n_fft // 2 + 1]."""
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(0, float(_hz_to_mel(torch.tensor(f_max))), n_mels + 2, dtype=torch.float64)
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    bank = torch.clamp(torch.minimum(rising, falling), min=0.0)
    bank *= 2.0 / (upper - lower)  # equal area per filter
    return bank.float()


class LogMel:
    """wav [T] at 24 kHz -> log-mel frames [T // 320 + 1, 100] (the codec's features)."""

    sample_rate, n_fft, hop_length, n_mels, f_max = 24_000, 1024, 320, 100, 12_000.0

    def __init__(self):
        self.window = torch.hann_window(self.n_fft)
        self.mel = mel_filterbank(
            sample_rate=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, f_max=self.f_max
        )

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """|STFT| [bins, frames]."""
        return self.stft(wav).abs()

    def stft(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.stft(wav, self.n_fft, self.hop_length, window=self.window, return_complex=True)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(spec, self.n_fft, self.hop_length, window=self.window, length=length)

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(self.mel @ self.magnitude(wav), min=1e-5)).T


@cache
def log_mel() -> LogMel:
    return LogMel()


class MelRvqCodec(Codec):
    name = "mel-rvq"
    sample_rate = LogMel.sample_rate
    hop_length = LogMel.hop_length
    momentum = 0.99  # fast Griffin-Lim

    def __init__(
        self,
        *,
        n_codebooks: int = 4,
        seed: int = 0,
        fit_frames: int = 200_000,
        kmeans_iters: int = 15,
        griffin_lim_iters: int = 32,
        nnls_iters: int = 30,
    ):
        if not 1 <= n_codebooks <= MAX_LEVELS:
            raise CodecError(f"mel-rvq has 1..{MAX_LEVELS} codebooks, got {n_codebooks}")
        self.n_codebooks, self.seed, self.fit_frames = n_codebooks, seed, fit_frames
        self.kmeans_iters, self.gl_iters, self.nnls_iters = (
            kmeans_iters,
            griffin_lim_iters,
            nnls_iters,
        )
        self.needs_fit = True
        self.codebooks: torch.Tensor | None = None  # [K, 1024, n_mels]
        self.features = log_mel()
        self.mel_pinv = torch.linalg.pinv(self.features.mel)  # [bins, n_mels]

    @classmethod
    def from_config(cls, cfg, *, device: str = "cpu") -> "MelRvqCodec":  # CPU: an STFT
        if cfg.bandwidth is not None:
            raise CodecError("mel-rvq takes codec.n_codebooks, not codec.bandwidth")
        return cls(n_codebooks=cfg.n_codebooks or 4, seed=cfg.seed)

    @classmethod
    def check_config(cls, cfg) -> None:
        """A run's settings: codec.weights, EnCodec's, is refused too (tools that build every
        codec from one config, like eval/codec_check.py, may leave it set)."""
        if cfg.bandwidth is not None:
            raise CodecError("mel-rvq takes codec.n_codebooks, not codec.bandwidth")
        if cfg.weights != "pretrained":  # the field's default: mel-rvq is fitted, not loaded
            raise CodecError(
                f"codec.weights={cfg.weights!r}: mel-rvq has no weights (it is fitted on the "
                "training split); codec.weights is EnCodec's setting"
            )

    def settings(self) -> dict:
        return {
            **super().settings(),
            "seed": self.seed,
            "fit_frames": self.fit_frames,
            "kmeans_iters": self.kmeans_iters,
            "griffin_lim_iters": self.gl_iters,
            "nnls_iters": self.nnls_iters,
        }

    def fit(self, wavs: list[torch.Tensor]) -> None:
        x = torch.cat([self.features(w) for w in wavs])  # [frames, n_mels]
        gen = torch.Generator().manual_seed(self.seed)
        x = x[torch.randperm(len(x), generator=gen)[: self.fit_frames]]
        books = fit_residual_codebooks(
            x,
            levels=self.n_codebooks,
            size=self.codebook_size,
            iters=self.kmeans_iters,
            seed=self.seed,
        )
        self.load_state({"codebooks": books})

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.codebooks is None else {"codebooks": self.codebooks}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        books = state["codebooks"]
        expected = (self.n_codebooks, self.codebook_size, LogMel.n_mels)
        if tuple(books.shape) != expected:
            raise CodecError(f"mel-rvq codebooks must be {list(expected)}, got {list(books.shape)}")
        self.codebooks = books.float().contiguous()

    def _books(self) -> torch.Tensor:
        if self.codebooks is None:
            raise CodecError("mel-rvq must be fitted (codec.fit) or loaded before use")
        return self.codebooks

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        return residual_encode(self.features(wav), self._books())  # [K, frames]

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        mel = torch.exp(residual_decode(codes, self._books())).T  # [n_mels, F]
        return self._griffin_lim(self._mel_to_magnitude(mel))

    def _mel_to_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """NNLS by multiplicative updates: mel [n_mels, F] -> |STFT| [bins, F]."""
        bank = self.features.mel
        mag = torch.relu(self.mel_pinv @ mel) + 1e-6
        for _ in range(self.nnls_iters):
            mag = mag * (bank.T @ mel) / (bank.T @ (bank @ mag)).clamp_min(1e-8)
        return mag

    def _griffin_lim(self, mag: torch.Tensor) -> torch.Tensor:
        """Fast Griffin-Lim from magnitudes [bins, F] -> wav [F * hop], peak-normalised."""
        length = mag.shape[1] * self.hop_length
        # an STFT needs more than n_fft / 2 samples (its reflect padding): a clip shorter than
        # that (1 frame) is rebuilt with its last frame held, then cut back to its length
        frames = max(mag.shape[1], self.features.n_fft // self.hop_length)
        mag = torch.cat([mag, mag[:, -1:].expand(-1, frames + 1 - mag.shape[1])], dim=1)
        work = frames * self.hop_length  # a centred STFT of `work` samples has frames + 1 frames
        gen = torch.Generator().manual_seed(self.seed)
        angles = torch.exp(2j * math.pi * torch.rand(mag.shape, generator=gen))
        previous = torch.zeros_like(angles)
        for _ in range(self.gl_iters):
            rebuilt = self.features.stft(self.features.istft(mag * angles, work))
            accelerated = rebuilt - previous * (self.momentum / (1 + self.momentum))
            previous = rebuilt
            angles = accelerated / accelerated.abs().clamp_min(1e-8)
        wav = self.features.istft(mag * angles, work)[:length]
        return wav / wav.abs().max().clamp_min(1e-8) * 0.95
