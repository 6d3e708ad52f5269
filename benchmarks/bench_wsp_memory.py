#!/usr/bin/env python
"""WSP training step: step time and peak RSS, the library against the
official code itself.

Each side trains ``--backbone`` (TinyNet or ResNet-18) on ``--batch`` slices
of ``--size``² per step, on the CPU or, with ``--device cuda``, on a GPU, in
a fresh process; the sides alternate over ``--repeats`` rounds (see
``_harness.py``). Every side reports the median step time after ``--warmup``
untimed steps (``--steps`` timed), ``slices_per_s`` (``--batch`` / median
step time) and its peak RSS (``VmHWM``): before the work (imports, data, model;
``peak_before_gib``) and after it (``peak_after_gib``), with the minor page
faults and the system CPU time.

On CUDA (``--device cuda`` or ``cuda:N``) every side trains on the GPU, a
step ends when the GPU is done (``CudaStepClock``) and each record adds
``cuda_max_allocated_gib``, ``cuda_max_reserved_gib``, the GPU utilisation
sampled through NVML after the warm-up (``gpu_util_mean_pct``, ...; see
``GpuMonitor``) and ``cudnn_benchmark``.

Sides:

- ``official``: with ``--official PATH`` (a checkout of
  https://github.com/Guerbet-AI/wsp-contrastive), the official network
  (``models.tinynet.TinyNet`` or ``models.resnet.resnet18``, encoder mode,
  512-256-128) and ``losses.WSPContrastiveLoss`` (σ 0.85, τ 0.1), Adam (lr
  1e-5, weight decay 1e-5) in a plain loop on one random batch already in
  memory: input / 250 as the official ``training_step``, two forward passes,
  the loss, backward, the Adam step. The official ``training_step`` itself is
  not run: it lives in a PyTorch Lightning module whose file also imports
  kornia, cv2, seaborn and the dataset module, and its kornia views would be
  the only difference. On CUDA, as its ``Trainer(gpus=[0])`` (float32
  in pretraining; cuDNN's autotuner off, Lightning's default): the module on
  the GPU, and the batch, its labels and its positions copied from pinned
  memory at every step (its DataLoader pins them), so its loss gets them on
  the GPU (its ``torch.tensor(labels, device=...)`` and ``.cpu()`` of the
  positions then copy them). Run-time patch (recorded in ``patches``): the
  published TinyNet does not run, its first convolution takes 2 input
  channels (the slices have 1) and its last one 256 (the previous layer
  gives 128); both are replaced by ``Conv2d(1, 16, 5)`` and
  ``Conv2d(128, 512, 5)`` after construction. ResNet-18 needs no patch.
  It runs in float32 (its loss weights the log-softmax with float64 kernel
  weights, as its code makes them).
- ``library``: ``WSPPretrainer.fit`` on random volumes (``--warmup +
  --steps`` steps of ``--batch`` slices, the default ``"wsp"`` views, built
  on the batch inside the step); a step is the interval between two
  consecutive batch ends (loading the batch, z-score, views, both forward
  passes, the loss, backward, Adam). The estimator's defaults: float32
  (``precision="fp32"``, as the official step) and, on CUDA, channels-last
  (``memory_format="auto"``).
- ``library_heap_reuse``: the same with the estimator's CPU heap reuse
  forced on (``_cpu_heap_reuse = True``, what the library did before issue
  17, point 4).
- ``library_noaug``: the same with ``augmentation=None``.
- ``library_files``, ``library_noaug_files``: the same with the volumes
  given as ``.npy`` paths, read per batch, as the official DataLoader reads
  its slices from disk (the array sides hold the whole 64 MB input in memory
  while the official side holds one batch).
- ``plain``: the library's backbone + head and ``WSPLoss`` in the official
  side's plain loop (float32): what a minimal step costs with the library's
  network.

On request (``--sides NAME ...``): ``library_fast`` and
``library_noaug_fast``, ``library`` and ``library_noaug`` with
``precision="auto"`` (bfloat16 on a GPU that supports it; float32 on most
CPUs): the library's fastest setting, against the float32 official step.

Usage::

    python benchmarks/bench_wsp_memory.py --official /path/to/wsp-contrastive
    python benchmarks/bench_wsp_memory.py --backbone resnet18 --official ...
    python benchmarks/bench_wsp_memory.py --quick --repeats 1

On a GPU, the official setting (``config.py``: 512² slices, batch 64,
TinyNet, float32 in pretraining)::

    python benchmarks/bench_wsp_memory.py --device cuda --official PATH \\
        --size 512 --batch 64 --warmup 3 --steps 10 --repeats 2 --threads 4 \\
        --sides official library library_noaug library_noaug_fast plain \\
        --timeout 90

Estimate for an H100 (not measured yet): 20-60 ms per step for every side
(about 2.5 TFLOP of float32 work per TinyNet step), so each process is
mostly its set-up: 6-10 s for ``official`` and ``plain``, 10-15 s for a
``library*`` side (its imports, and the 64 random 512 x 512 x 10 volumes,
671 MB, drawn on the host). About 90-120 s in all. With ``--backbone
resnet18`` (about 7 TFLOP per step) add roughly 1 s per process.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from _bench_common import gib, peak_rss_bytes
from _harness import (
    CudaStepClock,
    GpuMonitor,
    bind_cuda_device,
    check_device,
    main,
    on_cuda,
    skorch_ticker,
)

TINYNET_PATCH = (
    "TinyNet.features_conv[0] := Conv2d(1, 16, 5) (published: 2 input channels "
    "for 1-channel slices); features_conv[12] := Conv2d(128, 512, 5) "
    "(published: 256 inputs after a 128-channel layer): the published TinyNet "
    "cannot run a forward pass"
)


def _finish(rec, clock, t0, cfg):
    rec["fit_s"] = time.perf_counter() - t0
    rec["peak_after_gib"] = gib(peak_rss_bytes())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rec["minor_faults"], rec["process_sys_s"] = usage.ru_minflt, usage.ru_stime
    rec = {**rec, **clock.result(), **clock.monitor.record()}
    if rec["step_wall_s"]:
        rec["slices_per_s"] = cfg["batch"] / rec["step_wall_s"]
    if on_cuda(cfg):
        rec["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return rec


def _loop(cfg, model, loss_fn, make_input, rec):
    """The plain step: the input, two forward passes, the loss, backward,
    Adam. ``make_input()`` gives ``(x, labels, positions)``, passed on to
    ``loss_fn(z1, z2, labels, positions)``."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-5)
    rec["peak_before_gib"] = gib(peak_rss_bytes())
    with GpuMonitor(cfg["device"]) as monitor:
        clock = CudaStepClock(cfg["warmup"], monitor)
        t0 = time.perf_counter()
        for _ in range(cfg["warmup"] + cfg["steps"]):
            clock.start()
            opt.zero_grad()
            x, labels, positions = make_input()
            loss = loss_fn(model(x), model(x), labels, positions)
            loss.backward()
            opt.step()
            clock.stop()
    rec["loss_last"] = float(loss.detach())
    return _finish(rec, clock, t0, cfg)


def _batch(cfg):
    n = cfg["batch"]
    labels = np.arange(n) % 2
    positions = np.linspace(0, 1, n, dtype=np.float32)
    x = torch.randn(n, 1, cfg["size"], cfg["size"])
    return labels, positions, x


def _host_batch(cfg, x, labels, positions):
    """``make_input`` for the plain loops: on the CPU the batch as it is; on
    CUDA the batch, its labels and its positions copied to the GPU at every
    step from pinned memory, as Lightning moves the official DataLoader's
    pinned batch (``pin_memory=True``) before its ``training_step``."""
    if not on_cuda(cfg):
        return lambda: (x, labels, positions)
    device = torch.device(cfg["device"])
    x = x.pin_memory()
    labels = torch.as_tensor(labels).long().pin_memory()
    positions = torch.as_tensor(positions).pin_memory()

    def make_input():
        return tuple(t.to(device, non_blocking=True) for t in (x, labels, positions))

    return make_input


def official_side(cfg):
    sys.path.insert(0, str(Path(cfg["official"]).resolve()))
    from losses import WSPContrastiveLoss
    from models.resnet import resnet18
    from models.tinynet import TinyNet

    bind_cuda_device(cfg["device"])
    rec = {"backbone": cfg["backbone"], "patches": []}
    if cfg["backbone"] == "tinynet":
        model = TinyNet(mode="encoder", rep_dim=512, hidden_dim=256)
        model.features_conv[0] = torch.nn.Conv2d(1, 16, 5)
        model.features_conv[12] = torch.nn.Conv2d(128, 512, 5)
        rec["patches"].append(TINYNET_PATCH)
    else:
        model = resnet18(mode="encoder", rep_dim=512, hidden_dim=256)
    crit = WSPContrastiveLoss(
        types.SimpleNamespace(num_classes=2), sigma=0.85, temperature=0.1
    )
    if on_cuda(cfg):  # Lightning's Trainer(gpus=[0]) moves the module
        model.to(cfg["device"])
    labels, positions, x = _batch(cfg)
    # the official step divides its input by 250
    batch = _host_batch(cfg, x * 250.0, labels, positions)

    def make_input():
        x, labels, positions = batch()
        return x / 250.0, labels, positions

    return _loop(cfg, model, crit, make_input, rec)


def plain_side(cfg):
    from sklearn_cl3d.losses import WSPLoss
    from sklearn_cl3d.nn import TinyNet2D, resnet18_2d

    net = (TinyNet2D if cfg["backbone"] == "tinynet" else resnet18_2d)(
        in_channels=1, rep_dim=512
    )
    model = torch.nn.Sequential(
        net, torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128)
    )
    crit = WSPLoss(sigma=0.85, temperature=0.1)
    bind_cuda_device(cfg["device"])
    model.to(cfg["device"])
    labels, positions, x = _batch(cfg)
    lab, pos = torch.as_tensor(labels), torch.as_tensor(positions)
    rec = {"backbone": cfg["backbone"]}
    return _loop(cfg, model, crit, _host_batch(cfg, x, lab, pos), rec)


def _library(cfg, augmentation="wsp", heap_reuse=None, files=False, **params):
    import tempfile

    from sklearn_cl3d import WSPPretrainer

    bind_cuda_device(cfg["device"])
    n, size = cfg["batch"], cfg["size"]
    rng = np.random.default_rng(0)
    # one slice kept per volume and step; depth 10 keeps 7 central slices;
    # float32 drawn directly (a float64 draw would double the input's peak)
    shape = (1, size, size, 10)
    dataset_bytes = n * int(np.prod(shape)) * 4
    folder = None
    if files:
        # the volumes as .npy files, read per batch: what the official
        # DataLoader does (its dataset reads slices from disk); written one
        # at a time, so the whole input is never in memory
        folder = tempfile.mkdtemp(prefix="bench_wsp_")
        X = []
        for i in range(n):
            X.append(str(Path(folder) / f"v{i:03d}.npy"))
            np.save(X[-1], rng.standard_normal(shape[1:], dtype=np.float32))
    else:
        X = rng.standard_normal((n, *shape), dtype=np.float32)
    weak = np.arange(n) % 2
    if heap_reuse is not None:
        WSPPretrainer._cpu_heap_reuse = heap_reuse
    monitor = GpuMonitor(cfg["device"])
    clock = CudaStepClock(cfg["warmup"], monitor)

    est = WSPPretrainer(
        backbone=cfg["backbone"],
        slice_size=size,
        batch_size=n,
        steps_per_epoch=cfg["warmup"] + cfg["steps"],
        max_epochs=1,
        augmentation=augmentation,
        random_state=0,
        device=cfg["device"],
        verbose=0,
        callbacks=[("tick", skorch_ticker(clock))],
        **params,
    )
    rec = {
        "backbone": cfg["backbone"],
        "dataset_bytes": dataset_bytes,
        "input": "npy files" if files else "array in memory",
        "cpu_heap_reuse": bool(WSPPretrainer._cpu_heap_reuse),
        "peak_before_gib": gib(peak_rss_bytes()),
    }
    if params:
        rec["params"] = params
    t0 = time.perf_counter()
    try:
        with monitor:
            est.fit(X, weak)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return _finish(rec, clock, t0, cfg)


SIDES = {
    "official": official_side,
    "library": _library,
    "library_heap_reuse": lambda cfg: _library(cfg, heap_reuse=True),
    "library_noaug": lambda cfg: _library(cfg, augmentation=None),
    "library_files": lambda cfg: _library(cfg, files=True),
    "library_noaug_files": lambda cfg: _library(cfg, augmentation=None, files=True),
    "plain": plain_side,
    # run only when named in --sides
    "library_fast": lambda cfg: _library(cfg, precision="auto"),
    "library_noaug_fast": lambda cfg: _library(
        cfg, augmentation=None, precision="auto"
    ),
}
ON_REQUEST = ("library_fast", "library_noaug_fast")


def add_arguments(parser):
    parser.add_argument("--backbone", choices=("tinynet", "resnet18"),
                        default="tinynet")
    parser.add_argument("--size", type=int, default=224, help="slice side")
    parser.add_argument("--batch", type=int, default=32, help="slices per step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N: every side trains there")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 160², 4 slices, 1 + 1 steps")


def configure(args, parser):
    check_device(args, parser)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 160, 4, 1, 1
    if args.backbone == "tinynet" and args.size < 156:
        parser.error("--size: TinyNet needs slices of at least 156 px")
    if args.steps < 1 or args.warmup < 0 or args.batch < 2:
        parser.error("--steps >= 1, --warmup >= 0 and --batch >= 2 are needed")


if __name__ == "__main__":
    main(
        __file__, SIDES, add_arguments, "benchmarks/results/bench_wsp_memory.json",
        on_request=ON_REQUEST, configure=configure,
    )
