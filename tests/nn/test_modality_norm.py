from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from monai.networks.layers.factories import Norm
from monai.networks.nets import AttentionUnet, BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

import ummkd.nn as unn
from ummkd.nn import (
    ModalityNorm,
    ModalitySwitch,
    convert_to_modality_norm,
    expand_state_dict_to_modalities,
    modality_names,
    modality_norm_layers,
    set_modality,
    use_modality,
)

MODS = ("ct", "mr")


def tiny_net(modalities=MODS) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1, bias=False),
            norm1=ModalityNorm(8, modalities),
            act=nn.ReLU(),
            conv2=nn.Conv2d(8, 2, 1),
        )
    )


def distinct_stats(net: nn.Module) -> None:
    """Give every modality branch different running statistics."""
    for layer in modality_norm_layers(net).values():
        for shift, bn in enumerate(layer.branches.values()):
            bn.running_mean.fill_(float(shift))
            bn.running_var.fill_(1.0 + shift)


# --------------------------------------------------------------------------- ModalityNorm


def test_modality_norm_holds_independent_layers():
    layer = ModalityNorm(4, MODS, norm="batch", eps=1e-3, momentum=0.1)
    assert layer.modalities == MODS
    assert layer.modality is None
    ct, mr = layer.branches["ct"], layer.branches["mr"]
    assert isinstance(ct, nn.BatchNorm2d)
    assert (ct.eps, ct.momentum) == (1e-3, 0.1)
    assert ct.weight is not mr.weight
    assert ct.running_mean.data_ptr() != mr.running_mean.data_ptr()
    assert not isinstance(layer, nn.modules.batchnorm._BatchNorm)
    assert set(layer.state_dict()) == {
        f"branches.{m}.{k}"
        for m in MODS
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }


@pytest.mark.parametrize(
    ("norm", "kwargs", "spatial_dims", "expected"),
    [
        ("batch", {}, 1, nn.BatchNorm1d),
        ("batch", {}, 3, nn.BatchNorm3d),
        ("instance", {"affine": True}, 2, nn.InstanceNorm2d),
        ("group", {"num_groups": 2}, 3, nn.GroupNorm),
        (("group", {"num_groups": 4}), {}, 2, nn.GroupNorm),
    ],
)
def test_modality_norm_builds_requested_norm(norm, kwargs, spatial_dims, expected):
    layer = ModalityNorm(8, ("a", "b", "c"), norm=norm, spatial_dims=spatial_dims, **kwargs)
    assert all(type(b) is expected for b in layer.branches.values())
    x = torch.randn(2, 8, *([4] * spatial_dims))
    with use_modality(layer, "b"):
        assert layer(x).shape == x.shape
    if expected is nn.GroupNorm:
        assert layer.branches["a"].num_groups == (kwargs or norm[1])["num_groups"]


def test_modality_norm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="duplicate"):
        ModalityNorm(4, ("ct", "ct"))
    with pytest.raises(ValueError, match="at least one"):
        ModalityNorm(4, ())
    with pytest.raises(ValueError, match="invalid modality name"):
        ModalityNorm(4, ("ct", "m.r"))
    with pytest.raises(TypeError, match="sequence of names"):
        ModalityNorm(4, "ct")
    with pytest.raises(ValueError, match="cannot wrap"):
        ModalityNorm(4, MODS, norm="modality")
    with pytest.raises(ValueError, match="channels"):
        ModalityNorm(4, MODS, norm=nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="norm_kwargs"):
        ModalityNorm(4, MODS, norm=nn.BatchNorm2d(4), eps=0.1)


def test_modality_norm_uses_only_the_active_branch():
    layer = ModalityNorm(3, MODS).eval()
    layer.branches["mr"].running_mean.fill_(2.0)
    x = torch.randn(2, 3, 4, 4)
    with use_modality(layer, "ct"):
        torch.testing.assert_close(layer(x), layer.branches["ct"](x))
    with use_modality(layer, "mr"):
        torch.testing.assert_close(layer(x), x - 2.0, atol=1e-4, rtol=1e-4)


def test_training_forward_updates_only_the_active_statistics():
    layer = ModalityNorm(3, MODS).train()
    with use_modality(layer, "mr"):
        layer(torch.randn(8, 3, 4, 4) * 2 + 5)
    assert torch.all(layer.branches["mr"].running_mean > 0.2)
    torch.testing.assert_close(layer.branches["ct"].running_mean, torch.zeros(3))
    assert layer.branches["ct"].num_batches_tracked.item() == 0


def test_from_norm_deep_copies_state():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.fill_(3.0)
    bn.weight.data.fill_(2.0)
    bn.bias.requires_grad_(False)
    bn.eval()
    layer = ModalityNorm.from_norm(bn, MODS)
    assert not layer.training
    for branch in layer.branches.values():
        assert branch is not bn
        torch.testing.assert_close(branch.running_mean, torch.full((4,), 3.0))
        torch.testing.assert_close(branch.weight, torch.full((4,), 2.0))
        assert not branch.bias.requires_grad
    layer.branches["ct"].weight.data.fill_(0.0)
    assert bn.weight[0].item() == 2.0 and layer.branches["mr"].weight[0].item() == 2.0


# --------------------------------------------------------------------------- selection


def test_error_without_active_modality_names_layer_and_modalities():
    net = tiny_net()
    set_modality(net, "ct")  # records qualified names
    set_modality(net, None)
    with pytest.raises(ValueError, match=r"ModalityNorm 'norm1'.*no active modality") as info:
        net(torch.randn(1, 3, 4, 4))
    assert "['ct', 'mr']" in str(info.value)


def test_error_for_unknown_modality():
    net = tiny_net()
    with use_modality(net, "pet"), pytest.raises(ValueError) as info:
        net(torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "'norm1'" in message and "'pet'" in message and "['ct', 'mr']" in message


def test_error_of_unnamed_layer_uses_class_and_modalities():
    layer = ModalityNorm(3, ("t1", "t2"))
    with pytest.raises(ValueError, match=r"^ModalityNorm \(modalities: t1, t2\): no active"):
        layer(torch.randn(2, 3, 4))


def test_use_modality_nests_and_restores():
    net = tiny_net()
    layer = net.norm1
    assert layer.modality is None
    with use_modality(net, "ct") as entered:
        assert entered is net
        assert layer.modality == "ct"
        with use_modality(net, "mr"):
            assert layer.modality == "mr"
            with use_modality(net, "mr"):
                assert layer.modality == "mr"
            assert layer.modality == "mr"
        assert layer.modality == "ct"
    assert layer.modality is None


def test_use_modality_restores_on_exception():
    net = tiny_net()
    with use_modality(net, "ct"):
        with pytest.raises(RuntimeError, match="boom"), use_modality(net, "mr"):
            assert net.norm1.modality == "mr"
            raise RuntimeError("boom")
        assert net.norm1.modality == "ct"
    assert net.norm1.modality is None


def test_use_modality_restores_per_layer_state():
    net = tiny_net()
    extra = ModalityNorm(2, MODS)
    net.add_module("norm2", extra)
    extra.modality = "mr"
    with use_modality(net, "ct"):
        assert net.norm1.modality == extra.modality == "ct"
    assert net.norm1.modality is None and extra.modality == "mr"


def test_use_modality_rejects_non_string():
    with pytest.raises(TypeError), use_modality(tiny_net(), 0):  # type: ignore[arg-type]
        pass


def test_use_modality_is_noop_without_modality_layers():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    x = torch.randn(2, 1, 6, 6)
    net.eval()
    expected = net(x)
    with use_modality(net, "ct"):
        torch.testing.assert_close(net(x), expected)
    assert modality_names(net) == ()
    assert modality_norm_layers(net) == {}


def test_helpers_list_layers_and_modalities():
    net = tiny_net()
    net.add_module("switch", ModalitySwitch({"mr": nn.Identity(), "pet": nn.Identity()}))
    assert list(modality_norm_layers(net)) == ["norm1"]
    assert modality_names(net) == ("ct", "mr", "pet")
    set_modality(net, "mr")
    assert net.norm1.modality == net.switch.modality == "mr"
    assert net.switch.layer_name == "switch"


def test_modality_switch_routes_to_branch():
    switch = ModalitySwitch({"ct": nn.Identity(), "mr": nn.Tanh()})
    x = torch.randn(3) * 4
    with use_modality(switch, "mr"):
        torch.testing.assert_close(switch(x), torch.tanh(x))
    with use_modality(switch, "ct"):
        torch.testing.assert_close(switch(x), x)
    with pytest.raises(ValueError, match=r"ModalitySwitch \(modalities: ct, mr\)"):
        switch(x)


# --------------------------------------------------------------------------- no_grad/AMP/compile


def test_no_grad_and_eval_use_per_modality_statistics():
    net = tiny_net().eval()
    distinct_stats(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with use_modality(net, "ct"):
            y_ct = net(x)
        with use_modality(net, "mr"):
            y_mr = net(x)
    assert not y_ct.requires_grad
    assert not torch.allclose(y_ct, y_mr)


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(0)
    net = tiny_net().train()
    x = torch.randn(4, 3, 8, 8)
    reference = {}
    for m in MODS:
        with use_modality(net, m):
            reference[m] = net(x).detach()
    for m in MODS:
        with torch.autocast("cpu", dtype=torch.bfloat16), use_modality(net, m):
            y = net(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), reference[m], atol=0.1, rtol=0.05)
        y.float().sum().backward()
    for layer in modality_norm_layers(net).values():
        for branch in layer.branches.values():
            assert branch.running_mean.dtype == torch.float32
            assert branch.weight.grad is not None


def test_torch_compile_alternating_modalities_compiles_once_per_modality():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    net = tiny_net().eval()
    distinct_stats(net)
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    x = torch.randn(2, 3, 8, 8)
    for step in range(6):
        modality = MODS[step % 2]
        with use_modality(net, modality):
            torch.testing.assert_close(compiled(x), net(x))
    assert counter.frame_count == 2
    with pytest.raises(ValueError, match="no active modality"):
        compiled(x)
    torch._dynamo.reset()


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    torch._dynamo.reset()
    net = tiny_net().eval()
    distinct_stats(net)
    compiled = torch.compile(net)
    x = torch.randn(2, 3, 8, 8)
    for step in range(4):
        with use_modality(net, MODS[step % 2]):
            torch.testing.assert_close(compiled(x), net(x), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- SyncBN, state dict


def test_sync_batchnorm_conversion_keeps_structure_and_keys():
    net = tiny_net()
    distinct_stats(net)
    keys = list(net.state_dict())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    layer = converted.norm1
    assert type(layer) is ModalityNorm
    assert layer.modalities == MODS
    assert all(type(b) is nn.SyncBatchNorm for b in layer.branches.values())
    assert list(converted.state_dict()) == keys
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_expand_state_dict_duplicates_shared_norm_into_branches():
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    shared[1].running_mean.uniform_()
    shared[1].weight.data.uniform_()
    shared.eval()
    model = copy.deepcopy(shared)
    nn.init.zeros_(model[0].weight)
    convert_to_modality_norm(model, MODS)
    expanded = expand_state_dict_to_modalities(shared.state_dict(), model)
    assert list(expanded) == list(model.state_dict())
    model.load_state_dict(expanded, strict=True)
    x = torch.randn(2, 3, 6, 6)
    for m in MODS:
        with use_modality(model, m):
            torch.testing.assert_close(model(x), shared(x))
    assert (
        expanded["1.branches.ct.weight"].data_ptr() != expanded["1.branches.mr.weight"].data_ptr()
    )


def test_expand_state_dict_handles_root_and_nested_switches():
    inner = ModalityNorm(2, MODS)
    outer = ModalitySwitch({"a": nn.Sequential(nn.Linear(2, 2), inner), "b": nn.Identity()})
    source = {
        "0.weight": torch.ones(2, 2),
        "0.bias": torch.zeros(2),
        "1.weight": torch.full((2,), 3.0),
        "1.bias": torch.zeros(2),
        "1.running_mean": torch.zeros(2),
        "1.running_var": torch.ones(2),
        "1.num_batches_tracked": torch.tensor(0),
    }
    expanded = expand_state_dict_to_modalities(source, outer)
    assert set(expanded) == set(outer.state_dict())
    torch.testing.assert_close(expanded["branches.a.1.branches.mr.weight"], torch.full((2,), 3.0))
    outer.load_state_dict(expanded)


def test_expand_state_dict_reports_mismatches():
    model = tiny_net()
    shared = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1, bias=False),
            norm1=nn.BatchNorm2d(8),
            act=nn.ReLU(),
            conv2=nn.Conv2d(8, 2, 1),
        )
    )
    state = shared.state_dict()
    with pytest.raises(KeyError, match=r"missing \['norm1.running_var'\]"):
        expand_state_dict_to_modalities(
            {k: v for k, v in state.items() if k != "norm1.running_var"}, model
        )
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        expand_state_dict_to_modalities({**state, "extra": torch.zeros(1)}, model)
    with pytest.raises(KeyError, match="unexpected"):  # an already expanded checkpoint
        expand_state_dict_to_modalities(model.state_dict(), model)
    with pytest.raises(ValueError, match="shape mismatch"):
        expand_state_dict_to_modalities({**state, "norm1.weight": torch.ones(3)}, model)


# --------------------------------------------------------------------------- model surgery


class BasicBlock(nn.Module):
    """torchvision-style basic block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """torchvision-style ResNet layout (conv1/bn1/layerN/fc)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_convert_torchvision_style_resnet():
    torch.manual_seed(0)
    net = TinyResNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.weight.data.uniform_(0.5, 1.5)
    net.layer1[0].bn1.weight.requires_grad_(False)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = net(x)
    original_bn = net.layer2[0].downsample[1]
    assert convert_to_modality_norm(net, MODS) is net
    layers = modality_norm_layers(net)
    assert len(layers) == 1 + 4 + 3
    assert "layer2.0.downsample.1" in layers
    assert layers["layer2.0.downsample.1"].layer_name == "layer2.0.downsample.1"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules() if m not in _branches(net))
    for m in MODS:
        branch = net.layer2[0].downsample[1].branches[m]
        torch.testing.assert_close(branch.running_mean, original_bn.running_mean)
        assert branch is not original_bn
        assert not net.layer1[0].bn1.branches[m].weight.requires_grad
        with use_modality(net, m):
            torch.testing.assert_close(net(x), expected)
    with pytest.raises(ValueError, match="ModalityNorm 'bn1'"):
        net(x)


def _branches(net: nn.Module) -> set[nn.Module]:
    return {b for layer in modality_norm_layers(net).values() for b in layer.branches.values()}


def test_convert_keeps_shared_instances_shared_and_is_idempotent():
    bn = nn.BatchNorm1d(4)
    net = nn.Sequential(nn.Linear(4, 4), bn, nn.Linear(4, 4), bn)
    convert_to_modality_norm(net, MODS)
    assert net[1] is net[3]
    assert isinstance(net[1], ModalityNorm)
    before = list(net.state_dict())
    convert_to_modality_norm(net, MODS)
    assert list(net.state_dict()) == before
    assert all(type(b) is nn.BatchNorm1d for b in net[1].branches.values())


def test_convert_single_norm_returns_replacement():
    gn = nn.GroupNorm(2, 4)
    replacement = convert_to_modality_norm(gn, MODS)
    assert isinstance(replacement, ModalityNorm)
    assert replacement.num_features == 4
    assert all(type(b) is nn.GroupNorm for b in replacement.branches.values())


MONAI_NETS = {
    "UNet": lambda: UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch"),
    "BasicUNet": lambda: BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4)),
    "DynUNet": lambda: DynUNet(
        2,
        1,
        2,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        filters=[4, 8, 8],
    ),
    "SegResNet": lambda: SegResNet(
        2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,)
    ),
    "AttentionUnet": lambda: AttentionUnet(2, 1, 2, channels=(4, 8), strides=(2,)),
}


@pytest.mark.parametrize("name", list(MONAI_NETS))
def test_convert_monai_networks(name):
    torch.manual_seed(0)
    net = MONAI_NETS[name]()
    n_norms = sum(
        isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) for m in net.modules()
    )
    convert_to_modality_norm(net, MODS)
    layers = modality_norm_layers(net)
    assert len(layers) == n_norms > 0
    x = {"ct": torch.randn(2, 1, 32, 32), "mr": torch.randn(2, 1, 32, 32) * 3 + 2}
    net.train()
    for m in MODS:
        with use_modality(net, m):
            y = net(x[m])
        assert y.shape == (2, 2, 32, 32)
        y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match=r"ModalityNorm '.+' \(modalities: ct, mr\)"):
        net(x["ct"])


# --------------------------------------------------------------------------- MONAI factory


def test_norm_factory_registration_is_idempotent():
    assert "MODALITY" in Norm.components
    doc = Norm.__doc__
    unn.register_monai_norm()
    unn.register_monai_norm()
    assert Norm.__doc__ == doc


@pytest.mark.parametrize(
    ("spatial_dims", "bn"), [(1, nn.BatchNorm1d), (2, nn.BatchNorm2d), (3, nn.BatchNorm3d)]
)
def test_monai_unet_builds_modality_norms_from_factory(spatial_dims, bn):
    net = UNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=2,
        channels=(4, 8),
        strides=(2,),
        norm=("modality", {"modalities": ["ct", "mr"], "norm": "batch", "eps": 1e-3}),
    )
    layers = modality_norm_layers(net)
    assert len(layers) == 2
    for layer in layers.values():
        assert layer.modalities == MODS
        assert all(type(b) is bn and b.eps == 1e-3 for b in layer.branches.values())
    assert layers["model.0.adn.N"].num_features == 4
    x = torch.randn(2, 1, *([8] * spatial_dims))
    with use_modality(net, "mr"):
        assert net(x).shape == (2, 2, *([8] * spatial_dims))
    with pytest.raises(ValueError, match="no active modality"):
        net(x)


def test_monai_dynunet_with_group_norm_spec_from_factory():
    net = DynUNet(
        3,
        1,
        2,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        filters=[4, 8, 8],
        norm_name=("modality", {"modalities": ["ct", "mr"], "norm": ("group", {"num_groups": 2})}),
    )
    layers = modality_norm_layers(net)
    assert len(layers) == 10
    assert all(
        type(b) is nn.GroupNorm and b.num_groups == 2
        for layer in layers.values()
        for b in layer.branches.values()
    )
    with use_modality(net, "ct"):
        assert net(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
