"""The ``dataset.json`` / splits-file schema (pydantic models) and reading and writing them.

An ummkd dataset root holds a ``dataset.json`` describing one shared label space, the imaging
modalities (with their intensity normalization and an optional map from the modality's own label
values to the shared ids), the cases and a reference to the splits::

    {
      "name": "abdominal_btcv_chaos",
      "dim": 3,
      "labels": {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4},
      "modalities": {
        "ct": {"normalization": "ct", "window": [-125, 275],
               "label_map": {"6": 1, "2": 2, "3": 3, "1": 4}},
        "mr": {"normalization": "mr"}
      },
      "cases": [{"id": "ct_0", "modality": "ct", "image": "ct/image_0.nii.gz",
                 "label": "ct/label_0.nii.gz"}],
      "splits": "splits.json"
    }

``splits.json`` is ``{"folds": [{"train": [...], "val": [...]}, ...], "test": [...]}`` (a fold
may carry its own ``"test"``) or nnU-Net's ``splits_final.json`` (a plain list of
``{"train", "val"}`` folds); ``"splits"`` may also hold that content inline. Source label values
missing from a ``label_map`` become background; without ``label_map`` the values must already be
shared ids.

:class:`DatasetDocument` and :class:`SplitsDocument` are the one definition of the schema. A
:class:`pydantic.ValidationError` becomes a :class:`DatasetSpecError` that names the file, the
place in it (``modality 'ct'``, ``cases[3] ('ct_7')``, ``folds[0].train``), what is wrong and,
where possible, what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ummkd.data.description import (
    DATASET_JSON,
    NORMALIZATIONS,
    SPLITS_JSON,
    Case,
    DatasetSpec,
    DatasetSpecError,
    Fold,
    ModalitySpec,
    Normalization,
    Splits,
)
from ummkd.data.io import write_json

__all__ = [
    "CaseDocument",
    "DatasetDocument",
    "FoldDocument",
    "ModalityDocument",
    "SplitsDocument",
    "parse_content",
    "parse_dataset",
    "parse_labels",
    "parse_modality",
    "parse_splits",
    "read_json",
    "read_splits",
    "write_dataset_json",
]

_ERROR = "dataset_spec"  # pydantic error type of the messages written here
Loc = tuple[str | int, ...]


# ------------------------------------------------------------------------------ error wording
def _fail(message: str, at: Loc | None = None) -> PydanticCustomError:
    """A schema error in ummkd's wording.

    ``{loc}`` in ``message`` becomes the place in the document; ``at`` (from the document root)
    replaces the place pydantic reports (for checks that span several fields).
    """
    return PydanticCustomError(_ERROR, message, None if at is None else {"at": at})


def _hint(template: str, *, whole: bool = True) -> WrapValidator:
    """Say ``template`` instead of pydantic's message when a value fails validation.

    ``{input}`` in the template becomes the value's repr, ``{loc}`` the place in the document.
    With ``whole=False`` (containers) only failures of the value itself (wrong type, empty) are
    reworded; errors inside its items keep their own message and place.
    """

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as err:
            own = any(e["loc"] == () and e["type"] != _ERROR for e in err.errors())
            if not whole and not own:
                raise
            raise PydanticCustomError(_ERROR, template, {"input": f"{value!r:.80}"}) from None

    return WrapValidator(validate)


def _where(loc: Loc, document: Any) -> str:
    """The place ``loc`` in words (``'dim'``, ``modality 'ct'``, ``cases[3] ('ct_7')``...)."""
    if not loc:
        return ""
    head, rest = loc[0], loc[1:]
    if not rest:
        return f"'{head}'"
    if head == "labels":
        return f"label {rest[0]!r}"
    if head == "modalities":
        return f"modality {rest[0]!r}"
    if head == "cases":
        where = f"cases[{rest[0]}]"
        try:
            case_id = document["cases"][rest[0]]["id"]
        except (KeyError, IndexError, TypeError):
            case_id = None
        if len(rest) > 1 and rest[1] != "id" and isinstance(case_id, str) and case_id:
            where += f" ({case_id!r})"
        return where
    return f"{head}" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


def _spec_error(
    err: ValidationError, source: Path, document: Any, prefix: Loc, root: str
) -> DatasetSpecError:
    """The first error of ``err`` as ``"<file>: <place>: <what is wrong; what to do>"``."""
    first = err.errors()[0]
    ctx = first.get("ctx") or {}
    loc = tuple(ctx["at"]) if "at" in ctx else prefix + tuple(first["loc"])
    where = _where(loc, document)
    message = first["msg"]
    if "{loc}" in message:
        text = message.replace("{loc}", where or root)
    else:
        text = f"{where}: {message}" if where else message
    return DatasetSpecError(f"{source}: {text}")


def _validate(
    validate: Callable[[Any], Any],
    raw: Any,
    source: Path,
    prefix: Loc = (),
    root: str = "the top level",
) -> Any:
    """``validate(raw)``, a :class:`pydantic.ValidationError` turned into a DatasetSpecError.

    ``prefix`` is where ``raw`` sits in a ``dataset.json`` (e.g. ``("labels",)``), ``root`` what
    the whole of ``raw`` is called in messages.
    """
    try:
        return validate(raw)
    except ValidationError as err:
        raise _spec_error(err, source, None if prefix else raw, prefix, root) from None


class _Document(BaseModel):
    """A JSON object of the schema: its keys are the fields; missing and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    not_object: ClassVar[str] = "{loc} must be a JSON object"
    bad_keys: ClassVar[str | None] = None  # replaces both key messages below
    unknown_keys: ClassVar[str] = "unknown key(s) {unknown}; allowed: {allowed}"

    @classmethod
    def _prepare(cls, data: Any) -> Any:
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        data = cls._prepare(data)
        if not isinstance(data, Mapping):
            raise _fail(cls.not_object)
        fields = list(cls.model_fields)
        missing = [k for k, f in cls.model_fields.items() if f.is_required() and k not in data]
        unknown = sorted(str(k) for k in data if k not in cls.model_fields)
        if (missing or unknown) and cls.bad_keys:
            raise _fail(cls.bad_keys)
        if missing:
            raise _fail(f"missing key(s) {missing}")
        if unknown:
            message = cls.unknown_keys.replace("{unknown}", str(unknown))
            raise _fail(message.replace("{allowed}", str(fields)))
        return data


# ------------------------------------------------------------------------------------- splits
_CaseIds = Annotated[list[StrictStr], _hint("{loc} must be a list of case id strings, got {input}")]


class FoldDocument(_Document):
    """One fold: ``{"train": [...], "val": [...]}`` and optionally its own ``"test"``."""

    not_object = bad_keys = (
        "{loc} must be an object with 'train' and 'val' lists (and optionally the fold's own "
        "'test' list)"
    )
    train: _CaseIds
    val: _CaseIds
    test: Annotated[
        list[StrictStr] | None, _hint("{loc} must be a list of case id strings, got {input}")
    ] = None


class SplitsDocument(_Document):
    """A splits file: ``{"folds": [...], "test": [...]}`` or nnU-Net's list of folds."""

    not_object = (
        '{loc} must be {"folds": [...], "test": [...]} or a list of {"train": [...], '
        '"val": [...]} folds'
    )
    unknown_keys = (
        'unknown splits key(s) {unknown}; expected {"folds": [{"train": [...], "val": [...]}], '
        '"test": [...]}'
    )
    folds: Annotated[list[FoldDocument], _hint("{loc} must be a list", whole=False)] = []
    test: _CaseIds = []
    description: Annotated[StrictStr, _hint("{loc} must be a string, got {input}")] = ""

    @classmethod
    def _prepare(cls, data: Any) -> Any:
        return {"folds": data} if isinstance(data, list) else data  # nnU-Net splits_final.json

    def to_splits(self, source: Path | None) -> Splits:
        """The parsed :class:`Splits` (``source``: the file they come from, if any)."""
        folds = tuple(
            Fold(tuple(f.train), tuple(f.val), None if f.test is None else tuple(f.test))
            for f in self.folds
        )
        return Splits(folds, tuple(self.test), source)


# ------------------------------------------------------------------------------------ dataset
def _contiguous(labels: dict[str, int]) -> dict[str, int]:
    ids = sorted(labels.values())
    if ids != list(range(len(ids))):
        raise _fail(
            f"label ids must be unique and contiguous 0..{len(ids) - 1} with 0 = background; "
            f"got {ids}",
            at=(),
        )
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def _check(predicate: Callable[[Any], bool]) -> AfterValidator:
    """Fail (reworded by the surrounding :func:`_hint`) unless ``predicate(value)``."""

    def validate(value: Any) -> Any:
        if value is not None and not predicate(value):
            raise ValueError("invalid")
        return value

    return AfterValidator(validate)


_LabelTable = Annotated[
    dict[
        StrictStr,
        Annotated[
            StrictInt,
            _hint(
                "{loc} has id {input}; ids must be integers (nnU-Net region-based labels are not "
                "supported)"
            ),
        ],
    ],
    Field(min_length=1),
    _hint(
        '{loc} must be a non-empty object of class name -> id, e.g. {"background": 0, "liver": 1}',
        whole=False,
    ),
    AfterValidator(_contiguous),
]

_LABEL_TABLE: TypeAdapter[dict[str, int]] = TypeAdapter(_LabelTable)


class ModalityDocument(_Document):
    """One modality: intensity normalization, CT window and the map to the shared label ids."""

    not_object = '{loc} must be an object like {"normalization": "ct"}'
    normalization: Annotated[
        Normalization, _hint(f"normalization {{input}} is not one of {list(NORMALIZATIONS)}")
    ]
    window: Annotated[
        tuple[StrictFloat, StrictFloat] | None,
        _check(lambda w: w[0] < w[1]),
        _hint("'window' must be [lo, hi] with lo < hi, got {input}"),
    ] = None
    label_map: Annotated[
        dict[
            Annotated[int, _hint("label_map key {input} is not an integer label value")],
            Annotated[StrictInt, _hint("label_map values must be shared label ids, got {input}")],
        ]
        | None,
        Field(min_length=1),
        _hint(
            "'label_map' must be a non-empty object like {\"6\": 1} (source value -> shared id)",
            whole=False,
        ),
    ] = None

    @model_validator(mode="after")
    def _window_is_for_ct(self) -> ModalityDocument:
        if self.window is not None and self.normalization != "ct":
            raise _fail("'window' only applies to normalization 'ct'")
        return self

    def to_spec(self, name: str) -> ModalitySpec:
        """The parsed :class:`ModalitySpec` called ``name``."""
        window = None if self.window is None else (float(self.window[0]), float(self.window[1]))
        label_map = None if self.label_map is None else dict(self.label_map)
        return ModalitySpec(name, self.normalization, window, label_map)


class CaseDocument(_Document):
    """One case; paths are relative to the dataset root."""

    not_object = "{loc} must be an object with id, modality, image, label"
    id: Annotated[
        StrictStr, Field(min_length=1), _hint("'id' must be a non-empty string, got {input}")
    ]
    modality: Annotated[StrictStr, _hint("'modality' must be a modality name, got {input}")]
    image: Annotated[StrictStr, Field(min_length=1), _hint("'image' must be a path string")]
    label: Annotated[
        StrictStr | None, Field(min_length=1), _hint("'label' must be a path string")
    ] = None


def _splits_field(value: Any, handler: Callable[[Any], Any]) -> Any:
    """``"splits"``: a file name (read by :func:`parse_dataset`) or the splits themselves."""
    if value is None or isinstance(value, str):
        return value
    return SplitsDocument.model_validate(value)


class DatasetDocument(_Document):
    """The content of an ummkd ``dataset.json`` (see the module docstring)."""

    name: Annotated[StrictStr | None, _hint("{loc} must be a string, got {input}")] = None
    description: Annotated[StrictStr, _hint("{loc} must be a string, got {input}")] = ""
    dim: Annotated[
        StrictInt, _check(lambda d: d in (2, 3)), _hint("{loc} must be 2 or 3, got {input}")
    ] = 3
    labels: _LabelTable
    modalities: Annotated[
        dict[StrictStr, ModalityDocument],
        Field(min_length=1),
        _hint('{loc} must be a non-empty object like {"ct": {"normalization": "ct"}}', whole=False),
    ]
    cases: Annotated[list[CaseDocument], _hint("{loc} must be a list of case objects", whole=False)]
    splits: Annotated[str | SplitsDocument | None, WrapValidator(_splits_field)] = None

    @field_validator("modalities")
    @classmethod
    def _label_maps_hit_shared_ids(
        cls, modalities: dict[str, ModalityDocument], info: ValidationInfo
    ) -> dict[str, ModalityDocument]:
        labels = info.data.get("labels")
        if labels is None:
            return modalities
        for name, modality in modalities.items():
            for key, value in (modality.label_map or {}).items():
                if not 0 <= value < len(labels):
                    raise _fail(
                        f"label_map maps {str(key)!r} to {value!r}, which is not a shared label "
                        f"id 0..{len(labels) - 1}",
                        at=("modalities", name),
                    )
        return modalities

    @field_validator("cases")
    @classmethod
    def _ids_unique_modalities_known(
        cls, cases: list[CaseDocument], info: ValidationInfo
    ) -> list[CaseDocument]:
        modalities = info.data.get("modalities")
        seen: set[str] = set()
        for index, case in enumerate(cases):
            if case.id in seen:
                raise _fail(
                    f"duplicate case id {case.id!r}; ids must be unique", at=("cases", index, "id")
                )
            seen.add(case.id)
            if modalities is not None and case.modality not in modalities:
                raise _fail(
                    f"unknown modality {case.modality!r}; 'modalities' defines {list(modalities)}",
                    at=("cases", index, "modality"),
                )
        return cases


# ------------------------------------------------------------------------------------ parsing
def read_json(path: Path) -> Any:
    """Read a JSON file; errors name the file (and the line and column of a syntax error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DatasetSpecError(f"{path}: cannot read the file ({err})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetSpecError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err


def parse_labels(raw: Any, source: Path) -> dict[str, int]:
    """Check a label table (class name -> id, ids ``0..C-1``); return it ordered by id."""
    return _validate(_LABEL_TABLE.validate_python, raw, source, ("labels",))


def parse_modality(name: str, raw: Any, source: Path) -> ModalitySpec:
    """Check one modality's settings (without the label ids its ``label_map`` targets)."""
    modality = _validate(ModalityDocument.model_validate, raw, source, ("modalities", name))
    return modality.to_spec(name)


def parse_splits(raw: Any, source: Path, splits_file: Path | None) -> Splits:
    """Check splits content (``{"folds", "test"}`` or nnU-Net's list of folds).

    Args:
        raw: The content.
        source: The file named in error messages.
        splits_file: The file the splits come from (``None`` when inline).
    """
    splits = _validate(SplitsDocument.model_validate, raw, source, root="splits")
    return splits.to_splits(splits_file)


def read_splits(path: Path) -> Splits:
    """Read a splits file (``{"folds": [...], "test": [...]}`` or nnU-Net's fold list).

    Raises:
        DatasetSpecError: If the file is missing, not JSON or malformed.
    """
    if not path.is_file():
        raise DatasetSpecError(f"{path}: the splits file does not exist")
    return parse_splits(read_json(path), path, path)


def parse_dataset(data: Any, root: Path, source: Path) -> DatasetSpec:
    """Check ``dataset.json`` content and return the dataset (case paths under ``root``).

    A splits file named in ``"splits"`` is read; errors name ``source`` (or the splits file).

    Raises:
        DatasetSpecError: If the content violates the schema or the splits file is missing.
    """
    document: DatasetDocument = _validate(DatasetDocument.model_validate, data, source)
    splits = None
    if isinstance(document.splits, str):
        splits_file = root / document.splits
        if not splits_file.is_file():
            raise DatasetSpecError(
                f"{source}: the splits file {splits_file} does not exist; write it or remove "
                "'splits' from dataset.json"
            )
        splits = read_splits(splits_file)
    elif document.splits is not None:
        splits = document.splits.to_splits(None)
    return DatasetSpec(
        root=root,
        name=root.name if document.name is None else document.name,
        labels=document.labels,
        modalities={name: m.to_spec(name) for name, m in document.modalities.items()},
        cases=tuple(
            Case(c.id, c.modality, root / c.image, root / c.label if c.label else None)
            for c in document.cases
        ),
        splits=splits,
        dim=document.dim,
        description=document.description,
        source=source,
    )


def parse_content(
    content: Mapping[str, Any], splits: Any, *, root: Path, source: Path, splits_source: Path
) -> DatasetSpec:
    """Check ``dataset.json`` content (without ``"splits"``) and splits content before writing.

    Args:
        content: The ``dataset.json`` content, case paths relative to ``root``.
        splits: The splits content, or ``None``.
        root: The dataset root.
        source: The ``dataset.json`` named in error messages.
        splits_source: The splits file named in error messages.

    Returns:
        The dataset, with the splits (as inline splits) when given.

    Raises:
        DatasetSpecError: If either violates the schema.
    """
    if "splits" in content:
        raise DatasetSpecError(
            f"{source}: pass the splits as the `splits` argument, not inside the content"
        )
    parsed = None if splits is None else parse_splits(splits, splits_source, splits_source)
    return replace(parse_dataset(content, root, source), splits=parsed)


def write_dataset_json(
    root: str | os.PathLike[str],
    spec: DatasetSpec | Mapping[str, Any],
    splits: Splits | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``dataset.json`` (and ``splits.json``) atomically after checking the schema.

    Args:
        root: Dataset root (created if missing). Case paths are written relative to it.
        spec: A :class:`DatasetSpec` or the ``dataset.json`` content as a dict (case paths
            relative to ``root``; without ``"splits"``).
        splits: Folds and test ids (:class:`Splits`, a ``{"folds", "test"}`` dict or an nnU-Net
            style list of folds). Defaults to ``spec.splits`` for a :class:`DatasetSpec`;
            ``None`` writes no splits file.
        overwrite: Replace existing ``dataset.json`` / ``splits.json``.

    Returns:
        The path of the written ``dataset.json``.

    Raises:
        DatasetSpecError: If the content violates the schema (nothing is written then).
        FileExistsError: If a target file exists and ``overwrite`` is false.
    """
    root = Path(root).expanduser()
    target = root / DATASET_JSON
    splits_target = root / SPLITS_JSON
    if isinstance(spec, DatasetSpec):
        content = replace(spec, root=root).to_json_dict()
        if splits is None:
            splits = spec.splits
    else:
        content = dict(spec)
    splits_content = splits.to_json_dict() if isinstance(splits, Splits) else splits
    parse_content(content, splits_content, root=root, source=target, splits_source=splits_target)
    existing = [p for p in (target, splits_target) if p.exists()]
    if splits_content is None:
        existing = [p for p in existing if p == target]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; pass overwrite=True (`--overwrite`) to replace it"
        )
    root.mkdir(parents=True, exist_ok=True)
    if splits_content is not None:
        write_json(splits_content, splits_target)
        content["splits"] = SPLITS_JSON
    write_json(content, target)
    return target
