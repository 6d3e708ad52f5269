"""The main job: y-Aware vs SimCLR vs a random encoder on the built-in brain cohort.

The cohort (:func:`sklearn_cl3d.datasets.make_brain_cohort`) is synthetic MRI
built offline from the MNI152 templates: the diagnosis is *accelerated ageing*
(brain age ahead of age), so age alone carries no diagnostic information while
the images show brain age. Encoders are pretrained on an unlabelled part with
age as the only metadata; a logistic regression on frozen features plus age is
then trained on labelled subsets of several sizes and scored on held-out
subjects (:func:`sklearn_cl3d.evaluation.label_efficiency`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from skorch.callbacks import Callback

__all__ = ["PRESETS", "run_demo"]

PRESETS = {
    # small CNN and a higher learning rate: minutes on a 2-core CPU
    "cpu": {
        "resolution": 4,
        "n_unlabelled": 600,
        "label_counts": (100, 200, 400),
        "max_epochs": 10,
        "estimator": {
            "backbone": "small3d",
            "backbone__channels": (4, 8, 16),
            "batch_size": 32,
            "lr": 1e-3,
        },
    },
    # the paper's setting (DenseNet-121, Adam 1e-4, 64 pairs, 100 epochs): a GPU
    "paper": {
        "resolution": 2,
        "n_unlabelled": 2000,
        "label_counts": (100, 200, 400),
        "max_epochs": 100,
        "estimator": {"backbone": "densenet121", "batch_size": 64, "lr": 1e-4},
    },
}


class _EpochLog(Callback):
    """Print one line per epoch (the demo's progress)."""

    def __init__(self, name, log):
        self.name = name
        self.log = log

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        self.log(
            f"    {self.name:<8} epoch {row['epoch']:>3}/{net.max_epochs}  "
            f"loss {row['train_loss']:.4f}  ({row['dur']:.1f} s)"
        )


def _n_labelled(max_labels, test_size):
    """Labelled subjects needed so that a training part holds ``max_labels``."""
    n = int(np.ceil(max_labels / (1.0 - test_size)))
    while n - int(np.ceil(test_size * n)) < max_labels:
        n += 1
    return n


def run_demo(
    preset="cpu",
    n_unlabelled=None,
    label_counts=None,
    max_epochs=None,
    resolution=None,
    n_repeats=5,
    test_size=0.25,
    device="auto",
    random_state=0,
    out_dir="demo_output",
    log=print,
):
    """Pretrain encoders, then score linear probes by number of labels.

    The probes are evaluated with
    :func:`~sklearn_cl3d.evaluation.label_efficiency` (protocol
    ``"linear_probe"``, age as a covariate): for each repeat, a stratified
    split holds out ``test_size`` of the labelled subjects as the test set;
    ``n`` subjects drawn (stratified) from the rest train the probe.

    Parameters
    ----------
    preset : {"cpu", "paper"}, default="cpu"
        ``"cpu"``: small CNN on the 4 mm cohort (a few minutes on 2 cores);
        ``"paper"``: DenseNet-121 with the paper's optimiser settings at 2 mm
        (needs a GPU). The other arguments override the preset.
    n_unlabelled : int, default=None
        Subjects used for pretraining (age only).
    label_counts : tuple of int, default=None
        Numbers of labelled training subjects for the probe.
    max_epochs : int, default=None
        Pretraining epochs.
    resolution : {2, 4}, default=None
        Cohort voxel size in mm.
    n_repeats : int, default=5
        Repeats (random stratified splits) of the probe evaluation.
    test_size : float, default=0.25
        Held-out fraction of the labelled subjects in every repeat; enough
        labelled subjects are generated for the largest label count to fit
        in the rest.
    device : str, default="auto"
        Torch device of the pretrainers.
    random_state : int, default=0
        Seed of everything.
    out_dir : str or Path, default="demo_output"
        Where ``results.json`` and ``auc_vs_labels.png`` (with matplotlib)
        are written.
    log : callable, default=print
        Progress printer.

    Returns
    -------
    list of dict
        One row per (encoder, number of labels): mean and sd of the test
        ROC-AUC over the repeats.
    """
    from .datasets import make_brain_cohort
    from .estimators import SimCLRPretrainer, YAwarePretrainer
    from .evaluation import _summary, label_efficiency

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}.")
    cfg = PRESETS[preset]
    n_unlabelled = cfg["n_unlabelled"] if n_unlabelled is None else n_unlabelled
    label_counts = tuple(cfg["label_counts"] if label_counts is None else label_counts)
    max_epochs = cfg["max_epochs"] if max_epochs is None else max_epochs
    resolution = cfg["resolution"] if resolution is None else resolution
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1); got {test_size!r}.")

    t0 = time.perf_counter()
    n_labelled = _n_labelled(max(label_counts), test_size)
    n_total = n_unlabelled + n_labelled
    log(f"Generating the brain cohort: {n_total} subjects at {resolution} mm ...")
    cohort = make_brain_cohort(
        n_total, resolution=resolution, random_state=random_state
    )
    X, age, dx = cohort.volumes, cohort.age, cohort.diagnosis
    log(f"  volumes {X.shape[1:]} in {time.perf_counter() - t0:.0f} s")
    X_pre, age_pre = X[:n_unlabelled], age[:n_unlabelled]
    X_lab, dx_lab, age_lab = X[n_unlabelled:], dx[n_unlabelled:], age[n_unlabelled:]

    common = dict(cfg["estimator"], device=device, random_state=random_state)
    encoders = {
        "y-Aware": YAwarePretrainer(sigma=5.0, max_epochs=max_epochs, **common),
        "SimCLR": SimCLRPretrainer(max_epochs=max_epochs, **common),
        "random": SimCLRPretrainer(max_epochs=0, **common),
    }
    for name, enc in encoders.items():
        t = time.perf_counter()
        log(f"Pretraining {name} on {n_unlabelled} unlabelled subjects ...")
        enc.set_params(callbacks=[("epoch_log", _EpochLog(name, log))])
        enc.fit(X_pre, age_pre)
        log(f"  done in {time.perf_counter() - t:.0f} s")

    # the diagnosis is brain age relative to age: the probe gets both, and
    # the method without an encoder ("age only") gets age alone
    scores = label_efficiency(
        {"age only": None, **encoders},
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
    rows = [
        {
            "encoder": s["method"],
            "n_labels": s["n_labels"],
            "auc_mean": s["mean"],
            "auc_sd": s["std"],
        }
        for s in _summary(scores)
    ]
    n_test = int(np.ceil(test_size * n_labelled))

    log(
        "\nLogistic regression on [frozen features, age]: ROC-AUC on "
        f"{n_test} held-out subjects, mean ± sd over {n_repeats} repeats, by "
        "number of labelled training subjects"
    )
    log(f"{'encoder':<12}" + "".join(f"{n:>16}" for n in label_counts))
    for name in dict.fromkeys(r["encoder"] for r in rows):
        cells = [
            f"{r['auc_mean']:.3f} ± {r['auc_sd']:.3f}"
            for r in rows
            if r["encoder"] == name
        ]
        log(f"{name:<12}" + "".join(f"{c:>16}" for c in cells))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {
            "preset": preset,
            "n_unlabelled": n_unlabelled,
            "n_labelled": n_labelled,
            "label_counts": list(label_counts),
            "max_epochs": max_epochs,
            "resolution_mm": resolution,
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
            "evaluation": "sklearn_cl3d.evaluation.label_efficiency, linear probe",
        },
        "results": rows,
        "scores": scores,
        "seconds": time.perf_counter() - t0,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out / "results.json")
    _plot(scores, out / "auc_vs_labels.png", log)
    log(f"Wrote {out / 'results.json'}; {payload['seconds']:.0f} s in total.")
    return rows


def _plot(scores, path, log):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("(matplotlib is not installed: no plot)")
        return
    from .evaluation import plot_label_efficiency

    fig, ax = plt.subplots(figsize=(6.2, 3.5))
    plot_label_efficiency(scores, ax=ax, ylabel="ROC-AUC (logistic probe)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    log(f"Wrote {path}")
