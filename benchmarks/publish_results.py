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
import csv
import io
import json
import math
from pathlib import Path

import yaml

from trashlib import report
from trashlib.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

KEEP = ("candidate", "stage", "model", "runtime", "image_size", "f1_test", "f1_public", "f1_private",
        "latency_b1_ms", "submit_s", "params", "macs", "size_bytes", "score_published", "score_relative",
        "deployable", "flagged")


def _value(text: str):
    if text in ("", "None", "nan"):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def read_run(run_dir: Path) -> tuple[list[dict], dict, dict]:
    """A finished run's leaderboard rows, its params.yaml and its baseline metrics.json."""
    with open(run_dir / "leaderboard.csv", newline="") as fh:
        rows = [{k: _value(v) for k, v in row.items() if k in KEEP} for row in csv.DictReader(fh)]
    params_file = run_dir / "params.yaml"  # absent where the notebooks ran alone (nbval)
    params = (yaml.safe_load(params_file.read_text()) if params_file.is_file()
              else {"data": "synthetic", "profile": "(the notebooks' own defaults)"})
    return rows, params, read_json(run_dir / "baseline" / "baseline" / "metrics.json")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, nargs="+", help="one run, or one run per seed (averaged)")
    parser.add_argument("--name", help="the block's name (default: the run directory's name; required with seeds)")
    parser.add_argument("--command", required=True, help="the command that reproduces the run")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--rank-by", default="score_published", choices=["score_published", "score_relative"],
                        help="with seeds: the mean score that orders the rows and picks the winner (on data where "
                             "every F1 is far below the published f1_ref the published score saturates near 1)")
    parser.add_argument("--inference", help="a benchmarks/bench_inference.py JSON of the same run, shown under the table")
    parser.add_argument("--inference-command", default="", help="the command that made --inference")
    args = parser.parse_args()
    runs = [read_run(Path(r)) for r in args.run]
    if len(runs) > 1 and not args.name:
        parser.error("--name is required with more than one --run")
    name = args.name or Path(args.run[0]).name
    rows, params, baseline = runs[0]
    machine = baseline["metrics"]["machine"]
    doc = {"run": name, "data": Path(params["data"]).name, "profile": params["profile"], "command": args.command,
           "notebook_seconds": [notebook_seconds(Path(r)) for r in args.run]}
    if len(runs) > 1:
        seeds = [r[1]["notebooks"]["00_eda"].get("seed", 0) for r in runs]  # the split's seed; the notebooks share it
        if len(set(seeds)) != len(seeds) or len({Path(r[1]["data"]).name for r in runs}) != 1:
            parser.error(f"the runs must be of one data set with distinct seeds, got seeds {seeds}")
        rows = report.mean_over_runs([r[0] for r in runs], rank_by=args.rank_by)
        doc.update(seeds=seeds, winners=[first_deployable(r[0]) for r in runs], runs=[Path(r).name for r in args.run],
                   rank_by=args.rank_by)
    doc.update(winner=first_deployable(rows), rows=rows,
               versions={**{k: machine[k] for k in ("torch", "torchvision", "onnxruntime") if k in machine},
                         **baseline["environment"]},
               machine=f"{machine.get('cpu_model', '?')}, {machine.get('logical_cores', '?')} logical cores, "
                       f"{machine.get('torch_threads', '?')} torch threads")
    if args.inference:
        bench = read_json(Path(args.inference))
        if bench["winner"] != doc["winner"]:
            parser.error(f"{args.inference} timed {bench['winner']}, but the run's winner is {doc['winner']}")
        doc["inference"] = {"command": args.inference_command, "threads": bench["threads"], "winner": bench["winner"],
                            "timing": bench["timing"], "submit": bench["submit"]}
    out = Path("benchmarks/published")
    atomic_write_json(out / f"{name}.json", doc)
    fig = report.plot_candidates([r for r in rows if r["latency_b1_ms"] and not math.isnan(r["f1_test"])],
                                 title=f"{doc['data']}: test macro-F1 against batch-1 latency"
                                       + (" (mean over seeds)" if len(runs) > 1 else ""))
    fig.set_size_inches(7, 4.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    atomic_write_bytes(out / f"{name}-pareto.png", buffer.getvalue())
    readme = Path(args.readme)
    atomic_write_text(readme, report.replace_marked_block(readme.read_text(), name, report.results_markdown(doc)))
    print(report.results_markdown(doc))
    print(f"wrote {out / f'{name}.json'}, {out / f'{name}-pareto.png'} and the {name} block of {readme}")


if __name__ == "__main__":
    main()
