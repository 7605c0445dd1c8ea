"""Index streams: which dataset indices form the labeled / unlabeled batch at iteration t.

A stream is an endless concatenation of random permutations of its pool, each permutation drawn
from a generator seeded by (seed, stream name, epoch). The global batch at step t is positions
[t*B, (t+1)*B) of that sequence and each process takes its share, so a batch is a pure function of
the step: resuming needs nothing but the step number, and results do not depend on how many
processes split the global batch.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np


def _seed_of(*parts: object) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:15], 16)


class IndexStream:
    def __init__(self, pool: np.ndarray, global_batch: int, seed: int, name: str) -> None:
        if len(pool) == 0:
            raise ValueError(f"stream {name!r} has an empty pool")
        self.pool = np.asarray(pool, dtype=np.int64)
        self.global_batch = global_batch
        self.seed = seed
        self.name = name
        self._perm = lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(_seed_of(self.seed, self.name, epoch))
        return self.pool[rng.permutation(len(self.pool))]

    def global_indices(self, step: int) -> np.ndarray:
        n = len(self.pool)
        start = step * self.global_batch
        pos = np.arange(start, start + self.global_batch)
        epochs, offsets = np.divmod(pos, n)
        out = np.empty(self.global_batch, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[offsets[sel]]
        return out

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This process's contiguous share of the global batch at `step`."""
        g = self.global_indices(step)
        share = self.global_batch // world_size
        return g[rank * share : (rank + 1) * share]


def step_seed(seed: int, step: int, rank: int, purpose: str) -> int:
    """Seed for the randomness of one step (augmentation, dropout), so it is a function of the step."""
    return _seed_of(seed, step, rank, purpose) % (2**63 - 1)


class ClassBalancedStream:
    """Labeled batches drawn class-balanced: each draw picks a class uniformly among those present, then a
    sample of it uniformly, with replacement (torch's WeightedRandomSampler with weights 1/n_c).

    Same interface as `IndexStream`; the global batch at step t comes from a generator seeded by
    (seed, name, t), so it is a pure function of the step, as resume needs.
    """

    def __init__(self, pool: np.ndarray, labels: np.ndarray, global_batch: int, seed: int, name: str) -> None:
        if len(pool) == 0:
            raise ValueError(f"stream {name!r} has an empty pool")
        self.pool = np.asarray(pool, dtype=np.int64)
        labels = np.asarray(labels)
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
        self.prob = weights / weights.sum()
        self.global_batch = global_batch
        self.seed = seed
        self.name = name

    def global_indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng(_seed_of(self.seed, self.name, "balanced", step))
        return self.pool[rng.choice(len(self.pool), size=self.global_batch, replace=True, p=self.prob)]

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        g = self.global_indices(step)
        share = self.global_batch // world_size
        return g[rank * share : (rank + 1) * share]


LABELED_SAMPLING = ("uniform", "class_balanced")


def labeled_stream(sampling: str, pool: np.ndarray, labels: np.ndarray, global_batch: int,
                   seed: int) -> IndexStream | ClassBalancedStream:
    """The labeled stream a method asked for (`Method.labeled_sampling`); `labels` are the pool's labels."""
    if sampling == "uniform":
        return IndexStream(pool, global_batch, seed, "labeled")
    if sampling == "class_balanced":
        return ClassBalancedStream(pool, labels, global_batch, seed, "labeled")
    raise ValueError(f"labeled_sampling={sampling!r}: expected one of {', '.join(LABELED_SAMPLING)}")
