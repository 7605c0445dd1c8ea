"""Augmented views on uint8 image batches (N, C, H, W), with per-sample randomness.

weak   = padded random crop (with probability `crop_prob`) + horizontal flip.
strong = RandAugment (n ops sampled with replacement, magnitude uniform in each op's range, the
         FixMatch/Ada-CM variant of reference/methods.md §1) + Cutout, then the weak pipeline
         (`strong_order="randaugment_first"`, the Ada-CM lineage), or the weak pipeline first and then
         RandAugment + Cutout (`"weak_first"`, USB's transform_strong).
none   = the un-augmented image as the network sees it (evaluation's view).

Options of `AugmentConfig`, each reproducing a reference pipeline:

- `ops="harness"` (the default; the committed leaderboards were made with it): FERBench's own RandAugment and
  Cutout. It keeps these differences from the PIL ops of the reference randaugment.py files, deliberately:
  geometric ops fill uncovered pixels with grey 128 (PIL: 0) and sample through `grid_sample` (PIL: its own
  fixed-point map, so edge pixels can differ); Shear slants about the image's centre line (PIL: about the
  top-left corner); Translate moves by -v (the range is symmetric: the same distribution); Posterize keeps
  4..8 bits, a fifth of the draws being no-ops at 8 (PIL: int(U(4, 8)), 4..7); Brightness, Color, Contrast and
  Sharpness round where PIL truncates (within 2 grey levels); Cutout's centre is uniform on [0, W) and its
  box excludes the end pixel.
- `ops="pil"`: for the same image and magnitudes, the same pixels as that randaugment.py (one file in USB and
  the Ada-CM lineage, FixMatch's variant) applied to a PIL image: Rotate, ShearX/Y and TranslateX/Y by PIL's
  affine map (`Image.rotate(v)` about the centre, shears about the top-left corner, fill 0, PIL's rounding: see
  `_pil_affine`); the ImageEnhance ops with PIL's luma, mean and truncating blend; Posterize int(U(4, 8)) =
  4..7 bits; Cutout as its `CutoutAbs` (see `pil_cutout`, and `cutout` for its centre draw). AutoContrast,
  Equalize, Solarize and Posterize are PIL's in both modes. The draws follow the reference's distributions, from
  the view's torch generator (not Python's `random` and numpy's streams).
- `pad_mode`: the weak crop's padding: "reflect" (USB's RandomCrop(padding_mode="reflect")) or "zeros"
  (torchvision's RandomCrop(size, padding=p) on a PIL image, whose default fill is 0).
- `resize_to`: torchvision's `Resize(side)` of a PIL image (PIL's bilinear resampling, its filter widened when
  downscaling, in its fixed-point arithmetic: the same pixels), on every view, evaluation's too: after
  RandAugment + Cutout and before the weak crop (the Ada-CM lineage's Resize(224) of its 100-px faces; with
  `strong_order="weak_first"`, before everything). Square images only.
- `channels="bgr"`: the stored RGB pixels are put in BGR order before anything else, as `cv2.imread` without
  conversion feeds the Ada-CM lineage: every op runs on the swapped channels (Color's luma weights, Cutout's
  fill land on them as they do there) and the network sees BGR under the configured (RGB) statistics.

Everything is batched tensor arithmetic driven by an explicit `torch.Generator`, so the same code runs
on CPU or on an accelerator, and a view is a pure function of (images, generator state).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.checks import check_fields
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


# The reference randaugment.py's augment_list(): the same names, order and ranges, PIL's ops.
PIL_RANDAUGMENT_OPS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], float, float]] = {
    "AutoContrast": (autocontrast, 0.0, 1.0),
    "Brightness": (pil_brightness, 0.05, 0.95),
    "Color": (pil_color, 0.05, 0.95),
    "Contrast": (pil_contrast, 0.05, 0.95),
    "Equalize": (equalize, 0.0, 1.0),
    "Identity": (identity, 0.0, 1.0),
    "Posterize": (posterize, 4.0, 8.0),  # int(v): 4..7 bits
    "Rotate": (pil_rotate, -30.0, 30.0),
    "Sharpness": (pil_sharpness, 0.05, 0.95),
    "ShearX": (pil_shear_x, -0.3, 0.3),
    "ShearY": (pil_shear_y, -0.3, 0.3),
    "Solarize": (solarize, 0.0, 256.0),
    "TranslateX": (pil_translate_x, -0.3, 0.3),
    "TranslateY": (pil_translate_y, -0.3, 0.3),
}
assert tuple(PIL_RANDAUGMENT_OPS) == OP_NAMES  # op indices mean the same in both modes
OP_TABLES = {"harness": RANDAUGMENT_OPS, "pil": PIL_RANDAUGMENT_OPS}


def _op_table(ops: str) -> dict[str, tuple[Callable[[Tensor, Tensor], Tensor], float, float]]:
    if ops not in OP_TABLES:
        raise ValueError(f"augment.ops={ops!r}: expected one of {', '.join(OP_TABLES)}")
    return OP_TABLES[ops]


def randaugment(x: Tensor, gen: torch.Generator, n_ops: int, ops: str = "harness") -> tuple[Tensor, Tensor, Tensor]:
    """Apply `n_ops` rounds; in each, every sample gets its own op and magnitude (`ops`: "harness" or "pil").

    Returns (images, op index per round and sample (n_ops, N), magnitude (n_ops, N)) so that tests
    can check op frequencies and magnitude ranges. "pil" magnitudes are float64, as Python's: then U(4, 8)
    stays below 8 and the geometric ops get the very value PIL would.
    """
    table = _op_table(ops)
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


def pil_cutout(x: Tensor, side: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """The reference `CutoutAbs(img, side)` given its draws: `side` = v * W in pixels, (cx, cy) the centre as
    `np.random.uniform` returned it. x0 = int(max(0, cx - side / 2)), x1 = int(min(W, x0 + side)) (y alike), then
    `ImageDraw.rectangle((x0, y0, x1, y1), (125, 123, 114))`, which fills [x0, x1] x [y0, y1], end pixels
    included, clipped to the image. Samples with side <= 0 are untouched (`Cutout(img, 0)` returns early)."""
    n, _, h, w = x.shape
    side, cx, cy = (t.to(torch.float64).view(-1, 1, 1) for t in (side, cx, cy))
    x0 = (cx - side / 2).clamp_min(0).floor()  # int() of a non-negative value
    y0 = (cy - side / 2).clamp_min(0).floor()
    x1 = (x0 + side).clamp_max(w).floor()  # PIL's C code casts the float end point to int
    y1 = (y0 + side).clamp_max(h).floor()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    box = ((ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1) & (side > 0)).unsqueeze(1)
    fill = torch.tensor(CUTOUT_FILL, device=x.device).view(1, 3, 1, 1).to(x.dtype)
    return torch.where(box, fill, x)


def cutout(x: Tensor, gen: torch.Generator, max_frac: float, ops: str = "harness") -> Tensor:
    """Square of side v*W, v ~ U(0, max_frac), clipped at the border.

    "harness": centred uniformly on [0, W) x [0, H), the end pixel excluded. "pil": `pil_cutout` with the
    reference's draws; its `np.random.uniform(w)` means low=w, high=1.0, a centre uniform on (1, W].
    """
    _op_table(ops)
    n, _, h, w = x.shape
    if ops == "pil":
        side = _rand(n, gen, x.device).double() * max_frac * w
        cx = w + (1.0 - w) * _rand(n, gen, x.device).double()  # numpy: low + (high - low) * random()
        cy = h + (1.0 - h) * _rand(n, gen, x.device).double()
        return pil_cutout(x, side, cx, cy)
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


@functools.lru_cache(maxsize=32)
def _pil_bilinear_taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Pillow's BILINEAR resampling coefficients (Resample.c: precompute_coeffs, normalize_coeffs_8bpc): for each
    output pixel, the input pixels of a triangle filter of support max(1, n_in / n_out) and their normalised
    weights as integers with 22 fractional bits. Returns (index, weight), each (n_out, taps); unused taps weigh 0."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    inv = 1.0 / filterscale
    rows: list[tuple[int, list[int]]] = []
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        k = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * inv)) for x in range(xmax)]
        total = sum(k)  # summed in order, as the C loop does
        if total != 0.0:
            k = [v / total for v in k]
        rows.append((xmin, [int(v * (1 << 22) + (0.5 if v >= 0 else -0.5)) for v in k]))
    taps = max(len(k) for _, k in rows)
    index = torch.tensor([[min(xmin + i, n_in - 1) for i in range(taps)] for xmin, _ in rows])
    weight = torch.tensor([k + [0] * (taps - len(k)) for _, k in rows], dtype=torch.int32)
    return index, weight


def _pil_pass(t: Tensor, dim: int, index: Tensor, weight: Tensor) -> Tensor:
    """One pass along `dim`, in Pillow's int32 arithmetic: clip8((2^21 + sum_k pixel_k * weight_k) >> 22)."""
    shape = [1] * t.dim()
    shape[dim] = len(index)
    acc = torch.full([len(index) if d == dim % t.dim() else s for d, s in enumerate(t.shape)], 1 << 21,
                     dtype=torch.int32, device=t.device)
    for k in range(index.shape[1]):
        acc += torch.index_select(t, dim, index[:, k]).int() * weight[:, k].view(shape)
    return (acc >> 22).clamp_(0, 255).to(torch.uint8)


def pil_resize(x: Tensor, size: int) -> Tensor:
    """torchvision's `Resize(size)` of a square PIL image, i.e. `img.resize((size, size), BILINEAR)`: a horizontal
    then a vertical pass, each rounded to uint8 as Pillow does (its antialiasing filter when downscaling)."""
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(f"augment.resize_to={size}: square images only; got {h}x{w} (H x W)")
    if size == w:
        return x
    index, weight = (t.to(x.device) for t in _pil_bilinear_taps(w, size))
    return _pil_pass(_pil_pass(x, -1, index, weight), -2, index, weight)


def _reflect(i: Tensor, n: int) -> Tensor:
    """Map indices in [-n+1, 2n-2] into [0, n-1] as reflect padding does (edge pixel not repeated)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def shifted_crop(x: Tensor, oy: Tensor, ox: Tensor, mode: str = "reflect") -> Tensor:
    """The H x W window at offset (oy, ox) (per sample, each in [-H+1, H-1] x [-W+1, W-1]) of the image padded on
    every side: window pixel (i, j) is image pixel (oy + i, ox + j), read through the padding `mode` outside the
    image: "reflect" (the edge pixel not repeated) or "zeros". torchvision's `crop(pad(img, p), top, left, H, W)`
    is the offset (top - p, left - p). One gather: no padded copy, no float round trip."""
    if mode not in ("reflect", "zeros"):
        raise ValueError(f"augment.pad_mode={mode!r}: expected 'reflect' or 'zeros'")
    n, c, h, w = x.shape
    rows = oy.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)  # (n, h, 1)
    cols = ox.view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)  # (n, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    if mode == "reflect":
        # Advanced indexing around the channel axis gives (n, h, w, c).
        return x.permute(0, 2, 3, 1)[batch, _reflect(rows, h), _reflect(cols, w)].permute(0, 3, 1, 2).contiguous()
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(-1)  # (n, h, w, 1)
    out = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1), cols.clamp(0, w - 1)]
    return torch.where(inside, out, torch.zeros((), dtype=x.dtype, device=x.device)).permute(0, 3, 1, 2).contiguous()


def padded_random_crop(x: Tensor, gen: torch.Generator, pad: int, prob: float, mode: str = "reflect") -> Tensor:
    """Pad by `pad` pixels and crop back at a uniform random offset, for a `prob` share of samples (`shifted_crop`;
    `mode` "reflect", or "zeros" as torchvision's RandomCrop(size, padding=pad) on a PIL image)."""
    if pad <= 0 or prob <= 0:
        return x
    n = len(x)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    keep = _rand(n, gen, x.device) >= prob
    oy = torch.where(keep, torch.full_like(oy, pad), oy) - pad
    ox = torch.where(keep, torch.full_like(ox, pad), ox) - pad
    return shifted_crop(x, oy, ox, mode)


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
    """Turns uint8 batches into normalised float views of a named kind ("weak", "strong", "weak2", ...).

    Every view starts from `source` (the channel order the network sees) and is resized to `resize_to` before
    the weak crop and flip: in the strong view after RandAugment + Cutout (strong_order="randaugment_first"),
    or before the whole weak-then-RandAugment pipeline ("weak_first").
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        check_fields(cfg, "augment.")  # the config's own rules (bench/config.py), also for a hand-built config
        self.cfg = cfg

    def source(self, x: Tensor) -> Tensor:
        """The stored (RGB) pixels in the channel order the ops and the network see."""
        return x.flip(1) if self.cfg.channels == "bgr" else x

    def resize(self, x: Tensor) -> Tensor:
        return pil_resize(x, self.cfg.resize_to) if self.cfg.resize_to is not None else x

    def crop_flip(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The weak pipeline proper: the configured crop, then a horizontal flip."""
        if self.cfg.crop == "resized":
            return horizontal_flip(random_resized_crop(x, gen, tuple(self.cfg.rrc_scale)), gen)
        pad = self.pad_width(x.shape[-1])
        return horizontal_flip(padded_random_crop(x, gen, pad, self.cfg.crop_prob, self.cfg.pad_mode), gen)

    def pad_width(self, side: int) -> int:
        """The weak crop's padding in pixels for images of `side` pixels (`pad_frac`, rounded by `pad_rounding`)."""
        exact = self.cfg.pad_frac * side
        return int(exact) if self.cfg.pad_rounding == "floor" else int(round(exact))

    def randaugment_cutout(self, x: Tensor, gen: torch.Generator) -> Tensor:
        x, _, _ = randaugment(x, gen, self.cfg.randaugment_n, self.cfg.ops)
        return cutout(x, gen, self.cfg.cutout_max, self.cfg.ops)

    def weak(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.crop_flip(self.resize(self.source(x)), gen)

    def strong(self, x: Tensor, gen: torch.Generator) -> Tensor:
        x = self.source(x)
        if self.cfg.strong_order == "weak_first":  # USB: crop and flip, then RandAugment + Cutout
            return self.randaugment_cutout(self.crop_flip(self.resize(x), gen), gen)
        return self.crop_flip(self.resize(self.randaugment_cutout(x, gen)), gen)

    def unaugmented(self, x: Tensor) -> Tensor:
        """The "none" view before normalisation: channel order and resize only."""
        return self.resize(self.source(x))

    def normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.cfg.normalize_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.normalize_std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """A normalised view back to uint8 pixels in the stored (RGB) channel order (e.g. for a face detector)."""
        mean = torch.tensor(self.cfg.normalize_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.normalize_std, device=x.device).view(1, 3, 1, 1)
        return self.source(_u8((x.float() * std + mean) * 255.0))  # the swap is its own inverse

    def make(self, view: str, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """The normalised view `view` of uint8 images `x`; "none" (evaluation's view) draws nothing from `gen`."""
        kind = view.rstrip("0123456789")
        if kind == "none":
            return self.normalize(self.unaugmented(x))
        if kind not in ("weak", "strong"):
            raise ValueError(f"unknown view kind {view!r}; expected weak*, strong* or none")
        if gen is None:
            raise ValueError(f"view {view!r} is random: it needs a generator")
        return self.normalize(self.weak(x, gen) if kind == "weak" else self.strong(x, gen))
