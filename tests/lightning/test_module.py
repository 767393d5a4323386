"""Unit tests of `UMMKDModule` without a Trainer: gradients, optimizer groups, norms, KD, errors."""

from __future__ import annotations

import functools
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from ummkd.errors import UsageError
from ummkd.lightning.module import CODE_COMMITS_KEY, UMMKDModule
from ummkd.nn import DilatedResNet2d, ModalityNorm, modality_norm_layers
from ummkd.provenance import code_commit

NUM_CLASSES = 5
CLASS_NAMES = ["background", "liver", "kidney_right", "kidney_left", "spleen"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_net(modalities: tuple[str, ...] | None = None) -> DilatedResNet2d:
    torch.manual_seed(0)
    return DilatedResNet2d(
        3, NUM_CLASSES, modalities=modalities, base_channels=2, head_channels=4, dropout=0.0
    )


def _batch(size: int = 32, batch: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A CT and an MR mini-batch in which every class occurs (labels are quadrant blocks)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for shift, m in enumerate(("ct", "mr")):
        label = torch.zeros(batch, 1, size, size, dtype=torch.long)
        h = size // 2
        label[:, :, :h, :h] = 1 + shift % 2
        label[:, :, :h, h:] = 2 - shift % 2
        label[:, :, h:, :h] = 3
        label[:, :, h + 4 :, h + 4 :] = 4
        image = torch.randn(batch, 3, size, size, generator=g) + label.float()
        out[m] = {"image": image, "label": label}
    return out


def _module(network: nn.Module | None = None, **kwargs: Any) -> UMMKDModule:
    return UMMKDModule(
        network if network is not None else _tiny_net(),
        modalities=["ct", "mr"],
        num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES,
        **kwargs,
    )


# ---------------------------------------------------------------------------- gradients (DDP)
def test_one_step_with_both_modalities_gives_every_parameter_a_gradient() -> None:
    """DDP runs without find_unused_parameters: no parameter may be left without a gradient."""
    module = _module()
    assert modality_norm_layers(module.network), "plain norms must have been converted"
    module.train()
    loss = module.training_step(_batch(), 0)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    # both modality branches of every norm got a non-zero gradient
    for name, layer in modality_norm_layers(module.network).items():
        for m in ("ct", "mr"):
            weight = layer.branches[m].weight
            assert weight.grad is not None and weight.grad.abs().sum() > 0, (name, m)


def test_a_single_modality_step_would_leave_the_other_norms_without_gradient() -> None:
    """Why every step must forward every modality (this is the DDP failure the batch avoids)."""
    module = _module()
    module.train()
    batch = _batch()
    logits = module(batch["ct"]["image"], "ct")
    module.objective.seg_loss(logits, batch["ct"]["label"]).backward()
    unused = [n for n, p in module.named_parameters() if p.grad is None]
    assert unused and all(".branches.mr." in n for n in unused)


# ---------------------------------------------------------------------------- optimizer
def test_the_optimizers_own_weight_decay_is_refused_not_ignored() -> None:
    module = _module(optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05))
    with pytest.raises(UsageError, match="set that instead"):
        module.configure_optimizers()
    zero = _module(optimizer=functools.partial(torch.optim.Adam, lr=1e-3, weight_decay=0.0))
    assert zero.configure_optimizers()["optimizer"].param_groups[0]["weight_decay"] == 1e-4


def test_weight_decay_only_on_convolution_kernels() -> None:
    module = _module(weight_decay=1e-4)
    optimizer = module.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert not decay_ids & no_decay_ids
    assert decay_ids | no_decay_ids == {id(p) for p in module.parameters()}
    for mod in module.network.modules():
        for name, p in mod.named_parameters(recurse=False):
            if isinstance(mod, nn.Conv2d) and name == "weight":
                assert id(p) in decay_ids, f"conv kernel {mod} not decayed"
            else:
                assert id(p) in no_decay_ids, f"{type(mod).__name__}.{name} decayed"
    norm_params = [
        p for layer in modality_norm_layers(module.network).values() for p in layer.parameters()
    ]
    assert norm_params and all(id(p) in no_decay_ids for p in norm_params)
    biases = [p for n, p in module.network.named_parameters() if n.endswith("bias")]
    assert biases and all(id(p) in no_decay_ids for p in biases)


def test_no_weight_decay_on_prelu_slopes_or_layernorm() -> None:
    """Only conv/linear kernels are decayed, also in networks with PReLU or LayerNorm."""
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.PReLU(4),
        nn.Conv2d(4, NUM_CLASSES, 1),
    )
    module = _module(network, norm="shared")
    head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    module.network.add_module("extra", head)
    decay = module.configure_optimizers()["optimizer"].param_groups[0]
    decay_ids = {id(p) for p in decay["params"]}
    expected = {id(network[0].weight), id(network[3].weight), id(head[0].weight)}
    assert decay_ids == expected


# ---------------------------------------------------------------------------- norm modes
def test_shared_norm_on_a_modality_norm_network_raises() -> None:
    with pytest.raises(ValueError, match="norm='shared'"):
        _module(_tiny_net(modalities=("ct", "mr")), norm="shared")


def test_shared_norm_keeps_plain_norms() -> None:
    module = _module(norm="shared")
    assert not modality_norm_layers(module.network)
    loss = module.training_step(_batch(), 0)
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())


def test_modality_norm_converts_a_monai_basic_unet_and_trains() -> None:
    torch.manual_seed(0)
    network = BasicUNet(
        spatial_dims=2, in_channels=3, out_channels=NUM_CLASSES, features=(4, 4, 8, 8, 16, 4)
    )
    plain_norms = [m for m in network.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert plain_norms
    module = _module(network, norm="modality")
    layers = modality_norm_layers(module.network)
    assert len(layers) == len(plain_norms)
    assert all(isinstance(layer, ModalityNorm) for layer in layers.values())
    assert {tuple(layer.modalities) for layer in layers.values()} == {("ct", "mr")}
    keys = module.network.state_dict().keys()
    assert any(".branches.ct." in k for k in keys) and any(".branches.mr." in k for k in keys)

    optimizer = module.configure_optimizers()["optimizer"]
    batch = _batch(size=32)
    losses = []
    for step in range(3):
        optimizer.zero_grad()
        loss = module.training_step(batch, step)
        loss.backward()
        missing = [n for n, p in module.named_parameters() if p.grad is None]
        assert not missing
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    # inference with each modality's own norms
    module.eval()
    with torch.no_grad():
        out_ct = module(batch["ct"]["image"], "ct")
        out_mr = module(batch["ct"]["image"], "mr")
    assert out_ct.shape == (2, NUM_CLASSES, 32, 32)
    assert not torch.allclose(out_ct, out_mr)


# ---------------------------------------------------------------------------- loss terms
def test_kd_weight_zero_skips_the_kd_term(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(kd_weight=0.0)

    def fail(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("KD loss must not be computed when kd_weight=0")

    monkeypatch.setattr(module.objective.kd_loss, "forward", fail)
    batch = _batch()
    torch.manual_seed(0)
    total = module.training_step(batch, 0)
    torch.manual_seed(0)
    seg = sum(
        module.objective.seg_loss(module(batch[m]["image"], m), batch[m]["label"]) for m in batch
    )
    torch.testing.assert_close(total, seg)


def test_kd_term_is_added_with_its_weight() -> None:
    batch = _batch()
    with_kd = _module(kd_weight=0.5)
    without = _module(kd_weight=0.0)
    without.load_state_dict(with_kd.state_dict())
    # eval mode: no dropout and fixed norm statistics, so both modules compute the same logits
    with_kd.eval()
    without.eval()
    logits = {m: with_kd(batch[m]["image"], m) for m in batch}
    kd = with_kd.objective.kd_loss(logits, {m: batch[m]["label"] for m in batch})
    assert float(kd) > 0
    difference = with_kd.training_step(batch, 0) - without.training_step(batch, 0)
    torch.testing.assert_close(difference, 0.5 * kd)


def test_non_finite_loss_names_step_and_modality() -> None:
    module = _module()
    batch = _batch()
    batch["mr"]["image"][0, 0, 3, 3] = float("nan")
    with pytest.raises(FloatingPointError) as info:
        module.training_step(batch, 7)
    message = str(info.value)
    assert "step 0" in message and "batch 7" in message
    assert "modality mr" in message and "seg_mr=nan" in message
    assert "non-finite inputs: ['mr']" in message


def test_checkpoint_with_non_finite_weights_is_refused() -> None:
    module = _module()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # finite: accepted
    first_conv = next(k for k in checkpoint["state_dict"] if k.endswith("conv.weight"))
    checkpoint["state_dict"][first_conv] = checkpoint["state_dict"][first_conv].clone()
    checkpoint["state_dict"][first_conv][0, 0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="refusing to save"):
        module.on_save_checkpoint(checkpoint)


def test_best_dice_survives_a_checkpoint_round_trip() -> None:
    module = _module()
    module.val_dice_best.update(torch.tensor(0.75))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["ummkd_val_dice_best"] == pytest.approx(0.75)
    restored = _module()
    restored.on_load_checkpoint(checkpoint)
    restored.on_train_start()
    assert float(restored.val_dice_best.compute()) == pytest.approx(0.75)
    fresh = _module()
    fresh.on_train_start()
    assert not fresh.val_dice_best.update_called
    # weights loaded for fine-tuning (fit without ckpt_path): the old best does not carry over
    finetune = _module()
    finetune.on_load_checkpoint(checkpoint)
    finetune.trainer = pl.Trainer(logger=False, enable_checkpointing=False, barebones=True)
    finetune.on_train_start()
    assert not finetune.val_dice_best.update_called


def test_checkpoints_record_the_commits_that_trained_the_weights() -> None:
    module = _module()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    module.on_save_checkpoint(checkpoint)  # the same code again: listed once
    assert checkpoint[CODE_COMMITS_KEY] == [code_commit()]
    # resumed on other code: the earlier commit stays first
    resumed = _module()
    resumed.on_load_checkpoint({**checkpoint, CODE_COMMITS_KEY: ["0123456789ab"]})
    resumed.on_save_checkpoint(checkpoint)
    assert checkpoint[CODE_COMMITS_KEY] == ["0123456789ab", code_commit()]


# ---------------------------------------------------------------------------- evaluation
def _case(case_id: str, modality: str, dice: float) -> dict[str, Any]:
    metrics = {
        name: {"dice": dice, "assd": 1.0 - dice, "hd95": 2.0 * (1.0 - dice)}
        for name in CLASS_NAMES[1:]
    }
    return {"id": case_id, "modality": modality, "metrics": metrics}


def test_evaluation_summary_drops_cases_repeated_by_sampler_padding() -> None:
    """DistributedSampler pads the last batch with cases seen on another rank: count each once."""
    module = _module()
    unique = [_case("ct_a", "ct", 0.9), _case("ct_b", "ct", 0.5), _case("mr_a", "mr", 0.6)]
    module._eval_cases = [*unique, _case("ct_a", "ct", 0.9), _case("mr_a", "mr", 0.6)]
    summary = module._gather_summary(grid="preprocessed")
    assert summary["modalities"]["ct"]["n_cases"] == 2
    assert summary["modalities"]["mr"]["n_cases"] == 1
    assert summary["modalities"]["ct"]["mean"]["dice"] == pytest.approx(0.7)
    assert [c["id"] for c in summary["modalities"]["ct"]["cases"]] == ["ct_a", "ct_b"]
    assert module._eval_cases == []  # reset for the next epoch
    # the same id in two modalities is two cases
    module._eval_cases = [_case("case_0", "ct", 0.8), _case("case_0", "mr", 0.4)]
    summary = module._gather_summary(grid="preprocessed")
    assert summary["modalities"]["ct"]["n_cases"] == summary["modalities"]["mr"]["n_cases"] == 1


def test_skip_mode_skips_only_the_non_finite_step(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(non_finite_loss="skip")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    calls = {"n": 0}
    original = module.objective.seg_loss.forward

    def flaky(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = original(logits, labels)
        return loss * float("inf") if calls["n"] == 3 else loss  # step 2, first modality

    monkeypatch.setattr(module.objective.seg_loss, "forward", flaky)
    batches = [_batch(seed=s) for s in range(3)]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    assert module.skipped_steps == 1
    # Lightning still calls optimizer.step with the closure; Adam leaves parameters without
    # gradients alone, so only two of the three batches updated the weights.
    optimizer = trainer.optimizers[0]
    first = next(module.network.parameters())
    assert int(optimizer.state[first]["step"]) == 2
    state = module.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], state[k]) for k in state if k.endswith("weight"))


def test_skip_mode_is_refused_under_ddp() -> None:
    module = _module(non_finite_loss="skip")
    module._trainer = type("FakeTrainer", (), {"world_size": 2})()
    with pytest.raises(ValueError, match="single process"):
        module.on_fit_start()


# --------------------------------------------------------------------------------- logging
@pytest.mark.parametrize(
    ("accumulate", "n_batches", "every", "logged_steps", "kd_calls"),
    [(1, 7, 3, [2, 5], 2), (2, 8, 2, [1, 3], 4)],
)
def test_loss_terms_are_logged_only_on_the_steps_the_logger_records(
    tmp_path: Any,
    accumulate: int,
    n_batches: int,
    every: int,
    logged_steps: list[int],
    kd_calls: int,
) -> None:
    """The terms are logged only on the steps the logger records, and always together."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    module = _module(kd_weight=0.5)
    logged: list[str] = []
    original_log = module.log

    def counting_log(name: str, *args: Any, **kwargs: Any) -> None:
        logged.append(name)
        original_log(name, *args, **kwargs)

    module.log = counting_log  # type: ignore[method-assign]
    batches = [_batch(seed=s) for s in range(n_batches)]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=CSVLogger(tmp_path, name="log"),
        log_every_n_steps=every,
        accumulate_grad_batches=accumulate,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    with open(next(tmp_path.rglob("metrics.csv")), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == logged_steps
    # the loss on every batch, the terms only on the batches of the logged optimizer steps
    assert logged.count("train/loss") == n_batches and logged.count("train/kd") == kd_calls
    for row in rows:  # the terms come from the same step as the loss
        total = (
            float(row["train/seg_ct"]) + float(row["train/seg_mr"]) + 0.5 * float(row["train/kd"])
        )
        assert total == pytest.approx(float(row["train/loss"]), rel=1e-5)


# ------------------------------------------------------------------------ inference padding
def test_inference_pads_slices_to_the_networks_total_stride() -> None:
    """A 4-stride U-Net needs H, W divisible by 16; odd-sized volumes must still predict."""
    from monai.networks.nets import UNet

    from ummkd.lightning.module import required_divisor
    from ummkd.nn import MultiStreamUNet, XShapeNet

    unet = UNet(2, 3, NUM_CLASSES, channels=(4, 4, 4, 4, 4), strides=(2, 2, 2, 2))
    assert required_divisor(unet) == 16
    assert required_divisor(UNet(2, 3, 2, channels=(4, 4, 4), strides=((2, 1), 2))) == 4
    assert required_divisor(_tiny_net()) == 8
    assert required_divisor(XShapeNet(3, NUM_CLASSES, base_channels=2, head_channels=4)) == 8
    assert required_divisor(BasicUNet(2, 3, 2, features=(4, 4, 4, 4, 4, 4))) == 32
    streams = MultiStreamUNet(2, 3, NUM_CLASSES, channels=(4, 4, 4), strides=(2, 2))
    assert required_divisor(streams) == 4

    module = _module(unet).eval()
    assert module.inference_divisible == 16
    volume = torch.randn(1, 21, 22, 5)
    with torch.no_grad():
        probs = module.predict_volume(volume, "ct")
    assert probs.shape == (NUM_CLASSES, 21, 22, 5)
    assert torch.allclose(probs.sum(0), torch.ones(21, 22, 5), atol=1e-5)
    assert _module(unet, inference_divisible=32).inference_divisible == 32


# ---------------------------------------------------------------------------- torch.compile
def test_compiled_module_compiles_once_per_modality_and_mode(monkeypatch: pytest.MonkeyPatch):
    """`compile=True`: alternating modalities every step must not recompile every step."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend=counter))
    module = _module(_tiny_net(), compile=True)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
    for step in range(4):
        loss = module.training_step(_batch(seed=step), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert counter.frame_count == 2, "one graph per modality in training"
    module.eval()
    volume = torch.randn(1, 32, 32, 4)
    with torch.no_grad():
        for _ in range(2):
            for modality in ("ct", "mr"):
                module.predict_volume(volume, modality)
    assert counter.frame_count == 4, "plus one per modality in evaluation mode"
    torch._dynamo.reset()
