"""The main job: y-Aware vs SimCLR vs a random encoder on the built-in brain cohort.

The cohort (:func:`sklearn_cl3d.datasets.make_brain_cohort`) is synthetic MRI
built offline from the MNI152 templates: the diagnosis is *accelerated ageing*
(brain age ahead of age), so age alone carries no diagnostic information while
the images show brain age. Encoders are pretrained on an unlabelled part with
age as the only metadata; a logistic regression on frozen features plus age is
then cross-validated on labelled subsets of several sizes.
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


def run_demo(
    preset="cpu",
    n_unlabelled=None,
    label_counts=None,
    max_epochs=None,
    resolution=None,
    n_splits=5,
    device="auto",
    random_state=0,
    out_dir="demo_output",
    log=print,
):
    """Pretrain encoders, then cross-validate linear probes by number of labels.

    Parameters
    ----------
    preset : {"cpu", "paper"}, default="cpu"
        ``"cpu"``: small CNN on the 4 mm cohort (a few minutes on 2 cores);
        ``"paper"``: DenseNet-121 with the paper's optimiser settings at 2 mm
        (needs a GPU). The other arguments override the preset.
    n_unlabelled : int, default=None
        Subjects used for pretraining (age only).
    label_counts : tuple of int, default=None
        Numbers of labelled subjects for the probe.
    max_epochs : int, default=None
        Pretraining epochs.
    resolution : {2, 4}, default=None
        Cohort voxel size in mm.
    n_splits : int, default=5
        Folds of the stratified CV of the probe.
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
        One row per (encoder, number of labels): mean and sd of the ROC-AUC.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .datasets import make_brain_cohort
    from .estimators import SimCLRPretrainer, YAwarePretrainer

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}.")
    cfg = PRESETS[preset]
    n_unlabelled = cfg["n_unlabelled"] if n_unlabelled is None else n_unlabelled
    label_counts = tuple(cfg["label_counts"] if label_counts is None else label_counts)
    max_epochs = cfg["max_epochs"] if max_epochs is None else max_epochs
    resolution = cfg["resolution"] if resolution is None else resolution

    t0 = time.perf_counter()
    n_labelled = max(label_counts)
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
    features = {"age only": np.zeros((n_labelled, 0), dtype=np.float32)}
    for name, enc in encoders.items():
        t = time.perf_counter()
        log(f"Pretraining {name} on {n_unlabelled} unlabelled subjects ...")
        enc.set_params(callbacks=[("epoch_log", _EpochLog(name, log))])
        enc.fit(X_pre, age_pre)
        features[name] = enc.transform(X_lab)
        log(f"  done in {time.perf_counter() - t:.0f} s")

    rows = []
    rng = np.random.default_rng(random_state)
    order = rng.permutation(n_labelled)
    for n in label_counts:
        idx = order[:n]
        cv = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
        for name, F in features.items():
            # the diagnosis is brain age relative to age: the probe gets both
            inputs = np.hstack([F[idx], age_lab[idx, None]])
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
            auc = cross_val_score(probe, inputs, dx_lab[idx], cv=cv, scoring="roc_auc")
            rows.append(
                {
                    "encoder": name,
                    "n_labels": int(n),
                    "auc_mean": float(auc.mean()),
                    "auc_sd": float(auc.std()),
                }
            )

    log(
        "\nLogistic regression on [frozen features, age]: ROC-AUC, mean ± sd "
        f"over {n_splits} folds, by number of labelled subjects"
    )
    log(f"{'encoder':<12}" + "".join(f"{n:>16}" for n in label_counts))
    for name in features:
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
            "label_counts": list(label_counts),
            "max_epochs": max_epochs,
            "resolution_mm": resolution,
            "n_splits": n_splits,
            "random_state": random_state,
            "estimator": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in cfg["estimator"].items()
            },
            "data": "make_brain_cohort (synthetic, from the MNI152 templates)",
            "probe": "StandardScaler + LogisticRegression on [features, age]",
        },
        "results": rows,
        "seconds": time.perf_counter() - t0,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out / "results.json")
    _plot(rows, label_counts, out / "auc_vs_labels.png", log)
    log(f"Wrote {out / 'results.json'}; {payload['seconds']:.0f} s in total.")
    return rows


def _plot(rows, label_counts, path, log):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6.2, 3.5))
    for name in dict.fromkeys(r["encoder"] for r in rows):
        sel = [r for r in rows if r["encoder"] == name]
        ax.errorbar(
            [r["n_labels"] for r in sel],
            [r["auc_mean"] for r in sel],
            yerr=[r["auc_sd"] for r in sel],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("labelled subjects")
    ax.set_ylabel("ROC-AUC (logistic probe)")
    ax.set_xticks(list(label_counts))
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    log(f"Wrote {path}")
