"""The batched views against the definitions of docs/concepts/methods.md#views-weak-and-strong, statistically,
and under a seed.

Weak = RandomCrop(padding, reflect) with probability `crop_prob` + RandomHorizontalFlip(0.5); strong =
RandAugment (3 ops drawn uniformly with replacement from 14, magnitude uniform in each op's range) +
Cutout (side v*W, v ~ U(0, 0.5)), then weak. Every test draws from fixed seeds, so it either always passes
or always fails; the tolerances are what the sample sizes make significant (chi-square p > 1e-4, or a
few binomial standard deviations), so a wrong rate or range fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from bench.config import AugmentConfig
from bench.data import randaugment as R
from bench.data import views as V

P_MIN = 1e-4  # chi-square p-values below this reject "the counts follow the reference distribution"


def _coded(n: int, size: int = 8) -> torch.Tensor:
    """Every pixel holds 16*row + col, so a crop offset or a flip can be read back from the pixels."""
    r = torch.arange(size).view(size, 1)
    c = torch.arange(size).view(1, size)
    return (16 * r + c).to(torch.uint8).expand(n, 3, size, size).contiguous()


def _read_weak(out: torch.Tensor, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flipped, oy, ox) per sample from pixels (4, 4) and (4, 3) of a weak view of `_coded` images."""
    a, b = out[:, 0, 4, 4].long(), out[:, 0, 4, 3].long()
    flipped = (b % 16) > (a % 16)  # a flip reverses the column order
    oy = a // 16 - 4
    ox = torch.where(flipped, a % 16 - 3, a % 16 - 4)  # flipped: pixel (4, 4) shows crop column 3
    return flipped, oy, ox


@pytest.mark.parametrize("crop_prob", [1.0, 0.5])
def test_weak_view_flip_and_offsets_follow_the_reference(crop_prob: float) -> None:
    n, pad = 20000, 2
    vm = V.ViewMaker(AugmentConfig(crop_prob=crop_prob, pad_frac=pad / 8))
    flipped, oy, ox = _read_weak(vm.weak(_coded(n), torch.Generator().manual_seed(11)))
    assert oy.min() == ox.min() == -pad and oy.max() == ox.max() == pad  # offsets span exactly [-pad, pad]
    # flip rate: 0.5 within 4 binomial standard deviations
    assert abs(flipped.float().mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5
    # joint (flip, oy, ox): uniform over the (2 pad + 1)^2 offsets when cropped, (0, 0) when not; flip independent
    k = 2 * pad + 1
    cell = flipped.long() * k * k + (oy + pad) * k + (ox + pad)
    observed = torch.bincount(cell, minlength=2 * k * k).numpy()
    p_offset = np.full(k * k, crop_prob / (k * k))
    p_offset[(k * k) // 2] += 1 - crop_prob
    expected = n * np.concatenate([p_offset, p_offset]) / 2
    assert stats.chisquare(observed, expected).pvalue > P_MIN
    # and the test has power: the same counts are rejected against a crop probability 0.05 off
    wrong = np.full(k * k, (crop_prob - 0.05) / (k * k))
    wrong[(k * k) // 2] += 1.05 - crop_prob
    assert stats.chisquare(observed, n * np.concatenate([wrong, wrong]) / 2).pvalue < P_MIN


def test_randaugment_ops_are_uniform_and_independent_across_rounds() -> None:
    n, k = 12000, len(R.OP_NAMES)
    _, ops, _ = R.randaugment(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.Generator().manual_seed(12), 3)
    for r in range(3):
        counts = torch.bincount(ops[r], minlength=k).numpy()
        assert stats.chisquare(counts).pvalue > P_MIN, f"round {r}: {counts}"
    # with replacement: the pair (round 0, round 1) is uniform over all k^2 pairs, repeats included
    pairs = torch.bincount(ops[0] * k + ops[1], minlength=k * k).numpy()
    assert stats.chisquare(pairs).pvalue > P_MIN
    assert (ops[0] == ops[1]).float().mean().item() == pytest.approx(1 / k, abs=4 * (1 / k / n) ** 0.5)


def test_randaugment_magnitudes_are_uniform_over_each_ops_range() -> None:
    n = 14000
    _, ops, mags = R.randaugment(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.Generator().manual_seed(13), 3)
    for i, name in enumerate(R.OP_NAMES):
        _, lo, hi = R.RANDAUGMENT_OPS[name]
        m = mags[ops == i].double().numpy()
        assert m.min() >= lo and m.max() <= hi, name
        assert m.min() < lo + 0.01 * (hi - lo) and m.max() > hi - 0.01 * (hi - lo), name  # spread over all of it
        if name == "Posterize":  # bits 4..8, each a fifth of the draws
            assert stats.chisquare(np.bincount(np.floor(m).astype(int), minlength=9)[4:]).pvalue > P_MIN
        else:
            assert stats.kstest(m, stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN, name
    # the documented ranges (docs/concepts/methods.md#views-weak-and-strong)
    ranges = {name: (lo, hi) for name, (_, lo, hi) in R.RANDAUGMENT_OPS.items()}
    assert ranges["Rotate"] == (-30.0, 30.0) and ranges["ShearX"] == ranges["TranslateY"] == (-0.3, 0.3)
    assert ranges["Brightness"] == ranges["Sharpness"] == (0.05, 0.95) and ranges["Solarize"] == (0.0, 256.0)


def test_batched_randaugment_equals_each_samples_ops_applied_in_turn() -> None:
    """Per-sample op choice in batches is the reference pipeline run on each image alone."""
    g = torch.Generator().manual_seed(14)
    x = torch.nn.functional.interpolate(torch.randint(30, 220, (120, 3, 4, 4), generator=g).float(), size=16)
    x = x.add(torch.randint(-15, 15, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    out, ops, mags = R.randaugment(x, torch.Generator().manual_seed(15), 3)
    for i in range(len(x)):
        y = x[i : i + 1]
        for r in range(3):
            fn = R.RANDAUGMENT_OPS[R.OP_NAMES[int(ops[r, i])]][0]
            y = fn(y, mags[r, i : i + 1])
        assert torch.equal(y[0], out[i]), f"sample {i}: ops {[R.OP_NAMES[int(o)] for o in ops[:, i]]}"


def test_cutout_sides_follow_u0_half_width() -> None:
    """Side v*W, v ~ U(0, 0.5), centre uniform, clipped at the border. Boxes that touch no border are
    unclipped. A box covers columns [floor(x0), floor(x0 + s)), so it touches no border when its centre lies
    in [1 + s/2, W - s/2): the unclipped sides then have density proportional to (W - 1 - s)^2 on [0, W/2]."""
    n, w = 8000, 32
    out = V.cutout(torch.zeros(n, 3, w, w, dtype=torch.uint8), torch.Generator().manual_seed(16), max_frac=0.5)
    filled = out[:, 0] == 125
    assert torch.equal(out[:, 1][filled], torch.full_like(out[:, 1][filled], 123))
    assert torch.equal(out[:, 2][filled], torch.full_like(out[:, 2][filled], 114))
    cols, rows = filled.any(1), filled.any(2)
    width, height = cols.sum(1), rows.sum(1)
    assert torch.equal(filled.sum((1, 2)), width * height)  # a rectangle
    border = cols[:, 0] | cols[:, -1] | rows[:, 0] | rows[:, -1]
    side = width[~border].double().numpy()
    assert ((width - height).abs()[~border] <= 1).all()  # square
    assert side.max() <= w / 2 + 1 and side.max() >= w / 2 - 2
    # a side-s box is floor(s) or floor(s) + 1 pixels wide (mean s): bins centred on whole pixels
    edges = np.array([0, 3.5, 7.5, 11.5, 16])
    antiderivative = -((w - 1 - edges) ** 3) / 3
    p = np.diff(antiderivative) / (antiderivative[-1] - antiderivative[0])
    counts = np.histogram(side, bins=[-0.5, 3.5, 7.5, 11.5, 17])[0]
    sigma = np.sqrt(len(side) * p * (1 - p))
    assert (np.abs(counts - len(side) * p) < 5 * sigma).all(), (counts, len(side) * p)
    # so a box touches a border with probability 1 - E[((W - 1 - s)/W)^2] = 0.46 here (boxes under a pixel
    # wide may cover nothing and count as inside: the 0.02 allowance)
    expected_clipped = 1 - np.mean(((w - 1 - np.linspace(0, w / 2, 10001)) / w) ** 2)
    assert border.double().mean().item() == pytest.approx(expected_clipped, abs=0.02)


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")


def _agree(a: torch.Tensor, im: Image.Image) -> float:
    b = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return (a == b).all(0).float().mean().item()


@pytest.mark.parametrize("v", [-0.3, -0.1, 0.2, 0.3])
def test_geometric_ops_against_pil(v: float) -> None:
    """Rotate is PIL's rotate; Translate is PIL's translate by -v (the range is symmetric, so the
    distribution is the reference's); Shear is PIL's shear taken about the image's centre line rather than
    FixMatch's top-left corner (the same slant, half the grey fill)."""
    g = torch.Generator().manual_seed(17)
    x = torch.randint(0, 256, (1, 3, 32, 32), generator=g, dtype=torch.uint8)
    im, fill, h = _pil(x[0]), (128, 128, 128), 32
    assert _agree(R.rotate(x, torch.tensor([100 * v]))[0], im.rotate(100 * v, fillcolor=fill)) > 0.99
    assert _agree(R.translate_x(x, torch.tensor([v]))[0],
                  im.transform(im.size, Image.AFFINE, (1, 0, -v * h, 0, 1, 0), fillcolor=fill)) == 1.0
    assert _agree(R.translate_y(x, torch.tensor([v]))[0],
                  im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, -v * h), fillcolor=fill)) == 1.0
    assert _agree(R.shear_x(x, torch.tensor([v]))[0],
                  im.transform(im.size, Image.AFFINE, (1, v, -v * h / 2, 0, 1, 0), fillcolor=fill)) > 0.9
    assert _agree(R.shear_y(x, torch.tensor([v]))[0],
                  im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, -v * h / 2), fillcolor=fill)) > 0.9


DRAWS = {
    "weak": lambda x, g: V.ViewMaker(AugmentConfig()).make("weak", x, g),
    "strong": lambda x, g: V.ViewMaker(AugmentConfig()).make("strong", x, g),
    "crop": lambda x, g: V.padded_random_crop(x, g, 3, 0.5),
    "flip": lambda x, g: V.horizontal_flip(x, g),
    "randaugment": lambda x, g: R.randaugment(x, g, 3)[0],
    "cutout": lambda x, g: V.cutout(x, g, 0.5),
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_deterministic_under_a_seed_and_blind_to_the_global_rng(name: str) -> None:
    x = torch.randint(0, 256, (64, 3, 24, 24), generator=torch.Generator().manual_seed(18), dtype=torch.uint8)
    draw = DRAWS[name]
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (5, 5, 6))
    torch.manual_seed(0)
    a = draw(x, g1)
    torch.manual_seed(1)  # a different global RNG state: the view only reads its own generator
    b = draw(x, g2)
    c = draw(x, g3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(g1.get_state(), g2.get_state())  # same draws consumed: later views stay aligned
    assert torch.equal(draw(x, g1), draw(x, g2))
