"""Method state declared once (`Method.add_state`): the engine's device moves, strict checkpoints, restore of
checkpoints older than a state, and the refusal of tensors a method forgot to declare."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from bench.errors import FERBenchError
from bench.method import Method
from bench.registry import create_method, method_names


class _Counts(Method):
    name = "counts"

    def __init__(self, num_classes: int, **arguments: object) -> None:
        super().__init__(num_classes, **arguments)
        self.add_state("seen", torch.zeros(num_classes))
        self.add_state("flag", torch.tensor(False), if_missing=torch.tensor(True))


def test_declared_state_round_trips_strictly() -> None:
    m = _Counts(3)
    m.seen = m.seen + torch.tensor([1.0, 2.0, 3.0])  # a method may reassign its state
    state = m.state_dict()
    assert state["seen"].tolist() == [1.0, 2.0, 3.0] and state["flag"].item() is False
    other = _Counts(3)
    other.load_state_dict(state)
    assert other.seen.tolist() == [1.0, 2.0, 3.0]
    other.load_state_dict({"seen": torch.ones(3)})  # a checkpoint from before `flag` existed: its if_missing
    assert other.flag.item() is True
    with pytest.raises(FERBenchError, match=r"method 'counts': the checkpoint's method state does not fit it "
                                            r"\(missing seen; unexpected bank\)"):
        other.load_state_dict({"flag": torch.tensor(True), "bank": torch.zeros(2)})


def test_a_tensor_attribute_that_is_not_declared_stops_a_checkpoint() -> None:
    m = _Counts(3)
    m.extra = torch.zeros(2)  # forgotten: it would resume wrong without a word
    with pytest.raises(FERBenchError, match="attribute.s. extra hold tensors but are not declared state"):
        m.state_dict()


def test_state_moves_with_the_method_and_restores_onto_its_device() -> None:
    m = _Counts(2).to(torch.device("meta"))
    assert m.seen.device.type == "meta" and m.flag.device.type == "meta"
    m.load_state_dict({"seen": torch.ones(2), "flag": torch.tensor(True)})
    assert m.seen.device.type == "meta"  # restored where the state lives now


def test_every_stateful_builtin_declares_its_state_and_no_method_file_writes_checkpoint_code() -> None:
    declared = {name: sorted(s.name for s in create_method(name, 7).state_specs()) for name in method_names()}
    assert declared["adacm"] == declared["leaf"] == ["thresholds"] and declared["dtasnl"] == ["mu"]
    assert declared["freematch"] == ["label_hist", "p_model", "time_p"]
    assert declared["softmatch"] == ["mu_t", "p_model", "p_model_updated", "var_t"]
    for path in (Path(__file__).resolve().parents[1] / "methods").glob("*.py"):
        defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert not defined & {"state_dict", "load_state_dict", "to"}, path.name
        assert "self.hparams" not in path.read_text() and ".choice(" not in path.read_text(), path.name
