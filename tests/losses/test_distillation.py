"""Tests of the knowledge-distillation loss (class-wise prediction distributions + symmetric KL)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ummkd.losses import (
    ClassDistributions,
    ModalityDistillationLoss,
    class_log_distributions,
    class_logit_sums,
    class_prediction_distributions,
    symmetric_kl,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bernoulli_sym_kl(p: float, q: float) -> float:
    """1/2 [KL(p||q) + KL(q||p)] for two-class distributions (p, 1-p) and (q, 1-q)."""

    def kl(a: float, b: float) -> float:
        return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))

    return 0.5 * (kl(p, q) + kl(q, p))


def _voxels(values: list[tuple[float, float]]) -> torch.Tensor:
    """Logits (1, 2, N) from a list of per-voxel 2-class logit vectors."""
    return torch.tensor(values, dtype=torch.float32).T.unsqueeze(0)


# Hand-computed example, T = 2.
# For two classes softmax((a, b)) = (sigmoid(a - b), sigmoid(b - a)); we track the first entry.
# CT: voxels labelled [0, 0, 1] with logits (4, 0), (2, 0), (0, 2):
#   z_0 = (3, 0) -> /T (1.5, 0) -> sigmoid(1.5);   z_1 = (0, 2) -> /T (0, 1) -> sigmoid(-1)
# MR: voxels labelled [0, 1] with logits (1, 0), (0, 4):
#   z_0 = (1, 0) -> /T (0.5, 0) -> sigmoid(0.5);   z_1 = (0, 4) -> /T (0, 2) -> sigmoid(-2)
CT_LOGITS = _voxels([(4.0, 0.0), (2.0, 0.0), (0.0, 2.0)])
CT_LABELS = torch.tensor([[0, 0, 1]])
MR_LOGITS = _voxels([(1.0, 0.0), (0.0, 4.0)])
MR_LABELS = torch.tensor([[0, 1]])


def test_hand_computed_two_class_example() -> None:
    expected = 0.5 * (
        _bernoulli_sym_kl(_sigmoid(1.5), _sigmoid(0.5))
        + _bernoulli_sym_kl(_sigmoid(-1.0), _sigmoid(-2.0))
    )
    assert expected > 0.05
    loss_fn = ModalityDistillationLoss(temperature=2.0)
    for mode in ("mask", "uniform"):  # both classes present in both: the modes agree
        loss_fn.absent_classes = mode
        loss = loss_fn({"ct": CT_LOGITS, "mr": MR_LOGITS}, {"ct": CT_LABELS, "mr": MR_LABELS})
        assert loss.dtype == torch.float32 and loss.ndim == 0
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hand_computed_distributions() -> None:
    probs, present = class_prediction_distributions(CT_LOGITS, CT_LABELS, 2, temperature=2.0)
    expected = torch.tensor(
        [[_sigmoid(1.5), 1 - _sigmoid(1.5)], [_sigmoid(-1.0), 1 - _sigmoid(-1.0)]]
    )
    torch.testing.assert_close(probs, expected)
    assert present.tolist() == [True, True]
    sums, counts = class_logit_sums(CT_LOGITS, CT_LABELS, 2)
    torch.testing.assert_close(sums, torch.tensor([[6.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(counts, torch.tensor([2.0, 1.0]))


def test_class_absent_in_one_modality_is_masked() -> None:
    # CT has no class 1; MR has both (class-1 MR distribution: sigmoid(-2)).
    ct_labels = torch.tensor([[0, 0, 0]])
    ct_class0 = _sigmoid((4.0 + 2.0 + 0.0) / 3 / 2 - (0.0 + 0.0 + 2.0) / 3 / 2)
    term0 = _bernoulli_sym_kl(ct_class0, _sigmoid(0.5))
    term1_uniform = _bernoulli_sym_kl(0.5, _sigmoid(-2.0))
    logits = {"ct": CT_LOGITS, "mr": MR_LOGITS}
    labels = {"ct": ct_labels, "mr": MR_LABELS}

    masked = ModalityDistillationLoss(absent_classes="mask")(logits, labels)
    assert masked.item() == pytest.approx(term0, rel=1e-5)

    # The authors' quirk: the absent class has a zero mean logit (uniform) and still counts.
    uniform = ModalityDistillationLoss(absent_classes="uniform")(logits, labels)
    assert uniform.item() == pytest.approx(0.5 * (term0 + term1_uniform), rel=1e-5)
    assert uniform.item() > masked.item()


def test_no_common_class_gives_connected_zero() -> None:
    ct = torch.randn(2, 3, 4, 4, requires_grad=True)
    mr = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = {"ct": torch.zeros(2, 4, 4, dtype=torch.long), "mr": torch.ones(2, 4, 4)}
    loss = ModalityDistillationLoss()({"ct": ct, "mr": mr}, labels)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert ct.grad is not None and mr.grad is not None
    assert torch.count_nonzero(ct.grad) == 0 and torch.count_nonzero(mr.grad) == 0


def test_fewer_than_two_modalities_gives_connected_zero() -> None:
    ct = torch.randn(2, 3, 5, requires_grad=True)
    loss_fn = ModalityDistillationLoss()
    loss = loss_fn({"ct": ct}, {"ct": torch.randint(0, 3, (2, 5))})
    assert loss.item() == 0.0
    loss.backward()
    assert ct.grad is not None
    assert set(loss_fn.distributions) == {"ct"}


def _random_case(
    generator: torch.Generator, num_classes: int = 4, absent: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = 3 * torch.randn(2, num_classes, 6, 5, generator=generator)
    labels = torch.randint(0, num_classes, (2, 6, 5), generator=generator)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % num_classes
    return logits, labels


def test_symmetric_under_swapping_modalities() -> None:
    g = torch.Generator().manual_seed(0)
    (a, ya), (b, yb) = _random_case(g, absent=2), _random_case(g)
    for mode in ("mask", "uniform"):
        loss_fn = ModalityDistillationLoss(absent_classes=mode)
        forward = loss_fn({"ct": a, "mr": b}, {"ct": ya, "mr": yb})
        swapped = loss_fn({"ct": b, "mr": a}, {"ct": yb, "mr": ya})
        assert forward.item() > 0
        torch.testing.assert_close(forward, swapped)


def test_zero_when_modalities_agree() -> None:
    g = torch.Generator().manual_seed(1)
    logits, labels = _random_case(g)
    # Different batches with the same class-mean logits: the MR batch is the CT batch with its
    # voxels reversed and the whole batch repeated twice.
    mr_logits = torch.cat([logits.flip(-1), logits], dim=0)
    mr_labels = torch.cat([labels.flip(-1), labels], dim=0)
    loss = ModalityDistillationLoss()(
        {"ct": logits, "mr": mr_logits}, {"ct": labels, "mr": mr_labels}
    )
    assert abs(loss.item()) < 1e-6


def test_gradients_reach_both_modalities() -> None:
    g = torch.Generator().manual_seed(2)
    (a, ya), (b, yb) = _random_case(g), _random_case(g)
    a.requires_grad_(True)
    b.requires_grad_(True)
    ModalityDistillationLoss()({"ct": a, "mr": b}, {"ct": ya, "mr": yb}).backward()
    for grad in (a.grad, b.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_labels_with_and_without_channel_dim_and_float_labels() -> None:
    g = torch.Generator().manual_seed(3)
    (a, ya), (b, yb) = _random_case(g), _random_case(g)
    loss_fn = ModalityDistillationLoss()
    plain = loss_fn({"ct": a, "mr": b}, {"ct": ya, "mr": yb})
    channel = loss_fn({"ct": a, "mr": b}, {"ct": ya.unsqueeze(1), "mr": yb.unsqueeze(1).float()})
    torch.testing.assert_close(plain, channel)


def test_three_modalities_is_the_mean_over_pairs() -> None:
    g = torch.Generator().manual_seed(4)
    cases = {"ct": _random_case(g), "mr": _random_case(g, absent=1), "pet": _random_case(g)}
    loss_fn = ModalityDistillationLoss()
    pair_losses = [
        loss_fn({m: cases[m][0] for m in pair}, {m: cases[m][1] for m in pair})
        for pair in itertools.combinations(cases, 2)
    ]
    total = loss_fn({m: c[0] for m, c in cases.items()}, {m: c[1] for m, c in cases.items()})
    assert len(set(round(x.item(), 6) for x in pair_losses)) == 3
    torch.testing.assert_close(total, torch.stack(pair_losses).mean())


def _naive_distributions(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop reference: per class, mask the logits, average, soften (authors' eps 1e-6)."""
    num_classes = logits.shape[1]
    rows, present = [], []
    for c in range(num_classes):
        mask = (labels == c).unsqueeze(1).double()
        mean = (logits.double() * mask).sum(dim=(0, 2, 3)) / (mask.sum() + 1e-6)
        rows.append(torch.softmax(mean / temperature, dim=0))
        present.append(bool(mask.sum() > 0))
    return torch.stack(rows), torch.tensor(present)


def _naive_loss(
    cases: dict[str, tuple[torch.Tensor, torch.Tensor]], temperature: float, mode: str
) -> float:
    dists = {m: _naive_distributions(x, y, temperature) for m, (x, y) in cases.items()}
    pair_values = []
    for a, b in itertools.combinations(dists, 2):
        (p, present_p), (q, present_q) = dists[a], dists[b]
        terms = []
        for c in range(p.shape[0]):
            if mode == "mask" and not (present_p[c] and present_q[c]):
                continue
            kl_pq = (p[c] * (p[c] / q[c]).log()).sum()
            kl_qp = (q[c] * (q[c] / p[c]).log()).sum()
            terms.append(0.5 * (kl_pq + kl_qp).item())
        pair_values.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(pair_values) / len(pair_values)


@pytest.mark.parametrize("mode", ["mask", "uniform"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_matches_naive_loop_reference(mode: str, temperature: float) -> None:
    g = torch.Generator().manual_seed(5)
    cases = {"ct": _random_case(g, absent=3), "mr": _random_case(g, absent=0), "x": _random_case(g)}
    loss_fn = ModalityDistillationLoss(temperature=temperature, absent_classes=mode)
    loss = loss_fn({m: c[0] for m, c in cases.items()}, {m: c[1] for m, c in cases.items()})
    assert loss.item() == pytest.approx(_naive_loss(cases, temperature, mode), rel=1e-4)
    for name, (logits, labels) in cases.items():
        probs, present = _naive_distributions(logits, labels, temperature)
        torch.testing.assert_close(loss_fn.distributions[name].probs, probs.float())
        assert torch.equal(loss_fn.distributions[name].present, present)


def test_distributions_attribute_for_logging() -> None:
    g = torch.Generator().manual_seed(6)
    (a, ya), (b, yb) = _random_case(g, absent=2), _random_case(g)
    a.requires_grad_(True)
    loss_fn = ModalityDistillationLoss()
    assert loss_fn.distributions == {}
    loss_fn({"ct": a, "mr": b}, {"ct": ya, "mr": yb})
    dists = loss_fn.distributions
    assert set(dists) == {"ct", "mr"}
    ct = dists["ct"]
    assert isinstance(ct, ClassDistributions)
    assert ct.probs.shape == (4, 4) and not ct.probs.requires_grad
    torch.testing.assert_close(ct.probs.sum(-1), torch.ones(4))
    assert ct.present.tolist() == [True, True, False, True]
    torch.testing.assert_close(ct.probs[2], torch.full((4,), 0.25))  # absent -> uniform
    assert dists["mr"].present.all()


def test_large_logits_under_bf16_autocast_are_finite_and_correct() -> None:
    g = torch.Generator().manual_seed(7)
    # Logits up to +-1e4 over 4 x 4 x 32 x 32 voxels: per-class sums reach ~1e7.
    cases = {}
    for name in ("ct", "mr"):
        logits = (1e4 * torch.rand(4, 4, 32, 32, generator=g) * 2 - 1e4).bfloat16()
        labels = torch.randint(0, 4, (4, 32, 32), generator=g)
        cases[name] = (logits.requires_grad_(True), labels)
    loss_fn = ModalityDistillationLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn({m: c[0] for m, c in cases.items()}, {m: c[1] for m, c in cases.items()})
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for logits, _ in cases.values():
        assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
        assert torch.isfinite(logits.grad.float()).all()
    # Same values in float32 without autocast give the same loss.
    reference = loss_fn(
        {m: c[0].detach().float() for m, c in cases.items()}, {m: c[1] for m, c in cases.items()}
    )
    assert reference.item() > 0
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)


def test_extreme_mean_logits_stay_finite_in_float16() -> None:
    # fp16 logits at 6e4: summing 64 voxels in fp16 would overflow to inf; the saturated softmax
    # (probabilities exactly 0 in float32) must still give a finite KL through log space.
    ct = torch.zeros(1, 2, 64, dtype=torch.float16)
    ct[:, 0] = 6e4
    mr = torch.zeros(1, 2, 64, dtype=torch.float16)
    mr[:, 1] = 6e4
    labels = torch.zeros(1, 64, dtype=torch.long)
    loss = ModalityDistillationLoss(temperature=2.0)(
        {"ct": ct, "mr": mr}, {"ct": labels, "mr": labels}
    )
    # Only class 0 is present: mean logits (6e4, 0) vs (0, 6e4), i.e. (3e4, 0) vs (0, 3e4) at
    # T = 2, so both KLs are 3e4 (the mass exp(-3e4) contributes nothing).
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(3e4, rel=1e-6)


def test_log_distributions_building_block_batches_over_modalities() -> None:
    g = torch.Generator().manual_seed(8)
    (a, ya), (b, yb) = _random_case(g), _random_case(g, absent=1)
    stats = [class_logit_sums(a, ya, 4), class_logit_sums(b, yb, 4)]
    sums = torch.stack([s for s, _ in stats])
    counts = torch.stack([c for _, c in stats])
    log_probs, present = class_log_distributions(sums, counts, temperature=2.0)
    assert log_probs.shape == (2, 4, 4) and present.shape == (2, 4)
    probs_b, present_b = class_prediction_distributions(b, yb, 4, temperature=2.0)
    torch.testing.assert_close(log_probs[1].exp(), probs_b)
    assert torch.equal(present[1], present_b) and present_b.tolist() == [True, False, True, True]


def test_symmetric_kl_matches_definition() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.1, 0.3, 0.6]])
    expected = 0.5 * ((p * (p / q).log()).sum() + (q * (q / p).log()).sum())
    torch.testing.assert_close(symmetric_kl(p.log(), q.log()), expected.reshape(1))


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="temperature"):
        ModalityDistillationLoss(temperature=0.0)
    with pytest.raises(ValueError, match="absent_classes"):
        ModalityDistillationLoss(absent_classes="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sync"):
        ModalityDistillationLoss(sync="always")  # type: ignore[arg-type]
    loss_fn = ModalityDistillationLoss()
    x = torch.randn(1, 3, 4)
    y = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="empty"):
        loss_fn({}, {})
    with pytest.raises(ValueError, match="no labels"):
        loss_fn({"ct": x, "mr": x}, {"ct": y})
    with pytest.raises(ValueError, match="same C"):
        loss_fn({"ct": x, "mr": torch.randn(1, 2, 4)}, {"ct": y, "mr": y})
    with pytest.raises(ValueError, match="do not match"):
        loss_fn({"ct": x, "mr": x}, {"ct": y, "mr": torch.zeros(1, 5, dtype=torch.long)})
    with pytest.raises(ValueError, match="one channel"):
        loss_fn({"ct": x, "mr": x}, {"ct": y, "mr": torch.zeros(1, 3, 4)})
