"""Tests of the synthetic cohorts and the chest CT loader."""

import csv
import importlib.util

import nibabel as nib
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_predict

from sklearn_cl3d.datasets import load_chest_ct, make_brain_cohort, make_lung_cohort

needs_nilearn = pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None,
    reason="the brain cohort is built from nilearn's MNI152 templates",
)

SHAPE_4MM = (50, 59, 48)
SHAPE_2MM = (99, 117, 95)


@pytest.fixture(scope="module")
def cohort():
    """One medium cohort at 4 mm shared by the statistical tests."""
    return make_brain_cohort(300, resolution=4, random_state=0)


@pytest.fixture(scope="module")
def lungs():
    return make_lung_cohort(40, random_state=0)


# --------------------------------------------------------------------------
# Brain cohort
# --------------------------------------------------------------------------


@needs_nilearn
def test_brain_shapes_dtypes_and_affine(cohort):
    n = 300
    assert cohort.volumes.shape == (n, 1, *SHAPE_4MM)
    assert cohort.volumes.dtype == np.float32
    assert np.isfinite(cohort.volumes).all()
    assert (cohort.volumes >= 0).all()
    for key in ("age", "sex", "site", "diagnosis", "brain_age", "z", "atrophy"):
        assert cohort[key].shape == (n,), key
    for key in ("gm_ml", "wm_ml", "csf_ml", "ventricles_ml"):
        assert cohort[key].shape == (n,), key
        assert (cohort[key] > 0).all(), key
    assert set(np.unique(cohort.sex)) <= {0, 1}
    assert set(np.unique(cohort.diagnosis)) == {0, 1}
    assert set(np.unique(cohort.site)) == {0, 1, 2, 3}
    assert cohort.age.min() >= 20 and cohort.age.max() <= 85
    assert (cohort.atrophy >= 0).all()
    assert cohort.resolution == 4
    assert "synthetic" in cohort.DESCR.lower()

    # The 4 mm grid is the 2 mm MNI grid block-averaged by 2: the affine maps
    # voxel centres to the centres of the 2 mm blocks, and the grid spans the
    # same field of view (the 2 mm grid is zero-padded to an even size).
    affine = cohort.affine
    np.testing.assert_allclose(np.diag(affine)[:3], 4.0)
    np.testing.assert_allclose(affine[:3, 3], [-97.0, -133.0, -71.0])
    mni_2mm = np.array(
        [[2.0, 0, 0, -98.0], [0, 2.0, 0, -134.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]]
    )
    for index in ([0, 0, 0], [s - 1 for s in SHAPE_4MM], [10, 20, 30]):
        centre_2mm = mni_2mm @ np.array([*(2 * np.array(index) + 0.5), 1.0])
        np.testing.assert_allclose(affine @ np.array([*index, 1.0]), centre_2mm)
    assert SHAPE_4MM == tuple(-(-s // 2) for s in SHAPE_2MM)
    # The brain is centred in MNI space: its centre of mass is near (0, -18, 18).
    brain = (cohort.volumes[:20, 0] > 0).mean(axis=0)
    com = np.array([(idx * brain).sum() for idx in np.indices(brain.shape)])
    com = affine[:3, :3] @ (com / brain.sum()) + affine[:3, 3]
    assert np.all(np.abs(com - [0.0, -18.0, 18.0]) < 10), com


@needs_nilearn
def test_brain_2mm_shape():
    data = make_brain_cohort(1, resolution=2, random_state=0)
    assert data.volumes.shape == (1, 1, *SHAPE_2MM)
    np.testing.assert_allclose(np.diag(data.affine)[:3], 2.0)
    np.testing.assert_allclose(data.affine[:3, 3], [-98.0, -134.0, -72.0])


@needs_nilearn
def test_brain_determinism_and_seed_dependence():
    a = make_brain_cohort(3, random_state=7)
    b = make_brain_cohort(3, random_state=7)
    c = make_brain_cohort(3, random_state=8)
    np.testing.assert_array_equal(a.volumes, b.volumes)
    for key in ("age", "brain_age", "z", "diagnosis", "site", "gm_ml"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a.volumes, c.volumes)
    assert not np.array_equal(a.age, c.age)


@needs_nilearn
def test_brain_metadata_relationships(cohort):
    # The diagnosis depends on z only: age carries no information.
    assert abs(np.corrcoef(cohort.diagnosis, cohort.age)[0, 1]) < 0.12
    # Patients have higher z.
    assert (
        cohort.z[cohort.diagnosis == 1].mean() > cohort.z[cohort.diagnosis == 0].mean()
    )
    # The brain-age gap is driven by z.
    gap = cohort.brain_age - cohort.age
    assert np.corrcoef(gap, cohort.z)[0, 1] > 0.8
    # Atrophy follows brain age.
    expected = np.maximum(0, (cohort.brain_age - 20) / 60) ** 1.5
    np.testing.assert_allclose(cohort.atrophy, expected)
    # Ventricles grow and grey matter shrinks with age.
    first = slice(0, 100)
    assert np.corrcoef(cohort.ventricles_ml[first], cohort.age[first])[0, 1] > 0.5
    assert np.corrcoef(cohort.gm_ml, cohort.age)[0, 1] < -0.4
    # CSF includes the ventricles.
    assert (cohort.csf_ml > cohort.ventricles_ml).all()


def _normalised_voxels(volumes):
    """Flattened voxels inside the common mask, z-scored per subject."""
    x = volumes.reshape(len(volumes), -1).astype(np.float64)
    x = x[:, (x > 0).mean(axis=0) > 0.5]
    return (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)


@needs_nilearn
def test_brain_age_is_learnable_from_images(cohort):
    # Measured difficulty: a linear model on the voxels predicts age.
    n = 150
    x = _normalised_voxels(cohort.volumes[:n])
    cv = KFold(5, shuffle=True, random_state=0)
    pred = cross_val_predict(Ridge(alpha=100.0), x, cohort.age[:n], cv=cv)
    assert np.corrcoef(pred, cohort.age[:n])[0, 1] > 0.6


@needs_nilearn
def test_brain_site_gains_differ(cohort):
    # Sites have very different intensity scales (normalisation is needed).
    medians = [
        np.median(cohort.volumes[cohort.site == s][:, 0][:, 25, 30, 24])
        for s in range(4)
    ]
    assert max(medians) / min(medians) > 100


@needs_nilearn
def test_brain_difficulty_knobs():
    easy = make_brain_cohort(40, difficulty="easy", random_state=3)
    hard = make_brain_cohort(40, difficulty="hard", random_state=3)
    # Same seed: the same people, aged by different processes.
    np.testing.assert_array_equal(easy.age, hard.age)
    r_easy = np.corrcoef(easy.brain_age, easy.age)[0, 1]
    r_hard = np.corrcoef(hard.brain_age, hard.age)[0, 1]
    assert r_hard - r_easy > 0.05
    assert "12 z" in easy.DESCR and "5 z" in hard.DESCR


@needs_nilearn
def test_brain_explicit_knobs_override_difficulty():
    data = make_brain_cohort(
        3, difficulty="hard", acceleration=0, reserve=0, random_state=0
    )
    np.testing.assert_allclose(data.brain_age, data.age)
    still = make_brain_cohort(2, deformation_mm=0.0, random_state=1)
    moved = make_brain_cohort(2, deformation_mm=4.0, random_state=1)
    assert not np.array_equal(still.volumes, moved.volumes)
    np.testing.assert_array_equal(still.age, moved.age)


@needs_nilearn
@pytest.mark.parametrize("n_sites", [1, 8])
def test_brain_n_sites(n_sites):
    data = make_brain_cohort(6, n_sites=n_sites, random_state=0)
    assert data.site.min() >= 0 and data.site.max() < n_sites
    if n_sites == 1:
        assert (data.site == 0).all()


@needs_nilearn
def test_brain_return_paths(tmp_path):
    out = tmp_path / "cohort"
    data = make_brain_cohort(3, random_state=0, return_paths=True, out_dir=out)
    arrays = make_brain_cohort(3, random_state=0)
    assert [p.rsplit("/", 1)[-1] for p in data.volumes] == [
        "sub-0001_T1w.nii.gz",
        "sub-0002_T1w.nii.gz",
        "sub-0003_T1w.nii.gz",
    ]
    for i, path in enumerate(data.volumes):
        img = nib.load(path)
        assert img.shape == SHAPE_4MM
        np.testing.assert_allclose(img.affine, arrays.affine)
        np.testing.assert_array_equal(
            img.get_fdata(dtype=np.float32), arrays.volumes[i, 0]
        )
    with open(out / "participants.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 3
    for key in (
        "participant_id",
        "age",
        "sex",
        "site",
        "diagnosis",
        "brain_age",
        "gm_ml",
        "wm_ml",
        "csf_ml",
        "ventricles_ml",
    ):
        assert key in rows[0], key
    assert rows[0]["participant_id"] == "sub-0001"
    np.testing.assert_allclose([float(r["age"]) for r in rows], arrays.age, atol=0.01)
    np.testing.assert_allclose(data.gm_ml, arrays.gm_ml)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_subjects": 0}, "n_subjects"),
        ({"n_subjects": 2.5}, "n_subjects"),
        ({"n_subjects": True}, "n_subjects"),
        ({"resolution": 3}, "resolution"),
        ({"resolution": 1}, "resolution"),
        ({"difficulty": "extreme"}, "difficulty"),
        ({"n_sites": 0}, "n_sites"),
        ({"n_sites": 9}, "n_sites"),
        ({"acceleration": -1.0}, "acceleration"),
        ({"reserve": float("nan")}, "reserve"),
        ({"deformation_mm": "big"}, "deformation_mm"),
        ({"return_paths": True}, "out_dir"),
    ],
)
def test_brain_bad_parameters(kwargs, name):
    params = {"n_subjects": 2, "random_state": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        make_brain_cohort(**params)


def test_brain_resolution_message_lists_choices():
    with pytest.raises(ValueError, match="2, 4 or 8"):
        make_brain_cohort(2, resolution=3)


def test_brain_8mm_is_the_4mm_cohort_block_averaged():
    fine = make_brain_cohort(3, resolution=4, random_state=1)
    coarse = make_brain_cohort(3, resolution=8, random_state=1)
    assert coarse.volumes.shape == (3, 1, 25, 30, 24)
    v = np.pad(fine.volumes[:, 0], [(0, 0), (0, 0), (0, 1), (0, 0)])
    expected = v.reshape(3, 25, 2, 30, 2, 24, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(coarse.volumes[:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(coarse.age, fine.age)
    # voxel (0, 0, 0) of 8 mm is the centre of the 4 mm voxels 0 and 1
    centre = fine.affine @ np.array([0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(coarse.affine[:3, 3], centre[:3])
    np.testing.assert_allclose(np.diag(coarse.affine)[:3], 2 * np.diag(fine.affine)[:3])


def test_brain_gm_modality_is_the_grey_matter_of_the_same_subjects():
    t1 = make_brain_cohort(4, resolution=4, random_state=2)
    gm = make_brain_cohort(4, resolution=4, random_state=2, modality="GM")
    assert gm.modality == "GM" and t1.modality == "T1w"
    np.testing.assert_array_equal(gm.age, t1.age)
    assert gm.volumes.min() >= 0.0 and gm.volumes.max() <= 1.0
    # same brain (skull-stripped) support, site-free values
    np.testing.assert_array_equal(gm.volumes > 0, (t1.volumes > 0) & (gm.volumes > 0))
    # total GM of the map matches the true GM volume (4 mm voxels: 0.064 ml)
    total = gm.volumes.reshape(4, -1).sum(axis=1) * 0.064
    np.testing.assert_allclose(total, gm.gm_ml, rtol=0.05)
    with pytest.raises(ValueError, match="modality"):
        make_brain_cohort(2, modality="T2w")


# --------------------------------------------------------------------------
# Lung cohort
# --------------------------------------------------------------------------


def test_lung_shapes_and_hu(lungs):
    n = 40
    assert lungs.volumes.shape == (n, 1, 64, 64, 64)
    assert lungs.volumes.dtype == np.float32
    assert lungs.lung_mask.shape == lungs.volumes.shape
    assert lungs.lung_mask.dtype == bool
    assert lungs.regional_emphysema.shape == (n, 6)
    assert lungs.regions[0] == "right_upper" and len(lungs.regions) == 6
    assert lungs.emphysema_fraction.shape == lungs.fev1.shape == (n,)
    np.testing.assert_allclose(np.diag(lungs.affine)[:3], lungs.spacing)
    assert "synthetic" in lungs.DESCR.lower()
    for vol, mask in zip(lungs.volumes[:, 0], lungs.lung_mask[:, 0]):
        assert mask.sum() > 1000
        assert vol[mask].mean() < -700  # lung parenchyma
        # Mediastinum, spine and chest wall around the centre line.
        centre = vol[28:36, 20:44, 10:50][~mask[28:36, 20:44, 10:50]]
        assert centre.mean() > -200
        assert vol[0, 0].mean() < -900  # air outside the body
        assert -1024 <= vol.min() and vol.max() < 3072


def test_lung_emphysema_matches_low_attenuation(lungs):
    laa = np.array(
        [
            (v[m] < -950).mean()
            for v, m in zip(lungs.volumes[:, 0], lungs.lung_mask[:, 0])
        ]
    )
    assert np.corrcoef(laa, lungs.emphysema_fraction)[0, 1] > 0.8
    assert lungs.emphysema_fraction.max() > 0.1
    assert np.all((lungs.regional_emphysema >= 0) & (lungs.regional_emphysema <= 1))
    assert np.corrcoef(lungs.fev1, lungs.emphysema_fraction)[0, 1] < -0.5


def test_lung_determinism_and_paths(tmp_path):
    kwargs = {"shape": (32, 32, 32), "spacing": 10.0}
    a = make_lung_cohort(2, random_state=1, **kwargs)
    b = make_lung_cohort(2, random_state=1, **kwargs)
    c = make_lung_cohort(2, random_state=2, **kwargs)
    np.testing.assert_array_equal(a.volumes, b.volumes)
    np.testing.assert_array_equal(a.lung_mask, b.lung_mask)
    np.testing.assert_array_equal(a.fev1, b.fev1)
    assert not np.array_equal(a.volumes, c.volumes)

    paths = make_lung_cohort(
        2, random_state=1, return_paths=True, out_dir=tmp_path, **kwargs
    )
    img = nib.load(paths.volumes[1])
    np.testing.assert_allclose(img.affine, a.affine)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), a.volumes[1, 0])
    mask = np.asarray(nib.load(paths.lung_mask[1]).dataobj).astype(bool)
    np.testing.assert_array_equal(mask, a.lung_mask[1, 0])
    lines = (tmp_path / "participants.tsv").read_text().strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("participant_id")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_subjects": 0}, "n_subjects"),
        ({"shape": (64, 64)}, "shape"),
        ({"shape": (8, 64, 64)}, "shape"),
        ({"spacing": -1.0}, "spacing"),
        ({"spacing": (1.0, 2.0)}, "spacing"),
        ({"return_paths": True}, "out_dir"),
    ],
)
def test_lung_bad_parameters(kwargs, name):
    params = {"n_subjects": 1, "shape": (32, 32, 32), **kwargs}
    with pytest.raises(ValueError, match=name):
        make_lung_cohort(**params)


# --------------------------------------------------------------------------
# load_chest_ct
# --------------------------------------------------------------------------


def _save(path, array, affine=None):
    affine = np.diag([0.7, 0.7, 1.25, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), path)


def test_load_chest_ct_file_and_folder(tmp_path):
    rng = np.random.default_rng(0)
    first = rng.normal(-500, 300, size=(10, 12, 8)).astype(np.float32)
    _save(tmp_path / "a.nii.gz", first)
    _save(tmp_path / "b.nii", first + 1)
    (tmp_path / "notes.txt").write_text("not an image")

    one = load_chest_ct(tmp_path / "a.nii.gz")
    assert one.volumes.shape == (1, 1, 10, 12, 8)
    assert one.volumes.dtype == np.float32
    np.testing.assert_allclose(one.volumes[0, 0], first)
    np.testing.assert_allclose(one.spacings[0], [0.7, 0.7, 1.25])
    np.testing.assert_allclose(one.affines[0], np.diag([0.7, 0.7, 1.25, 1.0]))

    both = load_chest_ct(str(tmp_path))
    assert both.volumes.shape == (2, 1, 10, 12, 8)
    assert [p.rsplit("/", 1)[-1] for p in both.paths] == ["a.nii.gz", "b.nii"]
    np.testing.assert_allclose(both.volumes[1, 0], first + 1)

    # Different shapes come back as a list.
    _save(tmp_path / "c.nii.gz", np.zeros((5, 5, 5)))
    mixed = load_chest_ct(tmp_path)
    assert isinstance(mixed.volumes, list) and len(mixed.volumes) == 3
    assert mixed.volumes[2].shape == (1, 5, 5, 5)


def test_load_chest_ct_errors(tmp_path):
    missing = tmp_path / "nowhere.nii.gz"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_chest_ct(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        load_chest_ct(empty)
    _save(tmp_path / "series.nii.gz", np.zeros((4, 4, 4, 3)))
    with pytest.raises(ValueError, match="series"):
        load_chest_ct(tmp_path / "series.nii.gz")
    text = tmp_path / "scan.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="scan.txt"):
        load_chest_ct(text)
    # A trailing singleton axis is accepted.
    _save(tmp_path / "single.nii.gz", np.zeros((4, 4, 4, 1)))
    assert load_chest_ct(tmp_path / "single.nii.gz").volumes.shape == (1, 1, 4, 4, 4)
