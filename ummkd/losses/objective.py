"""The method's training objective: per-modality segmentation losses plus weighted KD."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

Predict = Callable[[Tensor, str], Tensor]
"""Logits of an image batch computed with the normalization layers of a modality."""


class ObjectiveOutput(NamedTuple):
    """The total loss, its terms (``seg_<modality>``, ``kd``) and the logits per modality."""

    total: Tensor
    terms: dict[str, Tensor]
    logits: dict[str, Tensor]


class UnpairedObjective(nn.Module):
    """Sum of the per-modality segmentation losses plus ``kd_weight`` times the KD loss.

    The KD term is left out when ``kd_weight`` is 0 or there is a single modality.

    Args:
        seg_loss: Segmentation loss ``(logits, labels) -> scalar``.
        kd_loss: Distillation loss ``({modality: logits}, {modality: labels}) -> scalar``.
        kd_weight: Weight of the distillation loss.
    """

    def __init__(self, seg_loss: nn.Module, kd_loss: nn.Module, kd_weight: float) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        self.kd_loss = kd_loss
        self.kd_weight = kd_weight

    def forward(
        self,
        predict: Predict,
        batch: Mapping[str, Mapping[str, Tensor]],
        modalities: Sequence[str],
    ) -> ObjectiveOutput:
        """Forward every modality's mini-batch in ``modalities`` order and combine the losses.

        Args:
            predict: ``(image, modality) -> logits``, e.g. the network with that modality's norms.
            batch: ``{modality: {"image", "label"}}``.
            modalities: Modalities to use, in a fixed order.

        Raises:
            RuntimeError: if ``batch`` has no samples of one of ``modalities``.
        """
        logits: dict[str, Tensor] = {}
        labels: dict[str, Tensor] = {}
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None
        for m in modalities:
            if batch.get(m) is None:
                raise RuntimeError(f"training batch has no {m!r} samples (keys: {list(batch)})")
            image, label = batch[m]["image"], batch[m]["label"]
            if total is None:
                total = torch.zeros((), device=image.device)
            logits[m] = predict(image, m)
            labels[m] = label
            terms[f"seg_{m}"] = self.seg_loss(logits[m], label)
            total = total + terms[f"seg_{m}"]
        if total is None:
            raise RuntimeError("the objective needs at least one modality")
        if self.kd_weight > 0 and len(modalities) > 1:
            terms["kd"] = self.kd_loss(logits, labels)
            total = total + self.kd_weight * terms["kd"]
        return ObjectiveOutput(total, terms, logits)
