"""One candidate model's record: test macro-F1 (public/private), measured cost and scores, saved to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from trashlib.bench import profile_model
from trashlib.data import PreparedData
from trashlib.files import read_json
from trashlib.models import load_model, save_model
from trashlib.score import score_candidate
from trashlib.train import evaluate
from trashlib.workbook import Run


def model_spec(name: str, data: PreparedData, image_size: int, normalization: dict[str, list[float]],
               **extra: Any) -> dict[str, Any]:
    """What rebuilds and feeds a model: architecture name, classes, input size and normalisation."""
    return {"name": name, "num_classes": len(data.classes), "class_names": list(data.classes),
            "image_size": image_size, "mean": list(normalization["mean"]), "std": list(normalization["std"]),
            **extra}


def assess_candidate(label: str, model: nn.Module, spec: dict[str, Any], data: PreparedData, threads: int = 2,
                     baseline: dict[str, Any] | None = None, latency_runs: int = 50) -> dict[str, Any]:
    """Test-split quality and cost of one model, and its competition scores (published and relative)."""
    size, norm = spec["image_size"], {"mean": spec["mean"], "std": spec["std"]}
    quality = {}
    for key, subset in (("test", None), ("public", "public"), ("private", "private")):
        x, y = data.split("test", subset)
        quality[key] = evaluate(model, x, y, data.classes, size, normalization=norm) if len(y) else None
    cost = profile_model(model, size, norm, data, threads=threads, runs=latency_runs)
    test = quality["test"]
    f1, t = test["macro_f1"], cost["submit"]["seconds"]
    scores = score_candidate(f1, t, baseline and baseline["f1_test"], baseline and baseline["submit_s"])
    return {
        "candidate": label, "model": spec["name"], "image_size": size,
        "f1_test": f1, "f1_public": quality["public"] and quality["public"]["macro_f1"],
        "f1_private": quality["private"] and quality["private"]["macro_f1"], "accuracy_test": test["accuracy"],
        "latency_b1_ms": cost["latency_b1"]["median_ms"], "latency_b1_p90_ms": cost["latency_b1"]["p90_ms"],
        "throughput_b32_ips": cost["throughput_b32"]["images_per_s"], "submit_s": t,
        "submit_n": cost["submit"]["n"], "macs": cost["macs"], "params": cost["params"],
        "size_bytes": cost["size_bytes"], **scores,
        "submit_agrees_with_cache": cost["submit_predictions"] == test["predictions"],
        "per_class": test["per_class"], "confusion_matrix": test["confusion_matrix"],
        "threads": threads, "machine": cost["machine"],
    }


def save_candidate(run: Run, stage: str, record: dict[str, Any], model: nn.Module, spec: dict[str, Any],
                   params: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """`<stage>/<candidate>/model.pt` (spec + weights) and `metrics.json` beside it."""
    folder = f"{stage}/{record['candidate']}"
    save_model(model, run.path(folder, "model.pt"), spec)
    return run.write_metrics(folder, {**record, **(extra or {})}, params)


def load_candidate(run: Run, stage: str, label: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]] | None:
    """A saved candidate's model, spec and metrics, or None when it is not in the run directory."""
    folder = run.run_dir / stage / label
    if not (folder / "model.pt").is_file() or not (folder / "metrics.json").is_file():
        return None
    model, spec = load_model(folder / "model.pt")
    return model, spec, read_json(folder / "metrics.json")["metrics"]
