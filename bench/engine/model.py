"""Models: any timm backbone (by name) + a linear head; forward returns logits (and features on request).

Pretrained weights come only from a local file (`pretrained_file`), loaded into the backbone by
`bench.engine.pretrained` (every tensor, or a one-line error); nothing is fetched from a hub.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import timm
import torch
from timm.models import register_model
from torch import Tensor, nn

from bench.config import ModelConfig
from bench.engine.pretrained import fitting_checkpoint, load_pretrained
from bench.errors import FERBenchError
from bench.method import ModelOutput


class SmallCNN(nn.Module):
    """A compact VGG-style CNN for CPU runs at 32-64 px (tests, the synthfer demo), in timm's model shape."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 0, drop_rate: float = 0.0,
                 in_chans: int = 3) -> None:
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

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled, dropped out, then the classifier (none when `pre_logits`), as timm models' `forward_head`."""
        x = self.drop(self.pool(x).flatten(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _model_kwargs(kwargs: dict[str, object]) -> dict[str, object]:
    """The model's own arguments: timm's factory also passes its pretrained-config arguments, which these local
    models (no weights to fetch; `model.pretrained_file` loads them) do not use."""
    return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}


@register_model
def ferbench_cnn_small(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    return SmallCNN((32, 64, 128), **_model_kwargs(kwargs))


@register_model
def ferbench_cnn_tiny(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    return SmallCNN((16, 32, 64), **_model_kwargs(kwargs))


@register_model
def ferbench_vit_tiny(pretrained: bool = False, **kwargs: object) -> nn.Module:
    """A 4-block ViT (96-d, 3 heads, 8-px patches) for CPU runs of ViT methods at 32-64 px (FR-pretraining's
    MAE stage); `img_size` defaults to 48, the synthfer demo's size."""
    from timm.models.vision_transformer import VisionTransformer

    args = {"img_size": 48, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0}
    return VisionTransformer(**{**args, **_model_kwargs(kwargs)})


class FERModel(nn.Module):
    """A timm backbone (no classifier) and FERBench's head, in timm's model shape.

    forward_features(x)          the backbone's unpooled features (timm's meaning: a map, or tokens)
    pool(f)                      the backbone's pooled features (N, D) of `forward_features`' output
    head_input(p)                what the classifier sees of pooled features p: dropout, then, with
                                 head="normalized" (the Ada-CM lineage's head, Ada-CM/SIT-FER `models/backbone.py`),
                                 L2 normalisation
    forward_head(f, pre_logits)  pool, head_input, classifier (timm's meaning; `pre_logits`: the classifier's input)
    classify(p)                  a `ModelOutput` of pooled features p, for wrappers that pool their own way
    get_classifier()             the linear classifier (timm)
    feature_map(x)               the last feature map as (N, C, H, W) whatever the backbone's layout, for spatial heads
    forward(x, return_features)  logits, or a `ModelOutput`: logits, features (the backbone's pooled features with
                                 head="linear", the normalised ones the classifier sees with head="normalized"), aux 0
    Wrappers (a method's `build_model`) compose these rather than the attributes, so the head order lives here.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.0, head: str = "linear") -> None:
        super().__init__()
        self.backbone = backbone  # the timm trunk (FR-pretraining's MAE stage trains it directly)
        self.num_features = int(backbone.num_features)
        self.drop = nn.Dropout(drop_rate)
        self.head_type = head
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.pretrained: dict | None = None  # what `build_model` loaded from model.pretrained_file, for the record

    def forward_features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x)

    def pool(self, x: Tensor) -> Tensor:
        return self.backbone.forward_head(x)

    def head_input(self, pooled: Tensor) -> Tensor:
        z = self.drop(pooled)
        return nn.functional.normalize(z, dim=-1) if self.head_type == "normalized" else z

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        z = self.head_input(self.pool(x))
        return z if pre_logits else self.classifier(z)

    def classify(self, pooled: Tensor) -> ModelOutput:
        z = self.head_input(pooled)
        logits = self.classifier(z)
        return ModelOutput(logits, z if self.head_type == "normalized" else pooled, logits.new_zeros(()))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map as (N, C, H, W), for spatial heads: NHWC models (timm's `output_fmt`, e.g. Swin)
        are permuted; token models (ViT) lose their prefix tokens and have their patch tokens laid back on the
        square grid."""
        fmap = self.forward_features(x)
        bb = self.backbone
        if fmap.ndim == 4:
            return fmap.permute(0, 3, 1, 2) if "NHWC" in str(getattr(bb, "output_fmt", "NCHW")) else fmap
        if fmap.ndim == 3:
            tokens = fmap[:, int(getattr(bb, "num_prefix_tokens", 0)):]
            side = int(round(tokens.shape[1] ** 0.5))
            if side * side == tokens.shape[1]:
                return tokens.transpose(1, 2).reshape(len(x), tokens.shape[2], side, side)
        raise FERBenchError(f"backbone {type(bb).__name__}: forward_features gave shape {tuple(fmap.shape)}; "
                            "expected a (N, C, H, W) map or square-grid tokens")

    @torch.no_grad()
    def feature_map_channels(self) -> int:
        """Channels of `feature_map` (not always `num_features`: some timm models add a head after the map),
        found by one forward of a blank image at the model's default input size, in eval mode."""
        size = tuple((getattr(self.backbone, "pretrained_cfg", None) or {}).get("input_size", (3, 64, 64)))
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            return int(self.feature_map(torch.zeros(1, *size)).shape[1])
        finally:
            self.backbone.train(was_training)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ModelOutput:
        out = self.classify(self.pool(self.forward_features(x)))
        return out if return_features else out.logits


def _create_backbone(cfg: ModelConfig) -> nn.Module:
    try:
        return timm.create_model(cfg.backbone, **{**cfg.timm_kwargs, "num_classes": 0})
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise FERBenchError(f"model.backbone={cfg.backbone!r}: not a timm model name") from e
        raise
    except TypeError as e:  # a keyword the model does not take
        raise FERBenchError(f"model.timm_kwargs={cfg.timm_kwargs!r}: timm cannot build {cfg.backbone!r} with them "
                            f"({e})") from e


def build_model(cfg: ModelConfig, num_classes: int) -> FERModel:
    """The backbone by timm name, its weights from `cfg.pretrained_file` (every tensor, or a one-line error),
    and a fresh linear classifier. What was loaded is in `.pretrained` (None without a file)."""
    backbone = _create_backbone(cfg)
    loaded = None
    if cfg.pretrained_file:
        loaded = load_pretrained(backbone, cfg.pretrained_file, "model.pretrained_file", f"backbone {cfg.backbone!r}")
    model = FERModel(backbone, num_classes, cfg.drop_rate, cfg.head)
    model.pretrained = loaded
    return model


@functools.lru_cache(maxsize=64)
def _checked(cfg_json: str, stamp: tuple[int, int] | None) -> None:  # stamp: the file's (size, mtime)
    cfg = ModelConfig(**json.loads(cfg_json))
    try:  # shapes only: a backbone on the meta device costs no memory and no initialisation
        with torch.device("meta"):
            backbone = _create_backbone(cfg)
    except (NotImplementedError, RuntimeError):  # a model whose construction reads tensor values
        backbone = _create_backbone(cfg)
    if cfg.pretrained_file:
        fitting_checkpoint(backbone, cfg.pretrained_file, "model.pretrained_file", f"backbone {cfg.backbone!r}")


def check_model(cfg: ModelConfig) -> None:
    """Before any data is prepared: the backbone exists, takes `timm_kwargs`, and `pretrained_file` fits it."""
    stamp = None
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file)
        if not path.is_file():
            raise FERBenchError(f"model.pretrained_file {path}: file not found (weights load only from local files)")
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    _checked(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str), stamp)


def parameter_checksum(model: nn.Module) -> float:
    """Sum of all parameters in float64: a cheap fingerprint for hand-off and resume tests."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))
