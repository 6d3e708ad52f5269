#!/usr/bin/env python
"""DrasCLR training iteration: the library against the official code itself.

Each side runs one kind of step in a fresh process, on the CPU or, with
``--device cuda``, on a GPU; the sides alternate over ``--repeats`` rounds
(see ``_harness.py``). The training iteration is the official setting:
``--batch`` anchor patches of 1 x 32³ at one landmark, their 2 neighbour
patches each (at the 2 nearest other landmarks), the momentum keys of the
anchors, the local and the neighbour InfoNCE (τ 0.2, β 1) against that
landmark's queue of ``--queue`` keys, with ``--landmarks`` queues and
``--experts`` experts per CondConv, backward, SGD (lr 0.01, momentum 0.9,
weight decay 1e-4) and the enqueue. All sides get the same random lung-like
patches (-850 ± 120 HU, clipped to the window [-1024, 240] HU) at the same
landmarks, ``--warmup`` untimed then ``--steps`` timed iterations; every
side reports its median step time, ``anchors_per_s`` (``--batch`` / median
step time), peak RSS (``VmHWM``) and losses.

On CUDA (``--device cuda`` or ``cuda:N``) every side trains on the GPU, a
step ends when the GPU is done (``CudaStepClock``) and each record adds
``cuda_max_allocated_gib``, ``cuda_max_reserved_gib``, the GPU utilisation
sampled through NVML after the warm-up (``gpu_util_mean_pct``, ...; see
``GpuMonitor``) and ``cudnn_benchmark``. The patches are drawn on the host
and copied to the GPU inside every step, as both training loops copy their
batches.

Sides:

- ``official``: with ``--official PATH``, a checkout of
  https://github.com/batmanlab/DrasCLR (the paper's code, release v1.0,
  899e313): its ``models.builder.DrasCLR`` around ``models.cnn3d.Encoder``
  (per-sample CondConv loop, MLP head), wrapped in DistributedDataParallel
  as its ``train.py`` requires (its only supported launch), in a one-process
  group: ``gloo`` on the CPU; on CUDA, as its ``train.py``, ``nccl``
  (``--dist-backend auto``; if NCCL cannot start, ``gloo`` and a
  ``process_group_note`` saying why), ``torch.cuda.set_device``, the module
  moved with ``.cuda(gpu)``, DDP with ``device_ids=[gpu]``,
  ``cudnn.benchmark = True`` (it sets it with its seed), and both views, the
  locations and the neighbours copied with ``.cuda(gpu, non_blocking=True)``
  at every iteration; and its training iteration: the forward,
  ``CrossEntropyLoss`` of both logit sets, ``loss_pch + beta * loss_ngb``,
  the top-5 of both logit sets (its accuracy meters), ``.item()`` of the
  three losses, backward and SGD. Its inputs are the views its DataLoader
  workers would deliver (here without augmentation: MONAI's views run in the
  workers, outside the step), scaled by ``/ 632 - 1`` as its dataset does,
  with its location normalisation ``loc / max * 2 - 1``. Run-time patch,
  only on the CPU (recorded in ``patches``): ``torch.Tensor.cuda`` returns
  the tensor itself, because the official forward moves the MoCo shuffle
  permutation and the labels to CUDA unconditionally (``.cuda()`` in
  ``_batch_shuffle_ddp`` and ``forward``).
- ``library``: ``DrasCLREncoder(augmentation="none").train_step`` on the same
  patches (window-shifted HU, scaled inside the step), the estimator
  initialised by ``fit(max_epochs=0)`` with a table of ``--landmarks``
  corners. On CUDA the estimator's defaults there: fp32 (DrasCLR's default
  precision), channels-last volumes, cuDNN's autotuner left off.
- ``library_aug``: the same with the default ``"drasclr"`` views (random
  affine, noise, contrast; three draws per step, on the device).

On request (``--sides NAME ...``):

- ``naive``: the library's estimator with the official per-sample CondConv
  loop re-created in this script (one mixed kernel and one ``conv3d`` per
  sample): a stand-in for the official code when no checkout is at hand.
- ``sketch``: one dense convolution per distinct location in the batch (not
  library code): what grouping samples by location would give.
- ``encoder_library``, ``encoder_naive``, ``official_encoder``: the query
  encoder alone (forward, an in-batch InfoNCE stand-in loss, backward, SGD)
  on ``--batch`` patches, all at one landmark or at distinct ones
  (``--encoder-locations``): the library's ``DrasCLRNet``, the same with the
  re-created per-sample loop, and the official ``Encoder`` with its MLP head.

Usage::

    python benchmarks/bench_drasclr.py --official /path/to/DrasCLR
    python benchmarks/bench_drasclr.py --official /path/to/DrasCLR \\
        --sides official_encoder encoder_library --encoder-locations distinct
    python benchmarks/bench_drasclr.py --quick --repeats 1

On a GPU, the official per-GPU setting (``run_train.sh``: global batch 128
on 4 GPUs, so 32 anchors per GPU; 581 landmarks, queues of 4096, 8 experts:
the defaults here)::

    python benchmarks/bench_drasclr.py --device cuda --official PATH \\
        --warmup 3 --steps 12 --repeats 2 --threads 4 --timeout 90

Estimate for an H100 (not measured yet): the official iteration is bound by
its Python loop and kernel launches (about 25,500 kernel-launching ATen ops
and 42,000 view ops per iteration at batch 32, counted on the CPU), so
roughly 0.3-0.6 s per iteration, 10-20 s per process with its set-up (the
1.2 GB of queues drawn on the host, CUDA and NCCL start, cuDNN autotuning in
the warm-up); the library sides some 20-60 ms per iteration, 8-12 s per
process (imports, CUDA start). About 60-100 s in all.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _harness import (
    CudaStepClock,
    GpuMonitor,
    bind_cuda_device,
    check_device,
    main,
    on_cuda,
)

LOW, HIGH = -1024.0, 240.0  # the official intensity window
CUDA_PATCH = (
    "torch.Tensor.cuda := identity (no CUDA here): the official "
    "DrasCLR._batch_shuffle_ddp and DrasCLR.forward call .cuda() on the "
    "shuffle permutation and the labels unconditionally"
)


# ------------------------------------------------------------ shared inputs
def _landmark_table(n, patch):
    """``n`` distinct corners on a 2-voxel grid; returns (corners, volume side)."""
    side = 2
    while side**3 < n:
        side += 1
    grid = np.arange(side) * 2
    corners = np.array([[a, b, c] for a in grid for b in grid for c in grid])[:n]
    return corners, int(grid[-1] + patch)


def _batches(cfg):
    """Location-major batches in window-shifted HU (what the estimator's
    dataset yields): ``(patches (B,1,P,P,P), neighbours (B,k,1,P,P,P),
    landmark)``, the same in every process."""
    gen = torch.Generator().manual_seed(1)
    b, p, k = cfg["batch"], cfg["patch"], 2
    out = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        # lung-like intensities: -850 HU +/- 120, clipped to the window
        mean, span = -LOW - 850, HIGH - LOW
        patches = (mean + 120 * torch.randn(b, 1, p, p, p, generator=gen)).clamp(
            0, span
        )
        nbrs = (mean + 120 * torch.randn(b, k, 1, p, p, p, generator=gen)).clamp(
            0, span
        )
        out.append((patches, nbrs, (37 * i) % cfg["landmarks"]))
    return out


def _run_steps(cfg, step):
    """Time ``step(patches, neighbours, landmark) -> loss`` over the batches
    (on CUDA each step ends when the GPU is done; the GPU's utilisation is
    sampled after the warm-up)."""
    bind_cuda_device(cfg["device"])
    batches = _batches(cfg)
    losses = []
    with GpuMonitor(cfg["device"]) as monitor:
        clock = CudaStepClock(cfg["warmup"], monitor)
        for patches, nbrs, landmark in batches:
            clock.start()
            losses.append(step(patches, nbrs, landmark))
            clock.stop()
    out = {
        **clock.result(),
        **monitor.record(),
        "losses": losses,
        "anchors_per_step": cfg["batch"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if out["step_wall_s"]:
        out["anchors_per_s"] = cfg["batch"] / out["step_wall_s"]
    if on_cuda(cfg):
        out["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return out


# ------------------------------------------------------------ official code
def _import_official(cfg):
    sys.path.insert(0, str(Path(cfg["official"]).resolve()))
    patches = []
    if not on_cuda(cfg):
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        patches.append(CUDA_PATCH)
    from models.builder import DrasCLR
    from models.cnn3d import Encoder

    return DrasCLR, Encoder, patches


def _official_tables(cfg):
    """Normalised locations and the official neighbour rule (the k nearest
    corners, itself excluded; stable order for ties)."""
    corners, _ = _landmark_table(cfg["landmarks"], cfg["patch"])
    corners = corners.astype(np.float64)
    top = corners.max(0)
    top[top <= 0] = 1.0
    locations = torch.as_tensor(corners / top * 2 - 1, dtype=torch.float32)
    dists = np.linalg.norm(corners[:, None] - corners[None], axis=-1)
    neighbors = np.argsort(dists, axis=1, kind="stable")[:, 1:3]
    return locations, neighbors


def _official_gpu(cfg):
    """The GPU index the official code runs on (None on the CPU), made the
    current device and with cuDNN's autotuner on, as its ``train.py`` does
    (``torch.cuda.set_device(args.gpu)``; ``cudnn.benchmark = True`` since
    a seed is given)."""
    if not on_cuda(cfg):
        return None
    index = torch.device(cfg["device"]).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.set_device(index)
    torch.backends.cudnn.benchmark = True
    return index


def _process_group(cfg, gpu):
    """A one-process group for the official DDP wrapper: ``nccl`` bound to
    the GPU on CUDA (its ``train.py`` default), ``gloo`` on the CPU, or
    ``--dist-backend``. Where ``nccl`` was chosen by ``auto`` and cannot
    start, ``gloo`` (which also serves CUDA tensors) is used and the
    returned note says why."""
    import torch.distributed as dist

    wanted = cfg["dist_backend"]
    if wanted == "auto":
        wanted = "nccl" if gpu is not None else "gloo"

    def init(backend):
        extra = {}
        if backend == "nccl":  # eager: a failing NCCL shows up here
            extra["device_id"] = torch.device("cuda", gpu)
        dist.init_process_group(
            backend, init_method="file://" + os.path.join(tempfile.mkdtemp(), "pg"),
            rank=0, world_size=1, **extra,
        )

    try:
        init(wanted)
        return wanted, None
    except Exception as exc:  # noqa: BLE001 - any NCCL start failure
        if wanted != "nccl" or cfg["dist_backend"] != "auto":
            raise
        if dist.is_initialized():
            dist.destroy_process_group()
        init("gloo")
        return "gloo", f"nccl failed ({type(exc).__name__}: {exc}); gloo used"


def official_side(cfg):
    DrasCLR, Encoder, patches = _import_official(cfg)
    import torch.distributed as dist

    gpu = _official_gpu(cfg)
    backend, backend_note = _process_group(cfg, gpu)
    model = DrasCLR(
        Encoder, cfg["landmarks"], 128, 128, cfg["experts"], 1, cfg["queue"],
        0.999, 0.2, True,
    )
    if gpu is None:
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:  # as its train.py: the module on the GPU, DDP bound to it
        model.cuda(gpu)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[gpu])
    model.train()
    criterion = torch.nn.CrossEntropyLoss()
    if gpu is not None:
        criterion = criterion.cuda(gpu)
    opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=1e-4)
    locations, neighbors = _official_tables(cfg)
    scale = (HIGH - LOW) / 2

    def step(x, nbrs, landmark):
        b = x.shape[0]
        v = x / scale - 1
        ngb = nbrs[:, :, 0] / scale - 1  # (B, k, P, P, P) as its dataset gives
        loc = locations[landmark].expand(b, -1)
        ngb_loc = locations[torch.as_tensor(neighbors[landmark])].expand(b, -1, -1)
        v_q = v_k = v
        if gpu is not None:
            # its train.py copies both views, the locations and the
            # neighbours to the GPU at every iteration
            v_q = v.cuda(gpu, non_blocking=True)
            v_k = v.cuda(gpu, non_blocking=True)
            loc = loc.float().cuda(gpu, non_blocking=True)
            ngb = ngb.cuda(gpu, non_blocking=True)
            ngb_loc = ngb_loc.float().cuda(gpu, non_blocking=True)
        logits_pch, logits_ngb, target = model(
            patch_idx=landmark, pch_q=[v_q, loc], pch_k=[v_k, loc],
            ngb_q=[ngb, ngb_loc],
        )
        loss_pch = criterion(logits_pch, target)
        loss_ngb = criterion(logits_ngb, target)
        loss = loss_pch + 1.0 * loss_ngb
        logits_pch.topk(5, dim=1)
        logits_ngb.topk(5, dim=1)
        loss_pch.item(), loss_ngb.item()
        value = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return value

    out = _run_steps(cfg, step)
    dist.destroy_process_group()
    rec = {**out, "patches": patches, "process_group": f"{backend}, world size 1"}
    if backend_note:
        rec["process_group_note"] = backend_note
    return rec


def official_encoder(cfg):
    _, Encoder, patches = _import_official(cfg)
    gpu = _official_gpu(cfg)
    net = Encoder(rep_dim=128, moco_dim=128, num_experts=cfg["experts"],
                  num_coordinates=1)
    # the MLP head the official DrasCLR module puts on its encoders
    net.fc = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), net.fc)
    if gpu is not None:
        net.cuda(gpu)
    out = _encoder_steps(cfg, lambda x, loc: net(x, loc)[0], net)
    return {**out, "patches": patches}


# ------------------------------------------------------------ the library
def _naive_block_forward(self, x, locations, shared=False):
    """One ``CondConv3d -> BN -> ELU`` block with a per-sample loop, as the
    official CondConv: per sample its gates ``sigmoid(A p + c)``, its own
    mixed kernel and one ``F.conv3d`` call; same parameters as the library
    block."""
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
    """One block with one dense convolution per distinct location (a
    sketch, not library code)."""
    from sklearn_cl3d.nn.functional import routing_gates

    conv = self.conv
    unique, inverse = torch.unique(locations, dim=0, return_inverse=True)
    gates = routing_gates(unique, conv.routing.weight, conv.routing.bias)
    kernels = (gates @ conv.weight.reshape(conv.n_experts, -1)).reshape(
        len(unique), *conv.weight.shape[1:]
    )
    parts, index = [], []
    for j in range(len(unique)):
        rows = torch.nonzero(inverse == j).flatten()
        parts.append(F.conv3d(x[rows], kernels[j], conv.bias, conv.stride,
                              conv.padding))
        index.append(rows)
    order = torch.argsort(torch.cat(index))
    return self.act(self.bn(torch.cat(parts)[order]))


_FORWARDS = {"naive": _naive_block_forward, "sketch": _sketch_block_forward}


def _set_mode(net, mode):
    """Point every block of a DrasCLRNet at the forward of ``mode``."""
    for block in net.layers:
        if mode == "library":
            block.__dict__.pop("forward", None)
        else:
            block.forward = types.MethodType(_FORWARDS[mode], block)


def _library(cfg, mode="library", augmentation="none"):
    from sklearn_cl3d import DrasCLREncoder

    corners, size = _landmark_table(cfg["landmarks"], cfg["patch"])
    est = DrasCLREncoder(
        patch_size=cfg["patch"], n_experts=cfg["experts"], queue_size=cfg["queue"],
        landmarks=corners, batch_size=cfg["batch"], augmentation=augmentation,
        max_epochs=0,  # initialise only; the steps are driven below
        device=cfg["device"], random_state=0, verbose=0,
    )
    est.fit(np.full((2, 1, size, size, size), -800.0, dtype=np.float32))
    for net in (est.module_.query, est.module_.key):
        _set_mode(net, mode)

    def step(patches, nbrs, landmark):
        x = {
            "patches": patches,
            "neighbors": nbrs,
            "landmark": torch.full((len(patches),), landmark, dtype=torch.long),
        }
        return float(est.train_step((x, torch.zeros(len(patches), 1)))["loss"])

    return _run_steps(cfg, step)


def _encoder_steps(cfg, forward, net):
    b, p = cfg["batch"], cfg["patch"]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(b, 1, p, p, p, generator=gen)
    if cfg["encoder_locations"] == "one":
        loc = (torch.rand(1, 3, generator=gen) * 2 - 1).repeat(b, 1)
    else:
        loc = torch.rand(b, 3, generator=gen) * 2 - 1
    # drawn on the host (the same numbers on every device), then moved
    device = next(net.parameters()).device
    x, loc, target = x.to(device), loc.to(device), torch.arange(b, device=device)
    net.train()

    def step(*_):
        opt.zero_grad(set_to_none=True)
        z = F.normalize(forward(x, loc), dim=1)
        loss = F.cross_entropy(z @ z.T / 0.2, target)
        loss.backward()
        opt.step()
        return float(loss)

    return {**_run_steps(cfg, step), "encoder_locations": cfg["encoder_locations"]}


def _encoder_library(cfg, mode):
    from sklearn_cl3d.nn import DrasCLRNet

    net = DrasCLRNet(n_experts=cfg["experts"]).to(cfg["device"])
    _set_mode(net, mode)
    return _encoder_steps(cfg, net, net)


SIDES = {
    "official": official_side,
    "library": _library,
    "library_aug": lambda cfg: _library(cfg, augmentation="drasclr"),
    # run only when named in --sides
    "naive": lambda cfg: _library(cfg, mode="naive"),
    "sketch": lambda cfg: _library(cfg, mode="sketch"),
    "encoder_library": lambda cfg: _encoder_library(cfg, "library"),
    "encoder_naive": lambda cfg: _encoder_library(cfg, "naive"),
    "official_encoder": official_encoder,
}
ON_REQUEST = ("naive", "sketch", "encoder_library", "encoder_naive",
              "official_encoder")


def add_arguments(parser):
    parser.add_argument("--batch", type=int, default=32,
                        help="anchors per batch (official: 32 per GPU)")
    parser.add_argument("--patch", type=int, default=32, choices=(32,),
                        help="patch side (the official network takes 32 only)")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--queue", type=int, default=4096,
                        help="keys per landmark queue (a multiple of --batch)")
    parser.add_argument("--landmarks", type=int, default=581)
    parser.add_argument("--steps", type=int, default=6, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations")
    parser.add_argument("--encoder-locations", choices=("one", "distinct"),
                        default="one", help="encoder sides: patches at one "
                        "landmark or at --batch distinct ones")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N: every side trains there")
    parser.add_argument("--dist-backend", choices=("auto", "nccl", "gloo"),
                        default="auto", help="official side's process group "
                        "(auto: nccl on CUDA, falling back to gloo if it "
                        "cannot start; gloo on the CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 anchors, 16 landmarks, queues of 64, "
                        "1 + 1 iterations")


def configure(args, parser):
    check_device(args, parser)
    if args.dist_backend == "nccl" and not args.device.startswith("cuda"):
        parser.error("--dist-backend nccl needs --device cuda")
    if args.quick:
        args.batch, args.landmarks, args.queue = 4, 16, 64
        args.steps, args.warmup = 1, 1
    if args.batch < 2 or args.landmarks < 3 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch >= 2, --landmarks >= 3, --steps >= 1, --warmup >= 0")
    if args.queue % args.batch:
        parser.error("--queue must be a multiple of --batch (the official "
                     "enqueue asserts it)")


if __name__ == "__main__":
    main(
        __file__, SIDES, add_arguments, "benchmarks/results/bench_drasclr.json",
        on_request=ON_REQUEST, configure=configure,
    )
