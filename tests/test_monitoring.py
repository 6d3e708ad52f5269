"""Representation metrics and the callbacks that watch pretraining."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_cl3d import SimCLRPretrainer, YAwarePretrainer
from sklearn_cl3d.monitoring import (
    KNNProbe,
    LinearProbe,
    RepresentationCollapseWarning,
    RepresentationMetrics,
    alignment,
    effective_rank,
    feature_std,
    uniformity,
)

# ---------------------------------------------------------- naive references


def unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v] if n > 0 else [0.0] * len(v)


def naive_alignment(z1, z2, alpha):
    total = 0.0
    for a, b in zip(z1.tolist(), z2.tolist()):
        a, b = unit(a), unit(b)
        total += math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b))) ** alpha
    return total / len(z1)


def naive_uniformity(z, t):
    rows = [unit(r) for r in z.tolist()]
    terms = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            d2 = sum((p - q) ** 2 for p, q in zip(rows[i], rows[j]))
            terms.append(math.exp(-t * d2))
    return math.log(sum(terms) / len(terms))


def naive_effective_rank(z):
    centred = z - z.mean(axis=0)
    eig = np.linalg.eigvalsh(centred.T @ centred)  # singular values squared
    s = np.sqrt(np.clip(eig, 0, None))
    s = s[s > 1e-9 * s.max()]
    p = s / s.sum()
    return math.exp(-sum(pi * math.log(pi) for pi in p))


def naive_feature_std(z):
    rows = np.array([unit(r) for r in z.tolist()])
    out = []
    for col in rows.T:
        mean = sum(col) / len(col)
        out.append(math.sqrt(sum((c - mean) ** 2 for c in col) / len(col)))
    return np.array(out)


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize("alpha", [1, 2, 3.5])
def test_alignment_matches_naive(alpha):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    assert alignment(z1, z2, alpha=alpha) == pytest.approx(
        naive_alignment(z1, z2, alpha), rel=1e-12
    )


@pytest.mark.parametrize("t", [0.5, 2, 10])
def test_uniformity_matches_naive(t):
    z = np.random.default_rng(1).normal(size=(11, 4))
    assert uniformity(z, t=t) == pytest.approx(naive_uniformity(z, t), rel=1e-12)


def test_effective_rank_and_std_match_naive():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(20, 6)) * np.array([5, 3, 1, 1, 0.1, 0.01])
    assert effective_rank(z) == pytest.approx(naive_effective_rank(z), rel=1e-9)
    np.testing.assert_allclose(feature_std(z), naive_feature_std(z), rtol=1e-12)


def test_hand_computed_values():
    # views equal up to scale: perfectly aligned; orthogonal: |e1 - e2|^2 = 2
    assert alignment([[1.0, 0.0]], [[3.0, 0.0]]) == 0.0
    assert alignment([[1.0, 0.0]], [[0.0, 2.0]]) == pytest.approx(2.0)
    assert alignment([[1.0, 0.0]], [[-1.0, 0.0]], alpha=1) == pytest.approx(2.0)
    # e1, -e1, e2: squared distances 4, 2, 2
    expected = math.log((math.exp(-8) + 2 * math.exp(-4)) / 3)
    got = uniformity([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]], t=2)
    assert got == pytest.approx(expected, rel=1e-14)
    assert uniformity([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]) == 0.0
    # three equally strong orthogonal directions; samples on a line; constant
    cube = np.vstack([np.eye(3), -np.eye(3)])
    assert effective_rank(cube) == pytest.approx(3.0, rel=1e-12)
    assert effective_rank([[0.0, 0.0], [1.0, 2.0], [3.0, 6.0]]) == pytest.approx(1.0)
    assert effective_rank(np.ones((4, 3))) == 0.0
    # two strengths 3:1 -> p = (3/4, 1/4)
    z = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    p = np.array([0.75, 0.25])
    assert effective_rank(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    np.testing.assert_allclose(feature_std(np.ones((5, 4))), np.zeros(4))
    np.testing.assert_allclose(feature_std([[2.0, 0.0], [0.0, 7.0]]), [0.5, 0.5])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: alignment(np.ones((3, 2)), np.ones((4, 2))), "same shape"),
        (lambda: alignment(np.ones((3, 2)), np.ones((3, 2)), alpha=0), "alpha"),
        (lambda: uniformity(np.ones((1, 2))), "at least 2"),
        (lambda: uniformity(np.ones((3, 2)), t=-1), "t must"),
        (lambda: effective_rank(np.ones(3)), r"shape \(n, d\)"),
        (lambda: feature_std([[np.nan, 1.0]]), "NaN"),
    ],
)
def test_metric_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------- callbacks

TINY = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=16,
    projection_dim=8,
    batch_size=8,
    max_epochs=2,
    random_state=0,
    verbose=0,
)


@pytest.fixture(scope="module")
def data():
    """16 training and 12 held-out 12^3 blobs whose size grows with 'age'."""
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, size=28)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    X = np.stack([(radius < 0.3 + a / 200).astype(np.float32) for a in age])
    X = X[:, None] + 0.1 * rng.normal(size=X[:, None].shape).astype(np.float32)
    label = (age > 50).astype(int)
    return X[:16], age[:16], X[16:], age[16:], label[16:]


def test_every_k_epochs_and_continued_count(data):
    X, age, X_val, _, lab = data
    probe = LinearProbe(X_val, lab, every=2, cv=3)
    est = YAwarePretrainer(**{**TINY, "max_epochs": 3}, callbacks=[("p", probe)])
    est.fit(X, age)
    assert ["linear_probe" in row for row in est.history] == [False, True, False]
    est.partial_fit(X, age)  # epochs 4..6
    assert [i + 1 for i, row in enumerate(est.history) if "linear_probe" in row] == [
        2,
        4,
        6,
    ]


def test_callbacks_do_not_change_training(data):
    X, age, X_val, age_val, lab = data
    callbacks = [
        ("lin", LinearProbe(X_val, lab, cv=3)),
        ("knn", KNNProbe(X_val, age_val, n_neighbors=3, cv=3)),
        ("repr", RepresentationMetrics(X_val)),
    ]
    plain = YAwarePretrainer(**TINY).fit(X, age)
    watched = YAwarePretrainer(**TINY, callbacks=callbacks).fit(X, age)
    for a, b in zip(
        plain.module_.state_dict().values(), watched.module_.state_dict().values()
    ):
        assert torch.equal(a, b)
    assert plain.history[:, "train_loss"] == watched.history[:, "train_loss"]
    np.testing.assert_array_equal(plain.transform(X_val), watched.transform(X_val))


def test_probes_score_what_a_user_would_compute(data):
    X, age, X_val, age_val, lab = data
    callbacks = [
        ("lin", LinearProbe(X_val, lab, cv=3)),
        ("ridge", LinearProbe(X_val, age_val, cv=3, name="age_r2")),
        ("knn", KNNProbe(X_val, lab, n_neighbors=3, cv=3)),
    ]
    est = SimCLRPretrainer(**TINY, callbacks=callbacks).fit(X)
    feats = est.transform(X_val).astype(np.float64)
    lin = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    ridge = make_pipeline(StandardScaler(), Ridge())
    knn = KNeighborsClassifier(n_neighbors=3, metric="cosine")
    last = est.history[-1]
    assert last["linear_probe"] == pytest.approx(
        cross_val_score(lin, feats, lab, cv=3).mean(), abs=1e-9
    )
    assert last["age_r2"] == pytest.approx(
        cross_val_score(ridge, feats, age_val, cv=3).mean(), abs=1e-9
    )
    assert last["knn_probe"] == pytest.approx(
        cross_val_score(knn, feats, lab, cv=3).mean(), abs=1e-9
    )
    assert callbacks[1][1].task_ == "regression"
    assert callbacks[0][1].task_ == "classification"


def test_representation_metrics_on_transform_features(data):
    X, age, X_val, _, _ = data
    cb = RepresentationMetrics(X_val)
    est = YAwarePretrainer(**TINY, callbacks=[("repr", cb)]).fit(X, age)
    feats = est.transform(X_val).astype(np.float64)
    last = est.history[-1]
    assert last["uniformity"] == pytest.approx(uniformity(feats), rel=1e-5)
    assert last["effective_rank"] == pytest.approx(effective_rank(feats), rel=1e-5)
    assert last["feature_std"] == pytest.approx(feature_std(feats).mean(), rel=1e-5)
    np.testing.assert_allclose(cb.feature_std_, feature_std(feats), rtol=1e-5)
    assert 0.0 < last["alignment"] < 4.0


def test_identical_views_are_perfectly_aligned(data):
    X, age, X_val, _, _ = data
    cb = RepresentationMetrics(X_val, layer="projection", prefix="proj_")
    est = YAwarePretrainer(**TINY, augmentation="none", callbacks=[("r", cb)])
    est.fit(X, age)
    assert est.history[-1]["proj_alignment"] == pytest.approx(0.0, abs=1e-10)
    assert cb.feature_std_.shape == (8,)  # the projection's dimension


class ConstantBackbone(torch.nn.Module):
    """Every input gets the same feature vector: a collapsed encoder."""

    out_features = 4

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.bias.expand(len(x), 4) + 0.0 * x.flatten(1).mean(1, keepdim=True)


def test_collapse_warns_once(data):
    X, age, X_val, _, _ = data
    cb = RepresentationMetrics(X_val)
    est = YAwarePretrainer(
        backbone=ConstantBackbone(),
        hidden_dim=16,
        projection_dim=8,
        batch_size=8,
        max_epochs=3,
        random_state=0,
        verbose=0,
        callbacks=[("repr", cb)],
    )
    with pytest.warns(
        RepresentationCollapseWarning, match="collapsed at epoch 1"
    ) as rec:
        est.fit(X, age)
    assert sum(issubclass(w.category, RepresentationCollapseWarning) for w in rec) == 1
    assert est.history[-1]["effective_rank"] == 0.0
    assert est.history[-1]["feature_std"] == 0.0


def test_healthy_network_does_not_warn(data):
    X, age, X_val, _, _ = data
    est = YAwarePretrainer(**TINY, callbacks=[("r", RepresentationMetrics(X_val))])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepresentationCollapseWarning)
        est.fit(X, age)
    assert est.history[-1]["effective_rank"] > 1.5


@pytest.mark.parametrize(
    "callback, match",
    [
        (lambda Xv, y: LinearProbe(Xv, y, every=0), "every"),
        (lambda Xv, y: LinearProbe(Xv, y[:-1]), "one label per sample"),
        (lambda Xv, y: KNNProbe(Xv, y, name=""), "name"),
        (lambda Xv, y: RepresentationMetrics(Xv[:2]), "at least 3"),
        (lambda Xv, y: RepresentationMetrics(Xv, t=0), "t must"),
        (lambda Xv, y: RepresentationMetrics(Xv, collapse_std=-1), "collapse_std"),
    ],
)
def test_callback_parameter_errors(data, callback, match):
    X, age, X_val, _, lab = data
    est = YAwarePretrainer(**TINY, callbacks=[("cb", callback(X_val, lab))])
    with pytest.raises(ValueError, match=match):
        est.fit(X, age)
