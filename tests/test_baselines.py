"""Voxel baselines: PCA of z-scored voxels and a ridge of a proxy on them."""

import nibabel as nib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge

from sklearn_cl3d.baselines import VoxelPCA, VoxelProxyRegression


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, size=40)
    X = rng.normal(size=(40, 1, 6, 5, 4)).astype(np.float32)
    X[:, 0, :3] += age[:, None, None, None] / 20.0
    X *= rng.uniform(0.1, 100, size=(40, 1, 1, 1, 1)).astype(np.float32)  # gains
    return X, age


def _zscored_rows(X):
    M = X.reshape(len(X), -1).astype(np.float64)
    return (M - M.mean(1, keepdims=True)) / M.std(1, keepdims=True)


def test_voxel_pca_is_pca_of_zscored_voxels(volumes):
    X, _ = volumes
    got = VoxelPCA(n_components=7, random_state=0).fit(X[:30]).transform(X[30:])
    ref = PCA(7, random_state=0).fit(_zscored_rows(X[:30]))
    np.testing.assert_allclose(got, ref.transform(_zscored_rows(X[30:])), atol=1e-8)
    # the per-volume gain does not matter
    np.testing.assert_allclose(
        VoxelPCA(7, random_state=0).fit(X[:30]).transform(3 * X[30:]), got, atol=1e-6
    )


def test_proxy_regression_is_ridge_on_the_components(volumes):
    X, age = volumes
    reg = VoxelProxyRegression(n_components=10, alpha=2.0, random_state=0)
    pred = reg.fit(X[:30], age[:30]).transform(X[30:])
    assert pred.shape == (10, 1)
    pca = PCA(10, random_state=0).fit(_zscored_rows(X[:30]))
    ridge = Ridge(alpha=2.0).fit(pca.transform(_zscored_rows(X[:30])), age[:30])
    np.testing.assert_allclose(
        pred[:, 0], ridge.predict(pca.transform(_zscored_rows(X[30:]))), rtol=1e-5
    )
    # the signal is there: the prediction follows age on held-out volumes
    assert np.corrcoef(pred[:, 0], age[30:])[0, 1] > 0.8


def test_baselines_read_files(volumes, tmp_path):
    X, age = volumes
    paths = []
    for i in range(12):
        path = tmp_path / f"v{i}.nii.gz"
        nib.save(nib.Nifti1Image(X[i, 0], np.eye(4)), path)
        paths.append(str(path))
    from_files = VoxelPCA(3, random_state=0).fit(paths).transform(paths)
    from_array = VoxelPCA(3, random_state=0).fit(X[:12]).transform(X[:12])
    np.testing.assert_allclose(from_files, from_array, atol=1e-6)


def test_baselines_errors(volumes):
    X, age = volumes
    with pytest.raises(NotFittedError):
        VoxelPCA().transform(X)
    with pytest.raises(ValueError, match="n_components"):
        VoxelPCA(n_components=41).fit(X)
    with pytest.raises(ValueError, match="n_components"):
        VoxelPCA(n_components=0).fit(X)
    with pytest.raises(ValueError, match="requires y"):
        VoxelProxyRegression(5).fit(X)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        VoxelProxyRegression(5).fit(X, age[:3])
    fitted = VoxelPCA(3).fit(X)
    with pytest.raises(ValueError, match="voxels per volume"):
        fitted.transform(X[:, :, :4])
    assert clone(VoxelProxyRegression(7, alpha=3.0)).get_params()["alpha"] == 3.0
