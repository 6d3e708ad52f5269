"""Fine-tuning the encoders of parts of a volume: a GlobalLocalPretrainer's
slice encoder and a DrasCLREncoder's landmark-patch encoder."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from sklearn_cl3d import (
    DrasCLREncoder,
    FineTunedClassifier,
    FineTunedRegressor,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
)
from sklearn_cl3d.evaluation import label_efficiency
from sklearn_cl3d.nn import ItemPooling, LandmarkSetEncoder, SliceSetEncoder

GL = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=16,
    projection_dim=8,
    region_dim=8,
    max_epochs=1,
    random_state=0,
)
LANDMARKS = [[0, 0, 0], [0, 8, 8], [8, 8, 0]]
DRAS = dict(
    patch_size=8,
    n_experts=2,
    projection_dim=16,
    queue_size=8,
    batch_size=2,
    max_epochs=1,
    landmarks=LANDMARKS,
    device="cpu",
    random_state=0,
)
FT = dict(max_epochs=2, batch_size=4, normalize=None, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def slices_data():
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 0.1, size=(12, 32, 32, 8)).astype(np.float32)
    y = np.array([0, 1] * 6)
    X[y == 1, 8:20, 8:20, :] += 1.0
    return X, y


@pytest.fixture(scope="module")
def gl(slices_data):
    return GlobalLocalPretrainer(**GL).fit(slices_data[0])


@pytest.fixture(scope="module")
def ct_data():
    rng = np.random.default_rng(0)
    X = rng.normal(-600, 300, size=(12, 16, 16, 16)).astype(np.float32)
    y = np.array([0, 1] * 6)
    X[y == 1] += 300.0
    return X, y


@pytest.fixture(scope="module")
def dras(ct_data):
    return DrasCLREncoder(**DRAS).fit(ct_data[0])


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _features_before_training(est, X):
    """Backbone output of the unfitted-but-initialised fine-tuner on X."""
    data = est._volumes(X, reset=False)
    batch = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        return est.module_.backbone.eval()(batch).numpy()


# ----------------------------------------------------------- global-local


def test_globallocal_backbone_is_its_transform(gl, slices_data):
    X, y = slices_data
    clf = FineTunedClassifier(gl, **{**FT, "max_epochs": 0}).fit(X, y)
    backbone = clf.module_.backbone
    assert isinstance(backbone, SliceSetEncoder)
    assert backbone.pooling.mode == "mean" and clf.input_adapter_ is not None
    # percentile-scaled volumes, every slice, spatial mean, mean over slices
    np.testing.assert_allclose(
        _features_before_training(clf, X), gl.transform(X), rtol=1e-5, atol=1e-6
    )
    # no decoder, no projection head
    names = {n for n, _ in backbone.named_parameters()}
    assert names and not any("decoder" in n or "head" in n for n in names)


def test_globallocal_fine_tunes_and_leaves_the_pretrainer(gl, slices_data):
    X, y = slices_data
    before = _state(gl.module_)
    clf = FineTunedClassifier(gl, **FT).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (12, 2) and np.allclose(proba.sum(1), 1)
    assert clf.predict(X).shape == (12,)
    after = _state(gl.module_)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the copied encoder did train
    start = FineTunedClassifier(gl, **{**FT, "max_epochs": 0}).fit(X, y)
    a = start.module_.backbone.state_dict()
    b = clf.module_.backbone.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_globallocal_random_init_and_max_pooling(gl, slices_data):
    X, y = slices_data
    pre = FineTunedClassifier(gl, **{**FT, "max_epochs": 0}).fit(X, y)
    rnd = FineTunedClassifier(gl, init="random", **{**FT, "max_epochs": 0}).fit(X, y)
    a, b = pre.module_.backbone.state_dict(), rnd.module_.backbone.state_dict()
    assert a.keys() == b.keys()
    key = next(k for k in a if k.endswith("weight"))
    assert not torch.equal(a[key], b[key])
    again = FineTunedClassifier(gl, init="random", **{**FT, "max_epochs": 0})
    again.fit(X, y)
    c = again.module_.backbone.state_dict()
    assert all(torch.equal(b[k], c[k]) for k in b)
    gl_max = clone(gl).set_params(aggregate="max").fit(X)
    clf = FineTunedClassifier(gl_max, **{**FT, "max_epochs": 0}).fit(X, y)
    assert clf.module_.backbone.pooling.mode == "max"
    np.testing.assert_allclose(
        _features_before_training(clf, X), gl_max.transform(X), rtol=1e-5, atol=1e-6
    )


def test_globallocal_frozen_backbone_and_regressor(gl, slices_data):
    X, y = slices_data
    start = _state(gl.module_.unet.encoder)
    reg = FineTunedRegressor(gl, freeze="backbone", **FT).fit(X, y.astype(float))
    assert reg.predict(X).shape == (12,)
    trained = reg.module_.backbone.encoder.encoder.state_dict()
    assert all(torch.equal(start[k], trained[k]) for k in start)


def test_globallocal_3d_is_refused_clearly(slices_data):
    X, y = slices_data
    gl3 = GlobalLocalPretrainer(
        **{**GL, "dims": 3, "n_partitions": 2, "local": None}
    ).fit(X[:4])
    with pytest.raises(ValueError, match="dims=2"):
        FineTunedClassifier(gl3, **FT).fit(X[:4], y[:4])


def test_fine_tuned_globallocal_clones_and_pickles(gl, slices_data):
    X, y = slices_data
    clf = FineTunedClassifier(gl, **FT).fit(X, y)
    assert clone(clf).pretrained is gl
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(X), clf.predict_proba(X))


# ---------------------------------------------------------------- DrasCLR


def test_drasclr_backbone_is_its_transform(dras, ct_data):
    X, y = ct_data
    clf = FineTunedClassifier(dras, **{**FT, "max_epochs": 0}).fit(X, y)
    backbone = clf.module_.backbone
    assert isinstance(backbone, LandmarkSetEncoder)
    assert not hasattr(backbone.encoder, "head")  # the MoCo head is dropped
    np.testing.assert_allclose(
        backbone.locations.numpy(), dras.locations_, rtol=0, atol=1e-7
    )
    np.testing.assert_allclose(
        _features_before_training(clf, X), dras.transform(X), rtol=1e-4, atol=1e-5
    )


def test_drasclr_fine_tunes_with_attention_pooling(dras, ct_data):
    X, y = ct_data
    before = _state(dras.module_)
    reg = FineTunedRegressor(dras, pooling="attention", **FT).fit(X, y.astype(float))
    assert reg.predict(X).shape == (12,)
    pooling = reg.module_.backbone.pooling
    assert isinstance(pooling, ItemPooling) and pooling.mode == "attention"
    trained = {id(p) for g in reg.optimizer_.param_groups for p in g["params"]}
    assert all(id(p) in trained for p in pooling.parameters())
    after = _state(dras.module_)
    assert all(torch.equal(before[k], after[k]) for k in before)
    clf = FineTunedClassifier(dras, **FT).fit(X, y)
    assert clf.predict_proba(X).shape == (12, 2)


def test_drasclr_random_init_keeps_the_ablation(ct_data):
    X, y = ct_data
    flat = DrasCLREncoder(**{**DRAS, "conditioning": False}).fit(X)
    clf = FineTunedClassifier(flat, init="random", **FT).fit(X, y)
    routing = [
        m.routing
        for m in clf.module_.backbone.encoder.modules()
        if isinstance(getattr(m, "routing", None), torch.nn.Linear)
    ]
    assert routing and all(not r.weight.requires_grad for r in routing)
    assert all(float(r.weight.abs().max()) == 0.0 for r in routing)


def test_drasclr_volume_too_small_for_the_landmarks(dras, ct_data):
    X, y = ct_data
    with pytest.raises(ValueError, match="atlas space"):
        FineTunedClassifier(dras, **FT).fit(X[:, :12, :12, :12], y)


# ------------------------------------------------------------------ other


def test_pooling_needs_an_encoder_of_parts(slices_data):
    X, y = slices_data
    flat = X.reshape(len(X), -1)[:, :20]
    ssl = SimCLRPretrainer(backbone="mlp", max_epochs=1, batch_size=6).fit(flat)
    with pytest.raises(ValueError, match="pooling='auto'"):
        FineTunedClassifier(ssl, pooling="mean", **FT).fit(flat, y)
    with pytest.raises(ValueError, match="from scratch"):
        FineTunedClassifier(backbone="mlp", pooling="max", **FT).fit(flat, y)


@pytest.mark.parametrize("which", ["gl", "dras"])
def test_label_efficiency_runs_on_both(which, request):
    source = request.getfixturevalue(which)
    X, y = request.getfixturevalue("slices_data" if which == "gl" else "ct_data")
    table = label_efficiency(
        {"ssl": source, "scratch": None},
        X,
        y,
        n_labels=[8],
        n_repeats=1,
        test_size=4,
        fine_tune_params={k: v for k, v in FT.items() if k != "random_state"},
        random_state=0,
    )
    cells = {(r["method"], r["protocol"]) for r in table}
    assert cells == {
        ("ssl", "linear_probe"),
        ("ssl", "fine_tune"),
        ("scratch", "fine_tune"),
    }
    assert all(np.isfinite(r["score"]) for r in table)
