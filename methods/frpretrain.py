"""FR-pretraining, "Bridging the Gaps" (Song, He, Feng, Shen; arXiv 2410.17622; code zhelishisongjie/SSFER),
as docs/concepts/methods.md#fr-pretraining records it: a pipeline of three stages sharing one ViT.

- `pretrain` (stage 0): masked-autoencoder reconstruction on the unlabeled images of the dataset plus any
  `pretrain_data` folders (mask ratio 0.75, pixel MSE on the masked patches, light decoder), AdamW 3.4e-4,
  wd 0.05, betas (0.9, 0.95), half-cosine schedule. Skipped when `pretrain_checkpoint` gives weights
  (the released `125w_base_warmup50_batch256_600.pth`, or a stage-0 `model.pt` of an earlier run), or
  with `pretrain: none` (the ablation without stage 0).
- `finetune` (stage 1): supervised on the labeled split with IoU-weighted Face-Mixup: per batch
  lambda ~ Beta(1, 1); image i is mixed with image B-1-i; the target is label-smoothed (0.1) and mixed;
  L = mean_i [CE_soft(f(x~_i), y~_i) + (1 - IoU_i) * (CE(f(x_i), y_i) + CE(f(x_{B-1-i}), y_{B-1-i}))],
  with IoU_i the overlap of the two images' face boxes. AdamW 1.5e-4 (0.05, (0.9, 0.95)), warm-up and a
  half-cosine to 1e-5, EMA 0.999 for evaluation.
- `semisup` (stage 2): FixMatch against the EMA teacher: L = CE(x) + 5 * mean_b 1[max p_teacher(u_w) >= 0.7]
  * CE(f(u_s), argmax p_teacher(u_w)); AdamW 1.5e-4 constant; strong view RandAugment(2) + the weak view.

All stages: RandomResizedCrop(scale 0.2-1) + flip, face normalisation mean (0.588, 0.459, 0.402),
std (0.228, 0.202, 0.190). The `ssfer` preset adds the reference's ViT-B/16 at 224 px and its schedule
lengths (for RAF-DB at 10%); `stages.<name>.{optim,train,augment}` overrides any stage.

Deviations, each an option or documented:
- the reference mixes in place (`utils/mixup.py`), so its "real-image" term and the face boxes are computed
  on the mixed images; FERBench uses the images before mixing (`mixup_inplace_bug: true` restores the bug);
- face boxes come from `box_provider`: `fixed` (the reference's fallback box, the default), `opencv`
  (a Haar detector; the reference runs YOLOv7-face, whose weights are not installable offline), `dataset`
  (the annotated box, i.e. the whole frame of images cropped to it, as AffectNet's), or an import path. With
  `fixed` every pair has IoU 1, so the loss is plain mixup CE, which is what the reference computes whenever
  its detector does not find exactly one face;
- the reference strong view is timm's rand-m9-mstd0.5 (magnitude 9 +- 0.5); FERBench's RandAugment draws a
  magnitude uniformly in each op's range (docs/concepts/methods.md#views-weak-and-strong), with 2 ops and no Cutout;
- stage-2 evaluation uses the stage-2 EMA (the reference evaluates a stale stage-1 EMA: a bug);
- the reference validates by 5-fold CV on the labeled split; FERBench reports the final model on the test
  split, as for every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bench.errors import FERBenchError
from bench.method import (
    Batch,
    Count,
    Decay,
    Interval,
    Method,
    MethodArgs,
    NonNegative,
    Positive,
    Probability,
    Stage,
    StepContext,
    StepOutput,
    arg,
    box_iou,
    box_provider,
    cross_entropy_masked_mean,
    joint_forward,
    load_pretrained,
    masked_autoencoder,
)
from bench.registry import register_method

FACE_NORM = {"normalize_mean": [0.588, 0.459, 0.402], "normalize_std": [0.228, 0.202, 0.190]}
RESIZED_CROP = {"crop": "resized", "rrc_scale": [0.2, 1.0]}


def _adamw(lr: float, **schedule: Any) -> dict[str, Any]:
    return {"name": "adamw", "lr": lr, "weight_decay": 0.05, "betas": [0.9, 0.95], **schedule}


def face_mixup_loss(logits_mixed: Tensor, logits_real: Tensor, y: Tensor, *, lam: float | Tensor, iou: Tensor,
                    num_classes: int, smoothing: float) -> Tensor:
    """mean_i [CE_soft(mixed_i, lam*t(y_i) + (1-lam)*t(y_{B-1-i})) + (1-IoU_i)(CE(real_i) + CE(real_{B-1-i}))],
    t = one-hot smoothed as timm's mixup target (off = s/C, on = 1 - s + s/C)."""
    off = smoothing / num_classes
    one_hot = torch.full((len(y), num_classes), off, device=y.device)
    one_hot.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)
    target = lam * one_hot + (1.0 - lam) * one_hot.flip(0)
    ce_mixed = -(target * F.log_softmax(logits_mixed.float(), dim=-1)).sum(-1)
    ce_real = F.cross_entropy(logits_real.float(), y, reduction="none")
    return (ce_mixed + (1.0 - iou) * (ce_real + ce_real.flip(0))).mean()


def load_encoder(encoder: nn.Module, path: str) -> dict[str, Any]:
    """Load every ViT encoder tensor from a released SSFER/MAE checkpoint (under "model") or a stage-0 `model.pt`
    ("encoder." keys), as `model.pretrained_file` loads a backbone (bench/engine/pretrained.py): decoder tensors
    are ignored, the position embedding is resampled when the grid differs, and a file that leaves any encoder
    tensor unloaded is refused. Returns what was loaded, for the record."""
    where = "method 'frpretrain': pretrain_checkpoint"
    return load_pretrained(encoder, path, where, "the ViT encoder")


BOX_PROVIDERS = ("fixed", "opencv", "dataset")


@dataclass
class FRPretrainingArgs(MethodArgs):
    pretrain: Literal["mae", "checkpoint", "none"] = arg("mae", "stage 0: MAE, a checkpoint's encoder, or none")
    pretrain_checkpoint: str | None = arg(None, "the released MAE .pth or a stage-0 model.pt (pretrain=checkpoint)")
    pretrain_data: str | list[str] = arg(factory=list, note="extra image folders for the MAE stage")
    mask_ratio: Annotated[float, Interval("(0, 1)")] = arg(0.75, "MAE_model.py mask ratio")
    decoder_dim: Count = arg(512, "MAE decoder width (MAE_model.py)")
    decoder_depth: Count = arg(8, "MAE decoder blocks (MAE_model.py)")
    decoder_heads: Count = arg(16, "MAE decoder heads (MAE_model.py)")
    face_mixup: bool = arg(True, "stage 1's IoU-weighted Face-Mixup (fine-tune.py)")
    mixup_alpha: Positive = arg(1.0, "lambda ~ Beta(alpha, alpha)")
    label_smoothing: Decay = arg(0.1, "smoothing of the mixed targets (timm's mixup)")
    box_provider: str = arg("fixed", "fixed | opencv | dataset | package.module:callable")
    mixup_inplace_bug: bool = arg(False, "true: the reference's in-place mixing")
    threshold: Probability = arg(0.7, "stage 2's confidence threshold (fine-tune.py)")
    lambda_u: NonNegative = arg(5.0, "stage 2's unlabeled weight (fine-tune.py)")


@register_method("frpretrain")
class FRPretraining(Method):
    views = ("weak", "strong")  # of the last stage; each stage declares its own
    stage_names = ("pretrain", "finetune", "semisup")
    Args = FRPretrainingArgs
    reference = ("Song et al. 2024 (arXiv 2410.17622), code zhelishisongjie/SSFER: MAE (mask 0.75) -> Face-Mixup "
                 "fine-tuning with (1-IoU) weights -> FixMatch with EMA teacher (tau 0.7, lambda_u 5)")
    # all three stages, on the tiny ViT the MAE stage needs, each a few iterations
    check_settings = {"model.backbone": "ferbench_vit_tiny", "model.timm_kwargs": "{img_size: 32}",
                      "train.iterations": 4, "method_args.decoder_dim": 32, "method_args.decoder_depth": 1,
                      "method_args.decoder_heads": 2, "stages.pretrain.train.iterations": 3,
                      "stages.finetune.train.iterations": 6, "stages.finetune.train.checkpoint_every": 2}

    def __init__(self, num_classes: int, **arguments: Any) -> None:
        super().__init__(num_classes, **arguments)
        a = self.args
        mode = a.pretrain
        if ":" not in a.box_provider and a.box_provider not in BOX_PROVIDERS:
            raise FERBenchError(f"method 'frpretrain': box_provider={a.box_provider!r}; expected one of "
                                f"{', '.join(repr(b) for b in BOX_PROVIDERS)} or package.module:callable")
        ckpt = a.pretrain_checkpoint
        if (mode == "checkpoint") != (ckpt is not None):
            raise FERBenchError("method 'frpretrain': pretrain=checkpoint and pretrain_checkpoint=FILE go together")
        if ckpt is not None and not Path(ckpt).is_file():
            raise FERBenchError(f"method 'frpretrain': pretrain_checkpoint {ckpt}: file not found")
        if isinstance(a.pretrain_data, str):  # one folder, as a plain string
            a.pretrain_data = [a.pretrain_data]
        folders = a.pretrain_data
        for folder in folders:
            if not Path(folder).is_dir():
                raise FERBenchError(f"method 'frpretrain': pretrain_data {folder}: folder not found")
        if folders and mode != "mae":
            raise FERBenchError("method 'frpretrain': pretrain_data is used by pretrain=mae only")
        self._boxes = None
        self._checkpoint_info: dict[str, Any] | None = None

    @classmethod
    def probe_arguments(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        """No checkpoint or image folders to load in the fingerprint probe, and a small MAE decoder for its tiny ViT:
        pretrain=checkpoint is probed as its stages run (stage 0 skipped) from a random encoder."""
        probe = {**arguments, "pretrain_checkpoint": None, "pretrain_data": [], "decoder_dim": 32,
                 "decoder_depth": 1, "decoder_heads": 2}
        if probe.get("pretrain") == "checkpoint":
            probe["pretrain"] = "none"
        return probe

    def stages(self) -> tuple[Stage, ...]:
        a = self.args
        augment = {**RESIZED_CROP, **FACE_NORM}
        pretrain = Stage("pretrain", views=("weak",), labeled_views=(), evaluate=False,
                         extra_unlabeled=tuple(a.pretrain_data),
                         defaults={"optim": _adamw(3.4e-4, schedule="halfcosine"),
                                   "train": {"mu": 1, "ema_decay": 0.0}, "augment": augment})
        finetune = Stage("finetune", views=(), labeled_views=("weak",),
                         defaults={"optim": _adamw(1.5e-4, schedule="halfcosine", min_lr=1e-5),
                                   "train": {"ema_decay": 0.999}, "augment": augment})
        semisup = Stage("semisup", views=("weak", "strong"), labeled_views=("weak",), requires_ema=True,
                        defaults={"optim": _adamw(1.5e-4, schedule="constant"), "train": {"mu": 1, "ema_decay": 0.999},
                                  "augment": {**augment, "randaugment_n": 2, "cutout_max": 0.0}})
        return (pretrain, finetune, semisup) if a.pretrain == "mae" else (finetune, semisup)

    def stage_model(self, stage: Stage, model: nn.Module, previous: nn.Module | None) -> nn.Module:
        a = self.args
        if stage.name == "pretrain":  # the MAE trains the model's timm ViT trunk
            return masked_autoencoder(model.backbone, a.decoder_dim, a.decoder_depth, a.decoder_heads, a.mask_ratio)
        if stage.name == "finetune":
            if previous is not None:  # hand-off from the MAE stage: the pretrained encoder, new head
                model.backbone.load_state_dict(previous.encoder.state_dict())
            elif a.pretrain == "checkpoint":
                self._checkpoint_info = load_encoder(model.backbone, a.pretrain_checkpoint)
            return model
        return previous

    def info(self) -> dict[str, Any]:
        a = self.args
        return {"pretrain": a.pretrain, "pretrain_checkpoint": self._checkpoint_info,
                "pretrain_data": list(a.pretrain_data), "box_provider": a.box_provider}

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        if ctx.stage == "pretrain":
            loss, _, mask = model(batch.unlabeled["weak"])
            return StepOutput(loss, {"mask_rate": mask.mean().detach()})
        if ctx.stage == "finetune":
            return self.finetune_step(model, batch, ctx)
        return self.semisup_step(model, batch, ctx)

    def finetune_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        a = self.args
        x, y = batch.labeled["weak"], batch.labeled["y"]
        if not a.face_mixup:
            loss = F.cross_entropy(model(x).float(), y)
            return StepOutput(loss, {"loss_x": loss.detach()})
        # a 0-dim tensor on the host, used as is: reading it (float()) or validating the Beta's arguments would be a
        # host read inside the step; the arithmetic below is the same in float32 either way (exact in both)
        lam = torch.distributions.Beta(a.mixup_alpha, a.mixup_alpha, validate_args=False).sample()
        mixed = lam * x + (1.0 - lam) * x.flip(0)
        real = mixed if a.mixup_inplace_bug else x  # the reference's in-place mixup: "real" is mixed too
        if self._boxes is None:
            self._boxes = box_provider(a.box_provider)
        with torch.no_grad():
            boxes = self._boxes(ctx.denormalize(real))
            iou = box_iou(boxes, boxes.flip(0))
        logits_mixed, logits_real = joint_forward(model, mixed, real)
        loss = face_mixup_loss(logits_mixed, logits_real, y, lam=lam, iou=iou, num_classes=self.num_classes,
                               smoothing=a.label_smoothing)
        return StepOutput(loss, {"lam": lam, "mean_iou": iou.mean().detach()})

    def semisup_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        a = self.args
        with torch.no_grad():  # pseudo-labels from the EMA teacher on the weak view
            probs = torch.softmax(ctx.ema_model(batch.unlabeled["weak"]).float(), dim=-1)
        logits_x, logits_us = joint_forward(model, batch.labeled["weak"], batch.unlabeled["strong"])
        loss_x = F.cross_entropy(logits_x.float(), batch.labeled["y"])
        conf, pseudo = probs.max(dim=-1)
        mask = (conf >= a.threshold).float()
        loss_u = cross_entropy_masked_mean(logits_us.float(), pseudo, mask)
        return StepOutput(loss_x + a.lambda_u * loss_u,
                          {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": mask.mean().detach()})
