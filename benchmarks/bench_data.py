"""Data-layer benchmark: loader throughput, bounded memory, cohort generation.

Measures, and writes as JSON:

1. volumes/s through ``VolumeDataset`` + ``DataLoader`` for an in-memory array
   and for the same volumes as ``.nii.gz`` and ``.npy`` paths, with 0 and 2
   workers (the in-memory array is the baseline of the ratios);
2. the peak RSS of a fresh process that iterates over a cohort of NIfTI paths
   whose total decompressed size is larger than a memory cap, without cache:
   lazy loading keeps the peak far below the cohort size;
3. ``make_brain_cohort`` generation time per subject at 4 mm (and 2 mm unless
   ``--quick``);
4. the on-disk volume cache (``VolumeDataset(cache=<folder>)``): volumes/s
   from ``.nii.gz`` paths (int16 MRI-like volumes, ``CropOrPad`` to their own
   shape as the preprocessing) without cache, with an empty cache (first
   epoch: decode and write) and with a filled cache (later epochs), with 0
   and 2 workers (``--workers``), at 64³ and at the full 121×145×121, next
   to the training step's demand: the subjects per second one y-Aware step
   consumes, read from a ``bench_yaware.py`` JSON (``--demand-json``,
   default the H100 run at 64³) and, for the other size, scaled by the
   voxel count (marked ``"estimated": true``).

Usage::

    python benchmarks/bench_data.py               # full run
    python benchmarks/bench_data.py --quick       # seconds, smoke test
    python benchmarks/bench_data.py --workers 0 8 --skip-generation  # GPU host
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _bench_common import cpu_model
from torch.utils.data import DataLoader

from sklearn_cl3d.data import as_volume_dataset


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_cohort(folder, n, shape, rng, fmt):
    paths = []
    for i in range(n):
        vol = rng.normal(size=shape).astype(np.float32)
        if fmt == "npy":
            p = folder / f"sub-{i:04d}.npy"
            np.save(p, vol)
        else:
            p = folder / f"sub-{i:04d}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
        paths.append(str(p))
    return paths


def _throughput(source, batch_size, workers, repeats):
    ds = as_volume_dataset(source)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    n = 0
    t0 = time.perf_counter()
    for _ in range(repeats):
        for xb, _ in loader:
            n += xb.shape[0]
    return n / (time.perf_counter() - t0)


def _iterate_paths(paths, batch_size, queue):
    before = _peak_rss_mib()
    ds = as_volume_dataset(paths, cache=False)
    total = 0.0
    for xb, _ in DataLoader(ds, batch_size=batch_size, num_workers=0):
        total += float(xb.sum())
    queue.put({"rss_before_mib": before, "peak_rss_mib": _peak_rss_mib()})


def bench_loader(args, rng, folder):
    shape = (args.size,) * 3
    X = rng.normal(size=(args.n, *shape)).astype(np.float32)
    sources = {"array": X}
    sources["nii.gz paths"] = _write_cohort(folder / "nii", args.n, shape, rng, "nii")
    sources["npy paths"] = _write_cohort(folder / "npy", args.n, shape, rng, "npy")
    rows = []
    for name, src in sources.items():
        for workers in args.workers:
            vps = _throughput(src, args.batch_size, workers, args.repeats)
            rows.append({"source": name, "workers": workers, "volumes_per_s": vps})
            print(f"  {name:<13} workers={workers}: {vps:8.1f} volumes/s")
    base = {r["workers"]: r["volumes_per_s"] for r in rows if r["source"] == "array"}
    for r in rows:
        r["ratio_to_array"] = r["volumes_per_s"] / base[r["workers"]]
    return {"shape": list(shape), "n_volumes": args.n, "rows": rows}


def bench_bounded_memory(args, rng, folder):
    shape = (args.cap_size,) * 3
    vol_mib = np.prod(shape) * 4 / 2**20
    n = int(np.ceil(args.cap_mib * args.cap_factor / vol_mib))
    paths = _write_cohort(folder / "big", n, shape, rng, "nii")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_iterate_paths, args=(paths, args.batch_size, queue))
    proc.start()
    out = queue.get()
    proc.join()
    cohort_mib = n * vol_mib
    growth = out["peak_rss_mib"] - out["rss_before_mib"]
    result = {
        "shape": list(shape),
        "n_volumes": n,
        "cohort_decompressed_mib": cohort_mib,
        "memory_cap_mib": args.cap_mib,
        **out,
        "rss_growth_mib": growth,
        "growth_below_cap": bool(growth < args.cap_mib),
    }
    print(
        f"  {n} volumes, {cohort_mib:.0f} MiB decompressed (cap {args.cap_mib} MiB): "
        f"peak RSS {out['peak_rss_mib']:.0f} MiB, growth {growth:.0f} MiB"
    )
    return result


def bench_generation(args):
    from sklearn_cl3d.datasets import make_brain_cohort

    rows = []
    make_brain_cohort(2, resolution=4, random_state=0)  # template bank
    for res, n in [(4, args.gen_n)] if args.quick else [(4, args.gen_n), (2, 20)]:
        t0 = time.perf_counter()
        make_brain_cohort(n, resolution=res, random_state=0)
        dt = time.perf_counter() - t0
        rows.append({"resolution_mm": res, "n_subjects": n, "s_per_subject": dt / n})
        print(f"  make_brain_cohort at {res} mm: {dt / n * 1000:.0f} ms per subject")
    return rows


FULL_SHAPE = (121, 145, 121)


def _mri_like(rng, shape):
    """An int16 volume that compresses like an MRI: smooth blocks plus noise."""
    coarse = rng.normal(size=[-(-s // 8) for s in shape]) * 300 + 1000
    vol = coarse.repeat(8, 0).repeat(8, 1).repeat(8, 2)[: shape[0], : shape[1]]
    vol = vol[..., : shape[2]] + rng.normal(scale=20, size=shape)
    vol[: shape[0] // 8] = 0  # background
    return vol.astype(np.int16)


def _epoch_vps(ds, batch_size, workers):
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    n, t0 = 0, time.perf_counter()
    for xb, _ in loader:
        n += xb.shape[0]
    return n / (time.perf_counter() - t0)


def _demand(args, shape):
    """Subjects per second one training step consumes, with its source."""
    try:
        with open(args.demand_json) as fh:
            ref = json.load(fh)
        size = int(ref["config"]["size"])
        if "runs" in ref:  # bench_yaware.py on the harness: its library_step
            rates = [r["pairs_per_s"] for r in ref["runs"]
                     if r.get("side") == "library_step" and "pairs_per_s" in r]
            per_s = float(np.median(rates)) if rates else float("nan")
        else:  # the JSON of bench_yaware.py before the harness
            step = ref["results"]["train_step"]
            per_s = step["pairs_per_step"] / step["step_wall_s"]["median"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    if not np.isfinite(per_s):
        return None
    voxels, ref_voxels = float(np.prod(shape)), float(size**3)
    return {
        "subjects_per_s": per_s * ref_voxels / voxels,
        "source": args.demand_json,
        "device": ref.get("machine", {}).get("device_name"),
        "reference_shape": [size] * 3,
        "estimated": voxels != ref_voxels,
    }


def bench_cache(args, rng, folder):
    from sklearn_cl3d.data import CropOrPad

    shapes = [(args.size,) * 3, FULL_SHAPE]
    if args.quick:
        shapes = [(24, 24, 24), (30, 36, 30)]
    rows = []
    for shape in shapes:
        sub = folder / ("cache_" + "x".join(map(str, shape)))
        sub.mkdir()
        n = args.cache_n if shape != FULL_SHAPE else max(8, args.cache_n // 4)
        paths = []
        for i in range(n):
            p = sub / f"sub-{i:04d}.nii.gz"
            nib.save(nib.Nifti1Image(_mri_like(rng, shape), np.eye(4)), p)
            paths.append(str(p))
        prep = [CropOrPad(shape)]
        demand = _demand(args, shape)
        for workers in args.workers:
            cache = sub / f"cache_w{workers}"
            runs = {
                "no cache": (VolumeDatasetFactory(paths, prep, None), 1),
                "empty cache (first epoch)": (
                    VolumeDatasetFactory(paths, prep, cache),
                    1,
                ),
                "filled cache": (
                    VolumeDatasetFactory(paths, prep, cache),
                    args.repeats,
                ),
            }
            for name, (make, reps) in runs.items():
                vps = [
                    _epoch_vps(make(), args.batch_size, workers) for _ in range(reps)
                ]
                row = {
                    "shape": list(shape),
                    "n_volumes": n,
                    "workers": workers,
                    "reading": name,
                    "volumes_per_s": float(np.median(vps)),
                    "volumes_per_s_all": vps,
                }
                if demand is not None:
                    row["demand_subjects_per_s"] = demand["subjects_per_s"]
                    row["supply_over_demand"] = (
                        row["volumes_per_s"] / demand["subjects_per_s"]
                    )
                rows.append(row)
                extra = (
                    f" ({row['supply_over_demand']:.1f}x the step's demand)"
                    if demand
                    else ""
                )
                print(
                    f"  {'x'.join(map(str, shape))} workers={workers} {name:<26}"
                    f" {row['volumes_per_s']:8.1f} volumes/s{extra}"
                )
        if demand is not None:
            rows.append({"shape": list(shape), "demand": demand})
    return rows


class VolumeDatasetFactory:
    """A new dataset per epoch, as the estimators build one per fit."""

    def __init__(self, paths, prep, cache):
        self.paths, self.prep, self.cache = paths, prep, cache

    def __call__(self):
        return as_volume_dataset(
            self.paths, preprocessing=self.prep, cache=self.cache or False
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=64, help="volumes for throughput")
    parser.add_argument("--size", type=int, default=64, help="edge of those volumes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cap-mib", type=int, default=512)
    parser.add_argument("--cap-factor", type=float, default=1.5)
    parser.add_argument("--cap-size", type=int, default=96)
    parser.add_argument("--gen-n", type=int, default=50)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2],
        help="DataLoader worker counts to measure (default 0 2; the first is "
        "the ratios' baseline)",
    )
    parser.add_argument("--skip-cache", action="store_true")
    parser.add_argument(
        "--cache-n", type=int, default=64, help="volumes of the cache part (64³)"
    )
    parser.add_argument(
        "--demand-json",
        default="benchmarks/measured/bench_yaware_h100.json",
        help="bench_yaware.py JSON whose training step sets the demand",
    )
    parser.add_argument("--out", default="benchmarks/results/bench_data.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.size, args.repeats = 16, 24, 1
        args.cap_mib, args.cap_size, args.gen_n = 16, 32, 4
        args.cache_n = 8

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    result = {
        "benchmark": "bench_data",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "torch": torch.__version__,
        },
        "config": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for sub in ("nii", "npy", "big"):
            (folder / sub).mkdir()
        print("loader throughput:")
        result["loader"] = bench_loader(args, rng, folder)
        print("bounded memory over a cohort of paths:")
        result["bounded_memory"] = bench_bounded_memory(args, rng, folder)
        if not args.skip_cache:
            print("on-disk volume cache (.nii.gz sources):")
            result["cache"] = bench_cache(args, rng, folder)
    if not args.skip_generation:
        print("cohort generation:")
        result["generation"] = bench_generation(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2, default=float))
    tmp_out.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
