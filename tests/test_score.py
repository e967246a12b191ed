"""Tests for trashlib.score: the published results and input validation."""

import math

import pytest

from trashlib.score import competition_score, relative_score


@pytest.mark.parametrize(
    ("f1", "seconds", "expected"),
    [(0.7012, 58.1225, 1.1676), (0.7531, 68.5204, 1.0503), (0.7194, 63.6555, 1.1415)],
)
def test_published_results(f1: float, seconds: float, expected: float) -> None:
    assert competition_score(f1, seconds) == pytest.approx(expected, abs=0.002)


def test_formula_and_direction() -> None:
    assert competition_score(0.70, 43.16) == pytest.approx(1.0)
    assert competition_score(0.8, 40.0) < competition_score(0.7, 40.0)
    assert competition_score(0.7, 30.0) < competition_score(0.7, 40.0)
    expected = 0.5 * 20 / 10 + 1 / (1 + math.exp(-20 * (0.6 - 0.5)))
    assert competition_score(0.5, 20, f1_ref=0.6, t_ref=10) == pytest.approx(expected)


def test_relative_score_of_the_baseline_itself() -> None:
    # 0.5 * t / t + sigmoid(0) = 0.5 + 0.5
    assert relative_score(0.61, 12.5, baseline_f1=0.61, baseline_t=12.5) == pytest.approx(1.0)
    assert relative_score(0.71, 12.5, 0.61, 12.5) < 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"f1": -0.1, "t": 1.0},
        {"f1": 1.1, "t": 1.0},
        {"f1": float("nan"), "t": 1.0},
        {"f1": 0.5, "t": 0.0},
        {"f1": 0.5, "t": -3.0},
        {"f1": 0.5, "t": float("inf")},
        {"f1": 0.5, "t": 1.0, "t_ref": 0.0},
        {"f1": 0.5, "t": 1.0, "f1_ref": -0.1},
        {"f1": 0.5, "t": 1.0, "f1_ref": 1.5},
        {"f1": "0.5", "t": 1.0},
        {"f1": True, "t": 1.0},
    ],
)
def test_bad_inputs_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        competition_score(**kwargs)


@pytest.mark.parametrize(("baseline_f1", "baseline_t"), [(-0.1, 10.0), (0.5, 0.0), (1.5, 10.0)])
def test_bad_baseline_raises(baseline_f1: float, baseline_t: float) -> None:
    with pytest.raises(ValueError, match="baseline"):
        relative_score(0.5, 10.0, baseline_f1, baseline_t)


def test_a_baseline_at_f1_zero_still_has_a_relative_score() -> None:
    # a from-scratch baseline that learned nothing (test F1 0) is a reference like any other: it scores 1.0 itself
    assert relative_score(0.0, 10.0, baseline_f1=0.0, baseline_t=10.0) == pytest.approx(1.0)
    better = relative_score(0.4, 5.0, baseline_f1=0.0, baseline_t=10.0)
    assert better < 1.0 and competition_score(0.4, 5.0, f1_ref=0.0, t_ref=10.0) == pytest.approx(better)


def test_macro_f1_averages_over_the_classes_present_and_reports_all_classes_too() -> None:
    from trashlib.score import classification_scores

    names = ["Metal", "Paper", "Paperpack", "Plastic"]
    # Paperpack and Plastic are absent from the labels; Plastic is predicted once (a false positive)
    scores = classification_scores([0, 0, 1, 1], [0, 0, 1, 3], names)
    assert scores["classes_scored"] == ["Metal", "Paper", "Plastic"]
    assert scores["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert scores["macro_f1_all_classes"] == pytest.approx((1.0 + 2 / 3 + 0.0 + 0.0) / 4)
    assert scores["per_class"]["Paperpack"]["support"] == 0 and scores["confusion_matrix"][1] == [0, 1, 0, 1]
    perfect = classification_scores([0, 1], [0, 1], names)
    assert perfect["macro_f1"] == 1.0 and perfect["macro_f1_all_classes"] == 0.5
