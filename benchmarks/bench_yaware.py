#!/usr/bin/env python
"""y-Aware augmentation per view, the library against the official code
itself, and the library's training step split into its phases.

Every side runs in a fresh process; the sides alternate over ``--repeats``
rounds (see ``_harness.py``). The augmentation sides work on the same
``--aug-batch`` random z-scored volumes, of 1 x ``--size``³ (``small``) and
of 1 x 121 x 145 x 121 (``full``, the official input size), and report the
time per view (``"unit": "view"``): ``--aug-warmup`` untimed then
``--aug-reps`` timed passes over the batch, each pass divided by the views
it made (two per subject).

Sides:

- ``official_{cutout,all}_{small,full}``: with ``--official PATH`` (a
  checkout of https://github.com/Duplums/yAwareContrastiveLearning, 7f6b3c6),
  the official ``dataset.MRIDataset`` with ``tf="cutout"`` or
  ``tf="all_tf"``, reading the volumes from the ``.npy`` file it loads (and
  the ages from its CSV). A pass calls its ``__getitem__`` once per subject,
  what each DataLoader worker runs: NumPy reseeded from OS entropy, two
  views through its ``augmentations.Transformer`` (``Normalize``, then
  ``Cutout`` with p 1 for ``"cutout"``; ``Flip``, ``Blur``, ``Noise``,
  ``Cutout``, ``Crop`` with resize, each with p 0.5, for ``"all_tf"``), and
  the stack of the two. NumPy/SciPy/scikit-image on one core, as in one
  worker. No patch is needed; it needs the official code's dependencies
  (scikit-image, pandas).
- ``library_{cutout,all}_{small,full}``: what ``YAwarePretrainer``'s step
  does with the batch: ``sklearn_cl3d.augment.ZScore`` once, then the
  ``make_augmentation(preset)`` views twice, batched on ``--device`` (on the
  CPU inside ``cpu_heap_reuse``, as the estimators run them), with
  ``--threads`` torch threads.
- ``library_step``: ``YAwarePretrainer(backbone="densenet121",
  augmentation="cutout")`` fitted on ``--pairs`` x (``--warmup`` +
  ``--steps``) volumes of 1 x ``--size``³ on ``--device``; the step time
  (between two batch ends, warm-up excluded), pairs/s, peak RSS (and CUDA
  memory), then the step split into its phases on one of its batches
  (``_harness.step_breakdown``: prepare, views, forward, loss, backward,
  optimizer, and the rest). The whole step against the official loop is
  ``bench_yaware_official.py``.

Usage::

    python benchmarks/bench_yaware.py --official /path/to/yAwareContrastiveLearning
    python benchmarks/bench_yaware.py --sides library_step --device cuda
    python benchmarks/bench_yaware.py --quick --repeats 1 --official ...
"""

from __future__ import annotations

import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from _bench_common import gib, synchronizer
from _harness import StepClock, main, skorch_ticker, step_breakdown

FULL_SHAPE = (121, 145, 121)  # the official input size (CAT12 VBM, 1.5 mm)
OFFICIAL_TF = {"cutout": "cutout", "all": "all_tf"}
TINY_DENSENET = {  # --quick
    "backbone__growth_rate": 8,
    "backbone__block_config": [1, 1, 1, 1],
    "backbone__num_init_features": 16,
}


def _volumes(n, shape, seed):
    """``n`` random volumes (n, 1, *shape), float32, each z-scored."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, *shape), dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    x -= x.mean(axis=axes, keepdims=True)
    x /= x.std(axis=axes, keepdims=True)
    return x


def _shape(cfg, which):
    return tuple(cfg["size_shape"] if which == "small" else cfg["full_shape"])


def _per_view(clock, views, **extra):
    """The clock's per-pass record divided by the views of a pass."""
    rec = clock.result()
    rec["step_wall_s"] /= views
    rec["step_cpu_s"] /= views
    rec["steps_wall_s"] = [t / views for t in rec["steps_wall_s"]]
    return {**rec, "unit": "view", "views_per_pass": views, **extra}


def official_views(cfg, preset, which):
    import pandas as pd

    sys.path.insert(0, str(Path(cfg["official"]).resolve()))
    from dataset import MRIDataset

    shape, n = _shape(cfg, which), cfg["aug_batch"]
    with tempfile.TemporaryDirectory() as tmp:  # the dataset loads it whole
        folder = Path(tmp)
        np.save(folder / "x.npy", _volumes(n, shape, seed=2))
        pd.DataFrame({"age": np.linspace(20, 80, n)}).to_csv(folder / "y.csv")
        config = types.SimpleNamespace(
            tf=OFFICIAL_TF[preset],
            input_size=(1, *shape),
            data_train=str(folder / "x.npy"),
            label_train=str(folder / "y.csv"),
            label_name="age",
        )
        dataset = MRIDataset(config, training=True)
    clock = StepClock(cfg["aug_warmup"])
    for _ in range(cfg["aug_warmup"] + cfg["aug_reps"]):
        clock.start()
        for i in range(n):
            pair, _ = dataset[i]
        clock.stop()
    return _per_view(
        clock,
        2 * n,
        shape=[1, *shape],
        official_tf=config.tf,
        view_dtype=str(pair.dtype),
        patches=[],
    )


def library_views(cfg, preset, which):
    from sklearn_cl3d._heap import cpu_heap_reuse
    from sklearn_cl3d.augment import ZScore, make_augmentation

    device = torch.device(cfg["device"])
    sync = synchronizer(device)
    shape, n = _shape(cfg, which), cfg["aug_batch"]
    xb = torch.as_tensor(_volumes(n, shape, seed=2)).to(device)
    zscore, augment = ZScore(), make_augmentation(preset)
    gen = torch.Generator(device=device).manual_seed(0)
    clock = StepClock(cfg["aug_warmup"])
    with cpu_heap_reuse(device.type == "cpu"):
        for _ in range(cfg["aug_warmup"] + cfg["aug_reps"]):
            sync()
            clock.start()
            z = zscore(xb)
            augment(z, generator=gen)
            augment(z, generator=gen)
            sync()
            clock.stop()
    cuda = gib(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None
    return _per_view(clock, 2 * n, shape=[1, *shape], cuda_max_allocated_gib=cuda)


def library_step(cfg):
    from sklearn_cl3d import YAwarePretrainer

    device = cfg["device"]
    n = cfg["pairs"] * (cfg["warmup"] + cfg["steps"])
    x = _volumes(n, _shape(cfg, "small"), seed=0)
    age = np.random.default_rng(1).uniform(20.0, 80.0, size=n).astype(np.float32)
    clock, kept = StepClock(cfg["warmup"]), []
    est = YAwarePretrainer(
        backbone="densenet" if cfg["quick"] else "densenet121",
        batch_size=cfg["pairs"],
        augmentation="cutout",
        max_epochs=1,
        random_state=0,
        device=device,
        verbose=0,
        callbacks=[("tick", skorch_ticker(clock, keep=kept))],
        **(TINY_DENSENET if cfg["quick"] else {}),
    )
    t0 = time.perf_counter()
    est.fit(x, age)
    rec = clock.result()  # the peak RSS of the fit, before the breakdown
    step_s = rec["step_wall_s"]
    rec.update(
        fit_s=time.perf_counter() - t0,
        input_shape=[1, *_shape(cfg, "small")],
        pairs_per_step=cfg["pairs"],
        pairs_per_s=cfg["pairs"] / step_s,
        n_parameters=sum(p.numel() for p in est.module_.parameters()),
        dataset_bytes=int(x.nbytes),
    )
    if torch.device(device).type == "cuda":
        rec["cuda_max_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
    rec["breakdown"] = step_breakdown(est, kept[0], step_s, reps=cfg["breakdown_reps"])
    return rec


SIDES, BASELINES = {}, {}
for _which in ("small", "full"):
    for _preset in ("cutout", "all"):
        _tag = f"{_preset}_{_which}"
        SIDES["official_" + _tag] = lambda cfg, p=_preset, w=_which: official_views(
            cfg, p, w
        )
        SIDES["library_" + _tag] = lambda cfg, p=_preset, w=_which: library_views(
            cfg, p, w
        )
        BASELINES["library_" + _tag] = "official_" + _tag
SIDES["library_step"] = library_step


def add_arguments(parser):
    parser.add_argument(
        "--device", default="cpu", help="library sides: cpu or cuda (default cpu)"
    )
    parser.add_argument("--size", type=int, default=64, help="side of 'small'")
    parser.add_argument("--aug-batch", type=int, default=8, help="subjects per pass")
    parser.add_argument("--aug-reps", type=int, default=5, help="timed passes")
    parser.add_argument("--aug-warmup", type=int, default=1, help="untimed passes")
    parser.add_argument("--pairs", type=int, default=8, help="library_step: batch")
    parser.add_argument("--steps", type=int, default=6, help="library_step: timed")
    parser.add_argument("--warmup", type=int, default=2, help="library_step: untimed")
    parser.add_argument(
        "--breakdown-reps", type=int, default=5, help="library_step: phase timings"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 32³ and 48x56x48, batch 2, 1 + 2 passes; a small "
        "DenseNet, 2 pairs, 1 + 2 steps",
    )


def configure(args, parser):
    full = FULL_SHAPE
    if args.quick:
        args.size, full = 32, (48, 56, 48)
        args.aug_batch, args.aug_reps, args.aug_warmup = 2, 2, 1
        args.pairs, args.steps, args.warmup, args.breakdown_reps = 2, 2, 1, 2
    args.size_shape, args.full_shape = [args.size] * 3, list(full)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    for name in ("size", "aug_batch", "aug_reps", "pairs", "steps", "breakdown_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.aug_warmup < 0 or args.warmup < 0:
        parser.error("--aug-warmup and --warmup must be >= 0")


if __name__ == "__main__":
    main(
        __file__,
        SIDES,
        add_arguments,
        "benchmarks/results/bench_yaware.json",
        baseline=BASELINES,
        configure=configure,
    )
