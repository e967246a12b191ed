"""predict and evaluate: the model card's preprocessing, verified loading, decoding (exact and draft), bad inputs,
the CSV and competition outputs, no torch on the predict path, and evaluate's F1 against the workbook's."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, TACO_SAMPLE, TRASHNET, needs, six_class_photos, solid_jpeg
from PIL import Image, ImageOps
from test_quantize import Small

from trashlib import predict as P
from trashlib.cli import main as cli
from trashlib.data import PrepareConfig, load_mapping, prepare_dataset, square_resize
from trashlib.files import sha256_file
from trashlib.models import ModelSpec
from trashlib.quantize import OrtModel, export_onnx, model_card, write_model_card

CLASSES = list(load_mapping("taco").classes)  # Metal, Paper, Paperpack, Plastic, Plasticbag, Styrofoam
CACHE, SIZE = 48, 32
SPEC = ModelSpec("small", tuple(CLASSES), SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CONFIG = PrepareConfig(cache_side=CACHE)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """A winner-like folder: a small random conv net exported with a full card (and macs)."""
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp("winner")
    card = model_card(SPEC, {"macs": 12345}, prepare=CONFIG)
    path = export_onnx(model, SPEC, folder / "model.onnx", card)
    write_model_card(folder / "model_card.json", card, path)
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def photo(path: Path, size=(120, 90), colour=(200, 30, 30)) -> Path:
    return solid_jpeg(path, size, colour=(90, 90, 90), boxes=[((20, 10, 90, 70), colour)])


# --------------------------------------------------------------------------- the card


def test_the_card_carries_the_whole_preprocessing(shipped):
    card = json.loads((shipped / "model_card.json").read_text())
    pre = card["preprocessing"]
    assert pre["crop"]["margin"] == 0.1 and pre["fit"] == "pad" and pre["pad_color"] == [114, 114, 114]
    assert pre["resize"] == {**pre["resize"], "size": CACHE, "filter": "bilinear", "reducing_gap": 2.0}
    assert pre["resize_to_model"]["size"] == SIZE and pre["resize_to_model"]["antialias"] is True
    assert pre["decode"]["exif_orientation"] is True and pre["scale"] == 1 / 255
    assert (pre["layout"], pre["dtype"], pre["channel_order"]) == ("NCHW", "float32", "RGB")
    assert pre["class_names"] == CLASSES and pre["mean"] == list(SPEC.mean) and pre["std"] == list(SPEC.std)
    assert card["onnx_sha256"] == sha256_file(shipped / "model.onnx")
    same = model_card(SPEC, prepare={**CONFIG.__dict__, "cache_side": SIZE})["preprocessing"]
    assert same["resize_to_model"] is None and P.Preprocessing.from_card(same).image_size == SIZE
    assert "preprocessing" not in model_card(SPEC)  # without a prepare config the card is as before


def test_a_card_without_preprocessing_or_of_another_version_is_a_clear_error(tmp_path):
    with pytest.raises(P.PredictError, match="no 'preprocessing' section"):
        P.Preprocessing.from_card(model_card(SPEC))
    card = model_card(SPEC, prepare=CONFIG)
    with pytest.raises(P.PredictError, match="preprocessing version 2"):
        P.Preprocessing.from_card({**card, "preprocessing": {**card["preprocessing"], "version": 2}})
    with pytest.raises(P.PredictError, match="malformed preprocessing"):
        P.Preprocessing.from_card({**card, "preprocessing": {**card["preprocessing"], "crop": {}}})
    old = export_onnx(Small().eval(), SPEC, tmp_path / "old.onnx", model_card(SPEC))
    assert cli(["predict", str(old), str(photo(tmp_path / "a.jpg")), "--out", str(tmp_path / "p.csv")]) == 2


@pytest.mark.parametrize("cache, size", [(48, 32), (128, 96), (64, 96), (100, 37)])
def test_the_second_resize_matches_the_workbooks_torch_preprocess(cache, size):
    from trashlib.train import preprocess

    crops = np.random.default_rng(cache).integers(0, 256, (3, cache, cache, 3), dtype=np.uint8)
    section = P.preprocessing_card(
        {**CONFIG.__dict__, "cache_side": cache},
        image_size=size,  # any size: 37 too, which no model here takes
        mean=SPEC.mean,
        std=SPEC.std,
        class_names=SPEC.class_names,
    )
    pre = P.Preprocessing.from_card({**model_card(SPEC), "image_size": size, "preprocessing": section})
    ours = P.model_input(crops, pre)
    workbook = preprocess(crops, size, SPEC.mean, SPEC.std).contiguous().numpy()
    assert ours.shape == workbook.shape == (3, 3, size, size) and ours.dtype == np.float32
    assert np.abs(ours - workbook).max() < 1e-4


# --------------------------------------------------------------------------- the model file is checked


def test_a_tampered_model_file_is_refused_naming_the_file(shipped, tmp_path, capsys):
    folder = tmp_path / "winner"
    folder.mkdir()
    data = bytearray((shipped / "model.onnx").read_bytes())
    _, _, start, end = next(f for f in P._fields(bytes(data)) if f[0] == 7)  # ModelProto.graph
    data[(start + end) // 2] ^= 0xFF  # a byte of the graph (weights)
    (folder / "model.onnx").write_bytes(bytes(data))
    (folder / "model_card.json").write_bytes((shipped / "model_card.json").read_bytes())
    with pytest.raises(P.PredictError, match=r"model\.onnx: sha256 .* does not match onnx_sha256 .* model_card\.json"):
        P.load_model(folder)
    assert cli(["predict", str(folder), str(photo(tmp_path / "a.jpg")), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(folder / "model.onnx") in err and "\n" not in err
    assert not (tmp_path / "p.csv").exists()
    lone = tmp_path / "lone.onnx"  # the same change in a lone file: its sealed digest no longer matches
    lone.write_bytes(bytes(data))
    with pytest.raises(P.PredictError, match=r"lone\.onnx: model digest .* does not match .* sealed in its card"):
        P.load_model(lone)


def test_a_card_whose_sha_does_not_match_names_the_file(shipped, tmp_path):
    folder = tmp_path / "deploy" / "x-onnx-fp32"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes((shipped / "model.onnx").read_bytes())
    card = json.loads((shipped / "model_card.json").read_text())
    (folder / "model_card.json").write_text(json.dumps({**card, "onnx_sha256": "0" * 64}))
    with pytest.raises(P.PredictError) as error:
        P.load_model(folder)
    assert str(folder / "model.onnx") in str(error.value) and "00000000" in str(error.value)
    del card["onnx_sha256"]
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(P.PredictError, match="has no onnx_sha256"):
        P.load_model(folder)


def test_a_changed_card_inside_a_lone_file_is_refused(shipped, tmp_path):
    import onnx

    proto = onnx.load(str(shipped / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "model_card":
            card = json.loads(entry.value)
            card["preprocessing"]["crop"]["margin"] = 0.3
            entry.value = json.dumps(card)
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(P.PredictError, match="m.onnx: model digest"):
        P.load_model(tmp_path / "m.onnx")
    (tmp_path / "text.onnx").write_text("not a model at all\n")
    with pytest.raises(P.PredictError, match="text.onnx: not an ONNX model"):
        P.load_model(tmp_path / "text.onnx")
    with pytest.raises(P.PredictError, match="no such model"):
        P.load_model(tmp_path / "missing.onnx")
    with pytest.raises(P.PredictError, match="needs model.onnx and model_card.json"):
        P.load_model(tmp_path)


def test_the_digest_is_sealed_on_export_and_on_int8_quantization(shipped, tmp_path):
    import onnx

    from trashlib.quantize import calibration_batches, quantize_onnx_int8

    data = (shipped / "model.onnx").read_bytes()
    card = json.loads(P.onnx_metadata(data)["model_card"])
    assert card["model_digest"]["sha256"] == P.model_digest(data)
    assert P.seal_model_card(data) == data  # sealing again changes nothing
    bare = onnx.load_from_string(data)
    del bare.metadata_props[:]
    assert P.seal_model_card(bare.SerializeToString()) == bare.SerializeToString()  # no card: nothing to seal
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    images = np.random.default_rng(0).integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
    int8 = quantize_onnx_int8(shipped / "model.onnx", tmp_path / "int8.onnx", calibration_batches(images, SPEC))
    sealed = P.load_model(int8).card["model_digest"]["sha256"]
    assert sealed == P.model_digest(int8.read_bytes()) != P.model_digest(data)


def test_a_lone_onnx_file_predicts_as_its_folder_and_runtimes_are_checked(shipped, tmp_path, monkeypatch):
    photos = [photo(tmp_path / f"{i}.jpg", colour=c) for i, c in enumerate([(200, 30, 30), (30, 160, 30)])]
    items = P.collect_inputs(photos)
    by_folder = P.predict(P.load_model(shipped), items, threads=1)
    by_file = P.predict(P.load_model(shipped / "model.onnx"), items, threads=1)
    assert [r.probabilities for r in by_folder.rows] == [r.probabilities for r in by_file.rows]
    with pytest.raises(P.PredictError, match="unknown runtime 'tensorrt' \\(known: onnxruntime, openvino\\)"):
        P.load_model(shipped, runtime="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(P.PredictError, match="runtime 'onnxruntime' is not installed: pip install onnxruntime"):
        P.load_model(shipped)


def test_openvino_runs_the_shipped_file_like_onnxruntime_and_names_its_kernels(shipped, tmp_path):
    photos = [photo(tmp_path / f"{i}.jpg", colour=c) for i, c in enumerate([(200, 30, 30), (30, 160, 30)])]
    items = P.collect_inputs(photos)
    ort_model, ov_model = P.load_model(shipped), P.load_model(shipped, runtime="openvino")
    assert (ort_model.runtime, ov_model.runtime) == ("onnxruntime", "openvino")
    a, b = (P.predict(m, items, threads=1).rows for m in (ort_model, ov_model))
    assert np.allclose([r.probabilities for r in a], [r.probabilities for r in b], atol=1e-5)
    assert any("_f32" in k for k in ov_model.run.kernels())
    assert any("Conv" in k for k in ort_model.run.kernels())
    card = json.loads((shipped / "model_card.json").read_text())
    other = tmp_path / "ov"
    other.mkdir()
    (other / "model.onnx").write_bytes((shipped / "model.onnx").read_bytes())
    (other / "model_card.json").write_text(json.dumps({**card, "runner": "openvino"}))
    assert P.load_model(other).runtime == "openvino"  # the card's runner is the default


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("fit", ["pad", "stretch"])
def test_exact_decoding_gives_the_workbooks_cached_crops(coco_factory, tmp_path, fit):
    root, _ = coco_factory(six_class_photos(8))
    data = prepare_dataset(root, tmp_path / "data", PrepareConfig(cache_side=CACHE, fit=fit), progress=False)
    pre = P.Preprocessing.from_card(model_card(SPEC, prepare=data.meta["config"]))
    items = P.items_from_manifest(Path(data.meta["source_root"]), data.rows)
    got = {}
    for batch in P.load_crops(items, pre, threads=2, batch_size=5, draft=False):
        assert not batch.failed
        got.update(zip(batch.objects, batch.crops, strict=False))
    ours = np.stack([got[P.ObjectRef(i, t)] for i, it in enumerate(items) for t in range(len(it.targets))])
    assert np.array_equal(ours, data.crops)  # the manifest is sorted by source, as the items are


def big_photo(path: Path, orientation: int = 1) -> Path:
    """A 1000 x 700 JPEG with soft shapes (a draft-friendly photo), optionally with an EXIF orientation."""
    yy, xx = np.mgrid[0:700, 0:1000]
    arr = np.stack([(xx / 4) % 256, (yy / 3) % 256, 128 + 100 * np.sin(xx / 40.0) * np.cos(yy / 30.0)], -1)
    arr[200:500, 300:800] = (220, 40, 40)
    img = Image.fromarray(arr.astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=92, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("fit, orientation", [("pad", 1), ("stretch", 1), ("pad", 6)])
def test_draft_decoding_is_close_to_full_decoding(tmp_path, fit, orientation):
    from trashlib.data import crop_box, open_image

    path = big_photo(tmp_path / "big.jpg", orientation)
    pre = P.Preprocessing.from_card(model_card(SPEC, prepare={**CONFIG.__dict__, "fit": fit, "cache_side": 64}))
    boxes = ((300.0, 200.0, 240.0, 120.0), (10.0, 20.0, 290.0, 260.0), None)  # COCO x, y, w, h
    item = P.Item(path, "big.jpg", tuple(P.Target(box=b) for b in boxes))
    full = P.decode_item(item, pre, draft=False)
    draft = P.decode_item(item, pre, draft=True, draft_gap=1.0)
    # the first crop (288 x 144 with its margin) decides: pad needs 288 / k >= 64, stretch 144 / k >= 64
    assert full.scale == 1 and draft.scale == (4 if fit == "pad" else 2)
    image = open_image(path)
    assert image.size == ((700, 1000) if orientation == 6 else (1000, 700))
    for box, exact, approx in zip(boxes, full.crops, draft.crops, strict=False):
        assert np.array_equal(exact, square_resize(image.crop(crop_box(box, image.size, 0.1)), 64, fit))
        diff = np.abs(exact.astype(int) - approx.astype(int))
        assert diff.mean() < 3.0 and np.percentile(diff, 99) < 40
    # the default gap keeps each crop at twice cache_side: one DCT step less
    assert P.decode_item(item, pre).scale == (2 if fit == "pad" else 1)


def test_simplejpeg_and_pillow_decode_to_the_same_crops(tmp_path, monkeypatch):
    assert P._simplejpeg() is not None, "simplejpeg is a dependency (pyproject.toml)"
    photos = [big_photo(tmp_path / "a.jpg"), big_photo(tmp_path / "rotated.jpg", orientation=8)]
    base = Image.open(photos[0])
    for name, options in (
        ("progressive.jpg", {"progressive": True}),
        ("444.jpg", {"subsampling": 0}),
        ("grey.jpg", {}),
    ):
        (base.convert("L") if name == "grey.jpg" else base).save(tmp_path / name, quality=90, **options)
        photos.append(tmp_path / name)
    base.convert("CMYK").save(tmp_path / "cmyk.jpg")  # Pillow decodes CMYK
    photos.append(tmp_path / "cmyk.jpg")
    pre = P.Preprocessing.from_card(model_card(SPEC, prepare={**CONFIG.__dict__, "cache_side": 64}))
    items = [P.Item(p, p.name, (P.Target(box=(300.0, 200.0, 240.0, 120.0)), P.Target())) for p in photos]
    for draft in (False, True):
        turbo = [P.decode_item(it, pre, draft=draft, draft_gap=1.0) for it in items]
        monkeypatch.setattr(P, "_simplejpeg", lambda: None)
        pillow = [P.decode_item(it, pre, draft=draft, draft_gap=1.0) for it in items]
        monkeypatch.undo()
        for a, b in zip(turbo, pillow, strict=False):
            assert a.scale == b.scale == (4 if draft else 1)
            assert all(np.array_equal(x, y) for x, y in zip(a.crops, b.crops, strict=False))


def test_draft_scale_keeps_each_crop_at_least_cache_side():
    pre = P.Preprocessing.from_card(model_card(SPEC, prepare={**CONFIG.__dict__, "cache_side": 100}))
    assert P.draft_scale([(0, 0, 1000, 50)], pre) == 8  # pad: the 1000 side decides
    assert P.draft_scale([(0, 0, 1000, 50), (0, 0, 250, 250)], pre) == 2  # one decode serves every box
    assert P.draft_scale([(0, 0, 99, 99)], pre) == 1
    assert P.draft_scale([(0, 0, 1000, 800)], pre, gap=2.0) == 4
    stretch = P.Preprocessing.from_card(
        model_card(SPEC, prepare={**CONFIG.__dict__, "cache_side": 100, "fit": "stretch"})
    )
    assert P.draft_scale([(0, 0, 1000, 250)], stretch) == 2  # stretch: the shorter side decides


# --------------------------------------------------------------------------- bad inputs


def test_bad_files_get_rows_with_reasons_and_the_other_rows_are_kept(shipped, tmp_path, capsys):
    folder = tmp_path / "test"
    good = [photo(folder / f"good{i}.jpg", colour=c) for i, c in enumerate([(200, 30, 30), (30, 160, 30)])]
    (folder / "text.jpg").write_text("this is not a JPEG\n")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[0].read_bytes()[:400])
    (folder / "x.jpg").mkdir()
    (folder / "notes.txt").write_text("a note\n")
    (folder / ".hidden.jpg").write_text("ignored\n")
    (folder / "outside.jpg").symlink_to(photo(tmp_path / "elsewhere.jpg"))
    (tmp_path / "named.jpg").mkdir()
    out = tmp_path / "predictions.csv"
    assert cli(["predict", str(shipped), str(folder), str(tmp_path / "named.jpg"), "--out", str(out)]) == 0
    rows = {r["file"]: r for r in read_csv(out)}
    assert sorted(rows) == sorted(
        [
            str(tmp_path / "named.jpg"),
            "empty.jpg",
            "good0.jpg",
            "good1.jpg",
            "notes.txt",
            "outside.jpg",
            "text.jpg",
            "truncated.jpg",
            "x.jpg",
        ]
    )
    reasons = {name: r["error"] for name, r in rows.items()}
    assert reasons["text.jpg"] == "not a decodable image (no image format recognised)"
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["truncated.jpg"].startswith("corrupt or truncated image")
    assert reasons["x.jpg"] == reasons[str(tmp_path / "named.jpg")] == "is a directory, not an image file"
    assert reasons["notes.txt"] == "not an image file extension '.txt'"
    assert "leads out of the data root" in reasons["outside.jpg"]
    for name in ("good0.jpg", "good1.jpg"):
        assert rows[name]["error"] == "" and rows[name]["class"] in CLASSES
        assert math.isclose(sum(float(rows[name][f"p_{c}"]) for c in CLASSES), 1.0, abs_tol=1e-5)
        assert float(rows[name]["confidence"]) == max(float(rows[name][f"p_{c}"]) for c in CLASSES)
    assert all(r["class"] == r["confidence"] == "" for n, r in rows.items() if n not in ("good0.jpg", "good1.jpg"))
    assert "2 of 9 objects from 9 files predicted" in capsys.readouterr().err
    assert list(read_csv(out)[0]) == [
        "file",
        "ann_id",
        "box",
        "class",
        "confidence",
        *(f"p_{c}" for c in CLASSES),
        "error",
    ]


def test_coco_input_classifies_every_box_and_reports_bad_records(shipped, coco_factory, tmp_path):
    root, doc = coco_factory(
        [
            (
                "img/a.jpg",
                (120, 90),
                [("Drink can", [5.0, 5.0, 40.0, 30.0]), ("Normal paper", [60.0, 40.0, 30.0, 40.0])],
            ),
            ("img/b.jpg", (120, 90), [("Drink can", [10.0, 10.0, 20.0, 20.0])]),
        ]
    )
    doc["images"].append({"id": 7, "file_name": "../escape.jpg", "width": 10, "height": 10})
    doc["images"].append({"id": 8, "file_name": "img/missing.jpg", "width": 10, "height": 10})
    extra = [
        (7, [1, 1, 2, 2]),
        (8, [1, 1, 2, 2]),
        (0, [500, 500, 5, 5]),
        (0, [1, 2, "x", 4]),
        (0, [1, 1, 0, 3]),
        (99, [1, 1, 2, 2]),
    ]
    for n, (image_id, bbox) in enumerate(extra):
        doc["annotations"].append({"id": 100 + n, "image_id": image_id, "category_id": 0, "bbox": bbox})
    (root / "annotations.json").write_text(json.dumps(doc))
    out = tmp_path / "p.csv"
    assert cli(["predict", str(shipped), str(root), "--out", str(out)]) == 0
    rows = {r["ann_id"]: r for r in read_csv(out)}
    assert len(rows) == 3 + len(extra)
    assert rows["1"]["file"] == "img/a.jpg" and rows["1"]["box"] == "5,5,40,30" and rows["1"]["class"] in CLASSES
    assert rows["3"]["file"] == "img/b.jpg" and rows["3"]["error"] == ""
    assert "leads out of the data root" in rows["100"]["error"]
    assert rows["101"]["error"] == "file is missing"
    assert rows["102"]["error"].startswith("box (500.0, 500.0, 5.0, 5.0) lies outside the 120x90 image")
    assert rows["103"]["error"] == "annotations[6].bbox is not four finite numbers"
    assert rows["104"]["error"] == "annotations[7].bbox has zero or negative size"
    assert rows["105"]["file"] == "annotations.json" and "image_id 99 is not an image" in rows["105"]["error"]


def test_bad_paths_and_options_are_one_line_errors_with_exit_code_2(shipped, tmp_path, capsys):
    image = str(photo(tmp_path / "a.jpg"))
    out = str(tmp_path / "p.csv")
    for argv, message in (
        (["predict", str(shipped), str(tmp_path / "nope"), "--out", out], "no such file or folder"),
        (["predict", str(tmp_path / "nomodel"), image, "--out", out], "no such model"),
        (["predict", str(shipped), image, "--out", out, "--runtime", "x"], "unknown runtime 'x'"),
        (["predict", str(shipped), image, "--out", out, "--threads", "0"], "must be >= 1"),
        (["evaluate", str(shipped), str(tmp_path / "nodata"), "--out", out], "does not exist"),
    ):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not Path(out).exists()


# --------------------------------------------------------------------------- outputs


def test_competition_format_is_one_json_object_with_inference_time_and_macs(shipped, coco_factory, tmp_path):
    folder = tmp_path / "test"
    photo(folder / "a.jpg")
    photo(folder / "b.jpg", colour=(30, 160, 30))
    (folder / "bad.jpg").write_text("no")
    assert cli(["predict", str(shipped), str(folder), "--format", "competition", "--out", str(tmp_path / "o.csv")]) == 0
    doc = json.loads((tmp_path / "o.csv").read_text())
    assert set(doc) == {"inference", "time", "macs", "errors"} and doc["macs"] == 12345
    assert set(doc["inference"]) == {"a.jpg", "b.jpg", "bad.jpg"} and doc["inference"]["bad.jpg"] is None
    assert doc["inference"]["a.jpg"] in CLASSES and "not a decodable image" in doc["errors"]["bad.jpg"]
    assert set(doc["time"]) == {"runtime", "inference"} and set(doc["time"]["runtime"]) == {"all", "inference_only"}
    assert 0 < doc["time"]["runtime"]["inference_only"] <= doc["time"]["runtime"]["all"]
    assert set(doc["time"]["inference"]) == set(doc["inference"]) and all(
        t >= 0 for t in doc["time"]["inference"].values()
    )
    root, _ = coco_factory(six_class_photos(2))
    assert cli(["predict", str(shipped), str(root), "--format", "competition", "--out", str(tmp_path / "c.json")]) == 0
    assert sorted(json.loads((tmp_path / "c.json").read_text())["inference"]) == [
        "img/000.jpg#1",
        "img/000.jpg#2",
        "img/001.jpg#3",
        "img/001.jpg#4",
    ]


def test_the_csv_is_written_atomically(shipped, tmp_path, monkeypatch):
    folder = tmp_path / "test"
    for i in range(3):
        photo(folder / f"{i}.jpg")
    out = tmp_path / "p.csv"
    out.write_text("the previous predictions\n")
    calls = []
    real = P.ShippedModel.probabilities

    def fails_on_the_second_batch(self, crops):
        calls.append(len(crops))
        if len(calls) == 2:
            raise RuntimeError("killed mid-way")
        return real(self, crops)

    monkeypatch.setattr(P.ShippedModel, "probabilities", fails_on_the_second_batch)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        cli(["predict", str(shipped), str(folder), "--out", str(out), "--batch-size", "1"])
    assert out.read_text() == "the previous predictions\n"
    monkeypatch.setattr(P.ShippedModel, "probabilities", real)
    monkeypatch.setattr("os.fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        cli(["predict", str(shipped), str(folder), "--out", str(out)])
    assert out.read_text() == "the previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "test"]  # no temporary file left


def test_predict_and_evaluate_never_import_torch(shipped, coco_factory, tmp_path):
    photo(tmp_path / "in" / "a.jpg")
    root, _ = coco_factory(six_class_photos(24))
    heavy = ["torch", "torchvision", "trashlib.train", "trashlib.models", "trashlib.quantize", "trashlib.bench"]
    script = (
        f"import sys\nimport trashlib.cli\nassert 'trashlib.predict' not in sys.modules and 'numpy' not in "
        f"sys.modules, 'cli imports heavy modules'\nrc = trashlib.cli.main(sys.argv[1:])\n"
        f"print(rc, [m for m in {heavy!r} if m in sys.modules], 'sklearn' in sys.modules)"
    )
    for argv, sklearn in (
        (["predict", str(shipped), str(tmp_path / "in"), "--out", str(tmp_path / "p.csv")], False),
        (["evaluate", str(shipped), str(root), "--out", str(tmp_path / "ev")], True),
    ):
        done = subprocess.run(
            [sys.executable, "-c", script, *argv],
            capture_output=True,
            text=True,
            check=False,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == f"0 [] {sklearn}", done.stderr
    assert read_csv(tmp_path / "p.csv")[0]["class"] in CLASSES


# --------------------------------------------------------------------------- evaluate


def workbook_f1(shipped: Path, data) -> tuple[float, list[int]]:
    from trashlib.train import evaluate

    x, y = data.split("test")
    result = evaluate(OrtModel(shipped / "model.onnx", 1), x, y, data.classes, SIZE, normalization=SPEC.normalization)
    return result["macro_f1"], result["predictions"]


def imagefolder(root: Path, classes: list[str], per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for k, cls in enumerate(classes):
        for i in range(per_class):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            solid_jpeg(
                root / cls / f"{i}.jpg",
                (60 + 10 * i, 50),
                colour=colour,
                boxes=[((5, 5, 30, 30), (40 * k % 256, 255 - 40 * k, 128))],
            )
    return root


def test_evaluate_on_an_imagefolder_gives_the_workbooks_f1(shipped, tmp_path):
    root = imagefolder(tmp_path / "folder", CLASSES)
    result = P.evaluate_model(P.load_model(shipped), root, tmp_path / "ev")
    data = prepare_dataset(root, tmp_path / "workbook", CONFIG, progress=False)
    f1, predictions = workbook_f1(shipped, data)
    assert result["n"] == len(predictions) and abs(result["macro_f1"] - f1) <= 1e-9
    saved = read_csv(tmp_path / "ev" / "predictions.csv")
    assert [CLASSES.index(r["predicted"]) for r in saved] == predictions
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["macro_f1"] == result["macro_f1"]
    page = (tmp_path / "ev" / "evaluation.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("<!doctype html>", "")
    assert result["confusion_matrix"] and len(result["confusion_matrix"]) == len(result["labels"]) == 6


def test_evaluate_on_coco_gives_the_workbooks_f1(shipped, coco_factory, tmp_path, capsys):
    root, _ = coco_factory(six_class_photos(24))
    assert cli(["evaluate", str(shipped), str(root), "--out", str(tmp_path / "ev")]) == 0
    assert "macro-F1" in capsys.readouterr().out
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    data = prepare_dataset(root, tmp_path / "workbook", CONFIG, progress=False)
    f1, predictions = workbook_f1(shipped, data)
    assert result["n"] == len(predictions) == len(data.split("test")[1])
    assert abs(result["macro_f1"] - f1) <= 1e-9 and result["prepare_config"]["cache_side"] == CACHE
    assert (tmp_path / "ev" / "prepared" / "manifest.csv").is_file()
    everything = P.evaluate_model(P.load_model(shipped), root, tmp_path / "ev", split="all")
    assert everything["n"] == len(data.rows)


def test_evaluate_refuses_a_data_class_the_model_does_not_know(shipped, tmp_path, capsys):
    root = imagefolder(tmp_path / "folder", ["Metal", "Glass"], per_class=4)
    with pytest.raises(P.PredictError, match=r"data class 'Glass' is not one of the model's classes"):
        P.evaluate_model(P.load_model(shipped), root, tmp_path / "ev", split="all")
    assert cli(["evaluate", str(shipped), str(root), "--split", "all", "--out", str(tmp_path / "ev")]) == 2
    assert "'Glass'" in capsys.readouterr().err
    subset = imagefolder(tmp_path / "subset", ["Paper", "Metal"], per_class=4)  # fewer classes than the model: fine
    result = P.evaluate_model(P.load_model(shipped), subset, tmp_path / "ev2", split="all")
    assert result["n"] == 8 and {"Paperpack", "Plastic"} <= set(result["model_classes_absent_from_data"])
    assert result["labels"][:2] == ["Metal", "Paper"]


# --------------------------------------------------------------------------- real photos: a client of the card alone


def client_predictions(folder: Path, photos: list[tuple[Path, list[list[float] | None]]]) -> np.ndarray:
    """What a robot written from model_card.json alone does: numpy, Pillow and onnxruntime, no trashlib."""
    import onnxruntime as ort

    card = json.loads((folder / "model_card.json").read_text())
    pre = card["preprocessing"]
    side, second, margin = pre["resize"]["size"], pre["resize_to_model"], pre["crop"]["margin"]
    inputs = []
    for path, boxes in photos:
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        width, height = image.size
        for box in boxes:
            x, y, w, h = box or (0, 0, width, height)
            m = margin if box else 0.0
            crop = image.crop(
                (
                    math.floor(max(0, x - m * w)),
                    math.floor(max(0, y - m * h)),
                    math.ceil(min(width, x + w + m * w)),
                    math.ceil(min(height, y + h + m * h)),
                )
            )
            if pre["fit"] == "pad":
                s = max(crop.size)
                canvas = Image.new("RGB", (s, s), tuple(pre["pad_color"]))
                canvas.paste(crop, ((s - crop.width) // 2, (s - crop.height) // 2))
                crop = canvas
            if crop.size != (side, side):
                crop = crop.resize((side, side), Image.BILINEAR, reducing_gap=pre["resize"]["reducing_gap"])
            x = np.asarray(crop, np.float32).transpose(2, 0, 1) * np.float32(pre["scale"])
            if second:
                x = np.stack([np.asarray(Image.fromarray(c).resize((second["size"],) * 2, Image.BILINEAR)) for c in x])
            mean, std = (np.asarray(pre[k], np.float32)[:, None, None] for k in ("mean", "std"))
            inputs.append((x - mean) / std)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run([card["output"]["name"]], {card["input"]["name"]: np.stack(inputs).astype(np.float32)})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@needs(TRASHNET)
@needs(TACO_SAMPLE)
@pytest.mark.realdata
def test_a_client_of_the_card_alone_predicts_as_predict_on_real_photos(shipped, tmp_path):
    trashnet = [
        sorted((TRASHNET / c).glob("*.jpg"))[i]
        for c in sorted(p.name for p in TRASHNET.iterdir() if p.is_dir())
        for i in (0, 1)
    ]
    out = tmp_path / "p.csv"
    assert cli(["predict", str(shipped), *map(str, trashnet), "--no-draft", "--out", str(out)]) == 0
    rows = read_csv(out)
    client = client_predictions(shipped, [(p, [None]) for p in trashnet])
    assert [r["class"] for r in rows] == [CLASSES[k] for k in client.argmax(1)]
    assert np.abs(np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows]) - client).max() < 1e-5

    items = P.collect_inputs([TACO_SAMPLE])[:5]  # five photos, every box of each
    ours = P.predict(P.load_model(shipped), items, draft=False)
    assert ours.n_errors == 0 and len(ours.rows) >= 5
    client = client_predictions(shipped, [(it.path, [list(t.box) for t in it.targets]) for it in items])
    assert [r.label for r in ours.rows] == [CLASSES[k] for k in client.argmax(1)]
    assert np.abs(np.array([r.probabilities for r in ours.rows]) - client).max() < 1e-5

    agreement = P.draft_agreement(P.load_model(shipped), P.collect_inputs(trashnet) + items)
    assert agreement["n"] == len(ours.rows) + len(trashnet)
    assert agreement["identical_predictions"] >= 0.8 and agreement["mean_abs_pixel_diff"] < 3.0


def test_deployed_models_carry_the_preprocessing_and_evaluate_agrees_with_their_record(
    coco_factory, tmp_path, monkeypatch
):
    from trashlib import quantize
    from trashlib.candidate import assess_candidate
    from trashlib.run import open_run

    root, _ = coco_factory(six_class_photos(24))
    data = prepare_dataset(root, tmp_path / "data", CONFIG, progress=False)
    torch.manual_seed(1)
    model = Small().eval()
    spec = dataclasses.replace(SPEC, class_names=tuple(data.classes))
    run = open_run(tmp_path / "run")
    source = {"stage": "baseline", **assess_candidate("baseline", model, spec, data, threads=1, latency_runs=2)}

    def no_pt2e(*args, **kwargs):
        raise quantize.QuantizeError("PT2E is not what this test is about")

    monkeypatch.setattr(quantize, "quantize_int8", no_pt2e)
    records = quantize.deploy_candidate(
        run, "baseline", model, spec, source, data, params={}, threads=1, latency_runs=2, calibration_images=16
    ).records
    assert [r["runtime"] for r in records] == ["pt2e-int8", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]
    for record in records[1:]:
        folder = run.run_dir / "deploy" / record["candidate"]
        shipped = P.load_model(folder)
        assert shipped.card["preprocessing"] == P.preprocessing_card(
            data.meta["config"], image_size=spec.image_size, mean=spec.mean, std=spec.std, class_names=spec.class_names
        )
        assert shipped.card["macs"] == source["macs"] and shipped.card["onnx_sha256"] == sha256_file(shipped.path)
        lone = P.load_model(folder / "model.onnx")  # the embedded card, checked by its digest
        assert lone.card["preprocessing"] == shipped.card["preprocessing"] and lone.card["macs"] == source["macs"]
        result = P.evaluate_model(shipped, root, tmp_path / "ev" / record["candidate"])
        assert abs(result["macro_f1"] - record["f1_test"]) <= 1e-9


def test_unreadable_oversized_and_undecodable_photos_are_reported(shipped, tmp_path, monkeypatch):
    good, locked, crash = (photo(tmp_path / f"{n}.jpg") for n in ("good", "locked", "crash"))
    small = P.Preprocessing.from_card({**model_card(SPEC, prepare={**CONFIG.__dict__, "max_pixels": 5000})})
    assert P.decode_item(P.Item(good, "good.jpg"), small).crops == [
        "120x90 pixels exceeds max_pixels=5000 (decompression bomb?)"
    ]
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path.name == "locked.jpg":
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(P, "_simplejpeg", lambda: (_ for _ in ()).throw(MemoryError("decoder bug")))
    model = P.load_model(shipped)
    result = P.predict(model, P.collect_inputs([good, locked]), threads=1)
    assert [r.error for r in result.rows] == [
        "cannot decode (MemoryError: decoder bug)",
        "cannot read the file (permission denied)",
    ]
    monkeypatch.setattr(P, "_simplejpeg", lambda: None)
    assert P.predict(model, P.collect_inputs([crash]), threads=1).rows[0].label in CLASSES


def test_bad_coco_json_duplicate_competition_names_and_mismatched_cards_are_errors(
    shipped, coco_factory, tmp_path, capsys
):
    root, _ = coco_factory(six_class_photos(2))
    by_folder = P.predict(P.load_model(shipped), P.collect_inputs([root]), threads=1)
    by_json = P.predict(P.load_model(shipped), P.collect_inputs([root / "annotations.json"]), threads=1)
    assert [(r.file, r.ann_id, r.label) for r in by_folder.rows] == [(r.file, r.ann_id, r.label) for r in by_json.rows]
    (root / "annotations.json").write_text("{not json")
    assert cli(["predict", str(shipped), str(root), "--out", str(tmp_path / "p.csv")]) == 2
    assert "annotations.json: cannot read COCO annotations" in capsys.readouterr().err
    a = photo(tmp_path / "a.jpg")
    assert (
        cli(["predict", str(shipped), str(a), str(a), "--format", "competition", "--out", str(tmp_path / "o.json")])
        == 2
    )
    assert "needs unique file names" in capsys.readouterr().err and not (tmp_path / "o.json").exists()
    folder = tmp_path / "mixed"
    folder.mkdir()
    other = model_card(dataclasses.replace(SPEC, class_names=tuple(CLASSES[::-1])), prepare=CONFIG)
    (folder / "model.onnx").write_bytes((shipped / "model.onnx").read_bytes())
    write_model_card(folder / "model_card.json", other, folder / "model.onnx")
    with pytest.raises(P.PredictError, match="class_names in its metadata differ from model_card.json's"):
        P.load_model(folder)


def test_a_lone_file_without_a_digest_is_used_with_a_warning(shipped, tmp_path, capsys):
    import onnx

    proto = onnx.load(str(shipped / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "model_card":
            entry.value = json.dumps({k: v for k, v in json.loads(entry.value).items() if k != "model_digest"})
    (tmp_path / "old.onnx").write_bytes(proto.SerializeToString())
    assert P.load_model(tmp_path / "old.onnx").class_names == CLASSES
    assert "carries no model_digest" in capsys.readouterr().err


def test_evaluate_of_an_empty_split_is_an_error(shipped, tmp_path):
    root = imagefolder(tmp_path / "folder", ["Metal"], per_class=2)
    with pytest.raises(P.PredictError, match="the test split holds no samples"):
        P.evaluate_model(P.load_model(shipped), root, tmp_path / "ev")


def test_the_command_line_decodes_like_the_library_by_default():
    from trashlib.cli import build_parser

    args = build_parser().parse_args(["predict", "model", "photo.jpg", "--out", "x.csv"])
    assert args.draft and args.draft_gap == P.DRAFT_GAP == 2.0 and args.runtime is None
