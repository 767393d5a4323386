from __future__ import annotations

import pytest
import torch

from ummkd.evaluation.inference import (
    probabilities_to_labels,
    slicewise_predict,
    sliding_window_predict,
)


def _slice_index_volume(height, width, depth):
    """Volume whose slice z holds the value z everywhere."""
    return torch.arange(depth, dtype=torch.float32).expand(1, height, width, depth).clone()


def _one_hot_of_channel(channel, num_classes):
    """Predictor: logits = one-hot of the (integer) value of one input channel."""

    def predictor(x):
        labels = x[:, channel].round().long().clamp(0, num_classes - 1)
        return 10.0 * torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()

    return predictor


@pytest.mark.parametrize("num_adjacent", [1, 3, 5])
@pytest.mark.parametrize("channel", ["first", "middle", "last"])
def test_every_slice_sees_its_neighbours_with_edge_replication(num_adjacent, channel):
    depth = 7
    volume = _slice_index_volume(5, 6, depth)
    index = {"first": 0, "middle": num_adjacent // 2, "last": num_adjacent - 1}[channel]
    probs = slicewise_predict(
        volume, _one_hot_of_channel(index, depth), num_adjacent=num_adjacent, batch_size=3
    )
    assert probs.shape == (depth, 5, 6, depth)
    assert probs.dtype == torch.float32
    labels = probabilities_to_labels(probs)
    offset = index - num_adjacent // 2
    for z in range(depth):  # first and last slices included
        expected = min(max(z + offset, 0), depth - 1)
        assert torch.all(labels[..., z] == expected), (z, labels[0, 0, z].item(), expected)


def _threshold_middle(x):
    middle = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
    return torch.cat([-middle, middle], dim=1) * 5.0


def test_odd_sizes_are_padded_to_divisible_and_cropped_back():
    torch.manual_seed(0)
    volume = torch.randn(1, 13, 9, 4)
    seen = []

    def predictor(x):
        seen.append(tuple(x.shape[2:]))
        return _threshold_middle(x)

    probs = slicewise_predict(volume, predictor, divisible=8)
    assert set(seen) == {(16, 16)}
    assert probs.shape == (2, 13, 9, 4)
    # Cropped back at the right offset: every voxel keeps its own prediction.
    torch.testing.assert_close(probs[1], torch.sigmoid(10.0 * volume[0]))
    assert torch.equal(probabilities_to_labels(probs), (volume[0] > 0).long())


def test_tta_with_a_flip_equivariant_predictor_changes_nothing():
    torch.manual_seed(1)
    volume = torch.randn(1, 11, 10, 5)
    calls = []

    def predictor(x):
        calls.append(x.shape[0])
        return _threshold_middle(x)

    plain = slicewise_predict(volume, predictor, batch_size=5)
    assert len(calls) == 1
    with_tta = slicewise_predict(volume, predictor, batch_size=5, tta=True)
    assert len(calls) == 1 + 3  # identity, flip H, flip W
    torch.testing.assert_close(with_tta, plain)


def test_tta_averages_flipped_back_predictions():
    volume = torch.zeros(1, 4, 6, 2)

    def row_detector(x):  # logit of class 1 grows along H: not flip-equivariant
        ramp = torch.arange(x.shape[2], dtype=torch.float32)[None, None, :, None]
        logits = ramp.expand(x.shape[0], 1, x.shape[2], x.shape[3])
        return torch.cat([torch.zeros_like(logits), logits], dim=1)

    probs = slicewise_predict(volume, row_detector, divisible=1, tta=True)
    ramp = torch.arange(4, dtype=torch.float32)[:, None, None]
    expected = (2 * torch.sigmoid(ramp) + torch.sigmoid(ramp.flip(0))) / 3
    torch.testing.assert_close(probs[1], expected.expand(4, 6, 2))


def test_batch_size_does_not_change_results():
    torch.manual_seed(2)
    volume = torch.randn(1, 12, 8, 9)
    weights = torch.randn(3, 3)

    def mixing(x):  # every class depends on all three adjacent slices
        return torch.einsum("ck,bkhw->bchw", weights, x)

    reference = slicewise_predict(volume, mixing, batch_size=1)
    for batch_size in (2, 4, 9, 64):
        torch.testing.assert_close(
            slicewise_predict(volume, mixing, batch_size=batch_size), reference
        )


def test_slicewise_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(1, H, W, D\)"):
        slicewise_predict(torch.zeros(2, 4, 4, 4), _threshold_middle)
    with pytest.raises(ValueError, match="odd"):
        slicewise_predict(torch.zeros(1, 4, 4, 4), _threshold_middle, num_adjacent=2)
    with pytest.raises(ValueError, match="logits of shape"):
        slicewise_predict(torch.zeros(1, 4, 4, 4), lambda x: x[:, :, :2])


@pytest.mark.parametrize("shape", [(20, 18, 12), (5, 6, 7)])
@pytest.mark.parametrize("tta", [False, True])
def test_sliding_window_stitches_a_pointwise_predictor_exactly(shape, tta):
    torch.manual_seed(3)
    volume = torch.randn(1, *shape)
    calls = []

    def identity_like(x):
        calls.append(tuple(x.shape[2:]))
        return torch.cat([-x, x], dim=1)

    probs = sliding_window_predict(volume, identity_like, roi_size=(8, 8, 8), tta=tta)
    assert probs.shape == (2, *shape)
    assert probs.dtype == torch.float32
    assert set(calls) == {(8, 8, 8)}  # small volumes are padded to the ROI
    # softmax([-v, v])[1] = sigmoid(2v), whatever the blending weights.
    torch.testing.assert_close(probs[1], torch.sigmoid(2 * volume[0]))
    torch.testing.assert_close(probs.sum(0), torch.ones(shape))


def test_sliding_window_blends_overlapping_windows():
    volume = torch.zeros(1, 16, 8, 8)

    def position_dependent(x):  # class-1 logit is 4 on the two centre rows of the window
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 1, 3:5] = 4.0
        return logits

    probs = sliding_window_predict(volume, position_dependent, roi_size=(8, 8, 8), overlap=0.5)
    low, high = torch.sigmoid(torch.tensor(0.0)), torch.sigmoid(torch.tensor(4.0))
    # Windows start at 0, 4, 8 along H: the centre rows of one window overlap the edge rows of
    # its neighbours, so blended values lie strictly between the two window values.
    middle = probs[1, 7, 4, 4]
    assert low < middle < high


def test_probabilities_to_labels_dtype():
    probs = torch.tensor([[0.2, 0.7], [0.5, 0.1], [0.3, 0.2]])
    labels = probabilities_to_labels(probs, dtype=torch.uint8)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [1, 0]
