"""Test-set evaluation: predictions of the (EMA) model on un-augmented images, then metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from bench.data.views import ViewMaker
from bench.metrics import compute_metrics


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, views: ViewMaker, accelerator: Accelerator, batch_size: int = 512
) -> np.ndarray:
    """Class predictions for all `images` (N, H, W, 3) uint8; each process takes a contiguous shard."""
    was_training = model.training
    model.eval()
    n = len(images)
    shards = np.array_split(np.arange(n), accelerator.num_processes)
    mine = shards[accelerator.process_index]
    longest = max(len(s) for s in shards)
    preds = torch.full((longest,), -1, dtype=torch.long, device=accelerator.device)
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        # the un-augmented view: the channel order and resize_to of the training views (made outside autocast)
        x = views.make("none", torch.from_numpy(images[idx]).to(accelerator.device).permute(0, 3, 1, 2))
        with accelerator.autocast():
            logits = model(x)
        preds[start : start + len(idx)] = logits.argmax(-1)
    if was_training:
        model.train()
    gathered = accelerator.gather(preds).cpu().numpy() if accelerator.num_processes > 1 else preds.cpu().numpy()
    return gathered[gathered >= 0]


def evaluate_model(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    views: ViewMaker,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """Metrics of `model` on the test split, plus "predictions": the predicted class of every test image, in
    the split's order (saved next to the run's record, for per-image paired analyses of the leaderboard)."""
    preds = predict(model, images, views, accelerator)
    return {**compute_metrics(preds, labels, num_classes), "predictions": preds.astype(int).tolist()}
