"""Scores: the competition score (published constants and relative to our baseline) and macro-F1."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

PUBLISHED_F1_REF = 0.70
PUBLISHED_T_REF = 43.16


def competition_score(f1: float, t: float, f1_ref: float = PUBLISHED_F1_REF, t_ref: float = PUBLISHED_T_REF) -> float:
    """``0.5 * t / t_ref + sigmoid(20 * (f1_ref - f1))``; lower is better.

    ``f1`` is the macro-F1 in [0, 1], ``t`` the inference time in seconds (> 0).
    """
    _check_f1("f1", f1)
    _check_positive("t", t)
    _check_f1("f1_ref", f1_ref)  # 0 is a reference too: a baseline that learned nothing
    _check_positive("t_ref", t_ref)
    return 0.5 * t / t_ref + _sigmoid(20.0 * (f1_ref - f1))


def relative_score(f1: float, t: float, baseline_f1: float, baseline_t: float) -> float:
    """The competition formula with our own baseline as the reference (the baseline scores 1.0)."""
    _check_f1("baseline_f1", baseline_f1)
    _check_positive("baseline_t", baseline_t)
    return competition_score(f1, t, f1_ref=baseline_f1, t_ref=baseline_t)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _check_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_f1(name: str, value: float) -> None:
    _check_number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_positive(name: str, value: float) -> None:
    _check_number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


class Scores(TypedDict):
    """One candidate's scores: with the published constants, and against the baseline (None without one)."""

    score_published: float
    score_relative: float | None


def score_candidate(f1: float, t: float, baseline_f1: float | None = None, baseline_t: float | None = None) -> Scores:
    """Both scores of one candidate: with the published constants and, when given, against the baseline."""
    relative = (
        relative_score(f1, t, baseline_f1, baseline_t) if baseline_f1 is not None and baseline_t is not None else None
    )
    return Scores(score_published=competition_score(f1, t), score_relative=relative)


def classification_scores(
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    indices: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Macro-F1, accuracy, per-class precision/recall/F1/support and the confusion matrix (scikit-learn,
    zero_division=0) of integer ``labels`` against ``predictions``; ``indices`` are the class indices named by
    ``class_names`` (default 0..n-1).

    ``macro_f1`` averages over the classes present: in the labels or among the predictions (scikit-learn's and the
    competition's macro-F1). A class absent from a small test split would otherwise count as F1 0 and pull the
    score down for nothing the model did; ``macro_f1_all_classes`` is that other number, every class counted."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support  # not on predict's path

    indices = list(range(len(class_names))) if indices is None else list(indices)
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    present = sorted((set(y.tolist()) | set(p.tolist())) & set(indices))
    precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=indices, zero_division=0)
    return {
        "macro_f1": float(f1_score(y, p, labels=present, average="macro", zero_division=0)) if present else 0.0,
        "macro_f1_all_classes": float(f1_score(y, p, labels=indices, average="macro", zero_division=0)),
        "classes_scored": [class_names[indices.index(i)] for i in present],
        "accuracy": float((p == y).mean()) if len(y) else 0.0,
        "n": len(y),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y, p, labels=indices).tolist(),
    }
