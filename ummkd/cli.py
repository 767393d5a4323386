"""The ``ummkd`` command line: LightningCLI (fit/validate/test/predict) plus plain commands.

``ummkd --help`` lists every command (:data:`COMMANDS`); ``ummkd --version`` prints the version.

Examples::

    ummkd fit --config configs/demo.yaml      # or --config demo: configs ship with the package
    ummkd test --config configs/demo.yaml --ckpt_path last
    ummkd predict --config configs/demo.yaml --ckpt_path best \
        --data.predict_images 'scans/*.nii.gz' --data.predict_modality mr --out preds/
    ummkd data check data/abdominal
    ummkd evaluate --pred preds/ --ref labels/
    ummkd sweep-dry-run configs/sweeps/kd_lr.yaml --count 3

A user error (:class:`ummkd.errors.UMMKDError`, or a missing / existing file) ends in one line
``ummkd <command>: error: ...`` on stderr and exit code 2 (1 for failed runs); ``--traceback``
or ``UMMKD_DEBUG=1`` shows the full traceback instead. Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ummkd import __version__
from ummkd.config_files import resolve_config_arguments
from ummkd.errors import CheckpointError, UMMKDError, UsageError
from ummkd.lightning.callbacks import NiftiPredictionWriter
from ummkd.lightning.checkpoints import AtomicCheckpointIO, checkpoint_modalities, read_checkpoint
from ummkd.lightning.datamodule import UnpairedDataModule
from ummkd.lightning.module import UMMKDModule
from ummkd.lightning.wandb import WandbSaveConfigCallback, bind_run_dir

# Every command with its one-line description, in the order ``ummkd --help`` lists them.
COMMANDS = {
    "fit": "train a model (checkpoints, logs, config.yaml in a new run folder)",
    "validate": "score a checkpoint on the validation cases",
    "test": "score a checkpoint on the test cases (summary.json, results.md in its run folder)",
    "predict": "write NIfTI label maps of new scans with a checkpoint (--out DIR)",
    "data": "import, generate or check datasets (ummkd data {import,synth,check})",
    "evaluate": "score any folder of label maps against references (Dice, ASSD, HD95)",
    "reproduce": "train and test the paper's variants, with cross-validation and statistics",
    "export": "write a self-contained model package from a checkpoint",
    "segment": "segment NIfTI files or DICOM series with model packages",
    "sweep-dry-run": "render and parse sampled commands of a W&B sweep file (no training)",
}
_LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
_OPTION_HELP = {
    "config": "a config file, or a packaged config by name (demo, abdominal_2d/cpu, ...); "
    "repeatable, later ones override earlier ones",
    "ckpt_path": "a checkpoint file, or best / last: that checkpoint of the newest run below "
    "--trainer.default_root_dir (fit takes last: it resumes, or starts afresh if none)",
}
# predict's deprecated flag -> its name now (a one-line note is printed when it is used)
_DEPRECATED_PREDICT_FLAGS = {"--output": "--out"}

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
_LIGHTNING_LOG = "lightning.pytorch.utilities.rank_zero"
_DEFAULT_ROOT = "runs/default"
_DEBUG_ENV = "UMMKD_DEBUG"
_TRACEBACK_FLAG = "--traceback"
# Errors about the user's own files: reported in one line like UMMKDError.
_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


class _NoAdverts(logging.Filter):
    """Drops Lightning's per-run advertisement ("💡 Tip: ... litlogger ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger(_LIGHTNING_LOG).addFilter(_NoAdverts())
# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates, on every run: not the user's
warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)


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
        parser.set_defaults(
            {
                "trainer.callbacks": default_callbacks(),
                "model.network": {
                    "class_path": "ummkd.nn.DilatedResNet2d",
                    "init_args": {"modalities": None},
                },
            }
        )

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        """Add the prediction options to the ``predict`` parser only; ``test`` not verbose.

        LightningCLI has no public per-subcommand hook (``add_arguments_to_parser`` gets every
        subcommand's parser), so the options are added here, after Lightning's own.
        """
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            add_predict_arguments(parser)
        if subcommand == "test":  # ummkd's own table replaces Lightning's per-loader one
            parser.set_defaults(verbose=False)
        for action in parser._actions:  # Lightning's texts do not know ummkd's resolution
            if action.dest in _OPTION_HELP:
                action.help = _OPTION_HELP[action.dest]
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check a checkpoint file given by path before Lightning reads it.

        Raises:
            CheckpointError: The checkpoint is missing, truncated or not a checkpoint.
        """
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and ckpt not in ("best", "last"):
            read_checkpoint(ckpt)

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path best|last`` (see :func:`find_checkpoint`) and check the file.

        Raises:
            UsageError: ``predict`` without ``--ckpt_path`` (the network would be untrained).
            CheckpointError: The checkpoint is missing, truncated or not a checkpoint.
        """
        self._checkpoint_modalities: list[str] | None = None
        self._checkpoint_run: Path | None = None
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
        if sub == "predict" and not cfg.get("ckpt_path"):
            raise UsageError(
                "predict needs --ckpt_path (a checkpoint file, or best / last of the latest run "
                "below --trainer.default_root_dir); without it the network is untrained"
            )
        if cfg.get("ckpt_path"):
            checkpoint = read_checkpoint(cfg["ckpt_path"])
            self._checkpoint_modalities = checkpoint_modalities(checkpoint)
        self._checkpoint_run = None
        ckpt = Path(cfg["ckpt_path"]).resolve() if cfg.get("ckpt_path") else None
        if sub != "fit" and ckpt is not None and ckpt.parent.name == "checkpoints":
            # test/validate/predict of a run's checkpoint log and report into that run folder
            self._checkpoint_run = ckpt.parent.parent
            os.environ[_RUN_VERSION_ENV] = self._checkpoint_run.name

    def _check_checkpoint_modalities(self) -> None:
        """Refuse a checkpoint trained for other modalities than the data's (named in the error).

        Raises:
            CheckpointError: The checkpoint's modalities differ from the data's, or do not
                include ``--data.predict_modality``.
        """
        trained = self._checkpoint_modalities
        if trained is None:
            return
        sub = self.config["subcommand"]
        path = self.config[sub]["ckpt_path"]
        wanted = getattr(self.datamodule, "predict_modality", None)
        if sub == "predict" and wanted not in trained:
            raise CheckpointError(
                f"{path}: this checkpoint has modalities {_listing(trained)}; "
                f"--data.predict_modality {wanted} is not one of them"
            )
        modalities = list(getattr(self.datamodule, "modalities", trained))
        if set(modalities) != set(trained):
            raise CheckpointError(
                f"{path}: this checkpoint has modalities {_listing(trained)} but the data gives "
                f"{_listing(modalities)}; set --data.modalities {_listing(trained)} or use a "
                "checkpoint trained for these modalities"
            )

    def before_fit(self) -> None:
        """Check a resumed checkpoint against the data."""
        self._check_checkpoint_modalities()

    def after_fit(self) -> None:
        """Say where the run is: its folder and its best and last checkpoints."""
        found = []
        for callback in self.trainer.checkpoint_callbacks:
            monitored = getattr(callback, "monitor", None)
            path = callback.best_model_path if monitored else callback.last_model_path
            path = path or getattr(callback, "best_model_path", "")  # a 'last' without monitor
            if path:
                found.append(f"{'best' if monitored else 'last'} {path}")
        checkpoints = ", ".join(dict.fromkeys(found)) or "none"
        rank_zero_info(f"[ummkd] run folder: {self.trainer.log_dir}; checkpoints: {checkpoints}")

    def before_validate(self) -> None:
        """Check the checkpoint against the data."""
        self._check_checkpoint_modalities()

    def before_test(self) -> None:
        """Check the checkpoint against the data."""
        self._check_checkpoint_modalities()

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Default loggers (TensorBoard + CSV) share one run folder below ``default_root_dir``.

        ``test``, ``validate`` and ``predict`` of a checkpoint in a run folder
        (``RUN/checkpoints/x.ckpt``) use that run folder instead of a new one: TensorBoard events
        go into ``RUN``; the CSV metrics, the config and the test report into
        ``RUN/<subcommand>/version_N/``, one folder per call (nothing is replaced).
        """
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        # absolute, so that the checkpoint folder a test finds equals the one fit recorded
        root = str(Path(trainer_cfg.get("default_root_dir") or _DEFAULT_ROOT).resolve())
        run = getattr(self, "_checkpoint_run", None)
        if run is not None:
            root = str(run.parent)
            self.save_config_kwargs = {
                **self.save_config_kwargs,
                "config_filename": f"config-{self.subcommand}.yaml",
                "overwrite": True,
            }
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            version = run_version()
            csv = (
                CSVLogger(run, name=self.subcommand)  # RUN/test/version_N: one per call
                if run is not None
                else CSVLogger(root, name="", version=version)
            )
            csv.experiment  # noqa: B018  (its folder, before config.yaml is written into it)
            if run is not None:  # the config beside the metrics and report of this call
                call_dir = Path(csv.log_dir).relative_to(run)
                self.save_config_kwargs["config_filename"] = str(call_dir / "config.yaml")
            kwargs["logger"] = [TensorBoardLogger(root, name="", version=version), csv]
        # A W&B logger (WandbRunLogger) without save_dir gets the same per-run folder.
        bind_run_dir(kwargs.get("logger", trainer_cfg.get("logger")), Path(root) / run_version())
        # Checkpoints are written atomically unless a CheckpointIO plugin is configured.
        plugins = trainer_cfg.get("plugins")
        plugins = plugins if isinstance(plugins, list) else [] if plugins is None else [plugins]
        if "plugins" not in kwargs and not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if trainer_cfg.get("enable_progress_bar") is not False:
            self.trainer_defaults["callbacks"] = [
                *self.trainer_defaults.get("callbacks", []),
                RichProgressBar(),
            ]
        return super().instantiate_trainer(**kwargs)

    def before_predict(self) -> None:
        """Check the checkpoint against the data; attach the NIfTI writer of ``--out``."""
        self._check_checkpoint_modalities()
        cfg = self.config["predict"]
        if not cfg.get("out"):
            raise UsageError("predict needs --out DIR (where the label maps are written)")
        self.trainer.callbacks.append(
            NiftiPredictionWriter(cfg.out, cfg.overwrite, cfg.save_probabilities)
        )


def add_predict_arguments(parser: LightningArgumentParser) -> None:
    """The options of ``ummkd predict`` only; booleans work as bare flags or with a value."""
    parser.add_argument("--out", type=str | None, default=None, help="Prediction folder.")
    for name, text in (
        ("--overwrite", "Replace existing prediction files."),
        ("--save_probabilities", "Also write the class probabilities (<case>_probs.nii.gz)."),
    ):
        # nargs="?" + const: a bare flag means true; `--flag true|false` works too.
        parser.add_argument(name, type=bool, default=False, nargs="?", const=True, help=text)


def _listing(names: Sequence[str]) -> str:
    return f"[{', '.join(names)}]"


def _run_folder(checkpoint: Path) -> Path:
    """The run folder of a checkpoint (``RUN/checkpoints/x.ckpt`` or ``RUN/x.ckpt``)."""
    folder = checkpoint.parent
    return folder.parent if folder.name == "checkpoints" else folder


def find_checkpoint(
    root: str | Path | None, which: str, *, missing_ok: bool = False
) -> Path | None:
    """``last.ckpt`` or the best checkpoint (``best*.ckpt``) of one run below ``root``.

    The run is the one whose newest such checkpoint is the newest below ``root`` (``root`` may
    itself be a run folder); checkpoints of other runs are never chosen. A file of that run that
    does not load is skipped with a warning; the chosen file is printed.

    Args:
        root: ``trainer.default_root_dir`` or one run folder.
        which: ``"last"`` or ``"best"``.
        missing_ok: Return ``None`` instead of raising when there is no such checkpoint.

    Returns:
        The checkpoint path, or ``None`` (``missing_ok``) when ``root`` holds none.

    Raises:
        CheckpointError: No such checkpoint below ``root``, or none of the latest run loads.
    """
    base = Path(root or ".")
    pattern = "last.ckpt" if which == "last" else "best*.ckpt"
    found = sorted(base.rglob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        if missing_ok:
            return None
        raise CheckpointError(
            f"--ckpt_path {which}: no {pattern} below {base.resolve()}; set "
            "--trainer.default_root_dir to the run folder or give a checkpoint path"
        )
    run = _run_folder(found[0])
    for path in (p for p in found if _run_folder(p) == run):
        try:
            read_checkpoint(path)
        except CheckpointError as error:
            rank_zero_warn(f"--ckpt_path {which}: skipping {error}")
            continue
        rank_zero_info(f"[ummkd] --ckpt_path {which}: {path}")
        return path
    raise CheckpointError(
        f"--ckpt_path {which}: no {pattern} of the latest run {run} loads (see the warnings); "
        "give a checkpoint path"
    )


def default_callbacks() -> list[dict[str, Any]]:
    """The default ``trainer.callbacks``, as config entries (shown by ``--print_config``).

    The best checkpoint on ``val/dice_best``, ``last.ckpt`` after every epoch, the learning
    rate, the test report and the validation images. A config or flag that sets
    ``trainer.callbacks`` replaces the list; ``--trainer.callbacks+=...`` appends to it.
    """
    checkpoint = "lightning.pytorch.callbacks.ModelCheckpoint"
    return [
        {
            "class_path": checkpoint,
            "init_args": {
                "monitor": "val/dice_best",
                "mode": "max",
                "filename": "best-epoch{epoch:03d}-dice{val/dice_best:.4f}",
                "auto_insert_metric_name": False,
                "save_last": False,
            },
        },
        # No monitor: rewritten after every epoch, so `--ckpt_path last` resumes the latest
        # state (a monitored callback only refreshes last.ckpt when the metric improves).
        {
            "class_path": checkpoint,
            "init_args": {"filename": "last", "enable_version_counter": False},
        },
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
        {"class_path": "ummkd.lightning.callbacks.ResultsReport"},
        {"class_path": "ummkd.lightning.callbacks.ValidationImages"},
    ]


def _trainer_defaults() -> dict[str, Any]:
    return {"default_root_dir": _DEFAULT_ROOT}


def user_error(error: BaseException) -> BaseException | None:
    """The user error (:class:`UMMKDError`, a usage or a file error) behind ``error``, if any.

    Follows ``__cause__`` / ``__context__``, as jsonargparse and Lightning may wrap the error
    raised by a component.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (UMMKDError, argparse.ArgumentError, *_FILE_ERRORS)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``ummkd`` console script (returns None; exits non-zero on errors).

    User errors (see :func:`user_error`) print ``ummkd <command>: error: <message>`` on stderr
    and exit with code 2 (input errors) or 1 (failed runs); with ``--traceback`` or
    ``UMMKD_DEBUG=1`` the full traceback is printed instead, with the same exit code.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = _TRACEBACK_FLAG in argv or os.environ.get(_DEBUG_ENV, "") not in ("", "0")
    argv = _replace_deprecated_flags([a for a in argv if a != _TRACEBACK_FLAG])
    if args is None:  # DDP workers re-run sys.argv: they get the flag from the environment
        sys.argv[1:] = argv
        if debug:
            os.environ[_DEBUG_ENV] = "1"
    command = " ".join(["ummkd", *[a for a in argv if not a.startswith("-")][:1]])
    try:
        _run(argv, from_sys_argv=args is None)
    except Exception as error:
        found = user_error(error)
        if found is None:
            raise
        code = getattr(found, "exit_code", 2)
        if debug:  # the traceback as asked, the exit code unchanged
            traceback.print_exc()
            raise SystemExit(code) from None
        message = str(found) or type(found).__name__
        if isinstance(found, argparse.ArgumentError):
            message = f"{' '.join(message.split())}; see `{command} --help`"
        print(f"{command}: error: {message}", file=sys.stderr)
        raise SystemExit(code) from None


def _replace_deprecated_flags(argv: list[str]) -> list[str]:
    """``predict --output`` -> ``--out``, with a one-line deprecation note on stderr."""
    if not argv or argv[0] != "predict":
        return argv
    replaced = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in _DEPRECATED_PREDICT_FLAGS:
            new = _DEPRECATED_PREDICT_FLAGS[name]
            if "LOCAL_RANK" not in os.environ:
                print(f"ummkd predict: note: {name} is deprecated, use {new}", file=sys.stderr)
            arg = f"{new}{sep}{value}"
        replaced.append(arg)
    return replaced


def top_level_help() -> str:
    """The text of ``ummkd --help``: usage and every command with its one-line description."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: ummkd [-h] [--version] COMMAND [--traceback] ...",
        "",
        "Unpaired multi-modal (CT + MRI) segmentation via knowledge distillation.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help   show this help and exit (`ummkd COMMAND --help`: the command's options)",
        "  --version    print the version and exit",
        f"  {_TRACEBACK_FLAG}  show the full traceback of an error (also: {_DEBUG_ENV}=1)",
        "",
        "Every command names its output folder --out (reproduce: --results and --runs); see",
        'README.md, "Command-line conventions".',
    ]
    return "\n".join(lines)


def _run(argv: list[str], *, from_sys_argv: bool) -> None:
    """Run one ``ummkd`` command (``argv``: the arguments, also in ``sys.argv`` if so said)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return
    if argv[0] == "--version":
        print(f"ummkd {__version__}")
        return
    if argv[0] in _PLAIN_COMMANDS:
        command = importlib.import_module(_PLAIN_COMMANDS[argv[0]])
        code = command.main(argv[1:])
        if code:
            raise SystemExit(code)
        return
    argv = resolve_config_arguments(argv)  # --config demo: the packaged config
    if from_sys_argv:  # DDP workers re-run sys.argv
        sys.argv[1:] = argv
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
        args=None if from_sys_argv else argv,
        trainer_defaults=_trainer_defaults(),
        save_config_callback=WandbSaveConfigCallback,
        save_config_kwargs={"overwrite": False},
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},
    )


__all__ = ["COMMANDS", "UMMKDCLI", "add_predict_arguments", "find_checkpoint", "main"]
