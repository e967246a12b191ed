"""Compression: low-rank / Tucker-2 decomposition with per-layer scans, and DepGraph channel pruning."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from trashlib.bench import compare_latency, count_params, torch_threads
from trashlib.models import Factorized, ModelSpec

RANK_RULES: tuple[str, ...] = ("vbmf", "energy")
IMPORTANCES: tuple[str, ...] = ("magnitude", "taylor", "bn")


class CompressError(ValueError):
    """A compression request that cannot be carried out; the input model is left unchanged."""


# ---------------------------------------------------------------------------------------------
# Rank selection


def vbmf_rank(matrix: np.ndarray) -> int:
    """Rank of ``matrix`` by empirical variational Bayesian matrix factorization (EVBMF).

    The analytic global solution of Nakajima et al. (JMLR 2013): the noise variance is estimated from
    the data, and singular values below the EVBMF threshold are discarded. Returns at least 1.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or min(m.shape) < 1 or not np.isfinite(m).all():
        raise CompressError(f"vbmf_rank needs a finite 2-D matrix, got shape {m.shape}")
    if m.shape[0] > m.shape[1]:
        m = m.T
    length, width = m.shape  # length <= width
    s = np.linalg.svd(m, compute_uv=False)
    alpha = length / width
    tau_bar = 2.5129 * math.sqrt(alpha)
    xubar = (1 + tau_bar) * (1 + alpha / tau_bar)
    index = max(0, min(math.ceil(length / (1 + alpha)) - 1, length - 1))
    lower_bound = max(s[index] ** 2 / (width * xubar), float(np.mean(s[index:] ** 2)) / width)
    upper_bound = float(np.sum(s**2) / (length * width))
    if upper_bound <= lower_bound or upper_bound <= 0:
        return 1

    def objective(sigma2: float) -> float:
        x = s**2 / (width * sigma2)
        z1 = x[x > xubar]
        z2 = x[x <= xubar]
        tau_z1 = _tau(z1, alpha)
        term1 = np.sum(z2 - np.log(z2))
        term2 = np.sum(z1 - tau_z1)
        term3 = np.sum(np.log((tau_z1 + 1) / z1))
        term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
        return float(term1 + term2 + term3 + term4)  # a full SVD: no residual, no missing singular values

    sigma2 = _golden_min(objective, lower_bound, upper_bound)
    threshold = math.sqrt(width * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return max(1, int(np.sum(s > threshold)))


def energy_rank(matrix: np.ndarray, energy: float) -> int:
    """Smallest rank whose singular values keep ``energy`` (in (0, 1]) of the squared Frobenius norm."""
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise CompressError(f"energy must be in (0, 1], got {energy!r}")
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = np.cumsum(s**2)
    if total[-1] <= 0:
        return 1
    return min(len(s), int(np.searchsorted(total / total[-1], energy - 1e-12)) + 1)


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _golden_min(fn: Callable[[float], float], low: float, high: float, iterations: int = 100) -> float:
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = fn(c), fn(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = fn(d)
    return (a + b) / 2


def choose_rank(matrix: np.ndarray, rule: str = "vbmf", energy: float = 0.9) -> int:
    """A rank for ``matrix`` by ``rule``: "vbmf" or "energy" (keep ``energy`` of the spectrum)."""
    if rule not in RANK_RULES:
        raise CompressError(f"rank rule must be one of {RANK_RULES}, got {rule!r}")
    return vbmf_rank(matrix) if rule == "vbmf" else energy_rank(matrix, energy)


# ---------------------------------------------------------------------------------------------
# Decomposition


def layer_kind(module: nn.Module) -> str:
    """How a layer can be decomposed: "tucker" (full k x k conv), "svd" (1 x 1 conv), or why not."""
    if not isinstance(module, nn.Conv2d) or type(module) is not nn.Conv2d:
        return "skip: not a plain Conv2d"
    if module.groups == module.in_channels and module.groups > 1:
        return "skip: depthwise (Tucker-2 does not apply)"
    if module.groups != 1:
        return "skip: grouped convolution"
    if module.kernel_size == (1, 1):
        return "svd"
    return "tucker"


def decomposable_layers(model: nn.Module) -> dict[str, str]:
    """Every convolution of ``model`` with its ``layer_kind`` (decomposable or the reason it is not)."""
    return {
        name: layer_kind(m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not _inside_factorized(model, name)
    }


def layer_ranks(conv: nn.Conv2d, rule: str = "vbmf", energy: float = 0.9) -> tuple[int, int]:
    """(input rank, output rank) for a conv: both modes for Tucker-2, one shared rank for SVD."""
    w = conv.weight.detach().double().numpy()
    out_ch, in_ch = w.shape[:2]
    if conv.kernel_size == (1, 1):
        r = choose_rank(w.reshape(out_ch, in_ch), rule, energy)
        return r, r
    r_out = choose_rank(w.reshape(out_ch, -1), rule, energy)
    r_in = choose_rank(np.moveaxis(w, 1, 0).reshape(in_ch, -1), rule, energy)
    return r_in, r_out


def factorize(conv: nn.Conv2d, ranks: tuple[int, int], name: str = "layer") -> Factorized:
    """A ``Factorized`` chain approximating ``conv``: SVD for 1 x 1, Tucker-2 (tensorly) for k x k."""
    kind = layer_kind(conv)
    if kind.startswith("skip"):
        raise CompressError(f"{name} cannot be factorized: {kind[6:]}")
    r_in, r_out = _check_ranks(conv, ranks, name)
    w = conv.weight.detach().double()
    bias = conv.bias.detach().clone() if conv.bias is not None else None
    if kind == "svd":
        u, s, vh = torch.linalg.svd(w.reshape(conv.out_channels, conv.in_channels), full_matrices=False)
        root = s[:r_out].sqrt()
        first = nn.Conv2d(conv.in_channels, r_out, 1, stride=_pair(conv.stride), padding=_padding(conv), bias=False)
        last = nn.Conv2d(r_out, conv.out_channels, 1, bias=bias is not None)
        first.weight.data = (root[:, None] * vh[:r_out]).float().reshape(r_out, conv.in_channels, 1, 1)
        last.weight.data = (u[:, :r_out] * root[None]).float().reshape(conv.out_channels, r_out, 1, 1)
        if bias is not None:
            last.bias = nn.Parameter(bias)
        return Factorized(first, last)
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    tl.set_backend("numpy")
    (core, factors), _ = partial_tucker(w.numpy(), modes=[0, 1], rank=[r_out, r_in], init="svd", n_iter_max=50)
    u_out, u_in = factors
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    middle = nn.Conv2d(
        r_in,
        r_out,
        _pair(conv.kernel_size),
        stride=_pair(conv.stride),
        padding=_padding(conv),
        dilation=_pair(conv.dilation),
        bias=False,
    )
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=bias is not None)
    first.weight.data = torch.from_numpy(np.ascontiguousarray(u_in.T)).float()[:, :, None, None]
    middle.weight.data = torch.from_numpy(np.ascontiguousarray(core)).float()
    last.weight.data = torch.from_numpy(np.ascontiguousarray(u_out)).float()[:, :, None, None]
    if bias is not None:
        last.bias = nn.Parameter(bias)
    return Factorized(first, middle, last)


@dataclass
class LayerScan:
    """One candidate layer: its kind, ranks, cost before and after factorizing, and whether it pays."""

    layer: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    rank_in: int | None
    rank_out: int | None
    params_before: int
    params_after: int | None
    macs_before: int
    macs_after: int | None
    error: float | None
    ms_before: float | None
    ms_after: float | None
    speedup: float | None
    keep: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan_decomposition(
    model: nn.Module,
    image_size: int,
    *,
    rule: str = "vbmf",
    energy: float = 0.9,
    min_speedup: float = 1.05,
    threads: int = 1,
    rounds: int = 5,
    runs_per_round: int = 20,
    layers: Sequence[str] | None = None,
    sample: torch.Tensor | None = None,
    max_error: float = 0.5,
) -> list[LayerScan]:
    """Per conv layer: ranks, params, MACs, batch-1 latency of the layer alone before and after, and
    the factorization's relative output error.

    Each layer is fed its real input (captured with a forward hook from the first image of ``sample``,
    a preprocessed batch; a random image without one) and timed alone at batch 1, the original and
    the factorized chain interleaved in this process. ``keep`` marks factorizations that are smaller,
    at least ``min_speedup`` times faster and change the layer's output by at most ``max_error``
    (``||y - y'|| / ||y||``); depthwise and grouped convolutions are listed as skipped.
    """
    _check_image_size(image_size)
    kinds = decomposable_layers(model)
    names = list(kinds) if layers is None else _check_layer_names(model, layers)
    x0 = (
        torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        if sample is None
        else sample[:1]
    )
    inputs = _layer_inputs(model, x0, names)
    modules = dict(model.named_modules())
    result = []
    with torch_threads(threads), torch.inference_mode():
        for name in names:
            conv, kind, x = modules[name], kinds[name], inputs[name]
            y = conv(x)
            base = dict(
                layer=name,
                kind=kind,
                in_channels=conv.in_channels,
                out_channels=conv.out_channels,
                kernel=conv.kernel_size[0],
                params_before=count_params(conv),
                macs_before=int(np.prod(y.shape[2:])) * conv.weight[0].numel() * conv.out_channels,
            )
            if kind.startswith("skip"):
                result.append(
                    LayerScan(
                        **base,
                        rank_in=None,
                        rank_out=None,
                        params_after=None,
                        macs_after=None,
                        error=None,
                        ms_before=None,
                        ms_after=None,
                        speedup=None,
                        keep=False,
                    )
                )
                continue
            ranks = layer_ranks(conv, rule, energy)
            chain = factorize(conv, ranks, name).eval()
            error = float((chain(x) - y).norm() / y.norm().clamp_min(1e-12))
            macs_after = sum(
                int(np.prod(c(z).shape[2:])) * c.weight[0].numel() * c.out_channels for c, z in _chain_inputs(chain, x)
            )
            timing = compare_latency(
                {"before": functools.partial(conv, x), "after": functools.partial(chain, x)},
                rounds=rounds,
                runs_per_round=runs_per_round,
            )
            speedup = timing["before"]["median_ms"] / timing["after"]["median_ms"]
            params_after = count_params(chain)
            result.append(
                LayerScan(
                    **base,
                    rank_in=ranks[0],
                    rank_out=ranks[1],
                    params_after=params_after,
                    macs_after=macs_after,
                    error=error,
                    ms_before=timing["before"]["median_ms"],
                    ms_after=timing["after"]["median_ms"],
                    speedup=speedup,
                    keep=(speedup >= min_speedup and params_after < base["params_before"] and error <= max_error),
                )
            )
    return result


def decompose(model: nn.Module, ranks: dict[str, tuple[int, int]]) -> nn.Module:
    """A copy of ``model`` with each named conv replaced by its factorized chain at the given ranks."""
    kinds = decomposable_layers(model)
    _check_layer_names(model, list(ranks))
    for name in ranks:
        if kinds[name].startswith("skip"):
            raise CompressError(f"layer {name!r} cannot be decomposed: {kinds[name][6:]}")
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    for name, pair in ranks.items():
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        chain = factorize(conv, pair, name)
        parent, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, child, chain)
    return new


def kept_ranks(scan: Sequence[LayerScan]) -> dict[str, tuple[int, int]]:
    """The ranks of the layers a scan marked ``keep``: the input of ``decompose``."""
    return {s.layer: (s.rank_in, s.rank_out) for s in scan if s.keep and s.rank_in and s.rank_out}


# ---------------------------------------------------------------------------------------------
# Structured pruning


def prune_channels(
    model: nn.Module,
    ratio: float,
    image_size: int,
    *,
    importance: str = "magnitude",
    global_pruning: bool = False,
    iterative_steps: int = 1,
    round_to: int | None = 8,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    fine_tune: Callable[[nn.Module, int], None] | None = None,
) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of its channels physically removed by torch-pruning (DepGraph).

    Coupled channels (residual adds, depthwise groups, BatchNorm) are removed together; the final
    linear layer keeps its outputs. ``importance``: "magnitude" (L2 of the weights), "taylor"
    (|weight x gradient| on the ``calibration`` batch, needed then) or "bn" (BatchNorm scale).
    With ``iterative_steps`` > 1 the ratio is reached in equal steps and ``fine_tune(model, step)``
    runs after each (prune, then fine-tune).
    """
    import torch_pruning as tp

    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise CompressError(f"pruning ratio must be in (0, 1), got {ratio!r}")
    if importance not in IMPORTANCES:
        raise CompressError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise CompressError(f"iterative_steps must be an int >= 1, got {iterative_steps!r}")
    if importance == "taylor" and calibration is None:
        raise CompressError("importance='taylor' needs a calibration batch (images, labels)")
    _check_image_size(image_size)
    new = copy.deepcopy(model).eval()
    example = torch.zeros(1, 3, image_size, image_size)
    linears = [m for m in new.modules() if isinstance(m, nn.Linear)]
    scorer = {
        "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": tp.importance.TaylorImportance,
        "bn": tp.importance.BNScaleImportance,
    }[importance]()
    try:
        pruner = tp.pruner.MetaPruner(
            new,
            example,
            importance=scorer,
            pruning_ratio=ratio,
            global_pruning=global_pruning,
            iterative_steps=iterative_steps,
            ignored_layers=linears[-1:],
            round_to=round_to,
        )
    except Exception as error:  # torch-pruning raises many types when it cannot trace a model
        raise CompressError(
            f"torch-pruning cannot trace {type(model).__name__}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    for step in range(iterative_steps):
        if importance == "taylor":
            new.zero_grad()
            assert calibration is not None  # checked above
            images, labels = calibration
            nn.functional.cross_entropy(new(images), labels).backward()
        pruner.step()
        new.zero_grad(set_to_none=True)
        if fine_tune is not None:
            fine_tune(new, step)
    new.eval()
    try:
        with torch.no_grad():
            new(example)
    except Exception as error:  # a graph the pruner misread leaves layers that no longer fit together
        raise CompressError(
            f"torch-pruning could not trace {type(model).__name__} correctly: the pruned model "
            f"fails to run ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error
    if count_params(new) >= count_params(model):
        raise CompressError(
            f"torch-pruning removed no channel from {type(model).__name__} at ratio {ratio} "
            f"(round_to={round_to}); its graph may not be traceable (outputs computed outside "
            f"torch, e.g. through numpy)"
        )
    return new


class Variant(NamedTuple):
    """A compressed model, the spec of the model it came from, and how it was made (source, technique, ratio...)."""

    model: nn.Module
    spec: ModelSpec
    info: dict[str, Any]


def build_variants(
    sources: dict[str, tuple[nn.Module, ModelSpec]],
    ratios: Sequence[float],
    *,
    decompose_ranks: dict[str, tuple[int, int]] | None = None,
    importance: str = "magnitude",
    global_pruning: bool = False,
    iterative_steps: int = 1,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    fine_tune: Callable[[nn.Module, int], None] | None = None,
    control: bool = True,
) -> dict[str, Variant]:
    """The compressed variants of each source: ``<source>-pruned<NN>`` for every ratio; for the first
    source also ``<source>-decomposed`` (the layers of ``decompose_ranks``) and ``<source>-pruned<NN>-decomposed``
    (pruned at the largest ratio, then the same layers factorized at ranks clipped to their pruned widths).
    With ``control``, ``<source>-distilled`` is an unchanged copy, to be fine-tuned with the same recipe:
    it separates what compression costs from what the extra fine-tuning gains. Sources are not modified."""
    variants: dict[str, Variant] = {}
    for index, (label, (model, spec)) in enumerate(sources.items()):
        size = spec.image_size
        if control:
            variants[f"{label}-distilled"] = Variant(copy.deepcopy(model), spec, {"source": label, "technique": "none"})
        for ratio in ratios:
            pruned = prune_channels(
                model,
                ratio,
                size,
                importance=importance,
                global_pruning=global_pruning,
                iterative_steps=iterative_steps,
                calibration=calibration,
                fine_tune=fine_tune,
            )
            variants[f"{label}-pruned{round(100 * ratio)}"] = Variant(
                pruned,
                spec,
                {
                    "source": label,
                    "technique": "prune",
                    "ratio": ratio,
                    "importance": importance,
                    "global_pruning": global_pruning,
                    "iterative_steps": iterative_steps,
                },
            )
        if index or not decompose_ranks:
            continue
        variants[f"{label}-decomposed"] = Variant(
            decompose(model, decompose_ranks),
            spec,
            {"source": label, "technique": "decompose", "layers": len(decompose_ranks)},
        )
        if ratios:
            ratio = max(ratios)
            pruned = variants[f"{label}-pruned{round(100 * ratio)}"].model
            ranks = _clip_ranks(pruned, decompose_ranks)
            variants[f"{label}-pruned{round(100 * ratio)}-decomposed"] = Variant(
                decompose(pruned, ranks),
                spec,
                {
                    "source": label,
                    "technique": "prune+decompose",
                    "ratio": ratio,
                    "importance": importance,
                    "layers": len(ranks),
                },
            )
    return variants


def _clip_ranks(model: nn.Module, ranks: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The ranks a pruned model can still take: clipped to each layer's new width, dropped where a
    factorization no longer saves parameters."""
    modules = dict(model.named_modules())
    clipped = {}
    for name, (r_in, r_out) in ranks.items():
        conv = modules[name]
        if conv.kernel_size == (1, 1):
            r = min(r_in, conv.in_channels, conv.out_channels)
            if r * (conv.in_channels + conv.out_channels) < conv.in_channels * conv.out_channels:
                clipped[name] = (r, r)
        else:
            clipped[name] = (min(r_in, conv.in_channels), min(r_out, conv.out_channels))
    return clipped


def max_output_difference(a: nn.Module, b: nn.Module, image_size: int, n: int = 4, seed: int = 0) -> float:
    """Largest absolute difference of two models' logits on the same random batch."""
    x = torch.randn(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    a.eval(), b.eval()
    with torch.inference_mode():
        return float((a(x) - b(x)).abs().max())


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_image_size(image_size: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise CompressError(f"image_size must be an int >= 32, got {image_size!r}")


def _check_ranks(conv: nn.Conv2d, ranks: Any, name: str) -> tuple[int, int]:
    if (
        not isinstance(ranks, (tuple, list))
        or len(ranks) != 2
        or any(isinstance(r, bool) or not isinstance(r, int) for r in ranks)
    ):
        raise CompressError(f"{name}: ranks must be two ints (input rank, output rank), got {ranks!r}")
    r_in, r_out = ranks
    limit_in, limit_out = conv.in_channels, conv.out_channels
    if conv.kernel_size == (1, 1):
        limit_in = limit_out = min(conv.in_channels, conv.out_channels)
        if r_in != r_out:
            raise CompressError(f"{name}: a 1 x 1 (SVD) factorization has one rank, got {ranks}")
    if not (1 <= r_in <= limit_in and 1 <= r_out <= limit_out):
        raise CompressError(
            f"{name}: ranks {ranks} are outside the layer's [1, {limit_in}] x [1, {limit_out}] "
            f"({conv.in_channels} -> {conv.out_channels} channels)"
        )
    return r_in, r_out


def _check_layer_names(model: nn.Module, names: Sequence[str]) -> list[str]:
    convs = decomposable_layers(model)
    missing = [n for n in names if n not in convs]
    if missing:
        raise CompressError(
            f"no such convolution in the model: {missing}; it has {len(convs)} (e.g. {list(convs)[:3]})"
        )
    return list(names)


def _inside_factorized(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), Factorized) for i in range(1, len(parts)))


def _layer_inputs(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured.setdefault(name, inputs[0].detach().clone())

        return hook

    hooks = [modules[n].register_forward_hook(record(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return captured


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    return int(value[0]), int(value[1])


def _padding(conv: nn.Conv2d) -> str | tuple[int, int]:
    return conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)


def _chain_inputs(chain: nn.Sequential, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Tensor]]:
    pairs = []
    for conv in chain:
        assert isinstance(conv, nn.Conv2d)
        pairs.append((conv, x))
        x = conv(x)
    return pairs
