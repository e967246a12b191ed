"""The run directory: paths inside it, parameters, metrics and the leaderboard read back with their types."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trashlib.run import RunError, open_run


def test_run_paths_metrics_parameters_and_leaderboard(tmp_path: Path):
    run = open_run(tmp_path / "r")
    assert run.model_path("baseline", "teacher") == run.run_dir / "baseline" / "teacher" / "model.pt"
    assert run.model_path("baseline", "teacher").parent.is_dir()
    with pytest.raises(RunError, match="no baseline/baseline/metrics.json"):
        run.metrics("baseline", "baseline")
    run.write_metrics("baseline/baseline", {"f1_test": 0.5}, {"epochs": 1})
    assert run.metrics("baseline", "baseline") == {"f1_test": 0.5}
    with pytest.raises(RunError, match="ran without the runner"):
        run.notebook_params("01_baseline")
    (run.run_dir / "params.yaml").write_text(yaml.safe_dump({"notebooks": {"01_baseline": {"epochs": 3}}}))
    assert run.notebook_params("01_baseline") == {"epochs": 3}
    with pytest.raises(RunError, match="no parameters of notebook '02_search'"):
        run.notebook_params("02_search")
    with pytest.raises(RunError, match="run notebook 05 first"):
        run.leaderboard()
    (run.run_dir / "leaderboard.csv").write_text(
        "candidate,f1_test,size_bytes,deployable,flagged\nw-onnx-int8,0.8,2000,True,\nbaseline,0.5,,False,\n"
    )
    board = run.leaderboard()
    assert list(board.index) == ["w-onnx-int8", "baseline"] and board["deployable"].tolist() == [True, False]
    assert board.loc["w-onnx-int8", "f1_test"] == 0.8 and board["flagged"].isna().all()
