"""Apply a shipped ONNX model to new photos without torch: the model card's preprocessing, fast decoding, predict
and evaluate."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trashlib.data import (
    FITS,
    IMAGE_EXTENSIONS,
    PAD_FILL,
    DataError,
    PrepareConfig,
    check_regular_file,
    coco_image_root,
    crop_box,
    safe_path,
    to_rgb,
)
from trashlib.files import atomic_write_json, atomic_write_text
from trashlib.score import classification_scores

PREPROCESSING_VERSION = 1
DRAFT_SCALES = (8, 4, 2, 1)  # libjpeg's DCT scaling: decode at 1/8, 1/4, 1/2 or full size
# reduce a JPEG only while each crop keeps twice cache_side: no prediction changed on TrashNet or taco-sample,
# where a gap of 1 changed 0.5-4.5% of them and macro-F1 by up to 0.007 (benchmarks/bench_predict.py)
DRAFT_GAP = 2.0
DIGEST_KEY = "model_digest"
METADATA_FIELD = 14  # ModelProto.metadata_props in onnx.proto
DIGEST_COVERS = (
    "sha256 of the ONNX ModelProto's top-level fields except metadata_props, in file order, then for each "
    "metadata entry sorted by key: key, a zero byte, its value (model_card as canonical JSON without "
    "model_digest), a zero byte"
)
CROP_RULE = (
    "box = COCO x, y, w, h in pixels of the decoded, oriented image (the whole image when there is none); "
    "x0 = floor(max(0, x - margin * w)), y0 = floor(max(0, y - margin * h)), "
    "x1 = ceil(min(width, x + w + margin * w)), y1 = ceil(min(height, y + h + margin * h)); "
    "PIL Image.crop((x0, y0, x1, y1))"
)
PAD_RULE = "paste the w x h crop at ((s - w) // 2, (s - h) // 2) on an s x s canvas of pad_color, s = max(w, h)"
STEPS = ("decode", "crop", "fit", "resize", "scale", "resize_to_model", "normalize", "layout")


class PredictError(ValueError):
    """A model, input or option that predict or evaluate cannot use; the message is one line naming the file."""


# --------------------------------------------------------------------------- the model card's preprocessing


def preprocessing_card(
    prepare: PrepareConfig | Mapping[str, Any],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The model card's ``preprocessing`` section: everything between a photo file and the model's input tensor,
    from the data preparation config (margin, fit, cache_side, max_pixels) and the model's input size,
    normalisation and classes. A client that follows it step by step gets the workbook's inputs."""
    cfg = asdict(prepare) if isinstance(prepare, PrepareConfig) else dict(prepare)
    cache_side, image_size = int(cfg["cache_side"]), int(image_size)
    fit = str(cfg.get("fit", "pad"))
    return {
        "version": PREPROCESSING_VERSION,
        "steps": list(STEPS),
        "decode": {
            "exif_orientation": True,
            "color": "RGB",
            "alpha_background": [255, 255, 255],
            "max_pixels": int(cfg.get("max_pixels", PrepareConfig.max_pixels)),
            "how": "PIL Image.open, ImageOps.exif_transpose, convert to RGB (alpha composited over white)",
        },
        "crop": {"margin": float(cfg["margin"]), "rule": CROP_RULE},
        "fit": fit,
        "pad_color": list(PAD_FILL),
        "pad_rule": PAD_RULE if fit == "pad" else None,
        "resize": {
            "size": cache_side,
            "filter": "bilinear",
            "reducing_gap": 2.0,
            "dtype": "uint8",
            "how": "PIL Image.resize((size, size), Image.BILINEAR, reducing_gap=2.0) on the RGB square "
            "(pad) or the crop (stretch); skipped when it is already size x size",
        },
        "scale": 1.0 / 255.0,
        "resize_to_model": None
        if cache_side == image_size
        else {
            "size": image_size,
            "filter": "bilinear",
            "antialias": True,
            "align_corners": False,
            "dtype": "float32",
            "how": "on the scaled float32 values, per channel: PIL mode 'F' Image.resize((size, size), "
            "Image.BILINEAR), or torch F.interpolate(mode='bilinear', antialias=True)",
        },
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "normalize": "(x - mean[c]) / std[c] in float32",
        "layout": "NCHW",
        "dtype": "float32",
        "channel_order": "RGB",
        "class_names": list(class_names),
    }


@dataclass(frozen=True)
class Preprocessing:
    """The parameters of a card's ``preprocessing`` section, checked."""

    margin: float
    fit: str
    pad_color: tuple[int, int, int]
    cache_side: int
    reducing_gap: float
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    max_pixels: int = PrepareConfig.max_pixels
    exif_orientation: bool = True

    @classmethod
    def from_card(cls, card: Mapping[str, Any], where: str = "model card") -> Preprocessing:
        """From a whole model card or its ``preprocessing`` section; PredictError when it cannot be followed."""
        pre = card.get("preprocessing", card) if isinstance(card, Mapping) else None
        if not isinstance(pre, Mapping) or "resize" not in pre:
            raise PredictError(
                f"{where} has no 'preprocessing' section (exported before it existed): "
                "re-export the model with the workbook's notebook 04"
            )
        try:
            if pre.get("version") != PREPROCESSING_VERSION:
                raise PredictError(
                    f"{where}: preprocessing version {pre.get('version')!r} is not "
                    f"{PREPROCESSING_VERSION}, the one this trashlib implements"
                )
            resize, second = pre["resize"], pre.get("resize_to_model")
            if resize.get("filter") != "bilinear" or (
                second and (second.get("filter") != "bilinear" or not second.get("antialias"))
            ):
                raise PredictError(f"{where}: only bilinear resizes (antialiased for the model's size) are implemented")
            if pre.get("layout") != "NCHW" or pre.get("dtype") != "float32" or pre.get("channel_order") != "RGB":
                raise PredictError(f"{where}: only NCHW float32 RGB inputs are implemented")
            made = cls(
                margin=float(pre["crop"]["margin"]),
                fit=str(pre["fit"]),
                pad_color=tuple(int(v) for v in pre["pad_color"]),  # type: ignore[arg-type]
                cache_side=int(resize["size"]),
                reducing_gap=float(resize["reducing_gap"]),
                image_size=int(second["size"]) if second else int(resize["size"]),
                mean=tuple(float(v) for v in pre["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in pre["std"]),  # type: ignore[arg-type]
                class_names=tuple(str(c) for c in pre["class_names"]),
                max_pixels=int(pre["decode"]["max_pixels"]),
                exif_orientation=bool(pre["decode"]["exif_orientation"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PredictError):
                raise
            raise PredictError(f"{where}: malformed preprocessing section ({type(exc).__name__}: {exc})") from None
        if (
            made.fit not in FITS
            or len(made.pad_color) != 3
            or len(made.mean) != 3
            or len(made.std) != 3
            or min(made.cache_side, made.image_size) < 1
            or made.reducing_gap < 1
            or not made.class_names
            or any(s == 0 for s in made.std)
        ):
            raise PredictError(f"{where}: preprocessing values out of range: {made}")
        return made


def as_preprocessing(card_or_params: Preprocessing | Mapping[str, Any]) -> Preprocessing:
    return card_or_params if isinstance(card_or_params, Preprocessing) else Preprocessing.from_card(card_or_params)


# --------------------------------------------------------------------------- ONNX bytes: metadata and digest


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise PredictError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """Top-level protobuf fields: (number, start, payload start, end); PredictError when it is not protobuf."""
    out = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        payload = pos
        if number == 0:
            raise PredictError("field number 0")
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, payload = _varint(data, pos)
            pos = payload + length
        elif wire == 5:
            pos += 4
        else:
            raise PredictError(f"wire type {wire}")
        if pos > len(data):
            raise PredictError("field runs past the end")
        out.append((number, start, payload, pos))
    return out


def _entry(data: bytes) -> tuple[str, str]:
    """A StringStringEntryProto's key and value."""
    parts = {1: "", 2: ""}
    for number, _, payload, end in _fields(data):
        if number in parts:
            parts[number] = data[payload:end].decode("utf-8")
    return parts[1], parts[2]


def _encode_entry(key: str, value: str) -> bytes:
    body = b""
    for number, text in ((1, key), (2, value)):
        raw = text.encode("utf-8")
        body += _encode_varint(number << 3 | 2) + _encode_varint(len(raw)) + raw
    return _encode_varint(METADATA_FIELD << 3 | 2) + _encode_varint(len(body)) + body


def onnx_metadata(data: bytes) -> dict[str, str]:
    """The metadata_props of a serialized ONNX model, read without onnx or onnxruntime."""
    try:
        return dict(_entry(data[p:e]) for n, _, p, e in _fields(data) if n == METADATA_FIELD)
    except (PredictError, UnicodeDecodeError) as exc:
        raise PredictError(f"not an ONNX model ({exc})") from None


def _canonical_card(value: str) -> str:
    card = json.loads(value)
    if isinstance(card, dict):
        card = {k: v for k, v in card.items() if k != DIGEST_KEY}
    return json.dumps(card, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def model_digest(data: bytes) -> str:
    """sha256 of a serialized ONNX model's graph, opsets and every metadata entry, the card's own digest left out
    (see ``DIGEST_COVERS``); equal however the metadata entries are ordered."""
    try:
        fields = _fields(data)
        h = hashlib.sha256()
        entries = []
        for number, start, payload, end in fields:
            if number == METADATA_FIELD:
                entries.append(_entry(data[payload:end]))
            else:
                h.update(data[start:end])
        for key, value in sorted(entries):
            h.update(key.encode() + b"\0" + (_canonical_card(value) if key == "model_card" else value).encode() + b"\0")
    except (PredictError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictError(f"not an ONNX model with a readable card ({exc})") from None
    return h.hexdigest()


def seal_model_card(data: bytes) -> bytes:
    """The serialized model with ``model_digest`` (``model_digest(data)``) written into the card in its metadata,
    so a lone .onnx file can be checked. Other fields keep their bytes; a previous digest is replaced. A model
    without a card in its metadata comes back unchanged."""
    if "model_card" not in onnx_metadata(data):
        return data
    digest = model_digest(data)
    out, placed = [], False
    for number, start, _payload, end in _fields(data):
        if number != METADATA_FIELD:
            out.append(data[start:end])
            continue
        if placed:
            continue
        placed = True
        for key, value in (_entry(data[p:e]) for n, _, p, e in _fields(data) if n == METADATA_FIELD):
            if key == "model_card":
                card = json.loads(value)
                card[DIGEST_KEY] = {"sha256": digest, "covers": DIGEST_COVERS}
                out.append(_encode_entry(key, json.dumps(card)))
            else:
                out.append(_encode_entry(key, value))
    return b"".join(out)


# --------------------------------------------------------------------------- runtimes


class OnnxRuntimeRunner:
    """onnxruntime's CPU provider: float32 NCHW in, logits out."""

    name = "onnxruntime"

    def __init__(self, data: bytes, *, threads: int, input_name: str | None, output_name: str | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # decode threads share the cores
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.data = data
        self.input_name = input_name or self.session.get_inputs()[0].name
        self.output_name = output_name or self.session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def kernels(self) -> dict[str, int]:
        """Node types of the graph onnxruntime runs after its optimisations (QLinearConv, FusedConv...), counted.
        onnxruntime does not name the instruction set: MLAS picks VNNI or AMX kernels from the CPU flags."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3  # the "hardware specific optimizations" notice: this file is only read here
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(self.data, options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
        return dict(Counter(f"{node.domain}.{node.op_type}".lstrip(".") for node in graph.node).most_common())


class OpenVinoRunner:
    """OpenVINO's CPU plugin on the same ONNX file: float32 NCHW in, logits out. fp32 graphs run in fp32 (the
    plugin would pick bf16 on CPUs that have it); QDQ int8 graphs run on its int8 kernels."""

    name = "openvino"

    def __init__(self, data: bytes, *, threads: int, input_name: str | None, output_name: str | None) -> None:
        import openvino as ov

        self.core, self.data, self.output_name = ov.Core(), data, output_name
        self.config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = self.core.compile_model(self.core.read_model(data), "CPU", self.config)
        self.requests = {0: self.compiled.create_infer_request()}

    def _request(self, shape: tuple[int, ...]) -> Any:
        """Batch 1 gets a graph compiled for its static shape (about 0.1 ms faster a call than the dynamic one,
        measured on a Xeon); other batches share the dynamic graph."""
        if shape[0] != 1:
            return self.requests[0]
        if 1 not in self.requests:
            model = self.core.read_model(self.data)
            model.reshape(list(shape))
            self.requests[1] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.requests[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        result = self._request(x.shape).infer([x])
        return np.array(result[self.output_name] if self.output_name else result[0])

    def kernels(self) -> dict[str, int]:
        """The CPU primitives OpenVINO chose for the convolutions and matrix products (e.g. brgconv_avx512_amx_I8,
        jit_avx512_vnni_I8), counted, as its runtime graph reports them."""
        found: Counter[str] = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = info["layerType"].astype(str)
            if layer in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution"):
                found[f"{layer} {info['primitiveType'].astype(str)}"] += 1
        return dict(found.most_common())


RUNTIMES: dict[str, tuple[str, type]] = {
    "onnxruntime": ("onnxruntime", OnnxRuntimeRunner),
    "openvino": ("openvino", OpenVinoRunner),
}
# the workbook's deploy runtimes that ship an ONNX file (notebook 04), and the runner that runs each
DEPLOY_RUNNERS: dict[str, str] = {
    "onnx-fp32": "onnxruntime",
    "onnx-int8": "onnxruntime",
    "openvino-fp32": "openvino",
    "openvino-int8": "openvino",
}


def open_runtime(
    name: str,
    data: bytes,
    *,
    threads: int,
    input_name: str | None = None,
    output_name: str | None = None,
    where: str = "model",
) -> Callable[[np.ndarray], np.ndarray]:
    """A runner (float32 NCHW -> logits) of one of ``RUNTIMES``; PredictError for an unknown or uninstalled one."""
    if name not in RUNTIMES:
        raise PredictError(f"unknown runtime {name!r} (known: {', '.join(sorted(RUNTIMES))})")
    package, factory = RUNTIMES[name]
    try:
        return factory(data, threads=threads, input_name=input_name, output_name=output_name)
    except ImportError:
        raise PredictError(f"runtime {name!r} is not installed: pip install {package}") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PredictError(f"{where}: {name} cannot load it ({first})") from None


# --------------------------------------------------------------------------- the shipped model


@dataclass
class ShippedModel:
    """A verified ONNX model, its card, its preprocessing and a runner."""

    path: Path
    card: dict[str, Any]
    preprocessing: Preprocessing
    run: Callable[[np.ndarray], np.ndarray]
    runtime: str

    @property
    def class_names(self) -> list[str]:
        return list(self.preprocessing.class_names)

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """Softmax of the logits of uint8 NHWC crops at cache_side."""
        return softmax(self.run(model_input(crops, self.preprocessing)))


def load_model(path: str | Path, *, runtime: str | None = None, threads: int = 1) -> ShippedModel:
    """A winner or deploy folder (model.onnx + model_card.json) or a lone .onnx with its card in the metadata.
    The file's sha256 (folder) or the embedded digest (lone file) is checked: a changed file is a PredictError.
    ``runtime`` defaults to the card's ``runner`` (the runtime the workbook timed and shipped), else onnxruntime."""
    given = Path(path)
    if given.is_dir():
        onnx_path, card_path = given / "model.onnx", given / "model_card.json"
        if not onnx_path.is_file() or not card_path.is_file():
            raise PredictError(f"{given}: a model folder needs model.onnx and model_card.json")
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PredictError(f"{card_path}: cannot read the model card ({exc})") from None
        data = onnx_path.read_bytes()
        expected, actual = card.get("onnx_sha256"), hashlib.sha256(data).hexdigest()
        if not expected:
            raise PredictError(f"{card_path} has no onnx_sha256: the model file cannot be checked")
        if actual != expected:
            raise PredictError(
                f"{onnx_path}: sha256 {actual[:16]}... does not match onnx_sha256 {expected[:16]}... "
                f"in {card_path.name}: the file was changed or belongs to another card"
            )
        _check_embedded(onnx_path, data, card)
    elif given.is_file():
        onnx_path = given
        try:
            data = given.read_bytes()
        except OSError as exc:
            raise PredictError(f"{given}: cannot read ({exc.strerror})") from None
        card = _check_embedded(onnx_path, data, None)
    else:
        raise PredictError(f"{given}: no such model file or folder")
    pre = Preprocessing.from_card(card, where=f"{onnx_path} model card")
    if list(card.get("class_names", pre.class_names)) != list(pre.class_names):
        raise PredictError(f"{onnx_path}: the card's class_names and its preprocessing class_names differ")
    io_names = card.get("input", {}), card.get("output", {})
    runtime = runtime or str(card.get("runner", "onnxruntime"))
    runner = open_runtime(
        runtime,
        data,
        threads=threads,
        input_name=io_names[0].get("name"),
        output_name=io_names[1].get("name"),
        where=str(onnx_path),
    )
    return ShippedModel(onnx_path, card, pre, runner, runtime)


def _check_embedded(onnx_path: Path, data: bytes, folder_card: dict[str, Any] | None) -> dict[str, Any]:
    """The card in the ONNX metadata, its digest checked; with a folder card, their classes must agree."""
    try:
        meta = onnx_metadata(data)
    except PredictError as exc:
        raise PredictError(f"{onnx_path}: {exc}") from None
    if "model_card" not in meta:
        if folder_card is not None:
            return folder_card
        raise PredictError(f"{onnx_path}: no model card in its metadata; give the folder with model_card.json")
    try:
        card = json.loads(meta["model_card"])
    except ValueError as exc:
        raise PredictError(f"{onnx_path}: the model card in its metadata is not JSON ({exc})") from None
    sealed = card.get(DIGEST_KEY)
    if isinstance(sealed, dict) and sealed.get("sha256"):
        actual = model_digest(data)
        if actual != sealed["sha256"]:
            raise PredictError(
                f"{onnx_path}: model digest {actual[:16]}... does not match the {sealed['sha256'][:16]}"
                f"... sealed in its card: the file was changed after export"
            )
    elif folder_card is None:
        print(
            f"warning: {onnx_path} carries no model_digest (exported before it existed): not verified", file=sys.stderr
        )
    if folder_card is not None:
        if card.get("class_names") != folder_card.get("class_names"):
            raise PredictError(f"{onnx_path}: the class_names in its metadata differ from model_card.json's")
        return folder_card
    return card


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def model_input(crops: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 NHWC crops at cache_side -> float32 NCHW at image_size, normalised (the card's scale,
    resize_to_model and normalize steps; the second resize is PIL's antialiased bilinear on float32)."""
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        raise PredictError(f"crops must be uint8 (N, H, W, 3), got {crops.dtype} {crops.shape}")
    x = np.ascontiguousarray(crops.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)
    size = pre.image_size
    if x.shape[2:] != (size, size):
        out = np.empty((len(x), 3, size, size), np.float32)
        for i in range(len(x)):
            for c in range(3):
                resized = Image.fromarray(x[i, c]).resize((size, size), Image.Resampling.BILINEAR)
                out[i, c] = np.asarray(resized, dtype=np.float32)
        x = out
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


# --------------------------------------------------------------------------- inputs

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Target:
    """One object to classify in a photo: a COCO box (None: the whole photo), or a crop box already computed
    (a manifest row), its annotation id and label when known, or why it cannot be cut."""

    box: Box | None = None
    ann_id: int | None = None
    crop: tuple[int, int, int, int] | None = None
    label: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Item:
    """One photo file, decoded once for all of its targets; ``error`` when it cannot even be opened."""

    path: Path | None
    name: str
    targets: tuple[Target, ...] = (Target(),)
    error: str | None = None


def collect_inputs(inputs: Sequence[str | Path]) -> list[Item]:
    """Items of image files, folders of images (recursively; one object per image) and COCO folders (a folder
    with annotations.json, or the json itself: every box). A path that does not exist is a PredictError; a file
    that is not an image gets an item with an error."""
    items: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir() and path.suffix.lower() not in IMAGE_EXTENSIONS:
            if (path / "annotations.json").is_file():
                items.extend(coco_items(path / "annotations.json"))
            else:
                items.extend(folder_items(path))
        elif path.is_dir():
            items.append(Item(path, str(given), error="is a directory, not an image file"))
        elif path.is_file() and path.suffix == ".json":
            items.extend(coco_items(path))
        elif path.is_file() or path.is_symlink():
            items.append(Item(path, str(given)))
        else:
            raise PredictError(f"input {given}: no such file or folder")
    return items


def folder_items(root: Path) -> list[Item]:
    """Every file under root (hidden ones left out), sorted; names are relative to root."""
    items = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        for d in list(dirs):
            if d.startswith("."):
                dirs.remove(d)
            elif Path(d).suffix.lower() in IMAGE_EXTENSIONS:
                dirs.remove(d)
                items.append(
                    Item(here / d, (here / d).relative_to(root).as_posix(), error="is a directory, not an image file")
                )
        for f in sorted(files):
            if f.startswith("."):
                continue
            rel = (here / f).relative_to(root).as_posix()
            items.append(_checked_item(root, rel))
    return sorted(items, key=lambda it: it.name)


def _checked_item(root: Path, rel: str, targets: tuple[Target, ...] = (Target(),)) -> Item:
    try:
        path = safe_path(root, rel)
    except DataError as exc:
        return Item(None, rel, targets, error=str(exc))
    if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
        return Item(path, rel, targets, error=f"not an image file extension {Path(rel).suffix!r}")
    return Item(path, rel, targets)


def coco_items(ann_path: Path) -> list[Item]:
    """One item per COCO image with annotations, a target per annotation; bad records become targets with an
    error (annotations of unknown images: an item named after the json)."""
    try:
        doc = json.loads(ann_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise PredictError(f"{ann_path}: cannot read COCO annotations ({exc})") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("annotations"), list)
    ):
        raise PredictError(f"{ann_path}: needs 'images' and 'annotations' lists")
    images: dict[int, str] = {}
    for img in doc["images"]:
        if isinstance(img, dict) and _is_id(img.get("id")) and isinstance(img.get("file_name"), str):
            images.setdefault(img["id"], img["file_name"])
    targets: dict[int, list[Target]] = {}
    orphans: list[Target] = []
    for i, record in enumerate(doc["annotations"]):
        ann = record if isinstance(record, dict) else {}
        ann_id = ann.get("id") if _is_id(ann.get("id")) else None
        bbox = ann.get("bbox")
        error = None
        box: Box | None = None
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite(v) for v in bbox)):
            error = f"annotations[{i}].bbox is not four finite numbers"
        else:
            box = (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
            if box[2] <= 0 or box[3] <= 0:
                error = f"annotations[{i}].bbox has zero or negative size"
        target = Target(box=box, ann_id=ann_id, error=error)
        image_id = ann.get("image_id")
        if _is_id(image_id) and image_id in images:
            targets.setdefault(image_id, []).append(target)
        else:
            orphans.append(
                Target(
                    box=box,
                    ann_id=ann_id,
                    error=f"annotations[{i}].image_id {image_id!r} is not an image of the json",
                )
            )
    root = coco_image_root(ann_path.parent, list(images.values()))
    items = [_checked_item(root, images[image_id], tuple(ts)) for image_id, ts in targets.items()]
    if orphans:
        items.append(Item(None, ann_path.name, tuple(orphans), error="annotation of an unknown image"))
    return items


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def items_from_manifest(root: Path, rows: Sequence[Mapping[str, str]]) -> list[Item]:
    """Items of a prepared data set's manifest rows (one per photo, in first-row order), each target with the
    row's crop box and label: the same crops the workbook cached, decoded from the files on disk."""
    by_source: dict[str, list[Target]] = {}
    for r in rows:
        crop = tuple(int(r[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
        ann = int(r["ann_id"]) if r.get("ann_id") else None
        by_source.setdefault(r["source"], []).append(Target(ann_id=ann, crop=crop, label=r["label"]))  # type: ignore[arg-type]
    return [_checked_item(root, src, tuple(ts)) for src, ts in by_source.items()]


# --------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    """One item's crops (uint8 HWC at cache_side, or the reason it failed, per target) and its decode seconds."""

    index: int
    crops: list[np.ndarray | str]
    seconds: float
    scale: int = 1


def draft_scale(boxes: Sequence[tuple[int, int, int, int]], pre: Preprocessing, gap: float = 1.0) -> int:
    """The largest JPEG DCT reduction (8, 4, 2, 1) that keeps every crop at least ``gap`` x cache_side pixels on
    the side that decides its resolution: the longer side for ``pad`` (the square's side), the shorter for
    ``stretch``. ``gap=2`` leaves PIL's own bilinear step to the end, closer to full decoding but slower."""
    best = DRAFT_SCALES[0]
    for x0, y0, x1, y1 in boxes:
        w, h = x1 - x0, y1 - y0
        side = max(w, h) if pre.fit == "pad" else min(w, h)
        best = min(best, next(k for k in DRAFT_SCALES if side / k >= gap * pre.cache_side or k == 1))
    return best


def decode_item(
    item: Item, pre: Preprocessing, *, draft: bool = True, draft_gap: float = DRAFT_GAP, index: int = 0
) -> Decoded:
    """Decode one photo once (at a reduced JPEG scale when ``draft`` allows, see ``draft_scale``) and cut every
    target."""
    started = time.perf_counter()
    if item.error:
        return Decoded(index, [t.error or item.error for t in item.targets], time.perf_counter() - started)
    try:
        img, boxes, scale, size = _open(item, pre, draft_gap if draft else 0.0)
    except PredictError as exc:
        return Decoded(index, [t.error or str(exc) for t in item.targets], time.perf_counter() - started)
    crops: list[np.ndarray | str] = []
    for target, box in zip(item.targets, boxes, strict=False):
        if target.error:
            crops.append(target.error)
        elif box is None:
            crops.append(f"box {target.box} lies outside the {size[0]}x{size[1]} image")
        else:
            try:
                crops.append(cut(img, box, scale, pre))
            except Exception as exc:
                crops.append(f"cannot crop {box} ({type(exc).__name__}: {exc})")
    return Decoded(index, crops, time.perf_counter() - started, scale)


ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation -> the transpose that shows the photo upright


def _simplejpeg() -> Any:
    """The simplejpeg module (libjpeg-turbo straight into numpy, bit-identical to Pillow's decoding and faster),
    or None where it is not installed: Pillow decodes then."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _open(
    item: Item, pre: Preprocessing, draft_gap: float
) -> tuple[Image.Image, list[tuple[int, int, int, int] | None], int, tuple[int, int]]:
    """The decoded RGB photo (oriented), the targets' crop boxes in full-size pixels, the JPEG scale used and the
    full oriented size.
    JPEGs in RGB (YCbCr) or grey go through simplejpeg when installed, everything else through Pillow."""
    path = item.path
    assert path is not None
    try:
        if path.is_dir():
            raise PredictError("is a directory, not an image file")
        try:
            check_regular_file(path)  # a FIFO named like a photo would block the read forever
        except DataError as error:
            raise PredictError(str(error)) from None
        data = path.read_bytes()
        if not data:
            raise PredictError("empty file (0 bytes)")
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > pre.max_pixels:
                raise PredictError(f"{width}x{height} pixels exceeds max_pixels={pre.max_pixels} (decompression bomb?)")
            orientation = im.getexif().get(0x0112, 1) if pre.exif_orientation else 1
            size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            boxes = [t.crop if t.crop is not None else crop_box(t.box, size, pre.margin) for t in item.targets]
            valid = [b for b, t in zip(boxes, item.targets, strict=False) if b is not None and not t.error]
            scale = draft_scale(valid, pre, draft_gap) if draft_gap and valid and im.format == "JPEG" else 1
            turbo = _simplejpeg() if im.format == "JPEG" and im.mode in ("RGB", "L") else None
            if turbo is not None:
                array = turbo.decode_jpeg(
                    data, colorspace="RGB", min_width=width // scale, min_height=height // scale, strict=True
                )
                if array.shape[:2] == (-(-height // scale), -(-width // scale)):
                    img = Image.fromarray(array)
                    return (
                        img.transpose(ORIENTATION[orientation]) if orientation in ORIENTATION else img,
                        boxes,
                        scale,
                        size,
                    )
            if scale > 1:
                im.draft("RGB", (width // scale, height // scale))
                scale = next((k for k in DRAFT_SCALES if im.size == (-(-width // k), -(-height // k))), 1)
            im.load()
            upright: Image.Image = ImageOps.exif_transpose(im) if pre.exif_orientation else im
            return to_rgb(upright), boxes, scale, size
    except PredictError:
        raise
    except FileNotFoundError:
        raise PredictError("file is missing") from None
    except IsADirectoryError:
        raise PredictError("is a directory, not an image file") from None
    except PermissionError:
        raise PredictError("cannot read the file (permission denied)") from None
    except UnidentifiedImageError:
        raise PredictError("not a decodable image (no image format recognised)") from None
    except Image.DecompressionBombError as exc:
        raise PredictError(f"decompression bomb refused ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PredictError(f"corrupt or truncated image ({exc})") from None
    except Exception as exc:
        raise PredictError(f"cannot decode ({type(exc).__name__}: {exc})") from None


def _square(img: Image.Image, side: int, fit: str, fill: tuple[int, int, int], gap: float) -> np.ndarray:
    """``data.square_resize`` with the card's pad colour and reducing gap."""
    w, h = img.size
    s = max(w, h)
    if fit == "stretch":
        return np.asarray(img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=gap), dtype=np.uint8)
    if w != h:
        canvas = Image.new("RGB", (s, s), fill)
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
        img = canvas
    if s != side:
        img = img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=gap)
    return np.asarray(img, dtype=np.uint8)


def cut(img: Image.Image, box: tuple[int, int, int, int], scale: int, pre: Preprocessing) -> np.ndarray:
    """One crop (box in full-size pixels) of a photo decoded at 1/scale, squared and resized to cache_side.
    At scale 1 it is exactly the workbook's crop; at a reduced scale the same geometry in reduced pixels
    (fractional boxes through PIL's ``resize(box=...)``)."""
    side, fit, fill, gap = pre.cache_side, pre.fit, pre.pad_color, pre.reducing_gap
    if scale == 1:
        return _square(img.crop(box), side, fit, fill, gap)
    x0, y0, x1, y1 = box
    k = float(scale)
    if fit == "stretch":
        return np.asarray(
            img.resize((side, side), Image.Resampling.BILINEAR, box=(x0 / k, y0 / k, x1 / k, y1 / k), reducing_gap=gap),
            dtype=np.uint8,
        )
    w, h = x1 - x0, y1 - y0
    s = max(w, h)
    fx0, fy0 = (x0 - (s - w) // 2) / k, (y0 - (s - h) // 2) / k  # the square's corner in reduced pixels
    cx0, cy0 = math.floor(fx0), math.floor(fy0)
    canvas = Image.new("RGB", (math.ceil(fx0 + s / k) - cx0, math.ceil(fy0 + s / k) - cy0), fill)
    rx0, ry0 = round(x0 / k), round(y0 / k)
    rx1 = max(rx0 + 1, min(round(x1 / k), img.size[0]))
    ry1 = max(ry0 + 1, min(round(y1 / k), img.size[1]))
    canvas.paste(img.crop((rx0, ry0, rx1, ry1)), (rx0 - cx0, ry0 - cy0))
    region = (fx0 - cx0, fy0 - cy0, fx0 - cx0 + s / k, fy0 - cy0 + s / k)
    return np.asarray(
        canvas.resize((side, side), Image.Resampling.BILINEAR, box=region, reducing_gap=gap), dtype=np.uint8
    )


@dataclass(frozen=True)
class ObjectRef:
    """One target of one item: indices into the items and the item's targets."""

    item: int
    target: int


@dataclass
class CropBatch:
    """Up to batch_size crops (uint8 NHWC at cache_side) with the objects they belong to, the objects that failed
    (with reasons), and the decode seconds of the items whose decoding finished in this batch."""

    crops: np.ndarray
    objects: list[ObjectRef]
    failed: list[tuple[ObjectRef, str]]
    decode_seconds: dict[int, float] = field(default_factory=dict)
    scales: dict[int, int] = field(default_factory=dict)


def load_crops(
    items: Sequence[Item],
    card_or_params: Preprocessing | Mapping[str, Any],
    *,
    threads: int = 2,
    batch_size: int = 32,
    draft: bool = True,
    draft_gap: float = DRAFT_GAP,
    prefetch: int | None = None,
) -> Iterator[CropBatch]:
    """uint8 crop batches of every item's targets, in order. Photos are decoded in ``threads`` threads (PIL
    releases the GIL), each once for all of its boxes, up to ``prefetch`` photos ahead, so the next batch decodes
    while the caller runs the model on this one. With ``draft`` JPEGs are decoded at the largest DCT reduction
    that keeps each crop at least cache_side pixels (see ``draft_scale``)."""
    pre = as_preprocessing(card_or_params)
    if batch_size < 1 or threads < 1 or draft_gap < 1:
        raise PredictError(
            f"batch_size and threads must be >= 1 and draft_gap >= 1, got {batch_size}, {threads} and {draft_gap}"
        )
    ahead = prefetch or max(2 * batch_size, 4 * threads)
    side = pre.cache_side

    def batch(
        crops: list[np.ndarray],
        objects: list[ObjectRef],
        failed: list[tuple[ObjectRef, str]],
        seconds: dict[int, float],
        scales: dict[int, int],
    ) -> CropBatch:
        array = np.stack(crops) if crops else np.zeros((0, side, side, 3), np.uint8)
        return CropBatch(array, objects, failed, seconds, scales)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: deque[Future[Decoded]] = deque()
        next_item = 0
        crops: list[np.ndarray] = []
        objects: list[ObjectRef] = []
        failed: list[tuple[ObjectRef, str]] = []
        seconds: dict[int, float] = {}
        scales: dict[int, int] = {}
        try:
            while next_item < len(items) or pending:
                while next_item < len(items) and len(pending) < ahead:
                    pending.append(
                        pool.submit(
                            decode_item, items[next_item], pre, draft=draft, draft_gap=draft_gap, index=next_item
                        )
                    )
                    next_item += 1
                done = pending.popleft().result()
                seconds[done.index] = done.seconds
                scales[done.index] = done.scale
                for t, crop in enumerate(done.crops):
                    ref = ObjectRef(done.index, t)
                    if isinstance(crop, str):
                        failed.append((ref, crop))
                        continue
                    crops.append(crop)
                    objects.append(ref)
                    if len(crops) == batch_size:
                        yield batch(crops, objects, failed, seconds, scales)
                        crops, objects, failed, seconds, scales = [], [], [], {}, {}
            if crops or failed or seconds:
                yield batch(crops, objects, failed, seconds, scales)
        finally:
            for f in pending:
                f.cancel()


# --------------------------------------------------------------------------- predict


@dataclass
class PredictionRow:
    """One object's prediction, or the reason there is none."""

    file: str
    box: Box | None
    ann_id: int | None
    label: str | None = None
    confidence: float | None = None
    probabilities: list[float] | None = None
    error: str | None = None
    truth: str | None = None


@dataclass
class Predictions:
    """Rows in input order, per-file seconds (decode plus a share of its batch's model time) and totals."""

    rows: list[PredictionRow]
    class_names: list[str]
    file_seconds: dict[str, float]
    inference_seconds: float
    seconds: float
    first_prediction_s: float | None
    scales: dict[str, int]

    @property
    def n_errors(self) -> int:
        return sum(r.error is not None for r in self.rows)


def predict(
    model: ShippedModel,
    items: Sequence[Item],
    *,
    threads: int = 2,
    batch_size: int = 32,
    draft: bool = True,
    draft_gap: float = DRAFT_GAP,
    progress: bool = False,
) -> Predictions:
    """Predict every target of every item; a file that fails gets rows with its error, the others go on."""
    started = time.perf_counter()
    slots: dict[ObjectRef, PredictionRow] = {}
    file_seconds: dict[str, float] = {}
    scales: dict[str, int] = {}
    inference = 0.0
    first: float | None = None
    total = sum(len(it.targets) for it in items)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="obj", desc="predict", file=sys.stderr)
    try:
        for b in load_crops(
            items, model.preprocessing, threads=threads, batch_size=batch_size, draft=draft, draft_gap=draft_gap
        ):
            for index, s in b.decode_seconds.items():
                file_seconds[items[index].name] = file_seconds.get(items[index].name, 0.0) + s
                scales[items[index].name] = b.scales.get(index, 1)
            for ref, reason in b.failed:
                slots[ref] = _row(items, ref, error=reason)
            if len(b.crops):
                t0 = time.perf_counter()
                probs = model.probabilities(b.crops)
                spent = time.perf_counter() - t0
                inference += spent
                first = first if first is not None else time.perf_counter() - started
                for ref, p in zip(b.objects, probs, strict=False):
                    k = int(p.argmax())
                    slots[ref] = _row(
                        items,
                        ref,
                        label=model.class_names[k],
                        confidence=float(p[k]),
                        probabilities=[float(v) for v in p],
                    )
                    name = items[ref.item].name
                    file_seconds[name] = file_seconds.get(name, 0.0) + spent / len(b.crops)
            if bar is not None:
                bar.update(len(b.objects) + len(b.failed))
    finally:
        if bar is not None:
            bar.close()
    rows = [slots[ObjectRef(i, t)] for i, it in enumerate(items) for t in range(len(it.targets))]
    return Predictions(rows, model.class_names, file_seconds, inference, time.perf_counter() - started, first, scales)


def submit_time(
    model: ShippedModel,
    root: str | Path,
    rows: Sequence[Mapping[str, str]],
    *,
    threads: int = 2,
    batch_size: int = 32,
    draft: bool = True,
) -> dict[str, Any]:
    """The workbook's submit time through the path that ships (``predict``: threaded, draft-mode decoding of each
    photo once, batched inference): every manifest row's crop predicted from the file under ``root``. Returns the
    seconds, n, failed objects and macro-F1 of these predictions against the rows' labels."""
    items = items_from_manifest(Path(root), rows)
    result = predict(model, items, threads=threads, batch_size=batch_size, draft=draft)
    names = model.class_names
    done = [r for r in result.rows if r.error is None and r.label is not None]
    unknown = sorted({str(r.truth) for r in done if r.truth not in names})
    if unknown:
        raise PredictError(f"labels {unknown} are not among the model's classes {names}")
    truth = [names.index(str(r.truth)) for r in done]
    predicted = [names.index(str(r.label)) for r in done]
    return {
        "seconds": result.seconds,
        "n": len(done),
        "failed": result.n_errors,
        "macro_f1": classification_scores(truth, predicted, names)["macro_f1"] if done else 0.0,
        "draft": draft,
    }


def _row(items: Sequence[Item], ref: ObjectRef, **values: Any) -> PredictionRow:
    item = items[ref.item]
    target = item.targets[ref.target]
    return PredictionRow(file=item.name, box=target.box, ann_id=target.ann_id, truth=target.label, **values)


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def predictions_csv(predictions: Predictions) -> str:
    """file, ann_id, box ("x,y,w,h", empty for a whole image), class, confidence, p_<class>..., error."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["file", "ann_id", "box", "class", "confidence", *(f"p_{c}" for c in predictions.class_names), "error"]
    )
    for r in predictions.rows:
        probs = [f"{p:.6f}" for p in r.probabilities] if r.probabilities else [""] * len(predictions.class_names)
        writer.writerow(
            [
                r.file,
                "" if r.ann_id is None else r.ann_id,
                "" if r.box is None else ",".join(_number(v) for v in r.box),
                r.label or "",
                "" if r.confidence is None else f"{r.confidence:.6f}",
                *probs,
                r.error or "",
            ]
        )
    return buf.getvalue()


def competition_json(predictions: Predictions, *, total_seconds: float, macs: int | None) -> dict[str, Any]:
    """The competition's submission: ``inference`` (file -> class), ``time`` (``runtime``: ``all`` and
    ``inference_only`` seconds; ``inference``: file -> seconds) and ``macs``. Objects of a COCO input are named
    ``file#ann_id``; a file that failed maps to null and is listed under ``errors``."""
    names = [_key(r) for r in predictions.rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PredictError(f"the competition format needs unique file names; repeated: {repeated[:5]}")
    doc: dict[str, Any] = {
        "inference": {n: r.label for n, r in zip(names, predictions.rows, strict=False)},
        "time": {
            "runtime": {"all": total_seconds, "inference_only": predictions.inference_seconds},
            "inference": {
                n: predictions.file_seconds.get(r.file, 0.0) / _objects_in(predictions, r.file)
                for n, r in zip(names, predictions.rows, strict=False)
            },
        },
        "macs": macs,
    }
    errors = {n: r.error for n, r in zip(names, predictions.rows, strict=False) if r.error}
    if errors:
        doc["errors"] = errors
    return doc


def _key(row: PredictionRow) -> str:
    return row.file if row.box is None and row.ann_id is None else f"{row.file}#{row.ann_id}"


def _objects_in(predictions: Predictions, file: str) -> int:
    return max(1, sum(r.file == file for r in predictions.rows))


def main_predict(
    model_path: str,
    inputs: Sequence[str],
    *,
    out: str | None,
    fmt: str = "csv",
    runtime: str = "onnxruntime",
    threads: int = 2,
    batch_size: int = 32,
    draft: bool = True,
    draft_gap: float = DRAFT_GAP,
    progress: bool | None = None,
) -> int:
    """The ``predict`` command: load and verify the model, predict, write the CSV or JSON atomically."""
    started = time.perf_counter()
    if fmt not in ("csv", "competition"):
        raise PredictError(f"--format must be csv or competition, got {fmt!r}")
    if threads < 1 or batch_size < 1 or draft_gap < 1:
        raise PredictError(
            f"--threads and --batch-size must be >= 1 and --draft-gap >= 1, got {threads}, {batch_size} and {draft_gap}"
        )
    items = collect_inputs(inputs)
    model = load_model(model_path, runtime=runtime, threads=threads)
    show = sys.stderr.isatty() if progress is None else progress
    result = predict(
        model, items, threads=threads, batch_size=batch_size, draft=draft, draft_gap=draft_gap, progress=show
    )
    target = Path(out or ("output.csv" if fmt == "competition" else "predictions.csv"))
    if fmt == "competition":
        macs = model.card.get("macs")
        doc = competition_json(
            result,
            total_seconds=time.perf_counter() - started,
            macs=int(macs) if isinstance(macs, (int, float)) else None,
        )
        atomic_write_text(target, json.dumps(doc, indent=1) + "\n")
    else:
        atomic_write_text(target, predictions_csv(result))
    n = len(result.rows)
    print(
        f"{n - result.n_errors} of {n} objects from {len(items)} files predicted in {result.seconds:.2f} s "
        f"(model {result.inference_seconds:.2f} s) -> {target}",
        file=sys.stderr,
    )
    for row in [r for r in result.rows if r.error][:10]:
        print(f"  {row.file}: {row.error}", file=sys.stderr)
    if result.n_errors > 10:
        print(f"  ... and {result.n_errors - 10} more (see the error column)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- decode agreement


def draft_agreement(
    model: ShippedModel, items: Sequence[Item], *, threads: int = 2, batch_size: int = 32, draft_gap: float = 1.0
) -> dict[str, Any]:
    """How much reduced-size JPEG decoding changes things: the same targets decoded at full size and with draft,
    the fraction of identical predictions, the largest and mean absolute pixel difference of the uint8 crops,
    and, where every target carries a label the model knows, macro-F1 over its classes both ways."""
    from sklearn.metrics import f1_score

    pre = model.preprocessing
    full: dict[ObjectRef, np.ndarray] = {}
    reduced: dict[ObjectRef, np.ndarray] = {}
    for store, draft in ((full, False), (reduced, True)):
        for batch in load_crops(items, pre, threads=threads, batch_size=batch_size, draft=draft, draft_gap=draft_gap):
            store.update(zip(batch.objects, batch.crops, strict=False))
    refs = [r for r in full if r in reduced]
    if not refs:
        raise PredictError("no object could be decoded: nothing to compare")
    a = np.stack([full[r] for r in refs])
    b = np.stack([reduced[r] for r in refs])
    pa = np.concatenate([model.probabilities(a[i : i + batch_size]) for i in range(0, len(a), batch_size)]).argmax(1)
    pb = np.concatenate([model.probabilities(b[i : i + batch_size]) for i in range(0, len(b), batch_size)]).argmax(1)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    out: dict[str, Any] = {
        "n": len(refs),
        "identical_predictions": float((pa == pb).mean()),
        "max_abs_pixel_diff": int(diff.max()),
        "mean_abs_pixel_diff": float(diff.mean()),
    }
    labels = [items[r.item].targets[r.target].label for r in refs]
    if all(label in model.class_names for label in labels):
        y = np.array([model.class_names.index(str(label)) for label in labels])
        kw: dict[str, Any] = {"labels": list(range(len(model.class_names))), "average": "macro", "zero_division": 0}
        out["f1_full"] = float(f1_score(y, pa, **kw))
        out["f1_draft"] = float(f1_score(y, pb, **kw))
        out["f1_change"] = out["f1_draft"] - out["f1_full"]
    return out


# --------------------------------------------------------------------------- evaluate


def prepare_config_for(
    pre: Preprocessing,
    *,
    mapping: str = "taco",
    seed: int = PrepareConfig.seed,
    fractions: tuple[float, float, float] = PrepareConfig.fractions,
) -> PrepareConfig:
    """The workbook's PrepareConfig that makes the card's crops; PredictError when the card asks for something the
    workbook's preparation does not do (another pad colour or reducing gap)."""
    if tuple(pre.pad_color) != PAD_FILL or pre.reducing_gap != 2.0 or not pre.exif_orientation:
        raise PredictError(
            f"the card's preprocessing (pad {pre.pad_color}, reducing_gap {pre.reducing_gap}) is not "
            f"the workbook's (pad {PAD_FILL}, reducing_gap 2.0): evaluate cannot prepare its crops"
        )
    return PrepareConfig(
        mapping=mapping,
        margin=pre.margin,
        cache_side=pre.cache_side,
        fit=pre.fit,
        fractions=(float(fractions[0]), float(fractions[1]), float(fractions[2])),
        seed=seed,
        max_pixels=pre.max_pixels,
    )


def evaluate_model(
    model: ShippedModel,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    mapping: str = "taco",
    seed: int = PrepareConfig.seed,
    fractions: tuple[float, float, float] = PrepareConfig.fractions,
    threads: int = 2,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Prepare ``data`` as the workbook does (``data.prepare_dataset``, cache under ``out/prepared``), predict the
    ``split`` (or ``all``) with the shipped model and score it; class names are matched by name. Writes
    ``evaluation.json``, ``predictions.csv`` and an offline ``evaluation.html`` to ``out``."""
    from trashlib.data import SPLITS, prepare_dataset

    if split not in (*SPLITS, "all"):
        raise PredictError(f"--split must be one of {(*SPLITS, 'all')}, got {split!r}")
    out = Path(out)
    pre = model.preprocessing
    config = prepare_config_for(pre, mapping=mapping, seed=seed, fractions=fractions)
    try:
        prepared = prepare_dataset(data, out / "prepared", config, progress=progress, threads=threads)
    except DataError as exc:
        raise PredictError(str(exc)) from None
    names = model.class_names
    index = [i for i, r in enumerate(prepared.rows) if split == "all" or r["split"] == split]
    present = sorted({prepared.rows[i]["label"] for i in index})
    unknown = [c for c in present if c not in names]
    if unknown:
        raise PredictError(
            f"data class {unknown[0]!r} is not one of the model's classes {names}"
            + (f" (also unknown: {unknown[1:]})" if len(unknown) > 1 else "")
        )
    if not index:
        raise PredictError(f"{data}: the {split} split holds no samples")
    crops = np.asarray(prepared.crops[index])
    probs = np.concatenate([model.probabilities(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)])
    y = np.array([names.index(prepared.rows[i]["label"]) for i in index], dtype=np.int64)
    pred = probs.argmax(1)
    scored = [names.index(c) for c in prepared.classes if c in names]
    scored += [k for k in sorted(set(pred.tolist())) if k not in scored]
    scored_names = [names[k] for k in scored]
    metrics = {**classification_scores(y, pred, scored_names, scored), "labels": scored_names}
    result = {
        "model": str(model.path),
        "model_name": model.card.get("model"),
        "data": str(data),
        "format": prepared.meta["format"],
        "split": split,
        "prepare_config": asdict(config),
        "prepared": str(prepared.data_dir),
        "skipped_inputs": len(prepared.report.get("skipped", [])),
        "data_classes": prepared.classes,
        "model_classes": names,
        "ignored_data_classes": [c for c in prepared.classes if c not in names],
        "model_classes_absent_from_data": [c for c in names if c not in present],
        **metrics,
    }
    atomic_write_json(out / "evaluation.json", result)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["sample_id", "source", "ann_id", "label", "predicted", "confidence"])
    for j, i in enumerate(index):
        r = prepared.rows[i]
        writer.writerow(
            [r["sample_id"], r["source"], r["ann_id"], r["label"], names[pred[j]], f"{probs[j, pred[j]]:.6f}"]
        )
    atomic_write_text(out / "predictions.csv", rows.getvalue())
    atomic_write_text(out / "evaluation.html", evaluation_html(result))
    return result


def confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """The confusion matrix as a PNG (matplotlib's Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix)
    n = len(class_names)
    fig = Figure(figsize=(1.2 + 0.8 * n, 1.0 + 0.7 * n), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = m.max() if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > top / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def evaluation_html(result: Mapping[str, Any]) -> str:
    """One self-contained page: scores, per-class table and the confusion matrix (inline CSS, base64 PNG)."""
    import base64
    import html

    png = base64.b64encode(confusion_png(result["confusion_matrix"], result["labels"])).decode()
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for c, v in result["per_class"].items()
    )
    esc = {k: html.escape(str(result.get(k))) for k in ("model", "data", "split", "format", "model_name")}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation of {esc["model_name"]}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}code{{background:#f4f4f4}}</style></head><body>
<h1>Evaluation of {esc["model_name"]}</h1>
<p>Model <code>{esc["model"]}</code> on <code>{esc["data"]}</code> ({esc["format"]}), split <b>{esc["split"]}</b>,
{result["n"]} objects.</p>
<p><b>macro-F1 {result["macro_f1"]:.4f}</b>, accuracy {result["accuracy"]:.4f}</p>
<h2>Per class</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>
<h2>Confusion matrix</h2>
<img alt="confusion matrix" src="data:image/png;base64,{png}">
</body></html>
"""


def main_evaluate(
    model_path: str,
    data: str,
    *,
    out: str,
    split: str = "test",
    mapping: str = "taco",
    seed: int = PrepareConfig.seed,
    fractions: tuple[float, float, float] = PrepareConfig.fractions,
    runtime: str = "onnxruntime",
    threads: int = 2,
    batch_size: int = 64,
    progress: bool | None = None,
) -> int:
    """The ``evaluate`` command: prints the scores, writes them under ``out``."""
    model = load_model(model_path, runtime=runtime, threads=threads)
    show = sys.stderr.isatty() if progress is None else progress
    result = evaluate_model(
        model,
        data,
        out,
        split=split,
        mapping=mapping,
        seed=seed,
        fractions=fractions,
        threads=threads,
        batch_size=batch_size,
        progress=show,
    )
    print(f"{result['n']} objects ({split}): macro-F1 {result['macro_f1']:.4f}, accuracy {result['accuracy']:.4f}")
    width = max(len(c) for c in result["per_class"])
    for c, v in result["per_class"].items():
        print(
            f"  {c:<{width}}  precision {v['precision']:.3f}  recall {v['recall']:.3f}  f1 {v['f1']:.3f}  "
            f"support {v['support']}"
        )
    print("confusion matrix (rows: true, columns: predicted):")
    for c, counts in zip(result["labels"], result["confusion_matrix"], strict=False):
        print(f"  {c:<{width}}  " + " ".join(f"{n:5d}" for n in counts))
    print(f"-> {Path(out) / 'evaluation.json'}, {Path(out) / 'evaluation.html'}")
    return 0
