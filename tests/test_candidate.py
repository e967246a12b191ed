"""A candidate's record: test F1 by half, cost measured from the files on disk, scores, save and reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import six_class_photos

from trashlib.candidate import assess_candidate, check_above_chance, load_candidate, save_candidate
from trashlib.data import PrepareConfig, prepare_dataset
from trashlib.models import ModelSpec, build_model
from trashlib.run import open_run
from trashlib.score import score_candidate
from trashlib.train import predict_logits


@pytest.fixture
def tiny(coco_factory, tmp_path):
    root, _ = coco_factory(six_class_photos(36))
    return prepare_dataset(root, tmp_path / "data", PrepareConfig(cache_side=32), progress=False)


def test_assess_save_and_reload_a_candidate(tiny, tmp_path):
    torch.manual_seed(0)
    model = build_model("mnasnet0_5", len(tiny.classes), 32)
    spec = ModelSpec.create("mnasnet0_5", tiny.classes, 32)
    norm = spec.normalization
    rec = assess_candidate("baseline", model, spec, tiny, threads=1, latency_runs=3)
    n_test = len(tiny.split("test")[1])
    assert rec["submit_n"] == n_test and rec["submit_agrees_with_cache"]
    assert 0 <= rec["f1_test"] <= 1 and rec["f1_public"] is not None and rec["f1_private"] is not None
    assert rec["latency_b1_ms"] > 0 and rec["macs"] > 0 and rec["params"] == sum(p.numel() for p in model.parameters())
    assert rec["score_relative"] is None and rec["score_published"] > 0.5
    other = assess_candidate("other", model, spec, tiny, threads=1, baseline=rec, latency_runs=3)
    assert other["score_relative"] == pytest.approx(
        score_candidate(other["f1_test"], other["submit_s"], rec["f1_test"], rec["submit_s"])["score_relative"]
    )

    run = open_run(tmp_path / "run")
    save_candidate(run, "baseline", rec, model, spec, params={"epochs": 0})
    loaded, loaded_spec, metrics = load_candidate(run, "baseline", "baseline")
    x = tiny.split("test")[0]
    np.testing.assert_array_equal(
        predict_logits(model, x, 32, normalization=norm), predict_logits(loaded, x, 32, normalization=norm)
    )
    assert list(loaded_spec.class_names) == tiny.classes and metrics["f1_test"] == rec["f1_test"]
    assert loaded_spec == spec
    assert load_candidate(run, "baseline", "missing") is None


def test_score_candidate_without_and_with_baseline():
    s = score_candidate(0.7012, 58.1225)
    assert s["score_published"] == pytest.approx(1.1676, abs=0.002) and s["score_relative"] is None
    assert score_candidate(0.8, 10.0, 0.8, 10.0)["score_relative"] == pytest.approx(1.0)


def test_check_above_chance_fails_on_synthetic_data_and_warns_on_real_data():
    assert check_above_chance("baseline", 0.4, 6, "synthetic") == "baseline: macro-F1 0.400, above chance 0.167"
    with pytest.raises(AssertionError, match="searched macro-F1 0.150 is not above chance 0.167 on the synthetic"):
        check_above_chance("searched", 0.15, 6, "synthetic")
    warning = check_above_chance("searched", 0.092, 6, "../shared/data/taco-sample")
    assert warning.startswith("WARNING: searched macro-F1 0.092 is not above chance 0.167") and "taco-sample" in warning
