"""Tests of `UnpairedDataModule` on the tiny synthetic dataset (no Trainer run)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from monai.data import MetaTensor

from ummkd.data.dataset_spec import DatasetSpecError
from ummkd.lightning.datamodule import SyntheticOptions, UnpairedDataModule

NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _dm(root: Path, **kwargs) -> UnpairedDataModule:
    options = {
        "patch_size": [48, 48],
        "batch_size": 2,
        "steps_per_epoch": 2,
        "num_workers": 0,
        "check": "off",
    }
    options.update(kwargs)
    return UnpairedDataModule(str(root), **options)


def _first_train_batch(dm: UnpairedDataModule) -> dict:
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    return batch


def test_train_batch_structure_2d(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, batch_size=3)
    assert dm.num_classes == NUM_CLASSES and dm.in_channels == 3
    batch = _first_train_batch(dm)
    assert list(batch) == ["ct", "mr"]
    for m, sample in batch.items():
        image, label = sample["image"], sample["label"]
        assert image.shape == (3, 3, 48, 48) and image.dtype == torch.float32
        assert label.shape == (3, 1, 48, 48) and label.dtype == torch.long
        assert int(label.min()) >= 0 and int(label.max()) < NUM_CLASSES
        assert torch.isfinite(image).all()
        assert sample["modality"] == [m] * 3
        indices = sample["sample_index"].tolist()  # positions in the epoch: distinct
        assert len(set(indices)) == 3 and all(0 <= i < 2 * 3 for i in indices)
    # one epoch = steps_per_epoch batches (per modality, per device)
    loaders = dm.train_dataloader().iterables
    assert [len(loaders[m]) for m in ("ct", "mr")] == [dm.steps_per_epoch] * 2


def test_train_batches_3d_patches(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, mode="3d", patch_size=[32, 32, 8], batch_size=2)
    assert dm.in_channels == 1
    batch = _first_train_batch(dm)
    for sample in batch.values():
        assert sample["image"].shape == (2, 1, 32, 32, 8)
        assert sample["image"].dtype == torch.float32
        assert sample["label"].shape == (2, 1, 32, 32, 8)
        assert sample["label"].dtype == torch.long
        assert int(sample["label"].max()) < NUM_CLASSES


def test_eval_batches_carry_modality_id_and_affine(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset)
    dm.setup("fit")
    dm.setup("test")
    for split, loaders in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        assert len(loaders) == 2
        for modality, loader in zip(["ct", "mr"], loaders, strict=True):
            batches = list(loader)
            expected = [c.id for c in dm.spec.cases_for(modality, split)]
            assert [b["id"][0] for b in batches] == expected
            for b in batches:
                assert b["modality"] == [modality]
                image, label = b["image"], b["label"]
                assert isinstance(image, MetaTensor) and image.ndim == 5
                assert image.shape[:2] == (1, 1)
                if split == "test":  # scored against the label file as stored
                    assert label == [str(dm.spec.cases_for(modality, split)[0].label)]
                else:
                    assert label.shape == image.shape
                affine = image.affine
                assert affine.shape[-2:] == (4, 4)
                assert torch.linalg.det(affine.reshape(-1, 4, 4)[0, :3, :3]).abs() > 0


def test_batch_size_is_per_modality(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, batch_size=4)
    batch = _first_train_batch(dm)
    assert [len(batch[m]["image"]) for m in ("ct", "mr")] == [4, 4]
    assert dm.global_batch_size() == 8
    assert "global batch: 8 samples per optimizer step" in dm.describe_global_batch()


def test_global_batch_is_logged_at_fit_setup(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dm = _dm(tiny_dataset, batch_size=3)
    dm.trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert dm.global_batch_size() == 3 * 1 * 2 * 2
    lines = [r.getMessage() for r in caplog.records if "global batch" in r.getMessage()]
    assert lines and "12 samples per optimizer step" in lines[0]
    assert "batch_size 3 x 1 device(s) x 2 modalities (ct, mr) x 2 accumulated" in lines[0]


def test_single_modality(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, modalities=["mr"])
    batch = _first_train_batch(dm)
    assert list(batch) == ["mr"]
    assert len(dm.val_dataloader()) == 1
    assert next(iter(dm.val_dataloader()[0]))["modality"] == ["mr"]


def _copy_with_splits(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    splits = json.loads((dst / "splits.json").read_text())
    edit(splits)
    (dst / "splits.json").write_text(json.dumps(splits))
    return dst


def test_missing_split_is_a_clear_error(tiny_dataset: Path, tmp_path: Path) -> None:
    def drop_mr_val(splits: dict) -> None:
        splits["folds"][0]["val"] = [c for c in splits["folds"][0]["val"] if c.startswith("ct")]

    root = _copy_with_splits(tiny_dataset, tmp_path / "no_mr_val", drop_mr_val)
    dm = _dm(root)
    with pytest.raises(ValueError, match=r"no 'mr' cases in split 'val' \(fold 0\)"):
        dm.setup("fit")
    # a fold that does not exist
    with pytest.raises(DatasetSpecError, match="fold"):
        _dm(root, fold=3).setup("fit")


def test_disk_cache_gives_the_same_samples_as_memory(tiny_dataset: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    disk = _dm(tiny_dataset, cache="disk", cache_dir=str(cache_dir))
    memory = _dm(tiny_dataset, cache="memory")
    for dm in (disk, memory):
        dm.setup("validate")
    a = next(iter(disk.val_dataloader()[1]))
    b = next(iter(memory.val_dataloader()[1]))
    assert a["id"] == b["id"]
    torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())
    assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
    assert list(cache_dir.glob("mr_val-*/*.pt")), "disk cache files must be written"
    # training batches from the disk cache
    batch = _first_train_batch(disk)
    assert batch["ct"]["image"].shape == (2, 3, 48, 48)
    assert list(cache_dir.glob("ct_train-*/*.pt"))


def test_foreground_oversampling(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, foreground_prob=1.0, batch_size=8, steps_per_epoch=2)
    dm.setup("fit")
    for batch, _, _ in dm.train_dataloader():
        for sample in batch.values():
            has_fg = (sample["label"] > 0).flatten(1).any(1)
            assert has_fg.all(), f"slices without foreground: {sample['slice_index'].tolist()}"
    # without oversampling some of the 12 slices per case are background only
    dm0 = _dm(tiny_dataset, foreground_prob=0.0, batch_size=8, steps_per_epoch=4)
    dm0.setup("fit")
    fractions = [
        float((s["label"] > 0).flatten(1).any(1).float().mean())
        for batch, _, _ in dm0.train_dataloader()
        for s in batch.values()
    ]
    assert min(fractions) < 1.0


def _epoch_batches(dm: UnpairedDataModule, epoch: int) -> list[dict]:
    loader = dm.train_dataloader()
    for iterable in loader.iterables.values():
        iterable.sampler.set_epoch(epoch)
    return [batch for batch, _, _ in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_seeded_samples_do_not_depend_on_workers_or_random_state(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, num_workers: int
) -> None:
    """With a global seed an epoch's batches are a function of (seed, epoch) only."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "123")
    reference = _dm(tiny_dataset, foreground_prob=0.5)
    reference.setup("fit")
    other = _dm(tiny_dataset, foreground_prob=0.5, num_workers=num_workers)
    other.setup("fit")
    torch.manual_seed(0)
    first = _epoch_batches(reference, epoch=1)
    torch.manual_seed(99)  # the global random state must not matter
    _epoch_batches(other, epoch=0)  # nor what was drawn before
    again = _epoch_batches(other, epoch=1)
    epoch0 = _epoch_batches(reference, epoch=0)
    assert len(first) == len(again) == reference.steps_per_epoch
    for a, b, c in zip(first, again, epoch0, strict=True):
        for m in ("ct", "mr"):
            assert torch.equal(a[m]["sample_index"], b[m]["sample_index"])
            assert torch.equal(a[m]["slice_index"], b[m]["slice_index"])
            torch.testing.assert_close(a[m]["image"], b[m]["image"])
            assert not torch.equal(a[m]["image"], c[m]["image"]), "epochs must differ"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_resumes_inside_an_epoch(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, num_workers: int
) -> None:
    """The loaders' ``state_dict`` after k batches, loaded into fresh loaders (as Lightning
    does on a resume), gives exactly the epoch's remaining batches."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    dm = _dm(tiny_dataset, steps_per_epoch=3, num_workers=num_workers)
    dm.setup("fit")
    full = _epoch_batches(dm, epoch=2)
    loader = dm.train_dataloader()
    for iterable in loader.iterables.values():
        iterable.sampler.set_epoch(2)
    iterator = iter(loader)
    next(iterator)
    states = loader._state_dicts()
    assert states == [{"epoch": 2, "position": dm.batch_size}] * 2
    resumed = dm.train_dataloader()
    resumed._load_state_dicts(states)
    iterator = iter(resumed)  # Lightning creates the iterator before it sets the epoch
    for iterable in resumed.iterables.values():
        iterable.sampler.set_epoch(2)
    rest = [next(iterator)[0] for _ in range(len(resumed) - 1)]  # Lightning stops at len()
    assert resumed._state_dicts() == [{"epoch": 2, "position": 3 * dm.batch_size}] * 2
    for a, b in zip(full[1:], rest, strict=True):
        for m in ("ct", "mr"):
            torch.testing.assert_close(a[m]["image"], b[m]["image"])
    # the resumed position applies once: the next pass of the epoch is whole again
    assert len([batch for batch, _, _ in resumed]) == 3


def test_loaders_without_a_seed_are_not_resumable(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unseeded loaders have no exact mid-epoch position, so they claim none (Lightning warns
    when it resumes them inside an epoch)."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    dm = _dm(tiny_dataset)
    dm.setup("fit")
    assert dm.train_dataloader()._state_dicts() == []


def test_disk_cache_is_keyed_by_the_preprocessing(tiny_dataset: Path, tmp_path: Path) -> None:
    """A shared cache_dir must not serve volumes preprocessed with other settings."""
    cache_dir = str(tmp_path / "cache")
    native = _dm(tiny_dataset, cache="disk", cache_dir=cache_dir)
    coarse = _dm(tiny_dataset, cache="disk", cache_dir=cache_dir, spacing=[3.0, 3.0, 5.0])
    shapes = []
    for dm in (native, coarse, native):
        dm.setup("validate")
        shapes.append(tuple(next(iter(dm.val_dataloader()[0]))["image"].shape))
    assert shapes[0] != shapes[1] and shapes[0] == shapes[2]


def test_augmentation_can_differ_per_modality(tiny_dataset: Path) -> None:
    from ummkd.data.transforms import AugmentationConfig

    strong = AugmentationConfig(noise_std=0.5, intensity_prob=1.0, affine_prob=0.0)
    dm = UnpairedDataModule(
        root=str(tiny_dataset),
        patch_size=[48, 48],
        batch_size=2,
        steps_per_epoch=1,
        num_workers=0,
        augmentation=None,
        modality_augmentation={"mr": strong},
        check="off",
    )
    dm.setup("fit")
    names = {
        m: [type(t).__name__ for t in dm._datasets["train"][m].transform.transforms]
        for m in ("ct", "mr")
    }
    assert "RandGaussianNoised" in names["mr"] and "RandGaussianNoised" not in names["ct"]
    with pytest.raises(ValueError, match="modality_augmentation"):
        UnpairedDataModule(root=str(tiny_dataset), modality_augmentation={"pet": strong})


def test_synthetic_phantoms_are_described_at_init_and_written_in_prepare_data(
    tmp_path: Path,
) -> None:
    root = tmp_path / "phantoms"
    options = SyntheticOptions(generate=True, n_ct=3, n_mr=3, size=(48, 48, 4), dim=3)
    dm = _dm(root, mode="3d", patch_size=[32, 32, 4], synthetic=options)
    assert not root.exists()  # nothing written at construction
    assert (dm.num_classes, dm.class_names, dm.modalities) == (
        NUM_CLASSES,
        ["background", "liver", "kidney_right", "kidney_left", "spleen"],
        ["ct", "mr"],
    )
    planned = [(c.id, c.image, c.label) for c in dm.spec.cases]
    dm.prepare_data()
    assert (root / "dataset.json").is_file()
    dm.setup("fit")
    assert [(c.id, c.image, c.label) for c in dm.spec.cases] == planned
    assert all(c.image.is_file() for c in dm.spec.cases)
    # setup without a trainer's prepare_data generates too; an existing root is never rewritten
    other = _dm(tmp_path / "direct", mode="3d", patch_size=[32, 32, 4], synthetic=options)
    other.setup("fit")
    assert (tmp_path / "direct" / "dataset.json").is_file()
    before = (root / "dataset.json").stat().st_mtime_ns
    again = _dm(root, mode="3d", patch_size=[32, 32, 4], synthetic=options)
    again.prepare_data()
    assert (root / "dataset.json").stat().st_mtime_ns == before
