"""Timing and size: latency, throughput, submit time, MACs, size on disk, machine info."""

from __future__ import annotations

import functools
import io
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from trashlib.data import PreparedData, load_crop
from trashlib.models import ModelSpec
from trashlib.train import preprocess

T = TypeVar("T")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, library versions, python and platform."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "cpu_int8_flags": cpu_int8_flags(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def cpu_int8_flags() -> list[str]:
    """The CPU's int8 and bf16 matrix features from /proc/cpuinfo (avx512_vnni, avx_vnni, amx_int8, amx_bf16,
    avx512_bf16): what decides which kernels onnxruntime's MLAS and oneDNN pick; empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted({f for f in flags if f in ("avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16")})


def measure_latency(
    fn: Callable[[], Any], warmup: int = 10, runs: int = 50, min_seconds: float = 0
) -> dict[str, float | int]:
    """Time ``fn()`` call by call after ``warmup`` calls: at least ``runs`` calls and, when
    ``min_seconds`` > 0, until that much time has passed. Returns median/p90/mean/min in ms."""
    _check_count("warmup", warmup, minimum=0)
    _check_count("runs", runs, minimum=1)
    if not min_seconds >= 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds!r}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times)


def latency_for_model(
    model: nn.Module,
    image_size: int,
    batch_size: int = 1,
    threads: int = 1,
    *,
    warmup: int = 10,
    runs: int = 50,
    min_seconds: float = 0,
) -> dict[str, Any]:
    """Latency of ``model(x)`` in eval mode under ``torch.inference_mode()`` with ``threads``
    torch threads, for a random input at the model's own ``image_size``."""
    _check_count("image_size", image_size, minimum=1)
    _check_count("batch_size", batch_size, minimum=1)
    _check_count("threads", threads, minimum=1)
    x = _example_input(model, batch_size, image_size)
    model.eval()
    with torch_threads(threads), torch.inference_mode():
        result = measure_latency(lambda: model(x), warmup=warmup, runs=runs, min_seconds=min_seconds)
    return {
        **result,
        "image_size": image_size,
        "batch_size": batch_size,
        "threads": threads,
        "input_shape": list(x.shape),
    }


def compare_latency(
    variants: dict[str, Callable[[], Any]],
    rounds: int = 7,
    runs_per_round: int = 10,
    warmup: int = 5,
) -> dict[str, dict[str, float | int]]:
    """Interleave the variants round by round in this process (rotating who goes first) and
    return each one's summary plus ``ratio_vs_first``: its median over the first variant's."""
    if not variants:
        raise ValueError("variants must name at least one callable")
    _check_count("rounds", rounds, minimum=1)
    _check_count("runs_per_round", runs_per_round, minimum=1)
    _check_count("warmup", warmup, minimum=0)
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            for _ in range(runs_per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    summaries = {name: _summary(times[name]) for name in names}
    reference = summaries[names[0]]["median_ms"]
    for summary in summaries.values():
        summary["ratio_vs_first"] = summary["median_ms"] / reference if reference > 0 else float("inf")
    return summaries


def compare_models(
    models: dict[str, tuple[nn.Module, int]],
    batch_size: int = 1,
    threads: int = 1,
    rounds: int = 7,
    runs_per_round: int = 10,
) -> dict[str, dict[str, float | int]]:
    """``compare_latency`` for models, each fed a random batch at its own input size, in eval mode
    under ``torch.inference_mode()`` with ``threads`` threads; ratios are against the first model."""
    inputs = {name: _example_input(model.eval(), batch_size, size) for name, (model, size) in models.items()}
    with torch_threads(threads), torch.inference_mode():
        return compare_latency(
            {name: functools.partial(model, inputs[name]) for name, (model, _) in models.items()},
            rounds=rounds,
            runs_per_round=runs_per_round,
            warmup=3,
        )


def runtime_table(
    models: dict[str, tuple[nn.Module, int, int, str]],
    *,
    threads: int = 2,
    rounds: int = 7,
    batch_sizes: Sequence[int] = (1, 32),
) -> list[dict[str, Any]]:
    """Every runtime variant timed together, interleaved in this process, at each batch size, against the
    first one (the reference), and against its physical floor: ``models`` maps a name to (model, input
    size, MACs, "fp32" or "int8"); the floor is MACs over this CPU's measured peak GEMM rate of that
    precision with ``threads`` threads."""
    with torch_threads(threads):
        peaks = {"fp32": peak_gemm_gflops(), "int8": peak_int8_gops()}
    rows: dict[str, dict[str, Any]] = {
        name: {
            "variant": name,
            "precision": precision,
            "macs": macs,
            "image_size": size,
            "peak_gops": peaks[precision],
            "floor_b1_ms": floor_ms(macs, peaks[precision]),
        }
        for name, (_, size, macs, precision) in models.items()
    }
    for batch in batch_sizes:
        timing = compare_models(
            {name: (model, size) for name, (model, size, _, _) in models.items()},
            batch,
            threads,
            rounds,
            10 if batch == 1 else 2,
        )
        for name, summary in timing.items():
            rows[name][f"b{batch}_ms"] = summary["median_ms"]
            rows[name][f"speedup_b{batch}"] = 1.0 / summary["ratio_vs_first"]
    for row in rows.values():
        if "b1_ms" in row:
            row["x_floor_b1"] = row["b1_ms"] / row["floor_b1_ms"] if row["floor_b1_ms"] > 0 else float("inf")
    return list(rows.values())


def throughput(
    model: nn.Module,
    image_size: int,
    batch_size: int = 32,
    threads: int | None = None,
    warmup: int = 2,
    runs: int = 10,
) -> dict[str, Any]:
    """Images per second of ``model`` on batches of ``batch_size`` at ``image_size``."""
    _check_count("batch_size", batch_size, minimum=1)
    threads = torch.get_num_threads() if threads is None else threads
    timing = latency_for_model(model, image_size, batch_size=batch_size, threads=threads, warmup=warmup, runs=runs)
    return {
        "images_per_s": batch_size / (timing["median_ms"] / 1e3),
        "batch_median_ms": timing["median_ms"],
        "batch_size": batch_size,
        "image_size": image_size,
        "threads": threads,
    }


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2 by FlopCounterMode)."""
    _check_count("image_size", image_size, minimum=1)
    x = _example_input(model, 1, image_size)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def saved_size_bytes(model: nn.Module) -> int | None:
    """Bytes of ``torch.save(model.state_dict())``, measured in memory; None for a model whose state
    cannot be serialised (a lowered graph holding oneDNN opaque tensors)."""
    buffer = io.BytesIO()
    try:
        torch.save(model.state_dict(), buffer)
    except (NotImplementedError, RuntimeError):
        return None
    return buffer.tell()


def measure_submit_time(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    items: Sequence[T],
    load: Callable[[T], np.ndarray],
    batch_size: int = 32,
) -> dict[str, Any]:
    """Wall time to decode (``load`` one item -> uint8 HWC) and predict (``predict_batch`` on a
    uint8 NHWC batch -> labels) every item, as a submission would on the files on disk."""
    _check_count("batch_size", batch_size, minimum=1)
    if len(items) == 0:
        raise ValueError("items is empty: nothing to time")
    predictions: list[int] = []
    load_seconds = predict_seconds = 0.0
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        t0 = time.perf_counter()
        arrays = [load(item) for item in items[start : start + batch_size]]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or any(a.dtype != np.uint8 or a.ndim != 3 for a in arrays):
            raise ValueError(
                f"load must return uint8 HWC arrays of one shape; batch at item {start} has "
                f"shapes {sorted(shapes)} and dtypes {sorted({str(a.dtype) for a in arrays})}"
            )
        batch = np.stack(arrays)
        t1 = time.perf_counter()
        labels = np.asarray(predict_batch(batch)).reshape(-1)
        t2 = time.perf_counter()
        if len(labels) != len(arrays):
            raise ValueError(f"predict_batch returned {len(labels)} labels for a batch of {len(arrays)}")
        predictions.extend(int(label) for label in labels)
        load_seconds += t1 - t0
        predict_seconds += t2 - t1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "n": len(predictions),
        "images_per_s": len(predictions) / seconds if seconds > 0 else float("inf"),
        "load_seconds": load_seconds,
        "predict_seconds": predict_seconds,
        "batch_size": batch_size,
        "predictions": predictions,
    }


def peak_gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 matrix-multiply rate with the current torch threads: 2 n^3 / median time."""
    _check_count("n", n, minimum=1)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    return _gemm_rate(torch.mm, a, b, repeats)


def peak_int8_gops(n: int = 1024, repeats: int = 5) -> float:
    """Measured int8 matrix-multiply rate (``torch._int_mm``, int32 accumulate) with the current torch
    threads: 2 n^3 / median time, in GOP/s."""
    _check_count("n", n, minimum=32)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-128, 127, (n, n), generator=generator, dtype=torch.int8) for _ in range(2))
    return _gemm_rate(torch._int_mm, a, b, repeats)


def _gemm_rate(
    mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor, repeats: int
) -> float:
    """2 n^3 operations over the median time of ``mm(a, b)`` (after one warm-up call), in G/s."""
    _check_count("repeats", repeats, minimum=1)
    mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2.0 * a.shape[0] ** 3 / statistics.median(times) / 1e9


def original_loop_submit_time(
    model: nn.Module, spec: ModelSpec, data: PreparedData, *, split: str = "test", threads: int = 2
) -> dict[str, Any]:
    """The competition's own inference loop, for reference: every image decoded from disk with PIL,
    transformed one at a time (torchvision Resize, ToTensor, Normalize) and predicted at batch 1, eager
    fp32. Returns seconds, n and the predictions."""
    root, side, fit = _source(data)
    transform = transforms.Compose(
        [
            transforms.Resize((spec.image_size, spec.image_size)),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    model.eval()
    predictions = []
    with torch_threads(threads), torch.inference_mode():
        started = time.perf_counter()
        for row in data.split_rows(split):
            image = Image.fromarray(load_crop(root, row, side, fit))
            predictions.append(int(model(transform(image)[None]).argmax(1)))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "n": len(predictions), "predictions": predictions}


def submit_time(
    model: nn.Module,
    image_size: int,
    normalization: Mapping[str, Sequence[float]],
    data: PreparedData,
    *,
    threads: int = 2,
    split: str = "test",
) -> dict[str, Any]:
    """The submission's wall time: every crop of ``split`` decoded from its source file on disk, batched,
    preprocessed at ``image_size`` with ``normalization`` and predicted (``measure_submit_time``)."""
    root, side, fit = _source(data)

    def predict_batch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = preprocess(batch, image_size, normalization["mean"], normalization["std"])
            return model(x).argmax(1).numpy()

    model.eval()
    with torch_threads(threads):
        return measure_submit_time(predict_batch, data.split_rows(split), lambda r: load_crop(root, r, side, fit))


def _source(data: PreparedData) -> tuple[Path, int, str]:
    """Where a prepared data set's photos are and how its crops were cut: root, cache side, fit."""
    return (
        Path(data.meta["source_root"]),
        int(data.meta["config"]["cache_side"]),
        data.meta["config"].get("fit", "pad"),
    )


def floor_ms(macs: int, gflops: float) -> float:
    """The compute floor for one forward pass: 2 * MACs FLOPs at ``gflops`` GFLOP/s, in ms."""
    if macs < 0 or not gflops > 0:
        raise ValueError(f"need macs >= 0 and gflops > 0, got macs={macs!r}, gflops={gflops!r}")
    return 2.0 * macs / (gflops * 1e9) * 1e3


def _summary(times_ms: list[float]) -> dict[str, float | int]:
    ordered = sorted(times_ms)
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": float(np.percentile(ordered, 90)),
        "mean_ms": statistics.fmean(ordered),
        "min_ms": ordered[0],
        "runs": len(ordered),
    }


def _example_input(model: nn.Module, batch_size: int, image_size: int) -> torch.Tensor:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def profile_model(
    model: nn.Module, spec: ModelSpec, data: PreparedData, *, threads: int = 2, split: str = "test", runs: int = 50
) -> dict[str, Any]:
    """Everything the leaderboard needs about one model's cost, measured with one harness: batch-1 latency,
    batch-32 throughput, the submit time of ``split`` decoded from the files on disk (decode and preprocessing
    included), MACs, parameters, saved size and the machine."""
    model.eval()
    size = spec.image_size
    submit = submit_time(model, size, spec.normalization, data, threads=threads, split=split)
    return {
        "latency_b1": latency_for_model(model, size, 1, threads, runs=runs),
        "throughput_b32": throughput(model, size, 32, threads, runs=max(3, runs // 10)),
        "submit": {k: v for k, v in submit.items() if k != "predictions"},
        "submit_predictions": submit["predictions"],
        "macs": count_macs(model, size),
        "params": count_params(model),
        "size_bytes": saved_size_bytes(model),
        "image_size": size,
        "threads": threads,
        "machine": machine_info(),
    }
