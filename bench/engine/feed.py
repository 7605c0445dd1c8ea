"""What the training loop eats: the method's views of the labeled and unlabeled batch at step t.

A batch is a pure function of the step (index streams + per-step generators), so resume and any
number of processes give the same data. The images are the prepared uint8 cache; views are made
by `ViewMaker` with batched tensor arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bench.data.views import ViewMaker
from bench.engine.streams import ClassBalancedStream, IndexStream, step_seed
from bench.method import Batch


class BatchFeed:
    """Builds `Batch(labeled, unlabeled)` for a step from index streams over one uint8 image tensor.

    images:            (N, C, H, W) uint8, the training split
    labeled_position:  training index -> position in the labeled pool ("pos"), -1 elsewhere
    pool_position:     training index -> position in the unlabeled pool ("idx" of unlabeled), -1 elsewhere
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, views: ViewMaker,
                 labeled: IndexStream | ClassBalancedStream, unlabeled: IndexStream | None,
                 labeled_views: Sequence[str], unlabeled_views: Sequence[str],
                 labeled_position: np.ndarray, pool_position: np.ndarray,
                 device: torch.device, seed: int, rank: int = 0, world: int = 1, purpose: str = "augment") -> None:
        self.images, self.labels, self.views = images, labels, views
        self.labeled, self.unlabeled = labeled, unlabeled
        self.labeled_views, self.unlabeled_views = tuple(labeled_views), tuple(unlabeled_views)
        self.labeled_position, self.pool_position = labeled_position, pool_position
        self.device, self.seed, self.rank, self.world = device, seed, rank, world
        self.purpose = purpose  # seeds the step's augmentation; stages of one run draw independently

    def batch(self, step: int) -> Batch:
        dev = self.device
        gen = torch.Generator(device=dev).manual_seed(step_seed(self.seed, step, self.rank, self.purpose))
        li = self.labeled.indices(step, self.rank, self.world)
        x_u8 = self.images[li].to(dev)
        labeled = {"y": self.labels[li].to(dev), "idx": torch.from_numpy(li).to(dev),
                   "pos": torch.from_numpy(self.labeled_position[li]).to(dev)}
        for v in self.labeled_views:
            labeled[v] = self.views.make(v, x_u8, gen)
        unlabeled = None
        if self.unlabeled is not None:
            ui = self.unlabeled.indices(step, self.rank, self.world)
            u_u8 = self.images[ui].to(dev)
            unlabeled = {v: self.views.make(v, u_u8, gen) for v in self.unlabeled_views}
            unlabeled["idx"] = torch.from_numpy(self.pool_position[ui]).to(dev)
        return Batch(labeled, unlabeled)
