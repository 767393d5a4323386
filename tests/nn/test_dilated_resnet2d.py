from __future__ import annotations

import pytest
import torch
from torch import nn

from ummkd.nn import (
    DilatedResNet2d,
    ModalityNorm,
    count_parameters,
    modality_norm_layers,
    use_modality,
)
from ummkd.nn.dilated_resnet2d import ResidualBlock2d

MODS = ("ct", "mr")


def small(**kwargs) -> DilatedResNet2d:
    defaults = {"in_channels": 3, "out_channels": 3, "base_channels": 2, "dropout": 0.0}
    return DilatedResNet2d(**{**defaults, **kwargs})


def batches(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "ct": torch.randn(4, 3, 16, 16, generator=g),
        "mr": torch.randn(4, 3, 16, 16, generator=g) * 3 + 2,
    }


def test_paper_configuration_parameter_and_norm_counts():
    net = DilatedResNet2d()  # base 16, 5 classes
    counts = count_parameters(net)
    conv_weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv_weights == pytest.approx(39.3e6, rel=0.01)
    assert conv_weights == 39_302_456
    assert counts["other"] == conv_weights + 5  # + output bias
    assert len(modality_norm_layers(net)) == 31
    assert all(isinstance(m, ModalityNorm) for m in modality_norm_layers(net).values())
    bn = net.layers.group1[1].unit1.norm.branches["ct"]
    assert (bn.eps, bn.momentum) == (1e-3, 0.1)
    # no conv bias except the output layer
    biased = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert biased == ["layers.output"]


def test_paper_layer_widths():
    net = DilatedResNet2d(modalities=None)
    groups = dict(net.layers.named_children())
    assert groups["group1"][0].weight.shape == (16, 3, 3, 3)
    widths = {
        "group2": 32,
        "group3": 64,
        "group4": 128,
        "group5": 256,
        "group6": 256,
        "group7": 512,
        "group8": 512,
    }
    for name, width in widths.items():
        assert groups[name][0].unit2.conv.out_channels == width, name
    assert groups["group8"][0].unit1.conv.dilation == (2, 2)
    assert groups["group9"][1].conv.weight.shape == (512, 512, 3, 3)
    assert groups["group10"][0].weight.shape == (2560, 512, 3, 3)
    assert groups["group10"][3].upscale_factor == 8
    assert groups["output"].weight.shape == (5, 40, 5, 5)
    assert not modality_norm_layers(net)
    assert count_parameters(net)["norm"] * 2 == count_parameters(DilatedResNet2d())["norm"]


@pytest.mark.parametrize(("h", "w"), [(16, 16), (24, 40)])
def test_output_shape_matches_input(h, w):
    net = small()
    with use_modality(net, "ct"):
        assert net(torch.randn(2, 3, h, w)).shape == (2, 3, h, w)


@pytest.mark.parametrize("shape", [(1, 3, 20, 16), (1, 3, 16, 12)])
def test_spatial_size_not_divisible_by_8_raises(shape):
    net = small()
    with use_modality(net, "ct"), pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(*shape))


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match=r"expects input \(B, 3, S, S\)"):
        small()(torch.randn(1, 1, 16, 16))


def test_missing_modality_raises():
    net = small()
    with pytest.raises(ValueError, match=r"ModalityNorm 'layers\.group1\.1\.unit1\.norm'"):
        net(torch.randn(1, 3, 16, 16))


def test_shared_conv_weights_and_diverging_norms_after_step():
    torch.manual_seed(0)
    net = small().train()
    norm_param_ids = {
        id(p) for layer in modality_norm_layers(net).values() for p in layer.parameters()
    }
    # every non-norm parameter is a single shared tensor (no modality in its name)
    for name, p in net.named_parameters():
        if id(p) not in norm_param_ids:
            assert "branches" not in name
    x = batches()
    # the shared conv gradient is the sum of the per-modality gradients
    conv = net.layers.group4[0].unit1.conv.weight
    per_modality = {}
    for m in MODS:
        net.zero_grad()
        with use_modality(net, m):
            net(x[m]).square().mean().backward()
        per_modality[m] = conv.grad.clone()
    net.zero_grad()
    loss = 0
    for m in MODS:
        with use_modality(net, m):
            loss = loss + net(x[m]).square().mean()
    loss.backward()
    torch.testing.assert_close(conv.grad, per_modality["ct"] + per_modality["mr"])
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    for name, layer in modality_norm_layers(net).items():
        ct, mr = layer.branches["ct"], layer.branches["mr"]
        assert not torch.allclose(ct.running_mean, mr.running_mean), name
        assert not torch.allclose(ct.running_var, mr.running_var), name
        assert not torch.allclose(ct.weight, mr.weight), name
        assert not torch.allclose(ct.bias, mr.bias), name


def test_all_parameters_receive_gradients_when_both_modalities_forwarded():
    net = small(dropout=0.25).train()
    x = batches()
    with use_modality(net, "ct"):
        net(x["ct"]).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert missing and all(".branches.mr." in n for n in missing)
    with use_modality(net, "mr"):
        net(x["mr"]).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_state_dict_round_trip():
    torch.manual_seed(0)
    net = small().train()
    for m, xb in batches().items():
        with use_modality(net, m):
            net(xb)
    net.eval()
    keys = list(net.state_dict())
    assert keys == list(small().state_dict())
    assert "layers.group1.1.unit1.norm.branches.ct.running_mean" in keys
    assert "layers.group10.1.branches.mr.weight" in keys
    clone = small()
    clone.load_state_dict(net.state_dict(), strict=True)
    clone.eval()
    x = torch.randn(2, 3, 16, 16)
    outputs = {}
    for m in MODS:
        with use_modality(net, m), use_modality(clone, m):
            outputs[m] = net(x)
            torch.testing.assert_close(clone(x), outputs[m], rtol=0, atol=0)
    assert not torch.allclose(outputs["ct"], outputs["mr"])


@pytest.mark.parametrize(
    ("norm", "cls"), [("instance", nn.InstanceNorm2d), ("group", nn.GroupNorm)]
)
def test_other_norms(norm, cls):
    net = small(norm=norm)
    branches = [b for layer in modality_norm_layers(net).values() for b in layer.branches.values()]
    assert len(branches) == 62 and all(type(b) is cls for b in branches)
    assert all(b.weight is not None for b in branches)  # per-modality affine parameters
    with use_modality(net, "mr"):
        net(torch.randn(2, 3, 16, 16)).sum().backward()


def test_shared_norm_variant_ignores_modality():
    net = small(modalities=None).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = net(x)
    with use_modality(net, "ct"):
        torch.testing.assert_close(net(x), expected)


def test_dropout_only_in_training():
    net = small(dropout=0.5, modalities=None)
    x = torch.randn(2, 3, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))


def test_residual_block_zero_pads_shortcut_channels():
    block = ResidualBlock2d(2, 6, "batch", None)
    for unit in (block.unit1, block.unit2):
        nn.init.zeros_(unit.conv.weight)
    x = torch.randn(1, 2, 4, 4)
    y = block(x)
    torch.testing.assert_close(y[:, 2:4], x)
    assert torch.count_nonzero(y[:, :2]) == 0 and torch.count_nonzero(y[:, 4:]) == 0
    with pytest.raises(ValueError, match="out_channels"):
        ResidualBlock2d(4, 2, "batch", None)


def test_bf16_autocast_and_no_grad():
    net = small().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), use_modality(net, "ct"):
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
    assert not y.requires_grad
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), reference, atol=0.1, rtol=0.1)


def test_count_parameters_trainable_only():
    net = small(modalities=None)
    full = count_parameters(net)
    assert full["total"] == sum(p.numel() for p in net.parameters())
    net.layers.output.requires_grad_(False)
    trainable = count_parameters(net, trainable_only=True)
    frozen = sum(p.numel() for p in net.layers.output.parameters())
    assert trainable["other"] == full["other"] - frozen
    assert trainable["norm"] == full["norm"] > 0
