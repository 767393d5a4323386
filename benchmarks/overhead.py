"""What does the training loop cost beyond the network? (CPU benchmark)

Measures, in one run on this machine, for the default 2D demo setting (``configs/demo.yaml``:
MONAI U-Net 16-32-64-128 with per-modality norms, 96x96 stacks of 3 slices, batch 8 CT + 8 MR,
paper segmentation loss + 0.5 x KD, Adam 2e-3 with StepLR):

* **Lightning vs bare PyTorch.** ``Trainer.fit`` of :class:`~ummkd.lightning.module.UMMKDModule`
  versus a plain loop doing the same forward passes (``use_modality``), losses, finiteness check,
  backward, Adam step and scheduler step, on the same model initialisation, the same seeds and the
  same pre-built in-memory batches (a ``DataLoader(list_of_batches, batch_size=None)``, so neither
  side runs data loading or augmentation).
* **Distillation share.** The bare step with ``kd_weight`` 0.5 versus 0, and the forward +
  backward of :class:`~ummkd.losses.ModalityDistillationLoss` alone on one step's logits.
* **bf16 vs fp32.** The bare step under ``torch.autocast("cpu", dtype=torch.bfloat16)`` versus
  fp32, and whether every loss stays finite.

Variants are interleaved within each repeat; a run's step time is the mean over its steps
after ``--warmup`` (timestamps at the end of every step), and the tables give medians over
``--repeats``. The batches are real samples of the synthetic phantoms (``data/synthetic``,
reoriented to RAS, augmentation off), drawn once.

Usage::

    python benchmarks/overhead.py [--root data/synthetic] [--steps 25] [--warmup 5]
        [--repeats 3] [--distinct 8]

Prints the machine and markdown tables to paste into docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from monai.networks.nets import UNet
from monai.utils import convert_to_tensor
from torch import Tensor
from torch.utils.data import DataLoader

from ummkd.lightning.datamodule import UnpairedDataModule
from ummkd.lightning.module import UMMKDModule

Batch = dict[str, dict[str, Tensor]]
MODALITIES = ("ct", "mr")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plain(tensor: Tensor) -> Tensor:
    """A contiguous copy as a plain ``torch.Tensor`` (MONAI ``MetaTensor`` metadata dropped)."""
    return convert_to_tensor(tensor, track_meta=False).contiguous().clone()


def build_batches(root: str, distinct: int, batch_size: int) -> tuple[list[Batch], int]:
    """``distinct`` demo training batches (plain tensors), drawn once, and the class count."""
    dm = UnpairedDataModule(
        root=root,
        modalities=list(MODALITIES),
        orientation="RAS",
        patch_size=[96, 96],
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
                    "image": plain(batch[m]["image"]).float(),
                    "label": plain(batch[m]["label"]),
                }
                for m in MODALITIES
            }
        )
    return batches[:distinct], dm.num_classes


def build_module(num_classes: int, kd_weight: float = 0.5, seed: int = 0) -> UMMKDModule:
    """The demo's network and module, initialised from ``seed``."""
    torch.manual_seed(seed)
    network = UNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=num_classes,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
        norm="batch",
        dropout=0.1,
    )
    return UMMKDModule(
        network,
        modalities=list(MODALITIES),
        num_classes=num_classes,
        norm="modality",
        kd_weight=kd_weight,
        kd_temperature=2.0,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.002),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.8),
    )


def steady_step_time(stamps: Sequence[float], warmup: int) -> float:
    """Mean seconds per step after ``warmup`` steps, from end-of-step timestamps."""
    return (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


class _StepClock(pl.Callback):
    """Records ``time.perf_counter()`` at the end of every training batch."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.stamps.append(time.perf_counter())


def run_lightning(
    template: UMMKDModule, batches: list[Batch], warmup: int, seed: int
) -> tuple[float, float]:
    """(steady seconds/step, total fit seconds) of ``Trainer.fit`` over ``batches``."""
    module = copy.deepcopy(template)
    clock = _StepClock()
    start = time.perf_counter()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    torch.manual_seed(seed)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    total = time.perf_counter() - start
    if len(clock.stamps) != len(batches):
        raise RuntimeError(f"Lightning ran {len(clock.stamps)} steps, expected {len(batches)}")
    return steady_step_time(clock.stamps, warmup), total


def run_bare(
    template: UMMKDModule,
    batches: list[Batch],
    warmup: int,
    seed: int,
    *,
    kd_weight: float | None = None,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> tuple[float, float, list[float]]:
    """(steady seconds/step, total seconds, losses) of a plain PyTorch loop over ``batches``.

    The step mirrors ``UMMKDModule.training_step`` plus Lightning's automatic optimization:
    forward of every modality with its norms, segmentation losses, ``kd_weight`` x KD (the
    module's weight unless given), finiteness check, zero_grad, backward, Adam step and scheduler
    step. ``autocast`` wraps the forward and the losses.
    """
    module = copy.deepcopy(template)
    weight = module.kd_weight if kd_weight is None else kd_weight
    start = time.perf_counter()
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    module.train()
    torch.manual_seed(seed)
    stamps: list[float] = []
    losses: list[float] = []
    for batch in DataLoader(batches, batch_size=None):
        with autocast():
            logits: dict[str, Tensor] = {}
            labels: dict[str, Tensor] = {}
            total = torch.zeros(())
            for m in MODALITIES:
                logits[m] = module(batch[m]["image"], m)
                labels[m] = batch[m]["label"]
                total = total + module.seg_loss(logits[m], labels[m])
            if weight > 0:
                total = total + weight * module.kd_loss(logits, labels)
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {len(stamps)}")
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(total.detach()))
        stamps.append(time.perf_counter())
    return steady_step_time(stamps, warmup), time.perf_counter() - start, losses


def kd_alone_time(template: UMMKDModule, batch: Batch, iterations: int) -> float:
    """Seconds of one forward + backward of the KD loss on one step's (fp32) logits."""
    module = copy.deepcopy(template).train()
    with torch.no_grad():
        logits = {m: module(batch[m]["image"], m) for m in MODALITIES}
    labels = {m: batch[m]["label"] for m in MODALITIES}
    leaves = {m: v.clone().requires_grad_(True) for m, v in logits.items()}
    for _ in range(3):
        module.kd_loss(leaves, labels).backward()
    start = time.perf_counter()
    for _ in range(iterations):
        module.kd_loss(leaves, labels).backward()
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--steps", type=int, default=25, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=5, help="steps excluded from step times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--batch-size", type=int, default=8, help="per modality")
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    distinct, num_classes = build_batches(args.root, args.distinct, args.batch_size)
    batches = [distinct[i % len(distinct)] for i in range(args.steps)]
    template = build_module(num_classes)
    slices = sum(batches[0][m]["image"].shape[0] for m in MODALITIES)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    results: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    finite_bf16 = True
    last_loss: dict[str, float] = {}
    for r in range(args.repeats):
        seed = 1000 + r
        pl_step, pl_total = run_lightning(template, batches, args.warmup, seed)
        bare_step, bare_total, _ = run_bare(template, batches, args.warmup, seed)
        nokd_step, _, _ = run_bare(template, batches, args.warmup, seed, kd_weight=0.0)
        kd_time = kd_alone_time(template, batches[0], 20)
        bf_step, _, bf_losses = run_bare(template, batches, args.warmup, seed, autocast=bf16)
        fp_step, _, fp_losses = run_bare(template, batches, args.warmup, seed)
        finite_bf16 &= all(torch.isfinite(torch.tensor(bf_losses)).tolist())
        last_loss = {"fp32": fp_losses[-1], "bf16": bf_losses[-1]}
        for key, value in {
            "pl_step": pl_step,
            "pl_total": pl_total,
            "bare_step": bare_step,
            "bare_total": bare_total,
            "ratio_step": pl_step / bare_step,
            "ratio_total": pl_total / bare_total,
            "nokd_step": nokd_step,
            "kd_share_diff": (bare_step - nokd_step) / bare_step,
            "kd_alone": kd_time,
            "kd_share_alone": kd_time / bare_step,
            "bf16_step": bf_step,
            "fp32_step": fp_step,
            "bf16_speedup": fp_step / bf_step,
        }.items():
            record(key, value)
        print(
            f"repeat {r + 1}/{args.repeats}: lightning {pl_step * 1e3:.1f} ms, "
            f"bare {bare_step * 1e3:.1f} ms, no-KD {nokd_step * 1e3:.1f} ms, "
            f"KD alone {kd_time * 1e3:.2f} ms, bf16 {bf_step * 1e3:.1f} ms, "
            f"fp32 {fp_step * 1e3:.1f} ms",
            flush=True,
        )

    med = {k: statistics.median(v) for k, v in results.items()}
    spread = {k: (min(v), max(v)) for k, v in results.items()}
    print()
    print(
        f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, lightning {pl.__version__}, "
        f"{datetime.date.today().isoformat()}"
    )
    print(
        f"setting: demo U-Net, {slices} slices/step ({args.batch_size} CT + {args.batch_size} "
        f"MR, 3x96x96), {args.steps} steps ({args.warmup} warm-up), {args.repeats} repeats, "
        f"{num_classes} classes"
    )
    print()
    print("| loop | step (ms) | slices/s | whole run (s) |")
    print("|---|---|---|---|")
    for name, step, total in (
        ("Lightning `Trainer.fit`", med["pl_step"], med["pl_total"]),
        ("bare PyTorch", med["bare_step"], med["bare_total"]),
    ):
        print(f"| {name} | {step * 1e3:.1f} | {slices / step:.1f} | {total:.2f} |")
    lo, hi = spread["ratio_step"]
    print()
    print(
        f"Lightning / bare step time: {med['ratio_step']:.3f} (range {lo:.3f}-{hi:.3f}); "
        f"bare / Lightning: {1 / med['ratio_step']:.3f}; whole run incl. Trainer set-up: "
        f"{med['ratio_total']:.3f}"
    )
    print()
    print("| measurement | value |")
    print("|---|---|")
    print(f"| bare step, kd_weight 0.5 (ms) | {med['bare_step'] * 1e3:.1f} |")
    print(f"| bare step, kd_weight 0 (ms) | {med['nokd_step'] * 1e3:.1f} |")
    lo, hi = spread["kd_share_diff"]
    print(
        f"| KD share from the difference | {med['kd_share_diff'] * 100:.1f} % "
        f"(range {lo * 100:.1f} to {hi * 100:.1f} %) |"
    )
    print(f"| KD loss forward + backward alone (ms) | {med['kd_alone'] * 1e3:.2f} |")
    print(f"| KD share from the isolated timing | {med['kd_share_alone'] * 100:.2f} % |")
    print()
    print("| precision (bare loop) | step (ms) | slices/s | last loss |")
    print("|---|---|---|---|")
    print(
        f"| fp32 | {med['fp32_step'] * 1e3:.1f} | {slices / med['fp32_step']:.1f} | "
        f"{last_loss['fp32']:.4f} |"
    )
    print(
        f"| bf16 autocast | {med['bf16_step'] * 1e3:.1f} | {slices / med['bf16_step']:.1f} | "
        f"{last_loss['bf16']:.4f} |"
    )
    lo, hi = spread["bf16_speedup"]
    print()
    print(
        f"bf16 speed-up (fp32 / bf16 step time): {med['bf16_speedup']:.2f} "
        f"(range {lo:.2f}-{hi:.2f}); all bf16 losses finite: {finite_bf16}"
    )


if __name__ == "__main__":
    main()
