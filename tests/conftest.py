"""Shared fixtures: an isolated cache and a tiny synthfer config for end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from torch import Tensor, nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY_SYNTHFER = {"n_train": 280, "n_test": 140, "seed": 0, "size": 32}


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so the tiny synthfer is generated and prepared once."""
    return tmp_path_factory.mktemp("ferbench_cache")


def tiny_overrides(cache: Path, out: Path, **extra: object) -> list[str]:
    """Dotted overrides for a seconds-long run on the tiny synthfer."""
    base = {
        "data.cache_dir": str(cache),
        "data.image_size": 32,
        "data.synthfer": "{n_train: 280, n_test: 140, seed: 0, size: 32}",
        "data.budget": 0.1,
        "model.backbone": "ferbench_cnn_tiny",
        "train.iterations": 12,
        "train.batch_size": 8,
        "train.mu": 2,
        "train.eval_every": 4,
        "train.log_every": 2,
        "train.checkpoint_every": 4,
        "output_dir": str(out),
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


class IdentityBackbone(nn.Module):
    """A backbone whose features are its input, so heads can be checked on hand-written features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: Tensor) -> Tensor:
        return x
