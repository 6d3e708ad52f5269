#!/usr/bin/env python
"""Throughput and memory benchmark of ``DrasCLREncoder`` (DrasCLR).

Measures, in one process, round-robin so that background load hits every
variant alike:

1. the **full training iteration** of the real estimator path
   (``DrasCLREncoder.train_step``): 16 anchor patches of 1 x 32^3 at one
   landmark, their 2 neighbour patches each (32 patches at 2 other
   landmarks), 16 momentum keys, both InfoNCE losses against the landmark's
   queue of 4096 keys, backward, SGD and the enqueue, with 581 landmark
   queues and E = 8 experts (the official setting);
2. the **encoder alone** (the query ``DrasCLRNet``: forward, backward, SGD)
   on 16 patches, once all at one landmark (as the anchors and keys of a
   training batch) and once at 16 different landmarks (as in feature
   extraction);

each with the library's batched CondConv and with the **naive per-sample
CondConv** of the official code (a Python loop over the samples, each with its
own mixed kernel and ``F.conv3d`` call), built from the same weights. The
first iteration of both is checked to give the same loss. A third, optional
variant of the training iteration ("by-location sketch", not library code)
runs one dense convolution per distinct location in the batch.

Peak RSS of a training run is measured for every variant in its own child
process. It writes a JSON file (``--out``) with machine info, configuration,
results, the spec's reference numbers and prints a short summary. See
``benchmarks/README.md``.

Usage::

    python benchmarks/bench_drasclr.py            # full run (a few minutes)
    python benchmarks/bench_drasclr.py --quick    # smoke test, < 2 minutes
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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

from sklearn_cl3d import DrasCLREncoder
from sklearn_cl3d.nn import DrasCLRNet
from sklearn_cl3d.nn.functional import routing_gates

MODES = ("library", "naive", "sketch")
MODE_LABELS = {
    "library": "library (batched CondConv)",
    "naive": "naive per-sample CondConv (official loop)",
    "sketch": "by-location sketch (one dense conv per distinct location)",
}

# shared/specs/drasclr.md section 8: the official code and a batched rewrite,
# same 2-core box, torch 2.13 CPU, 2 threads, OMP_WAIT_POLICY=PASSIVE, load ~8.
REFERENCE = {
    "source": "shared/specs/drasclr.md section 8 (official code, 2-core CPU box)",
    "official_full_iteration_cpu_s_median": 2.29,
    "official_full_iteration_wall_s_best": 2.18,
    "official_full_iteration_anchors_per_s_best": 7.4,
    "batched_full_iteration_cpu_s_median": 0.67,
    "batched_full_iteration_anchors_per_s_best": 24,
    "official_encoder_cpu_s_median": 0.68,
    "official_encoder_anchors_per_s_best": 25,
    "batched_encoder_cpu_s_median": 0.21,
    "batched_encoder_anchors_per_s_best": 84,
    "speedup_full_iteration_cpu": 3.4,
}


# ---------------------------------------------------------------- helpers
# ------------------------------------------------- the CondConv variants
def _naive_block_forward(self, x, locations, shared=False):
    """One ``CondConv3d -> BN -> ELU`` block with the official per-sample loop.

    For every sample: its gates ``sigmoid(A p + c)``, its own mixed kernel
    ``sum_e g_e W_e`` and one ``F.conv3d`` call; the outputs are concatenated
    before BatchNorm. Same parameters as the library block.
    """
    conv = self.conv
    experts = conv.weight.reshape(conv.n_experts, -1)
    outs = []
    for b in range(x.shape[0]):
        gates = torch.sigmoid(
            F.linear(locations[b], conv.routing.weight, conv.routing.bias)
        )
        kernel = (gates @ experts).reshape(conv.weight.shape[1:])
        outs.append(
            F.conv3d(x[b : b + 1], kernel, conv.bias, conv.stride, conv.padding)
        )
    return self.act(self.bn(torch.cat(outs)))


def _sketch_block_forward(self, x, locations, shared=False):
    """One block with one dense convolution per distinct location.

    Not library code: a sketch of what grouping the samples by location would
    give. A training batch has one anchor location and ``n_neighbors``
    neighbour locations, so the neighbour forward needs 2 dense convolutions
    instead of a grouped one over 32 samples.
    """
    conv = self.conv
    unique, inverse = torch.unique(locations, dim=0, return_inverse=True)
    gates = routing_gates(unique, conv.routing.weight, conv.routing.bias)
    kernels = (gates @ conv.weight.reshape(conv.n_experts, -1)).reshape(
        len(unique), *conv.weight.shape[1:]
    )
    if len(unique) == 1:
        y = F.conv3d(x, kernels[0], conv.bias, conv.stride, conv.padding)
    else:
        parts, index = [], []
        for j in range(len(unique)):
            rows = torch.nonzero(inverse == j).flatten()
            parts.append(
                F.conv3d(x[rows], kernels[j], conv.bias, conv.stride, conv.padding)
            )
            index.append(rows)
        order = torch.argsort(torch.cat(index))
        y = torch.cat(parts)[order]
    return self.act(self.bn(y))


def _set_mode(net, mode):
    """Point every block of a DrasCLRNet at the forward of ``mode``."""
    for block in net.layers:
        if mode == "library":
            block.__dict__.pop("forward", None)
        elif mode == "naive":
            block.forward = types.MethodType(_naive_block_forward, block)
        elif mode == "sketch":
            block.forward = types.MethodType(_sketch_block_forward, block)
        else:  # pragma: no cover
            raise ValueError(mode)


# ------------------------------------------------- 1. training iteration
def _landmark_table(n, patch):
    """``n`` distinct corners on a 2-voxel grid; returns (corners, volume side)."""
    side = 2
    while side**3 < n:
        side += 1
    grid = np.arange(side) * 2
    corners = np.array([[a, b, c] for a in grid for b in grid for c in grid])[:n]
    return corners, int(grid[-1] + patch)


def _make_estimator(cfg, mode):
    """An initialised DrasCLREncoder (no training) with the official setting."""
    corners, size = _landmark_table(cfg["n_landmarks"], cfg["patch"])
    X = np.full((2, 1, size, size, size), -800.0, dtype=np.float32)
    est = DrasCLREncoder(
        patch_size=cfg["patch"],
        n_experts=cfg["experts"],
        queue_size=cfg["queue"],
        landmarks=corners,
        batch_size=cfg["batch"],
        max_epochs=0,  # initialise only; the steps are driven below
        device=cfg["device"],
        random_state=0,
    )
    est.fit(X)
    for net in (est.module_.query, est.module_.key):
        _set_mode(net, mode)
    return est


def _make_batches(cfg, n):
    """``n`` location-major batches in window-shifted HU (as the estimator's)."""
    gen = torch.Generator().manual_seed(1)
    b, p, k = cfg["batch"], cfg["patch"], 2
    batches = []
    for i in range(n):
        # lung-like intensities: -850 HU +/- 120, clipped to the window
        patches = (1024 - 850 + 120 * torch.randn(b, 1, p, p, p, generator=gen)).clamp(
            0, 1264
        )
        nbrs = (1024 - 850 + 120 * torch.randn(b, k, 1, p, p, p, generator=gen)).clamp(
            0, 1264
        )
        landmark = (37 * i) % cfg["n_landmarks"]
        x = {
            "patches": patches,
            "neighbors": nbrs,
            "landmark": torch.full((b,), landmark, dtype=torch.long),
        }
        batches.append((x, torch.zeros(b, 1)))
    return batches


def _train_step(est, batch, sync):
    sync()
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = est.train_step(batch)
    sync()
    wall = time.perf_counter() - t0
    return wall, time.process_time() - c0, float(out["loss"].detach())


def bench_iteration(cfg):
    sync = _synchronizer(cfg["device"])
    modes = cfg["modes"]
    n = cfg["warmup"] + cfg["steps"]
    batches = _make_batches(cfg, n)
    ests = {m: _make_estimator(cfg, m) for m in modes}

    # same weights for every variant (same random_state, only forwards differ)
    ref = ests[modes[0]].module_.state_dict()
    same_weights = all(
        all(torch.equal(ref[k], v) for k, v in ests[m].module_.state_dict().items())
        for m in modes[1:]
    )
    wall = {m: [] for m in modes}
    cpu = {m: [] for m in modes}
    losses = {m: [] for m in modes}
    load_before = _loadavg()
    for i, batch in enumerate(batches):
        for m in modes:
            est = ests[m]
            # identical augmentation draws for every variant at every step
            torch.manual_seed(1000 + i)
            est.__dict__.pop("_aug_generator", None)
            w, c, loss = _train_step(est, batch, sync)
            losses[m].append(loss)
            if i >= cfg["warmup"]:
                wall[m].append(w)
                cpu[m].append(c)
    load_after = _loadavg()
    out = {
        "anchors_per_step": cfg["batch"],
        "patches_per_step": cfg["batch"] * 4,
        "same_initial_weights": bool(same_weights),
        "loss_first_step": {m: losses[m][0] for m in modes},
        "loss_abs_diff_first_step_vs_library": {
            m: abs(losses[m][0] - losses["library"][0]) for m in modes
        },
        "loadavg_before_after": [load_before, load_after],
        "modes": {},
    }
    for m in modes:
        med = statistics.median(wall[m])
        out["modes"][m] = {
            "label": MODE_LABELS[m],
            "step_wall_s": _stats(wall[m]),
            "step_process_cpu_s": _stats(cpu[m]),
            "step_wall_s_all": wall[m],
            "anchors_per_s": cfg["batch"] / med,
            "anchors_per_s_best": cfg["batch"] / min(wall[m]),
            "losses": losses[m],
        }
    lib = out["modes"]["library"]
    for m in modes:
        if m == "library":
            continue
        o = out["modes"][m]
        o["library_speedup_wall_median"] = (
            o["step_wall_s"]["median"] / lib["step_wall_s"]["median"]
        )
        o["library_speedup_cpu_median"] = (
            o["step_process_cpu_s"]["median"] / lib["step_process_cpu_s"]["median"]
        )
    del ests
    return out


# ------------------------------------------------------- 2. encoder alone
def bench_encoder(cfg):
    device = cfg["device"]
    sync = _synchronizer(device)
    b, p = cfg["batch"], cfg["patch"]
    torch.manual_seed(0)
    net = DrasCLRNet(n_experts=cfg["experts"]).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(b, 1, p, p, p, generator=gen).to(device)
    locations = {
        "one_landmark": (torch.rand(1, 3, generator=gen) * 2 - 1).repeat(b, 1),
        "distinct_landmarks": torch.rand(b, 3, generator=gen) * 2 - 1,
    }
    modes = ("library", "naive")

    def step(loc):
        opt.zero_grad(set_to_none=True)
        z = F.normalize(net(x, loc.to(device)), dim=1)
        logits = z @ z.T / 0.2  # in-batch stand-in loss, negligible cost
        loss = F.cross_entropy(logits, torch.arange(b, device=device))
        loss.backward()
        opt.step()

    out = {"patches_per_step": b, "settings": {}}
    load_before = _loadavg()
    for name, loc in locations.items():
        wall = {m: [] for m in modes}
        cpu = {m: [] for m in modes}
        for i in range(cfg["warmup"] + cfg["encoder_steps"]):
            for m in modes:
                _set_mode(net, m)
                sync()
                c0 = time.process_time()
                t0 = time.perf_counter()
                step(loc)
                sync()
                if i >= cfg["warmup"]:
                    wall[m].append(time.perf_counter() - t0)
                    cpu[m].append(time.process_time() - c0)
        entry = {}
        for m in modes:
            entry[m] = {
                "step_wall_s": _stats(wall[m]),
                "step_process_cpu_s": _stats(cpu[m]),
                "patches_per_s": b / statistics.median(wall[m]),
                "patches_per_s_best": b / min(wall[m]),
            }
        entry["library_speedup_wall_median"] = (
            entry["naive"]["step_wall_s"]["median"]
            / entry["library"]["step_wall_s"]["median"]
        )
        entry["library_speedup_cpu_median"] = (
            entry["naive"]["step_process_cpu_s"]["median"]
            / entry["library"]["step_process_cpu_s"]["median"]
        )
        out["settings"][name] = entry
    _set_mode(net, "library")
    out["loadavg_before_after"] = [load_before, _loadavg()]
    return out


# ----------------------------------------------- 3. peak RSS per variant
def _rss_child(cfg, mode, queue):
    torch.set_num_threads(cfg["threads"])
    sync = _synchronizer(cfg["device"])
    n = cfg["rss_steps"]
    batches = _make_batches(cfg, n)
    rss_start = _current_rss_bytes()
    est = _make_estimator(cfg, mode)
    rss_init = _current_rss_bytes()
    peak_init = _peak_rss_bytes()
    times = [_train_step(est, batch, sync)[0] for batch in batches]
    queue.put(
        {
            "mode": mode,
            "rss_before_estimator_gib": _gib(rss_start),
            "rss_after_init_gib": _gib(rss_init),
            "peak_rss_after_init_gib": _gib(peak_init),
            "peak_rss_gib": _gib(_peak_rss_bytes()),
            "steps": n,
            "step_wall_s": times,
        }
    )


def bench_rss(cfg):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = {}
    for mode in cfg["modes"]:
        queue = ctx.Queue()
        proc = ctx.Process(target=_rss_child, args=(cfg, mode, queue))
        proc.start()
        out[mode] = queue.get()
        proc.join()
    return out


# --------------------------------------------------------------- the rest
def machine_info(cfg):
    return {
        **_machine(cfg["device"]),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _fmt_s(x):
    return "n/a" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s")


def summary(report):
    lines = []
    m, c = report["machine"], report["config"]
    lines.append(
        f"DrasCLR benchmark on {m['device_name']} ({m['device']}), "
        f"{m['usable_cores']} cores, torch {m['torch']}, {m['torch_threads']} "
        f"threads; patch {c['patch']}^3, E={c['experts']}, {c['batch']} anchors, "
        f"queue {c['queue']} x {c['n_landmarks']} landmarks"
    )
    it = report["results"].get("iteration")
    if it is not None:
        lines.append(
            f"full iteration ({it['anchors_per_step']} anchors + "
            f"{2 * it['anchors_per_step']} neighbours + {it['anchors_per_step']} "
            f"keys, both losses), load {it['loadavg_before_after']}:"
        )
        for mode, o in it["modes"].items():
            s, cpu = o["step_wall_s"], o["step_process_cpu_s"]
            line = (
                f"  {mode:>8}: median {_fmt_s(s['median'])} (best "
                f"{_fmt_s(s['min'])}, CPU {_fmt_s(cpu['median'])}) -> "
                f"{o['anchors_per_s']:.1f} anchors/s (best "
                f"{o['anchors_per_s_best']:.1f})"
            )
            if "library_speedup_wall_median" in o:
                line += (
                    f"; library is {o['library_speedup_wall_median']:.2f}x "
                    f"(CPU {o['library_speedup_cpu_median']:.2f}x) faster"
                )
            lines.append(line)
        diffs = it["loss_abs_diff_first_step_vs_library"]
        lines.append(
            f"  same initial weights: {it['same_initial_weights']}; first-step loss "
            f"|diff| vs library: "
            + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items() if k != "library")
        )
    enc = report["results"].get("encoder")
    if enc is not None:
        lines.append(f"encoder alone, {enc['patches_per_step']} patches (fwd+bwd+SGD):")
        for name, e in enc["settings"].items():
            lines.append(
                f"  {name:>18}: library {_fmt_s(e['library']['step_wall_s']['median'])}"
                f" ({e['library']['patches_per_s']:.1f} patches/s), naive "
                f"{_fmt_s(e['naive']['step_wall_s']['median'])} "
                f"({e['naive']['patches_per_s']:.1f}/s) -> "
                f"{e['library_speedup_wall_median']:.2f}x (CPU "
                f"{e['library_speedup_cpu_median']:.2f}x)"
            )
    rss = report["results"].get("peak_rss")
    if rss is not None:
        lines.append(
            "peak RSS of a training run (own process): "
            + ", ".join(
                f"{k} {v['peak_rss_gib']:.2f} GiB (after init "
                f"{v['rss_after_init_gib']:.2f})"
                for k, v in rss.items()
            )
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark the DrasCLR training iteration and encoder."
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--steps", type=int, default=8, help="timed iterations per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed first iterations")
    p.add_argument(
        "--encoder-steps", type=int, default=8, help="timed encoder-only steps"
    )
    p.add_argument("--rss-steps", type=int, default=3, help="steps per RSS child")
    p.add_argument("--batch", type=int, default=16, help="anchors per batch")
    p.add_argument("--patch", type=int, default=32, help="patch side")
    p.add_argument("--experts", type=int, default=8, help="experts per conv")
    p.add_argument("--queue", type=int, default=4096, help="keys per landmark queue")
    p.add_argument("--landmarks", type=int, default=581, help="number of landmarks")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: cores)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: queue 256, 1 warm-up and 2 timed steps, 1 RSS step",
    )
    p.add_argument("--skip-sketch", action="store_true", help="no by-location sketch")
    p.add_argument("--skip-iteration", action="store_true")
    p.add_argument("--skip-encoder", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "bench_drasclr.json",
    )
    args = p.parse_args(argv)
    for name in (
        "steps",
        "encoder_steps",
        "rss_steps",
        "batch",
        "patch",
        "experts",
        "queue",
        "landmarks",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch < 2:
        p.error("--batch must be >= 2")
    if args.landmarks < 3:
        p.error("--landmarks must be >= 3")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args, p


def build_config(args, parser):
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    else:
        device = args.device
    cfg = {
        "device": device,
        "threads": args.threads or _usable_cores(),
        "quick": args.quick,
        "batch": args.batch,
        "patch": args.patch,
        "experts": args.experts,
        "queue": args.queue,
        "n_landmarks": args.landmarks,
        "steps": args.steps,
        "warmup": args.warmup,
        "encoder_steps": args.encoder_steps,
        "rss_steps": args.rss_steps,
        "modes": ["library", "naive"] + ([] if args.skip_sketch else ["sketch"]),
        "skip_iteration": args.skip_iteration,
        "skip_encoder": args.skip_encoder,
        "skip_rss": args.skip_rss,
    }
    if args.quick:
        cfg.update(queue=256, steps=2, warmup=1, encoder_steps=2, rss_steps=1)
    return cfg


def main(argv=None):
    args, parser = parse_args(argv)
    cfg = build_config(args, parser)
    torch.set_num_threads(cfg["threads"])
    report = {
        "benchmark": "bench_drasclr",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(cfg),
        "config": {**cfg, "argv": sys.argv[1:] if argv is None else list(argv)},
        "reference": REFERENCE,
        "results": {},
    }
    t0 = time.perf_counter()
    # peak RSS in fresh processes first, so they do not compete with the timing
    if not cfg["skip_rss"]:
        report["results"]["peak_rss"] = bench_rss(cfg)
    if not cfg["skip_iteration"]:
        report["results"]["iteration"] = bench_iteration(cfg)
    if not cfg["skip_encoder"]:
        report["results"]["encoder"] = bench_encoder(cfg)
    report["machine"]["loadavg_at_end"] = _loadavg()
    report["wall_s_total"] = time.perf_counter() - t0

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    print(f"total {report['wall_s_total']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
