"""The predict path on real photos: decode throughput (full, JPEG draft, threads), draft's effect on predictions and
F1, end-to-end predict time and the command's cold start.

    .venv/bin/python benchmarks/bench_predict.py --data ../shared/data/trashnet-256
    .venv/bin/python benchmarks/bench_predict.py --data ../shared/data/taco-sample --model runs/x/winner

Prepares the data as the workbook does (cache_side 128, pad) under benchmarks/results/predict-<data>/, takes the
given shipped model or fine-tunes a small one there (EfficientNet-Lite0 from its ImageNet weights at 64 px for
--epochs, exported to ONNX with its model card), then on the test split (or --split all): decodes every crop at
full size and with draft (gap 1 and 2) in 1 and 2 threads, compares the crops and the predictions, times predict
end to end, and times `python -m trashlib predict` on one photo in a fresh process. Prints a table and writes
benchmarks/results/predict-<data>-<split>.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trashlib.data import PrepareConfig, prepare_dataset
from trashlib.files import atomic_write_json
from trashlib.predict import draft_agreement, items_from_manifest, load_crops, load_model, predict

ROOT = Path(__file__).resolve().parents[1]


def train_small(data, folder: Path, epochs: int, threads: int) -> Path:
    """EfficientNet-Lite0 from ImageNet weights, fine-tuned at 64 px, exported with its card to folder/."""
    from trashlib.candidate import model_spec
    from trashlib.models import build_model, model_preprocessing
    from trashlib.quantize import export_onnx, model_card, write_model_card
    from trashlib.train import TrainConfig, seed_everything, train_model

    norm = model_preprocessing("efficientnet_lite0")
    seed_everything(0)
    model = build_model("efficientnet_lite0", len(data.classes), 64, pretrained=True)
    config = TrainConfig(
        epochs=epochs,
        image_size=64,
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        lr=1e-3,
        threads=threads,
        batch_size=64,
    )
    model = train_model(model, data.split("train"), data.split("val"), config, progress=False).model.eval()
    spec = model_spec("efficientnet_lite0", data, 64, norm)
    card = model_card(spec, {"source": "bench_predict"}, prepare=data.meta["config"])
    onnx_path = export_onnx(model, spec, folder / "model.onnx", card)
    write_model_card(folder / "model_card.json", card, onnx_path)
    return folder


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
        train_small(data, model_path, args.epochs, args.threads)
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
    print(f"  cold start (python -m trashlib predict, one photo): {start:.2f} s -> {out}")


if __name__ == "__main__":
    main()
