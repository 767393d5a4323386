from __future__ import annotations

import pytest
import torch
from torch import nn

from ummkd.nn import (
    DilatedResNet2d,
    ModalitySwitch,
    MultiStreamNet,
    XShapeNet,
    YShapeNet,
    count_parameters,
    modality_names,
    modality_norm_layers,
    use_modality,
)

MODS = ("ct", "mr")
SMALL = {"in_channels": 3, "out_channels": 3, "base_channels": 2, "dropout": 0.0}


def batches() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "ct": torch.randn(2, 3, 16, 16, generator=g),
        "mr": torch.randn(2, 3, 16, 16, generator=g) * 2 + 1,
    }


def test_y_shape_structure():
    net = YShapeNet(**SMALL)
    assert isinstance(net.encoder, ModalitySwitch) and net.encoder.modalities == MODS
    assert list(net.encoder.branches["ct"].named_children())[-1][0] == "group3"
    shared_groups = [n for n, _ in net.shared.named_children()]
    assert shared_groups == [*(f"group{i}" for i in range(4, 11)), "output"]
    assert isinstance(net.decoder, nn.Identity)
    assert not modality_norm_layers(net)
    assert modality_names(net) == MODS


def test_x_shape_structure():
    net = XShapeNet(**SMALL)
    assert [n for n, _ in net.shared.named_children()] == [f"group{i}" for i in range(4, 10)]
    assert isinstance(net.decoder, ModalitySwitch)
    assert [n for n, _ in net.decoder.branches["mr"].named_children()] == ["group10", "output"]


def test_streams_have_separate_weights_and_shared_middle():
    net = XShapeNet(**SMALL)
    ct, mr = net.encoder.branches["ct"], net.encoder.branches["mr"]
    assert ct.group1[0].weight is not mr.group1[0].weight
    assert net.decoder.branches["ct"].output.weight is not net.decoder.branches["mr"].output.weight
    assert not any("branches" in name for name, _ in net.shared.named_parameters())


def test_parameter_counts_against_single_stream_net():
    kwargs = {"out_channels": 5}
    single = count_parameters(DilatedResNet2d(modalities=None, **kwargs))
    y = count_parameters(YShapeNet(**kwargs))
    x = count_parameters(XShapeNet(**kwargs))
    encoder = 432 + 4608 + 13824 + 129024  # conv weights of groups 1-3 at base 16
    decoder = 11_796_480 + 5000 + 5  # group 10 conv + output conv weights and bias
    assert y["other"] == single["other"] + encoder
    assert x["other"] == single["other"] + encoder + decoder
    assert x["total"] > y["total"] > single["total"]


@pytest.mark.parametrize("cls", [YShapeNet, XShapeNet])
def test_forward_selects_streams_and_all_parameters_get_gradients(cls):
    torch.manual_seed(0)
    net = cls(**SMALL).train()
    x = batches()
    for m in MODS:
        with use_modality(net, m):
            y = net(x[m])
        assert y.shape == (2, 3, 16, 16)
        y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    probe = torch.randn(1, 3, 16, 16)
    outputs = {}
    for m in MODS:
        with use_modality(net, m):
            outputs[m] = net(probe)
    assert not torch.allclose(outputs["ct"], outputs["mr"])


@pytest.mark.parametrize("cls", [YShapeNet, XShapeNet])
def test_missing_or_unknown_modality_raises(cls):
    net = cls(**SMALL)
    with pytest.raises(
        ValueError, match=r"ModalitySwitch 'encoder' \(modalities: ct, mr\): no active"
    ):
        net(torch.randn(1, 3, 16, 16))
    with use_modality(net, "pet"), pytest.raises(ValueError, match=r"'encoder'.*'pet'"):
        net(torch.randn(1, 3, 16, 16))


def test_spatial_size_check():
    net = YShapeNet(**SMALL)
    with use_modality(net, "ct"), pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 3, 12, 16))


def test_modality_norm_in_shared_part():
    net = YShapeNet(**SMALL, modality_norm_in_shared=True)
    layers = modality_norm_layers(net)
    assert layers and all(name.startswith("shared.") for name in layers)
    # groups 1-3 hold 8 of the 31 norm layers of the full network
    assert len(layers) == 31 - 8
    with use_modality(net, "mr"):
        net(torch.randn(2, 3, 16, 16)).mean().backward()


def test_invalid_split_raises():
    with pytest.raises(ValueError, match="at least one shared group"):
        MultiStreamNet(**SMALL, encoder_groups=6, decoder_groups=5)
    with pytest.raises(ValueError, match="encoder_groups >= 1"):
        MultiStreamNet(**SMALL, encoder_groups=0)


def test_state_dict_round_trip():
    net = XShapeNet(**SMALL).train()
    for m, xb in batches().items():
        with use_modality(net, m):
            net(xb)
    keys = list(net.state_dict())
    assert "encoder.branches.ct.group1.0.weight" in keys
    assert "decoder.branches.mr.output.bias" in keys
    clone = XShapeNet(**SMALL)
    assert list(clone.state_dict()) == keys
    clone.load_state_dict(net.state_dict())
    net.eval()
    clone.eval()
    probe = torch.randn(1, 3, 16, 16)
    for m in MODS:
        with use_modality(net, m), use_modality(clone, m):
            torch.testing.assert_close(clone(probe), net(probe), rtol=0, atol=0)


UNET = {
    "spatial_dims": 2,
    "in_channels": 3,
    "out_channels": 3,
    "channels": (4, 8, 16),
    "strides": (2, 2),
    "num_res_units": 1,
}


@pytest.mark.parametrize(("encoder_levels", "decoder_levels"), [(1, 0), (2, 0), (2, 1), (2, 2)])
def test_multistream_unet_weight_count_and_streams(encoder_levels, decoder_levels):
    from monai.networks.nets import UNet

    from ummkd.nn import MultiStreamUNet

    plain = UNet(**UNET)
    net = MultiStreamUNet(
        **UNET, modalities=MODS, encoder_levels=encoder_levels, decoder_levels=decoder_levels
    )
    switches = [name for name, m in net.named_modules() if isinstance(m, ModalitySwitch)]
    assert len(switches) == encoder_levels + decoder_levels
    # Each switch duplicates exactly the corresponding U-Net layer once (2 modalities).
    extra = 0
    level = plain.model
    for depth in range(max(encoder_levels, decoder_levels)):
        if depth < encoder_levels:
            extra += count_parameters(level[0])["total"]
        if depth < decoder_levels:
            extra += count_parameters(level[2])["total"]
        level = level[1].submodule
    assert count_parameters(net)["total"] == count_parameters(plain)["total"] + extra


def test_multistream_unet_routes_by_modality_and_trains_only_active_stream():
    from ummkd.nn import MultiStreamUNet

    torch.manual_seed(0)
    net = MultiStreamUNet(**UNET, modalities=MODS, encoder_levels=1, decoder_levels=1)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for p in net.model[0].branches["mr"].parameters():
            p.add_(0.5)
    net.eval()
    with use_modality(net, "ct"):
        out_ct = net(x)
    with use_modality(net, "mr"):
        out_mr = net(x)
    assert out_ct.shape == (2, 3, 16, 16)
    assert not torch.allclose(out_ct, out_mr)

    net.train()
    with use_modality(net, "ct"):
        net(x).sum().backward()
    mr_grads = [p.grad for p in net.model[0].branches["mr"].parameters()]
    ct_grads = [p.grad for p in net.model[0].branches["ct"].parameters()]
    assert all(g is None for g in mr_grads)
    assert all(g is not None and g.abs().sum() > 0 for g in ct_grads)
    shared = net.model[1].submodule[0]
    assert all(p.grad is not None for p in shared.parameters())


def test_multistream_unet_errors():
    from ummkd.nn import MultiStreamUNet

    with pytest.raises(ValueError, match="encoder_levels"):
        MultiStreamUNet(**UNET, encoder_levels=0)
    with pytest.raises(ValueError, match="2 levels above its bottom"):
        MultiStreamUNet(**UNET, encoder_levels=1, decoder_levels=3)
    net = MultiStreamUNet(**UNET)
    with pytest.raises(ValueError, match=r"ModalitySwitch 'model\.0'.*no active"):
        net(torch.randn(1, 3, 16, 16))
