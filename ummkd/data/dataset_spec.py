"""Dataset description (``dataset.json``): one import point for the modules that handle it.

* :mod:`ummkd.data.schema`: the ``dataset.json`` / splits-file schema (pydantic models; the format
  is described there), parsing and :func:`write_dataset_json`;
* :mod:`ummkd.data.description`: the parsed form (:class:`DatasetSpec`, :class:`Case`,
  :class:`ModalitySpec`, :class:`Splits`, :class:`Fold`);
* :mod:`ummkd.data.formats`: :func:`load_dataset` for ummkd datasets, nnU-Net v2 raw datasets and
  MONAI / Medical Segmentation Decathlon datalists;
* :mod:`ummkd.data.labels`: :func:`remap_labels` (source label values -> shared ids);
* :mod:`ummkd.data.validation`: :func:`validate_dataset` finds problems in the files (missing,
  unreadable, mismatched geometry, bad label values, overlapping splits, 2D/3D confusion),
  :func:`dataset_warnings` things that are allowed but probably not meant;
* :mod:`ummkd.data.summary`: :func:`summarize_dataset` tabulates the data per modality.
"""

from __future__ import annotations

from ummkd.data.description import (
    DATASET_JSON,
    FORMATS,
    NNUNET_SPLITS_JSON,
    NORMALIZATIONS,
    SPLIT_NAMES,
    SPLITS_JSON,
    Case,
    DatasetSpec,
    DatasetSpecError,
    Fold,
    Format,
    ModalitySpec,
    Split,
    Splits,
)
from ummkd.data.formats import load_dataset
from ummkd.data.labels import remap_labels
from ummkd.data.schema import read_splits, write_dataset_json
from ummkd.data.summary import summarize_dataset
from ummkd.data.validation import (
    DatasetValidationError,
    Problem,
    check_dataset,
    dataset_warnings,
    validate_dataset,
)

__all__ = [
    "DATASET_JSON",
    "FORMATS",
    "NNUNET_SPLITS_JSON",
    "NORMALIZATIONS",
    "SPLITS_JSON",
    "SPLIT_NAMES",
    "Case",
    "DatasetSpec",
    "DatasetSpecError",
    "DatasetValidationError",
    "Fold",
    "Format",
    "ModalitySpec",
    "Problem",
    "Split",
    "Splits",
    "check_dataset",
    "dataset_warnings",
    "load_dataset",
    "read_splits",
    "remap_labels",
    "summarize_dataset",
    "validate_dataset",
    "write_dataset_json",
]
