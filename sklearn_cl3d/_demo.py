"""The main job: does y-Aware pretraining help a diagnosis with few labels?

The cohort (:func:`sklearn_cl3d.datasets.make_brain_cohort`) is synthetic
MRI built offline from the MNI152 templates: the diagnosis is *accelerated
ageing* (brain age ahead of age), so age alone carries no diagnostic
information while the images show brain age (T1 images at 8 mm for CPUs).
Encoders are pretrained on an unlabelled part with age as the only metadata,
with several pretraining seeds; a logistic regression on [frozen features,
age] is then trained on labelled subsets of several sizes and scored on
held-out subjects (:func:`sklearn_cl3d.evaluation.label_efficiency`). The
same probe runs on simple baselines fitted on the same unlabelled subjects
(age alone, PCA of the voxels, and a ridge regression of age on the voxels:
the supervised "brain-age" reference), and the paired differences of y-Aware
to each of them are given with bootstrap 95 % confidence intervals over
pretraining seeds and splits
(:func:`sklearn_cl3d.evaluation.paired_differences`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .evaluation import label_efficiency, paired_differences, summarize
from .evaluation._runs import (  # noqa: F401 (re-exported: old import paths)
    PRESETS,
    RANDOM,
    SIMCLR,
    YAWARE,
    _EpochLog,
    _fmt_ci,
    _json_default,
    _machine,
    _n_labelled,
    _network_makers,
    _plot,
    _pretrain,
    _write_json,
)

__all__ = ["PRESETS", "DemoConfigError", "run_demo"]

#: Voxels per volume of the cohort at each resolution (mm).
_VOXELS = {2: 99 * 117 * 95, 4: 50 * 59 * 48, 8: 25 * 30 * 24}


class DemoConfigError(ValueError):
    """A demo setting that cannot work, found before any computation."""


#: Row order of the printed table.
AGE = "age only"
PCA = "PCA(50) + age"
BRAIN_AGE = "brain-age reference"
METHODS = (AGE, PCA, BRAIN_AGE, RANDOM, SIMCLR, YAWARE)


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def _check_config(
    n_unlabelled,
    label_counts,
    max_epochs,
    resolution,
    n_seeds,
    n_repeats,
    test_size,
    random_state,
    out_dir,
):
    """Refuse settings that cannot work, before generating anything."""

    def positive(value, name, low=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DemoConfigError(f"{name} must be an integer >= {low}; got {value!r}.")

    positive(n_unlabelled, "n_unlabelled")
    positive(max_epochs, "max_epochs", 0)
    positive(n_seeds, "n_seeds")
    positive(n_repeats, "n_repeats")
    positive(random_state, "random_state", 0)
    if not label_counts:
        raise DemoConfigError("label_counts is empty.")
    for n in label_counts:
        # a stratified draw and a logistic regression need a few of each class
        positive(n, "every number of labels (label_counts)", 10)
    if resolution not in _VOXELS:
        raise DemoConfigError(
            f"resolution must be one of {sorted(_VOXELS)} (mm); got {resolution!r}."
        )
    if not (isinstance(test_size, float) and 0.0 < test_size < 1.0):
        raise DemoConfigError(
            f"test_size must be a float in (0, 1); got {test_size!r}."
        )
    n_total = n_unlabelled + _n_labelled(max(label_counts), test_size)
    need = n_total * _VOXELS[resolution] * 4  # float32 volumes, held in memory
    have = _physical_memory()
    if have is not None and need > 0.5 * have:
        raise DemoConfigError(
            f"{n_total} subjects at {resolution} mm need {need / 2**30:.1f} GiB in "
            f"memory, more than half of this machine's {have / 2**30:.1f} GiB: use "
            "fewer labels (--labels), fewer unlabelled subjects (--n-unlabelled) "
            "or a coarser resolution."
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DemoConfigError(
            f"out_dir {str(out)!r} exists and is not a folder: choose another "
            "output folder (--out)."
        )


def run_demo(
    preset="cpu",
    n_unlabelled=None,
    label_counts=None,
    max_epochs=None,
    resolution=None,
    n_seeds=None,
    n_repeats=None,
    test_size=0.25,
    device="auto",
    random_state=0,
    out_dir="demo_output",
    log=print,
):
    """Pretrain encoders with several seeds, then compare linear probes.

    For each pretraining seed, y-Aware and SimCLR are pretrained on the
    unlabelled subjects (age as y-Aware's metadata), and a network of the
    same architecture is left untrained ("random network"). Baselines fitted
    on the same unlabelled subjects: PCA of the z-scored voxels
    (:class:`~sklearn_cl3d.baselines.VoxelPCA`, 50 components) and a ridge
    regression of age on 200 voxel principal components
    (:class:`~sklearn_cl3d.baselines.VoxelProxyRegression`, the supervised
    "brain-age" reference: the probe sees the predicted and the true age, so
    the gap between them). Every method is scored with
    :func:`~sklearn_cl3d.evaluation.label_efficiency` (protocol
    ``"linear_probe"``: standardisation + logistic regression on the
    features and age): for each of ``n_repeats`` stratified shuffle splits,
    ``test_size`` of the labelled subjects are held out and ``n`` subjects
    drawn (stratified) from the rest train the probe. The table gives the
    mean and standard deviation (``ddof=1``) of the ROC-AUC over seeds x
    splits; the paired differences of y-Aware to every other method come
    with bootstrap 95 % CIs resampling seeds and splits
    (:func:`~sklearn_cl3d.evaluation.paired_differences`).

    Parameters
    ----------
    preset : {"cpu", "paper"}, default="cpu"
        ``"cpu"``: small CNN on the 8 mm T1 images (about ten minutes on 2
        cores); ``"paper"``: DenseNet-121 with the paper's optimiser
        settings on 2 mm T1 images (needs a GPU). The other arguments
        override the preset.
    n_unlabelled : int, default=None
        Subjects used for pretraining (age only) and for the baselines.
    label_counts : tuple of int, default=None
        Numbers of labelled training subjects for the probe.
    max_epochs : int, default=None
        Pretraining epochs.
    resolution : {2, 4, 8}, default=None
        Cohort voxel size in mm.
    n_seeds : int, default=None
        Pretraining seeds per method (``random_state``, ``random_state + 1``,
        ...).
    n_repeats : int, default=None
        Random stratified splits of the probe evaluation.
    test_size : float, default=0.25
        Held-out fraction of the labelled subjects in every split; enough
        labelled subjects are generated for the largest label count to fit
        in the rest.
    device : str, default="auto"
        Torch device of the pretrainers.
    random_state : int, default=0
        Seed of the cohort, the splits and the first pretraining seed.
    out_dir : str or Path, default="demo_output"
        Where ``results.json`` and ``auc_vs_labels.png`` (with matplotlib)
        are written.
    log : callable, default=print
        Progress printer.

    Returns
    -------
    dict
        ``summary`` (one row per method and number of labels: mean, sd, n),
        ``differences`` (y-Aware minus each other method, with CIs),
        ``scores`` (every seed x split score) and ``seconds``.
    """
    from .baselines import VoxelPCA, VoxelProxyRegression
    from .datasets import make_brain_cohort

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}.")
    cfg = PRESETS[preset]
    n_unlabelled = cfg["n_unlabelled"] if n_unlabelled is None else n_unlabelled
    label_counts = tuple(cfg["label_counts"] if label_counts is None else label_counts)
    max_epochs = cfg["max_epochs"] if max_epochs is None else max_epochs
    resolution = cfg["resolution"] if resolution is None else resolution
    n_seeds = cfg["n_seeds"] if n_seeds is None else n_seeds
    n_repeats = cfg["n_repeats"] if n_repeats is None else n_repeats
    _check_config(
        n_unlabelled, label_counts, max_epochs, resolution, n_seeds, n_repeats,
        test_size, random_state, out_dir,
    )  # fmt: skip
    out = Path(out_dir)

    t0 = time.perf_counter()
    machine = _machine()
    log(
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}"
    )
    n_labelled = _n_labelled(max(label_counts), test_size)
    n_total = n_unlabelled + n_labelled
    log(
        f"Generating the brain cohort: {n_total} subjects, {cfg['modality']} maps "
        f"at {resolution} mm ..."
    )
    cohort = make_brain_cohort(
        n_total,
        resolution=resolution,
        modality=cfg["modality"],
        random_state=random_state,
    )
    X, age, dx = cohort.volumes, cohort.age, cohort.diagnosis
    log(f"  volumes {X.shape[2:]} in {time.perf_counter() - t0:.0f} s")
    X_pre, age_pre = X[:n_unlabelled], age[:n_unlabelled]
    X_lab, dx_lab, age_lab = X[n_unlabelled:], dx[n_unlabelled:], age[n_unlabelled:]

    seeds = [random_state + k for k in range(n_seeds)]
    common = dict(cfg["estimator"], device=device, verbose=0)
    fit_seconds = {}
    t = time.perf_counter()
    log(f"Fitting the voxel baselines on {n_unlabelled} unlabelled subjects ...")
    pca = VoxelPCA(min(50, n_unlabelled), random_state=random_state).fit(X_pre)
    brain_age = VoxelProxyRegression(
        min(200, n_unlabelled), random_state=random_state
    ).fit(X_pre, age_pre)
    fit_seconds["baselines"] = [time.perf_counter() - t]
    makers = _network_makers(common, max_epochs, sigma=5.0)
    methods = {AGE: None, PCA: pca, BRAIN_AGE: brain_age}
    for name in (RANDOM, SIMCLR, YAWARE):
        methods[name] = _pretrain(
            name, makers[name], seeds, X_pre, age_pre, log, fit_seconds
        )

    # the diagnosis is brain age relative to age: every probe gets age too,
    # and "age only" gets age alone
    scores = label_efficiency(
        methods,
        X_lab,
        dx_lab,
        label_counts,
        protocols="linear_probe",
        n_repeats=n_repeats,
        test_size=test_size,
        covariates=age_lab,
        scoring="roc_auc",
        random_state=random_state,
    )
    summary = summarize(scores)
    differences = []
    for other in METHODS[:-1]:
        for row in paired_differences(
            scores, reference=other, random_state=random_state
        ):
            if row["method"] == YAWARE:
                row = {k: v for k, v in row.items() if k != "differences"}
                differences.append(row)
    n_test = int(np.ceil(test_size * n_labelled))

    log(
        f"\nLogistic regression on [features, age]: ROC-AUC on {n_test} held-out "
        f"subjects, mean ± sd over {n_seeds} pretraining seeds x {n_repeats} "
        "splits, by number of labelled training subjects"
    )
    log(f"{'method':<22}" + "".join(f"{n:>16}" for n in label_counts))
    for name in METHODS:
        cells = {s["n_labels"]: s for s in summary if s["method"] == name}
        text = [
            f"{cells[n]['mean']:.3f} ± {cells[n]['std']:.3f}" if n in cells else "-"
            for n in label_counts
        ]
        log(f"{name:<22}" + "".join(f"{c:>16}" for c in text))
    log(
        "\ny-Aware minus each method: mean paired difference [95 % bootstrap CI "
        "over seeds and splits]"
    )
    log(f"{'y-Aware minus':<22}" + "".join(f"{n:>26}" for n in label_counts))
    for other in METHODS[:-1]:
        cells = {d["n_labels"]: d for d in differences if d["reference"] == other}
        text = [_fmt_ci(cells[n]) if n in cells else "-" for n in label_counts]
        log(f"{other:<22}" + "".join(f"{c:>26}" for c in text))

    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {
            "preset": preset,
            "n_unlabelled": n_unlabelled,
            "n_labelled": n_labelled,
            "label_counts": list(label_counts),
            "max_epochs": max_epochs,
            "resolution_mm": resolution,
            "modality": cfg["modality"],
            "volume_shape": list(X.shape[2:]),
            "seeds": seeds,
            "n_repeats": n_repeats,
            "test_size": test_size,
            "n_test": n_test,
            "random_state": random_state,
            "estimator": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in cfg["estimator"].items()
            },
            "data": "make_brain_cohort (synthetic, from the MNI152 templates)",
            "probe": "StandardScaler + LogisticRegression on [features, age]",
            "evaluation": "sklearn_cl3d.evaluation.label_efficiency, linear "
            "probe, stratified shuffle splits; paired_differences: crossed "
            "bootstrap over seeds and splits",
        },
        "machine": machine,
        "summary": summary,
        "differences": differences,
        "scores": scores,
        "fit_seconds": fit_seconds,
        "seconds": seconds,
    }
    _write_json(out / "results.json", payload)
    _plot(scores, out / "auc_vs_labels.png", log)
    log(f"Wrote {out / 'results.json'}; {seconds:.0f} s in total.")
    return {
        "summary": summary,
        "differences": differences,
        "scores": scores,
        "seconds": seconds,
    }
