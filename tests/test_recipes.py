"""Reference recipes (issue 14): recipes as data under the user's config, in run ids; the lineage's head (item 1),
separate forward passes (item 2) and WeightEMA over state_dict entries with the customised decay (item 8), each
checked against values worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import IdentityBackbone, tiny_overrides
from torch import nn

from bench.bundles import get_recipe, recipe_names
from bench.cli import main
from bench.config import build_config, run_id
from bench.data.replicas import write_rafdb_replica
from bench.engine.ema import WalkingEma
from bench.engine.model import FERModel
from bench.errors import FERBenchError
from bench.method import ModelOutput, forward_parts, joint_forward, set_forward_batching
from methods.leaf import NoisyTopKMoE


def test_every_recipe_builds_for_the_methods_it_is_the_reference_of() -> None:
    assert recipe_names() == ["adacm", "leaf", "sitfer", "ssfer", "usb"]
    for name in recipe_names():
        recipe = get_recipe(name)
        assert recipe.source and recipe.reference_for
        for method in recipe.reference_for:
            cfg = build_config(overrides=[f"recipe={name}", f"method={method}"])
            assert cfg.recipe == name
            assert run_id(cfg).startswith(f"{method}-{name}_")


def test_recipe_values_sit_under_the_users() -> None:
    cfg = build_config(overrides=["method=adacm", "recipe=adacm"])
    # the lineage (docs/concepts/methods.md#the-ada-cm-code-lineage and #ada-cm): Adam 5e-4 constant, B=16, mu=1,
    # 20 x 800 iterations
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("adam", 5e-4, "constant")
    assert (cfg.train.batch_size, cfg.train.mu, cfg.train.iterations, cfg.train.eval_every) == (16, 1, 16000, 800)
    assert (cfg.model.head, cfg.model.drop_rate, cfg.train.forward) == ("normalized", 0.5, "separate")
    assert (cfg.train.ema_walk, cfg.train.student_decay, cfg.augment.channels) == ("state_dict", 0.02, "bgr")
    assert (cfg.data.image_size, cfg.augment.resize_to, round(cfg.augment.pad_frac * 224)) == (100, 224, 8)
    # an override written before the recipe on the command line still wins: the recipe is the bottom layer
    mine = build_config(overrides=["train.iterations=5", "method=adacm", "recipe=adacm", "method_args.epoch_iters=2"])
    assert (mine.train.iterations, mine.method_args["epoch_iters"], mine.optim.lr) == (5, 2, 5e-4)
    assert run_id(mine) != run_id(cfg)
    # item 6: SIT-FER's learning rate is 1e-4, not the lineage's 5e-4; no EMA
    sit = build_config(overrides=["method=sitfer", "recipe=sitfer"])
    assert (sit.optim.lr, sit.train.ema_decay, sit.train.iterations) == (1e-4, 0.0, 64000)
    # a recipe's per-method part reaches that method only (USB's MeanTeacher config has mu 1)
    usb_mt = build_config(overrides=["method=meanteacher", "recipe=usb"])
    usb_fm = build_config(overrides=["method=fixmatch", "recipe=usb"])
    assert (usb_mt.train.mu, usb_fm.train.mu) == (1, 7)
    assert "teacher_bn" in usb_mt.method_args and "teacher_bn" not in usb_fm.method_args


def test_the_harness_keeps_its_run_ids_and_an_unknown_recipe_is_one_line() -> None:
    harness = build_config(overrides=["method=adacm"])
    assert harness.recipe == "harness" and "recipe" not in run_id(harness)
    assert run_id(harness) == run_id(build_config(overrides=["method=adacm", "recipe=harness"]))
    with pytest.raises(FERBenchError, match=r"recipe='adcm': unknown; expected 'harness' or one of adacm, leaf"):
        build_config(overrides=["recipe=adcm"])


def test_normalized_head_is_dropout_then_l2_then_linear() -> None:
    """Item 1: GAP -> Dropout -> L2-normalise -> Linear, returning the normalised feature (Ada-CM backbone.py)."""
    model = FERModel(IdentityBackbone(2), 2, drop_rate=0.5, head="normalized")
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        model.classifier.bias.zero_()
    x = torch.tensor([[3.0, 4.0]])
    model.eval()
    logits, feats, _ = model(x, return_features=True)
    assert feats.flatten().tolist() == pytest.approx([0.6, 0.8])
    assert logits.flatten().tolist() == pytest.approx([0.6, 1.6])
    model.train()  # dropout zeroes units before normalising: find a draw that keeps exactly one of the two
    for seed in range(100):
        torch.manual_seed(seed)
        feats = model(x, return_features=True).features
        if (feats != 0).sum() == 1:
            break
    assert sorted(feats.abs().flatten().tolist()) == [0.0, 1.0]  # one unit left, normalised to 1
    linear = FERModel(IdentityBackbone(2), 2, head="linear").eval()
    assert linear(x, return_features=True).features.tolist() == [[3.0, 4.0]]  # the harness: the raw feature
    assert model.forward_head(x, pre_logits=True).shape == (1, 2)  # timm's meaning: the classifier's input
    assert torch.equal(model.eval().forward_head(x), model(x))


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(1, affine=False)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | ModelOutput:
        y = self.bn(x)
        return ModelOutput(y, y * 2, y.new_zeros(())) if return_features else y


def test_separate_forwards_normalise_each_part_with_its_own_statistics() -> None:
    """Item 2: the lineage calls the model on each part; BatchNorm then standardises each part by itself."""
    net = _BNNet().train()
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[10.0], [30.0]])
    joint_a, joint_b = joint_forward(net, a, b)
    # joint: one batch {0, 2, 10, 30}: mean 10.5, biased variance (110.25 + 72.25 + 0.25 + 380.25) / 4 = 140.75
    assert joint_a.flatten().tolist() == pytest.approx([(0 - 10.5) / 140.75 ** 0.5, (2 - 10.5) / 140.75 ** 0.5],
                                                       rel=1e-4)
    set_forward_batching(net, "separate")
    sep_a, sep_b, f_a, f_b = joint_forward(net, a, b, return_features=True)
    assert sep_a.flatten().tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)  # each part standardised alone
    assert sep_b.flatten().tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)
    assert f_b.flatten().tolist() == pytest.approx([-2.0, 2.0], abs=1e-3)
    # the auxiliary loss belongs to its forward: summed over parts it means the same in both modes
    class WithLoss(nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> ModelOutput:
            return ModelOutput(x * 2, x, x.sum())

    loss_net = WithLoss()
    joint_parts = forward_parts(loss_net, a, b)
    assert [p.aux.item() for p in joint_parts] == [42.0, 0.0]
    set_forward_batching(loss_net, "separate")
    assert [p.aux.item() for p in forward_parts(loss_net, a, b)] == [2.0, 40.0]


class _Shared(nn.Module):
    """A tensor registered three times (as LEAF's shared expert is nine times), next to an unshared one."""

    def __init__(self) -> None:
        super().__init__()
        self.expert = nn.Linear(1, 1, bias=False)
        self.experts = nn.ModuleList([self.expert] * 2)
        self.alone = nn.Linear(1, 1, bias=False)


def _set(model: _Shared, shared: float, alone: float) -> None:
    with torch.no_grad():
        model.expert.weight.fill_(shared)
        model.alone.weight.fill_(alone)


def test_weight_ema_walks_state_dict_entries_with_the_customised_decay() -> None:
    """Item 8: Ada-CM/LEAF's WeightEMA updates once per state_dict entry (ema = d ema + (1 - d) p, then
    p *= 1 - wd), so a tensor listed k times moves with decay d^k and is decayed k times."""
    student = _Shared()
    _set(student, 1.0, 1.0)
    ema = WalkingEma(student, decay=0.5, walk="state_dict", student_decay=0.02)
    _set(student, 3.0, 3.0)
    ema.update(student, lr=5.0)  # decay factor 0.02 x lr 5 = 0.1
    # shared, 3 entries: e=1,p=3 -> e=2, p=2.7 -> e=2.35, p=2.43 -> e=2.39, p=2.187
    assert ema.module.expert.weight.item() == pytest.approx(2.39)
    assert student.expert.weight.item() == pytest.approx(2.187)
    # unshared, 1 entry: e = 0.5 + 1.5 = 2, p = 2.7
    assert ema.module.alone.weight.item() == pytest.approx(2.0)
    assert student.alone.weight.item() == pytest.approx(2.7)


def test_the_harness_ema_updates_each_tensor_once_whatever_its_aliases() -> None:
    student = _Shared()
    _set(student, 1.0, 1.0)
    ema = WalkingEma(student, decay=0.5, walk="tensors")
    _set(student, 3.0, 3.0)
    ema.update(student)
    assert (ema.module.expert.weight.item(), ema.module.alone.weight.item()) == (2.0, 2.0)
    assert student.expert.weight.item() == 3.0  # no customised decay unless asked


def test_leaf_shared_expert_is_listed_nine_times_as_in_the_code() -> None:
    moe = NoisyTopKMoE(4, num_experts=8, k=1, shared=True)
    ptrs = {v.data_ptr() for k, v in moe.state_dict().items() if "expert" in k and k.endswith("weight")}
    assert len([k for k in moe.state_dict() if "expert" in k]) == 9 * len(list(moe.expert.state_dict()))
    assert len(ptrs) == len([p for p in moe.expert.parameters() if p.ndim == 2])
    assert sum(p.numel() for p in moe.parameters()) == sum(p.numel() for p in moe.expert.parameters()) + 2 * 4 * 8


PAPER_METHODS = {"adacm": "adacm", "leaf": "leaf", "sitfer": "sitfer", "dtasnl": "adacm", "supervised": "usb",
                 "fixmatch": "usb", "flexmatch": "usb", "freematch": "usb", "softmatch": "usb", "meanteacher": "usb",
                 "frpretrain": "ssfer"}


@pytest.fixture(scope="module")
def msceleb_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision ResNet-18 saved as the MS-Celeb-1M checkpoint is distributed: {'state_dict': ...}, fc kept."""
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "resnet18_msceleb.pth"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=1000).state_dict()}, path)
    return path


def test_paper_sweep_lists_every_method_under_its_recipe(tmp_path: Path, msceleb_layout: Path, capsys) -> None:
    basic = write_rafdb_replica(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7] * 2, [1, 2, 3, 4, 5, 6, 7])
    mae = tmp_path / "mae.pth"
    torch.save({"model": {}}, mae)
    spec = Path(__file__).parents[1] / "bench/configs/papers/rafdb.yaml"
    args = ["sweep", str(spec), "--dry-run", f"data.root={basic}",
            f"model.pretrained_file={msceleb_layout}", f"frpretrain:method_args.pretrain_checkpoint={mae}"]
    assert main(args) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    cells = {(ln[0], ln[1], ln[2].split("=")[0], float(ln[2].split("=")[1]), ln[3]) for ln in lines}
    assert len(lines) == len(cells) == 10 * 5 * 5 + 3 * 5 + 5  # 10 methods x 5 N x 5 seeds, FR-pretr., reference
    assert {(m, r.removeprefix("recipe=")) for m, r, *_ in cells} == {*PAPER_METHODS.items(), ("fullysupervised",
                                                                                               "usb")}
    assert {b for m, _, p, b, _ in cells if m == "adacm"} == {100, 400, 1000, 2000, 4000}
    assert {(p, b) for m, _, p, b, _ in cells if m == "frpretrain"} == {("fraction", 0.05), ("fraction", 0.1),
                                                                         ("fraction", 0.25)}
    # without the checkpoint: one line, exit 2, before anything is prepared or listed
    assert main(args[:4]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "ferbench: error: sweep rafdb_papers, cell fullysupervised budget=all seed=0: model.pretrained_file is "
        "required: the MS-Celeb-1M ResNet-18 the lineage starts from (resnet18_msceleb.pth); set "
        "model.pretrained_file=PATH"]
    assert main(args[:5]) == 2  # FR-pretraining's own checkpoint is required too
    assert "cell frpretrain budget=0.05 seed=0: method_args.pretrain_checkpoint is required" in capsys.readouterr().err


RECIPE_RUNS = {
    "adacm": ("adacm", ["augment.resize_to=40"]),
    "leaf": ("leaf", ["augment.resize_to=40"]),
    "sitfer": ("sitfer", ["augment.resize_to=40"]),
    "usb": ("meanteacher", []),
    "ssfer": ("frpretrain", ["model.backbone=ferbench_vit_tiny", "model.timm_kwargs={img_size: 32, patch_size: 8}",
                             "method_args={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}",
                             "stages.pretrain.train={iterations: 2, batch_size: 8}",
                             "stages.pretrain.optim.warmup_iters=1",
                             "stages.finetune.train={iterations: 2, batch_size: 8}",
                             "stages.finetune.optim={warmup_iters: 1, decay_iters: 1}",
                             "stages.semisup.train={iterations: 2, batch_size: 8}"]),
}


@pytest.mark.parametrize("recipe", sorted(RECIPE_RUNS))
def test_a_short_run_of_each_recipe_writes_a_valid_record(recipe: str, shared_cache: Path, tmp_path: Path) -> None:
    method, extra = RECIPE_RUNS[recipe]
    args = tiny_overrides(shared_cache, tmp_path, method=method, recipe=recipe, **{
        "model.backbone": "ferbench_cnn_tiny", "train.iterations": 4, "train.eval_every": 2,
        "train.checkpoint_every": 2})
    assert main(["run", "--quiet", *args, *extra]) == 0
    files = sorted((tmp_path / "records").glob("*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    cfg = build_config(overrides=[*args, *extra])
    assert rec["run_id"] == run_id(cfg) and rec["run_id"].startswith(f"{method}-{recipe}_")
    assert rec["recipe"] == rec["config"]["recipe"] == recipe
    assert rec["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert 0.0 <= rec["metrics"]["final"]["accuracy"] <= 1.0
    assert rec["metrics"]["best_accuracy"] >= rec["metrics"]["final"]["accuracy"]
