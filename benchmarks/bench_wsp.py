#!/usr/bin/env python
"""WSP training step of the library, split into its phases.

Each side fits ``WSPPretrainer`` (the default ``"wsp"`` views) with one
backbone on random volumes whose slices already have ``--size``² (1 x
``--size`` x ``--size`` x 10: 7 central slices kept), ``--batch`` slices per
step, ``--warmup`` untimed then ``--steps`` timed steps, on ``--device``, in
a fresh process; the sides alternate over ``--repeats`` rounds (see
``_harness.py``). A step is the interval between two batch ends (loading the
batch, z-score, the two views, both forward passes, the loss, backward,
Adam). Every side reports its median step, slices/s, peak RSS (and CUDA
memory), then the step split into its phases on one of its batches
(``_harness.step_breakdown``: prepare, views, forward, loss, backward,
optimizer, and the rest).

Sides: ``library_tinynet`` and ``library_resnet18``.

The step against the official code (Guerbet-AI/wsp-contrastive, imported
from a checkout, in its own processes) is ``bench_wsp_memory.py --official
PATH``; this script has no official side.

Usage::

    python benchmarks/bench_wsp.py                      # 512², 32 slices
    python benchmarks/bench_wsp.py --size 224 --sides library_resnet18
    python benchmarks/bench_wsp.py --device cuda --batch 64
    python benchmarks/bench_wsp.py --quick --repeats 1
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _bench_common import gib
from _harness import StepClock, main, skorch_ticker, step_breakdown


def library(cfg, backbone):
    from sklearn_cl3d import WSPPretrainer

    n, size, device = cfg["batch"], cfg["size"], cfg["device"]
    rng = np.random.default_rng(0)
    # float32 drawn directly: a float64 draw would raise the peak RSS it reports
    x = rng.standard_normal((n, 1, size, size, 10), dtype=np.float32)
    weak = np.arange(n) % 2
    clock, kept = StepClock(cfg["warmup"]), []
    est = WSPPretrainer(
        backbone=backbone,
        slice_size=size,
        batch_size=n,
        steps_per_epoch=cfg["warmup"] + cfg["steps"],
        max_epochs=1,
        random_state=0,
        device=device,
        verbose=0,
        callbacks=[("tick", skorch_ticker(clock, keep=kept))],
    )
    t0 = time.perf_counter()
    est.fit(x, weak)
    rec = clock.result()  # the peak RSS of the fit, before the breakdown
    step_s = rec["step_wall_s"]
    rec.update(
        backbone=backbone,
        fit_s=time.perf_counter() - t0,
        slice_size=size,
        slices_per_step=n,
        slices_per_s=n / step_s,
        n_parameters=sum(p.numel() for p in est.module_.parameters()),
    )
    if torch.device(device).type == "cuda":
        rec["cuda_max_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
    rec["breakdown"] = step_breakdown(est, kept[0], step_s, reps=cfg["breakdown_reps"])
    return rec


SIDES = {
    "library_tinynet": lambda cfg: library(cfg, "tinynet"),
    "library_resnet18": lambda cfg: library(cfg, "resnet18"),
}


def add_arguments(parser):
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--size", type=int, default=512, help="slice side")
    parser.add_argument("--batch", type=int, default=32, help="slices per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps")
    parser.add_argument(
        "--breakdown-reps", type=int, default=3, help="phase timings per side"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 160², 4 slices, 1 + 1 steps, 1 phase timing",
    )


def configure(args, parser):
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 160, 4, 1, 1
        args.breakdown_reps = 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.size < 156 and "library_tinynet" in (args.sides or SIDES):
        parser.error("--size: TinyNet needs slices of at least 156 px")
    if args.steps < 1 or args.warmup < 0 or args.batch < 2 or args.breakdown_reps < 1:
        parser.error(
            "--steps >= 1, --warmup >= 0, --batch >= 2 and --breakdown-reps >= 1 "
            "are needed"
        )


if __name__ == "__main__":
    main(
        __file__,
        SIDES,
        add_arguments,
        "benchmarks/results/bench_wsp.json",
        baseline={},  # nothing to compare: one side per backbone
        configure=configure,
    )
