"""Inputs that used to give silent garbage or raw errors (issue 14, 5-6)."""

import os
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_cl3d import (
    FineTunedClassifier,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
)
from sklearn_cl3d.data import (
    CropOrPad,
    ReorientToRAS,
    Resample,
    VolumeDataset,
    as_volume_dataset,
)
from sklearn_cl3d.datasets import load_chest_ct
from sklearn_cl3d.estimators._globallocal import PercentileScaling
from sklearn_cl3d.nn import build_backbone

TINY = dict(
    backbone="small3d",
    backbone__channels=(2, 4),
    hidden_dim=4,
    projection_dim=3,
    max_epochs=1,
    batch_size=4,
    device="cpu",
    random_state=0,
)
GL_TINY = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=8,
    projection_dim=4,
    region_dim=4,
    max_epochs=1,
    device="cpu",
    random_state=0,
)


@pytest.fixture(scope="module")
def volumes():
    return np.random.default_rng(0).normal(size=(8, 1, 8, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(volumes):
    return SimCLRPretrainer(**TINY).fit(volumes)


# --------------------------------------------------------------- silent NaN
def test_transform_refuses_to_return_nan_features(volumes, fitted):
    broken = SimCLRPretrainer(**TINY).fit(volumes)
    with torch.no_grad():
        next(broken.module_.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite outputs .* row 0 of its output"):
        broken.transform(volumes)
    assert np.isfinite(fitted.transform(volumes)).all()


# ---------------------------------------------------- collapsing resampling
def test_absurd_voxel_sizes_are_refused_by_resample(tmp_path):
    path = str(tmp_path / "tiny_voxels.nii.gz")
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.diag([1e-6] * 3 + [1]))
    nib.save(img, path)
    ds = as_volume_dataset([path], preprocessing=[Resample(2.0), CropOrPad(8)])
    with pytest.raises(ValueError) as info:
        ds[0]
    message = str(info.value)
    assert path in message and "(8, 8, 8)" in message and "(1, 1, 1)" in message
    assert "voxel sizes" in message
    with pytest.raises(ValueError, match=re.escape(path)):
        SimCLRPretrainer(**TINY, preprocessing=[Resample(2.0), CropOrPad(8)]).fit(
            [path, path]
        )


def test_resample_refuses_an_enormous_grid():
    with pytest.raises(ValueError, match="more than 1073741824"):
        Resample(1e-3).apply(np.ones((4, 4, 4)), np.eye(4))
    # a thin axis as wide as one output voxel may become one voxel
    assert Resample(2.0).apply(np.ones((2, 8, 1)))[0].shape == (1, 4, 1)
    with pytest.raises(ValueError, match="spans 1.5 mm, less than one output voxel"):
        Resample(2.0).apply(np.ones((3, 8, 1)), np.diag([0.5, 1, 1, 1]))


# ------------------------------------------------------------ extreme voxels
def test_an_extreme_voxel_is_refused_by_percentile_scaling(volumes):
    X = np.random.default_rng(1).normal(0, 100, size=(6, 32, 32, 8))
    X = X.astype(np.float32)
    X[0, 3, 3, 3] = 3e38
    with pytest.raises(ValueError, match=r"X\[0\].*percentile scaling.*max_abs"):
        GlobalLocalPretrainer(**GL_TINY).fit(X)
    gl = GlobalLocalPretrainer(**GL_TINY).fit(X[1:])
    with pytest.raises(ValueError, match=r"X\[0\].*corrupt voxels"):
        gl.transform(X)
    features = gl.transform(X[1:])
    assert np.isfinite(features).all() and np.abs(features).max() < 1e3


def test_percentile_scaling_computes_in_float64():
    volume = np.zeros((1, 4, 4, 4), np.float32)
    volume[0, 0, 0, :2] = [-3e38, 3e38]  # their difference overflows float32
    volume[0, 1:] = 1.0
    out, _ = PercentileScaling(lower=0, upper=100, max_abs=10).apply(volume)
    assert np.isfinite(out).all() and out.min() == 0 and out.max() == 1
    with pytest.raises(ValueError, match="max_abs"):
        PercentileScaling(max_abs=0)


def test_zscored_features_stay_finite_with_an_extreme_voxel(volumes, fitted):
    X = volumes.copy()
    X[0, 0, 1, 1, 1] = 3e38
    features = fitted.transform(X)
    assert np.isfinite(features).all() and np.abs(features).max() < 1e3


# ---------------------------------------------------------- load_chest_ct
def test_load_chest_ct_refuses_nan_voxels(tmp_path):
    data = np.full((4, 4, 4), -800.0, np.float32)
    data[1, 2, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(ValueError, match=re.escape(f"{path} contains non-finite")):
        load_chest_ct(path)
    with pytest.raises(ValueError, match="non-finite"):
        load_chest_ct(tmp_path)


# ------------------------------------------------------------ channels last
@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_input_is_refused(volumes, channels):
    X = np.zeros((4, 16, 16, 16, channels), np.float32)
    for fit in (
        lambda: SimCLRPretrainer(**TINY).fit(X),
        lambda: VolumeDataset(X),
        lambda: FineTunedClassifier(backbone="small3d", device="cpu").fit(
            X, [0, 1] * 2
        ),
    ):
        with pytest.raises(ValueError, match=r"looks channels-last.*np\.moveaxis"):
            fit()


def test_fitted_estimator_refuses_channels_last_at_transform(fitted):
    with pytest.raises(ValueError, match="channels-last"):
        fitted.transform(np.zeros((2, 8, 8, 8, 1), np.float32))
    # a genuine channels-first input with a thin last axis is accepted
    assert VolumeDataset(np.zeros((2, 4, 8, 8, 2))).sample_shape == (4, 8, 8, 2)


# --------------------------------------------------- paths, folders, empty X
def test_a_single_path_or_an_empty_folder_as_X_says_what_to_pass(tmp_path):
    # a folder or a glob pattern is expanded to its images (issue 16); one
    # file, or a folder/pattern without images, is an error that says so
    age = np.array([30.0])
    est = YAwarePretrainer(**TINY)
    with pytest.raises(ValueError, match=r"single path.*pass a list of paths"):
        est.fit("scan.nii.gz", age)
    with pytest.raises(ValueError, match=r"is a folder.*with no image"):
        est.fit(str(tmp_path), age)
    with pytest.raises(ValueError, match="is a folder"):
        est.fit(tmp_path, age)
    with pytest.raises(ValueError, match="is a folder"):
        GlobalLocalPretrainer(**GL_TINY).fit(str(tmp_path))
    with pytest.raises(ValueError, match="glob pattern.*matches nothing"):
        est.fit(str(tmp_path / "*.nii.gz"), age)


@pytest.mark.parametrize("empty", [[], np.zeros((0,)), ()])
def test_empty_X_says_so(empty):
    with pytest.raises(ValueError, match="X is empty"):
        YAwarePretrainer(**TINY).fit(empty, [])
    with pytest.raises(ValueError, match="X is empty"):
        as_volume_dataset(empty)


# ---------------------------------------------------------------- WSP 2-D X
@pytest.mark.parametrize(
    "params, named",
    [({}, "backbone='tinynet'"), ({"backbone": "mlp"}, "augmentation='wsp'")],
)
def test_wsp_with_2d_X_asks_for_volumes(params, named):
    X = np.random.default_rng(0).normal(size=(6, 5))
    wsp = WSPPretrainer(max_epochs=1, device="cpu", **params)
    with pytest.raises(ValueError, match=r"volumes of shape \(n, D, H, W\)") as info:
        wsp.fit(X, weak_labels=np.arange(6) % 2)
    assert named in str(info.value)


# ------------------------------------------------------- bools for numbers
@pytest.mark.parametrize("name", ["batch_size", "max_epochs", "hidden_dim", "lr"])
@pytest.mark.parametrize("value", [True, False, np.True_])
def test_bools_are_not_numbers(volumes, name, value):
    # True passes scikit-learn's Interval(Integral/Real, ...) as 1
    match = f"'{name}'.*not a bool" if value is True else f"'{name}'"
    with pytest.raises(InvalidParameterError, match=match):
        SimCLRPretrainer(**{**TINY, name: value}).fit(volumes)


def test_bool_parameters_still_take_bools(volumes):
    SimCLRPretrainer(**TINY, cache=True, verbose=False).fit(volumes)
    with pytest.raises(InvalidParameterError, match="'batch_size'"):
        FineTunedClassifier(batch_size=True, device="cpu").fit(volumes, [0, 1] * 4)


# ------------------------------------------------- volumes too small for it
def test_densenet121_on_small_volumes_names_the_minimum():
    X = np.zeros((2, 1, 16, 16, 16), np.float32)
    message = (
        "input spatial size (D, H, W)=(16, 16, 16) is below the minimum 29x29x29 "
        "of backbone 'densenet121'"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        SimCLRPretrainer(backbone="densenet121", device="cpu").fit(X)
    with pytest.raises(ValueError, match=r"minimum 5x5x5 of backbone 'densenet'"):
        build_backbone(
            "densenet",
            (1, 4, 8, 8),
            block_config=(1, 1),
            growth_rate=2,
            num_init_features=2,
        )


@pytest.mark.parametrize("size, ok", [(28, False), (29, True)])
def test_densenet_minimum_is_exact(size, ok):
    kwargs = dict(block_config=(1, 1, 1, 1), growth_rate=2, num_init_features=2)
    if not ok:
        with pytest.raises(ValueError, match="minimum 29x29x29"):
            build_backbone("densenet", (1, size, 40, 40), **kwargs)
        return
    net = build_backbone("densenet", (1, size, size, size), **kwargs).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, size, size, size)).shape == (1, net.out_features)


def test_paths_in_messages_are_os_paths(tmp_path):
    # a path-like X is reported as the string the user would type
    with pytest.raises(ValueError, match=re.escape(repr(os.fspath(tmp_path)))):
        as_volume_dataset(tmp_path)


def test_finite_outputs_of_every_kind_of_estimator_are_checked(volumes):
    clf = FineTunedClassifier(
        backbone="small3d", backbone__channels=(2,), max_epochs=1, device="cpu"
    ).fit(volumes, [0, 1] * 4)
    with torch.no_grad():
        for p in clf.module_.parameters():
            p.fill_(float("inf"))
    with pytest.raises(ValueError, match="FineTunedClassifier's network computed"):
        clf.predict_proba(volumes)


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("weight_decay", 2**64, "ints must fit in a signed 64-bit integer"),
        ("batch_size", -(2**70), "batch_size"),
        ("weight_decay", float("inf"), "weight_decay"),
        ("lr", 1e300, "that float32 can hold"),
    ],
)
def test_numbers_torch_cannot_use_are_refused(volumes, name, value, match):
    for make in (
        lambda: SimCLRPretrainer(**{**TINY, name: value}),
        lambda: FineTunedClassifier(device="cpu", **{name: value}),
    ):
        with pytest.raises(InvalidParameterError, match=match):
            make().fit(volumes, [0, 1] * 4)


# --------------------------------------------- found by the fuzz suite
def test_preprocessing_refuses_non_finite_volumes_and_degenerate_affines():
    volume = np.ones((1, 4, 4, 4))
    volume[0, 1, 1, 1] = np.nan
    for step in (Resample(1.0), CropOrPad(4), ReorientToRAS()):
        with pytest.raises(ValueError, match="NaN or infinity"):
            step.apply(volume)
    with pytest.raises(ValueError, match="degenerate"):
        ReorientToRAS().apply(np.ones((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="more than the 1073741824"):
        CropOrPad(2048).apply(np.ones((2, 2, 2)))


def test_float64_volumes_too_large_for_float32_are_refused():
    X = np.ones((2, 1, 3, 3, 3))
    X[1, 0, 0, 0, 0] = 3.5e38
    ds = VolumeDataset(X)
    assert ds.volume(0).dtype == np.float32
    with pytest.raises(ValueError, match=r"X\[1\] has values too large for float32"):
        ds.volume(1)
