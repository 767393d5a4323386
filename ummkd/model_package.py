"""Self-contained model packages: ``ummkd export`` writes one, ``ummkd segment`` loads it.

Layout (after the MONAI bundle where it fits)::

    MODEL/configs/metadata.json   what the model expects and what it was trained and tested on
    MODEL/configs/inference.json  the network and module settings (to rebuild the module)
    MODEL/models/model.pt         the weights (a state dict; loads with weights_only=True)
    MODEL/docs/README.md          the same facts for a person

A package holds everything inference needs: no training config, dataset or checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
import yaml
from monai.transforms import KeepLargestConnectedComponent
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

import ummkd
from ummkd.data.dataset_spec import Case, DatasetSpecError
from ummkd.data.io import make_temporary_dir, write_json, write_text_atomic
from ummkd.data.transforms import ModalityPreprocessing, invert_to_input_space
from ummkd.errors import CommandParser, UsageError

FORMAT = "ummkd-model/1"
METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
WEIGHTS = Path("models/model.pt")
README = Path("docs/README.md")
MAX_LABEL_VALUES = 16  # an input with at most this many distinct whole values is no scan


class PackageError(UsageError):
    """A model package cannot be written or read (the message names the file)."""


class Fingerprint(BaseModel):
    """What the training images of one modality look like (stored units, mm).

    Attributes:
        spacing_min: Smallest voxel spacing per axis.
        spacing_max: Largest voxel spacing per axis.
        extent_min: Smallest field of view per axis (shape x spacing).
        extent_max: Largest field of view per axis.
        foreground_percentiles: 0.5th, 50th and 99.5th percentile of labelled voxels.
    """

    model_config = ConfigDict(extra="forbid")
    spacing_min: list[float]
    spacing_max: list[float]
    extent_min: list[float]
    extent_max: list[float]
    foreground_percentiles: list[float]


class ModalityInput(BaseModel):
    """How to feed one modality to the model.

    Attributes:
        units: Intensity units of the input (``"HU"`` for CT).
        normalization: ``ct`` (clip to ``window``, then z-score), ``mr`` (clip to the 0.5/99.5
            percentiles of the scan, then z-score), ``zscore`` or ``none``.
        window: The CT window in HU.
        training_cases: Number of training scans.
        fingerprint: The training scans' geometry and intensities.
        postprocess_largest_component: Classes reduced to their largest connected component.
    """

    model_config = ConfigDict(extra="forbid")
    units: str
    normalization: str
    window: list[float] | None
    training_cases: int
    fingerprint: Fingerprint
    postprocess_largest_component: list[str]


class ModelMetadata(BaseModel):
    """``configs/metadata.json`` of a model package."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["ummkd-model/1"]
    name: str
    ummkd_version: str
    export_commit: str = Field(validation_alias=AliasChoices("export_commit", "commit"))
    training_commits: list[str] = []
    exported: str
    labels: dict[str, int]
    orientation: str | None
    spacing: list[float] | None
    spatial_mode: str
    num_adjacent: int
    inputs: dict[str, ModalityInput]
    training_data: dict[str, str]
    training_steps: int
    checkpoint: str
    test_metrics: dict[str, Any] | None

    def preprocessing(self, modality: str) -> ModalityPreprocessing:
        """The deterministic preprocessing of ``modality`` (no label map: inference only)."""
        spec = self.inputs[modality]
        return ModalityPreprocessing(
            normalization=spec.normalization,
            window=tuple(spec.window) if spec.window else None,
            num_classes=len(self.labels),
        )

    def describe(self) -> str:
        """A few lines saying what the model was trained on and what it expects."""
        trained = ", ".join(self.training_commits) or "unknown"
        lines = [f"model {self.name} (ummkd {self.ummkd_version}, trained at commit {trained})"]
        for modality, spec in self.inputs.items():
            window = f", window {spec.window[0]:g}..{spec.window[1]:g}" if spec.window else ""
            lines.append(
                f"  {modality}: {spec.training_cases} training scans of "
                f"{self.training_data.get(modality, 'unknown data')}; input in {spec.units}"
                f"{window}"
            )
        lines.append(
            f"  classes: {', '.join(n for n, i in sorted(self.labels.items(), key=lambda x: x[1]))}"
            f"; orientation {self.orientation or 'as stored'}; spacing {self.spacing or 'native'}"
        )
        return "\n".join(lines)

    def readme(self) -> str:
        """The package's ``docs/README.md``: :meth:`describe`, provenance, test scores, usage."""
        lines = [
            "```",
            self.describe(),
            "```",
            "",
            f"- Weights: `{self.checkpoint}` after {self.training_steps} training steps; "
            f"exported {self.exported} by ummkd {self.ummkd_version} at commit "
            f"{self.export_commit}.",
        ]
        for modality, spec in self.inputs.items():
            kept = ", ".join(spec.postprocess_largest_component) or "none"
            lines.append(f"- {modality}: largest connected component kept for: {kept}.")
        metrics = self.test_metrics
        if metrics:
            options = metrics.get("inference") or {}
            lines.append(
                f"- Test scores ({metrics['grid']} grid, TTA {options.get('tta', 'not recorded')}, "
                f"report `{metrics['source']}`):"
            )
            for modality, result in metrics["modalities"].items():
                dice, hd95 = result["mean"]["dice"], result["mean"].get("hd95", float("nan"))
                lines.append(
                    f"  - {modality}: Dice {dice:.3f}, HD95 {hd95:.1f} mm over "
                    f"{result['n_cases']} cases"
                )
        else:
            lines.append("- Test scores: none (no test report of these weights in their run).")
        lines += ["", "Use: `ummkd segment -i SCAN.nii.gz -o OUT/ -m MODEL_FOLDER --modality MOD`"]
        return "\n".join(lines)


def _stored_units(normalization: str) -> str:
    return {"ct": "HU", "mr": "MR signal (arbitrary units, per-scan percentile normalization)"}.get(
        normalization, f"any ({normalization} normalization)"
    )


def fingerprint(cases: Sequence[Case], max_voxels: int = 1_000_000) -> Fingerprint:
    """Measure the spacing, field of view and foreground intensities of training scans."""
    spacings, extents, samples = [], [], []
    rng = np.random.default_rng(0)
    for case in cases:
        image = nib.load(case.image)
        zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
        spacings.append(zooms)
        extents.append(zooms * np.asarray(image.shape[:3]))
        if case.label is not None:
            values = np.asarray(image.dataobj, dtype=np.float32)[
                np.asarray(nib.load(case.label).dataobj) > 0
            ]
            per_case = max(1, max_voxels // len(cases))
            if values.size > per_case:
                values = rng.choice(values, per_case, replace=False)
            samples.append(values)
    pooled = np.concatenate(samples) if samples else np.zeros(1, np.float32)
    return Fingerprint(
        spacing_min=np.min(spacings, 0).round(3).tolist(),
        spacing_max=np.max(spacings, 0).round(3).tolist(),
        extent_min=np.min(extents, 0).round(1).tolist(),
        extent_max=np.max(extents, 0).round(1).tolist(),
        foreground_percentiles=np.percentile(pooled, [0.5, 50, 99.5]).round(2).tolist(),
    )


def input_warnings(
    image: np.ndarray, zooms: Sequence[float], spec: ModalityInput, source: str
) -> list[str]:
    """Say where a scan lies far outside the training fingerprint (empty: it does not)."""
    fp = spec.fingerprint
    warnings = []
    zooms = np.asarray(zooms[:3], dtype=float)
    extent = zooms * np.asarray(image.shape[:3])
    axes = "xyz"
    for k in range(min(3, len(zooms))):
        if not 0.5 * fp.spacing_min[k] <= zooms[k] <= 2.0 * fp.spacing_max[k]:
            warnings.append(
                f"{source}: voxel spacing {zooms[k]:.2f} mm along {axes[k]} is far outside the "
                f"training range {fp.spacing_min[k]:.2f}-{fp.spacing_max[k]:.2f} mm"
            )
        if not 0.5 * fp.extent_min[k] <= extent[k] <= 2.0 * fp.extent_max[k]:
            warnings.append(
                f"{source}: field of view {extent[k]:.0f} mm along {axes[k]} is far outside the "
                f"training range {fp.extent_min[k]:.0f}-{fp.extent_max[k]:.0f} mm"
            )
    sample = image.reshape(-1)[:: max(1, image.size // 100_000)]
    distinct = np.unique(sample)
    if distinct.size <= MAX_LABEL_VALUES and np.all(distinct == np.round(distinct)):
        warnings.append(
            f"{source}: holds only {distinct.size} distinct whole values: a label map or mask, "
            "not a scan?"
        )
    if spec.units == "HU":
        low, median, high = fp.foreground_percentiles
        body = np.median(image[image > low]) if np.any(image > low) else float("nan")
        if not (np.isfinite(body) and low - 200 <= body <= high + 200):
            warnings.append(
                f"{source}: median intensity {body:.0f} is far from the training organs' HU range "
                f"{low:.0f}..{high:.0f} (median {median:.0f}); is the scan in HU?"
            )
    return warnings


def decide_postprocessing(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    class_names: Sequence[str],
) -> list[str]:
    """Classes whose mean Dice over validation cases improves by keeping the largest component.

    Args:
        predictions: Per validation case ``(predicted labels, reference labels, spacing)``.
        class_names: Names by class id (background first).

    Returns:
        The class names for which the largest-component filter raised the mean Dice.
    """
    keep = []
    for class_id, name in enumerate(class_names):
        if class_id == 0:
            continue
        filtered = KeepLargestConnectedComponent(applied_labels=[class_id], independent=True)
        before, after = [], []
        for pred, ref, _ in predictions:
            if not np.any(pred == class_id) and not np.any(ref == class_id):
                continue
            pred_after = np.asarray(filtered(torch.tensor(pred[None]))[0])  # a copy: in place
            before.append(_dice(pred == class_id, ref == class_id))
            after.append(_dice(pred_after == class_id, ref == class_id))
        if before and np.mean(after) > np.mean(before):
            keep.append(name)
    return keep


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def apply_postprocessing(labels: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """Keep only the largest connected component of each of ``class_ids`` (labels ``spatial``)."""
    if not class_ids:
        return labels
    keep = KeepLargestConnectedComponent(applied_labels=list(class_ids), independent=True)
    return torch.as_tensor(keep(labels[None].clone()))[0]


def _load_training_run(
    checkpoint: Path, config: Path | None, data_root: Path | None
) -> tuple[Any, Any, dict[str, Any], Path]:
    """The module of ``checkpoint``, the datamodule of its run's config, the config, run dir."""
    from ummkd.lightning.datamodule import UnpairedDataModule
    from ummkd.lightning.module import CODE_COMMITS_KEY

    if not checkpoint.is_file():
        raise PackageError(f"{checkpoint}: no such checkpoint; give a .ckpt written by ummkd fit")
    run_dir = checkpoint.resolve().parent.parent
    config = config or run_dir / "config.yaml"
    if not config.is_file():
        raise PackageError(
            f"{config}: no training config beside the checkpoint; give the run's config with "
            "--config"
        )
    settings = yaml.safe_load(config.read_text())
    data = settings.get("data") or {}
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PackageError(f"{checkpoint}: not a readable checkpoint ({error})") from error
    if int(state.get("global_step", 0)) < 1:
        raise PackageError(f"{checkpoint}: holds an untrained network (0 steps); refusing")
    hparams = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    module = _build_module(hparams, state["state_dict"], checkpoint)
    keys = ("modalities", "mode", "patch_size", "num_adjacent", "fold", "splits")
    datamodule = UnpairedDataModule(
        root=str(data_root or data["root"]),
        check="off",
        **{k: data[k] for k in (*keys, "orientation", "spacing") if k in data},
    )
    settings = {
        **settings,
        "global_step": int(state["global_step"]),
        "hparams": hparams,
        "training_commits": list(state.get(CODE_COMMITS_KEY, [])),
    }
    return module, datamodule, settings, run_dir


def _test_metrics(run_dir: Path, checkpoint: Path) -> dict[str, Any] | None:
    """The newest native-grid test report of ``checkpoint`` in its run folder, summarised.

    Reports that name another checkpoint are skipped; reports written before reports named
    their checkpoint are used (newest first) and say so.
    """
    reports = sorted(run_dir.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    loaded = [(path, json.loads(path.read_text())) for path in reports]
    target = str(checkpoint.resolve())
    of_checkpoint = [(p, s) for p, s in loaded if s.get("checkpoint") == target]
    unnamed = [(p, s) for p, s in loaded if "checkpoint" not in s]
    if not (of_checkpoint or unnamed):
        return None
    path, summary = (of_checkpoint or unnamed)[-1]
    return {
        "source": str(path.relative_to(run_dir)),
        "checkpoint": summary.get("checkpoint", "not recorded (an older test report)"),
        "inference": summary.get("inference"),
        "grid": summary.get("grid", "preprocessed"),
        "modalities": {
            m: {
                "n_cases": r["n_cases"],
                "mean": r["mean"],
                "per_class": {
                    c: {k: v[k] for k in ("dice", "hd95")} for c, v in r["per_class"].items()
                },
                "case_ids": [c["id"] for c in r.get("cases", [])],
            }
            for m, r in summary["modalities"].items()
        },
    }


def _validation_predictions(module: Any, datamodule: Any, modality: str) -> list[Any]:
    """Native-grid predictions and references of the validation cases of ``modality``."""
    results = []
    transform = datamodule.inference_transform(modality)
    for case in datamodule.spec.cases_for(modality, "val", datamodule.fold):
        image = transform({"image": str(case.image)})["image"]
        with torch.no_grad():
            probs = module.predict_volume(image, modality)
        probs = invert_to_input_space(transform, probs, image)
        label, spacing = datamodule.stored_label(case.label, modality)
        results.append((probs.argmax(0).numpy().reshape(label.shape), label, spacing))
    return results


def export_model(
    checkpoint: Path,
    out: Path,
    *,
    config: Path | None = None,
    data_root: Path | None = None,
    name: str | None = None,
    postprocessing: bool = True,
    as_zip: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the model package of a trained checkpoint.

    Args:
        checkpoint: A checkpoint written by ``ummkd fit``.
        out: The package folder (``.zip`` added with ``as_zip``).
        config: The run's config (default: ``config.yaml`` of the checkpoint's run folder).
        data_root: The training dataset (default: the config's ``data.root``).
        name: Model name (default: the dataset name and the checkpoint's run folder).
        postprocessing: Decide the largest-component filter per class on the validation cases.
        as_zip: Write one zip file instead of a folder.
        overwrite: Replace an existing package.

    Returns:
        The package path.

    Raises:
        PackageError: on an unreadable or untrained checkpoint, a missing config, or an
            existing package without ``overwrite``.
    """
    target = out.with_suffix(".zip") if as_zip else out
    if target.exists() and not overwrite:
        raise PackageError(
            f"{target} exists; pass --overwrite to replace it or choose another --out"
        )
    module, datamodule, settings, run_dir = _load_training_run(checkpoint, config, data_root)
    spec = datamodule.spec
    inputs = {}
    for modality in module.modalities:
        prep = datamodule.preprocessing(modality)
        keep = []
        if postprocessing:
            keep = decide_postprocessing(
                _validation_predictions(module, datamodule, modality), module.class_names
            )
        train_cases = spec.cases_for(modality, "train", datamodule.fold)
        inputs[modality] = ModalityInput(
            units=_stored_units(prep.normalization),
            normalization=prep.normalization,
            window=list(prep.window) if prep.window else None,
            training_cases=len(train_cases),
            fingerprint=fingerprint(train_cases),
            postprocess_largest_component=keep,
        )
    from ummkd.provenance import code_commit

    metadata = ModelMetadata(
        format=FORMAT,
        name=name or f"{spec.name}-{run_dir.parent.name}",
        ummkd_version=ummkd.__version__,
        export_commit=code_commit(),
        training_commits=settings["training_commits"],
        exported=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        labels={n: i for i, n in enumerate(module.class_names)},
        orientation=datamodule.orientation,
        spacing=list(datamodule.spacing) if datamodule.spacing else None,
        spatial_mode=module.spatial_mode,
        num_adjacent=module.num_adjacent,
        inputs=inputs,
        training_data={
            m: f"{spec.name} ({spec.description.split('. ')[0]})" for m in module.modalities
        },
        training_steps=settings["global_step"],
        checkpoint=str(checkpoint),
        test_metrics=_test_metrics(run_dir, checkpoint),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(target.parent, f".{target.name}.tmp-")
    try:
        folder = staging / "package"
        write_json(json.loads(metadata.model_dump_json()), _made(folder / METADATA))
        write_json(settings["hparams"], _made(folder / INFERENCE))
        torch.save(module.state_dict(), _made(folder / WEIGHTS))
        write_text_atomic(_made(folder / README), metadata.readme() + "\n")
        if as_zip:
            archive = shutil.make_archive(str(staging / "package"), "zip", folder)
            Path(archive).replace(target)
        else:
            if target.exists():
                shutil.rmtree(target)
            folder.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _quiet_network_hparam() -> Iterator[None]:
    """Silence Lightning's advice about the ``network`` hyperparameter (it is a config here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute 'network' is an instance")
        yield


def _made(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class ModelPackage:
    """A loaded model package: metadata and the module in eval mode.

    Attributes:
        path: Where it was loaded from.
        metadata: Its ``configs/metadata.json``.
        module: The rebuilt :class:`~ummkd.lightning.module.UMMKDModule` with its weights.
    """

    def __init__(self, path: Path, metadata: ModelMetadata, module: Any) -> None:
        self.path = path
        self.metadata = metadata
        self.module = module


def load_package(path: Path, device: str | torch.device = "cpu") -> ModelPackage:
    """Load a model package folder or zip.

    Raises:
        PackageError: a missing or malformed file, weights that do not load with
            ``weights_only=True`` or do not fit the network.
    """
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path}: no such model package (make one with `ummkd export`)")
    with tempfile.TemporaryDirectory() as unpacked:
        folder = path
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise PackageError(f"{path}: not a model package folder or zip")
            with zipfile.ZipFile(path) as archive:
                archive.extractall(unpacked)
            folder = Path(unpacked)
        for part in (METADATA, INFERENCE, WEIGHTS):
            if not (folder / part).is_file():
                raise PackageError(f"{path}: {part} is missing; not a complete model package")
        try:
            metadata = ModelMetadata.model_validate_json((folder / METADATA).read_text())
        except ValidationError as error:
            raise PackageError(f"{path}: {METADATA} is invalid: {error}") from error
        hparams = json.loads((folder / INFERENCE).read_text())
        try:
            state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        except Exception as error:
            raise PackageError(f"{path}: {WEIGHTS} does not load ({error})") from error
    return ModelPackage(path, metadata, _build_module(hparams, state, path).to(device))


def _build_module(hparams: dict[str, Any], state: dict[str, Any], source: Path) -> Any:
    """The :class:`~ummkd.lightning.module.UMMKDModule` of ``hparams`` with ``state``, in eval mode.

    Raises:
        PackageError: the weights do not fit the network (``source`` names where they came from).
    """
    from lightning.pytorch.cli import instantiate_module

    from ummkd.lightning.module import UMMKDModule

    with _quiet_network_hparam():
        module = instantiate_module(UMMKDModule, hparams)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise PackageError(f"{source}: the weights do not fit the network ({error})") from error
    return module.eval()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ummkd export``."""
    parser = CommandParser(
        prog="ummkd export",
        description="Write a self-contained model package (weights, what the model expects, "
        "what it was trained and tested on) from a training checkpoint.",
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint of `ummkd fit`")
    parser.add_argument("--out", type=Path, required=True, help="package folder (or .zip)")
    parser.add_argument("--config", type=Path, help="the run's config (default: its config.yaml)")
    parser.add_argument("--data-root", type=Path, help="training dataset (default: data.root)")
    parser.add_argument("--name", help="model name")
    parser.add_argument("--zip", action="store_true", help="write one zip file")
    parser.add_argument(
        "--no-postprocessing",
        dest="postprocessing",
        action="store_false",
        help="do not decide the largest-component filter on the validation cases",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ummkd export``; returns the exit code (2: bad input)."""
    args = build_parser().parse_args(argv)
    try:
        path = export_model(
            args.ckpt,
            args.out,
            config=args.config,
            data_root=args.data_root,
            name=args.name,
            postprocessing=args.postprocessing,
            as_zip=args.zip,
            overwrite=args.overwrite,
        )
    except (PackageError, DatasetSpecError) as error:
        print(f"ummkd export: error: {error}", file=sys.stderr)
        return 2
    package = load_package(path)
    print(package.metadata.describe())
    for modality, spec in package.metadata.inputs.items():
        if spec.postprocess_largest_component:
            kept = ", ".join(spec.postprocess_largest_component)
            print(f"  {modality}: largest component kept for {kept} (better on validation)")
    print(f"[ummkd] wrote {path}")
    return 0


__all__ = [
    "ModelMetadata",
    "ModelPackage",
    "PackageError",
    "apply_postprocessing",
    "decide_postprocessing",
    "export_model",
    "input_warnings",
    "load_package",
]
