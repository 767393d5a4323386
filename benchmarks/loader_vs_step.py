"""Does the training loader keep up with the training step? (CPU benchmark)

Measures, in one run on this machine:

* batches/s delivered by ``UnpairedDataModule.train_dataloader()`` (one batch = one mini-batch of
  every modality) with the configured workers, after the cache is built;
* the training step time of the configured model on batches already in memory
  (forward of every modality with its norms, losses, backward, Adam step);

and reports the ratio: loader batches/s divided by step batches/s. A ratio above 1 means the
loader delivers faster than the step consumes, so it is not the bottleneck.

Usage::

    python benchmarks/loader_vs_step.py --root data/synthetic --workers 2 [--patch 96 96]
        [--base 4 --head 8] [--batches 40] [--repeats 3]

Prints a markdown table row (medians over ``--repeats``); ``--append docs/performance.md``
also adds it there as a dated section (``make bench`` does).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ummkd.lightning.datamodule import UnpairedDataModule
from ummkd.losses import ModalityDistillationLoss, SegmentationLoss
from ummkd.nn import DilatedResNet2d, use_modality
from ummkd.provenance import cpu_model

from bench_report import add_append_argument, results_appended_to


def loader_rate(dm: UnpairedDataModule, batches: int) -> float:
    """Batches/s of the combined training loader (first batch excluded: worker start-up)."""
    iterator = iter(dm.train_dataloader())
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def step_rate(dm: UnpairedDataModule, base: int, head: int, steps: int) -> float:
    """Training steps/s of DilatedResNet2d on one cached batch."""
    batch, _, _ = next(iter(dm.train_dataloader()))
    net = DilatedResNet2d(dm.in_channels, dm.num_classes, dm.modalities, base, 0.1, "batch", head)
    seg, kd = SegmentationLoss(num_classes=dm.num_classes), ModalityDistillationLoss()
    opt = torch.optim.Adam(net.parameters())

    def step() -> None:
        logits, labels, loss = {}, {}, 0.0
        for m in dm.modalities:
            with use_modality(net, m):
                logits[m] = net(batch[m]["image"])
            labels[m] = batch[m]["label"]
            loss = loss + seg(logits[m], labels[m])
        loss = loss + 0.5 * kd(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=2, default=[96, 96])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--orientation", default="RAS")
    parser.add_argument("--base", type=int, default=4)
    parser.add_argument("--head", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    add_append_argument(parser)
    args = parser.parse_args()
    dm = UnpairedDataModule(
        root=args.root,
        patch_size=args.patch,
        batch_size=args.batch_size,
        steps_per_epoch=args.batches + 2,
        num_workers=args.workers,
        orientation=args.orientation or None,
        check="shallow",
    )
    dm.setup("fit")
    loads = [loader_rate(dm, args.batches) for _ in range(args.repeats)]
    steps = [step_rate(dm, args.base, args.head, args.steps) for _ in range(args.repeats)]
    load, step = statistics.median(loads), statistics.median(steps)
    with results_appended_to(args.append, "Loader vs training step (loader_vs_step.py)"):
        print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads")
        print(
            "| dataset | patch | batch/mod. | workers | loader batches/s | step batches/s | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {args.root} | {args.patch[0]}x{args.patch[1]} | {args.batch_size} | "
            f"{args.workers} | {load:.1f} | {step:.2f} | {load / step:.1f} |"
        )


if __name__ == "__main__":
    main()
