"""Preprocessing transformers of ``sklearn_cl3d.data`` (single images and arrays)."""

import nibabel as nib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from sklearn_cl3d.data._preprocessing import (
    CropOrPad,
    HUWindow,
    IntensityZScore,
    PreprocessingChain,
    ReorientToRAS,
    Resample,
    make_preprocessing,
)


def _world(affine, ijk):
    return (affine @ np.append(np.asarray(ijk, dtype=float), 1.0))[:3]


def _rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------
# ReorientToRAS
# --------------------------------------------------------------------------
def test_reorient_lps_to_ras():
    lps = np.diag([-1.5, -1.5, 2.0, 1.0])
    lps[:3, 3] = [30, 40, -20]
    assert nib.aff2axcodes(lps) == ("L", "P", "S")
    vol = _rand((4, 5, 6))
    out, affine = ReorientToRAS().apply(vol, lps)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_array_equal(out, vol[::-1, ::-1, :])
    # every voxel keeps its world position
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        new = (3 - ijk[0], 4 - ijk[1], ijk[2])
        np.testing.assert_allclose(_world(affine, new), _world(lps, ijk))


def test_reorient_permuted_axes_and_channels():
    # voxel axes stored as (S, R, A)
    sra = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    assert nib.aff2axcodes(sra) == ("S", "R", "A")
    vol = _rand((2, 3, 4, 5))  # (C, S, R, A)
    out, affine = ReorientToRAS().apply(vol, sra)
    assert out.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(out, vol.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(affine, np.eye(4))


def test_reorient_identity_is_a_no_op():
    X = _rand((2, 3, 4, 5))
    np.testing.assert_array_equal(ReorientToRAS().fit_transform(X), X)


# --------------------------------------------------------------------------
# Resample
# --------------------------------------------------------------------------
def test_resample_1mm_to_2mm_halves_shape_and_scales_affine():
    affine = np.eye(4)
    affine[:3, 3] = [-5, 7, 3]
    ramp = np.broadcast_to(np.arange(8.0)[:, None, None], (8, 8, 8))
    out, new = Resample(spacing=(2.0, 2.0, 2.0)).apply(ramp, affine)
    assert out.shape == (4, 4, 4)
    np.testing.assert_allclose(np.diag(new)[:3], [2, 2, 2])
    # the field of view keeps its centre
    np.testing.assert_allclose(_world(new, (1.5, 1.5, 1.5)), _world(affine, (3.5,) * 3))
    # trilinear on a ramp: new voxel j sits at old position 2j + 0.5
    np.testing.assert_allclose(out[:, 0, 0], [0.5, 2.5, 4.5, 6.5], atol=1e-5)


def test_resample_anisotropic_and_oblique():
    theta = np.deg2rad(30)
    rot = np.array(
        [
            [np.cos(theta), -np.sin(theta), 0],
            [np.sin(theta), np.cos(theta), 0],
            [0, 0, 1],
        ]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.0, 1.0, 3.0])
    out, new = Resample(spacing=1.5, order=0).apply(_rand((1, 6, 6, 4)), affine)
    assert out.shape == (1, 4, 4, 8)
    np.testing.assert_allclose(np.sqrt((new[:3, :3] ** 2).sum(0)), [1.5] * 3)
    # directions are kept
    np.testing.assert_allclose(new[:3, :3] / 1.5, rot, atol=1e-12)


def test_resample_arrays_are_taken_as_1mm():
    X = _rand((3, 2, 8, 6, 4))
    assert Resample(spacing=2.0).fit_transform(X).shape == (3, 2, 4, 3, 2)
    np.testing.assert_array_equal(Resample(spacing=1.0).transform(X), X)


# --------------------------------------------------------------------------
# CropOrPad
# --------------------------------------------------------------------------
def test_crop_or_pad_center():
    vol = _rand((10, 4, 7))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    out, new = CropOrPad((6, 8, 7), pad_value=-1).apply(vol, affine)
    assert out.shape == (6, 8, 7)
    np.testing.assert_array_equal(out[:, 2:6, :], vol[2:8])
    assert (out[:, :2] == -1).all() and (out[:, 6:] == -1).all()
    # kept voxels keep their world position
    np.testing.assert_allclose(_world(new, (0, 2, 0)), _world(affine, (2, 0, 0)))


def test_crop_or_pad_mask_bbox_centres_the_box():
    vol = np.zeros((20, 20, 20), np.float32)
    vol[1:7, 12:18, 3:9] = 5.0  # off-centre object, 6 voxels wide
    out, new = CropOrPad(10, mode="mask_bbox", mask_threshold=1.0).apply(vol)
    hits = np.argwhere(out > 1.0)
    assert len(hits) == 6**3  # the whole object is kept
    box_centre = (hits.min(0) + hits.max(0)) / 2
    np.testing.assert_allclose(box_centre, [4.5] * 3)  # centre of a 10-voxel window
    np.testing.assert_allclose(_world(new, hits[0]), _world(np.eye(4), (1, 12, 3)))
    # the window crossed the border: padded with pad_value
    assert out.shape == (10, 10, 10)


def test_crop_or_pad_mask_bbox_empty_mask_falls_back_to_center():
    vol = _rand((8, 8, 8))
    a = CropOrPad(4, mode="mask_bbox", mask_threshold=100).apply(vol)[0]
    b = CropOrPad(4).apply(vol)[0]
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# IntensityZScore, HUWindow
# --------------------------------------------------------------------------
def test_zscore_within_nonzero_mask():
    vol = np.zeros((2, 8, 8, 8), np.float32)
    rng = np.random.default_rng(0)
    vol[0, 2:6, 2:6, 2:6] = rng.normal(100, 20, size=(4, 4, 4))
    vol[1, 1:7, 1:7, 1:7] = rng.normal(-3, 2, size=(6, 6, 6))
    out, _ = IntensityZScore().apply(vol)
    for c in range(2):
        inside = vol[c] != 0
        np.testing.assert_allclose(out[c][inside].mean(), 0, atol=1e-5)
        np.testing.assert_allclose(out[c][inside].std(), 1, atol=1e-5)
        assert (out[c][~inside] == 0).all()


def test_zscore_whole_volume_and_constant():
    vol = _rand((5, 5, 5)) * 3 + 7
    out, _ = IntensityZScore(mask=None).apply(vol)
    np.testing.assert_allclose([out.mean(), out.std()], [0, 1], atol=1e-5)
    const, _ = IntensityZScore(mask=None).apply(np.full((3, 3, 3), 4.0))
    np.testing.assert_array_equal(const, 0)
    empty = np.zeros((3, 3, 3))
    np.testing.assert_array_equal(IntensityZScore().apply(empty)[0], empty)


def test_hu_window():
    vol = np.array([-3000, -1000, -300, 400, 2000], dtype=np.int16).reshape(1, 1, 5)
    out, _ = HUWindow().apply(vol)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0, 0, 0.5, 1, 1])
    clipped, _ = HUWindow(low=-100, high=100, scale=False).apply(vol)
    np.testing.assert_array_equal(clipped.ravel(), [-100, -100, -100, 100, 100])


# --------------------------------------------------------------------------
# arrays, pipelines, chains
# --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 10, 9, 8), (3, 2, 10, 9, 8)])
def test_sklearn_pipeline_on_arrays_matches_apply(shape):
    X = _rand(shape) * 500
    steps = [HUWindow(), CropOrPad(6), IntensityZScore(mask=None), Resample(2.0)]
    pipe = make_pipeline(*steps)
    out = pipe.fit_transform(X)
    assert out.shape == shape[:-3] + (3, 3, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(pipe.transform(X), out)  # stateless
    chain = make_preprocessing(pipe)
    for i in range(3):
        single, _ = chain.apply(X[i], np.eye(4))
        np.testing.assert_allclose(single, out[i], rtol=1e-6)
    np.testing.assert_allclose(chain.fit_transform(X), out, rtol=1e-6)
    # the steps are ordinary scikit-learn estimators
    cloned = clone(pipe)
    assert cloned.get_params()["croporpad__shape"] == 6
    assert make_pipeline(*steps).transform(X).shape == out.shape  # no fit needed


def test_apply_single_volume_3d_and_4d():
    vol = _rand((6, 6, 6))
    out3, _ = CropOrPad(4).apply(vol)
    out4, _ = CropOrPad(4).apply(vol[None])
    assert out3.shape == (4, 4, 4) and out4.shape == (1, 4, 4, 4)
    np.testing.assert_array_equal(out3, out4[0])
    assert vol.shape == (6, 6, 6)  # the input is not modified
    assert IntensityZScore().apply(vol.astype(np.float64))[0].dtype == np.float64


def test_make_preprocessing_forms():
    assert make_preprocessing(None) is None
    assert make_preprocessing([]) is None
    chain = make_preprocessing([ReorientToRAS(), CropOrPad(4)])
    assert isinstance(chain, PreprocessingChain) and len(chain.steps) == 2
    assert make_preprocessing(chain) is chain
    assert make_preprocessing(HUWindow()).steps[0].get_params()["low"] == -1000
    pipe = make_pipeline(ReorientToRAS(), "passthrough", CropOrPad(4))
    assert [type(s) for s in make_preprocessing(pipe).steps] == [
        ReorientToRAS,
        CropOrPad,
    ]

    class Custom:  # any object with apply(volume, affine)
        def apply(self, volume, affine):
            return volume * 2, affine

    out, _ = make_preprocessing([Custom(), CropOrPad(2)]).apply(np.ones((3, 3, 3)))
    np.testing.assert_array_equal(out, 2)
    with pytest.raises(ValueError, match="apply"):
        make_preprocessing([CropOrPad(2), "zscore"])
    with pytest.raises(ValueError, match="preprocessing must be"):
        make_preprocessing(42)


@pytest.mark.parametrize(
    "step, name",
    [
        (Resample(spacing=0), "spacing"),
        (Resample(spacing=(1.0, 2.0)), "spacing"),
        (Resample(spacing=np.nan), "spacing"),
        (Resample(order=7), "order"),
        (Resample(order=1.5), "order"),
        (CropOrPad(shape=(0, 4, 4)), "shape"),
        (CropOrPad(shape=4.5), "shape"),
        (CropOrPad(shape=4, mode="corner"), "mode"),
        (CropOrPad(shape=4, mask_threshold="a"), "mask_threshold"),
        (CropOrPad(shape=4, pad_value=np.inf), "pad_value"),
        (IntensityZScore(mask="otsu"), "mask"),
        (HUWindow(low=100, high=0), "low"),
        (HUWindow(high=None), "high"),
        (HUWindow(scale="yes"), "scale"),
    ],
)
def test_bad_parameters_are_named(step, name):
    X = np.zeros((1, 4, 4, 4))
    match = f"{type(step).__name__}: `{name}`"
    with pytest.raises(ValueError, match=match):
        step.fit(X)
    with pytest.raises(ValueError, match=match):
        step.apply(X[0])
    with pytest.raises(ValueError, match=match):
        make_preprocessing([step])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(n, D, H, W\).*got 3 dimension"):
        CropOrPad(2).transform(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="one volume"):
        CropOrPad(2).apply(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="affine"):
        CropOrPad(2).apply(np.zeros((4, 4, 4)), np.eye(3))
