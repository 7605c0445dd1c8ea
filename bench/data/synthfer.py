"""synthfer: the embedded procedural FER dataset, written in the RAF-DB basic layout.

Faces are drawn with Pillow at 2x and downsampled (anti-aliasing). Expression geometry follows
facial action units (AUs); each class has a prototype AU vector, scaled by a per-image intensity
drawn from a broad range and jittered per AU, so weak expressions are ambiguous (weak Sad vs
Neutral; Fear and Surprise share AU1/2/5). Identity, pose, lighting, background, occluders and JPEG
quality vary much more than the expression cues, which are a few pixels at 100 px, so that labels
matter and semi-supervised methods have room to show.

Output (read by bench.data.rafdb.read_rafdb, so the demo goes through the real reader):

    <out_dir>/synthfer.json                                generator parameters + version
    <out_dir>/basic/EmoLabel/list_patition_label.txt       train_%05d.jpg L / test_%04d.jpg L, L in 1..7
    <out_dir>/basic/Image/aligned/<stem>_aligned.jpg       size x size RGB JPEG

Every image has its own RNG seeded from (seed, split, index), so the output is byte-identical
for the same arguments whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.data.labels import RAFDB_NATIVE_NAMES
from bench.errors import FERBenchError

VERSION = "synthfer-1"
SS = 2  # supersampling factor: draw at SS x size, then box-downsample
LABEL_FILE = "list_patition_label.txt"  # the official (misspelt) name
# RAF-DB train counts per native label 1..7 (docs/guides/datasets.md#raf-db): the class prior of both splits.
RAFDB_TRAIN_COUNTS: tuple[int, ...] = (1290, 281, 717, 4772, 1982, 705, 2524)
SPLIT_IDS = {"train": 0, "test": 1}

# Action units used by the renderer; each class prototype gives a nominal intensity in [0, 1].
AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 20, 23, 24, 25, 26)
AU_INDEX = {au: i for i, au in enumerate(AUS)}
# Keyed by RAF-DB native code. Optional AUs are drawn per image (see _draw_aus).
PROTOTYPES: dict[int, dict[int, float]] = {
    1: {1: 1.0, 2: 1.0, 5: 0.9, 25: 1.0, 26: 1.0},  # Surprise
    2: {1: 1.0, 2: 0.7, 4: 0.8, 5: 1.0, 20: 1.0, 25: 0.8},  # Fear
    3: {9: 1.0, 10: 1.0, 15: 0.6, 4: 0.4, 7: 0.4},  # Disgust
    4: {6: 1.0, 12: 1.0},  # Happy (+AU25 sometimes)
    5: {1: 1.0, 4: 0.8, 15: 1.0},  # Sad
    6: {4: 1.0, 23: 0.8, 24: 0.8},  # Anger (+AU5 or AU7)
    7: {},  # Neutral
}

DEFAULTS: dict[str, Any] = {
    "intensity_range": (0.4, 1.0),
    "au_jitter": 0.3,
    "spurious_au_prob": 0.1,
    "nuisance": 0.6,
    "occlusion_prob": 0.15,
    "blur_prob": 0.1,
    "label_noise": 0.0,
    "jpeg_quality": (30, 90),
    "face_scale": 0.36,  # face half-width / image side: tight crops, like RAF-DB aligned faces
}


# ----------------------------------------------------------------------------------------------
# Geometry helpers (face coordinates: centre of the face at 0, x right, y down, half-width ~1)
# ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


@lru_cache(maxsize=64)
def _unit_arc(n: int, power: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.linspace(-1.0, 1.0, n)
    return t, (t + 1.0) / 2.0, (1.0 - t * t) ** power


def _xy(x: np.ndarray | float, y: np.ndarray | float, n: int) -> np.ndarray:
    """An (n, 2) point array; cheaper than np.stack for the many small arrays drawn per image."""
    out = np.empty((n, 2))
    out[:, 0] = x
    out[:, 1] = y
    return out


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28, rot: float = 0.0) -> np.ndarray:
    cos_t, sin_t = _unit_circle(n)
    x, y = rx * cos_t, ry * sin_t
    if rot:
        c, s = math.cos(rot), math.sin(rot)
        x, y = c * x - s * y, s * x + c * y
    return _xy(cx + x, cy + y, n)


def _arc(x0: float, y0: float, x1: float, y1: float, ymid: float, *, n: int = 12, power: float = 1.0) -> np.ndarray:
    """Curve from (x0, y0) to (x1, y1) whose middle is displaced to `ymid` (parabola-like)."""
    _, frac, bump = _unit_arc(n, power)
    return _xy(x0 + (x1 - x0) * frac, y0 + (y1 - y0) * frac + (ymid - (y0 + y1) / 2.0) * bump, n)


@dataclass(frozen=True)
class _Pose:
    """Where the face lies on the canvas: centre (pixels), scale (pixels per face unit), roll (radians), yaw."""

    cx: float
    cy: float
    scale: float
    angle: float
    yaw: float


class _Painter:
    """Draws face-coordinate polygons and lines onto the supersampled canvas through a pose transform."""

    def __init__(self, img: Image.Image, pose: _Pose) -> None:
        self.draw = ImageDraw.Draw(img, "RGBA")  # RGBA mode blends translucent fills into the RGB canvas
        c, s = math.cos(pose.angle), math.sin(pose.angle)
        self.rot = np.array([[c, s], [-s, c]]) * pose.scale  # row-vector form: pts @ rot
        self.offset = np.array([pose.cx, pose.cy])
        self.scale = pose.scale
        self.yaw_shift = np.array([c, s]) * pose.scale * pose.yaw  # image-space shift per unit of feature depth

    def tf(self, pts: np.ndarray, depth: float = 0.0) -> list[float]:
        # Yaw as a horizontal shift proportional to depth: nearer features (nose) move more than the outline.
        return (pts @ self.rot + (self.offset + depth * self.yaw_shift)).ravel().tolist()

    def poly(self, pts: np.ndarray, fill: Sequence[int], depth: float = 0.0) -> None:
        self.draw.polygon(self.tf(pts, depth), fill=tuple(int(c) for c in fill))

    def line(self, pts: np.ndarray, fill: Sequence[int], width: float, depth: float = 0.0) -> None:
        w = max(1, round(width * self.scale))
        self.draw.line(self.tf(pts, depth), fill=tuple(int(c) for c in fill), width=w, joint="curve")


def _shade(color: Sequence[float], k: float, alpha: int | None = None) -> tuple[int, ...]:
    rgb = tuple(int(max(0, min(255, c * k))) for c in color[:3])
    return rgb if alpha is None else rgb + (int(alpha),)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[int, ...]:
    return tuple(int(a[i] * (1 - t) + b[i] * t) for i in range(3))


SKIN_LIGHT, SKIN_DARK = (246, 212, 186), (92, 58, 42)
HAIR_COLORS = ((20, 16, 14), (60, 40, 28), (110, 75, 45), (190, 150, 90), (150, 150, 150), (140, 60, 30),
               (35, 30, 30))
IRIS_COLORS = ((60, 40, 25), (90, 60, 35), (70, 100, 140), (80, 110, 70), (30, 25, 20))


# ----------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------

def _draw_aus(rng: np.random.Generator, native: int, p: dict[str, Any]) -> np.ndarray:
    """Per-image AU intensities: class prototype x intensity x jitter, plus a few spurious AUs."""
    aus = np.zeros(len(AUS))
    proto = dict(PROTOTYPES[native])
    if native == 4 and rng.random() < 0.5:  # open-mouth smile
        proto[25] = rng.uniform(0.4, 1.0)
    if native == 6:  # anger: glaring (AU5) or narrowed (AU7) eyes
        proto[5 if rng.random() < 0.5 else 7] = 0.8
    if native == 1 and rng.random() < 0.3:  # some surprise is brows-and-eyes only, mouth barely open
        proto[26] = 0.3
    lo, hi = p["intensity_range"]
    intensity = rng.uniform(lo, hi)
    jitter = p["au_jitter"]
    for au, v in proto.items():
        aus[AU_INDEX[au]] = v * intensity * (1.0 + jitter * rng.uniform(-1.0, 1.0))
    # Idiosyncratic activations, independent of class: neutral faces are not all-zero either.
    spurious = rng.random(len(AUS)) < p["spurious_au_prob"]
    aus += spurious * rng.uniform(0.0, 0.35, len(AUS))
    return np.clip(aus, 0.0, 1.2)


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-0.5, 0.5), as (yy, xx) float32 arrays."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    return yy, xx


def _background(rng: np.random.Generator, n: int, nuis: float) -> np.ndarray:
    """n x n x 3 float32 background: gradient, blotches, stripes or flat, plus texture noise."""
    c0 = rng.uniform(20, 235, 3).astype(np.float32)
    c1 = rng.uniform(20, 235, 3).astype(np.float32)
    kind = rng.integers(0, 4)
    yy, xx = _grid(n)
    if kind == 0:  # linear gradient
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(math.cos(a) * xx + math.sin(a) * yy + 0.5, 0, 1)[..., None]
        bg = c0 + (c1 - c0) * t
    elif kind == 1:  # low-frequency blotches
        k = int(rng.integers(3, 8))
        low = rng.uniform(20, 235, (k, k, 3)).astype(np.uint8)
        bg = np.asarray(Image.fromarray(low, "RGB").resize((n, n), Image.BILINEAR), dtype=np.float32)
    elif kind == 2:  # stripes
        a = rng.uniform(0, math.pi)
        f = rng.uniform(3, 14)
        t = (0.5 + 0.5 * np.sin((2 * math.pi * f) * (math.cos(a) * xx + math.sin(a) * yy)))[..., None]
        bg = c0 + (c1 - c0) * t
    else:  # flat
        bg = np.broadcast_to(c0, (n, n, 3))
    noise = rng.standard_normal((n, n, 1), dtype=np.float32) * np.float32(rng.uniform(0, 18) * nuis)
    return bg + noise


class _Draws:
    """An image's RNG and its nuisance draws, `center + half * nuisance * U(-1, 1)`."""

    def __init__(self, rng: np.random.Generator, nuisance: float) -> None:
        self.rng = rng
        self.nuis = nuisance

    def u(self, center: float, half: float) -> float:
        return center + half * self.nuis * self.rng.uniform(-1.0, 1.0)


@dataclass(frozen=True)
class _Face:
    """One face in face coordinates: its expression (AU intensity by AU number) and its identity."""

    au: dict[int, float]
    aspect: float  # half-height / half-width
    jaw: float  # how much the lower half narrows towards the chin
    skin: tuple[int, ...]
    hair: tuple[int, ...]
    hair_kind: int  # 0 short, 1 long, 2 bangs, 3 very short / bald
    hairline: float
    es: float  # eye half-spacing
    ew: float  # eye half-width
    eo: float  # eye opening
    iris: tuple[int, ...]
    bt: float  # brow thickness
    bh: float  # brow height offset
    brow_col: tuple[int, ...]
    mw: float  # mouth half-width
    lip_u: float  # upper lip thickness
    lip_l: float  # lower lip thickness
    my: float  # mouth height
    lip_col: tuple[int, ...]
    nose_len: float
    gaze: tuple[float, float]

    @property
    def chin(self) -> float:
        return self.aspect + 0.12 * self.au[26]  # the jaw drop (AU26) lowers the chin


def _draw_face(d: _Draws, native: int, p: dict[str, Any]) -> _Face:
    """The expression of class `native`, then the identity (the draws in this order)."""
    a = _draw_aus(d.rng, native, p)
    au = {k: float(a[i]) for k, i in AU_INDEX.items()}
    rng, u = d.rng, d.u
    aspect = u(1.3, 0.15)
    jaw = u(0.22, 0.15)
    skin = _mix(SKIN_LIGHT, SKIN_DARK, rng.uniform(0, 1) ** 1.3)
    hair = HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))]
    hair_kind = int(rng.integers(0, 4))
    hairline = u(-0.82, 0.1)
    es = u(0.39, 0.06)  # eye half-spacing
    ew = u(0.19, 0.035)  # eye half-width
    eo = u(0.085, 0.02)  # eye opening
    iris = IRIS_COLORS[int(rng.integers(len(IRIS_COLORS)))]
    bt = u(0.06, 0.025)  # brow thickness
    bh = u(0.0, 0.05)  # brow height offset
    brow_col = _mix(hair, (20, 15, 10), 0.4) if rng.random() < 0.8 else _shade(skin, 0.55)
    mw = u(0.31, 0.05)  # mouth half-width
    lip_u, lip_l = u(0.045, 0.015), u(0.06, 0.02)
    my = u(0.62, 0.05)  # mouth height
    lip_col = _mix(skin, (170, 60, 70), rng.uniform(0.2, 0.5))
    nose_len = u(0.3, 0.05)
    gaze = (u(0.0, 0.3), u(0.0, 0.15))
    return _Face(au, aspect, jaw, skin, hair, hair_kind, hairline, es, ew, eo, iris, bt, bh, brow_col, mw, lip_u,
                 lip_l, my, lip_col, nose_len, gaze)


def _draw_pose(d: _Draws, n: int, face_scale: float) -> _Pose:
    """Pose and framing on the n x n (supersampled) canvas."""
    scale = n * face_scale * math.exp(d.u(0.0, 0.12))
    angle = math.radians(d.u(0.0, 14.0))
    cx = n / 2 + d.u(0.0, 0.07) * n
    cy = n / 2 + d.u(0.03, 0.06) * n
    return _Pose(cx, cy, scale, angle, yaw=d.u(0.0, 0.22))


def _canvas(d: _Draws, size: int) -> Image.Image:
    """The supersampled canvas holding the background, drawn at 1x: its detail would not survive the final
    downsampling anyway."""
    bg = Image.fromarray(np.clip(_background(d.rng, size, d.nuis), 0, 255).astype(np.uint8), "RGB")
    return bg.resize((size * SS, size * SS), Image.NEAREST)  # exact: the box reduce at the end undoes it


def _outline(face: _Face) -> np.ndarray:
    """The face contour (48 points from angle 0); the lower half narrows towards the jaw."""
    cos_t, sy = _unit_circle(48)
    return _xy(cos_t * (1 - face.jaw * np.clip(sy, 0, 1) ** 2), np.where(sy > 0, face.chin, face.aspect) * sy, 48)


def _draw_head(pt: _Painter, rng: np.random.Generator, face: _Face, contour: np.ndarray) -> None:
    """Clothes/shoulders, neck, back hair and ears, then the face itself over them."""
    chin, skin, hair = face.chin, face.skin, face.hair
    cloth = rng.uniform(10, 240, 3)
    pt.poly(np.array([[-2.6, 3.2], [-2.2, chin + 0.7], [2.2, chin + 0.7], [2.6, 3.2]]), cloth)
    pt.poly(np.array([[-0.5, 0.5], [0.5, 0.5], [0.55, chin + 0.9], [-0.55, chin + 0.9]]), _shade(skin, 0.78))
    if face.hair_kind == 1:
        pt.poly(np.array([[-1.2, -0.6], [-1.25, chin + 0.3], [1.25, chin + 0.3], [1.2, -0.6]]), _shade(hair, 0.85))
    if face.hair_kind != 3:
        pt.poly(_ellipse(0.0, -0.5, 1.1, face.aspect * 0.75 + 0.1), hair)
    for side in (-1, 1):
        pt.poly(_ellipse(side * 0.98, -0.05, 0.13, 0.24), _shade(skin, 0.85))
    pt.poly(contour, skin)


def _draw_front_hair(pt: _Painter, rng: np.random.Generator, face: _Face, contour: np.ndarray) -> None:
    """The part of the face above the hairline; bangs come lower with a ragged edge."""
    if face.hair_kind not in (0, 1, 2):
        return
    _, sy = _unit_circle(48)
    top = contour[sy < 0]  # contour from left to right across the top of the head
    hl = face.hairline + (0.25 if face.hair_kind == 2 else 0.0)
    xs = np.linspace(1.0, -1.0, 9)
    edge = hl + 0.12 * xs ** 2 + (rng.uniform(-0.05, 0.05, 9) if face.hair_kind == 2 else 0)
    top = top[top[:, 1] < hl + 0.12 * top[:, 0] ** 2]
    if len(top) >= 2:
        pt.poly(np.concatenate([top, _xy(xs, edge, 9)]), face.hair)


def _draw_cheeks(pt: _Painter, face: _Face) -> None:
    """AU6 raises the cheeks: the rosy patch moves up and shows under the eye."""
    au6 = face.au[6]
    for side in (-1, 1):
        ch_y = 0.28 - 0.12 * au6
        pt.poly(_ellipse(side * (face.es + 0.05), ch_y, 0.2, 0.13), _mix(face.skin, (220, 110, 110), 0.15) + (
            int(50 + 90 * au6),), depth=0.3)


def _draw_wrinkles(pt: _Painter, face: _Face) -> None:
    """Forehead wrinkles (AU1/AU2) and glabella lines (AU4)."""
    au, skin = face.au, face.skin
    fw = max(0.0, au[1] + 0.6 * au[2] - 0.5)
    if fw > 0:
        for k in range(3):
            y = -0.72 + 0.09 * k
            pt.line(_arc(-0.35, y, 0.35, y, y - 0.04), _shade(skin, 0.7, int(min(200, 180 * fw))), 0.018, depth=0.25)
    if au[4] > 0.3:
        for side in (-1, 1):
            pt.line(np.array([[side * 0.06, -0.42], [side * 0.05, -0.3]]), _shade(skin, 0.65,
                    int(min(200, 200 * (au[4] - 0.2)))), 0.02, depth=0.3)


def _draw_brows(pt: _Painter, face: _Face) -> None:
    """AU1 raises the inner end, AU2 the outer end, AU4 lowers and draws them together; AU9 lowers."""
    au, es = face.au, face.es
    by = -0.45 - face.bh
    for side in (-1, 1):
        inner_x = side * (es - 0.17 - 0.06 * au[4])
        outer_x = side * (es + 0.23)
        inner_y = by - 0.16 * au[1] + 0.1 * au[4] + 0.05 * au[9]
        outer_y = by + 0.03 - 0.14 * au[2] + 0.03 * au[4]
        mid_y = (inner_y + outer_y) / 2 - 0.05 - 0.05 * au[2] + 0.02 * au[4]
        brow = _arc(inner_x, inner_y, outer_x, outer_y, mid_y, n=10, power=0.8)
        pt.line(brow, face.brow_col, face.bt, depth=0.25)


EYE_Y = -0.2  # height of the eyes' centre line


@dataclass(frozen=True)
class _Eye:
    """One eye: centre x, half-width, side (-1 left, 1 right), upper and lower lid openings."""

    ex: float
    w: float
    side: int
    up: float
    lo: float


def _draw_eyes(pt: _Painter, face: _Face, yaw: float) -> None:
    """AU5 raises the upper lid, AU7 tightens both lids, AU6 pushes the lower lid up; yaw widens the near eye."""
    au, eo = face.au, face.eo
    up = eo * max(0.15, 1.0 + 1.1 * au[5] - 0.55 * au[7] - 0.3 * au[6] - 0.15 * au[4] + 0.2 * au[1])
    lo = eo * max(0.1, 0.85 - 0.6 * au[6] - 0.5 * au[7] + 0.3 * au[5])
    for side in (-1, 1):
        _draw_eye(pt, face, _Eye(side * face.es, face.ew * (1.0 + 0.8 * yaw * side), side, up, lo))


def _draw_eye(pt: _Painter, face: _Face, eye: _Eye) -> None:
    """Sclera, iris, lids, the lid crease and, with AU6, crow's feet."""
    ex, w, side, ey = eye.ex, eye.w, eye.side, EYE_Y
    xs, _, prof = _unit_arc(13, 0.7)
    tilt = 0.03 * xs * side
    upper = _xy(ex + w * xs, ey - tilt - eye.up * prof, 13)
    lower = _xy(ex + w * xs, ey - tilt + eye.lo * prof, 13)
    pt.poly(np.concatenate([upper, lower[::-1]]), (238, 234, 228), depth=0.3)
    _draw_iris(pt, face, eye)
    pt.line(upper, (25, 20, 20), 0.03, depth=0.3)
    pt.line(lower, _shade(face.skin, 0.6), 0.012, depth=0.3)
    # Lid crease above the eye follows the upper lid.
    crease = _xy(ex + 0.8 * w * xs, ey - tilt - (eye.up + 0.05) * prof - 0.015, 13)
    pt.line(crease, _shade(face.skin, 0.7, 110), 0.012, depth=0.3)
    if face.au[6] > 0.35:  # crow's feet
        for k in (-1, 0, 1):
            o = np.array([[ex + side * (w + 0.03), ey + 0.04 * k], [ex + side * (w + 0.12), ey + 0.07 * k]])
            pt.line(o, _shade(face.skin, 0.7, int(min(200, 220 * (face.au[6] - 0.25)))), 0.012, depth=0.3)


def _draw_iris(pt: _Painter, face: _Face, eye: _Eye) -> None:
    """Iris and pupil clipped to the lids, so a widened eye shows sclera above the iris."""
    ex, w, side, ey = eye.ex, eye.w, eye.side, EYE_Y
    ir = 0.72 * face.eo + 0.02
    for radius, col in ((ir, face.iris), (ir * 0.45, (10, 8, 8))):
        c = _ellipse(ex + face.gaze[0] * w * 0.4, ey + face.gaze[1] * 0.03, radius, radius, n=16)
        cxs = np.clip((c[:, 0] - ex) / w, -1, 1)
        p2 = (1.0 - cxs ** 2) ** 0.7
        c[:, 1] = np.clip(c[:, 1], ey - 0.03 * cxs * side - eye.up * p2, ey - 0.03 * cxs * side + eye.lo * p2)
        pt.poly(c, col, depth=0.3)


def _nostrils(face: _Face) -> tuple[float, float]:
    """(height, half-spacing) of the nostrils: AU9 lifts and widens them, AU10 a little."""
    au = face.au
    ny = 0.1 + face.nose_len - 0.05 * au[9] - 0.03 * au[10]
    nw = 0.11 * (1.0 + 0.3 * au[9] + 0.15 * au[10])
    return ny, nw


def _draw_nose(pt: _Painter, face: _Face) -> None:
    """Bridge, tip and nostrils; AU9 wrinkles the bridge."""
    skin = face.skin
    ny, nw = _nostrils(face)
    pt.line(np.array([[-0.06, -0.15], [-0.08, ny - 0.12]]), _shade(skin, 0.7, 110), 0.015, depth=0.45)
    pt.line(_arc(-nw - 0.03, ny - 0.04, nw + 0.03, ny - 0.04, ny + 0.04, n=9), _shade(skin, 0.6, 170), 0.02, depth=0.5)
    for side in (-1, 1):
        pt.poly(_ellipse(side * nw * 0.6, ny, 0.04, 0.022, n=12), _shade(skin, 0.4), depth=0.5)
    if face.au[9] > 0.25:
        for k in range(3):
            y = -0.1 + 0.06 * k
            pt.line(_arc(-0.1, y, 0.1, y, y - 0.025, n=7), _shade(skin, 0.6, int(min(220, 220 * face.au[9]))),
                    0.016, depth=0.45)


@dataclass(frozen=True)
class _Mouth:
    """The mouth's shape: half-width, centre height, left and right corner heights, lip gaps, lip thinning."""

    half: float
    cy: float
    yl: float
    yr: float
    gap_up: float
    gap_dn: float
    thin: float


def _mouth(d: _Draws, face: _Face) -> _Mouth:
    """Corners: AU12 up and out, AU15 down, AU20 stretched, AU23/24 narrow and thin lips; AU25/26 open it."""
    au = face.au
    half = face.mw * (1.0 + 0.22 * au[12] + 0.3 * au[20] - 0.2 * au[23] - 0.12 * au[24] - 0.15 * au[26])
    cy = face.my + 0.05 * au[26]
    lift = -0.13 * au[12] + 0.12 * au[15] + 0.02 * au[20]
    asym = d.u(0.0, 0.02)
    gap_up = 0.01 + 0.03 * au[25] + 0.05 * au[26] + 0.07 * au[10]
    gap_dn = 0.01 + 0.04 * au[25] + 0.22 * au[26] + 0.03 * au[20]
    thin = max(0.25, 1.0 - 0.55 * au[24] - 0.35 * au[23])
    return _Mouth(half, cy, cy + lift + asym, cy + lift - asym, gap_up, gap_dn, thin)


def _draw_folds(pt: _Painter, face: _Face, m: _Mouth) -> None:
    """Nasolabial folds, from the nostrils to the mouth corners; AU6/AU10/AU12 deepen them."""
    au = face.au
    ny, nw = _nostrils(face)
    fold = 0.15 + 0.6 * au[6] + 0.6 * au[10] + 0.4 * au[12]
    for side in (-1, 1):
        c_y = m.yl if side < 0 else m.yr
        fl = np.array([[side * (nw + 0.06), ny - 0.02], [side * (m.half + 0.07), (ny + c_y) / 2],
                       [side * (m.half + 0.06), c_y + 0.06]])
        pt.line(fl, _shade(face.skin, 0.7, int(min(200, 140 * fold))), 0.015, depth=0.35)


def _draw_lips(pt: _Painter, face: _Face, m: _Mouth) -> None:
    """Lips; an open mouth shows its inside and the upper teeth, a closed one the line between the lips."""
    half, yl, yr = m.half, m.yl, m.yr
    ui = _arc(-half, yl, half, yr, m.cy - m.gap_up, n=15)
    li = _arc(-half, yl, half, yr, m.cy + m.gap_dn, n=15)
    uo = _arc(-half, yl, half, yr, m.cy - m.gap_up - face.lip_u * m.thin, n=15, power=0.7)
    uo[:, 1] += 0.015 * np.exp(-(((uo[:, 0]) / (0.12 * half + 1e-6)) ** 2))  # cupid's bow
    lo_ = _arc(-half, yl, half, yr, m.cy + m.gap_dn + face.lip_l * m.thin, n=15, power=0.7)
    pt.poly(np.concatenate([uo, lo_[::-1]]), face.lip_col, depth=0.35)
    if m.gap_up + m.gap_dn > 0.05:
        pt.poly(np.concatenate([ui, li[::-1]]), (60, 20, 25), depth=0.35)
        # Upper teeth: a band under the upper lip, never below the lower lip.
        bottom = np.minimum(ui[2:-2, 1] + 0.06, li[2:-2, 1])
        teeth = np.concatenate([ui[2:-2], _xy(ui[2:-2, 0], bottom, len(bottom))[::-1]])
        pt.poly(teeth, (232, 228, 215), depth=0.35)
    else:
        mid = (ui + li) / 2
        pt.line(mid, _shade(face.lip_col, 0.45), 0.022, depth=0.35)


def _draw_hand(pt: _Painter, rng: np.random.Generator, face: _Face) -> None:
    """Palm plus fingers, over the lower face or a cheek."""
    hx, hy = rng.uniform(-0.8, 0.8), rng.uniform(0.2, 1.1)
    rot = rng.uniform(-1.2, 1.2)
    hand = _shade(face.skin, rng.uniform(0.85, 1.1))
    pt.poly(_ellipse(hx, hy, 0.42, 0.3, rot=rot), hand)
    for k in range(4):
        fx = hx + math.cos(rot) * (-0.27 + 0.18 * k) - math.sin(rot) * -0.45
        fy = hy + math.sin(rot) * (-0.27 + 0.18 * k) + math.cos(rot) * -0.45
        pt.poly(_ellipse(fx, fy, 0.07, 0.22, n=14, rot=rot), hand)


def _draw_glasses(pt: _Painter, rng: np.random.Generator, face: _Face) -> None:
    """Glasses; a third are sunglasses that hide the eyes."""
    es, ew, ey = face.es, face.ew, EYE_Y
    sun = rng.random() < 0.33
    frame = tuple(int(v) for v in rng.uniform(0, 120, 3))
    for side in (-1, 1):
        lens = _ellipse(side * es, ey, ew + 0.06, 0.14, n=20)
        if sun:
            pt.poly(lens, (15, 15, 20, 235), depth=0.3)
        pt.line(np.concatenate([lens, lens[:1]]), frame, 0.025, depth=0.3)
    pt.line(np.array([[-es + ew + 0.06, ey], [es - ew - 0.06, ey]]), frame, 0.025, depth=0.3)


def _draw_mask(pt: _Painter, rng: np.random.Generator, face: _Face) -> None:
    """A mask over nose and mouth."""
    col = (230, 235, 240) if rng.random() < 0.5 else tuple(int(v) for v in rng.uniform(20, 200, 3))
    top = rng.uniform(0.1, 0.35)
    chin = face.chin
    pt.poly(np.array([[-0.95, top], [0.95, top], [0.8, chin + 0.05], [-0.8, chin + 0.05]]), col, depth=0.2)


def _draw_bar(pt: _Painter, rng: np.random.Generator, face: _Face) -> None:
    """An object bar over a random part (of the canvas, whatever the face)."""
    x0, y0 = rng.uniform(-1.3, 0.6), rng.uniform(-1.0, 0.9)
    col = tuple(int(v) for v in rng.uniform(0, 255, 3))
    pt.poly(np.array([[x0, y0], [x0 + rng.uniform(0.4, 1.2), y0], [x0 + 0.6, y0 + 0.5], [x0, y0 + 0.45]]), col)


#: occluder kinds and how often each is drawn
_OCCLUDERS = (_draw_hand, _draw_glasses, _draw_mask, _draw_bar)
_OCCLUDER_ODDS = [0.35, 0.3, 0.15, 0.2]


def _draw_occluder(pt: _Painter, rng: np.random.Generator, face: _Face, prob: float) -> None:
    if rng.random() < prob:
        kind = int(rng.choice(len(_OCCLUDERS), p=_OCCLUDER_ODDS))
        _OCCLUDERS[kind](pt, rng, face)


def _downsample(rng: np.random.Generator, img: Image.Image, size: int, blur_prob: float) -> Image.Image:
    """Box-downsample the canvas to size x size (anti-aliasing), then, sometimes, blur it."""
    small = img.reduce(SS)
    if rng.random() < blur_prob:
        k = int(size * rng.uniform(0.45, 0.8))
        small = small.resize((k, k), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    return small


def _develop(d: _Draws, small: Image.Image) -> Image.Image:
    """Camera and light: contrast, a directional light, a colour cast, sensor noise; some photos grey."""
    rng, nuis, u = d.rng, d.nuis, d.u
    size = small.size[0]
    arr = np.asarray(small, dtype=np.float32)
    yy, xx = _grid(size)
    phi = rng.uniform(0, 2 * math.pi)
    contrast = math.exp(u(0.0, 0.35))
    bright = math.exp(u(0.0, 0.3))
    grad = (2 * rng.uniform(0, 0.7) * nuis * bright) * (math.cos(phi) * xx + math.sin(phi) * yy) + bright
    cast = (1.0 + rng.uniform(-0.08, 0.08, 3) * nuis).astype(np.float32)
    mean = float(arr.mean())
    noise = rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(0, 7) * nuis)
    # Contrast about the mean, directional light, colour cast, then sensor noise, in few array passes.
    arr *= (contrast * grad)[..., None] * cast
    arr += ((mean * (1.0 - contrast)) * grad + noise)[..., None] * cast
    if rng.random() < 0.1 * nuis:  # some grey-scale photos, as in RAF-DB
        arr[:] = arr.mean(axis=2, keepdims=True)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _render(rng: np.random.Generator, native: int, size: int, p: dict[str, Any]) -> Image.Image:
    """One image of class `native`, size x size. Every draw from `rng` happens in this order: changing the order
    changes every image."""
    d = _Draws(rng, float(p["nuisance"]))
    face = _draw_face(d, native, p)
    pose = _draw_pose(d, size * SS, p["face_scale"])
    img = _canvas(d, size)
    pt = _Painter(img, pose)
    contour = _outline(face)
    _draw_head(pt, rng, face, contour)
    _draw_front_hair(pt, rng, face, contour)
    _draw_cheeks(pt, face)
    _draw_wrinkles(pt, face)
    _draw_brows(pt, face)
    _draw_eyes(pt, face, pose.yaw)
    _draw_nose(pt, face)
    mouth = _mouth(d, face)
    _draw_folds(pt, face, mouth)
    _draw_lips(pt, face, mouth)
    _draw_occluder(pt, rng, face, p["occlusion_prob"])
    return _develop(d, _downsample(rng, img, size, p["blur_prob"]))


def render_image(seed: int, split: str, index: int, native: int, size: int = 100, **knobs: Any) -> Image.Image:
    """The image for (seed, split, index) drawn as RAF-DB class `native` (1..7)."""
    p = {**DEFAULTS, **knobs}
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    return _render(rng, native, size, p)


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------

def class_counts(n: int, weights: Sequence[float] = RAFDB_TRAIN_COUNTS) -> list[int]:
    """Per-class counts summing to n: a floor of min(3, n // k) each, the rest by largest remainder."""
    k = len(weights)
    floor = min(3, n // k)
    rest = n - floor * k
    total = float(sum(weights))
    quotas = [rest * w / total for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(k), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: rest - sum(counts)]:
        counts[i] += 1
    return [c + floor for c in counts]


def _split_labels(seed: int, split: str, n: int, label_noise: float) -> tuple[list[int], list[int]]:
    """(drawn class, written label) per image, RAF-DB native codes; deterministic in (seed, split)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], 1 << 30])
    drawn = np.repeat(np.arange(1, 8), class_counts(n))
    rng.shuffle(drawn)
    written = drawn.copy()
    if split == "train" and label_noise > 0:
        flip = rng.random(n) < label_noise
        other = rng.integers(1, 7, n)  # 1..6, shifted past the true class
        written = np.where(flip, np.where(other >= drawn, other + 1, other), drawn)
    return drawn.tolist(), written.tolist()


def _stem(split: str, index: int) -> str:
    return f"train_{index:05d}" if split == "train" else f"test_{index:04d}"


def _render_chunk(args: tuple[str, int, str, list[tuple[int, int]], int, dict[str, Any]]) -> int:
    out, seed, split, items, size, p = args
    for index, native in items:
        rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
        img = _render(rng, native, size, p)
        quality = int(rng.integers(p["jpeg_quality"][0], p["jpeg_quality"][1] + 1))
        img.save(os.path.join(out, f"{_stem(split, index)}_aligned.jpg"), "JPEG", quality=quality)
    return len(items)


def _check_params(n_train: int, n_test: int, seed: int, size: int, workers: int, p: dict[str, Any]) -> None:
    unknown = sorted(set(p) - set(DEFAULTS))
    if unknown:
        raise FERBenchError(f"synthfer: unknown parameter(s) {', '.join(unknown)}; expected one of "
                            f"{', '.join(DEFAULTS)}")
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 7:
            raise FERBenchError(f"synthfer: {name}={value!r}; expected an integer >= 7 (every class present)")
    if not isinstance(seed, int) or seed < 0:
        raise FERBenchError(f"synthfer: seed={seed!r}; expected a non-negative integer")
    if not isinstance(size, int) or size < 32:
        raise FERBenchError(f"synthfer: size={size!r}; expected an integer >= 32")
    if not isinstance(workers, int) or workers < 1:
        raise FERBenchError(f"synthfer: workers={workers!r}; expected an integer >= 1")
    lo, hi = p["intensity_range"]
    if not 0.0 <= lo <= hi:
        raise FERBenchError(f"synthfer: intensity_range={p['intensity_range']!r}; expected 0 <= low <= high")
    q0, q1 = p["jpeg_quality"]
    if not 1 <= q0 <= q1 <= 100:
        raise FERBenchError(f"synthfer: jpeg_quality={p['jpeg_quality']!r}; expected 1 <= low <= high <= 100")
    for name in ("occlusion_prob", "blur_prob", "label_noise", "spurious_au_prob"):
        if not 0.0 <= p[name] <= 1.0:
            raise FERBenchError(f"synthfer: {name}={p[name]!r}; expected a probability in [0, 1]")
    for name in ("nuisance", "au_jitter"):
        if p[name] < 0:
            raise FERBenchError(f"synthfer: {name}={p[name]!r}; expected a value >= 0")


def _params(n_train: int, n_test: int, seed: int, size: int, knobs: dict[str, Any]) -> dict[str, Any]:
    """The parameters that determine the output (JSON-normalised), as written to synthfer.json."""
    p = {**DEFAULTS, **knobs}
    p["intensity_range"] = [float(v) for v in p["intensity_range"]]
    p["jpeg_quality"] = [int(v) for v in p["jpeg_quality"]]
    p = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in p.items()}
    return {"version": VERSION, "n_train": n_train, "n_test": n_test, "seed": seed, "size": size, **p}


@dataclass(frozen=True)
class _Output:
    """What a synthfer output is a function of: split sizes, seed, image side and the difficulty knobs."""

    n_train: int
    n_test: int
    seed: int
    size: int
    knobs: dict[str, Any]

    def splits(self) -> tuple[tuple[str, int], ...]:
        return (("train", self.n_train), ("test", self.n_test))


CHUNK = 100  # images per rendering task


def generate_synthfer(out_dir: str | Path, n_train: int = 6000, n_test: int = 1500, seed: int = 0, size: int = 100,
                      *, workers: int = 1, progress: bool = False,
                      intensity_range: tuple[float, float] = DEFAULTS["intensity_range"],
                      au_jitter: float = DEFAULTS["au_jitter"],
                      spurious_au_prob: float = DEFAULTS["spurious_au_prob"],
                      nuisance: float = DEFAULTS["nuisance"],
                      occlusion_prob: float = DEFAULTS["occlusion_prob"],
                      blur_prob: float = DEFAULTS["blur_prob"],
                      label_noise: float = DEFAULTS["label_noise"],
                      jpeg_quality: tuple[int, int] = DEFAULTS["jpeg_quality"],
                      face_scale: float = DEFAULTS["face_scale"]) -> Path:
    """Write synthfer in the RAF-DB basic layout under `out_dir` and return `out_dir/basic`.

    Difficulty knobs: `intensity_range` (expression intensity, uniform), `au_jitter` (relative
    per-AU noise), `spurious_au_prob` (class-independent AU activations), `nuisance` (scale of
    identity/pose/lighting/background variation), `occlusion_prob`, `blur_prob`, `label_noise`
    (probability that a *training* label is replaced by another class), `jpeg_quality` (range),
    `face_scale` (face half-width as a fraction of the image side: framing and size of the cues).
    The output is written to a temporary folder and moved into place at the end.
    """
    knobs = {"intensity_range": tuple(intensity_range), "au_jitter": au_jitter, "spurious_au_prob": spurious_au_prob,
             "nuisance": nuisance, "occlusion_prob": occlusion_prob, "blur_prob": blur_prob,
             "label_noise": label_noise, "jpeg_quality": tuple(jpeg_quality), "face_scale": face_scale}
    _check_params(n_train, n_test, seed, size, workers, knobs)
    output = _Output(n_train, n_test, seed, size, knobs)
    out_dir = Path(out_dir)
    final, meta_path = out_dir / "basic", out_dir / "synthfer.json"
    if final.exists() and not meta_path.is_file():
        raise FERBenchError(f"synthfer: {final} exists and is not a synthfer output (no {meta_path}); expected an "
                            "empty or new output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthfer-tmp-", dir=out_dir))
    try:
        _write_basic(tmp / "basic", output, workers, progress)
        _move_into_place(tmp, final, meta_path, _metadata(output))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_basic(basic: Path, output: _Output, workers: int, progress: bool) -> None:
    """The images and the label file, in the RAF-DB basic layout under `basic`."""
    image_dir = basic / "Image" / "aligned"
    image_dir.mkdir(parents=True)
    (basic / "EmoLabel").mkdir()
    lines: list[str] = []
    tasks = []
    for split, n in output.splits():
        drawn, written = _split_labels(output.seed, split, n, output.knobs["label_noise"])
        lines += [f"{_stem(split, i)}.jpg {lab}" for i, lab in enumerate(written, start=1)]
        items = list(enumerate(drawn, start=1))
        tasks += [(str(image_dir), output.seed, split, items[j:j + CHUNK], output.size, output.knobs)
                  for j in range(0, n, CHUNK)]
    _run_tasks(tasks, workers, progress, output.n_train + output.n_test)
    (basic / "EmoLabel" / LABEL_FILE).write_text("\n".join(lines) + "\n")


def _metadata(output: _Output) -> dict[str, Any]:
    """synthfer.json: the output-determining parameters and the drawn class counts (before label noise)."""
    meta = _params(output.n_train, output.n_test, output.seed, output.size, output.knobs)
    meta["class_counts"] = {split: dict(zip(RAFDB_NATIVE_NAMES.values(), class_counts(n)))
                            for split, n in output.splits()}
    return meta


def _move_into_place(tmp: Path, final: Path, meta_path: Path, meta: dict[str, Any]) -> None:
    """Swap `tmp/basic` in as `final`; the metadata file goes last and marks a complete dataset."""
    if meta_path.exists():
        meta_path.unlink()
    if final.exists():
        shutil.rmtree(final)
    (tmp / "basic").rename(final)
    (tmp / "synthfer.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / "synthfer.json").rename(meta_path)


def _run_tasks(tasks: list[tuple], workers: int, progress: bool, total: int) -> None:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synthfer", unit="img")
    try:
        if workers == 1:
            done: Iterable[int] = map(_render_chunk, tasks)
            for k in done:
                if bar is not None:
                    bar.update(k)
        else:
            # forkserver, not fork: a caller that already runs threads (torch, a submitit job) can leave a
            # forked pool deadlocked on a lock copied mid-use; seen under SLURM.
            with multiprocessing.get_context("forkserver").Pool(workers) as pool:
                for k in pool.imap_unordered(_render_chunk, tasks):
                    if bar is not None:
                        bar.update(k)
    finally:
        if bar is not None:
            bar.close()


def synthfer_hash(n_train: int = 6000, n_test: int = 1500, seed: int = 0, size: int = 100, **knobs: Any) -> str:
    """Short hash of the output-determining parameters (not workers/progress)."""
    blob = json.dumps(_params(n_train, n_test, seed, size, knobs), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolved_params(n_train: int = 6000, n_test: int = 1500, seed: int = 0, size: int = 100,
                    **knobs: Any) -> dict[str, Any]:
    """Every output-determining parameter, defaults and generator version included (for run ids)."""
    unknown = sorted(set(knobs) - set(DEFAULTS))
    if unknown:
        raise FERBenchError(f"synthfer: unknown parameter(s) {', '.join(unknown)}")
    return _params(n_train, n_test, seed, size, knobs)


def ensure_synthfer(cache_dir: Path, **params: Any) -> Path:
    """`cache_dir/synthfer-<hash>/basic`, generating it first unless a complete copy is already there."""
    gen = {k: v for k, v in params.items() if k not in ("workers", "progress")}
    unknown = sorted(set(gen) - {"n_train", "n_test", "seed", "size"} - set(DEFAULTS))
    if unknown:
        raise FERBenchError(f"synthfer: unknown parameter(s) {', '.join(unknown)}")
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"synthfer-{synthfer_hash(**gen)}"
    if (folder / "synthfer.json").is_file() and (folder / "basic").is_dir():
        return folder / "basic"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build a whole sibling folder and rename it: a concurrent or interrupted run never leaves a half folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=cache_dir))
    try:
        generate_synthfer(tmp, **params)
        if not (folder / "synthfer.json").is_file():  # else another process finished first: use its copy
            if folder.exists():
                shutil.rmtree(folder)  # an incomplete leftover, e.g. its synthfer.json was deleted
            try:
                tmp.rename(folder)
            except OSError:
                if not (folder / "synthfer.json").is_file():  # lost a race only if the winner is complete
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "basic"


# ----------------------------------------------------------------------------------------------
# Contact sheet
# ----------------------------------------------------------------------------------------------

def contact_sheet(basic: Path, path: Path, per_class: int = 7) -> Path:
    """A PNG grid of `per_class` images per class (one labelled row per RAF-DB class, train split first)."""
    from bench.data.rafdb import read_rafdb

    records = sorted(read_rafdb(basic), key=lambda r: (r.split != "train", r.id))
    rows = []
    for code in range(1, 8):
        rows.append((RAFDB_NATIVE_NAMES[code], [r for r in records if r.native_label == code][:per_class]))
    first = next(r for _, rs in rows for r in rs)
    with Image.open(first.path) as im:
        cell = im.size[0]
    label_w, pad = 80, 2
    sheet = Image.new("RGB", (label_w + per_class * (cell + pad), 7 * (cell + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, (name, recs) in enumerate(rows):
        y = r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), name, fill=(0, 0, 0), font=font)
        for c, rec in enumerate(recs):
            with Image.open(rec.path) as im:
                sheet.paste(im.convert("RGB").resize((cell, cell)), (label_w + c * (cell + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
