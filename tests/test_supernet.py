"""Tests for trashlib.supernet: the elastic EfficientNet-Lite0, its sub-networks, training, latency and search."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from trashlib.candidate import CandidateRecord, load_candidate, save_candidate
from trashlib.cli import build_parser
from trashlib.models import LITE0_SUBNET, ModelError, ModelSpec, build_model, load_model, save_model
from trashlib.quantize import QuantizeError, calibration_batches, deployed
from trashlib.run import Run
from trashlib.supernet import (
    ElasticLite0,
    OfaSpace,
    SandwichLoss,
    SubnetConfig,
    SubnetEvaluator,
    SupernetError,
    build_subnet,
    careful_subnet_timer,
    check_runtime,
    front_trials,
    kendall_tau,
    latency_check,
    load_supernet,
    open_ofa_study,
    pick_within,
    pick_within_careful,
    recalibrate_bn,
    recalibration_images,
    run_ofa_search,
    save_supernet,
    subnet_spec,
    train_supernet,
)
from trashlib.train import TrainConfig, TrainError, preprocess
from trashlib.tune import SearchSettings, TuneError, evaluate_trial

CLASSES = ["metal", "paper", "plastic"]
SPACE = OfaSpace(resolutions=(32, 64), expand_ratios=(3, 6))


@pytest.fixture(scope="module")
def supernet() -> ElasticLite0:
    net, _ = ElasticLite0.pretrained(CLASSES)
    return net.eval()


def images(n: int, side: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_channel_sorting_keeps_the_function_and_ranks_importance() -> None:
    original = build_model("efficientnet_lite0", len(CLASSES), pretrained=True).eval()
    net = copy.deepcopy(original)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    supernet, importances = ElasticLite0.from_network(net, CLASSES)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the source is left as it was
    assert supernet.net is not net
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(original(x), supernet.eval()(x), atol=1e-4)
    moved = original._blocks[1]._project_conv.weight.abs().sum(dim=(0, 2, 3))
    assert not torch.equal(moved, supernet.net._blocks[1]._project_conv.weight.abs().sum(dim=(0, 2, 3)))
    assert importances[0].size == 0  # the first block has no expansion
    for scores in importances[1:]:
        assert scores.size > 0 and np.all(np.diff(scores) <= 0), "importances are not in descending order"
    with pytest.raises(SupernetError, match="needs a whole EfficientNet-Lite0"):
        ElasticLite0.from_network(build_subnet(supernet, SPACE.smallest()), CLASSES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extracted_subnet_gives_the_supernets_logits(supernet: ElasticLite0, seed: int) -> None:
    config = SPACE.sample(random.Random(seed))
    x = torch.randn(3, 3, config.resolution, config.resolution, generator=torch.Generator().manual_seed(seed))
    sub = build_subnet(supernet, config).eval()
    supernet.active = config
    with torch.no_grad():
        expected, got = supernet(x), sub(x)
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()
    assert len(sub._blocks) == sum(config.depths)
    kept = config.kept_blocks()
    for position, index in enumerate(kept):
        block = sub._blocks[position]
        assert block._depthwise_conv.out_channels == config.widths[index]
    # a narrower sub-network is a different function
    smaller = SPACE.smallest()
    supernet.active = smaller
    with torch.no_grad():
        narrow = supernet(torch.randn(1, 3, smaller.resolution, smaller.resolution))
    assert narrow.shape == (1, len(CLASSES))


def test_bn_recalibration_is_deterministic_and_changes_statistics(supernet: ElasticLite0) -> None:
    config = SPACE.smallest()
    crops = recalibration_images(images(200), 100, seed=3)
    assert np.array_equal(crops, recalibration_images(images(200), 100, seed=3))
    a = recalibrate_bn(build_subnet(supernet, config), crops, config.resolution, batch_size=32)
    b = recalibrate_bn(build_subnet(supernet, config), crops, config.resolution, batch_size=32)
    before = build_subnet(supernet, config).state_dict()
    state_a, state_b = a.state_dict(), b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["_bn0.running_mean"], before["_bn0.running_mean"])
    assert not a.training
    assert a._bn0.momentum == 0.1  # momentum restored
    with pytest.raises(SupernetError, match="at least one training crop"):
        recalibrate_bn(a, crops[:0], config.resolution)


def test_subnet_reloads_from_spec_and_state_dict(supernet: ElasticLite0, tmp_path: Path) -> None:
    config = SPACE.sample(random.Random(7))
    sub = build_subnet(supernet, config).eval()
    spec = subnet_spec(config, CLASSES)
    assert spec.name == LITE0_SUBNET and spec.image_size == config.resolution
    path = save_model(sub, tmp_path / "model.pt", spec)
    loaded = load_model(path)  # torch.load(weights_only=True) inside
    assert loaded.spec == spec and loaded.spec.subnet == config.to_dict()
    x = torch.randn(2, 3, config.resolution, config.resolution)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), sub(x))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    # through the candidate code, as notebooks 03 to 05 read it
    run = Run(tmp_path / "run")
    record = CandidateRecord(candidate="searched", model=LITE0_SUBNET, image_size=config.resolution, f1_test=0.5)
    save_candidate(run, "search", record, sub, spec, params={})
    candidate = load_candidate(run, "search", "searched")
    assert candidate is not None and candidate.spec == spec
    with torch.no_grad():
        assert torch.equal(candidate.model(x), sub(x))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depths": (1, 3, 2, 3, 3, 4, 1)}, r"depths'\]\[1\]=3: stage 1 has 2 block"),
        ({"depths": (1, 2, 2)}, r"depths'\] must be a list of 7"),
        ({"widths": (32, 97, *[96] * 14)}, r"widths'\]\[1\]=97: block 1 expands to 96"),
        ({"widths": (16, *[96] * 15)}, r"widths'\]\[0\]=16: block 0 has no expansion"),
        ({"resolution": 100}, r"resolution'\]: image_size must be a multiple of 32"),
    ],
)
def test_setting_outside_the_supernet_is_refused(change: dict, message: str) -> None:
    largest = SubnetConfig.largest(64)
    fields = {"depths": largest.depths, "widths": largest.widths, "resolution": largest.resolution, **change}
    with pytest.raises(SupernetError, match=message):
        SubnetConfig(**fields)
    bad = {**largest.to_dict(), **{k: list(v) if isinstance(v, tuple) else v for k, v in change.items()}}
    with pytest.raises(ModelError, match=message):  # the spec refuses it too, so a saved file cannot carry it
        ModelSpec.create(LITE0_SUBNET, CLASSES, 64, subnet=bad)


def test_ratio_and_space_errors_name_the_parameter() -> None:
    with pytest.raises(SupernetError, match=r"ratios\[3\]=8: block 3 expands at most 6x"):
        SubnetConfig.from_ratios([1, 2, 2, 3, 3, 4, 1], [1, 6, 6, 8, *[6] * 12], 64)
    with pytest.raises(SupernetError, match="resolutions: 100 is not a multiple of 32"):
        OfaSpace(resolutions=(100,))
    with pytest.raises(SupernetError, match="expand_ratios must be ints from 1 to 6"):
        OfaSpace(expand_ratios=(3, 7))
    with pytest.raises(ModelError, match="'lite0_subnet' spec needs its 'subnet' dict"):
        ModelSpec.create(LITE0_SUBNET, CLASSES, 64)
    with pytest.raises(ModelError, match="'subnet' dict is only for 'lite0_subnet' models, not 'mnasnet1_0'"):
        ModelSpec.create("mnasnet1_0", CLASSES, 64, subnet=SubnetConfig.largest(64).to_dict())
    with pytest.raises(ModelError, match="subnet= is required for model 'lite0_subnet'"):
        build_model(LITE0_SUBNET, 3, 64)


def test_unknown_or_missing_runtime_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QuantizeError, match="runtime 'tensorrt' is unknown; valid runtimes: onnxruntime-int8"):
        check_runtime("tensorrt")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    with pytest.raises(QuantizeError, match="needs the packages onnxruntime, which are not installed"):
        check_runtime("onnxruntime-int8")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    with pytest.raises(QuantizeError, match="'openvino-int8' needs the packages openvino, which are not installed"):
        check_runtime("openvino-int8")
    check_runtime("onnxruntime-int8")
    with pytest.raises(TuneError, match="SearchSettings.runtime must be one of"):
        SearchSettings(runtime="tflite")


class Interrupt(Exception):
    pass


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fresh_supernet() -> ElasticLite0:
    torch.manual_seed(0)  # the fresh head
    return ElasticLite0.pretrained(CLASSES)[0]


def test_supernet_trains_resumes_and_refuses_another_class_list(tmp_path: Path) -> None:
    train = (images(16, seed=1), np.arange(16) % 3)
    val = (images(6, seed=2), np.arange(6) % 3)
    config = TrainConfig.for_spec(
        subnet_spec(SPACE.largest(), CLASSES), epochs=2, batch_size=8, augment=0.0, lr=1e-3, threads=1
    )
    whole = fresh_supernet()
    train_supernet(whole, train, val, space=SPACE, config=config, n_random=1, progress=False)
    checkpoint = tmp_path / "supernet_checkpoint.pt"

    def stop(epoch: int, row: dict[str, float]) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        train_supernet(
            fresh_supernet(),
            train,
            val,
            space=SPACE,
            config=config,
            n_random=1,
            checkpoint_path=checkpoint,
            progress=False,
            on_epoch=stop,
        )
    resumed_net = fresh_supernet()
    resumed = train_supernet(
        resumed_net, train, val, space=SPACE, config=config, n_random=1, checkpoint_path=checkpoint, progress=False
    )
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2
    assert all(
        torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed_net.state_dict().values(), strict=False)
    )
    with pytest.raises(TrainError, match=r"differs in .*step loss"):  # another sandwich setting does not resume
        train_supernet(
            fresh_supernet(),
            train,
            val,
            space=SPACE,
            config=config,
            n_random=2,
            checkpoint_path=checkpoint,
            progress=False,
        )
    saved = save_supernet(whole, tmp_path / "supernet.pt")
    loaded = load_supernet(saved, CLASSES)
    assert all(
        torch.equal(a, b)
        for a, b in zip(whole.net.state_dict().values(), loaded.net.state_dict().values(), strict=False)
    )
    with pytest.raises(SupernetError, match=r"trained on classes \['metal', 'paper', 'plastic'\], but this data has"):
        load_supernet(saved, ["metal", "paper", "glass"])
    with pytest.raises(SupernetError, match="not a trashlib supernet"):
        load_supernet(checkpoint, CLASSES)
    with pytest.raises(SupernetError, match="must be the largest resolution 64"):
        train_supernet(whole, train, val, space=SPACE, config=TrainConfig(image_size=32))


def test_only_the_largest_sub_network_moves_the_running_statistics(supernet: ElasticLite0) -> None:
    net = copy.deepcopy(supernet).train()
    alone = copy.deepcopy(supernet).train()
    raw = torch.from_numpy(images(4)).permute(0, 3, 1, 2)
    targets = torch.tensor([0, 1, 2, 0])
    loss = SandwichLoss(SPACE, n_random=2, seed=0)
    torch.manual_seed(0)  # the same stochastic-depth draws for the largest in both
    loss(net, raw, targets, step=0)
    largest = SPACE.largest()
    alone.active = largest
    torch.manual_seed(0)
    with torch.no_grad():
        alone(preprocess(raw.permute(0, 2, 3, 1), largest.resolution, loss.mean, loss.std))
    bn_keys = [k for k in net.state_dict() if "running_" in k]
    assert bn_keys
    for key in bn_keys:  # the sandwich's smaller sub-networks left no trace in the statistics
        assert torch.allclose(net.state_dict()[key], alone.state_dict()[key], atol=1e-6), key
    assert not torch.equal(net.state_dict()[bn_keys[0]], supernet.state_dict()[bn_keys[0]])  # the largest did
    assert all(bn.momentum == 0.1 for bn in net.modules() if isinstance(bn, torch.nn.BatchNorm2d))  # restored


def test_kendall_tau_matches_the_definition() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    with pytest.raises(SupernetError, match="equal length"):
        kendall_tau([1, 2], [1])


def test_latency_check_and_search_run_at_smoke_size(supernet: ElasticLite0, tmp_path: Path) -> None:
    crops = images(32)
    check = latency_check(supernet, SPACE, crops, n=4, quick_runs=3, careful_runs=5, rounds=2)
    assert len(check.quick_ms) == len(check.careful_ms) == 4 and all(t > 0 for t in check.careful_ms)
    assert -1.0 <= check.tau <= 1.0
    evaluator = SubnetEvaluator(supernet, crops, (images(12, seed=5), np.arange(12) % 3), latency_runs=3)
    study = open_ofa_study(tmp_path / "journal.log", "ofa", SPACE, "onnxruntime-int8", seed=0)
    run_ofa_search(study, evaluator, SPACE, n_trials=3)
    assert len(study.trials) == 3
    again = open_ofa_study(tmp_path / "journal.log", "ofa", SPACE, "onnxruntime-int8", seed=0)
    run_ofa_search(again, evaluator, SPACE, n_trials=3)  # a rerun adds nothing
    assert len(again.trials) == 3
    front = front_trials(again)
    assert front and all(SubnetConfig.from_dict(t.user_attrs["subnet"]) for t in front)
    with pytest.raises(SupernetError, match="was made with settings"):
        open_ofa_study(tmp_path / "journal.log", "ofa", SPACE, "onnxruntime-fp32")


def _trials(points: list[tuple[float, float]]) -> list[optuna.trial.FrozenTrial]:
    """Completed two-objective trials at ``(val_f1, latency_ms)``, numbered in order."""
    return [optuna.trial.create_trial(values=[f1, ms], params={}, distributions={}) for f1, ms in points]


def test_pick_within_takes_the_most_accurate_point_inside_the_speed_budget() -> None:
    trials = _trials([(0.70, 0.3), (0.80, 0.45), (0.86, 0.5), (0.86, 0.6), (0.90, 1.0)])
    for index, trial in enumerate(trials):
        trial.number = index
    assert pick_within(trials, 2.0, 4.0).number == 2  # budget 0.5 ms: 0.86 at 0.5, not the later 0.86 at 0.6
    assert pick_within(trials, 2.0, 3.0).number == 2  # budget 0.67 ms: a tie on F1 goes to the faster
    assert pick_within(trials, 2.0, 1.5).number == 4
    assert pick_within(trials, 1.0, 10.0).number == 0  # nothing within 0.1 ms: the fastest
    for bad in (0, -1.0, float("nan"), True, "4"):
        with pytest.raises(SupernetError, match="ofa_speedup must be a number > 0"):
            pick_within(trials, 2.0, bad)  # type: ignore[arg-type]
    with pytest.raises(SupernetError, match="reference latency must be > 0"):
        pick_within(trials, 0.0, 4.0)
    with pytest.raises(SupernetError, match="no completed trial"):
        pick_within([], 2.0, 4.0)


def test_careful_pick_holds_the_budget_on_the_careful_timing_not_the_quick_one() -> None:
    # (val F1, quick ms); the baseline is 2.0 ms, the budget at 4x 0.5 ms, so slack 1.5 re-times up to 0.75 ms
    trials = _trials([(0.70, 0.30), (0.80, 0.45), (0.86, 0.48), (0.88, 0.70), (0.90, 1.0)])
    for index, trial in enumerate(trials):
        trial.number = index
    careful = {0: 0.30, 1: 0.49, 2: 0.60, 3: 0.50, 4: 0.9}  # trial 2 is slower than the quick timing said
    asked: list[list[int]] = []

    def timer(points: list[optuna.trial.FrozenTrial]) -> tuple[float, list[float]]:
        asked.append([t.number for t in points])
        return 2.0, [careful[t.number] for t in points]

    assert pick_within(trials, 2.0, 4.0).number == 2  # the quick pick
    pick = pick_within_careful(trials, 2.0, 4.0, timer)
    assert sorted(asked[-1]) == [0, 1, 2, 3]  # 1.0 ms is past the slack: not re-timed
    assert pick.trial.number == 3 and pick.baseline_ms == 2.0  # 0.50 ms careful: 4.0x, the most accurate within
    assert [r["trial"] for r in pick.candidates] == [0, 1, 3, 2]  # carefully fastest first
    assert next(r for r in pick.candidates if r["trial"] == 2)["speedup"] == pytest.approx(2.0 / 0.6)
    assert pick_within_careful(trials, 2.0, 4.0, timer, slack=1.0).trial.number == 1  # 0.86 re-timed out of it
    assert asked[-1] == [2, 1, 0]  # nearest the budget first
    assert pick_within_careful(trials, 2.0, 4.0, timer, max_candidates=2).trial.number == 1  # trials 2 and 1
    careful.update({0: 0.7, 1: 0.8})
    # nothing within 0.1 ms, not even by the quick timing: the fastest point is timed and taken
    assert pick_within_careful(trials, 1.0, 10.0, timer).trial.number == 0 and asked[-1] == [0]
    assert pick_within_careful(trials, 2.0, 4.0, timer, slack=1.0).trial.number == 2  # none within: the fastest
    for bad in (0.5, float("inf"), True, "2"):
        with pytest.raises(SupernetError, match="ofa_pick_slack must be a number >= 1"):
            pick_within_careful(trials, 2.0, 4.0, timer, slack=bad)  # type: ignore[arg-type]
    with pytest.raises(SupernetError, match="at least 1 candidate"):
        pick_within_careful(trials, 2.0, 4.0, timer, max_candidates=0)
    with pytest.raises(SupernetError, match="ofa_speedup must be a number > 0"):
        pick_within_careful(trials, 2.0, 0, timer)
    with pytest.raises(SupernetError, match="the careful timer returned"):
        pick_within_careful(trials, 2.0, 4.0, lambda points: (2.0, [0.5]))
    with pytest.raises(SupernetError, match="the careful timer returned"):
        pick_within_careful(trials, 2.0, 4.0, lambda points: (float("nan"), [0.5] * len(points)))


def test_careful_timer_times_subnets_beside_the_baseline(supernet: ElasticLite0) -> None:
    crops = images(32)
    configs = [SPACE.smallest(), SPACE.sample(random.Random(1))]
    trials = _trials([(0.5, 1.0), (0.6, 2.0)])
    for index, (trial, config) in enumerate(zip(trials, configs, strict=True)):
        trial.number = index
        trial.set_user_attr("subnet", config.to_dict())
    largest = SPACE.largest()
    base = deployed(build_subnet(supernet, largest).eval(), subnet_spec(largest, CLASSES), "onnxruntime-fp32")
    timer = careful_subnet_timer(supernet, "onnxruntime-int8", crops, (base, largest.resolution), rounds=2, runs=3)
    baseline_ms, times = timer(trials)
    assert baseline_ms > 0 and len(times) == 2 and all(ms > 0 for ms in times)
    with pytest.raises(QuantizeError, match="not-a-runtime"):
        careful_subnet_timer(supernet, "not-a-runtime", crops, (base, largest.resolution))


def test_mnasnet_trial_is_timed_in_the_deploy_runtime() -> None:
    from trashlib.tune import ArchConfig, BlockConfig

    arch = ArchConfig(
        image_size=32,
        stem_channels=8,
        blocks=(BlockConfig(op="mbconv3", kernel=3, se=False, layers=1, stride=2, channels=16),),
        head_channels=32,
        dropout=0.0,
        lr=0.01,
        weight_decay=0.0,
        augment=0.0,
    )
    data = (images(16, side=32), np.arange(16) % 3)
    result = evaluate_trial(arch, data, data, 3, 1, latency_runs=3, runtime="onnxruntime-int8")
    assert result.latency_ms > 0 and result.epochs_run == 1


def test_the_runners_runtime_choices_are_the_latency_runtimes() -> None:
    from trashlib.quantize import LATENCY_RUNTIMES
    from trashlib.workbook import PARAMETER_CHOICES

    assert PARAMETER_CHOICES["runtime"] == LATENCY_RUNTIMES
    tune_create = build_parser()._subparsers._group_actions[0].choices["tune-create"]  # type: ignore[union-attr]
    runtime = next(a for a in tune_create._actions if a.dest == "runtime")
    assert set(runtime.choices) == set(LATENCY_RUNTIMES)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_runs_the_same_sub_network_as_onnxruntime(supernet: ElasticLite0, precision: str) -> None:
    config = SPACE.sample(random.Random(3))
    model = build_subnet(supernet, config).eval()
    spec = subnet_spec(config, CLASSES)
    crops = images(32)
    calibration = calibration_batches(crops, spec, batch_size=16, max_images=32)
    x = np.random.default_rng(1).standard_normal((1, 3, config.resolution, config.resolution)).astype(np.float32)
    ort_out = np.asarray(deployed(model, spec, f"onnxruntime-{precision}", calibration=calibration)(x)[0])
    ov_out = deployed(model, spec, f"openvino-{precision}", calibration=calibration)(x)
    assert ov_out.shape == ort_out.shape == (1, len(CLASSES))
    tolerance = 1e-4 if precision == "fp32" else 0.15 * float(np.abs(ort_out).max()) + 1e-3
    np.testing.assert_allclose(ov_out, ort_out, atol=tolerance)
