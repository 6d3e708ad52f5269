#!/usr/bin/env python
"""The CPU kernel timings behind three choices of ``sklearn_cl3d.nn``.

1. ``max_pool``: the DenseNet stem's 3x3x3 / stride-2 max pooling of an
   8 x 64 x 32³ map, ATen's contiguous kernel against the library's
   :func:`sklearn_cl3d.nn._cpu_kernels.max_pool3d` (channels-last kernel),
   forward, and forward + backward.
2. ``conv_weight_grad``: the 3x3x3 weight gradient of a DenseNet-121 dense
   layer (8 x 128 -> 32 channels) at 16³, 8³, 4³ and 2³, oneDNN's
   backward-weights kernel against the same gradient computed as a forward
   convolution with batch and channel axes swapped (the rewrite the
   library used before; kept here as the measurement that retired it).
3. ``low_precision``: float32 against bfloat16 and float16 throughput of a
   matrix product (2048³) and of that 3x3x3 convolution at 16³ (forward,
   backward-data, backward-weights): whether reduced precision can speed up
   training on this CPU at all.
4. ``pointwise``: DenseNet-121's 1x1x1 convolutions (one view of 8 volumes
   of 64³: dense layers at 16³, 8³, 4³ and the first transition), oneDNN
   (``F.conv3d`` and its backward) against the library's batched matrix
   products (:class:`sklearn_cl3d.nn._cpu_kernels.PointwiseConv3d`),
   forward + backward.
5. ``onednn_step``: the time oneDNN spends in one DenseNet-121 training step
   (two views of 8 volumes of 64³), by primitive (layout reorders,
   convolution forward, backward-data, backward-weights), from
   ``ONEDNN_VERBOSE`` in a child process; with the library's 1x1x1 matrix
   products and with them disabled.

Median of ``--reps`` timed calls after one warm-up call, ``--threads``
torch threads. Usage::

    python benchmarks/bench_cpu_kernels.py \\
        --out benchmarks/measured/cpu_kernels_xeon.json
    python benchmarks/bench_cpu_kernels.py --parts pointwise onednn_step \\
        --threads 2 --out benchmarks/measured/cpu_kernels_pointwise_xeon.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine  # noqa: E402

from sklearn_cl3d._heap import cpu_heap_reuse  # noqa: E402
from sklearn_cl3d.nn import _cpu_kernels  # noqa: E402
from sklearn_cl3d.nn._cpu_kernels import max_pool3d  # noqa: E402


def _ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def bench_max_pool(reps):
    x = torch.randn(8, 64, 32, 32, 32).relu_()
    xr = x.clone().requires_grad_()

    def fb(pool):
        y = pool(xr, 3, 2, 1)
        y.backward(torch.ones_like(y))

    return {
        "shape": list(x.shape),
        "aten_contiguous_forward_ms": _ms(lambda: F.max_pool3d(x, 3, 2, 1), reps),
        "library_forward_ms": _ms(lambda: max_pool3d(x, 3, 2, 1), reps),
        "aten_contiguous_forward_backward_ms": _ms(lambda: fb(F.max_pool3d), reps),
        "library_forward_backward_ms": _ms(lambda: fb(max_pool3d), reps),
    }


def _weight_grad_by_forward(grad_out, x):
    w = torch.convolution(
        x.transpose(0, 1), grad_out.transpose(0, 1), None, [1] * 3, [1] * 3,
        [1] * 3, False, [0] * 3, 1,
    )
    return w.transpose(0, 1).contiguous()


def _conv_args(s, dtype):
    x = torch.randn(8, 128, s, s, s, dtype=dtype)
    w = torch.randn(32, 128, 3, 3, 3, dtype=dtype)
    g = torch.randn(8, 32, s, s, s, dtype=dtype)
    return x, w, g


def _backward(g, x, w, mask):
    return torch.ops.aten.convolution_backward(
        g, x, w, None, [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1, mask
    )


def bench_weight_grad(reps):
    out = {}
    for s in (16, 8, 4, 2):
        x, w, g = _conv_args(s, torch.float32)
        out[f"{s}^3"] = {
            "forward_ms": _ms(
                lambda: F.conv3d(x, w, padding=1), reps  # noqa: B023
            ),
            "backward_weights_kernel_ms": _ms(
                lambda: _backward(g, x, w, [False, True, False]), reps  # noqa: B023
            ),
            "as_forward_convolution_ms": _ms(
                lambda: _weight_grad_by_forward(g, x), reps  # noqa: B023
            ),
        }
    return out


def bench_low_precision(reps):
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        t = _ms(lambda: a @ b, reps) / 1e3  # noqa: B023
        x, w, g = _conv_args(16, dtype)
        out[str(dtype).replace("torch.", "")] = {
            "matmul_2048_gflops": 2 * 2048**3 / t / 1e9,
            "conv3x3x3_16^3_forward_ms": _ms(
                lambda: F.conv3d(x, w, padding=1), reps  # noqa: B023
            ),
            "conv3x3x3_16^3_backward_data_ms": _ms(
                lambda: _backward(g, x, w, [True, False, False]), reps  # noqa: B023
            ),
            "conv3x3x3_16^3_backward_weights_ms": _ms(
                lambda: _backward(g, x, w, [False, True, False]),  # noqa: B023
                1 if dtype == torch.float16 else reps,
            ),
        }
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


#: (input channels, output channels, side) of DenseNet-121's 1x1x1
#: convolutions at 64³: dense layers 3 and 6 of block 1, the first
#: transition, dense layer 12 of block 2, dense layer 24 of block 3
POINTWISE_SHAPES = ((128, 128, 16), (224, 128, 16), (256, 128, 16),
                    (480, 128, 8), (992, 128, 4))


def bench_pointwise(reps):
    out = {}
    for c, o, side in POINTWISE_SHAPES:
        x = torch.randn(8, c, side, side, side)
        w = torch.randn(o, c, 1, 1, 1)
        g = torch.randn(8, o, side, side, side)
        onednn = _ms(lambda: F.conv3d(x, w), reps) + _ms(  # noqa: B023
            lambda: torch.ops.aten.convolution_backward(  # noqa: B023
                g, x, w, None, [1] * 3, [0] * 3, [1] * 3, False, [0] * 3, 1,  # noqa: B023
                [True, True, False],
            ),
            reps,
        )
        matmul = _ms(lambda: _cpu_kernels.pointwise_conv3d(x, w), reps) + _ms(  # noqa: B023
            lambda: _cpu_kernels.pointwise_conv3d_backward(g, x, w), reps  # noqa: B023
        )
        out[f"{c}->{o} at {side}^3"] = {
            "onednn_forward_backward_ms": onednn,
            "matmul_forward_backward_ms": matmul,
            "onednn_over_matmul": onednn / matmul,
        }
    return out


def _onednn_step_child(mode):
    """One DenseNet-121 step under ONEDNN_VERBOSE (run in a child)."""
    from sklearn_cl3d.nn import densenet121

    if mode == "conv1x1_on_onednn":
        _cpu_kernels.PointwiseConv3d.matmul_applies = lambda self, x: False
    net = densenet121()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    views = torch.randn(8, 1, 64, 64, 64), torch.randn(8, 1, 64, 64, 64)

    def step():
        opt.zero_grad()
        (net(views[0]) * net(views[1])).mean().backward()
        opt.step()

    step()
    step()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        step()


def bench_onednn_step(threads):
    out = {}
    for mode in ("library", "conv1x1_on_onednn"):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(
            [sys.executable, __file__, "--threads", str(threads),
             "--onednn-step-child", mode],
            capture_output=True, text=True, env=env, timeout=900,
        )
        ms = collections.Counter()
        calls = collections.Counter()
        for line in proc.stdout.splitlines():
            fields = line.split(",")
            if len(fields) < 9 or fields[3] != "exec":
                continue
            kind = fields[5]
            if kind == "convolution":
                kind += " " + fields[7]  # forward_training, backward_data, ...
            ms[kind] += float(fields[-1])
            calls[kind] += 1
        out[mode] = {
            "onednn_ms_by_primitive": dict(ms),
            "calls_by_primitive": dict(calls),
            "onednn_total_ms": sum(ms.values()),
            "returncode": proc.returncode,
        }
    return out


PARTS = ("max_pool", "conv_weight_grad", "low_precision", "pointwise", "onednn_step")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--onednn-step-child", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/cpu_kernels.json")
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.onednn_step_child:
        with cpu_heap_reuse(True):
            _onednn_step_child(args.onednn_step_child)
        return
    runs = {
        "max_pool": lambda: bench_max_pool(args.reps),
        "conv_weight_grad": lambda: bench_weight_grad(args.reps),
        "low_precision": lambda: bench_low_precision(args.reps),
        "pointwise": lambda: bench_pointwise(args.reps),
        "onednn_step": lambda: bench_onednn_step(args.threads),
    }
    res = {
        "command": " ".join(["python benchmarks/bench_cpu_kernels.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine("cpu", threads=args.threads),
    }
    with cpu_heap_reuse(True):
        for part in args.parts:
            res[part] = runs[part]()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in args.parts}, indent=1))


if __name__ == "__main__":
    main()
