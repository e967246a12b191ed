"""Kills and reruns: atomic writes survive SIGKILL, and the smoke workbook gives identical results twice."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trashlib.models import weights_sha256
from trashlib.run import PROJECT_ROOT
from trashlib.workbook import run_workbook

WRITER = """
import sys
from trashlib.files import atomic_write_bytes
target = sys.argv[1]
size = 8 << 20
i = 0
print("ready", flush=True)
while True:
    atomic_write_bytes(target, (b"a" if i % 2 else b"b") * size)
    i += 1
"""


def test_sigkill_during_atomic_writes_never_leaves_a_truncated_file(tmp_path: Path, capsys):
    target = tmp_path / "metrics.bin"
    target.write_bytes(b"a" * (8 << 20))
    kills = 0
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)],
            stdout=subprocess.PIPE,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        data = target.read_bytes()
        assert len(data) == 8 << 20 and data.count(data[:1]) == len(data), (
            f"after kill {kills} the file is truncated or mixed"
        )
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != target.name]
    assert all(name.startswith(".metrics.bin.") and name.endswith(".tmp") for name in leftovers), leftovers
    with capsys.disabled():
        print(f"\natomic writes: {kills} SIGKILLs, target always complete; {len(leftovers)} hidden temp files left")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_smoke_workbook_twice_gives_identical_manifests_metrics_and_checkpoints(tmp_path: Path, capsys):
    kwargs = dict(
        runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", only=["00", "01"], log=lambda line: None
    )
    started = time.perf_counter()
    for name in ("one", "two"):
        summary = run_workbook("smoke", "synthetic", name, **kwargs)
        assert summary.ok, [r.error for r in summary.results]
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    for rel in ("data/manifest.csv", "data/crops.npy"):
        assert _digest(one / rel) == _digest(two / rel), f"{rel} differs between two identical runs"
    a = json.loads((one / "baseline/baseline/metrics.json").read_text())
    b = json.loads((two / "baseline/baseline/metrics.json").read_text())
    # torch.save embeds a random serialization id, so the checkpoint is compared by its weights' hash
    loaded = [torch.load(run / "baseline/baseline/model.pt", weights_only=True) for run in (one, two)]
    assert (
        weights_sha256(loaded[0]["state_dict"])
        == weights_sha256(loaded[1]["state_dict"])
        == a["metrics"]["weights_sha256"]
        == b["metrics"]["weights_sha256"]
    )
    assert a["metrics"]["f1_test"] == b["metrics"]["f1_test"] and a["metrics"]["per_class"] == b["metrics"]["per_class"]
    assert (
        a["metrics"]["training"]["history"][-1]["val_macro_f1"]
        == b["metrics"]["training"]["history"][-1]["val_macro_f1"]
    )
    assert a["params"]["seed"] == 0 and a["data_manifest_sha256"] == b["data_manifest_sha256"] is not None
    assert {"torch", "torchvision", "python"} <= set(a["environment"])
    with capsys.disabled():
        print(
            f"\nreproducibility: two smoke runs (00, 01) identical; test F1 {a['metrics']['f1_test']!r}; "
            f"{time.perf_counter() - started:.0f} s"
        )


@pytest.mark.parametrize("source", ["../outside.jpg", "/etc/hostname", "a/../../outside.jpg", "link/x.jpg"])
def test_a_tampered_manifest_row_cannot_reach_outside_the_data_root(tmp_path: Path, source: str):
    from conftest import solid_jpeg

    from trashlib.data import DataError, load_crop

    root = tmp_path / "root"
    root.mkdir()
    solid_jpeg(tmp_path / "outside.jpg")
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "x.jpg").write_bytes((tmp_path / "outside.jpg").read_bytes())
    solid_jpeg(root / "inside.jpg")
    box = {"crop_x0": "0", "crop_y0": "0", "crop_x1": "10", "crop_y1": "10"}
    assert load_crop(root, {"source": "inside.jpg", **box}, 32).shape == (32, 32, 3)
    with pytest.raises(DataError):
        load_crop(root, {"source": source, **box}, 32)
