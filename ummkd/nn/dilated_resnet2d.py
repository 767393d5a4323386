"""The paper's 2D dilated residual network (the PnP-AdaNet / SIFA segmenter, leaky ReLU 0.2).

Layer table (``b = base_channels``, ``C = out_channels``; the paper uses ``b = 16``, ``C = 5``):

=====  ==========  ==============================================================  =========
group  resolution  layers                                                          out ch
=====  ==========  ==============================================================  =========
1      1           conv3x3 in->b; residual block b; maxpool 2                      b
2      1/2         residual block b->2b; maxpool 2                                 2b
3      1/4         residual blocks 2b->4b, 4b->4b; maxpool 2                       4b
4      1/8         residual blocks 4b->8b, 8b->8b                                  8b
5      1/8         residual blocks 8b->16b, 16b->16b                               16b
6      1/8         residual blocks 16b->16b x2                                     16b
7      1/8         residual blocks 16b->32b, 32b->32b                              32b
8      1/8         2 residual blocks with dilation 2, 32b                          32b
9      1/8         2 x (norm, LReLU, conv3x3 32b->32b, dropout)                    32b
10     1/8 -> 1    conv3x3 32b->64*8C, norm, LReLU, pixel shuffle x8               8C
11     1           conv5x5 8C->C with bias (logits)                                C
=====  ==========  ==============================================================  =========

Residual blocks are pre-activation (norm -> LReLU -> conv3x3 -> dropout, twice) with an identity
shortcut, zero-padded with extra channels (split evenly before/after) when the width grows; there
is no 1x1 projection and no convolution has a bias except the output layer.

Width of the pixel-shuffle stage: the released code uses ``8 * C`` channels after the shuffle
(``64 * 8 * C = 2560`` before it for ``C = 5``), i.e. it scales with the number of classes, not
with ``base_channels``; this implementation follows the code. With ``b = 16`` and ``C = 5`` the
network has 39.30 M convolution weights and 31 norm layers per modality.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ummkd.nn.modality_norm import make_norm, norm_spec, set_modality

__all__ = [
    "GROUP_NAMES",
    "DilatedResNet2d",
    "PreActConv2d",
    "ResidualBlock2d",
    "check_input_shape",
    "dilated_resnet2d_groups",
]

NEGATIVE_SLOPE = 0.2
"""Leaky ReLU slope of the paper's networks (TensorFlow's ``leaky_relu`` default)."""

OUTPUT_STRIDE = 8
"""Down-sampling factor of the 2D network (three 2x2 max-pools)."""

GROUP_NAMES = (*(f"group{i}" for i in range(1, 11)), "output")
"""Names of the 11 layer groups of the 2D network, in forward order."""


class PreActConv2d(nn.Sequential):
    """Pre-activation unit: norm -> LeakyReLU(0.2) -> conv3x3 (no bias) -> dropout.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: ``"batch"``, ``"instance"`` or ``"group"`` (see :func:`norm_spec`).
        modalities: modality names for modality-specific norms, ``None`` for a shared norm.
        dilation: dilation of the 3x3 convolution (padding keeps the resolution).
        dropout: dropout probability after the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: Literal["batch", "instance", "group"],
        modalities: Sequence[str] | None,
        dilation: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            OrderedDict(
                norm=make_norm(in_channels, 2, norm_spec(norm, in_channels), modalities),
                act=nn.LeakyReLU(NEGATIVE_SLOPE),
                conv=nn.Conv2d(
                    in_channels,
                    out_channels,
                    kernel_size=3,
                    padding=dilation,
                    dilation=dilation,
                    bias=False,
                ),
                dropout=nn.Dropout(dropout),
            )
        )


class ResidualBlock2d(nn.Module):
    """Pre-activation residual block with a zero-padded identity shortcut.

    Args:
        in_channels: input channels.
        out_channels: output channels (``>= in_channels``; extra shortcut channels are zeros,
            split evenly before and after the input channels).
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        modalities: modality names for modality-specific norms, ``None`` for shared norms.
        dilation: dilation of both 3x3 convolutions.
        dropout: dropout probability after each convolution.

    Raises:
        ValueError: if ``out_channels < in_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: Literal["batch", "instance", "group"],
        modalities: Sequence[str] | None,
        dilation: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"out_channels ({out_channels}) < in_channels ({in_channels})")
        self.unit1 = PreActConv2d(in_channels, out_channels, norm, modalities, dilation, dropout)
        self.unit2 = PreActConv2d(out_channels, out_channels, norm, modalities, dilation, dropout)
        extra = out_channels - in_channels
        self.channel_padding = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes ``shortcut(x) + unit2(unit1(x))``.

        Args:
            x: input of shape ``(B, in_channels, H, W)``.

        Returns:
            Output of shape ``(B, out_channels, H, W)``.
        """
        shortcut = x
        if any(self.channel_padding):
            shortcut = F.pad(x, (0, 0, 0, 0, *self.channel_padding))
        return shortcut + self.unit2(self.unit1(x))


def dilated_resnet2d_groups(
    in_channels: int,
    out_channels: int,
    base_channels: int,
    dropout: float,
    norm: Literal["batch", "instance", "group"],
    modalities: Sequence[str] | None,
    names: Collection[str] | None = None,
    head_channels: int | None = None,
) -> list[tuple[str, nn.Module]]:
    """The layer groups of the 2D network, named ``group1`` ... ``group10``, ``output``.

    Shared with the multi-stream baselines, which build modality-specific and shared parts from
    subsets of these groups.

    Args:
        in_channels: input channels (3 adjacent slices in the paper).
        out_channels: number of classes ``C``.
        base_channels: width ``b`` of group 1 (16 in the paper).
        dropout: dropout probability in the residual blocks and group 9.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        modalities: modality names for modality-specific norms, ``None`` for shared norms.
        names: build only these groups (see :data:`GROUP_NAMES`); ``None`` builds all.
        head_channels: channels after the x8 pixel shuffle; ``None`` = ``8 * C`` as in the
            authors' code. Smaller values make the costly group-10 convolution cheaper.

    Returns:
        ``(name, module)`` pairs in forward order.

    Raises:
        ValueError: if a channel count is not positive or a group name is unknown.
    """
    if min(in_channels, out_channels, base_channels) < 1:
        raise ValueError("in_channels, out_channels and base_channels must be positive")
    unknown = set(names or ()) - set(GROUP_NAMES)
    if unknown:
        raise ValueError(f"unknown group names {sorted(unknown)}; valid: {list(GROUP_NAMES)}")
    b = base_channels
    shuffle_channels = head_channels or 8 * out_channels
    pre_shuffle = shuffle_channels * OUTPUT_STRIDE**2

    def block(cin: int, cout: int, dilation: int = 1) -> ResidualBlock2d:
        return ResidualBlock2d(cin, cout, norm, modalities, dilation, dropout)

    def unit(channels: int) -> PreActConv2d:
        return PreActConv2d(channels, channels, norm, modalities, dropout=dropout)

    builders: dict[str, Callable[[], nn.Module]] = {
        "group1": lambda: nn.Sequential(
            nn.Conv2d(in_channels, b, kernel_size=3, padding=1, bias=False),
            block(b, b),
            nn.MaxPool2d(2),
        ),
        "group2": lambda: nn.Sequential(block(b, 2 * b), nn.MaxPool2d(2)),
        "group3": lambda: nn.Sequential(block(2 * b, 4 * b), block(4 * b, 4 * b), nn.MaxPool2d(2)),
        "group4": lambda: nn.Sequential(block(4 * b, 8 * b), block(8 * b, 8 * b)),
        "group5": lambda: nn.Sequential(block(8 * b, 16 * b), block(16 * b, 16 * b)),
        "group6": lambda: nn.Sequential(block(16 * b, 16 * b), block(16 * b, 16 * b)),
        "group7": lambda: nn.Sequential(block(16 * b, 32 * b), block(32 * b, 32 * b)),
        "group8": lambda: nn.Sequential(block(32 * b, 32 * b, 2), block(32 * b, 32 * b, 2)),
        "group9": lambda: nn.Sequential(unit(32 * b), unit(32 * b)),
        "group10": lambda: nn.Sequential(
            nn.Conv2d(32 * b, pre_shuffle, kernel_size=3, padding=1, bias=False),
            make_norm(pre_shuffle, 2, norm_spec(norm, pre_shuffle), modalities),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.PixelShuffle(OUTPUT_STRIDE),
        ),
        "output": lambda: nn.Conv2d(shuffle_channels, out_channels, kernel_size=5, padding=2),
    }
    return [(name, builders[name]()) for name in GROUP_NAMES if names is None or name in names]


def check_input_shape(
    x: torch.Tensor, in_channels: int, spatial_dims: int, multiple: int, network: str
) -> None:
    """Validates a network input ``(B, in_channels, *spatial)``.

    Args:
        x: the input tensor.
        in_channels: expected channel count.
        spatial_dims: expected number of spatial dimensions.
        multiple: every spatial size must be divisible by this.
        network: network name for the error message.

    Raises:
        ValueError: on a wrong number of dimensions, channel count or spatial size.
    """
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"{network} expects input (B, {in_channels}, {', '.join('S' * spatial_dims)}), "
            f"got shape {tuple(x.shape)}"
        )
    if any(size % multiple for size in x.shape[2:]):
        raise ValueError(
            f"{network} needs spatial sizes divisible by {multiple}, got {tuple(x.shape[2:])}; "
            "pad or crop the input"
        )


class DilatedResNet2d(nn.Module):
    """The paper's 2D dilated residual segmentation network (see the module docstring).

    Every convolution is shared between modalities; with ``modalities`` given, every norm layer is
    a :class:`~ummkd.nn.modality_norm.ModalityNorm` (select the modality with
    :func:`~ummkd.nn.modality_norm.use_modality`). ``modalities=None`` builds ordinary shared
    norms (single-modality and "joint" baselines).

    Args:
        in_channels: input channels (3 adjacent slices in the paper).
        out_channels: number of classes ``C`` (logit channels).
        modalities: modality names, or ``None`` for shared norms.
        base_channels: width of group 1; widths are ``b, 2b, 4b, 8b, 16b, 16b, 32b, 32b``.
        dropout: dropout probability (0.25 in the paper; active in training mode only).
        norm: ``"batch"`` (paper: momentum 0.1, eps 1e-3), ``"instance"`` or ``"group"``.
        head_channels: channels after the x8 pixel shuffle (``None``: ``8 * out_channels``, the
            authors' choice; the conv before the shuffle has ``64 * head_channels`` outputs).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 5,
        modalities: Sequence[str] | None = ("ct", "mr"),
        base_channels: int = 16,
        dropout: float = 0.25,
        norm: Literal["batch", "instance", "group"] = "batch",
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modalities = None if modalities is None else tuple(modalities)
        self.layers = nn.Sequential(
            OrderedDict(
                dilated_resnet2d_groups(
                    in_channels,
                    out_channels,
                    base_channels,
                    dropout,
                    norm,
                    self.modalities,
                    head_channels=head_channels,
                )
            )
        )
        set_modality(self, None)  # records qualified layer names for error messages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes segmentation logits.

        Args:
            x: images of shape ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by 8.

        Returns:
            Logits of shape ``(B, out_channels, H, W)``.

        Raises:
            ValueError: on a wrong input shape, or (from a modality norm) when no valid modality
                is active.
        """
        check_input_shape(x, self.in_channels, 2, OUTPUT_STRIDE, type(self).__name__)
        return self.layers(x)
