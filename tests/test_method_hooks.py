"""The engine's generic method hooks: `build_model` (a method's own modules are trained, EMA'd and saved),
`labeled_sampling` (class-balanced labeled batches, a pure function of the step), "pos" (labeled-pool
positions), `info` (facts in the record), `reconstructed` (shown by `ferbench methods`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from bench import registry
from bench.cli import main
from bench.config import build_config
from bench.engine.streams import ClassBalancedStream, labeled_stream
from bench.engine.trainer import validate
from bench.errors import FERBenchError
from bench.method import Batch, Method, MethodArgs, StepContext, StepOutput
from bench.registry import register_method


def test_class_balanced_stream_is_balanced_and_a_function_of_the_step() -> None:
    pool = np.arange(100, 200)
    labels = np.array([0] * 90 + [1] * 10)
    stream = labeled_stream("class_balanced", pool, labels, 32, seed=3)
    assert isinstance(stream, ClassBalancedStream)
    drawn = np.concatenate([stream.global_indices(t) for t in range(300)])
    assert set(drawn) <= set(pool)
    minority = np.isin(drawn, pool[90:]).mean()
    assert abs(minority - 0.5) < 0.02  # 10% of the pool, half of the draws
    again = ClassBalancedStream(pool, labels, 32, seed=3, name="labeled")
    assert np.array_equal(again.global_indices(17), stream.global_indices(17))  # resume needs only the step
    assert not np.array_equal(stream.global_indices(17), stream.global_indices(18))
    shares = np.concatenate([stream.indices(17, r, 4) for r in range(4)])
    assert np.array_equal(shares, stream.global_indices(17))  # processes split the same global batch
    with pytest.raises(ValueError, match="labeled_sampling='stratified'"):
        labeled_stream("stratified", pool, labels, 32, seed=3)


class _Scaled(nn.Module):
    """Wraps the engine's model with a learnable logit scale (a stand-in for a method's own module)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.base(x, return_features=True)
        return out._replace(logits=self.scale * out.logits) if return_features else self.scale * out.logits


@dataclass
class _ProbeArgs(MethodArgs):
    sampling: str = "class_balanced"  # deliberately unchecked here: the engine's own check is under test


class _HookProbe(Method):
    Args = _ProbeArgs
    seen_positions: list[int] = []

    def __init__(self, num_classes: int, **arguments) -> None:
        super().__init__(num_classes, **arguments)
        self.labeled_sampling = self.args.sampling

    def build_model(self, model: nn.Module) -> nn.Module:
        return _Scaled(model)

    def info(self) -> dict:
        return {"wrapped": True}

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        _HookProbe.seen_positions += batch.labeled["pos"].tolist()
        loss = nn.functional.cross_entropy(model(batch.labeled["weak"]), batch.labeled["y"])
        return StepOutput(loss, {})


@pytest.fixture
def probe():
    register_method("hook_probe")(_HookProbe)
    _HookProbe.seen_positions = []
    yield _HookProbe
    registry._REGISTRY.pop("hook_probe", None)


def test_build_model_hook_modules_are_trained_emad_and_saved(probe, shared_cache: Path, tmp_path: Path) -> None:
    args = tiny_overrides(shared_cache, tmp_path, method="hook_probe", **{"train.ema_decay": 0.5})
    # the record's behavioural probe runs in a process of its own (bench/engine/probe.py): only the run's steps count
    assert main(["run", "--quiet", *args]) == 0
    rec = json.loads(next((tmp_path / "records").glob("*.json")).read_text())
    assert rec["method_info"] == {"wrapped": True}
    weights = torch.load(next((tmp_path / "runs").glob("*/final_model.pt")))
    assert "scale" in weights and weights["scale"].item() != 1.0  # optimised, then averaged into the EMA
    n_labeled = rec["split"]["n_labeled"]
    assert len(probe.seen_positions) == 12 * 8 and set(probe.seen_positions) <= set(range(n_labeled))


def test_unknown_labeled_sampling_is_one_clear_error(probe, shared_cache: Path, tmp_path: Path) -> None:
    cfg = build_config(overrides=tiny_overrides(shared_cache, tmp_path, method="hook_probe",
                                                **{"method_args.sampling": "stratified"}))
    with pytest.raises(FERBenchError, match="labeled_sampling='stratified'; expected one of uniform, class_balanced"):
        validate(cfg)


def test_methods_table_lists_reconstructed_options(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("leaf", "sitfer", "dtasnl"):
        assert name in out
    assert "RECONSTRUCTED" in out and "tau_neg" in out
