"""The options of the official WSP recipe, one by one: uint8 / 250 input,
sampler balance on raw scores, the official classifier mode, the
best-validation checkpoint and the balanced slice sampler of fine-tuning."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sklearn_cl3d import FineTunedClassifier, FineTunedRegressor, WSPPretrainer
from sklearn_cl3d.augment._scaling import UInt8Scaling, make_normalizer
from sklearn_cl3d.data import SliceDataset
from sklearn_cl3d.estimators._finetune_select import volume_auc
from sklearn_cl3d.nn import ResNet2D, TinyNet2D
from sklearn_cl3d.nn._finetune import official_classifier

TINY = dict(
    backbone=ResNet2D,
    backbone__blocks=(1, 1, 1, 1),
    backbone__widths=(4, 8, 8, 16),
    slice_size=24,
    hidden_dim=16,
    projection_dim=8,
    batch_size=4,
    augmentation="none",
    device="cpu",
    random_state=0,
    verbose=0,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = (rng.random((8, 1, 20, 20, 10)) * 255).astype(np.float32)
    y = np.array([0, 1] * 4)
    return X, y


@pytest.fixture(scope="module")
def wsp(data):
    X, y = data
    return WSPPretrainer(max_epochs=0, **TINY).fit(X, y)


def test_uint8_scaling_matches_the_official_cast():
    x = np.array([0.0, 0.4, 1.99, 127.5, 249.9, 255.0], np.float32)
    ref = x.astype(np.uint8).astype(np.float32) / 250  # in range: the C cast
    out = UInt8Scaling()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-7)
    # out of range: clipped, integer input accepted
    out = UInt8Scaling()(torch.tensor([-5.0, 400.0]))
    assert out.tolist() == pytest.approx([0.0, 1.02])
    assert UInt8Scaling()(torch.tensor([5, 10])).dtype == torch.float32
    with pytest.raises(ValueError, match="scale"):
        UInt8Scaling(scale=0)
    with pytest.raises(ValueError, match="normalize must be one of"):
        make_normalizer("minmax")


def test_wsp_uint8_input_trains_and_is_validated(data):
    X, y = data
    est = WSPPretrainer(normalize="uint8", max_epochs=1, **TINY).fit(X, y)
    assert isinstance(est.normalizer_, UInt8Scaling)
    assert np.isfinite(est.transform(X)).all()
    with pytest.raises(ValueError, match="normalize"):
        WSPPretrainer(normalize="u8", **TINY).fit(X, y)


def test_scores_are_validated(data):
    X, y = data
    est = WSPPretrainer(balance_on="scores", max_epochs=1, **TINY)
    with pytest.raises(ValueError, match="scores has 3"):
        est.fit(X, y, scores=[0, 1, 2])
    with pytest.raises(ValueError, match="scores must be discrete"):
        est.fit(X, y, scores=np.linspace(0, 1, 8))
    est.fit(X, y, scores=[0, 1, 2, 3, 4, 4, 3, 2])
    assert est.balance_labels_ == "scores"
    # uniform draws: nothing is balanced
    est.set_params(balanced=False).fit(X, y, scores=[0, 1, 2, 3, 4, 4, 3, 2])
    assert est.balance_labels_ is None
    rows = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    tab = WSPPretrainer(backbone="mlp", augmentation="none", max_epochs=1, verbose=0)
    with pytest.raises(ValueError, match="scores balance the volume draws"):
        tab.fit(rows, [0, 1] * 3, scores=[0, 1, 2] * 2)


def test_resnet_final_norm():
    net = ResNet2D(blocks=(1,), widths=(4,), final_norm=True).eval()
    assert isinstance(net.last_bn, torch.nn.BatchNorm2d)
    net.last_bn.bias.data.fill_(2.0)  # eval: identity statistics, then + 2
    x = torch.rand(2, 1, 16, 16)
    plain = ResNet2D(blocks=(1,), widths=(4,)).eval()
    plain.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.startswith("last_bn")}
    )
    assert plain.last_bn is None
    expected = plain(x) / math.sqrt(1 + 1e-5) + 2.0
    torch.testing.assert_close(net(x), expected)


def test_official_head_from_scratch_and_random_init(data, wsp):
    X, y = data
    common = dict(max_epochs=0, device="cpu", random_state=0, verbose=0)
    # a TinyNet without a pretrained fc1: a fresh one of the official width
    head, added = official_classifier(TinyNet2D(rep_dim=8), torch.nn.Linear(8, 2))
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert head[0].out_features == 256 and added == ()
    # a ResNet source with init="random": last_bn added too
    rand = FineTunedClassifier(wsp, init="random", head="official", **common)
    rand.fit(X, y)
    assert rand.module_.added == ("last_bn",)
    # other backbones: the linear head
    mlp = FineTunedClassifier(backbone="mlp", head="official", **common)
    mlp.fit(np.random.default_rng(0).normal(size=(6, 3)), [0, 1] * 3)
    assert isinstance(mlp.module_.head, torch.nn.Linear)


def test_volume_auc_against_a_naive_reference():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(12, 2)))
    volumes = np.repeat([3, 0, 2, 1], 3)
    targets = np.repeat([1, 0, 1, 0], 3)
    proba = torch.softmax(logits, 1).numpy()
    means = {v: proba[volumes == v, 1].mean() for v in range(4)}
    truth = {3: 1, 0: 0, 2: 1, 1: 0}
    ref = roc_auc_score([truth[v] for v in range(4)], [means[v] for v in range(4)])
    assert volume_auc(logits, targets, volumes, 2) == pytest.approx(ref)
    # one item per volume, three classes: one-vs-rest macro AUC
    logits3 = torch.from_numpy(rng.normal(size=(9, 3)))
    t3 = np.array([0, 1, 2] * 3)
    ref3 = roc_auc_score(
        t3, torch.softmax(logits3, 1).numpy(), multi_class="ovr", labels=[0, 1, 2]
    )
    assert volume_auc(logits3, t3, None, 3) == pytest.approx(ref3)
    assert math.isnan(volume_auc(logits3, np.zeros(9), None, 3))


def test_keep_best_valid_loss_and_early_stopping(data, wsp):
    X, y = data
    common = dict(device="cpu", random_state=0, verbose=0, validation_fraction=0.5)
    clf = FineTunedClassifier(
        wsp, keep_best="valid_loss", max_epochs=3, lr=1e-2, **common
    ).fit(X, y)
    losses = clf.history[:, "valid_loss"]
    best = clf.history[:, "valid_loss_best"]
    assert best[0] and sum(best) >= 1
    assert losses[int(np.flatnonzero(best)[-1])] == min(losses)
    # early stopping follows the AUC with keep_best="valid_auc"
    clf = FineTunedClassifier(
        wsp, keep_best="valid_auc", early_stopping=1, max_epochs=30, **common
    ).fit(X, y)
    assert "valid_auc" in clf.history[-1] and len(clf.history) < 30
    reg = FineTunedRegressor(wsp, keep_best="valid_auc", max_epochs=1, **common)
    with pytest.raises(ValueError, match="keep_best='valid_auc'"):
        reg.fit(X, y.astype(float))


def test_balanced_slice_sampling_needs_slices():
    X = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    clf = FineTunedClassifier(
        backbone="mlp", slice_sampling="balanced", max_epochs=1, verbose=0
    )
    with pytest.raises(ValueError, match="slice_sampling='balanced'"):
        clf.fit(X, [0, 1] * 3)


def test_balanced_regressor_draws_volumes_uniformly(data, wsp):
    X, y = data
    reg = FineTunedRegressor(
        wsp,
        slice_sampling="balanced",
        steps_per_epoch=3,
        max_epochs=1,
        device="cpu",
        random_state=0,
        verbose=0,
    ).fit(X, np.arange(8.0))
    batches = [b for b in reg.history[-1, "batches"] if "train_loss" in b]
    assert [b["train_batch_size"] for b in batches] == [8, 8, 8]
    ds = SliceDataset(X, labels=np.arange(8.0), fraction=0.7)
    sampler = reg.get_iterator(ds, training=True).batch_sampler
    assert torch.equal(sampler.weights, torch.ones(8, dtype=torch.float64))
