"""The ``ummkd`` command line: LightningCLI (fit/validate/test/predict) plus ``data``/``evaluate``.

Examples::

    ummkd fit --config configs/demo.yaml
    ummkd test --config configs/demo.yaml --ckpt_path last
    ummkd predict --config configs/demo.yaml --ckpt_path best \
        --data.predict_images 'scans/*.nii.gz' --data.predict_modality mr --output preds/
    ummkd data check data/abdominal
    ummkd evaluate --pred preds/ --ref labels/
    ummkd sweep-dry-run configs/sweeps/kd_lr.yaml --count 3
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ummkd.lightning.callbacks import NiftiPredictionWriter, ResultsReport, ValidationImages
from ummkd.lightning.datamodule import UnpairedDataModule
from ummkd.lightning.module import UMMKDModule
from ummkd.lightning.wandb import WandbSaveConfigCallback, bind_run_dir

# Subcommands outside LightningCLI: name -> module with ``main(argv) -> int`` (exit code).
_PLAIN_COMMANDS = {
    "data": "ummkd.data.commands",
    "evaluate": "ummkd.evaluation.commands",
    "sweep-dry-run": "ummkd.sweeps",
    "reproduce": "ummkd.experiments",
    "export": "ummkd.model_package",
    "segment": "ummkd.segment",
}
_RUN_VERSION_ENV = "UMMKD_RUN_VERSION"
_DEFAULT_ROOT = "runs/default"


def run_version(*, new: bool = False) -> str:
    """The run folder name, shared by all ranks of one launch (DDP children inherit it)."""
    if new or _RUN_VERSION_ENV not in os.environ:
        os.environ[_RUN_VERSION_ENV] = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    return os.environ[_RUN_VERSION_ENV]


class UMMKDCLI(LightningCLI):
    """LightningCLI with ummkd's links, defaults and prediction options."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """State classes, modalities and channels once (in ``data``) and link them to the model."""
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments(
            "data.num_classes", "model.network.init_args.out_channels", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.in_channels", "model.network.init_args.in_channels", apply_on="instantiate"
        )
        parser.link_arguments("data.modalities", "model.modalities", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.mode", "model.spatial_mode")
        parser.link_arguments("data.num_adjacent", "model.num_adjacent")
        parser.link_arguments("data.patch_size", "model.roi_size")
        parser.add_argument("--output", type=str | None, default=None, help="Prediction folder.")
        parser.add_argument(
            "--overwrite", type=bool, default=False, help="Replace existing prediction files."
        )
        parser.add_argument(
            "--save_probabilities", type=bool, default=False, help="Also write probabilities."
        )
        parser.set_defaults(
            {
                "model.network": {
                    "class_path": "ummkd.nn.DilatedResNet2d",
                    "init_args": {"modalities": None},
                }
            }
        )

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path best|last`` to checkpoints below ``trainer.default_root_dir``."""
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        ckpt = cfg.get("ckpt_path")
        if ckpt in ("best", "last") and sub != "fit":
            cfg["ckpt_path"] = str(find_checkpoint(cfg.trainer.default_root_dir, ckpt))
        elif ckpt == "last" and sub == "fit":
            found = find_checkpoint(cfg.trainer.default_root_dir, "last", missing_ok=True)
            cfg["ckpt_path"] = str(found) if found else None

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Default loggers (TensorBoard + CSV) share one run folder below ``default_root_dir``."""
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        root = trainer_cfg.get("default_root_dir") or _DEFAULT_ROOT
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            version = run_version()
            kwargs["logger"] = [
                TensorBoardLogger(root, name="", version=version),
                CSVLogger(root, name="", version=version),
            ]
        # A W&B logger (WandbRunLogger) without save_dir gets the same per-run folder.
        bind_run_dir(kwargs.get("logger", trainer_cfg.get("logger")), Path(root) / run_version())
        if trainer_cfg.get("enable_progress_bar") is not False:
            self.trainer_defaults["callbacks"] = [
                *self.trainer_defaults.get("callbacks", []),
                RichProgressBar(),
            ]
        return super().instantiate_trainer(**kwargs)

    def before_predict(self) -> None:
        """Attach the NIfTI writer configured by ``--output``."""
        cfg = self.config["predict"]
        if not cfg.get("output"):
            raise ValueError("predict needs --output DIR (where the label maps are written)")
        self.trainer.callbacks.append(
            NiftiPredictionWriter(cfg.output, cfg.overwrite, cfg.save_probabilities)
        )


def find_checkpoint(
    root: str | Path | None, which: str, *, missing_ok: bool = False
) -> Path | None:
    """The newest ``last.ckpt`` or best checkpoint (``best*.ckpt``) below ``root``."""
    base = Path(root or ".")
    pattern = "last.ckpt" if which == "last" else "best*.ckpt"
    found = sorted(base.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        if missing_ok:
            return None
        raise FileNotFoundError(
            f"--ckpt_path {which}: no {pattern} below {base.resolve()} "
            "(set --trainer.default_root_dir to the run folder or give a checkpoint path)"
        )
    return found[-1]


def _trainer_defaults() -> dict[str, Any]:
    return {
        "default_root_dir": _DEFAULT_ROOT,
        "callbacks": [
            ModelCheckpoint(
                monitor="val/dice_best",
                mode="max",
                filename="best-epoch{epoch:03d}-dice{val/dice_best:.4f}",
                auto_insert_metric_name=False,
                save_last=False,
            ),
            # No monitor: rewritten after every epoch, so `--ckpt_path last` resumes the latest
            # state (a monitored callback only refreshes last.ckpt when the metric improves).
            ModelCheckpoint(filename="last", enable_version_counter=False),
            LearningRateMonitor(),
            ResultsReport(),
            ValidationImages(),
        ],
    }


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``ummkd`` console script (returns None; exits non-zero on errors)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in _PLAIN_COMMANDS:
        command = importlib.import_module(_PLAIN_COMMANDS[argv[0]])
        code = command.main(argv[1:])
        if code:
            raise SystemExit(code)
        return
    # A new run folder per invocation, except in DDP worker processes started by Lightning,
    # which inherit the launcher's (LOCAL_RANK set), and under SLURM (SLURM_PROCID set),
    # where every task and every requeue of one job shares the name.
    launched = "LOCAL_RANK" in os.environ or "SLURM_PROCID" in os.environ
    if "SLURM_JOB_ID" in os.environ and _RUN_VERSION_ENV not in os.environ:
        os.environ[_RUN_VERSION_ENV] = f"slurm-{os.environ['SLURM_JOB_ID']}"
    run_version(new=not launched)
    UMMKDCLI(
        UMMKDModule,
        UnpairedDataModule,
        args=None if args is None else argv,
        trainer_defaults=_trainer_defaults(),
        save_config_callback=WandbSaveConfigCallback,
        save_config_kwargs={"overwrite": False},
        auto_configure_optimizers=False,
    )


__all__ = ["UMMKDCLI", "find_checkpoint", "main"]
