"""Fast, deterministic k-means and greedy residual vector quantisation in plain torch."""

import warnings

import torch

MIN_FRAMES_PER_ENTRY = 4


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centroid for each row: x [N, D], centroids [C, D] -> [N]."""
    return torch.cat([torch.cdist(part, centroids).argmin(dim=1) for part in x.split(chunk)])


def kmeans(x: torch.Tensor, k: int, *, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on x [N, D] -> centroids [k, D].

    Initialised from k distinct random rows; clusters that go empty are re-seeded on random rows,
    so all k entries stay in use where the data allow. Deterministic for a given seed.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"k-means needs data [N, D] with N > 0, got shape {tuple(x.shape)}")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    pick = torch.randperm(n, generator=gen)[:k]
    if n < k:  # fewer points than entries: repeat points, jittered so entries stay distinct
        pick = torch.cat([pick, torch.randint(n, (k - n,), generator=gen)])
    centroids = x[pick].clone()
    if n < k:
        jitter = torch.randn(k - n, x.shape[1], generator=gen) * x.std(dim=0).clamp_min(1e-6) * 1e-3
        centroids[n:] += jitter
    for _ in range(iters):
        assign = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = int((~filled).sum())
        if empty:
            centroids[~filled] = x[torch.randint(n, (empty,), generator=gen)]
    return centroids


def fit_residual_codebooks(
    x: torch.Tensor, *, levels: int, size: int, iters: int = 15, seed: int = 0
) -> torch.Tensor:
    """Greedy residual VQ: level l is k-means on the residual of levels < l.

    x [N, D] -> codebooks [levels, size, D]. With fewer than MIN_FRAMES_PER_ENTRY frames per entry
    the first level all but memorises the data, the residuals left for deeper levels are mostly
    zero, and their codebooks collapse onto a handful of entries: that is warned about.
    """
    if x.shape[0] < MIN_FRAMES_PER_ENTRY * size:
        warnings.warn(
            f"fitting {levels} codebooks of {size} entries on only {x.shape[0]} frames "
            f"(want >= {MIN_FRAMES_PER_ENTRY * size}): deeper levels will use few entries; "
            "fit on more audio",
            stacklevel=3,
        )
    residual = x.float().clone()
    books = []
    for level in range(levels):
        book = kmeans(residual, size, iters=iters, seed=seed + level)
        residual -= book[_nearest(residual, book)]
        books.append(book)
    return torch.stack(books)


def residual_encode(x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """x [N, D], codebooks [L, C, D] -> codes [L, N]."""
    residual = x.float().clone()
    codes = []
    for book in codebooks:
        idx = _nearest(residual, book)
        residual -= book[idx]
        codes.append(idx)
    return torch.stack(codes)


def residual_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes [L, N], codebooks [L', C, D] with L <= L' -> sum of code vectors [N, D]."""
    return sum(book[idx] for book, idx in zip(codebooks, codes, strict=False))
