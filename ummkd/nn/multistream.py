"""Multi-stream baselines of the paper: "Y-shape" and "X-shape" networks.

Two families: :class:`YShapeNet` / :class:`XShapeNet` on the paper's dilated residual network,
and :class:`MultiStreamUNet`, the same split applied to MONAI's U-Net (used by the CPU-scale
experiments, whose shared-kernel variants use that U-Net too).

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

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from monai.networks.nets import UNet
from torch import nn

from ummkd.nn.dilated_resnet2d import (
    GROUP_NAMES,
    OUTPUT_STRIDE,
    check_input_shape,
    dilated_resnet2d_groups,
)
from ummkd.nn.modality_norm import ModalitySwitch, check_modalities, set_modality

__all__ = ["MultiStreamNet", "MultiStreamUNet", "XShapeNet", "YShapeNet"]


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


class MultiStreamUNet(UNet):
    """MONAI :class:`~monai.networks.nets.UNet` with modality-specific outer levels.

    MONAI builds the U-Net as nested levels ``Sequential(down, SkipConnection(next level), up)``.
    This network gives each modality its own copy of the *down* layers of the top
    ``encoder_levels`` levels and of the *up* layers of the top ``decoder_levels`` levels; the
    rest (deeper levels and the bottom) is shared. ``decoder_levels=0`` is a Y-shape network
    (modality-specific encoders, shared decoder), ``decoder_levels > 0`` an X-shape network
    (Valindria et al., WACV 2018). All layers keep the U-Net's widths, so weight counts compare
    directly with the shared U-Net. The streams are selected by
    :func:`~ummkd.nn.modality_norm.use_modality`, like modality norms.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes.
        channels: channels per level, top first (as in MONAI's U-Net).
        strides: strides per down layer (``len(channels) - 1`` values).
        modalities: modality names (one stream each).
        encoder_levels: number of top levels whose down layer is modality-specific (>= 1).
        decoder_levels: number of top levels whose up layer is modality-specific (>= 0).
        **kwargs: further :class:`~monai.networks.nets.UNet` arguments (``num_res_units``,
            ``norm``, ``dropout``, ...).

    Raises:
        ValueError: on invalid level counts or modality names.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        modalities: Sequence[str] = ("ct", "mr"),
        encoder_levels: int = 1,
        decoder_levels: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, channels, strides, **kwargs)
        levels = len(self.strides)
        if not 1 <= encoder_levels <= levels or not 0 <= decoder_levels <= levels:
            raise ValueError(
                f"need 1 <= encoder_levels <= {levels} and 0 <= decoder_levels <= {levels} "
                f"(the U-Net has {levels} levels above its bottom), got {encoder_levels} and "
                f"{decoder_levels}"
            )
        self.modalities = check_modalities(modalities)
        self.encoder_levels = encoder_levels
        self.decoder_levels = decoder_levels
        level: nn.Module = self.model
        for depth in range(max(encoder_levels, decoder_levels)):
            if depth < encoder_levels:
                level[0] = self._streams(level[0])
            if depth < decoder_levels:
                level[2] = self._streams(level[2])
            level = level[1].submodule
        set_modality(self, None)  # records qualified layer names for error messages

    def _streams(self, layer: nn.Module) -> ModalitySwitch:
        """One independent copy of ``layer`` per modality (the first keeps the original)."""
        return ModalitySwitch(
            {m: layer if i == 0 else copy.deepcopy(layer) for i, m in enumerate(self.modalities)}
        )
