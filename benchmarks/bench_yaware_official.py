#!/usr/bin/env python
"""y-Aware training step: the library against the official code itself.

Each side trains DenseNet-121 (encoder mode, 512-128 head) with the y-Aware
loss (sigma 5, temperature 0.1) and Adam (lr 1e-4, weight decay 5e-5) on the
same random z-scored 1 x size³ volumes and ages, ``--pairs`` subjects per
step, in a fresh process; the sides alternate over ``--repeats`` rounds
(see ``_harness.py``). A step is the interval between two consecutive
optimizer steps, warm-up steps excluded: loading the batch, both forward
passes, the loss, backward and Adam.

Sides:

- ``official``: the official ``yAwareCLModel.pretraining`` loop (its
  DataParallel wrapper, tqdm bar, ``densenet121(mode="encoder")`` and
  ``GeneralizedSupervisedNTXenLoss``), imported from ``--official PATH``, a
  checkout of https://github.com/Duplums/yAwareContrastiveLearning, and fed
  by a DataLoader of ready-made pairs (no augmentation: its NumPy views run
  in DataLoader workers, outside the step). No patch is needed.
- ``library``: ``YAwarePretrainer(backbone="densenet121",
  augmentation="none").fit``, the defaults otherwise (float32 on the CPU).
- ``library_cutout``: the same with the default ``"cutout"`` views, built on
  the batch inside the step.
- ``library_plain``: ``backbone__memory_efficient=False`` (plain autograd).
- ``library_bf16``: ``precision="bf16"``.
- on request (``--sides``): ``library_conv1x1`` (the 1x1x1 convolutions
  on oneDNN, as before ``PointwiseConv3d``), ``library_channels_last``
  (``memory_format="channels_last"``), ``library_compile`` (``compile=True``;
  raise ``--warmup`` past the compilation steps), ``official_profile`` and
  ``library_profile`` (each side's time in convolution and matrix-product
  kernels, per step and as a share of its CPU time: the library's per-step
  figure is the floor no rewrite of the rest can go below).

End to end, with views (on request; ``--views all|cutout``, ``--workers N``):

- ``official_views``: the official pipeline as its ``main.py`` builds it:
  its ``MRIDataset`` (the volumes as a ``.npy`` file and the ages as a CSV,
  each sample's two NumPy views drawn in ``--workers`` DataLoader workers:
  ``"all_tf"`` or ``"cutout"``), pinned memory on CUDA, then its loop.
- ``library_views``: ``YAwarePretrainer(augmentation=<views>).fit`` (views
  drawn on the batch's device), its defaults otherwise; compared with
  ``official_views``.
- ``library_views_fast``: the same with ``precision="auto"`` and
  ``memory_format="auto"`` (bfloat16 and channels-last on a GPU).
- ``library_fast``: no views, ``precision``/``memory_format`` ``"auto"``:
  the step at the paper's setting (``--size full --pairs 64``).

``--size`` takes a side (64), ``DxHxW`` or ``full`` (121x145x121, the
paper's). ``--flops`` adds to every record the model FLOPs of a step (the
plain network's forward and backward on ``2 x pairs`` volumes, counted on
the meta device), the TFLOP/s achieved and, on an H100/H200/A100, the share
of the GPU's dense bfloat16 peak (model FLOP utilisation). On CUDA each
record also has the GPU utilisation sampled through NVML after the warm-up
and the CUDA peak memory.

``--device cuda`` trains both sides on the GPU (the official loop with its
``cuda=True``); each step then ends when the GPU is done, and the records
add ``cuda_max_allocated_gib``.

Usage::

    python benchmarks/bench_yaware_official.py \\
        --official /path/to/yAwareContrastiveLearning \\
        --out benchmarks/measured/yaware_official_cpu.json
    python benchmarks/bench_yaware_official.py --device cuda \\
        --official /path/to/yAwareContrastiveLearning --size full --pairs 8 \\
        --sides official_views library_views library_views_fast \\
        --views all --workers 8 --flops
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from _harness import (
    CudaStepClock,
    GpuMonitor,
    check_device,
    main,
    on_cuda,
    skorch_ticker,
)


def _data(cfg):
    n = cfg["pairs"] * (cfg["warmup"] + cfg["steps"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, *cfg["size"]), dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    x -= x.mean(axis=axes, keepdims=True)
    x /= x.std(axis=axes, keepdims=True)
    age = rng.uniform(20, 80, size=n)
    return x, age


#: the GPUs' dense bfloat16 peaks (TFLOP/s, without sparsity), by name
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def _bf16_peak(cfg):
    if not on_cuda(cfg):
        return None, None
    name = torch.cuda.get_device_name()
    for key, peak in BF16_PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return name, peak
    return name, None


def model_flops(shape, volumes):
    """FLOPs of one training step of DenseNet-121 (encoder) on ``volumes``
    volumes of 1 x ``shape``: the forward and backward of the plain network,
    counted by ``torch.utils.flop_counter`` on the meta device (model FLOPs:
    a recomputation, as in the library's memory-efficient layers, is not
    counted; the 512-128 head and the loss are below 0.01 %)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sklearn_cl3d.nn import densenet121

    with torch.device("meta"):
        net = densenet121(memory_efficient=False)
        x = torch.empty(volumes, 1, *shape)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops()


def _device_record(cfg, monitor, clock=None):
    """CUDA memory and utilisation, pairs/s and, with ``--flops``, the model
    FLOP utilisation against the GPU's bfloat16 peak."""
    rec = monitor.record()
    step = clock.result().get("step_wall_s") if clock is not None else None
    if step:
        rec["pairs_per_s"] = cfg["pairs"] / step
    if cfg.get("flops") and step:
        flops = model_flops(cfg["size"], 2 * cfg["pairs"])
        name, peak = _bf16_peak(cfg)
        rec["model_flops_per_step"] = flops
        rec["achieved_tflops"] = flops / step / 1e12
        if peak:
            rec["bf16_peak_tflops"] = peak
            rec["mfu_vs_bf16_peak"] = flops / step / (peak * 1e12)
            rec["gpu_name"] = name
    return rec


def _official_model(cfg):
    """The official checkout on ``sys.path``, and its DenseNet-121 encoder
    and y-Aware loss at the benchmark's settings."""
    sys.path.insert(0, str(cfg["official"]))
    from losses import GeneralizedSupervisedNTXenLoss
    from models.densenet import densenet121

    net = densenet121(mode="encoder", drop_rate=0.0)
    loss = GeneralizedSupervisedNTXenLoss(
        temperature=0.1, kernel="rbf", sigma=5.0, return_logits=True
    )
    return net, loss


def official_side(cfg):
    net, loss = _official_model(cfg)
    x, age = _data(cfg)
    pairs = torch.from_numpy(np.stack([x, x], axis=1))  # (n, 2, 1, D, H, W)
    dataset = torch.utils.data.TensorDataset(pairs, torch.from_numpy(age))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg["pairs"], shuffle=True, drop_last=True
    )
    config = types.SimpleNamespace(
        lr=1e-4, weight_decay=5e-5, cuda=on_cuda(cfg),
        nb_epochs=1,
        nb_epochs_per_saving=1, checkpoint_dir=tempfile.mkdtemp(),
    )
    return _official_loop(cfg, net, loss, loader, config)


def _official_loop(cfg, net, loss, loader, config):
    """``yAwareCLModel.pretraining`` for one epoch, a step ending at each
    optimizer step (no validation loader)."""
    from yAwareContrastiveLearning import yAwareCLModel

    model = yAwareCLModel(net, loss, loader, [], config)
    with GpuMonitor(cfg["device"]) as monitor:
        clock = CudaStepClock(cfg["warmup"], monitor)
        model.optimizer.register_step_post_hook(lambda *args: clock.tick())
        clock.start()
        model.pretraining()
    return {**clock.result(), **_device_record(cfg, monitor, clock), "patches": []}


def official_views_side(cfg):
    """The official pipeline end to end: its ``MRIDataset`` (NumPy views,
    ``"all_tf"`` or ``"cutout"``, per sample) in ``--workers`` DataLoader
    workers with pinned memory on CUDA, as its ``main.py`` builds them, then
    its training loop."""
    net, loss = _official_model(cfg)
    import pandas as pd
    from dataset import MRIDataset

    x, age = _data(cfg)
    folder = Path(tempfile.mkdtemp(prefix="bench_yaware_views_"))
    np.save(folder / "data.npy", x)
    pd.DataFrame({"age": age}).to_csv(folder / "labels.csv", index=False)
    del x
    cuda = on_cuda(cfg)
    config = types.SimpleNamespace(
        tf={"all": "all_tf", "cutout": "cutout"}[cfg["views"]],
        input_size=(1, *cfg["size"]), data_train=str(folder / "data.npy"),
        label_train=str(folder / "labels.csv"), label_name="age",
        lr=1e-4, weight_decay=5e-5, cuda=cuda, nb_epochs=1,
        nb_epochs_per_saving=1, checkpoint_dir=str(folder),
    )
    dataset = MRIDataset(config, training=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg["pairs"],
        sampler=torch.utils.data.RandomSampler(dataset),
        collate_fn=dataset.collate_fn, pin_memory=cuda,
        num_workers=cfg["workers"],
    )
    rec = _official_loop(cfg, net, loss, loader, config)
    return {**rec, "views": cfg["views"], "workers": cfg["workers"]}


_CONV_KEYS = ("convolution", "conv3d", "slow_conv")
_MATMUL_KEYS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def _profile(run, cfg):
    """Time a side spends in convolution and matrix-product kernels, from
    torch.profiler over the whole run: the shares are of everything the
    process did (data, set-up and the profiler's own overhead included), so
    they are low and ``1 / share`` is a loose bound on the speed-up a
    rewrite of the rest can reach.
    ``conv_and_matmul_s_per_step`` is their time per optimizer step, over all
    ``--warmup + --steps`` steps (the first steps include oneDNN's set-up, so
    it is a little high): the floor of the side's step.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(cfg)
    steps = cfg["warmup"] + cfg["steps"]
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)

    def seconds(keys, exact=False):
        return 1e-6 * sum(
            r.self_cpu_time_total
            for r in rows
            if (r.key in keys if exact else any(k in r.key for k in keys))
        )

    conv_s = seconds(_CONV_KEYS)
    kernel_s = conv_s + seconds(_MATMUL_KEYS, exact=True)
    conv, kernels = conv_s / (1e-6 * total), kernel_s / (1e-6 * total)
    top = sorted(rows, key=lambda r: -r.self_cpu_time_total)[:12]
    return {
        "step_wall_s": None,
        "conv_share_of_cpu_time": conv,
        "speedup_bound_without_faster_convolutions": 1 / conv,
        "conv_and_matmul_share_of_cpu_time": kernels,
        "speedup_bound_without_faster_kernels": 1 / kernels,
        "conv_and_matmul_s_per_step": kernel_s / steps,
        "top_ops": [[r.key, r.self_cpu_time_total / 1e6, r.count] for r in top],
        "note": "whole run incl. warm-up and the first (oneDNN set-up) steps",
    }


def official_profile(cfg):
    """Kernel time of the official step (see :func:`_profile`)."""
    return _profile(official_side, cfg)


def library_profile(cfg):
    """Kernel time of the library step, float32, no views (see
    :func:`_profile`): ``conv_and_matmul_s_per_step`` is what its
    convolutions and matrix products alone take, the floor of any rewrite of
    the rest."""
    return _profile(lambda c: _library(c, augmentation="none"), cfg)


def _library_without_matmul(cfg):
    """The library with its 1x1x1 convolutions back on oneDNN (what it did
    before ``PointwiseConv3d``): the effect of that change alone."""
    from sklearn_cl3d.nn._cpu_kernels import PointwiseConv3d

    PointwiseConv3d.matmul_applies = lambda self, x: False
    return _library(cfg, augmentation="none")


def _library(cfg, **params):

    from sklearn_cl3d import YAwarePretrainer

    x, age = _data(cfg)
    with GpuMonitor(cfg["device"]) as monitor:
        clock = CudaStepClock(cfg["warmup"], monitor)
        est = YAwarePretrainer(
            backbone="densenet121", batch_size=cfg["pairs"], max_epochs=1,
            lr=1e-4, sigma=5.0, temperature=0.1, random_state=0,
            device=cfg["device"], verbose=0,
            callbacks=[("tick", skorch_ticker(clock))], **params,
        )
        est.fit(x, age)
    rec = {**clock.result(), **_device_record(cfg, monitor, clock)}
    for name in ("augmentation", "precision", "memory_format"):
        rec[name] = est.get_params()[name]
    return rec


SIDES = {
    "official": official_side,
    "library": lambda cfg: _library(cfg, augmentation="none"),
    "library_cutout": lambda cfg: _library(cfg, augmentation="cutout"),
    "library_plain": lambda cfg: _library(
        cfg, augmentation="none", backbone__memory_efficient=False
    ),
    "library_bf16": lambda cfg: _library(cfg, augmentation="none", precision="bf16"),
    # run only when named in --sides
    "official_profile": official_profile,
    "library_profile": library_profile,
    "library_channels_last": lambda cfg: _library(
        cfg, augmentation="none", memory_format="channels_last"
    ),
    "library_compile": lambda cfg: _library(cfg, augmentation="none", compile=True),
    "library_conv1x1": _library_without_matmul,
    # end to end with views (--views, --workers)
    "official_views": official_views_side,
    "library_views": lambda cfg: _library(cfg, augmentation=cfg["views"]),
    "library_views_fast": lambda cfg: _library(
        cfg, augmentation=cfg["views"], precision="auto", memory_format="auto"
    ),
    # the library's fastest setting without views (MFU at the paper's setting)
    "library_fast": lambda cfg: _library(
        cfg, augmentation="none", precision="auto", memory_format="auto"
    ),
}
ON_REQUEST = (
    "official_profile", "library_profile", "library_channels_last",
    "library_compile", "library_conv1x1",
    "official_views", "library_views", "library_views_fast", "library_fast",
)
BASELINE = {side: "official" for side in SIDES}
BASELINE.update(
    {"library_views": "official_views", "library_views_fast": "official_views"}
)


def add_arguments(parser):
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda: both sides train there (the official loop with "
        "its cuda=True, under DataParallel as it runs)",
    )
    parser.add_argument(
        "--size", type=_shape, default=(64, 64, 64),
        help="volume side (64), DxHxW (121x145x121) or 'full' (121x145x121, "
        "the paper's)",
    )
    parser.add_argument(
        "--views", choices=("all", "cutout"), default="all",
        help="the views of the *_views sides: the official 'all_tf' set or "
        "'cutout'",
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="DataLoader workers of the official_views side (its main.py: 8)",
    )
    parser.add_argument(
        "--flops", action="store_true",
        help="add the model FLOPs per step, TFLOP/s and, on a known GPU, the "
        "utilisation of its bfloat16 peak",
    )
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)


def _shape(text):
    """'64' -> (64, 64, 64); '121x145x121' or 'full' -> (121, 145, 121)."""
    if text == "full":
        return (121, 145, 121)
    try:
        parts = tuple(int(p) for p in str(text).lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"--size: expected N, DxHxW or 'full', got {text!r}")
    return parts


if __name__ == "__main__":
    main(
        __file__, SIDES, add_arguments, "benchmarks/results/yaware_official.json",
        on_request=ON_REQUEST, baseline=BASELINE, configure=check_device,
    )
