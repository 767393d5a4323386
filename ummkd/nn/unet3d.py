"""The paper's 3D U-Net for the abdominal CT/MR task.

Tensor layout ``(B, C, H, W, D)`` with ``D`` the slice axis (patches 256x256x8 in the paper).
Every convolution is followed by norm and LeakyReLU(0.2); there are no convolution biases except
in the 1x1x1 output layer. ``b = base_channels`` (16 in the paper):

==========  =======================================  ==========================================
level       encoder (conv, conv)                     decoder (up-conv; concat skip; conv, conv)
==========  =======================================  ==========================================
1 (1)       in->b, b->2b, 3x3x3                      4b->4b up 3x3x3; 6b->2b, 2b->2b, 3x3x3
2 (1/2)     2b->2b, 2b->4b, 3x3x3                    8b->8b up 3x3x1; 12b->4b, 4b->4b, 3x3x3
3 (1/4)     4b->4b, 4b->8b, 3x3x1                    16b->8b up 3x3x1; 16b->8b, 8b->8b, 3x3x1
bottom 1/8  8b->8b, 8b->16b, 3x3x1
==========  =======================================  ==========================================

Down-sampling is 2x2x2 max pooling, up-sampling a stride-2 transposed convolution (followed by
norm and LeakyReLU) whose kernel is that of the level it leads to, as in the released code. Output
``conv1x1x1 2b->C`` with bias. With ``b = 16``, ``C = 5``: 2.199 M convolution weights, 17 norm
layers per modality.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ummkd.nn.dilated_resnet2d import NEGATIVE_SLOPE, check_input_shape
from ummkd.nn.modality_norm import make_norm, norm_spec, set_modality

__all__ = ["UNet3d"]

KERNEL_FULL = (3, 3, 3)
"""Kernel of the two outer levels."""

KERNEL_INPLANE = (3, 3, 1)
"""Kernel of the two inner levels (no mixing along the slice axis ``D``)."""


def _padding(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


class _ConvNormAct(nn.Sequential):
    """conv (no bias) -> norm -> LeakyReLU(0.2); transposed stride-2 conv if ``up``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int],
        norm: Literal["batch", "instance", "group"],
        modalities: Sequence[str] | None,
        up: bool = False,
    ) -> None:
        conv: nn.Module
        if up:
            conv = nn.ConvTranspose3d(
                in_channels,
                out_channels,
                kernel,
                stride=2,
                padding=_padding(kernel),
                output_padding=1,
                bias=False,
            )
        else:
            conv = nn.Conv3d(
                in_channels, out_channels, kernel, padding=_padding(kernel), bias=False
            )
        super().__init__(
            OrderedDict(
                conv=conv,
                norm=make_norm(out_channels, 3, norm_spec(norm, out_channels), modalities),
                act=nn.LeakyReLU(NEGATIVE_SLOPE),
            )
        )


class UNet3d(nn.Module):
    """The paper's 3D U-Net (see the module docstring for the layer table).

    With ``modalities`` given, all 17 norm layers are
    :class:`~ummkd.nn.modality_norm.ModalityNorm` layers (select the modality with
    :func:`~ummkd.nn.modality_norm.use_modality`); ``None`` builds shared norms.

    Args:
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        modalities: modality names, or ``None`` for shared norms.
        base_channels: width ``b`` of the first convolution.
        norm: ``"batch"`` (paper: momentum 0.1, eps 1e-3), ``"instance"`` or ``"group"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 5,
        modalities: Sequence[str] | None = ("ct", "mr"),
        base_channels: int = 16,
        norm: Literal["batch", "instance", "group"] = "batch",
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, base_channels) < 1:
            raise ValueError("in_channels, out_channels and base_channels must be positive")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modalities = None if modalities is None else tuple(modalities)
        b = base_channels

        def stage(cin: int, cmid: int, cout: int, kernel: tuple[int, int, int]) -> nn.Sequential:
            return nn.Sequential(
                _ConvNormAct(cin, cmid, kernel, norm, self.modalities),
                _ConvNormAct(cmid, cout, kernel, norm, self.modalities),
            )

        def up(cin: int, cout: int, kernel: tuple[int, int, int]) -> _ConvNormAct:
            return _ConvNormAct(cin, cout, kernel, norm, self.modalities, up=True)

        self.pool = nn.MaxPool3d(2)
        self.encoder1 = stage(in_channels, b, 2 * b, KERNEL_FULL)
        self.encoder2 = stage(2 * b, 2 * b, 4 * b, KERNEL_FULL)
        self.encoder3 = stage(4 * b, 4 * b, 8 * b, KERNEL_INPLANE)
        self.bottom = stage(8 * b, 8 * b, 16 * b, KERNEL_INPLANE)
        self.up3 = up(16 * b, 8 * b, KERNEL_INPLANE)
        self.decoder3 = stage(16 * b, 8 * b, 8 * b, KERNEL_INPLANE)
        self.up2 = up(8 * b, 8 * b, KERNEL_INPLANE)
        self.decoder2 = stage(12 * b, 4 * b, 4 * b, KERNEL_FULL)
        self.up1 = up(4 * b, 4 * b, KERNEL_FULL)
        self.decoder1 = stage(6 * b, 2 * b, 2 * b, KERNEL_FULL)
        self.output = nn.Conv3d(2 * b, out_channels, kernel_size=1)
        set_modality(self, None)  # records qualified layer names for error messages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes segmentation logits.

        Args:
            x: volumes of shape ``(B, in_channels, H, W, D)``, every size divisible by 8.

        Returns:
            Logits of shape ``(B, out_channels, H, W, D)``.

        Raises:
            ValueError: on a wrong input shape, or (from a modality norm) when no valid modality
                is active.
        """
        check_input_shape(x, self.in_channels, 3, 8, type(self).__name__)
        skip1 = self.encoder1(x)
        skip2 = self.encoder2(self.pool(skip1))
        skip3 = self.encoder3(self.pool(skip2))
        y = self.bottom(self.pool(skip3))
        y = self.decoder3(torch.cat([self.up3(y), skip3], dim=1))
        y = self.decoder2(torch.cat([self.up2(y), skip2], dim=1))
        y = self.decoder1(torch.cat([self.up1(y), skip1], dim=1))
        return self.output(y)
