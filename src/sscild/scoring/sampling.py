"""Balanced sampling over 5 % TOT bins (Jia et al. 2024): draw training images with probability inversely
proportional to the frequency of their TOT score.

Weights are computed once from the bins that are *present*, so empty bins never take part and sampling cannot
loop; a sampler over an empty dataset is refused with a clear error.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ..errors import ConfigError


def tot_bins(tot: Sequence[float], step: float = 5.0) -> np.ndarray:
    """Bin index of each TOT score: round to the nearest ``step`` % (0, 5, ..., 100 -> 0..20)."""
    t = np.clip(np.asarray(tot, dtype=np.float64), 0.0, 100.0)
    if not np.all(np.isfinite(t)):
        raise ConfigError("TOT scores contain NaN or inf; every training image needs a finite score")
    return np.rint(t / step).astype(int)


def balanced_weights(tot: Sequence[float], step: float = 5.0) -> np.ndarray:
    """Per-image sampling probabilities, each bin present getting the same total probability."""
    b = tot_bins(tot, step)
    if b.size == 0:
        raise ConfigError("cannot sample from an empty training set")
    counts = np.bincount(b)
    w = 1.0 / counts[b]
    return w / w.sum()


class BalancedSampler:
    """Index sampler for training: ``balanced=True`` uses :func:`balanced_weights`, else uniform.

    >>> s = BalancedSampler([0, 0, 0, 50], seed=0)
    >>> idx = s.draw(4000); round(float((idx == 3).mean()), 1)
    0.5
    """

    def __init__(self, tot: Sequence[float], balanced: bool = True, step: float = 5.0, seed: int = 0):
        n = len(tot)
        if n == 0:
            raise ConfigError("cannot sample from an empty training set")
        self.p = balanced_weights(tot, step) if balanced else np.full(n, 1.0 / n)
        self.rng = np.random.default_rng(seed)

    def draw(self, k: int) -> np.ndarray:
        return self.rng.choice(len(self.p), size=int(k), replace=True, p=self.p)

    def batches(self, batch_size: int, steps: int) -> Iterator[np.ndarray]:
        for _ in range(int(steps)):
            yield self.draw(batch_size)
