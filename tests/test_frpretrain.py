"""FR-pretraining: MAE masking and loss, Face-Mixup IoU weights and loss, and the multi-stage engine
(hand-off, resume inside a stage, a checkpoint in place of stage 0)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import build_config
from bench.data.faceboxes import box_iou, fixed_boxes
from bench.engine.mae import MaskedAutoencoder, masked_mse, patchify, random_masking
from bench.engine.model import build_model, parameter_checksum
from bench.engine.streams import step_seed
from bench.engine.trainer import train, validate
from bench.errors import FERBenchError
from bench.method import Batch, StepContext
from bench.registry import create_method
from methods.frpretrain import face_mixup_loss
from tests.conftest import require, tiny_overrides

TINY_MAE = "{decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}"


def _tiny_vit():
    cfg = build_config(overrides=["model.backbone=ferbench_vit_tiny", "model.timm_kwargs={img_size: 32}"])
    return build_model(cfg.model, 7)


# --- MAE ---------------------------------------------------------------------------------------


def test_patchify_orders_patches_row_major_and_pixels_inside() -> None:
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # 2 channels, 4x4, patch 2
    p = patchify(img, 2)
    assert p.shape == (1, 4, 8)
    # patch 1 is the top-right 2x2 block; inside it pixels (row, col) then channel: c0=2,c1=18 at (0,2)...
    assert p[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


def test_random_masking_keeps_a_quarter_and_marks_the_rest() -> None:
    torch.manual_seed(0)
    keep, mask = random_masking(3, 16, 0.75, torch.device("cpu"))
    assert keep.shape == (3, 4) and mask.sum(1).tolist() == [12.0, 12.0, 12.0]
    assert torch.all(mask.gather(1, keep) == 0)
    with pytest.raises(FERBenchError, match="mask_ratio=1.0"):
        random_masking(1, 16, 1.0, torch.device("cpu"))


def test_masked_mse_counts_only_masked_patches() -> None:
    target = torch.zeros(1, 4, 2)
    pred = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])  # per-patch MSE 1, 4, 9, 16
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 9) / 2)


def test_mae_encodes_visible_patches_only_and_its_loss_ignores_them() -> None:
    model = _tiny_vit()
    mae = MaskedAutoencoder(model.backbone, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    seen = []
    model.backbone.blocks.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    loss, pred, mask = mae(x)
    assert seen == [torch.Size([2, 1 + 4, 96])]  # class token + 4 of the 16 patches
    assert loss.item() == pytest.approx(masked_mse(pred, patchify(x, 8), mask).item())
    (grad,) = torch.autograd.grad(loss, pred)
    visible = mask == 0
    assert torch.all(grad[visible] == 0) and torch.all(grad[~visible].abs().sum(-1) > 0)


def test_mae_needs_a_vit() -> None:
    cnn = build_model(build_config(overrides=["model.backbone=ferbench_cnn_tiny"]).model, 7)
    with pytest.raises(FERBenchError, match="needs a timm VisionTransformer"):
        MaskedAutoencoder(cnn.backbone)


# --- Face-Mixup --------------------------------------------------------------------------------


def test_box_iou_on_hand_computed_boxes() -> None:
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [2, 2, 3, 3]])
    assert box_iou(a, b).tolist() == pytest.approx([1 / 7, 1.0, 0.0])
    assert fixed_boxes(torch.zeros(2, 3, 32, 32))[0].tolist() == pytest.approx(
        [25 * 32 / 224, 25 * 32 / 224, 220 * 32 / 224, 220 * 32 / 224])


def test_face_mixup_loss_by_hand() -> None:
    logits_mixed = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    logits_real = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    lam, s, iou = 0.7, 0.1, torch.tensor([0.25, 0.25])

    def lsm(z: list[float]) -> list[float]:
        m = math.log(sum(math.exp(v) for v in z))
        return [v - m for v in z]

    on, off = 1 - s + s / 2, s / 2
    t = [[lam * on + (1 - lam) * off, lam * off + (1 - lam) * on],  # sample 0 (y=0) mixed with sample 1 (y=1)
         [lam * off + (1 - lam) * on, lam * on + (1 - lam) * off]]
    ce_mixed = [-sum(ti * li for ti, li in zip(t[i], lsm(logits_mixed[i].tolist()), strict=True)) for i in range(2)]
    ce_real = [-lsm([1.0, 0.0])[0], math.log(2)]
    expected = sum(ce_mixed[i] + 0.75 * (ce_real[0] + ce_real[1]) for i in range(2)) / 2
    got = face_mixup_loss(logits_mixed, logits_real, y, lam=lam, iou=iou, num_classes=2, smoothing=s)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # identical boxes (IoU 1): the real-image terms vanish, leaving the mixup CE
    got1 = face_mixup_loss(logits_mixed, logits_real, y, lam=lam, iou=torch.ones(2), num_classes=2, smoothing=s)
    assert got1.item() == pytest.approx(sum(ce_mixed) / 2, rel=1e-6)


@pytest.mark.parametrize("bug", [False, True])
def test_face_boxes_are_taken_before_mixing_unless_the_reference_bug_is_on(bug: bool) -> None:
    method = create_method("frpretrain", 7, {"mixup_inplace_bug": bug})
    seen = []
    method._boxes = lambda imgs: (seen.append(imgs.clone()), fixed_boxes(imgs))[1]
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    model = _tiny_vit()
    torch.manual_seed(1)
    out = method.training_step(model, Batch({"weak": x, "y": torch.tensor([0, 1, 2, 3])}),
                               StepContext(0, 1, 7, stage="finetune", denormalize=lambda t: t))
    lam = out.logs["lam"]
    mixed = lam * x + (1 - lam) * x.flip(0)
    assert torch.allclose(seen[0], mixed if bug else x)


def _half_boxes(images: torch.Tensor) -> torch.Tensor:  # a provider plugged in by import path
    n, _, h, w = images.shape
    return torch.tensor([0.0, 0.0, w / 2, h]).expand(n, 4)


def test_a_box_provider_plugs_in_by_import_path() -> None:
    from bench.data.faceboxes import box_provider

    assert box_provider("dataset")(torch.zeros(2, 3, 8, 6)).tolist() == [[0.0, 0.0, 6.0, 8.0]] * 2
    provider = box_provider("tests.test_frpretrain:_half_boxes")
    assert provider(torch.zeros(1, 3, 8, 8)).tolist() == [[0.0, 0.0, 4.0, 8.0]]
    with pytest.raises(FERBenchError, match="box_provider='tests.nowhere:f': cannot import it"):
        box_provider("tests.nowhere:f")


def test_opencv_boxes_find_the_face_in_a_real_photo() -> None:
    skimage_data = require("skimage.data", "scikit-image not installed (the dev extra)")
    require("cv2", "OpenCV not installed (pip install '.[faces]')")
    from bench.data.faceboxes import OpenCVFaceBoxes

    photo = skimage_data.astronaut()[:256, 96:352]  # Eileen Collins; her face is near (177..272, 66..161)
    img = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).unsqueeze(0)
    blank = torch.full_like(img, 128)
    boxes = OpenCVFaceBoxes()(torch.cat([img, blank]))
    x0, y0, x1, y1 = boxes[0].tolist()
    assert 60 <= x0 < 100 and 40 <= y0 < 90 and 150 < x1 <= 200 and 140 < y1 <= 190  # the face, in the crop
    assert boxes[1].tolist() == pytest.approx(fixed_boxes(blank)[0].tolist())  # no face: the fallback box


# --- stages in the engine ----------------------------------------------------------------------


def _fr_overrides(cache: Path, out: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(cache, out, **{"model.backbone": "ferbench_vit_tiny", "train.iterations": 4}),
            "method=frpretrain", "model.timm_kwargs={img_size: 32}", f"method_args={TINY_MAE}",
            "stages.pretrain.train.iterations=3", "stages.finetune.train.iterations=6",
            "stages.finetune.train.checkpoint_every=2", *extra]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu")


def _stage_start(cfg_overrides: list[str], encoder: dict[str, torch.Tensor], stage: str) -> float:
    """The parameter checksum stage `stage` must start from: a model built as the engine builds it (seeded the
    same), its backbone holding `encoder`."""
    torch.manual_seed(step_seed(0, -1, 0, f"init:{stage}"))
    model = build_model(build_config(overrides=cfg_overrides).model, 7)
    model.backbone.load_state_dict(encoder)
    return parameter_checksum(model)


def test_stage_one_starts_from_stage_zero_weights(shared_cache: Path, tmp_path: Path) -> None:
    rec = train(build_config(overrides=_fr_overrides(shared_cache, tmp_path)))
    run_dir = tmp_path / "runs" / rec["run_id"] / "stages"
    enc = {k.removeprefix("encoder."): v for k, v in _state(run_dir / "pretrain" / "model.pt").items()
           if k.startswith("encoder.")}
    # stage 1 starts from stage 0's encoder exactly (and a seeded fresh classifier)
    assert rec["stages"][1]["start_checksum"] == _stage_start(_fr_overrides(shared_cache, tmp_path), enc, "finetune")
    assert rec["stages"][1]["start_checksum"] != rec["stages"][1]["end_checksum"]
    fresh = build_model(build_config(overrides=_fr_overrides(shared_cache, tmp_path)).model, 7)
    assert parameter_checksum(fresh.backbone) != pytest.approx(sum(float(v.double().sum()) for v in enc.values()))
    names = [s["name"] for s in rec["stages"]]
    assert names == ["pretrain", "finetune", "semisup"] and [s["iterations"] for s in rec["stages"]] == [3, 6, 4]
    assert rec["stages"][2]["start_checksum"] == rec["stages"][1]["end_checksum"]  # stage 2 goes on from 1
    assert rec["stages"][0]["accuracy"] is None and rec["stages"][2]["accuracy"] == rec["metrics"]["final"]["accuracy"]
    assert rec["iterations"] == 13 and rec["global_batch"] == {"labeled": 8, "unlabeled": 8}
    assert rec["stages"][1]["config"]["optim"]["name"] == "adamw"
    assert list(rec["stages"][1]["config"]["augment"]["normalize_mean"]) == [0.588, 0.459, 0.402]


def test_resume_in_the_middle_of_stage_one_equals_an_uninterrupted_run(shared_cache: Path, tmp_path: Path) -> None:
    full = train(build_config(overrides=_fr_overrides(shared_cache, tmp_path / "a")))
    cut = _fr_overrides(shared_cache, tmp_path / "b")
    assert train(build_config(overrides=[*cut, "stages.finetune.train.stop_after=3"])) is None
    stage_dir = tmp_path / "b" / "runs" / full["run_id"] / "stages"  # the same run: stop_after is not in the id
    assert (stage_dir / "pretrain" / "stage.json").is_file() and (stage_dir / "finetune" / "checkpoint").is_dir()
    assert not (stage_dir / "finetune" / "stage.json").exists()
    resumed = train(build_config(overrides=cut))
    assert resumed["metrics"] == full["metrics"] and resumed["history"] == full["history"]
    # stage 0 ran once, stage 1 resumed at its checkpoint's step 3, stage 2 ran in the second process only
    assert [s["sessions"] for s in resumed["stages"]] == [
        [{"start_step": 0, "steps": 3}], [{"start_step": 0, "steps": 3}, {"start_step": 3, "steps": 3}],
        [{"start_step": 0, "steps": 4}]]
    assert [s["end_checksum"] for s in resumed["stages"]] == [s["end_checksum"] for s in full["stages"]]
    assert not (stage_dir / "finetune" / "checkpoint").exists()


def test_a_checkpoint_replaces_stage_zero_and_the_record_says_which(shared_cache: Path, tmp_path: Path) -> None:
    first = train(build_config(overrides=_fr_overrides(shared_cache, tmp_path / "a")))
    ckpt = tmp_path / "a" / "runs" / first["run_id"] / "stages" / "pretrain" / "model.pt"
    args = f"{{decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, pretrain: checkpoint, pretrain_checkpoint: {ckpt}}}"
    overrides = [*_fr_overrides(shared_cache, tmp_path / "b"), f"method_args={args}"]
    rec = train(build_config(overrides=overrides))
    assert [s["name"] for s in rec["stages"]] == ["finetune", "semisup"]
    info = rec["method_info"]["pretrain_checkpoint"]
    assert rec["method_info"]["pretrain"] == "checkpoint" and info["file"] == str(ckpt)
    assert info["tensors_loaded"] == len(_tiny_vit().backbone.state_dict()) and info["missing"] == []
    enc = {k.removeprefix("encoder."): v for k, v in _state(ckpt).items() if k.startswith("encoder.")}
    assert rec["stages"][0]["start_checksum"] == _stage_start(overrides, enc, "finetune")
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, bad)
    cfg = build_config(overrides=[*_fr_overrides(shared_cache, tmp_path / "c"),
                                  f"method_args={{pretrain: checkpoint, pretrain_checkpoint: {bad}}}"])
    with pytest.raises(FERBenchError, match=f"pretrain_checkpoint {bad}: .* tensors of the ViT encoder are not in the"):
        train(cfg)
    assert not (tmp_path / "c" / "records").exists()


def test_pretrain_data_folders_join_stage_zero_only(shared_cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "faces" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = f"{{decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, pretrain_data: [{tmp_path / 'faces'}]}}"
    rec = train(build_config(overrides=[*_fr_overrides(shared_cache, tmp_path / "out"), f"method_args={args}"]))
    assert [s["unlabeled_pool"] for s in rec["stages"]] == [280 + 5, 0, 280]
    (folder / "5.jpg").write_bytes(b"not a jpeg")
    cfg = build_config(overrides=[*_fr_overrides(shared_cache, tmp_path / "out2"), f"method_args={args}"])
    with pytest.raises(FERBenchError, match=f"{folder / '5.jpg'}: unreadable image"):
        train(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ("stages.bogus.train.iterations=3", "stages.bogus: method 'frpretrain' has no such stage; its stages: "
                                        "pretrain, finetune, semisup"),
    ("stages.semisup.train.ema_decay=0.0", "trains against an EMA teacher: train.ema_decay must be > 0 "
                                           "(stage semisup)"),
    ("stages.finetune.train.iterations=0", "stages.finetune.train.iterations=0: expected an integer in [1, inf)"),
    ("method_args.box_provider=yolo", "box_provider='yolo'; expected one of 'fixed', 'opencv', 'dataset'"),
    ("method_args.pretrain_data=/nowhere", "pretrain_data /nowhere: folder not found"),
    ("stages.finetune.augment.crop=random", "stages.finetune.augment.crop='random': expected one of 'pad', 'resized'"),
])
def test_bad_stage_settings_fail_before_training(shared_cache: Path, tmp_path: Path, override: str,
                                                 message: str) -> None:
    with pytest.raises(FERBenchError, match=re.escape(message)):
        validate(build_config(overrides=[*_fr_overrides(shared_cache, tmp_path), override]))


def test_single_stage_records_keep_their_shape(shared_cache: Path, tmp_path: Path) -> None:
    rec = train(build_config(overrides=tiny_overrides(shared_cache, tmp_path, **{"train.iterations": 4})))
    assert "stages" not in rec and rec["iterations"] == 4
    assert json.loads((tmp_path / "records" / f"{rec['run_id']}.json").read_text())["run_id"] == rec["run_id"]


def test_cli_pretrain_data_flag_reaches_the_method(shared_cache: Path, tmp_path: Path, capsys) -> None:
    from bench.cli import main

    overrides = _fr_overrides(shared_cache, tmp_path)
    assert main(["run", "--quiet", *overrides, "--pretrain-data", str(tmp_path / "missing")]) == 2
    assert f"pretrain_data {tmp_path / 'missing'}: folder not found" in capsys.readouterr().err


def test_the_ssfer_preset_gives_each_stage_the_reference_schedule() -> None:
    from bench.engine.stage import stage_config

    cfg = build_config(overrides=["method=frpretrain", "preset=ssfer"])
    validate(cfg)
    stages = {s.name: stage_config(cfg, s) for s in create_method("frpretrain", 7, {}).stages()}
    pre, fine, semi = stages["pretrain"], stages["finetune"], stages["semisup"]
    assert (pre.train.iterations, pre.train.batch_size, pre.optim.lr, pre.optim.warmup_iters) == (38400, 256, 3.4e-4,
                                                                                                   2400)
    assert (fine.optim.name, fine.optim.lr, tuple(fine.optim.betas), fine.optim.min_lr, fine.optim.decay_iters) == (
        "adamw", 1.5e-4, (0.9, 0.95), 1e-5, 1900)
    assert (semi.train.batch_size, semi.train.mu, semi.optim.schedule, semi.augment.randaugment_n) == (64, 1,
                                                                                                        "constant", 2)
    assert cfg.model.backbone == "vit_base_patch16_224" and cfg.data.image_size == 224
    assert tuple(fine.augment.normalize_std) == (0.228, 0.202, 0.190) and tuple(fine.augment.rrc_scale) == (0.2, 1.0)
    # with the released checkpoint in place of stage 0, the preset's pretrain settings are simply unused
    validate(build_config(overrides=["method=frpretrain", "preset=ssfer", "method_args.pretrain=none"]))


def test_halfcosine_schedule_decays_to_min_lr_then_stays() -> None:
    from bench.engine.optim import lr_factor

    cfg = build_config(overrides=["optim.schedule=halfcosine", "optim.lr=1.0", "optim.min_lr=0.1",
                                  "optim.decay_iters=10", "optim.warmup_iters=2", "train.iterations=20"])
    assert [lr_factor(cfg, s) for s in (0, 1)] == [0.5, 1.0]  # warm-up
    assert lr_factor(cfg, 5) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert lr_factor(cfg, 10) == pytest.approx(0.1) and lr_factor(cfg, 19) == pytest.approx(0.1)
