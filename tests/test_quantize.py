"""int8 (PT2E, FX fallback), ONNX export with model card, ONNX Runtime fp32/int8, deployment records, leaderboard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import six_class_photos
from torch import nn

from trashlib import quantize
from trashlib.bench import runtime_table
from trashlib.candidate import (
    NoWinner,
    Winner,
    assess_candidate,
    leaderboard,
    list_candidates,
    pareto_front,
    pick_for_deployment,
    save_candidate,
    ship_winner,
)
from trashlib.data import PrepareConfig, prepare_dataset
from trashlib.models import ModelSpec, build_model
from trashlib.predict import DEPLOY_RUNNERS, load_model
from trashlib.quantize import (
    ChunkedGraph,
    OrtModel,
    QuantizeError,
    agreement,
    calibration_batches,
    deploy_candidate,
    export_onnx,
    onnx_int8_aware_finetune,
    quantize_int8,
    quantize_onnx_int8,
    read_model_card,
    stem_convolutions,
)
from trashlib.run import open_run
from trashlib.score import competition_score
from trashlib.train import TrainConfig

SIZE = 32


class Small(nn.Module):
    """A conv net small enough to quantize in a second or two."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class DataDependent(Small):
    """Python control flow on tensor values: neither torch.export nor FX can trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        if float(y.mean()) > 1e9:
            y = y * 2
        return self.head(y.mean((2, 3)))


SPEC = ModelSpec("small", ("a", "b", "c", "d", "e", "f"), SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def small() -> nn.Module:
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    images = np.random.default_rng(0).integers(0, 256, size=(48, SIZE, SIZE, 3), dtype=np.uint8)
    return calibration_batches(images, SPEC, batch_size=16)


def test_empty_calibration_set_is_an_error(small):
    with pytest.raises(QuantizeError, match="calibration set is empty"):
        calibration_batches(np.zeros((0, SIZE, SIZE, 3), np.uint8), SPEC)
    with pytest.raises(QuantizeError, match="calibration set is empty"):
        quantize_int8(small, SPEC, [])


def test_pt2e_int8_agrees_with_fp32_and_runs_any_batch(small, batches):
    model, method, fallback = quantize_int8(small, SPEC, batches)
    assert method == "pt2e-x86" and fallback is None and isinstance(model, ChunkedGraph)
    check = agreement(small, model, batches)
    assert check["top1_agreement"] >= 0.9 and check["max_abs_diff"] < 1.0
    model.eval(), model.train()  # exported graphs have no train mode: harmless
    with torch.inference_mode():
        for n in (1, 5, 40):
            x = torch.randn(n, 3, SIZE, SIZE)
            assert model(x).shape == (n, 6)


class _SubclassedConv(nn.Conv2d):
    """A Conv2d subclass: PT2E's X86InductorQuantizer matches modules by type and leaves it in float."""


class SubclassedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _SubclassedConv(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1))


def test_pt2e_quantizes_every_convolution_of_efficientnet_lite0(batches):
    model = build_model("efficientnet_lite0", 6).eval()  # its TF 'SAME' convolutions are plain nn.Conv2d
    assert isinstance(quantize.quantize_pt2e(model, SPEC, batches), ChunkedGraph)  # raises if one stayed float


def test_pt2e_that_leaves_convolutions_float_is_an_error_and_fx_takes_over(batches):
    model = SubclassedConvNet().eval()
    with pytest.raises(QuantizeError, match=r"PT2E left 1 of 1 convolutions in float"):
        quantize.quantize_pt2e(model, SPEC, batches)
    _, method, fallback = quantize_int8(model, SPEC, batches)
    assert method == "fx-x86" and "left 1 of 1 convolutions in float" in fallback


def test_fx_is_the_fallback_when_pt2e_fails(small, batches, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("export not supported here")

    monkeypatch.setattr(quantize, "quantize_pt2e", broken)
    model, method, fallback = quantize_int8(small, SPEC, batches)
    assert method == "fx-x86" and "export not supported here" in fallback
    assert agreement(small, model, batches)["top1_agreement"] >= 0.9


def test_a_model_neither_path_can_quantize_gets_a_clear_error(batches):
    model = DataDependent().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(QuantizeError, match="cannot be quantized: PT2E failed.*FX fallback failed"):
        quantize_int8(model, SPEC, batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_onnx_export_is_one_checked_file_with_a_model_card(small, batches, tmp_path: Path):
    path = export_onnx(small, SPEC, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    card = read_model_card(path)
    assert card["class_names"] == list(SPEC.class_names) and card["image_size"] == SIZE
    assert card["input"]["mean"] == list(SPEC.mean) and card["input"]["layout"] == "NCHW"
    session = OrtModel(path, threads=1)
    check = agreement(small, session, batches)
    assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4


def test_onnx_static_int8_is_qdq_keeps_the_card_and_leaves_no_temporary_file(small, batches, tmp_path: Path):
    fp32 = export_onnx(small, SPEC, tmp_path / "fp32.onnx")
    int8 = quantize_onnx_int8(fp32, tmp_path / "int8.onnx", batches)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert read_model_card(int8)["class_names"] == list(SPEC.class_names)
    assert int8.stat().st_size < fp32.stat().st_size
    assert agreement(small, OrtModel(int8, 1), batches)["top1_agreement"] >= 0.8


def test_onnx_int8_keeps_the_stem_convolution_fp32_unless_asked_to_quantize_it(small, batches, tmp_path: Path):
    fp32 = export_onnx(small, SPEC, tmp_path / "fp32.onnx")
    stem = stem_convolutions(onnx.load(str(fp32)))
    assert len(stem) == 1

    def stem_input(path: Path) -> tuple[list[str], list[str]]:
        """The quantize/dequantize operators between the image and the stem, and on the stem's weights."""
        graph = onnx.load(str(path)).graph
        producers = {out: node for node in graph.node for out in node.output}

        def chain(name: str) -> tuple[list[str], str]:
            ops = []
            while name in producers and producers[name].op_type in ("QuantizeLinear", "DequantizeLinear"):
                ops.append(producers[name].op_type)
                name = producers[name].input[0]
            return ops, name

        stems = [node for node in graph.node if node.op_type == "Conv" and chain(node.input[0])[1] == "images"]
        assert len(stems) == 1
        return chain(stems[0].input[0])[0], chain(stems[0].input[1])[0]

    kept = quantize_onnx_int8(fp32, tmp_path / "kept.onnx", batches)
    assert stem_input(kept) == ([], [])  # the image and the stem's weights reach the convolution as floats
    quantized = quantize_onnx_int8(fp32, tmp_path / "all.onnx", batches, float_stem=False)
    assert stem_input(quantized) == (["DequantizeLinear", "QuantizeLinear"], ["DequantizeLinear"])
    for path in (kept, quantized):
        assert agreement(small, OrtModel(path, 1), batches)["top1_agreement"] >= 0.8


def test_int8_aware_fake_quantization_is_the_code_onnxruntime_writes(batches, tmp_path: Path):
    """The fine-tune's fake quantization of a convolution's weight and input is what quantize_onnx_int8 then stores."""
    from onnx import numpy_helper

    from trashlib.quantize import _ActivationFakeQuant, _WeightFakeQuant

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.Flatten()).eval()
    fp32 = export_onnx(net, SPEC, tmp_path / "fp32.onnx")
    calibration = [torch.cat(batches)]  # one batch: onnxruntime's MinMax range is that batch's
    graph = onnx.load(str(quantize_onnx_int8(fp32, tmp_path / "int8.onnx", calibration))).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    second = [node for node in graph.node if node.op_type == "Conv"][1]
    weight_dq = producers[second.input[1]]
    code, scale = values[weight_dq.input[0]], values[weight_dq.input[1]]
    stored = code.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(_WeightFakeQuant()(net[2].weight).detach().numpy(), stored, rtol=0, atol=1e-6)

    act_dq = producers[second.input[0]]
    act_scale, act_zero = float(values[act_dq.input[1]]), int(values[act_dq.input[2]])
    observer = _ActivationFakeQuant().train()
    with torch.no_grad():
        observer(net[:2](calibration[0]))
    emulated_scale = float((observer.high - observer.low) / 255)
    assert emulated_scale == pytest.approx(act_scale, rel=1e-5)
    assert int(torch.round(-observer.low / emulated_scale)) == act_zero


def test_int8_aware_finetune_trains_a_copy_and_leaves_no_fake_quantization_behind(small):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(24, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(24) % 6
    before = {k: v.clone() for k, v in small.state_dict().items()}
    config = TrainConfig.for_spec(SPEC, epochs=1, lr=1e-3, batch_size=8, augment=0.0, seed=0, threads=1)
    tuned = onnx_int8_aware_finetune(small, (images, labels), (images, labels), config)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # the input is untouched
    assert set(tuned.state_dict()) == set(before)  # plain layers again: no parametrization, no range buffers
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in tuned.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert not all(torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    x = torch.zeros(2, 3, SIZE, SIZE)
    assert tuned(x).shape == (2, 6) and not tuned.training


def test_int8_aware_finetune_of_a_model_without_layers_to_quantize_is_an_error():
    config = TrainConfig.for_spec(SPEC, epochs=1, batch_size=8, threads=1)
    images = np.zeros((8, SIZE, SIZE, 3), dtype=np.uint8)
    with pytest.raises(QuantizeError, match="no convolution or linear layer"):
        onnx_int8_aware_finetune(
            nn.Identity(), (images, np.zeros(8, dtype=int)), (images, np.zeros(8, dtype=int)), config
        )


def test_stem_convolutions_finds_none_in_a_graph_that_starts_with_another_operator():
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Relu", ["images"], ["r"], name="relu"),
            onnx.helper.make_node("Conv", ["r", "w"], ["logits"], name="conv"),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")],
    )
    assert stem_convolutions(onnx.helper.make_model(graph)) == []


def test_lite0_exports_without_pad_nodes_its_same_padding_inside_the_convolutions(tmp_path: Path):
    model = build_model("efficientnet_lite0", 6).eval()
    spec = ModelSpec("efficientnet_lite0", SPEC.class_names, 64)
    path = export_onnx(model, spec, tmp_path / "lite0.onnx")  # export_onnx itself checks outputs against torch
    graph = onnx.load(str(path)).graph
    assert "Pad" not in {node.op_type for node in graph.node}
    pads = [
        list(onnx.helper.get_attribute_value(a))
        for node in graph.node
        if node.op_type == "Conv"
        for a in node.attribute
        if a.name == "pads"
    ]
    assert [0, 0, 1, 1] in pads and [1, 1, 2, 2] in pads  # TF 'SAME' at stride 2: 3x3 and 5x5 kernels
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(OrtModel(path, threads=1)(x), model(x), atol=1e-4)


def _pad_conv_graph(pads: list[int], value: float = 0.0, mode: str = "constant", second_reader: bool = False):
    """images -> Pad(pads, value, mode) -> Conv(3x3, stride 2) -> logits (and the padded tensor itself, on request)."""
    h = onnx.helper
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    amounts = onnx.numpy_helper.from_array(np.array(pads, dtype=np.int64), "amounts")
    fill = onnx.numpy_helper.from_array(np.array(value, dtype=np.float32), "fill")
    nodes = [
        h.make_node("Pad", ["images", "amounts", "fill"], ["padded"], mode=mode),
        h.make_node("Conv", ["padded", "w"], ["logits"], strides=[2, 2], kernel_shape=[3, 3]),
    ]
    outputs = [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None, 4, None, None])]
    if second_reader:
        nodes.append(h.make_node("Relu", ["padded"], ["relu"]))
        outputs.append(h.make_tensor_value_info("relu", onnx.TensorProto.FLOAT, [1, 3, None, None]))
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        outputs,
        [weight, amounts, fill],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _run_onnx(proto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": x}
    )[0]


def test_pad_folding_keeps_the_outputs_and_leaves_every_pad_it_cannot_fold():
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    same = _pad_conv_graph([0, 0, 0, 0, 0, 0, 1, 1])
    expected = _run_onnx(same, x)
    folded = quantize.fold_pads_into_convs(same)
    onnx.checker.check_model(folded)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert {i.name for i in folded.graph.initializer} == {"w"}
    assert np.allclose(_run_onnx(folded, x), expected, atol=1e-5)
    for unfoldable in (
        _pad_conv_graph([0, 0, 0, 0, 0, 0, 1, 1], value=1.0),  # not zeros
        _pad_conv_graph([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),
        _pad_conv_graph([1, 0, 0, 0, 0, 0, 1, 1]),  # pads the batch
        _pad_conv_graph([0, 0, 0, 0, 0, 0, 1, 1], second_reader=True),
    ):
        before = _run_onnx(unfoldable, x)
        kept = quantize.fold_pads_into_convs(unfoldable)
        assert "Pad" in {n.op_type for n in kept.graph.node}
        assert np.array_equal(_run_onnx(kept, x), before)


def test_an_unexportable_model_is_a_clear_error(tmp_path: Path):
    class ThroughNumpy(Small):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(super().forward(x).detach().numpy().copy())

    with pytest.raises(QuantizeError, match="cannot be exported to ONNX|differ from torch|does not run in onnxruntime"):
        export_onnx(ThroughNumpy().eval(), SPEC, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_runtime_table_times_every_variant_against_the_first_and_its_floor(small, batches):
    int8, _, _ = quantize_int8(small, SPEC, batches)
    rows = runtime_table(
        {"eager": (small, SIZE, 10**6, "fp32"), "int8": (int8, SIZE, 10**6, "int8")},
        threads=1,
        rounds=1,
        batch_sizes=(1,),
    )
    assert [r["variant"] for r in rows] == ["eager", "int8"]
    assert rows[0]["speedup_b1"] == 1.0 and rows[1]["b1_ms"] > 0
    assert all(r["floor_b1_ms"] > 0 and r["x_floor_b1"] > 0 for r in rows)


class _Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_fastest_thread_count_picks_the_quickest_count_and_fewer_threads_on_a_tie(monkeypatch):
    count, ms = quantize.fastest_thread_count(lambda n: _Sleeper(0.004 if n == 2 else 0.001), 32, [2, 1], runs=3)
    assert count == 1 and set(ms) == {1, 2} and ms[2] > ms[1] >= 1.0
    count, _ = quantize.fastest_thread_count(lambda n: _Sleeper(0.004 if n == 1 else 0.001), 32, (1, 2), runs=3)
    assert count == 2
    monkeypatch.setattr(quantize, "compare_models", lambda models, *args: {n: {"median_ms": 0.5} for n in models})
    assert quantize.fastest_thread_count(lambda n: _Sleeper(0.0), 32, (4, 1, 2)) == (1, {1: 0.5, 2: 0.5, 4: 0.5})


@pytest.mark.parametrize("choices", [(), (0, 1), (1.5, 2), (True, 2)])
def test_thread_choices_that_are_not_whole_counts_are_an_error(choices):
    with pytest.raises(QuantizeError, match="thread_choices must be whole numbers >= 1"):
        quantize.fastest_thread_count(lambda n: _Sleeper(0.0), 32, choices)


@pytest.fixture
def tiny(coco_factory, tmp_path):
    root, _ = coco_factory(six_class_photos(36))
    return prepare_dataset(root, tmp_path / "data", PrepareConfig(cache_side=32), progress=False)


def test_deploy_refuses_bad_thread_choices_before_writing_anything(tiny, tmp_path):
    model = build_model("mnasnet0_5", len(tiny.classes), 32).eval()
    spec = ModelSpec.create("mnasnet0_5", tiny.classes, 32)
    run = open_run(tmp_path / "run")
    with pytest.raises(QuantizeError, match=r"thread_choices must be whole numbers >= 1, got \[1, 0\]"):
        deploy_candidate(run, "m", model, spec, {"stage": "baseline"}, tiny, params={}, thread_choices=(1, 0))
    assert not (run.run_dir / "deploy").exists()


def test_deploy_writes_every_runtime_times_the_shipped_path_and_flags_a_failure_as_fp32(tiny, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("mnasnet0_5", len(tiny.classes), 32).eval()
    spec = ModelSpec.create("mnasnet0_5", tiny.classes, 32)
    run = open_run(tmp_path / "run")
    source = {"stage": "baseline", **assess_candidate("baseline", model, spec, tiny, threads=1, latency_runs=3)}
    save_candidate(run, "baseline", source, model, spec, params={})
    records = deploy_candidate(
        run,
        "baseline",
        model,
        spec,
        source,
        tiny,
        params={},
        threads=1,
        latency_runs=3,
        calibration_images=16,
        thread_choices=(1, 2),
    ).records
    assert [r["runtime"] for r in records] == ["pt2e-int8", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]
    assert "thread_b1_ms" not in records[0] and records[0]["threads"] == 1  # PT2E runs in torch at `threads`
    for r in records[1:]:  # each ONNX variant runs at its fastest count, written in its card
        assert set(r["thread_b1_ms"]) == {"1", "2"} and r["threads"] in (1, 2)
        assert r["thread_b1_ms"][str(r["threads"])] == min(r["thread_b1_ms"].values())
        card = json.loads((run.run_dir / "deploy" / r["candidate"] / "model_card.json").read_text())
        assert card["threads_b1"] == r["threads"]
    assert all(r["flagged"] is None and r["macs"] == source["macs"] for r in records)
    assert records[1]["max_abs_diff"] < 1e-3 and records[1]["f1_test"] == pytest.approx(source["f1_test"])
    assert records[3]["max_abs_diff"] < 1e-3 and records[3]["f1_test"] == pytest.approx(source["f1_test"])
    for r in records[1:]:  # the shipped files' submit time runs through predict, in the card's runtime
        assert r["submit_pipeline"].startswith(f"predict ({DEPLOY_RUNNERS[r['runtime']]}")
        assert r["submit_n"] == source["submit_n"] and r["submit_loop_s"] > 0 and r["submit_s"] > 0
        assert r["score_published"] == pytest.approx(competition_score(r["f1_test"], r["submit_s"]))
    for name in ("baseline-onnx-fp32", "baseline-onnx-int8", "baseline-openvino-fp32", "baseline-openvino-int8"):
        folder = run.run_dir / "deploy" / name
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "model.onnx", "model_card.json"]
        card = json.loads((folder / "model_card.json").read_text())
        assert card["runner"] == DEPLOY_RUNNERS[name.removeprefix("baseline-")]
        assert load_model(folder).runtime == card["runner"]
    assert (run.run_dir / "deploy/baseline-openvino-int8/model.onnx").read_bytes() == (
        run.run_dir / "deploy/baseline-onnx-int8/model.onnx"
    ).read_bytes()

    def no_export(*args, **kwargs):
        raise QuantizeError("cannot be exported to ONNX: test")

    monkeypatch.setattr(quantize, "export_onnx", no_export)
    flagged = deploy_candidate(
        run, "other", model, spec, source, tiny, params={}, threads=1, latency_runs=3, calibration_images=16
    ).records
    assert [r["flagged"] is not None for r in flagged] == [False, True, True, True, True]
    assert flagged[1]["f1_test"] == source["f1_test"] and "fp32 kept" in flagged[1]["flagged"]

    board = leaderboard(list_candidates(run))
    assert list(board["score_published"]) == sorted(board["score_published"])
    assert not board.loc["other-onnx-fp32", "deployable"] and board.loc["baseline-onnx-int8", "deployable"]
    assert set(pareto_front(board)) <= set(board.index)
    # an untrained model: qualify everything above 0 here; above 1.0 nothing qualifies and winner/ goes away
    winner = ship_winner(run, board, chance=0.0, baseline_f1=None, max_f1_drop=0.05)
    assert isinstance(winner, Winner) and winner.candidate in ("baseline-onnx-fp32", "baseline-onnx-int8")
    assert (run.run_dir / "winner" / "model.onnx").read_bytes() == (
        run.run_dir / "deploy" / winner.candidate / "model.onnx"
    ).read_bytes()
    none = ship_winner(run, board, chance=1.0, baseline_f1=None, max_f1_drop=0.05)
    assert isinstance(none, NoWinner) and "above chance 1.000" in none.reason
    assert not (run.run_dir / "winner").exists()
    picked = pick_for_deployment(list_candidates(run, ("baseline",)), top_n=1)
    assert picked[0]["candidate"] == "baseline"
    records = [
        {"stage": "baseline", "candidate": "baseline", "score_published": 0.5, "latency_b1_ms": 2.0},
        {"stage": "baseline", "candidate": "teacher", "score_published": 0.1, "latency_b1_ms": 3.0},
        {"stage": "search", "candidate": "searched", "score_published": 0.3, "latency_b1_ms": 1.0},
    ]
    names = [r["candidate"] for r in pick_for_deployment(records, 1, always=["search/searched", "compress/none"])]
    assert names == ["baseline", "teacher", "searched"]
    names = [r["candidate"] for r in pick_for_deployment(records, 2, always=["search/searched"])]
    assert names == ["baseline", "teacher", "searched"]
    with pytest.raises(ValueError, match="not in the run directory"):
        pick_for_deployment(list_candidates(run), 1, ["compress/missing"])
    with pytest.raises(ValueError, match="rank_by"):
        leaderboard(list_candidates(run), "accuracy")


def test_quantization_aware_training_gives_a_runnable_int8_model_and_leaves_the_source(small, tiny):
    from trashlib.quantize import quantization_aware_training

    before = {k: v.clone() for k, v in small.state_dict().items()}
    config = TrainConfig.for_spec(SPEC, epochs=1, lr=1e-4, batch_size=16, augment=0.3, threads=1)
    model = quantization_aware_training(small, SPEC, tiny.split("train"), tiny.split("val"), config)
    assert isinstance(model, ChunkedGraph)
    with torch.inference_mode():
        assert model(torch.randn(3, 3, SIZE, SIZE)).shape == (3, 6)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    with pytest.raises(QuantizeError, match="quantization-aware training"):
        quantization_aware_training(DataDependent(), SPEC, tiny.split("train"), tiny.split("val"), config)
