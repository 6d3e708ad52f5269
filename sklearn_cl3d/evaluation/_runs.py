"""Pieces shared by :func:`sklearn_cl3d.evaluation.benchmark` and the demo
(``sklearn-cl3d demo``): the estimator presets, the network factories, the
pretraining loop with its per-epoch log, the machine description, atomic
JSON writing, confidence-interval formatting and the label-efficiency plot.

The demo (``sklearn_cl3d._demo``) imports from here, never the other way.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from skorch.callbacks import Callback

PRESETS = {
    # T1 images at 8 mm, a small CNN, 30 epochs of Adam 3e-3: about 1.5 min
    # per pretraining on 2 cores (user guide, "When y-Aware helps")
    "cpu": {
        "resolution": 8,
        "modality": "T1w",
        "n_unlabelled": 600,
        "label_counts": (100, 200, 400),
        "max_epochs": 30,
        "n_seeds": 3,
        "n_repeats": 10,
        "estimator": {
            "backbone": "small3d",
            "backbone__channels": (8, 16, 32),
            "batch_size": 32,
            "lr": 3e-3,
        },
    },
    # the paper's setting (DenseNet-121, Adam 1e-4, 64 pairs, 100 epochs): a GPU
    "paper": {
        "resolution": 2,
        "modality": "T1w",
        "n_unlabelled": 2000,
        "label_counts": (100, 200, 400),
        "max_epochs": 100,
        "n_seeds": 3,
        "n_repeats": 10,
        "estimator": {"backbone": "densenet121", "batch_size": 64, "lr": 1e-4},
    },
}

#: Names of the networks made by :func:`_network_makers` (rows of the
#: demo's table).
RANDOM = "random network"
SIMCLR = "SimCLR"
YAWARE = "y-Aware"


class _EpochLog(Callback):
    """Print one line per epoch (the demo's progress)."""

    def __init__(self, name, log):
        self.name = name
        self.log = log

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        self.log(
            f"    {self.name:<16} epoch {row['epoch']:>3}/{net.max_epochs}  "
            f"loss {row['train_loss']:.4f}  ({row['dur']:.1f} s)"
        )


def _n_labelled(max_labels, test_size):
    """Labelled subjects needed so that a training part holds ``max_labels``."""
    n = int(np.ceil(max_labels / (1.0 - test_size)))
    while n - int(np.ceil(test_size * n)) < max_labels:
        n += 1
    return n


def _machine():
    """CPU model, cores and library versions (recorded with every run)."""
    import torch

    from ..estimators._device import cpu_info_fields

    cpu = cpu_info_fields().get("model name") or (
        platform.processor() or platform.machine()
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _pretrain(name, make, seeds, X, age, log, fit_seconds):
    """Fit ``make(seed)`` once per seed; return the fitted estimators."""
    fitted = []
    for seed in seeds:
        est = make(seed)
        label = f"{name} s{seed}"
        if est.max_epochs:
            est.set_params(callbacks=[("epoch_log", _EpochLog(label, log))])
            log(f"Pretraining {name} (seed {seed}) ...")
        t = time.perf_counter()
        est.fit(X, age)
        fit_seconds.setdefault(name, []).append(time.perf_counter() - t)
        if est.max_epochs:
            log(f"  done in {fit_seconds[name][-1]:.0f} s")
        fitted.append(est)
    return fitted


def _network_makers(common, max_epochs, sigma=5.0):
    """``{name: make(seed)}`` for the random network, SimCLR and y-Aware.

    ``common`` holds the shared estimator parameters (architecture,
    optimiser, device, verbose); the random network is SimCLR with no epoch.
    Shared by :func:`sklearn_cl3d.evaluation.benchmark` and the demo.
    """
    from ..estimators import SimCLRPretrainer, YAwarePretrainer

    return {
        RANDOM: lambda s: SimCLRPretrainer(max_epochs=0, random_state=s, **common),
        SIMCLR: lambda s: SimCLRPretrainer(
            max_epochs=max_epochs, random_state=s, **common
        ),
        YAWARE: lambda s: YAwarePretrainer(
            sigma=sigma, max_epochs=max_epochs, random_state=s, **common
        ),
    }


def _fmt_ci(row):
    return (
        f"{row['mean_difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
    )


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_json(path, payload):
    """Write ``payload`` to ``path`` atomically (a temporary file, then a swap)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default))
    tmp.replace(path)


def _plot(scores, path, log, ylabel="ROC-AUC (logistic probe)", chance=0.5):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("(matplotlib is not installed: no plot)")
        return
    from ._plot import plot_label_efficiency

    fig, ax = plt.subplots(figsize=(6.6, 3.6))
    plot_label_efficiency(scores, ax=ax, ylabel=ylabel)
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="--")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    log(f"Wrote {path}")
