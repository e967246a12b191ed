"""Channel pruning recovered by distillation, against the unpruned model, measured in one process.

    .venv/bin/python benchmarks/bench_compress.py --run runs/trashnet --ratio 0.5 --epochs 30 --lr 0.003

Reads a run directory with notebook 01 done: the baseline `baseline/baseline/model.pt` and, as the teacher,
`baseline/teacher/model.pt` (EfficientNet-Lite0) when present, else the baseline itself. Prunes `--ratio` of the
baseline's channels (torch-pruning, magnitude importance), fine-tunes it `--epochs` epochs with distillation, and
times pruned and unpruned interleaved at batch 1 and 32. With `--control`, the unpruned baseline is fine-tuned with
the same recipe too (what the extra epochs alone give). Prints a table and writes
benchmarks/results/compress-<run>-<ratio>.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from trashlib.bench import compare_models, count_macs, count_params, machine_info
from trashlib.compress import prune_channels
from trashlib.data import load_prepared
from trashlib.files import atomic_write_json
from trashlib.models import load_model
from trashlib.run import Run
from trashlib.train import TrainConfig, evaluate, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--importance", default="magnitude", choices=["magnitude", "taylor", "bn"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--control", action="store_true", help="also fine-tune the unpruned model the same way")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run_dir = Path(args.run)
    run = Run(run_dir)
    data = load_prepared(run_dir / "data")
    base, spec = load_model(run.model_path("baseline", "baseline"))
    teacher_file = run.model_path("baseline", "teacher")
    teacher, teacher_spec = load_model(teacher_file) if teacher_file.is_file() else (base, spec)
    norm, size = spec.normalization, spec.image_size
    test_x, test_y = data.split("test")

    def f1(model) -> float:
        return evaluate(model, test_x, test_y, data.classes, size, normalization=norm)["macro_f1"]

    def fine_tune(model):
        config = TrainConfig.for_spec(
            spec,
            teacher=teacher_spec,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=32,
            augment=0.3,
            distill_temperature=args.temperature,
            distill_alpha=args.alpha,
            seed=args.seed,
            threads=args.threads,
        )
        started = time.perf_counter()
        result = train_model(model, data.split("train"), data.split("val"), config, teacher=teacher, progress=False)
        return result.model, time.perf_counter() - started

    pruned = prune_channels(base, args.ratio, size, importance=args.importance)
    pruned_f1_before = f1(pruned)
    pruned, seconds = fine_tune(pruned)
    models = {"unpruned": (base, size), f"pruned{round(100 * args.ratio)}": (pruned, size)}
    result = {
        "run": str(run_dir),
        "ratio": args.ratio,
        "importance": args.importance,
        "epochs": args.epochs,
        "lr": args.lr,
        "teacher": teacher_spec.name,
        "f1_unpruned": f1(base),
        "f1_pruned_before_finetune": pruned_f1_before,
        "f1_pruned": f1(pruned),
        "finetune_s": seconds,
        "params": {"unpruned": count_params(base), "pruned": count_params(pruned)},
        "macs": {"unpruned": count_macs(base, size), "pruned": count_macs(pruned, size)},
    }
    if args.control:
        control, control_s = fine_tune(copy.deepcopy(base))
        result.update(f1_control=f1(control), control_s=control_s)
    for batch in (1, 32):
        timing = compare_models(models, batch, args.threads, rounds=9, runs_per_round=10 if batch == 1 else 3)
        result[f"b{batch}"] = timing
        result[f"speedup_b{batch}"] = 1.0 / list(timing.values())[1]["ratio_vs_first"]
    result["machine"] = machine_info()
    print(f"teacher {result['teacher']}; {args.epochs} epochs at lr {args.lr}, fine-tuning {seconds:.0f} s")
    print(f"params {result['params']}, MACs {result['macs']}")
    print(
        f"test macro-F1: unpruned {result['f1_unpruned']:.3f}, pruned before fine-tuning "
        f"{pruned_f1_before:.3f}, pruned + distilled {result['f1_pruned']:.3f} "
        f"(change {result['f1_pruned'] - result['f1_unpruned']:+.3f})"
        + (f", unpruned + same fine-tuning {result['f1_control']:.3f}" if args.control else "")
    )
    print(f"speed-up (interleaved medians): batch 1 {result['speedup_b1']:.2f}x, batch 32 {result['speedup_b32']:.2f}x")
    out = Path("benchmarks/results") / f"compress-{run_dir.name}-{round(100 * args.ratio)}.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
