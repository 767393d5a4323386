"""Per-modality table of a dataset (:func:`summarize_dataset`, ``ummkd data summary``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from rich.table import Table

from ummkd.data.description import Case, DatasetSpec, ModalitySpec
from ummkd.data.voxels import READ_ERRORS, fmt_values, spatial_shape, value_counts


def _fmt_range(rows: Sequence[Sequence[float]], fmt: str) -> str:
    if not rows:
        return "-"
    columns = np.asarray(rows, dtype=float)
    parts = []
    for lo, hi in zip(columns.min(0), columns.max(0), strict=True):
        low, high = format(lo, fmt), format(hi, fmt)
        parts.append(low if low == high else f"{low}-{high}")
    return "x".join(parts)


def _split_counts(spec: DatasetSpec, modality: str) -> str:
    if spec.splits is None:
        return "no splits"
    if spec.splits.folds:
        train = len(spec.cases_for(modality, "train", 0))
        val = len(spec.cases_for(modality, "val", 0))
    else:
        train = val = 0
    return f"{train}/{val}/{len(spec.cases_for(modality, 'test'))}"


def _label_histogram(
    spec: DatasetSpec, modality: ModalitySpec, cases: Sequence[Case]
) -> tuple[np.ndarray, list[int]]:
    """Voxel counts per shared class and the non-zero source values that map to nothing."""
    counts = np.zeros(spec.num_classes, dtype=np.int64)
    unmapped: set[int] = set()
    for case in cases:
        if case.label is None or not case.label.is_file():
            continue
        try:
            values, n = value_counts(case.label)
        except READ_ERRORS:
            continue
        for value, count in zip(values.tolist(), n.tolist(), strict=True):
            source_value = round(value)
            if modality.label_map is None:
                shared = source_value if 0 <= source_value < spec.num_classes else None
            else:
                shared = modality.label_map.get(source_value)
            if shared is None and source_value != 0:
                unmapped.add(source_value)
            counts[shared or 0] += count
    return counts, sorted(unmapped)


def summarize_dataset(spec: DatasetSpec, *, deep: bool = True) -> Table:
    """Tabulate the dataset per modality.

    Args:
        spec: The dataset.
        deep: Also read image headers (shape and spacing ranges) and label data (voxel fraction
            per shared class; source values that become background). Unreadable or missing
            files are skipped (:func:`validate_dataset` reports them).

    Returns:
        A :class:`rich.table.Table` with one row per modality.
    """
    notes = []
    if spec.splits is not None and len(spec.splits.folds) > 1:
        notes.append(f"train/val of fold 0 (of {len(spec.splits.folds)})")
    table = Table(title=f"{spec.name} ({spec.root}, dim {spec.dim})", title_justify="left")
    table.add_column("modality", style="bold")
    table.add_column("norm")
    table.add_column("cases (labeled)", justify="right")
    table.add_column("train/val/test", justify="right")
    if deep:
        table.add_column("shape", no_wrap=True)
        table.add_column("spacing (mm)", no_wrap=True)
        for class_name in spec.class_names:
            table.add_column(class_name, justify="right")
        table.add_column("dropped labels")
        notes.append(
            "class columns: % of label voxels; dropped labels: source values that become background"
        )
    table.caption = "; ".join(notes) or None
    table.caption_justify = "left"
    for name, modality in spec.modalities.items():
        cases = [c for c in spec.cases if c.modality == name]
        labeled = sum(c.label is not None for c in cases)
        row = [name, modality.normalization, f"{len(cases)} ({labeled})", _split_counts(spec, name)]
        if deep:
            geometry = []
            for case in cases:
                try:
                    header = nib.load(case.image).header
                except READ_ERRORS:
                    continue
                shape = spatial_shape(header.get_data_shape())
                geometry.append((shape, header.get_zooms()[: len(shape)]))
            # Ranges over the images of the most common rank (a stray 2D image would not align).
            rank = Counter(len(s) for s, _ in geometry).most_common(1)[0][0] if geometry else 0
            row += [
                _fmt_range([s for s, _ in geometry if len(s) == rank], ".0f"),
                _fmt_range([z for s, z in geometry if len(s) == rank], ".3g"),
            ]
            counts, unmapped = _label_histogram(spec, modality, cases)
            total = counts.sum()
            row += [f"{100 * c / total:.2f}" if total else "-" for c in counts]
            row.append(fmt_values(unmapped) if unmapped else "-")
        table.add_row(*row)
    return table
