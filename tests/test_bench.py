"""Tests for trashlib.bench: timing harness, MACs, sizes and submit time (no time thresholds)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trashlib.bench import (
    compare_latency,
    count_macs,
    count_params,
    floor_ms,
    latency_for_model,
    machine_info,
    measure_latency,
    measure_submit_time,
    peak_gemm_gflops,
    saved_size_bytes,
    throughput,
)


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)
    )


def busy(n: int) -> int:
    return sum(i * i for i in range(n))


def test_measure_latency_summary() -> None:
    calls = []
    result = measure_latency(lambda: calls.append(busy(200)), warmup=3, runs=12)
    assert len(calls) == 15 and result["runs"] == 12
    assert 0 < result["median_ms"] <= result["p90_ms"]
    assert result["min_ms"] <= result["median_ms"] and result["mean_ms"] > 0


def test_measure_latency_min_seconds_extends_runs() -> None:
    result = measure_latency(lambda: busy(100), warmup=0, runs=1, min_seconds=0.02)
    assert result["runs"] > 1
    with pytest.raises(ValueError, match="runs"):
        measure_latency(lambda: None, runs=0)


def test_latency_uses_the_models_own_image_size_and_restores_threads() -> None:
    seen: list[tuple[int, ...]] = []
    model = tiny_net()
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    result = latency_for_model(model, image_size=96, batch_size=2, threads=1, warmup=1, runs=3)
    assert result["input_shape"] == [2, 3, 96, 96] and set(seen) == {(2, 3, 96, 96)}
    assert (result["image_size"], result["batch_size"], result["threads"]) == (96, 2, 1)
    assert result["median_ms"] > 0 and result["p90_ms"] >= result["median_ms"]
    assert torch.get_num_threads() == 1


def test_throughput() -> None:
    result = throughput(tiny_net(), image_size=32, batch_size=4, warmup=1, runs=3)
    assert result["images_per_s"] > 0 and result["batch_size"] == 4


def test_count_macs_matches_analytic_counts() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, 16) == 8 * 16 * 16 * 3 * 3 * 3
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(nn.Sequential(nn.Conv2d(3, 8, 1), depthwise), 10) == 8 * 10 * 10 * 3 + 8 * 10 * 10 * 9
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert count_macs(linear, 4) == 48 * 10


def test_params_and_saved_size() -> None:
    model = nn.Linear(100, 10)
    assert count_params(model) == 1010
    size = saved_size_bytes(model)
    assert size > 1010 * 4 and size < 1010 * 4 + 4096


def test_compare_latency_orders_fast_and_slow() -> None:
    results = compare_latency(
        {"fast": lambda: busy(300), "slow": lambda: busy(3000)}, rounds=3, runs_per_round=4, warmup=1
    )
    assert list(results) == ["fast", "slow"]
    assert results["fast"]["ratio_vs_first"] == 1.0
    assert results["slow"]["ratio_vs_first"] > 1.0
    assert results["slow"]["runs"] == 12 and results["slow"]["p90_ms"] >= results["slow"]["median_ms"]
    with pytest.raises(ValueError, match="variants"):
        compare_latency({})


def test_submit_time_counts_every_item(tmp_path: Path) -> None:
    paths = []
    for i in range(10):
        path = tmp_path / f"{i}.npy"
        np.save(path, np.full((8, 8, 3), i, np.uint8))
        paths.append(path)
    batches: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.shape[1:] == (8, 8, 3)
        batches.append(len(batch))
        return batch[:, 0, 0, 0].astype(np.int64) % 6

    result = measure_submit_time(predict, paths, np.load, batch_size=4)
    assert result["n"] == 10 and batches == [4, 4, 2]
    assert result["predictions"] == [i % 6 for i in range(10)]
    assert result["seconds"] > 0 and result["images_per_s"] > 0
    with pytest.raises(ValueError, match="returned 1 labels for a batch of 4"):
        measure_submit_time(lambda batch: np.zeros(1), paths, np.load, batch_size=4)


def test_gemm_rate_and_floor() -> None:
    gflops = peak_gemm_gflops(n=64, repeats=3)
    assert gflops > 0 and math.isfinite(gflops)
    assert floor_ms(macs=500_000_000, gflops=100.0) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        floor_ms(1000, 0.0)


def test_machine_info() -> None:
    info = machine_info()
    assert info["logical_cores"] >= 1 and info["torch_threads"] == 1
    assert info["torch"] == torch.__version__ and info["cpu_model"]
    assert {"torchvision", "onnxruntime", "python", "platform"} <= set(info)
