"""Data layer: read COCO and ImageFolder sources, map classes, crop, split by photo, manifest and crop cache."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import posixpath
import stat
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from trashlib.files import atomic_write_bytes, atomic_write_json, sha256_file
from trashlib.progress import bars_enabled

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error, never silently grey

MANIFEST_DIR = Path(__file__).resolve().parents[1] / "data_manifest"
MAPPINGS = {"taco": "taco_to_6class.json", "recycle10": "recycle10_to_6class.json"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
DEFAULT_MAX_PIXELS = 64_000_000
PAD_FILL = (114, 114, 114)
MANIFEST_FIELDS = (
    "sample_id",
    "source",
    "sha256",
    "src_width",
    "src_height",
    "image_id",
    "ann_id",
    "category",
    "label",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "split",
    "subset",
)


class DataError(ValueError):
    """A data input the workbook cannot use, with the file and field it came from."""


@dataclass(frozen=True)
class Mapping:
    """Source category name -> target class (None = excluded, with a reason)."""

    name: str
    classes: tuple[str, ...]
    table: dict[str, str | None]
    reasons: dict[str, str]


@dataclass
class Sample:
    """One object crop before caching: where it comes from and what it is."""

    source: str  # path relative to the data root, posix
    label: str
    category: str
    image_id: int | None = None
    ann_id: int | None = None
    bbox: tuple[float, float, float, float] | None = None  # COCO x, y, w, h
    declared_size: tuple[int, int] | None = None


@dataclass
class DataReport:
    """What preparation skipped or warned about; valid samples are never dropped for it."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    changed_sources: list[str] = field(default_factory=list)
    source_category_counts: dict[str, int] = field(default_factory=dict)
    excluded_category_counts: dict[str, int] = field(default_factory=dict)

    def skip(self, file: str, field_name: str, reason: str) -> None:
        self.skipped.append({"file": file, "field": field_name, "reason": reason})


@dataclass
class PreparedData:
    """A prepared data set in a run directory: manifest rows, crop cache and metadata."""

    data_dir: Path
    classes: list[str]
    rows: list[dict[str, str]]
    crops: np.ndarray  # (N, S, S, 3) uint8, aligned with rows
    meta: dict[str, Any]
    report: dict[str, Any]

    def split(self, split: str, subset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Crops and integer labels of one split (and optionally its public/private half)."""
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        idx = [i for i, r in enumerate(self.rows) if r["split"] == split and (subset is None or r["subset"] == subset)]
        labels = np.array([self.classes.index(self.rows[i]["label"]) for i in idx], dtype=np.int64)
        return np.asarray(self.crops[idx]), labels

    def split_rows(self, split: str) -> list[dict[str, str]]:
        return [r for r in self.rows if r["split"] == split]


# --------------------------------------------------------------------------- mapping


def load_mapping(name_or_path: str | Path) -> Mapping:
    """A mapping by short name (`taco`, `recycle10`) or a JSON file path."""
    path = MANIFEST_DIR / MAPPINGS[str(name_or_path)] if str(name_or_path) in MAPPINGS else Path(name_or_path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"mapping {name_or_path!r}: no such file {path} (known names: {sorted(MAPPINGS)})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"mapping {path}: invalid JSON ({exc})") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("classes"), list)
        or not isinstance(doc.get("categories"), dict)
    ):
        raise DataError(f"mapping {path}: needs 'classes' (list) and 'categories' (object)")
    classes = tuple(doc["classes"])
    table: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    for cat, entry in doc["categories"].items():
        target = entry.get("class") if isinstance(entry, dict) else None
        if target is not None and target not in classes:
            raise DataError(f"mapping {path}: categories[{cat!r}].class={target!r} is not one of {classes}")
        if target is None and not (isinstance(entry, dict) and entry.get("reason")):
            raise DataError(f"mapping {path}: categories[{cat!r}] is excluded without a 'reason'")
        table[cat] = target
        if isinstance(entry, dict) and entry.get("reason"):
            reasons[cat] = str(entry["reason"])
    return Mapping(name=str(doc.get("name", path.stem)), classes=classes, table=table, reasons=reasons)


# --------------------------------------------------------------------------- reading sources


def detect_format(path: str | Path) -> str:
    """`coco` for a folder with annotations.json (or the json itself), `imagefolder` for class folders."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return "coco"
    if not p.is_dir():
        raise DataError(f"data path {p} does not exist or is not a folder")
    if (p / "annotations.json").is_file():
        return "coco"
    if any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir()):
        return "imagefolder"
    raise DataError(f"data path {p}: neither annotations.json (COCO) nor class folders (ImageFolder) found")


def _is_number(v: Any) -> TypeGuard[int | float]:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float, e.g. 10**400
        return False


def _is_text(s: str) -> bool:
    """False for strings with lone surrogates (a bad JSON escape, an undecodable file name): not writable as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_id(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def read_coco(ann_path: Path, mapping: Mapping, report: DataReport) -> list[Sample]:
    """One Sample per usable annotation; bad records are skipped and listed in the report."""
    name = ann_path.name
    try:
        doc = json.loads(ann_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8/JSON, an int of > 4300 digits
        raise DataError(f"{ann_path}: cannot read COCO annotations ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{ann_path}: top level must be an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{ann_path}: '{key}' must be a list")

    categories: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise DataError(f"{ann_path}: categories[{i}] needs an integer 'id' and a string 'name'")
        if cat["id"] in categories:
            raise DataError(f"{ann_path}: categories[{i}].id={cat['id']} is duplicated")
        if cat["name"] not in mapping.table:
            raise DataError(
                f"{ann_path}: categories[{i}].name={cat['name']!r} is not in mapping "
                f"{mapping.name!r}; choose the mapping for this data set"
            )
        categories[cat["id"]] = cat["name"]

    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(doc["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            report.skip(name, f"images[{i}].id", "missing or not an integer")
            continue
        if img["id"] in images:
            raise DataError(
                f"{ann_path}: images[{i}].id={img['id']} is duplicated: "
                "its annotations cannot be attributed to one file"
            )
        fn = img.get("file_name")
        if not isinstance(fn, str) or not fn:
            report.skip(name, f"images[{i}].file_name", "missing or not a string")
            continue
        if not _is_text(fn):
            report.skip(name, f"images[{i}].file_name", "not valid Unicode (lone surrogate escape)")
            continue
        # ./x.jpg and images//x.jpg are one photo; a name that climbs out stays as given, for safe_path to refuse
        normal = posixpath.normpath(fn)
        images[img["id"]] = {**img, "file_name": normal if not normal.startswith(("/", "..")) else fn}

    samples: list[Sample] = []
    seen_ann: set[int] = set()
    for i, ann in enumerate(doc["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or not _is_id(ann.get("id")):
            report.skip(name, f"{where}.id", "missing or not an integer")
            continue
        if ann["id"] in seen_ann:
            report.skip(name, f"{where}.id", f"duplicate annotation id {ann['id']}; the first is kept")
            continue
        seen_ann.add(ann["id"])
        cat_name = categories.get(ann["category_id"]) if _is_id(ann.get("category_id")) else None
        if cat_name is None:
            report.skip(name, f"{where}.category_id", f"unknown category id {ann.get('category_id')!r}")
            continue
        img = images.get(ann["image_id"]) if _is_id(ann.get("image_id")) else None
        if img is None:
            report.skip(name, f"{where}.image_id", f"unknown image id {ann.get('image_id')!r}")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            report.skip(img["file_name"], f"{where}.bbox", f"not four finite numbers: {bbox!r}"[:200])
            continue
        if bbox[2] <= 0 or bbox[3] <= 0:
            report.skip(img["file_name"], f"{where}.bbox", f"zero or negative size {bbox!r}")
            continue
        report.source_category_counts[cat_name] = report.source_category_counts.get(cat_name, 0) + 1
        label = mapping.table[cat_name]
        if label is None:
            report.excluded_category_counts[cat_name] = report.excluded_category_counts.get(cat_name, 0) + 1
            continue
        w, h = img.get("width"), img.get("height")
        declared = (int(w), int(h)) if _is_number(w) and _is_number(h) else None
        samples.append(
            Sample(
                source=img["file_name"],
                label=label,
                category=cat_name,
                image_id=img["id"],
                ann_id=ann["id"],
                bbox=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
                declared_size=declared,
            )
        )
    return samples


def coco_image_root(json_dir: Path, file_names: list[str]) -> Path:
    """The folder COCO file names are relative to: the json's folder, or its `images/` (TACO's layout)."""
    candidates = [json_dir, json_dir / "images"]
    probe = sorted(set(file_names))[:50]

    def hits(base: Path) -> int:
        return sum((base / f).is_file() for f in probe if not Path(f).is_absolute() and ".." not in Path(f).parts)

    return max(candidates, key=hits) if (json_dir / "images").is_dir() else json_dir


def read_imagefolder(root: Path, report: DataReport) -> tuple[list[Sample], dict[str, str], list[str]]:
    """Samples of `<root>/<Class>/*.jpg` or `<root>/<split>/<Class>/*.jpg` (any of train/val/test; a missing split is
    carved out of the given ones); returns samples, given splits, classes."""
    top = {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    split_dirs = top & set(SPLITS)
    if split_dirs and top - split_dirs:
        raise DataError(
            f"{root}: mixes split folders {sorted(split_dirs)} with class folders {sorted(top - split_dirs)[:5]}; "
            f"use <root>/<Class>/ or <root>/<split>/<Class>/"
        )
    bases = [(root / s, s) for s in SPLITS if s in split_dirs] if split_dirs else [(root, "")]
    samples: list[Sample] = []
    given: dict[str, str] = {}
    counts: Counter[str] = Counter()
    folders: set[str] = set()
    for base, split in bases:
        for cls_dir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            folders.add(cls_dir.name)
            for f in sorted(cls_dir.iterdir()):
                if f.name.startswith("."):
                    continue
                rel = f.relative_to(root).as_posix()
                if not _is_text(rel):
                    report.skip(rel.encode("utf-8", "backslashreplace").decode(), "file", "name is not valid UTF-8")
                    continue
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    report.skip(rel, "file", f"not an image file extension {f.suffix!r}")
                    continue
                if not f.is_file():  # a FIFO or a device named like a photo (a symlink to a file is followed)
                    report.skip(rel, "file", "not a regular file")
                    continue
                samples.append(Sample(source=rel, label=cls_dir.name, category=cls_dir.name))
                counts[cls_dir.name] += 1
                if split:
                    given[rel] = split
    classes = sorted(c for c in folders if counts[c] > 0)
    for c in sorted(folders - set(classes)):
        report.empty_classes.append(c)
        report.warnings.append(f"class folder {c!r} has no images and is left out of the classes")
    report.source_category_counts = dict(sorted(counts.items()))
    return samples, given, classes


# --------------------------------------------------------------------------- images


def safe_path(root: Path, rel: object) -> Path:
    """`root/rel`, refusing absolute names, `..` and symlinks that lead out of the root."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise DataError(f"file name {rel!r} is empty or invalid")
    if Path(rel).is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise DataError(f"file name {rel!r} is absolute; it must be relative to the data root")
    path = root / rel
    try:
        resolved = path.resolve(strict=False)
        root_resolved = root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a lone surrogate the OS cannot encode
        raise DataError(f"file name {rel!r} cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(root_resolved):
        raise DataError(f"file name {rel!r} leads out of the data root")
    return resolved


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from grayscale, palette, CMYK, alpha (over white) and 16/32-bit images."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def check_regular_file(path: Path) -> None:
    """Only a regular file is opened: a FIFO, a device or a socket named like a photo would block or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError("file is missing") from None
    except OSError as error:
        raise DataError(f"cannot read it ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise DataError(f"{kind}, not an image file")


def open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode fully, with EXIF orientation applied, as RGB; DataError on anything unusable."""
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise DataError(
                        f"{im.width}x{im.height} pixels exceeds max_pixels={max_pixels} (decompression bomb?)"
                    )
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise DataError("file is missing") from None
    except UnidentifiedImageError:
        raise DataError("not a decodable image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"decompression bomb refused ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"corrupt or truncated image ({exc})") from None


def crop_box(
    bbox: tuple[float, float, float, float] | None, size: tuple[int, int], margin: float
) -> tuple[int, int, int, int] | None:
    """Integer crop box: the bbox grown by `margin` of its size on each side, clipped to the image."""
    w_img, h_img = size
    if bbox is None:
        return (0, 0, w_img, h_img)
    x, y, w, h = bbox
    x0 = math.floor(max(0.0, x - margin * w))
    y0 = math.floor(max(0.0, y - margin * h))
    x1 = math.ceil(min(float(w_img), x + w + margin * w))
    y1 = math.ceil(min(float(h_img), y + h + margin * h))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return (x0, y0, x1, y1)


FITS = ("pad", "stretch")


def square_resize(img: Image.Image, side: int, fit: str = "pad") -> np.ndarray:
    """Square side x side uint8 HWC: `pad` to a centred square with a neutral grey (keeps the aspect
    ratio, the default for object crops) or `stretch` (uses every pixel, for whole-object photos)."""
    w, h = img.size
    s = max(w, h)
    if fit == "stretch":
        return np.asarray(img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)
    if w != h:
        canvas = Image.new("RGB", (s, s), PAD_FILL)
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
        img = canvas
    if s != side:
        img = img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.uint8)


def load_crop(
    root: Path, row: dict[str, str], side: int, fit: str = "pad", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode one manifest row's crop from the source file on disk (the inference-time path)."""
    img = open_image(safe_path(root, row["source"]), max_pixels)
    x0, y0, x1, y1 = (int(row[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    return square_resize(img.crop((x0, y0, x1, y1)), side, fit)


# --------------------------------------------------------------------------- splits


def _order_key(seed: int, source: str) -> str:
    return hashlib.sha256(f"{seed}:{source}".encode()).hexdigest()


def same_photo(hashes: dict[str, str], report: DataReport) -> dict[str, str]:
    """Sources whose bytes equal an earlier source's (by sha256), mapped to that one, each with a warning: one photo
    under two names must not have crops in two splits."""
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for source in sorted(hashes):
        digest = hashes[source]
        if not digest:
            continue
        if digest in first:
            out[source] = first[digest]
            report.warnings.append(
                f"{source} and {first[digest]} are the same photo (sha256 {digest[:12]}...): kept in one split"
            )
        else:
            first[digest] = source
    return out


def _share(n: int, fraction: float) -> int:
    """How many of a stratum's ``n`` photos a split of ``fraction`` gets: at least one once the stratum has 3."""
    return max(1, round(n * fraction)) if n >= 3 and fraction > 0 else round(n * fraction)


def assign_splits(
    samples: list[Sample],
    fractions: tuple[float, float, float],
    seed: int,
    given: dict[str, str] | None = None,
    same_photo: dict[str, str] | None = None,
) -> dict[str, tuple[str, str]]:
    """Source photo -> (split, subset), stratified by each photo's majority class, never by crop.

    Test photos are further halved into `public` and `private` subsets, as in the competition. ``same_photo`` maps a
    source to another source with the same content: both go where that one goes.
    """

    def key(source: str) -> str:
        return (same_photo or {}).get(source, source)

    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    labels_by_photo: dict[str, Counter[str]] = defaultdict(Counter)
    for s in samples:
        labels_by_photo[key(s.source)][s.label] += 1
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for photo, counts in labels_by_photo.items():
        majority = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        fixed = (given or {}).get(photo, "")
        strata[(fixed, majority)].append(photo)
    out: dict[str, tuple[str, str]] = {}
    _, f_val, f_test = fractions
    given_splits = set((given or {}).values())
    n_test_seen = 0  # alternates public/private across strata, so small strata do not all favour public
    for (fixed, _), photos in sorted(strata.items()):
        photos.sort(key=lambda p: _order_key(seed, p))
        n = len(photos)
        if fixed == "test":
            n_test, n_val = n, 0
        elif fixed == "val":
            n_test, n_val = 0, n
        elif fixed == "train" and "test" in given_splits:  # a given train split still yields a validation split
            n_test, n_val = 0, (max(1, round(n * f_val / (1 - f_test))) if n >= 3 and f_val > 0 else 0)
        elif fixed == "train":  # no test folder: test (and val, without a val folder) come out of train
            n_test, n_val = _share(n, f_test), 0 if "val" in given_splits else _share(n, f_val)
        else:
            n_test, n_val = _share(n, f_test), _share(n, f_val)
        for i, photo in enumerate(photos):
            if i < n_test:
                out[photo] = ("test", "public" if n_test_seen % 2 == 0 else "private")
                n_test_seen += 1
            elif i < n_test + n_val:
                out[photo] = ("val", "")
            else:
                out[photo] = ("train", "")
    return {s.source: out[key(s.source)] for s in samples}


# --------------------------------------------------------------------------- manifest


def _fmt(v: float | int | None) -> str:
    if v is None:
        return ""
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def manifest_bytes(rows: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and set(rows[0]) != set(MANIFEST_FIELDS):
        raise DataError(f"{path}: not a trashlib manifest (columns {sorted(rows[0])})")
    return rows


def changed_sources(old_rows: Iterable[dict[str, str]], new_rows: Iterable[dict[str, str]]) -> list[str]:
    """Sources present in both manifests whose sha256 differs."""
    old = {r["source"]: r["sha256"] for r in old_rows}
    new = {r["source"]: r["sha256"] for r in new_rows}
    return sorted(s for s in old.keys() & new.keys() if old[s] != new[s])


def reference_manifest(root: Path) -> Path:
    """Where the committed manifest of a named real data set lives (data_manifest/<folder>.manifest.csv)."""
    return MANIFEST_DIR / f"{root.name}.manifest.csv"


# --------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides the prepared data; stored beside it and compared on reuse."""

    mapping: str = "taco"
    margin: float = 0.1
    cache_side: int = 128
    fit: str = "pad"
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def validate(self) -> None:
        if not 0 <= self.margin <= 2:
            raise DataError(f"margin must be in [0, 2], got {self.margin}")
        if not 16 <= self.cache_side <= 1024:
            raise DataError(f"cache_side must be in [16, 1024], got {self.cache_side}")
        if self.fit not in FITS:
            raise DataError(f"fit must be one of {FITS}, got {self.fit!r}")
        if self.max_pixels < 1:
            raise DataError(f"max_pixels must be positive, got {self.max_pixels}")


def _crop_photo(
    root: Path, source: str, samples: list[Sample], cfg: PrepareConfig
) -> tuple[
    str,
    list[tuple[Sample, tuple[int, int, int, int], np.ndarray]],
    list[tuple[str, str, str]],
    list[str],
    tuple[int, int] | None,
]:
    """Decode one photo once and cut all its crops; returns crops, skips and warnings (thread-safe)."""
    skips: list[tuple[str, str, str]] = []
    notes: list[str] = []
    try:
        path = safe_path(root, source)
        img = open_image(path, cfg.max_pixels)
    except DataError as exc:
        return source, [], [(source, "file_name", str(exc))], notes, None
    out = []
    for s in samples:
        if s.declared_size and s.declared_size != img.size:
            declared = f"{s.declared_size[0]}x{s.declared_size[1]}"
            note = f"{source}: declared size {declared} != decoded {img.size[0]}x{img.size[1]}"
            if note not in notes:
                notes.append(note)
        box = crop_box(s.bbox, img.size, cfg.margin)
        if box is None:
            skips.append(
                (
                    source,
                    f"annotation {s.ann_id}.bbox",
                    f"bbox {s.bbox} lies outside the {img.size[0]}x{img.size[1]} image",
                )
            )
            continue
        out.append((s, box, square_resize(img.crop(box), cfg.cache_side, cfg.fit)))
    return source, out, skips, notes, img.size


def prepare_dataset(
    source: str | Path,
    out_dir: str | Path,
    config: PrepareConfig = PrepareConfig(),
    progress: bool = True,
    threads: int = 2,
) -> PreparedData:
    """Read a COCO or ImageFolder source, crop, split, and write manifest, crop cache and report to out_dir.

    Reuses the cache when the sources (by sha256) and the config are unchanged.
    """
    from tqdm import tqdm

    config.validate()
    src = Path(source).resolve()
    fmt = detect_format(src)
    root = src.parent if src.is_file() else src
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = DataReport()
    given: dict[str, str] = {}
    if fmt == "coco":
        mapping = load_mapping(config.mapping)
        samples = read_coco(src if src.is_file() else src / "annotations.json", mapping, report)
        classes = list(mapping.classes)
        root = coco_image_root(root, [s.source for s in samples])
    else:
        samples, given, classes = read_imagefolder(root, report)
        mapping = None

    by_photo: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_photo[s.source].append(s)
    photos = sorted(by_photo)
    hashes: dict[str, str] = {}
    for p in photos:
        try:
            path = safe_path(root, p)
            check_regular_file(path)
            hashes[p] = sha256_file(path)
        except (DataError, OSError):
            hashes[p] = ""  # reported by _crop_photo below

    meta = {
        "format": fmt,
        "source_root": str(root),
        "source_name": root.name,
        "mapping": mapping.name if mapping else None,
        "config": asdict(config),
        "classes": classes,
        "sources_sha256": hashlib.sha256("".join(f"{p}:{hashes[p]}\n" for p in photos).encode()).hexdigest(),
    }
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as they come back from dataset.json
    cached = _load_if_current(out, meta)
    if cached is not None:
        return cached

    old_manifest = out / "manifest.csv"
    results: dict[str, tuple] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = pool.map(lambda p: _crop_photo(root, p, by_photo[p], config), photos)
        for res in tqdm(futures, total=len(photos), desc="crops", disable=not bars_enabled(progress), leave=False):
            results[res[0]] = res
    kept: list[tuple[Sample, tuple[int, int, int, int], np.ndarray, tuple[int, int]]] = []
    for p in photos:
        _, crops, skips, notes, size = results[p]
        for f, fld, why in skips:
            report.skip(f, fld, why)
        report.warnings.extend(notes)
        kept.extend((s, box, arr, size) for s, box, arr in crops)

    if not kept:  # nothing to train on: say so, keeping the list of what was skipped and why
        (out / "dataset.json").unlink(missing_ok=True)  # no stale cache may pass for this data
        atomic_write_json(out / "data_report.json", asdict(report))
        raise DataError(
            f"{src}: no usable samples ({len(samples)} found, {len(report.skipped)} inputs skipped; "
            f"the reasons are in {out / 'data_report.json'})"
        )
    present = Counter(s.label for s, *_ in kept)
    for c in classes:
        if present[c] == 0 and c not in report.empty_classes:
            report.empty_classes.append(c)
            report.warnings.append(f"class {c!r} has no samples")
    splits = assign_splits([s for s, *_ in kept], config.fractions, config.seed, given, same_photo(hashes, report))
    if not any(split == "train" for split, _ in splits.values()):
        raise DataError(f"{src}: no photo is left for training (splits {sorted({v[0] for v in splits.values()})})")

    order = sorted(range(len(kept)), key=lambda i: (kept[i][0].source, kept[i][0].ann_id or 0))
    rows: list[dict[str, str]] = []
    for new_id, i in enumerate(order):
        s, box, _, size = kept[i]
        split, subset = splits[s.source]
        bx = s.bbox or (None, None, None, None)
        rows.append(
            {
                "sample_id": str(new_id),
                "source": s.source,
                "sha256": hashes[s.source],
                "src_width": str(size[0]),
                "src_height": str(size[1]),
                "image_id": _fmt(s.image_id),
                "ann_id": _fmt(s.ann_id),
                "category": s.category,
                "label": s.label,
                "bbox_x": _fmt(bx[0]),
                "bbox_y": _fmt(bx[1]),
                "bbox_w": _fmt(bx[2]),
                "bbox_h": _fmt(bx[3]),
                "crop_x0": str(box[0]),
                "crop_y0": str(box[1]),
                "crop_x1": str(box[2]),
                "crop_y1": str(box[3]),
                "split": split,
                "subset": subset,
            }
        )
    crops = (
        np.stack([kept[i][2] for i in order])
        if order
        else np.zeros((0, config.cache_side, config.cache_side, 3), np.uint8)
    )

    if old_manifest.is_file():
        report.changed_sources = changed_sources(read_manifest(old_manifest), rows)
    ref = reference_manifest(root)
    if ref.is_file():
        report.changed_sources = sorted(set(report.changed_sources) | set(changed_sources(read_manifest(ref), rows)))
    for changed in report.changed_sources:
        report.warnings.append(f"source file changed since the last manifest: {changed}")

    manifest = manifest_bytes(rows)
    meta["manifest_sha256"] = hashlib.sha256(manifest).hexdigest()
    meta["n_samples"] = len(rows)
    meta["counts"] = split_counts(rows, classes)
    buf = io.BytesIO()
    np.save(buf, crops, allow_pickle=False)
    meta["crops_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    atomic_write_bytes(out / "crops.npy", buf.getvalue())
    atomic_write_bytes(out / "manifest.csv", manifest)
    atomic_write_json(out / "data_report.json", asdict(report))
    atomic_write_json(out / "dataset.json", meta)  # written last: its presence marks a complete cache
    return PreparedData(out, classes, rows, crops, meta, asdict(report))


def _load_if_current(out: Path, meta: dict[str, Any]) -> PreparedData | None:
    """The prepared data in out, if it was made from the same sources and config."""
    try:
        old = json.loads((out / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if any(old.get(k) != v for k, v in meta.items() if k != "source_root"):
        return None
    try:
        return load_prepared(out)  # checks the manifest and the crop cache against their recorded sha256
    except (OSError, ValueError, DataError):
        return None


def load_prepared(data_dir: str | Path) -> PreparedData:
    """Open a prepared data set (written by prepare_dataset) without touching the sources."""
    d = Path(data_dir)
    try:
        meta = json.loads((d / "dataset.json").read_text())
        report = json.loads((d / "data_report.json").read_text())
    except FileNotFoundError as exc:
        raise DataError(
            f"{d} holds no prepared data set ({exc.filename} missing): run notebook 00 or prepare_dataset"
        ) from None
    for name, key in (("manifest.csv", "manifest_sha256"), ("crops.npy", "crops_sha256")):
        if key in meta and sha256_file(d / name) != meta[key]:
            raise DataError(
                f"{d / name} does not match the sha256 recorded in {d / 'dataset.json'}: the cache is corrupt or "
                f"was edited; prepare the data again (rerun notebook 00)"
            )
    rows = read_manifest(d / "manifest.csv")
    crops = np.load(d / "crops.npy", mmap_mode="r", allow_pickle=False)
    if len(crops) != len(rows):
        raise DataError(f"{d}: crops.npy has {len(crops)} crops but manifest.csv {len(rows)} rows")
    return PreparedData(d, list(meta["classes"]), rows, crops, meta, report)


def split_counts(rows: list[dict[str, str]], classes: list[str]) -> dict[str, dict[str, int]]:
    """Per split (and test public/private), per class sample counts."""
    counts: dict[str, dict[str, int]] = {}
    for key in ("train", "val", "test", "test/public", "test/private"):
        split, _, subset = key.partition("/")
        c = Counter(r["label"] for r in rows if r["split"] == split and (not subset or r["subset"] == subset))
        counts[key] = {cls: c.get(cls, 0) for cls in classes}
    return counts
