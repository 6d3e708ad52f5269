#!/usr/bin/env python
"""``compile=True``: what compiling costs in the first process on a machine
and in the next ones, against eager.

PyTorch's inductor keeps what it compiles in an on-disk cache (the FX graph
and AOTAutograd caches, on by default in torch 2.13) under
``TORCHINDUCTOR_CACHE_DIR`` (default ``/tmp/torchinductor_<user>``), so a
later process on the same machine skips code generation and compilation.
Each side fits ``YAwarePretrainer(compile=...)`` in a fresh process
(``_harness.py``: sides alternating over ``--repeats`` rounds) and reports
``first_step_s``, the time from the start of training to the end of the
first batch (tracing and compiling included), besides the median step after
``--warmup`` steps:

- ``compile_cold``: ``compile=True`` with the cache folder ``--cache-dir``
  emptied first: the first process on a machine;
- ``compile_warm``: ``compile=True`` with that folder as the previous cold
  run left it (the first round runs the cold side first, later rounds
  alternate, so the warm side always finds it filled); ``cache_entries``
  says how many files it found;
- ``eager``: ``compile=False``.

Usage::

    python benchmarks/bench_compile_cache.py                 # small3d, 32³
    python benchmarks/bench_compile_cache.py --backbone densenet121 --size 64
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import StepClock, main, skorch_ticker


def _count_files(folder):
    return sum(len(files) for _, _, files in os.walk(folder))


def _fit(cfg, compile_, cache=None):
    if cache is not None:
        # read by inductor when it first needs the cache, after this point
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    from sklearn_cl3d import YAwarePretrainer

    rng = np.random.default_rng(0)
    n = cfg["pairs"] * (cfg["warmup"] + cfg["steps"])
    x = rng.standard_normal((n, 1) + (cfg["size"],) * 3, dtype=np.float32)
    age = rng.uniform(20, 80, size=n)
    clock = StepClock(cfg["warmup"])
    ticker = skorch_ticker(clock)
    est = YAwarePretrainer(
        backbone=cfg["backbone"],
        batch_size=cfg["pairs"],
        augmentation="none",
        max_epochs=1,
        compile=compile_,
        random_state=0,
        device="cpu",
        verbose=0,
        callbacks=[("tick", ticker)],
    )
    entries = None if cache is None else _count_files(cache)
    t0 = time.perf_counter()
    est.fit(x, age)
    fit_s = time.perf_counter() - t0
    rec = clock.result()
    return {
        **rec,
        # one untimed step (configure): the fit minus the timed steps
        "first_step_s": fit_s - sum(clock.wall),
        "fit_s": fit_s,
        "cache_entries": entries,
        "cache_entries_after": None if cache is None else _count_files(cache),
    }


def cold(cfg):
    shutil.rmtree(cfg["cache_dir"], ignore_errors=True)
    Path(cfg["cache_dir"]).mkdir(parents=True)
    return _fit(cfg, True, cfg["cache_dir"])


def warm(cfg):
    Path(cfg["cache_dir"]).mkdir(parents=True, exist_ok=True)
    return _fit(cfg, True, cfg["cache_dir"])


SIDES = {
    "compile_cold": cold,
    "compile_warm": warm,
    "eager": lambda cfg: _fit(cfg, False),
}


def add_arguments(parser):
    parser.add_argument("--backbone", default="small3d")
    parser.add_argument("--size", type=int, default=32, help="volume side")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="inductor cache folder of the compiled sides (default: a new "
        "temporary folder)",
    )


def configure(args, parser):
    # the first step is measured as the fit minus the timed steps: exactly one
    # untimed step
    args.warmup = 1
    if args.cache_dir is None:
        args.cache_dir = tempfile.mkdtemp(prefix="bench_compile_cache_")


if __name__ == "__main__":
    main(
        __file__,
        SIDES,
        add_arguments,
        "measured/compile_cache_cpu.json",
        baseline="eager",
        configure=configure,
        notes={
            "first_step_s": "from the start of fit to the end of the first "
            "batch (data set-up, tracing and compiling included)",
        },
    )
