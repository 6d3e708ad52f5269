#!/usr/bin/env python
"""fp32 vs bf16 (and fp16 on a GPU) training step of ``YAwarePretrainer``.

For every backbone (``small3d`` and ``densenet121`` by default) on random
1 x size^3 volumes (64^3) with ages, 8 pairs per step, ``augmentation="cutout"``:

1. **step time**, in this process: one estimator per precision
   (``precision="fp32"``, ``"bf16"``, ...) is fitted for one step (warm-up),
   then ``est.train_step`` runs on a fixed batch, one step of every precision
   per round in a rotating order, so that load from other processes hits all
   precisions alike. A step is what skorch runs per batch: device transfer,
   z-score, two augmented views, two forward passes (under autocast for
   bf16/fp16), the loss in float32, backward and the Adam step. Reported: the
   median step per precision and the ratio to fp32, of the medians and paired
   per round;
2. **peak memory**, in a fresh child process per (backbone, precision) that
   fits ``1 + memory_steps`` steps: the peak resident set size (CPU) or
   ``torch.cuda.max_memory_allocated`` (GPU), and its ratio to fp32;
3. the **loss of the first step** per precision (same weights and views),
   and whether every later loss was finite, as a check that reduced
   precision computes the same thing. Non-finite losses are recorded, not
   stopped on: on some CPUs bf16 training of DenseNet-121 at 64^3 is broken
   by a oneDNN bug (see ``benchmarks/README.md``).

It writes a JSON file (``--out``) and prints a short summary. See
``benchmarks/README.md``.

Usage::

    python benchmarks/bench_precision.py                 # CPU (device auto)
    python benchmarks/bench_precision.py --device cuda   # fp32, bf16 and fp16
    python benchmarks/bench_precision.py --quick         # 1 warm-up + 3 rounds
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _bench_common import (  # noqa: E402
    cpu_model as _cpu_model,
    gib,
    loadavg as _loadavg,
    peak_rss_bytes,
    stats,
    usable_cores as _usable_cores,
)
from skorch.callbacks import Callback

import sklearn_cl3d
from sklearn_cl3d import YAwarePretrainer

BATCH = 8


# ---------------------------------------------------------------- helpers
def _volumes(n, size, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, size, size, size), dtype=np.float32)
    age = rng.uniform(20.0, 80.0, size=n).astype(np.float32)
    return X, age


class _FirstLoss(Callback):
    """Record the loss of the first training batch."""

    def initialize(self):
        self.loss_ = None
        return self

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if training and self.loss_ is None:
            self.loss_ = float(net.history[-1, "batches", -1, "train_loss"])


def _estimator(backbone, precision, device):
    extra = {}
    if backbone.startswith("densenet"):
        # store every intermediate in both precisions ("auto" recomputes in
        # float32 only), so that the comparison is of precision alone
        extra["backbone__memory_efficient"] = False
    return YAwarePretrainer(
        **extra,
        backbone=backbone,
        batch_size=BATCH,
        augmentation="cutout",
        max_epochs=1,
        random_state=0,
        device=device,
        precision=precision,
        callbacks=[("first_loss", _FirstLoss())],
        # record non-finite losses instead of stopping (see the README)
        callbacks__stop_on_nonfinite_loss=None,
        iterator_train__shuffle=False,
    )


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------- 2. memory (child)
def run_child(cfg):
    """Fit 1 + memory_steps steps in this (fresh) process; print JSON."""
    torch.set_num_threads(cfg["threads"])
    device = cfg["device"]
    X, age = _volumes(BATCH * (1 + cfg["memory_steps"]), cfg["size"])
    est = _estimator(cfg["backbone"], cfg["precision"], device)
    rss_before = gib(peak_rss_bytes())
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    est.fit(X, age)
    _sync(device)
    losses = [b["train_loss"] for b in est.history[-1]["batches"]]
    out = {
        "losses": losses,
        "all_losses_finite": bool(np.isfinite(losses).all()),
        "peak_rss_gib": gib(peak_rss_bytes()),
        "peak_rss_before_fit_gib": rss_before,
        "peak_rss_increase_in_fit_gib": gib(peak_rss_bytes()) - rss_before,
        "cuda_max_memory_allocated_gib": (
            gib(torch.cuda.max_memory_allocated())
            if torch.device(device).type == "cuda"
            else None
        ),
        "dataset_gib": gib(X.nbytes),
    }
    print(json.dumps(out))


def measure_memory(backbone, precision, cfg):
    child = {
        "backbone": backbone,
        "precision": precision,
        "device": cfg["device"],
        "size": cfg["size"],
        "threads": cfg["threads"],
        "memory_steps": cfg["memory_steps"],
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(child)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------- 1. step time
def measure_steps(backbone, precisions, cfg):
    device = cfg["device"]
    X, age = _volumes(BATCH, cfg["size"])
    batch = (torch.as_tensor(X), torch.as_tensor(age))
    ests = {}
    for p in precisions:
        est = _estimator(backbone, p, device)
        est.fit(X, age)  # initialise + one warm-up step (first-step loss)
        ests[p] = est
    times = {p: [] for p in precisions}
    losses = {p: [] for p in precisions}
    load_before = _loadavg()
    for r in range(cfg["rounds"]):
        order = precisions[r % len(precisions) :] + precisions[: r % len(precisions)]
        for p in order:
            _sync(device)
            t0 = time.perf_counter()
            step = ests[p].train_step(batch)
            _sync(device)
            times[p].append(time.perf_counter() - t0)
            losses[p].append(step["loss"].item())
    out = {
        "loadavg_before_after": [load_before, _loadavg()],
        "first_step_loss": {
            p: dict(ests[p].callbacks_)["first_loss"].loss_ for p in precisions
        },
        "step_s": {p: stats(times[p]) for p in precisions},
        "step_s_all": times,
        "timed_step_losses": losses,
        "all_timed_losses_finite": {
            p: bool(np.isfinite(losses[p]).all()) for p in precisions
        },
        "pairs_per_s": {p: BATCH / statistics.median(times[p]) for p in precisions},
    }
    ref = statistics.median(times["fp32"])
    out["time_ratio_vs_fp32"] = {
        p: statistics.median(times[p]) / ref for p in precisions
    }
    out["time_ratio_vs_fp32_paired_median"] = {
        p: statistics.median([a / b for a, b in zip(times[p], times["fp32"])])
        for p in precisions
    }
    return out


# ------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--backbones", nargs="+", default=["small3d", "densenet121"])
    parser.add_argument("--precisions", nargs="+", default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=_usable_cores())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results/bench_precision.json")
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_child(json.loads(args.child))
        return

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = args.precisions or (
        ["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"]
    )
    if "fp32" not in precisions:
        precisions = ["fp32", *precisions]
    if args.quick:
        args.rounds, args.memory_steps = 3, 1
    torch.set_num_threads(args.threads)
    cfg = {
        "device": device,
        "backbones": args.backbones,
        "precisions": precisions,
        "size": args.size,
        "batch_pairs": BATCH,
        "rounds": args.rounds,
        "memory_steps": args.memory_steps,
        "threads": args.threads,
        "quick": args.quick,
        "augmentation": "cutout",
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    cuda = device.startswith("cuda")
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "usable_cores": _usable_cores(),
        "torch": torch.__version__,
        "sklearn_cl3d": sklearn_cl3d.__version__,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_model(),
        "loadavg_at_start": _loadavg(),
    }
    results = {}
    for backbone in args.backbones:
        print(f"[{backbone}] step time ({', '.join(precisions)}) ...", flush=True)
        res = measure_steps(backbone, precisions, cfg)
        res["memory"] = {}
        for p in precisions:
            print(f"[{backbone}] memory, {p} (child process) ...", flush=True)
            res["memory"][p] = measure_memory(backbone, p, cfg)
        key = "cuda_max_memory_allocated_gib" if cuda else "peak_rss_gib"
        ref = res["memory"]["fp32"][key]
        res["memory_ratio_vs_fp32"] = {
            p: res["memory"][p][key] / ref for p in precisions
        }
        results[backbone] = res
    machine["loadavg_at_end"] = _loadavg()
    report = {
        "benchmark": "bench_precision",
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "config": cfg,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    key = "cuda_max_memory_allocated_gib" if cuda else "peak_rss_gib"
    print(f"\n{device}, {args.threads} thread(s), {args.size}^3, {BATCH} pairs/step")
    for backbone, res in results.items():
        for p in precisions:
            print(
                f"  {backbone:12s} {p:5s} step {res['step_s'][p]['median']:.3f} s"
                f" (x{res['time_ratio_vs_fp32'][p]:.2f} of fp32)"
                f"  {key} {res['memory'][p][key]:.2f}"
                f" (x{res['memory_ratio_vs_fp32'][p]:.2f})"
                f"  first loss {res['first_step_loss'][p]:.4f}"
                f"  finite {res['all_timed_losses_finite'][p]}"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
