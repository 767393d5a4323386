"""Whole-volume inference: slice-wise 2.5D (2D networks) and sliding-window 3D, with flip TTA.

Both entry points take a plain callable ``predictor(x) -> logits`` (for example a network in
``eval()`` mode, possibly inside ``use_modality(net, "ct")``), run it without gradients and
return **float32 softmax probabilities** of shape ``(num_classes, *spatial)`` on the device of
the input volume; :func:`probabilities_to_labels` turns them into a label map. Returning
probabilities rather than logits makes the two paths and their test-time augmentation
comparable: flipped predictions and overlapping windows are averaged as probabilities.

Padding (to a multiple of ``divisible`` in the slice-wise path, to the ROI size in the
sliding-window path) uses zeros, MONAI's default, and is cropped away from the output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import DivisiblePad
from monai.utils import convert_to_tensor

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""A callable mapping a batch ``(B, C_in, *spatial)`` to logits ``(B, num_classes, *spatial)``."""


def slicewise_predict(
    volume: torch.Tensor,
    predictor: Predictor,
    *,
    num_adjacent: int = 3,
    batch_size: int = 16,
    divisible: int = 8,
    tta: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predict every slice of a volume along its last axis with a 2.5D network.

    Slice ``z`` is fed as a ``num_adjacent``-channel image made of slices
    ``z - num_adjacent // 2, ..., z + num_adjacent // 2`` (channel ``j`` is slice
    ``z - num_adjacent // 2 + j``); slices beyond the volume repeat the first/last slice, so
    every slice, edges included, gets a prediction. Slices are processed ``batch_size`` at a
    time; height and width are zero-padded symmetrically to a multiple of ``divisible`` (MONAI
    :class:`~monai.transforms.DivisiblePad`) and the prediction is cropped back.

    Args:
        volume: the image, shape ``(1, H, W, D)``, on any device; its dtype is kept.
        predictor: maps ``(B, num_adjacent, H', W')`` to logits ``(B, num_classes, H', W')``.
        num_adjacent: number of adjacent slices stacked as channels (odd, >= 1).
        batch_size: number of slices per predictor call; bounds the memory used.
        divisible: height and width are padded to a multiple of this (e.g. the network's
            total downsampling factor); ``1`` disables padding.
        tta: average the probabilities over the identity and flips along H and along W (each
            prediction flipped back).
        device: where to run ``predictor`` (batches are moved there); defaults to the device
            of ``volume``. The output stays on the device of ``volume``.

    Returns:
        Softmax probabilities, float32, shape ``(num_classes, H, W, D)``.

    Raises:
        ValueError: on a volume that is not ``(1, H, W, D)``, invalid options, or a predictor
            output of the wrong shape.
    """
    if volume.ndim != 4 or volume.shape[0] != 1:
        raise ValueError(f"volume must have shape (1, H, W, D), got {tuple(volume.shape)}")
    if num_adjacent < 1 or num_adjacent % 2 == 0:
        raise ValueError(f"num_adjacent must be odd and >= 1, got {num_adjacent}")
    if batch_size < 1 or divisible < 1:
        raise ValueError(f"batch_size and divisible must be >= 1, got {batch_size}, {divisible}")
    run_device = volume.device if device is None else torch.device(device)
    _, height, width, depth = volume.shape
    pad = DivisiblePad(k=divisible, method="symmetric")
    _, (top, bottom), (left, right) = pad.compute_pad_width((height, width))
    padded_shape = (num_adjacent, top + height + bottom, left + width + right)
    offsets = torch.arange(num_adjacent, device=volume.device) - num_adjacent // 2
    flip_dims = (2, 3) if tta else ()

    probabilities: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, depth, batch_size):
            centres = torch.arange(start, min(start + batch_size, depth), device=volume.device)
            index = (centres[:, None] + offsets[None, :]).clamp(0, depth - 1)  # (B, k)
            stacks = volume[0][..., index].permute(2, 3, 0, 1).to(run_device)  # (B, k, H, W)
            # DivisiblePad pads every axis but the first: fold the batch into the channels.
            padded = convert_to_tensor(pad(stacks.reshape(-1, height, width)), track_meta=False)
            padded = padded.reshape(len(centres), *padded_shape)
            batch_probs = _flip_averaged_probabilities(padded, predictor, flip_dims)
            batch_probs = batch_probs[:, :, top : top + height, left : left + width]
            if probabilities is None:
                probabilities = torch.empty(
                    (batch_probs.shape[1], height, width, depth),
                    dtype=torch.float32,
                    device=volume.device,
                )
            probabilities[..., start : start + len(centres)] = batch_probs.permute(1, 2, 3, 0)
    if probabilities is None:
        raise ValueError("volume has no slices (D == 0)")
    return probabilities


def sliding_window_predict(
    volume: torch.Tensor,
    predictor: Predictor,
    *,
    roi_size: Sequence[int] | int,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mode: str = "gaussian",
    tta: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predict a volume with a 3D network by overlapping windows (MONAI ``SlidingWindowInferer``).

    Each window's logits are turned into softmax probabilities, which are blended with
    Gaussian (``mode="gaussian"``) or uniform (``mode="constant"``) weights. A volume smaller
    than ``roi_size`` is zero-padded to it and the output cropped back.

    Args:
        volume: the image, shape ``(C_in, *spatial)`` (``(C_in, H, W, D)`` for 3D), on any device.
        predictor: maps ``(B, C_in, *roi_size)`` to logits ``(B, num_classes, *roi_size)``.
        roi_size: window size, one value per spatial axis or one for all.
        overlap: fraction of overlap between neighbouring windows, in ``[0, 1)``.
        sw_batch_size: number of windows per predictor call; bounds the memory used.
        mode: blending of overlapping windows, ``"gaussian"`` or ``"constant"``.
        tta: in each window, average the probabilities over the identity and a flip along each
            spatial axis (each prediction flipped back).
        device: where to run ``predictor`` (windows are moved there); defaults to the device of
            ``volume``. The output stays on the device of ``volume``.

    Returns:
        Softmax probabilities, float32, shape ``(num_classes, *spatial)``.

    Raises:
        ValueError: on a volume without spatial axes or a predictor output of the wrong shape.
    """
    if volume.ndim < 3:
        raise ValueError(f"volume must have shape (C_in, *spatial), got {tuple(volume.shape)}")
    inferer = SlidingWindowInferer(
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode=mode,
        sw_device=volume.device if device is None else torch.device(device),
        device=volume.device,
    )
    flip_dims = tuple(range(2, volume.ndim + 1)) if tta else ()

    def window_probabilities(window: torch.Tensor) -> torch.Tensor:
        return _flip_averaged_probabilities(window, predictor, flip_dims)

    with torch.no_grad():
        blended = inferer(volume[None], window_probabilities)
    return convert_to_tensor(blended, track_meta=False)[0].float()


def probabilities_to_labels(
    probabilities: torch.Tensor, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Turn class probabilities (or logits) into a label map by argmax over the class axis.

    Args:
        probabilities: shape ``(num_classes, *spatial)``.
        dtype: integer dtype of the labels (e.g. ``torch.uint8`` to save memory when writing).

    Returns:
        Labels of shape ``spatial``, on the device of ``probabilities``.
    """
    return probabilities.argmax(dim=0).to(dtype)


def _flip_averaged_probabilities(
    batch: torch.Tensor, predictor: Predictor, flip_dims: Sequence[int]
) -> torch.Tensor:
    """Softmax of ``predictor(batch)`` averaged with its flips along each of ``flip_dims``."""
    probabilities = _softmax_prediction(batch, predictor)
    for dim in flip_dims:
        probabilities += _softmax_prediction(batch.flip(dim), predictor).flip(dim)
    return probabilities / (1 + len(flip_dims))


def _softmax_prediction(batch: torch.Tensor, predictor: Predictor) -> torch.Tensor:
    """Float32 softmax over the class axis of ``predictor(batch)``, with its shape checked."""
    logits = predictor(batch)
    if (
        not isinstance(logits, torch.Tensor)
        or logits.ndim != batch.ndim
        or logits.shape[0] != batch.shape[0]
        or logits.shape[2:] != batch.shape[2:]
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"predictor must return logits of shape (B, num_classes, *spatial) matching the "
            f"input {tuple(batch.shape)}, got {shape}"
        )
    return torch.softmax(logits.float(), dim=1)
