"""DrasCLR preprocessing: lung masks, affine registration of masks, and the
raw-CT-to-volume pipeline (segment_lungs, LungMask, register_affine,
prepare_lung_ct)."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from sklearn_cl3d.data import (
    LungMask,
    Resample,
    extract_patches,
    make_landmarks,
    prepare_lung_ct,
    register_affine,
    segment_lungs,
)
from sklearn_cl3d.datasets import make_lung_cohort

SHAPE = (40, 40, 40)


def _ellipsoid(shape, centre, radii):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def _phantom(shape=SHAPE, seed=0, through=True):
    """Body at 40 HU in air, two textured lungs at about -850 HU with vessels.

    The body runs through the whole scan along axis 2 (``through``), as in a
    chest CT; the lungs are asymmetric so that an affine is well defined.
    """
    rng = np.random.default_rng(seed)
    c = np.asarray(shape) / 2
    body = _ellipsoid(shape, c, (0.42 * shape[0], 0.36 * shape[1], 10 * shape[2]))
    if not through:
        body = _ellipsoid(shape, c, (0.42 * shape[0], 0.36 * shape[1], 0.45 * shape[2]))
    centres = [c + (-0.2, 0.0, 0.02) * np.asarray(shape)]
    centres.append(c + (0.2, 0.05, -0.02) * np.asarray(shape))
    low_lung = _ellipsoid(shape, centres[0], (6, 8, 12))
    high_lung = _ellipsoid(shape, centres[1], (5, 7, 10))
    texture = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    texture /= texture.std()
    ct = np.where(body, 40.0, -1000.0)
    lungs = low_lung | high_lung
    ct[lungs] = -850.0 + 30.0 * texture[lungs]
    # vessels: blobs of tissue inside the lungs, away from their surface
    vessels = np.zeros(shape, dtype=bool)
    for centre in centres:
        for step in (-3, 0, 3):
            vessels |= _ellipsoid(shape, centre + (0, step, 2 * step), (1.5,) * 3)
    ct[vessels] = 40.0
    return ct.astype(np.float32), lungs, low_lung, high_lung, vessels


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------ lung masks


def test_segment_lungs_recovers_the_phantom_lungs_and_drops_outside_air():
    ct, lungs, low_lung, high_lung, vessels = _phantom()
    assert vessels.sum() > 20  # the holes to fill exist
    mask = segment_lungs(ct)
    assert mask.dtype == bool and mask.shape == ct.shape
    assert _dice(mask, lungs) > 0.9
    assert not mask[ct == -1000.0].any()  # the air around the body
    # the holes (vessels) are filled slice by slice, only with fill_holes
    assert mask[vessels].all()
    unfilled = segment_lungs(ct, fill_holes=False)
    assert not unfilled[vessels].any()
    assert _dice(unfilled, lungs) < _dice(mask, lungs)


def test_segment_lungs_side_labels_and_components():
    ct, lungs, low_lung, high_lung, _ = _phantom()
    labels = segment_lungs(ct, label_sides=True)
    assert labels.dtype == np.int8 and set(np.unique(labels)) == {0, 1, 2}
    # 1 is the lung with the smaller mean index along axis 0
    assert _dice(labels == 1, low_lung) > 0.9 and _dice(labels == 2, high_lung) > 0.9
    assert np.array_equal(labels > 0, segment_lungs(ct))
    # a small gas pocket in the body: the third component, and below
    # min_fraction of the largest one
    ct[20, 10:12, 20:22] = -1000.0
    pocket = np.zeros(ct.shape, bool)
    pocket[20, 10:12, 20:22] = True
    assert not segment_lungs(ct)[pocket].any()
    assert not segment_lungs(ct, n_components=3)[pocket].any()
    kept = segment_lungs(ct, n_components=3, min_fraction=0.0)
    assert kept[pocket].all()
    # n_components=1 keeps the larger lung only
    one = segment_lungs(ct, n_components=1)
    assert _dice(one, low_lung) > 0.9 and not (one & high_lung).any()
    # lungs that touch form one component: kept whole, split in two by labels
    ct[12:29, 19:22, 19:22] = -850.0
    joined = segment_lungs(ct)
    assert _dice(joined, lungs) > 0.9 and joined[20, 20, 20]
    sides = segment_lungs(ct, label_sides=True)
    assert _dice(sides == 1, low_lung) > 0.85 and _dice(sides == 2, high_lung) > 0.85


def test_segment_lungs_keeps_lungs_cut_by_the_field_of_view():
    ct, lungs, *_ = _phantom()
    cut = ct[:, :, 16:].copy()  # the lungs are open at the bottom of the scan
    assert (cut[:, :, 0] < -320)[lungs[:, :, 16]].mean() > 0.5
    mask = segment_lungs(cut)
    assert _dice(mask, lungs[:, :, 16:]) > 0.9
    # with slice_axis=None every face is a border: lungs touching the bottom
    # face count as air outside the body
    with pytest.raises(ValueError, match="no lung found"):
        segment_lungs(cut, slice_axis=None)
    # a body inside the field of view: slice_axis=None works too
    closed, closed_lungs, *_ = _phantom(through=False)
    assert _dice(segment_lungs(closed, slice_axis=None), closed_lungs) > 0.9


def test_segment_lungs_on_the_synthetic_cohort():
    ct = make_lung_cohort(2, shape=(40, 40, 40), spacing=8.0, random_state=0)
    for volume, truth in zip(ct.volumes, ct.lung_mask):
        assert _dice(segment_lungs(volume), truth[0]) > 0.9


def test_lung_mask_transformer_matches_the_function():
    ct = np.stack([_phantom(seed=s)[0] for s in (0, 1)])
    out = LungMask(label_sides=True).fit_transform(ct)
    assert out.shape == ct.shape and out.dtype == np.float32
    for volume, labels in zip(ct, out):
        assert np.array_equal(labels, segment_lungs(volume, label_sides=True))
    channels = LungMask().fit_transform(ct[:, None])
    assert channels.shape == (2, 1, *SHAPE)


def test_segment_lungs_bad_input():
    ct = _phantom()[0]
    with pytest.raises(ValueError, match="`volume` must be one numeric CT volume"):
        segment_lungs(ct[0])
    with pytest.raises(ValueError, match="`volume` must be one"):
        segment_lungs(np.stack([ct, ct]))
    with pytest.raises(ValueError, match="NaN"):
        segment_lungs(np.where(ct > 0, np.nan, ct))
    with pytest.raises(ValueError, match="no lung found"):
        segment_lungs(np.full(SHAPE, 40.0))  # no air inside a body
    with pytest.raises(ValueError, match="no lung found"):
        segment_lungs(np.full(SHAPE, -1000.0))  # air only
    for kwargs, name in [
        ({"n_components": 0}, "n_components"),
        ({"min_fraction": 1.5}, "min_fraction"),
        ({"slice_axis": 3}, "slice_axis"),
        ({"threshold": "low"}, "threshold"),
        ({"label_sides": 1}, "label_sides"),
        ({"fill_holes": None}, "fill_holes"),
    ]:
        with pytest.raises(ValueError, match=name):
            segment_lungs(ct, **kwargs)
    with pytest.raises(ValueError, match="n_components"):
        LungMask(n_components=0).fit(ct[None])


# ------------------------------------------------------------ registration


def _rotation(degrees, axis):
    t = np.deg2rad(degrees)
    r = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def _homogeneous(linear, offset):
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, offset
    return out


def _apply(matrix, points):
    return points @ matrix[:3, :3].T + matrix[:3, 3]


@pytest.mark.parametrize("metric", ["mse", "dice"])
def test_register_affine_recovers_a_known_affine(metric):
    _, fixed, *_ = _phantom()
    # moving[o] = fixed[M o + offset]: fixed index a is at moving index
    # inv(M) (a - offset), the map register_affine returns
    linear = _rotation(10, 0) @ _rotation(-6, 2) @ np.diag([1.1, 0.95, 1.05])
    centre = (np.asarray(SHAPE) - 1) / 2
    offset = centre - linear @ centre + (2.0, -3.0, 1.5)
    moving = ndi.affine_transform(fixed.astype(float), linear, offset, order=1) > 0.5
    truth = np.linalg.inv(_homogeneous(linear, offset))
    found = register_affine(moving, fixed, metric=metric)
    assert found.shape == (4, 4) and found.dtype == np.float64
    corners = make_landmarks(fixed, patch_size=8, stride=4, min_fraction=0.1)
    assert len(corners) > 10
    err = np.abs(_apply(found, corners) - _apply(truth, corners))
    assert err.max() < 1.0
    # the moment initialisation alone is not that close: the optimiser works
    start = register_affine(moving, fixed, iterations=(0, 0, 0), metric=metric)
    assert np.abs(_apply(start, corners) - _apply(truth, corners)).max() > 1.5
    # deterministic
    assert np.array_equal(found, register_affine(moving, fixed, metric=metric))


def test_register_affine_identity_on_identical_masks():
    _, fixed, *_ = _phantom()
    found = register_affine(fixed, fixed)
    np.testing.assert_allclose(found, np.eye(4), atol=0.05)
    # labels are binarised: 50/100 coded lungs give the same map
    coded = np.where(fixed, 50, 0) + np.where(_phantom()[3], 50, 0)
    np.testing.assert_allclose(register_affine(coded, fixed), found, atol=1e-9)


def test_register_affine_uses_the_world_affines():
    _, fixed, *_ = _phantom()
    # fixed: 1 mm voxels at origin (10, -5, 3) mm; moving: 2 mm voxels with
    # its axes permuted and one flipped (another orientation), and the lungs
    # shifted by (4, -2, 6) mm in the world
    fixed_affine = _homogeneous(np.eye(3), (10.0, -5.0, 3.0))
    world = _homogeneous(np.eye(3), (4.0, -2.0, 6.0))  # fixed mm -> moving mm
    axes = np.array([[0.0, 0.0, 2.0], [0.0, -2.0, 0.0], [2.0, 0.0, 0.0]])
    moving_affine = _homogeneous(axes, (14.0, 32.0, 9.0))
    truth = np.linalg.inv(moving_affine) @ world @ fixed_affine  # index map
    back = np.linalg.inv(truth)  # moving[o] = fixed[back o]
    moving = ndi.affine_transform(
        fixed.astype(float), back[:3, :3], back[:3, 3], (20, 20, 20), order=1
    )
    moving = moving > 0.5
    levels = {
        "shrink_factors": (2, 1),
        "smoothing_sigmas": (1.0, 0.0),
        "iterations": (50, 25),
    }
    found = register_affine(
        moving,
        fixed,
        moving_affine=moving_affine,
        fixed_affine=fixed_affine,
        **levels,
    )
    corners = make_landmarks(fixed, patch_size=8, stride=4, min_fraction=0.1)
    err = np.abs(_apply(found, corners) - _apply(truth, corners))
    assert err.max() < 0.5  # moving voxels of 2 mm: within 1 mm
    # without the affines the start (no rotation) is far from the permuted
    # axes, and the registration does not find them
    plain = register_affine(moving, fixed, **levels)
    assert np.abs(_apply(plain, corners) - _apply(truth, corners)).max() > 3


def test_register_affine_bad_input():
    _, fixed, *_ = _phantom()
    with pytest.raises(ValueError, match="`moving` must be one numeric mask"):
        register_affine(fixed[0], fixed)
    with pytest.raises(ValueError, match="`fixed` has no nonzero voxel"):
        register_affine(fixed, np.zeros(SHAPE))
    with pytest.raises(ValueError, match="`moving_affine`"):
        register_affine(fixed, fixed, moving_affine=np.eye(3))
    with pytest.raises(ValueError, match="`fixed_affine` is not invertible"):
        register_affine(fixed, fixed, fixed_affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="one entry per level"):
        register_affine(fixed, fixed, shrink_factors=(2, 1))
    with pytest.raises(ValueError, match="`shrink_factors`"):
        register_affine(fixed, fixed, shrink_factors=(0, 2, 1))
    with pytest.raises(ValueError, match="`iterations`"):
        register_affine(fixed, fixed, iterations=(10, -1, 5))
    with pytest.raises(ValueError, match="`metric`"):
        register_affine(fixed, fixed, metric="mi")
    with pytest.raises(ValueError, match="fewer than 2 points"):
        register_affine(fixed, fixed, shrink_factors=(32, 2, 1))


# ------------------------------------------------------------ pipeline


def _subject(atlas_ct, spacing=1.25, shape=(34, 34, 34)):
    """The atlas CT moved in the world and stored on another grid.

    Returns the CT, its voxel-to-world affine and the world map ``W`` (atlas
    mm -> subject mm; the atlas has the identity affine).
    """
    world = _homogeneous(_rotation(4, 2), (3.0, -2.0, 2.5))
    affine = _homogeneous(spacing * np.eye(3), (-1.0, 0.5, -2.0))
    back = np.linalg.inv(world) @ affine  # subject index -> atlas index
    ct = ndi.affine_transform(
        atlas_ct, back[:3, :3], back[:3, 3], shape, order=1, cval=-1000.0
    )
    return ct.astype(np.float32), affine, world


def _correlations(a, b):
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def test_prepare_lung_ct_maps_atlas_landmarks_onto_the_subject():
    atlas_ct, atlas_mask, *_ = _phantom()
    ct, ct_affine, world = _subject(atlas_ct)
    pad = 5
    volume, index_map = prepare_lung_ct(ct, atlas_mask, ct_affine=ct_affine, pad=pad)
    # the grid: 1 mm (Resample), then `pad` voxels of -1024 on every side
    resampled, resampled_affine = Resample(1.0, order=3).apply(ct, ct_affine)
    assert volume.shape == (1, *(n + 2 * pad for n in resampled.shape))
    assert volume.dtype == np.float32
    assert (volume[0, :pad] == -1024).all() and (volume[0, :, :, -pad:] == -1024).all()
    assert volume.min() >= -1024 and volume.max() <= 240
    np.testing.assert_allclose(
        volume[0, pad:-pad, pad:-pad, pad:-pad], np.clip(resampled, -1024, 240)
    )
    # the map equals the true one: atlas index -> world -> subject world ->
    # index of the padded volume
    out_affine = resampled_affine @ _homogeneous(np.eye(3), (-pad,) * 3)
    truth = np.linalg.inv(out_affine) @ world
    corners = make_landmarks(atlas_mask, patch_size=8, stride=4, min_fraction=0.1)
    assert np.abs(_apply(index_map, corners) - _apply(truth, corners)).max() < 1.0
    # and the patches cut there match the atlas patches about as well as
    # those at the true corners (the content is not rotated back, and the
    # corners are rounded to voxels); without the registration (the padding
    # offset only) they do not
    reference = extract_patches(np.clip(atlas_ct, -1024, 240), corners, 8)

    def similarity(matrix):
        patches = extract_patches(
            volume, corners, 8, affine=matrix, outside="fill", fill_value=-1024
        )
        return _correlations(patches, reference).mean()

    registered, best = similarity(index_map), similarity(truth)
    assert best > 0.88 and registered > 0.85 and registered > best - 0.05
    assert similarity(_homogeneous(np.eye(3), (pad,) * 3)) < 0.5


def test_prepare_lung_ct_files_given_mask_and_coarse_registration(tmp_path):
    atlas_ct, atlas_mask, *_ = _phantom()
    ct, ct_affine, world = _subject(atlas_ct)
    kwargs = {"pad": 2, "iterations": (30, 15, 10)}
    volume, index_map = prepare_lung_ct(ct, atlas_mask, ct_affine=ct_affine, **kwargs)
    ct_path = tmp_path / "ct.nii.gz"
    mask_path = tmp_path / "atlas_lung_mask.nii.gz"
    nib.save(nib.Nifti1Image(ct, ct_affine), ct_path)
    nib.save(nib.Nifti1Image(atlas_mask.astype(np.uint8) * 50, np.eye(4)), mask_path)
    from_files = prepare_lung_ct(ct_path, mask_path, **kwargs)
    np.testing.assert_allclose(from_files[0], volume)
    np.testing.assert_allclose(from_files[1], index_map, atol=1e-6)
    corners = make_landmarks(atlas_mask, patch_size=8, stride=4, min_fraction=0.1)
    # a lung mask given on the CT's grid (here the true lungs) gives the map too
    back = np.linalg.inv(world) @ ct_affine
    lungs = ndi.affine_transform(
        atlas_mask.astype(float), back[:3, :3], back[:3, 3], ct.shape, order=1
    )
    given = prepare_lung_ct(
        ct, atlas_mask, ct_affine=ct_affine, lung_mask=lungs > 0.5, **kwargs
    )
    assert np.array_equal(given[0], volume)
    err = np.abs(_apply(given[1], corners) - _apply(index_map, corners))
    assert err.max() < 1.0
    # registering masks resampled to 2 mm: close to the full-resolution map
    coarse = prepare_lung_ct(
        ct,
        atlas_mask,
        ct_affine=ct_affine,
        registration_spacing=2.0,
        shrink_factors=(2, 1),
        smoothing_sigmas=(1.0, 0.0),
        iterations=(30, 15),
        pad=2,
    )
    assert np.abs(_apply(coarse[1], corners) - _apply(index_map, corners)).max() < 1.0


def test_prepare_lung_ct_bad_input(tmp_path):
    atlas_ct, atlas_mask, *_ = _phantom(shape=(24, 24, 24))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(atlas_ct, np.eye(4)), path)
    with pytest.raises(ValueError, match="`ct_affine` is only for arrays"):
        prepare_lung_ct(path, atlas_mask, ct_affine=np.eye(4))
    with pytest.raises(ValueError, match="`ct_affine` must be a finite"):
        prepare_lung_ct(atlas_ct, atlas_mask, ct_affine=np.eye(3))
    with pytest.raises(ValueError, match="`ct`"):
        prepare_lung_ct(atlas_ct[0], atlas_mask)
    with pytest.raises(ValueError, match="`ct` must be one volume"):
        prepare_lung_ct(np.stack([atlas_ct, atlas_ct]), atlas_mask)
    with pytest.raises(ValueError, match="`atlas_mask`"):
        prepare_lung_ct(atlas_ct, atlas_mask[0])
    with pytest.raises(ValueError, match="`pad`"):
        prepare_lung_ct(atlas_ct, atlas_mask, pad=-1)
    with pytest.raises(ValueError, match="`window`"):
        prepare_lung_ct(atlas_ct, atlas_mask, window=(240, -1024))
    with pytest.raises(ValueError, match="`registration_spacing`"):
        prepare_lung_ct(atlas_ct, atlas_mask, registration_spacing=0)
    with pytest.raises(ValueError, match="`lung_mask` must be on the grid"):
        prepare_lung_ct(atlas_ct, atlas_mask, lung_mask=atlas_mask[:20])
    with pytest.raises(ValueError, match="`lung_mask` has no nonzero"):
        prepare_lung_ct(atlas_ct, atlas_mask, lung_mask=np.zeros(atlas_ct.shape))
    with pytest.raises(ValueError, match="`spacing`"):
        prepare_lung_ct(atlas_ct, atlas_mask, spacing=-1.0)
    with pytest.raises(ValueError, match="no lung found"):
        prepare_lung_ct(np.full((24, 24, 24), 40.0), atlas_mask)


def test_drasclr_protocol_points_at_the_pipeline():
    import sklearn_cl3d.data
    from sklearn_cl3d.protocols import official_protocol

    rows = {a.aspect: a for a in official_protocol("drasclr").gaps()}
    # no estimator parameter sets them: a function before fit, and data
    note = rows["preprocessing"].note
    assert "sklearn_cl3d.data.prepare_lung_ct" in note
    name = next(w for w in note.split() if w.startswith("sklearn_cl3d."))
    assert getattr(sklearn_cl3d.data, name.rpartition(".")[2]) is prepare_lung_ct
    assert "landmarks=" in rows["landmarks"].note
