"""Training loop, evaluation and knowledge distillation for every model."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from trashlib import progress as progress_bars
from trashlib.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelError,
    ModelSpec,
    atomic_torch_save,
    check_image_size,
    safe_torch_load,
    weights_sha256,
)
from trashlib.score import classification_scores

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle")
IMBALANCE_MODES = ("weighted", "sampler", "none")
AUGMENT_POLICIES = ("randaugment", "trivialaugment")
TRAIN_CHECKPOINT_FORMAT = "trashlib-train/1"
SGD_MOMENTUM = 0.9
RANDAUGMENT_BINS = 31
MAX_ROTATION_DEGREES = 15.0
# Settings that may change between a run and its resumption without invalidating the checkpoint.
RESUME_FREE_FIELDS = ("threads", "device")


# A custom per-step loss: (model, augmented uint8 NCHW batch, targets, global step) -> loss
StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


class TrainError(ValueError):
    """Training could not start or resume; the message names the field or file."""


class CheckpointMismatch(TrainError):
    """The checkpoint on disk was written by a run with other settings or data."""


# TrainConfig fields that come from the model's spec (and the teacher's), never from a notebook's parameters
_SPEC_FIELDS = ("image_size", "mean", "std", "teacher_image_size", "teacher_mean", "teacher_std")


@dataclass
class TrainConfig:
    """Every knob of one training run; ``dataclasses.asdict`` of it goes into metrics.json."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    label_smoothing: float = 0.1
    imbalance: str = "weighted"
    augment: float = 0.5
    augment_policy: str = "randaugment"
    image_size: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patience: int | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5
    teacher_image_size: int | None = None
    teacher_mean: tuple[float, float, float] | None = None
    teacher_std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        _check_int("TrainConfig.epochs", self.epochs, minimum=1)
        _check_int("TrainConfig.batch_size", self.batch_size, minimum=1)
        _check_choice("TrainConfig.optimizer", self.optimizer, OPTIMIZERS)
        _check_real("TrainConfig.lr", self.lr, low=0.0, low_open=True)
        _check_real("TrainConfig.weight_decay", self.weight_decay, low=0.0)
        _check_choice("TrainConfig.schedule", self.schedule, SCHEDULES)
        _check_real("TrainConfig.label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        _check_choice("TrainConfig.imbalance", self.imbalance, IMBALANCE_MODES)
        _check_real("TrainConfig.augment", self.augment, low=0.0, high=1.0)
        _check_choice("TrainConfig.augment_policy", self.augment_policy, AUGMENT_POLICIES)
        _check_size("TrainConfig.image_size", self.image_size)
        self.mean = _check_triple("TrainConfig.mean", self.mean, positive=False)
        self.std = _check_triple("TrainConfig.std", self.std, positive=True)
        if self.patience is not None:
            _check_int("TrainConfig.patience", self.patience, minimum=1)
        _check_int("TrainConfig.seed", self.seed, minimum=0)
        if self.threads is not None:
            _check_int("TrainConfig.threads", self.threads, minimum=1)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda", "auto"):
            raise TrainError(f"TrainConfig.device must be 'cpu', 'cuda[:N]' or 'auto', got {self.device!r}")
        _check_real("TrainConfig.distill_temperature", self.distill_temperature, low=0.0, low_open=True)
        _check_real("TrainConfig.distill_alpha", self.distill_alpha, low=0.0, high=1.0)
        if self.teacher_image_size is not None:
            _check_size("TrainConfig.teacher_image_size", self.teacher_image_size)
        if self.teacher_mean is not None:
            self.teacher_mean = _check_triple("TrainConfig.teacher_mean", self.teacher_mean, positive=False)
        if self.teacher_std is not None:
            self.teacher_std = _check_triple("TrainConfig.teacher_std", self.teacher_std, positive=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_params(cls, spec: ModelSpec, params: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        """A notebook's training recipe for ``spec``'s model: the ``TrainConfig`` fields among the notebook's
        parameters (``params``; a ``patience`` of 0 means none), then ``overrides``."""
        fields = {f.name for f in dataclasses.fields(cls)} - set(_SPEC_FIELDS)
        knobs = {key: value for key, value in params.items() if key in fields}
        if knobs.get("patience") == 0:
            knobs["patience"] = None
        return cls.for_spec(spec, **{**knobs, **overrides})

    @classmethod
    def for_spec(cls, spec: ModelSpec, *, teacher: ModelSpec | None = None, **knobs: Any) -> TrainConfig:
        """Settings that feed ``spec``'s model at its own input size and normalisation (and a ``teacher``, for
        distillation, at its own), with the other fields from ``knobs``."""
        return cls(
            image_size=spec.image_size,
            mean=spec.mean,
            std=spec.std,
            teacher_image_size=teacher.image_size if teacher else None,
            teacher_mean=teacher.mean if teacher else None,
            teacher_std=teacher.std if teacher else None,
            **knobs,
        )


@dataclass
class TrainResult:
    """The trained model (best validation weights loaded) and what happened on the way."""

    model: nn.Module = field(repr=False)
    history: list[dict[str, float]]
    best_epoch: int
    best_val_f1: float
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    device: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, ready for metrics.json."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


def teacher_config(spec: ModelSpec, params: Mapping[str, Any]) -> TrainConfig:
    """Notebook 01's recipe for fine-tuning the pretrained EfficientNet-Lite0 teacher from the notebook's parameters
    (``teacher_epochs``, ``teacher_lr`` and the shared knobs; AdamW, cosine schedule, no early stopping)."""
    return TrainConfig.from_params(
        spec,
        params,
        epochs=params["teacher_epochs"],
        lr=params["teacher_lr"],
        optimizer="adamw",
        schedule="cosine",
        patience=None,
    )


def epochs_per_minute(history: list[dict[str, float]]) -> float:
    """Training speed from the per-epoch times in ``history`` (resumed epochs included), 0 when empty."""
    seconds = sum(h["epoch_seconds"] for h in history)
    return 60 * len(history) / seconds if seconds > 0 else 0.0


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    _check_int("seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preprocess(
    images: np.ndarray | torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 NHWC RGB -> float32 NCHW (channels-last strides) at ``image_size``, normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise TrainError(f"images must be uint8 of shape (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return _to_model_input(x.permute(0, 3, 1, 2), image_size, mean, std)


def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    image_size: int,
    *,
    batch_size: int = 64,
    normalization: Mapping[str, Sequence[float]] | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Logits (N, num_classes) float32 of a uint8 NHWC array, in eval mode, batch by batch."""
    _check_images("images", images)
    _check_int("batch_size", batch_size, minimum=1)
    mean, std = _normalization(normalization)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = preprocess(images[start : start + batch_size], image_size, mean, std)
                outputs.append(model(x.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs).numpy()


def evaluate(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    image_size: int,
    *,
    batch_size: int = 64,
    normalization: Mapping[str, Sequence[float]] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Macro-F1, accuracy, loss, per-class scores, confusion matrix and predictions."""
    _check_labels("labels", labels, len(images), len(class_names))
    logits = predict_logits(
        model, images, image_size, batch_size=batch_size, normalization=normalization, device=device
    )
    if logits.shape[1] != len(class_names):
        raise TrainError(f"model outputs {logits.shape[1]} classes but class_names has {len(class_names)}")
    return classification_metrics(logits, labels, class_names)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """``score.classification_scores`` of the logits' argmax, with the cross-entropy loss and the predictions."""
    predictions = logits.argmax(axis=1)
    labels = np.asarray(labels, dtype=np.int64)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    scores = classification_scores(labels, predictions, class_names)
    return {**scores, "loss": float(loss), "predictions": predictions.astype(int).tolist()}


def build_augmentation(strength: float, policy: str = "randaugment") -> v2.Transform | None:
    """Per-image uint8 CHW augmentation: flips, rotation up to 15 degrees and RandAugment
    (magnitude ``strength * 30`` of 31 bins) or TrivialAugmentWide (applied with probability
    ``strength``), all scaled by ``strength`` in [0, 1]; None at strength 0."""
    _check_real("augment", strength, low=0.0, high=1.0)
    _check_choice("augment_policy", policy, AUGMENT_POLICIES)
    if strength == 0:
        return None
    if policy == "randaugment":
        magnitude = round(strength * (RANDAUGMENT_BINS - 1))
        color: v2.Transform = v2.RandAugment(num_ops=2, magnitude=magnitude, num_magnitude_bins=RANDAUGMENT_BINS)
    else:
        color = v2.RandomApply([v2.TrivialAugmentWide()], p=strength)
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(MAX_ROTATION_DEGREES * strength),
            color,
        ]
    )


def train_model(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    *,
    checkpoint_path: Path | None = None,
    teacher: nn.Module | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    restart_other_runs: bool = False,
    step_loss: StepLoss | None = None,
) -> TrainResult:
    """Train ``model`` in place, keep the best validation macro-F1 weights, return the result.

    With ``checkpoint_path`` the full state is written atomically after every epoch and an
    existing checkpoint of the same run is resumed (bitwise identical to an uninterrupted run).
    With ``teacher`` the loss is ``alpha * T^2 * KL + (1 - alpha) * CE`` (knowledge distillation).
    ``on_epoch(epoch, history_row)`` is called after each epoch (and its checkpoint); whatever
    it raises (e.g. ``optuna.TrialPruned``) stops training and propagates to the caller.
    A checkpoint written by a run with other settings or data is an error, unless
    ``restart_other_runs`` (what a notebook rerun with new parameters wants): then training
    starts afresh and overwrites it.
    With ``step_loss`` each step's loss is ``step_loss(model, raw, targets, step)`` instead (``raw``: the augmented
    uint8 NCHW batch, ``step``: the global step, so a resumed run draws what an uninterrupted one does); its
    ``identity`` attribute, when present, is part of the checkpoint's run identity. It excludes ``teacher``.
    """
    if not isinstance(config, TrainConfig):
        raise TrainError(f"config must be a TrainConfig, got {type(config).__name__}")
    if step_loss is not None and teacher is not None:
        raise TrainError("step_loss and teacher exclude each other: the step loss does its own distillation")
    train_x, train_y = train
    val_x, val_y = val
    _check_images("train images", train_x)
    _check_images("val images", val_x)
    device = _resolve_device(config.device)
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(
            model,
            (train_x, train_y),
            (val_x, val_y),
            config,
            device,
            checkpoint_path=None if checkpoint_path is None else Path(checkpoint_path),
            teacher=teacher,
            progress=progress,
            on_epoch=on_epoch,
            restart_other_runs=restart_other_runs,
            step_loss=step_loss,
        )
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])


def _train(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    device: torch.device,
    *,
    checkpoint_path: Path | None,
    teacher: nn.Module | None,
    progress: bool,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    restart_other_runs: bool,
    step_loss: StepLoss | None = None,
) -> TrainResult:
    started = time.perf_counter()
    (train_x, train_y), (val_x, val_y) = train, val
    model.to(device).to(memory_format=torch.channels_last)  # ~1.8x faster convolutions on CPU
    num_classes = _output_classes(model, val_x[:1], config, device)
    _check_labels("train labels", train_y, len(train_x), num_classes)
    _check_labels("val labels", val_y, len(val_x), num_classes)
    train_labels = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    counts = torch.bincount(train_labels, minlength=num_classes).double()
    class_weights = None
    if config.imbalance == "weighted":
        inverse = len(train_labels) / (num_classes * counts.clamp(min=1))
        class_weights = torch.where(counts > 0, inverse, 0.0).float().to(device)
    steps_per_epoch = max(1, len(train_x) // config.batch_size)
    batch = min(config.batch_size, len(train_x))
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config, config.epochs * steps_per_epoch)
    augmentation = build_augmentation(config.augment, config.augment_policy)
    if teacher is not None:
        teacher.to(device).eval()
    teacher_size = config.teacher_image_size or config.image_size
    teacher_mean = config.teacher_mean or config.mean
    teacher_std = config.teacher_std or config.std

    run_identity = {
        "config": {key: value for key, value in dataclasses.asdict(config).items() if key not in RESUME_FREE_FIELDS},
        "data": _fingerprint(train_x, train_y, val_x, val_y),
        "distillation": teacher is not None,
        "initial_weights": weights_sha256(model),  # a retrained source or teacher must not resume stale
        "teacher_weights": None if teacher is None else weights_sha256(teacher),
        **({"step_loss": getattr(step_loss, "identity", "custom")} if step_loss is not None else {}),
    }
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    augment_gen = torch.Generator().manual_seed(config.seed + 1)
    state: dict[str, Any] = {
        "epoch": 0,
        "history": [],
        "best_f1": -1.0,
        "best_epoch": 0,
        "best_state": _copy_state(model),
        "bad_epochs": 0,
        "finished": False,
        "stopped_early": False,
    }
    resumed_from = 0
    try:
        if checkpoint_path is not None and checkpoint_path.exists():
            state = _restore(checkpoint_path, run_identity, (model, optimizer, scheduler), (shuffle_gen, augment_gen))
            resumed_from = state["epoch"]
        else:
            seed_everything(config.seed)
    except CheckpointMismatch as error:
        if not restart_other_runs:
            raise
        print(f"{error}: starting afresh")
        seed_everything(config.seed)

    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=state["epoch"] * steps_per_epoch,
        disable=not progress_bars.bars_enabled(progress),
        desc="train",
        unit="batch",
        mininterval=10.0,
    )
    last_f1 = f"{state['history'][-1]['val_macro_f1']:.3f}" if state["history"] else "-"
    try:
        while not state["finished"]:
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            order = _epoch_order(train_labels, counts, config.imbalance, shuffle_gen)
            model.train()
            total_loss = 0.0
            for step in range(steps_per_epoch):
                index = order[step * batch : (step + 1) * batch].numpy()
                raw = torch.from_numpy(train_x[index]).permute(0, 3, 1, 2)
                raw = _augment(raw, augmentation, augment_gen)
                targets = train_labels[index].to(device)
                if step_loss is not None:
                    loss = step_loss(model, raw, targets, state["epoch"] * steps_per_epoch + step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total_loss += loss.item()
                    bar.update(1)
                    continue
                logits = model(_to_model_input(raw, config.image_size, config.mean, config.std).to(device))
                loss = F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=config.label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(
                            _to_model_input(raw, teacher_size, teacher_mean, teacher_std).to(device)
                        )
                    loss = distillation_loss(
                        logits,
                        teacher_logits,
                        loss,
                        temperature=config.distill_temperature,
                        alpha=config.distill_alpha,
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / (step + 1):.3f}", val_f1=last_f1)
            val_logits = predict_logits(
                model,
                val_x,
                config.image_size,
                batch_size=config.batch_size,
                normalization={"mean": config.mean, "std": config.std},
                device=str(device),
            )
            val_metrics = classification_metrics(val_logits, val_y, [str(i) for i in range(num_classes)])
            state["epoch"] += 1
            state["history"].append(
                {
                    "epoch": state["epoch"],
                    "train_loss": total_loss / steps_per_epoch,
                    "val_loss": val_metrics["loss"],
                    "val_macro_f1": val_metrics["macro_f1"],
                    "val_accuracy": val_metrics["accuracy"],
                    "lr": lr,
                    "epoch_seconds": time.perf_counter() - epoch_start,
                }
            )
            if val_metrics["macro_f1"] > state["best_f1"]:
                state.update(
                    best_f1=val_metrics["macro_f1"],
                    best_epoch=state["epoch"],
                    best_state=_copy_state(model),
                    bad_epochs=0,
                )
            else:
                state["bad_epochs"] += 1
            state["stopped_early"] = config.patience is not None and state["bad_epochs"] >= config.patience
            state["finished"] = state["stopped_early"] or state["epoch"] >= config.epochs
            last_f1 = f"{val_metrics['macro_f1']:.3f}"
            bar.set_postfix(loss=f"{state['history'][-1]['train_loss']:.3f}", val_f1=last_f1)
            if checkpoint_path is not None:
                _write_checkpoint(
                    checkpoint_path,
                    _snapshot(state, run_identity, (model, optimizer, scheduler), (shuffle_gen, augment_gen)),
                )
            progress_bars.step("epoch", state["epoch"], config.epochs, f"val macro-F1 {last_f1}")
            if on_epoch is not None:
                on_epoch(state["epoch"], dict(state["history"][-1]))
    finally:
        bar.close()
    model.load_state_dict(state["best_state"])
    model.to("cpu").to(memory_format=torch.contiguous_format)  # evaluation and timing run on the CPU, the robot's
    if teacher is not None:
        teacher.to("cpu")
    model.eval()
    return TrainResult(
        model=model,
        history=state["history"],
        best_epoch=state["best_epoch"],
        best_val_f1=state["best_f1"],
        epochs_run=state["epoch"],
        stopped_early=state["stopped_early"],
        resumed_from_epoch=resumed_from,
        device=str(device),
        seconds=time.perf_counter() - started,
    )


def _to_model_input(x: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = x.float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t).contiguous(memory_format=torch.channels_last)


def _augment(raw: torch.Tensor, augmentation: v2.Transform | None, generator: torch.Generator) -> torch.Tensor:
    """Augment each uint8 CHW image; the randomness comes from ``generator`` only."""
    if augmentation is None:
        return raw
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return torch.stack([augmentation(image) for image in raw])


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, *, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton distillation: ``alpha`` * KL(teacher || student) at ``temperature`` (scaled by its square) plus
    (1 - ``alpha``) * ``hard_loss``; the teacher's logits are used as given (detach them first when it trains)."""
    if teacher.shape != student.shape:
        raise TrainError(f"teacher outputs shape {tuple(teacher.shape)} but the student {tuple(student.shape)}")
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    return alpha * soft + (1.0 - alpha) * hard_loss


def _epoch_order(
    labels: torch.Tensor, counts: torch.Tensor, imbalance: str, generator: torch.Generator
) -> torch.Tensor:
    if imbalance == "sampler":
        weights = (1.0 / counts.clamp(min=1))[labels]
        return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return torch.randperm(len(labels), generator=generator)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)

    def cosine(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def _copy_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """A CPU copy of the state dict that keeps the per-module version metadata."""
    state = model.state_dict()
    copy: OrderedDict[str, torch.Tensor] = OrderedDict(
        (key, value.detach().to("cpu", copy=True)) for key, value in state.items()
    )
    copy._metadata = getattr(state, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    return copy


def _rng_state(shuffle_gen: torch.Generator, augment_gen: torch.Generator) -> dict[str, Any]:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np.asarray(np_keys).astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": random.getstate(),
        "shuffle": shuffle_gen.get_state(),
        "augment": augment_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], shuffle_gen: torch.Generator, augment_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    random.setstate(state["python"])
    shuffle_gen.set_state(state["shuffle"])
    augment_gen.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_Trainable = tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


def _snapshot(
    state: dict[str, Any],
    run_identity: dict[str, Any],
    trainable: _Trainable,
    generators: tuple[torch.Generator, torch.Generator],
) -> dict[str, Any]:
    model, optimizer, scheduler = trainable
    shuffle_gen, augment_gen = generators
    return {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "run": run_identity,
        "state": state,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(shuffle_gen, augment_gen),
    }


def _write_checkpoint(path: Path, snapshot: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(snapshot, path)


def _restore(
    path: Path,
    run_identity: dict[str, Any],
    trainable: _Trainable,
    generators: tuple[torch.Generator, torch.Generator],
) -> dict[str, Any]:
    model, optimizer, scheduler = trainable
    shuffle_gen, augment_gen = generators
    try:
        snapshot = safe_torch_load(path)
    except ModelError as error:
        raise TrainError(f"cannot resume from checkpoint: {error}") from error
    if not isinstance(snapshot, dict) or snapshot.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a trashlib training checkpoint; delete it or pick another path")
    stored = snapshot["run"]
    if stored != run_identity:
        changed = sorted(
            key
            for key in set(stored["config"]) | set(run_identity["config"])
            if stored["config"].get(key) != run_identity["config"].get(key)
        )
        if stored["data"] != run_identity["data"]:
            changed.append("data")
        if stored["distillation"] != run_identity["distillation"]:
            changed.append("teacher")
        if stored.get("step_loss") != run_identity.get("step_loss"):
            changed.append("step loss")
        for key, what in (("initial_weights", "initial weights"), ("teacher_weights", "teacher weights")):
            if stored.get(key) != run_identity[key] and (key == "initial_weights" or "teacher" not in changed):
                changed.append(what)
        raise CheckpointMismatch(f"{path} belongs to a different run (differs in {changed}); delete it to start afresh")
    try:
        model.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(snapshot["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise TrainError(f"{path} does not fit this model: {first_line}") from error
    scheduler.load_state_dict(snapshot["scheduler"])
    _set_rng_state(snapshot["rng"], shuffle_gen, augment_gen)
    return snapshot["state"]


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(str((contiguous.dtype.str, contiguous.shape)).encode())
        digest.update(contiguous.data)
    return digest.hexdigest()


def _output_classes(model: nn.Module, sample: np.ndarray, config: TrainConfig, device: torch.device) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = preprocess(sample, config.image_size, config.mean, config.std).to(device)
            logits = model(x)
    finally:
        model.train(was_training)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise TrainError(f"model must output (N, num_classes >= 2) logits, got {tuple(logits.shape)}")
    return int(logits.shape[1])


def _resolve_device(requested: str) -> torch.device:
    if requested == "auto":  # CUDA when present, else CPU, silently
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(
            f"TrainConfig.device={requested!r} but CUDA is not available; using CPU", RuntimeWarning, stacklevel=3
        )
        return torch.device("cpu")
    return torch.device(requested)


def _normalization(normalization: Mapping[str, Sequence[float]] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if normalization is None:
        return IMAGENET_MEAN, IMAGENET_STD
    if not isinstance(normalization, dict) or set(normalization) != {"mean", "std"}:
        raise TrainError(f"normalization must be a dict with keys 'mean' and 'std', got {normalization!r}")
    return (
        _check_triple("normalization mean", normalization["mean"], positive=False),
        _check_triple("normalization std", normalization["std"], positive=True),
    )


def _check_images(name: str, images: Any) -> None:
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
        or images.shape[1] != images.shape[2]
    ):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise TrainError(f"{name} must be a uint8 numpy array (N, S, S, 3), got {dtype} {shape}")
    if len(images) == 0:
        raise TrainError(f"{name} is empty")


def _check_labels(name: str, labels: Any, n: int, num_classes: int) -> None:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise TrainError(f"{name} must be {n} integers, got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise TrainError(f"{name} must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TrainError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lower = "-inf" if low is None else low
        upper = "inf" if high is None else high
        interval = (
            f"{'(' if low_open or low is None else '['}{lower}, {upper}{')' if high_open or high is None else ']'}"
        )
        raise TrainError(f"{name} must be a number in {interval}, got {value!r}")


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise TrainError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_size(name: str, value: Any) -> None:
    try:
        check_image_size(value)
    except ModelError as error:
        raise TrainError(f"{name}: {error}") from error


def _check_triple(name: str, value: Any, positive: bool) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in triple):
        need = "three positive numbers" if positive else "three numbers"
        raise TrainError(f"{name} must be {need} (one per RGB channel), got {value!r}")
    return triple[0], triple[1], triple[2]
