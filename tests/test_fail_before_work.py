"""Bad values, method arguments, checkpoints and sweep cells stop before anything is prepared, trained or written:
one stderr line naming the key and the value, exit status 2, no traceback, and no record, manifest, cache,
checkpoint or job."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SYNTHFER, tiny_overrides

from bench.cli import main
from bench.config import ModelConfig
from bench.engine.model import build_model


def _ferbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ferbench: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def _nothing_written(tmp_path: Path) -> None:
    """No output folder (records, runs, checkpoints, job logs) and no cache (prepared data, split manifests)."""
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cache").exists()


def _args(tmp_path: Path, **extra: object) -> list[str]:
    # a cache of its own: a manifest or a prepared dataset would show there
    return tiny_overrides(tmp_path / "cache", tmp_path / "out", **extra)


# The five rows of the issue, through the real command line.
@pytest.mark.subprocess
@pytest.mark.parametrize("args, expected", [
    (["data.budget=lots"], "data.budget='lots': expected a number"),
    (["seed=abc"], "seed='abc': expected an integer in [0, inf)"),
    (["optim.lr=-1"], "optim.lr=-1.0: expected a number in (0, inf)"),
    (["method=fixmatch", "method_args.threshold=high"],
     "method 'fixmatch': method_args.threshold='high': expected a number in [0, 1]"),
    (["-c", "bad.yaml"], "bad.yaml:3:1: not valid YAML: expected ',' or ']', but got '<stream end>' "
                         "(while parsing a flow sequence at line 2, column 15)"),
])
def test_the_reported_inputs_fail_in_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "bad.yaml").write_text("train:\n  iterations: [1, 2\n")
    res = _ferbench("run", *args, f"output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
                    cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert expected in _one_error_line(res.stderr)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("override, expected", [
    ("data.image_size=big", "data.image_size='big': expected an integer in [8, 1024]"),
    ("data.image_size=4", "data.image_size=4: expected an integer in [8, 1024]"),
    ("data.image_size=1120", "data.image_size=1120: expected an integer in [8, 1024]"),
    ("data.workers=-1", "data.workers=-1: expected an integer in [0, inf)"),
    ("data.augment_on=gpu", "data.augment_on='gpu': expected one of 'device', 'cpu'"),
    ("data.unlabeled=none", "data.unlabeled='none': expected one of 'all', 'rest'"),
    ("data.on_bad_image=ignore", "data.on_bad_image='ignore': expected one of 'fail', 'skip'"),
    ("data.device_cache_gb=lots", "data.device_cache_gb='lots': expected null or a number in [0, inf)"),
    ("data.protocol=percent", "data.protocol='percent': expected one of 'fraction', 'total', 'per_class'"),
    ("model.drop_rate=1.5", "model.drop_rate=1.5: expected a number in [0, 1)"),
    ("model.backbone=resnet99", "model.backbone='resnet99': not a timm model name"),
    ("model.timm_kwargs={depth: 3}", "model.timm_kwargs={'depth': 3}: timm cannot build 'ferbench_cnn_tiny'"),
    ("optim.momentum=1", "optim.momentum=1.0: expected a number in [0, 1)"),
    ("optim.betas=[0.9, 1.2]", "optim.betas=(0.9, 1.2): expected a list of 2 values, each a number in [0, 1)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: expected a number in [0, inf)"),
    ("optim.name=lamb", "optim.name='lamb': expected one of 'sgd', 'adam', 'adamw'"),
    ("optim.schedule=step", "optim.schedule='step': expected one of 'cosine', 'halfcosine', 'constant'"),
    ("optim.warmup_iters=2.5", "optim.warmup_iters=2.5: expected an integer in [0, inf)"),
    ("augment.crop_prob=2", "augment.crop_prob=2.0: expected a number in [0, 1]"),
    ("augment.randaugment_n=three", "augment.randaugment_n='three': expected an integer in [0, inf)"),
    ("augment.normalize_std=[0.2, 0, 0.2]", "augment.normalize_std=(0.2, 0, 0.2): expected a list of 3 values, "
                                            "each a number in (0, inf)"),
    ("augment.crop=center", "augment.crop='center': expected one of 'pad', 'resized'"),
    ("augment.rrc_scale=[0.9, 0.2]", "augment.rrc_scale=[0.9, 0.2]: expected [smallest, largest] area fraction"),
    ("train.iterations=0", "train.iterations=0: expected an integer in [1, inf)"),
    ("train.batch_size=16.5", "train.batch_size=16.5: expected an integer in [1, inf)"),
    ("train.mu=-1", "train.mu=-1: expected an integer in [0, inf)"),
    ("train.ema_decay=1", "train.ema_decay=1.0: expected a number in [0, 1)"),
    ("train.eval_every=0", "train.eval_every=0: expected an integer in [1, inf)"),
    ("train.mixed_precision=fp8", "train.mixed_precision='fp8': expected one of 'no', 'fp16', 'bf16'"),
    ("train.compile=yes", "train.compile='yes': expected one of 'none', 'default', 'reduce-overhead'"),
    ("train.channels_last=2", "override train.channels_last='2': expected true or false"),
    ("train.stop_after=0", "train.stop_after=0: expected null or an integer in [1, inf)"),
    ("split_seed=-3", "split_seed=-3: expected null or an integer in [0, inf)"),
    ("stages.main.optim.lr=abc", "stages.main.optim.lr='abc': expected a number in (0, inf)"),
    ("data.budget=.nan", "budget nan out of range for protocol 'fraction'"),
])
def test_config_value_errors(tmp_path: Path, capsys, override: str, expected: str) -> None:
    assert main(["run", "--quiet", *_args(tmp_path, method="fixmatch"), override]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("method, argument, expected", [
    ("fixmatch", "lambda_u=-1", "method 'fixmatch': method_args.lambda_u=-1: expected a number in [0, inf)"),
    ("flexmatch", "thresh_warmup=1", "method 'flexmatch': method_args.thresh_warmup=1: expected true or false"),
    ("softmatch", "ema_p=1", "method 'softmatch': method_args.ema_p=1: expected a number in [0, 1)"),
    ("freematch", "lambda_e=small", "method 'freematch': method_args.lambda_e='small': expected a number in [0, inf)"),
    ("meanteacher", "rampup_frac=0", "method 'meanteacher': method_args.rampup_frac=0: expected a number in (0, 1]"),
    ("adacm", "epoch_iters=10.5", "method 'adacm': method_args.epoch_iters=10.5: expected an integer in [1, inf)"),
    ("leaf", "topk=0", "method 'leaf': method_args.topk=0: expected an integer in [1, inf)"),
    ("sitfer", "text_seed=abc", "method 'sitfer': method_args.text_seed='abc': expected null or an integer"),
    ("sitfer", "fusion_weights=[1, a, 2]", "method 'sitfer': method_args.fusion_weights=[1, 'a', 2]: expected a list "
                                           "of 3 values, each a number in [0, inf)"),
    ("sitfer", "fusion_weights=[1, 2]", "method 'sitfer': method_args.fusion_weights=[1, 2]: expected a list of 3 "
                                        "values, each a number in [0, inf)"),
    ("softmatch", "dist_init=batch", "method 'softmatch': method_args.dist_init='batch': expected one of 'uniform', "
                                     "'first_batch'"),
    ("dtasnl", "tau_neg=2", "method 'dtasnl': method_args.tau_neg=2: expected a number in [0, 1]"),
    ("frpretrain", "mask_ratio=1", "method 'frpretrain': method_args.mask_ratio=1: expected a number in (0, 1)"),
])
def test_method_argument_errors(tmp_path: Path, capsys, method: str, argument: str, expected: str) -> None:
    assert main(["run", "--quiet", *_args(tmp_path, method=method), f"method_args.{argument}"]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    _nothing_written(tmp_path)


def test_every_method_default_satisfies_its_own_declared_types_and_ranges() -> None:
    from bench.method import describe_arguments
    from bench.registry import create_method, get_method_class, method_names

    for name in method_names():
        defaults = {a.name: a.default for a in describe_arguments(get_method_class(name).Args)}
        # every default passed explicitly (as a config file would give it) goes through the checks unchanged
        assert create_method(name, 7, defaults).hparams == create_method(name, 7).hparams, name


def test_a_good_value_is_canonicalised_and_recorded_as_before() -> None:
    from bench.config import build_config
    from bench.registry import create_method

    cfg = build_config(overrides=["optim.lr=1", "augment.rrc_scale=[0.2, 1]", "method_args.lambda_u=2"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.augment.rrc_scale == (0.2, 1.0)
    assert create_method("fixmatch", 7, cfg.method_args).hparams == {"threshold": 0.95, "lambda_u": 2.0}


# Checkpoints: every backbone tensor loads, or the run stops before any data is prepared.
def _tiny_backbone_file(path: Path, transform=lambda sd: sd) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    sd = build_model(ModelConfig(backbone="ferbench_cnn_tiny"), 7).backbone.state_dict()
    sd = {k: v + 0.5 if v.is_floating_point() else v for k, v in sd.items()}  # unlike any fresh initialisation
    torch.save(transform(sd), path)
    return sd


def test_a_fitting_checkpoint_loads_into_ferbench_cnn_tiny_and_the_record_says_so(tmp_path: Path, capsys) -> None:
    file = tmp_path / "good.pth"
    sd = _tiny_backbone_file(file, lambda sd: {"state_dict": sd})
    model = build_model(ModelConfig(backbone="ferbench_cnn_tiny", pretrained_file=str(file)), 7)
    own = model.backbone.state_dict()
    assert len(own) == 36 and all(torch.equal(own[k], sd[k]) for k in own)
    assert main(["run", "--quiet", *_args(tmp_path, method="supervised"), f"model.pretrained_file={file}",
                 "train.iterations=2", "train.eval_every=2"]) == 0
    rec = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    assert rec["pretrained_file"] == str(file)
    assert rec["pretrained"] == {"file": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                                 "tensors_loaded": 30, "model_tensors": 30, "missing": [], "unexpected": [],
                                 "resampled": []}  # 36 keys, of which 6 BatchNorm counters are not weights


def test_a_torchvision_resnet18_checkpoint_loads_with_every_trunk_tensor_equal(tmp_path: Path) -> None:
    """The MS-Celeb-1M ResNet-18 layout of the Ada-CM lineage: torchvision keys under 'state_dict', fc included,
    plain and with DataParallel's 'module.' prefixes."""
    import torchvision

    tv = torchvision.models.resnet18(num_classes=1000).state_dict()
    for name, sd in (("plain.pth", tv), ("dp.pth", {f"module.{k}": v for k, v in tv.items()})):
        torch.save({"state_dict": sd}, tmp_path / name)
        model = build_model(ModelConfig(backbone="resnet18", pretrained_file=str(tmp_path / name)), 7)
        trunk = model.backbone.state_dict()
        assert len(trunk) == len(tv) - 2 and all(torch.equal(trunk[k], tv[k]) for k in trunk)
        assert model.pretrained["tensors_loaded"] == model.pretrained["model_tensors"] == 100
        assert [k.removeprefix("module.") for k in model.pretrained["unexpected"]] == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("backbone", ["ferbench_cnn_tiny", "resnet18"])
def test_checkpoints_that_do_not_fit_stop_before_anything_is_prepared(tmp_path: Path, capsys, backbone: str) -> None:
    wrong_keys, wrong_shapes = tmp_path / "x.pth", tmp_path / "shapes.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, wrong_keys)
    sd = build_model(ModelConfig(backbone=backbone), 7).backbone.state_dict()
    first = next(iter(sd))
    sd[first] = torch.zeros(*sd[first].shape[:-1], sd[first].shape[-1] + 2)
    torch.save(sd, wrong_shapes)
    n = len([k for k in sd if not k.endswith("num_batches_tracked")])
    cases = [(wrong_keys, f"model.pretrained_file {wrong_keys}: {n} of {n} tensors of backbone '{backbone}' are not "
                          "in the file (first: "),
             (wrong_shapes, f"model.pretrained_file {wrong_shapes}: 1 tensor(s) do not fit backbone '{backbone}': "
                            f"{first} is {list(sd[first].shape)} in the file")]
    for file, expected in cases:
        assert main(["run", "--quiet", *_args(tmp_path, method="supervised"), f"model.backbone={backbone}",
                     f"model.pretrained_file={file}"]) == 2
        assert expected in _one_error_line(capsys.readouterr().err)
        _nothing_written(tmp_path)


def test_an_unreadable_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["run", "--quiet", *_args(tmp_path), f"model.pretrained_file={tmp_path / 'junk.pth'}"]) == 2
    assert f"model.pretrained_file {tmp_path / 'junk.pth'}: not a readable checkpoint (torch.load, weights only: " \
        in _one_error_line(capsys.readouterr().err)
    _nothing_written(tmp_path)


# Sweeps: every cell is checked before any data is prepared or any run starts.
def _sweep(tmp_path: Path, methods: list, budgets: list, seeds: list) -> Path:
    spec = {"name": "cells", "output_dir": str(tmp_path / "out"), "methods": methods, "budgets": budgets,
            "seeds": seeds, "base": {"data": {"cache_dir": str(tmp_path / "cache"), "image_size": 32,
                                              "synthfer": TINY_SYNTHFER},
                                     "model": {"backbone": "ferbench_cnn_tiny"}, "train": {"iterations": 2}}}
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("methods, budgets, seeds, overrides, expected", [
    (["supervised", {"name": "fixmatch", "args": {"threshold": "high"}}], [0.1], [0, 1], [],
     "sweep cells, cell fixmatch budget=0.1 seed=0: method 'fixmatch': method_args.threshold='high': expected"),
    (["supervised", "fixmatch"], [0.1, 2], [0], [],
     "sweep cells, cell supervised budget=2 seed=0: budget 2.0 out of range for protocol 'fraction'"),
    (["supervised"], [0.1], [0], ["train.mu=many"], "sweep cells, cell supervised budget=0.1 seed=0: "
                                                    "train.mu='many': expected an integer in [0, inf)"),
    (["supervised", {"name": "fixmatch", "config": {"optim": {"lr": 0}}}], [0.1], [0], [],
     "sweep cells, cell fixmatch budget=0.1 seed=0: optim.lr=0.0: expected a number in (0, inf)"),
    (["supervised"], ["lots"], [0], [], "cells.yaml: budgets=['lots']: expected a list, each item a number"),
    (["supervised"], [0.1], [-1], [], "cells.yaml: seeds=[-1]: expected a list, each item an integer in [0, inf)"),
])
def test_a_bad_sweep_cell_stops_the_sweep_naming_the_cell(tmp_path: Path, capsys, methods, budgets, seeds,
                                                          overrides, expected) -> None:
    spec = _sweep(tmp_path, methods, budgets, seeds)
    assert main(["sweep", str(spec), *overrides]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    _nothing_written(tmp_path)
