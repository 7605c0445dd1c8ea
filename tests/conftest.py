"""Shared fixtures: an isolated cache and a tiny synthfer config for end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

from bench.startup import configure

# the suite's threads and OpenMP wait policy, as FERBench's own processes set them: before torch is imported here,
# and inherited by every subprocess a test starts (a test's own OMP_* values win there)
configure()

import pytest  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from bench.method import ModelOutput  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY_SYNTHFER = {"n_train": 280, "n_test": 140, "seed": 0, "size": 32}


#: Set by CI (.ci/run), which installs every component the tests use: a missing one then fails its tests
#: instead of skipping them, so CI cannot go green without running them. Elsewhere they skip, saying why.
REQUIRE_COMPONENTS = os.environ.get("FERBENCH_REQUIRE_COMPONENTS") == "1"


def require(module: str, reason: str):
    """The imported `module`, or a skip saying `reason` (a failure where CI requires every component)."""
    if REQUIRE_COMPONENTS:
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as e:
            pytest.fail(f"{reason}; CI requires it (FERBENCH_REQUIRE_COMPONENTS=1): {e}")
    return pytest.importorskip(module, reason=reason)


def skip_or_fail(reason: str) -> None:
    """Skip for `reason`, or fail where CI requires every component."""
    if REQUIRE_COMPONENTS:
        pytest.fail(f"{reason}; CI requires it (FERBENCH_REQUIRE_COMPONENTS=1)")
    pytest.skip(reason)


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


class InputLogits(nn.Module):
    """A model in the methods' contract whose logits (and features) are its input: losses by hand."""

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ModelOutput:
        return ModelOutput(x, x, x.new_zeros(())) if return_features else x


class IdentityBackbone(nn.Module):
    """A backbone whose features are its input, so heads can be checked on hand-written features (timm's model
    shape: `forward_features`, then `forward_head` pooling them, both the identity here)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward_features(self, x: Tensor) -> Tensor:
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
