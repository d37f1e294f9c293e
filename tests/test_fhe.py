"""The encrypted check: lowering a PANN to back-end layers, presets, Orion patches, and CKKS runs.

Tests that need ``orion-fhe`` skip with the reason where it is not installed
(``pip install 'pann[fhe]'``); the encrypted runs use the INSECURE test preset.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from pann.approximation.catalog import get_approximation
from pann.conversion.flow import calibrate, convert, prepare
from pann.fhe.graph import UnsupportedLayerError, folded_stages, largest_tensor, lower, plan_depth
from pann.fhe.params import InsufficientMemory, check_resources, go_memory_limit, load_params, preset_names
from pann.conversion.modules import relu_polynomial

HAVE_ORION = importlib.util.find_spec("orion") is not None
needs_orion = pytest.mark.skipif(not HAVE_ORION, reason="orion-fhe is not installed (pip install 'pann[fhe]')")

# Stated tolerance of the encrypted runs: the largest logit difference to the float64 PANN.
# Scale 2^40 leaves about 1e-8 (measured 9e-9 to 3e-8 on the CNN, 4e-6 at scale 2^32).
TOLERANCE = 1e-5


class _Block(nn.Module):
    """A CIFAR ResNet block with the option-A shortcut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2)))


def _cnn() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(), _Block(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


class _IdentityBlock(nn.Module):
    """A CIFAR ResNet block with the identity shortcut: the block's input feeds its first convolution and the add."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


def _resnet() -> nn.Module:
    """The CNN with an identity block after its option-A block: every kind of ReLU input a CIFAR ResNet has."""
    model = nn.Sequential(*list(_cnn())[:4], _IdentityBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _pann(model: nn.Module, data: torch.Tensor, degrees=(3, 3), family="composite") -> nn.Module:
    observed = prepare(model)
    calibrate(observed, [data])
    return convert(observed, get_approximation(family, degrees), margin=1.2, compiled=False)


@pytest.fixture
def cnn_pann():
    data = torch.rand(32, 3, 8, 8)
    return _pann(_cnn(), data), data


@pytest.fixture
def resnet_pann():
    torch.manual_seed(0)
    data = torch.rand(32, 3, 8, 8)
    return _pann(_resnet(), data), data


def test_lowering_keeps_every_layer_and_maps_the_shortcut_to_a_zero_channel_conv(cnn_pann):
    pann, data = cnn_pann
    plan = lower(pann, data[:1])
    kinds = [layer.kind for layer in plan.layers]
    assert kinds == ["conv2d", "batchnorm", "relu", "conv2d", "batchnorm", "conv2d", "add", "relu",
                     "adaptive_avgpool", "flatten", "linear"]
    # Values per image of each output (what a bootstrap of it must hold): 4 x 8 x 8 before the block, 8 x 4 x 4 in it.
    assert [layer.size for layer in plan.layers] == [256] * 3 + [128] * 5 + [8, 8, 3] and largest_tensor(plan) == 256
    shortcut = plan.layers[5]
    assert shortcut.options["stride"] == 2 and shortcut.options["weight"].shape == (8, 4, 1, 1)
    y = torch.rand(1, 4, 8, 8)
    expected = F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
    torch.testing.assert_close(F.conv2d(y, shortcut.options["weight"], stride=2), expected)
    bounds = [float(m.bound) for name, m in pann.named_modules() if type(m).__name__ == "PolyReLU"]
    assert [layer.options["bound"] for layer in plan.layers if layer.kind == "relu"] == bounds
    # conv 1 + ReLU (1 + 2 + 2 + 1) + conv 1 + ReLU 6 + pool 1 + linear 1; batch norms fold.
    assert plan_depth(plan) == 16


@pytest.mark.parametrize("family,degrees", [("composite", (7, 15)), ("composite", (5, 5, 5)), ("minimax", (8,))])
def test_folded_stages_evaluate_the_pann_relu_exactly(family, degrees):
    approximation = get_approximation(family, degrees)
    bound = 3.7
    x = np.linspace(-bound, bound, 2001)
    prescale, stages = folded_stages(approximation, bound)
    s = t = prescale * x
    for coefficients in stages:
        s = np.polynomial.chebyshev.chebval(s, coefficients)
    folded = t * s if family == "composite" else s
    widths = [torch.tensor(st.width, dtype=torch.float64) for st in approximation.stages]
    coefs = [torch.tensor(st.coefficients[1::2] if family == "composite" else st.coefficients, dtype=torch.float64)
             for st in approximation.stages]
    expected, _ = relu_polynomial(torch.tensor(x), torch.tensor(bound, dtype=torch.float64), widths, coefs,
                                  family == "composite")
    np.testing.assert_allclose(folded, expected.numpy(), rtol=0, atol=1e-12 * bound)


def test_lowering_names_every_layer_it_cannot_express():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Upsample(scale_factor=2))
    pann = _pann(model.eval(), torch.rand(8, 3, 8, 8))
    with pytest.raises(UnsupportedLayerError) as info:
        lower(pann, torch.rand(1, 3, 8, 8))
    message = str(info.value)
    assert "max-pool" in message and "Upsample" in message


def test_presets_state_their_security_and_bad_parameters_list_every_field(tmp_path):
    assert {"bootstrap-128", "leveled-128", "insecure-test"} <= set(preset_names())
    assert not load_params("insecure-test").secure and load_params("leveled-128").secure
    assert load_params("leveled-128").log_qp <= 881  # HE-standard 128-bit bound at N = 2^15
    # The bootstrapping sets: the whole circuit's modulus (Lattigo's default bootstrapping moduli added) within the
    # bound the HE standard's extended table gives at N = 2^16, and each names the cost preset of its levels.
    from pann.cost import load_preset
    for name in ("bootstrap-128", "bootstrap-128-deep"):
        params = load_params(name)
        assert params.secure and params.bootstrapping_log_qp(params.log_n - 2) <= 1772, name
        assert load_preset(params.cost_preset).levels.bootstrap == params.levels - 1, name  # level 0 unused
    assert load_params("bootstrap-128").bootstrapping_log_qp(14) == 455 + 3 * 39 + 8 * 60 + 4 * 56 + 8 * 61
    assert load_params("bootstrap-128-deep").levels == 13
    bad = tmp_path / "bad.yaml"
    bad.write_text("ckks_params: {LogN: 0, LogQ: [70], LogP: [], LogScale: 40, H: 64}\n"
                   "boot_params: {LogP: [61]}\n"
                   "pann: {secure: maybe, security: x, memory_gib: {leveled: 1, bootstrapper: {0: 1}}}\n")
    with pytest.raises(ValueError) as info:
        load_params(bad)
    for field in ("LogN", "LogQ", "LogP", "pann.secure", "pann.memory_gib.base", "pann.memory_gib.bootstrapper"):
        assert field in str(info.value)
    with pytest.raises(FileNotFoundError, match="preset"):
        load_params("no-such-preset")


def test_the_memory_estimate_is_the_networks_and_refuses_what_does_not_fit():
    params = load_params("bootstrap-128")
    base, bootstrapper = params.memory_gib["base"], params.memory_gib["bootstrapper"]
    # A network that does not bootstrap needs the base; one that does, the bootstrapper for its largest tensor:
    # ResNet-20's 16 x 32 x 32 values take 2^14 slots, a full ciphertext 2^15; smaller ones the smallest measured.
    assert check_resources(params, params.levels, 100.0, 16 * 32 * 32) == (False, base)
    assert check_resources(params, 50, 100.0, 16 * 32 * 32) == (True, base + bootstrapper[14])
    assert check_resources(params, 50, 100.0, 3 * 32 * 32) == (True, base + bootstrapper[14])
    assert check_resources(params, 50, 100.0, 10 ** 6) == (True, base + bootstrapper[15])
    assert bootstrapper[14] < bootstrapper[15]
    with pytest.raises(InsufficientMemory,
                       match=rf"needs about {base + bootstrapper[14]:.1f} GiB \(bootstrapping 2\^14 slots\) .* has "
                             r"8\.0 GiB available"):
        check_resources(params, 50, 8.0, 16 * 32 * 32)
    with pytest.raises(ValueError, match="needs 40 levels .* no bootstrapping"):
        check_resources(load_params("leveled-128"), 40, 100.0, 16)
    # Linear layers in parts of at most N diagonals: the base measured for the smallest part size >= N (whole
    # blocks' above it), and a refusal of whole blocks says what parts would need.
    (measured, parts_base), = params.memory_gib["parts"].items()
    assert parts_base < base
    in_parts = dataclasses.replace(params, diagonals_per_transform=measured)
    assert check_resources(in_parts, 50, 100.0, 16 * 32 * 32) == (True, parts_base + bootstrapper[14])
    assert dataclasses.replace(params, diagonals_per_transform=measured // 2).base_gib == parts_base
    assert dataclasses.replace(params, diagonals_per_transform=measured * 2).base_gib == base
    with pytest.raises(InsufficientMemory, match=rf"--diagonals-per-transform {measured}: about "
                                                 rf"{parts_base + bootstrapper[14]:.1f} GiB"):
        check_resources(params, 50, 16.0, 16 * 32 * 32)


def test_go_heap_limit_is_gos_share_of_the_estimate_and_leaves_the_python_side_its_room():
    assert go_memory_limit(22.6) == "18GiB"  # the encrypted ResNet-20 of docs/results.md, "What does it cost under encryption?"
    assert go_memory_limit(13.9, python_side_gib=2.0) == "11GiB"
    assert go_memory_limit(3.0) == "1GiB"
    # Parts of 32 under bootstrap-128 (a full ciphertext's bootstrapper: estimated 15.8 GiB) and bootstrap-128-deep
    # (17.0): Go gets what the estimate leaves beside the Python side's 1 GiB, rounded up (with no limit in effect
    # ResNet-20's heap grew to 21.7 GiB and the run was killed; 14 GiB kept it at 14.9).
    assert go_memory_limit(22.6, estimated_gib=15.8) == "15GiB"
    assert go_memory_limit(22.6, estimated_gib=17.0) == "16GiB"
    assert go_memory_limit(10.0, estimated_gib=15.8) == "6GiB"  # what is available still binds
    assert go_memory_limit(22.6, estimated_gib=0.5) == "1GiB"


@needs_orion
def test_patched_orion_functions_keep_their_shape_and_the_sparse_diagonals_match():
    from pann.fhe import backend as fhe
    from pann.fhe.patches import ORIGINALS, PATCHED, check_signatures, sparse_diagonalize

    fhe.build_network(lower(_pann(_cnn(), torch.rand(8, 3, 8, 8)), torch.rand(1, 3, 8, 8)))  # installs
    assert set(ORIGINALS) == set(PATCHED)
    check_signatures(ORIGINALS)  # raises if the pinned library's functions changed their parameters
    original = ORIGINALS["orion.core.packing.diagonalize"]
    rng = np.random.default_rng(0)
    for shape, method, last in [((24, 40), "hybrid", False), ((70, 40), "hybrid", False),
                                ((24, 40), "hybrid", True), ((40, 70), "square", False)]:
        matrix = (rng.standard_normal(shape) * (rng.random(shape) < 0.2)).astype(np.float32)
        assert sparse_diagonalize(sp.csr_matrix(matrix), 32, method, last) == \
            original(sp.csr_matrix(matrix), 32, method, last)


def test_every_relu_of_a_resnet_takes_its_prescale_from_the_layers_before(resnet_pann):
    from pann.fhe.graph import fold_prescales

    pann, data = resnet_pann
    plan = lower(pann, data[:1])
    folded, kept = fold_prescales(plan)
    relus = [l for l in folded.layers if l.kind == "relu"]
    # The stem's and the first convolution's ReLUs follow a batch norm; the two after a residual add take c through
    # both of the add's inputs (a batch norm and the shortcut's convolution; or the block's input, a ReLU).
    assert kept == [] and len(relus) == 4 and all(l.options["folded"] and l.options["prescale"] == 1.0 for l in relus)
    assert plan_depth(folded) == plan_depth(plan) - 4
    assert not any(l.options.get("folded") for l in plan.layers)  # the given plan is left as it was
    before, after = {l.name: l for l in plan.layers}, {l.name: l for l in folded.layers}
    block_relu, last_relu = relus[1].name, relus[3].name
    c = before[last_relu].options["prescale"]
    # The identity shortcut: the ReLU that feeds it carries c in its last stage, its other reader (conv1) W / c.
    assert after[block_relu].options["stages"][-1] == pytest.approx([v * c for v in before[block_relu].options["stages"][-1]])
    (conv1,) = [l for l in folded.layers if l.kind == "conv2d" and l.inputs == (block_relu,)]
    torch.testing.assert_close(conv1.options["weight"], before[conv1.name].options["weight"] / c)


@needs_orion
def test_orion_network_in_the_clear_computes_the_pann_with_and_without_folded_prescales(resnet_pann):
    from pann.fhe import backend as fhe
    from pann.fhe.graph import fold_prescales
    from pann.fhe.reference import plaintext

    pann, data = resnet_pann
    plan = lower(pann, data[:1])
    folded, _ = fold_prescales(plan)
    logits, inputs = plaintext(pann, data[:4], plan.input)
    for lowered in (plan, folded):
        network = fhe.build_network(lowered)
        with torch.no_grad():
            clear = network(inputs.float()).double()
        torch.testing.assert_close(clear, logits, rtol=0, atol=1e-5)


@needs_orion
def test_a_bootstrap_after_a_fused_batch_norm_is_scaled_by_the_batch_norms_range(resnet_pann):
    """Orion fuses each batch norm into the convolution before it and scales a bootstrap placed after that
    convolution by the convolution's own fitted range; the encrypted ResNet-20 was lost at its first bootstrap
    until the convolution was given the batch norm's (its output once fused). Ranges as ``orion.fit`` leaves them."""
    from pann.fhe import backend as fhe

    pann, data = resnet_pann
    plan, _ = fhe.encrypted_plan(pann, data)
    network = fhe.build_network(plan)
    for i, module in enumerate(network.layers.values()):
        module.output_min, module.output_max = torch.tensor(-1.0 - i), torch.tensor(1.0 + i)
    fhe._fused_ranges(network)
    kinds = {layer.name: layer.kind for layer in plan.layers}
    pairs = [(inputs[0], name) for name, inputs in network.steps if kinds[name] == "batchnorm"]
    assert [kinds[conv] for conv, _ in pairs] == ["conv2d"] * 4
    for conv, bn in pairs:
        assert (network.layers[conv].output_min, network.layers[conv].output_max) == \
            (network.layers[bn].output_min, network.layers[bn].output_max)
    assert network.layers["pad"].output_max == 1.0 + list(network.layers).index("pad")  # no batch norm: its own


@needs_orion
def test_resnet_with_both_shortcuts_agrees_under_encryption_with_bootstrapping(resnet_pann):
    from pann.fhe import backend as fhe
    pann, data = resnet_pann
    seen = []
    report = fhe.check(pann, data[:1], "insecure-test", calibration=data, progress=seen.append, trace=True)
    (result,) = report.results
    # The trace: every layer decrypted against the clear network, the last one the logits.
    from pann.fhe.reference import first_off
    assert [row["layer"] for row in result.trace] == [layer.name for layer in lower(pann, data[:1]).layers]
    assert first_off(result.trace) is None and result.trace[-1]["bootstraps"] == result.bootstraps
    compared = [row["max_error"] for row in result.trace if row["max_error"] is not None]
    assert len(compared) >= len(result.trace) - 1 and result.trace[-1]["max_error"] < TOLERANCE  # the logits
    assert max(compared) < 1e-3
    assert first_off(({"layer": "a", "max_error": 0.0, "max_abs": 1.0},
                      {"layer": "b", "max_error": 0.5, "max_abs": 1.0}))["layer"] == "b"
    # Every ReLU's 1/B folded into the layers before (a batch norm; both inputs of a residual add, one of them the
    # identity shortcut): one level fewer per ReLU than multiplied in.
    plan = lower(pann, data[:1])
    layers = len(plan.layers)
    assert result.levels == report.depth == plan_depth(plan) - 4 and result.bootstraps >= 1 and report.bootstrapping
    assert report.prescales_kept == 0
    assert result.agrees and result.max_logit_error < TOLERANCE
    # Progress: Orion's five compile phases in order, then every layer of the image, the last with its bootstraps.
    phases = [p.step for p in seen if p.stage == "compile"]
    assert sorted(set(phases)) == [1, 2, 3, 4, 5] and phases == sorted(phases)
    steps = [p for p in seen if p.stage == "image"]
    assert [p.step for p in steps] == list(range(1, layers + 1)) and steps[-1].steps == layers
    assert steps[-1].bootstraps == result.bootstraps and steps[-1].elapsed_s >= report.compile_seconds
    # Where the time went: a row per layer, kinds and output levels as the plan has them, each bootstrap (and its
    # seconds) with the layer it ended, and the rows' seconds within the image's.
    from pann.fhe.reference import seconds_by_kind
    assert [(row["layer"], row["kind"]) for row in result.layers] == [(layer.name, layer.kind) for layer in plan.layers]
    assert [row["level"] for row in result.layers] == [row["level"] for row in result.trace]
    assert sum(row["bootstraps"] for row in result.layers) == result.bootstraps
    assert all(row["seconds"] >= 0 and (row["bootstrap_seconds"] > 0) == (row["bootstraps"] > 0)
               for row in result.layers)
    spent = seconds_by_kind(result.layers)
    assert {"bootstrap", "conv2d", "relu", "add"} <= set(spent) and 0 < sum(spent.values()) <= result.seconds


@needs_orion
def test_blocks_split_into_transforms_of_a_few_diagonals_compute_the_same_network(resnet_pann, tmp_path, caplog):
    import yaml

    from pann.fhe import backend as fhe
    from pann.fhe.params import PRESET_DIR

    pann, data = resnet_pann
    preset = yaml.safe_load((PRESET_DIR / "insecure-test.yaml").read_text())
    preset["orion"]["io_mode"] = "save"  # each part's diagonals and keys loaded from disk when it runs
    preset["pann"]["diagonals_per_transform"] = 5
    caplog.set_level("INFO", logger="pann.fhe.backend")
    report = fhe.check(pann, data[:1], load_params(preset), calibration=data, workdir=tmp_path)
    (result,) = report.results
    (split,) = [r.getMessage() for r in caplog.records if "transforms of at most 5 diagonals" in r.getMessage()]
    blocks, transforms = (int(word) for word in split.split() if word.isdigit() and word != "5")
    assert transforms > blocks > 0  # the blocks were split ...
    assert result.agrees and result.max_logit_error < TOLERANCE  # ... and their parts add up to the network
    assert result.bootstraps >= 1 and not list(tmp_path.iterdir())  # the work folder is gone
    # Where the linear layers' time went: only they (the average pool is one too) load keys and diagonals, within
    # their own seconds, and the keys the rows count are the ones the evaluator loaded.
    linear = [row for row in result.layers if row["kind"] in ("conv2d", "linear", "adaptive_avgpool")]
    others = [row for row in result.layers if row not in linear]
    assert all(row["keys_loaded"] > 0 and 0 < row["key_seconds"] + row["diagonal_seconds"] <= row["seconds"] + 1e-3
               for row in linear)
    assert all(row["keys_loaded"] == row["key_seconds"] == row["diagonal_seconds"] == 0 for row in others)
    (loads,) = [r.getMessage() for r in caplog.records if "rotation keys loaded for 1 image" in r.getMessage()]
    assert sum(row["keys_loaded"] for row in result.layers) == int(loads.split()[0])
    # Three images beside each other, layer by layer: each part's keys are loaded once for all three (as many as
    # for one image alone), each image gets a third of them, and every image's result is its own (each within the
    # tolerance of its own plaintext logits).
    caplog.clear()
    batch = fhe.check(pann, data[:3], load_params(preset), calibration=data, workdir=tmp_path, batch=3)
    (loads3,) = [r.getMessage() for r in caplog.records if "rotation keys loaded for 3 image" in r.getMessage()]
    assert batch.batch == 3 and int(loads3.split()[0]) == int(loads.split()[0])
    assert [r.index for r in batch.results] == [0, 1, 2]
    assert all(r.agrees and r.max_logit_error < TOLERANCE and r.bootstraps == result.bootstraps
               for r in batch.results)
    for r in batch.results:
        assert sum(row["keys_loaded"] for row in r.layers) == pytest.approx(int(loads.split()[0]) / 3, abs=0.1)
    with pytest.raises(ValueError, match="batch: expected at least 1 image, got 0"):  # before any key is made
        fhe.check(pann, data[:1], load_params(preset), calibration=data, workdir=tmp_path, batch=0)
    assert not list(tmp_path.iterdir())
    # The work folder's size, estimated before the first key from each transform's level and diagonals, is what
    # the keys and diagonals then took (a rotation key is 2% of it: one key missed or too many would show).
    for folder in (report.work_folder, batch.work_folder):
        assert folder["gb"] == pytest.approx(folder["estimated_gb"], rel=0.005) and folder["rotation_keys"] > 0
    assert batch.work_folder["estimated_gb"] == report.work_folder["estimated_gb"]
    # Diagonals encoded when loaded: no encoded diagonal on disk (a smaller folder, as estimated), the same keys
    # loaded, and the same network.
    preset["pann"]["encode_when_loaded"] = True
    caplog.clear()
    encoded = fhe.check(pann, data[:3], load_params(preset), calibration=data, workdir=tmp_path, batch=3)
    (loads_encoded,) = [r.getMessage() for r in caplog.records if "rotation keys loaded for 3 image" in r.getMessage()]
    assert loads_encoded == loads3 and not list(tmp_path.iterdir())
    assert all(r.agrees and r.max_logit_error < TOLERANCE and r.bootstraps == result.bootstraps
               for r in encoded.results)
    folder = encoded.work_folder
    assert folder["gb"] == pytest.approx(folder["estimated_gb"], rel=0.005) and folder["gb"] < batch.work_folder["gb"]
    assert folder["rotation_keys"] == batch.work_folder["rotation_keys"]
    preset["pann"]["diagonals_per_transform"] = None
    with pytest.raises(ValueError, match=r"encode_when_loaded \(--encode-when-loaded\) needs the linear layers in "
                                         r"parts"):  # before anything is encrypted
        fhe.check(pann, data[:1], load_params(preset), calibration=data, workdir=tmp_path)
    preset["pann"]["encode_when_loaded"] = "yes"
    with pytest.raises(ValueError, match="pann.encode_when_loaded: expected true or false, got 'yes'"):
        load_params(preset)
    preset["pann"]["encode_when_loaded"] = False
    preset["pann"]["diagonals_per_transform"] = 0
    with pytest.raises(ValueError, match="pann.diagonals_per_transform: expected a positive number"):
        load_params(preset)


def test_progress_reads_orion_compile_lines_and_estimates_the_time_left(caplog):
    from pann.fhe.progress import CompileLines, Progress, images_left

    seen = []
    lines = CompileLines(seen.append, clock=lambda: 75.0)
    with caplog.at_level("INFO", logger="pann.fhe.progress"):
        for line in ["Processing input data", "{1} Finding per-layer input/output ranges and shapes...",
                     "{3} Generating matrix diagonals...", "Packing layers.conv1:",
                     "├── Network requires 9 bootstrap operations.", "{5} Compiling network layers...",
                     "├── layers.relu1.mult1 @ level=9", "done! [0.1 secs.]"]:
            lines(line)
    assert "Orion's bootstrap placement: 9 bootstraps per image" in caplog.text  # logged before keys are made
    assert [(p.step, p.detail) for p in seen] == [
        (1, "Finding per-layer input/output ranges and shapes"), (3, "Generating matrix diagonals"),
        (3, "Generating matrix diagonals: layers.conv1"), (5, "Compiling network layers"),
        (5, "Compiling network layers: layers.relu1.mult1")]
    assert seen[0].line() == "compiling 1/5: Finding per-layer input/output ranges and shapes [1m15s]"
    assert images_left([], 3, 0.5) is None and images_left([10.0, 20.0], 3, 0.5) == pytest.approx(7.5)
    image = Progress("image", 35, 71, "layer2_0_relu", 912.0, 2, 3, 9, 600.0)
    assert image.line() == "image 2/3: layer 35/71 layer2_0_relu, 9 bootstraps [15m12s, about 10m00s left]"
    # Four images run layer by layer beside each other, two done before them at 100 s each, half of their layers done.
    assert images_left([100.0, 100.0], 8, 0.5, current=4) == pytest.approx(400.0)
    batch = Progress("image", 35, 71, "layer2_0_relu", 912.0, 3, 8, 9, 400.0, batch=4)
    assert batch.line() == "images 3-6/8: layer 35/71 layer2_0_relu, 9 bootstraps [15m12s, about 6m40s left]"


def test_importing_pann_never_imports_the_fhe_library():
    code = "import sys, pann.fhe.backend, pann.cli, pann.fhe.graph, pann.fhe.layers; print('orion' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stderr


@needs_orion
def test_the_command_starts_again_with_the_go_settings_its_go_runtime_reads():
    """Go reads GOGC and GOMEMLIMIT from the environment the process started with, so `pann fhe-check` starts
    itself again with them where they are unset: the dry run reports them from /proc/self/environ."""
    from pann.fhe.params import available_memory_gib

    env = {key: value for key, value in os.environ.items() if key not in ("GOGC", "GOMEMLIMIT")}
    command = [sys.executable, "-m", "pann.cli", "fhe-check", "--model", "resnet20", "--dataset", "synthetic",
               "--calibration-size", "16", "--fit-images", "2", "--alpha", "8", "--images", "1",
               "--params", "insecure-test", "--dry-run"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    params = load_params("insecure-test")
    limit = go_memory_limit(available_memory_gib(), params.estimated_memory_gib(params.slots))
    assert json.loads(run.stdout)["go_runtime"] == {"GOGC": "20", "GOMEMLIMIT": limit} and limit == "2GiB"
    given = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**env, "GOMEMLIMIT": "3GiB"})
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["go_runtime"] == {"GOGC": "20", "GOMEMLIMIT": "3GiB"}  # the user's kept


@needs_orion
def test_a_check_stopped_by_sigterm_removes_its_work_folder(tmp_path):
    """SIGTERM (a scheduler's stop, `kill PID`) ends a running check with status 143 and no work folder left."""
    import signal
    import time

    command = [sys.executable, "-m", "pann.cli", "fhe-check", "--model", "resnet20", "--dataset", "synthetic",
               "--calibration-size", "16", "--fit-images", "2", "--alpha", "8", "--images", "2",
               "--params", "insecure-test", "--workdir", str(tmp_path)]
    check = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("pann-fhe-*")) and check.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob("pann-fhe-*")), "the check never made its work folder"
    check.send_signal(signal.SIGTERM)
    _, err = check.communicate(timeout=120)
    assert check.returncode == 143, err
    left = {folder.name: sorted(f.name for f in folder.iterdir()) for folder in tmp_path.glob("pann-fhe-*")}
    assert not left, f"{left}\n{err}"



@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_dropped_inside_a_destructor_still_ends_the_check_at_its_next_step():
    """Python drops an exception raised while it runs ``__del__`` (where Orion frees ciphertexts); the check's next
    progress step raises SIGTERM's exit again."""
    import signal
    import threading

    from pann.fhe.cli import _sigterm_exits

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")

    class Ciphertext:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside __del__, and its exit is dropped
                pass

    with _sigterm_exits() as exit_if_stopped:
        Ciphertext()
        with pytest.raises(SystemExit) as info:
            exit_if_stopped()
    assert info.value.code == 143


# The back end made unimportable (as where it is not installed), so the hint is tested with Orion installed too.
_WITHOUT_ORION = "import sys; sys.modules['orion'] = None; from pann.cli import main; sys.exit(main())"


@pytest.mark.parametrize("params,blocked,expected", [
    ("no-such-preset", False, "neither a file nor a preset"),
    ("leveled-128", True, "the FHE back end is not installed: pip install 'pann[fhe]'"),
])
def test_cli_explains_bad_input_in_one_line(params, blocked, expected):
    start = ["-c", _WITHOUT_ORION] if blocked else ["-m", "pann.cli"]
    args = [sys.executable, *start, "fhe-check", "--model", "resnet20", "--alpha", "6", "--dataset",
            "synthetic", "--calibration-size", "16", "--fit-images", "2", "--params", params]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert expected in run.stderr


def test_bsgs_rotations_are_lattigos_baby_and_giant_steps():
    from pann.fhe.workdir import bsgs_rotations, folder_size

    # Diagonals 0..7 of 16 slots at ratio 2^0: N1 = 1 gives 0 baby steps, N1 = 2 a ratio of 1/3, N1 = 4 one of 3,
    # past 1, so N1 = 2: giant steps 0, 2, 4, 6 and baby steps 0, 1.
    assert bsgs_rotations(range(8), 16, 0) == {0, 1, 2, 4, 6}
    assert bsgs_rotations([-1, 3], 16, -1) == {15, 3}  # no baby steps: a key per diagonal (taken mod the slots)
    assert bsgs_rotations([5], 16, 0) == {0, 5}  # one diagonal: no ratio to reach, N1 = 1, baby step 0 beside it
    # Keys are shared between transforms and diagonals counted in each: two transforms of diagonals 0..7 at level 1,
    # N = 32, 2 + 1 moduli: 5 keys of 2 digits (ceil(2 / 1)) x 2 polynomials x 3 moduli, the secret key, and 16
    # diagonals of (1 + 1 + 1) x 32 encoded words and 16 of Orion's own.
    size = folder_size([(1, range(8), 0), (1, range(8), 0)], log_n=5, q_primes=2, p_primes=1)
    assert (size.keys, size.diagonals) == (5, 16)
    assert size.key_bytes == (5 * 2 * 2 + 1) * 3 * 32 * 8 and size.diagonal_bytes == 16 * (3 * 32 + 16) * 8


@needs_orion
def test_a_check_whose_work_folder_would_not_fit_is_refused_before_the_first_key(resnet_pann, tmp_path, monkeypatch):
    import shutil
    import yaml

    from pann.fhe import backend as fhe
    from pann.fhe import workdir
    from pann.fhe.params import PRESET_DIR

    pann, data = resnet_pann
    preset = yaml.safe_load((PRESET_DIR / "insecure-test.yaml").read_text())
    preset["orion"]["io_mode"] = "save"
    usage = shutil.disk_usage(tmp_path)
    # the disk says it has 10 MB free (the tests' ResNet needs about 180 MB)
    monkeypatch.setattr(workdir.shutil, "disk_usage", lambda path: usage._replace(free=10**7))
    import h5py

    def contents(folder):  # the keys saved, and the layers whose encoded diagonals were saved
        with h5py.File(folder / "keys.h5", "r") as keys, h5py.File(folder / "diagonals.h5", "r") as diagonals:
            return sorted(keys), [name for name in diagonals if "plaintexts" in diagonals[name]]

    removed, remove = [], workdir._remove
    monkeypatch.setattr(workdir, "_remove", lambda folder: removed.append(contents(folder)) or remove(folder))
    with pytest.raises(workdir.InsufficientDisk, match=r"^the work folder would hold about 0\.2 GB of keys and "
                       r"diagonals but the disk under .* has 0\.0 GB free \(refused before any key was written\)"):
        fhe.check(pann, data[:1], load_params(preset), calibration=data, workdir=tmp_path)
    # no rotation key nor encoded diagonal written (only the secret key, and Orion's own copies of the layers'
    # diagonals, which it saves before placing the bootstraps), and the folder removed
    assert removed == [(["sk"], [])] and not list(tmp_path.iterdir())
    # and the check it stopped half way left nothing of its scheme behind: the next one in this process runs (it
    # aborted the process before the scheme was deleted on the way out)
    monkeypatch.undo()
    (result,) = fhe.check(pann, data[:1], "insecure-test", calibration=data).results
    assert result.agrees


def test_a_dead_checks_work_folder_is_removed_by_the_next_and_a_live_ones_is_kept(tmp_path, caplog):
    import json
    import socket

    from pann.fhe.workdir import PREFIX, clean_leftovers, work_folder

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)  # a process that has ended
    for name, pid in (("dead", dead_pid), ("live", os.getpid())):
        folder = tmp_path / f"{PREFIX}{name}"
        (folder / "keys").mkdir(parents=True)
        (folder / "keys" / "diagonals.bin").write_bytes(b"\0" * 4096)
        (folder / "owner.json").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "t"}))
    (tmp_path / f"{PREFIX}anonymous").mkdir()  # no owner record: named, not removed
    with caplog.at_level("WARNING", logger="pann.fhe.workdir"):
        with work_folder(tmp_path) as mine:
            assert json.loads((mine / "owner.json").read_text())["pid"] == os.getpid()
            assert mine.name.startswith(f"{PREFIX}{os.getpid()}-")
            left = sorted(p.name for p in tmp_path.iterdir())
        assert not mine.exists()
    assert left == sorted([f"{PREFIX}anonymous", f"{PREFIX}live", mine.name])
    assert f"removed {tmp_path / (PREFIX + 'dead')}" in caplog.text and "names no owner" in caplog.text
    assert clean_leftovers(tmp_path) == []  # the live run's folder stays
    # A check that fills the disk (h5py raises OSError with ENOSPC) ends in one line naming the disk and the folder's
    # size, and leaves nothing behind; other errors pass through as they are.
    import errno
    with pytest.raises(OSError, match=r"filled up when the work folder held 0\.0 GB .*--workdir") as info:
        with work_folder(tmp_path) as full:
            (full / "diagonals.h5").write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "Can't synchronously write data (No space left on device)")
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value) and not full.exists()
    with pytest.raises(OSError, match="Permission denied"):
        with work_folder(tmp_path):
            raise OSError(errno.EACCES, "Permission denied")


def test_a_signal_landing_during_the_removal_still_removes_the_whole_work_folder(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM's exit) arriving while the folder is being removed: the removal finishes, then the
    interruption is raised."""
    import shutil

    from pann.fhe.workdir import work_folder

    remove, calls = shutil.rmtree, []

    def interrupted_once(path, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            (Path(path) / "keys.h5").unlink()  # part of the folder gone when the signal lands
            raise KeyboardInterrupt
        remove(path, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        with work_folder(tmp_path) as folder:
            (folder / "keys.h5").write_bytes(b"\0" * 4096)
            (folder / "diagonals.h5").write_bytes(b"\0" * 4096)
            monkeypatch.setattr(shutil, "rmtree", interrupted_once)
    monkeypatch.undo()
    assert len(calls) == 2 and not folder.exists() and not list(tmp_path.iterdir())
