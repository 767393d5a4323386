"""Per-modality MONAI preprocessing and augmentation pipelines.

The pipelines are split in two parts so the expensive deterministic part can be cached:

* :func:`deterministic_transforms` loads a case, puts channels first, optionally reorients and
  resamples it, remaps labels into the shared label space, normalizes intensities according to
  the modality (CT window / MR percentiles, then z-score) and crops to the body.
* :func:`random_transforms` samples training examples from the cached volume: 2D mode draws one
  axial slice with ``num_adjacent`` neighbouring slices as channels (the paper's 2.5D input,
  label = middle slice) with foreground oversampling; 3D mode draws patches with
  :class:`monai.transforms.RandCropByPosNegLabeld`. Augmentations are configurable per modality.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    ClipIntensityPercentilesd,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from ummkd.data.dataset_spec import NORMALIZATIONS, remap_labels

# Every LoadImage builds all of MONAI's default readers, among them the nvImageCodec DICOM
# reader. Wherever CUDA DICOM decoding is not installed, it logs "nvImageCodec is not available"
# (once per LoadImage) and warns that its plugin did not register. ummkd never reads DICOM
# through LoadImage (the importers convert DICOM to NIfTI first), so both messages only confuse
# its users. They are silenced; a level the user set for that logger is left as set.
_NVIMGCODEC_LOGGER = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
if _NVIMGCODEC_LOGGER.level == logging.NOTSET:
    _NVIMGCODEC_LOGGER.setLevel(logging.ERROR)
warnings.filterwarnings(
    "ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"
)


RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
"""Axis labels of nibabel's RAS+ world (MONAI's default, given explicitly)."""


@dataclass
class AugmentationConfig:
    """Random augmentation of training samples (applied independently per modality).

    Attributes:
        flip_prob: Probability of a flip along each in-plane axis.
        rotate_range: Maximum in-plane rotation in radians.
        scale_range: Maximum relative zoom (0.1 = +-10%).
        affine_prob: Probability of applying the random rotation/zoom.
        intensity_scale: Maximum relative intensity scaling (on z-scored values).
        intensity_shift: Maximum intensity shift (in standard deviations).
        noise_std: Standard deviation of additive Gaussian noise (0 disables).
        intensity_prob: Probability of each intensity jitter.
    """

    flip_prob: float = 0.0
    rotate_range: float = 0.26
    scale_range: float = 0.1
    affine_prob: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.0
    intensity_prob: float = 0.3


@dataclass
class ModalityPreprocessing:
    """Deterministic preprocessing of one modality.

    Attributes:
        normalization: ``"ct"`` (clip to ``window`` then z-score), ``"mr"`` (clip to the volume's
            0.5/99.5 percentiles then z-score), ``"zscore"`` or ``"none"``.
        window: Intensity window for ``"ct"``.
        label_map: Source label value -> shared class id (unlisted values -> background).
        num_classes: Number of shared classes (for label remapping).
    """

    normalization: str = "none"
    window: tuple[float, float] | None = None
    label_map: Mapping[int, int] | None = None
    num_classes: int = 2


class RemapLabelsd(MapTransform):
    """Map source label values to the shared label space (unlisted values -> background)."""

    def __init__(
        self,
        keys: KeysCollection,
        label_map: Mapping[int, int] | None,
        num_classes: int,
        allow_missing_keys: bool = False,
    ) -> None:
        """Create the transform.

        Args:
            keys: Label keys to remap.
            label_map: Source value -> shared id; ``None`` keeps values (they must be valid ids).
            num_classes: Number of shared classes.
            allow_missing_keys: Skip absent keys instead of raising.
        """
        super().__init__(keys, allow_missing_keys)
        self.label_map = dict(label_map) if label_map else None
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Remap the labels of one sample."""
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else label
            remapped = remap_labels(np.asarray(array), self.label_map, self.num_classes)
            if isinstance(label, torch.Tensor):
                out = label.clone()  # keeps MetaTensor metadata and the transform trace
                out[...] = torch.from_numpy(remapped.astype(np.float32)).to(out.device)
                d[key] = out
            else:
                d[key] = remapped
        return d


def _body_mask(image: torch.Tensor) -> torch.Tensor:
    """Foreground (body) selector for cropping: voxels clearly above the image minimum."""
    low = image.min()
    return image > low + 1e-3 * (image.max() - low + 1e-6)


def normalization_transforms(prep: ModalityPreprocessing) -> list[MapTransform]:
    """Intensity normalization transforms for one modality."""
    if prep.normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {prep.normalization!r}; expected one of {NORMALIZATIONS}"
        )
    steps: list[MapTransform] = []
    if prep.normalization == "ct":
        if prep.window is None:
            raise ValueError(
                "CT normalization needs a window (dataset.json 'window' or dataset percentiles)"
            )
        low, high = prep.window
        steps.append(
            ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
        )
        steps.append(NormalizeIntensityd("image"))
    elif prep.normalization == "mr":
        steps.append(ClipIntensityPercentilesd("image", lower=0.5, upper=99.5))
        steps.append(NormalizeIntensityd("image"))
    elif prep.normalization == "zscore":
        steps.append(NormalizeIntensityd("image"))
    return steps


def deterministic_transforms(
    prep: ModalityPreprocessing,
    *,
    with_label: bool = True,
    orientation: str | None = None,
    spacing: Sequence[float] | None = None,
    crop_foreground: bool = True,
) -> Compose:
    """Cacheable preprocessing of one modality (load -> orient -> resample -> normalize -> crop).

    Args:
        prep: Modality settings (normalization, label map).
        with_label: Whether samples carry a ``"label"`` key.
        orientation: Axis codes such as ``"RAS"``; ``None`` keeps the array orientation.
        spacing: Target voxel spacing in mm; ``None`` keeps the native spacing. Entries <= 0
            keep the native spacing of that axis.
        crop_foreground: Crop to the body (voxels above the image minimum) after normalization.

    Returns:
        A flat :class:`monai.transforms.Compose` (flat, so that ``CacheDataset`` can cache it).
    """
    keys = ["image", "label"] if with_label else ["image"]
    steps: list[Any] = [
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
    ]
    if orientation:
        steps.append(Orientationd(keys, axcodes=orientation, labels=RAS_LABELS))
    if spacing is not None:
        modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
        steps.append(Spacingd(keys, pixdim=tuple(spacing), mode=modes))
    if with_label:
        steps.append(RemapLabelsd("label", prep.label_map, prep.num_classes))
    steps.extend(normalization_transforms(prep))
    if crop_foreground:
        steps.append(CropForegroundd(keys, source_key="image", select_fn=_body_mask, margin=2))
    steps.append(EnsureTyped("image", dtype=torch.float32, track_meta=True))
    if with_label:
        steps.append(EnsureTyped("label", dtype=torch.uint8, track_meta=True))
    return Compose(steps)


class RandAdjacentSlicesd(Randomizable, MapTransform):
    """Sample one axial slice (last axis) with ``num_adjacent`` neighbours as channels.

    The image ``(1, H, W, D)`` becomes ``(num_adjacent, H, W)``; the label ``(1, H, W, D)``
    becomes the middle slice ``(1, H, W)``. Neighbours beyond the volume edges replicate the edge
    slice. With probability ``foreground_prob`` the slice is drawn among slices that contain
    foreground labels (if any), otherwise uniformly.
    """

    def __init__(self, num_adjacent: int = 3, foreground_prob: float = 0.67) -> None:
        """Create the sampler.

        Args:
            num_adjacent: Number of slices stacked as channels (odd).
            foreground_prob: Probability of drawing a slice that contains foreground.
        """
        MapTransform.__init__(self, ["image", "label"])
        if num_adjacent < 1 or num_adjacent % 2 == 0:
            raise ValueError(f"num_adjacent must be a positive odd number, got {num_adjacent}")
        self.num_adjacent = num_adjacent
        self.foreground_prob = foreground_prob
        self._index = 0

    def randomize(self, label: torch.Tensor) -> None:
        """Choose the slice index from the label volume."""
        depth = label.shape[-1]
        if self.R.rand() < self.foreground_prob:
            with_fg = torch.nonzero(label.reshape(-1, depth).any(dim=0)).flatten()
            if len(with_fg) > 0:
                self._index = int(with_fg[self.R.randint(len(with_fg))])
                return
        self._index = int(self.R.randint(depth))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Extract the slice stack of one sample."""
        d = dict(data)
        image, label = d["image"], d["label"]
        self.randomize(label)
        d["image"] = adjacent_slices(image, self._index, self.num_adjacent)
        d["label"] = torch.as_tensor(label[..., self._index]).clone()
        d["slice_index"] = self._index
        return d


def adjacent_slices(volume: torch.Tensor, index: int, num_adjacent: int) -> torch.Tensor:
    """Stack ``num_adjacent`` slices centred on ``index`` (last axis) as channels.

    Args:
        volume: ``(1, H, W, D)`` tensor.
        index: Centre slice.
        num_adjacent: Odd number of slices; out-of-range neighbours replicate the edge slice.

    Returns:
        ``(num_adjacent, H, W)`` tensor (a plain tensor, no metadata).
    """
    depth = volume.shape[-1]
    half = num_adjacent // 2
    indices = torch.arange(index - half, index + half + 1).clamp_(0, depth - 1)
    return torch.as_tensor(volume[0][..., indices]).permute(2, 0, 1).contiguous()


def random_transforms(
    mode: str,
    *,
    patch_size: Sequence[int],
    num_adjacent: int = 3,
    foreground_prob: float = 0.67,
    augmentation: AugmentationConfig | None = None,
) -> Compose:
    """Random training-sample generation from a cached, preprocessed volume.

    Args:
        mode: ``"2d"`` (slice stacks) or ``"3d"`` (patches).
        patch_size: In-plane size ``(H, W)`` in 2D, ``(H, W, D)`` in 3D.
        num_adjacent: Slices per 2D sample (channels).
        foreground_prob: Foreground oversampling probability.
        augmentation: Augmentation settings; ``None`` disables augmentation.

    Returns:
        The transform producing ``{"image", "label"}`` training samples.
    """
    aug = augmentation
    keys = ["image", "label"]
    steps: list[Any] = []
    if mode == "2d":
        if len(patch_size) != 2:
            raise ValueError(f"2d mode needs a 2-element patch_size, got {list(patch_size)}")
        steps += [
            RandAdjacentSlicesd(num_adjacent, foreground_prob),
            SpatialPadd(keys, spatial_size=patch_size),
            RandSpatialCropd(keys, roi_size=patch_size, random_size=False),
        ]
    elif mode == "3d":
        if len(patch_size) != 3:
            raise ValueError(f"3d mode needs a 3-element patch_size, got {list(patch_size)}")
        pos = foreground_prob / max(1e-6, 1.0 - foreground_prob) if foreground_prob < 1 else 1.0
        steps += [
            SpatialPadd(keys, spatial_size=patch_size),
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=patch_size,
                pos=pos,
                neg=1.0,
                num_samples=1,
                allow_smaller=False,
            ),
        ]
    else:
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    if aug is not None:
        spatial_axes = [0, 1]
        if aug.affine_prob > 0:
            steps.append(
                RandAffined(
                    keys,
                    prob=aug.affine_prob,
                    rotate_range=(aug.rotate_range,) if mode == "2d" else (0, 0, aug.rotate_range),
                    scale_range=(aug.scale_range,) * len(patch_size),
                    mode=("bilinear", "nearest"),
                    padding_mode="border",
                )
            )
        if aug.flip_prob > 0:
            steps += [RandFlipd(keys, prob=aug.flip_prob, spatial_axis=a) for a in spatial_axes]
        if aug.intensity_scale > 0:
            steps.append(
                RandScaleIntensityd("image", factors=aug.intensity_scale, prob=aug.intensity_prob)
            )
        if aug.intensity_shift > 0:
            steps.append(
                RandShiftIntensityd("image", offsets=aug.intensity_shift, prob=aug.intensity_prob)
            )
        if aug.noise_std > 0:
            steps.append(RandGaussianNoised("image", std=aug.noise_std, prob=aug.intensity_prob))
    steps.append(EnsureTyped("image", dtype=torch.float32, track_meta=False))
    steps.append(EnsureTyped("label", dtype=torch.long, track_meta=False))
    return Compose(steps)


def invert_to_input_space(
    transform: Compose, probs: torch.Tensor, image: torch.Tensor
) -> torch.Tensor:
    """Map probabilities ``(C, *spatial)`` of a preprocessed image back to its stored grid.

    Args:
        transform: The :func:`prediction_transforms` instance that preprocessed ``image``.
        probs: Class probabilities on the preprocessed grid.
        image: The preprocessed image (a ``MetaTensor`` carrying its applied transforms).

    Returns:
        Probabilities on the grid of the file the image was read from (``probs`` unchanged
        when ``image`` carries no transforms).
    """
    if not isinstance(image, MetaTensor) or not image.applied_operations:
        return probs
    tracked = MetaTensor(probs.detach().cpu(), meta=dict(image.meta))
    tracked.applied_operations = list(image.applied_operations)
    return torch.as_tensor(transform.inverse({"image": tracked})["image"])


def prediction_transforms(
    prep: ModalityPreprocessing,
    *,
    orientation: str | None = None,
    spacing: Sequence[float] | None = None,
) -> Compose:
    """Invertible preprocessing of unlabeled images for prediction (no cropping)."""
    return deterministic_transforms(
        prep, with_label=False, orientation=orientation, spacing=spacing, crop_foreground=False
    )


__all__ = [
    "AugmentationConfig",
    "ModalityPreprocessing",
    "RandAdjacentSlicesd",
    "RemapLabelsd",
    "adjacent_slices",
    "deterministic_transforms",
    "invert_to_input_space",
    "normalization_transforms",
    "prediction_transforms",
    "random_transforms",
]
