"""Estimators take volumes in any form: arrays, files, nibabel images, preprocessing."""

import nibabel as nib
import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline

from sklearn_cl3d import SimCLRPretrainer, YAwarePretrainer
from sklearn_cl3d.data import CropOrPad, IntensityZScore

TINY = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=8,
    projection_dim=4,
    batch_size=6,
    max_epochs=1,
    random_state=0,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 12
    X = rng.normal(size=(n, 10, 10, 10)).astype(np.float32)
    age = rng.uniform(20, 80, n)
    folder = tmp_path_factory.mktemp("cohort")
    nii, npy = [], []
    for i, vol in enumerate(X):
        p = folder / f"sub-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
        nii.append(str(p))
        q = folder / f"sub-{i:02d}.npy"
        np.save(q, vol)
        npy.append(q)
    return X, age, nii, npy


def test_paths_arrays_and_images_give_the_same_features(cohort):
    X, age, nii, npy = cohort
    ref = YAwarePretrainer(**TINY).fit(X, age)
    Z = ref.transform(X)
    for source in (nii, npy, [nib.load(p) for p in nii], np.array(nii)):
        est = YAwarePretrainer(**TINY).fit(source, age)
        np.testing.assert_allclose(est.transform(source), Z, rtol=1e-4, atol=1e-5)
        assert est.input_shape_ == (1, 10, 10, 10)
    # a model fitted on arrays encodes files, and vice versa
    np.testing.assert_allclose(ref.transform(nii), Z, rtol=1e-4, atol=1e-5)


def test_preprocessing_runs_in_the_loader(cohort):
    X, age, nii, _ = cohort
    prep = [IntensityZScore(mask=None), CropOrPad((8, 8, 8))]
    est = SimCLRPretrainer(**TINY, preprocessing=prep, cache=True).fit(nii)
    assert est.input_shape_ == (1, 8, 8, 8)
    assert est.transform(X).shape == (len(X), 8)  # arrays go through it too


def test_workers_load_files(cohort):
    X, age, nii, _ = cohort
    est = YAwarePretrainer(**TINY, iterator_train__num_workers=2).fit(nii, age)
    assert np.isfinite(est.transform(nii)).all()


def test_missing_file_is_named(cohort, tmp_path):
    _, age, nii, _ = cohort
    missing = str(tmp_path / "nope.nii.gz")
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        YAwarePretrainer(**TINY).fit([*nii[:-1], missing], age)


def test_cross_val_score_on_paths(cohort):
    _, age, nii, _ = cohort
    dx = (age > np.median(age)).astype(int)
    sklearn.set_config(enable_metadata_routing=True)
    try:
        ssl = YAwarePretrainer(**TINY).set_fit_request(proxy=True)
        pipe = Pipeline([("ssl", ssl), ("clf", LogisticRegression())])
        scores = cross_val_score(pipe, np.array(nii), dx, params={"proxy": age}, cv=2)
    finally:
        sklearn.set_config(enable_metadata_routing=False)
    assert np.isfinite(scores).all()
