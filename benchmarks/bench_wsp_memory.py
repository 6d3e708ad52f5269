"""Peak RSS of one WSP training step: the library against plain loops.

Each side runs in its own fresh Python process (``VmHWM`` of
``/proc/self/status`` is the process's peak resident set size), alternating
the sides over ``--repeats`` rounds, on the CPU, with the same batch size,
slice size and network:

- ``library``: ``WSPPretrainer.fit`` on random volumes (``--steps`` steps of
  ``--batch`` slices, default augmentation ``"wsp"``);
- ``library_heap_reuse``: the same with the estimator's CPU heap reuse
  forced on (``_cpu_heap_reuse = True``, what the library did before
  issue 17, point 4);
- ``library_noaug``: the same with ``augmentation=None``;
- ``plain``: the library's backbone + head in a plain PyTorch loop on one
  random batch already in memory (two forward passes, the library loss,
  backward, Adam): what a minimal step costs with the library's network;
- ``official``: with ``--official PATH`` (a checkout of
  Guerbet-AI/wsp-contrastive), the official network and
  ``WSPContrastiveLoss`` in the same plain loop (input / 250 as the official
  step; no kornia views). The published TinyNet does not run: its first
  convolution expects 2 channels and its last one 256; both are replaced at
  run time by 1 -> 16 and 128 -> 512 convolutions (recorded in the JSON).

Every record has the peak RSS before the work (after imports and data) and
after it, in GiB. Usage::

    python benchmarks/bench_wsp_memory.py --official /path/to/wsp-contrastive
    python benchmarks/bench_wsp_memory.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIDES = ("library", "library_heap_reuse", "library_noaug", "plain", "official")
TINYNET_PATCH = (
    "features_conv[0] := Conv2d(1, 16, 5) (published: 2 input channels); "
    "features_conv[12] := Conv2d(128, rep_dim, 5) (published: 256 inputs)"
)


def _child(args):
    import numpy as np
    import torch
    from _bench_common import peak_rss_bytes

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, size, steps = args.batch, args.size, args.steps
    rec = {"side": args.side, "backbone": args.backbone}
    if args.side.startswith("library"):
        from sklearn_cl3d import WSPPretrainer

        rng = np.random.default_rng(0)
        # one slice kept per volume and step; depth 10 keeps 7 central slices
        X = rng.normal(size=(n, 1, size, size, 10)).astype(np.float32)
        weak = np.arange(n) % 2
        rec["dataset_bytes"] = int(X.nbytes)
        if args.side == "library_heap_reuse":
            WSPPretrainer._cpu_heap_reuse = True
        rec["cpu_heap_reuse"] = bool(WSPPretrainer._cpu_heap_reuse)
        est = WSPPretrainer(
            backbone=args.backbone,
            slice_size=size,
            batch_size=n,
            steps_per_epoch=steps,
            max_epochs=1,
            augmentation=None if args.side == "library_noaug" else "wsp",
            random_state=0,
            device="cpu",
            verbose=0,
        )
        rec["peak_before_gib"] = peak_rss_bytes() / 2**30
        t0 = time.perf_counter()
        est.fit(X, weak)
        rec["fit_s"] = time.perf_counter() - t0
    else:
        labels = np.arange(n) % 2
        positions = np.linspace(0, 1, n, dtype=np.float32)
        x = torch.randn(n, 1, size, size)
        if args.side == "plain":
            from sklearn_cl3d.losses import WSPLoss
            from sklearn_cl3d.nn import TinyNet2D, resnet18_2d

            net = (TinyNet2D if args.backbone == "tinynet" else resnet18_2d)(
                in_channels=1, rep_dim=512
            )
            model = torch.nn.Sequential(
                net,
                torch.nn.Linear(512, 256),
                torch.nn.ReLU(),
                torch.nn.Linear(256, 128),
            )
            crit = WSPLoss(sigma=0.85, temperature=0.1)
            lab, pos = torch.as_tensor(labels), torch.as_tensor(positions)

            def loss_fn(z1, z2):
                return crit(z1, z2, lab, pos)
        else:
            sys.path.insert(0, args.official)
            import types

            from losses import WSPContrastiveLoss
            from models.resnet import resnet18
            from models.tinynet import TinyNet

            if args.backbone == "tinynet":
                model = TinyNet(mode="encoder", rep_dim=512, hidden_dim=256)
                model.features_conv[0] = torch.nn.Conv2d(1, 16, 5)
                model.features_conv[12] = torch.nn.Conv2d(128, 512, 5)
                rec["patch"] = TINYNET_PATCH
            else:
                model = resnet18(mode="encoder", rep_dim=512, hidden_dim=256)
            crit = WSPContrastiveLoss(
                types.SimpleNamespace(num_classes=2), sigma=0.85, temperature=0.1
            )
            x = x * 250.0

            def loss_fn(z1, z2):
                return crit(z1, z2, labels, positions)

        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-5)
        rec["peak_before_gib"] = peak_rss_bytes() / 2**30
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            inp = x / 250.0 if args.side == "official" else x
            loss = loss_fn(model(inp), model(inp))
            loss.backward()
            opt.step()
        rec["fit_s"] = time.perf_counter() - t0
    rec["peak_after_gib"] = peak_rss_bytes() / 2**30
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rec["minor_faults"], rec["process_sys_s"] = usage.ru_minflt, usage.ru_stime
    print(json.dumps(rec))


def _run(args, side):
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--backbone",
        args.backbone_now,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    if args.official:
        cmd += ["--official", args.official]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", default=None, help="wsp-contrastive checkout")
    p.add_argument("--backbones", default="tinynet,resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/bench_wsp_memory.json")
    p.add_argument("--child", choices=SIDES, default=None, dest="side")
    p.add_argument("--backbone", default="tinynet")
    args = p.parse_args(argv)
    if args.side:
        return _child(args)
    if args.quick:
        args.size, args.batch, args.steps, args.repeats = 160, 4, 1, 1
    from _bench_common import cpu_model, loadavg

    sides = [s for s in args.sides.split(",") if s != "official" or args.official]
    result = {
        "benchmark": "bench_wsp_memory",
        "cpu_model": cpu_model(),
        "loadavg_at_start": loadavg(),
        "config": {k: v for k, v in vars(args).items() if k != "side"},
        "runs": [],
    }
    for backbone in args.backbones.split(","):
        args.backbone_now = backbone
        for r in range(args.repeats):
            for side in sides if r % 2 == 0 else sides[::-1]:
                rec = _run(args, side)
                rec["round"] = r
                result["runs"].append(rec)
                print(
                    f"{backbone:9s} {side:14s} peak RSS {rec['peak_after_gib']:.3f} "
                    f"GiB (before the work {rec['peak_before_gib']:.3f})",
                    flush=True,
                )
    result["loadavg_at_end"] = loadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False) as fh:
        json.dump(result, fh, indent=2)
    os.replace(fh.name, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
