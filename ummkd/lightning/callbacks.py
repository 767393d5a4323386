"""Callbacks: NIfTI prediction writer and the end-of-run result reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console

from ummkd.data.io import save_nifti
from ummkd.errors import UsageError
from ummkd.evaluation.report import results_table, write_report
from ummkd.provenance import code_commit


class NiftiPredictionWriter(BasePredictionWriter):
    """Write one label map (and optionally probabilities) per predicted image.

    The network's probabilities are mapped back through the inverse of the invertible
    preprocessing (orientation, resampling), so each output has the input's exact shape, affine
    and orientation. Existing files are never replaced unless ``overwrite`` is set, and the output
    folder may not be a folder that holds inputs.

    Args:
        output_dir: Folder for the predictions (created if needed).
        overwrite: Replace existing prediction files.
        save_probabilities: Also write ``<name>_probs.nii.gz`` (float32, channels last).
    """

    def __init__(
        self, output_dir: str | Path, overwrite: bool = False, save_probabilities: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir).expanduser().resolve()
        self.overwrite = overwrite
        self.save_probabilities = save_probabilities

    def check_inputs(self, inputs: Sequence[str | Path]) -> None:
        """Refuse unsafe outputs before any work is done.

        Raises:
            UsageError: The output folder holds an input, or two inputs share a file name (their
                predictions would be written to one file).
            FileExistsError: A prediction file exists and ``overwrite`` is not set.
        """
        by_name: dict[str, Path] = {}
        for path in inputs:
            src = Path(path).resolve()
            if src.name in by_name and by_name[src.name] != src:
                raise UsageError(
                    f"inputs {by_name[src.name]} and {src} have the same file name, so their "
                    f"predictions would both be {self.output_dir / src.name}; predict them into "
                    "separate --out folders"
                )
            by_name[src.name] = src
            if src.parent == self.output_dir:
                raise UsageError(
                    f"output folder {self.output_dir} holds the input {src}; choose another "
                    "--out so predictions cannot replace inputs."
                )
            target = self.output_dir / src.name
            if target.exists() and not self.overwrite:
                raise FileExistsError(
                    f"{target} exists; pass --overwrite to replace it or choose another --out."
                )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Validate the output location against the prediction inputs."""
        if stage == "predict" and trainer.datamodule is not None:
            dataset = getattr(trainer.datamodule, "_predict_dataset", None)
            if dataset is not None:
                self.check_inputs([record["path"] for record in dataset.data])

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Invert the preprocessing and write the label map of one image."""
        source = Path(prediction["path"])
        reference = nib.load(source)
        datamodule = trainer.datamodule
        probs = datamodule.to_input_space(
            prediction["probs"], prediction["image"], datamodule.predict_modality
        )
        if tuple(probs.shape[1:]) != tuple(reference.shape[:3]):
            raise RuntimeError(
                f"{source}: inverted prediction has shape {tuple(probs.shape[1:])}, input has "
                f"{tuple(reference.shape[:3])}"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        labels = probs.argmax(0).cpu().numpy().astype(np.uint8)
        labels = labels.reshape(reference.shape) if len(reference.shape) != 3 else labels
        save_nifti(labels, reference.affine, self.output_dir / source.name)
        if self.save_probabilities:
            stem = source.name.removesuffix(".gz").removesuffix(".nii")
            prob_array = probs.permute(1, 2, 3, 0).cpu().numpy().astype(np.float32)
            save_nifti(prob_array, reference.affine, self.output_dir / f"{stem}_probs.nii.gz")


def _figure_overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, title: str) -> Any:
    """Image with ground-truth (left) and prediction (right) label overlays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    for ax, mask, name in ((axes[0], label, "label"), (axes[1], pred, "prediction")):
        ax.imshow(image.T, cmap="gray", origin="lower")
        masked = np.ma.masked_where(mask.T == 0, mask.T)
        ax.imshow(masked, cmap="tab10", alpha=0.45, origin="lower", vmin=0, vmax=9)
        ax.set_title(f"{title} {name}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def _figure_heatmap(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Any:
    """Heatmap of a C x C class-distribution matrix (rows: ground-truth class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.6))
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted class (softened mean)", fontsize=7)
    ax.set_ylabel("ground-truth class", fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _log_figure(trainer: pl.Trainer, tag: str, figure: Any) -> None:
    """Send a matplotlib figure to every logger that can take images."""
    import matplotlib.pyplot as plt

    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure(tag, figure, global_step=trainer.global_step, close=False)
        elif hasattr(logger, "log_image"):  # W&B and others
            figure.canvas.draw()
            rgba = np.asarray(figure.canvas.buffer_rgba())
            logger.log_image(key=tag, images=[rgba[..., :3]], step=trainer.global_step)
    plt.close(figure)


class ValidationImages(Callback):
    """Log overlays of the first validation volumes and the KD class-distribution heatmaps.

    For the first ``num_cases`` validation volumes of each modality, the axial slice with the most
    foreground is shown with its label and prediction. After each validation, the per-modality
    C x C class-distribution matrices of the last training batch (what the KD loss aligns) are
    logged as heatmaps.

    Args:
        num_cases: Volumes per modality to show at each validation.
    """

    def __init__(self, num_cases: int = 2) -> None:
        super().__init__()
        self.num_cases = num_cases
        self._shown: dict[str, int] = {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reset the per-modality counters."""
        self._shown = {}

    @rank_zero_only
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Log the overlay of one validation volume."""
        if trainer.sanity_checking or not trainer.loggers or not isinstance(outputs, dict):
            return
        modality = outputs["modality"]
        if self._shown.get(modality, 0) >= self.num_cases:
            return
        self._shown[modality] = self._shown.get(modality, 0) + 1
        image = batch["image"][0, 0].detach().cpu().float().numpy()
        label = batch["label"][0, 0].detach().cpu().numpy()
        pred = outputs["pred"].detach().cpu().numpy()
        index = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(0)))
        title = f"{modality} {outputs['id']} z={index}"
        figure = _figure_overlay(image[..., index], label[..., index], pred[..., index], title)
        _log_figure(trainer, f"val_images/{modality}_{self._shown[modality]}", figure)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the KD class-distribution matrices of the last training batch."""
        kd = getattr(pl_module, "kd_loss", None)
        distributions = getattr(kd, "distributions", None)
        if trainer.sanity_checking or not trainer.loggers or not distributions:
            return
        names = getattr(pl_module, "class_names", None)
        for modality, dist in distributions.items():
            matrix = dist.probs.detach().cpu().float().numpy()
            labels = names or [str(i) for i in range(matrix.shape[0])]
            figure = _figure_heatmap(matrix, labels, f"KD class distributions: {modality}")
            _log_figure(trainer, f"kd_distributions/{modality}", figure)


class ResultsReport(Callback):
    """Print the per-modality result table after fit (validation) and test; write test reports.

    After ``test``, the folder of its CSV logger (one per test call, see ``ummkd.cli``; else the
    run directory) receives ``summary.json``, ``results.md`` and ``dice.png``; the summary names
    the checkpoint, the inference options and the code's commit.
    """

    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.console = console or Console()

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the last validation results."""
        summary = getattr(pl_module, "last_val_summary", None)
        if summary:
            self.console.print(results_table(summary, title="Validation (last epoch)"))

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the test report into the run directory and show it."""
        summary = getattr(pl_module, "last_test_summary", None)
        if not summary:
            return
        csv_dirs = [lg.log_dir for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        out_dir = Path(csv_dirs[0] if csv_dirs else trainer.log_dir or trainer.default_root_dir)
        network = getattr(pl_module, "network", pl_module)
        summary = {
            **summary,
            "parameters": sum(p.numel() for p in network.parameters()),
            "checkpoint": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else None,
            "inference": {
                "tta": getattr(pl_module, "tta", False),
                "sw_overlap": getattr(pl_module, "sw_overlap", None),
            },
            "commit": code_commit(),
        }
        files = write_report(summary, out_dir, title="ummkd test results")
        self.console.print(results_table(summary, title="Test"))
        self.console.print(f"[ummkd] test report: {files['summary']}")
