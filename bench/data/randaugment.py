"""RandAugment's ops on uint8 image batches (N, C, H, W) and their two tables, with per-sample op and magnitude.

`RANDAUGMENT_OPS` (augment.ops="harness") holds FERBench's own ops; `PIL_RANDAUGMENT_OPS` (augment.ops="pil") the
same pixels as the reference randaugment.py (one file in USB and the Ada-CM lineage, FixMatch's variant) on a PIL
image. How the two differ: bench/data/views.py, whose views apply them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

FILL = 128.0  # geometric ops fill uncovered pixels with grey (FixMatch RandAugment)


# _rand and _u8 serve the views too (bench/data/views.py): every draw goes through `gen`, every op ends in uint8.
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


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]]/13, the 1-px border kept), float. PIL sums in float32 and
    truncates s + 0.5; s = k/13 is never within float error of a half-integer, so rounding k/13 is exact."""
    xf = x.float()
    # 3x3 box sum by shifted slices: no conv primitive to rebuild for every new subset size.
    box = sum(xf[..., 1 + dy : xf.shape[-2] - 1 + dy, 1 + dx : xf.shape[-1] - 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    degenerate = xf.clone()
    degenerate[..., 1:-1, 1:-1] = ((box + 4 * xf[..., 1:-1, 1:-1]) / 13.0).round()
    return degenerate


def sharpness(x: Tensor, v: Tensor) -> Tensor:
    """PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13 as degenerate; the 1-px border is kept."""
    return _blend(_smooth(x), x, v)


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


# --- augment.ops="pil": the same pixels as the reference randaugment.py on a PIL image ------------------


def _pil_blend(degenerate: Tensor, img: Tensor, factor: Tensor) -> Tensor:
    """Image.blend as ImagingBlend computes it: in1 + alpha * (in2 - in1) in float32, truncated to uint8
    (clipped first when alpha is outside [0, 1])."""
    f = factor.float().view(-1, 1, 1, 1)  # PIL takes the factor as a C float
    d = degenerate.float()
    return (d + f * (img.float() - d)).clamp_(0, 255).trunc_().to(torch.uint8)


def _pil_luma(x: Tensor) -> Tensor:
    """convert("L") as PIL's rgb2l: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, int32 (N, 1, H, W)."""
    xi = x.int()
    return (xi[:, 0:1] * 19595 + xi[:, 1:2] * 38470 + xi[:, 2:3] * 7471 + 0x8000) >> 16


def pil_brightness(x: Tensor, v: Tensor) -> Tensor:
    return _pil_blend(torch.zeros_like(x), x, v)


def pil_color(x: Tensor, v: Tensor) -> Tensor:
    return _pil_blend(_pil_luma(x).expand_as(x), x, v)


def pil_contrast(x: Tensor, v: Tensor) -> Tensor:
    # ImageStat's mean of the luma (an exact integer sum over the count, in double), then int(mean + 0.5).
    luma = _pil_luma(x)
    mean = luma.sum(dim=(1, 2, 3), keepdim=True, dtype=torch.int64).double() / luma[0].numel()
    return _pil_blend((mean + 0.5).floor().expand_as(x), x, v)


def pil_sharpness(x: Tensor, v: Tensor) -> Tensor:
    return _pil_blend(_smooth(x), x, v)


def _pil_affine(x: Tensor, a: Tensor) -> Tensor:
    """`Image.transform(size, AFFINE, a)` with NEAREST and fill 0, as Pillow's ImagingTransformAffine computes it.

    `a` (n, 6) maps the centre (x + 0.5, y + 0.5) of output pixel (x, y) to input coordinates
    (a0 x + a1 y + a2, a3 x + a4 y + a5); the input pixel read is the floor of that point, 0 outside the image.
    Pillow evaluates the map two ways, both reproduced: a pure scale or translation (a1 = a3 = 0,
    ImagingScaleAffine) in double precision; any other map (affine_fixed) in 16.16 fixed point, its
    coefficients rounded to 1/65536 and the position accumulated exactly. A gather, not `grid_sample`, whose
    rounding of the same points differs.
    """
    n, c, h, w = x.shape
    dev = x.device
    a0, a1, a2, a3, a4, a5 = (t.view(n, 1, 1) for t in a.to(torch.float64).unbind(1))
    xs = torch.arange(w, device=dev).view(1, 1, w)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    # scale/translation path: xo = a2 + a0 / 2, then + a0 per column (in double)
    scale_col = (a2 + a0 * 0.5 + xs * a0).floor().long().expand(n, h, w)
    scale_row = (a5 + a4 * 0.5 + ys * a4).floor().long().expand(n, h, w)

    def fix(t: Tensor) -> Tensor:  # Pillow's FIX(v) = FLOOR(v * 65536.0 + 0.5)
        return (t * 65536.0 + 0.5).floor().long()

    # fixed-point path: the first centre's position (the same sums as the C code), then whole steps of a0.. a4
    fixed_col = (fix(a2 + a0 * 0.5 + a1 * 0.5) + ys * fix(a1) + xs * fix(a0)) >> 16
    fixed_row = (fix(a5 + a3 * 0.5 + a4 * 0.5) + ys * fix(a4) + xs * fix(a3)) >> 16
    scale = (a1 == 0) & (a3 == 0)
    col = torch.where(scale, scale_col, fixed_col)
    row = torch.where(scale, scale_row, fixed_row)
    inside = ((col >= 0) & (col < w) & (row >= 0) & (row < h)).unsqueeze(-1)
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    out = x.permute(0, 2, 3, 1)[batch, row.clamp(0, h - 1), col.clamp(0, w - 1)]  # (n, h, w, c)
    return torch.where(inside, out, torch.zeros((), dtype=x.dtype, device=dev)).permute(0, 3, 1, 2).contiguous()


def _matrix(n: int, device: torch.device, **entries: Tensor | float) -> Tensor:
    """(n, 6) float64 affine data, identity except the named entries a0..a5."""
    a = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device).repeat(n, 1)
    for key, value in entries.items():
        a[:, int(key[1])] = value
    return a


def _round15(t: Tensor) -> Tensor:
    """Python's round(t, 15), as Image.rotate rounds its cosines and sines."""
    return torch.round(t * 1e15) / 1e15


def pil_rotate(x: Tensor, v: Tensor) -> Tensor:
    """`img.rotate(v)`: v degrees counter-clockwise about the centre (w/2, h/2), Image.rotate's own matrix."""
    h, w = x.shape[-2:]
    deg = torch.fmod(v.double(), 360.0)
    deg = torch.where(deg < 0, deg + 360.0, deg)  # Python's `angle % 360.0`: the sign of the divisor
    rad = -(deg * (math.pi / 180.0))  # -math.radians(angle)
    cos, sin = _round15(torch.cos(rad)), _round15(torch.sin(rad))
    cx, cy = w / 2, h / 2
    a2 = (cos * -cx + sin * -cy) + cx
    a5 = (-sin * -cx + cos * -cy) + cy
    return _pil_affine(x, _matrix(len(x), x.device, a0=cos, a1=sin, a2=a2, a3=-sin, a4=cos, a5=a5))


def pil_shear_x(x: Tensor, v: Tensor) -> Tensor:
    """`img.transform(size, AFFINE, (1, v, 0, 0, 1, 0))`: about the top-left corner."""
    return _pil_affine(x, _matrix(len(x), x.device, a1=v.double()))


def pil_shear_y(x: Tensor, v: Tensor) -> Tensor:
    return _pil_affine(x, _matrix(len(x), x.device, a3=v.double()))


def pil_translate_x(x: Tensor, v: Tensor) -> Tensor:
    """`img.transform(size, AFFINE, (1, 0, v * w, 0, 1, 0))`: the content moves left by v * w for v > 0."""
    return _pil_affine(x, _matrix(len(x), x.device, a2=v.double() * x.shape[-1]))


def pil_translate_y(x: Tensor, v: Tensor) -> Tensor:
    return _pil_affine(x, _matrix(len(x), x.device, a5=v.double() * x.shape[-2]))


# The reference randaugment.py's augment_list(): the same names, order and ranges (so op indices mean the same in both
# modes), PIL's ops. AutoContrast, Equalize, Identity and Solarize are PIL's already; Posterize keeps int(v): 4..7 bits.
PIL_RANDAUGMENT_OPS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], float, float]] = {
    **RANDAUGMENT_OPS,
    "Brightness": (pil_brightness, 0.05, 0.95),
    "Color": (pil_color, 0.05, 0.95),
    "Contrast": (pil_contrast, 0.05, 0.95),
    "Posterize": (posterize, 4.0, 8.0),
    "Rotate": (pil_rotate, -30.0, 30.0),
    "Sharpness": (pil_sharpness, 0.05, 0.95),
    "ShearX": (pil_shear_x, -0.3, 0.3),
    "ShearY": (pil_shear_y, -0.3, 0.3),
    "TranslateX": (pil_translate_x, -0.3, 0.3),
    "TranslateY": (pil_translate_y, -0.3, 0.3),
}
assert tuple(PIL_RANDAUGMENT_OPS) == OP_NAMES  # an override under a new name would shift the op indices
OP_TABLES = {"harness": RANDAUGMENT_OPS, "pil": PIL_RANDAUGMENT_OPS}


def op_table(ops: str) -> dict[str, tuple[Callable[[Tensor, Tensor], Tensor], float, float]]:
    """The op table of `augment.ops` ("harness" or "pil"); a ValueError for another name."""
    if ops not in OP_TABLES:
        raise ValueError(f"augment.ops={ops!r}: expected one of {', '.join(OP_TABLES)}")
    return OP_TABLES[ops]


def randaugment(x: Tensor, gen: torch.Generator, n_ops: int, ops: str = "harness") -> tuple[Tensor, Tensor, Tensor]:
    """Apply `n_ops` rounds; in each, every sample gets its own op and magnitude (`ops`: "harness" or "pil").

    Returns (images, op index per round and sample (n_ops, N), magnitude (n_ops, N)) so that tests
    can check op frequencies and magnitude ranges. "pil" magnitudes are float64, as Python's: then U(4, 8)
    stays below 8 and the geometric ops get the very value PIL would.
    """
    table = op_table(ops)
    n = len(x)
    out = x.clone()
    chosen = torch.randint(0, len(OP_NAMES), (n_ops, n), generator=gen, device=x.device)
    mags = torch.empty(n_ops, n, device=x.device, dtype=torch.float64 if ops == "pil" else torch.float32)
    for r in range(n_ops):
        u = _rand(n, gen, x.device).to(mags.dtype)
        for k, name in enumerate(OP_NAMES):
            fn, lo, hi = table[name]
            mags[r] = torch.where(chosen[r] == k, lo + u * (hi - lo), mags[r])
            sel = (chosen[r] == k).nonzero().squeeze(1)
            if sel.numel():
                out[sel] = fn(out[sel], mags[r, sel])
    return out, chosen, mags

