"""YAwarePretrainer / SimCLRPretrainer behaviour users rely on (tiny 3-D inputs)."""

import pickle

import joblib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit

from sklearn_cl3d import SimCLRPretrainer, YAwarePretrainer
from sklearn_cl3d.losses import YAwareLoss

TINY = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=16,
    projection_dim=8,
    batch_size=8,
    max_epochs=1,
    random_state=0,
)


@pytest.fixture(scope="module")
def data():
    """24 structured 12^3 volumes: a blob whose size grows with 'age'."""
    rng = np.random.default_rng(0)
    n = 24
    age = rng.uniform(20, 80, size=n)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    X = np.stack([(radius < 0.3 + a / 200).astype(np.float32) for a in age])
    X += 0.1 * rng.normal(size=X.shape).astype(np.float32)
    diagnosis = (age + rng.normal(0, 10, size=n) > 50).astype(int)
    return X[:, None], age, diagnosis


# ----------------------------------------------------------------- basics


@pytest.mark.parametrize("cls", [YAwarePretrainer, SimCLRPretrainer])
def test_fit_transform_shapes_and_dtype(cls, data):
    X, age, _ = data
    est = cls(**TINY)
    Z = est.fit(X, age).transform(X)
    assert Z.shape == (len(X), 8) and Z.dtype == np.float32
    assert np.isfinite(Z).all()
    # 4-D input (no channel axis) is the same data
    np.testing.assert_allclose(est.transform(X[:, 0]), Z, rtol=1e-5, atol=1e-6)
    names = est.get_feature_names_out()
    assert len(names) == 8 and names[0] == f"{cls.__name__.lower()}0"


@pytest.mark.parametrize(
    "layer,dim", [("backbone", 8), ("hidden", 16), ("projection", 8)]
)
def test_feature_layers(layer, dim, data):
    X, age, _ = data
    est = YAwarePretrainer(**{**TINY, "feature_layer": layer}).fit(X, age)
    assert est.transform(X).shape == (len(X), dim)
    assert len(est.get_feature_names_out()) == dim


def test_tiny_densenet_backbone(data):
    X, age, _ = data
    est = YAwarePretrainer(
        backbone="densenet",
        backbone__growth_rate=4,
        backbone__block_config=(1, 1),
        backbone__num_init_features=8,
        backbone__bn_size=2,
        hidden_dim=8,
        projection_dim=4,
        batch_size=12,
        max_epochs=1,
        random_state=0,
    )
    Z = est.fit(X, age).transform(X)
    assert Z.shape == (len(X), est.module_.backbone.out_features)


def test_training_reduces_the_loss(data):
    X, age, _ = data
    est = YAwarePretrainer(**{**TINY, "max_epochs": 8, "lr": 3e-3}).fit(X, age)
    losses = est.history[:, "train_loss"]
    assert losses[-1] < losses[0]


def test_standalone_y_is_the_metadata_and_proxy_wins(data):
    X, age, diagnosis = data
    a = YAwarePretrainer(**TINY).fit(X, age).transform(X)
    b = YAwarePretrainer(**TINY).fit(X, diagnosis, proxy=age).transform(X)
    c = YAwarePretrainer(**TINY).fit(X, diagnosis).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


class RecordingLoss(YAwareLoss):
    seen = []

    def forward(self, z_i, z_j, y):
        RecordingLoss.seen.append((z_i.shape[0], y.detach().cpu().numpy().copy()))
        return super().forward(z_i, z_j, y)


def test_criterion_gets_batch_metadata_and_two_views(data):
    X, age, _ = data
    RecordingLoss.seen = []
    est = YAwarePretrainer(**{**TINY, "criterion": RecordingLoss, "batch_size": 10})
    calls = []
    est.fit(X[:20], age[:20])
    hook = est.module_.register_forward_hook(lambda *a: calls.append(1))
    est.partial_fit(X[:20], age[:20])
    hook.remove()
    # 20 samples, batch 10 -> 2 steps per epoch, each with 10 ages of the batch
    sizes = [s for s, _ in RecordingLoss.seen]
    assert sizes == [10, 10, 10, 10]
    seen_ages = np.sort(np.concatenate([y.ravel() for _, y in RecordingLoss.seen[:2]]))
    np.testing.assert_allclose(seen_ages, np.sort(age[:20]), rtol=1e-6)
    # the two views go through the network as two separate forward calls
    assert len(calls) == 4


def test_last_incomplete_batch(data):
    X, age, _ = data
    est = YAwarePretrainer(**{**TINY, "batch_size": 10}).fit(X[:23], age[:23])
    assert [b["train_batch_size"] for b in est.history[-1]["batches"]] == [10, 10]
    est = YAwarePretrainer(**{**TINY, "batch_size": 64}).fit(X[:5], age[:5])
    assert [b["train_batch_size"] for b in est.history[-1]["batches"]] == [5]


def test_tabular_mlp_configuration():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 7))
    est = SimCLRPretrainer(
        backbone="mlp",
        backbone__hidden_dims=(12,),
        max_epochs=2,
        batch_size=10,
        augmentation="all",
        random_state=0,
    )
    Z = est.fit(X).transform(X)
    assert Z.shape == (30, 12) and est.n_features_in_ == 7
    with pytest.raises(ValueError, match="features"):
        est.transform(X[:, :5])


# ------------------------------------------------------------ randomness


def test_random_state_reproducible_and_seed_dependent(data):
    X, age, _ = data
    kw = {**TINY, "augmentation": "all"}
    a = YAwarePretrainer(**kw).fit(X, age).transform(X)
    b = YAwarePretrainer(**kw).fit(X, age).transform(X)
    c = YAwarePretrainer(**{**kw, "random_state": 1}).fit(X, age).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_fit_does_not_touch_global_torch_rng(data):
    X, age, _ = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    YAwarePretrainer(**TINY).fit(X, age)
    torch.testing.assert_close(torch.rand(3), expected)


# ------------------------------------------------------- sklearn plumbing


def test_clone_and_nested_params(data):
    X, age, _ = data
    est = YAwarePretrainer(**TINY)
    est.set_params(backbone__channels=(3, 5), sigma=2.0)
    params = est.get_params()
    assert params["backbone__channels"] == (3, 5) and params["sigma"] == 2.0
    twin = clone(est)
    assert twin.get_params()["backbone__channels"] == (3, 5)
    est.fit(X, age)
    assert est.transform(X).shape[1] == 5
    assert not hasattr(clone(est), "module_")
    # changing a backbone parameter after fit rebuilds the network
    est.set_params(backbone__channels=(3, 6))
    assert est.module_.backbone.out_features == 6


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_persistence_round_trip(how, data, tmp_path):
    X, age, _ = data
    est = YAwarePretrainer(**TINY).fit(X, age)
    Z = est.transform(X)
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(est))
    else:
        joblib.dump(est, tmp_path / "est.joblib")
        loaded = joblib.load(tmp_path / "est.joblib")
    np.testing.assert_array_equal(loaded.transform(X), Z)
    assert loaded.get_params()["device"] == "auto"


@pytest.fixture
def routing():
    sklearn.set_config(enable_metadata_routing=True)
    yield
    sklearn.set_config(enable_metadata_routing=False)


class CountingYAware(YAwarePretrainer):
    """Records the size of the proxy each fit receives (module level: picklable)."""

    fits = []

    def fit(self, X, y=None, proxy=None, **fit_params):
        CountingYAware.fits.append(None if proxy is None else len(proxy))
        return super().fit(X, y, proxy=proxy, **fit_params)


def test_cross_val_score_routes_fold_sliced_proxy(data, routing):
    X, age, diagnosis = data
    CountingYAware.fits = []
    ssl = CountingYAware(**TINY).set_fit_request(proxy=True)
    pipe = Pipeline([("ssl", ssl), ("clf", LogisticRegression())])
    scores = cross_val_score(pipe, X, diagnosis, params={"proxy": age}, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert CountingYAware.fits == [16, 16, 16]


def test_grid_search_over_sigma_with_routing(data, routing):
    X, age, diagnosis = data
    ssl = YAwarePretrainer(**TINY).set_fit_request(proxy=True)
    pipe = Pipeline([("ssl", ssl), ("clf", LogisticRegression())])
    gs = GridSearchCV(pipe, {"ssl__sigma": [1.0, 5.0]}, cv=2)
    gs.fit(X, diagnosis, proxy=age)
    assert gs.best_params_["ssl__sigma"] in (1.0, 5.0)
    assert gs.predict(X).shape == (len(X),)


def test_pipeline_without_routing_uses_step_params(data):
    X, age, diagnosis = data
    pipe = Pipeline([("ssl", YAwarePretrainer(**TINY)), ("clf", LogisticRegression())])
    pipe.fit(X, diagnosis, ssl__proxy=age)
    assert pipe.score(X, diagnosis) >= 0


def test_pipeline_memory_caches_pretraining(data, tmp_path):
    X, age, diagnosis = data
    CountingYAware.fits = []
    pipe = Pipeline(
        [("ssl", CountingYAware(**TINY)), ("clf", LogisticRegression())],
        memory=str(tmp_path),
    )
    for C in (0.1, 1.0, 10.0):
        pipe.set_params(clf__C=C).fit(X, diagnosis, ssl__proxy=age)
    assert len(CountingYAware.fits) == 1


def test_callbacks_without_validation_split(data):
    X, age, _ = data
    est = YAwarePretrainer(
        **{**TINY, "max_epochs": 3},
        callbacks=[("stop", EarlyStopping(monitor="train_loss", patience=5))],
    ).fit(X, age)
    assert len(est.history) == 3
    est = YAwarePretrainer(**{**TINY, "max_epochs": 1}, train_split=ValidSplit(4))
    est.fit(X, age)
    assert np.isfinite(est.history[-1, "valid_loss"])


def test_verbose_shows_progress(data, capsys):
    X, age, _ = data
    YAwarePretrainer(**{**TINY, "verbose": 0}).fit(X, age)
    assert capsys.readouterr().out == ""
    YAwarePretrainer(**TINY).fit(X, age)  # verbose=1 by default, as in skorch
    captured = capsys.readouterr()
    assert "train_loss" in captured.out
    assert "it/s" in captured.err or "%" in captured.err


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params,match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -2.0}, "sigma"),
        ({"temperature": 0.0}, "temperature"),
        ({"kernel": "cosine"}, "kernel"),
        ({"feature_layer": "logits"}, "feature_layer"),
        ({"augmentation": "rotate"}, "augmentation"),
        ({"backbone": "resnet50"}, "backbone"),
        ({"normalization": "column"}, "normalization"),
        ({"device": "cuda:7" if not torch.cuda.is_available() else "nodev"}, "device"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(params, match, data):
    X, age, _ = data
    with pytest.raises(ValueError, match=match):
        YAwarePretrainer(**{**TINY, **params}).fit(X, age)


def test_bad_data_raise_clear_errors(data):
    X, age, _ = data
    est = YAwarePretrainer(**TINY)
    with pytest.raises(ValueError, match="5-D"):
        est.fit(X[:, 0, 0], age)  # 3-D
    X_nan = X.copy()
    X_nan[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(X_nan, age)
    X_inf = X.copy()
    X_inf[1, 0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        est.fit(X_inf, age)
    age_nan = age.copy()
    age_nan[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(X, age_nan)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, age[:-1])
    with pytest.raises(ValueError, match="requires y"):
        est.fit(X)
    est.fit(X, age)
    with pytest.raises(ValueError, match="channel"):
        est.transform(np.concatenate([X, X], axis=1))


def test_transform_before_fit_raises_not_fitted(data):
    X, _, _ = data
    with pytest.raises(NotFittedError):
        YAwarePretrainer(**TINY).transform(X)
    with pytest.raises(NotFittedError):
        SimCLRPretrainer(**TINY).get_feature_names_out()


def test_nan_loss_stops_with_epoch_and_batch():
    # finite but huge inputs without normalisation overflow inside the network
    X = np.full((16, 6), 3e38, dtype=np.float32)
    est = SimCLRPretrainer(
        backbone="mlp",
        normalize=None,
        augmentation="none",
        batch_size=8,
        max_epochs=2,
        random_state=0,
    )
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 1"):
        est.fit(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CPU-only loader")
def test_unpickling_a_cuda_fitted_estimator_on_cpu(data):
    X, age, _ = data
    est = YAwarePretrainer(**{**TINY, "device": "cpu"}).fit(X, age)
    state = est.__getstate__()
    state["device"] = "cuda"  # as if it had been fitted on a GPU machine
    loaded = YAwarePretrainer.__new__(YAwarePretrainer)
    with pytest.warns(UserWarning, match="CUDA"):
        loaded.__setstate__(state)
    assert loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.transform(X), est.transform(X))
