"""FineTunedClassifier / FineTunedRegressor: sklearn checks on the tabular
configuration, and fine-tuning behaviour on tiny pretrained encoders."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch.callbacks import Callback

from sklearn_cl3d import (
    FineTunedClassifier,
    FineTunedRegressor,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
)
from sklearn_cl3d.data import CropOrPad
from sklearn_cl3d.estimators._finetune import backbone_blocks
from sklearn_cl3d.nn import DenseNet3D, ResNet2D

TABULAR = dict(
    backbone="mlp",
    backbone__hidden_dims=(16,),
    normalize=None,
    lr=1e-2,
    max_epochs=20,
    batch_size=32,
    random_state=0,
    verbose=0,
)

EXPECTED_FAILURES = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and "
        "virtual_params_ and stores the backbone__* kwargs (skorch design)"
    ),
}
CLASSIFIER_FAILURES = {
    **EXPECTED_FAILURES,
    "check_methods_subset_invariance": (
        "float32 matrix products differ in the last bit between a batch of one "
        "sample and a full batch (about 1e-7 against the check's atol=1e-7)"
    ),
}


def _expected_failed_checks(estimator):
    if isinstance(estimator, FineTunedClassifier):
        return CLASSIFIER_FAILURES
    return EXPECTED_FAILURES


@parametrize_with_checks(
    [FineTunedClassifier(**TABULAR), FineTunedRegressor(**TABULAR)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# ------------------------------------------------------------------ data

SMALL3D = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=8,
    projection_dim=4,
    batch_size=8,
    max_epochs=1,
    random_state=0,
)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    n = 16
    y = np.array([0, 1] * (n // 2))
    X = rng.normal(size=(n, 1, 10, 10, 10)).astype(np.float32)
    X[y == 1, :, 3:7, 3:7, 3:7] += 2.0
    age = rng.uniform(20, 80, size=n)
    return X, y, age


@pytest.fixture(scope="module")
def pretrained(volumes):
    X, _, age = volumes
    return YAwarePretrainer(**SMALL3D).fit(X, age)


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    return X, y


def _state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# Recorded by the callback below; module level because clones copy callbacks.
STARTS = []


class CheckStartsFromPretrained(Callback):
    """Assert, before the first epoch, that the backbone is the pretrained one."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        expected = _state(net.pretrained.module_.backbone)
        _assert_same(_state(net.module_.backbone), expected)
        STARTS.append(len(X))


# -------------------------------------------------------- starting point


def test_starts_from_pretrained_weights_and_leaves_pretrainer_alone(
    volumes, pretrained
):
    X, y, _ = volumes
    before = _state(pretrained.module_)
    STARTS.clear()
    clf = FineTunedClassifier(
        pretrained,
        max_epochs=2,
        random_state=0,
        callbacks=[("check", CheckStartsFromPretrained())],
    ).fit(X, y)
    assert STARTS == [len(X)]
    _assert_same(_state(pretrained.module_), before)  # never trained in place
    assert clf.module_.backbone is not pretrained.module_.backbone
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.allclose(proba.sum(1), 1)
    assert set(clf.predict(X)) <= {0, 1}
    assert 0 <= clf.score(X, y) <= 1


def test_grid_search_and_cv_start_every_fold_from_pretrained(volumes, pretrained):
    X, y, _ = volumes
    est = FineTunedClassifier(
        pretrained,
        max_epochs=1,
        random_state=0,
        callbacks=[("check", CheckStartsFromPretrained())],
    )
    copy = clone(est)
    assert copy.pretrained is pretrained  # a reference, not an unfitted clone
    assert not any(k.startswith("pretrained__") for k in est.get_params())
    STARTS.clear()
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    grid = GridSearchCV(
        est,
        {"lr": [1e-4, 1e-3], "freeze": ["none", "backbone"]},
        cv=cv,
        error_score="raise",
    ).fit(X, y)
    # 4 candidates x 2 folds, then the refit on all of X
    assert STARTS == [len(X) // 2] * 8 + [len(X)]
    assert grid.best_estimator_.pretrained is pretrained
    STARTS.clear()
    scores = cross_val_score(est, X, y, cv=cv, error_score="raise")
    assert len(scores) == 2 and STARTS == [len(X) // 2] * 2


def test_pretrained_from_a_saved_directory(tmp_path, volumes, pretrained):
    X, y, _ = volumes
    path = pretrained.save_pretrained(tmp_path / "enc")
    a = FineTunedClassifier(pretrained, max_epochs=2, random_state=0).fit(X, y)
    b = FineTunedClassifier(str(path), max_epochs=2, random_state=0).fit(X, y)
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), atol=1e-6)


def test_random_init_is_the_same_architecture(volumes, pretrained):
    X, y, _ = volumes
    ft = FineTunedClassifier(pretrained, max_epochs=0, random_state=0).fit(X, y)
    rnd = FineTunedClassifier(
        pretrained, init="random", max_epochs=0, random_state=0
    ).fit(X, y)
    scratch = FineTunedClassifier(
        backbone="small3d", backbone__channels=(4, 8), max_epochs=0, random_state=0
    ).fit(X, y)
    shapes = {k: v.shape for k, v in ft.module_.state_dict().items()}
    assert {k: v.shape for k, v in rnd.module_.state_dict().items()} == shapes
    assert {k: v.shape for k, v in scratch.module_.state_dict().items()} == shapes
    w = "backbone.features.0.weight"
    assert not torch.equal(rnd.module_.state_dict()[w], ft.module_.state_dict()[w])


def test_unfitted_pretrainer_and_input_mismatch_raise(volumes, pretrained):
    X, y, _ = volumes
    with pytest.raises(NotFittedError, match="not fitted"):
        FineTunedClassifier(YAwarePretrainer(), max_epochs=1).fit(X, y)
    X2 = np.concatenate([X, X], axis=1)
    with pytest.raises(ValueError, match="2 channel"):
        FineTunedClassifier(pretrained, max_epochs=1).fit(X2, y)
    with pytest.raises(ValueError, match="per-sample shape"):
        FineTunedClassifier(pretrained, max_epochs=1).fit(X.reshape(16, -1), y)
    with pytest.raises(ValueError, match="requires y"):
        FineTunedClassifier(pretrained, max_epochs=1).fit(X, None)
    with pytest.raises(ValueError, match="at least 2 classes"):
        FineTunedClassifier(pretrained, max_epochs=1).fit(X, np.zeros(16))


# ------------------------------------------------ freezing and learning rates


def test_freeze_backbone_trains_only_the_head(volumes, pretrained):
    X, y, _ = volumes
    clf = FineTunedClassifier(
        pretrained, freeze="backbone", lr=1e-2, max_epochs=2, random_state=0
    ).fit(X, y)
    # weights and BatchNorm statistics of the backbone unchanged
    _assert_same(_state(clf.module_.backbone), _state(pretrained.module_.backbone))
    head0 = FineTunedClassifier(pretrained, max_epochs=0, random_state=0).fit(X, y)
    assert not torch.equal(clf.module_.head.weight, head0.module_.head.weight)
    clf.module_.train()
    assert all(not m.training for m in clf.module_.backbone.modules())
    assert clf.module_.head.training


def test_freeze_first_blocks(volumes, pretrained):
    X, y, _ = volumes
    blocks = backbone_blocks(pretrained.module_.backbone)
    assert blocks == [["features.0", "features.1"], ["features.4", "features.5"]]
    clf = FineTunedClassifier(
        pretrained, freeze=1, lr=1e-2, max_epochs=1, random_state=0
    ).fit(X, y)
    new, old = _state(clf.module_.backbone), _state(pretrained.module_.backbone)
    for k in new:
        same = torch.equal(new[k], old[k])
        assert same == k.startswith(("features.0.", "features.1.")), k
    with pytest.raises(ValueError, match="2 blocks"):
        FineTunedClassifier(pretrained, freeze=3, max_epochs=1).fit(X, y)


def test_backbone_lr_is_a_separate_param_group(volumes, pretrained):
    X, y, _ = volumes
    clf = FineTunedClassifier(
        pretrained, lr=1e-2, backbone_lr=0.0, max_epochs=1, random_state=0
    ).fit(X, y)
    lrs = sorted(g["lr"] for g in clf.optimizer_.param_groups)
    assert lrs == [0.0, 1e-2]
    # Adam with lr 0 moves nothing: the backbone weights are the pretrained ones
    new, old = _state(clf.module_.backbone), _state(pretrained.module_.backbone)
    for k in new:
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(new[k], old[k], rtol=0, atol=0)


# ------------------------------------------------------------- DenseNet


TINY_DENSENET = dict(
    backbone="densenet",
    backbone__growth_rate=4,
    backbone__block_config=(1, 1),
    backbone__num_init_features=8,
    backbone__bn_size=2,
)


def test_densenet_gets_the_official_classifier_mode(volumes):
    X, y, age = volumes
    ssl = YAwarePretrainer(
        **TINY_DENSENET,
        hidden_dim=8,
        projection_dim=4,
        max_epochs=1,
        batch_size=8,
        random_state=0,
    ).fit(X, age)
    assert not any("norm5" in k for k in ssl.module_.state_dict())
    clf = FineTunedClassifier(ssl, max_epochs=1, random_state=0).fit(X, y)
    keys = set(clf.module_.state_dict())
    assert "backbone.features.norm5.weight" in keys
    assert {"head.weight", "head.bias"} <= keys
    assert clf.module_.added == ("features.norm5",)
    # from scratch: the identical network
    scratch = FineTunedClassifier(**TINY_DENSENET, max_epochs=1, random_state=0)
    assert set(scratch.fit(X, y).module_.state_dict()) == keys
    # without final_norm the encoder is used as is
    plain = FineTunedClassifier(ssl, final_norm=False, max_epochs=0).fit(X, y)
    assert not any("norm5" in k for k in plain.module_.state_dict())
    # norm5 is in the head's param group, the blocks in the backbone's
    frozen = FineTunedClassifier(
        ssl, freeze="backbone", max_epochs=0, random_state=0
    ).fit(X, y)
    trainable = {n for n, p in frozen.module_.named_parameters() if p.requires_grad}
    assert trainable == {
        "backbone.features.norm5.weight",
        "backbone.features.norm5.bias",
        "head.weight",
        "head.bias",
    }
    assert isinstance(frozen.module_.backbone, DenseNet3D)


# ----------------------------------------------- loss, labels, stopping


def test_class_weight(tabular):
    X, y = tabular
    y = np.where(np.arange(len(y)) < 30, "a", "b")
    clf = FineTunedClassifier(
        **{**TABULAR, "max_epochs": 1}, class_weight="balanced"
    ).fit(X, y)
    np.testing.assert_allclose(clf.class_weight_, [40 / 60, 40 / 20])
    torch.testing.assert_close(
        clf.criterion_.weight, torch.tensor([40 / 60, 40 / 20], dtype=torch.float32)
    )
    clf.set_params(class_weight={"b": 3.0}).fit(X, y)
    np.testing.assert_allclose(clf.class_weight_, [1.0, 3.0])
    assert list(clf.classes_) == ["a", "b"]
    with pytest.raises(ValueError, match="not in y"):
        clf.set_params(class_weight={"c": 2.0}).fit(X, y)


def test_early_stopping_holds_out_a_stratified_split(tabular):
    X, y = tabular
    clf = FineTunedClassifier(
        **{**TABULAR, "max_epochs": 60, "lr": 5e-2},
        early_stopping=2,
        validation_fraction=0.25,
    ).fit(X, y)
    history = clf.history
    assert "valid_loss" in history[-1]
    assert len(history) < 60  # stopped early
    # train batches: 30 of 40 samples (batch size 32 -> 30 samples in one batch)
    assert history[0, "batches", 0, "train_batch_size"] == 30
    # the best epoch's weights are restored
    best = int(np.argmin(history[:, "valid_loss"]))
    assert history[best, "valid_loss_best"]


def test_paths_and_preprocessing_with_early_stopping(tmp_path, volumes, pretrained):
    X, y, _ = volumes
    paths = []
    for i, volume in enumerate(X):
        paths.append(str(tmp_path / f"v{i}.npy"))
        np.save(paths[-1], volume[0])
    clf = FineTunedClassifier(
        pretrained,
        preprocessing=[CropOrPad((8, 8, 8))],
        early_stopping=1,
        validation_fraction=0.25,
        max_epochs=3,
        random_state=0,
    ).fit(paths, y)
    assert "valid_loss" in clf.history[-1]
    assert clf.predict_proba(paths).shape == (len(X), 2)
    # arrays go through the same preprocessing
    np.testing.assert_allclose(
        clf.predict_proba(X), clf.predict_proba(paths), rtol=1e-5, atol=1e-6
    )


def test_augmentation_only_in_training(volumes, pretrained):
    X, y, _ = volumes
    clf = FineTunedClassifier(
        pretrained, augmentation="cutout", max_epochs=1, random_state=0
    ).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), clf.predict_proba(X))


def test_regressor_single_and_multi_output(volumes, pretrained):
    X, _, age = volumes
    reg = FineTunedRegressor(pretrained, lr=1e-2, max_epochs=2, random_state=0)
    assert reg.fit(X, age / 50).predict(X).shape == (len(X),)
    Y = np.stack([age / 50, -age / 50], axis=1)
    assert reg.fit(X, Y).predict(X).shape == (len(X), 2)
    assert not hasattr(reg, "predict_proba")


def test_pickle_round_trip(volumes, pretrained):
    X, y, _ = volumes
    clf = FineTunedClassifier(pretrained, max_epochs=1, random_state=0).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_partial_fit_continues(tabular):
    X, y = tabular
    clf = FineTunedClassifier(**{**TABULAR, "max_epochs": 2})
    clf.partial_fit(X[:10], y[:10], classes=[0, 1, 2])
    assert list(clf.classes_) == [0, 1, 2]
    clf.partial_fit(X, y)
    assert len(clf.history) == 4
    with pytest.raises(ValueError, match="labels not in classes_"):
        clf.partial_fit(X, y + 5)


# ------------------------------------------------------------------- WSP


def test_wsp_slice_level_fine_tuning_with_volume_mean(volumes):
    X, y, _ = volumes
    wsp = WSPPretrainer(
        backbone=ResNet2D,
        backbone__blocks=(1,),
        backbone__widths=(8,),
        backbone__dropout=0.0,
        slice_size=16,
        slice_fraction=0.5,
        hidden_dim=8,
        projection_dim=4,
        max_epochs=1,
        batch_size=4,
        random_state=0,
    ).fit(X, y)
    clf = FineTunedClassifier(
        wsp,
        max_epochs=1,
        batch_size=16,
        random_state=0,
        early_stopping=1,
        validation_fraction=0.25,
    ).fit(X, y)
    assert clf.slicing_ == {"axis": -1, "fraction": 0.5, "size": 16}
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    # the volume's probability is the mean of its slices' probabilities
    logits = clf._outputs(X)  # (n_volumes, n_kept, 2)
    assert logits.shape == (len(X), 5, 2)
    expected = torch.softmax(torch.from_numpy(logits), -1).mean(1).numpy()
    np.testing.assert_allclose(proba, expected)
    decision = clf.decision_function(X)
    np.testing.assert_allclose(
        decision, np.log(proba[:, 1]) - np.log(proba[:, 0]), rtol=1e-6
    )
    # validation by volume: 4 held-out volumes x 5 slices, 12 x 5 for training
    batches = clf.history[0, "batches"]
    n_train = sum(b.get("train_batch_size", 0) for b in batches)
    n_valid = sum(b.get("valid_batch_size", 0) for b in batches)
    assert (n_train, n_valid) == (60, 20)
    # the same network from scratch (init="random") also works on slices
    rnd = FineTunedRegressor(wsp, init="random", max_epochs=1).fit(X, y * 1.0)
    assert rnd.predict(X).shape == (len(X),)


def test_simclr_tabular_source(tabular):
    X, y = tabular
    ssl = SimCLRPretrainer(
        backbone="mlp",
        backbone__hidden_dims=(8,),
        max_epochs=1,
        batch_size=16,
        random_state=0,
    ).fit(X)
    clf = FineTunedClassifier(ssl, max_epochs=1, random_state=0).fit(X, y)
    assert clf.predict(X).shape == (len(X),)
    with pytest.raises(ValueError, match="fitted on 6 features"):
        FineTunedClassifier(ssl, max_epochs=1).fit(X[:, :5], y)
