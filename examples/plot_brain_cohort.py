"""
The built-in brain cohort
=========================

:func:`sklearn_cl3d.datasets.make_brain_cohort` generates synthetic T1 MRI
offline from the MNI152 2009a templates that ship with nilearn. Nothing here
is a real subject: each volume is the template warped and degraded by a
generative model in which a latent ageing acceleration ``z`` drives both the
diagnosis and a brain age ahead of the chronological age (larger ventricles,
thinner grey matter, lower grey/white contrast), hidden behind random shape
changes and site effects (contrast, blur, bias field, noise, scanner gain).

This page shows a young and an old subject, the effect of the acquisition
site, and the metadata that come with the images.
"""

# %%
# Generate a small cohort at 4 mm
# -------------------------------
import matplotlib.pyplot as plt
import numpy as np

from sklearn_cl3d.datasets import make_brain_cohort

cohort = make_brain_cohort(40, resolution=4, random_state=0)
print(cohort.volumes.shape)
print({k: np.round(cohort[k][:5], 1) for k in ("age", "brain_age", "diagnosis")})

# %%
# Young vs old
# ------------
# Axial slices through the ventricles of the youngest and the oldest subject
# (each image is shown with its own intensity range: sites differ in gain).
young, old = np.argmin(cohort.brain_age), np.argmax(cohort.brain_age)
z = cohort.volumes.shape[-1] // 2 + 2
fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
for ax, i, label in zip(axes, (young, old), ("youngest", "oldest")):
    ax.imshow(np.rot90(cohort.volumes[i, 0, :, :, z]), cmap="gray")
    ax.set_title(
        f"{label}: age {cohort.age[i]:.0f}, brain age {cohort.brain_age[i]:.0f}\n"
        f"ventricles {cohort.ventricles_ml[i]:.0f} ml",
        fontsize=8,
    )
    ax.axis("off")
fig.tight_layout()

# %%
# Sites
# -----
# One subject per site: the same anatomy model seen through different
# scanners (contrast, blur, bias field, noise and gain change with the site).
sites = np.unique(cohort.site)
fig, axes = plt.subplots(1, len(sites), figsize=(2.2 * len(sites), 2.4))
for ax, s in zip(np.atleast_1d(axes), sites):
    i = int(np.flatnonzero(cohort.site == s)[0])
    ax.imshow(np.rot90(cohort.volumes[i, 0, :, :, z]), cmap="gray")
    ax.set_title(f"site {s}", fontsize=8)
    ax.axis("off")
fig.tight_layout()

# %%
# Metadata
# --------
# Ventricle volume grows with age; the diagnosis depends on the ageing
# acceleration only, so patients and controls have the same age distribution.
fig, axes = plt.subplots(1, 2, figsize=(7, 3))
dx = cohort.diagnosis.astype(bool)
axes[0].scatter(cohort.age[~dx], cohort.ventricles_ml[~dx], s=12, label="control")
axes[0].scatter(cohort.age[dx], cohort.ventricles_ml[dx], s=12, label="patient")
axes[0].set_xlabel("age (years)")
axes[0].set_ylabel("ventricles (ml)")
axes[0].legend(frameon=False, fontsize=8)
axes[1].scatter(cohort.age, cohort.brain_age - cohort.age, c=dx, s=12, cmap="coolwarm")
axes[1].set_xlabel("age (years)")
axes[1].set_ylabel("brain age - age (years)")
fig.tight_layout()

# %%
# The model in words is in ``cohort.DESCR``:
print(cohort.DESCR[:600])

# %%
# The synthetic chest CT cohort
# -----------------------------
# :func:`~sklearn_cl3d.datasets.make_lung_cohort` makes chest CT phantoms in
# Hounsfield units (also synthetic): lungs with airways and vessels and
# clusters of low attenuation ("emphysema") whose fraction is the target.
from sklearn_cl3d.datasets import make_lung_cohort

lungs = make_lung_cohort(3, random_state=0)
order = np.argsort(lungs.emphysema_fraction)
fig, axes = plt.subplots(1, 3, figsize=(7, 2.6))
for ax, i in zip(axes, order):
    vol = lungs.volumes[i, 0]
    ax.imshow(np.rot90(vol[:, vol.shape[1] // 2, :]), cmap="gray", vmin=-1000, vmax=200)
    ax.set_title(f"emphysema {100 * lungs.emphysema_fraction[i]:.1f} %", fontsize=8)
    ax.axis("off")
fig.tight_layout()
plt.show()
