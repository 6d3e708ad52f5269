"""Synthetic chest CT cohort with regional emphysema, and a loader for real
chest CT stored as NIfTI.

:func:`make_lung_cohort` draws simple but CT-like chest phantoms in Hounsfield
units (body, fat, spine, two lungs, branching airways and vessels) with
low-attenuation clusters whose regional extent is the regression target.
:func:`load_chest_ct` reads the user's own scans.
"""

from __future__ import annotations

import numbers
import os

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._bids import bids_image_path, write_dataset_description
from ._lung_phantom import NOISE_HU, _Canvas, _subject

__all__ = ["load_chest_ct", "make_lung_cohort"]

REGIONS = (
    "right_upper",
    "right_middle",
    "right_lower",
    "left_upper",
    "left_middle",
    "left_lower",
)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _check_shape(shape):
    try:
        shape = tuple(shape)
    except TypeError:
        shape = (shape,)
    if len(shape) != 3 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 16
        for s in shape
    ):
        raise ValueError(f"shape must be a tuple of 3 integers >= 16; got {shape!r}.")
    return tuple(int(s) for s in shape)


def _check_spacing(spacing):
    if isinstance(spacing, numbers.Real) and not isinstance(spacing, bool):
        spacing = (spacing,) * 3
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (3,) or not np.all(np.isfinite(values)):
        raise ValueError(
            f"spacing must be a positive number or 3 positive numbers (mm); "
            f"got {spacing!r}."
        )
    if np.any(values <= 0):
        raise ValueError(f"spacing must be positive (mm); got {spacing!r}.")
    return tuple(float(v) for v in values)


def _lung_affine(shape, spacing):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
    return affine


_LUNG_DESCR = """\
Synthetic chest CT cohort (make_lung_cohort)
--------------------------------------------

**Everything in this dataset is synthetic.** The volumes are geometric
phantoms, not scans of people; they imitate the intensities (Hounsfield units,
HU) and rough layout of a chest CT so that pipelines can be developed and
tested. Do not draw clinical conclusions from them.

Each subject, on a {shape} grid with {spacing} mm voxels (RAS axes, anatomy
scaled to the field of view): air outside the body (-1000 HU); an elliptic
body with subcutaneous fat (about -100 HU) around soft tissue (about 40 HU),
a vertebra (about 400 HU); two lungs (right and left) shaped as tapered
elliptic sections above a diaphragm dome and around the heart, with
parenchyma of about -850 HU (subject-specific, denser posteriorly, fine
texture); a randomly bifurcating airway tree (trachea, main bronchi, lobar and
smaller branches: air lumen -1000 HU, walls about 0 HU) and vessel trees
(about 40 HU) rendered with partial volume inside the lungs; emphysema as
clusters of low attenuation (-995 to -975 HU) from a thresholded smooth random
field, with a subject-specific severity (30 % of subjects almost none) and
regional pattern (upper-predominant, lower-predominant or diffuse); a mild
blur (reconstruction kernel) and Gaussian noise of {noise:g} HU.

Targets: emphysema_fraction (emphysematous share of the lung mask),
regional_emphysema (the same share in the upper, middle and lower thirds of
each lung, columns named in `regions`), and fev1, a synthetic FEV1 in %
predicted: 98 - 120 x emphysema_fraction - 60 x (mean of the two lower-third
fractions) + N(0, 7), clipped to [10, 130].
"""


def make_lung_cohort(
    n_subjects,
    shape=(64, 64, 64),
    spacing=(5.0, 5.0, 5.0),
    random_state=None,
    return_paths=False,
    out_dir=None,
):
    """Generate a synthetic chest CT cohort (HU) with regional emphysema.

    Each subject is a phantom of a chest CT: body and fat, spine, two lungs
    with branching airways and vessels, and clusters of low attenuation
    (emphysema) whose extent, overall and per lung region, is the target.
    See ``DESCR`` of the result for the full model.

    Parameters
    ----------
    n_subjects : int
        Number of subjects (>= 1).
    shape : tuple of 3 int, default=(64, 64, 64)
        Grid shape (RAS axis order: right, anterior, superior); each >= 16.
    spacing : float or tuple of 3 float, default=(5.0, 5.0, 5.0)
        Voxel size in mm. The anatomy is scaled to the field of view
        ``shape * spacing`` (320 mm per axis by default).
    random_state : int, RandomState instance or None, default=None
        Seed of all random draws; the same seed gives identical arrays.
    return_paths : bool, default=False
        If True, write the cohort to ``out_dir`` as a BIDS dataset and
        return paths in ``volumes`` and ``lung_mask`` instead of arrays:
        ``dataset_description.json``, ``participants.tsv`` of the targets,
        ``sub-XXXX/anat/sub-XXXX_ct.nii.gz`` (float32 HU) and, in the
        derivative dataset ``derivatives/lungmask/``,
        ``sub-XXXX/anat/sub-XXXX_desc-lung_mask.nii.gz`` (uint8). Read it
        back with :func:`sklearn_cl3d.data.read_bids` (``suffix="ct"``). CT
        is not yet part of the BIDS specification (a proposal, BEP024), so a
        strict validator may flag the ``ct`` suffix.
    out_dir : str or path-like, default=None
        Output folder (created if missing); required when ``return_paths``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the fields

        volumes : ndarray of shape (n_subjects, 1, D, H, W), float32, or list of str
            CT volumes in HU.
        lung_mask : ndarray of shape (n_subjects, 1, D, H, W), bool, or list of str
            Lungs, including their inner airways and vessels.
        emphysema_fraction : ndarray of shape (n_subjects,)
            Share of lung voxels that are emphysematous.
        regional_emphysema : ndarray of shape (n_subjects, 6)
            The same share per region, in the order of ``regions``.
        regions : list of str
            ``right_upper``, ``right_middle``, ``right_lower``, ``left_upper``,
            ``left_middle``, ``left_lower``.
        fev1 : ndarray of shape (n_subjects,)
            Synthetic FEV1 (% predicted) derived from the emphysema with noise.
        spacing : tuple of float
            Voxel size in mm.
        affine : ndarray of shape (4, 4)
            Voxel-to-world affine (RAS mm, origin at the grid centre).
        participants : str
            Path of ``participants.tsv`` (only when ``return_paths``).
        DESCR : str
            Description of the phantom model.

    Raises
    ------
    ValueError
        If a parameter is invalid, or ``return_paths`` is True without
        ``out_dir``.

    Examples
    --------
    >>> from sklearn_cl3d.datasets import make_lung_cohort
    >>> ct = make_lung_cohort(2, shape=(32, 32, 32), spacing=10.0, random_state=0)
    >>> ct.volumes.shape, ct.volumes.dtype
    ((2, 1, 32, 32, 32), dtype('float32'))
    >>> bool(ct.volumes[ct.lung_mask].mean() < -700)
    True
    >>> ct.regional_emphysema.shape
    (2, 6)
    """
    if (
        isinstance(n_subjects, bool)
        or not isinstance(n_subjects, numbers.Integral)
        or n_subjects < 1
    ):
        raise ValueError(f"n_subjects must be an integer >= 1; got {n_subjects!r}.")
    n_subjects = int(n_subjects)
    shape = _check_shape(shape)
    spacing = _check_spacing(spacing)
    if return_paths:
        if out_dir is None:
            raise ValueError("out_dir is required when return_paths=True.")
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)

    rng = check_random_state(random_state)
    seeds = rng.randint(np.iinfo(np.int32).max, size=n_subjects)
    fev1_noise = rng.normal(0.0, 7.0, size=n_subjects)
    canvas = _Canvas(shape, spacing)
    affine = _lung_affine(shape, spacing)
    ids = [f"sub-{i + 1:04d}" for i in range(n_subjects)]

    overall = np.empty(n_subjects)
    regional = np.empty((n_subjects, len(REGIONS)))
    if return_paths:
        import nibabel as nib

        volumes, masks = [], []
        mask_dir = os.path.join(out_dir, "derivatives", "lungmask")
    else:
        volumes = np.empty((n_subjects, 1, *shape), dtype=np.float32)
        masks = np.empty((n_subjects, 1, *shape), dtype=bool)
    for i in range(n_subjects):
        volume, lung, overall[i], regional[i] = _subject(
            canvas, np.random.default_rng(int(seeds[i]))
        )
        if return_paths:
            for array, root, entities, suffix, store in (
                (volume, out_dir, (), "ct", volumes),
                (lung.astype(np.uint8), mask_dir, (("desc", "lung"),), "mask", masks),
            ):
                img = nib.Nifti1Image(array, affine)
                img.header.set_xyzt_units("mm")
                path = bids_image_path(root, ids[i], suffix, entities)
                nib.save(img, path)
                store.append(path)
        else:
            volumes[i, 0] = volume
            masks[i, 0] = lung

    lower = regional[:, [2, 5]].mean(axis=1)
    fev1 = np.clip(98.0 - 120.0 * overall - 60.0 * lower + fev1_noise, 10.0, 130.0)
    data = Bunch(
        volumes=volumes,
        lung_mask=masks,
        emphysema_fraction=overall,
        regional_emphysema=regional,
        regions=list(REGIONS),
        fev1=fev1,
        spacing=spacing,
        affine=affine,
        DESCR=_LUNG_DESCR.format(shape=shape, spacing=spacing, noise=NOISE_HU),
    )
    if return_paths:
        path = os.path.join(out_dir, "participants.tsv")
        header = ["participant_id", "emphysema_fraction", *REGIONS, "fev1"]
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\t".join(header) + "\n")
            for i, pid in enumerate(ids):
                row = [pid, f"{overall[i]:.5f}"]
                row += [f"{v:.5f}" for v in regional[i]] + [f"{fev1[i]:.2f}"]
                fh.write("\t".join(row) + "\n")
        generator = "sklearn_cl3d.datasets.make_lung_cohort"
        write_dataset_description(out_dir, "Synthetic chest CT cohort", generator)
        write_dataset_description(
            mask_dir,
            "Lung masks of the synthetic chest CT cohort",
            generator,
            derivative=True,
        )
        data.participants = path
    return data


def _nifti_files(path):
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(_NIFTI_SUFFIXES)
            and os.path.isfile(os.path.join(path, name))
        )
        if not files:
            raise FileNotFoundError(
                f"No NIfTI file (.nii or .nii.gz) found in the folder {path!r}."
            )
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or folder: {path!r}.")
    if not path.lower().endswith(_NIFTI_SUFFIXES):
        raise ValueError(
            f"{path!r} is not a NIfTI file: expected a .nii or .nii.gz file, or a "
            "folder of them."
        )
    return [path]


def load_chest_ct(path):
    """Load real chest CT volumes from a NIfTI file or a folder of them.

    Nothing is downloaded: point ``path`` at scans you already have (for
    example a public chest CT collection converted to NIfTI).

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` / ``.nii.gz`` file, or a folder whose ``.nii`` /
        ``.nii.gz`` files (sorted by name) are all loaded.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the fields

        volumes : ndarray of shape (n, 1, D, H, W) or list of ndarray
            float32 intensities after the NIfTI scaling (HU for CT). An array
            when every volume has the same shape, otherwise a list of
            ``(1, D, H, W)`` arrays.
        affines : ndarray of shape (n, 4, 4)
            Voxel-to-world affine of each volume.
        spacings : ndarray of shape (n, 3)
            Voxel sizes in mm.
        paths : list of str
            The files, in the order of ``volumes``.
        DESCR : str
            Where the data came from.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or a folder holds no NIfTI file.
    ValueError
        If a file is not NIfTI, cannot be read, is not 3-D (trailing
        singleton axes are dropped first) or holds non-finite voxels: the
        checks of :func:`~sklearn_cl3d.data.load_volume`, whose message names
        the file.

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel as nib, numpy as np
    >>> from sklearn_cl3d.datasets import load_chest_ct
    >>> folder = tempfile.mkdtemp()
    >>> img = nib.Nifti1Image(np.full((8, 8, 8), -800.0, np.float32), np.eye(4))
    >>> nib.save(img, os.path.join(folder, "scan.nii.gz"))
    >>> ct = load_chest_ct(folder)
    >>> ct.volumes.shape
    (1, 1, 8, 8, 8)
    """
    from ..data import load_volume

    path = os.fspath(path)
    files = _nifti_files(path)
    volumes, affines, spacings = [], [], []
    for file in files:
        # the library's one reader: bounded, finite voxels, errors name the file
        volume, affine = load_volume(file, expected_ndim=3)
        volumes.append(volume)
        affines.append(np.asarray(affine, dtype=np.float64))
        spacings.append(np.sqrt((affines[-1][:3, :3] ** 2).sum(axis=0)))
    if len({v.shape for v in volumes}) == 1:
        volumes = np.stack(volumes)
    return Bunch(
        volumes=volumes,
        affines=np.stack(affines),
        spacings=np.stack(spacings),
        paths=files,
        DESCR=f"Chest CT loaded from {path!r} ({len(files)} NIfTI file(s)).",
    )
