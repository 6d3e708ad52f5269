"""Grid search and cross-validation on a Dask cluster (joblib's Dask backend).

A local cluster of two single-threaded worker processes on 127.0.0.1 stands
in for a real one: X is a 1-D array of NIfTI paths that the workers read
themselves, and the Pipeline's cache directory is shared by the workers.
"""

from __future__ import annotations

import os
import warnings

import joblib
import nibabel as nib
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline

from sklearn_cl3d import YAwarePretrainer

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

N_SUBJECTS = 12


@pytest.fixture(scope="module")
def client():
    # Dask's MALLOC_TRIM_THRESHOLD_=65536 slows torch's CPU training about
    # twofold (benchmarks/README.md); the nanny also writes its worker
    # variables into this process's os.environ, so restore it afterwards
    saved = dict(os.environ)
    unset = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    try:
        with dask.config.set(unset), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. no dashboard without bokeh
            cluster = distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,  # torch's RNG is per process: never threads
                host="127.0.0.1",
                dashboard_address=None,
            )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """NIfTI paths as a 1-D string array, and ages."""
    root = tmp_path_factory.mktemp("nifti")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_SUBJECTS):
        vol = rng.normal(size=(8, 8, 8)).astype(np.float32)
        path = root / f"sub-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
        paths.append(str(path))
    age = rng.uniform(20, 80, size=N_SUBJECTS)
    return np.array(paths), age


def _pipe(memory=None):
    # the pretrainer uses age as y-Aware metadata, the probe predicts it
    ssl = YAwarePretrainer(
        backbone="small3d",
        backbone__channels=(4, 8),
        hidden_dim=8,
        projection_dim=4,
        max_epochs=1,
        batch_size=4,
        device="cpu",
        random_state=0,
    )
    return Pipeline([("ssl", ssl), ("reg", Ridge())], memory=memory)


def test_grid_search_on_dask_equals_serial(client, cohort, tmp_path):
    paths, age = cohort
    grid = {"ssl__sigma": [2.0, 20.0], "reg__alpha": [0.1, 10.0]}
    cv = KFold(2, shuffle=True, random_state=0)

    serial = GridSearchCV(_pipe(), grid, cv=cv, n_jobs=1).fit(paths, age)

    cache = tmp_path / "cache"  # on shared storage in a real cluster
    search = GridSearchCV(_pipe(memory=str(cache)), grid, cv=cv, n_jobs=-1)
    with joblib.parallel_backend("dask"):
        search.fit(paths, age)

    assert search.best_params_ == serial.best_params_
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        np.testing.assert_allclose(
            search.cv_results_[key], serial.cv_results_[key], rtol=1e-4, atol=1e-6
        )
    # the workers filled the Pipeline's cache (pretraining reused over alpha)
    assert any(cache.rglob("output.pkl"))
    # both workers got tasks
    assert len(client.scheduler_info()["workers"]) == 2


def test_cross_val_score_on_dask_equals_serial(client, cohort):
    paths, age = cohort
    serial = cross_val_score(_pipe(), paths, age, cv=3)
    with joblib.parallel_backend("dask"):
        scores = cross_val_score(_pipe(), paths, age, cv=3, n_jobs=-1)
    np.testing.assert_allclose(scores, serial, rtol=1e-4, atol=1e-6)


def test_cross_val_score_on_ray_equals_serial(cohort):
    ray = pytest.importorskip(
        "ray", reason="ray is not installed (pip install 'sklearn-cl3d[ray]')"
    )
    from ray.util.joblib import register_ray

    paths, age = cohort
    serial = cross_val_score(_pipe(), paths, age, cv=3)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        register_ray()
        with joblib.parallel_backend("ray"):
            scores = cross_val_score(_pipe(), paths, age, cv=3, n_jobs=-1)
    finally:
        ray.shutdown()
    np.testing.assert_allclose(scores, serial, rtol=1e-4, atol=1e-6)
