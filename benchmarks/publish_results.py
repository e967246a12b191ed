"""Copy a finished run's leaderboard into the README (a table between markers) and a small Pareto PNG.

    .venv/bin/python benchmarks/publish_results.py --run runs/trashnet --command "python -m trashlib run ..."
    .venv/bin/python benchmarks/publish_results.py --run runs/taco-s0 runs/taco-s1 runs/taco-s2 --name taco-seeds \\
        --command "..."          # one run per seed: mean ± standard deviation per candidate

Writes benchmarks/published/<run>.json (the rows, winner, machine and versions) and <run>-pareto.png, and
replaces the README block `<!-- results:<run> start -->` ... `<!-- results:<run> end -->` with the table
rendered from that JSON; tests/test_readme.py checks the README still matches the JSON. Numbers are never typed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trashlib import report
from trashlib.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from trashlib.run import PARAMS_FILE, Run

RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("candidate", "candidate", "{}"),
    ("runtime", "runtime", "{}"),
    ("f1_test", "F1 test", "{:.3f}"),
    ("f1_public", "F1 public", "{:.3f}"),
    ("f1_private", "F1 private", "{:.3f}"),
    ("latency_b1_ms", "b1 ms", "{:.2f}"),
    ("submit_s", "submit s", "{:.2f}"),
    ("params", "params", "{:,}"),
    ("macs", "MACs", "{:,}"),
    ("size_bytes", "size", "{}"),
    ("score_published", "score (published)", "{:.4f}"),
    ("score_relative", "score (relative)", "{:.4f}"),
)


SPREAD_KEYS = ("f1_test", "f1_public", "f1_private", "latency_b1_ms", "submit_s", "score_published", "score_relative")


def mean_over_runs(
    tables: list[list[dict[str, Any]]], rank_by: str = "score_published", min_runs: int = 2
) -> list[dict[str, Any]]:
    """One row per candidate present in at least ``min_runs`` of the leaderboards ``tables`` (one per seed):
    numbers averaged, the sample standard deviation as ``<key>_std`` for the ``SPREAD_KEYS``, and ``n_runs``;
    sorted by the mean of ``rank_by``."""
    if len(tables) < 2:
        raise ValueError(f"mean_over_runs needs at least 2 leaderboards, got {len(tables)}")
    if not 1 <= min_runs <= len(tables):
        raise ValueError(f"min_runs must be between 1 and {len(tables)}, got {min_runs}")
    by_name = [{row["candidate"]: row for row in table} for table in tables]
    names = list(dict.fromkeys(name for table in by_name for name in table))
    out = []
    for name in names:
        rows = [table[name] for table in by_name if name in table]
        if len(rows) < min_runs:
            continue
        merged: dict[str, Any] = {**rows[0], "n_runs": len(rows)}
        for key, value in rows[0].items():
            values = [r.get(key) for r in rows]
            if isinstance(value, bool) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values
            ):
                continue
            merged[key] = float(np.mean(values))
            if key in SPREAD_KEYS and len(values) > 1:
                merged[f"{key}_std"] = float(np.std(values, ddof=1))
        merged["deployable"] = all(bool(r.get("deployable")) for r in rows)
        merged["flagged"] = any(bool(r.get("flagged")) for r in rows)
        out.append(merged)
    return sorted(out, key=lambda r: (r.get(rank_by) is None, r.get(rank_by) or 0.0))


def results_markdown(doc: dict[str, Any]) -> str:
    """The README table of one published run (``benchmarks/published/<name>.json``), rows in leaderboard order;
    a doc averaged over seeds (``seeds``, ``winners``) shows mean ± standard deviation."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if fmt == "{}" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value / 1e6:.1f} MB" if value >= 1e5 else str(round(value))
        if fmt == "{:,}" and isinstance(value, float):
            value = round(value)
        spread = row.get(f"{key}_std")
        return fmt.format(value) + (f" ± {fmt.format(spread)}" if spread is not None else "")

    columns = RESULT_COLUMNS + ((("n_runs", "seeds", "{}"),) if "seeds" in doc else ())
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(cell(row, key, fmt) for key, _, fmt in columns) + " |" for row in doc["rows"]]
    lines = [
        f"Data `{doc['data']}`, profile `{doc['profile']}`; winner **{doc['winner']}**. "
        f"Reproduce: `{doc['command']}`. Machine: {doc['machine']}; torch {doc['versions'].get('torch')}, "
        f"onnxruntime {doc['versions'].get('onnxruntime')}, torchao {doc['versions'].get('torchao')}."
    ]
    times = [t for t in doc.get("notebook_seconds", []) if t]
    if times:
        per_run = "; ".join(
            f"{sum(t.values()) / 60:.1f} min (" + ", ".join(f"{k[:2]} {v:.0f} s" for k, v in t.items()) + ")"
            for t in times
        )
        lines.append(
            f"The workbook took {per_run} on that machine{' per seed' if len(times) > 1 else ''}, "
            f"data preparation included (papermill's notebook durations)."
        )
    if "seeds" in doc:
        winners = ", ".join(f"seed {seed}: {name}" for seed, name in zip(doc["seeds"], doc["winners"], strict=True))
        lines.append(
            f"Mean ± sample standard deviation over seeds {doc['seeds']}: each seed draws its own split "
            f"by photo, initial weights and search, and deploys its own top candidates, so a row holds the "
            f"seeds that made it (column `seeds`; rows made by fewer than 2 are left out). Rows are sorted "
            f"by mean `{doc['rank_by']}`; the winner is the deployable row with the best mean among those "
            f"made by at least 2 seeds. Each seed's own winner: {winners}."
        )
    return "\n".join([*lines, "", header, rule, *rows, *inference_markdown(doc.get("inference"))])


def inference_markdown(bench: dict[str, Any] | None) -> list[str]:
    """The inference benchmark's lines for the README (``benchmarks/bench_inference.py`` JSON), none without one."""
    if not bench:
        return []
    ort = next(r["b1_ms"] for r in bench["timing"] if r["variant"] == "baseline onnx-fp32")
    lines = [
        "",
        f"The winner against the references, timed interleaved in one process with {bench['threads']} "
        f"threads (`{bench['command']}`). The floor is MACs over torch's GEMM rate measured on this CPU "
        f"(`torch.mm` fp32, `torch._int_mm` int8): a reference, not a bound (onnxruntime's fp32 "
        f"convolutions can beat it, below 1x).",
        "",
        "| variant | b1 ms | x eager fp32 | x onnxruntime fp32 | b32 ms | x eager fp32 (b32) | x its floor (b1) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['b1_ms']:.3f} | {r['speedup_b1']:.2f} | {ort / r['b1_ms']:.2f} | "
        f"{r['b32_ms']:.2f} | {r['speedup_b32']:.2f} | {r['x_floor_b1']:.2f} |"
        for r in bench["timing"]
    ]
    submit = bench["submit"]
    lines += [
        "",
        f"Submit time, the whole test split from the files on disk ({submit['n']} images): the competition's "
        f"loop (PIL decode and transform per image, batch 1, eager fp32 baseline) {submit['original_loop_s']:.2f} s, "
        f"the winner {submit['winner_s']:.2f} s ({submit['ratio']:.1f}x shorter).",
    ]
    return lines


def replace_marked_block(text: str, name: str, block: str) -> str:
    """``text`` with the lines between ``<!-- results:NAME start -->`` and ``<!-- results:NAME end -->`` replaced."""
    start, end = f"<!-- results:{name} start -->", f"<!-- results:{name} end -->"
    if start not in text or end not in text:
        raise ValueError(f"no {start} ... {end} block in the text")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


KEEP = (
    "candidate",
    "stage",
    "model",
    "runtime",
    "image_size",
    "f1_test",
    "f1_public",
    "f1_private",
    "latency_b1_ms",
    "submit_s",
    "params",
    "macs",
    "size_bytes",
    "score_published",
    "score_relative",
    "deployable",
    "flagged",
)


def read_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], str]:
    """A finished run's leaderboard rows, its params.yaml, its baseline metrics.json and the candidate it shipped."""
    run = Run(run_dir)
    board = run.leaderboard().reset_index()
    rows = json.loads(board[[k for k in KEEP if k in board]].to_json(orient="records"))
    params_file = run_dir / PARAMS_FILE  # absent where the notebooks ran alone (nbval)
    params = (
        yaml.safe_load(params_file.read_text())
        if params_file.is_file()
        else {"data": "synthetic", "profile": "(the notebooks' own defaults)"}
    )
    return rows, params, read_json(run.metrics_path("baseline", "baseline")), shipped(run, rows)


def notebook_seconds(run_dir: Path) -> dict[str, float]:
    """Each executed notebook's papermill duration in the run directory."""
    out = {}
    for nb in sorted((run_dir / "notebooks").glob("*.ipynb")):
        duration = json.loads(nb.read_text())["metadata"].get("papermill", {}).get("duration")
        if duration is not None:
            out[nb.stem] = round(float(duration), 1)
    return out


def first_deployable(rows: list[dict]) -> str:
    return next(r["candidate"] for r in rows if r.get("deployable"))


def shipped(run: Run, rows: list[dict]) -> str:
    """The candidate notebook 05 shipped (its headline: `f1_tie` may ship another than the best-ranked one);
    the first deployable row for a run that predates the headline's `winner`."""
    headline = run.run_dir / "headlines" / "05_leaderboard.json"  # read only: Run.path would create the folder
    winner = read_json(headline).get("winner") if headline.is_file() else None
    return str(winner) if winner else first_deployable(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, nargs="+", help="one run, or one run per seed (averaged)")
    parser.add_argument("--name", help="the block's name (default: the run directory's name; required with seeds)")
    parser.add_argument("--command", required=True, help="the command that reproduces the run")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument(
        "--rank-by",
        default="score_published",
        choices=["score_published", "score_relative"],
        help="with seeds: the mean score that orders the rows and picks the winner (on data where "
        "every F1 is far below the published f1_ref the published score saturates near 1)",
    )
    parser.add_argument(
        "--inference", help="a benchmarks/bench_inference.py JSON of the same run, shown under the table"
    )
    parser.add_argument("--inference-command", default="", help="the command that made --inference")
    args = parser.parse_args()
    runs = [read_run(Path(r)) for r in args.run]
    if len(runs) > 1 and not args.name:
        parser.error("--name is required with more than one --run")
    name = args.name or Path(args.run[0]).name
    rows, params, baseline, winner = runs[0]
    machine = baseline["metrics"]["machine"]
    doc = {
        "run": name,
        "data": Path(params["data"]).name,
        "profile": params["profile"],
        "command": args.command,
        "notebook_seconds": [notebook_seconds(Path(r)) for r in args.run],
    }
    if len(runs) > 1:
        seeds = [r[1]["notebooks"]["00_eda"].get("seed", 0) for r in runs]  # the split's seed; the notebooks share it
        if len(set(seeds)) != len(seeds) or len({Path(r[1]["data"]).name for r in runs}) != 1:
            parser.error(f"the runs must be of one data set with distinct seeds, got seeds {seeds}")
        rows = mean_over_runs([r[0] for r in runs], rank_by=args.rank_by)
        doc.update(
            seeds=seeds,
            winners=[r[3] for r in runs],
            runs=[Path(r).name for r in args.run],
            rank_by=args.rank_by,
        )
    doc.update(
        winner=first_deployable(rows) if len(runs) > 1 else winner,
        rows=rows,
        versions={
            **{k: machine[k] for k in ("torch", "torchvision", "onnxruntime") if k in machine},
            **baseline["environment"],
        },
        machine=f"{machine.get('cpu_model', '?')}, {machine.get('logical_cores', '?')} logical cores, "
        f"{machine.get('torch_threads', '?')} torch threads",
    )
    if args.inference:
        bench = read_json(Path(args.inference))
        if bench["winner"] != doc["winner"]:
            parser.error(f"{args.inference} timed {bench['winner']}, but the run's winner is {doc['winner']}")
        doc["inference"] = {
            "command": args.inference_command,
            "threads": bench["threads"],
            "winner": bench["winner"],
            "timing": bench["timing"],
            "submit": bench["submit"],
        }
    out = Path("benchmarks/published")
    atomic_write_json(out / f"{name}.json", doc)
    fig = report.plot_candidates(
        [r for r in rows if r["latency_b1_ms"] and not math.isnan(r["f1_test"])],
        title=f"{doc['data']}: test macro-F1 against batch-1 latency" + (" (mean over seeds)" if len(runs) > 1 else ""),
    )
    fig.set_size_inches(7, 4.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    atomic_write_bytes(out / f"{name}-pareto.png", buffer.getvalue())
    readme = Path(args.readme)
    atomic_write_text(readme, replace_marked_block(readme.read_text(), name, results_markdown(doc)))
    print(results_markdown(doc))
    print(f"wrote {out / f'{name}.json'}, {out / f'{name}-pareto.png'} and the {name} block of {readme}")


if __name__ == "__main__":
    main()
