"""Cross-validation folds: every case tested once, fold 0 = the dataset's split, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.conftest import make_tiny_dataset
from ummkd.data.cross_validation import cross_validation_splits
from ummkd.data.dataset_spec import (
    DatasetSpecError,
    load_dataset,
    read_splits,
    validate_dataset,
    write_dataset_json,
)
from ummkd.data.io import write_json


@pytest.fixture
def six_per_modality(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "six", n=6)


def test_every_case_is_tested_once_and_fold_0_keeps_the_split(six_per_modality: Path) -> None:
    spec = load_dataset(six_per_modality)
    splits = cross_validation_splits(spec, 5, seed=3)
    assert len(splits.folds) == 5 and splits.test == ()
    for modality in ("ct", "mr"):
        ids = {c.id for c in spec.cases if c.modality == modality}
        tested = [i for fold in splits.folds for i in fold.test if i in ids]
        assert sorted(tested) == sorted(ids)  # each case exactly once
    assert set(splits.folds[0].test) == set(spec.splits.test)
    assert set(splits.folds[0].val) == set(spec.splits.folds[0].val)
    for fold in splits.folds:
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert sum(map(len, parts)) == len(set().union(*parts)) == 12  # a partition
        assert sum(i.startswith("ct") for i in fold.val) == 1  # as many as fold 0
    assert cross_validation_splits(spec, 5, seed=3) == splits  # deterministic
    assert cross_validation_splits(spec, 5, seed=4) != splits


def test_splits_file_round_trip_and_per_fold_test(six_per_modality: Path) -> None:
    spec = load_dataset(six_per_modality)
    splits = cross_validation_splits(spec, 3)
    path = six_per_modality / "splits_cv3.json"
    write_json(splits.to_json_dict(), path)
    read = read_splits(path)
    assert [f.test for f in read.folds] == [f.test for f in splits.folds]
    fold2 = load_dataset(six_per_modality)
    from dataclasses import replace

    fold2 = replace(fold2, splits=read)
    assert {c.id for c in fold2.cases_for("mr", "test", 2)} == {
        i for i in splits.folds[2].test if i.startswith("mr")
    }
    assert validate_dataset(fold2, deep=False) == []


def test_overlap_with_a_folds_own_test_is_a_problem(six_per_modality: Path) -> None:
    spec = load_dataset(six_per_modality)
    content = cross_validation_splits(spec, 2).to_json_dict()
    content["folds"][1]["train"].append(content["folds"][1]["test"][0])
    write_dataset_json(six_per_modality, spec.to_json_dict(), content, overwrite=True)
    problems = validate_dataset(load_dataset(six_per_modality), deep=False)
    assert any("folds[1].test" in p.message for p in problems)


def test_train_limit_keeps_a_fixed_subset(six_per_modality: Path) -> None:
    spec = load_dataset(six_per_modality)
    full = cross_validation_splits(spec, 3)
    cut = cross_validation_splits(spec, 3, train_limit={"mr": 2})
    for a, b in zip(full.folds, cut.folds, strict=True):
        assert [i for i in b.train if i.startswith("mr")] == [
            i for i in b.train if i.startswith("mr") and i in a.train
        ]
        assert sum(i.startswith("mr") for i in b.train) == 2
        assert [i for i in a.train if i.startswith("ct")] == [
            i for i in b.train if i.startswith("ct")
        ]
        assert a.test == b.test and a.val == b.val
    with pytest.raises(DatasetSpecError, match="train limit 9"):
        cross_validation_splits(spec, 3, train_limit={"mr": 9})
    with pytest.raises(DatasetSpecError, match="cannot fill"):
        cross_validation_splits(spec, 9)
