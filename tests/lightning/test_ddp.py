"""Multi-process behaviour on CPU: DDP sharding, weight sync, evaluation aggregation, the CLI.

In-process DDP uses ``strategy="ddp_spawn"`` (``"ddp"`` would relaunch pytest); the real CLI runs
with ``ddp`` in a subprocess. SyncBatchNorm cannot run on CPU, so only its conversion is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch import nn

from ummkd.cli import UMMKDCLI, _trainer_defaults
from ummkd.data.synthetic import make_synthetic_dataset
from ummkd.lightning.datamodule import UnpairedDataModule
from ummkd.lightning.module import UMMKDModule
from ummkd.nn import DilatedResNet2d, ModalityNorm, modality_norm_layers

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
WORLD_SIZE = 2
STEPS_PER_EPOCH = 3
BATCH_SIZE = 2
EPOCHS = 2
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
VAL_CASES = {"ct": ["ct_002", "ct_003", "ct_004"], "mr": ["mr_002", "mr_003"]}


@pytest.fixture(scope="module")
def ddp_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny phantoms with 3 CT and 2 MR validation cases: 3 cases on 2 ranks forces padding."""
    root = tmp_path_factory.mktemp("ddp_data") / "synthetic"
    make_synthetic_dataset(root, n_ct=6, n_mr=5, size=(48, 48, 12), seed=3)
    splits = {
        "folds": [
            {
                "train": ["ct_000", "ct_001", "mr_000", "mr_001"],
                "val": VAL_CASES["ct"] + VAL_CASES["mr"],
            }
        ],
        "test": ["ct_005", "mr_004"],
    }
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def tiny_config(path: Path, root: Path, run_dir: Path, **data: Any) -> Path:
    """A complete CLI config of its own (independent of configs/demo.yaml's network choice):
    the paper's DilatedResNet2d at width 2 with per-modality norms, augmentation and dropout on.
    """
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "default_root_dir": str(run_dir),
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
        },
        "model": {
            "network": {
                "class_path": "ummkd.nn.DilatedResNet2d",
                "init_args": {
                    "base_channels": 2,
                    "head_channels": 4,
                    "dropout": 0.1,
                    "modalities": None,
                },
            },
            "norm": "modality",
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.002}},
        },
        "data": {
            "root": str(root),
            "patch_size": [48, 48],
            "batch_size": 2,
            "steps_per_epoch": 3,
            "num_workers": 0,
            "augmentation": {"rotate_range": 0.26, "affine_prob": 0.5, "intensity_prob": 0.5},
            **data,
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _datamodule(root: Path, **kwargs: Any) -> UnpairedDataModule:
    return UnpairedDataModule(
        str(root),
        patch_size=[48, 48],
        batch_size=BATCH_SIZE,
        steps_per_epoch=STEPS_PER_EPOCH,
        num_workers=0,
        check="off",
        **kwargs,
    )


def _module() -> UMMKDModule:
    torch.manual_seed(0)
    network = DilatedResNet2d(3, 5, modalities=None, base_channels=2, head_channels=4)
    return UMMKDModule(
        network,
        modalities=["ct", "mr"],
        num_classes=5,
        class_names=["background", "liver", "kidney_right", "kidney_left", "spleen"],
    )


class _Recorder(Callback):
    """Writes what every rank saw and holds: sample indices, weights, validation summaries."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.indices: list[dict[str, Any]] = []

    def _path(self, trainer: pl.Trainer, name: str) -> str:
        return os.path.join(self.out_dir, f"rank{trainer.global_rank}_{name}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices.append(
            {
                "epoch": trainer.current_epoch,
                **{m: batch[m]["sample_index"].tolist() for m in pl_module.modalities},
                **{f"{m}_ids": list(batch[m]["id"]) for m in pl_module.modalities},
            }
        )

    def on_validation_start(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self._path(trainer, "val_weights.pt"))

    def on_validation_end(self, trainer, pl_module) -> None:
        summary = getattr(pl_module, "last_val_summary", None)
        with open(self._path(trainer, "summary.json"), "w") as f:
            json.dump({"summary": summary, "world_size": trainer.world_size}, f)

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), self._path(trainer, "final.pt"))
        with open(self._path(trainer, "indices.json"), "w") as f:
            json.dump(self.indices, f)


def _trainer(out_dir: Path, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(out_dir),
        "callbacks": [_Recorder(str(out_dir))],
    }
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.fixture(scope="module")
def ddp_run(ddp_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CPU processes (gloo) train 2 epochs of 3 steps and validate at the end."""
    out = tmp_path_factory.mktemp("ddp_run")
    trainer = _trainer(
        out,
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        max_epochs=EPOCHS,
        check_val_every_n_epoch=EPOCHS,
    )
    trainer.fit(_module(), datamodule=_datamodule(ddp_dataset))
    return out


@pytest.mark.slow
def test_ranks_draw_disjoint_samples_from_every_modality(ddp_run: Path) -> None:
    records = [json.loads((ddp_run / f"rank{r}_indices.json").read_text()) for r in (0, 1)]
    epoch_length = STEPS_PER_EPOCH * BATCH_SIZE * WORLD_SIZE
    assert all(len(r) == STEPS_PER_EPOCH * EPOCHS for r in records)
    for m in ("ct", "mr"):
        orders = []
        for epoch in range(EPOCHS):
            per_rank = [
                [i for step in r if step["epoch"] == epoch for i in step[m]] for r in records
            ]
            assert [len(p) for p in per_rank] == [STEPS_PER_EPOCH * BATCH_SIZE] * 2
            assert not set(per_rank[0]) & set(per_rank[1]), f"{m} epoch {epoch}: overlap"
            assert set(per_rank[0]) | set(per_rank[1]) == set(range(epoch_length))
            orders.append(per_rank[0])
            ids = {i for step in records[0] for i in step[f"{m}_ids"]}
            assert ids <= {f"{m}_000", f"{m}_001"}  # training cases only
        assert orders[0] != orders[1], f"{m}: same shuffle in every epoch (set_epoch not applied)"


@pytest.mark.slow
def test_weights_are_identical_on_all_ranks(ddp_run: Path) -> None:
    states = [torch.load(ddp_run / f"rank{r}_final.pt", weights_only=True) for r in (0, 1)]
    initial = _module().state_dict()
    params = {n for n, _ in _module().named_parameters()}
    assert states[0].keys() == states[1].keys() == initial.keys()
    changed = 0
    for name in params:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=0, msg=name)
        changed += not torch.equal(states[0][name], initial[name])
    assert changed == len(params), "every parameter is updated by the optimizer"
    # Norm running statistics are buffers: DDP broadcasts rank 0's at every forward (the last
    # step's local update differs per rank) and only rank 0 writes checkpoints.


@pytest.mark.slow
def test_ddp_validation_equals_single_process_validation(
    ddp_run: Path, ddp_dataset: Path, tmp_path: Path
) -> None:
    summaries = [json.loads((ddp_run / f"rank{r}_summary.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == WORLD_SIZE for s in summaries)
    ddp_summary = summaries[0]["summary"]
    assert summaries[1]["summary"] == ddp_summary, "ranks must log the same gathered summary"
    for m, ids in VAL_CASES.items():
        stats = ddp_summary["modalities"][m]
        assert stats["n_cases"] == len(ids), f"{m}: padded duplicates must be dropped"
        assert [c["id"] for c in stats["cases"]] == ids

    # the same weights validated by one process
    module = _module()
    module.load_state_dict(torch.load(ddp_run / "rank0_val_weights.pt", weights_only=True))
    trainer = _trainer(tmp_path, devices=1, callbacks=[])
    trainer.validate(module, datamodule=_datamodule(ddp_dataset), verbose=False)
    single = module.last_val_summary
    for m in VAL_CASES:
        for key in ("dice", "assd", "hd95"):
            a, b = ddp_summary["modalities"][m]["mean"][key], single["modalities"][m]["mean"][key]
            assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), (m, key)
        for c_ddp, c_one in zip(
            ddp_summary["modalities"][m]["cases"], single["modalities"][m]["cases"], strict=True
        ):
            assert c_ddp["id"] == c_one["id"]
            assert c_ddp["mean"]["dice"] == pytest.approx(c_one["mean"]["dice"], nan_ok=True)


class _CacheRecorder(Callback):
    """Writes which volumes each rank holds in its caches after validation."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_validation_end(self, trainer, pl_module) -> None:
        datasets = trainer.datamodule._datasets
        held: dict[str, Any] = {}
        for m in pl_module.modalities:
            train_cache = datasets["train"][m].data  # SeededSamples(CacheDataset)
            held[f"train_{m}"] = [r["id"] for r in train_cache.data]
            val_cache = datasets["val"][m]
            held[f"val_{m}"] = [
                r["id"] for r, item in zip(val_cache.data, val_cache._cache, strict=True) if item
            ]
        path = os.path.join(self.out_dir, f"rank{trainer.global_rank}_cache.json")
        with open(path, "w") as f:
            json.dump(held, f)


@pytest.mark.slow
def test_shard_cases_gives_each_rank_its_own_cases_and_cache(
    ddp_dataset: Path, tmp_path: Path
) -> None:
    """With ``shard_cases`` each rank caches and samples only its share; validation still
    covers every case once."""
    trainer = _trainer(
        tmp_path,
        strategy="ddp_spawn",
        devices=WORLD_SIZE,
        max_epochs=1,
        callbacks=[_Recorder(str(tmp_path)), _CacheRecorder(str(tmp_path))],
    )
    trainer.fit(_module(), datamodule=_datamodule(ddp_dataset, shard_cases=True))
    held = [json.loads((tmp_path / f"rank{r}_cache.json").read_text()) for r in (0, 1)]
    seen = [json.loads((tmp_path / f"rank{r}_indices.json").read_text()) for r in (0, 1)]
    for m in ("ct", "mr"):
        shares = [h[f"train_{m}"] for h in held]
        assert shares == [[f"{m}_000"], [f"{m}_001"]], m
        for rank in (0, 1):
            ids = {i for step in seen[rank] for i in step[f"{m}_ids"]}
            assert ids == set(shares[rank]), f"{m} rank {rank} sampled outside its share"
        val_held = [h[f"val_{m}"] for h in held]
        # DistributedSampler hands each rank ceil(n / 2) volumes; only those get cached.
        assert all(len(v) <= -(-len(VAL_CASES[m]) // WORLD_SIZE) for v in val_held), val_held
        assert set(val_held[0]) | set(val_held[1]) == set(VAL_CASES[m])
    summary = json.loads((tmp_path / "rank0_summary.json").read_text())["summary"]
    for m, ids in VAL_CASES.items():
        assert [c["id"] for c in summary["modalities"][m]["cases"]] == ids


def test_shard_cases_needs_a_case_per_rank(ddp_dataset: Path) -> None:
    datamodule = _datamodule(ddp_dataset, shard_cases=True)
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=3)
    with pytest.raises(ValueError, match="2 'ct' training case"):
        datamodule.setup("fit")


@pytest.mark.slow
def test_cli_fit_with_ddp_on_two_cpu_processes(ddp_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path / "tiny.yaml", ddp_dataset, run_dir, steps_per_epoch=2)
    command = [
        sys.executable,
        "-m",
        "ummkd",
        "fit",
        "--config",
        str(config),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=150, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "global batch: 8 samples per optimizer step" in output, output[-4000:]
    assert "2 device(s)" in output
    last = list(run_dir.rglob("last.ckpt"))
    assert len(last) == 1, "one run folder shared by both ranks, one last.ckpt"
    ckpt = torch.load(last[0], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0
    metrics = next(run_dir.rglob("metrics.csv")).read_text()
    assert "val/dice_ct" in metrics and "val/dice_mr" in metrics


# ------------------------------------------------------------------ SyncBatchNorm (conversion)
@pytest.fixture
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("_one_thread")
@pytest.mark.parametrize("base", ["tiny", "demo"])
def test_sync_batchnorm_config_converts_inner_norms_and_keeps_keys(
    base: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """configs/trainer/ddp.yaml sets sync_batchnorm: Lightning converts with the trainer's
    layer-sync plugin; the ModalityNorm containers stay, their branches become SyncBatchNorm."""
    if base == "tiny":
        config = tiny_config(tmp_path / "tiny.yaml", tiny_dataset, tmp_path)
    else:
        config = CONFIGS / "demo.yaml"
    cli = UMMKDCLI(
        UMMKDModule,
        UnpairedDataModule,
        args=[
            "--config",
            str(config),
            "--config",
            str(CONFIGS / "trainer" / "ddp.yaml"),
            f"--data.root={tiny_dataset}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.precision=32-true",
            "--trainer.logger=false",
            "--data.num_workers=0",
            "--data.patch_size=[48,48]",
        ],
        run=False,
        trainer_defaults=_trainer_defaults(),
        save_config_callback=None,
        auto_configure_optimizers=False,
    )
    layer_sync = cli.trainer.strategy._layer_sync
    assert layer_sync is not None, "trainer.sync_batchnorm: true must give a layer-sync plugin"
    model = cli.model
    layers_before = modality_norm_layers(model.network)
    n_norms = len(layers_before)
    assert n_norms > 0
    batch_norms = [
        b for x in layers_before.values() for b in x.branches.values() if isinstance(b, BATCH_NORMS)
    ]
    keys_before = list(model.state_dict())
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    converted = layer_sync.apply(model)
    layers = modality_norm_layers(converted.network)
    assert len(layers) == n_norms and all(isinstance(x, ModalityNorm) for x in layers.values())
    sync_layers = [m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(sync_layers) == len(batch_norms)  # every per-modality BatchNorm branch
    if base == "tiny":
        assert len(batch_norms) == 2 * n_norms  # DilatedResNet2d: batch norm, two modalities
    assert not [m for m in converted.modules() if type(m) in BATCH_NORMS]
    assert list(converted.state_dict()) == keys_before
    for k, v in converted.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    converted.load_state_dict(state_before, strict=True)  # old checkpoints load unchanged

    reverted = layer_sync.revert(converted)
    assert not [m for m in reverted.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert list(reverted.state_dict()) == keys_before
