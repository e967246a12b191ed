"""Tests for trashlib.train: learning, determinism, resumption, distillation and validation."""

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from trashlib import train as train_module
from trashlib.models import build_model, model_preprocessing
from trashlib.train import (
    TrainConfig,
    TrainError,
    build_augmentation,
    epochs_per_minute,
    evaluate,
    predict_logits,
    preprocess,
    seed_everything,
    train_model,
)

CLASSES = ["red", "green", "blue"]
FAST = {"batch_size": 16, "image_size": 32, "threads": 1, "lr": 3e-3}


def colour_data(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose class is the dominant colour channel: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 90, (n, size, size, 3))
    images[np.arange(n), :, :, labels] += 150
    return images.astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": colour_data(48, seed=0), "val": colour_data(24, seed=1)}


def fresh_model(seed: int = 0) -> torch.nn.Module:
    seed_everything(seed)
    return build_model("mnasnet0_5", num_classes=3, image_size=32)


def run(
    data: dict, checkpoint: Path | None = None, teacher: torch.nn.Module | None = None, **overrides: object
) -> train_module.TrainResult:
    config = TrainConfig(**{"epochs": 2, "augment": 0.5, **FAST, **overrides})
    return train_model(
        fresh_model(), data["train"], data["val"], config, checkpoint_path=checkpoint, teacher=teacher, progress=False
    )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


def test_tiny_run_learns_above_chance() -> None:
    # ~100 steps: BN running statistics (momentum 0.1) need that long to forget their init,
    # before which eval-mode predictions lag far behind the training loss.
    data = {"train": colour_data(96, seed=0), "val": colour_data(24, seed=1)}
    result = run(data, epochs=8, augment=0.0, batch_size=8)
    assert result.epochs_run == 8 and len(result.history) == 8
    assert {"train_loss", "val_loss", "val_macro_f1", "lr", "epoch_seconds"} <= set(result.history[0])
    scores = evaluate(result.model, *data["val"], CLASSES, image_size=32)
    assert scores["accuracy"] > 0.6 and scores["macro_f1"] > 0.6  # chance is 1/3
    assert scores["macro_f1"] == pytest.approx(result.best_val_f1)
    assert result.history[result.best_epoch - 1]["val_macro_f1"] == result.best_val_f1
    assert not result.model.training
    summary = result.to_dict()
    assert "model" not in summary and summary["best_epoch"] == result.best_epoch
    seconds = sum(h["epoch_seconds"] for h in result.history)
    assert epochs_per_minute(result.history) == pytest.approx(60 * 8 / seconds)
    assert epochs_per_minute([]) == 0.0


def test_same_seed_gives_identical_weights(data: dict) -> None:
    first = run(data, imbalance="sampler", schedule="onecycle")
    second = run(data, imbalance="sampler", schedule="onecycle")
    assert_same_weights(first.model, second.model)
    assert without_timing(first.history) == without_timing(second.history)


def test_killed_run_resumes_bitwise(data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uninterrupted = run(data, epochs=4, optimizer="sgd")

    checkpoint = tmp_path / "run" / "train.ckpt"
    original_write = train_module._write_checkpoint

    def write_then_die(path: Path, snapshot: dict) -> None:
        original_write(path, snapshot)
        if snapshot["state"]["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill after epoch 2")

    monkeypatch.setattr(train_module, "_write_checkpoint", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(data, checkpoint=checkpoint, epochs=4, optimizer="sgd")
    monkeypatch.setattr(train_module, "_write_checkpoint", original_write)

    resumed = run(data, checkpoint=checkpoint, epochs=4, optimizer="sgd")
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 4
    assert_same_weights(uninterrupted.model, resumed.model)
    assert without_timing(uninterrupted.history) == without_timing(resumed.history)
    assert resumed.best_epoch == uninterrupted.best_epoch
    assert [p.name for p in checkpoint.parent.iterdir()] == ["train.ckpt"]

    finished = run(data, checkpoint=checkpoint, epochs=4, optimizer="sgd")  # nothing left to do
    assert finished.resumed_from_epoch == 4
    assert_same_weights(uninterrupted.model, finished.model)

    with pytest.raises(TrainError, match=r"train.ckpt belongs to a different run .*'lr'"):
        run(data, checkpoint=checkpoint, epochs=4, optimizer="sgd", lr=1e-2)

    # a notebook rerun with new parameters starts afresh and overwrites the other run's checkpoint
    config = TrainConfig(**{"epochs": 2, "augment": 0.5, **FAST, "optimizer": "sgd", "lr": 1e-2})
    fresh = train_model(
        fresh_model(),
        data["train"],
        data["val"],
        config,
        checkpoint_path=checkpoint,
        progress=False,
        restart_other_runs=True,
    )
    assert fresh.resumed_from_epoch == 0 and fresh.epochs_run == 2
    again = train_model(
        fresh_model(),
        data["train"],
        data["val"],
        config,
        checkpoint_path=checkpoint,
        progress=False,
        restart_other_runs=True,
    )
    assert again.resumed_from_epoch == 2
    assert_same_weights(fresh.model, again.model)


def test_checkpoint_of_another_teacher_or_start_does_not_resume(data: dict, tmp_path: Path) -> None:
    # a retrained teacher (or a retrained source of a pruned student) keeps every TrainConfig field the same
    checkpoint = tmp_path / "distil.ckpt"
    teachers = [fresh_model(seed) for seed in (5, 6)]
    first = run(data, checkpoint=checkpoint, teacher=teachers[0], epochs=1)
    assert run(data, checkpoint=checkpoint, teacher=teachers[0], epochs=1).resumed_from_epoch == 1
    with pytest.raises(TrainError, match=r"differs in \['teacher weights'\]"):
        run(data, checkpoint=checkpoint, teacher=teachers[1], epochs=1)
    config = TrainConfig(**{"epochs": 1, "augment": 0.5, **FAST})
    with pytest.raises(TrainError, match=r"differs in \['initial weights'\]"):
        train_model(
            fresh_model(seed=9),
            data["train"],
            data["val"],
            config,
            checkpoint_path=checkpoint,
            teacher=teachers[0],
            progress=False,
        )
    other = train_model(
        fresh_model(seed=9),
        data["train"],
        data["val"],
        config,
        checkpoint_path=checkpoint,
        teacher=teachers[1],
        progress=False,
        restart_other_runs=True,
    )
    assert other.resumed_from_epoch == 0
    with pytest.raises(AssertionError):
        assert_same_weights(first.model, other.model)


def test_distillation_runs_with_its_own_teacher_preprocessing(data: dict) -> None:
    seed_everything(1)
    teacher = build_model("efficientnet_lite0", num_classes=3, image_size=64)
    norm = model_preprocessing("efficientnet_lite0")
    result = run(
        data,
        teacher=teacher,
        epochs=1,
        distill_alpha=0.7,
        distill_temperature=3.0,
        teacher_image_size=64,
        teacher_mean=norm["mean"],
        teacher_std=norm["std"],
    )
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    plain = run(data, epochs=1)
    assert result.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_distillation_loss_formula() -> None:
    config = TrainConfig(distill_alpha=0.25, distill_temperature=2.0)
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    hard = torch.tensor(0.9)
    p_t = torch.softmax(teacher / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / 2, 1))).sum()
    expected = 0.25 * 4 * kl + 0.75 * hard
    got = train_module.distillation_loss(
        student, teacher, hard, temperature=config.distill_temperature, alpha=config.distill_alpha
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_early_stopping_stops_when_f1_stalls(data: dict) -> None:
    result = run(data, epochs=6, lr=1e-9, augment=0.0, patience=1)
    assert result.stopped_early and result.epochs_run < 6
    assert result.history[-1]["val_macro_f1"] <= result.best_val_f1


def test_cuda_request_without_cuda_falls_back_with_a_warning(data: dict) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: no fallback to test")
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        result = run(data, epochs=1, device="cuda")
    assert result.device == "cpu"


def test_auto_device_trains_where_it_can_and_returns_the_model_on_the_cpu(data: dict) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "auto" falls back silently
        result = run(data, epochs=1, device="auto")
    assert result.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert all(p.device.type == "cpu" for p in result.model.parameters())


def test_evaluate_predict_and_preprocess(data: dict) -> None:
    model = fresh_model()
    images, labels = data["val"]
    logits = predict_logits(model, images, image_size=64, batch_size=7)
    assert logits.shape == (len(images), 3) and logits.dtype == np.float32
    scores = evaluate(model, images, labels, CLASSES, image_size=32, batch_size=10)
    assert set(scores) >= {"macro_f1", "accuracy", "per_class", "confusion_matrix", "predictions"}
    assert len(scores["predictions"]) == len(images)
    assert np.array(scores["confusion_matrix"]).shape == (3, 3)
    assert sum(row["support"] for row in scores["per_class"].values()) == len(images)
    x = preprocess(np.full((2, 32, 32, 3), 127, np.uint8), 64, [127 / 255] * 3, [128 / 255] * 3)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x, torch.zeros_like(x), atol=1e-5)
    with pytest.raises(TrainError, match="uint8"):
        preprocess(np.zeros((2, 32, 32, 3), np.float32), 32, [0.5] * 3, [0.5] * 3)
    with pytest.raises(TrainError, match="class_names"):
        evaluate(model, images, labels, [*CLASSES[:2], "x", "y"], image_size=32)


def test_augmentation_keeps_shape_and_dtype() -> None:
    assert build_augmentation(0.0) is None
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    for policy in ("randaugment", "trivialaugment"):
        out = build_augmentation(1.0, policy)(image)
        assert out.shape == image.shape and out.dtype == torch.uint8


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("optimizer", "adam"),
        ("lr", 0.0),
        ("weight_decay", -1.0),
        ("schedule", "step"),
        ("label_smoothing", 1.0),
        ("imbalance", "oversample"),
        ("augment", 1.5),
        ("augment_policy", "autoaugment"),
        ("image_size", 48),
        ("mean", (0.5, 0.5)),
        ("std", (0.2, 0.0, 0.2)),
        ("patience", 0),
        ("seed", -1),
        ("threads", 0),
        ("device", "tpu"),
        ("distill_temperature", 0.0),
        ("distill_alpha", 1.5),
        ("teacher_image_size", 8),
        ("epochs", 2.5),
    ],
)
def test_bad_config_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(TrainError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_bad_data_is_refused(data: dict) -> None:
    images, labels = data["train"]
    config = TrainConfig(epochs=1, **FAST)
    with pytest.raises(TrainError, match="train labels must lie in"):
        train_model(fresh_model(), (images, labels + 5), data["val"], config, progress=False)
    with pytest.raises(TrainError, match="val images must be a uint8"):
        train_model(fresh_model(), data["train"], (images.astype(np.float32), labels), config, progress=False)


def test_config_to_dict_is_json_ready() -> None:
    config = TrainConfig(mean=[0.5, 0.5, 0.5])
    as_dict = config.to_dict()
    assert as_dict["mean"] == [0.5, 0.5, 0.5]
    assert set(as_dict) == {f.name for f in dataclasses.fields(TrainConfig)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import json

        json.dumps(as_dict)


def test_train_config_for_a_spec_and_from_a_notebooks_parameters() -> None:
    from trashlib.models import ModelSpec

    student = ModelSpec.create("mnasnet0_5", ["a", "b"], 64)
    teacher = ModelSpec.create("efficientnet_lite0", ["a", "b"], 96)
    config = TrainConfig.for_spec(student, teacher=teacher, epochs=3)
    assert (config.image_size, config.mean, config.teacher_image_size) == (64, student.mean, 96)
    assert config.teacher_mean == teacher.mean and config.epochs == 3
    params = {
        "epochs": 7,
        "lr": 0.01,
        "patience": 0,
        "model_name": "mnasnet0_5",
        "image_size": 999,
        "teacher_image_size": 999,
        "teacher_epochs": 2,
        "teacher_lr": 0.002,
        "optimizer": "sgd",
    }
    config = TrainConfig.from_params(student, params)
    assert (config.epochs, config.lr, config.patience, config.image_size, config.optimizer) == (
        7,
        0.01,
        None,
        64,
        "sgd",
    )
    assert config.teacher_image_size is None  # a notebook's parameter never sets the spec's fields
    from trashlib.train import teacher_config

    t_config = teacher_config(teacher, params)
    assert (t_config.epochs, t_config.lr, t_config.optimizer, t_config.image_size) == (2, 0.002, "adamw", 96)
