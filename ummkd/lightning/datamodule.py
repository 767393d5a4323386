"""`UnpairedDataModule`: per-modality datasets combined into one unpaired training stream."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
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
from torch.utils.data import Sampler

from ummkd.data.dataset_spec import Case, DatasetSpec, check_dataset, load_dataset
from ummkd.data.synthetic import make_synthetic_dataset
from ummkd.data.transforms import (
    AugmentationConfig,
    ModalityPreprocessing,
    deterministic_transforms,
    prediction_transforms,
    random_transforms,
)


@dataclass
class SyntheticOptions:
    """How to generate the synthetic phantom dataset when ``root`` does not exist yet.

    Attributes:
        n_ct: Number of CT-like cases.
        n_mr: Number of MR-like cases.
        size: Volume size in voxels.
        seed: Random seed (the data set is deterministic per seed).
        dim: 3 for volumes, 2 for single slices.
    """

    n_ct: int = 16
    n_mr: int = 10
    size: tuple[int, int, int] = (96, 96, 32)
    seed: int = 0
    dim: int = 3


class _Repeated(Sequence):
    """Index a dataset cyclically so that one epoch holds a chosen number of samples.

    Every item is a shallow copy of the cached record with its epoch position added as
    ``"sample_index"`` (collated into the training batches; used to check DDP sharding).
    """

    def __init__(self, data: Sequence, length: int) -> None:
        self.data = data
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        if index >= self.length:
            raise IndexError(index)
        return {**self.data[index % len(self.data)], "sample_index": index}


class _EpochShuffleSampler(Sampler[int]):
    """A random permutation that is a function of ``(seed, epoch)`` only.

    Lightning calls :meth:`set_epoch` at every epoch start (as for its ``DistributedSampler``), so
    an epoch's order does not depend on the global random state, which checkpoints do not hold.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Any:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return iter(torch.randperm(self.length, generator=generator).tolist())


class UnpairedDataModule(pl.LightningDataModule):
    """Unpaired multi-modal data: one loader per modality, combined per training step.

    ``train_dataloader`` returns a :class:`CombinedLoader` in ``max_size_cycle`` mode whose batches
    are ``{"ct": {"image", "label", "sample_index", ...}, "mr": {...}}`` (modalities in fixed
    order), so every step sees one independent mini-batch of every modality. ``batch_size`` is per
    modality and per device: one optimizer step sees ``batch_size x world_size x len(modalities)``
    samples (logged at ``setup("fit")``). Validation and test loaders yield whole
    preprocessed volumes (batch size 1), one loader per modality, tagged with ``"modality"`` and
    ``"id"``; the image carries its affine for surface metrics. ``predict_dataloader`` yields
    unlabeled images of ``predict_modality``.

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
        fold: Fold of ``splits.json`` to train/validate on.
        orientation: Reorient to these axis codes (e.g. ``"RAS"``); ``None`` keeps arrays as stored.
        spacing: Resample to this spacing (mm); ``None`` keeps the native spacing.
        foreground_prob: Probability of sampling a slice/patch that contains foreground.
        augmentation: Random augmentation of every modality (``None`` disables it).
        modality_augmentation: Per-modality overrides of ``augmentation`` (e.g. stronger
            intensity jitter for MR); a modality listed here with ``null`` gets none.
        cache: ``"memory"`` (CacheDataset), ``"disk"`` (PersistentDataset in ``cache_dir``) or
            ``"none"`` for the deterministic preprocessing.
        cache_dir: Directory of the disk cache (default ``<root>/.cache``), one folder per
            modality, split and preprocessing setting; may be shared by the ranks of a DDP job.
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
        synthetic: Generate the synthetic phantom dataset into ``root`` if it does not exist.
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
        orientation: str | None = None,
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
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".cache"
        self.shard_cases = shard_cases
        self.num_workers = num_workers
        self.val_max_cases = val_max_cases
        self.predict_images = predict_images
        self.predict_modality = predict_modality
        self.check = check
        if synthetic is not None and not (self.root / "dataset.json").is_file():
            _synthesize_atomically(self.root, synthetic)
        self.spec: DatasetSpec = load_dataset(self.root)
        available = self.spec.modality_names
        self.modalities = list(modalities) if modalities else list(available)
        unknown = [m for m in self.modalities if m not in available]
        if unknown:
            raise ValueError(
                f"{self.root / 'dataset.json'}: modalities {unknown} requested but the dataset "
                f"has {available}; fix `data.modalities`."
            )
        stray = sorted(set(self.modality_augmentation) - set(self.modalities))
        if stray:
            raise ValueError(
                f"data.modality_augmentation names {stray}, which are not trained modalities "
                f"{self.modalities}."
            )
        if predict_modality is not None and predict_modality not in self.modalities:
            raise ValueError(
                f"predict_modality {predict_modality!r} is not one of the trained modalities "
                f"{self.modalities}."
            )
        self._preprocessing: dict[str, ModalityPreprocessing] = {}
        self._datasets: dict[str, dict[str, Any]] = {"train": {}, "val": {}, "test": {}}
        self._predict_dataset: Dataset | None = None
        self._predict_transform: Compose | None = None
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
    def setup(self, stage: str | None = None) -> None:
        """Validate the dataset and build the datasets needed for ``stage``."""
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
        world_size = self.trainer.world_size if self.trainer is not None else 1
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        return self.batch_size * world_size * len(self.modalities) * accumulate

    def describe_global_batch(self) -> str:
        """One line stating the effective global batch and how it is made up."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        parts = f"batch_size {self.batch_size} x {world_size} device(s) x "
        parts += f"{len(self.modalities)} modalities ({', '.join(self.modalities)})"
        if accumulate > 1:
            parts += f" x {accumulate} accumulated batches"
        return (
            f"global batch: {self.global_batch_size()} samples per optimizer step = {parts}; "
            f"per modality {self.batch_size * world_size * accumulate}"
        )

    def reseed(self, seed: int) -> None:
        """Reseed the random training transforms (sampling and augmentation) of every modality.

        :class:`~ummkd.lightning.module.UMMKDModule` calls this at the start of every training
        epoch with a seed derived from the global seed, the epoch and the rank, so that an epoch's
        samples do not depend on the random state left by earlier epochs and a run resumed from a
        checkpoint draws the same samples as an uninterrupted one. This reaches the transforms of
        this process, i.e. the samples of ``num_workers=0`` loaders; worker processes are seeded
        by MONAI's ``worker_init_fn`` when they start.

        Args:
            seed: Base seed; modality ``i`` uses a seed derived from ``(seed, i)``.
        """
        for i, m in enumerate(self.modalities):
            dataset = self._datasets["train"].get(m)
            if dataset is None:
                continue
            state = np.random.SeedSequence([seed, i]).generate_state(1)[0]
            dataset.transform.set_random_state(seed=int(state))

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
            raise ValueError(
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
            raise ValueError(
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
            folder = f"{modality}_{split}-{self._preprocessing_digest(modality)}"
            return PersistentDataset(records, transform, cache_dir=self.cache_dir / folder)
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
        return Dataset(_Repeated(cached, length), sampler)

    def _eval_dataset(self, modality: str, split: str) -> Dataset:
        return self._cached(
            self._records(modality, split), self._deterministic(modality), modality, split
        )

    def _build_predict_dataset(self) -> Dataset:
        if not self.predict_images or self.predict_modality is None:
            raise ValueError(
                "predict needs `--data.predict_images 'dir/*.nii.gz'` and "
                "`--data.predict_modality <modality>`."
            )
        paths = _expand_images(self.predict_images)
        records = [
            {"image": str(p), "path": str(p), "modality": self.predict_modality} for p in paths
        ]
        return Dataset(records, self.predict_transform())

    def predict_transform(self) -> Compose:
        """The invertible preprocessing applied to prediction inputs.

        Built once, so that :meth:`monai.transforms.Compose.inverse` recognises the transform
        instances it applied.
        """
        if self._predict_transform is None:
            self._predict_transform = prediction_transforms(
                self.preprocessing(self.predict_modality or self.modalities[0]),
                orientation=self.orientation,
                spacing=self.spacing,
            )
        return self._predict_transform

    # ------------------------------------------------------------------ loaders
    def _loader(
        self,
        dataset: Dataset,
        *,
        shuffle: bool,
        batch_size: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,
        )

    def _train_sampling(
        self, dataset: Dataset, index: int
    ) -> tuple[Sampler | None, torch.Generator]:
        """Shuffling of one training loader that does not depend on the global random state.

        With a global seed (``seed_everything``), a single process shuffles with a sampler seeded
        by ``(seed, modality, epoch)``; under DDP Lightning injects a ``DistributedSampler``
        (seeded by the global seed and the epoch). The loader gets its own generator, so creating
        its iterator (which draws the workers' base seed) does not consume the global random
        stream (dropout) either: an epoch's randomness is then independent of when Lightning
        creates the iterator, which differs between a resumed and an uninterrupted run.
        """
        seed = os.environ.get("PL_GLOBAL_SEED")
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if seed is None:
            generator_seed = int(torch.empty((), dtype=torch.int64).random_().item())
            return None, torch.Generator().manual_seed(generator_seed)
        loader_seed = int(seed) % 2**32 + 7919 * index
        generator = torch.Generator().manual_seed(loader_seed)
        if world_size > 1:
            return None, generator
        return _EpochShuffleSampler(len(dataset), seed=loader_seed), generator

    def train_dataloader(self) -> CombinedLoader:
        """One shuffled loader per modality, combined in ``max_size_cycle`` mode."""
        loaders = {}
        for i, m in enumerate(self.modalities):
            dataset = self._datasets["train"][m]
            sampler, generator = self._train_sampling(dataset, i)
            loaders[m] = self._loader(
                dataset,
                shuffle=True,
                batch_size=self.batch_size,
                sampler=sampler,
                generator=generator,
            )
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
            raise FileNotFoundError(f"predict_images: no file matches {pattern!r}")
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
        raise ValueError("cannot derive a CT window: no labeled foreground in the training cases")
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
