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
- on request (``--sides``): ``library_channels_last``
  (``memory_format="channels_last"``), ``library_compile`` (``compile=True``;
  raise ``--warmup`` past the compilation steps) and ``official_profile``
  (the share of the official step's CPU time in convolution kernels).

``--device cuda`` trains both sides on the GPU (the official loop with its
``cuda=True``); each step then ends when the GPU is done, and the records
add ``cuda_max_allocated_gib``.

Usage::

    python benchmarks/bench_yaware_official.py \\
        --official /path/to/yAwareContrastiveLearning \\
        --out benchmarks/measured/yaware_official_cpu.json
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from _harness import StepClock, main, skorch_ticker


def _data(cfg):
    n = cfg["pairs"] * (cfg["warmup"] + cfg["steps"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1) + (cfg["size"],) * 3, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    x -= x.mean(axis=axes, keepdims=True)
    x /= x.std(axis=axes, keepdims=True)
    age = rng.uniform(20, 80, size=n)
    return x, age


class _Clock(StepClock):
    """A step clock that waits for the GPU before it stops a step."""

    def stop(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        super().stop()


def _device_record(cfg):
    if not str(cfg["device"]).startswith("cuda"):
        return {}
    return {"cuda_max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}


def official_side(cfg):
    root = Path(cfg["official"]).resolve()
    sys.path.insert(0, str(root))
    from losses import GeneralizedSupervisedNTXenLoss
    from models.densenet import densenet121
    from yAwareContrastiveLearning import yAwareCLModel

    x, age = _data(cfg)
    pairs = torch.from_numpy(np.stack([x, x], axis=1))  # (n, 2, 1, D, H, W)
    dataset = torch.utils.data.TensorDataset(pairs, torch.from_numpy(age))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg["pairs"], shuffle=True, drop_last=True
    )
    config = types.SimpleNamespace(
        lr=1e-4, weight_decay=5e-5, cuda=str(cfg["device"]).startswith("cuda"),
        nb_epochs=1,
        nb_epochs_per_saving=1, checkpoint_dir=tempfile.mkdtemp(),
    )
    net = densenet121(mode="encoder", drop_rate=0.0)
    loss = GeneralizedSupervisedNTXenLoss(
        temperature=0.1, kernel="rbf", sigma=5.0, return_logits=True
    )
    model = yAwareCLModel(net, loss, loader, [], config)
    clock = _Clock(cfg["warmup"])
    clock.start()
    model.optimizer.register_step_post_hook(lambda *a: clock.tick())
    model.pretraining()
    return {**clock.result(), **_device_record(cfg), "patches": []}


def official_profile(cfg):
    """Share of the official step's CPU time spent in convolution kernels.

    The library runs the same oneDNN/ATen convolution kernels in float32, so
    ``1 / conv_share`` bounds the float32 speed-up any rewrite of the rest
    can reach. Profiles the steps after the warm-up with torch.profiler
    (slower than the timed runs; only the shares are meaningful).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        official_side(cfg)
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)
    conv = sum(
        r.self_cpu_time_total
        for r in rows
        if any(k in r.key for k in ("convolution", "conv3d", "slow_conv"))
    )
    top = sorted(rows, key=lambda r: -r.self_cpu_time_total)[:12]
    return {
        "step_wall_s": None,
        "conv_share_of_cpu_time": conv / total,
        "speedup_bound_without_faster_convolutions": total / conv,
        "top_ops": [[r.key, r.self_cpu_time_total / 1e6, r.count] for r in top],
        "note": "whole run incl. warm-up and the first (oneDNN set-up) steps",
    }


def _library(cfg, **params):

    from sklearn_cl3d import YAwarePretrainer

    clock = _Clock(cfg["warmup"])

    x, age = _data(cfg)
    est = YAwarePretrainer(
        backbone="densenet121", batch_size=cfg["pairs"], max_epochs=1,
        lr=1e-4, sigma=5.0, temperature=0.1, random_state=0, device=cfg["device"],
        verbose=0, callbacks=[("tick", skorch_ticker(clock))], **params,
    )
    est.fit(x, age)
    return {**clock.result(), **_device_record(cfg)}


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
    "library_channels_last": lambda cfg: _library(
        cfg, augmentation="none", memory_format="channels_last"
    ),
    "library_compile": lambda cfg: _library(cfg, augmentation="none", compile=True),
}
ON_REQUEST = ("official_profile", "library_channels_last", "library_compile")


def add_arguments(parser):
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda: both sides train there (the official loop with "
        "its cuda=True, under DataParallel as it runs)",
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)


if __name__ == "__main__":
    main(
        __file__, SIDES, add_arguments, "benchmarks/results/yaware_official.json",
        on_request=ON_REQUEST,
    )
