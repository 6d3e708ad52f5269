#!/usr/bin/env python
"""Is bfloat16 pretraining on the CPU right? Three checks, one JSON.

1. ``gradients``: one y-Aware step of DenseNet-121 (1 x 64³, 8 pairs, the
   y-Aware loss) in float32, in bfloat16 autocast with the library's guard
   (:func:`sklearn_cl3d.nn._cpu_kernels.low_precision_safe_convs`) and in
   bfloat16 autocast without it, same weights and batch. For every parameter
   tensor: the cosine similarity and the relative max error of the bfloat16
   gradient against float32's, and whether it is finite. As a noise floor,
   the same for a float32 run whose input alone is rounded to bfloat16: how
   much these gradients move under a perturbation of bfloat16's size.
2. ``long_fit``: ``YAwarePretrainer(precision="bf16")`` with a small DenseNet
   (growth 8, blocks (2, 2, 2, 2), 16 stem maps) on 1 x 32³ volumes, whose
   last two blocks run on 2³ and 1³ maps (where oneDNN's bfloat16 weight
   gradient is wrong), for ``--long-epochs`` epochs: every loss and weight
   finite?
3. ``probe``: the demo's recipe (``yaware_factors.py``'s reference: 8 mm
   cohort, small3d 8-16-32, 30 epochs) pretrained in float32 and in bfloat16
   with seeds 0, 1, 2; logistic probes on [features, age] over 10 splits
   with 100 and 400 labels; the paired difference bf16 - fp32 with a 95 %
   bootstrap CI over seeds x splits
   (:func:`sklearn_cl3d.evaluation.paired_differences`).

Usage::

    python benchmarks/bf16_check.py --out benchmarks/measured/bf16_check_xeon.json
    python benchmarks/bf16_check.py --only gradients long_fit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine  # noqa: E402


def _param_grads(net, x, age, crit, *, dtype, guard):
    from sklearn_cl3d.nn._cpu_kernels import low_precision_safe_convs

    net.zero_grad()
    ctx = (
        torch.autocast("cpu", dtype=dtype)
        if dtype is not None
        else torch.autocast("cpu", enabled=False)
    )
    with low_precision_safe_convs(net, enabled=guard), ctx:
        z1, z2 = net(x[0]), net(x[1])
    crit(z1.float(), z2.float(), age).backward()
    return {k: p.grad.detach().clone() for k, p in net.named_parameters()}


def check_gradients(size=64, pairs=8):
    from sklearn_cl3d.losses import YAwareLoss
    from sklearn_cl3d.nn import ContrastiveModel, ProjectionHead, densenet121

    torch.manual_seed(0)
    net = ContrastiveModel(densenet121(memory_efficient=False), ProjectionHead(1024))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, pairs, 1, size, size, size)
    age = torch.rand(pairs) * 60 + 20
    crit = YAwareLoss(sigma=5.0, temperature=0.1)
    runs = {}
    for name, dtype, guard in [
        ("fp32", None, False),
        ("bf16_guarded", torch.bfloat16, True),
        ("bf16_unguarded", torch.bfloat16, False),
        # noise floor: float32 throughout, only the input rounded to bfloat16
        ("fp32_input_rounded_to_bf16", None, False),
    ]:
        net.load_state_dict(state)
        xi = x.bfloat16().float() if name.startswith("fp32_input") else x
        runs[name] = _param_grads(net, xi, age, crit, dtype=dtype, guard=guard)
    out = {}
    for name in ("bf16_guarded", "bf16_unguarded", "fp32_input_rounded_to_bf16"):
        rows = {}
        for k, ref in runs["fp32"].items():
            g = runs[name][k].double()
            r = ref.double()
            finite = bool(torch.isfinite(g).all())
            cos = float(torch.nn.functional.cosine_similarity(
                g.flatten(), r.flatten(), dim=0)) if finite else None
            rel = float((g - r).abs().max() / r.abs().max().clamp_min(1e-30))
            rows[k] = {"finite": finite, "cosine": cos, "rel_max_err": rel}
        cosines = [v["cosine"] for v in rows.values() if v["cosine"] is not None]
        out[name] = {
            "all_finite": all(v["finite"] for v in rows.values()),
            "n_params": len(rows),
            "min_cosine": min(cosines) if cosines else None,
            "median_cosine": float(np.median(cosines)) if cosines else None,
            "worst": sorted(
                rows.items(), key=lambda kv: -(kv[1]["rel_max_err"] or 0)
            )[:5],
            "per_parameter": rows,
        }
        print(f"{name}: finite {out[name]['all_finite']}, cosine min "
              f"{out[name]['min_cosine']}, median {out[name]['median_cosine']}",
              flush=True)
    return out


def check_long_fit(epochs):
    from sklearn_cl3d import YAwarePretrainer

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 1, 32, 32, 32), dtype=np.float32)
    age = rng.uniform(20, 80, size=64)
    t = time.perf_counter()
    est = YAwarePretrainer(
        backbone="densenet", backbone__growth_rate=8,
        backbone__block_config=(2, 2, 2, 2), backbone__num_init_features=16,
        precision="bf16", batch_size=8, max_epochs=epochs, lr=1e-3,
        random_state=0, device="cpu", verbose=0,
    ).fit(X, age)
    losses = [float(v) for v in est.history_[:, "train_loss"]]
    weights_finite = all(
        bool(torch.isfinite(p).all()) for p in est.module_.parameters()
    )
    out = {
        "steps": epochs * (64 // 8),
        "epochs": epochs,
        "all_losses_finite": bool(np.isfinite(losses).all()),
        "weights_finite": weights_finite,
        "loss_first_last": [losses[0], losses[-1]],
        "seconds": time.perf_counter() - t,
    }
    print("long fit:", {k: v for k, v in out.items()}, flush=True)
    return out


def check_probe(seeds, n_splits, cache):
    import yaware_factors as yf

    from sklearn_cl3d.evaluation import label_efficiency_splits, paired_differences

    base = yf.BASE
    data = yf._cohort(base["resolution"], base["modality"], 0, cache)
    X, age, dx = data["X"], data["age"], data["dx"]
    n_u = yf.N_UNLABELLED
    Xu, au = X[:n_u], age[:n_u]
    Xl, al, yl = X[n_u:], age[n_u:], dx[n_u:]
    splits = label_efficiency_splits(
        yl, list(yf.LABELS), n_repeats=n_splits, test_size=0.25, random_state=0
    )
    rows, fit_s = [], {}
    for seed in seeds:
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            enc = yf._encoder(base, seed).set_params(precision=precision, verbose=0)
            enc.fit(Xu, au)
            fit_s[f"{precision}_seed{seed}"] = time.perf_counter() - t
            F = np.c_[enc.transform(Xl), al]
            scores = yf._split_scores(F, yl, splits, yf._probe(base["probe"]))
            for n, vals in scores.items():
                for rep, v in enumerate(vals):
                    rows.append({
                        "method": precision, "protocol": "linear", "n_labels": n,
                        "repeat": rep, "seed": seed, "score": v,
                    })
            print(f"seed {seed} {precision}: AUC@100 "
                  f"{np.mean(scores[100]):.3f} AUC@400 {np.mean(scores[400]):.3f} "
                  f"({fit_s[f'{precision}_seed{seed}']:.0f} s)", flush=True)
    diff = paired_differences(rows, "fp32", random_state=0)
    print("bf16 - fp32:", diff, flush=True)
    return {"scores": rows, "bf16_minus_fp32": diff, "fit_seconds": fit_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", default=["gradients", "long_fit", "probe"])
    p.add_argument("--long-epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--cache", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/bf16_check.json")
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {
        "command": " ".join(["python benchmarks/bf16_check.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine("cpu"),
    }
    if args.out.exists():
        prev = json.loads(args.out.read_text())
        keep = ("gradients", "long_fit", "probe")
        out.update({k: v for k, v in prev.items() if k in keep})
    if "gradients" in args.only:
        out["gradients"] = check_gradients()
    if "long_fit" in args.only:
        out["long_fit"] = check_long_fit(args.long_epochs)
    if "probe" in args.only:
        out["probe"] = check_probe(args.seeds, args.splits, args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
