"""The main job: y-Aware vs SimCLR vs a random encoder on a structured toy cohort.

A placeholder for the real demo on the built-in brain cohort: volumes are
generated here (a central "brain" whose ventricle-like core grows and whose
rim thins with brain age, plus site-like intensity changes and noise), so the
demo runs anywhere in a couple of minutes on a CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

__all__ = ["make_toy_cohort", "run_demo"]


def make_toy_cohort(n_subjects=200, size=16, random_state=None):
    """Random-but-structured volumes whose anatomy depends on brain age.

    ``brain_age = age + 8 z + 3 e`` with ``z`` the latent ageing acceleration;
    the diagnosis depends on ``z`` only, so age alone carries no information
    about it, while the image shows brain age.

    Parameters
    ----------
    n_subjects : int, default=200
        Number of volumes.
    size : int, default=16
        Edge length of the cubic volumes.
    random_state : int or None, default=None
        Seed.

    Returns
    -------
    dict
        ``volumes`` (n, 1, size, size, size) float32, ``age``, ``diagnosis``,
        ``brain_age``.

    Examples
    --------
    >>> cohort = make_toy_cohort(10, size=8, random_state=0)
    >>> cohort["volumes"].shape
    (10, 1, 8, 8, 8)
    """
    rng = np.random.default_rng(random_state)
    age = rng.uniform(20, 85, size=n_subjects)
    z = rng.normal(size=n_subjects)
    diagnosis = (rng.uniform(size=n_subjects) < 1 / (1 + np.exp(0.8 - 3 * z))).astype(
        int
    )
    brain_age = age + 8 * z + 3 * rng.normal(size=n_subjects)
    atrophy = np.clip((brain_age - 20) / 60, 0, None) ** 1.5
    axis = np.linspace(-1, 1, size)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"))
    volumes = np.empty((n_subjects, 1, size, size, size), dtype=np.float32)
    for i in range(n_subjects):
        shift = rng.normal(0, 0.06, size=3)[:, None, None, None]
        scale = np.exp(rng.normal(0, 0.05))
        r = np.sqrt((((grid - shift) / scale) ** 2).sum(0))
        brain = r < 0.85
        core = r < 0.18 + 0.2 * atrophy[i]  # "ventricles" grow with brain age
        rim = (r > 0.85 - (0.25 - 0.12 * atrophy[i])) & brain  # "cortex" thins
        img = 1.0 * brain - 0.8 * core - 0.35 * rim
        gain = rng.uniform(0.5, 2.0)
        img = gain * img + 0.15 * rng.normal(size=img.shape)
        volumes[i, 0] = img
    return {
        "volumes": volumes,
        "age": age,
        "diagnosis": diagnosis,
        "brain_age": brain_age,
    }


def run_demo(
    n_unlabelled=300,
    label_counts=(50, 100, 200),
    size=16,
    max_epochs=10,
    n_splits=5,
    random_state=0,
    out_dir="demo_output",
    log=print,
):
    """Pretrain, then cross-validate a linear probe on frozen features.

    Parameters
    ----------
    n_unlabelled : int, default=300
        Subjects used (with their ages only) for pretraining.
    label_counts : tuple of int, default=(50, 100, 200)
        Numbers of labelled subjects for the probe.
    size : int, default=16
        Volume edge length.
    max_epochs : int, default=10
        Pretraining epochs.
    n_splits : int, default=5
        Folds of the stratified CV of the probe.
    random_state : int, default=0
        Seed of everything.
    out_dir : str or Path, default="demo_output"
        Where ``results.json`` and ``auc_vs_labels.png`` (if matplotlib is
        installed) are written.
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

    from .estimators import SimCLRPretrainer, YAwarePretrainer

    t0 = time.perf_counter()
    n_labelled = max(label_counts)
    log(f"Generating {n_unlabelled + n_labelled} toy volumes of {size}^3 ...")
    cohort = make_toy_cohort(n_unlabelled + n_labelled, size, random_state)
    X, age, dx = cohort["volumes"], cohort["age"], cohort["diagnosis"]
    X_pre, age_pre = X[:n_unlabelled], age[:n_unlabelled]
    X_lab, dx_lab = X[n_unlabelled:], dx[n_unlabelled:]
    age_lab = age[n_unlabelled:, None]

    common = dict(
        backbone="small3d",
        backbone__channels=(8, 16, 32),
        batch_size=32,
        lr=1e-3,
        augmentation="all",
        random_state=random_state,
    )
    encoders = {
        "y-Aware (sigma=5)": YAwarePretrainer(
            sigma=5.0, max_epochs=max_epochs, **common
        ),
        "SimCLR": SimCLRPretrainer(max_epochs=max_epochs, **common),
        "random init": SimCLRPretrainer(max_epochs=0, **common),
    }
    features = {}
    for name, enc in encoders.items():
        t = time.perf_counter()
        enc.fit(X_pre, age_pre)
        # the probe sees the image features and the age: the diagnosis is
        # accelerated ageing, i.e. brain age (in the image) relative to age
        features[name] = np.hstack([enc.transform(X_lab), age_lab])
        log(f"  pretrained {name:<18} in {time.perf_counter() - t:5.1f} s")

    rows = []
    rng = np.random.default_rng(random_state)
    for n in label_counts:
        idx = rng.permutation(len(X_lab))[:n]
        cv = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
        for name, F in features.items():
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            auc = cross_val_score(probe, F[idx], dx_lab[idx], cv=cv, scoring="roc_auc")
            rows.append(
                {
                    "encoder": name,
                    "n_labels": int(n),
                    "auc_mean": float(auc.mean()),
                    "auc_sd": float(auc.std()),
                }
            )

    log(
        "\nLinear probe (features + age) ROC-AUC, mean ± sd over folds, by "
        "number of labelled subjects"
    )
    header = f"{'encoder':<20}" + "".join(f"{n:>15}" for n in label_counts)
    log(header)
    for name in features:
        cells = [
            f"{r['auc_mean']:.3f} ± {r['auc_sd']:.3f}"
            for r in rows
            if r["encoder"] == name
        ]
        log(f"{name:<20}" + "".join(f"{c:>15}" for c in cells))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {
            "n_unlabelled": n_unlabelled,
            "label_counts": list(label_counts),
            "size": size,
            "max_epochs": max_epochs,
            "n_splits": n_splits,
            "random_state": random_state,
            "data": "toy structured volumes (sklearn_cl3d._demo.make_toy_cohort)",
            "probe": "StandardScaler + LogisticRegression on [features, age]",
        },
        "results": rows,
        "seconds": time.perf_counter() - t0,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out / "results.json")
    _plot(rows, label_counts, out / "auc_vs_labels.png", log)
    log(f"\nWrote {out / 'results.json'} in {payload['seconds']:.0f} s total.")
    return rows


def _plot(rows, label_counts, path, log):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("(matplotlib not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
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
    ax.set_ylabel("ROC-AUC (linear probe)")
    ax.set_xticks(list(label_counts))
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log(f"Wrote {path}")
