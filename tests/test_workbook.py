"""Runner, profiles, parameters, offline HTML, and the project's install files."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jupytext
import pytest
import yaml
from conftest import PROJECT_ROOT, TACO_SAMPLE, TRASHNET, needs

from trashlib.pages import write_index
from trashlib.run import NotebookResult, RunError, RunSummary, open_run
from trashlib.workbook import (
    ParameterError,
    list_notebooks,
    load_profile,
    notebook_parameters,
    parse_override,
    resolve_parameters,
    run_workbook,
)

MINI_NOTEBOOK = """# %% [markdown]
# # mini
# %% tags=["parameters"]
run_dir = "x"
data = "synthetic"
steps = 2
rate = 0.5
# %%
from trashlib.run import open_run
run = open_run(run_dir)
assert steps > 0, "steps must be positive"
run.headline("{stem}", {{"steps": steps, "rate": rate}})
print("steps", steps)
"""


def write_mini(nb_dir: Path, stem: str) -> Path:
    nb_dir.mkdir(parents=True, exist_ok=True)
    path = nb_dir / f"{stem}.ipynb"
    nb = jupytext.reads(MINI_NOTEBOOK.format(stem=stem), fmt="py:percent")
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    jupytext.write(nb, path)
    return path


def test_environment_yml_and_pyproject_agree():
    py = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    want = set(py["dependencies"]) | set(py["optional-dependencies"]["test"])
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    assert {p for p in pip if not p.startswith("-e")} == want
    assert "torch==2.14.1" in want and "torchvision==0.29.1" in want


def test_every_numbered_notebook_has_a_parameters_cell_and_a_profile_value_type_checks():
    notebooks = list_notebooks()
    assert notebooks and notebooks[0].name == "00_eda.ipynb"
    for nb in notebooks:
        params = notebook_parameters(nb)
        assert {"run_dir", "data"} <= set(params), nb.name
    for profile in sorted((PROJECT_ROOT / "notebooks" / "params").glob("*.yaml")):
        resolve_parameters(load_profile(profile.stem), {}, notebooks)  # raises on an unknown or mistyped value


def test_bad_profile_and_parameters_give_one_clear_error():
    notebooks = list_notebooks()
    with pytest.raises(ParameterError, match="unknown profile 'nope': choose one of"):
        load_profile("nope")
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['epochz'\]"):
        resolve_parameters({}, {"epochz": 3}, notebooks)
    with pytest.raises(ParameterError, match="cache_side='big'.*expected int"):
        resolve_parameters({}, {"cache_side": "big"}, notebooks)
    with pytest.raises(ParameterError, match="expected NAME=VALUE"):
        parse_override("cache_side")
    assert parse_override("split_fractions=[0.8, 0.1, 0.1]") == ("split_fractions", [0.8, 0.1, 0.1])


def test_cli_bad_profile_is_one_line_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "trashlib", "run", "--profile", "nope", "--name", "x"],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("error: unknown profile 'nope'") and len(proc.stderr.strip().splitlines()) == 1
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trashlib", "run", "--data", "/no/such/dir", "--name", "x"],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr


def test_run_path_cannot_leave_the_run_directory(tmp_path):
    run = open_run(tmp_path / "r")
    assert run.path("a", "b.json").parent.is_dir()
    with pytest.raises(RunError, match="leads out of the run directory"):
        run.path("..", "escape.json")


def test_runner_executes_in_order_resumes_and_renders_offline_html(tmp_path):
    nb_dir = tmp_path / "notebooks"
    write_mini(nb_dir, "00_first")
    write_mini(nb_dir, "01_second")
    (nb_dir / "params").mkdir()
    (nb_dir / "params" / "p.yaml").write_text("steps: 3\n01_second:\n  rate: 0.25\n")
    kwargs = dict(runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", notebook_dir=nb_dir)
    lines: list[str] = []
    s = run_workbook("p", "synthetic", "r1", log=lines.append, **kwargs)
    assert s.ok and [r.status for r in s.results] == ["ran", "ran"]
    assert any("[1/2] 00_first: done" in line for line in lines)
    run_dir = tmp_path / "runs" / "r1"
    assert (run_dir / "headlines" / "01_second.json").read_text().count("0.25") == 1
    assert yaml.safe_load((run_dir / "params.yaml").read_text())["notebooks"]["00_first"]["steps"] == 3
    # unchanged parameters: nothing reruns; a changed parameter reruns that notebook and what follows
    s = run_workbook("p", "synthetic", "r1", log=lines.append, **kwargs)
    assert [r.status for r in s.results] == ["up to date", "up to date"]
    s = run_workbook("p", "synthetic", "r1", overrides={"rate": 0.75}, log=lines.append, **kwargs)
    assert [r.status for r in s.results] == ["ran", "ran"]
    s = run_workbook("p", "synthetic", "r1", overrides={"rate": 0.75}, force=True, log=lines.append, **kwargs)
    assert [r.status for r in s.results] == ["ran", "ran"]
    # a deleted or edited output makes its notebook stale; identical outputs again leave the next one current
    (run_dir / "headlines" / "00_first.json").unlink()
    s = run_workbook("p", "synthetic", "r1", overrides={"rate": 0.75}, log=lines.append, **kwargs)
    assert [r.status for r in s.results] == ["ran", "up to date"]
    assert any("00_first: running (output headlines/00_first.json is missing or changed)" in line for line in lines)
    (run_dir / "headlines" / "01_second.json").write_text("{}")
    s = run_workbook("p", "synthetic", "r1", overrides={"rate": 0.75}, log=lines.append, **kwargs)
    assert [r.status for r in s.results] == ["up to date", "ran"]
    # the input data is part of the stamp: a changed source file reruns everything
    data_dir = tmp_path / "photos"
    data_dir.mkdir()
    (data_dir / "a.jpg").write_bytes(b"1")
    s = run_workbook("p", str(data_dir), "r3", log=lines.append, **kwargs)
    assert [r.status for r in s.results] == ["ran", "ran"]
    assert [r.status for r in run_workbook("p", str(data_dir), "r3", log=lines.append, **kwargs).results] == [
        "up to date",
        "up to date",
    ]
    (data_dir / "a.jpg").write_bytes(b"22")
    s = run_workbook("p", str(data_dir), "r3", log=lines.append, **kwargs)
    assert [r.status for r in s.results] == ["ran", "ran"]
    # a failing notebook stops the run, names itself, and still gets a report
    s = run_workbook("p", "synthetic", "r2", overrides={"steps": 0}, log=lines.append, **kwargs)
    assert not s.ok and s.results[0].status == "failed" and "steps must be positive" in s.results[0].error
    assert len(s.results) == 1
    report_dir = tmp_path / "reports" / "r1"
    assert (report_dir / "index.html").stat().st_mode & 0o044 == 0o044, "reports must be readable by others"
    index = (report_dir / "index.html").read_text()
    assert "00_first.html" in index and "01_second.html" in index and "rate: 0.75" in index
    for page in [
        report_dir / "00_first.html",
        report_dir / "index.html",
        tmp_path / "reports" / "r2" / "00_first.html",
    ]:
        text = page.read_text()
        assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"(https?:)?//", text), page
        assert "@import url(http" not in text and "cdn" not in text.lower().replace("cdnjs", "cdn")


def test_index_lists_failure(tmp_path):
    s = RunSummary(
        "n", "p", "d", str(tmp_path), str(tmp_path), [NotebookResult("00_x", "failed", 1.0, "00_x.html", "boom <b>")]
    )
    text = write_index(tmp_path, s, tmp_path).read_text()
    assert "a notebook failed" in text and "boom &lt;b&gt;" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, crops, classes",
    [
        pytest.param(TACO_SAMPLE, 401, 6, marks=needs(TACO_SAMPLE)),
        pytest.param(TRASHNET, 2527, 6, marks=needs(TRASHNET)),
    ],
)
def test_eda_notebook_on_real_data(tmp_path, source, crops, classes):
    import papermill

    out = tmp_path / "eda.ipynb"
    papermill.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / "00_eda.ipynb"),
        str(out),
        kernel_name="python3",
        parameters={"run_dir": str(tmp_path / "run"), "data": str(source)},
        cwd=str(PROJECT_ROOT / "notebooks"),
        progress_bar=False,
    )
    head = yaml.safe_load((tmp_path / "run" / "headlines" / "00_eda.json").read_text())
    assert head["crops"] == crops and head["classes"] == classes and head["skipped"] == 0
    assert head["train"] > head["val"] > 0 and head["test"] > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ({"prune_ratios": [0.5, 1.0]}, "1.0 is outside (0, 1)"),
        ({"epochs": 0}, "0 is outside [1, inf)"),
        ({"image_size": 100}, "must be a multiple of 32"),
        ({"image_sizes": [64, 48]}, "48 must be a multiple of 32"),
        ({"lr": -0.1}, "-0.1 is outside (0, inf)"),
        ({"augment": 1.5}, "1.5 is outside [0, 1]"),
        ({"energy": 0.0}, "0.0 is outside (0, 1]"),
        ({"split_fractions": [0.7, 0.3, 0.0]}, "0.0 is outside (0, 1)"),
        ({"threads": 0}, "0 is outside [1, inf)"),
        ({"thread_choices": [1, 0]}, "parameter thread_choices=[1, 0] (04_deploy): 0 is outside [1, inf)"),
        ({"ofa_resolutions": [96, 100]}, "100 must be a multiple of 32"),
        ({"latency_check_n": 2}, "2 is outside [3, inf)"),
        ({"ofa_expand_ratios": [3, 7]}, "7 is outside [1, 6]"),
        ({"supernet_lr": 0.0}, "0.0 is outside (0, inf)"),
        ({"mode": "darts"}, "parameter mode='darts' (02_search): choose one of ['ofa', 'mnasnet']"),
        ({"ofa_pick": "front"}, "parameter ofa_pick='front' (02_search): choose one of ['score', 'speedup']"),
        ({"ofa_distill_from": "self"}, "choose one of ['largest', 'teacher']"),
        ({"ofa_speedup": 0}, "parameter ofa_speedup=0.0 (02_search): 0.0 is outside (0, inf)"),
        ({"ofa_pick_slack": 0.5}, "parameter ofa_pick_slack=0.5 (02_search): 0.5 is outside [1, inf)"),
        (
            {"runtime": "tensorrt"},
            "parameter runtime='tensorrt' (02_search): choose one of "
            "['onnxruntime-int8', 'onnxruntime-fp32', 'openvino-int8', 'openvino-fp32', 'torch-eager']",
        ),
    ],
)
def test_out_of_range_parameters_are_refused_before_anything_runs(override, message):
    with pytest.raises(ParameterError, match=re.escape(message)):
        resolve_parameters(load_profile("default"), override, list_notebooks())


def test_cli_bad_parameter_is_one_line_and_exit_2(tmp_path, capsys):
    from trashlib.cli import main

    assert main(["run", "--name", "x", "-p", "prune_ratios=[2]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prune_ratios" in err and "outside (0, 1)" in err
