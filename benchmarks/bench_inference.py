"""The shipped model against the baseline, the competition's own loop and the physical floor, in one process.

    .venv/bin/python benchmarks/bench_inference.py --run runs/trashnet

Reads a finished run directory (notebooks 01 to 05): the baseline `baseline/baseline/model.pt`, the winner
`winner/model.onnx` (and which candidate it is from `leaderboard.csv`). Times, interleaved and with fixed threads:
eager fp32 baseline MnasNet, the same baseline in onnxruntime fp32, and the winner, at batch 1 and 32; the
whole-test-split submit time of the winner and of the competition's original loop (PIL decode and transform per
image, batch 1, eager fp32 baseline); and each against its floor (MACs over the measured peak GEMM rate).
Prints a table of ratios and writes benchmarks/results/inference-<run>.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from trashlib.bench import machine_info, original_loop_submit_time, runtime_table, submit_time
from trashlib.data import load_prepared
from trashlib.files import atomic_write_json
from trashlib.models import load_model
from trashlib.quantize import OrtModel, export_onnx, read_model_card
from trashlib.run import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory with notebooks 01 to 05 done")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    run_dir = Path(args.run)
    run = Run(run_dir)
    data = load_prepared(run_dir / "data")
    baseline, spec = load_model(run.model_path("baseline", "baseline"))
    base_metrics = run.metrics("baseline", "baseline")
    winner_path = run_dir / "winner" / "model.onnx"
    card = read_model_card(winner_path)
    board = run.leaderboard()
    winner_name = str(board.index[board["deployable"]][0])
    winner_row = board.loc[winner_name]
    with tempfile.TemporaryDirectory() as tmp:
        base_onnx = OrtModel(export_onnx(baseline, spec, Path(tmp) / "baseline.onnx"), args.threads)
    winner = OrtModel(winner_path, args.threads)
    precision = "int8" if winner_name.endswith("int8") else "fp32"
    rows = runtime_table(
        {
            "baseline eager-fp32": (baseline, spec.image_size, base_metrics["macs"], "fp32"),
            "baseline onnx-fp32": (base_onnx, spec.image_size, base_metrics["macs"], "fp32"),
            f"winner {winner_name}": (winner, card["image_size"], int(winner_row["macs"]), precision),
        },
        threads=args.threads,
        rounds=args.rounds,
    )
    original = original_loop_submit_time(baseline, spec, data, threads=args.threads)
    winner_submit = submit_time(winner, card["image_size"], card["input"], data, threads=args.threads)["seconds"]
    result = {
        "run": str(run_dir),
        "winner": winner_name,
        "winner_f1_test": float(winner_row["f1_test"]),
        "baseline_f1_test": base_metrics["f1_test"],
        "timing": rows,
        "submit": {
            "original_loop_s": original["seconds"],
            "winner_s": winner_submit,
            "n": original["n"],
            "ratio": original["seconds"] / winner_submit,
        },
        "machine": machine_info(),
        "threads": args.threads,
    }
    print(
        f"{'variant':34s} {'b1 ms':>8s} {'x vs base':>9s} {'b32 ms':>8s} {'x vs base':>9s} {'floor ms':>9s} "
        f"{'x floor':>8s}"
    )
    for r in rows:
        print(
            f"{r['variant']:34s} {r['b1_ms']:8.3f} {r['speedup_b1']:9.2f} {r['b32_ms']:8.2f} "
            f"{r['speedup_b32']:9.2f} {r['floor_b1_ms']:9.3f} {r['x_floor_b1']:8.2f}"
        )
    ort_base = next(r for r in rows if r["variant"] == "baseline onnx-fp32")
    print(f"winner vs baseline onnx-fp32 at batch 1: {ort_base['b1_ms'] / rows[-1]['b1_ms']:.2f}x")
    print(
        f"submit, whole test split ({original['n']} images): original loop {original['seconds']:.2f} s, "
        f"winner {winner_submit:.2f} s ({result['submit']['ratio']:.1f}x shorter)"
    )
    print(f"test macro-F1: winner {result['winner_f1_test']:.3f}, baseline {result['baseline_f1_test']:.3f}")
    out = Path("benchmarks/results") / f"inference-{run_dir.name}.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
