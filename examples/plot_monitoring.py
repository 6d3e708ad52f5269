"""
Watching a representation while it pretrains
============================================

The contrastive loss alone says little about whether the features are
getting useful. This example records, every two epochs of a y-Aware
pretraining, into the estimator's ``history_``:

* an online **linear probe** and a **kNN probe**: how well held-out labels
  are read from the current features (:class:`~sklearn_cl3d.monitoring.LinearProbe`,
  :class:`~sklearn_cl3d.monitoring.KNNProbe`);
* label-free **representation metrics**: alignment of two views, uniformity,
  effective rank and the per-dimension standard deviation of the normalised
  features (:class:`~sklearn_cl3d.monitoring.RepresentationMetrics`), which
  warns when the representation collapses.

It then pictures the result with :func:`~sklearn_cl3d.plotting.plot_embedding`
and the views the network trained on with
:func:`~sklearn_cl3d.plotting.plot_views`. Everything is tiny (16³ volumes,
the ``small3d`` backbone, 20 epochs on the CPU) so that it runs in seconds;
the callbacks leave training itself unchanged.
"""

# %%
# Synthetic volumes
# -----------------
# A bright blob whose radius grows with "age", plus noise; the label to
# probe is whether the subject is older than 50.
import matplotlib.pyplot as plt
import numpy as np

from sklearn_cl3d import YAwarePretrainer
from sklearn_cl3d.monitoring import KNNProbe, LinearProbe, RepresentationMetrics
from sklearn_cl3d.plotting import plot_embedding, plot_views

rng = np.random.default_rng(0)
n = 96
age = rng.uniform(20, 80, size=n)
grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
radius = np.sqrt((grid**2).sum(0))
X = np.stack([(radius < 0.3 + a / 400).astype(np.float32) for a in age])[:, None]
X += 1.0 * rng.normal(size=X.shape).astype(np.float32)
older = (age > 50).astype(int)

# pretraining set (metadata only) and a held-out labelled set for the probes
X_train, age_train = X[:64], age[:64]
X_val, y_val = X[64:], older[64:]

# %%
# Pretraining with the monitors
# -----------------------------
# The callbacks take the held-out set; ``every=2`` records at epochs 2, 4, ...
callbacks = [
    ("linear", LinearProbe(X_val, y_val, every=2, cv=4)),
    ("knn", KNNProbe(X_val, y_val, every=2, n_neighbors=5, cv=4)),
    ("repr", RepresentationMetrics(X_val, every=2)),
]
ssl = YAwarePretrainer(
    sigma=5.0,
    backbone="small3d",
    backbone__channels=(8, 16),
    batch_size=16,
    lr=3e-3,
    max_epochs=20,
    random_state=0,
    verbose=0,  # the default, verbose=1, prints a table per epoch
    callbacks=callbacks,
)
ssl.fit(X_train, age_train)

# %%
# The curves
# ----------
# ``history_[:, key]`` reads a column; epochs without a record are skipped.
history = ssl.history_
keys = [
    ("train_loss", "training loss"),
    ("linear_probe", "linear probe accuracy"),
    ("knn_probe", "kNN probe accuracy"),
    ("alignment", "alignment (lower: views closer)"),
    ("uniformity", "uniformity (lower: more spread)"),
    ("effective_rank", "effective rank"),
]
fig, axes = plt.subplots(2, 3, figsize=(10, 5.5), sharex=True)
for ax, (key, title) in zip(axes.ravel(), keys):
    epochs = [row["epoch"] for row in history if key in row]
    values = [row[key] for row in history if key in row]
    ax.plot(epochs, values, marker="o", markersize=3)
    ax.set_title(title, fontsize="small")
for ax in axes[1]:
    ax.set_xlabel("epoch")
fig.tight_layout()

print(
    f"linear probe: {history[1, 'linear_probe']:.2f} at epoch 2, "
    f"{history[-1, 'linear_probe']:.2f} at epoch {len(history)}"
)
print(f"effective rank at the end: {history[-1, 'effective_rank']:.1f}")

# %%
# The embedding and the views
# ---------------------------
# The held-out features projected by PCA, coloured by age; then two views of
# three training volumes as the network saw them (z-scored, cutout).
plot_embedding(ssl, X_val, color=age[64:])
plot_views(ssl, X_train[:3], n_views=2)
plt.show()
