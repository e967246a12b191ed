"""Deployment: int8 through PT2E (torchao, FX fallback), ONNX export with a model card, ONNX Runtime fp32/int8."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from trashlib.bench import compare_models, measure_latency, torch_threads
from trashlib.candidate import CandidateRecord, assess_candidate
from trashlib.data import PrepareConfig, PreparedData
from trashlib.files import atomic_write_bytes, atomic_write_json, sha256_file
from trashlib.models import ModelSpec
from trashlib.predict import (
    DEPLOY_RUNNERS,
    OpenVinoRunner,
    PredictError,
    load_model,
    open_runtime,
    preprocessing_card,
    seal_model_card,
    submit_time,
)
from trashlib.run import Run
from trashlib.score import score_candidate
from trashlib.train import TrainConfig, preprocess, train_model

INPUT_NAME, OUTPUT_NAME = "images", "logits"
CHUNK = 32  # the PT2E-lowered graph is static: batches run in chunks of this size (the last one padded)


class QuantizeError(ValueError):
    """A model that cannot be quantized or exported, or unusable calibration data."""


def calibration_batches(
    images: np.ndarray, spec: ModelSpec, batch_size: int = 32, max_images: int = 256
) -> list[torch.Tensor]:
    """Preprocessed float batches (the model's size and normalisation) from uint8 NHWC training crops."""
    if images is None or len(images) == 0:
        raise QuantizeError("the calibration set is empty: int8 ranges need at least one training image")
    images = images[:max_images]
    return [
        preprocess(images[i : i + batch_size], spec.image_size, spec.mean, spec.std).contiguous()
        for i in range(0, len(images), batch_size)
    ]


class ChunkedGraph(nn.Module):
    """Runs graphs traced for a fixed batch (1 and ``CHUNK``) on any batch: 1 as is, more in padded chunks."""

    def __init__(self, single: nn.Module, chunked: nn.Module) -> None:
        super().__init__()
        self.single, self.chunked = single, chunked

    def train(self, mode: bool = True) -> ChunkedGraph:
        """Exported graphs have no train mode: only the flag changes (eval/train calls stay harmless)."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if x.shape[0] == 1:
            return self.single(x)
        outputs = []
        for start in range(0, x.shape[0], CHUNK):
            part = x[start : start + CHUNK]
            n = part.shape[0]
            if n < CHUNK:
                part = torch.cat([part, part[-1:].expand(CHUNK - n, *part.shape[1:])])
            outputs.append(self.chunked(part)[:n])
        return torch.cat(outputs)


def quantize_pt2e(model: nn.Module, spec: ModelSpec, batches: Sequence[torch.Tensor]) -> nn.Module:
    """Post-training static int8: ``torch.export``, ``prepare_pt2e`` with ``X86InductorQuantizer``,
    calibration on ``batches``, ``convert_pt2e``, then ``lower_pt2e_quantized_to_x86`` (oneDNN int8 kernels)."""
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    _check_batches(batches)
    size = spec.image_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(
            model.eval(), (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},)
        ).module()
        quantizer = X86InductorQuantizer()
        quantizer.set_global(get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for x in batches:
            prepared(x)
        converted = convert_pt2e(prepared)
        _check_all_convolutions_quantized(converted, spec.name)
        single = lower_pt2e_quantized_to_x86(converted, (torch.zeros(1, 3, size, size),))
        chunked = lower_pt2e_quantized_to_x86(converted, (torch.zeros(CHUNK, 3, size, size),))
    return ChunkedGraph(single, chunked).eval()


def _check_all_convolutions_quantized(converted: torch.fx.GraphModule, name: str) -> None:
    """A ``QuantizeError`` when a convolution of the converted PT2E graph still takes float weights: the quantizer
    matches modules by type (a subclass of ``nn.Conv2d`` is not matched), and a model that is mostly float must
    not be reported as int8."""
    convs = [n for n in converted.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default]
    float_convs = [
        n.name for n in convs if not (isinstance(n.args[1], torch.fx.Node) and "dequantize" in str(n.args[1].target))
    ]
    if float_convs:
        raise QuantizeError(
            f"{name}: PT2E left {len(float_convs)} of {len(convs)} convolutions in float "
            f"(first: {float_convs[0]}); the quantizer did not match them"
        )


def quantization_aware_training(
    model: nn.Module,
    spec: ModelSpec,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
) -> nn.Module:
    """For a model that loses too much F1 under post-training int8: PT2E quantization-aware training
    (``prepare_qat_pt2e`` with the x86 QAT config, fake-quantized fine-tuning with ``train_model`` and
    ``config``), then ``convert_pt2e`` and the x86 lowering. The input model is not changed."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    size = spec.image_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exported = torch.export.export(
                copy.deepcopy(model).train(), (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},)
            ).module()
            quantizer = X86InductorQuantizer()
            quantizer.set_global(get_default_x86_inductor_quantization_config(is_qat=True))
            prepared = allow_exported_model_train_eval(prepare_qat_pt2e(exported, quantizer))
        except Exception as error:  # torch.export raises many types on unsupported graphs
            raise QuantizeError(
                f"{spec.name} cannot be prepared for quantization-aware training: "
                f"{type(error).__name__}: {_first_line(error)}"
            ) from error
        trained = train_model(prepared, train, val, config, progress=False).model
        trained.eval()
        with torch.no_grad():
            converted = convert_pt2e(trained)
            single = lower_pt2e_quantized_to_x86(converted, (torch.zeros(1, 3, size, size),))
            chunked = lower_pt2e_quantized_to_x86(converted, (torch.zeros(CHUNK, 3, size, size),))
    return ChunkedGraph(single, chunked).eval()


def quantize_fx(model: nn.Module, spec: ModelSpec, batches: Sequence[torch.Tensor]) -> nn.Module:
    """The fallback: FX graph mode post-training static int8 (``torch.ao.quantization.quantize_fx``, x86)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    _check_batches(batches)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (batches[0][:1],))
        for x in batches:
            prepared(x)
        return convert_fx(prepared).eval()


def quantize_int8(
    model: nn.Module, spec: ModelSpec, batches: Sequence[torch.Tensor]
) -> tuple[nn.Module, str, str | None]:
    """PT2E int8, or FX int8 where export or PT2E fails. Returns (model, method, why PT2E was not used)."""
    _check_batches(batches)
    try:
        return quantize_pt2e(model, spec, batches), "pt2e-x86", None
    except Exception as error:  # torch.export and the quantizer raise many types on unsupported graphs
        reason = f"PT2E failed: {type(error).__name__}: {_first_line(error)}"
    try:
        return quantize_fx(model, spec, batches), "fx-x86", reason
    except Exception as error:
        raise QuantizeError(
            f"{spec.name} cannot be quantized: {reason}; FX fallback failed: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error


def agreement(a: nn.Module, b: nn.Module, batches: Sequence[torch.Tensor]) -> dict[str, float]:
    """Top-1 agreement and largest logit difference of two models on the same batches."""
    same = total = 0
    worst = 0.0
    with torch.inference_mode():
        for x in batches:
            ya, yb = a(x), b(x)
            same += int((ya.argmax(1) == yb.argmax(1)).sum())
            total += len(x)
            worst = max(worst, float((ya - yb).abs().max()))
    return {"top1_agreement": same / total, "max_abs_diff": worst}


# ---------------------------------------------------------------------------------------------
# ONNX


def model_card(
    spec: ModelSpec, extra: dict[str, Any] | None = None, *, prepare: PrepareConfig | dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a robot needs to use the model: classes, input size, layout, value range and normalisation; with
    ``prepare`` (the data's ``PrepareConfig`` or its dict, ``data.meta["config"]``) also the whole preprocessing
    from a photo file to the input tensor (``predict.preprocessing_card``)."""
    card = {
        "model": spec.name,
        "class_names": list(spec.class_names),
        "image_size": spec.image_size,
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "scale": "pixel / 255, resized to image_size x image_size, then (x - mean) / std",
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        "output": {"name": OUTPUT_NAME, "meaning": "logits, one per class, argmax is the label"},
    }
    if prepare is not None:
        card["preprocessing"] = preprocessing_card(
            prepare, image_size=spec.image_size, mean=spec.mean, std=spec.std, class_names=spec.class_names
        )
    return {**card, **(extra or {})}


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path, card: dict[str, Any] | None = None) -> Path:
    """A single-file ONNX model (dynamic batch, opset 17) with the model card in its metadata, checked by onnx."""
    import onnx

    path = Path(path)
    size = spec.image_size
    buffer = _export_bytes(model, size)
    proto = fold_pads_into_convs(onnx.load_from_string(buffer))
    card = card or model_card(spec)
    for key, value in {
        "model_card": json.dumps(card),
        "class_names": json.dumps(card["class_names"]),
        "image_size": str(size),
        "mean": json.dumps(card["input"]["mean"]),
        "std": json.dumps(card["input"]["std"]),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise QuantizeError(f"{path}: the exported model fails onnx's checker: {_first_line(error)}") from error
    data = seal_model_card(proto.SerializeToString())  # the card carries a digest a lone file is checked with
    difference = _onnx_torch_difference(data, model, size)
    if difference > 1e-3:  # e.g. a value computed outside torch was traced as a constant
        raise QuantizeError(
            f"{path}: the exported model's outputs differ from torch's by up to {difference:.3g} "
            f"on random inputs: the graph was not captured faithfully"
        )
    atomic_write_bytes(path, data)
    return path


# shape arithmetic the TorchScript exporter emits around F.pad's amounts, folded to constants by fold_pads_into_convs
_FOLDABLE_OPS = frozenset({"Cast", "Concat", "ConstantOfShape", "Gather", "Reshape", "Slice", "Squeeze", "Transpose"})


def fold_pads_into_convs(proto: Any) -> Any:
    """``proto`` with each zero-constant spatial ``Pad`` that feeds only a ``Conv`` merged into that ``Conv``'s
    (asymmetric) ``pads``, and the arithmetic that computed its amounts removed.

    EfficientNet-Lite0's TensorFlow 'SAME' strided convolutions pad by one more row and column after than before,
    which ``nn.Conv2d`` cannot say: the model pads with ``F.pad`` first, and the exporter writes a ``Pad`` node whose
    amounts come out of a chain of shape operators. onnxruntime's own Pad fusion leaves those: each ``Pad`` then
    runs on its own, splits the NCHWc layout in fp32 and needs a dequantize-quantize pair in int8. A ``Pad`` whose
    amounts or value are not constant, that pads batch or channels, or whose output has another reader is kept."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type in _FOLDABLE_OPS and all(not name or name in constants for name in node.input):
            constants[node.output[0]] = _evaluate_constant_node(node, constants, proto.opset_import)
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in graph.output}
    folded = set()
    for node in graph.node:
        merge = _pad_into_conv(node, constants, readers, graph_outputs)
        if merge is not None:
            conv, pads = merge
            kept = [a for a in conv.attribute if a.name != "pads"]
            del conv.attribute[:]
            conv.attribute.extend([*kept, helper.make_attribute("pads", pads)])
            conv.input[0] = node.input[0]
            folded.add(node.output[0])
    if not folded:
        return proto
    nodes = [node for node in graph.node if not (node.op_type == "Pad" and node.output[0] in folded)]
    while True:  # drop what only the folded pads read
        read = {name for node in nodes for name in node.input} | graph_outputs
        alive = [node for node in nodes if any(name in read for name in node.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    read = {name for node in nodes for name in node.input}
    initializers = [init for init in graph.initializer if init.name in read]
    produced = {name for node in nodes for name in node.output} | read
    value_info = [info for info in graph.value_info if info.name in produced]
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.value_info.extend(value_info)
    return proto


def _evaluate_constant_node(node: Any, constants: dict[str, np.ndarray], opset: Any) -> np.ndarray:
    """The first output of ``node`` on its constant inputs (onnx's reference evaluator)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if name else "" for k, name in enumerate(node.input)]
    feeds = {alias: constants[name] for alias, name in zip(names, node.input, strict=True) if name}
    inputs = [
        helper.make_tensor_value_info(alias, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for alias, value in feeds.items()
    ]
    single = helper.make_node(node.op_type, names, ["out"])
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "fold", inputs, [helper.make_empty_tensor_value_info("out")])
    outputs: Any = ReferenceEvaluator(helper.make_model(graph, opset_imports=opset)).run(None, feeds)
    return np.asarray(outputs[0])


def _pad_into_conv(
    node: Any, constants: dict[str, np.ndarray], readers: dict[str, list[Any]], graph_outputs: set[str]
) -> tuple[Any, list[int]] | None:
    """The ``Conv`` that ``node`` (a ``Pad``) can be merged into and that ``Conv``'s merged ``pads``, or None."""
    from onnx import helper

    if node.op_type != "Pad" or node.output[0] in graph_outputs or len(node.input) < 2:
        return None
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    amounts = constants.get(node.input[1])
    value = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
    users = readers.get(node.output[0], [])
    if attributes.get("mode", b"constant") != b"constant" or amounts is None or value is None or np.any(value != 0):
        return None
    if len(users) != 1 or users[0].op_type != "Conv" or len(amounts) != 8 or np.any(amounts < 0):
        return None
    if any(int(amounts[k]) for k in (0, 1, 4, 5)):  # batch or channels padded
        return None
    conv_attributes = {a.name: helper.get_attribute_value(a) for a in users[0].attribute}
    if conv_attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", b""):
        return None
    before = [int(n) for n in conv_attributes.get("pads", [0, 0, 0, 0])]
    add = [int(n) for n in amounts]  # [n, c, h, w] before, then after
    return users[0], [before[0] + add[2], before[1] + add[3], before[2] + add[6], before[3] + add[7]]


def _onnx_torch_difference(data: bytes, model: nn.Module, size: int) -> float:
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            for batch in (1, 3):
                x = torch.randn(batch, 3, size, size, generator=generator)
                out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
                worst = max(worst, float(np.abs(out - model(x).numpy()).max()))
    except Exception as error:  # onnxruntime raises its own types for graphs it cannot run
        raise QuantizeError(
            f"the exported {type(model).__name__} does not run in onnxruntime: {_first_line(error)}"
        ) from error
    return worst


def _export_bytes(model: nn.Module, size: int) -> bytes:
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model.eval(),
                (torch.zeros(1, 3, size, size),),
                buffer,  # type: ignore[arg-type]  # the exporter writes to file objects too
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=17,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception as error:  # the exporter raises many types on unsupported graphs
            raise QuantizeError(
                f"{type(model).__name__} cannot be exported to ONNX: {type(error).__name__}: {_first_line(error)}"
            ) from error
    return buffer.getvalue()


def read_model_card(path: Path) -> dict[str, Any]:
    """The model card stored in an ONNX file's metadata."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "model_card" not in meta:
        raise QuantizeError(f"{path} carries no model card in its metadata")
    return json.loads(meta["model_card"])


def stem_convolutions(proto: Any) -> list[str]:
    """The names of the convolutions that read the graph's image input directly (a network's stem)."""
    inputs = {value.name for value in proto.graph.input}
    return [node.name for node in proto.graph.node if node.op_type == "Conv" and node.input[0] in inputs]


def quantize_onnx_int8(
    fp32_path: Path, out_path: Path, batches: Sequence[torch.Tensor], *, float_stem: bool = True
) -> Path:
    """Static int8 ONNX (QDQ, per-channel weights, uint8 activations) calibrated on ``batches``; the
    metadata (model card) is carried over. With ``float_stem`` the stem convolution (``stem_convolutions``: three
    input channels, a few percent of the MACs) stays fp32 and its output is the first quantized tensor: on TrashNet
    that flips fewer predictions away from fp32 and runs no slower (``benchmarks/bench_int8_stem.py``)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    _check_batches(batches)
    fp32_path, out_path = Path(fp32_path), Path(out_path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{INPUT_NAME: x.numpy()} for x in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    tmp_pre = out_path.with_name(f".{out_path.name}.pre.onnx")
    tmp_q = out_path.with_name(f".{out_path.name}.q.onnx")
    try:
        quant_pre_process(str(fp32_path), str(tmp_pre), skip_symbolic_shape=True)
        keep_fp32 = stem_convolutions(onnx.load(str(tmp_pre))) if float_stem else []
        quantize_static(
            str(tmp_pre),
            str(tmp_q),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_fp32,
        )
        proto = onnx.load(str(tmp_q))
    except Exception as error:
        raise QuantizeError(
            f"{fp32_path}: onnxruntime static int8 quantization failed: {type(error).__name__}: {_first_line(error)}"
        ) from error
    finally:
        tmp_pre.unlink(missing_ok=True)
    tmp_q.unlink(missing_ok=True)
    source_meta = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    del proto.metadata_props[:]
    for key, value in source_meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(out_path, seal_model_card(proto.SerializeToString()))  # the digest of the int8 graph
    return out_path


class _ActivationFakeQuant(nn.Module):
    """uint8 per-tensor fake quantization with onnxruntime's MinMax ranges (zero always inside), tracked by an
    exponential moving average of the batches' ranges while training, frozen in eval mode."""

    low: torch.Tensor
    high: torch.Tensor
    seen: torch.Tensor

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                low, high = x.min().clamp(max=0), x.max().clamp(min=0)
                if not bool(self.seen):
                    self.low.copy_(low)
                    self.high.copy_(high)
                    self.seen.fill_(True)
                else:
                    self.low.lerp_(low, self.momentum)
                    self.high.lerp_(high, self.momentum)
        if not bool(self.seen):
            return x
        scale = ((self.high - self.low) / 255).clamp(min=1e-8).reshape(1)
        zero = torch.round(-self.low / scale).clamp(0, 255).to(torch.int32).reshape(1)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class _WeightFakeQuant(nn.Module):
    """int8 per-output-channel symmetric fake quantization of a weight, as onnxruntime quantizes it ([-127, 127],
    scale max|w| / 127). A per-channel symmetric code does not change when BatchNorm folding rescales a channel, so
    the unfolded weight quantizes as the folded one the ONNX file holds."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, weight.dim()))
        scale = (weight.detach().abs().amax(dim=dims) / 127).clamp(min=1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


def onnx_int8_aware_finetune(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    float_stem: bool = True,
) -> nn.Module:
    """Quantization-aware fine-tuning for the ONNX int8 that ships: a copy of ``model`` is trained by ``train_model``
    (``config``, distilled from ``teacher`` when given) with every convolution's and linear layer's weight and input
    fake-quantized the way ``quantize_onnx_int8`` quantizes them (the stem convolution left fp32 with
    ``float_stem``). Returned with the fake quantization removed: exported and quantized by ``quantize_onnx_int8``,
    its fp32 weights get the int8 codes the fine-tune trained with; the activation ranges come from that quantizer's
    calibration, as for any model. ``model`` is not changed. On run trashnet-real5's pick it raised the int8 val F1
    but not the test F1 (``benchmarks/bench_int8_aware.py``), so notebook 04 does not use it."""
    from torch.nn.utils import parametrize

    tuned = copy.deepcopy(model)
    layers = [m for m in tuned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise QuantizeError(f"{type(model).__name__} has no convolution or linear layer to quantize")
    if float_stem and isinstance(layers[0], nn.Conv2d) and layers[0].in_channels == 3:
        layers = layers[1:]
    quantizers = nn.ModuleList()
    hooks = []
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", _WeightFakeQuant())
        quantizer = _ActivationFakeQuant()
        quantizers.append(quantizer)
        hooks.append(layer.register_forward_pre_hook(lambda _m, args, q=quantizer: (q(args[0]), *args[1:])))
    tuned.add_module("_int8_activations", quantizers)  # ranges kept with the best epoch's state
    try:
        train_model(tuned, train, val, config, teacher=teacher, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
        for layer in layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        del tuned._int8_activations
    return tuned.eval()


class RunnerModel(nn.Module):
    """A ``predict`` runtime runner (onnxruntime, openvino) on an ONNX file behind the ``nn.Module`` call interface;
    a runtime that is missing or cannot load the file is a QuantizeError."""

    def __init__(self, path: Path, threads: int = 1, runtime: str = "openvino") -> None:
        super().__init__()
        self.path, self.runtime = Path(path), runtime
        try:
            self.runner = open_runtime(
                runtime,
                self.path.read_bytes(),
                threads=threads,
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
                where=str(path),
            )
        except PredictError as error:
            raise QuantizeError(str(error)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.runner(x.detach().float().contiguous().numpy())))

    def kernels(self) -> dict[str, int]:
        """The kernels or node types the runtime runs (``predict.OpenVinoRunner.kernels`` and the like)."""
        return dict(self.runner.kernels()) if hasattr(self.runner, "kernels") else {}


class OrtModel(nn.Module):
    """An ONNX Runtime CPU session behind the ``nn.Module`` call interface (tensor in, logits tensor out),
    so the evaluation and timing code treats it like any other model."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def write_model_card(path: Path, card: dict[str, Any], onnx_path: Path) -> Path:
    """The model card as JSON beside the ONNX file, with the file's name and sha256."""
    return atomic_write_json(
        Path(path), {**card, "onnx_file": Path(onnx_path).name, "onnx_sha256": sha256_file(Path(onnx_path))}
    )


def _check_batches(batches: Sequence[torch.Tensor]) -> None:
    if not batches or not all(isinstance(x, torch.Tensor) and x.ndim == 4 and len(x) for x in batches):
        raise QuantizeError("the calibration set is empty: int8 ranges need at least one batch of images")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# One candidate, deployed three ways


RUNTIMES: tuple[str, ...] = ("pt2e-int8", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")


class Deployment(NamedTuple):
    """One candidate deployed: the runtime models that work, by runtime name, and every runtime's record."""

    models: dict[str, nn.Module]
    records: list[CandidateRecord]


def deploy_candidate(
    run: Run,
    label: str,
    model: nn.Module,
    spec: ModelSpec,
    source: CandidateRecord,
    data: PreparedData,
    *,
    params: dict[str, Any],
    baseline: CandidateRecord | None = None,
    threads: int = 2,
    latency_runs: int = 50,
    calibration_images: int = 256,
    qat_epochs: int = 0,
    qat_max_drop: float = 0.02,
    thread_choices: Sequence[int] = (),
    float_stem: bool = True,
) -> Deployment:
    """PT2E int8 (FX fallback) in torch, ONNX fp32 and ONNX int8 (QDQ) in onnxruntime and the same two files in
    OpenVINO, each assessed like every candidate (test F1, latency, throughput, scores) and checked against the
    fp32 source (top-1 agreement, largest logit difference). The submit time of the runtimes that ship an ONNX
    file is the shipped path's (``shipped_submit``). ONNX variants are written to ``deploy/<label>-<runtime>/``
    (``model.onnx``, ``model_card.json``, ``metrics.json``). A runtime that fails gets a record with
    ``flagged`` (the reason) and no model; the fp32 source stays the candidate for it. With ``qat_epochs``,
    a PT2E int8 model that loses more than ``qat_max_drop`` test macro-F1 is redone with quantization-aware
    training (``<label>-qat-int8``). With two or more ``thread_choices``, each ONNX variant runs (and is assessed)
    at the count with the lowest batch-1 latency (``fastest_thread_count``), recorded as ``threads`` and as the
    card's ``threads_b1``; the submit time stays at ``threads``. ``float_stem`` is ``quantize_onnx_int8``'s, recorded
    as ``int8_float_stem`` on the ONNX int8 records.
    """
    counts = thread_counts(thread_choices) if thread_choices else []
    train_x, _ = data.split("train")
    batches = calibration_batches(train_x[:calibration_images], spec)
    val_x, _ = data.split("val")
    check = calibration_batches(val_x[:128], spec) if len(val_x) else batches
    models: dict[str, nn.Module] = {}
    records: list[CandidateRecord] = []
    onnx_fp32: Path | None = None
    for runtime in RUNTIMES:
        name = f"{label}-{runtime}"
        folder = run.path("deploy", name, "model.onnx").parent
        info = CandidateRecord(source=label, source_stage=source.get("stage"), runtime=runtime)
        if runtime in ("onnx-int8", "openvino-int8"):
            info["int8_float_stem"] = float_stem
        deployed: nn.Module
        run_threads = threads
        try:
            if runtime == "pt2e-int8":
                deployed, method, fallback = quantize_int8(model, spec, batches)
                info.update(CandidateRecord(method=method, pt2e_fallback_reason=fallback))
            elif runtime == "onnx-fp32":
                onnx_fp32 = export_onnx(
                    model,
                    spec,
                    folder / "model.onnx",
                    model_card(
                        spec,
                        {"runtime": "onnxruntime CPU, fp32", "source": label, "macs": source.get("macs")},
                        prepare=data.meta["config"],
                    ),
                )
            elif runtime == "onnx-int8":
                if onnx_fp32 is None:
                    raise QuantizeError("no fp32 ONNX model to quantize (its export failed)")
                quantize_onnx_int8(onnx_fp32, folder / "model.onnx", batches, float_stem=float_stem)
            else:  # the same ONNX files in another runtime
                onnx_file = run.path("deploy", f"{label}-onnx-{runtime.rsplit('-', 1)[1]}", "model.onnx")
                if not onnx_file.is_file():
                    raise QuantizeError(f"no ONNX model for {runtime} (onnx-{runtime.rsplit('-', 1)[1]} failed)")
                atomic_write_bytes(folder / "model.onnx", onnx_file.read_bytes())
            if runtime in DEPLOY_RUNNERS:  # one session per thread count: the timed one at the chosen count is kept
                make = functools.cache(functools.partial(_onnx_runner, runtime, folder / "model.onnx"))
                if len(counts) > 1:
                    run_threads, thread_ms = fastest_thread_count(make, spec.image_size, counts)
                    info["thread_b1_ms"] = {str(n): ms for n, ms in thread_ms.items()}
                deployed = make(run_threads)
        except QuantizeError as error:  # stays in the leaderboard as its fp32 source, flagged
            flagged = source.copy()
            flagged.pop("stage", None)
            flagged.update(info)
            flagged.update(CandidateRecord(candidate=name, flagged=f"{runtime} failed, fp32 kept: {error}"))
            run.write_metrics(f"deploy/{name}", dict(flagged), params)
            records.append(flagged)
            continue
        record = assess_candidate(
            name, deployed, spec, data, threads=run_threads, baseline=baseline, latency_runs=latency_runs
        )
        agree = agreement(model, deployed, check)
        record.update(info)
        record.update(
            CandidateRecord(
                top1_agreement=agree["top1_agreement"],
                max_abs_diff=agree["max_abs_diff"],
                flagged=None,
                macs=source["macs"],
                params=source["params"],
                f1_change=record["f1_test"] - source["f1_test"],
            )
        )
        if runtime in DEPLOY_RUNNERS:
            onnx_path = folder / "model.onnx"
            record["size_bytes"] = onnx_path.stat().st_size
            card = model_card(
                spec,
                {
                    "runtime": f"{DEPLOY_RUNNERS[runtime]} CPU, {runtime.rsplit('-', 1)[1]}",
                    "runner": DEPLOY_RUNNERS[runtime],
                    "source": label,
                    "f1_test": record["f1_test"],
                    "latency_b1_ms": record["latency_b1_ms"],
                    "threads_b1": run_threads,
                    "macs": source.get("macs"),
                },
                prepare=data.meta["config"],
            )
            write_model_card(folder / "model_card.json", card, onnx_path)
            try:
                record.update(shipped_submit(folder, data, record, baseline=baseline, threads=threads))
            except QuantizeError as error:
                record["flagged"] = str(error)
        else:
            record["size_bytes"] = None  # the lowered PT2E graph lives in memory; the ONNX int8 file is the artifact
        run.write_metrics(f"deploy/{name}", dict(record), params)
        models[runtime] = deployed
        records.append(record)
        if runtime == "pt2e-int8" and qat_epochs > 0 and record["f1_change"] < -qat_max_drop:
            qat = _qat_candidate(
                run,
                label,
                model,
                spec,
                source,
                data,
                params=params,
                baseline=baseline,
                threads=threads,
                latency_runs=latency_runs,
                epochs=qat_epochs,
                batches=batches,
            )
            models["qat-int8"] = qat.model
            records.append(qat.record)
    return Deployment(models, records)


def _onnx_runner(runtime: str, path: Path, threads: int) -> nn.Module:
    """A deployed ONNX file as the workbook times it: an ``OrtModel`` for onnxruntime, a ``RunnerModel`` otherwise."""
    if DEPLOY_RUNNERS[runtime] == "onnxruntime":
        return OrtModel(path, threads)
    return RunnerModel(path, threads, DEPLOY_RUNNERS[runtime])


def thread_counts(choices: Sequence[int]) -> list[int]:
    """``choices`` sorted and without repeats, checked: a non-empty list of whole thread counts >= 1."""
    counts = sorted(set(choices))
    if not counts or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts):
        raise QuantizeError(f"thread_choices must be whole numbers >= 1, got {list(choices)!r}")
    return counts


def fastest_thread_count(
    make: Callable[[int], nn.Module], image_size: int, choices: Sequence[int], *, rounds: int = 5, runs: int = 20
) -> tuple[int, dict[int, float]]:
    """The thread count in ``choices`` at which ``make(count)`` runs batch 1 fastest, and each count's median
    latency in ms: the models are timed interleaved by ``bench.compare_models`` over ``rounds`` rounds of ``runs``
    calls; a tie goes to fewer threads. Small networks often run faster on one thread than on two, where waking
    the second thread for each small operator costs more than it saves."""
    counts = thread_counts(choices)
    timing = compare_models({str(n): (make(n), image_size) for n in counts}, 1, 1, rounds, runs)
    medians = {n: float(timing[str(n)]["median_ms"]) for n in counts}
    return min(counts, key=lambda n: (medians[n], n)), medians


def runtime_kernels(run: Run, label: str, *, threads: int = 1) -> dict[str, dict[str, int]]:
    """What each runtime that ships an ONNX file of ``label`` runs: OpenVINO's chosen CPU primitives per layer type
    (brgconv_avx512_amx_I8 and the like), onnxruntime's node types after its graph optimisations. Runtimes whose
    folder is missing (flagged) are left out."""
    found = {}
    for runtime, runner in DEPLOY_RUNNERS.items():
        path = run.path("deploy", f"{label}-{runtime}", "model.onnx")
        if path.is_file():
            found[runtime] = RunnerModel(path, threads, runner).kernels()
    return found


def shipped_submit(
    folder: Path, data: PreparedData, record: CandidateRecord, *, baseline: CandidateRecord | None, threads: int
) -> CandidateRecord:
    """The submit time of a deployed folder as it ships: ``predict.submit_time`` (the card's runtime, threaded
    draft decoding, batched) over the test split from the files on disk, and the scores recomputed with it. The
    torch-harness time stays as ``submit_loop_s``; ``submit_f1_change`` is the macro-F1 of these predictions
    minus the cached crops' (the cost of reduced-size decoding)."""
    try:
        shipped = load_model(folder, threads=threads)
        fast = submit_time(shipped, data.meta["source_root"], data.split_rows("test"), threads=threads)
    except PredictError as error:
        raise QuantizeError(f"{folder}: the shipped model does not run through predict: {error}") from None
    scores = score_candidate(
        record["f1_test"],
        fast["seconds"],
        baseline["f1_test"] if baseline else None,
        baseline["submit_s"] if baseline else None,
    )
    return CandidateRecord(
        submit_loop_s=record["submit_s"],
        submit_s=fast["seconds"],
        submit_n=fast["n"],
        submit_pipeline=f"predict ({shipped.runtime}, {threads} decode threads, draft JPEG decoding)",
        submit_f1_change=fast["macro_f1"] - record["f1_test"],
        score_published=scores["score_published"],
        score_relative=scores["score_relative"],
    )


class _QatResult(NamedTuple):
    model: nn.Module
    record: CandidateRecord


def _qat_candidate(
    run: Run,
    label: str,
    model: nn.Module,
    spec: ModelSpec,
    source: CandidateRecord,
    data: PreparedData,
    *,
    params: dict[str, Any],
    baseline: CandidateRecord | None,
    threads: int,
    latency_runs: int,
    epochs: int,
    batches: Sequence[torch.Tensor],
) -> _QatResult:
    config = TrainConfig.for_spec(spec, epochs=epochs, lr=1e-4, batch_size=32, augment=0.3, threads=threads)
    qat = quantization_aware_training(model, spec, data.split("train"), data.split("val"), config)
    name = f"{label}-qat-int8"
    record = assess_candidate(name, qat, spec, data, threads=threads, baseline=baseline, latency_runs=latency_runs)
    agree = agreement(model, qat, batches)
    record.update(
        CandidateRecord(
            source=label,
            source_stage=source.get("stage"),
            runtime="qat-int8",
            method="pt2e-x86-qat",
            top1_agreement=agree["top1_agreement"],
            max_abs_diff=agree["max_abs_diff"],
            flagged=None,
            macs=source["macs"],
            params=source["params"],
            f1_change=record["f1_test"] - source["f1_test"],
            size_bytes=None,
            qat_epochs=epochs,
        )
    )
    run.write_metrics(f"deploy/{name}", dict(record), params)
    return _QatResult(qat, record)


# --------------------------------------------------------------------------- deploy runtimes

LATENCY_RUNTIMES: tuple[str, ...] = (
    "onnxruntime-int8",
    "onnxruntime-fp32",
    "openvino-int8",
    "openvino-fp32",
    "torch-eager",
)
DEFAULT_RUNTIME = "onnxruntime-int8"


def check_runtime(runtime: str) -> str:
    """``runtime`` when it is known and installed; otherwise a ``SupernetError`` naming it."""
    if runtime not in LATENCY_RUNTIMES:
        raise QuantizeError(f"runtime {runtime!r} is unknown; valid runtimes: {', '.join(LATENCY_RUNTIMES)}")
    # int8 is quantized by onnxruntime's tools in every runtime, so OpenVINO needs onnxruntime too
    needs = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("onnxruntime", "onnx", "openvino")}
    missing = [p for p in needs.get(runtime.split("-", maxsplit=1)[0], ()) if importlib.util.find_spec(p) is None]
    if missing:
        raise QuantizeError(f"runtime {runtime!r} needs the packages {', '.join(missing)}, which are not installed")
    return runtime


def deployed(
    model: nn.Module,
    spec: ModelSpec,
    runtime: str,
    *,
    calibration: Sequence[torch.Tensor] | None = None,
    threads: int = 1,
) -> Callable[[np.ndarray], Any]:
    """``model`` as it runs in ``runtime``: a callable on a float NCHW array (ONNX fp32 or static int8 as
    ``quantize_onnx_int8`` makes it by default, calibrated on ``calibration``, in onnxruntime or OpenVINO; or eager
    torch)."""
    check_runtime(runtime)
    if runtime == "torch-eager":
        model.eval()

        def eager(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        return eager
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="trashlib-latency-") as tmp:
        path = export_onnx(model.eval(), spec, Path(tmp) / "fp32.onnx")
        if runtime.endswith("-int8"):
            if not calibration:
                raise QuantizeError(f"runtime {runtime!r} needs calibration batches")
            path = quantize_onnx_int8(path, Path(tmp) / "int8.onnx", calibration)
        if runtime.startswith("openvino"):
            return OpenVinoRunner(path.read_bytes(), threads=threads, input_name=None, output_name=None)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> Any:
        return session.run(None, {name: x})

    return run


def time_deployed(
    fn: Callable[[np.ndarray], Any], image_size: int, *, runs: int = 10, warmup: int = 3, threads: int = 1
) -> float:
    """Median batch-1 latency in ms of a ``deployed`` callable at ``image_size`` (torch set to ``threads`` threads
    for the whole measurement; an onnxruntime session has its own)."""
    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    with torch_threads(threads):
        return float(measure_latency(lambda: fn(x), warmup=warmup, runs=runs)["median_ms"])


def time_deployed_rounds(
    fn: Callable[[np.ndarray], Any], image_size: int, *, rounds: int = 3, runs: int = 10, threads: int = 1
) -> float:
    """The median over ``rounds`` of ``time_deployed`` (each ``runs`` calls): steadier than one longer measurement
    when the machine's speed drifts."""
    return float(np.median([time_deployed(fn, image_size, runs=runs, threads=threads) for _ in range(rounds)]))
