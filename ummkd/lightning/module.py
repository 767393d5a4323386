"""`UMMKDModule`: the training/evaluation loop around the pure components (owns no math)."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from monai.data.utils import affine_to_spacing
from torch import Tensor, nn
from torchmetrics import MaxMetric

from ummkd.errors import UsageError
from ummkd.evaluation.inference import slicewise_predict, sliding_window_predict
from ummkd.evaluation.metrics import case_metrics, summarize_cases
from ummkd.losses import ModalityDistillationLoss, SegmentationLoss, UnpairedObjective
from ummkd.nn import (
    DilatedResNet2d,
    ModalityNorm,
    MultiStreamNet,
    convert_to_modality_norm,
    use_modality,
)
from ummkd.nn.dilated_resnet2d import OUTPUT_STRIDE
from ummkd.provenance import code_commit


def paper_adam(params: Any) -> torch.optim.Optimizer:
    """The paper's optimizer: Adam, learning rate 1e-3."""
    return torch.optim.Adam(params, lr=1e-3)


def paper_step_decay(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's 2D schedule: learning rate x0.95 every 1000 steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1000, gamma=0.95)


#: Checkpoint key of the commits of the code that trained the weights (see ``code_commit``).
CODE_COMMITS_KEY = "ummkd_code_commits"
_KERNEL_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
"""Modules whose ``weight`` is a kernel (weight decay); every other parameter is not decayed."""


def required_divisor(network: nn.Module) -> int:
    """The factor a 2D input's height and width must be divisible by for ``network``.

    MONAI U-Nets (and :class:`~ummkd.nn.MultiStreamUNet`) expose their per-level ``strides``;
    ummkd's dilated networks have a fixed output stride. Anything else gets 32, which covers
    the usual encoders with up to five halvings.
    """
    strides = getattr(network, "strides", None)
    if isinstance(strides, Sequence) and strides:
        factor = 1
        for stride in strides:
            factor *= int(stride if isinstance(stride, int) else max(stride))
        return factor
    if isinstance(network, DilatedResNet2d | MultiStreamNet):
        return OUTPUT_STRIDE
    return 32


class UMMKDModule(pl.LightningModule):
    """One segmentation network for several modalities: shared kernels, per-modality norms, KD.

    Each training step forwards every modality's mini-batch through the same network with its own
    normalization layers (``use_modality``), adds the per-modality segmentation losses and
    ``kd_weight`` times the cross-modality distillation loss, and takes one optimizer step.
    Variants are configuration: ``norm="shared"`` is joint training, ``kd_weight=0`` gives
    separate norms without KD, a single modality gives single-modality training.

    Args:
        network: The segmentation network (``in_channels`` -> ``num_classes`` logits).
        modalities: Modality names, in the fixed order used by every step.
        num_classes: Number of classes, background included.
        class_names: Class names ordered by id (for logging and reports).
        norm: ``"modality"`` (modality-specific norm layers; plain norms of ``network`` are
            converted) or ``"shared"`` (one set of norms for all modalities).
        kd_weight: Weight of the distillation loss (0.5 in the paper).
        kd_temperature: Softmax temperature of the class distributions (2 in the paper).
        kd_absent_classes: ``"mask"`` or ``"uniform"`` (the authors' code), see
            :class:`ummkd.losses.ModalityDistillationLoss`.
        kd_sync: All-reduce the class statistics across DDP ranks (global-batch distributions).
        seg_loss: ``"paper"`` (soft Dice + weighted CE) or ``"dicece"`` (MONAI DiceCELoss).
        weight_decay: L2 weight decay applied to convolution/linear kernels only.
        optimizer: Optimizer factory (default: Adam, lr 1e-3).
        lr_scheduler: Scheduler factory, stepped every optimizer step (default: x0.95 / 1000).
        spatial_mode: ``"2d"`` (slice-wise 2.5D inference) or ``"3d"`` (sliding window).
        num_adjacent: 2D: slices stacked as channels.
        roi_size: 3D: sliding-window size.
        sw_overlap: 3D sliding-window overlap (inference option, not saved).
        tta: Flip test-time augmentation (inference option, not saved).
        inference_batch_size: Slices / windows per inference batch (inference option, not saved).
        inference_divisible: 2D: slices are zero-padded to a multiple of this before the forward
            pass. ``None`` derives it from the network: the product of its ``strides`` (MONAI
            U-Nets), the output stride of ummkd's dilated networks, else 32.
        compile: Wrap the network with ``torch.compile``.
        non_finite_loss: ``"raise"`` stops training with a ``FloatingPointError`` naming the step
            and modality; ``"skip"`` skips that step's weight update (the learning-rate schedule
            still advances) and counts it in ``train/skipped_steps`` (single process only:
            under DDP every rank would have to skip together). Norm running statistics updated
            by the skipped forward are kept; a checkpoint with non-finite values is refused
            either way.
    """

    def __init__(
        self,
        network: nn.Module,
        modalities: list[str] | None = None,
        num_classes: int = 5,
        class_names: list[str] | None = None,
        norm: Literal["modality", "shared"] = "modality",
        kd_weight: float = 0.5,
        kd_temperature: float = 2.0,
        kd_absent_classes: Literal["mask", "uniform"] = "mask",
        kd_sync: bool = True,
        seg_loss: Literal["paper", "dicece"] = "paper",
        weight_decay: float = 1e-4,
        optimizer: OptimizerCallable = paper_adam,
        lr_scheduler: LRSchedulerCallable | None = paper_step_decay,
        spatial_mode: Literal["2d", "3d"] = "2d",
        num_adjacent: int = 3,
        roi_size: list[int] | None = None,
        sw_overlap: float = 0.5,
        tta: bool = False,
        inference_batch_size: int = 16,
        inference_divisible: int | None = None,
        compile: bool = False,
        non_finite_loss: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=[
                "sw_overlap",
                "tta",
                "inference_batch_size",
                "inference_divisible",
                "optimizer",
                "lr_scheduler",
            ]
        )
        self.modalities = list(modalities or ["ct", "mr"])
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes={num_classes}"
            )
        has_modality_norm = any(isinstance(m, ModalityNorm) for m in network.modules())
        if norm == "modality" and not has_modality_norm:
            network = convert_to_modality_norm(network, self.modalities)
        elif norm == "shared" and has_modality_norm:
            raise ValueError(
                "norm='shared' but the network already has modality-specific norms; build it "
                "with `modalities: null` (or use norm='modality')."
            )
        self.network = network
        self.inference_divisible = inference_divisible or required_divisor(network)
        self._forward_net: nn.Module = torch.compile(network) if compile else network
        self.objective = UnpairedObjective(
            SegmentationLoss(kind=seg_loss, num_classes=num_classes),
            ModalityDistillationLoss(
                temperature=kd_temperature,
                absent_classes=kd_absent_classes,
                sync="auto" if kd_sync else False,
            ),
            kd_weight=kd_weight,
        )
        self.non_finite_loss = non_finite_loss
        self.skipped_steps = 0
        self.weight_decay = weight_decay
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.spatial_mode = spatial_mode
        self.num_adjacent = num_adjacent
        self.roi_size = list(roi_size) if roi_size else None
        self.sw_overlap = sw_overlap
        self.tta = tta
        self.inference_batch_size = inference_batch_size
        self.val_dice_best = MaxMetric()
        self._eval_cases: list[dict[str, Any]] = []
        self._restored_dice_best: float | None = None
        self._code_commits: list[str] = []  # of the code that trained the weights, in order
        self.last_test_summary: dict[str, Any] | None = None

    # ------------------------------------------------------------------ forward / inference
    def forward(self, x: Tensor, modality: str) -> Tensor:
        """Logits of ``x`` computed with the normalization layers of ``modality``."""
        with use_modality(self.network, modality):
            return self._forward_net(x)

    @torch.no_grad()
    def predict_volume(self, volume: Tensor, modality: str) -> Tensor:
        """Class probabilities ``(C, H, W, D)`` of a preprocessed volume ``(1, H, W, D)``."""

        def predictor(x: Tensor) -> Tensor:
            return self(x, modality)

        if self.spatial_mode == "2d":
            return slicewise_predict(
                volume,
                predictor,
                num_adjacent=self.num_adjacent,
                batch_size=self.inference_batch_size,
                divisible=self.inference_divisible,
                tta=self.tta,
            )
        if not self.roi_size:
            raise ValueError("3D inference needs `roi_size` (linked from data.patch_size)")
        return sliding_window_predict(
            volume,
            predictor,
            roi_size=self.roi_size,
            overlap=self.sw_overlap,
            sw_batch_size=max(1, self.inference_batch_size // 8),
            tta=self.tta,
        )

    # ------------------------------------------------------------------ training
    @property
    def kd_loss(self) -> ModalityDistillationLoss:
        """The objective's distillation loss (its last class distributions are logged)."""
        return self.objective.kd_loss

    def training_step(
        self, batch: Mapping[str, Mapping[str, Tensor]], batch_idx: int
    ) -> Tensor | None:
        """One unpaired step: the objective over every modality, logged; non-finite policy."""
        total, terms, logits = self.objective(self, batch, self.modalities)
        batch_size = sum(batch[m]["image"].shape[0] for m in self.modalities)
        if self._logger_records_this_step():
            for m in self.modalities:
                self.log(f"train/seg_{m}", terms[f"seg_{m}"], batch_size=batch[m]["image"].shape[0])
            if "kd" in terms:
                self.log("train/kd", terms["kd"], batch_size=batch_size)
        if not torch.isfinite(total):
            message = self._non_finite_message(batch, batch_idx, logits, terms)
            if self.non_finite_loss != "skip":
                raise FloatingPointError(message)
            self.skipped_steps += 1
            rank_zero_warn(f"skipping the optimizer step: {message}")
            self.log("train/skipped_steps", float(self.skipped_steps))
            return None
        self.log("train/loss", total, batch_size=batch_size, prog_bar=True)
        return total

    def _logger_records_this_step(self) -> bool:
        """Whether the logger records this training step's values.

        The same rule as Lightning's: every ``log_every_n_steps`` optimizer steps, and on the
        step at which training is told to stop. Every ``self.log`` call costs Lightning a walk
        over the logged metric's state, so the loss terms (``train/seg_<modality>``,
        ``train/kd``) are logged only on these steps. They are ``on_step`` values, so the
        logger's curves are unchanged. Two consequences: between logging steps,
        ``trainer.callback_metrics`` holds the terms of the last logging step (monitor
        ``train/loss``, logged every step, rather than a term), and the progress bar shows
        ``train/loss`` only.
        """
        trainer = self._trainer
        if trainer is None:
            return False
        every = trainer.log_every_n_steps
        return every > 0 and ((self.global_step + 1) % every == 0 or trainer.should_stop)

    def _non_finite_message(
        self,
        batch: Mapping[str, Mapping[str, Tensor]],
        batch_idx: int,
        logits: Mapping[str, Tensor],
        terms: Mapping[str, Tensor],
    ) -> str:
        """Say where a non-finite loss comes from: step, modality, loss term, inputs or logits."""

        def bad(values: Mapping[str, Tensor]) -> list[str]:
            return [k for k, v in values.items() if not bool(torch.isfinite(v).all())]

        bad_inputs = bad({m: batch[m]["image"] for m in logits})
        bad_logits = bad(logits)
        bad_terms = bad(terms)
        bad_modalities = [
            m for m in logits if m in bad_inputs or m in bad_logits or f"seg_{m}" in bad_terms
        ]
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        return (
            f"non-finite training loss at step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}), modality {', '.join(bad_modalities) or 'none (KD term)'}: "
            f"{values}; non-finite inputs: {bad_inputs or 'none'}; "
            f"non-finite logits: {bad_logits or 'none'}"
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Reseed Python, NumPy and torch from ``(global seed, epoch, batch, rank)``.

        Lightning does not checkpoint random states, so without this a run resumed with
        ``--ckpt_path`` would replay the random stream of the first steps (dropout). Reseeding
        every batch makes the stream a function of the position in training, also for a resume
        from the middle of an epoch. The data side (order, sampling, augmentation) is seeded per
        sample by :class:`~ummkd.lightning.datamodule.UnpairedDataModule`. Only active when a
        global seed is set (``seed_everything``, i.e. ``PL_GLOBAL_SEED``).
        """
        base = os.environ.get("PL_GLOBAL_SEED")
        if base is None:
            return
        entropy = [int(base) % 2**32, self.current_epoch, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        # Only the generators this process draws from. `torch.manual_seed` would also queue
        # lazy seeding of every accelerator type that is not initialised (XPU, MTIA, CUDA on a
        # CPU run) and format a stack trace for each, every step (see docs/performance.md).
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else 0
            torch.cuda.default_generators[index].manual_seed(seed)
        elif self.device.type == "mps":
            torch.mps.manual_seed(seed)

    # ------------------------------------------------------------------ validation / test
    def on_fit_start(self) -> None:
        """Note the code's commit (for the checkpoints); refuse step skipping under DDP."""
        code_commit()
        if self.non_finite_loss == "skip" and self.trainer.world_size > 1:
            raise ValueError(
                "model.non_finite_loss='skip' works in a single process only (DDP ranks must "
                "all step together); use 'raise' with several devices."
            )

    def on_train_start(self) -> None:
        """Reset the best-Dice tracker so the sanity check does not count (keep a resumed best)."""
        self.val_dice_best.reset()
        restored, self._restored_dice_best = self._restored_dice_best, None
        resuming = self._trainer is None or self.trainer.ckpt_path is not None
        if restored is not None and resuming:  # not when fine-tuning from loaded weights
            self.val_dice_best.update(torch.tensor(restored, device=self.device))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse non-finite weights; store the best validation Dice and the training commits.

        The commits are those of the code that trained the weights, one more after a resume
        on another commit.

        Raises:
            FloatingPointError: if a floating-point tensor of the state dict has NaN/inf values
                (the previous checkpoint files are left as they are).
        """
        state = {
            k: v
            for k, v in checkpoint.get("state_dict", {}).items()
            if isinstance(v, Tensor) and v.is_floating_point()
        }
        if state:
            finite = torch.stack([torch.isfinite(v).all() for v in state.values()]).tolist()
            bad = [k for k, ok in zip(state, finite, strict=True) if not ok]
            if bad:
                raise FloatingPointError(
                    f"refusing to save a checkpoint at step {self.global_step}: non-finite "
                    f"values in {len(bad)} tensor(s), e.g. {bad[:3]}"
                )
        if self.val_dice_best.update_called:
            checkpoint["ummkd_val_dice_best"] = float(self.val_dice_best.max_value)
        if self._code_commits[-1:] != [code_commit()]:
            self._code_commits.append(code_commit())
        checkpoint[CODE_COMMITS_KEY] = list(self._code_commits)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the best validation Dice so far (logged as ``val/dice_best`` after resuming)."""
        best = checkpoint.get("ummkd_val_dice_best")
        self._restored_dice_best = float(best) if best is not None else None
        self._code_commits = list(checkpoint.get(CODE_COMMITS_KEY, []))

    def _evaluate_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        modality = batch["modality"][0]
        image = batch["image"][0]
        label = batch["label"][0, 0]
        probs = self.predict_volume(image, modality)
        pred = probs.argmax(0)
        spacing = affine_to_spacing(image.affine, r=3).tolist()
        metrics = case_metrics(pred.cpu(), label.cpu(), spacing, self.class_names)
        return {"id": batch["id"][0], "modality": modality, "metrics": metrics, "pred": pred}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0):
        """Segment one whole volume and record its per-class metrics."""
        result = self._evaluate_batch(batch)
        self._eval_cases.append({k: v for k, v in result.items() if k != "pred"})
        return result

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0):
        """Segment one test image and score it on the grid of its label file as stored.

        The probabilities are mapped back through the inverse of the preprocessing (orientation,
        resampling) exactly as ``ummkd predict`` writes them, so the per-case values equal those
        of ``ummkd predict`` + ``ummkd evaluate``.
        """
        modality = batch["modality"][0]
        datamodule = self.trainer.datamodule
        image = batch["image"][0]
        probs = datamodule.to_input_space(self.predict_volume(image, modality), image, modality)
        label, spacing = datamodule.stored_label(batch["label"][0], modality)
        pred = probs.argmax(0).cpu().numpy().reshape(label.shape)
        metrics = case_metrics(pred, label, spacing, self.class_names)
        self._eval_cases.append({"id": batch["id"][0], "modality": modality, "metrics": metrics})

    def _gather_summary(self, grid: str) -> dict[str, Any]:
        cases = self._eval_cases
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, cases)
            cases = [c for part in gathered for c in part]
        # DistributedSampler pads with repeated cases: keep each case once.
        unique = {(c["modality"], c["id"]): c for c in cases}
        ordered = sorted(
            unique.values(), key=lambda c: (self.modalities.index(c["modality"]), c["id"])
        )
        self._eval_cases = []
        return {**summarize_cases(ordered, self.class_names), "grid": grid}

    def _log_summary(self, summary: Mapping[str, Any], prefix: str) -> float | None:
        dice_means = []
        for m, stats in summary["modalities"].items():
            dice = _finite(stats["mean"]["dice"])
            dice_means.append(dice)
            self.log(f"{prefix}/dice_{m}", dice, sync_dist=True)
            self.log(f"{prefix}/assd_{m}", _finite(stats["mean"]["assd"]), sync_dist=True)
            self.log(f"{prefix}/hd95_{m}", _finite(stats["mean"]["hd95"]), sync_dist=True)
            for cls, values in stats["per_class"].items():
                self.log(f"{prefix}/dice_{m}_{cls}", _finite(values["dice"]), sync_dist=True)
        if not dice_means:
            return None
        mean_dice = sum(dice_means) / len(dice_means)
        self.log(f"{prefix}/dice", mean_dice, prog_bar=True, sync_dist=True)
        return mean_dice

    def on_validation_epoch_end(self) -> None:
        """Aggregate per-case metrics over ranks and log per-modality means and the best Dice."""
        summary = self._gather_summary(grid="preprocessed")
        dice = self._log_summary(summary, "val")
        if dice is None:
            return
        if not self.trainer.sanity_checking and math.isfinite(dice):
            self.val_dice_best.update(torch.tensor(dice, device=self.device))
        best = self.val_dice_best.compute() if self.val_dice_best.update_called else dice
        self.log("val/dice_best", best, prog_bar=True, sync_dist=True)
        self.last_val_summary = summary

    def on_test_epoch_end(self) -> None:
        """Aggregate per-case test metrics and keep the summary for the report writer."""
        summary = self._gather_summary(grid="native")
        self._log_summary(summary, "test")
        self.last_test_summary = summary

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0):
        """Class probabilities of one preprocessed image (inverted to input space by the writer)."""
        modality = batch["modality"][0]
        probs = self.predict_volume(batch["image"][0], modality)
        return {"probs": probs, "image": batch["image"][0], "path": batch["path"][0]}

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        """Optimizer with weight decay on convolution/linear kernels only, stepped schedule.

        Raises:
            UsageError: The optimizer's own ``weight_decay`` is set (it would be ignored:
                ``model.weight_decay`` sets the decay of the kernels).
        """
        own_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay")
        if own_decay:
            raise UsageError(
                f"model.optimizer.init_args.weight_decay={own_decay} would be ignored: ummkd "
                "decays convolution/linear kernels only, by model.weight_decay; set that instead"
            )
        decay, no_decay = [], []
        for module in self.network.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                # Norm affine parameters, biases, PReLU slopes, ... get no weight decay.
                is_kernel = name == "weight" and isinstance(module, _KERNEL_TYPES)
                (decay if is_kernel else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _finite(value: float | None) -> float:
    """Metric value for logging: NaN/None (no applicable class) logged as NaN explicitly."""
    if value is None:
        return math.nan
    return float(value)
