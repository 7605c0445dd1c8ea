"""Face boxes for FR-pretraining's Face-Mixup weights, from a pluggable provider.

A provider maps a uint8 batch (N, 3, H, W) to boxes (N, 4) as (x0, y0, x1, y1) in pixels.

- `fixed`: the reference code's fallback box, [25, 25, 220, 220] on a 224-px image, scaled to H x W
  (docs/concepts/methods.md#stage-1-face-mixup-fine-tuning). On aligned face crops (RAF-DB aligned, AffectNet
  cropped to its annotated box) the face fills the image, so this is what the annotation would give too.
- `opencv`: OpenCV's frontal-face Haar detector on each image; exactly one detection gives the box,
  anything else the fixed box (as the reference does with YOLOv7-face when it finds != 1 face).
- `dataset`: the dataset's own face box. Readers with annotated boxes (AffectNet) crop each image to its
  box when the cache is prepared, so the box is the whole frame; a crop taken inside the frame and
  resized (or flipped) still shows only face, so after augmentation it is the whole frame again. Pairs
  then have IoU 1 and the loss is the mixup term alone.
- "package.module:callable": any other detector with the same contract.

Boxes are taken on the augmented images the step mixes, as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from bench.errors import FERBenchError

REFERENCE_BOX = (25.0, 25.0, 220.0, 220.0)  # on the reference's 224-px inputs
REFERENCE_SIZE = 224.0

BoxProvider = Callable[[Tensor], Tensor]


def fixed_boxes(images: Tensor) -> Tensor:
    n, _, h, w = images.shape
    sx, sy = w / REFERENCE_SIZE, h / REFERENCE_SIZE
    x0, y0, x1, y1 = REFERENCE_BOX
    box = torch.tensor([x0 * sx, y0 * sy, x1 * sx, y1 * sy], dtype=torch.float32, device=images.device)
    return box.expand(n, 4).clone()


class OpenCVFaceBoxes:
    """Haar-cascade face detection (opencv-python-headless < 5, the `faces` extra)."""

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_frac: float = 0.2) -> None:
        try:
            import cv2
        except ImportError as e:
            raise FERBenchError("box_provider='opencv' needs OpenCV: pip install 'ferbench[faces]' "
                                "(opencv-python-headless<5)") from e
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cv2 = cv2
        self.detector = cv2.CascadeClassifier(path)
        if self.detector.empty():
            raise FERBenchError(f"box_provider='opencv': could not load the Haar cascade {path}")
        self.scale_factor, self.min_neighbors, self.min_size_frac = scale_factor, min_neighbors, min_size_frac

    def __call__(self, images: Tensor) -> Tensor:
        fallback = fixed_boxes(images)
        arr = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        side = int(self.min_size_frac * min(arr.shape[1], arr.shape[2]))
        out = fallback.clone()
        for i, img in enumerate(arr):
            gray = self.cv2.cvtColor(np.ascontiguousarray(img), self.cv2.COLOR_RGB2GRAY)
            found = self.detector.detectMultiScale(gray, self.scale_factor, self.min_neighbors, minSize=(side, side))
            if len(found) == 1:
                x, y, w, h = (float(v) for v in found[0])
                out[i] = torch.tensor([x, y, x + w, y + h], device=out.device)
        return out


def dataset_boxes(images: Tensor) -> Tensor:
    """The whole frame: where the face is in images cropped to their annotated face box."""
    n, _, h, w = images.shape
    return torch.tensor([0.0, 0.0, float(w), float(h)], device=images.device).expand(n, 4).clone()


def box_provider(name: str) -> BoxProvider:
    """`fixed`, `opencv`, `dataset`, or "package.module:callable" for any other detector (a callable with the same
    contract, or a class/factory taking no arguments that returns one when its name ends in "()")."""
    if name == "fixed":
        return fixed_boxes
    if name == "opencv":
        return OpenCVFaceBoxes()
    if name == "dataset":
        return dataset_boxes
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        factory = attr.endswith("()")
        try:
            obj = getattr(importlib.import_module(module), attr.removesuffix("()"))
        except (ImportError, AttributeError) as e:
            raise FERBenchError(f"box_provider={name!r}: cannot import it ({e})") from e
        return obj() if factory else obj
    raise FERBenchError(f"box_provider={name!r}: expected 'fixed', 'opencv', 'dataset' or 'package.module:callable'")


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise IoU of two (N, 4) box tensors (x0, y0, x1, y1); 0 where the union is empty."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = iw * ih
    area = lambda t: (t[:, 2] - t[:, 0]).clamp_min(0) * (t[:, 3] - t[:, 1]).clamp_min(0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))
