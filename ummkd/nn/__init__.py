"""Networks and modality-specific normalization (pure PyTorch/MONAI, no Lightning).

Importing this package registers ``"modality"`` in MONAI's ``Norm`` factory.
"""

from __future__ import annotations

from torch import nn

from ummkd.nn.dilated_resnet2d import DilatedResNet2d, dilated_resnet2d_groups
from ummkd.nn.modality_norm import (
    ModalityNorm,
    ModalitySwitch,
    NormSpec,
    check_modalities,
    convert_to_modality_norm,
    expand_state_dict_to_modalities,
    make_norm,
    modality_names,
    modality_norm_layers,
    norm_spec,
    register_monai_norm,
    set_modality,
    use_modality,
)
from ummkd.nn.multistream import MultiStreamNet, MultiStreamUNet, XShapeNet, YShapeNet
from ummkd.nn.unet3d import UNet3d

__all__ = [
    "DilatedResNet2d",
    "ModalityNorm",
    "ModalitySwitch",
    "MultiStreamNet",
    "MultiStreamUNet",
    "NormSpec",
    "UNet3d",
    "XShapeNet",
    "YShapeNet",
    "check_modalities",
    "convert_to_modality_norm",
    "count_parameters",
    "dilated_resnet2d_groups",
    "expand_state_dict_to_modalities",
    "make_norm",
    "modality_names",
    "modality_norm_layers",
    "norm_spec",
    "register_monai_norm",
    "set_modality",
    "use_modality",
]

_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    ModalityNorm,
)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> dict[str, int]:
    """Counts the parameters of a network, split into norm and other (convolution) parameters.

    Parameters shared between several places are counted once.

    Args:
        module: any network.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        ``{"total": ..., "norm": ..., "other": ...}``; ``"norm"`` covers every parameter inside a
        norm layer (all modalities of a :class:`ModalityNorm` together), ``"other"`` the rest
        (for the paper's networks: the shared convolution weights and biases, plus the
        modality-specific streams of the multi-stream baselines).
    """
    norm_params = {
        id(p) for sub in module.modules() if isinstance(sub, _NORM_TYPES) for p in sub.parameters()
    }
    counts = {"total": 0, "norm": 0, "other": 0}
    for p in module.parameters():
        if trainable_only and not p.requires_grad:
            continue
        counts["total"] += p.numel()
        counts["norm" if id(p) in norm_params else "other"] += p.numel()
    return counts


register_monai_norm()
