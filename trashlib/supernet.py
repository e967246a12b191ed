"""Once-for-all search on the pretrained EfficientNet-Lite0: elastic supernet, sub-networks, deploy-runtime latency."""

from __future__ import annotations

import copy
import importlib.util
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

from trashlib.bench import compare_latency, count_macs, torch_threads
from trashlib.models import (
    LITE0_SUBNET,
    EfficientNetLite0,
    ModelError,
    ModelSpec,
    _MBConv,
    _pad,
    atomic_torch_save,
    build_model,
    check_subnet,
    lite0_blocks,
    lite0_max_widths,
    lite0_stage_blocks,
    model_preprocessing,
    safe_torch_load,
)
from trashlib.quantize import (
    DEFAULT_RUNTIME,
    calibration_batches,
    check_runtime,
    deployed,
    time_deployed,
)
from trashlib.train import (
    StepLoss,
    TrainConfig,
    TrainResult,
    classification_metrics,
    distillation_loss,
    predict_logits,
    preprocess,
)
from trashlib.train import train_model as _train_model
from trashlib.tune import open_storage

SUPERNET_FORMAT = "trashlib-supernet/1"
STUDY_ATTR = "trashlib.supernet"
EXPAND_RATIOS: tuple[int, ...] = (3, 4, 6)


class SupernetError(ModelError):
    """A sub-network setting, supernet file, runtime or search setting that cannot be used; the message names it."""


# --------------------------------------------------------------------------- sub-network settings


@dataclass(frozen=True)
class SubnetConfig:
    """One sub-network of the elastic EfficientNet-Lite0: blocks kept per stage (``depths``, the first k of each
    of the 7 stages), each block's expansion width (``widths``, 16 ints; a narrower block keeps the most important
    channels) and the input side (``resolution``, a multiple of 32)."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    resolution: int

    def __post_init__(self) -> None:
        try:
            check_subnet(
                {"depths": list(self.depths), "widths": list(self.widths), "resolution": self.resolution},
                where="subnet",
            )
        except ModelError as error:
            raise SupernetError(str(error)) from None
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "widths", tuple(self.widths))

    @classmethod
    def from_ratios(cls, depths: Sequence[int], ratios: Sequence[int], resolution: int) -> SubnetConfig:
        """Widths from per-block expand ratios (``ratio * input channels``; ignored for a block without
        expansion). A ratio above the block's own expansion is refused."""
        blocks = lite0_blocks()
        if len(ratios) != len(blocks):
            raise SupernetError(f"subnet ratios must be {len(blocks)} ints (one per block), got {len(ratios)}")
        widths = []
        for index, (ratio, (_, _, expand, cin, _)) in enumerate(zip(ratios, blocks, strict=True)):
            if expand == 1:
                widths.append(cin)
                continue
            if isinstance(ratio, bool) or not isinstance(ratio, int) or not 1 <= ratio <= expand:
                raise SupernetError(f"subnet ratios[{index}]={ratio!r}: block {index} expands at most {expand}x")
            widths.append(cin * ratio)
        return cls(tuple(depths), tuple(widths), resolution)

    @classmethod
    def largest(cls, resolution: int) -> SubnetConfig:
        """The whole network at ``resolution``."""
        return cls(tuple(len(b) for b in lite0_stage_blocks()), tuple(lite0_max_widths()), resolution)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the ``subnet`` of a ``lite0_subnet`` spec)."""
        return {"depths": list(self.depths), "widths": list(self.widths), "resolution": self.resolution}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SubnetConfig:
        """The setting of ``to_dict``; a missing or bad key is a ``SupernetError``."""
        try:
            check_subnet(doc)
        except ModelError as error:
            raise SupernetError(str(error)) from None
        return cls(tuple(doc["depths"]), tuple(doc["widths"]), doc["resolution"])

    def kept_blocks(self) -> list[int]:
        """Indices (in the full network) of the blocks this sub-network keeps."""
        return [i for stage, blocks in enumerate(lite0_stage_blocks()) for i in blocks[: self.depths[stage]]]

    def describe(self) -> list[dict[str, Any]]:
        """Block by block: stage, index, kernel, stride, input/expansion/output channels, expand ratio."""
        blocks = lite0_blocks()
        stage_of = {i: s for s, members in enumerate(lite0_stage_blocks()) for i in members}
        rows = []
        for index in self.kept_blocks():
            kernel, stride, _, cin, cout = blocks[index]
            width = self.widths[index]
            rows.append(
                {
                    "stage": stage_of[index],
                    "block": index,
                    "kernel": kernel,
                    "stride": stride,
                    "in": cin,
                    "expanded": width,
                    "ratio": round(width / cin, 2),
                    "out": cout,
                }
            )
        return rows


@dataclass(frozen=True)
class OfaSpace:
    """The elastic choices the search and the sandwich rule draw from: input sides, expand ratios (at most 6,
    Lite0's own) and the smallest depth of a stage (stages of one block keep it)."""

    resolutions: tuple[int, ...] = (96, 128)
    expand_ratios: tuple[int, ...] = EXPAND_RATIOS
    min_depth: int = 1

    def __post_init__(self) -> None:
        resolutions, ratios = tuple(self.resolutions), tuple(self.expand_ratios)
        if not resolutions or any(isinstance(r, bool) or not isinstance(r, int) for r in resolutions):
            raise SupernetError(f"resolutions must be a non-empty list of ints, got {list(resolutions)}")
        for r in resolutions:
            if r < 32 or r % 32:
                raise SupernetError(f"resolutions: {r} is not a multiple of 32 (at least 32)")
        if not ratios or any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 6 for r in ratios):
            raise SupernetError(f"expand_ratios must be ints from 1 to 6 (Lite0 expands 6x), got {list(ratios)}")
        if isinstance(self.min_depth, bool) or not isinstance(self.min_depth, int) or self.min_depth < 1:
            raise SupernetError(f"min_depth must be an int >= 1, got {self.min_depth!r}")
        object.__setattr__(self, "resolutions", tuple(sorted(set(resolutions))))
        object.__setattr__(self, "expand_ratios", tuple(sorted(set(ratios))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolutions": list(self.resolutions),
            "expand_ratios": list(self.expand_ratios),
            "min_depth": self.min_depth,
        }

    def depth_choices(self, stage: int) -> list[int]:
        n = len(lite0_stage_blocks()[stage])
        return list(range(min(self.min_depth, n), n + 1))

    def largest(self) -> SubnetConfig:
        return SubnetConfig.from_ratios(
            [len(b) for b in lite0_stage_blocks()], [max(self.expand_ratios)] * 16, max(self.resolutions)
        )

    def smallest(self) -> SubnetConfig:
        return SubnetConfig.from_ratios(
            [self.depth_choices(s)[0] for s in range(7)], [min(self.expand_ratios)] * 16, min(self.resolutions)
        )

    def sample(self, rng: random.Random) -> SubnetConfig:
        """A uniformly drawn sub-network."""
        depths = [rng.choice(self.depth_choices(s)) for s in range(7)]
        ratios = [rng.choice(self.expand_ratios) for _ in range(16)]
        return SubnetConfig.from_ratios(depths, ratios, rng.choice(self.resolutions))

    def suggest(self, trial: optuna.Trial) -> SubnetConfig:
        """The sub-network of an Optuna trial (one parameter per elastic choice)."""
        resolution = trial.suggest_categorical("resolution", list(self.resolutions))
        depths = []
        for stage in range(7):
            choices = self.depth_choices(stage)
            depths.append(
                choices[0] if len(choices) == 1 else trial.suggest_int(f"depth{stage}", choices[0], choices[-1])
            )
        ratios = [
            1 if expand == 1 else trial.suggest_categorical(f"ratio{index:02d}", list(self.expand_ratios))
            for index, (_, _, expand, _, _) in enumerate(lite0_blocks())
        ]
        return SubnetConfig.from_ratios(depths, ratios, int(resolution))


# --------------------------------------------------------------------------- the elastic supernet


def _slice_bn(bn: nn.BatchNorm2d, x: torch.Tensor, width: int) -> torch.Tensor:
    assert bn.running_mean is not None and bn.running_var is not None
    return F.batch_norm(
        x,
        bn.running_mean[:width],
        bn.running_var[:width],
        bn.weight[:width],
        bn.bias[:width],
        bn.training,
        bn.momentum if bn.momentum is not None else 0.1,
        bn.eps,
    )


def _elastic_block(block: _MBConv, x: torch.Tensor, width: int) -> torch.Tensor:
    inputs = x
    if block.expand:
        x = F.relu6(_slice_bn(block._bn0, F.conv2d(x, block._expand_conv.weight[:width]), width))
    dw = block._depthwise_conv
    x = F.conv2d(_pad(x, block.dw_pad), dw.weight[:width], None, dw.stride, dw.padding, dw.dilation, width)
    x = F.relu6(_slice_bn(block._bn1, x, width))
    x = block._bn2(F.conv2d(x, block._project_conv.weight[:, :width]))
    if block.residual:
        x = stochastic_depth(x, block.drop_rate, "row", block.training) + inputs
    return x


class ElasticLite0(nn.Module):
    """EfficientNet-Lite0 whose forward runs the ``active`` sub-network (all of it by default). Built with
    ``from_network``, which ranks each block's expansion channels by importance (L1 norm of their projection
    weights, once-for-all's channel sorting) and reorders them, so every narrower block is a prefix."""

    def __init__(self, net: EfficientNetLite0, class_names: Sequence[str]) -> None:
        super().__init__()
        if net._fc.out_features != len(class_names):
            raise SupernetError(f"the network has {net._fc.out_features} outputs but {len(class_names)} class names")
        self.net = net
        self.class_names = list(class_names)
        self.active = SubnetConfig.largest(128)

    @classmethod
    def from_network(cls, net: EfficientNetLite0, class_names: Sequence[str]) -> tuple[ElasticLite0, list[np.ndarray]]:
        """The supernet around a copy of ``net`` (its channels sorted; ``net`` itself is left as it was, so a
        teacher can still be scored beside the supernet trained from it) and each block's sorted importances."""
        if not isinstance(net, EfficientNetLite0) or len(net._blocks) != len(lite0_blocks()):
            raise SupernetError("the supernet needs a whole EfficientNet-Lite0 (not a pruned or partial one)")
        net = copy.deepcopy(net)
        return cls(net, class_names), sort_channels(net)

    @classmethod
    def pretrained(
        cls, class_names: Sequence[str], weights: bool | str | Path = True
    ) -> tuple[ElasticLite0, list[np.ndarray]]:
        """From the ImageNet weights (``True``) or a fine-tuned Lite0 checkpoint (a path), with a fresh head."""
        net = build_model("efficientnet_lite0", len(class_names), pretrained=weights)
        assert isinstance(net, EfficientNetLite0)
        return cls.from_network(net, class_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net, cfg = self.net, self.active
        x = F.relu6(net._bn0(net._conv_stem(_pad(x, net.stem_pad))))
        for index in cfg.kept_blocks():
            block = net._blocks[index]
            assert isinstance(block, _MBConv)
            x = _elastic_block(block, x, cfg.widths[index])
        x = F.relu6(net._bn1(net._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return net._fc(net._dropout(x))


def sort_channels(net: EfficientNetLite0) -> list[np.ndarray]:
    """Reorder every expanding block's hidden channels by importance, most important first (the function the
    network computes is unchanged); returns each block's importances in the new order (empty without expansion)."""
    importances = []
    with torch.no_grad():
        for block in net._blocks:
            assert isinstance(block, _MBConv)
            if not block.expand:
                importances.append(np.zeros(0, dtype=np.float32))
                continue
            score = block._project_conv.weight.abs().sum(dim=(0, 2, 3))
            order = torch.argsort(score, descending=True, stable=True)
            block._expand_conv.weight.copy_(block._expand_conv.weight[order])
            block._depthwise_conv.weight.copy_(block._depthwise_conv.weight[order])
            block._project_conv.weight.copy_(block._project_conv.weight[:, order])
            for bn in (block._bn0, block._bn1):
                for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    assert tensor is not None
                    tensor.copy_(tensor[order])
            importances.append(score[order].numpy().copy())
    return importances


def build_subnet(supernet: ElasticLite0, config: SubnetConfig) -> EfficientNetLite0:
    """A standalone network (a ``lite0_subnet`` model) with the sub-network's weights copied out of the supernet;
    it computes what the supernet computes with ``active = config``."""
    if not isinstance(config, SubnetConfig):
        raise SupernetError(f"config must be a SubnetConfig, got {type(config).__name__}")
    sub = build_model(LITE0_SUBNET, len(supernet.class_names), config.resolution, subnet=config.to_dict())
    assert isinstance(sub, EfficientNetLite0)
    source = supernet.net.state_dict()
    kept = config.kept_blocks()
    state = {}
    for name, target in sub.state_dict().items():
        if name.startswith("_blocks."):
            _, index, rest = name.split(".", 2)
            name_in = f"_blocks.{kept[int(index)]}.{rest}"
        else:
            name_in = name
        tensor = source[name_in]
        if tensor.dim():
            tensor = tensor[tuple(slice(0, n) for n in target.shape)]
        state[name] = tensor.clone()
    sub.load_state_dict(state, strict=True)
    sub.train(supernet.training)
    return sub


def subnet_spec(config: SubnetConfig, class_names: Sequence[str]) -> ModelSpec:
    """The spec a sub-network saves with (its weights then reload with ``load_model``, ``weights_only=True``)."""
    return ModelSpec.create(LITE0_SUBNET, class_names, config.resolution, subnet=config.to_dict())


def save_supernet(supernet: ElasticLite0, path: Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """The supernet's class list and weights, written atomically (loadable with ``weights_only=True``)."""
    doc = {
        "format": SUPERNET_FORMAT,
        "class_names": list(supernet.class_names),
        "state_dict": supernet.net.state_dict(),
        **dict(extra or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(doc, Path(path))


def load_supernet(path: Path, class_names: Sequence[str]) -> ElasticLite0:
    """A supernet saved by ``save_supernet``; one trained on another class list is a ``SupernetError``."""
    path = Path(path)
    doc = safe_torch_load(path)
    if not isinstance(doc, Mapping) or doc.get("format") != SUPERNET_FORMAT:
        raise SupernetError(f"{path} is not a trashlib supernet (format {SUPERNET_FORMAT!r})")
    if list(doc["class_names"]) != list(class_names):
        raise SupernetError(
            f"{path} was trained on classes {list(doc['class_names'])}, but this data has {list(class_names)}; "
            f"delete it to train the supernet afresh"
        )
    net = EfficientNetLite0(num_classes=len(class_names))
    try:
        net.load_state_dict(doc["state_dict"], strict=True)
    except (RuntimeError, KeyError) as error:
        raise SupernetError(f"{path}: weights do not fit EfficientNet-Lite0: {str(error).splitlines()[0]}") from error
    return ElasticLite0(net, class_names)


# --------------------------------------------------------------------------- training: sandwich rule


@contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with every BatchNorm's running statistics left as they are (momentum 0) while it trains: batches
    still normalise with their own statistics, but the running ones keep following another sub-network."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield model
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum


@dataclass
class SandwichLoss:
    """Per-step loss of supernet training: the largest sub-network on the labels, then the smallest and
    ``n_random`` random ones distilled from the largest's logits (in-place distillation). The random draws
    depend on ``seed`` and the global step only, so a resumed run draws what an uninterrupted one does.

    Only the largest sub-network updates the BatchNorm running statistics: a narrower, shallower or smaller-input
    sub-network sees other activation statistics, and mixing them in would make the supernet's eval-mode output
    (the validation that picks the best epoch) meaningless. Every other sub-network is recalibrated before it is
    scored (``recalibrate_bn``)."""

    space: OfaSpace
    n_random: int = 2
    seed: int = 0
    temperature: float = 4.0
    alpha: float = 0.5
    label_smoothing: float = 0.1
    mean: tuple[float, float, float] = field(default_factory=lambda: _lite_norm()[0])
    std: tuple[float, float, float] = field(default_factory=lambda: _lite_norm()[1])

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "rule": "sandwich",
            "space": self.space.to_dict(),
            "n_random": self.n_random,
            "seed": self.seed,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "label_smoothing": self.label_smoothing,
            "bn_statistics": "largest",
        }

    def __call__(self, model: nn.Module, raw: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
        if not isinstance(model, ElasticLite0):
            raise SupernetError(f"the sandwich rule trains an ElasticLite0, got {type(model).__name__}")
        rng = random.Random(self.seed * 1_000_003 + step)
        images = raw.permute(0, 2, 3, 1)
        device = targets.device
        largest = self.space.largest()
        model.active = largest
        big = model(preprocess(images, largest.resolution, self.mean, self.std).to(device))
        loss = F.cross_entropy(big, targets, label_smoothing=self.label_smoothing)
        teacher = big.detach()
        for config in (self.space.smallest(), *(self.space.sample(rng) for _ in range(self.n_random))):
            model.active = config
            with frozen_bn_statistics(model):
                out = model(preprocess(images, config.resolution, self.mean, self.std).to(device))
            hard = F.cross_entropy(out, targets, label_smoothing=self.label_smoothing)
            loss = loss + distillation_loss(out, teacher, hard, temperature=self.temperature, alpha=self.alpha)
        model.active = largest
        return loss


def train_supernet(
    supernet: ElasticLite0,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    space: OfaSpace,
    config: TrainConfig,
    checkpoint_path: Path | None = None,
    n_random: int = 2,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    restart_other_runs: bool = False,
) -> TrainResult:
    """Fine-tune the supernet with the sandwich rule through ``train.train_model`` (epoch checkpoints that resume;
    validation, and the best-epoch pick, on the largest sub-network at ``config.image_size``). A checkpoint of
    another run is an error unless ``restart_other_runs``; ``on_epoch`` as for ``train_model``."""
    if config.image_size != max(space.resolutions):
        raise SupernetError(
            f"config.image_size={config.image_size} must be the largest resolution {max(space.resolutions)}"
        )
    loss: StepLoss = SandwichLoss(
        space,
        n_random=n_random,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        mean=config.mean,
        std=config.std,
    )
    supernet.active = space.largest()
    return _train_model(
        supernet,
        train,
        val,
        config,
        checkpoint_path=checkpoint_path,
        progress=progress,
        on_epoch=on_epoch,
        step_loss=loss,
        restart_other_runs=restart_other_runs,
    )


def _lite_norm() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    norm = model_preprocessing("efficientnet_lite0")
    mean, std = norm["mean"], norm["std"]
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


# --------------------------------------------------------------------------- evaluation without retraining


def recalibration_images(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training crops in a fixed, seeded order (all of them when fewer)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SupernetError(f"recalibration crops must be an int >= 1, got {n!r}")
    order = np.random.default_rng(seed).permutation(len(images))[:n]
    return images[np.sort(order)]


def recalibrate_bn(model: nn.Module, images: np.ndarray, image_size: int, *, batch_size: int = 64) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them (exact averages, not momentum) on
    ``images`` (uint8 NHWC) at ``image_size``; everything else stays in eval mode, so it is deterministic."""
    if len(images) == 0:
        raise SupernetError("BatchNorm recalibration needs at least one training crop")
    mean, std = _lite_norm()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model(preprocess(images[start : start + batch_size], image_size, mean, std))
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return model


# --------------------------------------------------------------------------- latency in the deploy runtime


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two rankings (scipy's when installed, else computed here)."""
    if len(a) != len(b) or len(a) < 2:
        raise SupernetError(f"Kendall's tau needs two sequences of equal length >= 2, got {len(a)} and {len(b)}")
    if importlib.util.find_spec("scipy") is not None:
        from scipy.stats import kendalltau

        return float(kendalltau(a, b).statistic)
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else float("nan")


class LatencyCheck(NamedTuple):
    """Quick (search-time) latency against a careful measurement of the same sub-networks."""

    configs: list[SubnetConfig]
    quick_ms: list[float]
    careful_ms: list[float]
    tau: float
    seconds: float


def latency_check(
    supernet: ElasticLite0,
    space: OfaSpace,
    calibration_images: np.ndarray,
    *,
    n: int = 30,
    runtime: str = DEFAULT_RUNTIME,
    quick_runs: int = 10,
    careful_runs: int = 50,
    rounds: int = 3,
    threads: int = 1,
    seed: int = 0,
) -> LatencyCheck:
    """``n`` random sub-networks, each deployed in ``runtime``: the quick measurement the search uses, then a
    careful one (``rounds`` interleaved rounds of ``careful_runs`` calls each, the median of the round medians),
    and Kendall's tau between the two rankings."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise SupernetError(f"the latency check needs at least 3 sub-networks, got {n!r}")
    check_runtime(runtime)
    started = time.perf_counter()
    rng = random.Random(seed)
    configs = [space.sample(rng) for _ in range(n)]
    fns, quick = [], []
    for config in configs:
        fn = deploy_subnet(supernet, config, runtime, calibration_images, threads=threads)
        quick.append(time_deployed(fn, config.resolution, runs=quick_runs, threads=threads))
        fns.append(fn)
    per_round: list[list[float]] = [[] for _ in configs]
    for _ in range(rounds):
        for index, (fn, config) in enumerate(zip(fns, configs, strict=True)):
            per_round[index].append(time_deployed(fn, config.resolution, runs=careful_runs, warmup=5, threads=threads))
    careful = [float(np.median(times)) for times in per_round]
    return LatencyCheck(configs, quick, careful, kendall_tau(quick, careful), time.perf_counter() - started)


def deploy_subnet(
    supernet: ElasticLite0,
    config: SubnetConfig,
    runtime: str,
    calibration_images: np.ndarray,
    *,
    threads: int = 1,
    model: nn.Module | None = None,
) -> Callable[[np.ndarray], Any]:
    """The sub-network (``model`` when already extracted) deployed in ``runtime``, int8 calibrated on 32 crops."""
    spec = subnet_spec(config, supernet.class_names)
    model = model if model is not None else build_subnet(supernet, config).eval()
    batches = calibration_batches(calibration_images, spec, batch_size=32, max_images=32)
    return deployed(model, spec, runtime, calibration=batches, threads=threads)


# --------------------------------------------------------------------------- the search


class SubnetScore(NamedTuple):
    """What the search knows of one sub-network."""

    val_f1: float
    latency_ms: float
    macs: int
    seconds: float


@dataclass
class SubnetEvaluator:
    """Scores a sub-network without retraining: extract, recalibrate BatchNorm on the fixed crops, validation
    macro-F1, then quick batch-1 latency in ``runtime``."""

    supernet: ElasticLite0
    recalibration: np.ndarray
    val: tuple[np.ndarray, np.ndarray]
    runtime: str = DEFAULT_RUNTIME
    threads: int = 1
    latency_runs: int = 10

    def __post_init__(self) -> None:
        check_runtime(self.runtime)

    def subnet(self, config: SubnetConfig) -> EfficientNetLite0:
        """The extracted, recalibrated sub-network."""
        model = build_subnet(self.supernet, config)
        with torch_threads(self.threads):
            recalibrate_bn(model, self.recalibration, config.resolution)
        return model

    def __call__(self, config: SubnetConfig) -> SubnetScore:
        with torch_threads(self.threads):
            return self._score(config)

    def _score(self, config: SubnetConfig) -> SubnetScore:
        started = time.perf_counter()
        model = self.subnet(config)
        val_x, val_y = self.val
        mean, std = _lite_norm()
        logits = predict_logits(model, val_x, config.resolution, normalization={"mean": mean, "std": std})
        f1 = classification_metrics(logits, val_y, self.supernet.class_names)["macro_f1"]
        fn = deploy_subnet(self.supernet, config, self.runtime, self.recalibration, threads=self.threads, model=model)
        latency = time_deployed(fn, config.resolution, runs=self.latency_runs, threads=self.threads)
        macs = count_macs(model, config.resolution)
        return SubnetScore(float(f1), latency, macs, time.perf_counter() - started)


def open_ofa_study(
    storage: str | Path, study_name: str, space: OfaSpace, runtime: str, *, seed: int = 0
) -> optuna.Study:
    """The multi-objective study (validation macro-F1 up, deploy latency down; NSGA-II) in the same storage as the
    MnasNet search (a journal file or a database URL). A study of that name with another space or runtime is a
    ``SupernetError``."""
    settings = {"space": space.to_dict(), "runtime": check_runtime(runtime)}
    backend = open_storage(storage)
    study = optuna.create_study(
        study_name=study_name,
        storage=backend,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.NSGAIISampler(seed=seed),
        load_if_exists=True,
    )
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_ATTR, settings)
    elif stored != settings:
        raise SupernetError(
            f"study {study_name!r} was made with settings {stored}, not {settings}; pick another study_name"
        )
    return study


def run_ofa_search(study: optuna.Study, evaluator: SubnetEvaluator, space: OfaSpace, *, n_trials: int) -> optuna.Study:
    """Add trials until the study holds ``n_trials`` finished ones; each trial is one sub-network scored by
    ``evaluator`` (its setting, MACs and time in the trial's user attributes)."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    missing = n_trials - len(finished)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        config = space.suggest(trial)
        score = evaluator(config)
        trial.set_user_attr("subnet", config.to_dict())
        trial.set_user_attr("macs", score.macs)
        trial.set_user_attr("seconds", score.seconds)
        return score.val_f1, score.latency_ms

    if missing > 0:
        study.optimize(objective, n_trials=missing)
    return study


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials on the Pareto front, fastest first."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number))


def pick_front(
    trials: Sequence[optuna.trial.FrozenTrial], f1_ref: float, latency_ref_ms: float, k: int = 1
) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` front trials with the lowest competition-style score against the reference
    ``0.5 * latency / latency_ref + sigmoid(20 * (f1_ref - f1))``; ties go to the faster, then the earlier."""
    if not trials:
        raise SupernetError("no completed trial to pick from")

    def score(t: optuna.trial.FrozenTrial) -> tuple[float, float, int]:
        f1, ms = t.values
        return (0.5 * ms / latency_ref_ms + 1 / (1 + math.exp(-20 * (f1_ref - f1))), ms, t.number)

    return sorted(trials, key=score)[:k]


def pick_within(
    trials: Sequence[optuna.trial.FrozenTrial], reference_ms: float, speedup: float
) -> optuna.trial.FrozenTrial:
    """The most accurate trial at least ``speedup`` times faster than ``reference_ms`` (ties go to the faster, then
    the earlier); the fastest trial when none is that fast."""
    _check_speed_budget(trials, reference_ms, speedup)
    within = [t for t in trials if t.values[1] * speedup <= reference_ms]
    if not within:
        return min(trials, key=lambda t: (t.values[1], -t.values[0], t.number))
    return min(within, key=lambda t: (-t.values[0], t.values[1], t.number))


def _check_speed_budget(trials: Sequence[optuna.trial.FrozenTrial], reference_ms: float, speedup: float) -> None:
    """The refusals of both speed-budget picks: no trial, a speedup or a reference latency that is not > 0."""
    if not trials:
        raise SupernetError("no completed trial to pick from")
    if isinstance(speedup, bool) or not isinstance(speedup, int | float) or not math.isfinite(speedup) or speedup <= 0:
        raise SupernetError(f"ofa_speedup must be a number > 0, got {speedup!r}")
    if not math.isfinite(reference_ms) or reference_ms <= 0:
        raise SupernetError(f"the reference latency must be > 0 ms, got {reference_ms!r}")


class CarefulPick(NamedTuple):
    """The speed-budget pick after a careful re-timing of the front points near the budget."""

    trial: optuna.trial.FrozenTrial
    baseline_ms: float
    candidates: list[dict[str, Any]]  # trial, val_f1, quick_ms, careful_ms, speedup (baseline_ms / careful_ms)


def pick_within_careful(
    trials: Sequence[optuna.trial.FrozenTrial],
    reference_ms: float,
    speedup: float,
    timer: Callable[[list[optuna.trial.FrozenTrial]], tuple[float, list[float]]],
    *,
    slack: float = 1.5,
    max_candidates: int = 12,
) -> CarefulPick:
    """``pick_within``, with the budget checked by a careful measurement rather than the search's quick one. The front
    points whose quick latency is within ``slack`` times the budget (``reference_ms / speedup``; the
    ``max_candidates`` nearest the budget, or the fastest point when none is that near) are timed again by
    ``timer``, which returns the baseline's and each candidate's careful latency, measured interleaved in one
    process. The pick is the most accurate candidate at least ``speedup`` times faster than the baseline in that
    measurement (ties go to the faster, then the earlier); when none is, the carefully fastest one."""
    _check_speed_budget(trials, reference_ms, speedup)
    if isinstance(slack, bool) or not isinstance(slack, int | float) or not math.isfinite(slack) or slack < 1:
        raise SupernetError(f"ofa_pick_slack must be a number >= 1, got {slack!r}")
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
        raise SupernetError(f"the careful pick needs at least 1 candidate, got {max_candidates!r}")
    budget = reference_ms / speedup
    near = [t for t in trials if t.values[1] <= budget * slack]
    near = sorted(near, key=lambda t: (abs(math.log(t.values[1] / budget)), t.number))[:max_candidates]
    candidates = near or [min(trials, key=lambda t: (t.values[1], -t.values[0], t.number))]
    baseline_ms, careful = timer(candidates)
    if len(careful) != len(candidates) or not all(math.isfinite(ms) and ms > 0 for ms in [baseline_ms, *careful]):
        raise SupernetError(f"the careful timer returned {baseline_ms!r} and {careful!r} for {len(candidates)} points")
    rows = [
        {
            "trial": t.number,
            "val_f1": t.values[0],
            "quick_ms": t.values[1],
            "careful_ms": ms,
            "speedup": baseline_ms / ms,
        }
        for t, ms in zip(candidates, careful, strict=True)
    ]
    by_number = {t.number: t for t in candidates}
    within = [r for r in rows if r["careful_ms"] * speedup <= baseline_ms]
    if within:
        best = min(within, key=lambda r: (-r["val_f1"], r["careful_ms"], r["trial"]))
    else:
        best = min(rows, key=lambda r: (r["careful_ms"], -r["val_f1"], r["trial"]))
    rows.sort(key=lambda r: r["careful_ms"])
    return CarefulPick(by_number[best["trial"]], float(baseline_ms), rows)


def careful_subnet_timer(
    supernet: ElasticLite0,
    runtime: str,
    calibration_images: np.ndarray,
    baseline: tuple[Callable[[np.ndarray], Any], int],
    *,
    threads: int = 1,
    rounds: int = 5,
    runs: int = 50,
) -> Callable[[list[optuna.trial.FrozenTrial]], tuple[float, list[float]]]:
    """The ``timer`` of ``pick_within_careful``: each trial's sub-network deployed in ``runtime`` and timed at batch
    1 beside the ``baseline`` (a deployed callable and its input size), interleaved round by round
    (``bench.compare_latency``, ``rounds`` of ``runs`` calls); the medians in ms."""
    check_runtime(runtime)

    def timer(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, list[float]]:
        rng = np.random.default_rng(0)

        def call(fn: Callable[[np.ndarray], Any], size: int) -> Callable[[], Any]:
            x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
            return lambda: fn(x)

        variants = {"baseline": call(*baseline)}
        for t in trials:
            config = SubnetConfig.from_dict(t.user_attrs["subnet"])
            fn = deploy_subnet(supernet, config, runtime, calibration_images, threads=threads)
            variants[f"trial {t.number}"] = call(fn, config.resolution)
        with torch_threads(threads):
            times = compare_latency(variants, rounds=rounds, runs_per_round=runs, warmup=5)
        return float(times["baseline"]["median_ms"]), [float(times[f"trial {t.number}"]["median_ms"]) for t in trials]

    return timer


def mnasnet_studies(storage: str | Path, prefix: str) -> list[optuna.Study]:
    """The MnasNet (``tune``) studies named ``prefix-...`` in ``storage``, for drawing both searches together."""
    from trashlib.tune import SETTINGS_ATTR

    backend = open_storage(storage)
    studies = []
    for summary in optuna.get_all_study_summaries(backend, include_best_trial=False):
        if summary.study_name.startswith(f"{prefix}-") and SETTINGS_ATTR in summary.user_attrs:
            studies.append(optuna.load_study(study_name=summary.study_name, storage=backend))
    return studies
