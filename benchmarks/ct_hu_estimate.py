"""Estimate the HU map of the 8-bit BTCV CT in the SSL-ALPNet release from tissue peaks.

Measures, per CT volume, the fat peak and the liver, spleen and kidney medians in stored 8-bit
units, fits ``HU = slope * stored + intercept`` to typical portal-venous HU values (fat -100,
liver 100, spleen 110) and shows the tissue medians under the fitted map and under the window
the importer uses (``ALPNET_CT_WINDOW_HU``). docs/data.md quotes its output.

    python benchmarks/ct_hu_estimate.py ../shared/data/abdominal_btcv_chaos
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from ummkd.data.importers.alpnet import ALPNET_CT_WINDOW_HU, CT_ORGANS
from ummkd.data.intensity import REFERENCE_HU, TissuePeaks, fit_linear_map, tissue_peaks
from ummkd.evaluation.statistics import sample_mean_std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="folder with ct_btcv/")
    args = parser.parse_args()
    images = sorted(
        (args.src / "ct_btcv").glob("image_*.nii.gz"),
        key=lambda p: int(p.name.split("_")[1].split(".")[0]),
    )
    peaks: list[TissuePeaks] = []
    for path in images:
        image = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(path.with_name(path.name.replace("image_", "label_"))).dataobj)
        peaks.append(tissue_peaks(image, label, CT_ORGANS))
    slope, intercept = fit_linear_map(peaks)
    low, high = ALPNET_CT_WINDOW_HU
    window_slope, window_intercept = (high - low) / 255.0, low
    tissues = ["fat", *CT_ORGANS]
    print(f"{len(images)} CT volumes of {args.src / 'ct_btcv'}")
    print(f"reference HU used in the fit: {REFERENCE_HU}")
    print(
        f"fitted map:   HU = {slope:.4f} * v {intercept:+.1f}   (0 -> {intercept:.0f} HU, "
        f"255 -> {slope * 255 + intercept:.0f} HU)"
    )
    print(
        f"importer map: HU = {window_slope:.4f} * v {window_intercept:+.1f}   "
        f"(window {low:.0f}..{high:.0f} HU)"
    )
    print()
    print("| tissue | stored median (IQR over cases) | fitted map HU | importer map HU |")
    print("|---|---|---|---|")
    for tissue in tissues:
        values = [p.fat if tissue == "fat" else p.organs.get(tissue) for p in peaks]
        values = [v for v in values if v is not None]
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        print(
            f"| {tissue} (n={len(values)}) | {median:.1f} ({q1:.1f}-{q3:.1f}) | "
            f"{slope * median + intercept:.0f} | {window_slope * median + window_intercept:.0f} |"
        )
    _, spread = sample_mean_std(p.organs["liver"] for p in peaks if "liver" in p.organs)
    assert spread is not None, "the liver of fewer than two cases"
    print(f"\nliver median between cases: sample std {spread * window_slope:.0f} HU (importer map)")


if __name__ == "__main__":
    main()
