"""Data layer: mapping, formats, crops, splits, manifest, cache, and every kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TACO_SAMPLE, TRASHNET, needs, six_class_photos, solid_jpeg
from PIL import Image

from trashlib.data import (
    DataError,
    PrepareConfig,
    assign_splits,
    crop_box,
    detect_format,
    load_mapping,
    load_prepared,
    open_image,
    prepare_dataset,
    read_manifest,
    safe_path,
)

TACO_NAMES = [
    "Aluminium foil",
    "Battery",
    "Aluminium blister pack",
    "Carded blister pack",
    "Other plastic bottle",
    "Clear plastic bottle",
    "Glass bottle",
    "Plastic bottle cap",
    "Metal bottle cap",
    "Broken glass",
    "Food Can",
    "Aerosol",
    "Drink can",
    "Toilet tube",
    "Other carton",
    "Egg carton",
    "Drink carton",
    "Corrugated carton",
    "Meal carton",
    "Pizza box",
    "Paper cup",
    "Disposable plastic cup",
    "Foam cup",
    "Glass cup",
    "Other plastic cup",
    "Food waste",
    "Glass jar",
    "Plastic lid",
    "Metal lid",
    "Other plastic",
    "Magazine paper",
    "Tissues",
    "Wrapping paper",
    "Normal paper",
    "Paper bag",
    "Plastified paper bag",
    "Plastic film",
    "Six pack rings",
    "Garbage bag",
    "Other plastic wrapper",
    "Single-use carrier bag",
    "Polypropylene bag",
    "Crisp packet",
    "Spread tub",
    "Tupperware",
    "Disposable food container",
    "Foam food container",
    "Other plastic container",
    "Plastic glooves",
    "Plastic utensils",
    "Pop tab",
    "Rope & strings",
    "Scrap metal",
    "Shoe",
    "Squeezable tube",
    "Plastic straw",
    "Paper straw",
    "Styrofoam piece",
    "Unlabeled litter",
    "Cigarette",
]
SIX = ("Metal", "Paper", "Paperpack", "Plastic", "Plasticbag", "Styrofoam")


def skipped_fields(d) -> list[tuple[str, str]]:
    return [(s["file"], s["field"]) for s in d.report["skipped"]]


# --------------------------------------------------------------------------- mapping


def test_taco_mapping_covers_exactly_tacos_categories():
    m = load_mapping("taco")
    assert sorted(m.table) == sorted(TACO_NAMES) and len(m.table) == 60
    assert m.classes == SIX
    for name, target in m.table.items():
        assert target is None or target in SIX
        if target is None:
            assert m.reasons.get(name), f"{name} excluded without a reason"
    assert m.table["Drink carton"] == "Paperpack" and m.table["Foam cup"] == "Styrofoam"
    for excluded in ("Cigarette", "Glass bottle", "Battery", "Food waste"):
        assert m.table[excluded] is None
    assert set(m.table.values()) - {None} == set(SIX)


@needs(TACO_SAMPLE)
def test_taco_mapping_matches_the_real_annotation_file():
    doc = json.loads((TACO_SAMPLE / "annotations.json").read_text())
    assert sorted(c["name"] for c in doc["categories"]) == sorted(load_mapping("taco").table)


def test_recycle10_mapping():
    m = load_mapping("recycle10")
    assert sorted(m.table) == sorted(
        [
            "General trash",
            "Paper",
            "Paper pack",
            "Metal",
            "Glass",
            "Plastic",
            "Styrofoam",
            "Plastic bag",
            "Battery",
            "Clothing",
        ]
    )
    assert m.table["Paper pack"] == "Paperpack" and m.table["Plastic bag"] == "Plasticbag"
    assert m.table["Glass"] is None and m.table["Clothing"] is None


def test_bad_mapping_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_mapping(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"classes": ["A"], "categories": {"x": {"class": "B"}}}')
    with pytest.raises(DataError, match=r"categories\['x'\].class='B'"):
        load_mapping(bad)
    bad.write_text('{"classes": ["A"], "categories": {"x": {"class": null}}}')
    with pytest.raises(DataError, match="without a 'reason'"):
        load_mapping(bad)


def test_coco_category_missing_from_mapping_names_it(coco_factory):
    root, doc = coco_factory(six_class_photos(6))
    doc["categories"].append({"id": 99, "name": "General trash"})
    (root / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="General trash.*not in mapping"):
        prepare_dataset(root, root.parent / "out", progress=False)
    # the wrong mapping for the data set names the first category it lacks
    with pytest.raises(DataError, match="Aluminium foil.*not in mapping .recycle10"):
        prepare_dataset(root, root.parent / "out", PrepareConfig(mapping="recycle10"), progress=False)


# --------------------------------------------------------------------------- formats, crops, cache


def test_detect_format(tmp_path, coco_factory):
    root, _ = coco_factory(six_class_photos(2))
    assert detect_format(root) == "coco" and detect_format(root / "annotations.json") == "coco"
    solid_jpeg(tmp_path / "folder" / "cat" / "a.jpg")
    assert detect_format(tmp_path / "folder") == "imagefolder"
    with pytest.raises(DataError, match="does not exist"):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither annotations.json"):
        detect_format(tmp_path / "empty")


def test_coco_crops_are_square_clipped_and_coloured(coco_factory, tmp_path):
    root, _ = coco_factory(
        [
            (
                "a.jpg",
                (120, 90),
                [
                    ("Drink can", [10.0, 20.0, 40.0, 20.0]),
                    ("Plastic film", [100.0, 70.0, 40.0, 40.0]),
                    ("Cigarette", [0.0, 0.0, 5.0, 5.0]),
                ],
            )
        ]
    )
    d = prepare_dataset(root, tmp_path / "out", PrepareConfig(margin=0.0, cache_side=32), progress=False)
    assert len(d.rows) == 2  # the cigarette is excluded by the mapping
    assert d.report["excluded_category_counts"] == {"Cigarette": 1}
    assert d.crops.shape == (2, 32, 32, 3) and d.crops.dtype == np.uint8
    can, film = d.rows
    assert (can["label"], film["label"]) == ("Metal", "Plasticbag")
    assert (int(film["crop_x1"]), int(film["crop_y1"])) == (120, 90)  # clipped to the image
    centre = d.crops[0][16, 16]
    assert abs(int(centre[0]) - 200) < 25 and centre[1] < 60  # the red can, not the background
    assert tuple(d.crops[0][0, 16]) == (114, 114, 114)  # a 40x20 box padded to square with grey


def test_stretch_fit_uses_every_pixel(coco_factory, tmp_path):
    root, _ = coco_factory([("a.jpg", (120, 90), [("Drink can", [0.0, 0.0, 120.0, 45.0])])])
    d = prepare_dataset(root, tmp_path / "out", PrepareConfig(margin=0.0, cache_side=32, fit="stretch"), progress=False)
    assert abs(int(d.crops[0][0, 16, 0]) - 200) < 25  # no grey band: the red box fills the square
    with pytest.raises(DataError, match="fit must be one of"):
        prepare_dataset(root, tmp_path / "out2", PrepareConfig(fit="crop"), progress=False)


def test_crop_box_margin_and_outside():
    assert crop_box((10, 10, 20, 20), (100, 100), 0.5) == (0, 0, 40, 40)
    assert crop_box((150, 150, 10, 10), (100, 100), 0.1) is None
    assert crop_box(None, (64, 48), 0.1) == (0, 0, 64, 48)


def test_exif_orientation_is_applied_before_cropping(tmp_path, coco_factory):
    # stored 60x40 landscape with a red left half; EXIF 6 (rotate 90 cw) shows a 40x60 portrait, red on top
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (220, 20, 20)
    arr[:, 30:] = (20, 20, 220)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    root, _doc = coco_factory([("r.jpg", (40, 60), [("Drink can", [0.0, 0.0, 40.0, 30.0])])], write_images=False)
    img.save(root / "r.jpg", exif=exif, quality=95)
    d = prepare_dataset(root, tmp_path / "out", PrepareConfig(margin=0.0, cache_side=16), progress=False)
    r, _g, b = d.crops[0][8, 8].astype(int)
    assert r > 150 and b < 100, "EXIF orientation was not applied before cropping"
    assert d.rows[0]["src_width"] == "40" and d.rows[0]["src_height"] == "60"


def test_imagefolder_classes_and_given_splits(tmp_path):
    for k, split in enumerate(("train", "test")):
        for cls, colour in (("glass", (0, 200, 0)), ("metal", (200, 200, 200))):
            for i in range(6):  # distinct photos: identical bytes would be one photo, kept in one split
                shade = tuple(max(0, c - 5 * i - 30 * k) for c in colour)
                solid_jpeg(tmp_path / "if" / split / cls / f"{i}.jpg", (50, 40), shade)
    d = prepare_dataset(tmp_path / "if", tmp_path / "out", PrepareConfig(cache_side=32), progress=False)
    assert d.classes == ["glass", "metal"]
    by_source = {r["source"]: r["split"] for r in d.rows}
    assert all(v == "test" for k, v in by_source.items() if k.startswith("test/"))
    assert {v for k, v in by_source.items() if k.startswith("train/")} == {"train", "val"}
    assert {r["subset"] for r in d.rows if r["split"] == "test"} == {"public", "private"}


def test_prepared_cache_is_reused_and_loadable(coco_factory, tmp_path):
    root, _ = coco_factory(six_class_photos(12))
    out = tmp_path / "out"
    d1 = prepare_dataset(root, out, progress=False)
    stamp = (out / "crops.npy").stat().st_mtime_ns
    d2 = prepare_dataset(root, out, progress=False)
    assert (out / "crops.npy").stat().st_mtime_ns == stamp, "an unchanged source re-cropped"
    assert d2.rows == d1.rows
    loaded = load_prepared(out)
    x, y = loaded.split("train")
    assert x.shape[0] == y.shape[0] > 0 and x.shape[1:] == (128, 128, 3)
    with pytest.raises(DataError, match="split must be"):
        loaded.split("holdout")
    with pytest.raises(DataError, match="no prepared data"):
        load_prepared(tmp_path / "nothing")


# --------------------------------------------------------------------------- splits and manifest


def test_splits_keep_photos_whole_and_are_deterministic(coco_factory, tmp_path):
    root, _ = coco_factory(six_class_photos(60))
    d = prepare_dataset(root, tmp_path / "a", PrepareConfig(seed=3), progress=False)
    splits_per_photo: dict[str, set[str]] = {}
    for r in d.rows:
        splits_per_photo.setdefault(r["source"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_per_photo.values())
    for cls in SIX:  # stratified: every class in every split
        assert all(d.meta["counts"][s][cls] > 0 for s in ("train", "val", "test"))
    pub, priv = d.meta["counts"]["test/public"], d.meta["counts"]["test/private"]
    assert abs(sum(pub.values()) - sum(priv.values())) <= 4
    prepare_dataset(root, tmp_path / "b", PrepareConfig(seed=3), progress=False)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    d3 = prepare_dataset(root, tmp_path / "c", PrepareConfig(seed=4), progress=False)
    assert [r["split"] for r in d3.rows] != [r["split"] for r in d.rows]


def test_split_fractions_are_validated():
    with pytest.raises(DataError, match="fractions"):
        assign_splits([], (0.5, 0.5, 0.5), 0)
    with pytest.raises(DataError, match="fractions"):
        assign_splits([], (1.2, -0.1, -0.1), 0)


def test_manifest_records_sha256_and_a_changed_source_is_reported(coco_factory, tmp_path):
    root, _ = coco_factory(six_class_photos(6))
    out = tmp_path / "out"
    d = prepare_dataset(root, out, progress=False)
    rows = read_manifest(out / "manifest.csv")
    assert all(len(r["sha256"]) == 64 for r in rows)
    solid_jpeg(root / "img/002.jpg", (120, 90), (0, 0, 0))  # the same name, other pixels
    d2 = prepare_dataset(root, out, progress=False)
    assert d2.report["changed_sources"] == ["img/002.jpg"]
    assert any("img/002.jpg" in w for w in d2.report["warnings"])
    assert d.meta["manifest_sha256"] != d2.meta["manifest_sha256"]


# --------------------------------------------------------------------------- bad inputs: skipped and listed


def test_missing_truncated_and_non_image_files_are_skipped_and_listed(coco_factory, tmp_path):
    photos = six_class_photos(6)
    root, _ = coco_factory(photos)
    (root / "img/000.jpg").unlink()  # missing
    data = (root / "img/001.jpg").read_bytes()
    (root / "img/001.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "img/002.jpg").write_text("this is not an image")  # non-image file
    d = prepare_dataset(root, tmp_path / "out", progress=False)
    reasons = {s["file"]: s["reason"] for s in d.report["skipped"]}
    assert "missing" in reasons["img/000.jpg"]
    assert "truncated" in reasons["img/001.jpg"] or "corrupt" in reasons["img/001.jpg"]
    assert "not a decodable image" in reasons["img/002.jpg"]
    assert len(d.rows) == 6, "valid samples were lost"
    assert {r["source"] for r in d.rows} == {"img/003.jpg", "img/004.jpg", "img/005.jpg"}


@pytest.mark.parametrize(
    "bbox, reason",
    [
        ([500.0, 500.0, 10.0, 10.0], "outside"),
        ([10.0, 10.0, 0.0, 5.0], "zero or negative"),
        ([10.0, 10.0, -4.0, 5.0], "zero or negative"),
        ([float("nan"), 10.0, 5.0, 5.0], "finite"),
        ([1e309, 10.0, 5.0, 5.0], "finite"),
        ([10.0, 10.0, 5.0], "four"),
        ("10,10,5,5", "four"),
    ],
)
def test_bad_bboxes_are_skipped(coco_factory, tmp_path, bbox, reason):
    root, doc = coco_factory(six_class_photos(6))
    doc["annotations"][0]["bbox"] = bbox
    (root / "annotations.json").write_text(json.dumps(doc))
    d = prepare_dataset(root, tmp_path / "out", progress=False)
    assert len(d.rows) == 11
    [skip] = d.report["skipped"]
    assert "bbox" in skip["field"] and reason in skip["reason"] and skip["file"] == "img/000.jpg"


def test_unknown_category_and_image_ids_and_duplicate_annotations(coco_factory, tmp_path):
    root, doc = coco_factory(six_class_photos(6))
    doc["annotations"][0]["category_id"] = 999
    doc["annotations"][1]["image_id"] = 555
    doc["annotations"].append(dict(doc["annotations"][2]))  # duplicate annotation id
    (root / "annotations.json").write_text(json.dumps(doc))
    d = prepare_dataset(root, tmp_path / "out", progress=False)
    fields = [s["field"] for s in d.report["skipped"]]
    assert "annotations[0].category_id" in fields and "annotations[1].image_id" in fields
    assert "annotations[12].id" in fields
    assert len(d.rows) == 10


def test_duplicate_image_ids_raise_naming_the_field(coco_factory, tmp_path):
    root, doc = coco_factory(six_class_photos(3))
    doc["images"][2]["id"] = doc["images"][0]["id"]
    (root / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotations.json: images\[2\].id=0 is duplicated"):
        prepare_dataset(root, tmp_path / "out", progress=False)


def test_invalid_json_and_wrong_structure_raise(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="annotations.json: cannot read"):
        prepare_dataset(tmp_path / "c", tmp_path / "out", progress=False)
    (tmp_path / "c" / "annotations.json").write_text('{"images": {}, "annotations": [], "categories": []}')
    with pytest.raises(DataError, match="'images' must be a list"):
        prepare_dataset(tmp_path / "c", tmp_path / "out", progress=False)


@pytest.mark.parametrize("file_name", ["/etc/passwd", "../outside.jpg", "img/../../outside.jpg"])
def test_file_names_that_leave_the_root_are_refused(coco_factory, tmp_path, file_name):
    solid_jpeg(tmp_path / "outside.jpg")
    root, doc = coco_factory(six_class_photos(6))
    doc["images"][0]["file_name"] = file_name
    (root / "annotations.json").write_text(json.dumps(doc))
    d = prepare_dataset(root, tmp_path / "out", progress=False)
    [skip] = d.report["skipped"]
    assert skip["file"] == file_name and ("absolute" in skip["reason"] or "out of the data root" in skip["reason"])
    assert len(d.rows) == 10


def test_symlink_out_of_the_root_is_refused(coco_factory, tmp_path):
    outside = solid_jpeg(tmp_path / "secret.jpg")
    root, _doc = coco_factory(six_class_photos(6))
    (root / "img/000.jpg").unlink()
    os.symlink(outside, root / "img/000.jpg")
    d = prepare_dataset(root, tmp_path / "out", progress=False)
    assert [s["file"] for s in d.report["skipped"]] == ["img/000.jpg"]
    with pytest.raises(DataError, match="out of the data root"):
        safe_path(root, "img/000.jpg")


def test_decompression_bomb_is_refused(coco_factory, tmp_path):
    root, doc = coco_factory(six_class_photos(6))
    Image.new("L", (4000, 4000)).save(root / "img/000.png")  # 16 MP, a few KB on disk
    doc["images"][0]["file_name"] = "img/000.png"
    (root / "annotations.json").write_text(json.dumps(doc))
    d = prepare_dataset(root, tmp_path / "out", PrepareConfig(max_pixels=1_000_000), progress=False)
    [skip] = d.report["skipped"]
    assert "max_pixels" in skip["reason"] and skip["file"] == "img/000.png"
    assert len(d.rows) == 10


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "I;16", "P", "1"])
def test_grayscale_cmyk_alpha_and_16_bit_images_become_rgb(tmp_path, mode):
    if mode == "I;16":
        img = Image.fromarray(np.full((20, 30), 40000, np.uint16))
        path = tmp_path / "x.png"
    else:
        img = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)
        path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    img.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":
        assert np.asarray(out)[0, 0, 0] == round(40000 / 65535 * 255)  # scaled, not clipped to 255
    if mode == "RGBA":
        assert np.asarray(out)[0, 0].tolist() == [200, 100, 50]


def test_empty_classes_are_reported(coco_factory, tmp_path):
    photos = [p for p in six_class_photos(12) if p[2][0][0] != "Drink carton"]
    root, _ = coco_factory(photos)
    d = prepare_dataset(root, tmp_path / "out", progress=False)
    assert d.report["empty_classes"] == ["Paperpack"]
    assert d.classes == list(SIX)  # label indices stay stable
    (tmp_path / "if" / "cardboard").mkdir(parents=True)
    for i in range(3):
        solid_jpeg(tmp_path / "if" / "glass" / f"{i}.jpg")
        solid_jpeg(tmp_path / "if" / "metal" / f"{i}.jpg")
    (tmp_path / "if" / "metal" / "notes.txt").write_text("x")
    d2 = prepare_dataset(tmp_path / "if", tmp_path / "out2", progress=False)
    assert d2.classes == ["glass", "metal"] and d2.report["empty_classes"] == ["cardboard"]
    assert skipped_fields(d2) == [("metal/notes.txt", "file")]


def test_prepare_config_is_validated(coco_factory, tmp_path):
    root, _ = coco_factory(six_class_photos(2))
    for cfg, name in (
        (PrepareConfig(margin=-1), "margin"),
        (PrepareConfig(cache_side=4), "cache_side"),
        (PrepareConfig(max_pixels=0), "max_pixels"),
    ):
        with pytest.raises(DataError, match=name):
            prepare_dataset(root, tmp_path / "out", cfg, progress=False)


# --------------------------------------------------------------------------- real data


@needs(TACO_SAMPLE)
def test_taco_sample_prepares_and_matches_the_committed_manifest(tmp_path):
    d = prepare_dataset(TACO_SAMPLE, tmp_path / "taco", progress=False)
    assert len(d.rows) == 401 and d.report["skipped"] == [] and d.report["changed_sources"] == []
    committed = Path(__file__).resolve().parents[1] / "data_manifest" / "taco-sample.manifest.csv"
    assert (tmp_path / "taco" / "manifest.csv").read_bytes() == committed.read_bytes()


@needs(TRASHNET)
def test_trashnet_prepares_and_matches_the_committed_manifest(tmp_path):
    d = prepare_dataset(TRASHNET, tmp_path / "tn", progress=False)
    assert len(d.rows) == 2527 and d.classes == ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    committed = Path(__file__).resolve().parents[1] / "data_manifest" / "trashnet-256.manifest.csv"
    assert (tmp_path / "tn" / "manifest.csv").read_bytes() == committed.read_bytes()
