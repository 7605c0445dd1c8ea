"""Models: any timm backbone (by name) + a linear head; forward returns logits (and features on request).

Pretrained weights come only from a local file (`pretrained_file`), through timm's
`pretrained_cfg_overlay=dict(file=...)`; nothing is fetched from a hub.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import register_model
from torch import Tensor, nn

from bench.config import ModelConfig
from bench.errors import FERBenchError


class SmallCNN(nn.Module):
    """A compact VGG-style CNN for CPU runs at 32-64 px (tests, the synthfer demo)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 0, drop_rate: float = 0.0,
                 in_chans: int = 3, **_: object) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (N, C, h, w), as timm models' `forward_features`."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.pool(self.forward_features(x)).flatten(1)))


@register_model
def ferbench_cnn_small(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    return SmallCNN((32, 64, 128), **kwargs)


@register_model
def ferbench_cnn_tiny(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    return SmallCNN((16, 32, 64), **kwargs)


@register_model
def ferbench_vit_tiny(pretrained: bool = False, **kwargs: object) -> nn.Module:
    """A 4-block ViT (96-d, 3 heads, 8-px patches) for CPU runs of ViT methods at 32-64 px (FR-pretraining's
    MAE stage); `img_size` defaults to 48, the synthfer demo's size."""
    from timm.models.vision_transformer import VisionTransformer

    args = {"img_size": 48, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0}
    # timm's factory passes its pretrained-config arguments along; this local model has no weights to fetch
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return VisionTransformer(**{**args, **kwargs})


class FERModel(nn.Module):
    """Backbone (timm, no classifier) -> features -> dropout -> linear classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.backbone(x)
        logits = self.classifier(self.drop(feats))
        return (logits, feats) if return_features else logits


def feature_map(backbone: nn.Module, x: Tensor) -> Tensor:
    """A timm backbone's last feature map (`forward_features`) as (N, C, H, W), for spatial heads.

    NHWC models (timm's `output_fmt`, e.g. Swin) are permuted; token models (ViT) lose their prefix
    tokens and have their patch tokens laid back on the square grid.
    """
    fmap = backbone.forward_features(x)
    if fmap.ndim == 4:
        return fmap.permute(0, 3, 1, 2) if "NHWC" in str(getattr(backbone, "output_fmt", "NCHW")) else fmap
    if fmap.ndim == 3:
        tokens = fmap[:, int(getattr(backbone, "num_prefix_tokens", 0)):]
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(len(x), tokens.shape[2], side, side)
    raise FERBenchError(f"backbone {type(backbone).__name__}: forward_features gave shape {tuple(fmap.shape)}; "
                        "expected a (N, C, H, W) map or square-grid tokens")


@torch.no_grad()
def feature_map_channels(backbone: nn.Module) -> int:
    """Channels of `feature_map` (not always `num_features`: some timm models add a head after the map),
    found by one forward of a blank image at the model's default input size, in eval mode."""
    size = tuple((getattr(backbone, "pretrained_cfg", None) or {}).get("input_size", (3, 64, 64)))
    was_training = backbone.training
    backbone.eval()
    try:
        return int(feature_map(backbone, torch.zeros(1, *size)).shape[1])
    finally:
        backbone.train(was_training)


def build_model(cfg: ModelConfig, num_classes: int) -> FERModel:
    kwargs: dict = {**cfg.timm_kwargs, "num_classes": 0}
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file)
        if not path.is_file():
            raise FERBenchError(f"model.pretrained_file {path}: file not found (weights load only from local files)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path), "num_classes": -1})
    try:
        backbone = timm.create_model(cfg.backbone, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise FERBenchError(f"model.backbone {cfg.backbone!r}: not a timm model name") from e
        raise
    return FERModel(backbone, num_classes, cfg.drop_rate)


def parameter_checksum(model: nn.Module) -> float:
    """Sum of all parameters in float64: a cheap fingerprint for hand-off and resume tests."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))
