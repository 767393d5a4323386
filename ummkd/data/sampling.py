"""Reproducible training epochs: a seeded epoch sampler and per-sample-seeded training samples.

An epoch of a modality's training stream is ``length`` samples drawn from its cached cases.
:class:`EpochSampler` fixes the order of an epoch as a function of ``(seed, epoch)`` (and hands
each DDP rank a disjoint share of it); :class:`SeededSamples` reseeds the random transforms of
every sample from ``(seed, stream, epoch, position)``. Together an epoch's batches depend neither
on the global random state, nor on the number of loader workers, nor on what was drawn before,
so training can resume at any batch of any epoch and draw exactly what an uninterrupted run
draws. Pure torch / MONAI: no Lightning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, apply_transform
from torch.utils.data import DistributedSampler

__all__ = ["EpochSampler", "SeededSamples"]


class SeededSamples(Dataset):
    """One epoch of training samples, cycling over the (cached) cases.

    Indices are ``epoch * len(self) + position`` (as :class:`EpochSampler` yields them); each item
    is a shallow copy of a case record with its epoch ``position`` added as ``"sample_index"``
    (collated into the batches; used to check DDP sharding). With a ``seed``, the random
    transforms (slice / patch sampling and augmentation) are reseeded for every item from
    ``(seed, stream, epoch, position)``, so a sample depends neither on the worker process that
    draws it nor on the samples drawn before it.

    Args:
        cases: Case records (or a cache of preprocessed ones), cycled over.
        length: Samples per epoch.
        transform: The random transforms applied to a case record.
        seed: Base seed of the per-sample seeds (``None``: transforms keep their own state).
        stream: Distinguishes streams that share a seed (e.g. one per modality).
    """

    def __init__(
        self,
        cases: Sequence,
        length: int,
        transform: Compose,
        seed: int | None = None,
        stream: int = 0,
    ) -> None:
        super().__init__(cases, transform)
        self.length = length
        self.seed = seed
        self.stream = stream

    def __len__(self) -> int:
        return self.length

    def _transform(self, index: int) -> Any:
        epoch, position = divmod(int(index), self.length)
        record = {**self.data[position % len(self.data)], "sample_index": position}
        if self.seed is not None:
            entropy = [self.seed, self.stream, epoch, position]
            self.transform.set_random_state(
                seed=int(np.random.SeedSequence(entropy).generate_state(1)[0])
            )
        return apply_transform(self.transform, record)


class EpochSampler(DistributedSampler):
    """This rank's share of a random order that is a function of ``(seed, epoch)`` only.

    Yields ``epoch * len(dataset) + position`` (see :class:`SeededSamples`). The ranks' shares
    are disjoint (padded like :class:`~torch.utils.data.DistributedSampler` when the length does
    not divide). Being a ``DistributedSampler``, it is left in place by frameworks that inject
    one under DDP, so the same class serves one process and many. :meth:`start_at` skips the
    first positions of this rank's share in the current epoch (a run resumed inside an epoch);
    :meth:`set_epoch` starts the next epoch at its beginning.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``'s order, from its first position."""
        super().set_epoch(epoch)
        self.start = 0

    def start_at(self, position: int) -> None:
        """Begin the current epoch at this position of this rank's share."""
        self.start = position

    def __iter__(self) -> Iterator[int]:
        length = len(self.dataset)
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = torch.randperm(length, generator=generator).tolist()
        order += order[: self.total_size - length]  # pad like DistributedSampler
        share = order[self.rank : self.total_size : self.num_replicas]
        return iter([self.epoch * length + p for p in share[self.start :]])
