"""Architecture search: MnasNet's factorized space, measured-latency objectives, Optuna storage and workers.

Space. ``SearchSpace`` holds the choices. The network is a stem, one block per stage of
MnasNet-A1 (fixed base width and stride: 16/1, 24/2, 40/2, 80/2, 112/1, 160/2, 320/1) and a
1280-channel head; every block independently picks its operation (MBConv 1/3/6, plain conv,
depthwise-separable conv), kernel (3/5), squeeze-and-excitation, number of layers and a width
multiplier. Globally: input size, width multiplier, lr, weight decay and augmentation strength.
``sample_arch`` draws an ``ArchConfig`` (Optuna parameters ``image_size``, ``width_mult``,
``b1_op`` ... ``b7_width``, ``lr``, ``weight_decay``, ``augment``); ``ArchConfig.to_dict()`` is a
plain dict that ``models.build_model("searched", ..., arch=...)`` rebuilds and that
``save_arch``/``load_arch`` keep as JSON (and YAML) under a name.

Objectives (``SearchSettings.mode``). Every trial trains with ``train.train_model`` and times
batch-1 latency with ``bench.latency_for_model`` at its own input size.
``"multi"``: maximize val macro-F1 and minimize latency (ms); the Pareto front is
``study.best_trials``. ``"reward"``: maximize MnasNet's ``F1 * (latency / target_ms) ** w``
(w = -0.07); the reward after each epoch goes to ``trial.report`` and a MedianPruner stops poor
trials early. The sampler is multivariate TPE with constant liar (safe for parallel workers).

Storage. A file path gives ``JournalStorage(JournalFileBackend(path))``: no server, default
``RUN_DIR/search/journal.log`` (``journal_path``). A URL (``postgresql://...``,
``sqlite:///...``) gives ``RDBStorage`` with heartbeats; an unreachable database is a
``TuneError`` within the connect timeout. A study keeps its settings (space, mode, budget) in
the user attr ``"trashlib.tune"``: it resumes where it stopped when opened with the same
settings, refuses other settings (``TuneError``, the study untouched), and workers read them
from it, so every worker searches the same space.

Stale trials. Each trial records its worker (host, pid, process start). On every start, trials
still RUNNING whose worker process on this host is gone are marked FAIL; on a database the
heartbeat also fails trials of workers on any host that stopped beating for the grace period.

Workers. Create the study once, then start workers anywhere that reaches the storage::

    python -m trashlib tune-create --storage URL --study NAME [--mode multi|reward]
        [--epochs E] [--target-ms T] [--space space.yaml] ...
    python -m trashlib tune-worker --storage URL --study NAME --data-dir RUN_DIR/data
        --n-trials N [--max-trials TOTAL]

``--max-trials`` caps the finished (complete or pruned) trials over all workers with
``optuna.study.MaxTrialsCallback``: a worker starts no trial once the cap is reached, but trials
already in flight on other workers still finish, so a study ends with between TOTAL and
TOTAL + workers - 1 finished trials.

Picking. ``pareto_trials`` is the front of the completed trials in (val macro-F1 up, latency
down), in either mode (``trial_objectives`` reads a reward trial's F1 and latency from its
``"result"`` attr). ``pick_trial`` takes the front trial with the lowest competition-style score
``0.5 * latency / latency_ref + sigmoid(20 * (f1_ref - f1))`` (``pick_score``) against the
baseline, or the best-F1 trial when there is none (``pick_reference``).
``param_importances`` gives fANOVA importances per objective; ``settings_study_name`` names a
study after its settings, so a notebook rerun with another space or mode opens a new study.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import optuna
import sqlalchemy
import yaml
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from trashlib import progress
from trashlib.bench import count_macs, count_params, latency_for_model, torch_threads
from trashlib.data import PreparedData
from trashlib.files import atomic_write_json, atomic_write_text, read_json
from trashlib.models import (
    SEARCH_OPS,
    SEARCHED,
    ModelError,
    ModelSpec,
    build_model,
    check_arch,
    check_image_size,
)
from trashlib.quantize import LATENCY_RUNTIMES, calibration_batches, deployed, time_deployed
from trashlib.train import TrainConfig, TrainError, seed_everything, train_model

MODES: tuple[str, ...] = ("multi", "reward")
SETTINGS_ATTR = "trashlib.tune"
SETTINGS_VERSION = 1
# MnasNet-A1's seven stages after the stem: (base output channels, stride of the first layer).
MNASNET_STAGES: tuple[tuple[int, int], ...] = (
    (16, 1),
    (24, 2),
    (40, 2),
    (80, 2),
    (112, 1),
    (160, 2),
    (320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
DROPOUT = 0.2
CHANNEL_DIVISOR = 8
REWARD_W = -0.07
FINISHED: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ATTR = "worker"
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
CONNECT_TIMEOUT_S = 5
_TIMEOUT_ARG = {"postgresql": "connect_timeout", "mysql": "connect_timeout"}
_log = logging.getLogger(__name__)


class TuneError(ValueError):
    """A search that cannot start: bad space or settings, unreachable storage, a clashing study."""


# --------------------------------------------------------------------------- space


@dataclass(frozen=True)
class SearchSpace:
    """The choices of the factorized hierarchical space; lists are categorical, min/max are ranges.

    ``stages`` gives each block's [base channels, stride]; lr and weight decay are log-uniform,
    augmentation strength uniform.
    """

    stages: list[list[int]] = field(default_factory=lambda: [list(s) for s in MNASNET_STAGES])
    ops: list[str] = field(default_factory=lambda: list(SEARCH_OPS))
    kernels: list[int] = field(default_factory=lambda: [3, 5])
    se: list[bool] = field(default_factory=lambda: [False, True])
    layers_min: int = 1
    layers_max: int = 4
    block_width_mults: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25])
    image_sizes: list[int] = field(default_factory=lambda: [64, 96, 128])
    width_mults: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])
    lr_min: float = 5e-4
    lr_max: float = 5e-3
    weight_decay_min: float = 1e-5
    weight_decay_max: float = 5e-2
    augment_min: float = 0.0
    augment_max: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, f.name, [list(v) if isinstance(v, (list, tuple)) else v for v in value])
                if f.name != "stages":  # two stages may well be alike
                    _check_choices(f.name, getattr(self, f.name))
        if not self.stages:
            raise TuneError("SearchSpace.stages is empty: give at least one [channels, stride]")
        for index, stage in enumerate(self.stages):
            if (
                not isinstance(stage, list)
                or len(stage) != 2
                or not _is_int(stage[0], 1)
                or stage[1] not in (1, 2)
                or isinstance(stage[1], bool)
            ):
                raise TuneError(
                    f"SearchSpace.stages[{index}] must be [base channels >= 1, stride 1 or 2], got {stage!r}"
                )
        _check_members("ops", self.ops, lambda op: op in SEARCH_OPS, f"one of {list(SEARCH_OPS)}")
        _check_members("kernels", self.kernels, lambda k: _is_int(k, 1) and k % 2 == 1, "an odd int")
        _check_members("se", self.se, lambda v: isinstance(v, bool), "true or false")
        for name in ("block_width_mults", "width_mults"):
            _check_members(name, getattr(self, name), lambda v: _is_real(v) and v > 0, "a positive number")
        for size in self.image_sizes:
            try:
                check_image_size(size)
            except ModelError as error:
                raise TuneError(f"SearchSpace.image_sizes: {error}") from error
        if not _is_int(self.layers_min, 1) or not _is_int(self.layers_max, 1):
            raise TuneError(
                f"SearchSpace.layers_min and layers_max must be ints >= 1, got "
                f"{self.layers_min!r} and {self.layers_max!r}"
            )
        _check_range("layers", self.layers_min, self.layers_max)
        for name, low in (("lr", 0.0), ("weight_decay", 0.0), ("augment", None)):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if not _is_real(lo) or not _is_real(hi) or (low is not None and lo <= low):
                raise TuneError(
                    f"SearchSpace.{name}_min and {name}_max must be numbers"
                    f"{' > 0 (log scale)' if low is not None else ''}, "
                    f"got {lo!r} and {hi!r}"
                )
            _check_range(name, lo, hi)
        if self.augment_min < 0 or self.augment_max > 1:
            raise TuneError(
                f"SearchSpace.augment_min/augment_max must lie in [0, 1], got {self.augment_min} and {self.augment_max}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SearchSpace:
        known = {f.name for f in fields(cls)}
        if not isinstance(doc, Mapping) or set(doc) - known:
            unknown = sorted(set(doc) - known) if isinstance(doc, Mapping) else doc
            raise TuneError(f"SearchSpace: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**doc)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """A space from a YAML or JSON file of ``SearchSpace`` fields (missing ones default)."""
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise TuneError(f"search space file {path}: {_first_line(error)}") from error
        return cls.from_dict(doc)


@dataclass(frozen=True)
class BlockConfig:
    """One searched block: ``layers`` layers of ``op``; the first takes ``stride``."""

    op: str
    kernel: int
    se: bool
    layers: int
    stride: int
    channels: int


@dataclass(frozen=True)
class ArchConfig:
    """A sampled architecture with its training knobs; ``to_dict`` is plain JSON."""

    image_size: int
    stem_channels: int
    blocks: tuple[BlockConfig, ...]
    head_channels: int
    dropout: float
    lr: float
    weight_decay: float
    augment: float

    def to_dict(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["blocks"] = [asdict(block) for block in self.blocks]
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ArchConfig:
        names = [f.name for f in fields(cls)]
        if not isinstance(doc, Mapping) or set(doc) != set(names):
            keys = sorted(doc) if isinstance(doc, Mapping) else type(doc).__name__
            raise TuneError(f"an arch dict needs exactly the keys {names}, got {keys}")
        try:
            check_arch(doc)
            TrainConfig(
                image_size=doc["image_size"], lr=doc["lr"], weight_decay=doc["weight_decay"], augment=doc["augment"]
            )
        except (ModelError, TrainError) as error:
            raise TuneError(f"bad arch dict: {error}") from error
        return cls(**{**doc, "blocks": tuple(BlockConfig(**block) for block in doc["blocks"])})


def sample_arch(trial: optuna.Trial, space: SearchSpace) -> ArchConfig:
    """Draw one architecture and its training knobs from ``space`` with ``trial.suggest_*``."""
    image_size = trial.suggest_categorical("image_size", space.image_sizes)
    width = trial.suggest_categorical("width_mult", space.width_mults)
    blocks = tuple(
        _sample_block(trial, space, index, base * width, stride)
        for index, (base, stride) in enumerate(space.stages, start=1)
    )
    return ArchConfig(
        image_size=image_size,
        stem_channels=round_channels(STEM_CHANNELS * width),
        blocks=blocks,
        head_channels=HEAD_CHANNELS,
        dropout=DROPOUT,
        lr=trial.suggest_float("lr", space.lr_min, space.lr_max, log=True),
        weight_decay=trial.suggest_float("weight_decay", space.weight_decay_min, space.weight_decay_max, log=True),
        augment=trial.suggest_float("augment", space.augment_min, space.augment_max),
    )


def _sample_block(trial: optuna.Trial, space: SearchSpace, index: int, base: float, stride: int) -> BlockConfig:
    prefix = f"b{index}_"
    op = trial.suggest_categorical(prefix + "op", space.ops)
    kernel = trial.suggest_categorical(prefix + "kernel", space.kernels)
    se = trial.suggest_categorical(prefix + "se", space.se)
    layers = trial.suggest_int(prefix + "layers", space.layers_min, space.layers_max)
    width = trial.suggest_categorical(prefix + "width", space.block_width_mults)
    return BlockConfig(op, kernel, se, layers, stride, round_channels(base * width))


def round_channels(channels: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def trial_arch(trial: FrozenTrial) -> ArchConfig:
    """The architecture a finished trial trained (its ``"arch"`` user attr)."""
    if "arch" not in trial.user_attrs:
        raise TuneError(f"trial {trial.number} has no 'arch' user attr (it failed before sampling)")
    return ArchConfig.from_dict(trial.user_attrs["arch"])


def save_arch(arch: ArchConfig, directory: str | Path, name: str) -> Path:
    """Write ``directory/NAME.json`` (read back by ``load_arch``) and ``NAME.yaml``; return the
    JSON path."""
    _check_arch_name(name)
    doc = arch.to_dict()
    atomic_write_text(Path(directory) / f"{name}.yaml", yaml.safe_dump(doc, sort_keys=False))
    return atomic_write_json(Path(directory) / f"{name}.json", doc)


def load_arch(directory: str | Path, name: str) -> ArchConfig:
    """The architecture saved under ``name`` by ``save_arch``."""
    _check_arch_name(name)
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        saved = sorted(p.stem for p in Path(directory).glob("*.json"))
        raise TuneError(f"no saved architecture {name!r} in {directory} (saved: {saved})")
    return ArchConfig.from_dict(read_json(path))


def arch_train_config(
    arch: ArchConfig, epochs: int, *, batch_size: int = 32, seed: int = 0, threads: int | None = 1, device: str = "cpu"
) -> TrainConfig:
    """The ``TrainConfig`` that trains ``arch`` with its own input size and training knobs."""
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=arch.lr,
        weight_decay=arch.weight_decay,
        augment=arch.augment,
        image_size=arch.image_size,
        seed=seed,
        threads=threads,
        device=device,
    )


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class SearchSettings:
    """What every trial of a study shares; stored in the study so all workers search alike."""

    space: SearchSpace = field(default_factory=SearchSpace)
    mode: str = "multi"
    epochs: int = 3
    batch_size: int = 32
    threads: int = 1
    target_ms: float = 5.0
    reward_w: float = REWARD_W
    latency_warmup: int = 5
    latency_runs: int = 30
    train_seed: int = 0
    runtime: str = "torch-eager"

    def __post_init__(self) -> None:
        if self.runtime not in LATENCY_RUNTIMES:
            raise TuneError(f"SearchSettings.runtime must be one of {list(LATENCY_RUNTIMES)}, got {self.runtime!r}")
        if not isinstance(self.space, SearchSpace):
            raise TuneError(f"SearchSettings.space must be a SearchSpace, got {type(self.space).__name__}")
        if self.mode not in MODES:
            raise TuneError(f"SearchSettings.mode must be one of {list(MODES)}, got {self.mode!r}")
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("threads", 1),
            ("latency_warmup", 0),
            ("latency_runs", 1),
            ("train_seed", 0),
        ):
            if not _is_int(getattr(self, name), minimum):
                raise TuneError(f"SearchSettings.{name} must be an int >= {minimum}, got {getattr(self, name)!r}")
        if not _is_real(self.target_ms) or self.target_ms <= 0:
            raise TuneError(f"SearchSettings.target_ms must be a number > 0, got {self.target_ms!r}")
        if not _is_real(self.reward_w) or self.reward_w > 0:
            raise TuneError(f"SearchSettings.reward_w must be a number <= 0, got {self.reward_w!r}")

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        return ["maximize", "minimize"] if self.mode == "multi" else ["maximize"]

    def to_dict(self) -> dict[str, Any]:
        return {"version": SETTINGS_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SearchSettings:
        if not isinstance(doc, Mapping) or doc.get("version") != SETTINGS_VERSION:
            version = doc.get("version") if isinstance(doc, Mapping) else None
            raise TuneError(
                f"stored search settings have version {version!r}; this trashlib reads version {SETTINGS_VERSION}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known - {"version"})
        if unknown:
            raise TuneError(f"stored search settings have unknown fields {unknown}")
        values = {key: value for key, value in doc.items() if key in known}
        if "space" in values:
            values["space"] = SearchSpace.from_dict(values["space"])
        return cls(**values)


@dataclass(frozen=True)
class SearchData:
    """Train and validation arrays (uint8 NHWC, int labels) and the class names."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise TuneError(f"SearchData.class_names needs at least 2 classes, got {self.class_names}")
        for name in ("train", "val"):
            images, labels = getattr(self, name)
            if len(images) == 0 or len(images) != len(labels):
                raise TuneError(
                    f"SearchData.{name} must hold images and as many labels, got "
                    f"{len(images)} images and {len(labels)} labels"
                )

    @classmethod
    def from_prepared(cls, prepared: PreparedData) -> SearchData:
        return cls(prepared.split("train"), prepared.split("val"), list(prepared.classes))


@dataclass(frozen=True)
class TrialResult:
    """What one trained candidate scored."""

    val_f1: float
    latency_ms: float
    epochs_run: int
    n_params: int
    macs: int
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mnasnet_reward(f1: float, latency_ms: float, target_ms: float, w: float = REWARD_W) -> float:
    """MnasNet's soft-constrained reward ``f1 * (latency_ms / target_ms) ** w``."""
    if not _is_real(f1) or f1 < 0:
        raise TuneError(f"f1 must be a number >= 0, got {f1!r}")
    if not _is_real(latency_ms) or latency_ms <= 0 or not _is_real(target_ms) or target_ms <= 0:
        raise TuneError(f"latency_ms and target_ms must be > 0, got {latency_ms!r} and {target_ms!r}")
    return float(f1 * (latency_ms / target_ms) ** w)


def evaluate_trial(
    arch: ArchConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    epochs: int,
    *,
    threads: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    latency_warmup: int = 5,
    latency_runs: int = 30,
    on_epoch: Callable[[int, float, float], None] | None = None,
    runtime: str = "torch-eager",
) -> TrialResult:
    """Build ``arch``, time its batch-1 latency at its own input size with ``threads`` threads in ``runtime``
    (eager torch, or exported to ONNX in onnxruntime, int8 calibrated on 32 training crops), then train it;
    ``on_epoch(epoch, val_f1, latency_ms)`` runs after every epoch and may raise (``optuna.TrialPruned``) to stop.
    Returns the best validation macro-F1 and the latency."""
    seed_everything(seed)
    model = build_model(SEARCHED, num_classes, arch.image_size, arch=arch.to_dict())
    if runtime == "torch-eager":
        latency_ms = float(
            latency_for_model(
                model, arch.image_size, batch_size=1, threads=threads, warmup=latency_warmup, runs=latency_runs
            )["median_ms"]
        )
    else:
        spec = ModelSpec.create(
            SEARCHED, [f"class{i}" for i in range(num_classes)], arch.image_size, arch=arch.to_dict()
        )
        calibration = calibration_batches(train[0], spec, batch_size=32, max_images=32)
        with torch_threads(threads):
            fn = deployed(model, spec, runtime, calibration=calibration, threads=threads)
        latency_ms = time_deployed(fn, arch.image_size, runs=latency_runs, warmup=latency_warmup, threads=threads)
    macs = count_macs(model, arch.image_size)
    config = arch_train_config(arch, epochs, batch_size=batch_size, seed=seed, threads=threads)
    result = train_model(
        model,
        train,
        val,
        config,
        progress=False,
        on_epoch=None if on_epoch is None else _with_latency(on_epoch, latency_ms),
    )
    return TrialResult(
        val_f1=result.best_val_f1,
        latency_ms=latency_ms,
        epochs_run=result.epochs_run,
        n_params=count_params(model),
        macs=macs,
        train_seconds=result.seconds,
    )


def _with_latency(
    on_epoch: Callable[[int, float, float], None], latency_ms: float
) -> Callable[[int, dict[str, float]], None]:
    def hook(epoch: int, row: dict[str, float]) -> None:
        on_epoch(epoch, row["val_macro_f1"], latency_ms)

    return hook


def reward_reporter(trial: optuna.Trial, target_ms: float, w: float = REWARD_W) -> Callable[[int, float, float], None]:
    """An ``on_epoch`` for ``evaluate_trial``: report the reward so far, raise ``TrialPruned``
    when the study's pruner says so."""

    def report(epoch: int, val_f1: float, latency_ms: float) -> None:
        reward = mnasnet_reward(val_f1, latency_ms, target_ms, w)
        trial.report(reward, epoch)
        if trial.should_prune():
            trial.set_user_attr("latency_ms", latency_ms)
            raise optuna.TrialPruned(f"epoch {epoch}: reward {reward:.4f} (val F1 {val_f1:.3f}, {latency_ms:.2f} ms)")

    return report


def _objective(trial: optuna.Trial, data: SearchData, settings: SearchSettings) -> float | tuple[float, float]:
    trial.set_user_attr(WORKER_ATTR, _worker_identity())
    arch = sample_arch(trial, settings.space)
    trial.set_user_attr("arch", arch.to_dict())
    reporter = reward_reporter(trial, settings.target_ms, settings.reward_w) if settings.mode == "reward" else None
    result = evaluate_trial(
        arch,
        data.train,
        data.val,
        len(data.class_names),
        settings.epochs,
        threads=settings.threads,
        batch_size=settings.batch_size,
        seed=settings.train_seed,
        latency_warmup=settings.latency_warmup,
        latency_runs=settings.latency_runs,
        on_epoch=reporter,
        runtime=settings.runtime,
    )
    reward = mnasnet_reward(result.val_f1, result.latency_ms, settings.target_ms, settings.reward_w)
    trial.set_user_attr("result", {**result.to_dict(), "reward": reward})
    if settings.mode == "reward":
        return reward
    return result.val_f1, result.latency_ms


# --------------------------------------------------------------------------- storage and studies


def journal_path(run_dir: str | Path) -> Path:
    """The default, server-free storage of a run: ``RUN_DIR/search/journal.log``."""
    return Path(run_dir) / "search" / "journal.log"


def open_storage(
    storage: str | Path,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    connect_timeout: int = CONNECT_TIMEOUT_S,
) -> BaseStorage:
    """A database URL -> ``RDBStorage`` with heartbeats (a ``TuneError`` naming the URL, password
    hidden, when it cannot be reached within ``connect_timeout`` s); a path -> journal file."""
    if isinstance(storage, str) and "://" in storage:
        return _rdb_storage(storage, heartbeat_interval, grace_period, connect_timeout)
    path = Path(storage)
    if path.is_dir():
        raise TuneError(f"journal storage {path} is a folder; give a file such as {journal_path(path)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _rdb_storage(url: str, heartbeat_interval: int, grace_period: int, connect_timeout: int) -> RDBStorage:
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as error:
        raise TuneError(f"storage {url.rsplit('@', maxsplit=1)[-1]!r} is not a database URL: {error}") from error
    shown = parsed.render_as_string(hide_password=True)
    if (
        parsed.drivername == "postgresql"
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; use the installed psycopg2.
        url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    timeout_arg = _TIMEOUT_ARG.get(parsed.get_backend_name())
    engine_kwargs = {"connect_args": {timeout_arg: connect_timeout}} if timeout_arg else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
            )
    except ImportError as error:
        raise TuneError(
            f"storage {shown}: no database driver ({_first_line(error)}); for "
            f"PostgreSQL install psycopg2-binary or psycopg"
        ) from error
    except sqlalchemy.exc.SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        raise TuneError(f"cannot reach storage {shown}: {_first_line(cause)}") from error


def open_search(
    storage: str | Path,
    study_name: str,
    settings: SearchSettings | None = None,
    seed: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, SearchSettings]:
    """Create the study with ``settings`` or load it; with ``settings=None`` (a worker) the
    study must exist and its stored settings are used. A study stored with other settings or
    directions, or not made here, is a ``TuneError`` and is left untouched."""
    backend = open_storage(storage)
    shown = _storage_name(storage)
    stored = _stored_settings(backend, study_name, shown)
    if stored is None:
        if settings is None:
            raise TuneError(
                f"no study {study_name!r} in {shown}: create it with "
                f"`python -m trashlib tune-create` or run_search(settings=...)"
            )
        stored = _create_study(backend, study_name, shown, settings)
    settings = settings if settings is not None else stored[1]
    _check_same_settings(study_name, shown, stored, settings)
    study = optuna.load_study(
        study_name=study_name, storage=backend, sampler=_sampler(seed), pruner=pruner or _default_pruner(settings)
    )
    return study, settings


def run_search(
    storage: str | Path,
    study_name: str,
    data: SearchData,
    settings: SearchSettings | None = None,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    max_trials: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Run up to ``n_trials`` more trials (or until ``timeout`` s; with neither, until the cap or
    an interrupt) on the study and return it.

    Opens the study like ``open_search`` (``settings=None`` reads the stored ones), first fails
    trials left RUNNING by dead workers, and with ``max_trials`` stops once that many trials
    have finished (complete or pruned) over all workers.
    """
    for name, value in (("n_trials", n_trials), ("max_trials", max_trials)):
        if value is not None and not _is_int(value, 0):
            raise TuneError(f"{name} must be an int >= 0 or None, got {value!r}")
    study, settings = open_search(storage, study_name, settings, seed, pruner)
    stale = fail_stale_trials(study)
    if stale:
        _log.warning("study %r: marked trials %s FAIL, their workers are gone", study_name, stale)
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = []
    if max_trials is not None:
        if len(study.get_trials(deepcopy=False, states=FINISHED)) >= max_trials:
            return study
        callbacks.append(optuna.study.MaxTrialsCallback(max_trials, states=FINISHED))
    goal = max_trials or n_trials
    if goal:
        callbacks.append(_ProgressCallback(goal))
    study.optimize(
        lambda trial: _objective(trial, data, settings), n_trials=n_trials, timeout=timeout, callbacks=callbacks
    )
    return study


class _ProgressCallback:
    """Say "trial k/n" (finished trials of the study out of the goal) to the workbook runner's progress file."""

    def __init__(self, goal: int) -> None:
        self.goal = goal

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        progress.step("trial", done, self.goal, f"#{trial.number} {trial.state.name.lower()}")


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker died; return the numbers of the trials that
    were running and have failed since.

    A trial is stale when its recorded worker ran on this host and that process is gone (or
    its pid now belongs to another process), or, on a database with heartbeats, when its
    heartbeat is older than the grace period.
    """
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if (
            not isinstance(worker, dict)
            or worker.get("host") != host
            or _process_token(worker["pid"]) == worker["started"]
        ):
            continue
        try:
            study._storage.set_trial_user_attr(
                trial._trial_id, "failed_reason", f"worker {host}:{worker['pid']} died while the trial was running"
            )
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # its worker (or another cleaner) finished it meanwhile
    still_running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted((running - still_running) & failed)


def _create_study(
    backend: BaseStorage, study_name: str, shown: str, settings: SearchSettings
) -> tuple[Sequence[str], SearchSettings]:
    try:
        study = optuna.create_study(storage=backend, study_name=study_name, directions=settings.directions)
    except DuplicatedStudyError:  # another process created it meanwhile: use and check that one
        stored = _stored_settings(backend, study_name, shown)
        assert stored is not None
        return stored
    study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    return settings.directions, settings


def _stored_settings(backend: BaseStorage, study_name: str, shown: str) -> tuple[Sequence[str], SearchSettings] | None:
    try:
        study = optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        return None
    directions = [d.name.lower() for d in study.directions]
    doc = study.user_attrs.get(SETTINGS_ATTR)
    if doc is None:
        raise TuneError(
            f"study {study_name!r} in {shown} was not made by trashlib.tune (no "
            f"{SETTINGS_ATTR!r} user attr); choose another study name"
        )
    return directions, SearchSettings.from_dict(doc)


def _check_same_settings(
    study_name: str, shown: str, stored: tuple[Sequence[str], SearchSettings], settings: SearchSettings
) -> None:
    directions, old = stored
    old_doc, new_doc = _flatten(old.to_dict()), _flatten(settings.to_dict())
    changed = [
        f"{key}: stored {old_doc.get(key)!r}, given {new_doc.get(key)!r}"
        for key in sorted(set(old_doc) | set(new_doc))
        if old_doc.get(key) != new_doc.get(key)
    ]
    if directions != settings.directions:
        changed.insert(0, f"directions: stored {directions}, given {settings.directions}")
    if changed:
        raise TuneError(
            f"study {study_name!r} in {shown} exists with other objectives or "
            f"settings ({'; '.join(changed)}); resume it with its own settings or "
            f"choose another study name"
        )


def _sampler(seed: int | None) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def _default_pruner(settings: SearchSettings) -> optuna.pruners.BasePruner:
    if settings.mode == "reward":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def _storage_name(storage: str | Path) -> str:
    if isinstance(storage, str) and "://" in storage:
        return sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
    return str(storage)


def _worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_token(os.getpid())}


def _process_token(pid: int) -> str | None:
    """Identifies a live process (boot and start time, so a reused pid differs); None if gone."""
    if Path("/proc/self/stat").is_file():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        state, *rest = stat.rsplit(")", 1)[1].split()
        if state in ("Z", "X"):  # killed, not yet reaped
            return None
        boot = Path("/proc/sys/kernel/random/boot_id")
        return f"{boot.read_text().strip() if boot.is_file() else ''}:{rest[18]}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "alive"


# --------------------------------------------------------------------------- small helpers


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_choices(name: str, values: Sequence[Any]) -> None:
    if not values:
        raise TuneError(f"SearchSpace.{name} is empty: give at least one choice")
    if len({repr(v) for v in values}) != len(values):
        raise TuneError(f"SearchSpace.{name} lists a choice twice: {values}")


def _check_members(name: str, values: Sequence[Any], ok: Callable[[Any], bool], what: str) -> None:
    bad = [v for v in values if not ok(v)]
    if bad:
        raise TuneError(f"SearchSpace.{name}: every choice must be {what}, got {bad}")


def _check_range(name: str, low: float, high: float) -> None:
    if low > high:
        raise TuneError(f"SearchSpace.{name}_min={low} > {name}_max={high}")


def _check_arch_name(name: str) -> None:
    if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise TuneError(f"architecture name {name!r}: use letters, digits, '-', '_' and '.' only")


def _is_int(value: Any, minimum: int) -> bool:
    return bool(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------- reading and picking trials


def settings_study_name(prefix: str, settings: SearchSettings) -> str:
    """``PREFIX-<8 hex>``: a study name that changes whenever the settings (space, mode, epochs,
    threads...) change, so a rerun with the same settings resumes and one with others starts anew."""
    if not isinstance(prefix, str) or not prefix:
        raise TuneError(f"study name prefix must be a non-empty string, got {prefix!r}")
    doc = json.dumps(settings.to_dict(), sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(doc.encode()).hexdigest()[:8]}"


class Objectives(NamedTuple):
    """A completed trial's validation macro-F1 and measured batch-1 latency."""

    val_f1: float
    latency_ms: float


def trial_objectives(trial: FrozenTrial) -> Objectives:
    """``(val macro-F1, batch-1 latency ms)`` of a completed trial: its two values in ``"multi"``
    mode, its ``"result"`` user attr in ``"reward"`` mode."""
    if trial.state != TrialState.COMPLETE:
        raise TuneError(f"trial {trial.number} is {trial.state.name}, not COMPLETE: it has no objectives")
    if trial.values is not None and len(trial.values) == 2:
        return Objectives(float(trial.values[0]), float(trial.values[1]))
    result = trial.user_attrs.get("result")
    if isinstance(result, Mapping) and "val_f1" in result and "latency_ms" in result:
        return Objectives(float(result["val_f1"]), float(result["latency_ms"]))
    raise TuneError(
        f"trial {trial.number} has neither two values (F1, latency) nor a 'result' user attr with val_f1 and latency_ms"
    )


def pareto_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The completed trials no other completed trial dominates in (val F1 higher, latency
    lower), by trial number. Trials with equal objectives are all kept."""
    points = [(t, *trial_objectives(t)) for t in trials if t.state == TrialState.COMPLETE]
    front = [
        t for t, f1, lat in points if not any(f >= f1 and ms <= lat and (f > f1 or ms < lat) for _, f, ms in points)
    ]
    return sorted(front, key=lambda t: t.number)


def pick_score(f1: float, latency_ms: float, f1_ref: float, latency_ref_ms: float) -> float:
    """The competition's formula on measured latency: ``0.5 * latency_ms / latency_ref_ms +
    sigmoid(20 * (f1_ref - f1))``; lower is better, the reference itself scores 1.0."""
    for name, value in (("f1", f1), ("f1_ref", f1_ref)):
        if not _is_real(value) or not 0 <= value <= 1:
            raise TuneError(f"{name} must be a number in [0, 1], got {value!r}")
    for name, value in (("latency_ms", latency_ms), ("latency_ref_ms", latency_ref_ms)):
        if not _is_real(value) or value <= 0:
            raise TuneError(f"{name} must be a number > 0, got {value!r}")
    return float(0.5 * latency_ms / latency_ref_ms + 1.0 / (1.0 + math.exp(-20.0 * (f1_ref - f1))))


def pick_reference(
    trials: Sequence[FrozenTrial], baseline_f1: float | None = None, baseline_latency_ms: float | None = None
) -> tuple[float, float]:
    """``(f1_ref, latency_ref_ms)`` of ``pick_trial``: the baseline's where given, otherwise the
    best-F1 completed trial's (the faster one, then the earlier one, on a tie)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise TuneError(f"no completed trial among {len(trials)} to pick from")
    best = min(complete, key=lambda t: (-trial_objectives(t)[0], trial_objectives(t)[1], t.number))
    best_f1, best_ms = trial_objectives(best)
    return (
        best_f1 if baseline_f1 is None else baseline_f1,
        best_ms if baseline_latency_ms is None else baseline_latency_ms,
    )


def pick_trial(
    trials: Sequence[FrozenTrial], baseline_f1: float | None = None, baseline_latency_ms: float | None = None
) -> FrozenTrial:
    """The trial to retrain: among the completed trials on the Pareto front (``pareto_trials``),
    the one with the lowest ``pick_score`` against ``pick_reference``; ties go to the faster,
    then the earlier trial. A ``TuneError`` when no trial completed."""
    f1_ref, ms_ref = pick_reference(trials, baseline_f1, baseline_latency_ms)
    return min(
        pareto_trials(trials),
        key=lambda t: (pick_score(*trial_objectives(t), f1_ref, ms_ref), trial_objectives(t)[1], t.number),
    )


def _objective_value(index: int) -> Callable[[FrozenTrial], float]:
    """The ``index``-th objective of a trial, as Optuna's importance target."""

    def value(trial: FrozenTrial) -> float:
        return float(trial.values[index])

    return value


def param_importances(study: optuna.Study, min_trials: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """fANOVA importance of every parameter, per objective (``"val_f1"`` and ``"latency_ms"``,
    or ``"reward"``), normalised to sum to 1 and sorted, most important first.

    Empty when fewer than ``min_trials`` trials completed; an objective whose values are all
    equal gives every parameter 0.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < min_trials:
        return {}
    names = ["val_f1", "latency_ms"] if len(study.directions) == 2 else ["reward"]
    out: dict[str, dict[str, float]] = {}
    for index, name in enumerate(names):
        values = [t.values[index] for t in complete]
        if max(values) == min(values):
            out[name] = dict.fromkeys(complete[-1].params, 0.0)
            continue
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        importances = optuna.importance.get_param_importances(
            study, evaluator=evaluator, target=_objective_value(index)
        )
        out[name] = {param: float(value) for param, value in importances.items()}
    return out
