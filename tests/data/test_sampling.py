"""Tests of the reproducible training epochs (`ummkd.data.sampling`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, RandGaussianNoised

from ummkd.data.sampling import EpochSampler, SeededSamples

LENGTH = 12


def _samples(seed: int | None = 7, stream: int = 0, length: int = LENGTH) -> SeededSamples:
    cases = [{"image": np.full((1, 3, 3), float(i), dtype=np.float32)} for i in range(5)]
    transform = Compose([RandGaussianNoised(keys="image", prob=1.0, std=1.0)])
    return SeededSamples(cases, length, transform, seed=seed, stream=stream)


def _order(seed: int, epoch: int, rank: int = 0, replicas: int = 1, length: int = LENGTH):
    sampler = EpochSampler(range(length), num_replicas=replicas, rank=rank, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_is_a_function_of_seed_and_epoch() -> None:
    torch.manual_seed(0)
    first = _order(seed=3, epoch=2)
    torch.manual_seed(1)  # the global random state does not matter
    _order(seed=3, epoch=0)  # nor what was drawn before
    assert _order(seed=3, epoch=2) == first
    assert _order(seed=3, epoch=1) != first
    assert _order(seed=4, epoch=2) != first
    positions = [i - 2 * LENGTH for i in first]
    assert sorted(positions) == list(range(LENGTH))  # a permutation of the epoch's positions


@pytest.mark.parametrize("length", [LENGTH, LENGTH + 1])
def test_ddp_shares_are_disjoint_and_cover_the_epoch(length: int) -> None:
    shares = [_order(5, 1, rank=r, replicas=3, length=length) for r in range(3)]
    assert len({len(s) for s in shares}) == 1  # equal shares (padded when length % 3 != 0)
    drawn = [i for s in shares for i in s]
    if length % 3 == 0:
        assert sorted(drawn) == [length + p for p in range(length)]
    else:
        assert set(drawn) == {length + p for p in range(length)}
        assert len(drawn) - len(set(drawn)) == 3 - length % 3  # only the padding repeats


def test_start_at_skips_the_first_positions_of_the_current_epoch_only() -> None:
    sampler = EpochSampler(range(LENGTH), num_replicas=2, rank=1, seed=9)
    sampler.set_epoch(4)
    share = list(sampler)
    sampler.start_at(3)
    assert list(sampler) == share[3:]
    sampler.set_epoch(5)
    assert len(list(sampler)) == len(share)


def test_samples_are_seeded_per_item() -> None:
    samples = _samples()
    late = samples[2 * LENGTH + 5]["image"]
    for i in range(LENGTH):  # whatever was drawn before
        samples[i]
    for again in (samples[2 * LENGTH + 5], _samples()[2 * LENGTH + 5]):
        assert torch.equal(torch.as_tensor(again["image"]), torch.as_tensor(late))
    assert samples[2 * LENGTH + 5]["sample_index"] == 5
    other_epoch = samples[3 * LENGTH + 5]["image"]
    other_stream = _samples(stream=1)[2 * LENGTH + 5]["image"]
    for other in (other_epoch, other_stream):
        assert not torch.equal(torch.as_tensor(other), torch.as_tensor(late))


@pytest.mark.parametrize("num_workers", [1, 2])
def test_epoch_batches_do_not_depend_on_the_worker_count(num_workers: int) -> None:
    def epoch(workers: int) -> list[dict]:
        samples = _samples()
        sampler = EpochSampler(samples, num_replicas=1, rank=0, seed=1)
        sampler.set_epoch(3)
        loader = DataLoader(samples, batch_size=4, sampler=sampler, num_workers=workers)
        return list(loader)

    reference, other = epoch(0), epoch(num_workers)
    assert len(reference) == len(other) == LENGTH // 4
    for a, b in zip(reference, other, strict=True):
        assert torch.equal(a["sample_index"], b["sample_index"])
        torch.testing.assert_close(a["image"], b["image"])
