"""Shared fixtures: tiny COCO and ImageFolder data sets written on the fly, and the real-data location."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
TACO_SAMPLE = SHARED_DATA / "taco-sample"
TRASHNET = SHARED_DATA / "trashnet-256"

COLOURS = {
    "Drink can": (200, 30, 30),
    "Normal paper": (240, 240, 230),
    "Drink carton": (30, 160, 30),
    "Clear plastic bottle": (40, 80, 220),
    "Plastic film": (200, 200, 40),
    "Styrofoam piece": (250, 250, 250),
    "Cigarette": (120, 80, 20),
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tests share two cores with whatever else runs: one torch thread each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.is_dir(), reason=f"real data not present at {path}")


def solid_jpeg(
    path: Path,
    size: tuple[int, int] = (120, 90),
    colour: tuple[int, int, int] = (90, 90, 90),
    boxes: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]] = (),
) -> Path:
    """A JPEG with a background colour and filled rectangles (x0, y0, x1, y1) in given colours."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = colour
    for (x0, y0, x1, y1), c in boxes:
        arr[y0:y1, x0:x1] = c
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


def taco_categories() -> list[dict[str, Any]]:
    doc = json.loads((PROJECT_ROOT / "data_manifest" / "taco_to_6class.json").read_text())
    return [{"id": i, "name": n, "supercategory": n} for i, n in enumerate(doc["categories"])]


def cat_id(name: str) -> int:
    return next(c["id"] for c in taco_categories() if c["name"] == name)


@pytest.fixture
def coco_factory(tmp_path: Path):
    """Builds a COCO folder: images as (file_name, size, [(category, bbox)]) and returns (root, doc)."""

    def make(
        photos: list[tuple[str, tuple[int, int], list[tuple[str, list[float]]]]],
        root: Path | None = None,
        write_images: bool = True,
    ) -> tuple[Path, dict[str, Any]]:
        root = root or tmp_path / "coco"
        images, anns = [], []
        for img_id, (fn, size, objects) in enumerate(photos):
            boxes = [
                ((int(b[0]), int(b[1]), int(b[0] + b[2]), int(b[1] + b[3])), COLOURS.get(c, (10, 10, 10)))
                for c, b in objects
            ]
            if write_images:  # a background shade of its own: distinct photos, never byte-identical copies
                solid_jpeg(root / fn, size, (90, 90 + img_id % 64, 90), boxes=boxes)
            images.append({"id": img_id, "file_name": fn, "width": size[0], "height": size[1]})
            for c, b in objects:
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": img_id,
                        "category_id": cat_id(c),
                        "bbox": b,
                        "area": b[2] * b[3],
                        "iscrowd": 0,
                    }
                )
        doc = {"images": images, "annotations": anns, "categories": taco_categories()}
        root.mkdir(parents=True, exist_ok=True)
        (root / "annotations.json").write_text(json.dumps(doc))
        return root, doc

    return make


def six_class_photos(n: int = 24) -> list[tuple[str, tuple[int, int], list[tuple[str, list[float]]]]]:
    """n photos, each with two objects of one class (so stratification by photo is exact)."""
    cats = ["Drink can", "Normal paper", "Drink carton", "Clear plastic bottle", "Plastic film", "Styrofoam piece"]
    return [
        (
            f"img/{i:03d}.jpg",
            (120, 90),
            [(cats[i % 6], [5.0, 5.0, 40.0, 30.0]), (cats[i % 6], [60.0, 40.0, 30.0, 40.0])],
        )
        for i in range(n)
    ]
