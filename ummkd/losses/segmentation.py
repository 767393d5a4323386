"""Segmentation losses: the authors' soft Dice + class-weighted cross-entropy, or MONAI's DiceCE.

Reference: Q. Dou, Q. Liu, P. A. Heng, B. Glocker, "Unpaired Multi-modal Segmentation via Knowledge
Distillation", IEEE TMI 39(7):2415-2425, 2020 (arXiv:2001.03111). See ``docs/method.md`` for the
formulas as implemented and where they differ from the released TensorFlow code.

All losses here are computed in float32 with autocast disabled, whatever the dtype of the logits,
from elementwise operations and plain reductions only (no atomics, no host synchronisation), so
they are deterministic on GPUs and cheap under ``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from monai.losses import DiceCELoss

__all__ = [
    "SegmentationLoss",
    "SegmentationLossComponents",
    "class_frequency_weights",
    "paper_dice_loss",
    "to_class_indices",
    "weighted_cross_entropy",
]

DEFAULT_DICE_EPS = 1e-5
"""Denominator guard of the paper Dice (the authors' code uses 1e-7; see ``paper_dice_loss``)."""

DEFAULT_CE_CLIP = 0.005
"""Lower clip of the predicted probability in the weighted cross-entropy (the authors' value)."""


class SegmentationLossComponents(NamedTuple):
    """The two terms of a segmentation loss, for logging; their sum is the loss.

    Attributes:
        dice: Dice term (scalar, 0 for a perfect prediction).
        ce: Cross-entropy term (scalar).
    """

    dice: Tensor
    ce: Tensor


def to_class_indices(labels: Tensor, logits: Tensor) -> Tensor:
    """Validates label maps against logits and returns them as int64 class indices.

    Args:
        labels: Class ids, shape (B, *spatial) or (B, 1, *spatial), any integer, boolean or
            floating dtype holding integral values (MONAI loaders yield float labels). A
            ``MetaTensor`` is unwrapped to a plain tensor.
        logits: Network output, shape (B, C, *spatial); only its shape is used.

    Returns:
        Tensor of shape (B, *spatial), dtype int64. The values are not range-checked here (that
        would force a host-device synchronisation); out-of-range ids make the one-hot scatter of
        the callers fail.

    Raises:
        ValueError: If the shapes do not match.
    """
    labels = labels.as_subclass(Tensor)
    if labels.ndim == logits.ndim:
        if labels.shape[1] != 1:
            raise ValueError(
                f"labels with a channel dim must have exactly one channel (class ids, not one-hot),"
                f" got labels {tuple(labels.shape)} for logits {tuple(logits.shape)}"
            )
        labels = labels.squeeze(1)
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}:"
            f" expected {expected} or {(expected[0], 1, *expected[1:])}"
        )
    if labels.is_floating_point():
        labels = labels.round()
    return labels.long()


def _float32_logits(logits: Tensor) -> Tensor:
    """Returns ``logits`` as a plain float32 tensor (still attached to the autograd graph)."""
    return logits.as_subclass(Tensor).float()


def _one_hot(indices: Tensor, num_classes: int) -> Tensor:
    """(B, *spatial) int64 class ids -> (B, C, *spatial) float32 one-hot.

    Built by scattering a scalar (each voxel writes one element), so it is deterministic and needs
    no host synchronisation; out-of-range ids fail in the scatter.
    """
    shape = (indices.shape[0], num_classes, *indices.shape[1:])
    onehot = torch.zeros(shape, dtype=torch.float32, device=indices.device)
    return onehot.scatter_(1, indices.unsqueeze(1), 1.0)


def _reduce_dims(tensor: Tensor) -> list[int]:
    """All dimensions of a (B, C, *spatial) tensor but the class dimension."""
    return [0, *range(2, tensor.ndim)]


def _frequency_weights(onehot: Tensor) -> Tensor:
    """``1 - sum(y_c) / sum(y)`` from a (B, C, *spatial) one-hot tensor."""
    return 1.0 - onehot.sum(_reduce_dims(onehot)) / (onehot.numel() // onehot.shape[1])


def class_frequency_weights(labels: Tensor, num_classes: int) -> Tensor:
    """The authors' per-batch class weights ``w_c = 1 - sum(y_c) / sum(y)``.

    Args:
        labels: Class ids, shape (B, *spatial) (int64 as returned by :func:`to_class_indices`).
        num_classes: Number of classes C.

    Returns:
        Float32 tensor of shape (C,): one minus the fraction of the batch's voxels in each class.
    """
    return _frequency_weights(_one_hot(labels, num_classes))


def paper_dice_loss(logits: Tensor, labels: Tensor, eps: float = DEFAULT_DICE_EPS) -> Tensor:
    """Soft Dice loss of the authors' code, over all classes including background.

    ``1 - (1/C) sum_c 2 sum(p_c y_c) / (sum(p_c^2) + sum(y_c) + eps)`` with ``p = softmax(logits)``
    and the sums running over the whole batch and all voxels (one Dice per class, not per sample).

    A class absent from the batch has a zero numerator whatever the prediction, so it adds a
    constant 1/C to the loss and no gradient. The authors' code returns ``-dice`` instead of
    ``1 - dice`` (same gradient) and uses ``eps = 1e-7``; the default here, 1e-5, is still
    negligible next to any non-empty class (``sum(y_c) >= 1``) and only guards the 0/0 of an
    absent class.

    Args:
        logits: Shape (B, C, *spatial), any float dtype.
        labels: Class ids, shape (B, *spatial) or (B, 1, *spatial).
        eps: Denominator guard.

    Returns:
        Scalar float32 tensor in [0, 1].
    """
    indices = to_class_indices(labels, logits)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = torch.softmax(_float32_logits(logits), dim=1)
        onehot = _one_hot(indices, logits.shape[1])
        dims = _reduce_dims(probs)
        intersection = (probs * onehot).sum(dims)
        denominator = (probs * probs).sum(dims) + onehot.sum(dims) + eps
        return 1.0 - (2.0 * intersection / denominator).mean()


def weighted_cross_entropy(logits: Tensor, labels: Tensor, clip: float = DEFAULT_CE_CLIP) -> Tensor:
    """Class-frequency-weighted cross-entropy of the authors' code.

    ``mean over voxels of sum_c -w_c y_c log(clip(p_c, clip, 1))`` with ``w`` from
    :func:`class_frequency_weights` and ``p = softmax(logits)``. The log-probability is computed
    with ``log_softmax`` and clamped at ``log(clip)``, which equals the log of the clipped
    probability; as in the authors' code no gradient flows through a clipped voxel.

    Args:
        logits: Shape (B, C, *spatial), any float dtype.
        labels: Class ids, shape (B, *spatial) or (B, 1, *spatial).
        clip: Lower bound of the probability inside the log, in (0, 1].

    Returns:
        Scalar float32 tensor.
    """
    indices = to_class_indices(labels, logits)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_probs = F.log_softmax(_float32_logits(logits), dim=1)
        onehot = _one_hot(indices, logits.shape[1])
        weights = _frequency_weights(onehot).view(1, -1, *([1] * (onehot.ndim - 2)))
        clipped = log_probs.clamp(min=math.log(clip))
        return -(weights * onehot * clipped).sum(1).mean()


class SegmentationLoss(nn.Module):
    """Per-modality segmentation loss: the authors' Dice + weighted CE, or MONAI's DiceCE.

    ``kind="paper"``: :func:`paper_dice_loss` + :func:`weighted_cross_entropy` (weights 1:1, as in
    the authors' 2D code). ``kind="dicece"``: ``monai.losses.DiceCELoss(to_onehot_y=True,
    softmax=True)`` with MONAI's other defaults (per-sample Dice, smoothing 1e-5, unweighted CE).
    Either way the loss is computed in float32 with autocast disabled.

    Args:
        kind: ``"paper"`` or ``"dicece"``.
        num_classes: If given, the number of channels the logits must have.
        dice_eps: Denominator guard of the paper Dice (``kind="paper"`` only).
        ce_clip: Probability clip of the weighted cross-entropy (``kind="paper"`` only).

    Raises:
        ValueError: On an unknown ``kind`` or out-of-range parameters.
    """

    def __init__(
        self,
        kind: Literal["paper", "dicece"] = "paper",
        num_classes: int | None = None,
        dice_eps: float = DEFAULT_DICE_EPS,
        ce_clip: float = DEFAULT_CE_CLIP,
    ) -> None:
        super().__init__()
        if kind not in ("paper", "dicece"):
            raise ValueError(f"kind must be 'paper' or 'dicece', got {kind!r}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if dice_eps <= 0:
            raise ValueError(f"dice_eps must be positive, got {dice_eps}")
        if not 0 < ce_clip <= 1:
            raise ValueError(f"ce_clip must be in (0, 1], got {ce_clip}")
        self.kind = kind
        self.num_classes = num_classes
        self.dice_eps = dice_eps
        self.ce_clip = ce_clip
        self.dicece: DiceCELoss | None = None
        if kind == "dicece":
            # Imported here so that the paper loss (and the KD loss) do not pay MONAI's import time.
            from monai.losses import DiceCELoss

            self.dicece = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward_components(self, logits: Tensor, labels: Tensor) -> SegmentationLossComponents:
        """Computes the Dice and cross-entropy terms separately.

        Args:
            logits: Shape (B, C, *spatial), any float dtype.
            labels: Class ids, shape (B, *spatial) or (B, 1, *spatial).

        Returns:
            The two float32 scalar terms; the loss is their sum.

        Raises:
            ValueError: If the logits have fewer than 2 channels, not ``num_classes`` channels, or
                a shape that does not match the labels.
        """
        channels = logits.shape[1] if logits.ndim >= 2 else 0
        if channels < 2 or (self.num_classes is not None and channels != self.num_classes):
            expected = self.num_classes or "at least 2"
            raise ValueError(
                f"expected logits (B, C, *spatial) with {expected} channels,"
                f" got shape {tuple(logits.shape)}"
            )
        if self.dicece is None:
            return SegmentationLossComponents(
                dice=paper_dice_loss(logits, labels, eps=self.dice_eps),
                ce=weighted_cross_entropy(logits, labels, clip=self.ce_clip),
            )
        target = to_class_indices(labels, logits).unsqueeze(1)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits32 = _float32_logits(logits)
            return SegmentationLossComponents(
                dice=self.dicece.dice(logits32, target), ce=self.dicece.ce(logits32, target)
            )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Computes the segmentation loss.

        Args:
            logits: Shape (B, C, *spatial), any float dtype.
            labels: Class ids, shape (B, *spatial) or (B, 1, *spatial).

        Returns:
            Scalar float32 loss (Dice term + cross-entropy term).
        """
        dice, ce = self.forward_components(logits, labels)
        return dice + ce
