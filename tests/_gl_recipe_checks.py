"""Behaviour checks of the global-local rows of the official recipe (used by
tests/test_protocols.py): applying the recipe changes what the estimators
do, not only their parameters."""

import numpy as np
import torch
from sklearn.base import clone
from skorch.dataset import Dataset

from sklearn_cl3d import ContrastiveSegmenter, GlobalLocalPretrainer
from sklearn_cl3d.augment import SegmentationAugment
from sklearn_cl3d.protocols import official_protocol

GL_TINY = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=16,
    projection_dim=8,
    region_dim=8,
    device="cpu",
    random_state=0,
    verbose=0,
)
SEG_TINY = dict(
    channels=(4, 8, 8), slice_size=32, device="cpu", random_state=0, verbose=0
)


def _built(est, X):
    """The estimator built on X without training."""
    return (
        clone(est)
        .set_params(
            max_epochs=0, local_epochs=0, n_iterations=None, local_iterations=None
        )
        .fit(X)
    )


def _batches(est, X, stage, steps=40):
    """Training batches (flat slice indices) of ``stage``."""
    built = _built(est, X).set_params(steps_per_epoch=steps)
    built.__dict__["_stage"] = stage
    ds = built._partition_dataset(built._as_dataset(X, None, reset=False))
    return built, [list(b) for b in built.get_iterator(ds, training=True).batch_sampler]


def check_gl_gd_pairing(X):
    """Two volume sets per G^D batch and the chain pairs in the loss."""
    n_slices = X.shape[-1]
    default = GlobalLocalPretrainer(**GL_TINY)
    official = official_protocol("globallocal").apply(default)
    d, d_batches = _batches(default, X, "global")
    o, o_batches = _batches(official, X, "global")
    assert {len(b) for b in d_batches} == {12}
    assert {len(b) for b in o_batches} == {24}  # two sets of 3 volumes x 4
    for b in o_batches:
        vols = [i // n_slices for i in b]
        assert len(set(vols[:12])) == len(set(vols[12:])) == 3
    assert (d.criterion_.pairing, o.criterion_.pairing) == ("all", "official")
    # the same embeddings and labels give another loss
    torch.manual_seed(0)
    z = torch.randn(48, 8)
    chain = [2 * v + s for s in (0, 1) for v in range(3) for _ in range(4)] * 2
    part, view = [0, 1, 2, 3] * 12, [0] * 24 + [1] * 24
    assert not torch.isclose(
        d.criterion_(z, chain, part, view), o.criterion_(z, chain, part, view)
    )


def check_gl_uniform_draws(X):
    """L^R batches (the recipe's local strategy) drawn from all slices."""
    n_slices = X.shape[-1]
    default = GlobalLocalPretrainer(**GL_TINY)
    official = official_protocol("globallocal").apply(default)
    assert official.local == "LR"
    _, d_batches = _batches(default, X, "local")
    _, o_batches = _batches(official, X, "local")
    pattern = [0, 1, 2, 3] * 3
    slab = n_slices // 4
    assert all([(i % n_slices) // slab for i in b] == pattern for b in d_batches)
    assert any([(i % n_slices) // slab for i in b] != pattern for b in o_batches)
    counts = np.bincount(np.concatenate(o_batches), minlength=X.shape[0] * n_slices)
    assert (counts > 0).mean() > 0.9  # spread over all slices


def check_segmenter_iterations():
    """10,001 batches of 20 items drawn with replacement, one epoch."""
    items = Dataset(np.zeros((7, 1, 8, 8), np.float32), np.zeros((7, 8, 8), int))
    default = ContrastiveSegmenter(**SEG_TINY)
    official = official_protocol("globallocal").apply(default)
    assert official.n_iterations == 10001
    loader = official.get_iterator(items, training=True)
    assert len(loader) == 10001
    assert {len(b) for b in list(loader.batch_sampler)[:50]} == {20}
    assert len(default.get_iterator(items, training=True)) == 1  # 7 items


def _seg_data():
    rng = np.random.default_rng(0)
    X = rng.random((5, 32, 32, 4), dtype="float32")
    return X, (X > 0.6).astype(int)


def check_segmenter_augmentation():
    X, masks = _seg_data()
    default = ContrastiveSegmenter(n_iterations=2, **SEG_TINY)
    official = official_protocol("globallocal").apply(default)
    official.set_params(n_iterations=2, validation_fraction=None)
    default.set_params(batch_size=20, ce_weight=0.0, lr=1e-3, precision="fp32")
    a, b = default.fit(X, masks), official.fit(X, masks)
    assert a.augment_ is None and isinstance(b.augment_, SegmentationAugment)
    wa, wb = a.module_.state_dict(), b.module_.state_dict()
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def check_segmenter_checkpoint():
    X, masks = _seg_data()
    default = ContrastiveSegmenter(n_iterations=3, **SEG_TINY).fit(X, masks)
    official = official_protocol("globallocal").apply(default)
    official.set_params(n_iterations=3, augmentation=None).fit(X, masks)
    assert not hasattr(default, "validation_scores_")
    # 2 of the 5 volumes held out: validated after steps 1 and 3 (the last)
    assert [s for s, _ in official.validation_scores_] == [1, 3]
    assert official.best_iteration_ in (1, 3)
