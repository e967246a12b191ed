"""ONNX static int8 with the stem convolution in fp32 (the default) against every convolution in int8, on a run's
candidates, in one process.

    .venv/bin/python benchmarks/bench_int8_stem.py --run runs/trashnet-real --threads 1

For each candidate (``stage/label``; by default the baseline, the searched network and the distilled teacher, those
the run has) the fp32 ONNX export is quantized both ways with the same calibration crops (notebook 04's
``calibration_images``). Each int8 file is compared with the fp32 ONNX model on the val and test crops: predictions
that flip, the mean absolute logit difference, val and test macro-F1. Then all of them are timed interleaved at batch
1 and 32. Prints a table and writes benchmarks/results/int8-stem-<run>.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trashlib.bench import count_macs, machine_info, runtime_table
from trashlib.candidate import load_candidate
from trashlib.data import load_prepared
from trashlib.files import atomic_write_json
from trashlib.quantize import OrtModel, calibration_batches, export_onnx, quantize_onnx_int8
from trashlib.run import Run
from trashlib.train import classification_metrics, predict_logits

DEFAULT_CANDIDATES = ("baseline/baseline", "search/searched", "compress/teacher-distilled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory with the candidates' stages done")
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), help="stage/label names")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    run_dir = Path(args.run)
    run = Run(run_dir)
    data = load_prepared(run_dir / "data")
    calibration_images = run.notebook_params("04_deploy").get("calibration_images", 256)
    train_x, _ = data.split("train")
    (val_x, val_y), (test_x, test_y) = data.split("val"), data.split("test")
    images, split = np.concatenate([val_x, test_x]), len(val_y)
    table: dict[str, tuple[Any, int, int, str]] = {}
    quality: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="trashlib-bench-stem-") as tmp:
        for name in args.candidates:
            stage, label = name.split("/", 1)
            candidate = load_candidate(run, stage, label)
            if candidate is None:
                print(f"{name}: not in {run_dir}, skipped")
                continue
            spec, macs = candidate.spec, count_macs(candidate.model, candidate.spec.image_size)
            fp32 = export_onnx(candidate.model, spec, Path(tmp) / f"{label}.onnx")
            batches = calibration_batches(train_x, spec, max_images=calibration_images)
            variants = {
                f"{label} onnx-fp32": (fp32, "fp32"),
                f"{label} int8 fp32-stem": (
                    quantize_onnx_int8(fp32, Path(tmp) / f"{label}-stem.onnx", batches, float_stem=True),
                    "int8",
                ),
                f"{label} int8 all-int8": (
                    quantize_onnx_int8(fp32, Path(tmp) / f"{label}-all.onnx", batches, float_stem=False),
                    "int8",
                ),
            }
            reference = None
            for variant, (path, precision) in variants.items():
                model = OrtModel(path, args.threads)
                logits = predict_logits(model, images, spec.image_size, normalization=spec.normalization)
                reference = logits if reference is None else reference
                quality[variant] = {
                    "f1_val": classification_metrics(logits[:split], val_y, data.classes)["macro_f1"],
                    "f1_test": classification_metrics(logits[split:], test_y, data.classes)["macro_f1"],
                    "flips": int((logits.argmax(1) != reference.argmax(1)).sum()),
                    "crops": len(images),
                    "mean_abs_logit_diff": float(np.abs(logits - reference).mean()),
                    "fp32_variant": f"{label} onnx-fp32",
                }
                table[variant] = (model, spec.image_size, macs, precision)
                q = quality[variant]
                print(
                    f"{variant}: val F1 {q['f1_val']:.4f}, test F1 {q['f1_test']:.4f}, "
                    f"{q['flips']}/{q['crops']} flips, mean |logit diff| {q['mean_abs_logit_diff']:.4f}",
                    flush=True,
                )
        rows = runtime_table(table, threads=args.threads, rounds=args.rounds)
    print(
        f"\n{'variant':40s} {'val F1':>7s} {'test F1':>7s} {'flips':>6s} {'|dlogit|':>8s} {'b1 ms':>7s} "
        f"{'x fp32':>7s} {'b32 ms':>7s}"
    )
    b1 = {r["variant"]: r["b1_ms"] for r in rows}
    for r in rows:
        r.update(quality[r["variant"]])
        r["speedup_b1_vs_onnx_fp32"] = b1[r["fp32_variant"]] / r["b1_ms"]
        print(
            f"{r['variant']:40s} {r['f1_val']:7.4f} {r['f1_test']:7.4f} {r['flips']:6d} "
            f"{r['mean_abs_logit_diff']:8.4f} {r['b1_ms']:7.3f} {r['speedup_b1_vs_onnx_fp32']:7.2f} {r['b32_ms']:7.2f}"
        )
    out = Path("benchmarks/results") / f"int8-stem-{run_dir.name}.json"
    atomic_write_json(
        out,
        {
            "run": str(run_dir),
            "candidates": args.candidates,
            "calibration_images": calibration_images,
            "rows": rows,
            "machine": machine_info(),
            "threads": args.threads,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
