"""Behaviour checks of the WSP rows of the official-protocol recipe (used by
test_protocols.py): applying the recipe changes what the estimators do."""

import copy

import numpy as np
import pytest
import torch
from sklearn.base import clone
from skorch.callbacks import Callback

import sklearn_cl3d.estimators._finetune_select as checkpoint_module
import sklearn_cl3d.estimators._wsp as wsp_module
from sklearn_cl3d import FineTunedClassifier, WSPPretrainer
from sklearn_cl3d.data import SliceDataset
from sklearn_cl3d.nn import ResNet2D, TinyNet2D
from sklearn_cl3d.protocols import official_protocol

TINY_RESNET = dict(
    backbone=ResNet2D,
    backbone__blocks=(1, 1, 1, 1),
    backbone__widths=(4, 8, 8, 16),
    slice_size=24,
    hidden_dim=16,
    projection_dim=8,
    augmentation="none",
    device="cpu",
    random_state=0,
    verbose=0,
)


def _built(est, X, y, **fit):
    """``est`` with the recipe's values, built on X without training."""
    return clone(est).set_params(max_epochs=0).fit(X, y, **fit)


def check_wsp_intensity(finetuner=None):
    """uint8 / 250 before the resize against a per-slice z-score."""
    if finetuner is not None:
        return _check_finetuner_intensity(*finetuner)
    rng = np.random.default_rng(0)
    X = (rng.random((4, 1, 24, 24, 10)) * 300 - 20).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    default = _built(WSPPretrainer(**TINY_RESNET), X, y)
    # the tiny network again (the recipe sets TinyNet); normalize stays
    official = official_protocol("wsp").apply(default).set_params(**TINY_RESNET)
    official = _built(official, X, y)
    assert (default.normalize, official.normalize) == ("zscore", "uint8")
    batch = torch.from_numpy(X[:, :, :, :, 5].copy())  # 4 slices (1, 24, 24)
    ref = np.clip(np.trunc(X[:, :, :, :, 5]), 0, 255) / 250  # the official cast
    np.testing.assert_allclose(official._prepare(batch).numpy(), ref, rtol=1e-6)
    z = default._prepare(batch).numpy()
    np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2, 3)), 1, atol=1e-4)
    # the views fill uncovered pixels with 0: black in uint8 / 250, the
    # slice mean after a z-score
    flat = torch.full((1, 1, 24, 24), 100.0)
    flat[..., :12] = 200.0
    from sklearn_cl3d.augment import RandomTranslate

    shift = RandomTranslate(max_fraction=0.5)
    for est, inside in ((official, (0.4, 0.8)), (default, (-1.0, 1.0))):
        x = est._prepare(flat)
        values = np.unique(np.round(x.numpy(), 4))
        np.testing.assert_allclose(values, inside, atol=1e-4)
        moved = shift(x, generator=torch.Generator().manual_seed(3))
        assert moved.eq(0).sum() > 24  # a band of the fill value
    assert official._prepare(flat).min() > 0  # 0 is outside the slice's values


def _check_finetuner_intensity(wsp, X, y):
    common = dict(max_epochs=0, device="cpu", random_state=0, verbose=0)
    default = FineTunedClassifier(wsp, **common).fit(X, y)
    official = official_protocol("wsp").apply(FineTunedClassifier(wsp, **common))
    official = official.set_params(max_epochs=0, keep_best=None).fit(X, y)
    assert official.slicing_["size"] == 24  # 20 px slices are resized
    x = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    x = x * 300 - 20
    ref = torch.nn.functional.interpolate(
        x.clamp(0, 255).trunc() / 250, size=(24, 24), mode="bilinear"
    )
    torch.testing.assert_close(official._prepare(x), ref)
    z = default._prepare(x)
    torch.testing.assert_close(z.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def check_wsp_balance_on_scores(monkeypatch):
    """The sampler's draws follow 1 / count(raw score), not of the label."""
    made = []

    class Spy(wsp_module.BalancedVolumeBatchSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(wsp_module, "BalancedVolumeBatchSampler", Spy)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 1, 24, 24, 4)).astype(np.float32)
    scores = np.array([0, 0, 0, 0, 0, 1, 2, 4])
    weak = (scores >= 3).astype(int)  # binary weak label, as the official map
    base = WSPPretrainer(**TINY_RESNET, batch_size=2, steps_per_epoch=1)
    default = clone(base).set_params(max_epochs=1)
    official = (
        official_protocol("wsp")
        .apply(base)
        .set_params(**TINY_RESNET, batch_size=2, steps_per_epoch=1, max_epochs=1)
    )
    assert official.balance_on == "scores"
    probs = {}
    for name, est in (("default", default), ("official", official)):
        made.clear()
        est.fit(X, weak, scores=scores)
        sampler = made[-1]
        sampler.n_batches = 4000
        sampler.generator = torch.Generator().manual_seed(0)
        # the first volume of a batch is drawn with p proportional to weights
        draws = np.array([b[0] // sampler.n_kept for b in sampler])
        probs[name] = np.bincount(draws, minlength=8) / len(draws)
    # naive references: probability of a volume is 1 / count of its class,
    # normalised over the volumes
    for key, labels in (("official", scores), ("default", weak)):
        _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
        w = 1.0 / counts[inv]
        np.testing.assert_allclose(probs[key], w / w.sum(), atol=0.03)
    assert official.balance_labels_ == "scores"
    assert default.balance_labels_ == "weak_labels"
    # without scores the official setting balances on the weak labels
    official.fit(X, weak)
    assert official.balance_labels_ == "weak_labels"


@pytest.fixture(scope="module")
def wsp_tinynet():
    """A TinyNet WSP encoder (untrained), 4 volumes of 156 px slices."""
    rng = np.random.default_rng(0)
    X = (rng.random((4, 1, 156, 156, 4)) * 255).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    wsp = WSPPretrainer(
        backbone="tinynet",
        backbone__rep_dim=8,
        hidden_dim=6,
        projection_dim=4,
        slice_size=None,
        slice_fraction=1.0,
        batch_size=4,
        max_epochs=0,
        augmentation="none",
        device="cpu",
        random_state=0,
        verbose=0,
    ).fit(X, y)
    return wsp, X, y


def check_wsp_layers_kept(wsp_resnet, wsp_tinynet):
    """head='official': TinyNet fc1 kept, a last_bn on the ResNet feature map."""
    recipe = official_protocol("wsp")
    common = dict(max_epochs=0, device="cpu", random_state=0, verbose=0)
    wsp, X, y = wsp_tinynet
    default = FineTunedClassifier(wsp, **common).fit(X, y)
    official = recipe.apply(FineTunedClassifier(wsp, **common))
    official = official.set_params(max_epochs=0, keep_best=None).fit(X, y)
    fc1 = wsp.module_.head.hidden_representation
    assert isinstance(default.module_.head, torch.nn.Linear)
    head = official.module_.head
    assert isinstance(official.module_.backbone, TinyNet2D)
    assert torch.equal(head[0].weight, fc1.weight)
    assert torch.equal(head[0].bias, fc1.bias) and head[0] is not fc1
    assert head[2].in_features == 6 and head[2].out_features == 2
    x = torch.rand(3, 1, 156, 156)
    official.module_.eval()
    ref = head[2](torch.relu(fc1(official.module_.backbone(x))))
    torch.testing.assert_close(official.module_(x), ref)
    # training the fine-tuner never changes the pretrainer's fc1
    before = fc1.weight.clone()
    recipe.apply(FineTunedClassifier(wsp, **common)).set_params(
        max_epochs=1, keep_best=None, steps_per_epoch=1
    ).fit(X, y)
    assert torch.equal(fc1.weight, before)

    wsp, X, y = wsp_resnet
    default = FineTunedClassifier(wsp, **common).fit(X, y)
    official = recipe.apply(FineTunedClassifier(wsp, **common))
    official = official.set_params(max_epochs=0, keep_best=None).fit(X, y)
    assert getattr(default.module_.backbone, "last_bn", None) is None
    bn = official.module_.backbone.last_bn
    assert isinstance(bn, torch.nn.BatchNorm2d) and official.module_.added == (
        "last_bn",
    )
    # in training mode the BatchNorm standardises the last feature map
    net = official.module_.backbone.train()
    x = torch.rand(4, 1, 24, 24)
    torch.manual_seed(0)  # the same dropout masks in both passes
    feats = net.forward_features(x)
    torch.manual_seed(0)
    ref = torch.nn.functional.batch_norm(feats, None, None, training=True)
    out = net(x)
    torch.testing.assert_close(out, ref.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def training_batches(est):
    return [b for b in est.history[-1, "batches"] if "train_loss" in b]


def check_wsp_finetuning_sampler(wsp_resnet):
    """One slice of each of batch_size volumes per batch, class-balanced,
    156 steps; the default visits every slice once per epoch."""
    wsp, X, y = wsp_resnet
    common = dict(device="cpu", random_state=0, verbose=0, max_epochs=0)
    default = FineTunedClassifier(wsp, **common).fit(X, y)
    official = official_protocol("wsp").apply(FineTunedClassifier(wsp, **common))
    assert (official.slice_sampling, official.steps_per_epoch) == ("balanced", 156)
    official = official.set_params(max_epochs=0, keep_best=None).fit(X, y)
    ds = SliceDataset(X, labels=[0, 0, 0, 1], fraction=0.7)  # 7 slices each
    batches = list(official.get_iterator(ds, training=True).batch_sampler)
    assert len(batches) == 156
    assert all(len({i // 7 for i in b}) == len(b) == 4 for b in batches)
    n_default = [len(xb) for xb, _ in default.get_iterator(ds, training=True)]
    assert n_default == [8, 8, 8, 4]  # every one of the 28 slices
    # class balance: one volume per batch, P(volume) = 1 / count(its class)
    one = clone(official).set_params(batch_size=1, steps_per_epoch=3000)
    one.fit(X, y)
    torch.manual_seed(0)
    draws = [b[0] // 7 for b in one.get_iterator(ds, training=True).batch_sampler]
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [1 / 6, 1 / 6, 1 / 6, 1 / 2], atol=0.03)


def check_wsp_best_checkpoint(wsp_resnet, monkeypatch):
    """keep_best='valid_auc': the weights of the epoch with the best
    volume-level validation AUC are restored at the end of fit."""
    wsp, X, y = wsp_resnet
    common = dict(device="cpu", random_state=0, verbose=0)
    official = official_protocol("wsp").apply(FineTunedClassifier(wsp, **common))
    assert official.keep_best == "valid_auc"
    est = official.set_params(
        max_epochs=4, steps_per_epoch=2, validation_fraction=0.5, lr=1e-2
    )
    # validation AUC that peaks at epoch 2 whatever the network does
    scores = iter([0.5, 0.9, 0.6, 0.7])
    monkeypatch.setattr(checkpoint_module, "volume_auc", lambda *a, **k: next(scores))
    states = []

    class Record(Callback):
        def on_epoch_end(self, net, **kwargs):
            states.append(copy.deepcopy(net.module_.state_dict()))

    est.set_params(callbacks=[("record", Record())]).fit(X, y)
    assert est.history[:, "valid_auc"] == [0.5, 0.9, 0.6, 0.7]
    assert est.history[:, "valid_auc_best"] == [True, True, False, False]
    final = est.module_.state_dict()
    for key, value in final.items():
        torch.testing.assert_close(value, states[1][key])
    assert any(
        not torch.equal(states[3][k], final[k])
        for k in final
        if final[k].is_floating_point()
    )
    # the default keeps the last epoch and holds nothing out
    default = FineTunedClassifier(wsp, max_epochs=1, **common).fit(X, y)
    assert (
        "valid_auc" not in default.history[-1]
        and "valid_loss" not in default.history[-1]
    )
