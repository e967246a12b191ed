"""Tests for trashlib.report's search figures and tables, on tiny fake studies."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from trashlib import report
from trashlib.tune import param_importances, pick_trial

# (val F1, latency ms, lr, image size); trials 1 and 3 are dominated, trial 5 fails.
ROWS = [
    (0.30, 2.0, 1e-3, 64),
    (0.25, 3.0, 2e-3, 64),
    (0.50, 4.0, 3e-3, 96),
    (0.20, 5.0, 4e-3, 96),
    (0.60, 6.0, 5e-3, 128),
]


def fake_study(rows=ROWS, fail: bool = True) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    distributions = {
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "image_size": CategoricalDistribution([64, 96, 128]),
    }
    for f1, ms, lr, size in rows:
        study.add_trial(
            optuna.trial.create_trial(
                values=[f1, ms],
                params={"lr": lr, "image_size": size},
                distributions=distributions,
                user_attrs={
                    "result": {"val_f1": f1, "latency_ms": ms, "n_params": 1000 * size, "macs": 10_000 * size},
                    "arch": {"image_size": size},
                },
            )
        )
    if fail:
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    return study


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_trial_table_marks_the_front_and_scores_it() -> None:
    trials = fake_study().trials
    table = report.trial_table(trials, f1_ref=0.6, latency_ref_ms=6.0)
    assert list(table.index) == [0, 1, 2, 3, 4, 5]
    assert list(table["pareto"]) == [True, False, True, False, True, False]
    assert table.loc[4, "pick_score"] == pytest.approx(1.0)  # the reference itself
    assert math.isnan(table.loc[1, "pick_score"]) and math.isnan(table.loc[5, "val_f1"])
    assert table.loc[2, "params"] == 96_000 and table.loc[2, "image_size"] == 96
    assert table.loc[5, "state"] == "FAIL"
    assert report.trial_table(trials)["pick_score"].isna().all()


def test_plot_pareto_shows_trials_front_chosen_and_baseline() -> None:
    trials = fake_study().trials
    chosen = pick_trial(trials, 0.4, 3.0)
    baseline = {"model": "mnasnet1_0", "f1_test": 0.4, "latency_b1_ms": 3.0}
    fig = report.plot_pareto(trials, baseline=baseline, chosen=chosen)
    (ax,) = fig.axes
    points, ring, star = ax.collections
    assert len(points.get_offsets()) == 5  # completed trials only
    assert len(ring.get_offsets()) == 1 and len(star.get_offsets()) == 1
    assert list(star.get_offsets()[0]) == [3.0, 0.4]
    (front,) = ax.lines
    assert list(front.get_xdata()) == [2.0, 4.0, 6.0] and list(front.get_ydata()) == [0.30, 0.50, 0.60]
    labels = ax.get_legend_handles_labels()[1]
    assert "baseline mnasnet1_0: TEST F1" in labels and f"chosen: trial {chosen.number}" in labels
    # Without a baseline or a chosen trial: just the trials and the front.
    fig = report.plot_pareto(trials)
    assert len(fig.axes[0].collections) == 1 and len(fig.axes[0].lines) == 1


def test_plot_importances_one_panel_per_objective() -> None:
    importances = param_importances(fake_study(), seed=0)
    fig = report.plot_importances(importances)
    assert [ax.get_title() for ax in fig.axes] == ["importance for val_f1", "importance for latency_ms"]
    assert all(len(ax.patches) == 2 for ax in fig.axes)  # lr and image_size
    fig = report.plot_importances({"reward": {f"p{i}": 1 / 12 for i in range(12)}}, top=5)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 5
    with pytest.raises(ValueError, match="too few completed trials"):
        report.plot_importances({})


def test_plot_history_best_so_far_per_objective() -> None:
    study = fake_study()
    fig = report.plot_history(study)
    assert len(fig.axes) == 2
    f1_ax, ms_ax = fig.axes
    assert len(f1_ax.collections[0].get_offsets()) == 5
    assert list(f1_ax.lines[0].get_ydata()) == [0.30, 0.30, 0.50, 0.50, 0.60]  # maximize
    assert list(ms_ax.lines[0].get_ydata()) == [2.0, 2.0, 2.0, 2.0, 2.0]  # minimize
    reward = optuna.create_study(direction="maximize")
    for value in (0.2, 0.1, 0.4):
        reward.add_trial(optuna.trial.create_trial(value=value))
    fig = report.plot_history(reward)
    assert len(fig.axes) == 1 and list(fig.axes[0].lines[0].get_ydata()) == [0.2, 0.2, 0.4]
    empty = report.plot_history(optuna.create_study(directions=["maximize", "minimize"]))
    assert len(empty.axes) == 2
