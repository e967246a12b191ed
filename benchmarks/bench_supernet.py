"""The once-for-all search against the baseline: front points, shipped pick and teacher, timed in one process.

    .venv/bin/python benchmarks/bench_supernet.py --run runs/trashnet-real --rounds 5

Reads a run directory where notebook 02 ran in `mode: ofa` (`search/supernet.pt`, `search/ofa.json`, the candidate
`search/searched/`) and notebook 01's baseline (and teacher when present). Every front point is extracted from the
supernet and its BatchNorm recalibrated as the search did; then every model (baseline, teacher, the front, the fine-
tuned pick) is timed at batch 1 with each of `--threads` thread counts in eager PyTorch, onnxruntime fp32 and int8
and OpenVINO int8, interleaved over `--rounds` rounds (median of the round medians), and scored on the test split.
The shipped model (`winner/`, through `trashlib.predict` in its card's runtime) is timed in the same rounds. Prints
ratios against the baseline, F1, MACs, the supernet's training time, sub-networks scored per hour, and the issue's
goals (shipped at least 4x faster than the baseline in onnxruntime fp32 at test F1 >= 0.87; a front point at least
as accurate as the teacher in int8 and faster); writes benchmarks/results/supernet-<run>.json. Not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from trashlib.bench import count_macs, machine_info, torch_threads
from trashlib.data import load_prepared
from trashlib.files import atomic_write_json, read_json
from trashlib.models import load_model
from trashlib.predict import load_model as load_shipped
from trashlib.quantize import calibration_batches
from trashlib.run import Run
from trashlib.score import classification_scores
from trashlib.supernet import (
    SubnetConfig,
    build_subnet,
    deployed,
    load_supernet,
    recalibrate_bn,
    recalibration_images,
    subnet_spec,
    time_deployed,
)
from trashlib.train import evaluate

RUNTIMES = ("torch-eager", "onnxruntime-fp32", "onnxruntime-int8", "openvino-int8")
GOAL_SPEEDUP, GOAL_F1 = 4.0, 0.87


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="calls per model per round")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[2], help="thread counts, each timed in the same rounds (e.g. 1 2)"
    )
    parser.add_argument("--recalibration-crops", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal-f1", type=float, default=GOAL_F1, help="test macro-F1 the shipped model must reach")
    args = parser.parse_args()
    run_dir = Path(args.run)
    run = Run(run_dir)
    data = load_prepared(run_dir / "data")
    info = read_json(run.path("search", "ofa.json"))
    supernet = load_supernet(run.path("search", "supernet.pt"), data.classes).eval()
    train_x = data.split("train")[0]
    crops = recalibration_images(train_x, args.recalibration_crops, seed=args.seed)
    test_x, test_y = data.split("test")

    models: dict[str, tuple[Any, Any]] = {}
    models["baseline"] = load_model(run.model_path("baseline", "baseline"))
    if run.model_path("baseline", "teacher").is_file():
        models["teacher"] = load_model(run.model_path("baseline", "teacher"))
    variants = [(rt, th) for th in args.threads for rt in RUNTIMES]
    first = args.threads[0]
    with torch_threads(first):
        for point in info["front"]:
            config = SubnetConfig.from_dict(point["subnet"])
            sub = recalibrate_bn(build_subnet(supernet, config), crops, config.resolution)
            models[f"front #{point['trial']}"] = (sub, subnet_spec(config, data.classes))
    models["searched (fine-tuned)"] = load_model(run.model_path("search", "searched"))

    sessions = {}
    rows: dict[str, dict[str, Any]] = {}
    for label, (model, spec) in models.items():
        calib = calibration_batches(crops, spec, batch_size=32, max_images=64)
        sessions[label] = {(rt, th): deployed(model, spec, rt, calibration=calib, threads=th) for rt, th in variants}
        rows[label] = {
            "model": spec.name,
            "image_size": spec.image_size,
            "f1_test": evaluate(model, test_x, test_y, data.classes, spec.image_size, normalization=spec.normalization)[
                "macro_f1"
            ],
            "macs": count_macs(model, spec.image_size),
        }
    winner = run.path("winner")
    shipped = {th: load_shipped(winner, threads=th) for th in args.threads} if winner.is_dir() else None
    shipped_times: dict[int, list[float]] = {th: [] for th in args.threads}
    if shipped is not None:
        predicted = shipped[first].probabilities(test_x).argmax(axis=1)
        card, shipped_size = shipped[first].card, shipped[first].preprocessing.image_size
        shipped_row: dict[str, Any] = {
            "source": card.get("source"),
            "runtime": card.get("runtime"),
            "image_size": shipped_size,
            "f1_test": classification_scores(test_y, predicted, data.classes)["macro_f1"],
            "macs": card.get("macs"),
        }
    times: dict[str, dict[tuple[str, int], list[float]]] = {label: {v: [] for v in variants} for label in models}
    for _ in range(args.rounds):
        for label, (_, spec) in models.items():
            for rt, th in variants:
                times[label][rt, th].append(
                    time_deployed(sessions[label][rt, th], spec.image_size, runs=args.runs, threads=th)
                )
        if shipped is not None:
            for th in args.threads:
                shipped_times[th].append(time_deployed(shipped[th].run, shipped_size, runs=args.runs, threads=th))
    base = {v: float(np.median(times["baseline"][v])) for v in variants}
    # the reference of the goal: the baseline in onnxruntime fp32 at its own best thread count
    base_fp32 = min(base["onnxruntime-fp32", th] for th in args.threads)
    print(f"supernet training: {info['supernet_seconds']:.0f} s ({info['supernet_epochs']} epochs)")
    print(f"sub-networks scored per hour in the search: {info['subnets_per_hour']:.0f} ({info['trials']} trials)")
    print(f"latency check: Kendall's tau {info['latency_check']['tau']:.3f} over {info['latency_check']['n']}")
    careful = info["chosen"].get("careful")
    if careful:  # 02's speed pick, re-timed beside the baseline in its own process
        print(f"02's careful re-timing (baseline {careful['baseline_ms']:.3f} ms in onnxruntime fp32):")
        for c in careful["candidates"]:
            mark = " <- picked" if c["trial"] == info["chosen"]["trial"] else ""
            print(
                f"  trial {c['trial']:4d}: val F1 {c['val_f1']:.3f}, quick {c['quick_ms']:.3f} ms, careful "
                f"{c['careful_ms']:.3f} ms, {c['speedup']:.2f}x{mark}"
            )
    header = f"{'model':24} {'px':>4} {'F1':>6} {'MMACs':>8} " + " ".join(
        f"{f'{rt}/{th}t ms':>22} {'x':>6}" for rt, th in variants
    )
    print(header)
    for label, row in rows.items():
        cells = []
        for rt, th in variants:
            ms = float(np.median(times[label][rt, th]))
            key = rt if th == first else f"{rt}-{th}t"
            row[f"{key}_ms"] = ms
            row[f"{key}_speedup_vs_baseline"] = base[rt, th] / ms
            cells.append(f"{ms:22.3f} {base[rt, th] / ms:6.2f}")
        print(f"{label:24} {row['image_size']:4d} {row['f1_test']:6.3f} {row['macs'] / 1e6:8.1f} " + " ".join(cells))
    goals: dict[str, Any] = {}
    if shipped is not None:
        by_threads = {th: float(np.median(shipped_times[th])) for th in args.threads}
        best = min(by_threads, key=lambda th: by_threads[th])
        shipped_row["ms_by_threads"] = by_threads
        shipped_row["threads"], shipped_row["ms"] = best, by_threads[best]
        shipped_row["speedup_vs_baseline_onnxruntime_fp32"] = base_fp32 / shipped_row["ms"]
        goals["shipped_speedup"] = shipped_row["speedup_vs_baseline_onnxruntime_fp32"]
        goals["shipped_f1"] = shipped_row["f1_test"]
        goals["shipped_goal_met"] = goals["shipped_speedup"] >= GOAL_SPEEDUP and goals["shipped_f1"] >= args.goal_f1
        print(
            f"shipped {shipped_row['source']} ({shipped_row['runtime']}, {shipped_row['image_size']} px): "
            f"{shipped_row['ms']:.3f} ms at {best} thread(s), {goals['shipped_speedup']:.2f}x the baseline in "
            f"onnxruntime fp32 ({base_fp32:.3f} ms at its best thread count), "
            f"test F1 {shipped_row['f1_test']:.3f} (goal: >= {GOAL_SPEEDUP}x at F1 >= {args.goal_f1}: "
            f"{'met' if goals['shipped_goal_met'] else 'missed'})"
        )
    if "teacher" in rows:
        teacher = rows["teacher"]
        dominating = [
            label
            for label, row in rows.items()
            if label.startswith("front")
            and row["f1_test"] >= teacher["f1_test"]
            and row["onnxruntime-int8_ms"] < teacher["onnxruntime-int8_ms"]
        ]
        goals["front_dominates_teacher_int8"] = dominating
        print(
            f"front points at least as accurate as the teacher (test F1 {teacher['f1_test']:.3f}) and faster in "
            f"onnxruntime int8 ({teacher['onnxruntime-int8_ms']:.3f} ms): {', '.join(dominating) or 'none'}"
        )
    out = Path(__file__).parent / "results" / f"supernet-{run_dir.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out,
        {
            "run": str(run_dir),
            "rows": rows,
            "shipped": shipped_row if shipped is not None else None,
            "goals": goals,
            "supernet_seconds": info["supernet_seconds"],
            "subnets_per_hour": info["subnets_per_hour"],
            "latency_tau": info["latency_check"]["tau"],
            "careful_pick": careful,
            "args": vars(args),
            "machine": machine_info(),
        },
    )
    print("wrote", out)


if __name__ == "__main__":
    main()
