"""Deterministic synthetic TACO-like COCO data set: the workbook's embedded default.

``make_synthetic_coco`` writes a small COCO data set laid out like TACO
(``annotations.json`` next to an ``images/`` folder) whose objects carry real TACO
category names and ids, so it flows through the same TACO -> six-class mapping as
the real data.  Every photo is a procedurally drawn patch of ground (grass, asphalt,
sand, soil, pavement or gravel with clutter and uneven light) with 2 to 6 litter
objects from the six target classes (Metal, Paper, Paperpack, Plastic, Plasticbag,
Styrofoam) plus a few excluded distractors (cigarettes, glass bottles).  The classes
differ in shape, colour, texture and transparency, but colours overlap across
classes and objects are rotated, scaled, blurred, occluded and jittered, so the task
is learnable without being trivial.

Only numpy and Pillow are used; the output is byte-identical for identical arguments.
"""

from __future__ import annotations

import io
import json
import operator
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trashlib.files import atomic_write_bytes

# Bump when the drawing code changes, so that old cached data sets are regenerated.
GENERATOR_VERSION = 1
ANNOTATIONS_NAME = "annotations.json"
IMAGES_DIR = "images"
JPEG_QUALITY = 90
MIN_IMAGE_SIDE = 32

# TACO's 60 categories as (name, supercategory); the list index is the TACO id.
TACO_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("Aluminium foil", "Aluminium foil"),
    ("Battery", "Battery"),
    ("Aluminium blister pack", "Blister pack"),
    ("Carded blister pack", "Blister pack"),
    ("Other plastic bottle", "Bottle"),
    ("Clear plastic bottle", "Bottle"),
    ("Glass bottle", "Bottle"),
    ("Plastic bottle cap", "Bottle cap"),
    ("Metal bottle cap", "Bottle cap"),
    ("Broken glass", "Broken glass"),
    ("Food Can", "Can"),
    ("Aerosol", "Can"),
    ("Drink can", "Can"),
    ("Toilet tube", "Carton"),
    ("Other carton", "Carton"),
    ("Egg carton", "Carton"),
    ("Drink carton", "Carton"),
    ("Corrugated carton", "Carton"),
    ("Meal carton", "Carton"),
    ("Pizza box", "Carton"),
    ("Paper cup", "Cup"),
    ("Disposable plastic cup", "Cup"),
    ("Foam cup", "Cup"),
    ("Glass cup", "Cup"),
    ("Other plastic cup", "Cup"),
    ("Food waste", "Food waste"),
    ("Glass jar", "Glass jar"),
    ("Plastic lid", "Lid"),
    ("Metal lid", "Lid"),
    ("Other plastic", "Other plastic"),
    ("Magazine paper", "Paper"),
    ("Tissues", "Paper"),
    ("Wrapping paper", "Paper"),
    ("Normal paper", "Paper"),
    ("Paper bag", "Paper bag"),
    ("Plastified paper bag", "Paper bag"),
    ("Plastic film", "Plastic bag & wrapper"),
    ("Six pack rings", "Plastic bag & wrapper"),
    ("Garbage bag", "Plastic bag & wrapper"),
    ("Other plastic wrapper", "Plastic bag & wrapper"),
    ("Single-use carrier bag", "Plastic bag & wrapper"),
    ("Polypropylene bag", "Plastic bag & wrapper"),
    ("Crisp packet", "Plastic bag & wrapper"),
    ("Spread tub", "Plastic container"),
    ("Tupperware", "Plastic container"),
    ("Disposable food container", "Plastic container"),
    ("Foam food container", "Plastic container"),
    ("Other plastic container", "Plastic container"),
    ("Plastic glooves", "Plastic glooves"),
    ("Plastic utensils", "Plastic utensils"),
    ("Pop tab", "Pop tab"),
    ("Rope & strings", "Rope & strings"),
    ("Scrap metal", "Scrap metal"),
    ("Shoe", "Shoe"),
    ("Squeezable tube", "Squeezable tube"),
    ("Plastic straw", "Straw"),
    ("Paper straw", "Straw"),
    ("Styrofoam piece", "Styrofoam piece"),
    ("Unlabeled litter", "Unlabeled litter"),
    ("Cigarette", "Cigarette"),
)

# Which TACO ids are drawn for each target class, with their within-class weights.
CLASS_SOURCES: dict[str, tuple[tuple[int, float], ...]] = {
    "Metal": ((12, 0.55), (10, 0.25), (0, 0.20)),
    "Paper": ((33, 0.45), (30, 0.30), (34, 0.25)),
    "Paperpack": ((16, 1.0),),
    "Plastic": ((5, 0.45), (4, 0.25), (21, 0.30)),
    "Plasticbag": ((36, 0.45), (40, 0.35), (38, 0.20)),
    "Styrofoam": ((57, 0.45), (22, 0.25), (46, 0.30)),
}
# Target-class frequencies, imbalanced like TACO (Paperpack and Styrofoam rare).
CLASS_WEIGHTS: dict[str, float] = {
    "Metal": 0.17,
    "Paper": 0.16,
    "Paperpack": 0.10,
    "Plastic": 0.24,
    "Plasticbag": 0.23,
    "Styrofoam": 0.10,
}
# Excluded categories drawn as distractors (Cigarette, Glass bottle).
DISTRACTOR_IDS: tuple[int, ...] = (59, 6)
DISTRACTOR_RATE = 0.05

ALPHA_EPS = 0.05  # alpha above which a pixel belongs to an object's extent
PLACEMENT_TRIES = 10
MAX_IOU = 0.3  # reject placements that overlap an earlier box more than this
MIN_IN_FRAME = 0.6  # at least this share of an object's pixels must lie in the frame

# (premultiplied RGB float32 HxWx3 in 0..255, alpha float32 HxW in 0..1)
Layer = tuple[np.ndarray, np.ndarray]
Rgb = tuple[float, float, float]

# Palettes shared between classes on purpose: colour alone must not give the class away.
PRINT_COLOURS: tuple[Rgb, ...] = (
    (200, 30, 35),
    (30, 70, 170),
    (30, 130, 60),
    (230, 190, 40),
    (235, 120, 30),
    (240, 240, 235),
    (25, 25, 30),
    (120, 40, 140),
    (90, 180, 220),
    (200, 200, 205),
)
BAG_COLOURS: tuple[Rgb, ...] = (
    (235, 235, 230),
    (240, 240, 240),
    (40, 90, 180),
    (200, 40, 40),
    (235, 210, 60),
    (40, 40, 45),
    (60, 150, 80),
    (225, 225, 235),
)
CAP_COLOURS: tuple[Rgb, ...] = (
    (30, 80, 200),
    (230, 230, 230),
    (210, 40, 40),
    (40, 160, 70),
    (240, 140, 30),
    (20, 20, 20),
)
# Class-typical body colours; each overlaps the others' palettes in a colour or two.
CAN_COLOURS: tuple[Rgb, ...] = (
    (200, 30, 35),
    (30, 70, 170),
    (25, 25, 30),
    (200, 165, 60),
    (30, 130, 60),
    (195, 195, 200),
)
CARTON_COLOURS: tuple[Rgb, ...] = (
    (240, 240, 235),
    (235, 120, 30),
    (230, 190, 40),
    (90, 180, 220),
    (30, 130, 60),
    (200, 30, 35),
)
BOTTLE_COLOURS: tuple[Rgb, ...] = (
    (240, 240, 240),
    (150, 200, 230),
    (230, 200, 60),
    (230, 160, 190),
    (60, 150, 80),
    (40, 90, 180),
)


# --------------------------------------------------------------------------- helpers


def _pick(rng: np.random.Generator, options: tuple[Rgb, ...]) -> np.ndarray:
    """One palette colour with a small random shift, as a float32 RGB vector."""
    base = np.asarray(options[int(rng.integers(len(options)))], dtype=np.float32)
    return np.clip(base + rng.normal(0.0, 10.0, 3), 0, 255).astype(np.float32)


def _dim(value: float) -> int:
    """A drawing dimension in pixels, never smaller than 4."""
    return max(4, int(round(value)))


def _canvas(w: int, h: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """An empty 8-bit mask and a drawer for it (draw with fill=255)."""
    img = Image.new("L", (w, h), 0)
    return img, ImageDraw.Draw(img)


def _arr(img: Image.Image) -> np.ndarray:
    """A mask image as float32 in 0..1."""
    return np.asarray(img, dtype=np.float32) / 255.0


def _blank(w: int, h: int) -> Layer:
    """An empty, fully transparent w x h layer."""
    return np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32)


def _over(layer: Layer, colour: np.ndarray, cover: np.ndarray) -> None:
    """Paint ``colour`` (RGB vector or HxWx3 array) with opacity ``cover`` (HxW) over ``layer``."""
    prgb, alpha = layer
    c = cover[..., None]
    prgb *= 1.0 - c
    prgb += colour * c
    alpha *= 1.0 - cover
    alpha += cover


def _stack(dst: Layer, src: Layer, cover: np.ndarray | float) -> None:
    """Composite the layer ``src`` over ``dst`` with extra opacity ``cover`` (HxW or scalar)."""
    prgb, alpha = dst
    a = src[1] * cover
    prgb *= (1.0 - a)[..., None]
    prgb += src[0] * np.asarray(cover, np.float32)[..., None]
    alpha *= 1.0 - a
    alpha += a


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth value noise, roughly N(0, 1), correlated over about ``cell`` pixels."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32))
    up = grid.resize((gw * cell, gh * cell), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)[:h, :w]


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """The inner rim of a mask, ``width`` pixels wide."""
    img = Image.fromarray((mask * 255).astype(np.uint8))
    inner = _arr(img.filter(ImageFilter.MinFilter(2 * width + 1)))
    return np.clip(mask - inner, 0.0, 1.0)


def _cylinder(rng: np.random.Generator, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Across-width diffuse shading and a specular stripe for a cylinder seen side-on."""
    t = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    lit = np.clip(t - rng.uniform(-0.4, 0.4), -1.0, 1.0)
    diffuse = 0.45 + 0.55 * np.sqrt(1.0 - lit**2)
    spec = np.exp(-(((t - rng.uniform(-0.6, 0.6)) / rng.uniform(0.06, 0.16)) ** 2))
    return diffuse.astype(np.float32), spec.astype(np.float32)


def _blob_points(rng: np.random.Generator, w: int, h: int, n: int, roughness: float) -> list[tuple[float, float]]:
    """A random star-shaped polygon filling a w x h box (crumpled sheets, bags, foam)."""
    angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n)
    radii = 1.0 - roughness * rng.random(n)
    xs = (w - 1) / 2 * (1 + radii * np.cos(angles))
    ys = (h - 1) / 2 * (1 + radii * np.sin(angles))
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _random_lines(
    rng: np.random.Generator, w: int, h: int, count: int, segments: int, step: float
) -> list[list[tuple[float, float]]]:
    """Short random polylines (wrinkles, creases, dents) inside a w x h box."""
    lines = []
    for _ in range(count):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * np.pi)
        points = [(x, y)]
        for _ in range(segments):
            angle += rng.normal(0.0, 0.6)
            x += step * np.cos(angle)
            y += step * np.sin(angle)
            points.append((x, y))
        lines.append(points)
    return lines


def _lines_mask(w: int, h: int, lines: list[list[tuple[float, float]]], width: int) -> np.ndarray:
    """A mask of the given polylines drawn ``width`` pixels wide."""
    img, d = _canvas(w, h)
    for points in lines:
        d.line(points, fill=255, width=width)
    return _arr(img)


def _print_bands(rng: np.random.Generator, w: int, h: int, y0: float, y1: float) -> Layer:
    """Printed-packaging decoration: colour bands and a round logo between rows y0 and y1."""
    deco = _blank(w, h)
    for _ in range(int(rng.integers(1, 4))):
        top = rng.uniform(y0, y1)
        bottom = min(y1, top + rng.uniform(0.06, 0.25) * h)
        img, d = _canvas(w, h)
        d.rectangle((0, top, w - 1, bottom), fill=255)
        _over(deco, _pick(rng, PRINT_COLOURS), _arr(img))
    if rng.random() < 0.6:
        r = rng.uniform(0.15, 0.3) * w
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(y0, y1)
        img, d = _canvas(w, h)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        _over(deco, _pick(rng, PRINT_COLOURS), _arr(img))
    return deco


def _soft(mask: np.ndarray, radius: float) -> np.ndarray:
    """A Gaussian-blurred copy of a mask."""
    img = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return _arr(img)


def _text_lines(rng: np.random.Generator, w: int, h: int, margin: float) -> np.ndarray:
    """A mask of ragged horizontal 'text' lines."""
    img, d = _canvas(w, h)
    spacing = rng.uniform(3.5, 7.0)
    y = margin + rng.uniform(0, spacing)
    while y < h - margin:
        if rng.random() < 0.85:
            x1 = margin + (w - 2 * margin) * rng.uniform(0.4, 1.0)
            d.line((margin, y, x1, y), fill=255, width=1)
        y += spacing
    return _arr(img)


def _foam_texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Expanded-polystyrene colour: near-white with bead bumps and dark pits."""
    base = np.float32(rng.uniform(236, 253))
    tint = np.array([1.0, 1.0, 1.0], np.float32)
    if rng.random() < 0.2:  # weathered, dirty foam
        tint = np.array([0.9, 0.86, 0.78], np.float32)
    beads = Image.fromarray(rng.standard_normal((h // 3 + 1, w // 3 + 1)).astype(np.float32))
    bumps = np.asarray(beads.resize((w, h), Image.Resampling.BILINEAR), np.float32)
    pits = (rng.random((h, w)) < 0.03).astype(np.float32)
    value = base + 9.0 * bumps - 55.0 * pits
    return np.clip(value[..., None] * tint, 0, 255)


def _bottle_mask(
    w: int, h: int, neck_w: float, cap_h: float, neck_h: float, shoulder_h: float
) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette (without cap) and cap mask of an upright bottle."""
    cx = (w - 1) / 2
    img, d = _canvas(w, h)
    d.rectangle((cx - neck_w / 2, cap_h, cx + neck_w / 2, cap_h + neck_h), fill=255)
    d.polygon(
        [
            (cx - neck_w / 2, cap_h + neck_h),
            (cx + neck_w / 2, cap_h + neck_h),
            (w - 1, cap_h + neck_h + shoulder_h),
            (0, cap_h + neck_h + shoulder_h),
        ],
        fill=255,
    )
    body_top = cap_h + neck_h + shoulder_h - 1
    d.rounded_rectangle((0, body_top, w - 1, h - 1), radius=w * 0.15, fill=255)
    body = _arr(img)
    img, d = _canvas(w, h)
    d.rectangle((cx - neck_w * 0.6, 0, cx + neck_w * 0.6, cap_h), fill=255)
    return body, _arr(img)


def _cup_masks(rng: np.random.Generator, size: int) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Width, height, body, rim and opening masks of a cup seen from the side, slightly above."""
    h, w = size, _dim(size * rng.uniform(0.6, 0.85))
    bottom = w * rng.uniform(0.55, 0.75)
    e = max(2.0, w * rng.uniform(0.1, 0.2))  # half-height of the rim ellipse
    cx = (w - 1) / 2
    crush = rng.normal(0.0, 0.06 * w, 4) if rng.random() < 0.3 else np.zeros(4)
    img, d = _canvas(w, h)
    d.polygon(
        [
            (0 + crush[0], e),
            (w - 1 + crush[1], e),
            (cx + bottom / 2 + crush[2], h - 1 - e / 2),
            (cx - bottom / 2 + crush[3], h - 1 - e / 2),
        ],
        fill=255,
    )
    d.ellipse((cx - bottom / 2, h - 1 - e, cx + bottom / 2, h - 1), fill=255)
    d.ellipse((0, 0, w - 1, 2 * e), fill=255)
    body = _arr(img)
    img, d = _canvas(w, h)
    d.ellipse((0, 0, w - 1, 2 * e), outline=255, width=max(1, int(w * 0.05)))
    rim = _arr(img)
    img, d = _canvas(w, h)
    d.ellipse((w * 0.06, e * 0.2, w * 0.94, e * 1.8), fill=255)
    opening = _arr(img)
    return w, h, body, rim, opening


# --------------------------------------------------------------------------- objects
# Every renderer takes (rng, size), size being the object's long side in pixels, and
# returns an upright Layer; rotation, jitter and placement happen afterwards.

WHITE = np.array([255, 255, 255], np.float32)
DARK = np.array([35, 35, 38], np.float32)


def _drink_can(rng: np.random.Generator, size: int) -> Layer:
    """Aluminium can: shaded cylinder, printed bands, metal ends, specular stripe, dents."""
    h, w = size, _dim(size * rng.uniform(0.42, 0.58))
    e = max(1.0, w * rng.uniform(0.1, 0.22))  # half-height of the end ellipses
    img, d = _canvas(w, h)
    d.rectangle((0, e, w - 1, h - 1 - e), fill=255)
    d.ellipse((0, h - 1 - 2 * e, w - 1, h - 1), fill=255)
    d.ellipse((0, 0, w - 1, 2 * e), fill=255)
    if rng.random() < 0.35:  # crushed: bites out of the silhouette
        for _ in range(int(rng.integers(1, 3))):
            side = 0 if rng.random() < 0.5 else w - 1
            y, depth = rng.uniform(0.25, 0.75) * h, rng.uniform(0.15, 0.35) * w
            d.polygon([(side, y - 0.12 * h), (abs(side - depth), y), (side, y + 0.12 * h)], fill=0)
    body = _arr(img)
    diffuse, spec = _cylinder(rng, w)
    shading = diffuse[None, :, None]
    can = _blank(w, h)
    plain = rng.random() < 0.45  # bare aluminium rather than a printed can
    colour = np.full(3, rng.uniform(160, 215), np.float32) if plain else _pick(rng, CAN_COLOURS)
    _over(can, colour * shading, body)
    if rng.random() < 0.7:
        bands = _print_bands(rng, w, h, 2 * e, h - 2 * e)
        _stack(can, (bands[0] * shading, bands[1]), body)
    img, d = _canvas(w, h)
    d.ellipse((0, 0, w - 1, 2 * e), fill=255)
    d.rectangle((0, h - 1 - 1.5 * e, w - 1, h - 1), fill=255)
    _over(can, np.float32(rng.uniform(150, 215)) * shading, _arr(img) * body)
    img, d = _canvas(w, h)
    d.ellipse((w * 0.3, e * 0.5, w * 0.6, e * 1.3), fill=255)  # drinking opening
    _over(can, DARK, _arr(img) * body)
    dents = _lines_mask(w, h, _random_lines(rng, w, h, int(rng.integers(0, 4)), 2, 0.25 * w), 1)
    _over(can, DARK, 0.4 * dents * body)
    _over(can, WHITE, rng.uniform(0.5, 0.9) * spec[None, :] * body)
    return can


def _food_can(rng: np.random.Generator, size: int) -> Layer:
    """Steel tin: wide ribbed silver cylinder, often with a paper label, ringed lid."""
    h, w = size, _dim(size * rng.uniform(0.65, 0.95))
    e = max(1.0, w * rng.uniform(0.1, 0.2))
    img, d = _canvas(w, h)
    d.rectangle((0, e, w - 1, h - 1 - e), fill=255)
    d.ellipse((0, h - 1 - 2 * e, w - 1, h - 1), fill=255)
    d.ellipse((0, 0, w - 1, 2 * e), fill=255)
    body = _arr(img)
    diffuse, spec = _cylinder(rng, w)
    shading = diffuse[None, :, None]
    tin = _blank(w, h)
    _over(tin, np.float32(rng.uniform(150, 210)) * shading, body)
    ribs, d = _canvas(w, h)
    step = rng.uniform(4, 8)
    for y in np.arange(2 * e, h - e, step):
        d.line((0, y, w - 1, y), fill=255, width=1)
    _over(tin, DARK, 0.35 * _arr(ribs) * body)
    if rng.random() < 0.6:
        top, bottom = rng.uniform(0.15, 0.3) * h, rng.uniform(0.7, 0.85) * h
        img, d = _canvas(w, h)
        d.rectangle((0, top, w - 1, bottom), fill=255)
        label = _arr(img) * body
        _over(tin, _pick(rng, PRINT_COLOURS) * shading, label)
        bands = _print_bands(rng, w, h, top, bottom)
        _stack(tin, (bands[0] * shading, bands[1]), label)
    img, d = _canvas(w, h)
    for k in range(3):  # concentric lid rings
        inset = k * 0.12
        d.ellipse((w * inset, 2 * e * inset, w * (1 - inset), 2 * e * (1 - inset)), outline=255)
    _over(tin, DARK, 0.5 * _arr(img) * body)
    _over(tin, WHITE, rng.uniform(0.4, 0.8) * spec[None, :] * body)
    return tin


def _foil(rng: np.random.Generator, size: int) -> Layer:
    """Crumpled aluminium foil: an irregular blob of high-contrast grey facets."""
    w, h = size, _dim(size * rng.uniform(0.5, 0.9))
    img, d = _canvas(w, h)
    d.polygon(_blob_points(rng, w, h, int(rng.integers(9, 16)), 0.45), fill=255)
    body = _arr(img)
    facets = Image.new("L", (w, h), int(rng.uniform(130, 190)))
    d = ImageDraw.Draw(facets)
    for _ in range(int(rng.integers(20, 45))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.08, 0.25) * size
        pts = [(x + r * np.cos(a), y + r * np.sin(a)) for a in rng.uniform(0, 2 * np.pi, 3)]
        d.polygon(pts, fill=int(rng.uniform(70, 255)))
    value = _arr(facets.filter(ImageFilter.GaussianBlur(0.7))) * 255.0
    tint = np.array([1.0, 0.85, 0.5], np.float32) if rng.random() < 0.15 else np.ones(3, np.float32)
    foil = _blank(w, h)
    _over(foil, value[..., None] * tint, body)
    return foil


def _sheet(rng: np.random.Generator, size: int, magazine: bool) -> Layer:
    """Flat or crumpled paper sheet with text lines and creases; magazines add photos."""
    w, h = size, _dim(size * rng.uniform(0.55, 0.8))
    crumpled = rng.random() < 0.3
    img, d = _canvas(w, h)
    if crumpled:
        d.polygon(_blob_points(rng, w, h, int(rng.integers(10, 18)), 0.3), fill=255)
    else:
        j = rng.normal(0.0, 0.04, 8) * size  # corner jitter: lying slightly skewed
        corners = [(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)]
        d.polygon([(x + j[2 * k], y + j[2 * k + 1]) for k, (x, y) in enumerate(corners)], fill=255)
    body = _arr(img)
    if magazine or rng.random() < 0.85:
        warm = np.array([1.0, 0.98, 0.93], np.float32)  # paper is a little warmer than foam
        colour = np.float32(rng.uniform(215, 245)) * warm
        colour += rng.normal(0.0, 4.0, 3).astype(np.float32)
    else:  # pastel or recycled paper
        colour = np.clip(_pick(rng, PRINT_COLOURS) * 0.3 + 170, 0, 255)
    paper = _blank(w, h)
    relief = 1.0 + (0.14 if crumpled else 0.05) * _noise(rng, h, w, max(2, size // 6))
    _over(paper, colour * relief[..., None], body)
    margin = 0.1 * w
    if magazine:
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.6) * h
            x1, y1 = x0 + rng.uniform(0.2, 0.5) * w, y0 + rng.uniform(0.2, 0.5) * h
            img, d = _canvas(w, h)
            d.rectangle((x0, y0, x1, y1), fill=255)
            hue = _pick(rng, PRINT_COLOURS)
            photo = hue * (1.0 + 0.3 * _noise(rng, h, w, max(2, size // 8)))[..., None]
            _over(paper, np.clip(photo, 0, 255), _arr(img) * body)
        gloss = np.clip(_noise(rng, h, w, max(2, size // 3)), 0, 1)
        _over(paper, WHITE, 0.25 * gloss * body)
    if rng.random() < 0.85:
        ink = np.float32(rng.uniform(40, 120))
        _over(paper, np.full(3, ink, np.float32), 0.6 * _text_lines(rng, w, h, margin) * body)
    n_creases = int(rng.integers(1, 6 if crumpled else 3))
    creases = _lines_mask(w, h, _random_lines(rng, w, h, n_creases, 3, 0.3 * size), 1)
    _over(paper, np.float32(0.6) * colour, 0.5 * creases * body)
    return paper


def _paper_bag(rng: np.random.Generator, size: int) -> Layer:
    """Kraft (sometimes white) paper bag with a serrated top and side folds."""
    h, w = size, _dim(size * rng.uniform(0.55, 0.8))
    img, d = _canvas(w, h)
    top = rng.uniform(0.0, 0.08) * h
    teeth = np.linspace(0, w - 1, int(rng.integers(6, 14)))
    serration = [(x, top + (3 if k % 2 else 0)) for k, x in enumerate(teeth)]
    d.polygon([*serration, (w - 1, h - 1), (0, h - 1)], fill=255)
    body = _arr(img)
    if rng.random() < 0.2:  # white paper bag
        colour = np.full(3, rng.uniform(215, 240), np.float32)
    else:  # brown kraft
        kraft = (rng.uniform(165, 205), rng.uniform(120, 155), rng.uniform(75, 105))
        colour = np.array(kraft, np.float32)
    bag = _blank(w, h)
    relief = 1.0 + 0.08 * _noise(rng, h, w, max(2, size // 5))
    _over(bag, colour * relief[..., None], body)
    folds, d = _canvas(w, h)
    for x in (0.12 * w, 0.88 * w):
        d.line((x, top, x + rng.normal(0, 2), h - 1), fill=255, width=2)
    d.line((0, 0.82 * h, w - 1, 0.82 * h + rng.normal(0, 3)), fill=255, width=1)
    _over(bag, 0.65 * colour, 0.6 * _arr(folds) * body)
    if rng.random() < 0.4:  # printed shop logo
        logo = _print_bands(rng, w, h, 0.35 * h, 0.6 * h)
        _stack(bag, logo, 0.8 * body)
    return bag


def _carton(rng: np.random.Generator, size: int) -> Layer:
    """Drink carton seen three-quarter: two shaded faces, gable or flat top, printed bands."""
    h, w = size, _dim(size * rng.uniform(0.4, 0.62))
    front = w * rng.uniform(0.55, 0.72)  # x where the front face meets the side face
    gable = rng.random() < 0.65
    roof = (rng.uniform(0.12, 0.2) if gable else rng.uniform(0.04, 0.08)) * h
    fin = 0.04 * h
    img, d = _canvas(w, h)
    d.rectangle((0, roof, w - 1, h - 1), fill=255)
    if gable:
        d.rectangle((w * 0.05, 0, front, fin), fill=255)  # sealing fin
        d.polygon([(0, roof), (0, fin), (front, fin), (front, roof)], fill=255)
        d.polygon([(front, roof), ((front + w - 1) / 2, fin), (w - 1, roof)], fill=255)
    else:
        d.polygon([(0, roof), (front * 0.25, 0), (w - 1, 0), (w - 1, roof)], fill=255)
    body = _arr(img)
    xs = np.arange(w, dtype=np.float32)
    face = np.where(xs < front, 1.0, rng.uniform(0.6, 0.8)).astype(np.float32)[None, :, None]
    carton = _blank(w, h)
    _over(carton, _pick(rng, CARTON_COLOURS) * face, body)
    bands = _print_bands(rng, w, h, roof, h)
    _stack(carton, (bands[0] * face, bands[1]), body)
    img, d = _canvas(w, h)
    d.rectangle((0, 0, w - 1, roof), fill=255)
    _over(carton, np.float32(rng.uniform(200, 245)) * face, 0.9 * _arr(img) * body)  # top
    if rng.random() < 0.45:  # screw cap or straw hole on the top
        r = max(1.5, 0.12 * w)
        cx, cy = front * 0.5, roof * 0.55
        img, d = _canvas(w, h)
        d.ellipse((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=255)
        _over(carton, _pick(rng, CAP_COLOURS), _arr(img) * body)
    img, d = _canvas(w, h)
    d.line((front, roof, front, h - 1), fill=255, width=1)
    d.line((0, roof, w - 1, roof), fill=255, width=1)
    _over(carton, DARK, 0.45 * _arr(img) * body)
    return carton


def _bottle(
    rng: np.random.Generator,
    size: int,
    *,
    tint: np.ndarray,
    opacity: float,
    width_frac: float,
    neck_frac: float,
    label_p: float,
    cap: np.ndarray | None,
) -> Layer:
    """A bottle; low opacity gives a transparent body lit by highlights and dark outlines."""
    h, w = size, _dim(size * width_frac)
    cap_h = 0.07 * h if cap is not None else 0.0
    neck_w = max(2.0, w * rng.uniform(0.32, 0.42))
    body, cap_mask = _bottle_mask(w, h, neck_w, cap_h, neck_frac * h, rng.uniform(0.1, 0.18) * h)
    diffuse, spec = _cylinder(rng, w)
    bottle = _blank(w, h)
    _over(bottle, tint * (0.85 + 0.15 * diffuse)[None, :, None], opacity * body)
    if rng.random() < 0.2 and opacity < 0.6:  # some liquid left inside
        img, d = _canvas(w, h)
        d.rectangle((0, rng.uniform(0.6, 0.85) * h, w - 1, h - 1), fill=255)
        _over(bottle, _pick(rng, PRINT_COLOURS) * 0.7, 0.5 * _arr(img) * body)
    if rng.random() < label_p:
        img, d = _canvas(w, h)
        top = rng.uniform(0.35, 0.5) * h
        d.rectangle((0, top, w - 1, top + rng.uniform(0.12, 0.3) * h), fill=255)
        _over(bottle, _pick(rng, PRINT_COLOURS) * diffuse[None, :, None], _arr(img) * body)
    if opacity < 0.6:  # ridges of a PET bottle catch the light
        img, d = _canvas(w, h)
        for y in np.arange(0.45 * h, h, rng.uniform(5, 10)):
            d.line((0, y, w - 1, y), fill=255, width=1)
        _over(bottle, WHITE, 0.25 * _arr(img) * body)
    _over(bottle, DARK, 0.5 * _edge(body, 1))
    _over(bottle, WHITE, rng.uniform(0.55, 0.95) * spec[None, :] * body)
    if cap is not None:
        _over(bottle, cap * diffuse[None, :, None], cap_mask)
    return bottle


def _clear_bottle(rng: np.random.Generator, size: int) -> Layer:
    """Transparent PET bottle, clear or lightly tinted, with a coloured cap."""
    tints = ((215, 228, 235), (175, 210, 235), (185, 230, 200), (225, 225, 225))
    return _bottle(
        rng,
        size,
        tint=_pick(rng, tints),
        opacity=rng.uniform(0.25, 0.5),
        width_frac=rng.uniform(0.3, 0.42),
        neck_frac=rng.uniform(0.04, 0.08),
        label_p=0.5,
        cap=_pick(rng, CAP_COLOURS),
    )


def _other_bottle(rng: np.random.Generator, size: int) -> Layer:
    """Opaque coloured plastic bottle (detergent, milk, shampoo)."""
    return _bottle(
        rng,
        size,
        tint=_pick(rng, BOTTLE_COLOURS),
        opacity=rng.uniform(0.85, 1.0),
        width_frac=rng.uniform(0.38, 0.55),
        neck_frac=rng.uniform(0.03, 0.07),
        label_p=0.5,
        cap=_pick(rng, CAP_COLOURS),
    )


def _glass_bottle(rng: np.random.Generator, size: int) -> Layer:
    """Distractor: green, brown or clear glass, long neck, metal or no cap."""
    tints = ((40, 120, 50), (110, 60, 25), (200, 215, 210))
    metal_cap = np.float32(rng.uniform(140, 220)) * np.array([1.0, 0.9, 0.6], np.float32)
    return _bottle(
        rng,
        size,
        tint=_pick(rng, tints),
        opacity=rng.uniform(0.55, 0.8),
        width_frac=rng.uniform(0.28, 0.36),
        neck_frac=rng.uniform(0.18, 0.28),
        label_p=0.4,
        cap=metal_cap if rng.random() < 0.6 else None,
    )


def _plastic_cup(rng: np.random.Generator, size: int) -> Layer:
    """Disposable cup: usually clear with rim and highlights, sometimes opaque party colours."""
    w, h, body, rim, opening = _cup_masks(rng, size)
    diffuse, spec = _cylinder(rng, w)
    cup = _blank(w, h)
    if rng.random() < 0.3:
        colour = _pick(rng, ((200, 30, 35), (235, 235, 235), (30, 70, 170)))
        _over(cup, colour * diffuse[None, :, None], body)
        _over(cup, colour * 0.6, opening)
    else:
        _over(cup, np.array([220, 230, 235], np.float32), rng.uniform(0.2, 0.4) * body)
        _over(cup, DARK, 0.45 * _edge(body, 1))
        img, d = _canvas(w, h)
        for y in np.arange(0.15 * h, 0.35 * h, 4):
            d.line((0, y, w - 1, y), fill=255, width=1)
        _over(cup, WHITE, 0.3 * _arr(img) * body)
    _over(cup, WHITE, 0.8 * rim)
    _over(cup, WHITE, rng.uniform(0.5, 0.9) * spec[None, :] * body)
    return cup


def _bag(rng: np.random.Generator, size: int, kind: str) -> Layer:
    """Plastic film / carrier bag / garbage bag: crumpled translucent blob with wrinkles."""
    w, h = size, _dim(size * rng.uniform(0.55, 0.95))
    handles = kind == "carrier" and rng.random() < 0.7
    top = 0.25 * h if handles else 0.0
    img, d = _canvas(w, h)
    outline = _blob_points(rng, w, h, int(rng.integers(10, 20)), 0.35)
    d.polygon([(x, top + y * (h - top) / h) for x, y in outline], fill=255)  # below the handles
    if handles:
        for cx in (0.3 * w, 0.7 * w):
            loop = (cx - 0.12 * w, 0, cx + 0.12 * w, top * 2)
            d.ellipse(loop, outline=255, width=max(2, int(0.05 * w)))
        d.rectangle((0.2 * w, top, 0.8 * w, top * 1.6), fill=255)  # gathered neck
    body = _arr(img)
    if kind == "garbage":
        colour = _pick(rng, ((30, 30, 32), (35, 60, 40), (40, 45, 80), (90, 90, 95)))
        opacity = rng.uniform(0.9, 1.0)
    elif kind == "carrier":
        colour = _pick(rng, BAG_COLOURS)
        opacity = rng.uniform(0.7, 0.95)
    else:
        printed = rng.random() < 0.4  # coloured wrapper film rather than clear/white
        colour = _pick(rng, BAG_COLOURS + PRINT_COLOURS) if printed else _pick(rng, BAG_COLOURS[:2])
        opacity = rng.uniform(0.35, 0.75)
    relief = np.clip(1.0 + 0.22 * _noise(rng, h, w, max(2, size // 6)), 0.4, 1.6)
    bag = _blank(w, h)
    _over(bag, np.clip(colour * relief[..., None], 0, 255), opacity * body)
    if kind == "carrier" and rng.random() < 0.4:
        _stack(bag, _print_bands(rng, w, h, 0.4 * h, 0.8 * h), 0.7 * body)
    count = int(rng.integers(5, 12))
    folds = _random_lines(rng, w, h, count, 3, 0.15 * size)
    bright = _soft(_lines_mask(w, h, folds, 1 + int(size > 60)), 0.8)
    dark = _soft(_lines_mask(w, h, _random_lines(rng, w, h, count // 2, 3, 0.15 * size), 1), 0.8)
    gloss = 0.7 if kind == "garbage" else 0.45
    _over(bag, WHITE, gloss * bright * body)
    _over(bag, 0.5 * colour, 0.4 * dark * body)
    return bag


def _foam_piece(rng: np.random.Generator, size: int) -> Layer:
    """Broken styrofoam block: jagged polygon, porous bead texture, darker broken edges."""
    w, h = size, _dim(size * rng.uniform(0.4, 0.8))
    img, d = _canvas(w, h)
    d.polygon(_blob_points(rng, w, h, int(rng.integers(6, 12)), 0.3), fill=255)
    body = _arr(img)
    foam = _blank(w, h)
    _over(foam, _foam_texture(rng, w, h), body)
    _over(foam, np.array([150, 150, 145], np.float32), 0.5 * _edge(body, max(1, size // 25)))
    return foam


def _foam_container(rng: np.random.Generator, size: int) -> Layer:
    """Clamshell food tray: rounded rectangle with an inner well and a hinge line."""
    w, h = size, _dim(size * rng.uniform(0.55, 0.9))
    img, d = _canvas(w, h)
    d.rounded_rectangle((0, 0, w - 1, h - 1), radius=0.15 * min(w, h), fill=255)
    body = _arr(img)
    tray = _blank(w, h)
    _over(tray, _foam_texture(rng, w, h), body)
    inset = 0.12 * min(w, h)
    img, d = _canvas(w, h)
    well = (inset, inset, w - 1 - inset, h - 1 - inset)
    d.rounded_rectangle(well, radius=0.1 * min(w, h), outline=255, width=2)
    _over(tray, np.array([170, 170, 165], np.float32), 0.5 * _arr(img))
    if rng.random() < 0.5:  # open clamshell: hinge across the middle
        img, d = _canvas(w, h)
        d.line((w / 2, 0, w / 2, h - 1), fill=255, width=2)
        _over(tray, np.array([160, 160, 155], np.float32), 0.6 * _arr(img) * body)
    return tray


def _foam_cup(rng: np.random.Generator, size: int) -> Layer:
    """Expanded-polystyrene cup: opaque porous white, shaded interior opening."""
    w, h, body, rim, opening = _cup_masks(rng, size)
    diffuse, _ = _cylinder(rng, w)
    cup = _blank(w, h)
    _over(cup, _foam_texture(rng, w, h) * (0.8 + 0.2 * diffuse)[None, :, None], body)
    _over(cup, np.array([185, 180, 170], np.float32), 0.8 * opening)
    _over(cup, WHITE, 0.7 * rim)
    return cup


def _cigarette(rng: np.random.Generator, size: int) -> Layer:
    """Distractor: a small white stick with an orange filter and an ashy tip."""
    h, w = _dim(size * rng.uniform(0.35, 0.55)), _dim(size * rng.uniform(0.06, 0.09))
    butt = _blank(w, h)
    img, d = _canvas(w, h)
    d.rectangle((0, 0, w - 1, h - 1), fill=255)
    body = _arr(img)
    _over(butt, np.float32(rng.uniform(220, 245)) * np.ones(3, np.float32), body)
    img, d = _canvas(w, h)
    d.rectangle((0, 0.6 * h, w - 1, h - 1), fill=255)
    _over(butt, np.array([205, 140, 70], np.float32), _arr(img))
    img, d = _canvas(w, h)
    d.rectangle((0, 0, w - 1, 0.06 * h), fill=255)
    _over(butt, np.array([90, 90, 90], np.float32), _arr(img))
    return butt


# TACO id -> renderer, for every id in CLASS_SOURCES and DISTRACTOR_IDS.
RENDERERS: dict[int, Callable[[np.random.Generator, int], Layer]] = {
    12: _drink_can,
    10: _food_can,
    0: _foil,
    33: lambda rng, size: _sheet(rng, size, magazine=False),
    30: lambda rng, size: _sheet(rng, size, magazine=True),
    34: _paper_bag,
    16: _carton,
    5: _clear_bottle,
    4: _other_bottle,
    21: _plastic_cup,
    36: lambda rng, size: _bag(rng, size, "film"),
    40: lambda rng, size: _bag(rng, size, "carrier"),
    38: lambda rng, size: _bag(rng, int(size * 1.2), "garbage"),
    57: _foam_piece,
    22: _foam_cup,
    46: _foam_container,
    59: _cigarette,
    6: _glass_bottle,
}


# --------------------------------------------------------------------------- scenes

LEAF_COLOURS: tuple[Rgb, ...] = ((120, 80, 30), (170, 140, 50), (70, 110, 40), (140, 60, 30))
GROUNDS: dict[str, Rgb] = {
    "grass": (75, 115, 50),
    "asphalt": (95, 95, 98),
    "sand": (196, 176, 138),
    "soil": (112, 86, 62),
    "pavement": (150, 148, 142),
    "gravel": (128, 122, 115),
}


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A ground texture with clutter (stones, leaves, twigs, blades, cracks), float32 HxWx3."""
    names = list(GROUNDS)
    ground = names[int(rng.integers(len(names)))]
    base = np.asarray(GROUNDS[ground], np.float32) * rng.uniform(0.8, 1.15)
    base += rng.normal(0.0, 5.0, 3).astype(np.float32)
    coarse = _noise(rng, height, width, int(rng.integers(24, 64)))
    medium = _noise(rng, height, width, int(rng.integers(4, 10)))
    fine = rng.standard_normal((height, width)).astype(np.float32)
    grain = {"asphalt": 22.0, "gravel": 20.0, "sand": 7.0}.get(ground, 12.0)
    value = base * (1.0 + 0.12 * coarse + 0.06 * medium)[..., None] + (grain * fine)[..., None]
    img = Image.fromarray(np.clip(value, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if ground == "pavement":
        step = int(rng.integers(40, 90))
        for col in range(int(rng.integers(step)), width, step):
            d.line((col, 0, col, height), fill=(100, 100, 98), width=2)
        for row in range(int(rng.integers(step)), height, step):
            d.line((0, row, width, row), fill=(100, 100, 98), width=2)
    if ground == "grass":
        for _ in range(int(rng.integers(150, 300))):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            length, angle = rng.uniform(4, 12), rng.normal(-np.pi / 2, 0.5)
            g = int(rng.uniform(70, 170))
            tip = (x + length * np.cos(angle), y + length * np.sin(angle))
            d.line((x, y, *tip), fill=(g // 2, g, g // 3), width=1)
    stones = int(rng.integers(30, 80)) if ground == "gravel" else int(rng.integers(0, 10))
    for _ in range(stones):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1.5, 6)
        g = int(rng.uniform(70, 200))
        rim = (g // 2, g // 2, g // 2)
        d.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=(g, g - 5, g - 12), outline=rim)
    for _ in range(int(rng.integers(0, 8))):  # leaves
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 10)
        colour = tuple(int(c) for c in _pick(rng, LEAF_COLOURS))
        d.ellipse((x - r, y - r / 2.5, x + r, y + r / 2.5), fill=colour)
    twigs = _random_lines(rng, width, height, int(rng.integers(0, 5)), 3, 15)  # or cracks
    for points in twigs:
        dark = ground in ("asphalt", "pavement")
        if dark:
            d.line(points, fill=(30, 30, 30), width=1)
        else:
            d.line(points, fill=(90, 65, 40), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 3))):  # small bright specks: caps, pebbles, paper bits
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1.5, 4)
        colour = tuple(int(c) for c in _pick(rng, PRINT_COLOURS))
        d.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return np.asarray(img, dtype=np.float32).copy()


def _blend(canvas: np.ndarray, prgb: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Composite a premultiplied layer onto the canvas at (x0, y0), clipped to the canvas."""
    height, width = canvas.shape[:2]
    h, w = alpha.shape
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
    if ix0 >= ix1 or iy0 >= iy1:
        return
    a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None]
    region = canvas[iy0:iy1, ix0:ix1]
    region *= 1.0 - a
    region += prgb[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]


def _weather(rng: np.random.Generator, layer: Layer, size: int) -> Layer:
    """Colour jitter, dirt, rotation and blur of an upright object layer."""
    prgb, alpha = layer
    h, w = alpha.shape
    gain = rng.uniform(0.8, 1.12) * (1.0 + rng.normal(0.0, 0.025, 3))
    prgb = prgb * gain.astype(np.float32)
    if rng.random() < 0.2:  # patches of mud
        dirt = np.clip(_noise(rng, h, w, max(2, size // 5)) - 0.5, 0.0, 1.0) * 0.6
        mud = np.array([90, 70, 50], np.float32)
        prgb = prgb * (1.0 - dirt[..., None]) + mud * (dirt * alpha)[..., None]
    if rng.random() < 0.6:  # lying roughly along or across the frame, either way up
        angle = 90.0 * int(rng.integers(4)) + rng.normal(0.0, 12.0)
    else:
        angle = rng.uniform(0.0, 360.0)
    radius = rng.uniform(0.0, 0.9)
    # Rotate and blur each premultiplied channel as its own 8-bit image (Pillow cannot blur
    # float images, and treating the data as RGBA could un-premultiply it).
    turned = []
    for channel in (*np.moveaxis(prgb, -1, 0), alpha * 255.0):
        img = Image.fromarray(np.clip(np.rint(channel), 0, 255).astype(np.uint8))
        img = img.rotate(angle, Image.Resampling.BILINEAR, expand=True)
        img = img.filter(ImageFilter.GaussianBlur(radius))
        turned.append(np.asarray(img, np.float32))
    return np.stack(turned[:3], axis=-1), turned[3] / 255.0


def _choose_category(rng: np.random.Generator) -> int:
    """A TACO id: a distractor now and then, otherwise a target class by CLASS_WEIGHTS."""
    if rng.random() < DISTRACTOR_RATE:
        return DISTRACTOR_IDS[int(rng.integers(len(DISTRACTOR_IDS)))]
    names = list(CLASS_WEIGHTS)
    weights = np.array([CLASS_WEIGHTS[n] for n in names])
    sources = CLASS_SOURCES[names[int(rng.choice(len(names), p=weights / weights.sum()))]]
    source_weights = np.array([wt for _, wt in sources])
    return sources[int(rng.choice(len(sources), p=source_weights / source_weights.sum()))][0]


def _object_size(rng: np.random.Generator, short_side: int) -> int:
    """Long side of an object: mostly 20-45% of the image's short side, sometimes outside."""
    fraction = rng.uniform(0.2, 0.45) if rng.random() < 0.8 else rng.uniform(0.12, 0.6)
    return max(12, int(round(fraction * short_side)))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _place(
    rng: np.random.Generator,
    canvas: np.ndarray,
    layer: Layer,
    boxes: list[tuple[int, int, int, int]],
    shadow: tuple[int, int, float],
) -> tuple[tuple[int, int, int, int], float] | None:
    """Drop an object with its shadow at a random spot; return its (x0, y0, x1, y1) box and area.

    Objects may overlap earlier ones (and hide them partly), but not more than MAX_IOU, and
    must lie mostly in the frame. The box is the object's full extent clipped to the image;
    None means no acceptable spot was found.
    """
    height, width = canvas.shape[:2]
    prgb, alpha = layer
    h, w = alpha.shape
    solid = alpha > ALPHA_EPS
    total = int(solid.sum())
    if total == 0:
        return None
    for _ in range(PLACEMENT_TRIES):
        x0 = int(round(rng.uniform(0, width) - w / 2))
        y0 = int(round(rng.uniform(0, height) - h / 2))
        ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        visible = solid[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        area = int(visible.sum())
        if area < MIN_IN_FRAME * total:
            continue
        cols, rows = np.flatnonzero(visible.any(axis=0)), np.flatnonzero(visible.any(axis=1))
        left, top = ix0 + int(cols[0]), iy0 + int(rows[0])
        box = (left, top, ix0 + int(cols[-1]) + 1, iy0 + int(rows[-1]) + 1)
        if box[2] - box[0] <= 4 or box[3] - box[1] <= 4:
            continue
        if any(_iou(box, other) > MAX_IOU for other in boxes):
            continue
        dx, dy, strength = shadow
        pad = 6
        shade = _soft(np.pad(alpha, pad), 3) * strength
        _blend(canvas, np.zeros((*shade.shape, 3), np.float32), shade, x0 - pad + dx, y0 - pad + dy)
        _blend(canvas, prgb, alpha, x0, y0)
        return box, float(area)
    return None


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Scene lighting (gradient, colour cast, cast shadow), camera blur and sensor noise."""
    height, width = canvas.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xs / width - 0.5) + np.sin(angle) * (ys / height - 0.5)) * 2
    light = 1.0 + rng.uniform(0.1, 0.35) * ramp
    if rng.random() < 0.3:  # soft shadow of a tree or a passer-by
        img, d = _canvas(width, height)
        d.polygon(_blob_points(rng, width, height, 7, 0.6), fill=255)
        blurred = img.filter(ImageFilter.GaussianBlur(int(rng.integers(6, 16))))
        light *= 1.0 - rng.uniform(0.2, 0.4) * _arr(blurred)
    cast = (1.0 + rng.normal(0.0, 0.04, 3)).astype(np.float32)
    lit = np.clip(canvas * light[..., None] * cast, 0, 255).astype(np.uint8)
    img = Image.fromarray(lit).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.7)))
    noisy = np.asarray(img, np.float32) + rng.normal(0.0, rng.uniform(1.5, 5.0), (height, width, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _render_image(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], float]]]:
    """One photo (uint8 HxWx3) and its objects as (TACO id, (x0, y0, x1, y1), area)."""
    canvas = _background(rng, width, height)
    sun = rng.uniform(0, 2 * np.pi)
    reach = rng.uniform(2, 6)
    offset = (int(round(reach * np.cos(sun))), int(round(reach * np.sin(sun))))
    shadow = (*offset, float(rng.uniform(0.25, 0.5)))
    objects: list[tuple[int, tuple[int, int, int, int], float]] = []
    for _ in range(int(rng.integers(2, 7))):
        category = _choose_category(rng)
        size = _object_size(rng, min(width, height))
        layer = _weather(rng, RENDERERS[category](rng, size), size)
        placed = _place(rng, canvas, layer, [box for _, box, _ in objects], shadow)
        if placed is not None:
            objects.append((category, *placed))
    return _finish(rng, canvas), objects


# --------------------------------------------------------------------------- data set


def _info(n_images: int, seed: int, image_size: tuple[int, int]) -> dict[str, object]:
    """The json's "info": a description plus everything that determines the content."""
    return {
        "description": "Synthetic TACO-like litter photos (trashlib.synthetic)",
        "generator": "trashlib.synthetic.make_synthetic_coco",
        "generator_version": GENERATOR_VERSION,
        "n_images": n_images,
        "seed": seed,
        "image_size": list(image_size),
    }


def _is_complete(out_dir: Path, info: dict[str, object]) -> bool:
    """True when out_dir holds a data set made with the same arguments."""
    try:
        existing = json.loads((out_dir / ANNOTATIONS_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if not isinstance(existing, dict) or existing.get("info") != info:
        return False
    return all((out_dir / image["file_name"]).is_file() for image in existing.get("images", []))


def make_synthetic_coco(
    out_dir: Path,
    n_images: int = 200,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
) -> Path:
    """Write out_dir/annotations.json and out_dir/images/*.jpg; return out_dir. Idempotent:
    if out_dir/annotations.json exists and was made with the same arguments (store them in
    the json's "info" dict), return without regenerating.

    ``image_size`` is (width, height), each at least 32 pixels. Images get ids 0..n-1 and
    files ``images/000000.jpg`` ...; annotation ids start at 1; boxes are COCO
    [x, y, w, h] floats covering each object's full extent (also where a later object
    hides part of it). Image i depends only on ``seed``, ``image_size`` and i, so a larger
    ``n_images`` extends a smaller data set with the same first images. annotations.json
    is written last and atomically: its presence marks a complete data set.
    """
    n_images, seed = operator.index(n_images), operator.index(seed)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    size = tuple(operator.index(v) for v in image_size)
    if len(size) != 2 or min(size) < MIN_IMAGE_SIDE:
        raise ValueError(f"image_size must be (width, height), both at least {MIN_IMAGE_SIDE}; got {image_size!r}")
    width, height = size
    out_dir = Path(out_dir)
    info = _info(n_images, seed, (width, height))
    if _is_complete(out_dir, info):
        return out_dir

    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    # A stale annotations.json must not vouch for a half-rewritten image folder.
    (out_dir / ANNOTATIONS_NAME).unlink(missing_ok=True)

    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id, child in enumerate(np.random.SeedSequence(seed).spawn(n_images)):
        pixels, objects = _render_image(np.random.default_rng(child), width, height)
        file_name = f"{IMAGES_DIR}/{image_id:06d}.jpg"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        atomic_write_bytes(out_dir / file_name, buffer.getvalue())
        images.append({"id": image_id, "width": width, "height": height, "file_name": file_name})
        for category, (x0, y0, x1, y1), area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    # Drop images left by an earlier, larger data set in the same folder.
    listed = {f"{image_id:06d}.jpg" for image_id in range(n_images)}
    for stale in images_dir.glob("*.jpg"):
        if stale.name not in listed:
            stale.unlink()
    dataset = {
        "info": info,
        "licenses": [{"id": 0, "name": "CC0 1.0 (synthetic data)", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": name, "supercategory": supercategory}
            for i, (name, supercategory) in enumerate(TACO_CATEGORIES)
        ],
    }
    atomic_write_bytes(out_dir / ANNOTATIONS_NAME, json.dumps(dataset, indent=None).encode("utf-8"))
    return out_dir
