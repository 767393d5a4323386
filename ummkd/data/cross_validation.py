"""Modality-stratified cross-validation folds over every labelled case of a dataset."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ummkd.data.dataset_spec import DatasetSpec, DatasetSpecError, Fold, Splits


def cross_validation_splits(
    spec: DatasetSpec,
    n_folds: int,
    *,
    seed: int = 0,
    train_limit: Mapping[str, int] | None = None,
) -> Splits:
    """Build ``n_folds`` folds, each with its own test cases, stratified by modality.

    Per modality, fold 0 keeps the dataset's own split (its test cases and fold-0 validation
    cases), so fold-0 results stay comparable with single-split results. The other labelled cases
    are shuffled (``seed``) and dealt into the test sets of folds 1..n-1, so every labelled case
    is a test case of exactly one fold. Each later fold's validation cases (as many as fold 0
    has) are drawn from its remaining cases; the rest train.

    Args:
        spec: The dataset; its splits give fold 0.
        n_folds: Number of folds (at least 2).
        seed: Seed of the shuffles (the folds are a function of the dataset and the seed).
        train_limit: Modality -> number of training cases kept per fold (a fixed, seeded subset
            of that fold's training cases), e.g. ``{"mr": 4}`` for a label-scarce setting.

    Returns:
        Splits whose folds carry their own ``test`` lists (the common ``test`` is empty).

    Raises:
        DatasetSpecError: the dataset has no splits, a modality has too few cases, or a limit
            exceeds the training cases.
    """
    if n_folds < 2:
        raise DatasetSpecError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if spec.splits is None or not spec.splits.folds:
        raise DatasetSpecError(f"{spec.root}: the dataset defines no split to take fold 0 from")
    limits = dict(train_limit or {})
    unknown = sorted(set(limits) - set(spec.modalities))
    if unknown:
        raise DatasetSpecError(f"train limit for unknown modalities {unknown}")
    folds: list[dict[str, list[str]]] = [
        {"train": [], "val": [], "test": []} for _ in range(n_folds)
    ]
    for index, modality in enumerate(spec.modalities):
        labelled = [c.id for c in spec.cases_for(modality, "all") if c.label is not None]
        test0 = [c.id for c in spec.cases_for(modality, "test", 0)]
        val0 = [c.id for c in spec.cases_for(modality, "val", 0)]
        rest = [i for i in labelled if i not in set(test0)]
        rng = np.random.default_rng([seed, index])
        shuffled = [rest[i] for i in rng.permutation(len(rest))]
        chunks = np.array_split(np.asarray(shuffled, dtype=object), n_folds - 1)
        if min(len(chunk) for chunk in chunks) == 0:
            raise DatasetSpecError(
                f"modality {modality!r}: {len(rest)} non-test case(s) cannot fill {n_folds - 1} "
                "more test sets; use fewer folds"
            )
        for k in range(n_folds):
            test = test0 if k == 0 else [str(i) for i in chunks[k - 1]]
            remaining = [i for i in labelled if i not in set(test)]
            if k == 0:
                val = val0
            else:
                order = np.random.default_rng([seed, index, k]).permutation(len(remaining))
                val = sorted((remaining[i] for i in order[: len(val0)]), key=labelled.index)
            train = [i for i in remaining if i not in set(val)]
            if modality in limits:
                limit = limits[modality]
                if not 1 <= limit <= len(train):
                    raise DatasetSpecError(
                        f"modality {modality!r}: train limit {limit} is not in 1..{len(train)} "
                        f"(fold {k})"
                    )
                order = np.random.default_rng([seed, index, k, 1]).permutation(len(train))
                train = sorted((train[i] for i in order[:limit]), key=labelled.index)
            folds[k]["train"] += train
            folds[k]["val"] += val
            folds[k]["test"] += test
    return Splits(
        tuple(Fold(tuple(f["train"]), tuple(f["val"]), tuple(f["test"])) for f in folds), ()
    )


def describe_splits(n_folds: int, seed: int, train_limit: Mapping[str, int] | None) -> str:
    """The ``description`` written into a cross-validation splits file."""
    text = (
        f"{n_folds}-fold cross-validation, stratified by modality, written by ummkd reproduce "
        f"(seed {seed}): fold 0 keeps the dataset's own split; every labelled case is a test "
        "case of exactly one fold; validation cases come from each fold's non-test cases."
    )
    if train_limit:
        kept = ", ".join(f"{n} {m}" for m, n in sorted(train_limit.items()))
        text += f" Training cases cut to {kept} per fold (a fixed, seeded subset)."
    return text
