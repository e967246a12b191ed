"""The predict path on real photos: decode throughput (full, JPEG draft, threads), draft's effect on predictions and
F1, end-to-end predict time and the command's cold start.

    .venv/bin/python benchmarks/bench_predict.py --data ../shared/data/trashnet-256
    .venv/bin/python benchmarks/bench_predict.py --data ../shared/data/taco-sample --model runs/x/winner

Prepares the data as the workbook does (cache_side 128, pad) under benchmarks/results/predict-<data>/, takes the
given shipped model or fine-tunes one there (EfficientNet-Lite0 from its ImageNet weights at --image-size px for
--epochs, exported to ONNX fp32 and static int8 with its model card), then on the test split (or --split all):
decodes every crop at full size and with draft (gap 1 and 2) in 1 and 2 threads, compares the crops and the
predictions, times predict end to end, times `python -m trashlib predict` on one photo in a fresh process, and
times the submission of the test split through the shipped path (fp32 and int8, onnxruntime and OpenVINO)
against the competition's own loop. Prints a table and writes benchmarks/results/predict-<data>-<split>.json.
Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trashlib.bench import machine_info
from trashlib.data import PrepareConfig, prepare_dataset
from trashlib.files import atomic_write_json
from trashlib.predict import draft_agreement, items_from_manifest, load_crops, load_model, predict

ROOT = Path(__file__).resolve().parents[1]


def train_small(data, folder: Path, epochs: int, threads: int, size: int = 64) -> Path:
    """EfficientNet-Lite0 from ImageNet weights, fine-tuned at ``size`` px, exported with its card to folder/."""
    from trashlib.models import ModelSpec, build_model
    from trashlib.quantize import export_onnx, model_card, write_model_card
    from trashlib.train import TrainConfig, seed_everything, train_model

    spec = ModelSpec.create("efficientnet_lite0", data.classes, size)
    seed_everything(0)
    model = build_model("efficientnet_lite0", len(data.classes), size, pretrained=True)
    config = TrainConfig.for_spec(spec, epochs=epochs, lr=1e-3, threads=threads, batch_size=64)
    model = train_model(model, data.split("train"), data.split("val"), config, progress=False).model.eval()
    card = model_card(spec, {"source": "bench_predict"}, prepare=data.meta["config"])
    onnx_path = export_onnx(model, spec, folder / "model.onnx", card)
    write_model_card(folder / "model_card.json", card, onnx_path)
    return folder


def int8_of(data, folder: Path) -> Path:
    """folder-int8/: the model trained here as onnxruntime static int8 (QDQ), calibrated on 256 training crops."""
    import json

    from trashlib.models import ModelSpec
    from trashlib.quantize import calibration_batches, quantize_onnx_int8, write_model_card

    int8 = Path(f"{folder}-int8")
    if not (int8 / "model_card.json").is_file():
        card = json.loads((folder / "model_card.json").read_text())
        spec = ModelSpec.create("efficientnet_lite0", data.classes, card["image_size"])
        batches = calibration_batches(data.split("train")[0][:256], spec)
        int8.mkdir(parents=True, exist_ok=True)
        path = quantize_onnx_int8(folder / "model.onnx", int8 / "model.onnx", batches)
        write_model_card(int8 / "model_card.json", {k: v for k, v in card.items() if not k.startswith("onnx_")}, path)
    return int8


def submit_comparison(data, shipped: dict[str, Path], *, threads: int, rounds: int) -> dict:
    """The competition's own loop (MnasNet 1.0 at 128 px, the baseline's architecture, random weights: only its time
    counts; PIL and torchvision per image, eager fp32, batch 1) against the shipped path (``predict.submit_time``:
    threaded draft decoding, batched) for each shipped model folder in onnxruntime and OpenVINO; interleaved round
    by round, medians. Returns seconds per variant, F1 of the shipped predictions and the ratios."""
    import torch

    from trashlib.bench import original_loop_submit_time
    from trashlib.models import ModelSpec, build_model
    from trashlib.predict import submit_time

    torch.manual_seed(0)
    baseline = build_model("mnasnet1_0", len(data.classes), 128).eval()
    spec = ModelSpec.create("mnasnet1_0", data.classes, 128)
    root, rows = data.meta["source_root"], data.split_rows("test")
    models = {
        f"{label} {runtime}": load_model(path, runtime=runtime, threads=threads)
        for label, path in shipped.items()
        for runtime in ("onnxruntime", "openvino")
    }
    seconds: dict[str, list[float]] = {"competition loop": [], **{name: [] for name in models}}
    f1 = {}
    for _ in range(rounds):
        seconds["competition loop"].append(original_loop_submit_time(baseline, spec, data, threads=threads)["seconds"])
        for name, model in models.items():
            result = submit_time(model, root, rows, threads=threads)
            seconds[name].append(result["seconds"])
            f1[name] = result["macro_f1"]
    median = {name: statistics.median(times) for name, times in seconds.items()}
    return {
        "n": len(rows),
        "rounds": rounds,
        "seconds": median,
        "x_shorter": {name: median["competition loop"] / t for name, t in median.items()},
        "macro_f1": f1,
    }


def decode_rate(items, pre, *, threads: int, draft: bool, gap: float, rounds: int) -> float:
    """Objects per second through load_crops (best of rounds)."""
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        n = sum(len(b.objects) for b in load_crops(items, pre, threads=threads, draft=draft, draft_gap=gap))
        best = max(best, n / (time.perf_counter() - started))
    return best


def cold_start(model: Path, photo: Path, out: Path, runs: int) -> float:
    """Median wall seconds of `python -m trashlib predict MODEL PHOTO` in a fresh process."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "trashlib", "predict", str(model), str(photo), "--out", str(out)],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an ImageFolder or COCO folder")
    parser.add_argument("--mapping", default="taco")
    parser.add_argument("--model", default=None, help="a shipped model folder or .onnx (default: train one)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96, help="input size of the model trained here")
    parser.add_argument(
        "--submit-rounds", type=int, default=3, help="rounds of the competition loop against the shipped path"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--split", choices=("test", "all"), default="test", help="which photos to decode and compare (default: test)"
    )
    args = parser.parse_args()
    name = Path(args.data).resolve().name
    work = ROOT / "benchmarks" / "results" / f"predict-{name}"
    data = prepare_dataset(
        args.data,
        work / "data",
        PrepareConfig(mapping=args.mapping, cache_side=128),
        progress=False,
        threads=args.threads,
    )
    model_path = Path(args.model) if args.model else work / "model"
    if not args.model and not (model_path / "model_card.json").is_file():
        train_small(data, model_path, args.epochs, args.threads, args.image_size)
    model = load_model(model_path, threads=args.threads)
    pre = model.preprocessing
    rows = data.rows if args.split == "all" else data.split_rows("test")
    items = items_from_manifest(Path(data.meta["source_root"]), rows)
    n = sum(len(it.targets) for it in items)
    rates = {}
    for label, threads, draft, gap in (
        ("full, 1 thread", 1, False, 1.0),
        ("draft, 1 thread", 1, True, 1.0),
        ("full, 2 threads", 2, False, 1.0),
        ("draft, 2 threads", 2, True, 1.0),
        ("draft gap 2, 2 threads", 2, True, 2.0),
    ):
        rates[label] = decode_rate(items, pre, threads=threads, draft=draft, gap=gap, rounds=args.rounds)
    agreement = {
        f"gap {gap:g}": draft_agreement(model, items, threads=args.threads, draft_gap=gap) for gap in (1.0, 2.0)
    }
    end_to_end = {}
    for label, threads, draft in (("full, 1 thread", 1, False), ("draft, 2 threads", 2, True)):
        result = predict(model, items, threads=threads, draft=draft)
        end_to_end[label] = {
            "seconds": result.seconds,
            "model_seconds": result.inference_seconds,
            "objects_per_s": len(result.rows) / result.seconds,
        }
    start = cold_start(model_path, items[0].path, work / "one.csv", 3)
    shipped = {"fp32": model_path}
    if not args.model:
        shipped["int8"] = int8_of(data, model_path)
    submit = submit_comparison(data, shipped, threads=args.threads, rounds=args.submit_rounds)
    doc = {
        "data": args.data,
        "model": str(model_path),
        "split": args.split,
        "n_objects": n,
        "n_photos": len(items),
        "decode_objects_per_s": rates,
        "draft_agreement": agreement,
        "predict": end_to_end,
        "cold_start_s": start,
        "submit": submit,
        "machine": machine_info(),
        "threads": args.threads,
    }
    out = atomic_write_json(ROOT / "benchmarks" / "results" / f"predict-{name}-{args.split}.json", doc)
    print(f"{name}: {n} {args.split} objects in {len(items)} photos")
    for label, rate in rates.items():
        print(f"  decode {label:24s} {rate:8.0f} objects/s")
    for label, a in agreement.items():
        f1 = f", F1 full {a['f1_full']:.4f} draft {a['f1_draft']:.4f} ({a['f1_change']:+.4f})" if "f1_full" in a else ""
        print(
            f"  draft {label}: identical predictions {a['identical_predictions']:.4f}, pixel diff max "
            f"{a['max_abs_pixel_diff']} mean {a['mean_abs_pixel_diff']:.3f}{f1}"
        )
    for label, e in end_to_end.items():
        print(
            f"  predict {label:18s} {e['seconds']:.2f} s ({e['objects_per_s']:.0f} objects/s, model "
            f"{e['model_seconds']:.2f} s)"
        )
    print(f"  cold start (python -m trashlib predict, one photo): {start:.2f} s")
    print(f"  submit time of the {submit['n']} test objects (median of {submit['rounds']} interleaved rounds):")
    for label, t in submit["seconds"].items():
        f1 = f", macro-F1 {submit['macro_f1'][label]:.4f}" if label in submit["macro_f1"] else ""
        print(f"    {label:28s} {t:7.2f} s  {submit['x_shorter'][label]:5.1f}x shorter{f1}")
    print(f"  CPU: {doc['machine']['cpu_model']} ({', '.join(doc['machine']['cpu_int8_flags'])}) -> {out}")


if __name__ == "__main__":
    main()
