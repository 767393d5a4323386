"""Knowledge-distillation loss: class-wise prediction distributions and their symmetric KL.

Reference: Q. Dou, Q. Liu, P. A. Heng, B. Glocker, "Unpaired Multi-modal Segmentation via Knowledge
Distillation", IEEE TMI 39(7):2415-2425, 2020 (arXiv:2001.03111).

For a modality with logits F (B, C, *spatial) and ground truth y, the class-c prediction
distribution is ``p_c = softmax(z_c / T)`` where ``z_c`` is the mean logit vector over all voxels of
the batch whose ground truth is c. Two modalities are pulled together by the symmetric KL between
their distributions, averaged over classes. Everything is computed in float32 with autocast
disabled, in log space (``log_softmax`` + ``F.kl_div(log_target=True)``), so it stays finite for
any finite logits. See ``docs/method.md`` for the formulas and the deviations from the authors'
code.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ummkd.losses.segmentation import to_class_indices

__all__ = [
    "KD_COUNT_EPS",
    "ClassDistributions",
    "ModalityDistillationLoss",
    "class_log_distributions",
    "class_logit_sums",
    "class_prediction_distributions",
    "symmetric_kl",
]

KD_COUNT_EPS = 1e-6
"""Guard added to the per-class voxel count before dividing, as in the authors' code.

An absent class (count 0) has an all-zero logit sum, so its mean logit is exactly 0 and its
distribution uniform. It is a normal float32 number (in float16 it would be subnormal, one more
reason the statistics are computed in float32)."""


class ClassDistributions(NamedTuple):
    """Class-wise prediction distributions of one modality.

    Attributes:
        probs: (C, C) matrix whose row c is the softened mean prediction for ground-truth class c
            (uniform for an absent class).
        present: (C,) boolean, whether class c occurs in the ground truth.
    """

    probs: Tensor
    present: Tensor


def class_logit_sums(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums of the logit vectors and voxel counts (the additive part of the statistic).

    These are the quantities to all-reduce across processes: summing them over ranks gives the
    statistics of the concatenated batch. They are computed as the float32 product
    ``onehot(labels)^T @ logits`` of two (N x C) matrices (N = all voxels of the batch); why a
    product and what reduced-precision matmuls do to it: ``docs/method.md``, section 4.

    Args:
        logits: Shape (B, C, *spatial), any float dtype (summed in float32).
        labels: Class ids in [0, C), shape (B, *spatial) or (B, 1, *spatial).
        num_classes: Number of classes C; must equal ``logits.shape[1]``.

    Returns:
        ``(sums, counts)``: float32 ``sums[c]`` (C, C) is the sum of the logit vectors of all voxels
        labelled c, ``counts[c]`` (C,) their number. ``sums`` carries gradient to ``logits``.

    Raises:
        ValueError: If the shapes do not match.
    """
    if logits.ndim < 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"expected logits (B, {num_classes}, *spatial), got shape {tuple(logits.shape)}"
        )
    index = to_class_indices(labels, logits).reshape(-1, 1)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        flat = logits.as_subclass(Tensor).float().movedim(1, -1).reshape(-1, num_classes)
        onehot = torch.zeros_like(flat).scatter_(1, index, 1.0)
        return onehot.T @ flat, onehot.sum(0)


def class_log_distributions(
    sums: Tensor, counts: Tensor, temperature: float, eps: float = KD_COUNT_EPS
) -> tuple[Tensor, Tensor]:
    """Turns per-class logit sums and counts into log prediction distributions.

    ``log p_c = log_softmax(sums[c] / (counts[c] + eps) / T)``. Leading batch dimensions (e.g. one
    per modality) are allowed.

    Args:
        sums: (..., C, C) per-class logit sums from :func:`class_logit_sums` (possibly all-reduced).
        counts: (..., C) per-class voxel counts.
        temperature: Softmax temperature T > 0.
        eps: Guard added to the counts.

    Returns:
        ``(log_probs, present)``: float32 (..., C, C) log-distributions (rows of absent classes are
        uniform) and the (..., C) boolean mask of classes with a positive count.
    """
    with torch.autocast(device_type=sums.device.type, enabled=False):
        means = sums.float() / (counts.float() + eps).unsqueeze(-1)
        return F.log_softmax(means / temperature, dim=-1), counts > 0


def class_prediction_distributions(
    logits: Tensor, labels: Tensor, num_classes: int, temperature: float
) -> ClassDistributions:
    """Class-wise prediction distributions of one batch (no cross-process reduction).

    Args:
        logits: Shape (B, C, *spatial), any float dtype.
        labels: Class ids in [0, C), shape (B, *spatial) or (B, 1, *spatial).
        num_classes: Number of classes C.
        temperature: Softmax temperature T > 0.

    Returns:
        ``(probs, present)``: ``probs[c]`` is ``softmax(z_c / T)`` with ``z_c`` the mean logit
        vector of the voxels labelled c, a float32 (C, C) matrix; ``present[c]`` says whether
        class c occurs in ``labels``.
    """
    sums, counts = class_logit_sums(logits, labels, num_classes)
    log_probs, present = class_log_distributions(sums, counts, temperature)
    return ClassDistributions(log_probs.exp(), present)


def symmetric_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Row-wise symmetric KL divergence ``1/2 [KL(p || q) + KL(q || p)]``.

    Args:
        log_p: (..., C) log-probabilities.
        log_q: (..., C) log-probabilities.

    Returns:
        (...,) divergences, finite for any finite inputs.
    """
    kl_pq = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    kl_qp = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    return 0.5 * (kl_pq + kl_qp)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the default process group, with the gradient also summed over the group.

    Same semantics as ``torch.distributed.nn.functional.all_reduce`` (which torch 2.13 deprecates
    with a ``FutureWarning`` on every call).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        del ctx
        reduced = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced)
        return reduced

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> Tensor:
        del ctx
        reduced = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced)
        return reduced


def _distributed_world() -> bool:
    """Whether a default process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ModalityDistillationLoss(nn.Module):
    """Symmetric-KL agreement of class-wise prediction distributions across modalities.

    For each unordered pair of modalities (a, b) the loss averages ``symmetric_kl(p_c^a, p_c^b)``
    over classes c; the result is the mean over pairs (for two modalities, the single pair's value).
    There is no stop-gradient (both modalities learn from each other) and no ``T^2`` factor.

    Args:
        temperature: Softmax temperature T (the paper uses 2).
        absent_classes: ``"mask"`` averages, per pair, only over classes present in both
            modalities' ground truth (a pair with none contributes 0, still attached to the graph).
            ``"uniform"`` reproduces the authors' code: an absent class gets a uniform distribution
            and all C classes are averaged.
        sync: If ``True`` or ``"auto"`` and a ``torch.distributed`` process group with more than
            one process is initialized, the per-class logit sums and counts are all-reduced (with
            gradient) before the distributions are formed, so they are statistics of the global
            batch; ``False`` keeps them per process. Every process must then call the loss (and
            backpropagate through it) the same number of times. The loss value is the same on all
            processes and its gradient with respect to a process's logits is ``world_size`` times
            the gradient of the single-process loss on the concatenated batches, so after DDP's
            gradient averaging the parameters receive exactly the single-process gradient.

    Attributes:
        distributions: After each call, the detached :class:`ClassDistributions` per modality
            (global under sync), for logging as heatmaps.

    Raises:
        ValueError: On a non-positive temperature or an unknown option.
    """

    def __init__(
        self,
        temperature: float = 2.0,
        absent_classes: Literal["mask", "uniform"] = "mask",
        sync: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if absent_classes not in ("mask", "uniform"):
            raise ValueError(f"absent_classes must be 'mask' or 'uniform', got {absent_classes!r}")
        if sync not in (True, False, "auto"):
            raise ValueError(f"sync must be True, False or 'auto', got {sync!r}")
        self.temperature = temperature
        self.absent_classes = absent_classes
        self.sync = sync
        self.distributions: dict[str, ClassDistributions] = {}

    def extra_repr(self) -> str:
        """Shows the options in the module's repr."""
        return (
            f"temperature={self.temperature}, absent_classes={self.absent_classes!r},"
            f" sync={self.sync!r}"
        )

    def forward(self, logits: Mapping[str, Tensor], labels: Mapping[str, Tensor]) -> Tensor:
        """Computes the distillation loss.

        Args:
            logits: Modality name -> logits (B_m, C, *spatial_m); batch and spatial sizes may differ
                between modalities, C may not.
            labels: Modality name -> class ids (B_m, *spatial_m) or (B_m, 1, *spatial_m); must
                contain every key of ``logits``.

        Returns:
            Scalar float32 loss, attached to the graph of every modality's logits (0 with fewer
            than two modalities).

        Raises:
            ValueError: If ``logits`` is empty, a modality lacks labels, or C differs.
        """
        if not logits:
            raise ValueError("logits is empty: need at least one modality")
        names = sorted(logits)
        missing = [name for name in names if name not in labels]
        if missing:
            raise ValueError(f"no labels for modalities {missing}")
        shapes = {name: tuple(logits[name].shape) for name in names}
        if len({shape[1] if len(shape) >= 2 else None for shape in shapes.values()} - {None}) != 1:
            raise ValueError(f"need logits (B, C, *spatial) with the same C, got {shapes}")
        num_classes = shapes[names[0]][1]

        stats = [class_logit_sums(logits[name], labels[name], num_classes) for name in names]
        sums = torch.stack([modality_sums for modality_sums, _ in stats])
        counts = torch.stack([modality_counts for _, modality_counts in stats])
        with torch.autocast(device_type=sums.device.type, enabled=False):
            if self.sync is not False and _distributed_world():
                packed = _AllReduceSum.apply(torch.cat([sums, counts.unsqueeze(-1)], dim=-1))
                sums, counts = packed[..., :num_classes], packed[..., num_classes]
            log_probs, present = class_log_distributions(sums, counts, self.temperature)
            self.distributions = {
                name: ClassDistributions(log_probs[i].detach().exp(), present[i])
                for i, name in enumerate(names)
            }
            pair_losses = [
                self._pair_loss(log_probs[a], present[a], log_probs[b], present[b])
                for a, b in itertools.combinations(range(len(names)), 2)
            ]
            if not pair_losses:
                return log_probs.sum() * 0.0
            return torch.stack(pair_losses).mean()

    def _pair_loss(
        self, log_probs_a: Tensor, present_a: Tensor, log_probs_b: Tensor, present_b: Tensor
    ) -> Tensor:
        """Class-averaged symmetric KL between two modalities' (C, C) log-distributions."""
        per_class = symmetric_kl(log_probs_a, log_probs_b)
        if self.absent_classes == "uniform":
            return per_class.mean()
        common = present_a & present_b
        return torch.where(common, per_class, 0.0).sum() / common.sum().clamp_min(1)
