"""How long does whole-volume inference take on CPU? (CPU benchmark)

Times ``UMMKDModule.predict_volume`` (the path used by validation, test and predict) on one real
abdominal CT and one real MR test volume of ``data/abdominal_btcv_chaos``, preprocessed by
``UnpairedDataModule(...).setup("test")`` exactly as in ``ummkd test``:

* **2D slice-wise** (3 adjacent slices as channels, native grid as in
  ``configs/abdominal_2d/ummkd.yaml``): the demo's MONAI U-Net and the paper's
  :class:`~ummkd.nn.DilatedResNet2d` (base 16; base 8 when a volume at base 16 is estimated to take
  more than ``--max-seconds``);
* **3D sliding window** (resampled to 1.5 x 1.5 mm in-plane as in
  ``configs/abdominal_3d/ummkd.yaml``): :class:`~ummkd.nn.UNet3d` base 16 with ``--roi``,
  overlap 0.5, Gaussian blending;

each without and with flip test-time augmentation (``module.tta``). Weights are untrained
(random initialisation), which does not change the amount of computation. Memory is the peak
resident set size during the call minus the resident set size before it (Linux ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``); where that reset is unavailable, it falls back to
the growth of ``ru_maxrss``, the process's lifetime peak, which under-reports later calls.

Usage::

    python benchmarks/inference_speed.py [--root data/abdominal_btcv_chaos] [--repeats 1]
        [--roi 128 128 8] [--max-seconds 60]

Prints the machine and a markdown table; ``--append docs/performance.md`` also adds it
there as a dated section (``make bench`` does).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import re
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import Tensor, nn

from ummkd.lightning.datamodule import UnpairedDataModule
from ummkd.lightning.module import UMMKDModule
from ummkd.nn import DilatedResNet2d, UNet3d
from ummkd.provenance import cpu_model

from bench_report import add_append_argument, results_appended_to

MODALITIES = ("ct", "mr")


class PeakMemory:
    """Peak extra resident memory (MiB) of a block of code."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            self.method = "VmHWM - VmRSS (peak reset per call)"
        except OSError:
            self.method = "ru_maxrss growth (lifetime peak; under-reports)"

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {field} in /proc/self/status")
        return int(match.group(1))

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Run ``fn``; return its result and the peak extra memory in MiB."""
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            before = self._status_kib("VmRSS")
            result = fn()
            return result, (self._status_kib("VmHWM") - before) / 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        return result, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def test_volumes(dm: UnpairedDataModule) -> dict[str, dict[str, Any]]:
    """The first test volume of every modality, preprocessed by the datamodule."""
    dm.setup("test")
    volumes = {}
    for modality, loader in zip(dm.modalities, dm.test_dataloader(), strict=True):
        batch = next(iter(loader))
        volumes[modality] = {"image": batch["image"][0], "id": batch["id"][0]}
    return volumes


def module_2d(network: nn.Module) -> UMMKDModule:
    """An evaluation-mode 2D module around ``network`` (3 adjacent slices, 5 classes)."""
    module = UMMKDModule(network, modalities=list(MODALITIES), norm="modality", num_adjacent=3)
    return module.eval()


def demo_unet() -> UMMKDModule:
    """The demo's MONAI U-Net (``configs/demo.yaml``), per-modality norms."""
    torch.manual_seed(0)
    network = UNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=5,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
        norm="batch",
        dropout=0.1,
    )
    return module_2d(network)


def dilated_resnet(base: int) -> Callable[[], UMMKDModule]:
    """Factory of the paper's DilatedResNet2d module at width ``base``."""

    def build() -> UMMKDModule:
        torch.manual_seed(0)
        network = DilatedResNet2d(3, 5, modalities=None, base_channels=base, dropout=0.25)
        return module_2d(network)

    return build


def unet3d(roi: list[int]) -> Callable[[], UMMKDModule]:
    """Factory of the UNet3d (base 16) sliding-window module with window ``roi``."""

    def build() -> UMMKDModule:
        torch.manual_seed(0)
        network = UNet3d(1, 5, modalities=None, base_channels=16)
        module = UMMKDModule(
            network, modalities=list(MODALITIES), norm="modality", spatial_mode="3d", roi_size=roi
        )
        return module.eval()

    return build


def estimate_slicewise_seconds(module: UMMKDModule, volume: Tensor, modality: str) -> float:
    """Seconds per volume (no TTA) extrapolated from one inference batch of slices."""
    depth = volume.shape[-1]
    n = min(module.inference_batch_size, depth)
    part = volume[..., :n]
    module.predict_volume(part, modality)  # warm-up
    start = time.perf_counter()
    module.predict_volume(part, modality)
    return (time.perf_counter() - start) * depth / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/abdominal_btcv_chaos")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--roi", type=int, nargs=3, default=[128, 128, 8])
    parser.add_argument("--drn-base", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    add_append_argument(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    memory = PeakMemory()

    common: dict[str, Any] = {
        "root": args.root,
        "modalities": list(MODALITIES),
        "cache": "none",
        "num_workers": 0,
        "check": "shallow",
    }
    dm2d = UnpairedDataModule(mode="2d", patch_size=[256, 256], num_adjacent=3, **common)
    dm3d = UnpairedDataModule(
        mode="3d", patch_size=list(args.roi), spacing=[1.5, 1.5, -1], **common
    )
    volumes = {"2d": test_volumes(dm2d), "3d": test_volumes(dm3d)}

    drn_base = args.drn_base
    probe = dilated_resnet(drn_base)()
    ct = volumes["2d"]["ct"]["image"]
    estimate = estimate_slicewise_seconds(probe, ct, "ct")
    print(f"DilatedResNet2d base {drn_base}: estimated {estimate:.1f} s per CT volume (no TTA)")
    if estimate > args.max_seconds and drn_base > 8:
        drn_base = 8
        print(f"-> above {args.max_seconds:.0f} s: using base {drn_base}")
    del probe

    settings = [
        ("2D slice-wise, demo U-Net", demo_unet, "2d"),
        (f"2D slice-wise, DilatedResNet2d base {drn_base}", dilated_resnet(drn_base), "2d"),
        (
            f"3D sliding window, UNet3d base 16, roi {'x'.join(map(str, args.roi))}",
            unet3d(list(args.roi)),
            "3d",
        ),
    ]
    rows = []
    input_types: set[str] = set()
    for name, build, mode in settings:
        module = build()
        module.network.register_forward_pre_hook(
            lambda _m, inputs: input_types.add(type(inputs[0]).__name__)
        )
        params = sum(p.numel() for p in module.network.parameters()) / 1e6
        for modality in MODALITIES:
            volume = volumes[mode][modality]["image"]
            times: dict[bool, list[float]] = {False: [], True: []}
            peaks: dict[bool, float] = {False: 0.0, True: 0.0}
            for _ in range(args.repeats):
                for tta in (False, True):
                    module.tta = tta
                    start = time.perf_counter()
                    probs, peak = memory.measure(
                        functools.partial(module.predict_volume, volume, modality)
                    )
                    times[tta].append(time.perf_counter() - start)
                    peaks[tta] = max(peaks[tta], peak)
                    if not bool(torch.isfinite(probs).all()):
                        raise FloatingPointError(f"{name}, {modality}: non-finite output")
                    del probs
            shape = "x".join(map(str, volume.shape[1:]))
            plain, flipped = statistics.median(times[False]), statistics.median(times[True])
            row = (
                f"| {name} | {params:.2f} | {modality.upper()} "
                f"{volumes[mode][modality]['id']} | {shape} | {plain:.2f} | {peaks[False]:.0f} "
                f"| {flipped:.2f} | {peaks[True]:.0f} | {flipped / plain:.2f} |"
            )
            print(row, flush=True)
            rows.append(row)

    print()
    with results_appended_to(args.append, "Whole-volume inference speed (inference_speed.py)"):
        print(
            f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, {datetime.date.today().isoformat()}; untrained weights; "
            f"{args.repeats} repeat(s), median; memory: {memory.method}; network input types: "
            f"{sorted(input_types)}"
        )
        print()
        print(
            "| setting | weights (M) | volume | preprocessed H x W x D | s / volume | peak MiB "
            "| s / volume, flip TTA | peak MiB, TTA | TTA / plain |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(row)


if __name__ == "__main__":
    main()
