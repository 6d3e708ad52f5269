"""GlobalLocalPretrainer and ContrastiveSegmenter on tiny inputs."""

import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback

from sklearn_cl3d import ContrastiveSegmenter, GlobalLocalPretrainer
from sklearn_cl3d.estimators._globallocal import PercentileScaling
from sklearn_cl3d.losses import DiceCELoss
from sklearn_cl3d.metrics import dice_scores

# 4 encoder levels (sizes must be multiples of 8), decoder block 1 -> 8x8 maps
TINY = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=16,
    projection_dim=8,
    region_dim=8,
    max_epochs=1,
    random_state=0,
)
SEG = dict(channels=(4, 8, 8, 8), slice_size=32, max_epochs=1, random_state=0)


@pytest.fixture(scope="module")
def volumes():
    """6 volumes (32, 32, 8): a bright square that moves with the slice."""
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 0.1, size=(6, 32, 32, 8)).astype(np.float32)
    for z in range(8):
        X[:, 2 * z : 2 * z + 12, 8:20, z] += 1.0
    return X


@pytest.fixture(scope="module")
def masks(volumes):
    return (volumes > 0.5).astype(np.int64) + (volumes > 1.1)


@pytest.fixture(scope="module")
def fitted(volumes):
    return GlobalLocalPretrainer(**TINY).fit(volumes)


class Recorder(Callback):
    """Targets, outputs and stage of every training batch; weight snapshots."""

    def __init__(self):
        self.batches = []
        self.snapshots = {}

    def initialize(self):
        self.batches = []
        self.snapshots = {}
        return self

    def on_epoch_begin(self, net, **kwargs):
        stage = net.history[-1]["stage"]
        if stage not in self.snapshots:
            self.snapshots[stage] = _state(net)

    def on_batch_end(self, net, batch=None, training=False, y_pred=None, **kwargs):
        stage = net.history[-1]["stage"]
        shapes = [
            tuple(t.shape) for t in (y_pred if isinstance(y_pred, tuple) else (y_pred,))
        ]
        self.batches.append((stage, batch[1].clone(), shapes))


def _state(net):
    return {k: v.detach().clone() for k, v in net.module_.state_dict().items()}


def _changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix) and "num_batches" not in k]
    assert keys, prefix
    return {k: not torch.equal(before[k], after[k]) for k in keys}


# ------------------------------------------------------------ stages


def test_fit_runs_global_then_local(fitted, volumes):
    assert [row["stage"] for row in fitted.history] == ["global", "local"]
    assert fitted.stages_ == ("global", "local")
    assert all(np.isfinite(row["train_loss"]) for row in fitted.history)
    assert fitted.network_input_shape_ == (1, 32, 32)
    assert fitted.transform(volumes).shape == (6, 8)


def test_local_stage_freezes_the_encoder_and_trains_decoder_blocks(volumes):
    rec = Recorder()
    gl = GlobalLocalPretrainer(**TINY, callbacks=[("rec", rec)]).fit(volumes)
    start_global, start_local = rec.snapshots["global"], rec.snapshots["local"]
    end = _state(gl)
    # stage 1: the encoder and g1 move, the decoder and g2 do not
    enc = _changed(start_global, start_local, "unet.encoder.")
    assert all(v for k, v in enc.items() if k.endswith("weight"))
    assert not any(_changed(start_global, start_local, "unet.decoder_blocks.").values())
    assert any(_changed(start_global, start_local, "global_head.").values())
    # stage 2: encoder parameters fixed, BN statistics still updated (official)
    params = {k for k, _ in gl.module_.named_parameters()}
    enc = _changed(start_local, end, "unet.encoder.")
    assert not any(v for k, v in enc.items() if k in params)
    assert any(v for k, v in enc.items() if "running_mean" in k)
    assert all(
        v
        for k, v in _changed(start_local, end, "unet.decoder_blocks.0.").items()
        if k in params
    )
    assert not any(_changed(start_local, end, "unet.decoder_blocks.1.").values())
    assert not any(_changed(start_local, end, "global_head.").values())
    assert any(_changed(start_local, end, "local_head.").values())
    # the encoder is trainable again after fit
    assert all(p.requires_grad for p in gl.module_.unet.encoder.parameters())


def test_freeze_encoder_bn_keeps_the_running_statistics(volumes):
    rec = Recorder()
    gl = GlobalLocalPretrainer(
        **TINY, freeze_encoder_bn=True, callbacks=[("rec", rec)]
    ).fit(volumes)
    assert not any(
        _changed(rec.snapshots["local"], _state(gl), "unet.encoder.").values()
    )


def test_local_stage_optimizer_holds_only_decoder_head_and_w(fitted):
    net = fitted.module_
    trained = {id(p) for g in fitted.optimizer_.param_groups for p in g["params"]}
    expected = [
        *net.unet.decoder_blocks[0].parameters(),
        *net.local_head.parameters(),
        fitted.local_criterion_.weight,
    ]
    assert trained == {id(p) for p in expected}
    assert fitted.local_criterion_.weight.shape == (9 * 8, 8)  # 3x3 regions, C=8


# ----------------------------------------------------------- batches


@pytest.mark.parametrize("strategy, n_views", [("GD", 2), ("GD-", 3), ("GR", 2)])
def test_global_batches_are_volume_major(volumes, strategy, n_views):
    rec = Recorder()
    GlobalLocalPretrainer(
        **TINY, strategy=strategy, local=None, callbacks=[("rec", rec)]
    ).fit(volumes)
    assert len(rec.batches) == 2  # steps_per_epoch = 6 volumes // 3
    for stage, target, shapes in rec.batches:
        assert stage == "global"
        volume, partition = target[:, 0], target[:, 1]
        assert len(target) == 12  # m = 12 // 4 = 3 volumes x 4 partitions
        assert torch.equal(partition, torch.arange(12) % 4)
        blocks = volume.view(3, 4)
        assert (blocks == blocks[:, :1]).all()
        assert len(set(blocks[:, 0].tolist())) == 3
        # slice z of a row lies in its partition's slab (8 slices / 4 = 2)
        assert torch.equal(target[:, 2] // 2, partition)
        assert shapes == [(n_views * 12, 8)]


def test_volumes_per_batch_is_capped_by_the_number_of_volumes(volumes):
    rec = Recorder()
    GlobalLocalPretrainer(
        **TINY, batch_size=40, local=None, callbacks=[("rec", rec)]
    ).fit(volumes[:2])
    ((_, target, _),) = rec.batches
    assert len(target) == 8 and sorted(set(target[:, 0].tolist())) == [0, 1]


def test_global_view_zero_is_the_slice_and_local_views_are_pixel_aligned(volumes):
    gl = GlobalLocalPretrainer(**TINY)
    seen = []
    gl.fit(volumes)  # builds the network
    hook = gl.module_.unet.encoder[0].register_forward_pre_hook(
        lambda m, args: seen.append((gl.history[-1]["stage"], args[0].detach().clone()))
    )
    try:
        gl.partial_fit(volumes)
    finally:
        hook.remove()
    glob = [x for stage, x in seen if stage == "global"]
    loc = [x for stage, x in seen if stage == "local"]
    assert glob and loc
    # G^D: rows [slices | augmented]; the augmented rows are cropped
    x = glob[0]
    orig, aug = x.chunk(2)
    assert not torch.allclose(orig, aug)
    for batch in loc:
        v1, v2 = batch.chunk(2)
        assert not torch.allclose(v1, v2)
        for a, b in zip(v1.flatten(1), v2.flatten(1)):
            # both views are increasing functions of the same pixels: ordering
            # the pixels by view 1 (ties by view 2) orders view 2 too
            order = np.lexsort((b.numpy(), a.numpy()))
            assert (np.diff(b.numpy()[order]) >= -1e-6).all()


def test_local_augmentation_is_intensity_only(fitted):
    x = torch.rand(3, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    y = fitted.local_augment_(x, generator=gen)
    for a, b in zip(x.flatten(1), y.flatten(1)):
        order = torch.argsort(a)
        assert (torch.diff(b[order]) >= -1e-6).all()
    # the global views are geometric: the pixel order changes
    z = fitted.augment_(x, generator=gen)
    order = torch.argsort(x[0].flatten())
    assert (torch.diff(z[0].flatten()[order]) < -1e-3).any()


def test_official_intensity_draws_once_per_batch_and_ties_the_draws():
    gl = GlobalLocalPretrainer(**TINY, official_intensity=True)
    gl.fit(np.random.default_rng(1).random((4, 32, 32, 4), dtype="float32"))
    params = gl.local_augment_.sample_params(torch.zeros(5, 1, 4, 4))
    assert torch.equal(params["delta"], params["delta"][:1].expand(5))
    assert torch.allclose(params["factor"], 1 + params["delta"])


def test_local_regions_and_loss_options_reach_the_criteria(volumes):
    gl = GlobalLocalPretrainer(
        **{**TINY, "region_dim": None},
        local="LD",
        n_negatives=4,
        regions="official9",
        criterion__cross_views=False,
        local_criterion__reduction="mean",
    ).fit(volumes)
    assert gl.local_criterion_.weight is None
    assert gl.local_criterion_.strategy == "LD"
    assert gl.local_criterion_.reduction == "mean"
    assert gl.local_criterion_.n_negatives == 4
    assert gl.criterion_.cross_views is False


# ---------------------------------------------------------- skipping


@pytest.mark.parametrize(
    "params, stages",
    [
        ({"strategy": None}, ["local"]),
        ({"local": None}, ["global"]),
        ({"local_epochs": 0}, ["global"]),
        ({"max_epochs": 0, "local_epochs": 2}, ["local", "local"]),
        ({"strategy": None, "local": None}, []),
    ],
)
def test_stages_can_be_skipped(volumes, params, stages):
    gl = GlobalLocalPretrainer(**{**TINY, **params}).fit(volumes[:4])
    assert [row["stage"] for row in gl.history] == stages
    assert gl.stages_ == tuple(dict.fromkeys(stages))
    assert gl.transform(volumes[:2]).shape == (2, 8)


# ------------------------------------------------------------ 3-D mode


@pytest.mark.parametrize("strategy, local", [("GD", "LR"), ("GD-", "LD")])
def test_3d_mode_trains_on_slabs(strategy, local):
    X = np.random.default_rng(2).random((4, 16, 16, 8), dtype="float32")
    rec = Recorder()
    gl = GlobalLocalPretrainer(
        dims=3,
        channels=(2, 4, 4),
        slice_size=16,
        n_decoder_blocks=1,
        hidden_dim=8,
        projection_dim=4,
        region_dim=4,
        strategy=strategy,
        local=local,
        max_epochs=1,
        random_state=0,
        callbacks=[("rec", rec)],
    ).fit(X)
    # slabs of 8 / 4 = 2 slices, resampled to a depth of 4 (multiple of 4)
    assert gl.network_input_shape_ == (1, 4, 16, 16)
    assert [row["stage"] for row in gl.history] == ["global", "local"]
    assert all(np.isfinite(row["train_loss"]) for row in gl.history)
    local_maps = [s for stage, _, s in rec.batches if stage == "local"]
    assert local_maps[0] == [(12, 4, 2, 8, 8)] * 2  # (N, C, d, h, w) per view
    assert gl.transform(X).shape == (4, 4)
    assert gl.set_params(aggregate="none").transform(X).shape == (4, 4, 4)


# ----------------------------------------------------------- transform


def test_transform_aggregation_and_feature_layers(fitted, volumes):
    est = copy.deepcopy(fitted)
    full = est.set_params(aggregate="none").transform(volumes)
    assert full.shape == (6, 8, 8)  # one row per slice along the last axis
    np.testing.assert_allclose(
        est.set_params(aggregate="mean").transform(volumes), full.mean(1), rtol=1e-5
    )
    np.testing.assert_allclose(
        est.set_params(aggregate="max").transform(volumes), full.max(1), rtol=1e-5
    )
    sizes = {"backbone": 8, "flat": 8 * 4 * 4, "hidden": 16, "projection": 8}
    for layer, size in sizes.items():
        est.set_params(feature_layer=layer)
        assert est.transform(volumes).shape == (6, size)
        assert len(est.get_feature_names_out()) == size
    # another in-plane size is resized to the network's
    assert est.transform(volumes[:, :16, :16]).shape == (6, 8)


def test_pipeline_with_a_downstream_classifier(volumes):
    y = np.array([0, 1] * 3)
    pipe = Pipeline(
        [
            ("gl", GlobalLocalPretrainer(**TINY, local=None)),
            ("clf", LogisticRegression()),
        ]
    )
    assert pipe.fit(volumes, y).predict(volumes).shape == (6,)


# ------------------------------------------------------ sklearn glue


def test_clone_pickle_and_params(fitted, volumes):
    params = fitted.get_params()
    assert params["strategy"] == "GD" and params["local"] == "LR"
    assert "backbone" not in params
    assert clone(fitted).get_params()["channels"] == TINY["channels"]
    assert not hasattr(clone(fitted), "module_")
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(volumes), fitted.transform(volumes))


def test_random_state_makes_fits_reproducible(volumes):
    a = GlobalLocalPretrainer(**TINY).fit(volumes)
    b = GlobalLocalPretrainer(**TINY).fit(volumes)
    c = GlobalLocalPretrainer(**{**TINY, "random_state": 1}).fit(volumes)
    np.testing.assert_array_equal(a.transform(volumes), b.transform(volumes))
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert not np.allclose(a.transform(volumes), c.transform(volumes))


def test_default_parameters_follow_the_paper():
    p = GlobalLocalPretrainer().get_params()
    assert (p["strategy"], p["local"], p["n_partitions"], p["batch_size"]) == (
        "GD",
        "LR",
        4,
        12,
    )
    assert (p["lr"], p["temperature"], p["n_decoder_blocks"]) == (1e-3, 0.1, 3)
    assert (p["region_size"], p["regions"], p["n_negatives"], p["region_dim"]) == (
        3,
        "official13",
        None,  # the official value of the local strategy: 5 for L^R, 4 for L^D
        128,
    )
    assert p["slice_size"] == 192 and p["freeze_encoder_bn"] is False


def test_percentile_scaling():
    vol = np.random.default_rng(0).normal(5, 2, size=(2, 6, 6, 6)).astype("float32")
    out, affine = PercentileScaling().apply(vol, "A")
    assert affine == "A" and out.shape == vol.shape
    for c in range(2):
        lo, hi = np.percentile(vol[c], [1, 99])
        np.testing.assert_allclose(out[c], (vol[c] - lo) / (hi - lo), rtol=1e-5)
    assert (PercentileScaling().apply(np.ones((3, 3, 3)))[0] == 0).all()


# ----------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params, X_shape, match",
    [
        ({"n_partitions": 1}, (4, 32, 32, 8), "n_partitions"),
        ({}, (4, 32, 32, 3), "fewer than n_partitions"),
        ({"slice_size": 36}, (4, 32, 32, 8), "not a multiple of 8"),
        ({"slice_size": None}, (4, 30, 30, 8), "not multiples of 8"),
        ({"slice_size": 16}, (4, 16, 16, 8), "too small for the local regions"),
        ({"n_decoder_blocks": 4}, (4, 32, 32, 8), "n_decoder_blocks"),
        ({"train_split": lambda ds, y: (ds, None)}, (4, 32, 32, 8), "train_split"),
    ],
)
def test_bad_input_raises(params, X_shape, match):
    X = np.zeros(X_shape, dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        GlobalLocalPretrainer(**{**TINY, **params}).fit(X)


def test_tabular_input_is_rejected():
    with pytest.raises(ValueError, match="4-D array"):
        GlobalLocalPretrainer(**TINY).fit(np.zeros((8, 5), dtype=np.float32))


def test_transform_before_fit_raises():
    with pytest.raises(NotFittedError):
        GlobalLocalPretrainer(**TINY).transform(np.zeros((1, 32, 32, 8)))


# ------------------------------------------------------------ segmenter


def test_segmenter_fit_predict_score(volumes, masks):
    seg = ContrastiveSegmenter(**{**SEG, "max_epochs": 2}).fit(volumes[:2], masks[:2])
    assert seg.n_classes_ == 3 and list(seg.classes_) == [0, 1, 2]
    proba = seg.predict_proba(volumes[2:])
    assert proba.shape == (4, 3, 32, 32, 8)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    pred = seg.predict(volumes[2:])
    assert pred.shape == (4, 32, 32, 8) and pred.dtype == np.int64
    np.testing.assert_array_equal(pred, proba.argmax(axis=1))
    # score: mean over volumes of the mean foreground Dice, naive version
    naive = []
    for t, p in zip(masks[2:], pred):
        per_class = []
        for c in (1, 2):
            inter = np.logical_and(t == c, p == c).sum()
            total = (t == c).sum() + (p == c).sum()
            per_class.append(1.0 if total == 0 else 2 * inter / total)
        naive.append(np.mean(per_class))
    assert seg.score(volumes[2:], masks[2:]) == pytest.approx(np.mean(naive))
    assert all(np.isfinite(r["train_loss"]) for r in seg.history)


def test_dice_scores_and_loss():
    t = np.array([[[[0, 1, 1, 2]]], [[[0, 0, 0, 0]]]])
    p = np.array([[[[0, 1, 2, 2]]], [[[0, 0, 0, 0]]]])
    np.testing.assert_allclose(dice_scores(t, p, 3), [[2 / 3, 2 / 3], [1, 1]])
    assert dice_scores(t, p, 3, include_background=True).shape == (2, 3)
    target = torch.tensor([[[0, 1], [2, 1]]])
    perfect = 30.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2)
    assert float(DiceCELoss()(perfect.float(), target)) < 1e-4
    assert float(DiceCELoss()(-perfect.float(), target)) > 1.0


def test_segmenter_copies_encoder_and_pretrained_decoder_blocks(volumes, masks):
    gl = GlobalLocalPretrainer(**{**TINY, "n_decoder_blocks": 2}).fit(volumes)
    before = _state(gl)
    seg = ContrastiveSegmenter(pretrained=gl, n_classes=3, max_epochs=0, random_state=0)
    seg.fit(volumes[:2], masks[:2])
    assert seg.n_pretrained_blocks_ == 2
    assert seg.geometry_["channels"] == (4, 8, 8, 8)
    src, dst = gl.module_.unet.state_dict(), seg.module_.state_dict()
    for key, value in src.items():
        same = torch.equal(value, dst[key])
        if key.startswith(("encoder.", "decoder_blocks.0.", "decoder_blocks.1.")):
            assert same, key
        elif key.startswith("decoder_blocks.2.") and value.ndim > 1:
            assert not same, key  # fresh convolutions
    assert seg.module_.seg_head is not None
    # fine-tuning trains everything and leaves the pretrainer untouched
    seg.set_params(max_epochs=1).partial_fit(volumes[:2], masks[:2])
    assert not torch.equal(
        seg.module_.encoder[0][0][0].weight, gl.module_.unet.encoder[0][0][0].weight
    )
    after = _state(gl)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_segmenter_without_local_stage_copies_only_the_encoder(volumes, masks):
    gl = GlobalLocalPretrainer(**TINY, local=None).fit(volumes[:4])
    seg = ContrastiveSegmenter(FrozenEstimator(gl), max_epochs=0).fit(
        volumes[:2], masks[:2]
    )
    assert seg.n_pretrained_blocks_ == 0
    assert torch.equal(
        seg.module_.encoder[0][0][0].weight, gl.module_.unet.encoder[0][0][0].weight
    )


def test_segmenter_3d_and_pretrained_3d():
    rng = np.random.default_rng(3)
    X = rng.random((3, 16, 16, 8), dtype="float32")
    y = (X > 0.5).astype(int)
    gl = GlobalLocalPretrainer(
        dims=3,
        channels=(2, 4, 4),
        slice_size=16,
        n_decoder_blocks=1,
        hidden_dim=8,
        projection_dim=4,
        region_dim=4,
        max_epochs=1,
        random_state=0,
    ).fit(X)
    seg = ContrastiveSegmenter(gl, max_epochs=1, random_state=0).fit(X[:2], y[:2])
    assert seg.geometry_["input_size"] == (8, 16, 16)  # 8 slices, multiple of 4
    assert seg.predict(X).shape == (3, 16, 16, 8)
    assert 0.0 <= seg.score(X, y) <= 1.0


def test_segmenter_clone_pickle_reproducibility_and_grid_search(fitted, volumes, masks):
    seg = ContrastiveSegmenter(fitted, **SEG)
    assert clone(seg).pretrained is fitted
    assert not any(k.startswith("pretrained__") for k in seg.get_params())
    a = clone(seg).fit(volumes[:2], masks[:2])
    b = clone(seg).fit(volumes[:2], masks[:2])
    np.testing.assert_array_equal(
        a.predict_proba(volumes[2:3]), b.predict_proba(volumes[2:3])
    )
    again = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(again.predict(volumes[2:3]), a.predict(volumes[2:3]))
    search = GridSearchCV(clone(seg), {"lr": [1e-3, 1e-2]}, cv=2).fit(
        volumes[:4], masks[:4]
    )
    assert search.best_estimator_.pretrained is fitted
    assert 0.0 <= search.best_score_ <= 1.0


def test_segmenter_bad_input(fitted, volumes, masks):
    seg = ContrastiveSegmenter(**SEG)
    with pytest.raises(ValueError, match="masks must have shape"):
        seg.fit(volumes[:2], masks[:2, :, :, :4])
    with pytest.raises(ValueError, match="requires y"):
        seg.fit(volumes[:2])
    with pytest.raises(ValueError, match="n_classes=2"):
        ContrastiveSegmenter(**SEG, n_classes=2).fit(volumes[:2], masks[:2])
    with pytest.raises(ValueError, match="labels >= 0"):
        seg.fit(volumes[:2], -masks[:2])
    with pytest.raises(ValueError, match="not a multiple of 8"):
        ContrastiveSegmenter(**{**SEG, "slice_size": 20}).fit(volumes[:2], masks[:2])
    with pytest.raises(NotFittedError, match="not fitted"):
        ContrastiveSegmenter(GlobalLocalPretrainer(**TINY)).fit(volumes[:2], masks[:2])
    with pytest.raises(ValueError, match="GlobalLocalPretrainer"):
        ContrastiveSegmenter(LogisticRegression()).fit(volumes[:2], masks[:2])
    with pytest.raises(ValueError, match="channel"):
        ContrastiveSegmenter(fitted).fit(np.stack([volumes[:2]] * 2, 1), masks[:2])
    with pytest.raises(NotFittedError):
        seg.predict(volumes[:1])


def test_segmenter_bn_momentum_parameter():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 32, 32, 8)).astype(np.float32)
    masks = (X > 0.5).astype(np.int64)
    seg = ContrastiveSegmenter(
        None, n_classes=2, channels=(4, 8, 8), slice_size=32, max_epochs=1,
        batch_size=8, bn_momentum=0.1, random_state=0, device="cpu",
    ).fit(X, masks)
    bns = [m for m in seg.module_.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.momentum == 0.1 for m in bns)


def test_set_params_between_partial_fits_reaches_the_losses(volumes):
    # the benchmark's and a user's flow: the global stage alone, then the local
    # stage with other loss parameters through set_params + partial_fit
    def local_run(**params):
        gl = GlobalLocalPretrainer(**{**TINY, "local": None}, verbose=0)
        gl.fit(volumes)
        gl.set_params(max_epochs=0, local_epochs=1, local="LD", **params)
        gl.partial_fit(volumes)
        return gl

    four, five = local_run(n_negatives=4), local_run(n_negatives=5)
    assert four.local_criterion_.strategy == "LD"
    assert (four.local_criterion_.n_negatives, five.local_criterion_.n_negatives) == (
        4,
        5,
    )
    # the loss the local stage trained on changed with n_negatives
    assert four.history[-1]["train_loss"] != five.history[-1]["train_loss"]
    # a change of the losses' parameters keeps the trained W of the local loss
    w = four.local_criterion_.weight.detach().clone()
    four.set_params(temperature=0.5, local_epochs=0)
    four.partial_fit(volumes)
    assert four.local_criterion_.temperature == 0.5
    torch.testing.assert_close(four.local_criterion_.weight, w, rtol=0, atol=0)
    # unchanged parameters: the same loss objects
    crit = four.local_criterion_
    four.partial_fit(volumes)
    assert four.local_criterion_ is crit
