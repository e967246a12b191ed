"""Tests for trashlib.models: the zoo, local pretrained weights, checkpoints and their errors."""

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from trashlib import models
from trashlib.models import (
    MODEL_NAMES,
    EfficientNetLite0,
    ModelError,
    ModelSpec,
    build_model,
    efficientnet_lite0_weights_path,
    load_model,
    mnasnet_weights_path,
    model_preprocessing,
    safe_torch_load,
    save_model,
)

CLASSES = ["Metal", "Paper", "Paperpack", "Plastic", "Plasticbag", "Styrofoam"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was called")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def spec_for(name: str, image_size: int = 32, **extra: object) -> ModelSpec:
    return ModelSpec.from_dict(
        {"name": name, "num_classes": 6, "class_names": CLASSES, "image_size": image_size, **extra}
    )


def test_model_names() -> None:
    assert MODEL_NAMES == ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "efficientnet_lite0")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_fixes_bn_momentum_and_head_init(name: str) -> None:
    model = build_model(name, num_classes=6, image_size=64)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert head.out_features == 6
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(head.bias == 0)
    model.train()
    with torch.no_grad():
        logits = model(torch.randn(8, 3, 64, 64))
    assert logits.shape == (8, 6)
    loss = F.cross_entropy(logits, torch.randint(0, 6, (8,))).item()
    assert abs(loss - math.log(6)) < 0.4 and loss < 2.2


def test_torchvision_default_head_would_start_far_from_ln6() -> None:
    # The reason for the re-initialised head: torchvision's own init starts near 7, not 1.8.
    model = torchvision.models.mnasnet0_5(num_classes=6).train()
    with torch.no_grad():
        loss = F.cross_entropy(model(torch.randn(8, 3, 64, 64)), torch.randint(0, 6, (8,)))
    assert loss.item() > 2.2


def test_model_preprocessing() -> None:
    assert model_preprocessing("mnasnet1_0") == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    lite = model_preprocessing("efficientnet_lite0")
    assert lite["mean"] == pytest.approx([127 / 255] * 3)
    assert lite["std"] == pytest.approx([128 / 255] * 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet50", "num_classes": 6}, "valid names: mnasnet0_5"),
        ({"name": "mnasnet0_5", "num_classes": 1}, "num_classes"),
        ({"name": "mnasnet0_5", "num_classes": 6, "image_size": 16}, "image_size"),
        ({"name": "mnasnet0_5", "num_classes": 6, "image_size": 100}, "multiple of 32"),
        ({"name": "efficientnet_lite0", "num_classes": 6, "image_size": 48}, "multiple of 32"),
        ({"name": "mnasnet0_5", "num_classes": 6, "pretrained": 3}, "pretrained"),
    ],
)
def test_build_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_model(**kwargs)


def test_pretrained_mnasnet_missing_from_hub_cache_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = tmp_path / "checkpoints" / "mnasnet0.5_top1_67.823-3ffadce67e.pth"
    assert mnasnet_weights_path("mnasnet0_5") == expected
    with pytest.raises(ModelError, match="not found at .*mnasnet0.5_top1_67.823") as error:
        build_model("mnasnet0_5", 6, pretrained=True)
    assert "\n" not in str(error.value)
    with pytest.raises(ModelError, match="not found"):
        build_model("mnasnet0_5", 6, pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_mnasnet_from_hub_cache_keeps_backbone_and_new_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    imagenet = torchvision.models.mnasnet0_5(num_classes=1000)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    weights = mnasnet_weights_path("mnasnet0_5")
    weights.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), weights)
    model = build_model("mnasnet0_5", 6, pretrained=True)
    source, loaded = imagenet.state_dict(), model.state_dict()
    assert torch.equal(loaded["layers.0.weight"], source["layers.0.weight"])
    assert torch.equal(loaded["layers.15.running_var"], source["layers.15.running_var"])
    assert loaded["classifier.1.weight"].shape == (6, 1280)
    assert (
        build_model("mnasnet0_5", 6, pretrained=weights)
        .state_dict()["layers.0.weight"]
        .equal(source["layers.0.weight"])
    )


def test_pretrained_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not fit"):
        build_model("mnasnet0_5", 6, pretrained=efficientnet_lite0_weights_path())
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pth"):
        build_model("mnasnet1_0", 6, pretrained=garbage)


def test_efficientnet_lite0_shipped_weights_load(no_network: None) -> None:
    shipped = safe_torch_load(efficientnet_lite0_weights_path())
    model = build_model("efficientnet_lite0", 6, pretrained=True)
    state = model.state_dict()
    assert torch.equal(state["_conv_stem.weight"], shipped["_conv_stem.weight"])
    assert torch.equal(state["_blocks.15._bn2.running_mean"], shipped["_blocks.15._bn2.running_mean"])
    assert state["_fc.weight"].shape == (6, 1280)


def test_efficientnet_lite0_architecture_classifies_a_real_photo() -> None:
    # Same names *and* same computation as the TF original: the shipped ImageNet weights must
    # recognise scikit-learn's sample photo of a flower (ImageNet class 985, "daisy").
    from sklearn.datasets import load_sample_image

    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(safe_torch_load(efficientnet_lite0_weights_path()), strict=True)
    model.eval()
    photo = load_sample_image("flower.jpg")
    h, w, _ = photo.shape
    side = min(h, w)
    crop = np.ascontiguousarray(photo[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2])
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=224, mode="bilinear", antialias=True, align_corners=False)
    norm = model_preprocessing("efficientnet_lite0")
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        top3 = model(x).topk(3).indices[0].tolist()
    assert 985 in top3


@pytest.mark.parametrize("name", ["mnasnet0_5", "efficientnet_lite0"])
def test_save_load_roundtrip(tmp_path: Path, name: str) -> None:
    model = build_model(name, 6, 32)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # move the BN running statistics
    model.eval()
    path = save_model(model, tmp_path / "sub" / "model.pt", spec_for(name, extra_key="kept"))
    assert path == tmp_path / "sub" / "model.pt"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left
    loaded, spec = load_model(path, expect_class_names=CLASSES)
    assert spec.extra["extra_key"] == "kept" and list(spec.class_names) == CLASSES
    assert spec == spec_for(name, extra_key="kept")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert all(m.momentum == 0.1 for m in loaded.modules() if isinstance(m, nn.BatchNorm2d))
    warm_start = build_model(name, 6, 32, pretrained=path)  # a checkpoint as backbone weights
    first_conv = next(iter(model.state_dict()))
    assert torch.equal(warm_start.state_dict()[first_conv], model.state_dict()[first_conv])


def test_save_rejects_incomplete_spec(tmp_path: Path) -> None:
    model = build_model("mnasnet0_5", 6, 32)
    with pytest.raises(ModelError, match="lacks keys.*image_size"):
        save_model(
            model,
            tmp_path / "m.pt",
            ModelSpec.from_dict({"name": "mnasnet0_5", "num_classes": 6, "class_names": CLASSES}),
        )
    with pytest.raises(ModelError, match=r"spec\['f1'\] is a float32"):
        save_model(model, tmp_path / "m.pt", spec_for("mnasnet0_5", f1=np.float32(0.5)))
    with pytest.raises(ModelError, match="num_classes"):
        save_model(
            model,
            tmp_path / "m.pt",
            ModelSpec.from_dict({**spec_for("mnasnet0_5").to_dict(), "num_classes": 5, "class_names": CLASSES[:5]}),
        )


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    good = save_model(build_model("mnasnet0_5", 6, 32), tmp_path / "good.pt", spec_for("mnasnet0_5"))

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated.pt"):
        load_model(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelError, match="foreign.pt is not a trashlib model checkpoint"):
        load_model(foreign)

    other_arch = tmp_path / "other_arch.pt"
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["spec"]["name"] = "mnasnet1_0"
    torch.save(checkpoint, other_arch)
    with pytest.raises(ModelError, match="other_arch.pt.*do not fit architecture 'mnasnet1_0'"):
        load_model(other_arch)

    with pytest.raises(ModelError, match="good.pt was trained on classes"):
        load_model(good, expect_class_names=list(reversed(CLASSES)))

    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.pt")


class _Exploit:
    marker: Path

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_code_executing_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(
        {"format": models.CHECKPOINT_FORMAT, "spec": spec_for("mnasnet0_5").to_dict(), "state_dict": _Exploit(marker)},
        evil,
    )
    with pytest.raises(ModelError, match="evil.pt.*refused"):
        load_model(evil)
    assert not marker.exists()


def test_weights_hash_follows_the_weights_not_the_file(tmp_path: Path) -> None:
    from trashlib.models import weights_sha256

    torch.manual_seed(0)
    a = build_model("mnasnet0_5", 6, 32)
    torch.manual_seed(0)
    b = build_model("mnasnet0_5", 6, 32)
    assert weights_sha256(a) == weights_sha256(b) == weights_sha256(a.state_dict())
    with torch.no_grad():
        b.classifier[1].bias[0] += 1e-6
    assert weights_sha256(a) != weights_sha256(b)


def test_model_spec_round_trips_and_refuses_bad_fields() -> None:
    spec = ModelSpec.create("efficientnet_lite0", CLASSES, 96)
    assert spec.normalization == model_preprocessing("efficientnet_lite0") and spec.num_classes == 6
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["num_classes"] == 6 and spec.to_dict()["class_names"] == CLASSES
    structured = spec.with_structure(build_model("mnasnet0_5", 6, 32))
    assert structured.structure and ModelSpec.from_dict(structured.to_dict()) == structured
    with pytest.raises(ModelError, match="multiple of 32"):
        ModelSpec.create("mnasnet0_5", CLASSES, 100)
    with pytest.raises(ModelError, match="at least 2 names"):
        ModelSpec("mnasnet0_5", ("Metal",), 32)
    with pytest.raises(ModelError, match="std must be three numbers"):
        ModelSpec("mnasnet0_5", tuple(CLASSES), 32, std=(0.2, 0.2, 0.0))
    with pytest.raises(ModelError, match="only for 'searched' models"):
        ModelSpec("mnasnet0_5", tuple(CLASSES), 32, arch={"blocks": []})
    with pytest.raises(ModelError, match="repeats the spec's own keys"):
        ModelSpec("mnasnet0_5", tuple(CLASSES), 32, extra={"image_size": 64})
    with pytest.raises(ModelError, match="model.pt: spec lacks keys"):
        ModelSpec.from_dict({"name": "mnasnet0_5"}, where="model.pt")
