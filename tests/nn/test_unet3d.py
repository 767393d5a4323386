from __future__ import annotations

import pytest
import torch
from torch import nn

from ummkd.nn import UNet3d, count_parameters, modality_norm_layers, use_modality

MODS = ("ct", "mr")


def test_paper_configuration_counts():
    net = UNet3d()  # base 16, 5 classes
    conv_weights = sum(
        m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
    )
    assert conv_weights == pytest.approx(2.2e6, rel=0.01)
    assert count_parameters(net)["other"] == conv_weights + 5
    assert len(modality_norm_layers(net)) == 17
    assert count_parameters(UNet3d(modalities=None))["norm"] * 2 == count_parameters(net)["norm"]


def test_kernels_are_in_plane_in_inner_levels():
    net = UNet3d(modalities=None)
    assert net.encoder1[0].conv.kernel_size == (3, 3, 3)
    assert net.encoder2[1].conv.kernel_size == (3, 3, 3)
    assert net.encoder3[0].conv.kernel_size == (3, 3, 1)
    assert net.bottom[1].conv.kernel_size == (3, 3, 1)
    assert net.bottom[1].conv.out_channels == 256
    assert net.up3.conv.kernel_size == (3, 3, 1)
    assert net.up1.conv.kernel_size == (3, 3, 3)
    assert net.decoder1[1].conv.out_channels == 32
    assert net.output.kernel_size == (1, 1, 1) and net.output.bias is not None


def test_output_shape_and_gradients_for_both_modalities():
    torch.manual_seed(0)
    net = UNet3d(base_channels=2, out_channels=3).train()
    x = {"ct": torch.randn(2, 1, 16, 16, 8), "mr": torch.randn(2, 1, 16, 16, 8) * 2 + 1}
    for m in MODS:
        with use_modality(net, m):
            y = net(x[m])
        assert y.shape == (2, 3, 16, 16, 8)
        y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    for name, layer in modality_norm_layers(net).items():
        assert not torch.allclose(
            layer.branches["ct"].running_mean, layer.branches["mr"].running_mean
        ), name


def test_in_plane_kernels_do_not_mix_slices_in_inner_levels():
    net = UNet3d(base_channels=2, modalities=None).eval()
    x = torch.randn(1, 8, 4, 4, 2)
    y = net.encoder3(x)
    y_first = net.encoder3(x[..., :1])
    torch.testing.assert_close(y[..., :1], y_first)


@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 4), (1, 1, 12, 16, 8), (1, 1, 16, 16)])
def test_bad_input_shapes_raise(shape):
    net = UNet3d(base_channels=2)
    with pytest.raises(ValueError, match="UNet3d"), use_modality(net, "ct"):
        net(torch.randn(*shape))


def test_missing_modality_raises():
    net = UNet3d(base_channels=2)
    with use_modality(net, "pet"), pytest.raises(ValueError, match=r"'pet'.*\['ct', 'mr'\]"):
        net(torch.randn(1, 1, 8, 8, 8))


def test_state_dict_round_trip():
    net = UNet3d(base_channels=2, out_channels=2).train()
    for shift, m in enumerate(MODS):
        with use_modality(net, m):
            net(torch.randn(2, 1, 8, 8, 8) + shift)
    clone = UNet3d(base_channels=2, out_channels=2)
    assert list(clone.state_dict()) == list(net.state_dict())
    clone.load_state_dict(net.state_dict())
    net.eval()
    clone.eval()
    x = torch.randn(1, 1, 8, 8, 8)
    for m in MODS:
        with use_modality(net, m), use_modality(clone, m):
            torch.testing.assert_close(clone(x), net(x), rtol=0, atol=0)
