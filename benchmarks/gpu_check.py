"""One-shot GPU check for a lent accelerator (run through ``benchmarks/gpu_check.sh``).

Measures, on the current CUDA device:

* training-step throughput (samples/s over both modalities, peak memory, mean GPU utilization)
  of the paper's 2D network (DilatedResNet2d, base 16, 256x256x3, batch 8 + 8) and 3D network
  (UNet3d, base 16, 256x256x8 patches, batch 2 + 2) under fp32, bf16 autocast and fp16 autocast
  with a gradient scaler, plus channels_last and ``torch.compile`` variants of the 2D step;
* the training data loader alone (batches/s of both modalities, 8 workers, synthetic phantoms);
* the forward of per-modality norms converted with ``SyncBatchNorm.convert_sync_batchnorm``
  (one process: the conversion and CUDA forward are checked; cross-rank sync needs >= 2 GPUs);
* an end-to-end ``ummkd fit`` + ``ummkd test`` of the demo config with ``configs/trainer/gpu.yaml``.

Writes ``gpu_check.json`` and ``gpu_check.md`` into the folder given as the first argument.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ummkd.losses import ModalityDistillationLoss, SegmentationLoss
from ummkd.nn import DilatedResNet2d, UNet3d, use_modality

MODALITIES = ("ct", "mr")


class UtilizationSampler:
    """Samples ``nvidia-smi`` GPU utilization in the background."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.values: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self.interval_ms = interval_ms

    def __enter__(self) -> UtilizationSampler:
        try:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    f"-lms={self.interval_ms}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.values.append(float(line.strip()))
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None


def _batches(kind: str, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random inputs with blob-like labels for both modalities."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    if kind == "2d":
        shape, channels, batch = (256, 256), 3, 8
    else:
        shape, channels, batch = (256, 256, 8), 1, 2
    out = {}
    for m in MODALITIES:
        image = torch.randn(batch, channels, *shape, generator=gen)
        coarse = torch.randint(0, 5, (batch, 1, *[max(1, s // 32) for s in shape]), generator=gen)
        label = torch.nn.functional.interpolate(coarse.float(), size=shape, mode="nearest")
        out[m] = (image.to(device), label[:, 0].long().to(device))
    return out


def bench_training(
    kind: str,
    precision: str,
    *,
    channels_last: bool = False,
    compile_net: bool = False,
    steps: int = 20,
    warmup: int = 5,
) -> dict[str, Any]:
    """Time full training steps (both modalities, seg + KD loss, Adam) of one configuration."""
    device = torch.device("cuda")
    net: torch.nn.Module
    if kind == "2d":
        net = DilatedResNet2d(3, 5, modalities=MODALITIES, base_channels=16)
    else:
        net = UNet3d(1, 5, modalities=MODALITIES, base_channels=16)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if compile_net else net
    seg, kd = SegmentationLoss(kind="paper", num_classes=5), ModalityDistillationLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    batches = _batches(kind, device)
    if channels_last:
        batches = {
            m: (x.contiguous(memory_format=torch.channels_last), y) for m, (x, y) in batches.items()
        }

    def step() -> float:
        logits, labels, loss = {}, {}, 0.0
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            for m, (x, y) in batches.items():
                with use_modality(net, m):
                    logits[m] = forward(x)
                labels[m] = y
                loss = loss + seg(logits[m], y)
            loss = loss + 0.5 * kd(logits, labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    losses = []
    with UtilizationSampler() as util:
        start = time.perf_counter()
        for _ in range(steps):
            losses.append(step())
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    samples = steps * sum(x.shape[0] for x, _ in batches.values())
    return {
        "config": kind,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile_net,
        "samples_per_s": samples / elapsed,
        "step_ms": 1000 * elapsed / steps,
        "warmup_s": warmup_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "gpu_util_pct": util.mean,
        "finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "last_loss": losses[-1],
    }


def bench_loader(workdir: Path, batches: int = 60) -> dict[str, Any]:
    """Batches/s delivered by the training loader (both modalities, 8 workers)."""
    from ummkd.lightning.datamodule import SyntheticOptions, UnpairedDataModule

    dm = UnpairedDataModule(
        root=str(workdir / "synthetic"),
        synthetic=SyntheticOptions(generate=True),
        patch_size=[96, 96],
        batch_size=8,
        steps_per_epoch=batches,
        num_workers=8,
        check="shallow",
    )
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    next(loader)
    start = time.perf_counter()
    count = 0
    for batch, _, _ in loader:
        count += 1
        assert set(batch) == set(MODALITIES)
    elapsed = time.perf_counter() - start
    return {"batches_per_s": count / elapsed, "batches": count, "batch_size": 8, "workers": 8}


def check_sync_batchnorm() -> dict[str, Any]:
    """Convert modality norms to SyncBatchNorm and run a CUDA training-mode forward."""
    import os

    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        net = DilatedResNet2d(3, 5, modalities=MODALITIES, base_channels=4)
        keys_before = sorted(net.state_dict())
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net).cuda().train()
        n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
        x = torch.randn(4, 3, 64, 64, device="cuda")
        outs = {}
        for m in MODALITIES:
            with use_modality(net, m):
                outs[m] = net(x * (1 if m == "ct" else 3) + (0 if m == "ct" else 2))
        mean_ct = next(k for k in net.state_dict() if k.endswith("branches.ct.running_mean"))
        mean_mr = mean_ct.replace("branches.ct", "branches.mr")
        diverged = not torch.allclose(net.state_dict()[mean_ct], net.state_dict()[mean_mr])
        return {
            "sync_batchnorm_layers": n_sync,
            "state_dict_keys_unchanged": keys_before == sorted(net.state_dict()),
            "per_modality_running_stats_diverge": diverged,
            "forward_ok": all(torch.isfinite(o).all().item() for o in outs.values()),
            "note": "world size 1: SyncBatchNorm runs its local path; syncing needs >= 2 GPUs",
        }
    finally:
        dist.destroy_process_group()


def end_to_end(workdir: Path, repo: Path) -> dict[str, Any]:
    """``ummkd fit`` then ``ummkd test`` of the demo config on the GPU profile."""
    common = [
        "--config",
        str(repo / "configs" / "demo.yaml"),
        "--config",
        str(repo / "configs" / "trainer" / "gpu.yaml"),
        f"--data.root={workdir / 'synthetic'}",
        f"--trainer.default_root_dir={workdir / 'runs'}",
        "--trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    fit = subprocess.run(
        [sys.executable, "-m", "ummkd", "fit", *common], capture_output=True, text=True
    )
    fit_s = time.perf_counter() - start
    test = subprocess.run(
        [sys.executable, "-m", "ummkd", "test", *common, "--ckpt_path=best"],
        capture_output=True,
        text=True,
    )
    summaries = sorted((workdir / "runs").rglob("summary.json"))
    result: dict[str, Any] = {"fit_rc": fit.returncode, "test_rc": test.returncode, "fit_s": fit_s}
    if summaries:
        summary = json.loads(summaries[-1].read_text())
        result["test_dice"] = {m: s["mean"]["dice"] for m, s in summary["modalities"].items()}
    if fit.returncode or test.returncode:
        result["stderr_tail"] = (fit.stderr + test.stderr)[-3000:]
    return result


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    torch.backends.cudnn.benchmark = True
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "training": [],
    }
    plan = [
        ("2d", "fp32", False, False),
        ("2d", "bf16", False, False),
        ("2d", "fp16", False, False),
        ("2d", "bf16", True, False),
        ("3d", "fp32", False, False),
        ("3d", "bf16", False, False),
        ("3d", "fp16", False, False),
        ("2d", "bf16", False, True),
    ]
    for kind, precision, channels_last, compile_net in plan:
        try:
            row = bench_training(
                kind, precision, channels_last=channels_last, compile_net=compile_net
            )
        except Exception as error:  # record and continue: one failure must not hide the rest
            row = {"config": kind, "precision": precision, "error": repr(error)[:500]}
        print(json.dumps(row), flush=True)
        results["training"].append(row)
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, fn in (
            ("loader", lambda: bench_loader(work)),
            ("sync_batchnorm", check_sync_batchnorm),
            ("end_to_end", lambda: end_to_end(work, repo)),
        ):
            try:
                results[name] = fn()
            except Exception as error:
                results[name] = {"error": repr(error)[:1000]}
            print(name, json.dumps(results[name]), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"GPU check on {results['device']} (torch {results['torch']}, {results['date']})",
        "",
        "| net | precision | channels_last | compile | samples/s | step ms | peak GiB | util % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["training"]:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['precision']} | error: {r['error'][:80]} |")
            continue
        util = f"{r['gpu_util_pct']:.0f}" if r["gpu_util_pct"] is not None else "n/a"
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['channels_last']} | {r['compile']} | "
            f"{r['samples_per_s']:.1f} | {r['step_ms']:.1f} | {r['peak_mem_gib']:.2f} | {util} |"
        )
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
