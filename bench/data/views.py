"""Augmented views on uint8 image batches (N, C, H, W), with per-sample randomness.

weak   = padded random crop (with probability `crop_prob`) + horizontal flip.
strong = RandAugment (n ops sampled with replacement, magnitude uniform in each op's range, the
         FixMatch/Ada-CM variant of docs/concepts/methods.md#views-weak-and-strong) + Cutout, then the weak
         pipeline (`strong_order="randaugment_first"`, the Ada-CM lineage), or the weak pipeline first and then
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
on CPU or on an accelerator, and a view is a pure function of (images, generator state). RandAugment's ops and
their two tables are in bench/data/randaugment.py.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.checks import check_fields
from bench.config import AugmentConfig
from bench.data.randaugment import _rand, _u8, op_table, randaugment

CUTOUT_FILL = (125.0, 123.0, 114.0)


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
    op_table(ops)
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
