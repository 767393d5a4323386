"""Multi-stream baselines of the paper: "Y-shape" and "X-shape" networks.

Both are built from the same layer groups and widths as
:class:`~ummkd.nn.dilated_resnet2d.DilatedResNet2d` (see its layer table), split into
modality-specific and shared parts:

* **Y-shape** (:class:`YShapeNet`): modality-specific *encoders* = groups 1-3 (the down-sampling
  path, full to 1/8 resolution), shared rest = groups 4-10 and the output layer.
* **X-shape** (:class:`XShapeNet`, Valindria et al., WACV 2018): modality-specific encoders =
  groups 1-3, shared middle = groups 4-9 (all layers at 1/8 resolution), modality-specific
  *decoders* = group 10 (the pixel-shuffle up-sampling) and the output layer.

Modality-specific parts are :class:`~ummkd.nn.modality_norm.ModalitySwitch` layers holding one
stream per modality, selected by the same :func:`~ummkd.nn.modality_norm.use_modality` call as the
modality-specific norms, so the training loop is identical for all variants. Norms inside a
stream are ordinary (each stream only ever sees its own modality); norms in the shared part are
shared by default, as in the original baselines, or modality-specific with
``modality_norm_in_shared=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ummkd.nn.dilated_resnet2d import (
    GROUP_NAMES,
    OUTPUT_STRIDE,
    check_input_shape,
    dilated_resnet2d_groups,
)
from ummkd.nn.modality_norm import ModalitySwitch, check_modalities, set_modality

__all__ = ["MultiStreamNet", "XShapeNet", "YShapeNet"]


class MultiStreamNet(nn.Module):
    """Dilated residual network with modality-specific first and last layer groups.

    The 11 groups of the 2D network (``group1`` ... ``group10``, ``output``) are split into
    ``encoder_groups`` modality-specific groups, a shared middle and ``decoder_groups``
    modality-specific groups.

    Attributes:
        encoder: :class:`ModalitySwitch` with one encoder stream per modality.
        shared: the shared groups (``nn.Sequential``).
        decoder: :class:`ModalitySwitch` with one decoder stream per modality, or ``nn.Identity``
            when ``decoder_groups == 0``.

    Args:
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        modalities: modality names (one stream each).
        base_channels: width of group 1.
        dropout: dropout probability.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        encoder_groups: number of leading modality-specific groups (at least 1).
        decoder_groups: number of trailing modality-specific groups.
        modality_norm_in_shared: use modality-specific norms in the shared groups.
        head_channels: channels after the x8 pixel shuffle (``None``: ``8 * out_channels``).

    Raises:
        ValueError: if the split leaves no shared group or ``encoder_groups < 1``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 5,
        modalities: Sequence[str] = ("ct", "mr"),
        base_channels: int = 16,
        dropout: float = 0.25,
        norm: Literal["batch", "instance", "group"] = "batch",
        encoder_groups: int = 3,
        decoder_groups: int = 0,
        modality_norm_in_shared: bool = False,
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        if encoder_groups < 1 or decoder_groups < 0:
            raise ValueError("need encoder_groups >= 1 and decoder_groups >= 0")
        if encoder_groups + decoder_groups >= len(GROUP_NAMES):
            raise ValueError(
                f"encoder_groups + decoder_groups must be < {len(GROUP_NAMES)} "
                "to leave at least one shared group"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modalities = check_modalities(modalities)
        split = len(GROUP_NAMES) - decoder_groups
        head = GROUP_NAMES[:encoder_groups]
        middle = GROUP_NAMES[encoder_groups:split]
        tail = GROUP_NAMES[split:]

        def build(names: Sequence[str], norm_modalities: Sequence[str] | None) -> nn.Sequential:
            groups = dilated_resnet2d_groups(
                in_channels,
                out_channels,
                base_channels,
                dropout,
                norm,
                norm_modalities,
                names,
                head_channels=head_channels,
            )
            return nn.Sequential(OrderedDict(groups))

        self.encoder = ModalitySwitch({m: build(head, None) for m in self.modalities})
        self.shared = build(middle, self.modalities if modality_norm_in_shared else None)
        self.decoder: nn.Module = (
            ModalitySwitch({m: build(tail, None) for m in self.modalities})
            if tail
            else nn.Identity()
        )
        set_modality(self, None)  # records qualified layer names for error messages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes segmentation logits through the active modality's streams.

        Args:
            x: images of shape ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by 8.

        Returns:
            Logits of shape ``(B, out_channels, H, W)``.

        Raises:
            ValueError: on a wrong input shape or when no valid modality is active.
        """
        check_input_shape(x, self.in_channels, 2, OUTPUT_STRIDE, type(self).__name__)
        return self.decoder(self.shared(self.encoder(x)))


class YShapeNet(MultiStreamNet):
    """Y-shape baseline: modality-specific encoders (groups 1-3), everything after shared.

    Args:
        in_channels: input channels.
        out_channels: number of classes.
        modalities: modality names (one encoder each).
        base_channels: width of group 1.
        dropout: dropout probability.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        encoder_groups: number of modality-specific leading groups.
        modality_norm_in_shared: use modality-specific norms in the shared groups.
        head_channels: channels after the x8 pixel shuffle (``None``: ``8 * out_channels``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 5,
        modalities: Sequence[str] = ("ct", "mr"),
        base_channels: int = 16,
        dropout: float = 0.25,
        norm: Literal["batch", "instance", "group"] = "batch",
        encoder_groups: int = 3,
        modality_norm_in_shared: bool = False,
        head_channels: int | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            modalities,
            base_channels,
            dropout,
            norm,
            encoder_groups=encoder_groups,
            decoder_groups=0,
            modality_norm_in_shared=modality_norm_in_shared,
            head_channels=head_channels,
        )


class XShapeNet(MultiStreamNet):
    """X-shape baseline: modality-specific encoders (groups 1-3) and decoders (group 10, output).

    Args:
        in_channels: input channels.
        out_channels: number of classes.
        modalities: modality names (one encoder and one decoder each).
        base_channels: width of group 1.
        dropout: dropout probability.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        encoder_groups: number of modality-specific leading groups.
        decoder_groups: number of modality-specific trailing groups.
        modality_norm_in_shared: use modality-specific norms in the shared groups.
        head_channels: channels after the x8 pixel shuffle (``None``: ``8 * out_channels``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 5,
        modalities: Sequence[str] = ("ct", "mr"),
        base_channels: int = 16,
        dropout: float = 0.25,
        norm: Literal["batch", "instance", "group"] = "batch",
        encoder_groups: int = 3,
        decoder_groups: int = 2,
        modality_norm_in_shared: bool = False,
        head_channels: int | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            modalities,
            base_channels,
            dropout,
            norm,
            encoder_groups=encoder_groups,
            decoder_groups=decoder_groups,
            modality_norm_in_shared=modality_norm_in_shared,
            head_channels=head_channels,
        )
