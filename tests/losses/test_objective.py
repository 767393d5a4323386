"""Tests of the method's objective (segmentation losses + weighted KD), without Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

from ummkd.losses import ModalityDistillationLoss, SegmentationLoss, UnpairedObjective

NUM_CLASSES = 3


def _batch(modalities: tuple[str, ...] = ("ct", "mr"), n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        m: {
            "image": torch.randn(n, 1, 8, 8, generator=g),
            "label": torch.randint(0, NUM_CLASSES, (n, 1, 8, 8), generator=g),
        }
        for m in modalities
    }


class _PerModality(nn.Module):
    """A 1x1 convolution with a different bias per modality; records the call order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, NUM_CLASSES, 1)
        self.calls: list[str] = []

    def forward(self, x: Tensor, modality: str) -> Tensor:
        self.calls.append(modality)
        return self.conv(x) + (1.0 if modality == "mr" else 0.0)


def _objective(kd_weight: float = 0.5) -> UnpairedObjective:
    seg = SegmentationLoss(kind="paper", num_classes=NUM_CLASSES)
    kd = ModalityDistillationLoss(temperature=2.0, sync=False)
    return UnpairedObjective(seg, kd, kd_weight=kd_weight)


def test_total_is_the_segmentation_losses_plus_weighted_kd() -> None:
    torch.manual_seed(0)
    net, batch, objective = _PerModality(), _batch(), _objective(0.5)
    total, terms, logits = objective(net, batch, ["mr", "ct"])
    assert net.calls == ["mr", "ct"]
    assert list(terms) == ["seg_mr", "seg_ct", "kd"]
    assert list(logits) == ["mr", "ct"]
    for m in ("ct", "mr"):
        expected = objective.seg_loss(net(batch[m]["image"], m), batch[m]["label"])
        torch.testing.assert_close(terms[f"seg_{m}"], expected)
    labels = {m: batch[m]["label"] for m in logits}
    torch.testing.assert_close(terms["kd"], objective.kd_loss(logits, labels))
    assert float(terms["kd"]) > 0
    torch.testing.assert_close(total, terms["seg_mr"] + terms["seg_ct"] + 0.5 * terms["kd"])
    total.backward()
    assert net.conv.weight.grad is not None


@pytest.mark.parametrize(
    ("kd_weight", "modalities"), [(0.0, ("ct", "mr")), (0.5, ("ct",))], ids=["no-kd", "single"]
)
def test_no_kd_term_without_weight_or_second_modality(
    kd_weight: float, modalities: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    objective = _objective(kd_weight)

    def fail(*args: object) -> Tensor:
        raise AssertionError("the KD loss must not be computed")

    monkeypatch.setattr(objective.kd_loss, "forward", fail)
    total, terms, _ = objective(_PerModality(), _batch(), modalities)
    assert list(terms) == [f"seg_{m}" for m in modalities]
    torch.testing.assert_close(total, sum(terms.values()))


def test_a_batch_without_a_modality_is_refused() -> None:
    with pytest.raises(RuntimeError, match="no 'mr' samples"):
        _objective()(_PerModality(), _batch(("ct",)), ["ct", "mr"])


def test_the_objective_does_not_import_lightning() -> None:
    code = (
        "import sys, ummkd.losses.objective; "
        "sys.exit(any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
