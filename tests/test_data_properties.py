"""Property tests of the data layer: any generated COCO file gives a clean result or a DataError, never a crash."""

from __future__ import annotations

import json
import math
import posixpath
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import solid_jpeg, taco_categories
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from trashlib.data import (
    DataError,
    DataReport,
    PrepareConfig,
    load_mapping,
    prepare_dataset,
    read_coco,
    read_manifest,
)

RUNS: Counter[str] = Counter()  # examples run per test, printed by the last test
MAPPING = load_mapping("taco")
CATS = taco_categories()
MAPPED = [c["id"] for c in CATS if MAPPING.table[c["name"]] is not None]
EXCLUDED = [c["id"] for c in CATS if MAPPING.table[c["name"]] is None]
CONFIG = PrepareConfig(cache_side=32)

HIGH_SURROGATE = chr(0xD800) + ".jpg"  # a lone surrogate escape in JSON: no file system can hold it
ESCAPED_BYTE = chr(0xDC80) + ".jpg"  # how Python spells an undecodable byte: fine for the OS, not UTF-8

# file names that decode to an image inside the root, with their sizes
VALID = {
    "a.jpg": (120, 90),
    "img/b.png": (64, 64),
    "ünï/ملف😀\u202egpj.jpg": (50, 40),
    "./a.jpg": (120, 90),
    "img/../a.jpg": (120, 90),
}
# file names that must never produce a sample: out of the root (real images lie there), bad names, bad files
INVALID = [
    "../outside.jpg",
    "link/x.jpg",
    "/etc/passwd",
    "a\x00b.jpg",
    "x" * 300 + ".jpg",
    "y/" * 3000 + "z.jpg",
    "missing.jpg",
    "notimage.jpg",
    "truncated.jpg",
    HIGH_SURROGATE,
    ESCAPED_BYTE,
    "C:\\evil.jpg",
    "img",
    ".",
    "img/../../outside.jpg",
    "\\\\server\\share\\a.jpg",
]
SETTINGS: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "print_blob": False,
    # `source` is module-scoped; the autouse one_thread fixture needs no reset between examples
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COCO root with real images under VALID names, and real images outside it that INVALID names point at."""
    base = tmp_path_factory.mktemp("coco_props")
    root = base / "src"
    for name, size in VALID.items():
        if name.endswith(".png"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, (20, 120, 220)).save(root / name)
        elif not (root / name).exists():
            solid_jpeg(root / name, size, boxes=[((5, 5, 30, 30), (200, 30, 30))])
    solid_jpeg(base / "outside.jpg")
    solid_jpeg(base / "outdir" / "x.jpg")
    (root / "link").symlink_to(base / "outdir", target_is_directory=True)
    (root / "notimage.jpg").write_text("not an image")
    jpeg = (root / "a.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return root


# --------------------------------------------------------------------------- strategies

NASTY_NUMBERS = st.sampled_from(
    [
        0,
        -1,
        1,
        1e308,
        -1e308,
        1.7976931348623157e308,
        2**64,
        -(2**64),
        2**63 - 1,
        10**400,
        -(10**400),
        math.nan,
        math.inf,
        -math.inf,
        5e-324,
        -0.0,
        0.5,
    ]
)
NUMBERS = NASTY_NUMBERS | st.integers() | st.floats()
NAMES = st.sampled_from(list(VALID) + INVALID) | st.text(max_size=30)
SCALARS = st.none() | st.booleans() | NUMBERS | NAMES
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@st.composite
def field(draw: st.DrawFn, good: st.SearchStrategy[Any]) -> Any:
    """Mostly a good value, else a junk value or the MISSING marker (the key is left out)."""
    kind = draw(st.sampled_from(["good"] * 7 + ["junk"] * 2 + ["missing"]))  # shrinks towards good
    return draw(good) if kind == "good" else draw(JUNK) if kind == "junk" else MISSING


def rarely(draw: st.DrawFn) -> bool:
    """True about one time in ten (sampled_from, unlike small integers, is not biased towards one end)."""
    return draw(st.sampled_from([False] * 9 + [True]))


MISSING = object()


def record(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not MISSING}


@st.composite
def chaos_doc(draw: st.DrawFn) -> Any:
    """A COCO-shaped document where every field may be wrong, missing, huge, duplicated or nonsense."""
    n_images = draw(st.sampled_from([3, 4, 5, 6, 0, 1, 2]))
    images: list[Any] = []
    for i in range(n_images):
        if rarely(draw):
            images.append(draw(JUNK))
            continue
        image_id = (
            st.integers(0, max(0, i - 1)) | st.sampled_from([2**64, -(2**64), 10**30])  # duplicates, huge
            if rarely(draw)
            else st.just(i)
        )
        name = draw(st.sampled_from(list(VALID)) if draw(st.sampled_from([True, True, False])) else NAMES)
        size = VALID.get(name, (120, 90)) if isinstance(name, str) else (120, 90)
        images.append(
            record(
                id=draw(field(image_id)),
                file_name=draw(field(st.just(name))),
                width=draw(field(st.just(size[0]) | NUMBERS)),
                height=draw(field(st.just(size[1]) | NUMBERS)),
            )
        )
    annotations: list[Any] = []
    for j in range(draw(st.sampled_from([2, 3, 4, 5, 6, 7, 8, 0, 1]))):
        if rarely(draw):
            annotations.append(draw(JUNK))
            continue
        bbox = (
            st.tuples(st.floats(0, 60), st.floats(0, 40), st.floats(1, 60), st.floats(1, 50)).map(list)
            if not rarely(draw)
            else st.lists(NUMBERS, max_size=6)
        )
        ann_id = st.integers(0, 8) | st.sampled_from([2**64, 10**400]) if rarely(draw) else st.just(100 + j)
        annotations.append(
            record(
                id=draw(field(ann_id)),
                image_id=draw(
                    field(
                        st.sampled_from(list(range(n_images)) or [0])
                        if not rarely(draw)
                        else st.sampled_from([-1, n_images, 2**64])
                    )
                ),
                category_id=draw(
                    field(st.sampled_from(MAPPED) if not rarely(draw) else st.sampled_from([*EXCLUDED, 999]))
                ),
                bbox=draw(field(bbox)),
                area=draw(field(NUMBERS)),
                segmentation=draw(JUNK),
            )
        )
    categories: Any = list(CATS)
    mutation = draw(st.sampled_from(["none"] * 16 + ["junk", "extra", "dup", "empty"]))
    if mutation == "junk":
        categories = draw(JUNK)
    elif mutation == "extra":
        categories = [*categories, draw(JUNK)]
    elif mutation == "dup":
        categories = [*categories, dict(CATS[0])]
    elif mutation == "empty":
        categories = []
    doc = record(
        images=draw(JUNK | st.just(MISSING)) if rarely(draw) else images,
        annotations=draw(JUNK | st.just(MISSING)) if rarely(draw) else annotations,
        categories=categories,
        info=draw(JUNK),
    )
    return draw(JUNK) if rarely(draw) and rarely(draw) else doc  # a top level that is not an object


@st.composite
def mixed_doc(draw: st.DrawFn) -> tuple[dict[str, Any], set[tuple[str, int]], set[str]]:
    """Valid and invalid annotations whose fate is known.

    Returns the doc, the (source, ann_id) that must survive, and the refused file names that must be reported.
    """
    names = list(VALID) + INVALID
    images: list[Any] = []
    for i, name in enumerate(names):
        w, h = VALID.get(name, (120, 90))
        width = draw(st.just(w) | NASTY_NUMBERS | st.none() | st.just("120"))  # a wrong size only warns
        images.append(record(id=i, file_name=name, width=width, height=h))
    images += draw(
        st.lists(JUNK.filter(lambda v: not isinstance(v, dict)) | st.builds(dict, id=st.text(max_size=3)), max_size=3)
    )  # skipped image records
    valid_ids = [i for i, n in enumerate(names) if n in VALID]
    invalid_ids = [i for i, n in enumerate(names) if n not in VALID]
    annotations: list[Any] = []
    registered: list[Any] = []  # ids read_coco has seen, in order
    expected: set[tuple[str, int]] = set()
    refused: set[str] = set()
    kinds = [
        "valid",
        "valid",
        "valid",
        "excluded",
        "bad_image",
        "unknown_image",
        "bad_category",
        "bad_bbox",
        "empty_bbox",
        "outside_bbox",
        "bad_id",
        "dup_id",
        "not_a_dict",
    ]
    for j in range(draw(st.sampled_from([6, 8, 10, 12, 1, 2, 3, 4]))):
        kind = draw(st.sampled_from(kinds))
        if kind == "dup_id" and not registered:
            kind = "bad_id"
        ann_id = draw(st.sampled_from([j, -j - 1, 2**64 + j, 10**30 + j]))
        image_id = draw(st.sampled_from(valid_ids))
        w, h = VALID[names[image_id]]
        x = draw(st.floats(0, w - 1) | st.integers(0, w - 1))
        y = draw(st.floats(0, h - 1) | st.integers(0, h - 1))
        bbox: Any = [x, y, draw(st.floats(1, w - x)), draw(st.floats(1, h - y))]
        category = draw(st.sampled_from(MAPPED))
        if kind == "excluded":
            category = draw(st.sampled_from(EXCLUDED))
        elif kind == "bad_image":
            image_id = draw(st.sampled_from(invalid_ids))
        elif kind == "unknown_image":
            image_id = draw(st.sampled_from([len(images) + 10, -5, 2**64, "0", None, 0.0, True, [0]]))
        elif kind == "bad_category":
            category = draw(st.sampled_from([999, -1, 2**64, "12", None, 12.0, True, [12], {"id": 12}]))
        elif kind == "bad_bbox":
            bad = draw(st.sampled_from([math.nan, math.inf, -math.inf, "3", None, True, 10**400, [1], {}]))
            if draw(st.booleans()):
                bbox[draw(st.integers(0, 3))] = bad
            else:
                bbox = draw(st.sampled_from([bbox[:3], [*bbox, 1], [], "0,0,1,1", None, bad]))
        elif kind == "empty_bbox":
            bbox[draw(st.integers(2, 3))] = draw(st.sampled_from([0, -1, -1e308, -(2**64), -0.0]))
        elif kind == "outside_bbox":
            bbox[0] = draw(st.floats(10 * w + 10, 1e300) | st.sampled_from([2**64, 1e308]))
            bbox[2] = draw(st.floats(1, 5))
        elif kind == "bad_id":
            ann_id = draw(st.sampled_from(["1", None, 1.5, True, [1], MISSING]))
        elif kind == "dup_id":
            ann_id = draw(st.sampled_from(registered))
        if kind == "not_a_dict":
            annotations.append(draw(JUNK.filter(lambda v: not isinstance(v, dict))))
            continue
        annotations.append(record(id=ann_id, image_id=image_id, category_id=category, bbox=bbox, iscrowd=0))
        if kind not in ("bad_id", "dup_id"):
            registered.append(ann_id)
        if kind == "valid":
            expected.add((posixpath.normpath(names[image_id]), ann_id))  # ./a.jpg is a.jpg in the manifest
        if kind == "bad_image":
            refused.add(names[image_id])
    return {"images": images, "annotations": annotations, "categories": list(CATS)}, expected, refused


RAW = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(500, 200_000)),  # nesting deeper than the parser allows
    st.builds(
        lambda n: b'{"images": [], "annotations": [], "categories": [], "n": ' + b"9" * n + b"}",
        st.integers(4000, 5000),
    ),  # an integer longer than Python converts
    st.builds(lambda d, cut: json.dumps(d, allow_nan=True).encode()[:cut], chaos_doc(), st.integers(0, 400)),
    st.builds(lambda d: b"\xef\xbb\xbf" + json.dumps(d).encode(), chaos_doc()),  # UTF-8 BOM
    st.builds(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-16", "surrogatepass"), chaos_doc()),
)


# --------------------------------------------------------------------------- helpers


def write_doc(root: Path, doc: Any) -> Path:
    path = root / "annotations.json"
    path.write_text(json.dumps(doc, allow_nan=True), encoding="utf-8")  # NaN/Infinity tokens, as Python reads them
    return path


def prepare(root: Path) -> Any:
    """prepare_dataset into a fresh folder: the PreparedData (checked) or the DataError; anything else propagates."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "prepared"
        try:
            data = prepare_dataset(root, out, CONFIG, progress=False, threads=1)
        except DataError as exc:
            assert str(exc)
            if (out / "data_report.json").is_file():  # no usable sample: the reasons are kept all the same
                exc.report = json.loads((out / "data_report.json").read_text())  # type: ignore[attr-defined]
                assert not (out / "dataset.json").exists(), "a failed preparation left a complete-looking cache"
            return exc
        check_prepared(data, out)
        return data


def check_prepared(data: Any, out: Path) -> None:
    """The invariants of a clean result: only valid sources, crops aligned with rows, readable files."""
    assert {r["source"] for r in data.rows} <= set(VALID)
    assert data.crops.shape == (len(data.rows), CONFIG.cache_side, CONFIG.cache_side, 3)
    assert data.crops.dtype == np.uint8
    assert read_manifest(out / "manifest.csv") == data.rows
    json.loads((out / "data_report.json").read_text())
    assert all(set(s) == {"file", "field", "reason"} for s in data.report["skipped"])


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, **SETTINGS)
@given(doc=chaos_doc())
def test_read_coco_gives_samples_or_data_error(source: Path, doc: Any) -> None:
    RUNS["read_coco"] += 1
    path = write_doc(source, doc)
    report = DataReport()
    try:
        samples = read_coco(path, MAPPING, report)
    except DataError:
        event("read_coco: DataError")
        return
    event(f"read_coco: {'some' if samples else 'no'} samples, {'some' if report.skipped else 'no'} skipped")
    for s in samples:
        assert isinstance(s.source, str) and s.label in MAPPING.classes
        assert s.bbox is not None and all(math.isfinite(v) for v in s.bbox) and s.bbox[2] > 0 and s.bbox[3] > 0
    json.dumps(report.skipped)  # the report stays serialisable


@settings(max_examples=120, **SETTINGS)
@given(raw=RAW)
def test_unreadable_annotation_bytes_are_a_data_error(source: Path, raw: bytes) -> None:
    RUNS["raw bytes"] += 1
    path = source / "annotations.json"
    path.write_bytes(raw)
    try:
        read_coco(path, MAPPING, DataReport())
    except DataError as exc:
        event(f"raw: DataError ({str(exc).partition(' (')[0].partition(': ')[2][:40]})")
    else:
        event("raw: read")


@settings(max_examples=120, **SETTINGS)
@given(doc=chaos_doc())
def test_prepare_dataset_gives_data_or_data_error(source: Path, doc: Any) -> None:
    RUNS["prepare chaos"] += 1
    write_doc(source, doc)
    data = prepare(source)
    event("prepare: DataError" if isinstance(data, DataError) else f"prepare: {'some' if data.rows else 'no'} rows")


@settings(max_examples=120, **SETTINGS)
@given(case=mixed_doc())
def test_valid_annotations_survive_and_invalid_ones_are_reported(source: Path, case: Any) -> None:
    RUNS["prepare mixed"] += 1
    doc, expected, refused = case
    write_doc(source, doc)
    data = prepare(source)
    if not expected:  # nothing usable is an error, and the report still lists every refused photo
        assert isinstance(data, DataError) and "no usable samples" in str(data), data
    else:
        assert not isinstance(data, DataError), data
        assert len(data.rows) == len(expected)
        assert {(r["source"], int(r["ann_id"])) for r in data.rows} == expected
    event(
        f"mixed: {min(len(expected), 5)}{'+' if len(expected) >= 5 else ''} valid, "
        f"{'some' if refused else 'no'} refused photos"
    )
    reported = {s["file"] for s in data.report["skipped"] if s["field"] == "file_name"}
    lone_surrogates = refused & {HIGH_SURROGATE, ESCAPED_BYTE}
    assert refused - lone_surrogates <= reported  # every refused photo is named in the report
    if lone_surrogates:  # these are refused earlier, by read_coco, at their image record
        assert any(s["reason"].startswith("not valid Unicode") for s in data.report["skipped"])


# --------------------------------------------------------------------------- inputs that once crashed


@pytest.mark.parametrize(
    "change, rows",
    [
        ({"bbox": [0, 0, 10**400, 5]}, 0),  # OverflowError in math.isfinite; now a skipped bbox
        ({"width": 10**400}, 1),  # the same in the declared size; now ignored like any unusable size
        (b'{"images": [], "annotations": [], "categories": [], "n": ' + b"1" * 5000 + b"}", None),  # ValueError
        (b"[" * 100_000 + b"]" * 100_000, None),  # RecursionError
        ({"file_name": HIGH_SURROGATE}, 0),  # UnicodeEncodeError in safe_path's resolve; now a skipped record
        ({"file_name": ESCAPED_BYTE}, 0),  # UnicodeEncodeError hashing the list of sources; now a skipped record
    ],
    ids=["huge-int-bbox", "huge-int-width", "5000-digit-int", "deep-nesting", "lone-surrogate", "escaped-byte"],
)
def test_inputs_that_once_crashed(source: Path, change: Any, rows: int | None) -> None:
    """None: a DataError is expected; a number: the rows a clean result has."""
    if isinstance(change, bytes):
        (source / "annotations.json").write_bytes(change)
    else:
        image = {"id": 1, "file_name": "a.jpg", "width": 120, "height": 90}
        ann = {"id": 1, "image_id": 1, "category_id": MAPPED[0], "bbox": [5, 5, 20, 20]}
        image.update({k: v for k, v in change.items() if k != "bbox"})
        ann.update({k: v for k, v in change.items() if k == "bbox"})
        write_doc(source, {"images": [image], "annotations": [ann], "categories": CATS})
    data = prepare(source)
    if rows is None:
        assert isinstance(data, DataError) and "cannot read COCO annotations" in str(data)
    elif rows == 0:  # the record is skipped and reported; with nothing else left that is a clear error
        assert isinstance(data, DataError) and "no usable samples" in str(data) and data.report["skipped"]
    else:
        assert not isinstance(data, DataError), data
        assert len(data.rows) == rows


def test_imagefolder_file_name_that_is_not_utf8_is_skipped(tmp_path: Path) -> None:
    """Once a UnicodeEncodeError: a file name with a byte that is not UTF-8 reached the manifest."""
    cls = tmp_path / "src" / "Metal"
    solid_jpeg(cls / "ok.jpg")
    (cls / ESCAPED_BYTE).write_bytes((cls / "ok.jpg").read_bytes())  # on disk: Metal/\x80.jpg
    data = prepare_dataset(tmp_path / "src", tmp_path / "out", CONFIG, progress=False, threads=1)
    assert [r["source"] for r in data.rows] == ["Metal/ok.jpg"]
    skipped = [(s["file"], s["reason"]) for s in data.report["skipped"]]
    assert skipped == [("Metal/\\udc80.jpg", "name is not valid UTF-8")]


def test_zz_report_how_many_files_were_generated(capsys: pytest.CaptureFixture[str]) -> None:
    """Says how many generated files the property tests above ran (shown even without -s)."""
    detail = ", ".join(f"{k} {v}" for k, v in RUNS.items())
    with capsys.disabled():
        print(f"\nproperty tests: {sum(RUNS.values())} generated COCO files ({detail})")
