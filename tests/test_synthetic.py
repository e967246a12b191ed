"""Tests for trashlib.synthetic, the workbook's embedded synthetic TACO-like data set."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trashlib.synthetic import make_synthetic_coco

# The six target classes and the TACO (id, name) pairs drawn for each, written out here
# independently of the module so that the test checks the module against the spec.
TARGET_SOURCES: dict[str, dict[int, str]] = {
    "Metal": {12: "Drink can", 10: "Food Can", 0: "Aluminium foil"},
    "Paper": {33: "Normal paper", 30: "Magazine paper", 34: "Paper bag"},
    "Paperpack": {16: "Drink carton"},
    "Plastic": {5: "Clear plastic bottle", 4: "Other plastic bottle", 21: "Disposable plastic cup"},
    "Plasticbag": {36: "Plastic film", 40: "Single-use carrier bag", 38: "Garbage bag"},
    "Styrofoam": {57: "Styrofoam piece", 22: "Foam cup", 46: "Foam food container"},
}
DISTRACTORS: dict[int, str] = {59: "Cigarette", 6: "Glass bottle"}
CLASS_OF_ID: dict[int, str] = {i: c for c, ids in TARGET_SOURCES.items() for i in ids}
DRAWN_NAMES: dict[int, str] = {i: n for ids in TARGET_SOURCES.values() for i, n in ids.items()}
DRAWN_NAMES |= DISTRACTORS
CLASSES = list(TARGET_SOURCES)
MANIFEST = Path(__file__).resolve().parents[1] / "data_manifest" / "taco_to_6class.json"


def _load(out_dir: Path) -> dict:
    return json.loads((out_dir / "annotations.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The default data set (200 images) and the seconds it took to generate."""
    out_dir = tmp_path_factory.mktemp("synthetic_default")
    start = time.perf_counter()
    make_synthetic_coco(out_dir)
    return out_dir, time.perf_counter() - start


def test_default_size_and_speed(default_set: tuple[Path, float]) -> None:
    out_dir, seconds = default_set
    data = _load(out_dir)
    print(f"default synthetic set: {len(data['annotations'])} objects in {seconds:.1f} s")
    assert len(data["images"]) == 200
    assert len(data["annotations"]) >= 600
    assert seconds < 30


def test_coco_layout(default_set: tuple[Path, float]) -> None:
    data = _load(default_set[0])
    assert list(data) == ["info", "licenses", "images", "annotations", "categories"]
    assert data["info"]["n_images"] == 200
    assert data["info"]["seed"] == 0
    assert data["info"]["image_size"] == [320, 240]
    image = data["images"][12]
    assert image == {"id": 12, "width": 320, "height": 240, "file_name": "images/000012.jpg"}
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for ann in data["annotations"]:
        assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} <= set(ann)
        assert ann["iscrowd"] == 0
        assert ann["area"] > 0


def test_categories_are_taco(default_set: tuple[Path, float]) -> None:
    data = _load(default_set[0])
    categories = {c["id"]: c for c in data["categories"]}
    assert sorted(categories) == list(range(60))
    assert len({c["name"] for c in data["categories"]}) == 60
    assert all(c["supercategory"] for c in data["categories"])
    for taco_id, name in DRAWN_NAMES.items():
        assert categories[taco_id]["name"] == name
    used = {a["category_id"] for a in data["annotations"]}
    assert used <= set(categories)
    assert used <= set(CLASS_OF_ID) | set(DISTRACTORS)


@pytest.mark.skipif(not MANIFEST.is_file(), reason="data_manifest/taco_to_6class.json absent")
def test_categories_follow_the_taco_mapping(default_set: tuple[Path, float]) -> None:
    """The names used map, through the project's TACO manifest, to the intended classes."""
    mapping = json.loads(MANIFEST.read_text(encoding="utf-8"))["categories"]
    data = _load(default_set[0])
    assert {c["name"] for c in data["categories"]} == set(mapping)
    names = {c["id"]: c["name"] for c in data["categories"]}
    for taco_id in {a["category_id"] for a in data["annotations"]}:
        assert mapping[names[taco_id]]["class"] == CLASS_OF_ID.get(taco_id)


def test_boxes_inside_images(default_set: tuple[Path, float]) -> None:
    data = _load(default_set[0])
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert w > 4 and h > 4
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert ann["area"] <= w * h


def test_images_decode_to_declared_size(default_set: tuple[Path, float]) -> None:
    out_dir = default_set[0]
    data = _load(out_dir)
    for image in data["images"]:
        with Image.open(out_dir / image["file_name"]) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (image["width"], image["height"])
    assert len(list((out_dir / "images").iterdir())) == len(data["images"])


def test_class_mix(default_set: tuple[Path, float]) -> None:
    """All six classes appear, imbalanced like TACO, with a few excluded distractors."""
    data = _load(default_set[0])
    counts = Counter(CLASS_OF_ID.get(a["category_id"], "excluded") for a in data["annotations"])
    total = sum(counts.values())
    print("objects per class:", dict(counts))
    assert set(CLASSES) <= set(counts)
    assert all(counts[c] >= 0.05 * total for c in CLASSES)
    for rare in ("Paperpack", "Styrofoam"):
        assert counts[rare] < min(counts["Plastic"], counts["Plasticbag"])
    assert 0.01 * total <= counts["excluded"] <= 0.1 * total


def test_deterministic(tmp_path: Path) -> None:
    first = make_synthetic_coco(tmp_path / "a", n_images=6, seed=7)
    second = make_synthetic_coco(tmp_path / "b", n_images=6, seed=7)
    assert (first / "annotations.json").read_bytes() == (second / "annotations.json").read_bytes()
    for image in _load(first)["images"]:
        name = image["file_name"]
        assert (first / name).read_bytes() == (second / name).read_bytes()
    other = make_synthetic_coco(tmp_path / "c", n_images=6, seed=8)
    assert _load(other)["annotations"] != _load(first)["annotations"]


def test_more_images_extend_the_same_set(tmp_path: Path) -> None:
    small = make_synthetic_coco(tmp_path / "small", n_images=2, seed=5)
    large = make_synthetic_coco(tmp_path / "large", n_images=4, seed=5)
    for name in ("images/000000.jpg", "images/000001.jpg"):
        assert (small / name).read_bytes() == (large / name).read_bytes()


def test_idempotent(tmp_path: Path) -> None:
    out_dir = make_synthetic_coco(tmp_path, n_images=3, seed=1)
    files = [out_dir / "annotations.json", *sorted((out_dir / "images").iterdir())]
    before = [f.stat().st_mtime_ns for f in files]
    time.sleep(0.01)
    assert make_synthetic_coco(tmp_path, n_images=3, seed=1) == out_dir
    assert [f.stat().st_mtime_ns for f in files] == before


def test_other_arguments_regenerate(tmp_path: Path) -> None:
    make_synthetic_coco(tmp_path, n_images=4, seed=1)
    make_synthetic_coco(tmp_path, n_images=2, seed=1)
    data = _load(tmp_path)
    assert data["info"]["n_images"] == 2
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000000.jpg", "000001.jpg"]


def test_damaged_annotations_are_rebuilt(tmp_path: Path) -> None:
    make_synthetic_coco(tmp_path, n_images=2, seed=1)
    good = (tmp_path / "annotations.json").read_bytes()
    (tmp_path / "annotations.json").write_bytes(good[: len(good) // 2])
    make_synthetic_coco(tmp_path, n_images=2, seed=1)
    assert (tmp_path / "annotations.json").read_bytes() == good
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"n_images": 0}, "n_images"),
        ({"n_images": -3}, "n_images"),
        ({"seed": -1}, "seed"),
        ({"image_size": (0, 240)}, "image_size"),
        ({"image_size": (320, -5)}, "image_size"),
        ({"image_size": (320,)}, "image_size"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        make_synthetic_coco(tmp_path, **kwargs)
    assert not (tmp_path / "annotations.json").exists()


def _crops(out_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every target-class object as a 24x24 RGB crop of its box, its class index, its image."""
    data = _load(out_dir)
    files = {image["id"]: out_dir / image["file_name"] for image in data["images"]}
    images: dict[int, Image.Image] = {}
    features, labels, groups = [], [], []
    for ann in data["annotations"]:
        if ann["category_id"] not in CLASS_OF_ID:
            continue
        if ann["image_id"] not in images:
            images[ann["image_id"]] = Image.open(files[ann["image_id"]]).convert("RGB")
        x, y, w, h = ann["bbox"]
        crop = images[ann["image_id"]].crop((x, y, x + w, y + h)).resize((24, 24))
        features.append(np.asarray(crop, np.float32).ravel() / 255.0)
        labels.append(CLASSES.index(CLASS_OF_ID[ann["category_id"]]))
        groups.append(ann["image_id"])
    return np.array(features), np.array(labels), np.array(groups)


def test_learnable_but_not_trivial(default_set: tuple[Path, float]) -> None:
    """Tiny models on 24x24 box crops, split 70/30 by image: well above chance (macro-F1
    about 1/6), yet a linear model on the pixels is far from perfect.

    Objects lie at any angle, which a linear model on raw pixels cannot undo, so it stays
    near 0.3; the lower bound is checked with a small RBF support-vector machine.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    features, labels, groups = _crops(default_set[0])
    train = groups < int(0.7 * (groups.max() + 1))
    scores = {}
    with threadpool_limits(limits=1):
        for name, model in {
            "logistic regression": LogisticRegression(C=0.01, max_iter=1000, class_weight="balanced"),
            "rbf svm": SVC(C=3.0, class_weight="balanced"),
        }.items():
            pipeline = make_pipeline(StandardScaler(), model).fit(features[train], labels[train])
            predicted = pipeline.predict(features[~train])
            scores[name] = f1_score(labels[~train], predicted, average="macro")
            print(f"{name}: macro-F1 {scores[name]:.3f} on {int((~train).sum())} held-out objects")
    assert scores["rbf svm"] > 0.35
    assert scores["logistic regression"] < 0.95
