"""The distillation loss under ``torch.distributed`` (2 CPU processes, gloo) vs 1 process.

Takes about 2 s (process start-up), so it is not marked slow."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ummkd.losses import ModalityDistillationLoss

WORLD_SIZE = 2
NUM_CLASSES = 4


def _global_batches() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """CT and MR batches of 4 samples; each rank gets 2. Class 3 occurs only in CT's second half,
    class 2 only in MR's first half, so per-rank statistics differ from global ones."""
    g = torch.Generator().manual_seed(0)
    logits = {m: 3 * torch.randn(4, NUM_CLASSES, 6, 6, generator=g) for m in ("ct", "mr")}
    labels = {m: torch.randint(0, 2, (4, 6, 6), generator=g) for m in ("ct", "mr")}
    labels["ct"][2:, :2] = 3
    labels["mr"][:2, :3] = 2
    return logits, labels


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        logits, labels = _global_batches()
        local_logits = {
            m: x.chunk(WORLD_SIZE)[rank].clone().requires_grad_(True) for m, x in logits.items()
        }
        local_labels = {m: y.chunk(WORLD_SIZE)[rank] for m, y in labels.items()}
        loss_fn = ModalityDistillationLoss(sync="auto")
        loss = loss_fn(local_logits, local_labels)
        loss.backward()
        unsynced = ModalityDistillationLoss(sync=False)(local_logits, local_labels)
        torch.save(
            {
                "loss": loss.detach(),
                "unsynced": unsynced.detach(),
                "grads": {m: x.grad for m, x in local_logits.items()},
                "distributions": {m: tuple(d) for m, d in loss_fn.distributions.items()},
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_process_sync_equals_single_process_on_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    logits, labels = _global_batches()
    logits = {m: x.clone().requires_grad_(True) for m, x in logits.items()}
    loss_fn = ModalityDistillationLoss(sync="auto")  # not initialized here: plain local loss
    full_loss = loss_fn(logits, labels)
    full_loss.backward()

    for rank, result in enumerate(results):
        torch.testing.assert_close(result["loss"], full_loss.detach())
        for m in ("ct", "mr"):
            probs, present = result["distributions"][m]
            torch.testing.assert_close(probs, loss_fn.distributions[m].probs)
            assert torch.equal(present, loss_fn.distributions[m].present)
            # Each rank's gradient is world_size x the single-process gradient of its slice; DDP
            # averages parameter gradients over ranks, which restores the single-process gradient.
            full_grad = logits[m].grad.chunk(WORLD_SIZE)[rank]
            assert full_grad.abs().sum() > 0
            torch.testing.assert_close(result["grads"][m] / WORLD_SIZE, full_grad)

        # Without sync each rank only sees its local statistics.
        local = ModalityDistillationLoss(sync=False)(
            {m: x.detach().chunk(WORLD_SIZE)[rank] for m, x in logits.items()},
            {m: y.chunk(WORLD_SIZE)[rank] for m, y in labels.items()},
        )
        torch.testing.assert_close(result["unsynced"], local)
        assert abs(local.item() - full_loss.item()) > 1e-3
