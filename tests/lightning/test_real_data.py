"""The real abdominal data (BTCV CT + CHAOS MR) imports and yields batches of both modalities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ummkd.data.importers.alpnet import import_alpnet
from ummkd.lightning.datamodule import UnpairedDataModule

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def abdominal(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = shared_data / "abdominal_btcv_chaos"
    if not source.is_dir():
        pytest.skip(f"{source} is absent")
    out = tmp_path_factory.mktemp("real") / "abdominal"
    # the first 8 cases of each modality include train, val and test cases of the fixed split
    return import_alpnet(source, out, limit=8)


def test_real_abdominal_batches_have_both_modalities_and_four_organs(abdominal: Path) -> None:
    dm = UnpairedDataModule(
        root=str(abdominal),
        patch_size=[256, 256],
        batch_size=4,
        steps_per_epoch=2,
        num_workers=0,
        foreground_prob=1.0,
        check="shallow",
    )
    assert dm.modalities == ["ct", "mr"]
    assert dm.class_names == ["background", "liver", "kidney_right", "kidney_left", "spleen"]
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    seen = set()
    for modality in ("ct", "mr"):
        image, label = batch[modality]["image"], batch[modality]["label"]
        assert image.shape == (4, 3, 256, 256) and image.dtype == torch.float32
        assert label.shape == (4, 1, 256, 256)
        assert torch.isfinite(image).all()
        # z-scored intensities: roughly zero mean, unit spread over the body
        assert -3.0 < float(image.mean()) < 3.0
        values = set(torch.unique(label).tolist())
        assert values <= {0, 1, 2, 3, 4} and values - {0}, modality
        seen |= values
    assert {1, 2, 3, 4} & seen
    val = next(iter(dm.val_dataloader()[1]))
    assert val["modality"] == ["mr"] and val["image"].ndim == 5
