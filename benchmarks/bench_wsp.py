#!/usr/bin/env python
"""Training-step throughput and memory benchmark of ``WSPPretrainer`` (WSP).

For every configuration (backbone ``tinynet`` / ``resnet18`` x slice size
512 and a small size: 160 for TinyNet, whose minimum is 156, and 128 for
ResNet-18), in one process:

1. the **library step**: ``WSPPretrainer`` (``augmentation="wsp"``) is
   fitted for one step on random volumes whose slices already have the
   benchmarked size (that step is timed through a skorch callback and is
   the first warm-up step); later steps call ``est.train_step`` on the same
   batch, which is what skorch's epoch loop runs for every batch: device
   transfer, z-score, the two augmented views, two forward passes,
   ``wsp_infonce``, backward and the Adam step. The same is done with
   ``augmentation="none"`` (the step without augmentation), and the
   augmentation and the loss are also timed on their own;
2. the **reference step**: a plain PyTorch loop with the same backbone and a
   ``Linear-ReLU-Linear`` head, the official loss written naively (NumPy
   weights: one-hot label product times sklearn ``rbf_kernel`` on positions,
   column-broadcast normalisation, log-softmax with the diagonal set to
   -1e8), no augmentation, Adam (lr 1e-5, weight decay 1e-5);
3. the process's **peak RSS** (and its increase per configuration), and the
   peak CUDA memory on a GPU.

After the set-up, the three kinds of step run **interleaved**, one of each
per round in a rotating order, so that load from other processes hits them
alike; ratios library / reference are reported of the medians and paired
per round.

It writes a JSON file (``--out``) and prints a short summary. See
``benchmarks/README.md``. The reference step is written here, not taken from
the official code; the official code's own step (Guerbet-AI/wsp-contrastive,
imported from a checkout, in its own processes) is timed by
``bench_wsp_memory.py --official PATH``.

Usage::

    python benchmarks/bench_wsp.py                   # full run (device auto)
    python benchmarks/bench_wsp.py --device cuda     # on a GPU, batch 64
    python benchmarks/bench_wsp.py --quick           # small sizes, 1+2 steps
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
import torch.nn.functional as F
from _bench_common import (  # noqa: E402
    current_rss_bytes as _current_rss_bytes,
    gib as _gib,
    loadavg as _loadavg,
    machine as _machine,
    peak_rss_bytes as _peak_rss_bytes,
    stats as _stats,
    usable_cores as _usable_cores,
)
from sklearn.metrics.pairwise import rbf_kernel
from skorch.callbacks import Callback

from sklearn_cl3d import WSPPretrainer
from sklearn_cl3d.losses import wsp_infonce
from sklearn_cl3d.nn import TinyNet2D, resnet18_2d

MIB = 1024**2
BACKBONES = ("tinynet", "resnet18")
#: the "small" slice size of each backbone (TinyNet needs >= 156 px)
SMALL_SIZE = {"tinynet": 160, "resnet18": 128}
#: depth of the random volumes: 4 slices, of which the central 70 % keep 2
VOLUME_DEPTH = 4
N_CLASSES = 2  # binary weak labels, as the published pipeline
SIGMA, TAU = 0.85, 0.1  # official configuration (spec section 2.5)
LR, WEIGHT_DECAY = 1e-5, 1e-5

# shared/specs/wsp.md section 5: the official step, 32 slices x 2 views,
# forward both views, official loss, backward, Adam; no augmentation, no data
# loading; 2 cores, torch 2.13.0+cpu, load average 4-9 (upper bounds)
REFERENCE = {
    "source": (
        "shared/specs/wsp.md section 5 (official step re-run on a 2-core CPU "
        "box under heavy contention, load 4-9; wall times are upper bounds)"
    ),
    "batch_slices": 32,
    "best_median_step_s": {
        "tinynet_512": 15.7,
        "tinynet_160": 4.8,
        "resnet18_512": 91.9,
        "resnet18_128": 5.9,
    },
    "process_cpu_s_per_step": {
        "tinynet_512": [15.4, 17.0],
        "tinynet_160": [2.25, 2.25],
        "resnet18_512": [44.6, 44.6],
        "resnet18_128": [3.9, 5.0],
    },
}


# ---------------------------------------------------------------- helpers
def _mib(n_bytes):
    return None if n_bytes is None else n_bytes / MIB


def _is_cuda(device):
    return torch.device(device).type == "cuda"


def _synchronizer(device):
    if _is_cuda(device):
        return torch.cuda.synchronize
    return lambda: None


def _time_calls(fn, reps, sync, warmup=1):
    times = []
    for i in range(warmup + reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


class _Memory:
    """Peak RSS / CUDA memory over one part of the benchmark."""

    def __init__(self, device):
        self.cuda = _is_cuda(device)

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.rss_before = _current_rss_bytes()
        self.peak_before = _peak_rss_bytes()
        self.load_before = _loadavg()
        return self

    def __exit__(self, *exc):
        self.peak_after = _peak_rss_bytes()
        self.rss_after = _current_rss_bytes()
        self.load_after = _loadavg()
        self.cuda_peak = torch.cuda.max_memory_allocated() if self.cuda else None
        return False

    def record(self):
        return {
            "rss_before_gib": _gib(self.rss_before),
            "rss_after_gib": _gib(self.rss_after),
            "peak_rss_before_gib": _gib(self.peak_before),
            "peak_rss_after_gib": _gib(self.peak_after),
            "peak_rss_increase_mib": _mib(self.peak_after - self.peak_before),
            "cuda_max_memory_allocated_gib": _gib(self.cuda_peak),
            "loadavg_before_after": [self.load_before, self.load_after],
        }


def _step_record(wall, cpu, batch):
    med = statistics.median(wall)
    return {
        "step_wall_s": _stats(wall),
        "step_wall_s_all": wall,
        "step_process_cpu_s": _stats(cpu),
        "steps_per_s": 1.0 / med,
        "slices_per_s": batch / med,
        "views_per_s": 2 * batch / med,
        "slices_per_s_best_step": batch / min(wall),
    }


# ---------------------------------------------------- 1. the library step
class FirstStep(Callback):
    """Keep the first training batch of a fit and time its step.

    The step is what skorch runs between ``on_batch_begin`` and
    ``on_batch_end`` (``train_step``: device transfer, z-score, the two
    views, two forward passes, the loss, backward, the optimizer step; the
    batch is already loaded). On CUDA the device is synchronised at both
    ends.

    Parameters
    ----------
    sync_cuda : bool, default=False
        Call ``torch.cuda.synchronize()`` before reading the clock.
    """

    def __init__(self, sync_cuda=False):
        self.sync_cuda = sync_cuda

    def initialize(self):
        self.batch_ = None
        self.wall_ = []
        self._t0 = None
        return self

    def _sync(self):
        if self.sync_cuda:
            torch.cuda.synchronize()

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        if self.batch_ is None:
            self.batch_ = batch
        self._sync()
        self._t0 = time.perf_counter()

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if not training or self._t0 is None:
            return
        self._sync()
        self.wall_.append(time.perf_counter() - self._t0)


def _random_volumes(n, size, seed):
    """Random volumes (n, size, size, VOLUME_DEPTH), float32.

    Slices are taken along the last axis, so they are already
    ``size x size`` and the estimator does not resize them.
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, size, size, VOLUME_DEPTH), dtype=np.float32)


class _Runner:
    """One kind of training step, timed step by step."""

    def __init__(self, name, step, sync):
        self.name = name
        self._step = step
        self._sync = sync
        self.wall = []
        self.cpu = []
        self.losses = []

    def run(self, timed):
        self._sync()
        c0, t0 = time.process_time(), time.perf_counter()
        loss = self._step()
        self._sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.losses.append(loss)
        if timed:
            self.wall.append(wall)
            self.cpu.append(cpu)


def setup_library(cfg, backbone, size, X, weak, augmentation):
    """Fit ``WSPPretrainer`` for one step; return it, its step and a record.

    The fit initialises the estimator (network, optimizer, augmentation) and
    runs one training step through skorch, which is timed and counts as the
    first warm-up step. Later steps call ``est.train_step`` (what skorch's
    epoch loop calls for every batch) on the batch of that first step.
    """
    device = cfg["device"]
    grab = FirstStep(sync_cuda=_is_cuda(device))
    est = WSPPretrainer(
        backbone=backbone,
        slice_size=size,
        batch_size=cfg["batch_size"],
        steps_per_epoch=1,
        max_epochs=1,
        augmentation=augmentation,
        random_state=0,
        device=device,
        callbacks=[("first_step", grab)],
    )
    with _Memory(device) as mem:
        est.fit(X, weak)
    grab = dict(est.callbacks_)["first_step"]
    batch = grab.batch_
    if batch is None or len(batch[0]) != cfg["batch_size"]:
        raise RuntimeError("the first training batch was not captured")

    def step():
        return est.train_step(batch)["loss"].item()

    record = {
        "augmentation": augmentation,
        "first_step_wall_s": grab.wall_[0],
        "n_parameters": int(sum(p.numel() for p in est.module_.parameters())),
        "memory_first_step": mem.record(),
    }
    return est, batch, step, record


def bench_shares(cfg, est, batch, step_median):
    """Augmentation and loss timed alone, on the estimator's own objects."""
    device = cfg["device"]
    sync = _synchronizer(device)
    n = cfg["batch_size"]
    reps = cfg["share_reps"]
    xb = torch.as_tensor(batch[0]).to(device)  # (B, 1, S, S) slices
    normalizer = est.normalizer_ or (lambda t: t)
    gen = torch.Generator(device=device).manual_seed(0)

    def zscore_only():
        normalizer(xb)

    def views():
        z = normalizer(xb)
        est.augment_(z, generator=gen)
        est.augment_(z, generator=gen)

    t_zscore = _time_calls(zscore_only, reps, sync)
    t_views = _time_calls(views, reps, sync)

    proj = est.projection_dim
    z1 = torch.randn(n, proj, device=device, requires_grad=True)
    z2 = torch.randn(n, proj, device=device, requires_grad=True)
    target = torch.as_tensor(batch[1])
    labels, positions = target[:, 0].numpy(), target[:, 1].numpy()
    labels_t, positions_t = target[:, 0].to(device), target[:, 1].to(device)

    def lib_loss():
        z1.grad = z2.grad = None
        est.criterion_(z1, z2, labels_t, positions_t).backward()

    def ref_loss():
        z1.grad = z2.grad = None
        reference_wsp_loss(z1, z2, labels, positions).backward()

    t_lib_loss = _time_calls(lib_loss, 5 * reps, sync)
    t_ref_loss = _time_calls(ref_loss, 5 * reps, sync)
    views_med = statistics.median(t_views)
    zscore_med = statistics.median(t_zscore)
    aug = max(views_med - zscore_med, 0.0)
    return {
        "reps": reps,
        "zscore_s": _stats(t_zscore),
        "views_s": _stats(t_views),
        "augmentation_s": aug,
        "augmentation_share_of_step": aug / step_median,
        "loss_forward_backward_s": _stats(t_lib_loss),
        "reference_loss_forward_backward_s": _stats(t_ref_loss),
        "loss_share_of_step": statistics.median(t_lib_loss) / step_median,
    }


# --------------------------------------------------- 2. the reference step
def reference_wsp_loss(z1, z2, labels, positions, sigma=SIGMA, tau=TAU):
    """The official WSP loss, written the naive way (weights in NumPy).

    ``labels`` and ``positions`` are host NumPy arrays of length N. The
    weights are built in float64 NumPy: one-hot label product times
    ``sklearn.metrics.pairwise.rbf_kernel`` (gamma = 1 / (2 sigma^2)) on the
    float32 positions, the diagonal zeroed, then every column j divided by
    the sum of row j (NumPy broadcasting over the last axis). The
    log-probabilities come from a row-wise log-softmax of the cosine
    similarities / tau with -1e8 on the diagonal. The loss is
    ``-(1/N) sum W * log p`` (a float64 scalar, as the official one).
    """
    n = z1.shape[0]
    device = z1.device
    z = F.normalize(torch.cat([z1, z2], dim=0), p=2, dim=1)
    sim = z @ z.T / tau - 1e8 * torch.eye(2 * n, device=device)
    log_p = F.log_softmax(sim, dim=1)
    y = np.concatenate([labels, labels]).astype(np.int64)
    onehot = np.eye(N_CLASSES)[y]
    d = np.concatenate([positions, positions]).reshape(2 * n, -1)
    weights = (onehot @ onehot.T) * rbf_kernel(
        d.astype(np.float32), gamma=1.0 / (2 * sigma**2)
    )
    weights = weights * (1.0 - np.eye(2 * n))
    weights /= weights.sum(axis=1)
    weights = torch.from_numpy(weights).to(device)
    return -(weights * log_p).sum() / n


def _reference_model(backbone, device):
    torch.manual_seed(0)
    if backbone == "tinynet":
        net = TinyNet2D(in_channels=1, rep_dim=512)
    else:
        net = resnet18_2d(in_channels=1, rep_dim=512)
    head = torch.nn.Sequential(
        torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128)
    )
    return torch.nn.Sequential(net, head).to(device)


def setup_reference(cfg, backbone, size, batch):
    """A plain PyTorch step: the official step without augmentation.

    Same backbone, a Linear-ReLU-Linear head, two forward calls (one per
    view; without augmentation both views are the batch itself), the naive
    official loss, backward and Adam (lr 1e-5, weight decay 1e-5). The
    slices are random, already on the device; the weak labels and positions
    are those of the library's batch. Its first step runs here (untimed).
    """
    device = cfg["device"]
    n = cfg["batch_size"]
    target = torch.as_tensor(batch[1])
    labels, positions = target[:, 0].numpy(), target[:, 1].numpy()
    with _Memory(device) as mem:
        model = _reference_model(backbone, device).train()
        opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        gen = torch.Generator(device=device).manual_seed(3)
        x = torch.randn(n, 1, size, size, generator=gen, device=device)

        def step():
            opt.zero_grad()
            z1, z2 = model(x), model(x)
            loss = reference_wsp_loss(z1, z2, labels, positions)
            loss.backward()
            opt.step()
            return loss.item()

        runner = _Runner("reference", step, _synchronizer(device))
        runner.run(timed=False)
    return runner, {"memory_first_step": mem.record()}


def loss_parity(device):
    """Library loss vs the naive reference on the same inputs (sanity check)."""
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(16, 128, generator=g).to(device)
    z2 = torch.randn(16, 128, generator=g).to(device)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, N_CLASSES, size=16)
    positions = rng.random(16).astype(np.float32)
    ref = float(reference_wsp_loss(z1, z2, labels, positions))
    ours = float(
        wsp_infonce(
            z1,
            z2,
            torch.as_tensor(labels, device=device),
            torch.as_tensor(positions, device=device),
            sigma=SIGMA,
            temperature=TAU,
        )
    )
    rel = abs(ours - ref) / abs(ref)
    return {"library": ours, "reference": ref, "rel_diff": rel, "pass": rel < 1e-5}


# ------------------------------------------------------------ one config
def _ratios(row, a, b):
    """Step-time ratios a / b: of the medians, of the minima, and paired.

    ``paired_median`` is the median over rounds of the ratio of the two steps
    of the same round; they ran back to back, so it is the most robust to
    load that changes during the run. ``process_cpu_of_medians`` uses the
    process CPU time per step instead of wall time.
    """
    if a not in row or b not in row:
        return None
    ra, rb = row[a], row[b]
    return {
        "of_medians": ra["step_wall_s"]["median"] / rb["step_wall_s"]["median"],
        "of_minima": ra["step_wall_s"]["min"] / rb["step_wall_s"]["min"],
        "paired_median": statistics.median(
            x / y for x, y in zip(ra["step_wall_s_all"], rb["step_wall_s_all"])
        ),
        "process_cpu_of_medians": ra["step_process_cpu_s"]["median"]
        / rb["step_process_cpu_s"]["median"],
    }


def bench_config(cfg, backbone, size):
    """Set up the runners, then time them interleaved, step by step."""
    device = cfg["device"]
    sync = _synchronizer(device)
    n = cfg["batch_size"]
    name = f"{backbone}_{size}"
    row = {
        "name": name,
        "backbone": backbone,
        "slice_size": size,
        "batch_slices": n,
        "views_per_step": 2 * n,
        "warmup": cfg["warmup"],
        "steps": cfg["steps"],
    }
    if backbone == "tinynet" and size < TinyNet2D.min_input_size:
        row["skipped"] = (
            f"TinyNet needs slices of at least {TinyNet2D.min_input_size} px"
        )
        return row
    gc.collect()
    peak0, rss0, load0 = _peak_rss_bytes(), _current_rss_bytes(), _loadavg()
    X = _random_volumes(n, size, seed=0)  # one slice per volume per batch
    weak = np.arange(n) % N_CLASSES
    row["volumes_shape"] = list(X.shape)
    row["dataset_mib"] = _mib(X.nbytes)

    print(f"[{name}] set-up: fit the library (first step) ...", flush=True)
    est, batch, lib_step, lib_rec = setup_library(cfg, backbone, size, X, weak, "wsp")
    row["n_parameters"] = lib_rec.pop("n_parameters")
    runners = [_Runner("library", lib_step, sync)]
    records = {"library": lib_rec}
    if not cfg["skip_noaug"]:
        est_na, _, na_step, na_rec = setup_library(cfg, backbone, size, X, weak, "none")
        na_rec.pop("n_parameters")
        runners.append(_Runner("library_no_aug", na_step, sync))
        records["library_no_aug"] = na_rec
    del X
    if not cfg["skip_reference"]:
        ref_runner, ref_rec = setup_reference(cfg, backbone, size, batch)
        runners.append(ref_runner)
        records["reference"] = ref_rec

    # the first step of every runner was its set-up (warm-up 1); then
    # rounds of one step per runner, in a rotating order so that a burst
    # of load on a shared machine hits all of them alike
    rounds = max(cfg["warmup"] - 1, 0) + cfg["steps"]
    print(
        f"[{name}] {rounds} interleaved round(s) of "
        f"{', '.join(r.name for r in runners)} ...",
        flush=True,
    )
    with _Memory(device) as mem:
        for i in range(rounds):
            k = i % len(runners)
            for runner in runners[k:] + runners[:k]:
                runner.run(timed=i >= rounds - cfg["steps"])
    row["memory_steps"] = mem.record()

    for runner in runners:
        rec = records[runner.name]
        rec.update(_step_record(runner.wall, runner.cpu, n))
        rec["losses"] = runner.losses
        row[runner.name] = rec
    lib = row["library"]
    row["share"] = bench_shares(cfg, est, batch, lib["step_wall_s"]["median"])
    del est, runners
    if not cfg["skip_noaug"]:
        del est_na
    gc.collect()
    peak1 = _peak_rss_bytes()
    row["memory"] = {
        "peak_rss_gib": _gib(peak1),
        "peak_rss_increase_mib": _mib(peak1 - peak0),
        "rss_before_gib": _gib(rss0),
        "rss_after_gib": _gib(_current_rss_bytes()),
        # the largest of the set-up steps and of the interleaved steps
        "cuda_max_memory_allocated_gib": (
            max(
                row["memory_steps"]["cuda_max_memory_allocated_gib"],
                *(
                    r["memory_first_step"]["cuda_max_memory_allocated_gib"]
                    for r in records.values()
                ),
            )
            if _is_cuda(device)
            else None
        ),
    }
    row["loadavg_before_after"] = [load0, _loadavg()]

    row["ratios"] = {
        "library_over_reference": _ratios(row, "library", "reference"),
        "library_no_aug_over_reference": _ratios(row, "library_no_aug", "reference"),
        "library_over_library_no_aug": _ratios(row, "library", "library_no_aug"),
    }
    spec_s = REFERENCE["best_median_step_s"].get(name)
    if spec_s is not None and n == REFERENCE["batch_slices"]:
        row["spec_official_step_s"] = spec_s
    return row


# --------------------------------------------------------------- the rest
def machine_info(cfg):
    return {
        **_machine(cfg["device"]),
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }


def _fmt_s(x):
    if x is None:
        return "n/a"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _paired(ratios):
    return "n/a" if ratios is None else f"{ratios['paired_median']:.2f}"


def summary(report):
    m = report["machine"]
    c = report["config"]
    lines = [
        f"WSP benchmark on {m['device_name']} ({m['device']}), "
        f"{m['usable_cores']} cores, torch {m['torch']}, {m['torch_threads']} "
        f"threads, batch {c['batch_size']} slices x 2 views, "
        f"{c['warmup']} warm-up + {c['steps']} timed steps, "
        f"load {m['loadavg_at_start']} -> {m.get('loadavg_at_end')}"
    ]
    for row in report["results"]["configs"]:
        if "skipped" in row:
            lines.append(f"{row['name']}: skipped ({row['skipped']})")
            continue
        lib = row["library"]
        line = (
            f"{row['name']}: library {_fmt_s(lib['step_wall_s']['median'])}/step "
            f"({lib['slices_per_s']:.1f} slices/s)"
        )
        if "library_no_aug" in row:
            na = row["library_no_aug"]
            line += f", no aug {_fmt_s(na['step_wall_s']['median'])}"
        if "reference" in row:
            ref = row["reference"]
            line += (
                f", reference {_fmt_s(ref['step_wall_s']['median'])} "
                f"({ref['slices_per_s']:.1f} slices/s)"
            )
        lines.append(line)
        r = row["ratios"]
        sh = row["share"]
        mem = row["memory"]
        line = (
            f"  paired ratios library/reference {_paired(r['library_over_reference'])}"
            f", no-aug/reference {_paired(r['library_no_aug_over_reference'])}; "
            f"aug {100 * sh['augmentation_share_of_step']:.1f}% of step, "
            f"loss {100 * sh['loss_share_of_step']:.2f}%; peak RSS "
            f"{mem['peak_rss_gib']:.2f} GiB (+{mem['peak_rss_increase_mib']:.0f} MiB)"
        )
        cuda = mem["cuda_max_memory_allocated_gib"]
        if cuda is not None:
            line += f", CUDA max allocated {cuda:.2f} GiB"
        lines.append(line)
    p = report["results"]["loss_parity"]
    lines.append(
        f"loss parity library vs naive reference: rel diff {p['rel_diff']:.1e} "
        f"({'ok' if p['pass'] else 'MISMATCH'})"
    )
    return "\n".join(lines)


def _parse_list(text, parser, name):
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        parser.error(f"--{name} is empty")
    return items


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark the WSPPretrainer training step."
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--backbones",
        default=",".join(BACKBONES),
        help="comma-separated subset of tinynet,resnet18",
    )
    p.add_argument(
        "--sizes",
        default=None,
        help="comma-separated slice sizes: integers and/or 'small' (160 for "
        "tinynet, 128 for resnet18); default 'small,512' ('small' with --quick)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per step (default 32 on CPU, 64 on CUDA)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps (default 3 on CPU, 10 on CUDA, 2 with --quick)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per kind of step, the set-up step (always run) "
        "included (default 1 on CPU, 3 on CUDA, 1 with --quick)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: cores)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes only, 1 warm-up + 2 timed steps (CI-sized)",
    )
    p.add_argument(
        "--skip-noaug",
        action="store_true",
        help="skip the library run with augmentation='none'",
    )
    p.add_argument(
        "--skip-reference",
        action="store_true",
        help="skip the plain PyTorch reference loop",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "bench_wsp.json",
    )
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args, p


def build_config(args, parser):
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    else:
        device = args.device
    cuda = _is_cuda(device)
    backbones = _parse_list(args.backbones, parser, "backbones")
    for b in backbones:
        if b not in BACKBONES:
            parser.error(f"--backbones: unknown backbone {b!r} (use {BACKBONES})")
    sizes_text = args.sizes or ("small" if args.quick else "small,512")
    sizes = []
    for s in _parse_list(sizes_text, parser, "sizes"):
        if s == "small":
            sizes.append(s)
            continue
        try:
            value = int(s)
        except ValueError:
            parser.error(f"--sizes: {s!r} is neither an integer nor 'small'")
        if value < 1:
            parser.error("--sizes: sizes must be >= 1")
        sizes.append(value)
    configs = []
    for b in backbones:
        for s in sizes:
            size = SMALL_SIZE[b] if s == "small" else s
            if (b, size) not in configs:
                configs.append((b, size))
    # small slices first, so that the per-configuration RSS increase of the
    # large ones is visible
    configs.sort(key=lambda c: c[1])
    if args.quick:
        warmup, steps = 1, 2
    else:
        warmup, steps = (3, 10) if cuda else (1, 3)
    return {
        "device": device,
        "threads": args.threads or _usable_cores(),
        "quick": args.quick,
        "batch_size": args.batch_size or (64 if cuda else 32),
        "warmup": warmup if args.warmup is None else args.warmup,
        "steps": steps if args.steps is None else args.steps,
        "configs": [list(c) for c in configs],
        "volume_depth": VOLUME_DEPTH,
        "n_classes": N_CLASSES,
        "sigma": SIGMA,
        "temperature": TAU,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "share_reps": 10,
        "skip_noaug": args.skip_noaug,
        "skip_reference": args.skip_reference,
    }


def main(argv=None):
    args, parser = parse_args(argv)
    cfg = build_config(args, parser)
    torch.set_num_threads(cfg["threads"])

    report = {
        "benchmark": "bench_wsp",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(cfg),
        "config": {**cfg, "argv": sys.argv[1:] if argv is None else list(argv)},
        "reference": REFERENCE,
        "results": {"loss_parity": loss_parity(cfg["device"]), "configs": []},
    }
    for backbone, size in cfg["configs"]:
        report["results"]["configs"].append(bench_config(cfg, backbone, size))
    report["results"]["peak_rss_gib"] = _gib(_peak_rss_bytes())
    report["machine"]["loadavg_at_end"] = _loadavg()

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
