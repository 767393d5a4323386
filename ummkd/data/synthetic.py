"""Synthetic unpaired CT-like and MR-like abdominal phantoms: the embedded default dataset.

THE DATA MADE HERE IS SYNTHETIC. The "patients" are random ellipsoid-based phantoms, not
anatomy from any scan; use them to try out, test and demonstrate the software, never to support
research claims.

Every case is an independently sampled phantom (CT and MR never show the same "patient"): a torso
with a subcutaneous fat layer and abdominal wall, bowel loops, stomach, aorta and inferior vena
cava, a vertebra with paraspinal muscles (all unlabeled) and the four labeled organs at plausible
relative positions: liver (large, patient's right), right and left kidneys (posterior, either
side of the spine, the right one lower) and spleen (patient's left, posterior). Positions, radii
and rotations are jittered per case and the whole anatomy is warped by a smooth random
displacement field.

* CT-like: Hounsfield-like values (air -1000, fat -100, liver 65, spleen 50, contrast-enhanced
  kidneys 150, bone 250-700) with Gaussian noise, stored as int16, spacing 1.5 x 1.5 x 2.5 mm.
  The volumes are stored in LPS orientation (array axis 0 runs to the patient's left, axis 1 to
  posterior), as DICOM-derived data often is.
* MR-like (T2-weighted): a different contrast ordering (kidneys > spleen > fat > bowel > liver >
  muscle, fluid brightest, flow voids and cortical bone dark), a smooth multiplicative bias
  field and Rician noise, stored as positive int16, spacing 1.8 x 1.8 x 6 mm (fewer, thicker
  slices), RAS.

Both modalities place the anatomy consistently in world (RAS+) coordinates, so a pipeline that
reorients to a common orientation (e.g. ``RAS``) sees the same layout in both; without
reorientation the CT arrays are the MR arrays rotated by 180 degrees in plane.

Labels (shared by both modalities, as in the real BTCV + CHAOS abdominal set): 0 background,
1 liver, 2 kidney_right, 3 kidney_left, 4 spleen. The output is a ready-to-use ummkd dataset root
(``dataset.json``, ``splits.json``, ``README.txt``, ``ct/``, ``mr/``); generation is
deterministic per seed (the same seed writes the same bytes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ummkd.data.dataset_spec import write_dataset_json
from ummkd.data.io import save_nifti, write_text_atomic

__all__ = ["LABELS", "make_synthetic_dataset", "synthetic_description"]

LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
CT_WINDOW = (-160.0, 240.0)
_MODALITY_CODES = {"ct": 0, "mr": 1}  # part of each case's random seed

# Tissue codes of the phantom (only the organs are labeled).
AIR, FAT, MUSCLE, VISCERAL_FAT, BOWEL, GAS, FLUID = 0, 1, 2, 3, 4, 5, 6
LIVER, KIDNEY_R, KIDNEY_L, SPLEEN = 7, 8, 9, 10
CORTICAL_BONE, MARROW, CANAL, AORTA, IVC = 11, 12, 13, 14, 15
_N_TISSUES = 16
_TISSUE_TO_LABEL = np.zeros(_N_TISSUES, np.uint8)
_TISSUE_TO_LABEL[[LIVER, KIDNEY_R, KIDNEY_L, SPLEEN]] = [1, 2, 3, 4]

# Per tissue: CT mean (HU), CT texture amplitude, MR (T2-like) mean, MR texture amplitude.
_INTENSITIES = {
    AIR: (-1000, 0, 0, 0),
    FAT: (-100, 10, 320, 25),
    MUSCLE: (50, 8, 100, 15),
    VISCERAL_FAT: (-90, 10, 300, 25),
    BOWEL: (20, 15, 230, 40),
    GAS: (-850, 0, 15, 0),
    FLUID: (15, 5, 900, 40),
    LIVER: (65, 6, 150, 12),
    KIDNEY_R: (150, 12, 720, 40),
    KIDNEY_L: (150, 12, 720, 40),
    SPLEEN: (50, 6, 480, 25),
    CORTICAL_BONE: (700, 60, 30, 10),
    MARROW: (250, 40, 330, 40),
    CANAL: (20, 5, 950, 40),
    AORTA: (180, 10, 40, 10),
    IVC: (130, 10, 50, 10),
}
_CT_MEAN, _CT_TEXTURE, _MR_MEAN, _MR_TEXTURE = np.array(
    [_INTENSITIES[code] for code in range(_N_TISSUES)], np.float32
).T

_DEFAULT_CT_SPACING = (1.5, 1.5, 2.5)
_DEFAULT_MR_SPACING = (1.8, 1.8, 6.0)


@dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid in body coordinates (mm), rotated about the superior axis."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0

    def box(self, axes: Sequence[np.ndarray], margin: float) -> tuple[slice, ...] | None:
        """Index box that holds the ellipsoid, or None when it misses the grid.

        ``axes[k]`` are the undeformed body coordinates (mm) sampled along array axis k;
        ``margin`` (mm) covers the deformation.
        """
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        extent = (
            np.hypot(self.radii[0] * cos, self.radii[1] * sin),
            np.hypot(self.radii[0] * sin, self.radii[1] * cos),
            self.radii[2],
        )
        box = []
        for coords, center, half in zip(axes, self.center, extent, strict=True):
            inside = np.flatnonzero(np.abs(coords - center) <= half + margin)
            if inside.size == 0:
                return None
            box.append(slice(int(inside[0]), int(inside[-1]) + 1))
        return tuple(box)

    def mask(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Voxels inside the ellipsoid, given their body coordinates (mm)."""
        du, dv, dw = u - self.center[0], v - self.center[1], w - self.center[2]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        ru, rv = cos * du + sin * dv, -sin * du + cos * dv
        q = (ru / self.radii[0]) ** 2 + (rv / self.radii[1]) ** 2 + (dw / self.radii[2]) ** 2
        return q < 1.0


@dataclass(frozen=True)
class _Patient:
    """Shape parameters of one phantom, independent of the imaging grid."""

    half_width: float  # torso semi-axis, patient left-right (mm)
    half_depth: float  # torso semi-axis, anterior (mm); the back is flatter
    fat: float  # subcutaneous fat thickness (mm)
    organs: dict[int, list[_Ellipsoid]]
    offset: tuple[float, float, float]  # torso center relative to the volume center (mm)


def _sample_patient(rng: np.random.Generator, fov: Sequence[float]) -> _Patient:
    """Draw one phantom whose torso fills most of a field of view ``fov`` (mm)."""
    scale = rng.uniform(0.88, 1.04)
    a = 0.44 * fov[0] * scale
    b = 0.34 * fov[1] * scale * rng.uniform(0.92, 1.08)
    hz = 0.5 * fov[2]

    def jitter(
        center: tuple[float, float, float],
        radii: tuple[float, float, float],
        angle: float = 0.0,
        spread: float = 0.05,
    ) -> _Ellipsoid:
        cu, cv, ct = center
        return _Ellipsoid(
            (
                (cu + rng.normal(0, spread)) * a,
                (cv + rng.normal(0, spread)) * b,
                (ct + rng.normal(0, 2 * spread)) * hz,
            ),
            (
                radii[0] * a * rng.uniform(0.85, 1.15),
                radii[1] * b * rng.uniform(0.85, 1.15),
                radii[2] * hz * rng.uniform(0.85, 1.15),
            ),
            angle + rng.normal(0, 0.2),
        )

    # Body coordinates: u = patient's right (+RAS x), v = anterior, w = superior; fractions of
    # the torso semi-axes a (u), b (v) and of the half field of view hz (w).
    organs = {
        LIVER: [
            jitter((0.42, 0.05, 0.35), (0.52, 0.85, 0.85)),
            jitter((-0.05, 0.42, 0.5), (0.42, 0.3, 0.5), angle=0.3),
        ],
        SPLEEN: [jitter((-0.62, -0.22, 0.35), (0.17, 0.42, 0.5), angle=0.6)],
        KIDNEY_R: [jitter((0.38, -0.42, -0.3), (0.17, 0.24, 0.55), angle=-0.6, spread=0.03)],
        KIDNEY_L: [jitter((-0.38, -0.42, -0.15), (0.17, 0.24, 0.55), angle=0.6, spread=0.03)],
        FLUID: [jitter((-0.3, 0.35, 0.45), (0.25, 0.3, 0.45))],
        AORTA: [_Ellipsoid((-0.1 * a, -0.25 * b, 0.0), (0.07 * a, 0.07 * a, 10 * hz))],
        IVC: [_Ellipsoid((0.16 * a, -0.18 * b, 0.0), (0.08 * a, 0.06 * a, 10 * hz))],
        MUSCLE: [
            _Ellipsoid((side * 0.15 * a, -0.66 * b, 0.0), (0.12 * a, 0.2 * b, 10 * hz))
            for side in (-1, 1)
        ],
        MARROW: [_Ellipsoid((0.0, -0.45 * b, 0.0), (0.085 * a, 0.075 * a, 10 * hz))],
        CANAL: [_Ellipsoid((0.0, -0.45 * b - 0.15 * a, 0.0), (0.045 * a, 0.038 * a, 10 * hz))],
        CORTICAL_BONE: [
            _Ellipsoid((0.0, -0.45 * b, 0.0), (0.11 * a, 0.1 * a, 10 * hz)),
            _Ellipsoid((0.0, -0.45 * b - 0.15 * a, 0.0), (0.07 * a, 0.06 * a, 10 * hz)),
            _Ellipsoid((0.0, -0.45 * b - 0.27 * a, 0.0), (0.03 * a, 0.09 * a, 10 * hz)),
        ],
    }
    offset = (rng.normal(0, 0.02 * fov[0]), rng.normal(0, 0.02 * fov[1]), rng.normal(0, 0.05 * hz))
    return _Patient(a, b, rng.uniform(4.0, 9.0), organs, offset)


def _interpolation_matrix(n_fine: int, n_coarse: int) -> np.ndarray:
    """Rows of normalized Gaussian weights that smoothly interpolate ``n_coarse`` control points."""
    position = (np.arange(n_fine) + 0.5) / n_fine * n_coarse - 0.5
    weights = np.exp(-0.5 * (position[:, None] - np.arange(n_coarse)[None, :]) ** 2)
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def _smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], coarse: Sequence[int] = (8, 8, 5)
) -> np.ndarray:
    """Smooth random field of unit standard deviation: coarse Gaussian noise, interpolated.

    The interpolation is separable (one small matrix per axis), which is much faster than
    spline zooming of the whole volume.
    """
    control = rng.standard_normal(tuple(coarse)).astype(np.float32)
    mx, my, mz = (_interpolation_matrix(n, c) for n, c in zip(shape, coarse, strict=True))
    field = np.einsum("jb,ibc->ijc", my, np.tensordot(mx, control, axes=(1, 0))) @ mz.T
    return (field - field.mean()) / (field.std() + 1e-6)


def _render_tissues(
    patient: _Patient, world: np.ndarray, center: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Tissue code per voxel from the world coordinates (3, X, Y, Z) of the voxel centers.

    The grid must be axis-aligned (array axis k runs along world axis k), as :func:`_affine`
    makes it; this lets every organ be drawn inside its own small index box.
    """
    shape = world.shape[1:]
    displacement = [0.05 * patient.half_width * _smooth_noise(rng, shape) for _ in range(3)]
    margin = float(max(np.abs(d).max() for d in displacement))
    undeformed = [world[k] - center[k] - patient.offset[k] for k in range(3)]
    axes = [undeformed[0][:, 0, 0], undeformed[1][0, :, 0], undeformed[2][0, 0, :]]
    u, v, w = (undeformed[k] + displacement[k] for k in range(3))
    a, b = patient.half_width, patient.half_depth

    def torso(shrink: float) -> np.ndarray:
        ru = np.abs(u) / (a - shrink)
        rv = np.abs(v) / (np.where(v > 0, b, 0.85 * b) - shrink)
        return ru * ru * np.sqrt(ru) + rv * rv * np.sqrt(rv) < 1.0  # boxy superellipse

    def paint(code: int, ellipsoid: _Ellipsoid, where: np.ndarray | None = None) -> None:
        box = ellipsoid.box(axes, margin)
        if box is not None:
            inside = ellipsoid.mask(u[box], v[box], w[box])
            tissue[box][inside if where is None else inside & where[box]] = code

    tissue = np.full(shape, AIR, np.uint8)
    tissue[torso(0.0)] = FAT
    tissue[torso(patient.fat)] = MUSCLE
    cavity = torso(patient.fat + 3.0)
    tissue[cavity] = VISCERAL_FAT
    bowel = cavity & (_smooth_noise(rng, shape, (12, 12, 6)) > -0.2)
    tissue[bowel] = BOWEL
    tissue[bowel & (_smooth_noise(rng, shape, (16, 16, 6)) > 1.6)] = GAS
    for code in (MUSCLE, FLUID, LIVER, SPLEEN, KIDNEY_R, KIDNEY_L, AORTA, IVC):
        for ellipsoid in patient.organs[code]:
            paint(code, ellipsoid, cavity)
    stomach = patient.organs[FLUID][0]
    tissue[(tissue == FLUID) & (v > stomach.center[1] + 0.55 * stomach.radii[1])] = GAS
    body = tissue != AIR
    for code in (CORTICAL_BONE, MARROW, CANAL):
        for ellipsoid in patient.organs[code]:
            paint(code, ellipsoid, body)
    return tissue


def _affine(
    shape: Sequence[int], spacing: Sequence[float], lps: bool, shift: np.ndarray
) -> np.ndarray:
    """Axis-aligned voxel->RAS+ affine whose volume center lies at world position ``shift``."""
    signs = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(signs * np.asarray(spacing, float))
    half = (np.asarray(shape, float) - 1) / 2
    affine[:3, 3] = shift - affine[:3, :3] @ half
    return affine


def _synthesize_case(
    modality: str,
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    anatomy_fov: Sequence[float],
    dim: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (image int16, label uint8, affine) of one synthetic case."""
    patient = _sample_patient(rng, anatomy_fov)
    shift = rng.uniform(-40, 40, 3).round(1)
    affine = _affine(shape, spacing, lps=modality == "ct", shift=shift)
    grid_shape = tuple(shape)
    index = np.indices(grid_shape, dtype=np.float64)
    if dim == 2:
        # One axial slice at a random level through the organs.
        level = rng.uniform(-0.45, 0.55) * 0.5 * anatomy_fov[2]
        index[2] = (level + shift[2] - affine[2, 3]) / affine[2, 2]
    world = np.einsum("ab,b...->a...", affine[:3, :3], index) + affine[:3, 3, None, None, None]
    tissue = _render_tissues(patient, world.astype(np.float32), shift, rng)
    label = _TISSUE_TO_LABEL[tissue]
    texture = _smooth_noise(rng, grid_shape, (14, 14, 6))
    if modality == "ct":
        means = _CT_MEAN + rng.normal(0, 6, _N_TISSUES).astype(np.float32)
        image = means[tissue] + _CT_TEXTURE[tissue] * texture
        image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0.3))
        image += rng.normal(0, rng.uniform(10, 20), grid_shape).astype(np.float32)
        image = np.clip(image, -1024, 3071)
    else:
        means = _MR_MEAN * rng.uniform(0.92, 1.08, _N_TISSUES).astype(np.float32)
        image = means[tissue] + _MR_TEXTURE[tissue] * texture
        image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0.3))
        bias = np.exp(0.15 * _smooth_noise(rng, grid_shape, (3, 3, 2)))
        image *= bias * rng.uniform(0.7, 1.4)
        sigma = rng.uniform(12, 25)
        noise = rng.normal(0, sigma, (2, *grid_shape)).astype(np.float32)
        image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician noise
        image = np.clip(image, 0, 32767)
    image = np.rint(image).astype(np.int16)
    if dim == 2:
        image, label = image[..., 0], label[..., 0]
        affine[2, 3] = float(world[2, 0, 0, 0])
    return image, label, affine


def _split(ids: list[str]) -> tuple[list[str], list[str], list[str]]:
    n_test = max(1, round(0.2 * len(ids)))
    n_val = max(1, round(0.15 * len(ids)))
    return ids[: -n_val - n_test], ids[-n_val - n_test : -n_test], ids[-n_test:]


def _readme(n_ct: int, n_mr: int, size: Sequence[int], seed: int, dim: int) -> str:
    return f"""SYNTHETIC DATA - NOT REAL PATIENTS - NOT FOR RESEARCH CLAIMS
=============================================================
Generated by `ummkd data synth` (ummkd.data.synthetic.make_synthetic_dataset) with
n_ct={n_ct}, n_mr={n_mr}, size={tuple(size)}, seed={seed}, dim={dim}.

Every image here is a random phantom made of deformed ellipsoids: an abdomen-like torso with
liver, kidneys and spleen (labeled) and fat, muscle, bowel, stomach, vessels and a vertebra
(unlabeled). CT-like images hold Hounsfield-like values (int16, LPS-oriented arrays); MR-like
images imitate a T2-weighted contrast with a bias field and Rician noise (int16, RAS, thicker
slices). CT and MR cases are independent phantoms (unpaired).

Use it to try out, test and demonstrate ummkd. Results on it say nothing about real data.

Labels: 0 background, 1 liver, 2 kidney_right, 3 kidney_left, 4 spleen.
Files: dataset.json (ummkd dataset description), splits.json (one fold + test cases),
ct/image_NNN.nii.gz + ct/label_NNN.nii.gz, mr/image_NNN.nii.gz + mr/label_NNN.nii.gz.
"""


def synthetic_description(
    *, n_ct: int = 16, n_mr: int = 10, seed: int = 0, dim: int = 3
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``dataset.json`` and ``splits.json`` content that :func:`make_synthetic_dataset` writes.

    Known without rendering a single image, so that a dataset to be generated later can be
    described now (classes, modalities, cases).

    Returns:
        ``(content, splits)``: case paths relative to the dataset root.
    """
    cases: list[dict[str, Any]] = []
    folds: dict[str, list[str]] = {"train": [], "val": []}
    test: list[str] = []
    for modality, count in (("ct", n_ct), ("mr", n_mr)):
        ids = [f"{modality}_{index:03d}" for index in range(count)]
        for index, case_id in enumerate(ids):
            stem = f"{modality}/{{}}_{index:03d}.nii.gz"
            cases.append(
                {
                    "id": case_id,
                    "modality": modality,
                    "image": stem.format("image"),
                    "label": stem.format("label"),
                }
            )
        train, val, held_out = _split(ids)
        folds["train"] += train
        folds["val"] += val
        test += held_out
    content = {
        "name": "synthetic_abdomen",
        "description": (
            "SYNTHETIC unpaired CT-like and MR-like abdominal phantoms made by ummkd "
            f"(seed {seed}); not real patients, not for research claims."
        ),
        "dim": dim,
        "labels": LABELS,
        "modalities": {
            "ct": {"normalization": "ct", "window": list(CT_WINDOW)},
            "mr": {"normalization": "mr"},
        },
        "cases": cases,
    }
    return content, {"folds": [folds], "test": test}


def make_synthetic_dataset(
    out: str | os.PathLike[str],
    *,
    n_ct: int = 16,
    n_mr: int = 10,
    size: tuple[int, int, int] = (96, 96, 32),
    ct_spacing: tuple[float, float, float] = _DEFAULT_CT_SPACING,
    mr_spacing: tuple[float, float, float] = _DEFAULT_MR_SPACING,
    seed: int = 0,
    dim: int = 3,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic unpaired CT + MR abdominal dataset (see the module docstring).

    Args:
        out: Output dataset root (created; must be empty or absent unless ``overwrite``).
        n_ct: Number of CT-like cases (at least 3: train, val and test need one each).
        n_mr: Number of MR-like cases (at least 3).
        size: CT grid ``(X, Y, Z)`` in voxels. MR cases have the same in-plane size and as
            many (thicker) slices as cover the same height: ``round(Z * ct_dz / mr_dz)``.
        ct_spacing: CT voxel spacing (mm).
        mr_spacing: MR voxel spacing (mm).
        seed: Random seed; the same arguments write the same bytes.
        dim: 3 for volumes; 2 for one random axial slice per case, stored as 2D images
            (``"dim": 2`` in ``dataset.json``).
        overwrite: Allow writing into a non-empty ``out``; files of the same names are replaced,
            other files are left alone.

    Returns:
        The dataset root ``out``.

    Raises:
        ValueError: On invalid arguments.
        FileExistsError: If ``out`` is not empty and ``overwrite`` is false.
    """
    out = Path(out).expanduser()
    if min(n_ct, n_mr) < 3:
        raise ValueError(f"n_ct and n_mr must be >= 3 (train/val/test), got {n_ct}, {n_mr}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if len(size) != 3 or min(size) < 1 or min(size[:2]) < 32:
        raise ValueError(f"size must be (X, Y, Z) with X, Y >= 32 and Z >= 1, got {size}")
    for name, spacing in (("ct_spacing", ct_spacing), ("mr_spacing", mr_spacing)):
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"{name} must be three positive numbers (mm), got {spacing}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; choose another --out or pass --overwrite"
        )
    anatomy_fov = [n * s for n, s in zip(size, ct_spacing, strict=True)]
    mr_slices = max(1, round(size[2] * ct_spacing[2] / mr_spacing[2]))
    grids = {
        "ct": ((size[0], size[1], 1 if dim == 2 else size[2]), ct_spacing),
        "mr": ((size[0], size[1], 1 if dim == 2 else mr_slices), mr_spacing),
    }
    content, splits = synthetic_description(n_ct=n_ct, n_mr=n_mr, seed=seed, dim=dim)
    for case in content["cases"]:
        modality, index = case["modality"], int(case["id"].rsplit("_", 1)[1])
        (out / modality).mkdir(parents=True, exist_ok=True)
        shape, spacing = grids[modality]
        rng = np.random.default_rng([seed, _MODALITY_CODES[modality], index])
        image, label, affine = _synthesize_case(modality, rng, shape, spacing, anatomy_fov, dim)
        save_nifti(image, affine, out / case["image"])
        save_nifti(label, affine, out / case["label"])
    write_text_atomic(out / "README.txt", _readme(n_ct, n_mr, size, seed, dim))
    write_dataset_json(out, content, splits, overwrite=True)
    return out
