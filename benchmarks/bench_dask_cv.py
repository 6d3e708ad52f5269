#!/usr/bin/env python
"""Wall time of a small grid search: serial vs a 2-worker Dask cluster.

The workload is a ``GridSearchCV`` over
``Pipeline([YAwarePretrainer(backbone="small3d"), Ridge()])`` on a cohort of
NIfTI files given as a 1-D array of paths (the workers read the files), with
age as both the y-Aware metadata and the probe's target; the grid is over the
kernel width ``ssl__sigma`` and the learning rate ``ssl__lr``.

It is run

1. **serially** in this process (``n_jobs=1``, ``--threads`` torch threads);
2. on a ``dask.distributed.LocalCluster`` of ``--workers`` worker
   processes with one thread each, on 127.0.0.1, through joblib's Dask
   backend: once right after the cluster started (**cold**: the workers
   import torch and the library during the first tasks) and once more
   (**warm**). This is done twice, with two clusters: with Dask's default
   worker environment (``dask_default``: the nanny sets
   ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc return memory eagerly
   and slows torch's CPU training) and with that variable removed through
   ``distributed.nanny.pre-spawn-environ`` (``malloc_trim_unset``).

It reports the wall times, the speed-ups serial / warm, the clusters'
start-up times, and whether the cross-validation results equal the serial ones (they
must: same ``random_state``, one process per fit). It writes a JSON file
(``--out``) and prints a short summary. See ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_dask_cv.py            # 48 subjects of 32^3, 3 folds
    python benchmarks/bench_dask_cv.py --quick    # 24 subjects of 16^3
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import joblib
import nibabel as nib
import numpy as np
import torch
from _bench_common import (  # noqa: E402
    cpu_model as _cpu_model,
    loadavg as _loadavg,
    usable_cores as _usable_cores,
)
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

import sklearn_cl3d
from sklearn_cl3d import YAwarePretrainer


def _cohort(root, n, size, seed=0):
    """n random NIfTI volumes of size^3 with a bright blob growing with age."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, size=n)
    grid = np.indices((size,) * 3).astype(np.float32) - (size - 1) / 2
    radius2 = (grid**2).sum(axis=0)
    paths = []
    for i, a in enumerate(age):
        r = size * (0.15 + 0.2 * (a - 20) / 60)
        vol = (radius2 < r**2).astype(np.float32)
        vol += 0.5 * rng.standard_normal(vol.shape, dtype=np.float32)
        path = Path(root) / f"sub-{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
        paths.append(str(path))
    return np.array(paths), age


def _search(cfg):
    ssl = YAwarePretrainer(
        backbone="small3d",
        max_epochs=cfg["epochs"],
        batch_size=8,
        device="cpu",
        random_state=0,
    )
    pipe = Pipeline([("ssl", ssl), ("reg", Ridge(alpha=1.0))])
    grid = {"ssl__sigma": [2.0, 10.0], "ssl__lr": [1e-4, 1e-3]}
    cv = KFold(cfg["folds"], shuffle=True, random_state=0)
    return GridSearchCV(pipe, grid, cv=cv, n_jobs=1 if cfg["serial"] else -1)


def _timed_fit(cfg, X, y):
    search = _search(cfg)
    t0 = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - t0, search


def _worker_trim():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def _dask_runs(cfg, X, y, setting):
    """Start a LocalCluster, run the search twice (cold, warm), close it.

    ``setting="dask_default"`` keeps Dask's ``MALLOC_TRIM_THRESHOLD_=65536``
    in the worker processes (``distributed.nanny.pre-spawn-environ``);
    ``"malloc_trim_unset"`` removes it, so glibc keeps its dynamic thresholds.
    """
    import dask
    import distributed

    conf = {}
    if setting == "malloc_trim_unset":
        conf = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    saved = dict(os.environ)  # the nanny writes its variables into os.environ
    t0 = time.perf_counter()
    try:
        with dask.config.set(conf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster = distributed.LocalCluster(
                n_workers=cfg["workers"],
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    client = distributed.Client(cluster)
    out = {"start_s": time.perf_counter() - t0}
    try:
        out["trim"] = sorted(set(client.run(_worker_trim).values()), key=str)
        with joblib.parallel_backend("dask"):
            for kind in ("cold", "warm"):
                print(f"  grid search ({kind} workers) ...", flush=True)
                out[f"{kind}_s"], out[kind] = _timed_fit({**cfg, "serial": False}, X, y)
    finally:
        client.close()
        cluster.close()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=48)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="serial run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results/bench_dask_cv.json")
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.subjects, args.size, args.epochs = 24, 16, 2
    import distributed  # noqa: F401  (the [distributed] extra)

    torch.set_num_threads(args.threads)
    cfg = {
        "subjects": args.subjects,
        "size": args.size,
        "epochs": args.epochs,
        "folds": args.folds,
        "grid": {"ssl__sigma": [2.0, 10.0], "ssl__lr": [1e-4, 1e-3]},
        "fits": 4 * args.folds + 1,
        "workers": args.workers,
        "threads_per_worker": 1,
        "serial_threads": args.threads,
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "usable_cores": _usable_cores(),
        "torch": torch.__version__,
        "dask": __import__("dask").__version__,
        "distributed": distributed.__version__,
        "sklearn_cl3d": sklearn_cl3d.__version__,
        "loadavg_at_start": _loadavg(),
    }
    with tempfile.TemporaryDirectory() as root:
        X, y = _cohort(root, args.subjects, args.size)

        print("serial grid search ...", flush=True)
        t_serial, serial = _timed_fit({**cfg, "serial": True}, X, y)

        runs = {}
        for setting in ("dask_default", "malloc_trim_unset"):
            print(f"[{setting}] LocalCluster of {args.workers} workers", flush=True)
            runs[setting] = _dask_runs(cfg, X, y, setting)

    key = "mean_test_score"
    diffs = [
        float(np.max(np.abs(run[k].cv_results_[key] - serial.cv_results_[key])))
        for run in runs.values()
        for k in ("cold", "warm")
    ]
    same = all(
        run[k].best_params_ == serial.best_params_
        for run in runs.values()
        for k in ("cold", "warm")
    )
    machine["loadavg_at_end"] = _loadavg()
    results = {
        "serial_s": t_serial,
        "same_best_params": same,
        "max_abs_diff_mean_test_score": max(diffs),
        "best_params": serial.best_params_,
        "mean_test_score_serial": serial.cv_results_[key].tolist(),
    }
    for setting, run in runs.items():
        results[setting] = {
            "malloc_trim_threshold_in_workers": run["trim"],
            "cluster_start_s": run["start_s"],
            "cold_s": run["cold_s"],
            "warm_s": run["warm_s"],
            "speedup_serial_over_warm": t_serial / run["warm_s"],
            "speedup_serial_over_cold": t_serial / run["cold_s"],
        }
    report = {
        "benchmark": "bench_dask_cv",
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "config": cfg,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{cfg['fits']} fits: serial {t_serial:.1f} s")
    for setting in runs:
        r = results[setting]
        print(
            f"  {setting:18s} {args.workers} workers: cold {r['cold_s']:.1f} s, "
            f"warm {r['warm_s']:.1f} s (serial / warm x"
            f"{r['speedup_serial_over_warm']:.2f}); start {r['cluster_start_s']:.1f} s"
        )
    print(f"  same results as serial: {same} (max |diff| {max(diffs):.1e})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
