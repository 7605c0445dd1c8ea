"""Batched uint8 augmentations: exact agreement with PIL where PIL defines the op, statistics otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from bench.config import AugmentConfig
from bench.data import randaugment as R
from bench.data import views as V


def _images(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish images with a limited range so autocontrast/equalize have work to do.
    base = torch.randint(40, 200, (n, 3, size // 4, size // 4), generator=g).float()
    return torch.nn.functional.interpolate(base, size=size, mode="nearest").add(
        torch.randint(-20, 20, (n, 3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im).transpose(2, 0, 1).astype(int)


@pytest.mark.parametrize(
    "name, op, pil",
    [
        ("autocontrast", R.autocontrast, lambda im, v: ImageOps.autocontrast(im)),
        ("equalize", R.equalize, lambda im, v: ImageOps.equalize(im)),
        ("posterize", R.posterize, lambda im, v: ImageOps.posterize(im, int(v))),
        ("solarize", R.solarize, lambda im, v: ImageOps.solarize(im, v)),
    ],
)
def test_exact_ops_match_pil(name, op, pil) -> None:
    x = _images()
    mags = torch.tensor([4.0, 5.0, 6.0, 7.0, 8.0, 4.0]) if name == "posterize" else torch.tensor(
        [0.0, 64.0, 128.0, 200.0, 255.0, 256.0])
    out = op(x, mags)
    for i in range(len(x)):
        np.testing.assert_array_equal(out[i].numpy().astype(int), _arr(pil(_pil(x[i]), float(mags[i]))), err_msg=name)


@pytest.mark.parametrize(
    "op, enhancer",
    [(R.brightness, ImageEnhance.Brightness), (R.color, ImageEnhance.Color), (R.contrast, ImageEnhance.Contrast),
     (R.sharpness, ImageEnhance.Sharpness)],
)
def test_enhance_ops_match_pil_within_rounding(op, enhancer) -> None:
    x = _images()
    mags = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.9, 0.95])
    out = op(x, mags)
    for i in range(len(x)):
        ref = _arr(enhancer(_pil(x[i])).enhance(float(mags[i])))
        assert np.abs(out[i].numpy().astype(int) - ref).max() <= 2


def test_geometric_ops_keep_shape_and_fill_grey() -> None:
    x = torch.full((2, 3, 16, 16), 10, dtype=torch.uint8)
    out = R.translate_x(x, torch.tensor([0.25, -0.25]))
    assert out.shape == x.shape and out.dtype == torch.uint8
    # A quarter of the width shifted out is refilled with grey (128) on the opposite side.
    assert (out[0, :, :, :4] == 128).all() and (out[0, :, :, 4:] == 10).all()
    assert (out[1, :, :, -4:] == 128).all() and (out[1, :, :, :-4] == 10).all()
    r = R.rotate(x, torch.tensor([0.0, 30.0]))
    assert (r[0] == 10).all() and (r[1] == 128).any()


def test_randaugment_ops_and_magnitudes() -> None:
    x = _images(n=2000, size=8)
    g = torch.Generator().manual_seed(1)
    _, ops, mags = R.randaugment(x, g, n_ops=3)
    counts = torch.bincount(ops.flatten(), minlength=len(R.OP_NAMES)).float()
    expected = ops.numel() / len(R.OP_NAMES)  # 6000 / 14 = 428.6 per op
    assert (counts - expected).abs().max() < 5 * expected**0.5  # uniform op choice, within 5 sigma
    for k, name in enumerate(R.OP_NAMES):
        _, lo, hi = R.RANDAUGMENT_OPS[name]
        m = mags[ops == k]
        assert m.min() >= lo and m.max() <= hi
        assert m.mean() == pytest.approx((lo + hi) / 2, abs=0.15 * (hi - lo))  # uniform magnitude


def test_weak_view_flip_rate_and_crop_offsets() -> None:
    n, size, pad = 4000, 8, 2
    # Each image is its own column index, so a flip or a shift is readable from the pixels.
    cols = torch.arange(size).view(1, 1, 1, size).expand(n, 3, size, size).to(torch.uint8) * 10 + 50
    g = torch.Generator().manual_seed(2)
    flipped = V.horizontal_flip(cols, g)
    rate = (flipped[:, 0, 0, 0] != 50).float().mean().item()
    assert rate == pytest.approx(0.5, abs=0.03)
    cropped = V.padded_random_crop(cols, torch.Generator().manual_seed(3), pad, prob=1.0)
    # With reflect padding, pixel (0, pad) of the crop tells the horizontal offset: column pad - ox + ...
    centre = cropped[:, 0, size // 2, size // 2].long()
    shift = (centre - 50) // 10 - size // 2  # in -pad..pad
    assert shift.min().item() == -pad and shift.max().item() == pad
    freq = torch.bincount(shift + pad, minlength=2 * pad + 1).float() / n
    assert (freq - 1 / (2 * pad + 1)).abs().max() < 0.03  # uniform offsets
    untouched = V.padded_random_crop(cols, torch.Generator().manual_seed(3), pad, prob=0.0)
    assert torch.equal(untouched, cols)


def test_cutout_fills_a_square() -> None:
    x = torch.zeros(500, 3, 20, 20, dtype=torch.uint8)
    out = V.cutout(x, torch.Generator().manual_seed(4), max_frac=0.5)
    filled = (out[:, 0] == 125)
    assert torch.equal(out[:, 1][filled], torch.full_like(out[:, 1][filled], 123))
    area = filled.flatten(1).sum(1).float()
    assert area.max() <= 100 and area.mean() > 5  # side <= 0.5 * 20


def test_views_are_deterministic_under_a_seed() -> None:
    vm = V.ViewMaker(AugmentConfig())
    x = _images(n=16, size=32)
    a = vm.make("strong", x, torch.Generator().manual_seed(7))
    b = vm.make("strong", x, torch.Generator().manual_seed(7))
    c = vm.make("strong", x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == (16, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown view kind"):
        vm.make("medium", x, torch.Generator())


def test_crop_equals_a_window_of_the_reflect_padded_image() -> None:
    x = _images(n=20, size=12)
    pad = 3
    out = V.padded_random_crop(x, torch.Generator().manual_seed(5), pad, prob=1.0)
    padded = torch.nn.functional.pad(x.float(), (pad,) * 4, mode="reflect").to(torch.uint8)
    for i in range(len(x)):
        windows = [(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                   if torch.equal(padded[i, :, oy:oy + 12, ox:ox + 12], out[i])]
        assert windows, f"sample {i} is no window of its padded image"
