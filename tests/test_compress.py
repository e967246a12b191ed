"""Decomposition, channel pruning, rank selection, structure save/load, and their bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trashlib.bench import count_macs, count_params
from trashlib.compress import (
    CompressError,
    build_variants,
    decomposable_layers,
    decompose,
    energy_rank,
    factorize,
    kept_ranks,
    layer_kind,
    max_output_difference,
    prune_channels,
    scan_decomposition,
    vbmf_rank,
)
from trashlib.models import (
    Factorized,
    ModelError,
    ModelSpec,
    apply_structure,
    build_model,
    describe_structure,
    load_model,
    save_model,
)

SIZE = 64


@pytest.fixture(scope="module")
def mnasnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mnasnet0_5", 6, SIZE).eval()
    with torch.no_grad():  # BatchNorm statistics and weights away from their init, so outputs are not ~0
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.classifier[1].weight.normal_(0, 0.5)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _spec(model_name: str, structure: dict, arch: dict | None = None) -> ModelSpec:
    return ModelSpec(model_name, tuple("abcdef"), SIZE, (0.5,) * 3, (0.25,) * 3, arch=arch, structure=structure)


@pytest.mark.parametrize("shape,rank,noise", [((100, 200), 10, 0.1), ((192, 576), 20, 0.3), ((40, 40), 4, 0.01)])
def test_vbmf_recovers_the_rank_of_a_noisy_low_rank_matrix(shape, rank, noise):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))
    matrix += noise * np.sqrt(rank) * rng.normal(size=shape)
    assert vbmf_rank(matrix) == rank
    assert vbmf_rank(matrix.T) == rank


def test_vbmf_finds_no_structure_in_pure_noise_and_energy_rank_is_monotone():
    noise = np.random.default_rng(1).normal(size=(64, 128))
    assert vbmf_rank(noise) <= 2
    ranks = [energy_rank(noise, e) for e in (0.3, 0.6, 0.9, 1.0)]
    assert ranks == sorted(ranks) and ranks[-1] == 64 and ranks[0] >= 1


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, True, "0.9"])
def test_energy_outside_zero_one_is_refused(bad):
    with pytest.raises(CompressError, match="energy"):
        energy_rank(np.eye(4), bad)


def test_full_rank_factorizations_reproduce_the_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 20, 20)
    for conv, ranks in (
        (nn.Conv2d(16, 24, 1, stride=2, bias=True), (16, 16)),
        (nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=True), (16, 24)),
    ):
        chain = factorize(conv, ranks)
        assert isinstance(chain, Factorized) and len(chain) == (2 if conv.kernel_size == (1, 1) else 3)
        with torch.no_grad():
            assert torch.allclose(chain(x), conv(x), atol=1e-4)


def test_low_rank_factorization_is_smaller_and_close_for_a_low_rank_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(64, 4) @ torch.randn(4, 64)).view(64, 64, 1, 1))
    chain = factorize(conv, (4, 4))
    x = torch.randn(1, 64, 8, 8)
    assert count_params(chain) == 4 * 128 < count_params(conv)
    with torch.no_grad():
        assert torch.allclose(chain(x), conv(x), atol=1e-3)


def test_layer_kinds_of_mnasnet(mnasnet):
    kinds = decomposable_layers(mnasnet)
    assert kinds["layers.0"] == "tucker"  # the stem
    assert kinds["layers.3"].startswith("skip: depthwise")
    assert kinds["layers.14"] == "svd"
    assert layer_kind(nn.Conv2d(8, 8, 3, groups=2)) == "skip: grouped convolution"


def test_scan_times_every_decomposable_layer_and_keeps_only_what_pays(mnasnet):
    scan = scan_decomposition(mnasnet, SIZE, rule="energy", energy=0.5, rounds=1, runs_per_round=3)
    assert {s.layer for s in scan} == set(decomposable_layers(mnasnet))
    for s in scan:
        if s.kind.startswith("skip"):
            assert s.speedup is None and not s.keep
        else:
            assert s.ms_before > 0 and s.ms_after > 0 and s.error >= 0 and s.macs_after > 0
            assert s.keep == (s.speedup >= 1.05 and s.params_after < s.params_before and s.error <= 0.5)
    assert any(not s.kind.startswith("skip") for s in scan)


def test_decompose_returns_a_new_model_and_leaves_the_input_unchanged(mnasnet):
    before = _state(mnasnet)
    ranks = {"layers.14": (4, 4), "layers.0": (3, 8)}
    new = decompose(mnasnet, ranks)
    assert _same_state(before, _state(mnasnet))
    assert isinstance(new.layers[14], Factorized) and not isinstance(mnasnet.layers[14], Factorized)
    assert count_params(new) < count_params(mnasnet)
    assert new(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 6)


@pytest.mark.parametrize(
    "ranks,match",
    [
        ({"layers.14": (999, 999)}, "outside the layer"),
        ({"layers.0": (4, 8)}, "outside the layer"),  # the stem has 3 input channels
        ({"layers.14": (0, 0)}, "outside the layer"),
        ({"layers.14": (4, 8)}, "one rank"),
        ({"layers.14": (4.0, 4.0)}, "two ints"),
        ({"layers.99": (2, 2)}, "no such convolution"),
        ({"classifier.1": (2, 2)}, "no such convolution"),
        ({"layers.3": (2, 2)}, "depthwise"),
    ],
)
def test_bad_decomposition_requests_are_refused_and_the_model_is_unchanged(mnasnet, ranks, match):
    before = _state(mnasnet)
    with pytest.raises(CompressError, match=match):
        decompose(mnasnet, ranks)
    assert _same_state(before, _state(mnasnet))


def test_pruning_removes_channels_physically(mnasnet):
    before = _state(mnasnet)
    pruned = prune_channels(mnasnet, 0.5, SIZE, round_to=None)
    assert _same_state(before, _state(mnasnet)), "the input model changed"
    assert count_params(pruned) < 0.5 * count_params(mnasnet)
    assert count_macs(pruned, SIZE) < 0.5 * count_macs(mnasnet, SIZE)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    original = [m.out_channels for m in mnasnet.modules() if isinstance(m, nn.Conv2d)]
    assert sum(widths) < 0.6 * sum(original)
    for module in pruned.modules():  # depthwise groups follow their channels
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels
    assert pruned.classifier[1].out_features == 6
    assert pruned(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 6)


@pytest.mark.parametrize("importance", ["magnitude", "bn", "taylor"])
def test_importances_and_iterative_steps(mnasnet, importance):
    calls = []
    calibration = (torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3]))
    pruned = prune_channels(
        mnasnet,
        0.3,
        SIZE,
        importance=importance,
        iterative_steps=2,
        calibration=calibration,
        fine_tune=lambda model, step: calls.append(step),
    )
    assert calls == [0, 1]
    assert count_params(pruned) < count_params(mnasnet)


@pytest.mark.parametrize("ratio", [0, 1, -0.5, 1.5, True, "0.5", None])
def test_pruning_ratio_outside_zero_one_is_refused(mnasnet, ratio):
    with pytest.raises(CompressError, match="ratio"):
        prune_channels(mnasnet, ratio, SIZE)


def test_taylor_needs_a_calibration_batch_and_unknown_importance_is_refused(mnasnet):
    with pytest.raises(CompressError, match="calibration"):
        prune_channels(mnasnet, 0.5, SIZE, importance="taylor")
    with pytest.raises(CompressError, match="importance"):
        prune_channels(mnasnet, 0.5, SIZE, importance="random")


def test_a_model_the_pruner_cannot_trace_is_refused_and_unchanged():
    class ThroughNumpy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 16, 3), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.from_numpy(self.conv(x).detach().numpy())  # leaves the autograd graph
            return self.head(y.mean((2, 3)))

    model = ThroughNumpy()
    before = _state(model)
    with pytest.raises(CompressError, match="trace"):
        prune_channels(model, 0.5, 32, round_to=None)
    assert _same_state(before, _state(model))


@pytest.mark.parametrize("how", ["pruned", "decomposed", "both"])
def test_compressed_models_save_and_reload_with_identical_outputs(mnasnet, how, tmp_path: Path):
    model = mnasnet
    if how in ("pruned", "both"):
        model = prune_channels(model, 0.5, SIZE, round_to=None)
    if how in ("decomposed", "both"):
        model = decompose(model, {"layers.14": (4, 4), "layers.0": (3, 4)})
    path = save_model(model, tmp_path / "model.pt", _spec("mnasnet0_5", describe_structure(model)))
    reloaded, spec = load_model(path)
    assert spec.structure == describe_structure(model)
    assert max_output_difference(model, reloaded, SIZE) == 0.0


def test_searched_network_with_squeeze_excitation_prunes_and_reloads(tmp_path: Path):
    arch = {
        "stem_channels": 16,
        "head_channels": 64,
        "dropout": 0.1,
        "image_size": SIZE,
        "blocks": [
            {"op": "mbconv3", "kernel": 3, "se": True, "layers": 2, "stride": 2, "channels": 24},
            {"op": "sepconv", "kernel": 5, "se": False, "layers": 1, "stride": 2, "channels": 32},
        ],
    }
    model = build_model("searched", 6, SIZE, arch=arch).eval()
    pruned = prune_channels(model, 0.5, SIZE, round_to=None)
    spec = _spec("searched", describe_structure(pruned), arch)
    reloaded, _ = load_model(save_model(pruned, tmp_path / "m.pt", spec))
    assert count_params(pruned) < count_params(model)
    assert max_output_difference(pruned, reloaded, SIZE) == 0.0


def test_structure_naming_a_missing_or_mismatched_layer_is_a_clear_error(mnasnet):
    fresh = build_model("mnasnet0_5", 6, SIZE)
    with pytest.raises(ModelError, match="does not have"):
        apply_structure(fresh, {"layers.99": {"type": "conv"}})
    with pytest.raises(ModelError, match="'bn' layer"):
        apply_structure(fresh, {"layers.0": {"type": "bn", "features": 8}})
    with pytest.raises(ModelError, match="malformed"):
        apply_structure(fresh, {"layers.0": {"type": "conv", "in": 3}})


def test_build_variants_names_techniques_and_leaves_sources_alone(mnasnet):
    spec = _spec("mnasnet0_5", {})
    before = _state(mnasnet)
    variants = build_variants({"baseline": (mnasnet, spec)}, [0.3, 0.5], decompose_ranks={"layers.14": (4, 4)})
    assert list(variants) == [
        "baseline-distilled",
        "baseline-pruned30",
        "baseline-pruned50",
        "baseline-decomposed",
        "baseline-pruned50-decomposed",
    ]
    assert [v.info["technique"] for v in variants.values()] == [
        "none",
        "prune",
        "prune",
        "decompose",
        "prune+decompose",
    ]
    assert _same_state(before, _state(mnasnet))
    assert kept_ranks([]) == {}
