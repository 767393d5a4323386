"""Resuming: exact continuation from ``--ckpt_path last``, SIGKILL mid-epoch, non-finite losses."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.lightning.test_ddp import tiny_config
from ummkd.cli import main

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def _newest(root: Path, pattern: str = "last.ckpt") -> Path:
    found = sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"no {pattern} below {root}"
    return found[-1]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fit(config: Path, *extra: str) -> None:
    main(["fit", "--config", str(config), "--trainer.deterministic=true", *extra])


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
def test_resume_from_last_equals_uninterrupted_training(tiny_dataset: Path, tmp_path: Path):
    """2 epochs + resume for 2 more == 4 epochs straight (augmentation, sampling, dropout on)."""
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    _fit(tiny_config(tmp_path / "a.yaml", tiny_dataset, straight), "--trainer.max_epochs=4")
    config = tiny_config(tmp_path / "b.yaml", tiny_dataset, resumed)
    _fit(config, "--trainer.max_epochs=2")
    half = _load(_newest(resumed))
    assert half["epoch"] == 1 and half["global_step"] == 2 * STEPS
    _fit(config, "--trainer.max_epochs=4", "--ckpt_path=last")

    a, b = _load(_newest(straight)), _load(_newest(resumed))
    assert a["global_step"] == b["global_step"] == 4 * STEPS
    assert a["epoch"] == b["epoch"] == 3
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # the resumed run's first epochs really trained on different samples than a replay would:
    # the weights moved between the half-way checkpoint and the end
    assert any(not torch.equal(half["state_dict"][k], v) for k, v in b["state_dict"].items()), (
        "resumed run did not train"
    )
    # best-so-far Dice continues across the resume (the sweep objective)
    best_a, best_b = _metric(straight, "val/dice_best"), _metric(resumed, "val/dice_best")
    assert sorted(best_a) == sorted(best_b) == [0, 1, 2, 3]
    for epoch in range(4):
        assert best_b[epoch] == pytest.approx(best_a[epoch], abs=1e-5), epoch


@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_a_loadable_checkpoint_and_resume_works(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path / "c.yaml", tiny_dataset, run_dir, steps_per_epoch=40)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    log = (tmp_path / "fit.log").open("w")
    command = [sys.executable, "-m", "ummkd", "fit", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--trainer.max_epochs=100"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 80
        while not list(run_dir.rglob("last.ckpt")):
            assert proc.poll() is None, (tmp_path / "fit.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 80 s"
            time.sleep(0.1)
        time.sleep(1.0)  # well into the next epoch (40 steps of ~10 ms or more)
        assert proc.poll() is None, "training ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    checkpoints = list(run_dir.rglob("*.ckpt"))
    last = _newest(run_dir)
    ckpt = _load(last)  # complete (Lightning writes checkpoints atomically)
    for path in checkpoints:
        _load(path)
    epoch = ckpt["epoch"]
    assert ckpt["global_step"] == 40 * (epoch + 1)
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )

    _fit(
        config, f"--trainer.max_epochs={epoch + 2}", "--data.steps_per_epoch=40", "--ckpt_path=last"
    )
    after = _load(_newest(run_dir))
    assert after["epoch"] == epoch + 1 and after["global_step"] == 40 * (epoch + 2)


class PoisonWeights(Callback):
    """Test helper: writes NaN into the first convolution kernel at a chosen point of training.

    ``when="before_step"`` poisons before global step ``step`` (the step's loss is non-finite);
    ``when="after_step"`` poisons after it (the loss was fine, the next checkpoint would not be).
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
        ("before_step", STEPS + 1, r"non-finite training loss at step 4 \(epoch 1"),
        ("after_step", 2 * STEPS - 1, "refusing to save a checkpoint"),
    ],
)
def test_non_finite_training_stops_and_keeps_the_last_finite_checkpoint(
    when: str, step: int, match: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path / "d.yaml", tiny_dataset, run_dir)
    callback = f"--trainer.callbacks+={PoisonWeights.__module__}.PoisonWeights"
    with pytest.raises(FloatingPointError, match=match):
        _fit(
            config,
            "--trainer.max_epochs=3",
            callback,
            f"--trainer.callbacks.init_args.step={step}",
            f"--trainer.callbacks.init_args.when={when}",
        )
    last = _load(_newest(run_dir))
    assert last["epoch"] == 0 and last["global_step"] == STEPS, "only epoch 0 was saved"
    for key, value in last["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    for path in run_dir.rglob("*.ckpt"):
        state = _load(path)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
