"""Augmented views on uint8 image batches (N, C, H, W), with per-sample randomness.

weak   = padded random crop (with probability `crop_prob`) + horizontal flip.
strong = RandAugment (n ops sampled with replacement, magnitude uniform in each op's range, the
         FixMatch/Ada-CM variant of reference/methods.md §1) + Cutout, then the weak pipeline.

Everything is batched tensor arithmetic driven by an explicit `torch.Generator`, so the same code runs
on CPU or on an accelerator, and a view is a pure function of (images, generator state).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.config import AugmentConfig

FILL = 128.0  # geometric ops fill uncovered pixels with grey (FixMatch RandAugment)
CUTOUT_FILL = (125.0, 123.0, 114.0)


def _rand(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device)


def _u8(x: Tensor) -> Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def _blend(degenerate: Tensor, img: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: degenerate + factor * (img - degenerate), per sample."""
    f = factor.view(-1, 1, 1, 1)
    return _u8(degenerate + f * (img.float() - degenerate))


def _grayscale(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma as PIL's convert("L"), shape (N, 1, H, W), float."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round()


# --- RandAugment ops: each takes uint8 (n,C,H,W) and a magnitude already mapped to its range --------


def identity(x: Tensor, v: Tensor) -> Tensor:
    return x


def autocontrast(x: Tensor, v: Tensor) -> Tensor:
    # PIL computes int(v * scale + offset) in double precision and truncates.
    xf = x.double()
    lo = xf.amin(dim=(2, 3), keepdim=True)
    hi = xf.amax(dim=(2, 3), keepdim=True)
    # tensor / tensor: `scalar / tensor` multiplies by a reciprocal and can differ in the last bit.
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_min(1)
    out = torch.where(hi > lo, (xf * scale + (-lo * scale)).floor(), xf)
    return out.clamp_(0, 255).to(torch.uint8)


def brightness(x: Tensor, v: Tensor) -> Tensor:
    return _blend(torch.zeros_like(x, dtype=torch.float32), x, v)


def color(x: Tensor, v: Tensor) -> Tensor:
    return _blend(_grayscale(x).expand_as(x), x, v)


def contrast(x: Tensor, v: Tensor) -> Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True).add(0.5).floor()
    return _blend(mean.expand_as(x).contiguous(), x, v)


def equalize(x: Tensor, v: Tensor) -> Tensor:
    """Per-channel histogram equalisation with PIL's ImageOps.equalize rule."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    last_nonzero = 255 - (hist > 0).flip(1).float().argmax(1, keepdim=True)
    step = ((h * w - hist.gather(1, last_nonzero)) / 255).floor()
    cum_before = torch.cumsum(hist, 1) - hist
    lut = ((step / 2).floor() + cum_before).div(step.clamp_min(1)).floor().clamp_(0, 255)
    ident = torch.arange(256, device=x.device, dtype=torch.float32).expand_as(lut)
    lut = torch.where(step > 0, lut, ident)
    return lut.gather(1, flat).reshape(n, c, h, w).to(torch.uint8)


def posterize(x: Tensor, v: Tensor) -> Tensor:
    bits = v.floor().clamp(1, 8).to(torch.int32).view(-1, 1, 1, 1)
    mask = (255 - (2 ** (8 - bits) - 1)).to(torch.uint8)
    return x & mask


def solarize(x: Tensor, v: Tensor) -> Tensor:
    thr = v.view(-1, 1, 1, 1)
    return torch.where(x.float() >= thr, 255 - x, x)


def sharpness(x: Tensor, v: Tensor) -> Tensor:
    """PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13 as degenerate; the 1-px border is kept."""
    xf = x.float()
    # 3x3 box sum by shifted slices: no conv primitive to rebuild for every new subset size.
    box = sum(xf[..., 1 + dy : xf.shape[-2] - 1 + dy, 1 + dx : xf.shape[-1] - 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    degenerate = xf.clone()
    degenerate[..., 1:-1, 1:-1] = ((box + 4 * xf[..., 1:-1, 1:-1]) / 13.0).round()
    return _blend(degenerate, x, v)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Apply per-sample 2x3 maps (output -> input, normalised coords); nearest, grey fill."""
    xf = x.float()
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    out = F.grid_sample(xf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(xf[:, :1]), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return _u8(out + (1 - inside) * FILL)


def _eye(n: int, device: torch.device) -> Tensor:
    return torch.eye(2, 3, device=device).repeat(n, 1, 1)


def rotate(x: Tensor, v: Tensor) -> Tensor:
    rad = v * math.pi / 180.0
    cos, sin = torch.cos(rad), torch.sin(rad)
    h, w = x.shape[-2:]
    theta = _eye(len(x), x.device)
    # Rotation in pixel space expressed in normalised coordinates (aspect-correct for h != w).
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    return _affine(x, theta)


def shear_x(x: Tensor, v: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    theta = _eye(len(x), x.device)
    theta[:, 0, 1] = v * h / w
    return _affine(x, theta)


def shear_y(x: Tensor, v: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    theta = _eye(len(x), x.device)
    theta[:, 1, 0] = v * w / h
    return _affine(x, theta)


def translate_x(x: Tensor, v: Tensor) -> Tensor:
    theta = _eye(len(x), x.device)
    theta[:, 0, 2] = -2.0 * v  # v is a fraction of the width; normalised coords span 2
    return _affine(x, theta)


def translate_y(x: Tensor, v: Tensor) -> Tensor:
    theta = _eye(len(x), x.device)
    theta[:, 1, 2] = -2.0 * v
    return _affine(x, theta)


# name -> (op, low, high): the magnitude is drawn uniformly in [low, high] per sample and per op.
RANDAUGMENT_OPS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], float, float]] = {
    "AutoContrast": (autocontrast, 0.0, 1.0),
    "Brightness": (brightness, 0.05, 0.95),
    "Color": (color, 0.05, 0.95),
    "Contrast": (contrast, 0.05, 0.95),
    "Equalize": (equalize, 0.0, 1.0),
    "Identity": (identity, 0.0, 1.0),
    "Posterize": (posterize, 4.0, 8.999),  # integer bits 4..8, uniform
    "Rotate": (rotate, -30.0, 30.0),
    "Sharpness": (sharpness, 0.05, 0.95),
    "ShearX": (shear_x, -0.3, 0.3),
    "ShearY": (shear_y, -0.3, 0.3),
    "Solarize": (solarize, 0.0, 256.0),
    "TranslateX": (translate_x, -0.3, 0.3),
    "TranslateY": (translate_y, -0.3, 0.3),
}
OP_NAMES = tuple(RANDAUGMENT_OPS)


def randaugment(x: Tensor, gen: torch.Generator, n_ops: int) -> tuple[Tensor, Tensor, Tensor]:
    """Apply `n_ops` rounds; in each, every sample gets its own op and magnitude.

    Returns (images, op index per round and sample (n_ops, N), magnitude (n_ops, N)) so that tests
    can check op frequencies and magnitude ranges.
    """
    n = len(x)
    out = x.clone()
    ops = torch.randint(0, len(OP_NAMES), (n_ops, n), generator=gen, device=x.device)
    mags = torch.empty(n_ops, n, device=x.device)
    for r in range(n_ops):
        u = _rand(n, gen, x.device)
        for k, name in enumerate(OP_NAMES):
            fn, lo, hi = RANDAUGMENT_OPS[name]
            mags[r] = torch.where(ops[r] == k, lo + u * (hi - lo), mags[r])
            sel = (ops[r] == k).nonzero().squeeze(1)
            if sel.numel():
                out[sel] = fn(out[sel], mags[r, sel])
    return out, ops, mags


def cutout(x: Tensor, gen: torch.Generator, max_frac: float) -> Tensor:
    """Square of side v*W, v ~ U(0, max_frac), centred uniformly, clipped at the border."""
    n, _, h, w = x.shape
    side = _rand(n, gen, x.device) * max_frac * w
    cx = _rand(n, gen, x.device) * w
    cy = _rand(n, gen, x.device) * h
    x0 = (cx - side / 2).clamp_min(0).view(-1, 1, 1)
    y0 = (cy - side / 2).clamp_min(0).view(-1, 1, 1)
    x1 = (x0 + side.view(-1, 1, 1)).clamp_max(w)
    y1 = (y0 + side.view(-1, 1, 1)).clamp_max(h)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    box = ((ys >= y0.floor()) & (ys < y1.floor()) & (xs >= x0.floor()) & (xs < x1.floor())).unsqueeze(1)
    fill = torch.tensor(CUTOUT_FILL, device=x.device).view(1, 3, 1, 1).to(x.dtype)
    return torch.where(box, fill, x)


def _reflect(i: Tensor, n: int) -> Tensor:
    """Map indices in [-n+1, 2n-2] into [0, n-1] as reflect padding does (edge pixel not repeated)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def padded_random_crop(x: Tensor, gen: torch.Generator, pad: int, prob: float) -> Tensor:
    """Reflect-pad by `pad` pixels and crop back at a random offset, for a `prob` share of samples.

    Implemented as one gather with reflected indices: no padded copy, no float round trip.
    """
    if pad <= 0 or prob <= 0:
        return x
    n, c, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    keep = _rand(n, gen, x.device) >= prob
    oy = torch.where(keep, torch.full_like(oy, pad), oy) - pad
    ox = torch.where(keep, torch.full_like(ox, pad), ox) - pad
    rows = _reflect(oy.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1), h)  # (n, h, 1)
    cols = _reflect(ox.view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w), w)  # (n, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indexing around the channel axis gives (n, h, w, c).
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_resized_crop(x: Tensor, gen: torch.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """torchvision's RandomResizedCrop, batched: per sample an area fraction ~ U(scale) and a log-uniform
    aspect ratio, a uniform position, resampled bicubically to the input size by an affine grid.

    torchvision redraws a crop that does not fit (up to 10 times, then a centre crop); here each side is
    clipped to the image instead, which changes the area of only the few draws that would not fit.
    """
    n, _, h, w = x.shape
    dev = x.device
    area = scale[0] + (scale[1] - scale[0]) * _rand(n, gen, dev)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(n, gen, dev)
    cw = (area * log_r.exp()).sqrt().clamp(max=1.0)  # crop width / image width
    ch = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (1 - cw) * _rand(n, gen, dev) + cw / 2  # crop centre, in [0, 1] image coordinates
    cy = (1 - ch) * _rand(n, gen, dev) + ch / 2
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = cw, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = ch, 2 * cy - 1
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return _u8(F.grid_sample(x.float(), grid, mode="bicubic", padding_mode="border", align_corners=False))


def horizontal_flip(x: Tensor, gen: torch.Generator, prob: float = 0.5) -> Tensor:
    flip = (_rand(len(x), gen, x.device) < prob).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


class ViewMaker:
    """Turns uint8 batches into normalised float views of a named kind ("weak", "strong", "weak2", ...)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def weak(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.cfg.crop == "resized":
            return horizontal_flip(random_resized_crop(x, gen, tuple(self.cfg.rrc_scale)), gen)
        if self.cfg.crop != "pad":
            raise ValueError(f"augment.crop={self.cfg.crop!r}: expected 'pad' or 'resized'")
        pad = int(round(self.cfg.pad_frac * x.shape[-1]))
        return horizontal_flip(padded_random_crop(x, gen, pad, self.cfg.crop_prob), gen)

    def strong(self, x: Tensor, gen: torch.Generator) -> Tensor:
        x, _, _ = randaugment(x, gen, self.cfg.randaugment_n)
        return self.weak(cutout(x, gen, self.cfg.cutout_max), gen)

    def normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.cfg.normalize_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.normalize_std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """A normalised view back to uint8 pixels (e.g. for a face detector)."""
        mean = torch.tensor(self.cfg.normalize_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.normalize_std, device=x.device).view(1, 3, 1, 1)
        return _u8((x.float() * std + mean) * 255.0)

    def make(self, view: str, x: Tensor, gen: torch.Generator) -> Tensor:
        kind = view.rstrip("0123456789")
        if kind == "weak":
            return self.normalize(self.weak(x, gen))
        if kind == "strong":
            return self.normalize(self.strong(x, gen))
        if kind == "none":
            return self.normalize(x)
        raise ValueError(f"unknown view kind {view!r}; expected weak*, strong* or none")
