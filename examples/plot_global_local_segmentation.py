"""
Global and local contrastive pretraining for segmentation with few labels
=========================================================================

:class:`~sklearn_cl3d.GlobalLocalPretrainer` pretrains a 2-D U-Net on the
slices of unlabelled 3-D volumes in two stages (Chaitanya et al., NeurIPS
2020):

1. a **global** contrastive loss trains the encoder: slices from the same
   *partition* (the same slab along the slice axis) of different volumes
   are pulled together, slices of other partitions pushed apart;
2. a **local** contrastive loss then trains the first decoder blocks, the
   encoder frozen: a small region of a feature map is pulled towards the
   same region of a differently brightened copy of the slice and pushed away
   from the other regions of that slice.

:class:`~sklearn_cl3d.ContrastiveSegmenter` then fine-tunes the whole U-Net
on one or two labelled volumes. This example reproduces the design of the
paper's main experiment on the built-in brain cohort: the test Dice of
the grey and white matter of each hemisphere with 1 and 2 labelled
volumes, for three initialisations of the same U-Net: random
weights, the global stage only, and both stages.

.. note::

    The data are synthetic T1 images at 4 mm, the U-Net is half as wide as
    the paper's and sees 64 x 64 slices, pretraining lasts 500 steps per
    stage (the paper runs 10 001) and fine-tuning 100 steps, so that the
    page builds on two CPU cores in a few minutes. The page runs one
    pretraining seed and two labelled subsets; the comparison with
    confidence intervals over 3 seeds x 5 subsets is the benchmark quoted at
    the end. Set the environment variable ``SKLEARN_CL3D_FULL_EXAMPLES=1``
    for the paper's network, slice size and numbers of steps on 2 mm
    volumes (meant for a GPU; not timed).
"""

# %%
# A segmentation task on built-in data
# ------------------------------------
# :func:`~sklearn_cl3d.datasets.make_brain_cohort` deforms and atrophies the
# ICBM152 template and re-images it with site-specific contrast, blur, bias
# field, noise and gain. With ``return_labels=True`` it also returns every
# subject's tissue label map: 0 background (outside the brain), 1 CSF, 2
# grey matter, 3 white matter, the tissue with the largest true fraction in
# each voxel. Tissue intensities differ from site to site and the voxels at
# 4 mm mix tissues, so the task is far from saturated: unlike lungs in CT,
# a tissue cannot be read off one intensity threshold.
#
# The classes here are the grey and the white matter of each hemisphere (the
# first array axis runs from the subject's left to right, and the grid's
# mid-plane stands for the midline), CSF joining the background. As with
# the paper's cardiac structures, telling the classes apart needs the
# anatomical context, not only the intensity. With the plain tissue classes
# pretraining makes no difference (see the end of the page).
#
# The volumes are split as in the paper: an unlabelled set for pretraining
# (52 volumes of ACDC there, 40 here), a pool from which the few labelled
# volumes are drawn, and held-out test volumes. Slices are axial (the last
# array axis).

import copy
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from sklearn_cl3d import ContrastiveSegmenter, GlobalLocalPretrainer
from sklearn_cl3d.datasets import make_brain_cohort
from sklearn_cl3d.metrics import dice_scores

FULL = os.environ.get("SKLEARN_CL3D_FULL_EXAMPLES", "0") == "1"
start_time = time.perf_counter()

resolution = 2 if FULL else 4
n_unlabelled, n_pool, n_test = 40, 20, 10
cohort = make_brain_cohort(
    n_unlabelled + n_pool + n_test,
    resolution=resolution,
    random_state=0,
    return_labels=True,
)
X, tissue_map = cohort.volumes, cohort.labels  # (n, 1, x, y, z), (n, x, y, z)
shape = tissue_map.shape[1:]
right = (np.arange(shape[0]) >= shape[0] // 2)[None, :, None, None]
labels = np.where(tissue_map >= 2, 2 * (tissue_map - 2) + 1 + right, 0)
tissues = ["left GM", "right GM", "left WM", "right WM"]
n_classes = len(tissues) + 1

X_unlab = X[:n_unlabelled]
X_pool, y_pool = X[n_unlabelled:-n_test], labels[n_unlabelled:-n_test]
X_test, y_test = X[-n_test:], labels[-n_test:]
print(f"volumes {X.shape}: {n_unlabelled} unlabelled, {n_pool} in the labelled")
print(f"pool, {n_test} for testing; {len(set(cohort.site))} sites")
for k, tissue in enumerate(tissues, start=1):
    print(f"{tissue}: {(labels == k).mean():.1%} of the voxels")

# %%
# A few axial slices of one volume with its tissue labels:

n_slices = shape[2]
ks = np.linspace(0.2 * n_slices, 0.85 * n_slices, 5).astype(int)
fig, axes = plt.subplots(2, len(ks), figsize=(9, 3.8))
for k, top, bottom in zip(ks, axes[0], axes[1]):
    top.imshow(np.rot90(X[0, 0, :, :, k]), cmap="gray")
    top.set_title(f"slice {k}", fontsize=8)
    bottom.imshow(np.rot90(labels[0, :, :, k]), cmap="tab10", vmin=0, vmax=9)
for ax in axes.ravel():
    ax.axis("off")
axes[1, 0].set_title("GM / WM, left / right", fontsize=8)
fig.tight_layout()

# %%
# Stage 1: the global loss
# ------------------------
# The default strategy is the paper's G\ :sup:`D`: every volume is cut into
# ``n_partitions=4`` slabs along the slice axis, and a batch of 12 slices
# holds one random slice from every slab of 3 volumes. Each slice and one
# augmented view of it (a random crop resized back, then a brightness and
# contrast change) go through the encoder; views of the same partition are
# positives, views of other partitions negatives. ``local=None`` leaves out
# stage 2.
#
# Fast mode: encoder channels ``(8, 16, 32, 64, 64, 64)`` (the paper's are
# twice as wide), 64 x 64 slices and 500 steps (``max_epochs`` epochs of
# ``steps_per_epoch`` batches). Full mode: the paper's U-Net, 128 x 128
# slices of the 2 mm volumes and 10 000 steps per stage. The learning rate
# (Adam, ``1e-3``), temperature (0.1), batch size (12), the 13 local
# regions of 3 x 3 pixels and the other settings are the estimator's
# defaults, which are the paper's.

if FULL:
    net = dict(channels=(16, 32, 64, 128, 128, 128), slice_size=128)
    epochs, steps_per_epoch = 100, 100
else:
    net = dict(channels=(8, 16, 32, 64, 64, 64), slice_size=64)
    epochs, steps_per_epoch = 20, 25

global_only = GlobalLocalPretrainer(
    strategy="GD",
    local=None,
    n_partitions=4,
    max_epochs=epochs,
    steps_per_epoch=steps_per_epoch,
    device="cpu",
    verbose=0,
    random_state=0,
    **net,
)
tic = time.perf_counter()
global_only.fit(X_unlab)
print(f"global stage: {time.perf_counter() - tic:.0f} s")

# %%
# Stage 2: the local loss
# -----------------------
# As in the paper, stage 2 starts from the stage-1 weights. A copy of the
# global-only model gets ``local="LR"`` and ``max_epochs=0`` (no more global
# epochs), and ``partial_fit`` runs the local stage on the same unlabelled
# volumes: the first ``n_decoder_blocks=3`` decoder blocks learn, the encoder
# is frozen. Both pretrained initialisations therefore share the very same
# encoder weights, and any difference between them comes from the local
# stage (the encoder's BatchNorm statistics do keep updating in stage 2, as
# in the official code).

global_local = copy.deepcopy(global_only).set_params(
    local="LR", max_epochs=0, local_epochs=epochs
)
tic = time.perf_counter()
global_local.partial_fit(X_unlab)
print(f"local stage: {time.perf_counter() - tic:.0f} s")
print("stages run:", global_local.stages_)

fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
for ax, stage in zip(axes, ("global", "local")):
    rows = [row for row in global_local.history if row["stage"] == stage]
    losses = [row["train_loss"] for row in rows]
    ax.plot(np.arange(1, len(losses) + 1), losses, marker="o")
    ax.set(title=f"{stage} loss", xlabel="epoch", ylabel="train loss")
fig.tight_layout()

# %%
# Stage 3: fine-tuning on 1 and 2 labelled volumes
# ------------------------------------------------
# :class:`~sklearn_cl3d.ContrastiveSegmenter` builds the segmentation U-Net
# with the pretrainer's geometry, copies the encoder (and, after stage 2, the
# three pretrained decoder blocks), and trains **all** layers on every slice
# of the labelled volumes with the official Dice loss. ``pretrained=None``
# trains the same network from random weights. Every initialisation gets the
# same number of steps (100 batches of 8 slices) whatever the number of
# labelled volumes, as the paper fixes the number of iterations.
#
# The U-Net's BatchNorm layers follow the official code, with a running
# average that keeps 99 % of its value per step (``momentum=0.01`` in
# PyTorch). That suits the official 10 001 fine-tuning steps, but after a
# hundred steps the running statistics used at prediction time are still far
# from the data's, which hurts the randomly initialised network most. The
# ``bn_momentum=0.1`` gives the fine-tuned network PyTorch's default
# momentum instead, for every initialisation.
#
# A repeat draws a new set of labelled volumes from the pool (the 1-volume
# set is the first volume of the 2-volume set) and a new fine-tuning seed,
# shared by the three initialisations; the paper likewise averages over
# several labelled subsets. Every model is scored on the same test volumes
# with the Dice of each tissue (:func:`~sklearn_cl3d.metrics.dice_scores`);
# :meth:`~sklearn_cl3d.ContrastiveSegmenter.score` is their mean.

if FULL:
    n_steps, batch_size, n_repeats = 2000, 20, 5
else:
    n_steps, batch_size, n_repeats = 100, 8, 2

inits = {
    "random init": None,
    "global only": global_only,
    "global + local": global_local,
}
n_labelled = (1, 2)
n_slices = shape[2]
dice = {name: np.zeros((n_repeats, len(n_labelled), len(tissues))) for name in inits}
models = {}
rng = np.random.default_rng(0)
tic = time.perf_counter()
for repeat in range(n_repeats):
    chosen = rng.choice(n_pool, size=max(n_labelled), replace=False)
    for j, n in enumerate(n_labelled):
        train = chosen[:n]
        steps_per_epoch = -(-n * n_slices // batch_size)  # ceil
        for name, pretrained in inits.items():
            seg = ContrastiveSegmenter(
                pretrained,
                n_classes=n_classes,
                max_epochs=max(1, round(n_steps / steps_per_epoch)),
                batch_size=batch_size,
                bn_momentum=0.1,
                device="cpu",
                verbose=0,
                random_state=repeat,
                **({} if pretrained is not None else net),
            )
            seg.fit(X_pool[train], y_pool[train])
            per_class = dice_scores(y_test, seg.predict(X_test), n_classes)
            dice[name][repeat, j] = per_class.mean(axis=0)
            models[name, repeat, n] = seg
    print(f"repeat {repeat}: fine-tuned, {time.perf_counter() - tic:.0f} s so far")

print(f"\nDice on {n_test} test volumes, mean over {n_repeats} repeats")
print(f"{'':16s}{'labelled':>9s}" + "".join(f"{t:>14s}" for t in tissues) + "  mean")
for name, scores in dice.items():
    for j, n in enumerate(n_labelled):
        cells = "".join(f"{v:>14.3f}" for v in scores[:, j].mean(axis=0))
        print(f"{name:16s}{n:>9d}{cells}  {scores[:, j].mean():.3f}")

# %%
# Dice by tissue and number of labelled volumes
# ---------------------------------------------
# Bars are the mean over the repeats of this run.

fig, axes = plt.subplots(1, len(tissues), figsize=(11, 3.4), sharey=True)
width = 0.25
for ax, (t, tissue) in zip(axes, enumerate(tissues)):
    for i, (name, scores) in enumerate(dice.items()):
        ax.bar(
            np.arange(len(n_labelled)) + (i - 1) * width,
            scores[:, :, t].mean(axis=0),
            width,
            label=name,
        )
    ax.set_xticks(range(len(n_labelled)), [f"{n} labelled" for n in n_labelled])
    ax.set_title(tissue, fontsize=10)
axes[0].set_ylabel("test Dice")
axes[0].legend(fontsize=8, loc="lower left")
fig.tight_layout()
# sphinx_gallery_thumbnail_number = 4

# %%
# Predictions with a single labelled volume
# -----------------------------------------
# One axial slice of a test volume, segmented by the models fine-tuned on
# one labelled volume in the first repeat:

k = int(0.55 * n_slices)
fig, axes = plt.subplots(1, len(inits) + 2, figsize=(11, 2.6))
axes[0].imshow(np.rot90(X_test[0, 0, :, :, k]), cmap="gray")
axes[0].set_title("T1 image", fontsize=9)
axes[1].imshow(np.rot90(y_test[0, :, :, k]), cmap="tab10", vmin=0, vmax=9)
axes[1].set_title("truth", fontsize=9)
for ax, name in zip(axes[2:], inits):
    pred = models[name, 0, 1].predict(X_test[:1])[0]
    ax.imshow(np.rot90(pred[:, :, k]), cmap="tab10", vmin=0, vmax=9)
    ax.set_title(f"{name}\nmean Dice {dice[name][0, 0].mean():.2f}", fontsize=9)
for ax in axes:
    ax.axis("off")
fig.tight_layout()
plt.show()
print(f"total run time: {time.perf_counter() - start_time:.0f} s")

# %%
# Reading the numbers
# -------------------
# The page runs one pretraining seed and two labelled subsets, so its
# table can rank the initialisations either way. The benchmark
# ``python benchmarks/method_effects.py globallocal --target hemisphere``
# runs this setting with 3 pretraining seeds and 10 labelled subsets, its
# fine-tuning with Dice + CE (``ce_weight=1.0``, the default when it was
# measured; this page fine-tunes with the official Dice loss)
# (one torch thread on an Intel Xeon, family 6, model 207: 2134 s,
# ``benchmarks/measured/effect_globallocal_hemisphere.json``). As
# differences to global + local, with 95 % intervals over seeds x subsets:
#
# ============== ========================= =========================
# method         1 labelled volume         2 labelled volumes
# ============== ========================= =========================
# global only    +0.014 [-0.020, +0.049]   -0.002 [-0.044, +0.030]
# random init    +0.042 [-0.009, +0.122]   +0.063 [+0.003, +0.134]
# ============== ========================= =========================
#
# **The randomly initialised U-Net is as good or better** here (mean Dice
# 0.654 and 0.661, against 0.611 and 0.598 for global + local), and the
# local stage adds nothing to the global one. On the plain tissue classes
# (``--target tissue``, the default of the benchmark) the order is the
# paper's but every interval contains 0, because after 100 steps every
# initialisation misses the CSF and segments grey and white matter equally
# well (``benchmarks/globallocal_diagnostic.py``). The user guide's section
# :ref:`method-effects` gives the details and our reading: the global loss
# compares random crops, so the pretrained encoder's features do not tell
# where a structure lies, while the hemisphere classes depend on it; and
# the local loss reaches 0 within its first epochs on these slices.
#
# So this toy does not reproduce the paper's gain; what it shows is the
# protocol. The paper's setting (cardiac, prostate and whole-heart MRI,
# 10 001 steps per stage, fine-tuning with augmentation and the checkpoint
# of best validation Dice: see :func:`sklearn_cl3d.protocols.official_protocol`)
# is meant for a GPU; the full mode sets the paper's network and lengths.
