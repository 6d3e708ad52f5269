"""
DrasCLR: anatomy-aware patch features for regional emphysema
============================================================

:class:`~sklearn_cl3d.DrasCLREncoder` (Yu et al., Medical Image Analysis
2023) cuts every registered chest CT into cubic patches at fixed **atlas
landmarks** and pretrains a 3-D CNN on them with MoCo. Every convolution of
that CNN mixes a few expert kernels with gates that depend on the patch's
atlas location only, so each landmark gets its own network built from shared
experts. This example

1. derives landmarks from a synthetic lung cohort
   (:func:`~sklearn_cl3d.datasets.make_lung_cohort`) whose targets are
   *regional* emphysema fractions;
2. pretrains DrasCLR and three ablations (no location routing, no
   neighbour loss, no pretraining), with identical data, seeds and settings;
3. compares the mean-pooled patient features with a cross-validated ridge
   regression (R²) and a logistic regression (ROC AUC);
4. maps the landmarks into a separately loaded CT through an affine and
   extracts its features.

.. note::

    The cohort is synthetic (geometric phantoms at 5 mm voxels), the patches
    are 16³ voxels instead of the official 32³ at 1 mm, and pretraining
    lasts one short epoch per encoder, so that the page builds on a 2-core
    CPU in under a minute. The page pretrains each encoder once; the
    comparison over pretraining seeds is the benchmark quoted at the end.
    Set ``SKLEARN_CL3D_FULL_EXAMPLES=1`` for a longer run (more subjects and
    epochs; not timed).
"""

# %%
# A synthetic chest CT cohort with regional emphysema
# ---------------------------------------------------
# Each phantom is a 64³ chest CT at 5 mm (RAS axes: the last array axis runs
# from the feet to the head) with two lungs, airways, vessels and clusters of
# low attenuation (emphysema). The extent of emphysema is known per lung
# region (upper, middle and lower third of each lung), and its regional
# pattern varies between subjects: upper-predominant, lower-predominant or
# diffuse. The targets are
#
# * the **upper-zone** and the **lower-zone** emphysema fractions (mean over
#   the two lungs of the upper, resp. lower, third), on a log scale
#   (``log10(0.01 + fraction)``) because they are strongly skewed: about a
#   third of the subjects have almost none;
# * for classification, whether emphysema covers **more than 5 % of the
#   upper zone**.
#
# The encoders never see these targets: pretraining uses the images only.

import os
import shutil
import tempfile
import time

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import torch
from matplotlib.patches import Rectangle
from scipy import ndimage as ndi
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import (
    RepeatedKFold,
    RepeatedStratifiedKFold,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_cl3d import DrasCLREncoder
from sklearn_cl3d.data import (
    ReorientToRAS,
    Resample,
    extract_patches,
    landmark_neighbors,
    make_landmarks,
)
from sklearn_cl3d.datasets import load_chest_ct, make_lung_cohort
from sklearn_cl3d.evaluation import paired_differences

t_start = time.perf_counter()
FULL = os.environ.get("SKLEARN_CL3D_FULL_EXAMPLES", "0") == "1"
n_subjects = 240 if FULL else 100
n_pretrain = 240 if FULL else 48  # volumes used for pretraining (images only)
max_epochs = 10 if FULL else 1
torch.manual_seed(0)

spacing = 5.0
cohort = make_lung_cohort(
    n_subjects, shape=(64, 64, 64), spacing=spacing, random_state=0
)
X = cohort.volumes  # (n, 1, 64, 64, 64), Hounsfield units
regional = cohort.regional_emphysema  # columns in cohort.regions
upper = regional[:, [0, 3]].mean(axis=1)  # right_upper, left_upper
lower = regional[:, [2, 5]].mean(axis=1)  # right_lower, left_lower
upper_over_5 = (upper > 0.05).astype(int)
print(
    f"X: {X.shape}; upper-zone emphysema {upper.mean():.3f} +/- {upper.std():.3f}, "
    f"lower-zone {lower.mean():.3f} +/- {lower.std():.3f}; "
    f"{upper_over_5.mean():.0%} with more than 5 % in the upper zone"
)

# %%
# Landmarks in the atlas
# ----------------------
# The phantoms are generated in one common space, so they are already
# "registered" and the cohort grid plays the role of the atlas. DrasCLR's
# rule (:func:`~sklearn_cl3d.data.make_landmarks`) slides a window of the
# patch size over the atlas lung mask and keeps the windows with more than
# ``min_fraction`` of lung; each landmark is the window's **corner**. The
# official setting is 32³ windows every 26 voxels at 1 mm (581 landmarks);
# here 16³ windows every 12 voxels at 5 mm keep 13 landmarks on three
# axial levels. The two neighbours of each landmark (used by the neighbour
# loss) are its nearest landmarks, ties broken by the lower index
# (:func:`~sklearn_cl3d.data.landmark_neighbors`).
#
# All encoders receive the same ``landmarks`` table, so their features
# describe the same windows.

patch_size, stride = 16, 12
atlas_mask = cohort.lung_mask[:, 0].mean(axis=0) > 0.5
landmarks = make_landmarks(
    atlas_mask, patch_size=patch_size, stride=stride, min_fraction=0.3
)
neighbors = landmark_neighbors(landmarks, k=2)
print(f"{len(landmarks)} landmarks; z levels (corner): {sorted(set(landmarks[:, 2]))}")

# %%
# The ablations
# -------------
# DrasCLR is compared with three encoders that differ from it in one way
# each: no location routing, no neighbour loss (``beta=0``: the local
# InfoNCE against each landmark's queue only), and no pretraining at all
# (``max_epochs=0``: the randomly initialised network).
#
# In DrasCLR every layer ``l`` mixes its ``E`` expert kernels with gates
# ``sigmoid(A_l p + c_l)`` of the atlas location ``p`` of the patch. The
# baseline keeps the network, the losses, the queues and the training
# identical and only removes the dependence on ``p``: ``conditioning=False``
# sets every routing matrix ``A_l`` to zero and freezes it, so the
# gates are the constants ``sigmoid(c_l)`` and every layer is one ordinary
# convolution (a fixed mixture of the experts), the same for all landmarks.
#
# ``n_experts=1`` would **not** be a non-conditioned encoder: its single
# gate ``sigmoid(a . p + c)`` still scales each kernel by a factor that
# depends on the location. In training mode BatchNorm hides the factor when
# all anchors share one landmark, but with the running statistics used by
# ``transform`` the features keep a location-dependent scale.


# %%
# Pretraining
# -----------
# The encoders are pretrained on the images of the first ``n_pretrain``
# volumes (48; no target is used) and then encode all 100 volumes. One
# setting for all: 16³ patches in the official HU window
# ([-1024, 240]), the official 8 experts and 2 neighbours, the official
# augmentations (random affine always, noise and gamma contrast with
# probability 0.25), a queue of 64 keys per landmark (official: 4096), and
# batches of 24 subjects at one landmark. The learning rate is raised from
# the official 0.01 to 0.05 because the run is so short. Each landmark's
# queue is initialised with random unit vectors, so early losses are
# measured against random negatives.

common = dict(
    patch_size=patch_size,
    landmarks=landmarks,
    n_experts=8,
    n_neighbors=2,
    queue_size=64,
    batch_size=24,
    max_epochs=max_epochs,
    lr=0.05,
    device="cpu",
    verbose=0,
    random_state=0,
)
encoders = {
    "DrasCLR": DrasCLREncoder(**common),
    "no location routing": DrasCLREncoder(**common, conditioning=False),
    "no neighbour loss": DrasCLREncoder(**common, beta=0.0),
    "random network": DrasCLREncoder(**{**common, "max_epochs": 0}),
}
patch_features = {}
for name, encoder in encoders.items():
    t0 = time.perf_counter()
    encoder.fit(X[:n_pretrain])
    patch_features[name] = encoder.transform_patches(X)  # (n, n_landmarks, 128)
    print(f"{name}: pretrained and encoded in {time.perf_counter() - t0:.0f} s")

routing = encoders["no location routing"].module_.query.layers[0].conv.routing
print(f"baseline routing matrix still zero: {bool((routing.weight == 0).all())}")

# %%
# The per-batch losses (local InfoNCE against the landmark's queue, and the
# neighbour InfoNCE of the summed neighbour embeddings) are in each
# estimator's history.

trained = [name for name, enc in encoders.items() if enc.history]
fig, axes = plt.subplots(1, len(trained), figsize=(12, 3), sharey=True)
for ax, name in zip(axes, trained):
    encoder = encoders[name]
    batches = [b for epoch in encoder.history for b in epoch["batches"]]
    for key in ("local_loss", "neighbor_loss"):
        ax.plot([b[key] for b in batches], label=key.replace("_", " "))
    ax.set(title=name, xlabel="training step")
axes[0].set_ylabel("InfoNCE")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
# Patient-level features and cross-validated scores
# -------------------------------------------------
# ``transform`` averages the 128-d patch representations over the landmarks
# (``pooling="mean"``, the default), which is what the encoders are compared
# on. With mean pooling the *position* of a patch survives only if the
# encoder writes it into the features, which location routing can do. For
# reference, ``pooling="none"`` keeps every landmark's features
# (landmark-major, 13 x 128 values) and a hand-crafted score gives the
# fraction of voxels below -950 HU (LAA-950, the usual CT emphysema index)
# in every landmark window (13 values).
#
# The probes are a ridge regression with its penalty chosen by inner
# leave-one-out (R², 5-fold cross-validation repeated twice) and a logistic
# regression (ROC AUC, stratified 5-fold repeated twice), both on
# standardised features. The same folds are used for every feature set, so
# the scores are paired by fold.

laa = np.stack(
    [
        (extract_patches(x, landmarks, patch_size) < -950).mean(axis=(1, 2, 3, 4))
        for x in X
    ]
)
feature_sets = {}
for name, feats in patch_features.items():
    feature_sets[f"{name}, mean"] = feats.mean(axis=1)
feats = patch_features["DrasCLR"]
feature_sets["DrasCLR, all landmarks"] = feats.reshape(len(feats), -1)
feature_sets["LAA-950 per landmark"] = laa

ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
logistic = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
cv_reg = RepeatedKFold(n_splits=5, n_repeats=2, random_state=0)
cv_clf = RepeatedStratifiedKFold(n_splits=5, n_repeats=2, random_state=0)
targets = {
    "upper-zone R²": np.log10(0.01 + upper),
    "lower-zone R²": np.log10(0.01 + lower),
}
scores = {}
for feat_name, F in feature_sets.items():
    row = {}
    for target_name, y in targets.items():
        row[target_name] = cross_val_score(ridge, F, y, cv=cv_reg, scoring="r2")
    row["upper zone > 5 % AUC"] = cross_val_score(
        logistic, F, upper_over_5, cv=cv_clf, scoring="roc_auc"
    )
    scores[feat_name] = row
columns = list(next(iter(scores.values())))
print(f"{'features':32s}" + "".join(f"{c:>24s}" for c in columns))
for feat_name, row in scores.items():
    cells = "".join(f"{row[c].mean():>17.3f} +/- {row[c].std():.2f}" for c in columns)
    print(f"{feat_name:32s}{cells}")

# %%
# Each encoder minus DrasCLR on the upper-zone R², paired by fold, with a
# bootstrap 95 % interval (:func:`~sklearn_cl3d.evaluation.paired_differences`;
# one pretraining seed here, so the interval covers the folds only):

rows = [
    {
        "method": name,
        "protocol": "linear_probe",
        "n_labels": 80,
        "repeat": fold,
        "score": float(score),
    }
    for name in encoders
    for fold, score in enumerate(scores[f"{name}, mean"]["upper-zone R²"])
]
for d in paired_differences(rows, "DrasCLR", random_state=0):
    print(
        f"{d['method']:>20s} - DrasCLR: {d['mean_difference']:+.3f} "
        f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    )

# %%
# The mean-pooled scores of the encoders side by side, with the
# hand-crafted LAA-950 reference as a dotted line (fold-to-fold standard
# deviation as error bars):

fig, axes = plt.subplots(1, len(columns), figsize=(11, 3.2))
names = list(encoders)
colors = plt.cm.tab10.colors[: len(names)]
for ax, column in zip(axes, columns):
    means = [scores[f"{n}, mean"][column].mean() for n in names]
    stds = [scores[f"{n}, mean"][column].std() for n in names]
    ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=4)
    ax.axhline(
        scores["LAA-950 per landmark"][column].mean(),
        color="black",
        linestyle=":",
        label="LAA-950 per landmark",
    )
    if column.endswith("AUC"):
        ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_ylim(0, 1)
    else:
        ax.axhline(0.0, color="gray", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title(f"mean-pooled: {column}", fontsize=10)
handles, labels = axes[-1].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
fig.tight_layout(rect=(0, 0.08, 1, 1))

# %%
# A CT in its own space
# ---------------------
# A new scan is not in atlas space. DrasCLR registers it (affinely) to the
# atlas and maps only the window **corners** through the registration; the
# patch content is cut from the scan as it is. The estimator takes this map
# as ``affines``: one matrix per volume from atlas voxel indices to the
# volume's voxel indices (:func:`~sklearn_cl3d.data.map_corners`).
#
# :func:`~sklearn_cl3d.datasets.load_chest_ct` reads NIfTI files you already
# have; point the environment variable ``SKLEARN_CL3D_CHEST_CT`` at a chest
# CT (a ``.nii``/``.nii.gz`` file or a folder) to use a real scan here. The
# library ships no real CT, so by default a stand-in is written to a
# temporary NIfTI file: another phantom on a finer, non-cubic grid stored in
# LPS orientation, as scanners' DICOM conversions often are. It is
# **synthetic**, like the cohort.
#
# The scan is reoriented to RAS and resampled to the atlas voxel size, then
# registered with the crudest possible affine: per axis, the extent of its
# lungs (the two largest regions below -400 HU inside the body, slice by
# slice; 2nd to 98th percentile of their voxel coordinates, which ignores the
# trachea) is matched to the same extent of the atlas lung mask. A real pipeline would
# use a registration tool (the official code: ANTs, affine, lung mask to
# lung mask).

ct_path = os.environ.get("SKLEARN_CL3D_CHEST_CT")
if ct_path:
    source = "real CT"
else:
    source = "synthetic stand-in"
    tmp = tempfile.mkdtemp()
    ct_path = os.path.join(tmp, "standin_ct.nii.gz")
    shape = (96, 96, 80)
    step = (320 / 96, 320 / 96, 4.0)
    stand_in = make_lung_cohort(1, shape=shape, spacing=step, random_state=123)
    lps = np.diag([-step[0], -step[1], step[2], 1.0])
    lps[:3, 3] = [160.0, 160.0, -160.0]
    nib.save(
        nib.Nifti1Image(stand_in.volumes[0, 0, ::-1, ::-1, :].copy(), lps), ct_path
    )

ct = load_chest_ct(ct_path)
if source != "real CT":
    shutil.rmtree(tmp)  # the stand-in file is no longer needed
volume = ct.volumes[0]  # (1, D, H, W), first scan
volume, affine = ReorientToRAS().apply(volume, ct.affines[0])
volume, affine = Resample(spacing=spacing).apply(volume, affine)
name = os.path.basename(ct.paths[0])
print(f"{source} ({name}): resampled to {volume.shape[1:]} at {spacing} mm")


def extent(mask):
    idx = np.nonzero(mask)
    return np.array([np.percentile(i, [2, 98]) for i in idx]).T  # (2, 3)


def low_attenuation_region(vol):
    body = ndi.binary_fill_holes(vol > -400)
    low = ndi.binary_opening(body & (vol < -400), iterations=1)
    labels, n = ndi.label(low)
    if n == 0:
        return low
    sizes = ndi.sum(low, labels, range(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1  # the two largest components
    return np.isin(labels, keep)


scan_mask = np.zeros(volume.shape[1:], dtype=bool)
for z in range(volume.shape[3]):  # slice by slice, so open lungs are kept
    scan_mask[:, :, z] = low_attenuation_region(volume[0, :, :, z])
(a0, a1), (s0, s1) = extent(atlas_mask), extent(scan_mask)
scale = (s1 - s0) / np.maximum(a1 - a0, 1)
atlas_to_scan = np.eye(4)
atlas_to_scan[:3, :3] = np.diag(scale)
atlas_to_scan[:3, 3] = s0 - scale * a0
corners = np.floor(landmarks @ atlas_to_scan[:3, :3].T + atlas_to_scan[:3, 3] + 0.5)
print("atlas -> scan scale per axis:", np.round(scale, 2))

encoder = encoders["DrasCLR"]
scan_patches = encoder.transform_patches(volume[None], affines=[atlas_to_scan])
scan_feature = encoder.transform(volume[None], affines=[atlas_to_scan])
print(f"patch features {scan_patches.shape}, patient feature {scan_feature.shape}")

# %%
# The scan with its landmark windows, on a coronal slice (head at the top)
# and an axial slice (anterior at the top) through the middle of the
# windows. The arrays are drawn in RAS order, so the subject's right is on
# the right of each image (not the radiological convention). Each window is
# the 16³ cube starting at its mapped corner, labelled with the landmark
# index and coloured by its axial level; windows of neighbouring landmarks
# overlap by 4 voxels, and a window that reaches outside the scan is filled
# with air.

levels = sorted(set(corners[:, 2].astype(int)))
y_cut = int(np.median(corners[:, 1]) + patch_size // 2)
z_cut = int(levels[len(levels) // 2] + patch_size // 2)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
coronal = volume[0, :, y_cut, :].T  # (z, x): head at the top
axial = volume[0, :, :, z_cut].T  # (y, x): anterior at the top
for ax, image, title in (
    (axes[0], coronal, f"coronal, y = {y_cut}"),
    (axes[1], axial, f"axial, z = {z_cut}"),
):
    ax.imshow(image, cmap="gray", vmin=-1000, vmax=200, origin="lower")
    ax.set_title(f"{source}: {title}", fontsize=10)
    ax.axis("off")
cmap = plt.get_cmap("viridis")
for j, (cx, cy, cz) in enumerate(corners):
    color = cmap(levels.index(int(cz)) / max(len(levels) - 1, 1))
    if cy <= y_cut < cy + patch_size:
        axes[0].add_patch(
            Rectangle((cx, cz), patch_size, patch_size, fill=False, color=color)
        )
        axes[0].text(cx + 1, cz + 1, str(j), color=color, fontsize=7)
    if cz <= z_cut < cz + patch_size:
        axes[1].add_patch(
            Rectangle((cx, cy), patch_size, patch_size, fill=False, color=color)
        )
        axes[1].text(cx + 1, cy + 1, str(j), color=color, fontsize=7)
fig.tight_layout()
# sphinx_gallery_thumbnail_number = 3

# %%
# Reading the results
# -------------------
# This page pretrains each encoder once (``random_state=0``) for one short
# epoch, so its intervals cover the folds only. In the run that built the
# page, DrasCLR's mean-pooled features were ahead of all three ablations on
# the upper-zone R². Over pretraining seeds the picture is less clear. The
# benchmark ``python benchmarks/method_effects.py drasclr`` (100 pretraining
# volumes, 3 epochs, 3 seeds, linear probes on 20 to 100 of 200 other
# volumes over 10 splits; one torch thread on an Intel Xeon, family 6,
# model 207) measured, as differences to DrasCLR with 95 % intervals over
# seeds x splits:
#
# * **Upper zone > 5 %, ROC AUC** (``--target auc``, 1204 s,
#   ``benchmarks/measured/effect_drasclr_auc.json``). DrasCLR reaches 0.63,
#   0.71 and 0.72 with 20, 50 and 100 labels. The random network is behind
#   by -0.110 [-0.238, +0.030], -0.196 [-0.310, -0.041] and
#   -0.188 [-0.293, -0.045]; without the neighbour loss by
#   -0.138 [-0.276, -0.006] with 20 labels (intervals containing 0 with
#   more labels); without location routing the encoder **ties** DrasCLR
#   (-0.004 [-0.138, +0.117] with 20 labels, +0.025 [-0.133, +0.184] with
#   100).
# * **Upper-zone R²** (the default target, 1011 s,
#   ``benchmarks/measured/effect_drasclr.json``): every ablation's interval contains 0
#   except that without the neighbour loss with 50 labels
#   (-0.320 [-0.812, -0.067]); the R² of one encoder moves by up to 0.5
#   from one pretraining seed to the next (seed 1 of DrasCLR: -0.14 with
#   100 labels; seeds 0 and 2: 0.35 and 0.33), which swamps the differences.
#
# So at this scale pretraining helps (against the random network) and the
# neighbour loss helps with few labels, but the location routing that
# defines DrasCLR has no measurable effect on mean-pooled features, and the
# seed-to-seed spread is large. What remains untested is the paper's
# setting: registered CT at 1 mm, 32³ patches at 581 landmarks, 4096-key
# queues and long training, on a GPU. The learned features are also far
# below the hand-crafted LAA-950 index (0.90 to 0.93 AUC): in these
# phantoms emphysema is *defined* by low-attenuation voxels, so LAA-950 per
# landmark is close to an oracle. On real CT, texture and the distribution
# of low attenuation are what a learned representation can add.
#
# The loss curves are a saw-tooth: with 48 subjects and batches of 24, each
# landmark gets two batches per epoch. The first meets a queue of random
# vectors (easy negatives, low loss), the second a queue that holds the
# first batch's keys, i.e. other subjects at the same landmark (hard
# negatives, high loss). For the same reason the loss of a longer run rises
# from epoch to epoch while the queues fill, so it says little about what
# the encoder learns.
#
# For real work, pretrain on registered CT at the official 1 mm, 32³ patches
# and 581 landmarks, on a GPU (see the DrasCLR page of the user guide for
# throughput and memory).

print(f"total run time {time.perf_counter() - t_start:.0f} s")
