"""Resuming: exact continuation from a checkpoint, SIGKILL mid-epoch, non-finite losses.

The CLI writes ``last.ckpt`` with a monitor-less ModelCheckpoint after every epoch (a monitored
one rewrites it only with a new best; ``test_last_ckpt_is_the_last_epoch`` guards this).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.lightning.test_ddp import tiny_config
from ummkd.cli import main

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _newest(root: Path, name: str = "last.ckpt") -> Path:
    found = sorted(root.rglob(name), key=lambda p: p.stat().st_mtime)
    assert found, f"no {name} below {root}"
    return found[-1]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fit(config: Path, *extra: str) -> None:
    main(["fit", "--config", str(config), "--trainer.deterministic=true", *extra])


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def _metric(run_dir: Path, key: str) -> dict[int, float]:
    """``{epoch: value}`` of a logged metric over all CSV logs below ``run_dir``."""
    values: dict[int, float] = {}
    for path in run_dir.rglob("metrics.csv"):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    values[int(row["epoch"])] = float(row[key])
    return values


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_equals_uninterrupted_training(
    tiny_dataset: Path, tmp_path: Path, num_workers: int
) -> None:
    """2 epochs + resume for 2 more == 4 epochs straight (augmentation, sampling, dropout on),
    with the samples drawn in the main process or in (persistent) worker processes."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config_a = tiny_config(tmp_path / "a.yaml", tiny_dataset, straight, num_workers=num_workers)
    _fit(config_a, "--trainer.max_epochs=4")
    config_b = tiny_config(tmp_path / "b.yaml", tiny_dataset, resumed, num_workers=num_workers)
    _fit(config_b, "--trainer.max_epochs=2")
    half_path = _newest(resumed)
    half = _load(half_path)
    assert half["epoch"] == 1 and half["global_step"] == 2 * STEPS
    _fit(config_b, "--trainer.max_epochs=4", f"--ckpt_path={half_path}")

    a, b = _load(_newest(straight)), _load(_newest(resumed))
    assert a["global_step"] == b["global_step"] == 4 * STEPS
    assert a["epoch"] == b["epoch"] == 3
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(not torch.equal(half["state_dict"][k], v) for k, v in b["state_dict"].items())
    _assert_same_training_state(a, b)
    # the best-so-far Dice (the sweep objective) continues across the resume
    best_a, best_b = _metric(straight, "val/dice_best"), _metric(resumed, "val/dice_best")
    assert sorted(best_a) == sorted(best_b) == [0, 1, 2, 3]
    for epoch in range(4):
        assert best_b[epoch] == pytest.approx(best_a[epoch], abs=1e-5), epoch


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for group_a, group_b in zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        torch.testing.assert_close(group_b["exp_avg"], group_a["exp_avg"], rtol=1e-5, atol=1e-7)


# Lightning's warning on a mid-epoch resume of loaders without `state_dict`/`load_state_dict`
# (lightning/pytorch/loops/training_epoch_loop.py)
NOT_RESUMABLE = "your dataloader is not resumable"


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_the_middle_of_an_epoch_is_exact(
    tiny_dataset: Path, tmp_path: Path, num_workers: int
) -> None:
    """A checkpoint after batch 1 of epoch 1 (step 4 of 3-step epochs, e.g. SLURM's
    ``hpc_ckpt``) resumes with the remaining batches of that epoch, exactly as uninterrupted:
    the checkpoint holds the loaders' position and Lightning does not warn about it."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # appended to the default callbacks (a config's trainer.callbacks would replace them)
    every_2_steps = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'steps'}",
        "--trainer.callbacks.init_args.filename=step{step}",
        "--trainer.callbacks.init_args.auto_insert_metric_name=false",
        "--trainer.callbacks.init_args.every_n_train_steps=2",
        "--trainer.callbacks.init_args.save_top_k=-1",
    ]
    config_a = tiny_config(tmp_path / "a.yaml", tiny_dataset, straight, num_workers=num_workers)
    _fit(config_a, *every_2_steps, "--trainer.max_epochs=3")
    middle = tmp_path / "steps" / "step4.ckpt"
    ckpt = _load(middle)
    assert ckpt["global_step"] == 4  # epoch 1, one of its 3 batches done
    loader_states = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_states == [{"epoch": 1, "position": 2}] * 2  # batch_size 2, ct and mr
    config_b = tiny_config(tmp_path / "b.yaml", tiny_dataset, resumed, num_workers=num_workers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(config_b, "--trainer.max_epochs=3", f"--ckpt_path={middle}")
    assert not [w for w in caught if NOT_RESUMABLE in str(w.message)]
    a, b = _load(_newest(straight)), _load(_newest(resumed))
    assert a["global_step"] == 3 * STEPS
    _assert_same_training_state(a, b)


@pytest.mark.slow
def test_last_ckpt_is_the_last_epoch(tiny_dataset: Path, tmp_path: Path) -> None:
    """--ckpt_path last must resume from the last epoch, also when the Dice did not improve."""
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path / "e.yaml", tiny_dataset, run_dir, steps_per_epoch=2)
    # frozen weights and no randomness in evaluation: validation Dice is the same every epoch
    _fit(
        config,
        "--trainer.max_epochs=3",
        "--model.optimizer.init_args.lr=0",
        "--model.network.init_args.norm=instance",
        "--model.network.init_args.dropout=0",
    )
    assert len(set(_metric(run_dir, "val/dice").values())) == 1
    assert _load(_newest(run_dir, "last.ckpt"))["epoch"] == 2


@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_a_loadable_checkpoint_and_resume_works(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    steps = 30
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path / "c.yaml", tiny_dataset, run_dir, steps_per_epoch=steps)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    command = [sys.executable, "-m", "ummkd", "fit", "--config", str(config)]
    with (tmp_path / "fit.log").open("w") as log:
        proc = subprocess.Popen(
            [*command, "--trainer.max_epochs=100"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 70
            while not list(run_dir.rglob("last.ckpt")):
                assert proc.poll() is None, (tmp_path / "fit.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 70 s"
                time.sleep(0.05)
            time.sleep(0.5)  # into the next epoch
            assert proc.poll() is None, "training ended before it could be killed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    for path in run_dir.rglob("*.ckpt"):  # every file is complete (atomic writes)
        assert _finite(_load(path)["state_dict"]), path
    latest = _newest(run_dir)
    ckpt = _load(latest)
    epoch = ckpt["epoch"]
    assert ckpt["global_step"] == steps * (epoch + 1)

    _fit(config, f"--trainer.max_epochs={epoch + 2}", f"--ckpt_path={latest}")
    after = _load(_newest(run_dir))
    assert after["epoch"] == epoch + 1 and after["global_step"] == steps * (epoch + 2)


class PoisonWeights(Callback):
    """Test helper: writes NaN into a convolution kernel at a chosen point of training.

    ``when="before_step"`` poisons before global step ``step`` (that step's loss is non-finite);
    ``when="after_step"`` poisons after it (the loss was finite, the weights saved next are not).
    """

    def __init__(self, step: int, when: str = "before_step") -> None:
        self.step = step
        self.when = when

    def _poison(self, pl_module: pl.LightningModule) -> None:
        kernel = next(p for n, p in pl_module.named_parameters() if n.endswith("conv.weight"))
        with torch.no_grad():
            kernel.view(-1)[0] = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.when == "before_step" and trainer.global_step == self.step:
            self._poison(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.when == "after_step" and trainer.global_step == self.step + 1:
            self._poison(pl_module)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("when", "step", "match"),
    [
        ("before_step", STEPS + 1, r"non-finite training loss at step 4 \(epoch 1, batch 1\)"),
        ("after_step", 2 * STEPS - 1, "refusing to save a checkpoint at step 6"),
    ],
)
def test_non_finite_training_stops_and_keeps_the_last_finite_checkpoint(
    when: str, step: int, match: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path / "d.yaml", tiny_dataset, run_dir)
    with pytest.raises(FloatingPointError, match=match):
        _fit(
            config,
            "--trainer.max_epochs=3",
            f"--trainer.callbacks+={PoisonWeights.__module__}.PoisonWeights",
            f"--trainer.callbacks.init_args.step={step}",
            f"--trainer.callbacks.init_args.when={when}",
        )
    for name in ("last.ckpt", "last.ckpt"):
        ckpt = _load(_newest(run_dir, name))
        assert ckpt["epoch"] == 0 and ckpt["global_step"] == STEPS, name
    for path in run_dir.rglob("*.ckpt"):
        assert _finite(_load(path)["state_dict"]), path
