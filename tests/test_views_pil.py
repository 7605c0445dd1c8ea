"""The reference-pipeline options of the views (augment.ops="pil", pad_mode, resize_to, channels) against PIL and
torchvision themselves: the same image and the same parameters must give the same pixels.

The reference is the randaugment.py of FixMatch/USB/Ada-CM (one file) on a PIL image, torchvision's
RandomCrop(padding=p) and Resize on a PIL image, and Ada-CM's cv2.imread (BGR, never converted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from accelerate import Accelerator
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from scipy import stats

from bench.config import AugmentConfig
from bench.data import randaugment as R
from bench.data import views as V
from bench.engine.evaluation import predict

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Ada-CM's recipe: 100-px faces, Resize(224), RandomApply([RandomCrop(224, padding=8)], 0.5), zero fill, BGR
ADACM = {"ops": "pil", "resize_to": 224, "pad_frac": 8 / 224, "crop_prob": 0.5, "pad_mode": "zeros"}


def _random_image(seed: int = 0, size: int = 100) -> torch.Tensor:
    return torch.randint(0, 256, (3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _structured_image(size: int = 100) -> torch.Tensor:
    """Gradients in each channel with a flat block and sharp edges: shifts and slants show in every row."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x + 3 * y) % 256]).to(torch.uint8)
    img[:, size * 2 // 5 : size * 3 // 5, size // 5 : size * 4 // 5] = torch.tensor([30, 200, 90]).view(3, 1, 1)
    img[:, :, size // 2] = 255
    return img


IMAGES = {"random": _random_image(), "structured": _structured_image()}


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


# The reference randaugment.py's ops, verbatim in what they call (FixMatch/USB/Ada-CM).
REFERENCE = {
    "AutoContrast": lambda im, v: ImageOps.autocontrast(im),
    "Brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "Color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "Contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "Equalize": lambda im, v: ImageOps.equalize(im),
    "Identity": lambda im, v: im,
    "Posterize": lambda im, v: ImageOps.posterize(im, max(1, int(v))),
    "Rotate": lambda im, v: im.rotate(v),
    "Sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "ShearX": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda im, v: ImageOps.solarize(im, v),
    "TranslateX": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)),
    "TranslateY": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])),
}

GEOMETRIC = {
    "Rotate": ([20.0, -30.0, 30.0, 7.3, -0.5, 0.0], R.rotate),
    "ShearX": ([0.3, -0.3, 0.1, -0.17, 0.0], R.shear_x),
    "ShearY": ([0.3, -0.3, 0.1, -0.17, 0.0], R.shear_y),
    "TranslateX": ([0.3, -0.3, 0.125, -0.07, 0.0, 0.29499999], R.translate_x),
    "TranslateY": ([0.3, -0.3, 0.125, -0.07, 0.0, 0.29499999], R.translate_y),
}  # 0.29499999: v * 100 + 0.5 just below an integer, where PIL's double-precision translation path counts


def _apply_each(op, x: torch.Tensor, mags: list[float]) -> torch.Tensor:
    """`op` on copies of one image, one magnitude each (float64, as Python's)."""
    return op(x.unsqueeze(0).repeat(len(mags), 1, 1, 1), torch.tensor(mags, dtype=torch.float64))


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_pil_geometric_ops_give_pils_pixels_exactly(name: str, image: str) -> None:
    x = IMAGES[image]
    lo, hi = R.PIL_RANDAUGMENT_OPS[name][1:]
    # the listed magnitudes, plus magnitudes as the views draw them (float32 uniforms mapped in float64)
    drawn = (torch.rand(80, generator=torch.Generator().manual_seed(1)).double() * (hi - lo) + lo).tolist()
    mags = GEOMETRIC[name][0] + drawn
    out = _apply_each(R.PIL_RANDAUGMENT_OPS[name][0], x, mags)
    for i, v in enumerate(mags):
        ref = _tensor(REFERENCE[name](_pil(x), v))
        differing = (out[i] != ref).any(0).float().mean().item()
        assert differing == 0.0, f"{name}({v}) on the {image} image: {differing:.2%} of the pixels differ from PIL"


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_harness_geometric_ops_are_not_pils(name: str) -> None:
    """The option matters: the harness ops (grey fill, centre shear, -v translate, grid_sample) differ."""
    x = IMAGES["structured"]
    v = GEOMETRIC[name][0][0]  # 20 degrees or 0.3
    harness = _apply_each(GEOMETRIC[name][1], x, [v])[0]
    ref = _tensor(REFERENCE[name](_pil(x), v))
    assert (harness != ref).any(0).float().mean().item() > 0.05


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness", "AutoContrast", "Equalize",
                                  "Solarize"])
def test_pil_colour_ops_match_pil(name: str) -> None:
    """Within 1 grey level is what is asked; PIL's luma, mean and truncating blend make them exact."""
    lo, hi = R.PIL_RANDAUGMENT_OPS[name][1:]
    mags = (torch.linspace(0, 1, 9, dtype=torch.float64) * (hi - lo) + lo).tolist() + [0.3711]
    for image, x in IMAGES.items():
        out = _apply_each(R.PIL_RANDAUGMENT_OPS[name][0], x, mags)
        for i, v in enumerate(mags):
            ref = _tensor(REFERENCE[name](_pil(x), v))
            diff = (out[i].int() - ref.int()).abs()
            assert diff.max().item() <= 1, f"{name}({v}) on the {image} image: {diff.max().item()} grey levels off"
            assert diff.max().item() == 0, f"{name}({v}) on the {image} image: {(diff > 0).float().mean():.2%} off by 1"


def test_pil_posterize_draws_4_to_7_bits_and_is_imageops_posterize() -> None:
    n = 6000
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    k = R.OP_NAMES.index("Posterize")
    _, ops, mags = R.randaugment(x, torch.Generator().manual_seed(3), 3, ops="pil")
    bits = mags[ops == k].floor().long()
    counts = torch.bincount(bits, minlength=9)[4:].numpy()
    assert counts[-1] == 0 and counts[:4].min() > 0, counts  # int(U(4, 8)): 4..7, never 8
    assert stats.chisquare(counts[:4]).pvalue > 1e-4  # each a quarter
    _, ops_h, mags_h = R.randaugment(x, torch.Generator().manual_seed(3), 3)  # the harness keeps 8 (no-ops)
    assert (mags_h[ops_h == k].floor() == 8).any()
    img = IMAGES["random"]
    values = [4.0, 5.5, 6.99, 7.999]
    out = _apply_each(R.PIL_RANDAUGMENT_OPS["Posterize"][0], img, values)
    for i, v in enumerate(values):
        assert torch.equal(out[i], _tensor(ImageOps.posterize(_pil(img), int(v)))), v


def test_pil_randaugment_is_the_reference_ops_applied_in_turn() -> None:
    """The batched RandAugment of ops="pil" against the reference functions, with its own ops and magnitudes."""
    x = torch.stack([_random_image(s, 40) for s in range(24)] + [_structured_image(40)] * 24)
    out, ops, mags = R.randaugment(x, torch.Generator().manual_seed(4), 3, ops="pil")
    assert len(torch.unique(ops)) == len(R.OP_NAMES)  # every op was exercised
    for i in range(len(x)):
        im = _pil(x[i])
        for r in range(3):
            im = REFERENCE[R.OP_NAMES[int(ops[r, i])]](im, float(mags[r, i]))
        assert torch.equal(out[i], _tensor(im)), f"sample {i}: {[R.OP_NAMES[int(o)] for o in ops[:, i]]}"


def _reference_cutout(im: Image.Image, v: float, x0: float, y0: float) -> Image.Image:
    """CutoutAbs of the reference randaugment.py, its draws x0 = np.random.uniform(w), y0 likewise, given."""
    w, h = im.size
    x0 = int(max(0, x0 - v / 2.0))
    y0 = int(max(0, y0 - v / 2.0))
    x1 = min(w, x0 + v)
    y1 = min(h, y0 + v)
    im = im.copy()
    ImageDraw.Draw(im).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return im


def test_pil_cutout_equals_imagedraw_rectangle_with_the_same_draws() -> None:
    x = IMAGES["structured"]
    g = np.random.default_rng(5)
    draws = [(50.0, 100.0, 100.0), (49.99, 1.0001, 1.0001), (0.4, 50.2, 30.9), (25.5, 12.75, 87.25), (10.0, 5.0, 5.0),
             (3.2, 99.9, 2.1)] + [(g.uniform(0, 50), g.uniform(1, 100), g.uniform(1, 100)) for _ in range(40)]
    side, cx, cy = (torch.tensor(c, dtype=torch.float64) for c in zip(*draws))
    out = V.pil_cutout(x.unsqueeze(0).repeat(len(draws), 1, 1, 1), side, cx, cy)
    for i, (v, x0, y0) in enumerate(draws):
        assert torch.equal(out[i], _tensor(_reference_cutout(_pil(x), v, x0, y0))), draws[i]
    # the harness's box excludes its end pixel: one row and one column fewer
    harness = V.cutout(torch.zeros(200, 3, 20, 20, dtype=torch.uint8), torch.Generator().manual_seed(6), 0.5)
    pil = V.cutout(torch.zeros(200, 3, 20, 20, dtype=torch.uint8), torch.Generator().manual_seed(6), 0.5, ops="pil")
    assert (pil[:, 0] == 125).sum() > (harness[:, 0] == 125).sum()


def test_pil_cutout_draws_as_the_reference_does() -> None:
    """Side v*W with v ~ U(0, 0.5); the centre as np.random.uniform(W), i.e. uniform on (1, W] (numpy reads the single
    argument as low=W, high=1). The box's left column follows the reference run with numpy, and the test has the
    power to tell a centre uniform on [0, W) apart."""
    n, w = 20000, 20
    bins = np.arange(w + 1)

    def reference(centre: tuple[float, ...]) -> np.ndarray:
        rs = np.random.RandomState(7)
        v = rs.random_sample(n) * 0.5 * w
        cx = rs.uniform(*centre, size=n)
        return np.histogram(np.maximum(0, cx - v / 2).astype(int), bins=bins)[0]

    out = V.cutout(torch.zeros(n, 3, w, w, dtype=torch.uint8), torch.Generator().manual_seed(8), 0.5, ops="pil")
    filled = (out[:, 0] == 125).any(1)  # (n, w) columns
    left = filled.float().argmax(1)[filled.any(1)].numpy()
    ours = np.histogram(left, bins=bins)[0]
    keep = lambda a, b: np.stack([a, b])[:, (a + b) > 0]  # noqa: E731
    assert stats.chi2_contingency(keep(ours, reference((w,)))).pvalue > 1e-4
    assert stats.chi2_contingency(keep(ours, reference((0, w)))).pvalue < 1e-4


@pytest.mark.parametrize("top, left", [(0, 0), (16, 16), (0, 16), (16, 0), (3, 11), (8, 8), (15, 1)])
def test_zero_padded_crop_equals_torchvision_pad_then_crop(top: int, left: int) -> None:
    x = IMAGES["random"].clamp_min(1)  # no zeros inside: the padding is told apart
    out = V.shifted_crop(x.unsqueeze(0), torch.tensor([top - 8]), torch.tensor([left - 8]), "zeros")[0]
    ref = _tensor(TF.crop(TF.pad(_pil(x), 8), top, left, 100, 100))
    assert torch.equal(out, ref)
    reflect = V.shifted_crop(x.unsqueeze(0), torch.tensor([top - 8]), torch.tensor([left - 8]), "reflect")[0]
    assert torch.equal(reflect, ref) == (top == left == 8)  # the padding mode matters off the centre


def test_zero_padded_random_crop_is_a_window_of_the_zero_padded_image() -> None:
    x = torch.randint(1, 256, (20, 3, 12, 12), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    pad = 3
    out = V.padded_random_crop(x, torch.Generator().manual_seed(10), pad, 1.0, mode="zeros")
    for i in range(len(x)):
        padded = _tensor(TF.pad(_pil(x[i]), pad))
        windows = [(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                   if torch.equal(padded[:, oy : oy + 12, ox : ox + 12], out[i])]
        assert windows, f"sample {i} is no window of its zero-padded image"
    assert (out == 0).any()  # some windows show padding


@pytest.mark.parametrize("size", [224, 48])  # up, and down (PIL's antialiasing filter)
def test_resize_equals_torchvision_resize_of_the_pil_image(size: int) -> None:
    for image, x in IMAGES.items():
        out = V.pil_resize(x.unsqueeze(0), size)[0]
        ref = _tensor(T.Resize(size)(_pil(x)))
        assert out.shape == ref.shape == (3, size, size)
        diff = (out.int() - ref.int()).abs()
        assert diff.max().item() <= 1, f"{image}: {diff.max().item()} grey levels off"
        assert diff.max().item() == 0, f"{image}: {(diff > 0).float().mean():.2%} of the values off by 1"
    with pytest.raises(ValueError, match="square images only"):
        V.pil_resize(torch.zeros(1, 3, 100, 90, dtype=torch.uint8), 224)


def test_resized_views_and_the_evaluation_view() -> None:
    """Every view has the resized side, and the "none" view is the reference's transform_val
    (Resize(224), ToTensor, Normalize), in evaluation too."""
    vm = V.ViewMaker(AugmentConfig(**ADACM))
    x = torch.stack([IMAGES["random"], IMAGES["structured"]])
    for view in ("weak", "strong", "none"):
        assert vm.make(view, x, torch.Generator().manual_seed(11)).shape == (2, 3, 224, 224)
    transform_val = T.Compose([T.Resize(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    ref = torch.stack([transform_val(_pil(im)) for im in x])
    none = vm.make("none", x)
    torch.testing.assert_close(none, ref, rtol=0, atol=1e-5)

    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            seen.append(inputs)
            return torch.zeros(len(inputs), 7)

    predict(Recorder(), x.permute(0, 2, 3, 1).numpy(), vm, Accelerator(cpu=True))
    assert torch.equal(torch.cat(seen), none)


def test_strong_view_resizes_after_randaugment_and_cutout() -> None:
    cfg = AugmentConfig(**ADACM)
    x = torch.stack([_random_image(s) for s in range(6)])
    out = V.ViewMaker(cfg).strong(x, torch.Generator().manual_seed(12))
    g = torch.Generator().manual_seed(12)
    y, _, _ = R.randaugment(x, g, 3, ops="pil")
    y = V.pil_resize(V.cutout(y, g, 0.5, ops="pil"), 224)  # RandAugment and Cutout at 100 px, then Resize(224)
    y = V.horizontal_flip(V.padded_random_crop(y, g, 8, 0.5, mode="zeros"), g)
    assert torch.equal(out, y)
    # USB's order: the weak pipeline first, then RandAugment + Cutout
    out = V.ViewMaker(AugmentConfig(ops="pil", strong_order="weak_first")).strong(x, torch.Generator().manual_seed(13))
    g = torch.Generator().manual_seed(13)
    y = V.horizontal_flip(V.padded_random_crop(x, g, 12, 1.0), g)
    y, _, _ = R.randaugment(y, g, 3, ops="pil")
    assert torch.equal(out, V.cutout(y, g, 0.5, ops="pil"))


def test_bgr_none_view_is_the_normalised_swapped_image() -> None:
    """cv2.imread gives BGR, never converted: the "none" view is Normalize(ToTensor(BGR array)), and so is Ada-CM's
    transform_val of Image.fromarray(cv2.imread(path)); denormalize gives the stored RGB pixels back."""
    x = torch.stack([IMAGES["random"], IMAGES["structured"]])
    vm = V.ViewMaker(AugmentConfig(channels="bgr"))
    none = vm.make("none", x)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(none, (x[:, [2, 1, 0]].float() / 255 - mean) / std, rtol=0, atol=1e-6)
    assert not torch.allclose(none, V.ViewMaker(AugmentConfig()).make("none", x))
    assert torch.equal(vm.denormalize(none), x)
    bgr = [Image.fromarray(im.permute(1, 2, 0).numpy()[:, :, ::-1].copy()) for im in x]  # cv2.imread's array
    transform_val = T.Compose([T.Resize(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    resized = V.ViewMaker(AugmentConfig(channels="bgr", resize_to=224)).make("none", x)
    torch.testing.assert_close(resized, torch.stack([transform_val(im) for im in bgr]), rtol=0, atol=1e-5)


def test_bgr_ops_run_on_the_swapped_channels() -> None:
    x = IMAGES["random"]
    cfg = AugmentConfig(channels="bgr", ops="pil")
    swapped = V.ViewMaker(cfg).source(x.unsqueeze(0))[0]
    bgr = Image.fromarray(x.permute(1, 2, 0).numpy()[:, :, ::-1].copy())  # cv2.imread's array, read as RGB by PIL
    for v in (0.05, 0.4, 0.95):
        out = R.pil_color(swapped.unsqueeze(0), torch.tensor([v], dtype=torch.float64))[0]
        ref = _tensor(ImageEnhance.Color(bgr).enhance(v))
        assert (out.int() - ref.int()).abs().max().item() <= 1
        # the luma weights are not symmetric: Color on RGB then swapped is another image
        rgb_then_swap = R.pil_color(x.unsqueeze(0), torch.tensor([v], dtype=torch.float64))[0].flip(0)
        assert (rgb_then_swap.int() - ref.int()).abs().max().item() > 1
    # the whole strong view: the pipeline of an RGB config on the swapped images, the same draws
    batch = torch.stack([_random_image(s) for s in range(8)])
    a = V.ViewMaker(AugmentConfig(**ADACM, channels="bgr")).strong(batch, torch.Generator().manual_seed(14))
    b = V.ViewMaker(AugmentConfig(**ADACM)).strong(batch.flip(1), torch.Generator().manual_seed(14))
    assert torch.equal(a, b)


def test_default_options_leave_the_none_view_as_it_was() -> None:
    x = torch.stack([IMAGES["random"], IMAGES["structured"]])
    vm = V.ViewMaker(AugmentConfig())
    assert torch.equal(vm.make("none", x), vm.normalize(x))
    with pytest.raises(ValueError, match="needs a generator"):
        vm.make("weak", x)
