"""ONNX int8 after quantization-aware fine-tuning (``quantize.onnx_int8_aware_finetune``) against plain post-training
int8, on a run's candidates.

    .venv/bin/python benchmarks/bench_int8_aware.py --run runs/trashnet-real --epochs 3 --lr 1e-4

For each candidate (``stage/label``; by default the searched network and the distilled teacher, those the run has)
the fp32 model is exported and quantized by ``quantize_onnx_int8`` with notebook 04's calibration crops (the stem in
fp32). Then a copy is fine-tuned with the weights and inputs of its convolutions and linear layers fake-quantized as
that quantizer quantizes them, distilled from the run's teacher, and exported and quantized the same way. Each
model is scored on the val and test crops: macro-F1, and predictions that flip between an int8 file and the fp32
model it was quantized from. The graphs are the same, so nothing is timed. Prints a table and writes
benchmarks/results/int8-aware-<run>.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trashlib.bench import machine_info
from trashlib.candidate import load_candidate
from trashlib.data import load_prepared
from trashlib.files import atomic_write_json
from trashlib.models import ModelSpec
from trashlib.quantize import (
    OrtModel,
    calibration_batches,
    export_onnx,
    onnx_int8_aware_finetune,
    quantize_onnx_int8,
)
from trashlib.run import Run
from trashlib.train import TrainConfig, classification_metrics, predict_logits

DEFAULT_CANDIDATES = ("search/searched", "compress/teacher-distilled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory with the candidates' stages done")
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), help="stage/label names")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run_dir = Path(args.run)
    run = Run(run_dir)
    data = load_prepared(run_dir / "data")
    calibration_images = run.notebook_params("04_deploy").get("calibration_images", 256)
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    images, split = np.concatenate([val[0], test[0]]), len(val[1])
    teacher = load_candidate(run, "baseline", "teacher")
    rows: list[dict[str, Any]] = []

    def score(name: str, model: nn.Module, spec: ModelSpec, reference: np.ndarray | None) -> np.ndarray:
        logits = predict_logits(model, images, spec.image_size, normalization=spec.normalization)
        row = {
            "variant": name,
            "f1_val": classification_metrics(logits[:split], val[1], data.classes)["macro_f1"],
            "f1_test": classification_metrics(logits[split:], test[1], data.classes)["macro_f1"],
            "flips_vs_fp32": None if reference is None else int((logits.argmax(1) != reference.argmax(1)).sum()),
            "crops": len(images),
        }
        rows.append(row)
        flips = "" if reference is None else f", {row['flips_vs_fp32']}/{len(images)} flips from its fp32"
        print(f"{name}: val F1 {row['f1_val']:.4f}, test F1 {row['f1_test']:.4f}{flips}", flush=True)
        return logits

    with tempfile.TemporaryDirectory(prefix="trashlib-bench-aware-") as tmp:

        def int8(model: nn.Module, spec: ModelSpec, tag: str, batches: list[torch.Tensor]) -> OrtModel:
            fp32 = export_onnx(model, spec, Path(tmp) / f"{tag}.onnx")
            return OrtModel(quantize_onnx_int8(fp32, Path(tmp) / f"{tag}-int8.onnx", batches), args.threads)

        for name in args.candidates:
            stage, label = name.split("/", 1)
            candidate = load_candidate(run, stage, label)
            if candidate is None:
                print(f"{name}: not in {run_dir}, skipped")
                continue
            model, spec = candidate.model.eval(), candidate.spec
            batches = calibration_batches(train[0], spec, max_images=calibration_images)  # both int8 files use them
            reference = score(f"{label} fp32", model, spec, None)
            score(f"{label} int8", int8(model, spec, label, batches), spec, reference)
            config = TrainConfig.for_spec(
                spec,
                teacher=teacher.spec if teacher else None,
                epochs=args.epochs,
                lr=args.lr,
                batch_size=32,
                augment=0.3,
                seed=0,
                threads=args.threads,
            )
            started = time.perf_counter()
            tuned = onnx_int8_aware_finetune(model, train, val, config, teacher=teacher.model if teacher else None)
            rows[-1]["finetune_s"] = time.perf_counter() - started
            tuned_logits = score(f"{label} int8-aware fp32", tuned, spec, None)
            score(f"{label} int8-aware int8", int8(tuned, spec, f"{label}-aware", batches), spec, tuned_logits)
    out = Path("benchmarks/results") / f"int8-aware-{run_dir.name}.json"
    atomic_write_json(
        out,
        {
            "run": str(run_dir),
            "candidates": args.candidates,
            "epochs": args.epochs,
            "lr": args.lr,
            "calibration_images": calibration_images,
            "rows": rows,
            "machine": machine_info(),
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
