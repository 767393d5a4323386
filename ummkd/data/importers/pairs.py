"""Import any folder of image/label pairs (one modality per call) as an ummkd dataset.

Images and labels are selected with glob patterns relative to ``src`` (``**`` recurses) and read
with nibabel (NIfTI) or SimpleITK (``.mha``, ``.nrrd``, ...). They are paired

* by a case-id regex (``--case-id-regex``; its group ``id``, else its first group, else the whole
  match, searched in each file name): every image needs exactly one label with the same id; or
* without a regex, by natural sort order: the counts must agree and, where both names contain a
  number, the last numbers must agree (so a missing file cannot shift the pairing silently).

Case ids are ``<modality>_<id>`` (the image file name without its suffix when no regex is given).
Labels are remapped with ``--label-map`` (``source:target`` pairs; unlisted values -> background)
to the ids of ``--labels-names`` (1, 2, ... in the given order, background 0); without a map the
label values must already be those ids. ``--append`` adds the cases to an existing dataset in
``--out`` - typically a second modality - after checking that the label names and ids agree.
The split of the new cases is the seeded 70/10/20 split of
:func:`~ummkd.data.importers.common.seeded_split`; with ``--group-regex`` (first group, searched
in each image file name: the patient of a 2D slice ``<patient>_<slice>.png``) the groups are
split, so all slices of one patient land in one of train, val and test.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ummkd.data.importers.common import (
    DatasetBuilder,
    DatasetImportError,
    Split,
    add_output_arguments,
    check_modality_settings,
    check_same_grid,
    natural_key,
    read_volume,
    remap_labels,
    sanitize_case_id,
    seeded_split,
)
from ummkd.data.io import strip_nifti_suffix

DEFAULT_NORMALIZATION = {"ct": "ct", "mr": "mr"}
T = TypeVar("T")


def parse_label_map(text: str) -> dict[int, int]:
    """Parse ``"6:1,2:2"`` into ``{6: 1, 2: 2}``.

    Raises:
        DatasetImportError: On malformed entries or a source value given twice.
    """
    mapping: dict[int, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(-?\d+)\s*:\s*(\d+)", entry)
        if match is None:
            raise DatasetImportError(
                f"--label-map entry {entry!r}: expected source:target integers, e.g. '6:1,2:2'"
            )
        source, target = int(match[1]), int(match[2])
        if source in mapping:
            raise DatasetImportError(f"--label-map: source value {source} is given twice")
        mapping[source] = target
    if not mapping:
        raise DatasetImportError("--label-map is empty")
    return mapping


def parse_label_names(text: str) -> list[str]:
    """Parse ``"liver,kidney_right"`` into the foreground label names (ids 1, 2, ...).

    Raises:
        DatasetImportError: On empty, duplicate or reserved (``background``) names.
    """
    names = [part.strip() for part in text.split(",")]
    if not names or any(not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n) for n in names):
        raise DatasetImportError(
            f"--labels-names {text!r}: give comma-separated names of letters, digits and _"
        )
    if len(set(names)) != len(names) or "background" in names:
        raise DatasetImportError(
            f"--labels-names {text!r}: names must be unique and not 'background' (always 0)"
        )
    return names


def _glob(src: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` below ``src``, in natural order."""
    matches = [Path(p) for p in glob.glob(os.path.join(src, pattern), recursive=True)]
    return sorted((p for p in matches if p.is_file()), key=lambda p: natural_key(str(p)))


def _stem(path: Path) -> str:
    """File name without its (possibly double) image suffix."""
    name = strip_nifti_suffix(path.name)
    return Path(name).stem if name == path.name else name


def _regex_id(regex: re.Pattern[str], path: Path) -> str:
    """Case id extracted from a file name by ``regex``."""
    match = regex.search(path.name)
    if match is None:
        raise DatasetImportError(
            f"{path}: --case-id-regex {regex.pattern!r} does not match the file name"
        )
    if "id" in regex.groupindex:
        return match["id"]
    return match[1] if regex.groups else match[0]


def match_pairs(
    images: Sequence[Path], labels: Sequence[Path], case_id_regex: str | None = None
) -> list[tuple[str, Path, Path]]:
    """Pair image and label files (see the module docstring).

    Returns:
        ``[(raw case id, image, label), ...]`` in natural image order.

    Raises:
        DatasetImportError: On any file that cannot be paired, naming it.
    """
    if not images:
        raise DatasetImportError("--images matched no files")
    if not labels:
        raise DatasetImportError("--labels matched no files")
    if case_id_regex is not None:
        try:
            regex = re.compile(case_id_regex)
        except re.error as exc:
            raise DatasetImportError(f"--case-id-regex {case_id_regex!r}: {exc}") from exc
        by_id: dict[str, dict[str, Path]] = {}
        for kind, paths in (("image", images), ("label", labels)):
            for path in paths:
                entry = by_id.setdefault(_regex_id(regex, path), {})
                if kind in entry:
                    raise DatasetImportError(
                        f"{path} and {entry[kind]}: both give case id "
                        f"{_regex_id(regex, path)!r}; refine --case-id-regex"
                    )
                entry[kind] = path
        unpaired = {i: sorted(str(p) for p in e.values()) for i, e in by_id.items() if len(e) != 2}
        if unpaired:
            raise DatasetImportError(f"files without a partner (case id: files): {unpaired}")
        pairs = [(i, e["image"], e["label"]) for i, e in by_id.items()]
        return sorted(pairs, key=lambda pair: natural_key(str(pair[1])))
    if len(images) != len(labels):
        raise DatasetImportError(
            f"--images matched {len(images)} files but --labels {len(labels)}; sorted-order "
            "pairing needs equal counts (or pass --case-id-regex)"
        )
    for image, label in zip(images, labels, strict=True):
        numbers = [re.findall(r"\d+", _stem(p)) for p in (image, label)]
        if all(numbers) and int(numbers[0][-1]) != int(numbers[1][-1]):
            raise DatasetImportError(
                f"sorted-order pairing put {image} with {label} (numbers differ); a file is "
                "probably missing, or pass --case-id-regex"
            )
    return [(_stem(image), image, label) for image, label in zip(images, labels, strict=True)]


def _resolve_labels(
    names: Sequence[str] | None, existing: Mapping[str, Any] | None
) -> dict[str, int]:
    """Label table from ``names``, or from the dataset being appended to."""
    if names is not None:
        return {"background": 0, **{name: i for i, name in enumerate(names, start=1)}}
    if existing is not None:
        return dict(existing["labels"])
    raise DatasetImportError("--labels-names is required for a new dataset")


def import_pairs(
    src: Path,
    out: Path,
    *,
    images: str,
    labels: str,
    modality: str,
    label_names: Sequence[str] | None = None,
    label_map: Mapping[int, int] | None = None,
    case_id_regex: str | None = None,
    group_regex: str | None = None,
    normalization: str | None = None,
    window: tuple[float, float] | None = None,
    name: str | None = None,
    append: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Import image/label pairs of one modality (optionally appending to a dataset).

    Args:
        src: Folder the glob patterns are relative to.
        out: Output dataset folder.
        images: Glob pattern of the images, e.g. ``"imgs/*.nii.gz"``.
        labels: Glob pattern of the labels.
        modality: Modality key of these cases (``ct``, ``mr``, ...).
        label_names: Foreground label names, ids 1, 2, ... (default when appending: the
            existing dataset's labels).
        label_map: Source label value -> shared id; unlisted values become background. Without
            it the label values must already be shared ids.
        case_id_regex: Pair files by this regex instead of sorted order.
        group_regex: Split by the regex's first group (searched in the image file names, e.g.
            the patient of 2D slices ``^(.+)_[0-9]+``) instead of by case.
        normalization: ``ct``, ``mr``, ``zscore`` or ``none``; default ``ct`` for ct, ``mr`` for
            mr, else ``zscore``.
        window: CT window ``(lo, hi)``, only with normalization ``ct``.
        name: Dataset name (default: the output folder name; kept when appending).
        append: Add the cases to the dataset in ``out``.
        overwrite: Replace an existing dataset in ``out``.
        seed: Seed of the split of the new cases.

    Returns:
        The output folder.

    Raises:
        DatasetImportError: If the inputs cannot be imported (names the file or option).
    """
    src = Path(src)
    pairs = match_pairs(_glob(src, images), _glob(src, labels), case_id_regex)
    groups = _groups(group_regex, [image for _, image, _ in pairs])
    config: dict[str, Any] = {
        "normalization": normalization or DEFAULT_NORMALIZATION.get(modality, "zscore")
    }
    if window is not None:
        config["window"] = [float(window[0]), float(window[1])]
    check_modality_settings(modality, config, out)
    inputs = [path for _, image, label in pairs for path in (image, label)]
    with DatasetBuilder(out, overwrite=overwrite, append=append, inputs=inputs) as builder:
        label_table = _resolve_labels(label_names, builder.existing)
        valid_ids = set(label_table.values())
        if label_map is not None:
            bad = sorted(t for t in label_map.values() if t not in valid_ids)
            if bad:
                raise DatasetImportError(
                    f"--label-map targets {bad} are not label ids {sorted(valid_ids)} of "
                    f"{label_table}"
                )
        mapping = dict(label_map) if label_map is not None else {i: i for i in valid_ids}
        dims = set()
        ids = []
        members: dict[str, list[str]] = {}
        for raw_id, image_path, label_path in pairs:
            image, affine = read_volume(image_path)
            label, label_affine = read_volume(label_path)
            check_same_grid(
                image.shape,
                affine,
                label.shape,
                label_affine,
                image_path=image_path,
                label_path=label_path,
            )
            remapped = remap_labels(label, mapping, path=label_path, strict=label_map is None)
            case_id = sanitize_case_id(f"{modality}_{raw_id}")
            builder.add_case(case_id, modality, image, remapped, affine)
            dims.add(image.ndim)
            ids.append(case_id)
            members.setdefault(groups.get(image_path, case_id), []).append(case_id)
        if len(dims) != 1:
            raise DatasetImportError(f"{src}: mixes 2D and 3D images; import them separately")
        return builder.finish(
            name=name or Path(out).name,
            description=(
                f"{len(ids)} {modality} image/label pairs from {src.absolute()} ({images} | "
                f"{labels}); labels "
                + (f"remapped {dict(label_map)}" if label_map else "kept as shared ids")
                + f"; seeded 70/10/20 split (seed {seed})"
                + (f" of the groups of {group_regex!r}." if group_regex else ".")
            ),
            dim=dims.pop(),
            labels=label_table,
            modalities={modality: config},
            splits=[grouped_split(members, seed=seed)],
        )


def _groups(group_regex: str | None, images: Sequence[Path]) -> dict[Path, str]:
    """Image -> its group (the first group of ``group_regex`` in its file name)."""
    if group_regex is None:
        return {}
    try:
        regex = re.compile(group_regex)
    except re.error as exc:
        raise DatasetImportError(f"--group-regex {group_regex!r} is not a regex: {exc}") from exc
    if regex.groups < 1:
        raise DatasetImportError(
            f"--group-regex {group_regex!r} has no group; e.g. '^(.+)_\\d+' groups "
            "<patient>_<slice> file names by patient"
        )
    groups = {}
    for image in images:
        match = regex.search(image.name)
        if match is None or not match.group(1):
            raise DatasetImportError(f"--group-regex {group_regex!r} does not match {image}")
        groups[image] = match.group(1)
    return groups


def grouped_split(members: Mapping[str, Sequence[str]], *, seed: int = 0) -> Split:
    """Seeded split of groups of cases (e.g. patients): a group's cases stay in one part.

    Args:
        members: Group -> its case ids (a group per case when cases are not grouped).
        seed: Seed of :func:`~ummkd.data.importers.common.seeded_split` over the groups.

    Returns:
        The split of the case ids.
    """
    split = seeded_split(list(members), seed=seed)

    def cases(keys: Sequence[str]) -> tuple[str, ...]:
        return tuple(sorted((c for k in keys for c in members[k]), key=natural_key))

    return Split(train=cases(split.train), val=cases(split.val), test=cases(split.test))


def _argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so that argparse reports its DatasetImportError as a usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except DatasetImportError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = parse.__name__
    return convert


def _window(text: str) -> tuple[float, float]:
    """Parse ``"lo,hi"`` for ``--window``."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected lo,hi (e.g. -125,275), got {text!r}") from exc
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pairs`` importer's command-line options."""
    parser.add_argument(
        "src", type=Path, nargs="?", default=Path("."), help="folder the globs are relative to"
    )
    add_output_arguments(parser)
    parser.add_argument("--images", required=True, help="glob of the images, e.g. 'imgs/*.nii.gz'")
    parser.add_argument("--labels", required=True, help="glob of the labels, e.g. 'labs/*.nii.gz'")
    parser.add_argument("--modality", required=True, help="modality of these cases: ct, mr, ...")
    parser.add_argument(
        "--labels-names",
        type=_argument_type(parse_label_names),
        help="foreground label names, ids 1, 2, ...: 'liver,kidney_right,kidney_left,spleen' "
        "(default with --append: the existing dataset's)",
    )
    parser.add_argument(
        "--label-map",
        type=_argument_type(parse_label_map),
        help="source:target label values, e.g. '6:1,2:2,3:3,1:4'; unlisted -> background",
    )
    parser.add_argument(
        "--case-id-regex", help="regex giving the case id from a file name (group 'id' or 1)"
    )
    parser.add_argument(
        "--group-regex",
        help="split by patient: regex whose first group, searched in each image file name, "
        "is the patient (e.g. '^(.+)_\\d+' for <patient>_<slice>.png)",
    )
    parser.add_argument(
        "--normalization",
        choices=["ct", "mr", "zscore", "none"],
        help="default: ct for ct, mr for mr, zscore otherwise",
    )
    parser.add_argument("--window", type=_window, help="CT window lo,hi (normalization ct)")
    parser.add_argument("--name", help="dataset name (default: the output folder name)")
    parser.add_argument(
        "--append", action="store_true", help="add these cases to the dataset in --out"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")


def run(args: argparse.Namespace) -> Path:
    """Run the importer from parsed command-line arguments."""
    return import_pairs(
        args.src,
        args.out,
        images=args.images,
        labels=args.labels,
        modality=args.modality,
        label_names=args.labels_names,
        label_map=args.label_map,
        case_id_regex=args.case_id_regex,
        group_regex=args.group_regex,
        normalization=args.normalization,
        window=args.window,
        name=args.name,
        append=args.append,
        overwrite=args.overwrite,
        seed=args.seed,
    )
