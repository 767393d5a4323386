"""Tests of the segmentation losses (authors' Dice + weighted CE, MONAI DiceCE)."""

from __future__ import annotations

import math

import pytest
import torch

from ummkd.losses import (
    SegmentationLoss,
    class_frequency_weights,
    paper_dice_loss,
    to_class_indices,
    weighted_cross_entropy,
)


def _random_case(
    seed: int, num_classes: int = 4, shape: tuple[int, ...] = (2, 8, 8)
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(shape[0], num_classes, *shape[1:], generator=g)
    labels = torch.randint(0, num_classes, shape, generator=g)
    return logits, labels


def _onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.stack([(labels == c).double() for c in range(num_classes)], dim=1)


def _naive_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    probs = torch.softmax(logits.double(), dim=1)
    y = _onehot(labels, logits.shape[1])
    total = 0.0
    for c in range(logits.shape[1]):
        inter = (probs[:, c] * y[:, c]).sum()
        total += (2 * inter / ((probs[:, c] ** 2).sum() + y[:, c].sum() + eps)).item()
    return 1 - total / logits.shape[1]


def _naive_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, clip: float) -> float:
    probs = torch.softmax(logits.double(), dim=1)
    y = _onehot(labels, logits.shape[1])
    raw = torch.zeros_like(probs[:, 0])
    for c in range(logits.shape[1]):
        weight = 1 - y[:, c].sum() / y.sum()
        raw -= weight * y[:, c] * torch.clamp(probs[:, c], clip, 1).log()
    return raw.mean().item()


def _confident_logits(labels: torch.Tensor, num_classes: int, margin: float) -> torch.Tensor:
    return margin * _onehot(labels, num_classes).float()


def test_perfect_prediction_gives_near_zero_loss() -> None:
    _, labels = _random_case(0)
    components = SegmentationLoss(num_classes=4).forward_components(
        _confident_logits(labels, 4, 30.0), labels
    )
    assert 0 <= components.dice.item() < 1e-4
    assert 0 <= components.ce.item() < 1e-4


def test_wrong_prediction_gives_high_loss() -> None:
    _, labels = _random_case(0)
    wrong = _confident_logits((labels + 1) % 4, 4, 30.0)
    components = SegmentationLoss().forward_components(wrong, labels)
    assert components.dice.item() > 0.99
    # Every voxel clipped: CE = mean_v w_{y_v} * -log(0.005).
    weights = class_frequency_weights(labels, 4)
    assert components.ce.item() == pytest.approx(
        weights[labels].mean().item() * -math.log(0.005), rel=1e-5
    )


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 5, 6, 3)])
def test_paper_dice_matches_naive_reference(shape: tuple[int, ...]) -> None:
    logits, labels = _random_case(1, shape=shape)
    labels[labels == 2] = 0  # an absent class adds 1/C, no gradient
    value = paper_dice_loss(logits, labels, eps=1e-5)
    assert value.item() == pytest.approx(_naive_dice_loss(logits, labels, 1e-5), rel=1e-5)


def test_class_frequency_weights_match_naive_reference() -> None:
    _, labels = _random_case(3, num_classes=5)
    labels[labels == 4] = 0
    expected = [1 - (labels == c).sum().item() / labels.numel() for c in range(5)]
    weights = class_frequency_weights(labels, 5)
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert weights[4].item() == 1.0


def test_weighted_ce_matches_naive_reference() -> None:
    logits, labels = _random_case(4, shape=(3, 7, 5))
    logits[0, :, :3] *= 5  # make some probabilities fall under the clip
    value = weighted_cross_entropy(logits, labels)
    assert value.item() == pytest.approx(_naive_weighted_ce(logits, labels, 0.005), rel=1e-5)


def test_probability_clipped_at_0005_without_gradient() -> None:
    labels = torch.tensor([[0, 1]])  # two voxels, weights 1 - 1/2 = 0.5 each
    logits = torch.tensor([[[-20.0, 0.0], [20.0, 0.0]]], requires_grad=True)
    # voxel 0: p(class 0) = sigmoid(-40) < 0.005 -> clipped; voxel 1: p(class 1) = 0.5.
    loss = weighted_cross_entropy(logits, labels)
    expected = 0.5 * (-math.log(0.005) - math.log(0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[0, :, 0] == 0)
    assert torch.all(logits.grad[0, :, 1] != 0)


def test_forward_is_sum_of_components_and_accepts_channel_labels() -> None:
    logits, labels = _random_case(5)
    loss_fn = SegmentationLoss(kind="paper", num_classes=4)
    dice, ce = loss_fn.forward_components(logits, labels)
    torch.testing.assert_close(loss_fn(logits, labels), dice + ce)
    torch.testing.assert_close(loss_fn(logits, labels.unsqueeze(1).float()), dice + ce)


def test_dicece_matches_monai() -> None:
    from monai.losses import DiceCELoss

    logits, labels = _random_case(6)
    loss_fn = SegmentationLoss(kind="dicece", num_classes=4)
    value = loss_fn(logits, labels)  # labels without channel dim
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels.unsqueeze(1))
    torch.testing.assert_close(value, expected)
    dice, ce = loss_fn.forward_components(logits, labels.unsqueeze(1))
    torch.testing.assert_close(dice + ce, expected)
    assert 0 < dice.item() < 1 and ce.item() > 0


@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("kind", ["paper", "dicece"])
def test_bf16_autocast_is_finite_and_close_to_fp32(kind: str, scale: float) -> None:
    logits, labels = _random_case(7, shape=(2, 16, 16))
    logits = (logits * scale).bfloat16().requires_grad_(True)
    loss_fn = SegmentationLoss(kind=kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(logits, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
    reference = loss_fn(logits.detach().float(), labels)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


def test_to_class_indices_shapes() -> None:
    logits = torch.zeros(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    assert torch.equal(to_class_indices(labels, logits), labels)
    assert torch.equal(to_class_indices(labels.unsqueeze(1).float(), logits), labels)
    assert to_class_indices(labels.unsqueeze(1).float(), logits).dtype == torch.int64
    with pytest.raises(ValueError, match="one channel"):
        to_class_indices(torch.zeros(2, 3, 4, 5), logits)
    with pytest.raises(ValueError, match="do not match"):
        to_class_indices(torch.zeros(2, 4, 4), logits)


def test_invalid_configuration_raises() -> None:
    with pytest.raises(ValueError, match="kind"):
        SegmentationLoss(kind="focal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ce_clip"):
        SegmentationLoss(ce_clip=0.0)
    with pytest.raises(ValueError, match="dice_eps"):
        SegmentationLoss(dice_eps=0.0)
    with pytest.raises(ValueError, match="channels"):
        SegmentationLoss(num_classes=5)(torch.zeros(1, 4, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="channels"):
        SegmentationLoss()(torch.zeros(1, 1, 3), torch.zeros(1, 3))
