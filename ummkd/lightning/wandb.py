"""Weights & Biases for ``ummkd``: a per-run logger that always finishes, and config logging.

``configs/logger/wandb.yaml`` selects :class:`WandbRunLogger`. With the ``ummkd`` CLI:

* every invocation writes into its own run folder ``<trainer.default_root_dir>/<run version>``
  (the same folder name the default TensorBoard/CSV loggers use), so ``config.yaml`` never
  collides with an earlier run in the same root (Lightning uses a W&B logger's ``save_dir`` as
  ``trainer.log_dir``);
* :class:`WandbSaveConfigCallback` logs the fully resolved LightningCLI config to the W&B run
  (flattened to the CLI's dotted keys, the names sweep parameters use) and stores it as
  ``ummkd-config.yaml`` in the run's files;
* the W&B run is finished when Lightning finalizes its loggers, which it does on success, on an
  exception, on ``KeyboardInterrupt`` and on ``SIGTERM`` (a sweep agent stopping a run), so
  several runs in one process (tests, notebooks) never reuse an unfinished run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

if TYPE_CHECKING:
    from wandb.sdk.lib import RunDisabled
    from wandb.wandb_run import Run

#: Name of the resolved config in the W&B run's files (W&B keeps its own ``config.yaml``).
CONFIG_FILENAME = "ummkd-config.yaml"

# Statuses Lightning passes to ``Logger.finalize`` at the end of a run. SLURM auto-requeue calls
# ``finalize("finished")`` and then keeps training until it is killed, so that one keeps the run.
_FINAL_STATUSES = {"success": 0, "failed": 1}


class WandbRunLogger(WandbLogger):
    """A :class:`~lightning.pytorch.loggers.WandbLogger` for one ummkd run.

    Differences to the Lightning logger:

    * ``save_dir=None`` (the default) means "the run folder": the ``ummkd`` CLI sets it to
      ``<trainer.default_root_dir>/<run version>`` before the W&B run starts
      (:func:`bind_run_dir`). An explicit ``save_dir`` is used as given.
    * :meth:`finalize` finishes the W&B run this logger started (exit code 0 on success, 1 on
      failure), so the next logger in the same process starts a new run instead of reusing it.
    * W&B's ``entity``, ``group``, ``tags``, ``job_type`` and ``notes`` are explicit arguments,
      so they can be set from a config file.

    Inside a W&B sweep the agent's environment decides the run id, project and entity; the
    sweep's parameter values arrive as command-line arguments, not through ``wandb.config``.

    Args:
        save_dir: Run folder for ``config.yaml``, checkpoints and W&B's local files
            (``<save_dir>/wandb/``). ``None``: set by the ``ummkd`` CLI.
        project: W&B project (default: ``$WANDB_PROJECT``, else ``"ummkd"``).
        name: Display name of the W&B run (default: chosen by W&B).
        version: W&B run id, to resume a run (default: a new id, or the sweep agent's).
        offline: Write the run locally only (``wandb sync`` uploads it later).
        log_model: Upload checkpoints as W&B artifacts (``"all"``: as they are written).
        prefix: Prefix of every metric key (must stay empty for sweeps on ``val/...``).
        checkpoint_name: Name of the model artifact.
        entity: W&B user or team.
        group: Group of the run (e.g. one group per experiment).
        tags: Tags of the run.
        job_type: Type of the run (e.g. ``"train"``).
        notes: Free text shown with the run.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        project: str | None = None,
        name: str | None = None,
        version: str | None = None,
        offline: bool = False,
        log_model: Literal["all"] | bool = False,
        prefix: str = "",
        checkpoint_name: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        notes: str | None = None,
    ) -> None:
        extra = {
            "entity": entity,
            "group": group,
            "tags": tags,
            "job_type": job_type,
            "notes": notes,
        }
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=offline,
            project=project or os.environ.get("WANDB_PROJECT") or "ummkd",
            log_model=log_model,
            prefix=prefix,
            checkpoint_name=checkpoint_name,
            **{key: value for key, value in extra.items() if value is not None},
        )
        self._run_dir_given = save_dir is not None
        self._owns_run = False

    def bind_run_dir(self, run_dir: str | os.PathLike[str]) -> bool:
        """Use ``run_dir`` as ``save_dir`` unless one was configured.

        Args:
            run_dir: The run folder (created by W&B / Lightning when the run starts).

        Returns:
            Whether the folder was applied (``False`` when ``save_dir`` was given explicitly).

        Raises:
            RuntimeError: If the W&B run has already started.
        """
        if self._run_dir_given:
            return False
        if self._experiment is not None:
            raise RuntimeError("the run folder must be set before the W&B run starts")
        path = os.fspath(run_dir)
        self._save_dir = path
        self._wandb_init["dir"] = path
        return True

    @property
    @rank_zero_experiment
    def experiment(self) -> Run | RunDisabled:
        """The W&B run, started on first use (rank zero only)."""
        if self._experiment is None:
            if self._save_dir is None:
                raise RuntimeError(
                    "WandbRunLogger has no save_dir: set trainer.logger.init_args.save_dir, or "
                    "run through the ummkd CLI, which sets it to the run folder"
                )
            import wandb

            # Lightning reuses an active run that someone else started; that one is theirs.
            self._owns_run = wandb.run is None
        return super().experiment

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Log pending checkpoints (on success), then finish the W&B run this logger started.

        Args:
            status: ``"success"``, ``"failed"`` (exception, interrupt, SIGTERM) or
                ``"finished"`` (SLURM requeue; the run stays open).
        """
        try:
            super().finalize(status)
        finally:
            if status in _FINAL_STATUSES:
                self._finish(_FINAL_STATUSES[status])

    def _finish(self, exit_code: int) -> None:
        run = self._experiment
        if run is None or not self._owns_run:
            return
        # Later use of this logger (e.g. trainer.test after trainer.fit) resumes the same run.
        self._id = self._wandb_init["id"] = run.id
        self._experiment = None
        self._owns_run = False
        run.finish(exit_code=exit_code)


def bind_run_dir(
    logger: Logger | Iterable[Logger] | bool | None, run_dir: str | os.PathLike[str]
) -> None:
    """Give every :class:`WandbRunLogger` without a ``save_dir`` the run folder ``run_dir``.

    Args:
        logger: The trainer's ``logger`` argument (a logger, several, or ``True``/``None``).
        run_dir: The run folder, ``<trainer.default_root_dir>/<run version>``.
    """
    if isinstance(logger, Logger):
        loggers: Iterable[Any] = [logger]
    elif isinstance(logger, Iterable):
        loggers = logger
    else:
        return
    for item in loggers:
        if isinstance(item, WandbRunLogger):
            item.bind_run_dir(run_dir)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into the CLI's dotted keys (lists stay values).

    Args:
        config: A resolved config (nested dicts).
        prefix: Key prefix (used in the recursion).

    Returns:
        ``{"model.optimizer.init_args.lr": 0.001, ...}``; an empty mapping stays as ``{}``.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{path}."))
        else:
            flat[path] = value
    return flat


class WandbSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` to the run folder and log the same config to every W&B run.

    The config goes into the run's ``config`` under the CLI's dotted keys (``model.kd_weight``,
    ``model.optimizer.init_args.lr``, ...; the keys W&B sweep parameters use) plus ``run_dir``,
    and its YAML into the run's files as :data:`CONFIG_FILENAME`, so a run can be reproduced
    with ``ummkd fit --config ummkd-config.yaml``. Without a W&B logger it behaves exactly like
    :class:`~lightning.pytorch.cli.SaveConfigCallback`.
    """

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the resolved config to the W&B runs (called on global rank zero only)."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        # Same content as config.yaml; None values kept (third argument: skip_none before
        # jsonargparse 4.49, skip_unset since; positional to work with both).
        text = self.parser.dump(self.config, "parser_mode", False)
        flat = flatten_config(yaml.safe_load(text))
        for logger in loggers:
            run = logger.experiment
            values = dict(flat)
            if logger.save_dir is not None:
                values["run_dir"] = str(Path(logger.save_dir).resolve())
            # In a sweep the agent's parameters are already there (locked, same values): leave
            # them, so W&B only warns about a locked key when a value really differs.
            changed = {k: v for k, v in values.items() if k not in run.config or run.config[k] != v}
            run.config.update(changed, allow_val_change=True)
            Path(run.dir, CONFIG_FILENAME).write_text(text)


__all__ = [
    "CONFIG_FILENAME",
    "WandbRunLogger",
    "WandbSaveConfigCallback",
    "bind_run_dir",
    "flatten_config",
]
