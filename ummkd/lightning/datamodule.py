"""`UnpairedDataModule`: per-modality datasets combined into one unpaired training stream."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

from ummkd.data.dataset_spec import (
    Case,
    DatasetSpec,
    check_dataset,
    load_dataset,
    read_splits,
    remap_labels,
)
from ummkd.data.sampling import EpochSampler, SeededSamples
from ummkd.data.schema import parse_content
from ummkd.data.synthetic import make_synthetic_dataset, synthetic_description
from ummkd.data.transforms import (
    AugmentationConfig,
    ModalityPreprocessing,
    deterministic_transforms,
    invert_to_input_space,
    prediction_transforms,
    random_transforms,
)
from ummkd.errors import DataError, UsageError
from ummkd.evaluation.commands import load_label_map

CACHE_DIR_ENV = "UMMKD_CACHE_DIR"


@dataclass
class SyntheticOptions:
    """Whether and how to generate the synthetic phantom dataset into a ``root`` that is absent.

    Attributes:
        generate: Generate the phantoms when ``root`` does not exist at all (off by default,
            so a mistyped ``--data.root`` is an error, not a new dataset).
        n_ct: Number of CT-like cases.
        n_mr: Number of MR-like cases.
        size: Volume size in voxels.
        seed: Random seed (the data set is deterministic per seed).
        dim: 3 for volumes, 2 for single slices.
    """

    generate: bool = False
    n_ct: int = 16
    n_mr: int = 10
    size: tuple[int, int, int] = (96, 96, 32)
    seed: int = 0
    dim: int = 3


class _TrainingLoader(DataLoader):
    """A training loader that Lightning checkpoints and resumes inside an epoch.

    Lightning saves the ``state_dict`` of every train loader that has one with the loops'
    state of a checkpoint and, on a resume inside an epoch, passes it to ``load_state_dict``
    before it iterates. The state is the epoch and the position in it (samples of this rank's
    share already trained on; equal on all ranks, so rank 0's checkpoint serves every rank);
    the first iterator of that epoch starts there (:meth:`EpochSampler.start_at`).

    The real iterator (and its worker processes) is created at the first ``next()``: Lightning
    calls ``iter()`` in ``FitLoop.setup_data`` before ``set_epoch``, and on a resume from an
    end-of-epoch checkpoint it loads no loader state, so a multi-process iterator created then
    would draw the indices of the sampler's initial epoch instead of the resumed one.
    """

    _resume: tuple[int, int] | None = None  # (epoch, position) loaded from a checkpoint
    _epoch = 0  # epoch and position of the current iterator
    _position = 0

    def __iter__(self) -> Iterator[Any]:
        return _DeferredIterator(self)

    def state_dict(self) -> dict[str, int]:
        """The epoch and the samples of this rank's share of it already yielded."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Start the next iteration of ``state_dict["epoch"]`` at its saved position."""
        self._resume = (int(state_dict["epoch"]), int(state_dict["position"]))

    def _start(self) -> Iterator[Any]:
        """The real iterator of the sampler's current epoch, from the resumed position."""
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        position = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            position = self._resume[1]
        self._resume = None
        sampler.start_at(position)
        self._epoch, self._position = sampler.epoch, position
        return DataLoader.__iter__(self)


class _DeferredIterator:
    """Iterator of :class:`_TrainingLoader` that builds the real one on the first ``next()``."""

    def __init__(self, loader: _TrainingLoader) -> None:
        self.loader = loader
        self.iterator: Iterator[Any] | None = None

    def __iter__(self) -> _DeferredIterator:
        return self

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start()
        batch = next(self.iterator)
        self.loader._position += self.loader.batch_size or 1
        return batch


class UnpairedDataModule(pl.LightningDataModule):
    """Unpaired multi-modal data: one loader per modality, combined per training step.

    ``train_dataloader`` returns a :class:`CombinedLoader` in ``max_size_cycle`` mode whose batches
    are ``{"ct": {"image", "label", "sample_index", ...}, "mr": {...}}`` (modalities in fixed
    order), so every step sees one independent mini-batch of every modality. ``batch_size`` is per
    modality and per device: one optimizer step sees ``batch_size x world_size x len(modalities)``
    samples (logged at ``setup("fit")``). Validation and test loaders yield whole
    preprocessed volumes (batch size 1), one loader per modality, tagged with ``"modality"`` and
    ``"id"``; the image carries its affine for surface metrics. Validation volumes are
    preprocessed like training volumes (cropped to the body); test volumes go through the
    prediction preprocessing (:meth:`inference_transform`), so that the test predictions can be
    mapped back to each case's stored grid (:meth:`to_input_space`) and scored against the label
    file as stored (:meth:`stored_label`). ``predict_dataloader`` yields unlabeled images of
    ``predict_modality``.

    Args:
        root: Dataset root holding ``dataset.json`` (or an nnU-Net / Decathlon dataset, see
            :func:`ummkd.data.dataset_spec.load_dataset`).
        modalities: Modalities to train on (default: all in the dataset, in its order). One
            modality gives single-modality training.
        mode: ``"2d"`` (slice stacks, the paper's 2D setting) or ``"3d"`` (patches).
        patch_size: Training sample size: ``(H, W)`` in 2D, ``(H, W, D)`` in 3D.
        num_adjacent: 2D only: adjacent slices stacked as input channels (3 in the paper).
        batch_size: Samples per modality, per device, per step (the paper: 8 + 8 in 2D).
        steps_per_epoch: Optimizer steps that make one epoch.
        fold: Fold of the splits file to train/validate on.
        splits: Splits file to use instead of the one ``dataset.json`` names (a path relative to
            ``root``, or absolute), e.g. the cross-validation folds written by ``ummkd reproduce``.
        orientation: Canonical orientation every image is reoriented to before anything else
            (axis codes, default ``"RAS"``; truncated to the dataset's dimensions). Predictions
            are mapped back to each input's own orientation. ``None`` keeps arrays as stored
            (then the network sees a mirrored body for a scan stored in another voxel order).
        spacing: Resample to this spacing (mm); ``None`` keeps the native spacing.
        foreground_prob: Probability of sampling a slice/patch that contains foreground.
        augmentation: Random augmentation of every modality (``None`` disables it).
        modality_augmentation: Per-modality overrides of ``augmentation`` (e.g. stronger
            intensity jitter for MR); a modality listed here with ``null`` gets none.
        cache: ``"memory"`` (CacheDataset), ``"disk"`` (PersistentDataset in ``cache_dir``) or
            ``"none"`` for the deterministic preprocessing.
        cache_dir: Directory of the disk cache (default ``$UMMKD_CACHE_DIR``, else
            ``~/.cache/ummkd``: never inside the dataset), one folder per modality, split and
            preprocessing setting; may be shared by the ranks of a DDP job and by runs.
        shard_cases: Under DDP, each rank loads, caches and samples only its share of the
            training cases (``cases[rank::world_size]`` per modality), and caches validation /
            test volumes only when its sampler first asks for them, so memory per rank shrinks
            with the number of devices instead of every rank holding the whole dataset. The
            global batch still mixes all ranks' cases; each rank's share stays fixed for the
            run. Needs at least ``world_size`` training cases per modality.
        num_workers: Loader workers per modality loader.
        val_max_cases: Validate on at most this many cases per modality (``None``: all).
        predict_images: Glob pattern(s) or paths of images to predict.
        predict_modality: Modality of ``predict_images``.
        synthetic: Generate the synthetic phantom dataset into ``root`` if ``root`` does not
            exist and ``synthetic.generate`` is set (see :class:`SyntheticOptions`), in
            ``prepare_data``; the description (classes, modalities) is known before.
        check: Dataset validation in ``setup``: ``"deep"`` (reads every file), ``"shallow"``
            (existence and schema) or ``"off"``.
    """

    def __init__(
        self,
        root: str,
        modalities: list[str] | None = None,
        mode: Literal["2d", "3d"] = "2d",
        patch_size: list[int] | None = None,
        num_adjacent: int = 3,
        batch_size: int = 8,
        steps_per_epoch: int = 100,
        fold: int = 0,
        splits: str | None = None,
        orientation: str | None = "RAS",
        spacing: list[float] | None = None,
        foreground_prob: float = 0.67,
        augmentation: AugmentationConfig | None = None,
        modality_augmentation: dict[str, AugmentationConfig | None] | None = None,
        cache: Literal["memory", "disk", "none"] = "memory",
        cache_dir: str | None = None,
        shard_cases: bool = False,
        num_workers: int = 2,
        val_max_cases: int | None = None,
        predict_images: str | list[str] | None = None,
        predict_modality: str | None = None,
        synthetic: SyntheticOptions | None = None,
        check: Literal["deep", "shallow", "off"] = "deep",
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.mode = mode
        self.patch_size = list(patch_size or ([256, 256] if mode == "2d" else [128, 128, 16]))
        self.num_adjacent = num_adjacent if mode == "2d" else 1
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.fold = fold
        self.orientation = orientation
        self.spacing = spacing
        self.foreground_prob = foreground_prob
        self.augmentation = augmentation
        self.modality_augmentation = dict(modality_augmentation or {})
        self.cache = cache
        self.cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
        self.shard_cases = shard_cases
        self.num_workers = num_workers
        self.val_max_cases = val_max_cases
        self.predict_images = predict_images
        self.predict_modality = predict_modality
        self.check = check
        self.splits = splits
        # phantoms still to be generated (in prepare_data); described already for the model links
        self._synthetic = None
        if not self.root.exists():
            if synthetic is None or not synthetic.generate:
                raise DataError(
                    f"--data.root {self.root} does not exist; check the path, or make a dataset "
                    "there with `ummkd data synth --out DIR` or `ummkd data import ...` (or set "
                    "--data.synthetic.generate true to generate the demo phantoms)"
                )
            self._synthetic = synthetic
            content, planned_splits = synthetic_description(
                n_ct=synthetic.n_ct, n_mr=synthetic.n_mr, seed=synthetic.seed, dim=synthetic.dim
            )
            description = self.root / "dataset.json"
            self.spec: DatasetSpec = parse_content(
                content,
                planned_splits,
                root=self.root,
                source=description,
                splits_source=description,
            )
        else:
            self.spec = self._read_spec()
        if self.orientation is not None:
            self.orientation = self.orientation[: self.spec.dim]
        available = self.spec.modality_names
        self.modalities = list(modalities) if modalities else list(available)
        unknown = [m for m in self.modalities if m not in available]
        if unknown:
            raise UsageError(
                f"{self.root / 'dataset.json'}: modalities {unknown} requested but the dataset "
                f"has {available}; fix `data.modalities`."
            )
        stray = sorted(set(self.modality_augmentation) - set(self.modalities))
        if stray:
            raise UsageError(
                f"data.modality_augmentation names {stray}, which are not trained modalities "
                f"{self.modalities}."
            )
        if predict_modality is not None and predict_modality not in self.modalities:
            raise UsageError(
                f"predict_modality {predict_modality!r} is not one of the trained modalities "
                f"{self.modalities}."
            )
        self._preprocessing: dict[str, ModalityPreprocessing] = {}
        self._datasets: dict[str, dict[str, Any]] = {"train": {}, "val": {}, "test": {}}
        self._predict_dataset: Dataset | None = None
        self._inference_transforms: dict[str, Compose] = {}
        self._checked = False

    # ------------------------------------------------------------------ properties (linked)
    @property
    def num_classes(self) -> int:
        """Number of shared classes, background included."""
        return self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by id."""
        return list(self.spec.class_names)

    @property
    def in_channels(self) -> int:
        """Input channels of the network: adjacent slices in 2D, 1 in 3D."""
        return self.num_adjacent

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """Generate the synthetic phantoms into ``root`` when asked and ``root`` is absent."""
        if self._synthetic is not None and not self.root.exists():
            _synthesize_atomically(self.root, self._synthetic)

    def _read_spec(self) -> DatasetSpec:
        """The dataset description under ``root``, with the ``splits`` file when one is given."""
        spec = load_dataset(self.root)
        if self.splits is None:
            return spec
        path = Path(self.splits) if Path(self.splits).is_absolute() else self.root / self.splits
        return dataclasses.replace(spec, splits=read_splits(path))

    def setup(self, stage: str | None = None) -> None:
        """Validate the dataset and build the datasets needed for ``stage``."""
        if self._synthetic is not None:
            self.prepare_data()  # a no-op after the trainer's own call
            self.spec = self._read_spec()
            self._synthetic = None
        if not self._checked and self.check != "off":
            expected_dim = 3 if self.mode == "3d" else None
            check_dataset(self.spec, deep=self.check == "deep", expected_dim=expected_dim)
            self._checked = True
        if stage in ("fit", None):
            for m in self.modalities:
                self._datasets["train"][m] = self._train_dataset(m)
            rank_zero_info(f"[ummkd] {self.describe_global_batch()}")
        if stage in ("fit", "validate", None):
            for m in self.modalities:
                self._datasets["val"][m] = self._eval_dataset(m, "val")
        if stage in ("test", None):
            for m in self.modalities:
                self._datasets["test"][m] = self._eval_dataset(m, "test")
        if stage == "predict":
            self._predict_dataset = self._build_predict_dataset()

    def global_batch_size(self) -> int:
        """Training samples per optimizer step over all ranks and modalities.

        ``batch_size x world_size x len(modalities) x accumulate_grad_batches`` (world size and
        accumulation from the attached trainer, 1 without one).
        """
        world_size = self._world()[1]
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        return self.batch_size * world_size * len(self.modalities) * accumulate

    def describe_global_batch(self) -> str:
        """One line stating the effective global batch and how it is made up."""
        world_size = self._world()[1]
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        parts = f"batch_size {self.batch_size} x {world_size} device(s) x "
        parts += f"{len(self.modalities)} modalities ({', '.join(self.modalities)})"
        if accumulate > 1:
            parts += f" x {accumulate} accumulated batches"
        return (
            f"global batch: {self.global_batch_size()} samples per optimizer step = {parts}; "
            f"per modality {self.batch_size * world_size * accumulate}"
        )

    def preprocessing(self, modality: str) -> ModalityPreprocessing:
        """Deterministic preprocessing settings of ``modality`` (CT window resolved)."""
        if modality not in self._preprocessing:
            spec = self.spec.modalities[modality]
            window = tuple(spec.window) if spec.window else None
            if spec.normalization == "ct" and window is None:
                window = _foreground_percentiles(self.spec.cases_for(modality, "train", self.fold))
                rank_zero_info(f"[ummkd] {modality}: CT window from training foreground {window}")
            self._preprocessing[modality] = ModalityPreprocessing(
                normalization=spec.normalization,
                window=window,
                label_map=spec.label_map,
                num_classes=self.num_classes,
            )
        return self._preprocessing[modality]

    def _records(self, modality: str, split: str) -> list[dict[str, Any]]:
        cases = self.spec.cases_for(modality, split, self.fold)
        if split == "val" and self.val_max_cases is not None:
            cases = cases[: self.val_max_cases]
        if not cases:
            raise DataError(
                f"{self.root}: no {modality!r} cases in split {split!r} (fold {self.fold}); "
                "check splits.json."
            )
        return [_record(c) for c in cases]

    def _world(self) -> tuple[int, int]:
        """``(rank, world_size)`` of this process (``(0, 1)`` without a trainer)."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _rank_share(self, records: list[dict[str, Any]], modality: str) -> list[dict[str, Any]]:
        """This rank's training cases when ``shard_cases`` is on under DDP, else all of them."""
        rank, world_size = self._world()
        if not self.shard_cases or world_size == 1:
            return records
        if len(records) < world_size:
            raise UsageError(
                f"data.shard_cases: {len(records)} {modality!r} training case(s) cannot be "
                f"shared by {world_size} ranks; turn shard_cases off or use fewer devices."
            )
        return records[rank::world_size]

    def _cached(
        self, records: list[dict[str, Any]], transform: Compose, modality: str, split: str
    ) -> Dataset:
        if self.cache == "memory":
            # Sharded evaluation: each rank's sampler reads only its share of the volumes, so
            # cache them on first use instead of preprocessing all of them on every rank.
            lazy = split != "train" and self.shard_cases and self._world()[1] > 1
            return CacheDataset(
                records,
                transform,
                cache_rate=1.0,
                num_workers=None,
                progress=False,
                runtime_cache=lazy,
            )
        if self.cache == "disk":
            # PersistentDataset keys its files by the record only, so the folder name carries
            # the preprocessing: a shared cache_dir never serves volumes made with other settings.
            # The cached volumes keep their metadata (affine, applied transforms): track_meta
            # stores MetaTensors, which only load with weights_only=False (ummkd's own files).
            folder = f"{modality}_{split}-{self._preprocessing_digest(modality)}"
            return PersistentDataset(
                records,
                transform,
                cache_dir=self.cache_dir / folder,
                track_meta=True,
                weights_only=False,
            )
        return Dataset(records, transform)

    def _preprocessing_digest(self, modality: str) -> str:
        settings = {
            "preprocessing": dataclasses.asdict(self.preprocessing(modality)),
            "orientation": self.orientation,
            "spacing": self.spacing,
        }
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def _deterministic(self, modality: str) -> Compose:
        return deterministic_transforms(
            self.preprocessing(modality), orientation=self.orientation, spacing=self.spacing
        )

    def _train_dataset(self, modality: str) -> Dataset:
        records = self._rank_share(self._records(modality, "train"), modality)
        cached = self._cached(records, self._deterministic(modality), modality, "train")
        world_size = self._world()[1]
        length = self.steps_per_epoch * self.batch_size * world_size
        sampler = random_transforms(
            self.mode,
            patch_size=self.patch_size,
            num_adjacent=self.num_adjacent,
            foreground_prob=self.foreground_prob,
            augmentation=self.modality_augmentation.get(modality, self.augmentation),
        )
        seed = _global_seed()
        stream = self.modalities.index(modality)
        if seed is not None and self.shard_cases:
            stream += len(self.modalities) * self._world()[0]  # each rank its own cases
        return SeededSamples(cached, length, sampler, seed=seed, stream=stream)

    def _eval_dataset(self, modality: str, split: str) -> Dataset:
        if split == "test":  # scored on the stored grid: the invertible inference preprocessing
            return Dataset(self._records(modality, split), self.inference_transform(modality))
        return self._cached(
            self._records(modality, split), self._deterministic(modality), modality, split
        )

    def _build_predict_dataset(self) -> Dataset:
        if not self.predict_images or self.predict_modality is None:
            raise UsageError(
                "predict needs `--data.predict_images 'dir/*.nii.gz'` and "
                "`--data.predict_modality <modality>`."
            )
        paths = _expand_images(self.predict_images)
        records = [
            {"image": str(p), "path": str(p), "modality": self.predict_modality} for p in paths
        ]
        return Dataset(records, self.predict_transform())

    def predict_transform(self) -> Compose:
        """The invertible preprocessing applied to prediction inputs (``predict_modality``)."""
        return self.inference_transform(self.predict_modality or self.modalities[0])

    def inference_transform(self, modality: str) -> Compose:
        """The invertible preprocessing of whole images of ``modality`` (predict and test).

        Built once per modality, so that :meth:`monai.transforms.Compose.inverse` recognises the
        transform instances it applied.
        """
        if modality not in self._inference_transforms:
            self._inference_transforms[modality] = prediction_transforms(
                self.preprocessing(modality), orientation=self.orientation, spacing=self.spacing
            )
        return self._inference_transforms[modality]

    def to_input_space(self, probs: torch.Tensor, image: Any, modality: str) -> torch.Tensor:
        """Map probabilities ``(C, *spatial)`` of a preprocessed image back to its stored grid.

        Args:
            probs: Class probabilities on the preprocessed grid.
            image: The preprocessed image (a ``MetaTensor`` carrying its applied transforms).
            modality: The image's modality (selects the transform instance to invert).

        Returns:
            Probabilities on the grid of the file the image was read from.
        """
        return invert_to_input_space(self.inference_transform(modality), probs, image)

    def stored_label(self, path: str | Path, modality: str) -> tuple[np.ndarray, tuple[float, ...]]:
        """A label file as stored, in the shared label space, with its voxel spacing (mm).

        Raises:
            EvaluationError: if the file is not a readable 2D/3D integer label map.
        """
        labels, _, spacing = load_label_map(Path(path))
        label_map = self.preprocessing(modality).label_map
        return remap_labels(labels, label_map, self.num_classes), spacing

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> CombinedLoader:
        """One shuffled loader per modality, combined in ``max_size_cycle`` mode.

        With a global seed (``seed_everything``) every loader uses an :class:`EpochSampler`
        (order a function of the seed, the modality and the epoch; one share per DDP rank) and
        the samples are seeded per item (:class:`SeededSamples`): an epoch's batches do not
        depend on the random state, the worker count or on when Lightning creates the
        iterator. The loaders are resumable (:class:`_TrainingLoader`): a run resumed from a
        checkpoint, also one in the middle of an epoch, continues with exactly the batches of
        the uninterrupted run. Without a seed, loaders shuffle from fresh entropy (under DDP
        Lightning injects its ``DistributedSampler``) and are not resumable inside an epoch.
        """
        seed = _global_seed()
        rank, world_size = self._world()
        loaders: dict[str, DataLoader] = {}
        for i, m in enumerate(self.modalities):
            dataset = self._datasets["train"][m]
            options: dict[str, Any] = {
                "batch_size": self.batch_size,
                "num_workers": self.num_workers,
                "persistent_workers": self.num_workers > 0,
                "drop_last": True,
            }
            if seed is None:
                entropy = int(torch.empty((), dtype=torch.int64).random_().item())
                generator = torch.Generator().manual_seed(entropy)
                loaders[m] = DataLoader(dataset, shuffle=True, generator=generator, **options)
                continue
            loader_seed = seed + 7919 * i
            sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, seed=loader_seed)
            # The loader's own generator (workers' base seed) keeps iterator creation from
            # consuming the global random stream that drives dropout.
            generator = torch.Generator().manual_seed(loader_seed)
            loaders[m] = _TrainingLoader(dataset, sampler=sampler, generator=generator, **options)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        return [
            DataLoader(self._datasets[split][m], batch_size=1, shuffle=False, num_workers=0)
            for m in self.modalities
        ]

    def val_dataloader(self) -> list[DataLoader]:
        """Whole validation volumes, one loader per modality (in ``modalities`` order)."""
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        """Whole test volumes, one loader per modality (in ``modalities`` order)."""
        return self._eval_loaders("test")

    def predict_dataloader(self) -> DataLoader:
        """Unlabeled images of ``predict_modality``, one per batch."""
        assert self._predict_dataset is not None
        return DataLoader(self._predict_dataset, batch_size=1, shuffle=False, num_workers=0)


def _record(case: Case) -> dict[str, Any]:
    record: dict[str, Any] = {"image": str(case.image), "id": case.id, "modality": case.modality}
    if case.label is not None:
        record["label"] = str(case.label)
    return record


def _expand_images(patterns: Sequence[str] | str) -> list[Path]:
    """Expand glob patterns / paths into a sorted, de-duplicated list of existing files."""
    if isinstance(patterns, str):
        patterns = [patterns]
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise UsageError(f"--data.predict_images: no file matches {pattern!r}")
        found.extend(Path(m) for m in matches)
    return list(dict.fromkeys(found))


def _foreground_percentiles(
    cases: Sequence[Case], lower: float = 0.5, upper: float = 99.5, max_voxels: int = 2_000_000
) -> tuple[float, float]:
    """nnU-Net-style CT window: percentiles of intensities inside labeled foreground voxels."""
    rng = np.random.default_rng(0)
    samples = []
    per_case = max(1, max_voxels // max(1, len(cases)))
    for case in cases:
        if case.label is None:
            continue
        image = np.asarray(nib.load(case.image).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(case.label).dataobj)
        values = image[label > 0]
        if values.size > per_case:
            values = rng.choice(values, per_case, replace=False)
        samples.append(values)
    if not samples:
        raise DataError("cannot derive a CT window: no labeled foreground in the training cases")
    allv = np.concatenate(samples)
    return float(np.percentile(allv, lower)), float(np.percentile(allv, upper))


def _synthesize_atomically(root: Path, options: SyntheticOptions) -> None:
    """Generate the synthetic dataset into ``root`` (safe when several ranks race to do it)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        make_synthetic_dataset(
            tmp / "data",
            n_ct=options.n_ct,
            n_mr=options.n_mr,
            size=tuple(options.size),
            seed=options.seed,
            dim=options.dim,
        )
        try:
            os.rename(tmp / "data", root)
            rank_zero_info(f"[ummkd] generated synthetic phantoms in {root}")
        except OSError:
            if not (root / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache_dir() -> Path:
    """Where ``cache: disk`` keeps volumes: ``$UMMKD_CACHE_DIR``, else ``~/.cache/ummkd``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "ummkd")


def _global_seed() -> int | None:
    """The global seed set by ``seed_everything`` (``PL_GLOBAL_SEED``), or ``None``."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return None if seed is None else int(seed) % 2**32
