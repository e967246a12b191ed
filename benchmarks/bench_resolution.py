"""Input resolution as a speed knob: EfficientNet-Lite0 fine-tuned at smaller sizes, deployed as ONNX int8, against
the run's baseline MnasNet 1.0 (eager fp32 and onnxruntime fp32) and the run's own 128 px teacher, in one process.

    .venv/bin/python benchmarks/bench_resolution.py --run runs/trashnet-real --sizes 64 96

Reads a run directory with notebook 01 done (`baseline/baseline/` and `baseline/teacher/`). Each size is
fine-tuned from ImageNet with the run's teacher recipe (notebook 01's `teacher_epochs`, `teacher_lr`, ...), and
its test macro-F1 is measured in fp32 and after ONNX static int8. Then every model is timed interleaved, with
fixed threads, at batch 1 and 32. Prints a table and writes benchmarks/results/resolution-<run>.json.
Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from trashlib.bench import count_macs, machine_info, runtime_table
from trashlib.data import PreparedData, load_prepared
from trashlib.files import atomic_write_json
from trashlib.models import ModelSpec, build_model, load_model
from trashlib.quantize import OrtModel, calibration_batches, export_onnx, quantize_onnx_int8
from trashlib.run import Run
from trashlib.train import evaluate, seed_everything, teacher_config, train_model


def macro_f1_on_test(model: nn.Module, spec: ModelSpec, data: PreparedData) -> float:
    x, y = data.split("test")
    return evaluate(model, x, y, data.classes, spec.image_size, normalization=spec.normalization)["macro_f1"]


def fine_tune(size: int, p: dict[str, Any], data: PreparedData) -> tuple[nn.Module, ModelSpec]:
    """EfficientNet-Lite0 from ImageNet at ``size`` px with notebook 01's teacher recipe (its parameters ``p``)."""
    spec = ModelSpec.create("efficientnet_lite0", data.classes, size)
    seed_everything(p["seed"])
    model = build_model(spec.name, spec.num_classes, size, pretrained=True)
    result = train_model(model, data.split("train"), data.split("val"), teacher_config(spec, p), progress=False)
    return result.model, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory with notebook 01 done")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 96])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    run_dir = Path(args.run)
    run = Run(run_dir)
    data = load_prepared(run_dir / "data")
    p = run.notebook_params("01_baseline")
    baseline, b_spec = load_model(run.model_path("baseline", "baseline"))
    teacher, t_spec = load_model(run.model_path("baseline", "teacher"))
    models = [("teacher", teacher, t_spec)] + [(f"effnet-lite0@{s}", *fine_tune(s, p, data)) for s in args.sizes]
    train_x, _ = data.split("train")
    table = {"baseline eager-fp32": (baseline, b_spec.image_size, count_macs(baseline, b_spec.image_size), "fp32")}
    f1 = {"baseline eager-fp32": macro_f1_on_test(baseline, b_spec, data)}
    with tempfile.TemporaryDirectory(prefix="trashlib-bench-res-") as tmp:
        base_onnx = OrtModel(export_onnx(baseline, b_spec, Path(tmp) / "baseline.onnx"), args.threads)
        table["baseline onnx-fp32"] = (base_onnx, b_spec.image_size, table["baseline eager-fp32"][2], "fp32")
        f1["baseline onnx-fp32"] = macro_f1_on_test(base_onnx, b_spec, data)
        for name, model, spec in models:
            fp32 = export_onnx(model, spec, Path(tmp) / f"{name}.onnx")
            int8 = OrtModel(
                quantize_onnx_int8(fp32, Path(tmp) / f"{name}-int8.onnx", calibration_batches(train_x[:256], spec)),
                args.threads,
            )
            label = f"{name} onnx-int8"
            table[label] = (int8, spec.image_size, count_macs(model, spec.image_size), "int8")
            f1[f"{name} fp32"], f1[label] = macro_f1_on_test(model, spec, data), macro_f1_on_test(int8, spec, data)
            print(f"{name}: test macro-F1 fp32 {f1[f'{name} fp32']:.3f}, onnx-int8 {f1[label]:.3f}", flush=True)
        rows = runtime_table(table, threads=args.threads, rounds=args.rounds)
    ort_b1 = next(r["b1_ms"] for r in rows if r["variant"] == "baseline onnx-fp32")
    print(
        f"\n{'variant':30s} {'F1 test':>8s} {'MACs':>12s} {'b1 ms':>7s} {'x eager':>8s} {'x ORT fp32':>10s} "
        f"{'b32 ms':>7s}"
    )
    for r in rows:
        r["f1_test"], r["speedup_b1_vs_ort_fp32"] = f1[r["variant"]], ort_b1 / r["b1_ms"]
        print(
            f"{r['variant']:30s} {r['f1_test']:8.3f} {r['macs']:12,d} {r['b1_ms']:7.3f} {r['speedup_b1']:8.2f} "
            f"{r['speedup_b1_vs_ort_fp32']:10.2f} {r['b32_ms']:7.2f}"
        )
    out = Path("benchmarks/results") / f"resolution-{run_dir.name}.json"
    atomic_write_json(
        out,
        {
            "run": str(run_dir),
            "sizes": args.sizes,
            "recipe": p,
            "rows": rows,
            "fp32_f1": {k: v for k, v in f1.items() if k.endswith("fp32")},
            "machine": machine_info(),
            "threads": args.threads,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
