"""The official fine-tuning recipe of ContrastiveSegmenter: iterations, joint
image/label augmentation and the best validation checkpoint."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from sklearn_cl3d import ContrastiveSegmenter
from sklearn_cl3d.augment import SegmentationAugment

TINY = dict(channels=(4, 8, 8), slice_size=32, device="cpu", random_state=0, verbose=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.random((5, 32, 32, 4), dtype="float32")
    masks = (X > 0.6).astype(int) + (X > 0.85).astype(int)
    return X, masks


def _params(b, **kw):
    p = {
        "choice": torch.full((b,), 4),
        "angle": torch.zeros(b, dtype=torch.float64),
        "zoom": torch.ones(b, dtype=torch.float64),
        "flip": torch.zeros(b, dtype=torch.bool),
        "elastic": torch.zeros(b, dtype=torch.bool),
        "displacement": torch.zeros(b, 2, 3, 3, dtype=torch.float64),
    }
    p.update(kw)
    return p


# ------------------------------------------------------ SegmentationAugment


def test_augment_flip_and_quarter_turn_are_exact_for_image_and_labels():
    aug = SegmentationAugment()
    x = torch.rand(2, 1, 16, 16)
    y = torch.randint(0, 3, (2, 16, 16))
    out, lab = aug.apply(x, y, _params(2))
    assert torch.allclose(out, x, atol=1e-5) and torch.equal(lab, y)
    out, lab = aug.apply(x, y, _params(2, flip=torch.tensor([True, False])))
    assert torch.allclose(out[0], x[0].flip(-1), atol=1e-5)
    assert torch.equal(lab[0], y[0].flip(-1)) and torch.equal(lab[1], y[1])
    out, lab = aug.apply(x, y, _params(2, angle=torch.tensor([90.0, 180.0])))
    for i, k in enumerate((1, 2)):
        assert torch.allclose(out[i], torch.rot90(x[i], k, (-2, -1)), atol=1e-5)
        assert torch.equal(lab[i], torch.rot90(y[i], k, (-2, -1)))


def test_augment_zoom_matches_scipy_about_the_centre():
    aug = SegmentationAugment()
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter(rng.random((24, 24)), 2).astype(np.float32)
    z, c = 1.3, (24 - 1) / 2
    ref = ndimage.affine_transform(
        img.astype(np.float64), [1 / z, 1 / z], offset=c - c / z, order=1
    )
    out, _ = aug.apply(
        torch.from_numpy(img)[None, None],
        torch.zeros(1, 24, 24, dtype=torch.long),
        _params(1, zoom=torch.tensor([z], dtype=torch.float64)),
    )
    np.testing.assert_allclose(out[0, 0].numpy(), ref, atol=1e-5)


def test_augment_moves_labels_with_the_image():
    # the image is the label map itself: the bilinear image rounds to the
    # nearest-resampled labels almost everywhere, whatever the transform
    aug = SegmentationAugment()
    y = torch.zeros(8, 32, 32, dtype=torch.long)
    y[:, 8:20, 6:14] = 1
    y[:, 18:28, 16:30] = 2
    x = y[:, None].float()
    gen = torch.Generator().manual_seed(0)
    out, lab = aug(x, y, generator=gen)
    assert lab.dtype == torch.long and set(lab.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(lab, y)  # something moved
    agree = (out[:, 0].round().long() == lab).float().mean()
    assert agree > 0.97


def test_augment_draws_follow_the_official_scheme():
    aug = SegmentationAugment()
    x = torch.rand(20000, 1, 4, 4)
    x[:100] = 0.0  # blank images are never transformed by the first step
    p = aug.sample_params(x, torch.Generator().manual_seed(0))
    assert (p["choice"][:100] == 4).all()
    freq = torch.bincount(p["choice"][100:], minlength=5).float() / 19900
    assert torch.allclose(freq, torch.full((5,), 0.2), atol=0.015)
    rot = p["choice"] == 0
    assert p["angle"][rot].abs().max() <= 15 and p["angle"][rot].std() > 7
    step = p["angle"][p["choice"] == 3]
    assert set((step / 45).round().long().tolist()) == set(range(8))
    assert torch.allclose(step / 45, (step / 45).round())
    zoom = p["zoom"][p["choice"] == 1]
    assert zoom.min() >= 0.95 and zoom.max() <= 1.05
    assert (p["zoom"][p["choice"] != 1] == 1).all()
    flips = p["flip"][p["choice"] == 2].float().mean()
    assert abs(float(flips) - 0.5) < 0.05 and not p["flip"][p["choice"] != 2].any()


def test_augment_elastic_tail():
    aug = SegmentationAugment(blank_threshold=10.0)  # first step: nothing
    starts = set()
    for seed in range(40):
        x = torch.rand(20, 1, 16, 16)
        y = torch.randint(0, 2, (20, 16, 16))
        p = aug.sample_params(x, torch.Generator().manual_seed(seed))
        first = int(p["elastic"].float().argmax())
        assert not p["elastic"][:first].any() and p["elastic"][first:].all()
        starts.add(first)
        out, _ = aug.apply(x, y, p)
        changed = (out - x).flatten(1).abs().amax(1) > 1e-4
        assert torch.equal(changed, p["elastic"])
    assert min(starts) >= 1 and max(starts) <= 18 and len(starts) > 8
    off = SegmentationAugment(elastic_sigma=None, blank_threshold=10.0)
    x = torch.rand(6, 1, 8, 8)
    out, _ = off(x, torch.zeros(6, 8, 8, dtype=torch.long))
    assert torch.allclose(out, x, atol=1e-5)


def test_augment_3d_batches_share_the_plane_transform():
    aug = SegmentationAugment()
    x = torch.rand(2, 1, 3, 16, 16)
    y = torch.randint(0, 2, (2, 3, 16, 16))
    out, lab = aug.apply(x, y, _params(2, flip=torch.tensor([True, True])))
    assert torch.allclose(out, x.flip(-1), atol=1e-5)
    assert torch.equal(lab, y.flip(-1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"step_degrees": 50.0}, "divide 360"),
        ({"elastic_grid": 1}, "elastic_grid"),
        ({"scale": (1.1, 0.9)}, "low <= high"),
    ],
)
def test_augment_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegmentationAugment(**kwargs)


def test_augment_bad_shapes():
    with pytest.raises(ValueError, match="labels must have shape"):
        SegmentationAugment()(torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 9))


# ------------------------------------------------------------ segmenter


def test_n_iterations_runs_that_many_batches_of_batch_size(data):
    X, masks = data
    seg = ContrastiveSegmenter(n_iterations=5, batch_size=30, **TINY).fit(X, masks)
    # 20 slices, yet 5 batches of 30: drawn with replacement, one epoch
    assert len(seg.history) == 1
    assert seg.history[-1, "batches", :, "train_batch_size"] == [30] * 5
    default = ContrastiveSegmenter(max_epochs=2, batch_size=30, **TINY).fit(X, masks)
    assert len(default.history) == 2
    assert default.history[-1, "batches", :, "train_batch_size"] == [20]


def test_best_validation_checkpoint_is_kept(data):
    X, masks = data
    Xv, mv = X[3:], masks[3:]
    kw = dict(n_iterations=8, batch_size=4, lr=0.01, validation_interval=3, **TINY)
    seg = ContrastiveSegmenter(**kw).fit(X[:3], masks[:3], X_val=Xv, y_val=mv)
    steps = [s for s, _ in seg.validation_scores_]
    assert steps == [1, 4, 7, 8]  # after step 1, every 3 steps, and the last
    scores = [d for _, d in seg.validation_scores_]
    assert seg.best_validation_score_ == max(scores)
    assert seg.best_iteration_ == steps[int(np.argmax(scores))]
    # the kept weights are the best ones: their Dice on the validation volumes
    assert seg.score(Xv, mv) == pytest.approx(seg.best_validation_score_, abs=1e-6)
    logged = [
        row["valid_dice"] for row in seg.history[-1, "batches"] if "valid_dice" in row
    ]
    assert logged[: len(steps) - 1] == scores[:-1]
    # here the Dice falls after the first step: the kept weights are not the
    # last ones, which a fit without validation returns
    assert seg.best_iteration_ < 8
    last = ContrastiveSegmenter(**kw).fit(X[:3], masks[:3])
    assert not hasattr(last, "validation_scores_")
    w_best, w_last = seg.module_.state_dict(), last.module_.state_dict()
    assert any(not torch.equal(w_best[k], w_last[k]) for k in w_best)
    assert last.score(Xv, mv) < seg.score(Xv, mv)


def test_validation_fraction_holds_out_volumes(data):
    X, masks = data
    seg = ContrastiveSegmenter(
        max_epochs=1, batch_size=64, validation_fraction=2, **TINY
    ).fit(X, masks)
    # 3 training volumes x 4 slices in one batch; 2 volumes validated
    assert seg.history[-1, "batches", :, "train_batch_size"] == [12]
    assert [s for s, _ in seg.validation_scores_] == [1]
    frac = ContrastiveSegmenter(
        max_epochs=1, batch_size=64, validation_fraction=0.2, **TINY
    ).fit(X, masks)
    assert frac.history[-1, "batches", :, "train_batch_size"] == [16]
    with pytest.raises(ValueError, match="at least one volume must remain"):
        ContrastiveSegmenter(validation_fraction=5, **TINY).fit(X, masks)
    with pytest.raises(ValueError, match="together"):
        ContrastiveSegmenter(max_epochs=1, **TINY).fit(X, masks, X_val=X)


def test_augmentation_transforms_the_training_batches(data):
    X, masks = data
    seen = []

    def record(x, labels, generator=None):
        seen.append((tuple(x.shape), tuple(labels.shape), generator))
        return x.flip(-1), labels.flip(-1)

    kw = dict(max_epochs=1, batch_size=8, **TINY)
    ContrastiveSegmenter(augmentation=record, **kw).fit(X[:, :, :, :2], masks[..., :2])
    assert seen and all(s[0][2:] == s[1][1:] == (32, 32) for s in seen)
    assert all(isinstance(s[2], torch.Generator) for s in seen)
    plain = ContrastiveSegmenter(**kw).fit(X, masks)
    official = ContrastiveSegmenter(augmentation="official", **kw).fit(X, masks)
    assert plain.augment_ is None
    assert isinstance(official.augment_, SegmentationAugment)
    w0, w1 = plain.module_.state_dict(), official.module_.state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    again = ContrastiveSegmenter(augmentation="official", **kw).fit(X, masks)
    w2 = again.module_.state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # reproducible


def test_recipe_parameters_are_validated(data):
    X, masks = data
    for params in (
        {"n_iterations": 0},
        {"augmentation": "kornia"},
        {"validation_fraction": 1.5},
        {"validation_interval": 0},
    ):
        with pytest.raises(ValueError):
            ContrastiveSegmenter(**params, **TINY).fit(X, masks)


def test_3d_segmenter_trains_with_the_official_recipe():
    rng = np.random.default_rng(0)
    X = rng.random((3, 16, 16, 8), dtype="float32")
    masks = (X > 0.5).astype(int)
    seg = ContrastiveSegmenter(
        dims=3,
        channels=(2, 4),
        slice_size=16,
        n_iterations=3,
        batch_size=2,
        augmentation="official",
        validation_fraction=1,
        validation_interval=2,
        device="cpu",
        random_state=0,
        verbose=0,
    ).fit(X, masks)
    assert [s for s, _ in seg.validation_scores_] == [1, 3]
    assert seg.predict(X).shape == X.shape
