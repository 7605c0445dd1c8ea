from __future__ import annotations

import pytest

from bench.config import build_config, run_id
from bench.errors import FERBenchError


def test_overrides_are_typed_like_their_fields() -> None:
    cfg = build_config(overrides=["train.iterations=50", "optim.lr=1", "data.budget=0.02", "method=supervised",
                                  "method_args.threshold=0.9", "augment.normalize_mean=[0.5, 0.5, 0.5]"])
    assert cfg.train.iterations == 50 and isinstance(cfg.train.iterations, int)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.budget == 0.02 and cfg.method == "supervised"
    assert cfg.method_args == {"threshold": 0.9}
    assert cfg.augment.normalize_mean == (0.5, 0.5, 0.5)


def test_yaml_then_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  iterations: 7\n  mu: 5\ndata:\n  name: synthfer\n")
    cfg = build_config([f], ["train.mu=1"])
    assert (cfg.train.iterations, cfg.train.mu) == (7, 1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iteratons=5", "unknown config key 'train.iteratons'"),
        ("iterations", "expected KEY=VALUE"),
        ("train.ema_decay=[1", "not valid YAML"),
        ("optim.nesterov=maybe", "expected true or false"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(FERBenchError, match=message.replace("[", r"\[")):
        build_config(overrides=[override])


def test_run_id_hashes_what_is_computed_not_where_it_goes() -> None:
    a = build_config(overrides=["output_dir=/x", "train.log_every=3"])
    b = build_config(overrides=["output_dir=/y", "train.log_every=9"])
    c = build_config(overrides=["seed=1"])
    d = build_config(overrides=["method_args.threshold=0.9"])
    assert run_id(a) == run_id(b)
    assert len({run_id(a), run_id(c), run_id(d)}) == 3
    assert run_id(a).startswith("fixmatch_synthfer_fraction0.1_s0_")


def test_run_id_covers_synthfer_generator_defaults() -> None:
    from bench.data.synthfer import DEFAULTS

    plain = build_config()
    explicit = build_config(overrides=[f"data.synthfer.nuisance={DEFAULTS['nuisance']}"])
    harder = build_config(overrides=[f"data.synthfer.nuisance={DEFAULTS['nuisance'] + 0.5}"])
    assert run_id(plain) == run_id(explicit) != run_id(harder)
    with pytest.raises(FERBenchError, match="synthfer: unknown parameter\\(s\\) nuisanse"):
        run_id(build_config(overrides=["data.synthfer.nuisanse=1"]))


def test_presets_apply_where_they_appear() -> None:
    cfg = build_config(overrides=["preset=adacm", "train.mu=2"])
    assert cfg.preset == "adacm"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("adam", 5e-4, "constant")
    assert (cfg.train.batch_size, cfg.train.mu, cfg.train.ema_decay) == (16, 2, 0.999)
    usb = build_config(base={"train": {"iterations": 9}, "preset": "usb"})
    assert (usb.optim.name, usb.optim.lr, usb.train.batch_size, usb.train.mu) == ("sgd", 0.03, 64, 7)
    assert usb.train.iterations == 9 and usb.to_dict()["preset"] == "usb"
    assert run_id(usb) != run_id(build_config(base={"train": {"iterations": 9}}))
    with pytest.raises(FERBenchError, match="unknown preset 'fast'; known presets: adacm, ssfer, usb"):
        build_config(overrides=["preset=fast"])
