#!/usr/bin/env python
"""Throughput and memory benchmark of ``GlobalLocalPretrainer``.

Measures, in one process, the training step of both pretraining stages of
global-local contrastive learning (Chaitanya et al., NeurIPS 2020):

* 2-D mode at 192 x 192 (the paper's slice size), batches of 12 slices
  (3 volumes x 4 partitions, the official ``bt_size``): slices/s of the
  global stage (G^D: each slice and one augmented view) and of the local
  stage (L^R: two intensity views, encoder frozen);
* 3-D mode on 64^3 sub-volumes (slabs of 4-partition volumes), batches of
  4 sub-volumes: sub-volumes/s of both stages.

Each library step is paired with a step of a plain PyTorch loop over the
same network (a fresh instance of the estimator's ``module`` class, the
U-Net with both heads) and
the same losses on a fixed batch of the same shape, without the library's
sampling, augmentation and skorch plumbing; the ratio of the two is the
library's overhead. The peak RSS of the process is recorded after every
configuration (they run from the smallest to the largest).

It writes a JSON file (``--out``) with machine info, the configuration and
the results, and prints a short summary. See ``benchmarks/README.md``.

**No side of the official code.** The official code
(https://github.com/krishnabits001/domain_specific_cl, e5aae80) is
TensorFlow 1 graph code (``tf.placeholder``, ``tf.Session``, ``tf.layers``,
``tf.contrib.image.dense_image_warp``; written for TF 1.12 and Python 3.6)
and cannot run here: the package index has no TensorFlow 1.x for this
Python (3.11; its oldest TensorFlow is 2.12), and TensorFlow 2 has no
``tf.contrib``. Its graph could only be built through TF 2.15's
``tf.compat.v1`` with the ``tensorflow`` module swapped for it (as the spec
did to check the loss functions), which is not the published code's
environment, and TF 2.15 requires numpy < 2 (this environment has numpy 2),
so it could not share a process or an environment with the library. The
JSON says so under ``skipped``; the plain PyTorch loop is the library's own
reference, not a stand-in for the official code's speed.

Usage::

    python benchmarks/bench_globallocal.py            # 192^2 and 64^3, CPU
    python benchmarks/bench_globallocal.py --quick    # 64^2 and 32^3 (< 2 min)
    python benchmarks/bench_globallocal.py --device cuda
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _bench_common import (  # noqa: E402
    current_rss_bytes as _current_rss_bytes,
    gib as _gib,
    loadavg as _loadavg,
    machine as _machine,
    peak_rss_bytes as _peak_rss_bytes,
    stats as _stats,
    synchronizer as _synchronizer,
    usable_cores as _usable_cores,
)
from sklearn.base import clone
from skorch.callbacks import Callback

from sklearn_cl3d import GlobalLocalPretrainer
from sklearn_cl3d.losses import GlobalContrastiveLoss, LocalContrastiveLoss

MIB = 1024**2
OFFICIAL_SKIPPED = {
    "official": (
        "krishnabits001/domain_specific_cl (e5aae80) is TensorFlow 1 graph code "
        "(tf.placeholder, tf.Session, tf.layers, tf.contrib; TF 1.12, Python "
        "3.6); the package index has no TensorFlow 1.x for Python 3.11 (oldest: "
        "2.12) and TF 2 has no tf.contrib; TF 2.15's tf.compat.v1 could build "
        "its graph with the tensorflow module swapped, but TF 2.15 requires "
        "numpy < 2 and this environment has numpy 2"
    )
}
N_PARTITIONS = 4
SLICES_PER_PARTITION_2D = 8  # 2-D volumes have 4 x 8 = 32 slices


# ---------------------------------------------------------------- helpers
def _resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return name


def _machine_info(device, threads):
    return {
        **_machine(device, threads),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


# ------------------------------------------------------ the plain baseline
class PlainLoop:
    """One stage of global-local pretraining as a plain PyTorch loop.

    A fresh network of the estimator's ``module`` class (``GlobalLocalNet``,
    the U-Net with both heads) with the estimator's configuration, its
    own Adam (lr 1e-3) over the parameters the stage trains, and a fixed
    batch already on the device and at the network's size: no sampling, no
    resizing, no augmentation, no skorch. A step is ``zero_grad``, forward,
    the library's loss module (the same computation as the estimator's),
    ``backward`` and ``step``.

    Global stage (G^D): rows ``[slices | other views]`` (2B rows) through
    the encoder and g1. Local stage (L^R): two views (2B maps) through the
    frozen encoder (BatchNorm in training mode, as the estimator's default)
    and the first ``n_decoder_blocks`` decoder blocks and g2; 3-D maps are
    split into their depth planes, as the estimator does.
    """

    def __init__(self, stage, est, batch_size, device, seed=0):
        torch.manual_seed(seed)
        shape = tuple(est.network_input_shape_)
        dims = len(shape) - 1
        self.stage = stage
        self.net = est.module(
            dims=dims,
            in_channels=shape[0],
            channels=tuple(est.channels),
            input_size=shape[1:],
            hidden_dim=est.hidden_dim,
            out_dim=est.projection_dim,
            n_decoder_blocks=est.n_decoder_blocks,
        ).to(device)
        self.net.train()
        gen = torch.Generator().manual_seed(seed)
        n = batch_size
        m = max(1, n // N_PARTITIONS)
        self.x1 = torch.rand((n, *shape), generator=gen).to(device)
        self.x2 = torch.rand((n, *shape), generator=gen).to(device)
        self.volume = torch.arange(m).repeat_interleave(N_PARTITIONS)[:n].to(device)
        self.partition = torch.arange(N_PARTITIONS).repeat(m)[:n].to(device)
        if stage == "global":
            self.loss = GlobalContrastiveLoss(strategy="GD", temperature=0.1)
            params = [*self.net.unet.encoder.parameters()]
            params += [*self.net.global_head.parameters()]
            self.view = torch.arange(2, device=device).repeat_interleave(n)
        else:
            channels = tuple(est.channels)
            self.loss = LocalContrastiveLoss(
                temperature=0.1,
                strategy="LR",
                region_size=3,
                regions="official13",
                n_negatives=5,
                in_channels=channels[-1 - est.n_decoder_blocks],
                out_features=est.region_dim,
            ).to(device)
            self.net.unet.encoder.requires_grad_(False)
            blocks = self.net.unet.decoder_blocks[: est.n_decoder_blocks]
            params = [*blocks.parameters(), *self.net.local_head.parameters()]
            params += [*self.loss.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=1e-3)

    def step(self):
        self.optimizer.zero_grad(set_to_none=True)
        if self.stage == "global":
            z = self.net(torch.cat([self.x1, self.x2]), mode="global")
            loss = self.loss(
                z, self.volume.repeat(2), self.partition.repeat(2), self.view
            )
        else:
            f = self.net(torch.cat([self.x1, self.x2]), mode="local")
            f1, f2 = f.chunk(2)
            volume, partition = self.volume, self.partition
            if f1.ndim == 5:
                n, c, d = f1.shape[:3]
                f1 = f1.transpose(1, 2).reshape(n * d, c, *f1.shape[3:])
                f2 = f2.transpose(1, 2).reshape(n * d, c, *f2.shape[3:])
                depth = torch.arange(d, device=f1.device).repeat(n)
                volume = volume.repeat_interleave(d)
                partition = partition.repeat_interleave(d) * d + depth
            loss = self.loss(f1, f2, volume, partition)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())


# ------------------------------------------------- the paired step timer
class PairedTimer(Callback):
    """Time every library training step and run a baseline step beside it.

    The library step is what skorch runs between ``on_batch_begin`` and
    ``on_batch_end``: device transfer, resizing (none here: the data are
    already at the network's size), the views (augmentation), the forward
    pass, the loss, backward and the Adam step. Loading the batch (the
    partition sampler, slicing and the per-volume percentile scaling) happens
    before ``on_batch_begin`` and is recorded apart (``load_s``).

    After the library step of every even step, and before the library step
    of every odd step, the callback runs one step of the plain loop of the
    same stage (``baselines[stage].step``), so that both are measured under
    the same load. The first ``warmup`` steps of each stage are not timed.

    Parameters
    ----------
    baselines : dict
        Stage name -> object with a ``step()`` method returning the loss.
    warmup : int
        Untimed steps per stage.
    sync : callable
        Called before reading the clock (``torch.cuda.synchronize`` on GPU).
    """

    def __init__(self, baselines, warmup, sync):
        self.baselines = baselines
        self.warmup = warmup
        self.sync = sync

    def initialize(self):
        self.records_ = {}
        self._ready = None
        self._stage = None
        self._count = {}
        return self

    def _stage_of(self, net):
        return net.history[-1]["stage"]

    def _rec(self, stage):
        return self.records_.setdefault(
            stage,
            {
                "library_wall": [],
                "library_cpu": [],
                "baseline_wall": [],
                "baseline_cpu": [],
                "load_s": [],
                "library_losses": [],
                "baseline_losses": [],
                "untimed_library_wall": [],
                "untimed_baseline_wall": [],
            },
        )

    def _baseline(self, stage, timed):
        self.sync()
        c0, t0 = time.process_time(), time.perf_counter()
        loss = self.baselines[stage].step()
        self.sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rec = self._rec(stage)
        rec["baseline_losses"].append(loss)
        if timed:
            rec["baseline_wall"].append(wall)
            rec["baseline_cpu"].append(cpu)
        else:
            rec["untimed_baseline_wall"].append(wall)

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        now = time.perf_counter()
        stage = self._stage_of(net)
        index = self._count.get(stage, 0)
        rec = self._rec(stage)
        if self._ready is not None and stage == self._stage and index > 0:
            rec["load_s"].append(now - self._ready)
        self._stage = stage
        timed = index >= self.warmup
        if index % 2 == 1:
            self._baseline(stage, timed)
        self.sync()
        self._c0, self._t0 = time.process_time(), time.perf_counter()

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        self.sync()
        wall = time.perf_counter() - self._t0
        cpu = time.process_time() - self._c0
        stage = self._stage_of(net)
        index = self._count.get(stage, 0)
        rec = self._rec(stage)
        timed = index >= self.warmup
        loss = kwargs.get("loss")
        if loss is not None:
            rec["library_losses"].append(float(loss.detach()))
        if timed:
            rec["library_wall"].append(wall)
            rec["library_cpu"].append(cpu)
        else:
            rec["untimed_library_wall"].append(wall)
        if index % 2 == 0:
            self._baseline(stage, timed)
        self._count[stage] = index + 1
        self._ready = time.perf_counter()


# ------------------------------------------------------------ the shares
def _time_calls(fn, reps, sync):
    fn()  # warm-up
    out = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def bench_shares(est, batch_size, device, reps):
    """Augmentation and losses alone, on the fitted estimator's objects."""
    sync = _synchronizer(device)
    shape = tuple(est.network_input_shape_)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((batch_size, *shape), device=device)
    out = {"reps": reps}
    if est.augment_ is not None:
        out["global_views_s"] = _stats(
            _time_calls(lambda: est.augment_(x, generator=gen), reps, sync)
        )
    if est.local_augment_ is not None:

        def local_views():
            est.local_augment_(x, generator=gen)
            est.local_augment_(x, generator=gen)

        out["local_views_s"] = _stats(_time_calls(local_views, reps, sync))

    n = batch_size
    m = max(1, n // N_PARTITIONS)
    volume = torch.arange(m, device=device).repeat_interleave(N_PARTITIONS)[:n]
    partition = torch.arange(N_PARTITIONS, device=device).repeat(m)[:n]
    z = torch.randn(2 * n, est.projection_dim, device=device, requires_grad=True)
    view = torch.arange(2, device=device).repeat_interleave(n)

    def global_loss():
        z.grad = None
        est.criterion_(z, volume.repeat(2), partition.repeat(2), view).backward()

    out["global_loss_forward_backward_s"] = _stats(_time_calls(global_loss, reps, sync))
    # local maps: the decoder block output of the stage, per depth plane in 3-D
    net = est.module_
    net.eval()  # a single 1x1(x1) sample cannot go through training-mode BN
    with torch.no_grad():
        f = net(x[:1], mode="local")
    net.train()
    c, plane = f.shape[1], tuple(f.shape[-2:])
    depth = f.shape[2] if f.ndim == 5 else 1
    n_maps = n * depth
    f1 = torch.randn(n_maps, c, *plane, device=device, requires_grad=True)
    f2 = torch.randn(n_maps, c, *plane, device=device, requires_grad=True)
    vol = volume.repeat_interleave(depth)
    part = partition.repeat_interleave(depth)

    def local_loss():
        f1.grad = f2.grad = None
        est.local_criterion_(f1, f2, vol, part).backward()

    out["local_loss_forward_backward_s"] = _stats(_time_calls(local_loss, reps, sync))
    out["local_map_shape"] = [n_maps, c, *plane]
    return out


# ----------------------------------------------------------- one config
def _volumes(dims, size, n_volumes, seed):
    """Random volumes whose slices (slabs) are already at the network size.

    2-D: (n, size, size, 32), slices along the last axis, 4 partitions of 8
    slices. 3-D: (n, size, size, 4 size), 4 slabs of ``size`` slices, so
    every sub-volume is ``size^3`` and is not resampled.
    """
    rng = np.random.default_rng(seed)
    depth = N_PARTITIONS * SLICES_PER_PARTITION_2D if dims == 2 else N_PARTITIONS * size
    return rng.random((n_volumes, size, size, depth), dtype=np.float32)


def run_config(cfg, dims, size, batch_size):
    device = cfg["device"]
    sync = _synchronizer(device)
    m = max(1, batch_size // N_PARTITIONS)
    n_volumes = max(2, 2 * m)
    X = _volumes(dims, size, n_volumes, seed=0)
    steps = cfg["warmup"] + cfg["steps"]
    est = GlobalLocalPretrainer(
        strategy="GD",
        local="LR",
        n_partitions=N_PARTITIONS,
        dims=dims,
        slice_size=size,
        batch_size=batch_size,
        max_epochs=1,
        local_epochs=1,
        steps_per_epoch=steps,
        device=device,
        random_state=0,
    )
    # the estimator builds its network in fit: make the baselines from a
    # throw-away estimator fitted with zero epochs on the same data
    shape_probe = clone(est).set_params(max_epochs=0, local_epochs=0).fit(X)
    baselines = {
        stage: PlainLoop(stage, shape_probe, batch_size, device)
        for stage in ("global", "local")
    }
    timer = PairedTimer(baselines, cfg["warmup"], sync)
    est.set_params(callbacks=[("paired_timer", timer)])

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load0, peak0, rss0 = _loadavg(), _peak_rss_bytes(), _current_rss_bytes()
    t0 = time.perf_counter()
    est.fit(X)
    total = time.perf_counter() - t0
    peak1, rss1, load1 = _peak_rss_bytes(), _current_rss_bytes(), _loadavg()
    timer = dict(est.callbacks_)["paired_timer"]

    name = "slices" if dims == 2 else "subvolumes"
    stages = {}
    for stage, rec in timer.records_.items():
        lib, base = rec["library_wall"], rec["baseline_wall"]
        lib_med, base_med = statistics.median(lib), statistics.median(base)
        paired = [a / b for a, b in zip(lib, base)]
        stages[stage] = {
            "library_step_wall_s": _stats(lib),
            "library_step_wall_s_all": lib,
            "library_step_process_cpu_s": _stats(rec["library_cpu"]),
            f"library_{name}_per_s": batch_size / lib_med,
            f"library_{name}_per_s_best_step": batch_size / min(lib),
            "baseline_step_wall_s": _stats(base),
            "baseline_step_wall_s_all": base,
            "baseline_step_process_cpu_s": _stats(rec["baseline_cpu"]),
            f"baseline_{name}_per_s": batch_size / base_med,
            "ratio_library_over_baseline": {
                "paired_median": statistics.median(paired),
                "of_medians": lib_med / base_med,
                "of_minima": min(lib) / min(base),
                "process_cpu_of_medians": (
                    statistics.median(rec["library_cpu"])
                    / statistics.median(rec["baseline_cpu"])
                ),
            },
            "load_batch_s": _stats(rec["load_s"]),
            "untimed_library_wall_s": rec["untimed_library_wall"],
            "untimed_baseline_wall_s": rec["untimed_baseline_wall"],
            "library_losses": rec["library_losses"],
            "baseline_losses": rec["baseline_losses"],
            "rows_per_step": 2 * batch_size,
        }
    share = bench_shares(est, batch_size, device, cfg["share_reps"])
    for stage, key in (("global", "global"), ("local", "local")):
        if stage not in stages:
            continue
        med = stages[stage]["library_step_wall_s"]["median"]
        views = share.get(f"{key}_views_s")
        lossr = share.get(f"{key}_loss_forward_backward_s")
        stages[stage]["augmentation_share_of_step"] = (
            None if views is None else views["median"] / med
        )
        stages[stage]["loss_share_of_step"] = (
            None if lossr is None else lossr["median"] / med
        )
    record = {
        "dims": dims,
        "size": size,
        "network_input_shape": list(est.network_input_shape_),
        "volume_shape": list(X.shape[1:]),
        "n_volumes": n_volumes,
        "batch_size": batch_size,
        "volumes_per_batch": m,
        "unit": name,
        "n_parameters": int(sum(p.numel() for p in est.module_.parameters())),
        "fit_wall_s": total,
        "stages": stages,
        "share": share,
        "memory": {
            "peak_rss_gib": _gib(peak1),
            "peak_rss_increase_mib": (peak1 - peak0) / MIB,
            "rss_before_gib": _gib(rss0),
            "rss_after_gib": _gib(rss1),
            "cuda_max_memory_allocated_gib": (
                _gib(torch.cuda.max_memory_allocated()) if device == "cuda" else None
            ),
        },
        "loadavg_before_after": [load0, load1],
    }
    return record


# ----------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Training-step speed and memory of GlobalLocalPretrainer "
        "(2-D slices and 3-D sub-volumes) against a plain PyTorch loop."
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--size-2d",
        type=int,
        default=None,
        help="slice side in 2-D mode (default 192; 64 with --quick)",
    )
    p.add_argument(
        "--size-3d",
        type=int,
        default=None,
        help="sub-volume side in 3-D mode (default 64; 32 with --quick)",
    )
    p.add_argument("--batch-2d", type=int, default=12, help="slices per step")
    p.add_argument("--batch-3d", type=int, default=4, help="sub-volumes per step")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (2)")
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps per stage (5; 2 quick)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: usable cores)",
    )
    p.add_argument("--share-reps", type=int, default=None, help="(5; 2 quick)")
    p.add_argument("--skip-2d", action="store_true")
    p.add_argument("--skip-3d", action="store_true")
    p.add_argument(
        "--quick",
        action="store_true",
        help="64^2 slices and 32^3 sub-volumes, 1 warm-up + 2 timed steps",
    )
    p.add_argument(
        "--out",
        default="benchmarks/results/bench_globallocal.json",
        help="JSON output path (the folder is created)",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = _resolve_device(args.device)
    threads = args.threads or _usable_cores()
    torch.set_num_threads(threads)
    cfg = {
        "device": device,
        "threads": threads,
        "quick": args.quick,
        "size_2d": args.size_2d or (64 if args.quick else 192),
        "size_3d": args.size_3d or (32 if args.quick else 64),
        "batch_2d": args.batch_2d,
        "batch_3d": args.batch_3d,
        "warmup": args.warmup if args.warmup is not None else (1 if args.quick else 2),
        "steps": args.steps or (2 if args.quick else 5),
        "share_reps": args.share_reps or (2 if args.quick else 5),
        "n_partitions": N_PARTITIONS,
        "estimator": "GlobalLocalPretrainer(strategy='GD', local='LR', defaults)",
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    out = {
        "benchmark": "bench_globallocal",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "machine": _machine_info(device, threads),
        "config": cfg,
        "skipped": OFFICIAL_SKIPPED,
        "results": {},
    }
    out["machine"]["loadavg_at_start"] = _loadavg()
    t_start = time.perf_counter()
    plan = []
    if not args.skip_2d:
        plan.append(("2d", 2, cfg["size_2d"], cfg["batch_2d"]))
    if not args.skip_3d:
        plan.append(("3d", 3, cfg["size_3d"], cfg["batch_3d"]))
    for key, dims, size, batch in plan:
        name = f"{key}_{size}"
        print(f"[{name}] dims={dims}, size {size}, batch {batch} ...", flush=True)
        rec = run_config(cfg, dims, size, batch)
        out["results"][name] = rec
        _print_record(name, rec)
    out["machine"]["loadavg_at_end"] = _loadavg()
    out["total_wall_s"] = time.perf_counter() - t_start
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path} ({out['total_wall_s']:.0f} s)")
    return out


def _print_record(name, rec):
    unit = rec["unit"]
    for stage, s in rec["stages"].items():
        r = s["ratio_library_over_baseline"]
        load = s["load_batch_s"]["median"] if s["load_batch_s"] else float("nan")
        print(
            f"  {stage:6s} library {s['library_step_wall_s']['median']:.3f} s "
            f"({s[f'library_{unit}_per_s']:.2f} {unit}/s), baseline "
            f"{s['baseline_step_wall_s']['median']:.3f} s "
            f"({s[f'baseline_{unit}_per_s']:.2f} {unit}/s), ratio "
            f"{r['paired_median']:.2f} (paired), load "
            f"{load:.4f} s"
        )
    mem = rec["memory"]
    print(
        f"  peak RSS {mem['peak_rss_gib']:.2f} GiB "
        f"(+{mem['peak_rss_increase_mib']:.0f} MiB), load "
        f"{rec['loadavg_before_after']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
