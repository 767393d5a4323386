"""Losses of the method: per-modality segmentation, cross-modality distillation, objective."""

from ummkd.losses.distillation import (
    KD_COUNT_EPS,
    ClassDistributions,
    ModalityDistillationLoss,
    class_log_distributions,
    class_logit_sums,
    class_prediction_distributions,
    symmetric_kl,
)
from ummkd.losses.objective import ObjectiveOutput, Predict, UnpairedObjective
from ummkd.losses.segmentation import (
    SegmentationLoss,
    SegmentationLossComponents,
    class_frequency_weights,
    paper_dice_loss,
    to_class_indices,
    weighted_cross_entropy,
)

__all__ = [
    "KD_COUNT_EPS",
    "ClassDistributions",
    "ModalityDistillationLoss",
    "ObjectiveOutput",
    "Predict",
    "SegmentationLoss",
    "SegmentationLossComponents",
    "UnpairedObjective",
    "class_frequency_weights",
    "class_log_distributions",
    "class_logit_sums",
    "class_prediction_distributions",
    "paper_dice_loss",
    "symmetric_kl",
    "to_class_indices",
    "weighted_cross_entropy",
]
