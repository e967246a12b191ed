"""The README's results tables are copies of the published run JSON, not numbers typed by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trashlib.run import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from publish_results import mean_over_runs, replace_marked_block, results_markdown

PUBLISHED = sorted((PROJECT_ROOT / "benchmarks" / "published").glob("*.json"))


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_readme_results_table_matches_the_published_json(path):
    doc = json.loads(path.read_text())
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert replace_marked_block(readme, doc["run"], results_markdown(doc)) == readme, (
        f"README's {doc['run']} table differs from {path.name}: rerun benchmarks/publish_results.py"
    )
    assert (path.parent / f"{doc['run']}-pareto.png").is_file()
    assert any(row["candidate"] == doc["winner"] and row["deployable"] for row in doc["rows"])


def test_marked_block_replacement():
    text = "a\n<!-- results:x start -->\nold\n<!-- results:x end -->\nb"
    assert replace_marked_block(text, "x", "new") == "a\n<!-- results:x start -->\nnew\n<!-- results:x end -->\nb"
    with pytest.raises(ValueError, match="no <!-- results:y start -->"):
        replace_marked_block(text, "y", "new")


def test_mean_over_runs_averages_the_candidates_every_seed_made():
    def row(name, f1, ms, score, deployable=True):
        return {
            "candidate": name,
            "runtime": "onnx-int8",
            "f1_test": f1,
            "latency_b1_ms": ms,
            "params": 1000,
            "score_published": score,
            "deployable": deployable,
            "flagged": False,
            "size_bytes": None,
        }

    seed0 = [row("a", 0.5, 1.0, 0.3), row("b", 0.7, 2.0, 0.2), row("only-seed0", 0.9, 1.0, 0.1)]
    seed1 = [row("b", 0.9, 4.0, 0.4, deployable=False), row("a", 0.7, 3.0, 0.1)]
    rows = mean_over_runs([seed0, seed1])
    assert [r["candidate"] for r in rows] == ["a", "b"]  # by mean published score: a 0.2, b 0.3
    a, b = rows
    assert a["f1_test"] == pytest.approx(0.6) and a["f1_test_std"] == pytest.approx(0.1414, abs=1e-4)
    assert a["latency_b1_ms"] == pytest.approx(2.0) and a["params"] == 1000 and "params_std" not in a
    assert a["size_bytes"] is None and a["deployable"] and not b["deployable"]
    doc = {
        "run": "x",
        "data": "d",
        "profile": "p",
        "command": "c",
        "machine": "m",
        "versions": {},
        "winner": "a",
        "rows": rows,
        "seeds": [0, 1],
        "winners": ["only-seed0", "a"],
        "rank_by": "score_published",
    }
    text = results_markdown(doc)
    assert "| a | onnx-int8 | 0.600 ± 0.141 |" in text and "seed 0: only-seed0, seed 1: a" in text
    assert text.splitlines()[-1].endswith("| 2 |") and "sorted by mean `score_published`" in text
    with pytest.raises(ValueError, match="at least 2"):
        mean_over_runs([seed0])
    with pytest.raises(ValueError, match="min_runs must be between 1 and 2, got 3"):
        mean_over_runs([seed0, seed1], min_runs=3)
    # a candidate two seeds of three deployed is kept, with its count; one seed's alone is not
    three = mean_over_runs(
        [seed0, seed1, [row("a", 0.6, 2.0, 0.5), row("only-seed0", 0.5, 1.0, 0.1)]], rank_by="f1_test"
    )
    assert [(r["candidate"], r["n_runs"]) for r in three] == [("a", 3), ("only-seed0", 2), ("b", 2)]
    assert three[0]["f1_test_std"] == pytest.approx(0.1)


def _fake_run(root, name: str, seed: int, f1: float) -> str:
    run = root / name
    (run / "baseline" / "baseline").mkdir(parents=True)
    (run / "notebooks").mkdir()
    for stem, seconds in (("00_eda", 6.0), ("01_baseline", 54.0 + seed)):
        (run / "notebooks" / f"{stem}.ipynb").write_text(json.dumps({"metadata": {"papermill": {"duration": seconds}}}))
    (run / "params.yaml").write_text(f"data: /x/taco-sample\nprofile: real\nnotebooks:\n  00_eda:\n    seed: {seed}\n")
    (run / "baseline" / "baseline" / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": {"machine": {"torch": "2.14.1", "cpu_model": "cpu", "logical_cores": 2, "torch_threads": 2}},
                "environment": {"torchao": "0.18.0"},
            }
        )
    )
    (run / "leaderboard.csv").write_text(
        "candidate,runtime,f1_test,f1_public,f1_private,latency_b1_ms,submit_s,params,macs,size_bytes,"
        "score_published,score_relative,deployable,flagged\n"
        f"w-onnx-int8,onnx-int8,{f1},{f1},{f1},1.0,0.5,10,100,2000000,0.3,0.5,True,False\n"
        f"baseline,eager-fp32,0.4,0.4,0.4,6.0,3.0,10,100,,0.9,1.0,True,False\n"
    )
    return str(run)


def test_publish_script_averages_seeds_and_refuses_a_repeated_seed(tmp_path):
    script = PROJECT_ROOT / "benchmarks" / "publish_results.py"
    (tmp_path / "README.md").write_text("x\n<!-- results:taco-seeds start -->\n<!-- results:taco-seeds end -->\n")
    runs = [_fake_run(tmp_path, f"s{seed}", seed, f1) for seed, f1 in ((0, 0.5), (1, 0.6), (2, 0.7))]
    publish = [sys.executable, str(script), "--name", "taco-seeds", "--command", "make it", "--run"]
    done = subprocess.run([*publish, *runs], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "benchmarks" / "published" / "taco-seeds.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and doc["winner"] == "w-onnx-int8" and doc["runs"] == ["s0", "s1", "s2"]
    assert doc["rows"][0]["f1_test"] == pytest.approx(0.6) and doc["rows"][0]["f1_test_std"] == pytest.approx(0.1)
    assert "0.600 ± 0.100" in (tmp_path / "README.md").read_text()
    assert (
        "took 1.0 min (00 6 s, 01 54 s); 1.0 min (00 6 s, 01 55 s); 1.0 min (00 6 s, 01 56 s) on that machine per seed"
        in (tmp_path / "README.md").read_text()
    )
    repeated = subprocess.run([*publish, runs[0], runs[0]], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert repeated.returncode != 0 and "distinct seeds, got seeds [0, 0]" in repeated.stderr

    def timing(variant, b1):
        return {
            "variant": variant,
            "b1_ms": b1,
            "speedup_b1": 6.0 / b1,
            "b32_ms": 30.0,
            "speedup_b32": 2.0,
            "x_floor_b1": 3.0,
        }

    bench = tmp_path / "inference.json"
    for winner in ("someone-else", "w-onnx-int8"):
        bench.write_text(
            json.dumps(
                {
                    "winner": winner,
                    "threads": 2,
                    "submit": {"n": 9, "original_loop_s": 3.0, "winner_s": 0.5, "ratio": 6.0},
                    "timing": [
                        timing("baseline eager-fp32", 6.0),
                        timing("baseline onnx-fp32", 1.2),
                        timing(f"winner {winner}", 0.5),
                    ],
                }
            )
        )
        done = subprocess.run(
            [*publish, runs[0], "--name", "taco-seeds", "--inference", str(bench), "--inference-command", "bench it"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        if winner == "someone-else":
            assert done.returncode != 0 and "timed someone-else, but the run's winner is w-onnx-int8" in done.stderr
    assert done.returncode == 0, done.stderr
    readme = (tmp_path / "README.md").read_text()
    assert "| winner w-onnx-int8 | 0.500 | 12.00 | 2.40 | 30.00 | 2.00 | 3.00 |" in readme
    assert "(9 images): the competition's loop" in readme and "(6.0x shorter)" in readme


def test_publish_script_names_the_candidate_notebook_05_shipped(tmp_path):
    """With f1_tie, notebook 05 may ship a faster candidate than the best-ranked row: the README names that one."""
    script = PROJECT_ROOT / "benchmarks" / "publish_results.py"
    (tmp_path / "README.md").write_text("x\n<!-- results:one start -->\n<!-- results:one end -->\n")
    run = Path(_fake_run(tmp_path, "one", 0, 0.8))
    publish = [sys.executable, str(script), "--command", "make it", "--run", str(run)]
    done = subprocess.run(publish, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "benchmarks" / "published" / "one.json").read_text())
    assert doc["winner"] == "w-onnx-int8"  # no headline: the first deployable row
    (run / "headlines").mkdir()
    (run / "headlines" / "05_leaderboard.json").write_text(json.dumps({"winner": "baseline", "ranked_first": "w"}))
    done = subprocess.run(publish, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "benchmarks" / "published" / "one.json").read_text())
    assert doc["winner"] == "baseline" and "winner **baseline**" in (tmp_path / "README.md").read_text()
