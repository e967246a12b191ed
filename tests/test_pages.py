"""Pages for readers: formatted numbers, the index as a dashboard, folded code, back links, no progress or stderr."""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from trashlib import formats, progress
from trashlib.candidate import leaderboard, leaderboard_csv
from trashlib.pages import clean_outputs, render_html, write_index
from trashlib.run import NotebookResult, RunSummary, read_leaderboard


def test_formats_round_and_mark_missing_values():
    assert formats.ms(6.6449) == "6.64 ms" and formats.macs(13471222.0) == "13.5 M"
    assert formats.size_mb(8_912_345) == "8.91 MB" and formats.f1(0.91249) == "0.912"
    assert formats.seconds(3.2) == "3.20 s" and formats.seconds(304.4) == "5 min 04 s"
    assert formats.count(2_224_812) == "2.22 M" and formats.count(5120) == "5,120"
    assert formats.ratio(1.714) == "1.71x" and formats.score(1.16764) == "1.1676"
    for missing in (None, float("nan"), math.inf, "n/a", True):
        assert formats.ms(missing) == formats.f1(missing) == formats.MISSING
    assert formats.text(None) == formats.text(float("nan")) == formats.MISSING and formats.text(0.123456) == "0.1235"
    assert formats.column_format("winner_latency_ms") is formats.ms and formats.column_format("best_f1") is formats.f1
    assert formats.column_format("stage") is formats.text


def test_format_table_formats_each_column_by_its_name():
    table = pd.DataFrame(
        {
            "latency_b1_ms": [6.644, float("nan")],
            "macs": [13471222.0, 2e6],
            "f1_test": [0.9, None],
            "note": ["a", None],
        },
        index=["x", "y"],
    )
    out = formats.format_table(table)
    assert out.loc["x"].tolist() == ["6.64 ms", "13.5 M", "0.900", "a"]
    assert out.loc["y"].tolist() == ["–", "2.0 M", "–", "–"]
    assert list(out.index) == ["x", "y"]


def _record(name: str, stage: str, f1: float, ms: float, score: float, runtime: str | None = None) -> dict:
    r = {
        "candidate": name,
        "stage": stage,
        "model": "mnasnet1_0",
        "f1_test": f1,
        "f1_public": f1 - 0.01,
        "f1_private": f1 + 0.01,
        "latency_b1_ms": ms,
        "submit_s": ms / 2,
        "macs": 300e6,
        "size_bytes": 8_900_000,
        "score_published": score,
        "score_relative": score,
        "per_class": {"glass": {"f1": 0.5}},
        "confusion_matrix": [[1, 0], [0, 1]],
    }
    if runtime:
        r["runtime"] = runtime
    return r


RECORDS = [
    _record("baseline", "baseline", 0.80, 10.0, 1.0),
    _record("baseline-pruned50", "compress", 0.78, 8.0, 0.9),
    _record("baseline-onnx-fp32", "deploy", 0.80, 6.0, 0.8, "onnx-fp32"),
]


def test_leaderboard_takes_the_last_interleaved_latency_and_names_its_source():
    latencies = {"baseline-pruned50": (6.64, "03_compress"), "baseline": (9.5, "04_deploy")}
    board = leaderboard(RECORDS, latencies=latencies)
    assert board.loc["baseline-pruned50", "latency_b1_ms"] == 6.64
    assert board.loc["baseline-pruned50", "latency_b1_alone_ms"] == 8.0
    assert board.loc["baseline-pruned50", "latency_source"] == "03_compress (interleaved)"
    assert board.loc["baseline", "latency_source"] == "04_deploy (interleaved)"
    assert board.loc["baseline-onnx-fp32", "latency_source"] == "04_deploy (assessed alone)"
    assert board.loc["baseline-onnx-fp32", "latency_b1_ms"] == 6.0


def test_leaderboard_csv_cells_are_json(tmp_path: Path):
    board = leaderboard(RECORDS)
    text = leaderboard_csv(board)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3
    for row in rows:
        assert json.loads(row["per_class"]) == {"glass": {"f1": 0.5}}
        assert json.loads(row["confusion_matrix"]) == [[1, 0], [0, 1]]
    (tmp_path / "leaderboard.csv").write_text(text)
    back = read_leaderboard(tmp_path / "leaderboard.csv")
    assert back.loc["baseline-onnx-fp32", "deployable"] and back.loc["baseline", "f1_test"] == 0.8


def _executed_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    code = nbformat.v4.new_code_cell("print('result 42')\nwarn()\nPath('x')", execution_count=1)
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="result 42\n"),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: No CUDA runtime is found\n"),
        nbformat.v4.new_output("stream", name="stdout", text="train:  37%|###7      | 10/27 [00:01<00:02]\r"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "PosixPath('/tmp/x')"}, execution_count=1),
    ]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 07 · Example: a page\n\nSome words."),
        code,
        nbformat.v4.new_code_cell("wide", execution_count=2),
    ]
    nb.cells[2].outputs = [
        nbformat.v4.new_output(
            "execute_result",
            data={"text/html": "<table><tr>" + "<td>cell</td>" * 60 + "</tr></table>", "text/plain": "t"},
            execution_count=2,
        )
    ]
    nbformat.write(nb, path)
    return path


def test_clean_outputs_drops_stderr_progress_and_paths_keeps_results(tmp_path: Path):
    nb = nbformat.read(_executed_notebook(tmp_path / "07_example.ipynb"), as_version=4)
    assert clean_outputs(nb) == 3
    outputs = nb.cells[1].outputs
    assert [o.get("text") for o in outputs] == ["result 42\n"]
    error = nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=["ValueError: boom"])
    nb.cells[1].outputs = [error]
    assert clean_outputs(nb) == 0 and nb.cells[1].outputs == [error], "a failed cell's traceback must stay"


def test_render_html_titles_folds_code_links_back_and_scrolls_tables(tmp_path: Path):
    page = render_html(_executed_notebook(tmp_path / "07_example.ipynb"), tmp_path / "07_example.html").read_text()
    assert "<title>07 · Example: a page</title>" in page
    assert '<a href="index.html">← run index</a>' in page
    assert page.count('<details class="trashlib-code">') == 2 and "<details open" not in page
    assert "No CUDA runtime" not in page and "10/27" not in page and "PosixPath" not in page
    assert "result 42" in page
    assert "overflow-x:auto" in page and "position:sticky" in page
    assert "https://" not in page.split("</style>")[-1], "a page loads nothing from the network"


def _summary(tmp_path: Path, results: list[NotebookResult]) -> RunSummary:
    return RunSummary("demo", "smoke", "synthetic", str(tmp_path / "run"), str(tmp_path / "report"), results)


def test_index_is_a_dashboard_with_the_winner_card(tmp_path: Path):
    run_dir, report_dir = tmp_path / "run", tmp_path / "report"
    (run_dir / "headlines").mkdir(parents=True)
    (run_dir / "data").mkdir()
    (run_dir / "data" / "dataset.json").write_text(json.dumps({"manifest_sha256": "ab" * 32}))
    (run_dir / "headlines" / "01_baseline.json").write_text(json.dumps({"f1_test": 0.80123, "latency_ms": 9.876}))
    (run_dir / "headlines" / "05_leaderboard.json").write_text(
        json.dumps({"winner": "baseline-onnx-fp32", "winner_f1": 0.8})
    )
    (run_dir / "pareto.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    report_dir.mkdir()
    board = leaderboard(RECORDS, latencies={"baseline-pruned50": (6.64, "03_compress")})
    (report_dir / "leaderboard.csv").write_text(leaderboard_csv(board))
    (report_dir / "winner").mkdir()
    (report_dir / "winner" / "model.onnx").write_bytes(b"onnx")
    results = [
        NotebookResult("01_baseline", "ran", 75.5, "01_baseline.html"),
        NotebookResult("05_leaderboard", "ran", 4),
    ]
    page = write_index(report_dir, _summary(tmp_path, results), run_dir).read_text()
    assert "Winner: baseline-onnx-fp32" in page
    assert "0.800 (public 0.790, private 0.810)" in page and "6.00 ms" in page and "3.00 s" in page
    assert "1.67x faster at batch 1" in page and "F1 +0.000" in page
    assert "python -m trashlib predict reports/demo/winner" in page
    assert "6.64 ms" in page and "03_compress (interleaved)" in page, "the leaderboard's top rows, formatted"
    assert "300.0 M" in page and "8.90 MB" in page and "NaN" not in page and "None" not in page
    assert 'src="data:image/png;base64,' in page
    assert '<a href="01_baseline.html">01_baseline</a>' in page and "1 min 16 s" in page
    assert "f1_test: 0.801" in page and "latency_ms: 9.88 ms" in page
    assert "ab" * 32 in page and "usable cores" in page and "git commit" in page and "smoke" in page


def test_index_says_why_there_is_no_winner_or_no_leaderboard(tmp_path: Path):
    run_dir, report_dir = tmp_path / "run", tmp_path / "report"
    (run_dir / "headlines").mkdir(parents=True)
    report_dir.mkdir()
    results = [NotebookResult("05_leaderboard", "ran", 4.0, "05_leaderboard.html")]
    page = write_index(report_dir, _summary(tmp_path, results), run_dir).read_text()
    assert "No leaderboard in this run" in page and "Winner:" not in page
    (run_dir / "headlines" / "05_leaderboard.json").write_text(
        json.dumps({"winner": None, "why_no_winner": "no deployable candidate has test macro-F1 above chance"})
    )
    (report_dir / "leaderboard.csv").write_text(leaderboard_csv(leaderboard(RECORDS)))
    page = write_index(report_dir, _summary(tmp_path, results), run_dir).read_text()
    assert "No winner" in page and "Why: no deployable candidate has test macro-F1 above chance" in page
    assert "data manifest sha256" in page and formats.MISSING in page


def test_progress_steps_reach_the_runner_only_under_it(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.bars_enabled() and not progress.under_runner()
    progress.step("epoch", 1, 3)  # outside the runner: nothing written, nothing raised
    file = tmp_path / "progress"
    monkeypatch.setenv(progress.ENV, str(file))
    assert progress.under_runner() and not progress.bars_enabled(True) and not progress.bars_enabled(False)
    progress.step("epoch", 2, 3, "val macro-F1 0.5")
    assert file.read_text() == "epoch 2/3 (val macro-F1 0.5)\n"
    monkeypatch.setenv(progress.ENV, str(tmp_path / "missing" / "folder" / "progress"))
    progress.step("epoch", 3, 3)  # an unwritable progress file must not fail training


def test_tail_echoes_the_latest_complete_line_with_its_prefix(tmp_path: Path, monkeypatch):
    file = tmp_path / "progress"
    said: list[str] = []
    monkeypatch.setenv(progress.ENV, str(file))
    with progress.Tail(file, said.append, "  02_search: ", interval=0.05):
        progress.step("trial", 1, 4)
        deadline = time.monotonic() + 5
        while not said and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(file, "a") as fh:
            fh.write("trial 2/4")  # a line still being written is not echoed yet
        time.sleep(0.2)
        assert said == ["  02_search: trial 1/4"]
        with open(file, "a") as fh:
            fh.write(" (#1 complete)\n")
        progress.step("trial", 3, 4)
    assert said[-1] == "  02_search: trial 3/4" and not file.exists()
    assert threading.active_count() >= 1


@pytest.mark.parametrize("typo, meant", [("epoch", "epochs"), ("n_trial", "n_trials"), ("prune_ratio", "prune_ratios")])
def test_mistyped_parameter_gets_did_you_mean(typo, meant, capsys):
    from trashlib.cli import main

    assert main(["run", "--name", "x", "-p", f"{typo}=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"did you mean {meant!r} for {typo!r}?" in err
    assert "known:" not in err, "a typo names the parameter meant, not all of them"


def test_every_cli_option_has_help():
    import argparse

    from trashlib.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert not missing and {"prepare", "synthetic"} <= set(commands)


def test_interleaved_latencies_come_from_the_last_notebook_that_timed_a_candidate(tmp_path: Path):
    from trashlib.candidate import interleaved_latencies, save_interleaved
    from trashlib.run import open_run

    run = open_run(tmp_path / "run")
    assert interleaved_latencies(run) == {}
    save_interleaved(run, "compress", {"baseline": 10.0, "baseline-pruned50": 6.64})
    save_interleaved(run, "deploy", {"baseline": 9.5, "baseline-onnx-fp32": 4.0})
    assert interleaved_latencies(run) == {
        "baseline": (9.5, "04_deploy"),
        "baseline-pruned50": (6.64, "03_compress"),
        "baseline-onnx-fp32": (4.0, "04_deploy"),
    }
