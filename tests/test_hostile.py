"""Hostile inputs, round two: each case once broke the workbook (a traceback, a hang, lost data or a wrong result)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT, cat_id, six_class_photos, solid_jpeg
from test_download import FaultServer, record, server  # noqa: F401  (the local HTTP server fixture)
from test_workbook import write_mini

from trashlib import report
from trashlib.candidate import NoWinner, Winner, chance_f1, ship_winner
from trashlib.data import DataError, PrepareConfig, load_prepared, prepare_dataset
from trashlib.download import DownloadError, download_taco
from trashlib.run import LOCK_FILE, RunError, open_run, run_lock
from trashlib.workbook import ParameterError, data_fingerprint, list_notebooks, resolve_parameters, run_workbook

CONFIG = PrepareConfig(cache_side=32)


def cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trashlib", *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=120
    )


# --------------------------------------------------------------------------- 1. a corrupt crop cache


def test_a_corrupt_crop_cache_is_found_and_prepared_again(coco_factory, tmp_path: Path):
    root, _ = coco_factory(six_class_photos(12))
    out = tmp_path / "data"
    first = prepare_dataset(root, out, CONFIG, progress=False)
    good = np.array(first.crops)
    blob = bytearray((out / "crops.npy").read_bytes())
    blob[200:1200] = bytes(1000)  # a corrupt region past the .npy header
    (out / "crops.npy").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"crops.npy does not match the sha256 recorded"):
        load_prepared(out)
    again = prepare_dataset(root, out, CONFIG, progress=False)  # the corrupt cache is not reused
    np.testing.assert_array_equal(np.array(again.crops), good)
    (out / "manifest.csv").write_text((out / "manifest.csv").read_text().replace(",train,", ",test,", 1))
    with pytest.raises(DataError, match=r"manifest.csv does not match"):
        load_prepared(out)


@pytest.mark.slow
def test_the_runner_tracks_every_output_of_a_notebook_and_reruns_on_a_corrupt_cache(tmp_path: Path):
    kwargs = {"runs_root": tmp_path / "runs", "reports_root": tmp_path / "reports", "only": ["00"]}
    lines: list[str] = []
    overrides = {"synthetic_images": 24, "cache_side": 32}
    run_workbook("smoke", "synthetic", "r", overrides=overrides, log=lines.append, **kwargs)
    stamp = tmp_path / "runs" / "r" / "notebooks" / ".00_eda.stamp"
    crops = tmp_path / "runs" / "r" / "data" / "crops.npy"
    blob = bytearray(crops.read_bytes())
    blob[300:1300] = bytes(1000)
    crops.write_bytes(bytes(blob))
    lines.clear()
    run_workbook("smoke", "synthetic", "r", overrides=overrides, log=lines.append, **kwargs)
    assert any("output data/crops.npy is missing or changed" in line for line in lines), lines
    outputs = json.loads(stamp.read_text())["outputs"]
    assert {"data/crops.npy", "data/manifest.csv", "data/dataset.json", "headlines/00_eda.json"} <= set(outputs)
    load_prepared(crops.parent)  # prepared again, not the corrupt copy
    lines.clear()
    run_workbook("smoke", "synthetic", "r", overrides=overrides, log=lines.append, **kwargs)
    assert any("up to date" in line for line in lines), lines


# --------------------------------------------------------------------------- 2. one photo under two names


def test_one_photo_under_two_names_or_two_copies_stays_in_one_split(coco_factory, tmp_path: Path):
    photos = six_class_photos(30)
    root, doc = coco_factory(photos)
    images = []
    for image in doc["images"]:  # every photo listed twice more: ./name and with a doubled slash
        images.append(image)
        for spelling, offset in ((f"./{image['file_name']}", 1000), (image["file_name"].replace("/", "//"), 2000)):
            images.append({**image, "id": image["id"] + offset, "file_name": spelling})
    extra = []
    for ann in doc["annotations"]:
        for offset in (1000, 2000):
            extra.append({**ann, "id": ann["id"] + 10 * offset, "image_id": ann["image_id"] + offset})
    # and byte-identical copies under other names
    for k in range(6):
        copy = root / "img" / f"copy{k}.jpg"
        copy.write_bytes((root / photos[k][0]).read_bytes())
        images.append({"id": 5000 + k, "file_name": f"img/copy{k}.jpg", "width": 120, "height": 90})
        extra.append(
            {"id": 90000 + k, "image_id": 5000 + k, "category_id": cat_id("Drink can"), "bbox": [5, 5, 40, 30]}
        )
    (root / "annotations.json").write_text(
        json.dumps({**doc, "images": images, "annotations": doc["annotations"] + extra})
    )
    data = prepare_dataset(root, tmp_path / "out", CONFIG, progress=False)
    by_content: dict[str, set[str]] = {}
    for row in data.rows:
        by_content.setdefault(row["sha256"], set()).add(row["split"])
    assert len(data.rows) == 3 * 60 + 6
    assert all(len(splits) == 1 for splits in by_content.values()), "a photo's crops straddle splits"
    assert {r["source"] for r in data.rows} == {p[0] for p in photos} | {f"img/copy{k}.jpg" for k in range(6)}
    assert sum("are the same photo" in w for w in data.report["warnings"]) == 6


# --------------------------------------------------------------------------- 3. an annotations file as --data


def test_the_fingerprint_of_an_annotations_file_follows_its_content(coco_factory):
    root, doc = coco_factory(six_class_photos(6))
    ann = root / "annotations.json"
    before = data_fingerprint(str(ann))
    ann.write_text(json.dumps({**doc, "annotations": doc["annotations"][:2]}))
    os.utime(ann, ns=(1, 1))  # whatever the clock: the size changed
    assert data_fingerprint(str(ann)) != before
    assert data_fingerprint(str(ann)) != data_fingerprint("synthetic")


# --------------------------------------------------------------------------- 5 and 6. imagefolder splits, no data


def test_an_imagefolder_split_into_train_and_val_keeps_every_image(tmp_path: Path):
    for split, n in (("train", 9), ("val", 3)):
        for k, (cls, colour) in enumerate((("glass", (0, 200, 0)), ("metal", (200, 200, 200)))):
            for i in range(n):
                shade = tuple(max(0, c - 7 * i - 40 * k - (60 if split == "val" else 0)) for c in colour)
                solid_jpeg(tmp_path / "if" / split / cls / f"{i}.jpg", (50, 40), shade)
    data = prepare_dataset(tmp_path / "if", tmp_path / "out", CONFIG, progress=False)
    assert data.classes == ["glass", "metal"] and len(data.rows) == 24
    splits = {r["source"]: r["split"] for r in data.rows}
    assert all(v == "val" for k, v in splits.items() if k.startswith("val/"))
    assert {v for k, v in splits.items() if k.startswith("train/")} == {"train", "test"}
    with pytest.raises(DataError, match="mixes split folders"):
        (tmp_path / "if" / "paper").mkdir()
        prepare_dataset(tmp_path / "if", tmp_path / "out2", CONFIG, progress=False)


def test_data_without_a_usable_sample_is_a_clear_error(coco_factory, tmp_path: Path):
    root, doc = coco_factory(six_class_photos(3))
    (root / "annotations.json").write_text(json.dumps({**doc, "annotations": []}))
    with pytest.raises(DataError, match="no usable samples"):
        prepare_dataset(root, tmp_path / "out", CONFIG, progress=False)
    assert (tmp_path / "out" / "data_report.json").is_file() and not (tmp_path / "out" / "dataset.json").exists()
    (tmp_path / "empty" / "Metal").mkdir(parents=True)
    (tmp_path / "empty" / "Metal" / "notes.txt").write_text("no photo here")
    with pytest.raises(DataError, match="no usable samples"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out2", CONFIG, progress=False)
    good = prepare_dataset(coco_factory(six_class_photos(6), root=tmp_path / "g")[0], tmp_path / "o3", CONFIG)
    with pytest.raises(ValueError, match="has no samples"):
        report.manifest_frame(type(good)(good.data_dir, good.classes, [], good.crops[:0], good.meta, good.report))


# --------------------------------------------------------------------------- 7. two runners, one run directory


def test_a_second_runner_on_a_run_directory_in_use_fails_fast(tmp_path: Path):
    nb_dir = tmp_path / "notebooks"
    write_mini(nb_dir, "00_first")
    (nb_dir / "params").mkdir()
    (nb_dir / "params" / "p.yaml").write_text("steps: 1\n")
    kwargs = {"runs_root": tmp_path / "runs", "reports_root": tmp_path / "reports", "notebook_dir": nb_dir}
    with run_lock(tmp_path / "runs" / "r"), pytest.raises(RunError, match=rf"in use by pid {os.getpid()} on "):
        run_workbook("p", "synthetic", "r", log=lambda line: None, **kwargs)
    # a holder that died: its lock file stays, the lock itself is free and is taken over
    code = (  # takes the lock and dies without a word, as a killed runner does
        "import os, sys; from pathlib import Path; from trashlib.run import run_lock; "
        "lock = run_lock(Path(sys.argv[1])); lock.__enter__(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs" / "r")], check=True)
    assert (tmp_path / "runs" / "r" / LOCK_FILE).read_text().startswith("pid ")
    summary = run_workbook("p", "synthetic", "r", log=lambda line: None, **kwargs)
    assert summary.ok


def test_the_lock_holder_is_named_on_the_command_line(tmp_path: Path):
    name = f"locked-by-a-test-{os.getpid()}"
    try:
        with run_lock(PROJECT_ROOT / "runs" / name):
            proc = cli("run", "--profile", "smoke", "--name", name)
    finally:
        shutil.rmtree(PROJECT_ROOT / "runs" / name, ignore_errors=True)
        shutil.rmtree(PROJECT_ROOT / "reports" / name, ignore_errors=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: run directory ")
    assert "is in use by pid" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 8. NaN and inf parameters


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_parameters_are_refused(value: float):
    notebooks = list_notebooks()
    with pytest.raises(ParameterError, match="is not a finite number"):
        resolve_parameters({}, {"min_speedup": value}, notebooks)
    with pytest.raises(ParameterError, match="is not a finite number"):
        resolve_parameters({}, {"split_fractions": [0.7, value, 0.15]}, notebooks)


# --------------------------------------------------------------------------- 9, 13, 14. the downloader


FAST = {"backoff": 0.01, "timeout": 0.4, "workers": 2, "retries": 0}


def test_one_file_under_two_spellings_is_one_download(server: FaultServer, tmp_path: Path):  # noqa: F811
    records = [record(server, 0, "ok1.jpg", file_name="dup.jpg"), record(server, 1, "ok2.jpg", file_name="./dup.jpg")]
    summary = download_taco(tmp_path / "t", server.annotations(records), **FAST)
    assert summary.downloaded == 1 and summary.failed == 1
    assert "the same file as images[0]" in summary.failures[0]["reason"]
    assert (tmp_path / "t" / "dup.jpg").read_bytes() == server.images["ok1.jpg"]
    manifest = (tmp_path / "t" / "download_manifest.csv").read_text().splitlines()
    assert next(line for line in manifest if "downloaded" in line).split(",")[1].endswith("/img/ok1.jpg")


def test_a_rerun_with_other_annotations_is_refused_not_ignored(server: FaultServer, tmp_path: Path):  # noqa: F811
    first = server.annotations([record(server, 0, "ok1.jpg")], "/a.json")
    other = server.annotations([record(server, 0, "ok2.jpg")], "/b.json")
    assert download_taco(tmp_path / "t", first, **FAST).ok
    with pytest.raises(DownloadError, match=r"was downloaded from .*/a\.json, not .*/b\.json"):
        download_taco(tmp_path / "t", other, **FAST)
    assert download_taco(tmp_path / "t", first, **FAST).present == 1  # the same URL resumes as before
    report_doc = json.loads((tmp_path / "t" / "download_report.json").read_text())
    assert report_doc["annotations_source"].endswith("/a.json")


def test_the_download_has_a_body_cap_and_a_deadline(server: FaultServer, tmp_path: Path):  # noqa: F811
    records = [record(server, 0, "ok1.jpg"), record(server, 1, "ok2.jpg")]
    cap = min(len(server.images["ok1.jpg"]), len(server.images["ok2.jpg"])) - 1  # the photos exceed it...
    url = server.annotations(records)
    assert len(server.docs["/annotations.json"]) < cap  # ...their annotations do not
    capped = download_taco(tmp_path / "a", url, max_bytes=cap, **FAST)
    assert capped.failed == 2 and all(f"exceeds max_bytes={cap}" in f["reason"] for f in capped.failures)
    late = download_taco(tmp_path / "b", server.annotations(records, "/late.json"), deadline_s=1e-6, **FAST)
    assert late.failed == 2 and all("deadline passed" in f["reason"] for f in late.failures)
    assert not any(p.suffix == ".jpg" for p in (tmp_path / "b").rglob("*"))
    with pytest.raises(DownloadError, match="max_bytes"):
        download_taco(tmp_path / "c", server.annotations(records), max_bytes=0, **FAST)
    proc = cli("download-taco", "--out", str(tmp_path / "d"), "--annotations-url", url,
               "--max-bytes", str(cap), "--retries", "0", "--timeout", "0.4")  # fmt: skip
    assert proc.returncode == 1 and f"exceeds max_bytes={cap}" in proc.stderr


# --------------------------------------------------------------------------- 10. a FIFO named like a photo


def _prepare_within(seconds: float, source: Path, out: Path):
    result: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: result.update(data=prepare_dataset(source, out, CONFIG, progress=False)), daemon=True
    )
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "preparation hangs on a FIFO"
    return result["data"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_named_like_a_photo_is_skipped_not_opened(coco_factory, tmp_path: Path):
    solid_jpeg(tmp_path / "if" / "Metal" / "ok.jpg")
    solid_jpeg(tmp_path / "if" / "Metal" / "ok2.jpg", colour=(10, 20, 30))
    solid_jpeg(tmp_path / "if" / "Paper" / "ok.jpg", colour=(200, 200, 190))
    os.mkfifo(tmp_path / "if" / "Metal" / "pipe.jpg")
    data = _prepare_within(30, tmp_path / "if", tmp_path / "out")
    assert sorted(r["source"] for r in data.rows) == ["Metal/ok.jpg", "Metal/ok2.jpg", "Paper/ok.jpg"]
    assert {"file": "Metal/pipe.jpg", "field": "file", "reason": "not a regular file"} in data.report["skipped"]
    root, doc = coco_factory(six_class_photos(6))
    os.mkfifo(root / "pipe.jpg")
    images = [*doc["images"], {"id": 99, "file_name": "pipe.jpg", "width": 120, "height": 90}]
    annotations = [*doc["annotations"], {**doc["annotations"][0], "id": 999, "image_id": 99}]
    (root / "annotations.json").write_text(json.dumps({**doc, "images": images, "annotations": annotations}))
    coco = _prepare_within(30, root, tmp_path / "out2")
    assert len(coco.rows) == 12 and any("FIFO" in s["reason"] for s in coco.report["skipped"])


# --------------------------------------------------------------------------- 11. one-line errors


def test_bad_command_lines_are_one_line_errors(tmp_path: Path):
    for args, message in (
        (("run", "--name", "x" * 300), "characters long"),
        (("run", "--data", "/", "--name", "rootdata"), "not a data set"),
        (("synthetic", "--images", "0", "--out", str(tmp_path / "s")), "n_images must be at least 1"),
    ):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, proc.stderr)


def test_an_unwritable_run_directory_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nb_dir = tmp_path / "notebooks"
    write_mini(nb_dir, "00_first")
    (nb_dir / "params").mkdir()
    (nb_dir / "params" / "p.yaml").write_text("steps: 1\n")
    kwargs = {"runs_root": tmp_path / "runs", "reports_root": tmp_path / "reports", "notebook_dir": nb_dir}

    def refuse(path: str, *args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("trashlib.run.os.open", refuse)  # root writes anywhere: a read-only mount, simulated
    with pytest.raises(ParameterError, match=r"cannot write to .*\.lock: Permission denied"):
        run_workbook("p", "synthetic", "r", log=lambda line: None, **kwargs)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.undo()
    with pytest.raises(ParameterError, match="cannot write to"):
        run_workbook("p", "synthetic", "r", log=lambda line: None, **{**kwargs, "runs_root": tmp_path / "file"})


# --------------------------------------------------------------------------- 12. a stale winner


def test_a_failed_run_publishes_no_stale_winner(tmp_path: Path):
    nb_dir = tmp_path / "notebooks"
    write_mini(nb_dir, "00_first")
    write_mini(nb_dir, "05_last")
    (nb_dir / "params").mkdir()
    (nb_dir / "params" / "p.yaml").write_text("steps: 1\n")
    kwargs = {"runs_root": tmp_path / "runs", "reports_root": tmp_path / "reports", "notebook_dir": nb_dir}
    for base in (tmp_path / "runs" / "r", tmp_path / "reports" / "r"):  # left by an earlier run
        (base / "winner").mkdir(parents=True)
        (base / "winner" / "model.onnx").write_bytes(b"old model")
        (base / "leaderboard.csv").write_text("candidate\nold\n")
    lines: list[str] = []
    summary = run_workbook("p", "synthetic", "r", overrides={"steps": 0}, log=lines.append, **kwargs)
    assert not summary.ok
    assert not (tmp_path / "reports" / "r" / "winner" / "model.onnx").exists()
    assert not (tmp_path / "reports" / "r" / "leaderboard.csv").exists()
    assert any("nothing published" in line for line in lines)


# --------------------------------------------------------------------------- the winner rule


def _board(rows: list[tuple[str, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"candidate": n, "f1_test": f1, "deployable": d, "score_published": i} for i, (n, f1, d) in enumerate(rows)]
    ).set_index("candidate")


def test_the_winner_must_be_above_chance_and_near_the_baseline(tmp_path: Path):
    run = open_run(tmp_path / "run")
    for name in ("fast-onnx-int8", "good-onnx-int8"):
        (run.run_dir / "deploy" / name).mkdir(parents=True)
        (run.run_dir / "deploy" / name / "model.onnx").write_bytes(name.encode())
        (run.run_dir / "deploy" / name / "model_card.json").write_text("{}")
    board = _board([("fast-onnx-int8", 0.10, True), ("good-onnx-int8", 0.62, True), ("baseline", 0.65, False)])
    shipped = ship_winner(run, board, chance=0.2, baseline_f1=0.65, max_f1_drop=0.05)
    assert isinstance(shipped, Winner) and shipped.candidate == "good-onnx-int8"  # not the faster one at chance
    assert (run.run_dir / "winner" / "model.onnx").read_bytes() == b"good-onnx-int8"
    none = ship_winner(run, board, chance=0.2, baseline_f1=0.80, max_f1_drop=0.05)
    assert isinstance(none, NoWinner) and "above chance 0.200 and at least 0.750" in none.reason
    assert not (run.run_dir / "winner").exists(), "a stale winner stayed in winner/"
    at_chance = ship_winner(run, _board([("fast-onnx-int8", 0.0, True)]), chance=0.17, baseline_f1=None,
                            max_f1_drop=0.05)  # fmt: skip
    assert isinstance(at_chance, NoWinner) and "best deployable scores 0.000" in at_chance.reason


def test_within_f1_tie_of_the_best_ranked_the_fastest_ships(tmp_path: Path):
    run = open_run(tmp_path / "run")
    rows = [("fp32", 0.869, 1.56), ("int8", 0.866, 1.02), ("small", 0.849, 0.70), ("base", 0.64, 1.2)]
    for name, _, _ in rows:
        (run.run_dir / "deploy" / name).mkdir(parents=True)
        (run.run_dir / "deploy" / name / "model.onnx").write_bytes(name.encode())
        (run.run_dir / "deploy" / name / "model_card.json").write_text("{}")
    board = pd.DataFrame(
        [
            {"candidate": n, "f1_test": f1, "latency_b1_ms": ms, "deployable": True, "score_published": i}
            for i, (n, f1, ms) in enumerate(rows)
        ]
    ).set_index("candidate")
    ship = partial(ship_winner, run, board, chance=0.2, baseline_f1=0.64, max_f1_drop=0.05)
    assert ship().candidate == "fp32"  # no tie: the competition ranking alone
    tied = ship(f1_tie=0.005)
    assert isinstance(tied, Winner) and (tied.candidate, tied.ranked_first) == ("int8", "fp32")  # 1.5x faster
    assert (run.run_dir / "winner" / "model.onnx").read_bytes() == b"int8"
    assert ship(f1_tie=0.03).candidate == "small"
    for bad in (-0.1, 1.5, float("nan"), "0.01", True):
        with pytest.raises(ValueError, match="f1_tie"):
            ship(f1_tie=bad)


def test_chance_is_the_better_of_one_over_classes_and_the_majority_class(coco_factory, tmp_path: Path):
    def photo(i: int, category: str) -> tuple[str, tuple[int, int], list[tuple[str, list[float]]]]:
        return (f"img/{i:03d}.jpg", (120, 90), [(category, [5.0, 5.0, 40.0, 30.0])])

    mostly_metal = [photo(i, "Drink can") for i in range(40)] + [photo(40 + i, "Normal paper") for i in range(6)]
    data = prepare_dataset(coco_factory(mostly_metal)[0], tmp_path / "out", CONFIG, progress=False)
    assert chance_f1(data) > 0.3  # always "Metal" scores far above 1/6 here
    balanced = prepare_dataset(coco_factory(six_class_photos(36), root=tmp_path / "b")[0], tmp_path / "o2", CONFIG)
    assert chance_f1(balanced) == pytest.approx(1 / 6)


def test_real_and_full_profiles_require_a_winner():
    for profile in ("real", "full"):
        doc = yaml.safe_load((PROJECT_ROOT / "notebooks" / "params" / f"{profile}.yaml").read_text())
        assert doc["05_leaderboard"]["require_winner"] is True
    smoke = resolve_parameters({}, {}, list_notebooks())["05_leaderboard"]
    assert smoke["require_winner"] is False
