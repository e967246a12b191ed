"""Baseline recipes on real photos: macro-F1 (test, public, private), epochs per minute, latency, submit time.

    .venv/bin/python benchmarks/bench_baseline.py --data ../shared/data/trashnet-256
    .venv/bin/python benchmarks/bench_baseline.py --data ../shared/data/taco-sample --seeds 0 1 2

Prints a table and writes benchmarks/results/baseline-<data>.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from trashlib.bench import machine_info
from trashlib.candidate import assess_candidate
from trashlib.data import PrepareConfig, PreparedData
from trashlib.files import atomic_write_json
from trashlib.models import ModelSpec, build_model
from trashlib.run import open_run
from trashlib.train import TrainConfig, epochs_per_minute, train_model

# recipe: model, image size, epochs, pretrained, learning rate, batch size, augmentation strength
RECIPES = {
    "mnasnet0_5-scratch": ("mnasnet0_5", 96, 30, False, 3e-3, 32, 0.1),
    "mnasnet1_0-scratch": ("mnasnet1_0", 96, 20, False, 3e-3, 32, 0.1),
    "efficientnet_lite0-finetuned": ("efficientnet_lite0", 128, 10, True, 1e-3, 32, 0.2),
}


def run_recipe(key: str, data: PreparedData, seed: int, threads: int, epochs_override: int | None = None) -> dict:
    name, size, epochs, pretrained, lr, batch_size, augment = RECIPES[key]
    epochs = epochs_override or epochs
    spec = ModelSpec.create(name, data.classes, size)
    model = build_model(name, len(data.classes), size, pretrained=pretrained)
    config = TrainConfig.for_spec(
        spec,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.05,
        augment=augment,
        seed=seed,
        threads=threads,
    )
    result = train_model(model, data.split("train"), data.split("val"), config, progress=False)
    record = assess_candidate(key, result.model, spec, data, threads=threads)
    keep = (
        "f1_test",
        "f1_public",
        "f1_private",
        "accuracy_test",
        "latency_b1_ms",
        "throughput_b32_ips",
        "submit_s",
        "params",
        "macs",
        "score_published",
    )
    return {
        "recipe": key,
        "seed": seed,
        "epochs": epochs,
        "image_size": size,
        "best_val_f1": result.best_val_f1,
        "epochs_per_min": epochs_per_minute(result.history),
        **{k: record[k] for k in keep},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epoch budget")
    parser.add_argument(
        "--fit",
        default="stretch",
        choices=["pad", "stretch"],
        help="stretch suits whole-object photos (TrashNet); pad suits object crops (TACO)",
    )
    args = parser.parse_args()
    data_name = Path(args.data).resolve().name
    run = open_run(Path("runs") / f"bench-{data_name}-{args.fit}")
    data = run.data(args.data, PrepareConfig(cache_side=128, fit=args.fit), progress=False)
    rows = []
    for key in args.recipes:
        for seed in args.seeds:
            t0 = time.perf_counter()
            rows.append(run_recipe(key, data, seed, args.threads, args.epochs))
            print(
                f"{key} seed {seed}: test macro-F1 {rows[-1]['f1_test']:.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    print(f"\n{data_name}: {len(data.rows)} crops, classes {data.classes}")
    print(f"{'recipe':30} {'F1 test':>8} {'public':>7} {'private':>7} {'ep/min':>7} {'b1 ms':>7} {'submit s':>9}")
    for key in args.recipes:
        mine = [r for r in rows if r["recipe"] == key]
        f1s = [r["f1_test"] for r in mine]
        spread = f" ± {statistics.stdev(f1s):.3f}" if len(f1s) > 1 else ""
        m = mine[0]
        print(
            f"{key:30} {statistics.mean(f1s):8.3f}{spread} {m['f1_public']:7.3f} {m['f1_private']:7.3f} "
            f"{m['epochs_per_min']:7.1f} {m['latency_b1_ms']:7.2f} {m['submit_s']:9.2f}"
        )
    suffix = f"-{args.epochs}ep" if args.epochs else ""
    out = Path("benchmarks/results") / f"baseline-{data_name}{suffix}.json"
    atomic_write_json(out, {"data": data_name, "rows": rows, "machine": machine_info()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
