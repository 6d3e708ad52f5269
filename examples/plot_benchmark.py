"""
Benchmarking pretraining on a cohort, in one call
=================================================

:func:`~sklearn_cl3d.evaluation.benchmark` (``sklearn-cl3d benchmark`` on the
command line) answers the first question about a cohort: with few labels,
do features pretrained by y-Aware or SimCLR beat simple baselines? It runs
methods x numbers of labels x pretraining seeds on a table of image paths or
a BIDS folder:

* baselines: the covariates alone (here age), PCA of the voxels, and the
  network left at its random initialisation;
* SimCLR and y-Aware (age as its metadata), pretrained once per seed on the
  subjects without a target.

A linear probe is trained on growing numbers of labelled subjects over
shuffle splits, and the scores, their summary, the paired differences with
bootstrap 95 % confidence intervals and a plot are written to the output
folder. A second call on the same folder resumes: what is already there is
not fitted again.

Without data, as here, it runs on the built-in brain cohort, written as a
BIDS dataset and read back with :func:`~sklearn_cl3d.data.read_bids`: the same
path as users' data. Everything is tiny so that the example runs in seconds
(40 unlabelled subjects at 8 mm, a small CNN, 2 epochs, 4 splits): the
numbers show the mechanics, not which method is better (see the demo,
``sklearn-cl3d demo``, for that).
"""

# %%
# A first run
# -----------
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from sklearn_cl3d.evaluation import benchmark, plot_label_efficiency

out = Path(tempfile.mkdtemp()) / "benchmark"
settings = dict(
    n_unlabelled=40,  # built-in cohort: subjects without a diagnosis
    n_labels=[10, 20],
    seeds=2,
    n_repeats=4,
    max_epochs=2,
    pretrainer_params={"backbone__channels": (4, 8), "batch_size": 16},
    n_components=10,
    out_dir=out,
)
result = benchmark(**settings)

# %%
# The output folder holds tidy files: one row per score in ``results.csv``
# (``seed`` is empty for the methods without a pretraining seed), the
# summary per method and number of labels, and the paired differences.
print(sorted(p.name for p in out.iterdir()))
pd.read_csv(out / "results.csv").head()

# %%
pd.read_csv(out / "summary.csv")[["method", "n_labels", "mean", "std", "n"]]

# %%
# Each difference pairs the two methods on the same splits (and seeds);
# the interval resamples splits and seeds.
diffs = pd.read_csv(out / "differences.csv")
diffs[diffs["method"] == "y-Aware"][
    ["reference", "n_labels", "mean_difference", "ci_low", "ci_high"]
]

# %%
# The curves (also written as ``label_efficiency.png``).
fig, ax = plt.subplots(figsize=(6.4, 3.4))
plot_label_efficiency(result.scores, ax=ax, ylabel="ROC-AUC (probe)")
ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
fig.tight_layout()

# %%
# Resuming and extending
# ----------------------
# ``results.json`` is saved after every (method, seed). Calling again with
# the same output folder reads it back: pairs already scored are skipped,
# so an interrupted run continues where it stopped, and a third seed only
# fits the third seed of each network. A new number of labels only scores
# its own cells, with the networks read back from ``models/``. Settings
# that would change the existing scores (the data, the columns, the
# networks' settings, ...) are refused; ``resume=False`` (``--no-resume``)
# starts again.
more = benchmark(**dict(settings, seeds=3))
print("fitted now:", more.fitted)
print(len(result.scores), "scores before,", len(more.scores), "now")

# %%
# On your own data
# ----------------
# Give a BIDS folder (``participants.tsv`` and
# ``sub-*/[ses-*/]anat/*_T1w.nii.gz``) or a CSV/TSV table with a column of
# image paths, the target column (empty cells mark unlabelled subjects,
# used for pretraining), y-Aware's metadata and the covariates::
#
#     benchmark("my_bids", target="diagnosis", proxy="age",
#               covariates=["age"], out_dir="my_benchmark")
#
# or, from a shell::
#
#     sklearn-cl3d benchmark --data cohort.csv --path-column image \
#         --target diagnosis --proxy age --covariates age --out my_benchmark
#
# The images must share one grid (see the preprocessing transformers of
# :mod:`sklearn_cl3d.data`).
