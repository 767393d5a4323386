"""What does the training loop cost beyond the network? (CPU or CUDA benchmark)

Measures, in one run on this machine, for a 2D ummkd setting (``--network demo``: the demo's
MONAI U-Net 16-32-64-128 with per-modality norms on 96x96 stacks of 3 slices; ``--network
paper``: the paper's DilatedResNet2d, base 16, on 256x256 stacks), batch 8 CT + 8 MR, paper
segmentation loss + 0.5 x KD, Adam 2e-3 with StepLR:

* ``ratio``: **Lightning vs bare PyTorch.** ``Trainer.fit`` of
  :class:`~ummkd.lightning.module.UMMKDModule` versus a plain loop running the module's objective
  (:class:`~ummkd.losses.UnpairedObjective`), finiteness check, backward, Adam step and scheduler
  step, on the same model initialisation, seeds and pre-built batches (a
  ``DataLoader(list_of_batches, batch_size=None)`` over tensors already on the device, so neither
  side loads data).
* ``fixed``: **Lightning's fixed cost per step**, the same comparison on a network of one 1x1
  convolution and one norm (batch 2 + 2 of 3x16x16), where the step is almost all loop
  overhead. Divided by the bare step time of ``ratio``, it gives a low-noise estimate of the
  same ratio.
* ``kd``: **distillation share**, the bare step with ``kd_weight`` 0.5 versus 0, and the
  forward + backward of :class:`~ummkd.losses.ModalityDistillationLoss` alone on one step's
  logits.
* ``bf16``: **bf16 vs fp32**, the bare step under ``torch.autocast(dtype=torch.bfloat16)``
  versus fp32, and whether every loss stays finite.

Method: the variants of a repeat run one after the other, and the order of Lightning and the
bare loop alternates between repeats, so slow drifts of the machine cancel. A run's step time
is the **median of its per-step times** after ``--warmup`` (a time point at the end of every
step: ``perf_counter`` on a CPU, a CUDA event on a GPU, so the host work still overlaps the
queued GPU work), which ignores the odd step that another process delays; the mean is
reported too, since a median also hides costs paid every n-th step. The tables give the median
over ``--repeats`` of the per-repeat values, with the range over repeats. Lightning runs
without a logger, progress bar or checkpointing (their costs are not measured). The batches are real
samples of the synthetic phantoms (generated in ``--root`` when missing, reoriented to RAS,
augmentation off), drawn once.

Usage::

    python benchmarks/overhead.py [--device cpu|cuda] [--threads N] [--network demo|paper]
        [--precision 32|bf16-mixed] [--sections ratio fixed kd bf16] [--steps 50]
        [--warmup 10] [--repeats 4] [--json results.json]

Prints the machine and markdown tables; ``--append docs/performance.md`` also adds them there
as a dated section (``make bench`` does).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from monai.networks.nets import UNet
from monai.utils import convert_to_tensor
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ummkd.data.io import write_json
from ummkd.lightning.datamodule import SyntheticOptions, UnpairedDataModule
from ummkd.lightning.module import UMMKDModule
from ummkd.losses import UnpairedObjective
from ummkd.nn import DilatedResNet2d
from ummkd.provenance import cpu_model

from bench_report import add_append_argument, results_appended_to

Batch = dict[str, dict[str, Tensor]]
MODALITIES = ("ct", "mr")
SECTIONS = ("ratio", "fixed", "kd", "bf16")
PATCH = {"demo": 96, "paper": 256}


def machine(device: torch.device) -> str:
    """One line describing the device, threads and library versions."""
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_model()}, {torch.get_num_threads()} torch threads"
    )
    return f"{where}, torch {torch.__version__}, lightning {pl.__version__}"


def plain(tensor: Tensor, device: torch.device) -> Tensor:
    """A contiguous copy on ``device`` as a plain ``torch.Tensor`` (MONAI metadata dropped)."""
    return convert_to_tensor(tensor, track_meta=False).to(device, copy=True).contiguous()


def build_batches(
    root: str, distinct: int, batch_size: int, patch: int, device: torch.device
) -> tuple[list[Batch], int]:
    """``distinct`` training batches (plain tensors on ``device``), drawn once, and the classes."""
    dm = UnpairedDataModule(
        root=root,
        synthetic=SyntheticOptions(generate=True),
        modalities=list(MODALITIES),
        orientation="RAS",
        patch_size=[patch, patch],
        batch_size=batch_size,
        steps_per_epoch=distinct,
        num_workers=0,
        augmentation=None,
        check="shallow",
    )
    dm.setup("fit")
    batches: list[Batch] = []
    for batch, _, _ in dm.train_dataloader():
        batches.append(
            {
                m: {
                    "image": plain(batch[m]["image"], device).float(),
                    "label": plain(batch[m]["label"], device),
                }
                for m in MODALITIES
            }
        )
    return batches[:distinct], dm.num_classes


def build_network(kind: str, num_classes: int) -> nn.Module:
    """The demo U-Net, the paper's DilatedResNet2d, or a one-convolution network (``tiny``)."""
    if kind == "demo":
        return UNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=num_classes,
            channels=(16, 32, 64, 128),
            strides=(2, 2, 2),
            num_res_units=1,
            norm="batch",
            dropout=0.1,
        )
    if kind == "paper":
        return DilatedResNet2d(3, num_classes, base_channels=16, dropout=0.25)
    if kind == "tiny":
        return nn.Sequential(nn.Conv2d(3, num_classes, 1), nn.BatchNorm2d(num_classes))
    raise ValueError(f"unknown network {kind!r} (demo, paper, tiny)")


def build_module(
    kind: str, num_classes: int, device: torch.device, kd_weight: float = 0.5, seed: int = 0
) -> UMMKDModule:
    """A module with per-modality norms around network ``kind``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return UMMKDModule(
        build_network(kind, num_classes),
        modalities=list(MODALITIES),
        num_classes=num_classes,
        norm="modality",
        kd_weight=kd_weight,
        kd_temperature=2.0,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.002),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.8),
    ).to(device)


def _now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepTimer:
    """Marks the end of every step: ``perf_counter`` on a CPU, CUDA events on a GPU.

    The CUDA events are recorded into the stream without synchronizing, so the host-side work
    of the loop (Lightning's hooks and logging) still overlaps the queued GPU work, as in real
    training; the times are read after the run.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._marks: list[Any] = []

    def mark(self) -> None:
        """Record a time point (the first one is the start of step 1)."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    @property
    def steps(self) -> int:
        """Number of steps marked so far."""
        return max(0, len(self._marks) - 1)

    def step_times(self, warmup: int) -> list[float]:
        """Seconds of every step after the first ``warmup`` steps."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            deltas = [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(self._marks)]
        else:
            deltas = [b - a for a, b in itertools.pairwise(self._marks)]
        return deltas[warmup:]


class _StepClock(pl.Callback):
    """Marks the start of training and the end of every training batch."""

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def on_train_start(self, *args: Any, **kwargs: Any) -> None:
        self.timer.mark()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.timer.mark()


def run_lightning(
    template: UMMKDModule,
    batches: list[Batch],
    warmup: int,
    seed: int,
    device: torch.device,
    precision: str,
) -> tuple[list[float], float]:
    """(per-step seconds after warm-up, total fit seconds) of ``Trainer.fit`` over ``batches``."""
    module = copy.deepcopy(template)
    timer = StepTimer(device)
    start = _now(device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[_StepClock(timer)],
    )
    torch.manual_seed(seed)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    total = _now(device) - start
    if timer.steps != len(batches):
        raise RuntimeError(f"Lightning ran {timer.steps} steps, expected {len(batches)}")
    return timer.step_times(warmup), total


def run_bare(
    template: UMMKDModule,
    batches: list[Batch],
    warmup: int,
    seed: int,
    device: torch.device,
    *,
    kd_weight: float | None = None,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> tuple[list[float], float, list[float]]:
    """(per-step seconds after warm-up, total seconds, losses) of a plain PyTorch loop.

    The step is the module's objective (:class:`~ummkd.losses.UnpairedObjective`, with
    ``kd_weight`` instead of the module's weight when given) plus Lightning's automatic
    optimization: finiteness check, zero_grad, backward, Adam step and scheduler step.
    ``autocast`` wraps the objective.
    """
    module = copy.deepcopy(template)
    objective = module.objective
    if kd_weight is not None:
        objective = UnpairedObjective(objective.seg_loss, objective.kd_loss, kd_weight)
    start = _now(device)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    module.train()
    torch.manual_seed(seed)
    timer = StepTimer(device)
    timer.mark()
    losses: list[Tensor] = []
    for batch in DataLoader(batches, batch_size=None):
        with autocast():
            total = objective(module, batch, MODALITIES).total
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {timer.steps + 1}")
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        scheduler.step()
        losses.append(total.detach())
        timer.mark()
    total_seconds = _now(device) - start
    return timer.step_times(warmup), total_seconds, [float(v) for v in losses]


def kd_alone_time(template: UMMKDModule, batch: Batch, iterations: int) -> float:
    """Seconds of one forward + backward of the KD loss on one step's (fp32) logits."""
    module = copy.deepcopy(template).train()
    device = next(module.parameters()).device
    with torch.no_grad():
        logits = {m: module(batch[m]["image"], m) for m in MODALITIES}
    labels = {m: batch[m]["label"] for m in MODALITIES}
    leaves = {m: v.clone().requires_grad_(True) for m, v in logits.items()}
    for _ in range(3):
        module.objective.kd_loss(leaves, labels).backward()
    start = _now(device)
    for _ in range(iterations):
        module.objective.kd_loss(leaves, labels).backward()
    return (_now(device) - start) / iterations


def tiny_batches(steps: int, num_classes: int, device: torch.device) -> list[Batch]:
    """``steps`` copies of one batch of 2 + 2 random 3x16x16 images with random labels."""
    g = torch.Generator().manual_seed(0)
    batch = {
        m: {
            "image": torch.randn(2, 3, 16, 16, generator=g).to(device),
            "label": torch.randint(0, num_classes, (2, 1, 16, 16), generator=g).to(device),
        }
        for m in MODALITIES
    }
    return [batch] * steps


def main() -> None:
    """Parse the options, run the selected sections and print (and optionally save) tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--network", choices=("demo", "paper"), default="demo")
    parser.add_argument("--patch", type=int, default=None, help="default: 96 demo, 256 paper")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--steps", type=int, default=50, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=10, help="steps excluded from step times")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--fixed-steps", type=int, default=300, help="steps of the tiny runs")
    parser.add_argument("--distinct", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--batch-size", type=int, default=8, help="per modality")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    add_append_argument(parser)
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    # as with the configs' seed_everything: the module then reseeds every batch (exact resume)
    pl.seed_everything(0, verbose=False)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    patch = args.patch or PATCH[args.network]
    amp_dtype = torch.bfloat16

    def bf16() -> AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=amp_dtype)

    main_autocast = bf16 if args.precision == "bf16-mixed" else nullcontext

    distinct, num_classes = build_batches(args.root, args.distinct, args.batch_size, patch, device)
    batches = [distinct[i % len(distinct)] for i in range(args.steps)]
    template = build_module(args.network, num_classes, device)
    tiny = build_module("tiny", num_classes, device)
    tiny_data = tiny_batches(args.fixed_steps, num_classes, device)
    tiny_warmup = args.fixed_steps // 5
    slices = sum(batches[0][m]["image"].shape[0] for m in MODALITIES)
    sections = set(args.sections)

    results: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    finite_bf16 = True
    last_loss: dict[str, float] = {}
    for r in range(args.repeats):
        seed = 1000 + r
        line = [f"repeat {r + 1}/{args.repeats}:"]
        if "ratio" in sections or "fixed" in sections:
            order = ("lightning", "bare") if r % 2 == 0 else ("bare", "lightning")
            for loop in order:
                if loop == "lightning":
                    steps, total = run_lightning(
                        template, batches, args.warmup, seed, device, args.precision
                    )
                else:
                    steps, total, _ = run_bare(
                        template, batches, args.warmup, seed, device, autocast=main_autocast
                    )
                record(f"{loop}_step", statistics.median(steps))
                record(f"{loop}_step_mean", statistics.fmean(steps))
                record(f"{loop}_total", total)
            record("ratio_step", results["lightning_step"][-1] / results["bare_step"][-1])
            record(
                "ratio_step_mean",
                results["lightning_step_mean"][-1] / results["bare_step_mean"][-1],
            )
            record("ratio_total", results["lightning_total"][-1] / results["bare_total"][-1])
            line.append(
                f"lightning {results['lightning_step'][-1] * 1e3:.1f} ms, "
                f"bare {results['bare_step'][-1] * 1e3:.1f} ms"
            )
        if "fixed" in sections:
            for loop in order:
                if loop == "lightning":
                    steps, _ = run_lightning(
                        tiny, tiny_data, tiny_warmup, seed, device, args.precision
                    )
                else:
                    steps, _, _ = run_bare(
                        tiny, tiny_data, tiny_warmup, seed, device, autocast=main_autocast
                    )
                record(f"tiny_{loop}_step", statistics.median(steps))
            fixed = results["tiny_lightning_step"][-1] - results["tiny_bare_step"][-1]
            record("fixed_overhead", fixed)
            record("ratio_from_fixed", 1 + fixed / results["bare_step"][-1])
            line.append(f"fixed overhead {fixed * 1e3:.2f} ms")
        if "kd" in sections:
            bare_steps, _, _ = run_bare(template, batches, args.warmup, seed, device)
            nokd_steps, _, _ = run_bare(template, batches, args.warmup, seed, device, kd_weight=0)
            kd_time = kd_alone_time(template, batches[0], 20)
            kd_bare = statistics.median(bare_steps)
            record("kd_bare_step", kd_bare)
            record("nokd_step", statistics.median(nokd_steps))
            record("kd_share_diff", (kd_bare - results["nokd_step"][-1]) / kd_bare)
            record("kd_alone", kd_time)
            record("kd_share_alone", kd_time / kd_bare)
            line.append(f"no-KD {results['nokd_step'][-1] * 1e3:.1f} ms, KD {kd_time * 1e3:.2f} ms")
        if "bf16" in sections:
            bf_steps, _, bf_losses = run_bare(
                template, batches, args.warmup, seed, device, autocast=bf16
            )
            fp_steps, _, fp_losses = run_bare(template, batches, args.warmup, seed, device)
            record("bf16_step", statistics.median(bf_steps))
            record("fp32_step", statistics.median(fp_steps))
            record("bf16_speedup", results["fp32_step"][-1] / results["bf16_step"][-1])
            finite_bf16 &= all(torch.isfinite(torch.tensor(bf_losses)).tolist())
            last_loss = {"fp32": fp_losses[-1], "bf16": bf_losses[-1]}
            line.append(
                f"bf16 {results['bf16_step'][-1] * 1e3:.1f} ms, "
                f"fp32 {results['fp32_step'][-1] * 1e3:.1f} ms"
            )
        print(" ".join(line), flush=True)

    title = "Lightning overhead, KD share and bf16 (overhead.py)"
    with results_appended_to(args.append, title, machine=machine(device)):
        med = {k: statistics.median(v) for k, v in results.items()}
        spread = {k: (min(v), max(v)) for k, v in results.items()}
        print()
        print(f"machine: {machine(device)}, {datetime.date.today().isoformat()}")
        print(
            f"setting: {args.network} network, {slices} slices/step ({args.batch_size} CT + "
            f"{args.batch_size} MR, 3x{patch}x{patch}), precision {args.precision}, {args.steps} "
            f"steps ({args.warmup} warm-up), {args.repeats} repeats, {num_classes} classes"
        )
        if "lightning_step" in med:
            print()
            print("| loop | step, median (ms) | step, mean (ms) | slices/s | whole run (s) |")
            print("|---|---|---|---|---|")
            for name, key in (("Lightning `Trainer.fit`", "lightning"), ("bare PyTorch", "bare")):
                step, mean, total = (med[f"{key}{k}"] for k in ("_step", "_step_mean", "_total"))
                print(
                    f"| {name} | {step * 1e3:.1f} | {mean * 1e3:.1f} | {slices / step:.1f} | "
                    f"{total:.2f} |"
                )
            lo, hi = spread["ratio_step"]
            mlo, mhi = spread["ratio_step_mean"]
            print()
            print(
                f"Lightning / bare step time, median over repeats of the per-repeat ratios: "
                f"{med['ratio_step']:.3f} (range {lo:.3f}-{hi:.3f}) from median step times, "
                f"{med['ratio_step_mean']:.3f} (range {mlo:.3f}-{mhi:.3f}) from mean step times; "
                f"whole run incl. Trainer set-up: {med['ratio_total']:.3f}"
            )
        if "fixed_overhead" in med:
            lo, hi = spread["fixed_overhead"]
            print(
                f"Lightning's fixed cost per step (1-conv network, {args.fixed_steps} steps): "
                f"{med['fixed_overhead'] * 1e3:.2f} ms (range {lo * 1e3:.2f}-{hi * 1e3:.2f}); "
                f"Lightning step {med['tiny_lightning_step'] * 1e3:.2f} ms, bare "
                f"{med['tiny_bare_step'] * 1e3:.2f} ms; implied ratio 1 + fixed / bare step = "
                f"{med['ratio_from_fixed']:.3f}"
            )
        if "kd_alone" in med:
            lo, hi = spread["kd_share_diff"]
            print()
            print("| measurement | value |")
            print("|---|---|")
            print(f"| bare step, kd_weight 0.5 (ms) | {med['kd_bare_step'] * 1e3:.1f} |")
            print(f"| bare step, kd_weight 0 (ms) | {med['nokd_step'] * 1e3:.1f} |")
            print(
                f"| KD share from the difference | {med['kd_share_diff'] * 100:.1f} % "
                f"(range {lo * 100:.1f} to {hi * 100:.1f} %) |"
            )
            print(f"| KD loss forward + backward alone (ms) | {med['kd_alone'] * 1e3:.2f} |")
            print(f"| KD share from the isolated timing | {med['kd_share_alone'] * 100:.2f} % |")
        if "bf16_step" in med:
            print()
            print("| precision (bare loop) | step (ms) | slices/s | last loss |")
            print("|---|---|---|---|")
            for name, key in (("fp32", "fp32"), ("bf16 autocast", "bf16")):
                step = med[f"{key}_step"]
                print(f"| {name} | {step * 1e3:.1f} | {slices / step:.1f} | {last_loss[key]:.4f} |")
            lo, hi = spread["bf16_speedup"]
            print()
            print(
                f"bf16 speed-up (fp32 / bf16 step time): {med['bf16_speedup']:.2f} "
                f"(range {lo:.2f}-{hi:.2f}); all bf16 losses finite: {finite_bf16}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine(device),
            "date": datetime.date.today().isoformat(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "slices_per_step": slices,
            "median": med,
            "per_repeat": results,
            "bf16_finite": finite_bf16,
            "last_loss": last_loss,
        }
        write_json(payload, args.json)


if __name__ == "__main__":
    main()
