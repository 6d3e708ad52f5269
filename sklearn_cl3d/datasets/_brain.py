"""Synthetic brain T1 MRI cohort with a known ageing process.

Every subject is the real ICBM152 2009a anatomy (shipped with nilearn)
deformed, atrophied and re-imaged with site-specific acquisition effects, so
that images carry a controlled amount of age and disease signal hidden behind
realistic nuisances. See :func:`make_brain_cohort`.
"""

from __future__ import annotations

import numbers
import os

import numpy as np
from scipy.spatial.transform import Rotation
from sklearn.utils import Bunch, check_random_state

from ._bids import bids_image_path, write_dataset_description
from ._brain_model import _sample_subjects, _site_table, _subject
from ._templates import block_average, brain_template_bank

__all__ = ["make_brain_cohort"]

#: (acceleration in years per unit z, reserve in years, deformation std in mm)
DIFFICULTIES = {
    "easy": (12.0, 2.0, 1.0),
    "medium": (8.0, 3.0, 2.0),
    "hard": (5.0, 4.0, 3.0),
}
MAX_SITES = 8
_VOLUME_KEYS = ("gm_ml", "wm_ml", "csf_ml", "ventricles_ml")
#: Voxel sizes (mm) of make_brain_cohort; 8 mm is the 4 mm cohort averaged
#: over 2x2x2 blocks.
RESOLUTIONS = (2, 4, 8)
MODALITIES = ("T1w", "GM")
#: BIDS (suffix, entities) of the images of each modality
_BIDS_NAMES = {"T1w": ("T1w", ()), "GM": ("probseg", (("label", "GM"),))}


def _check_positive_int(value, name, low, high=None):
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}.")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}; got {value!r}.")
    return int(value)


def _check_knob(value, default, name):
    if value is None:
        return float(default)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative number; got {value!r}.")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number; got {value!r}.")
    return float(value)


def _write_participants(path, ids, meta, volumes):
    columns = ["participant_id", "age", "sex", "site", "diagnosis", "brain_age"]
    columns += list(_VOLUME_KEYS)
    lines = ["\t".join(columns)]
    for i, pid in enumerate(ids):
        row = [
            pid,
            f"{meta['age'][i]:.2f}",
            "M" if meta["sex"][i] == 1 else "F",
            str(int(meta["site"][i])),
            str(int(meta["diagnosis"][i])),
            f"{meta['brain_age'][i]:.2f}",
        ]
        row += [f"{volumes[key][i]:.2f}" for key in _VOLUME_KEYS]
        lines.append("\t".join(row))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


_DESCR = """\
Synthetic brain T1 MRI cohort (make_brain_cohort)
-------------------------------------------------

**Everything in this dataset is synthetic.** No subject is real: each image is
the ICBM152 2009a symmetric template (an average of 152 adult brains, shipped
with nilearn) transformed by a known generative model, and every label is
drawn from that model. Use it to develop and test pipelines, never to draw
conclusions about real brains.

Generative model
~~~~~~~~~~~~~~~~
Anatomy: the template's grey-matter (GM), white-matter (WM) and brain-mask
maps; CSF = mask - GM - WM; ventricles = CSF > 0.5 at least 14 mm inside the
brain (largest 3 components); the part of the T1 image not explained by a
least-squares fit on the three tissue maps is kept as texture. Maps are
block-averaged to {resolution} mm, grid {shape}.

Per subject:
- site: uniform over {n_sites} sites; each site has its own Beta-shaped age
  distribution over 20-85 years (site and age are confounded);
- sex ~ Bernoulli(0.5) (1 = male); z ~ N(0, 1), the latent ageing
  acceleration;
- diagnosis ~ Bernoulli(sigmoid(-0.8 + 3 z)): it depends on z only, so age
  alone does not predict it;
- brain_age = age + {acceleration:g} z + {reserve:g} N(0, 1);
- atrophy = max(0, (brain_age - 20) / 60) ** 1.5 (0 at 20, 1 at 80 years).

Image: global scaling (exp(N(0, 0.03)), x1.02 for males, x0.98 for
females), rotation (N(0, 2 deg) per axis) and shift (N(0, 1.5 mm));
ventricles enlarged by pushing the sampling grid along the gradient of a
smoothed ventricle map by up to 6 mm x atrophy (integrated in small steps so
that it cannot fold); a random smooth deformation (control points every
25 mm displaced by N(0, {deformation_mm:g} mm) per axis) that hides much of
the ageing signal; linear interpolation of the maps; GM partial-volume
erosion, WM loss and CSF gain with atrophy; site tissue intensities with
WM/GM contrast loss with atrophy, template texture, site blur, a
multiplicative bias field (up to +-10-25 %), Rician noise (2-5 % of WM),
skull-stripping and a site gain between 0.05 and 1200 (normalise
intensities before learning).

Returned fields: volumes, age, sex, site, diagnosis, brain_age, z, atrophy,
gm_ml, wm_ml, csf_ml, ventricles_ml (true volumes of the generated
subject), affine (MNI space), resolution.
"""


def make_brain_cohort(
    n_subjects,
    resolution=4,
    difficulty="medium",
    n_sites=4,
    random_state=None,
    return_paths=False,
    out_dir=None,
    *,
    acceleration=None,
    reserve=None,
    deformation_mm=None,
    modality="T1w",
    return_labels=False,
):
    """Generate a synthetic brain T1 MRI cohort with known ageing and disease.

    Each subject is the ICBM152 template (shipped with nilearn, loaded
    offline) transformed by a generative model: a latent ageing acceleration
    ``z`` drives both a binary diagnosis and an accelerated brain age, which
    enlarges the ventricles, thins grey matter and lowers white-matter
    contrast, all hidden behind random shape variation and site-specific
    acquisition effects. See ``DESCR`` of the result for the full model.

    Parameters
    ----------
    n_subjects : int
        Number of subjects (>= 1).
    resolution : {4, 2, 8}, default=4
        Isotropic voxel size in mm. Volumes are ``(50, 59, 48)`` at 4 mm and
        ``(99, 117, 95)`` at 2 mm (about 8 times more memory and time). At
        8 mm, ``(25, 30, 24)``, each subject is generated at 4 mm and averaged
        over 2x2x2 blocks (the same subjects as at 4 mm with the same seed,
        as a downsampled scan; generation costs the same as at 4 mm).
    difficulty : {"easy", "medium", "hard"}, default="medium"
        Preset of the three knobs ``(acceleration, reserve, deformation_mm)``:
        easy ``(12, 2, 1)``, medium ``(8, 3, 2)``, hard ``(5, 4, 3)``.
    n_sites : int, default=4
        Number of acquisition sites, 1 to 8. Sites beyond the four built-in
        ones have parameters drawn from a fixed seed (identical across calls).
    random_state : int, RandomState instance or None, default=None
        Seed of all random draws; the same seed gives identical arrays.
    return_paths : bool, default=False
        If True, write the cohort to ``out_dir`` as a BIDS dataset and
        return the file paths in ``volumes`` instead of arrays:
        ``dataset_description.json``, ``participants.tsv`` (the metadata
        below, sex as ``M``/``F``) and one image per subject (float32, with
        the MNI affine at this resolution),
        ``sub-XXXX/anat/sub-XXXX_T1w.nii.gz``, or
        ``sub-XXXX/anat/sub-XXXX_label-GM_probseg.nii.gz`` for
        ``modality="GM"`` (a derivative dataset). Read it back with
        :func:`sklearn_cl3d.data.read_bids` (``suffix="T1w"`` or
        ``"probseg"``).
    out_dir : str or path-like, default=None
        Output folder (created if missing); required when ``return_paths``.
    acceleration : float, default=None
        Years of brain age per unit of ``z``; overrides ``difficulty``.
    reserve : float, default=None
        Standard deviation (years) of the individual brain-age noise that is
        unrelated to ``z``; overrides ``difficulty``.
    deformation_mm : float, default=None
        Standard deviation (mm) of the control-point displacements of the
        random smooth deformation (control points every 25 mm); overrides
        ``difficulty``.
    modality : {"T1w", "GM"}, default="T1w"
        ``"T1w"``: the T1-weighted image with all acquisition effects.
        ``"GM"``: the subject's grey-matter fraction map (in [0, 1], after
        atrophy, in the subject's own space, skull-stripped), free of site
        intensities, blur, bias field, noise and gain: what a perfect tissue
        segmentation gives, the kind of input (grey-matter maps) the y-Aware
        paper used. Same subjects and metadata as ``"T1w"`` for a given seed.
    return_labels : bool, default=False
        Also return each subject's tissue label map in ``labels``: 0
        background (outside the brain mask), 1 CSF, 2 grey matter, 3 white
        matter, the tissue with the largest true fraction in the voxel (after
        atrophy, in the subject's space; at 8 mm the fractions are
        block-averaged first). A segmentation target with partial volume,
        site contrast, bias field and noise in the image. The images and
        metadata are the same as without labels.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the fields

        volumes : ndarray of shape (n_subjects, 1, D, H, W), float32, or list of str
            Skull-stripped T1 images (arbitrary, site-dependent units), or
            the NIfTI paths when ``return_paths`` is True.
        age, brain_age, z, atrophy : ndarray of shape (n_subjects,), float
            Chronological age (years), brain age, latent ageing acceleration
            and atrophy (0 at brain age 20, 1 at 80).
        sex : ndarray of shape (n_subjects,), int
            1 for male, 0 for female.
        site : ndarray of shape (n_subjects,), int
            Site index in ``range(n_sites)``.
        diagnosis : ndarray of shape (n_subjects,), int
            1 for patients, 0 for controls.
        gm_ml, wm_ml, csf_ml, ventricles_ml : ndarray of shape (n_subjects,)
            True tissue volumes of the generated subjects in ml (CSF includes
            the ventricles).
        affine : ndarray of shape (4, 4)
            Voxel-to-MNI-mm affine of every volume.
        resolution : int
            Voxel size in mm.
        modality : str
            ``"T1w"`` or ``"GM"``.
        labels : ndarray of shape (n_subjects, D, H, W), int64
            Tissue label maps (only when ``return_labels``).
        participants : str
            Path of ``participants.tsv`` (only when ``return_paths``).
        DESCR : str
            Description of the generative model.

    Raises
    ------
    ValueError
        If a parameter is out of range, or ``return_paths`` is True without
        ``out_dir``.

    Notes
    -----
    Building the template bank takes a few seconds once per resolution and
    process; then 100 subjects take a few seconds at 4 mm and about half a
    minute at 2 mm.

    Examples
    --------
    >>> from sklearn_cl3d.datasets import make_brain_cohort
    >>> cohort = make_brain_cohort(4, resolution=4, random_state=0)
    >>> cohort.volumes.shape
    (4, 1, 50, 59, 48)
    >>> cohort.volumes.dtype
    dtype('float32')
    >>> sorted(set(cohort.diagnosis.tolist()) | {0, 1})
    [0, 1]
    """
    n_subjects = _check_positive_int(n_subjects, "n_subjects", 1)
    if isinstance(resolution, bool | np.bool_) or resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution must be 2, 4 or 8 (mm); only these are supported, "
            f"got {resolution!r}."
        )
    resolution = int(resolution)
    if not isinstance(modality, str) or modality not in MODALITIES:
        raise ValueError(
            f"modality must be one of {list(MODALITIES)}; got {modality!r}."
        )
    # 8 mm: generated at 4 mm, then averaged over 2x2x2 blocks
    factor = 2 if resolution == 8 else 1
    bank_resolution = resolution // factor
    if not isinstance(difficulty, str) or difficulty not in DIFFICULTIES:
        raise ValueError(
            f"difficulty must be one of {sorted(DIFFICULTIES)}; got {difficulty!r}."
        )
    n_sites = _check_positive_int(n_sites, "n_sites", 1, MAX_SITES)
    default_acc, default_res, default_def = DIFFICULTIES[difficulty]
    acceleration = _check_knob(acceleration, default_acc, "acceleration")
    reserve = _check_knob(reserve, default_res, "reserve")
    deformation_mm = _check_knob(deformation_mm, default_def, "deformation_mm")
    if return_paths:
        if out_dir is None:
            raise ValueError("out_dir is required when return_paths=True.")
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)

    rng = check_random_state(random_state)
    bank = brain_template_bank(bank_resolution)
    shape = tuple(-(-n // factor) for n in bank.shape)
    affine = np.array(bank.affine)
    if factor > 1:
        affine[:3, 3] += affine[:3, :3] @ np.full(3, (factor - 1) / 2.0)
        affine[:3, :3] *= factor
    sites = _site_table(n_sites)
    meta = _sample_subjects(n_subjects, sites, acceleration, reserve, rng)
    rotations = Rotation.from_euler("xyz", meta["angles"], degrees=True).as_matrix()

    ids = [f"sub-{i + 1:04d}" for i in range(n_subjects)]
    volumes = {key: np.empty(n_subjects) for key in _VOLUME_KEYS}
    if return_labels:
        label_maps = np.zeros((n_subjects, *shape), dtype=np.int64)
    if return_paths:
        import nibabel as nib

        images = []
    else:
        images = np.empty((n_subjects, 1, *shape), dtype=np.float32)
    for i in range(n_subjects):
        params = {
            "atrophy": float(meta["atrophy"][i]),
            "scale": float(meta["scale"][i]),
            "rotation": rotations[i],
            "shift": meta["shift"][i],
        }
        image, vols, *fractions = _subject(
            bank,
            sites[meta["site"][i]],
            params,
            deformation_mm,
            np.random.default_rng(int(meta["seeds"][i])),
            modality,
            labels=return_labels,
        )
        if factor > 1:
            image = block_average(image, factor).astype(np.float32)
        if return_labels:
            fractions = fractions[0]
            if factor > 1:
                fractions = np.stack([block_average(f, factor) for f in fractions])
                # zero padding of the last blocks counts as background
                fractions[0] += 1.0 - fractions.sum(axis=0)
            label_maps[i] = np.argmax(fractions, axis=0)
        for key in _VOLUME_KEYS:
            volumes[key][i] = vols[key]
        if return_paths:
            nifti = nib.Nifti1Image(image, affine)
            nifti.header.set_xyzt_units("mm")
            path = bids_image_path(out_dir, ids[i], *_BIDS_NAMES[modality])
            nib.save(nifti, path)
            images.append(path)
        else:
            images[i, 0] = image

    data = Bunch(
        volumes=images,
        age=meta["age"],
        sex=meta["sex"],
        site=meta["site"],
        diagnosis=meta["diagnosis"],
        brain_age=meta["brain_age"],
        z=meta["z"],
        atrophy=meta["atrophy"],
        **volumes,
        affine=affine,
        resolution=resolution,
        modality=modality,
        DESCR=_DESCR.format(
            resolution=resolution,
            shape=shape,
            n_sites=n_sites,
            acceleration=acceleration,
            reserve=reserve,
            deformation_mm=deformation_mm,
        ),
    )
    if return_labels:
        data.labels = label_maps
    if return_paths:
        participants = os.path.join(out_dir, "participants.tsv")
        _write_participants(participants, ids, meta, volumes)
        write_dataset_description(
            out_dir,
            f"Synthetic brain cohort ({modality}, {resolution} mm)",
            "sklearn_cl3d.datasets.make_brain_cohort",
            derivative=modality != "T1w",
        )
        data.participants = participants
    return data
