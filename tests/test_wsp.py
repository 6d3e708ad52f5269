"""WSPPretrainer and the slice machinery it trains on (tiny inputs)."""

import pickle

import nibabel as nib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback

from sklearn_cl3d import WSPPretrainer
from sklearn_cl3d.data import (
    BalancedVolumeBatchSampler,
    SliceDataset,
    central_slice_range,
    slice_positions,
)
from sklearn_cl3d.losses import wsp_infonce
from sklearn_cl3d.nn import ResNet2D

TINY = dict(
    backbone=ResNet2D,
    backbone__blocks=(1, 1, 1, 1),
    backbone__widths=(4, 8, 8, 16),
    slice_size=24,
    hidden_dim=16,
    projection_dim=8,
    batch_size=6,
    max_epochs=1,
    augmentation="none",
    random_state=0,
)


@pytest.fixture(scope="module")
def volumes():
    """12 volumes (20, 20, 10); label 1 volumes have a bright blob."""
    rng = np.random.default_rng(0)
    n = 12
    labels = np.array([0, 1] * (n // 2))
    X = rng.normal(size=(n, 20, 20, 10)).astype(np.float32)
    X[labels == 1, 6:14, 6:14, :] += 2.0
    return X, labels


# ------------------------------------------------------------ slices


@pytest.mark.parametrize(
    "n, kept", [(10, 7), (37, 25), (64, 44), (100, 70), (143, 100)]
)
def test_central_slice_range_matches_the_official_counts(n, kept):
    start, stop = central_slice_range(n, 0.7)
    assert stop - start == kept
    # the official arithmetic, written independently
    assert start == int(np.floor(np.floor(0.3 * n) / 2))
    assert stop == int(np.floor(0.7 * n + start))


def test_central_slice_range_edge_cases():
    assert central_slice_range(5, 1.0) == (0, 5)
    assert central_slice_range(2, 0.7) == (0, 1)
    with pytest.raises(ValueError, match="leaves no slice"):
        central_slice_range(1, 0.7)
    with pytest.raises(ValueError, match="fraction"):
        central_slice_range(10, 0.0)
    with pytest.raises(ValueError, match="fraction"):
        central_slice_range(10, 1.5)


def test_slice_positions_are_k_over_n_kept():
    pos = slice_positions(7)
    np.testing.assert_allclose(pos, np.arange(7) / 7, rtol=1e-6)
    assert pos.max() < 1.0 and pos[0] == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_slice_dataset_items_are_the_kept_slices(axis):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3, 2, 9, 11, 13)).astype(np.float32)
    ds = SliceDataset(X, labels=[5, 6, 7], axis=axis)
    ax = axis % 3
    start, stop = central_slice_range(X.shape[2 + ax], 0.7)
    assert ds.n_kept == stop - start and len(ds) == 3 * ds.n_kept
    for v in range(3):
        block = ds.volume_slices(v).numpy()
        for k in range(ds.n_kept):
            image, target = ds[v * ds.n_kept + k]
            expected = np.take(X[v], start + k, axis=1 + ax)
            np.testing.assert_array_equal(image.numpy(), expected)
            np.testing.assert_array_equal(block[k], expected)
            assert target[0].item() == 5 + v
            assert target[1].item() == pytest.approx(k / ds.n_kept)
    assert ds.slice_shape == (2, *[s for a, s in enumerate(X.shape[2:]) if a != ax])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_sampler_draws_distinct_volumes_and_uniform_slices():
    sampler = BalancedVolumeBatchSampler(
        10, 5, batch_size=4, n_batches=300, generator=torch.Generator().manual_seed(0)
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == 300
    ks = []
    for batch in batches:
        vols = [i // 5 for i in batch]
        assert len(set(vols)) == 4
        ks += [i % 5 for i in batch]
    counts = np.bincount(ks, minlength=5) / len(ks)
    np.testing.assert_allclose(counts, 0.2, atol=0.03)


def test_sampler_is_class_balanced_on_the_label():
    labels = [0] * 18 + [1] * 2
    gen = torch.Generator().manual_seed(0)
    balanced = BalancedVolumeBatchSampler(
        20, 3, batch_size=1, n_batches=4000, labels=labels, generator=gen
    )
    frac = np.mean([labels[b[0] // 3] for b in balanced])
    assert frac == pytest.approx(0.5, abs=0.03)
    uniform = BalancedVolumeBatchSampler(
        20, 3, batch_size=1, n_batches=4000, labels=labels, balanced=False,
        generator=gen,
    )
    frac = np.mean([labels[b[0] // 3] for b in uniform])
    assert frac == pytest.approx(0.1, abs=0.02)


def test_sampler_reproducible_and_capped():
    a = list(BalancedVolumeBatchSampler(
        5, 4, 8, 3, generator=torch.Generator().manual_seed(3)))
    b = list(BalancedVolumeBatchSampler(
        5, 4, 8, 3, generator=torch.Generator().manual_seed(3)))
    assert a == b and all(len(batch) == 5 for batch in a)


# ---------------------------------------------------------- estimator


def test_fit_transform_one_row_per_volume(volumes):
    X, labels = volumes
    wsp = WSPPretrainer(**TINY).fit(X, labels)
    F = wsp.transform(X)
    assert F.shape == (len(X), 16) and F.dtype == np.float32
    assert wsp.n_kept_ == 7
    np.testing.assert_allclose(wsp.slice_positions_, np.arange(7) / 7, rtol=1e-6)
    S = wsp.set_params(aggregate="none").transform(X)
    assert S.shape == (len(X), 7, 16)
    np.testing.assert_allclose(S.mean(axis=1), F, rtol=1e-5, atol=1e-6)
    M = wsp.set_params(aggregate="max").transform(X)
    np.testing.assert_allclose(M, S.max(axis=1))
    # a 5-D input with the channel axis is the same data
    np.testing.assert_allclose(wsp.transform(X[:, None]), M)
    # slice features are those of each slice encoded on its own
    wsp.set_params(aggregate="none")
    one = wsp.transform(X[3:4])
    np.testing.assert_allclose(one[0], S[3], rtol=1e-4, atol=1e-5)


class _RecordBatches(Callback):
    def initialize(self):
        self.batches = []
        return self

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            self.batches.append((batch[0].clone(), batch[1].clone()))


def test_batches_hold_one_kept_slice_of_distinct_volumes():
    # volume v, slice s along the last axis holds the constant 100 * s + v
    n, depth = 12, 10
    X = np.zeros((n, 20, 20, depth), np.float32)
    X += np.arange(n)[:, None, None, None] + 100.0 * np.arange(depth)
    labels = np.array([0] * 9 + [1] * 3)
    rec = _RecordBatches()
    wsp = WSPPretrainer(
        **{**TINY, "batch_size": 4, "max_epochs": 2, "steps_per_epoch": 5},
        normalize=None,
        callbacks=[("rec", rec)],
    ).fit(X, labels)
    batches = rec.batches
    assert len(batches) == 10
    assert [len(h["batches"]) for h in wsp.history] == [5, 5]
    start, _ = central_slice_range(depth, 0.7)
    for xb, yb in batches:
        values = xb[:, 0, 0, 0].numpy()
        vols = (values % 100).astype(int)
        slices = (values // 100).astype(int)
        assert len(set(vols.tolist())) == 4
        assert ((slices >= start) & (slices < start + 7)).all()
        np.testing.assert_allclose(yb[:, 0].numpy(), labels[vols] == 1)
        np.testing.assert_allclose(yb[:, 1].numpy(), (slices - start) / 7, rtol=1e-6)


@pytest.mark.parametrize(
    "use_labels, use_positions", [(True, True), (False, True), (True, False),
                                  (False, False)]
)
def test_ablations_give_the_matching_loss(volumes, use_labels, use_positions):
    X, labels = volumes
    wsp = WSPPretrainer(
        **TINY, use_labels=use_labels, use_positions=use_positions
    ).fit(X, labels if use_labels else None)
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    y_true = torch.tensor([[0, 0.1], [1, 0.2], [0, 0.3], [1, 0.1], [0, 0.0],
                           [1, 0.5]])
    expected = wsp_infonce(
        z1, z2,
        y_true[:, 0] if use_labels else None,
        y_true[:, 1] if use_positions else None,
        sigma=0.85, temperature=0.1,
    )
    got = wsp.get_loss((z1, z2), y_true)
    torch.testing.assert_close(got, expected)


def test_string_labels_and_weak_labels_win_over_y(volumes):
    X, labels = volumes
    names = np.where(labels == 1, "F4", "F0")
    a = WSPPretrainer(**TINY).fit(X, names)
    assert list(a.weak_classes_) == ["F0", "F4"]
    b = WSPPretrainer(**TINY).fit(X, y=np.zeros(len(X)), weak_labels=labels)
    c = WSPPretrainer(**TINY).fit(X, labels)
    np.testing.assert_allclose(b.transform(X), c.transform(X), rtol=1e-5)
    np.testing.assert_allclose(a.transform(X), c.transform(X), rtol=1e-5)


def test_random_state_reproducible(volumes):
    X, labels = volumes
    params = {**TINY, "augmentation": "wsp", "max_epochs": 2}
    a = WSPPretrainer(**params).fit(X, labels).transform(X)
    b = WSPPretrainer(**params).fit(X, labels).transform(X)
    c = WSPPretrainer(**{**params, "random_state": 1}).fit(X, labels).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_cosine_schedule_reaches_zero(volumes):
    X, labels = volumes
    wsp = WSPPretrainer(**{**TINY, "max_epochs": 2, "lr": 1e-3}).fit(X, labels)
    assert wsp.optimizer_.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    flat = WSPPretrainer(
        **{**TINY, "max_epochs": 2, "lr": 1e-3}, lr_schedule=None
    ).fit(X, labels)
    assert flat.optimizer_.param_groups[0]["lr"] == 1e-3


def test_other_slice_axis_and_tinynet_at_its_minimum():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 10, 12, 12)).astype(np.float32)
    wsp = WSPPretrainer(
        backbone="tinynet", backbone__rep_dim=16, slice_size=156, slice_axis=0,
        hidden_dim=8, projection_dim=4, batch_size=2, max_epochs=1,
        augmentation="none", random_state=0,
    ).fit(X, [0, 0, 1, 1])
    assert wsp.n_kept_ == 7
    assert wsp.transform(X).shape == (4, 16)


def test_nifti_paths_match_arrays(volumes, tmp_path):
    X, labels = volumes
    paths = []
    for i, vol in enumerate(X[:6]):
        path = tmp_path / f"v{i}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
        paths.append(str(path))
    a = WSPPretrainer(**TINY).fit(paths, labels[:6]).transform(paths)
    b = WSPPretrainer(**TINY).fit(X[:6], labels[:6]).transform(X[:6])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tabular_rows_with_positions():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 5)).astype(np.float32)
    wsp = WSPPretrainer(
        backbone="mlp", hidden_dim=8, projection_dim=4, batch_size=10,
        max_epochs=1, augmentation="none", random_state=0,
    )
    wsp.fit(X, [0, 1] * 10, positions=rng.uniform(size=(20, 2)))
    assert wsp.transform(X[:3]).shape == (3, wsp.module_.feature_dim("backbone"))
    with pytest.raises(ValueError, match="positions contains NaN"):
        wsp.fit(X, [0, 1] * 10, positions=np.full(20, np.nan))


# ------------------------------------------------------ sklearn glue


@pytest.fixture
def routing():
    sklearn.set_config(enable_metadata_routing=True)
    yield
    sklearn.set_config(enable_metadata_routing=False)


def test_grid_search_over_sigma_with_routed_weak_labels(volumes, routing):
    X, labels = volumes
    strong = (X[:, 8:12, 8:12].mean(axis=(1, 2, 3)) > 1.0).astype(int)
    ssl = WSPPretrainer(**TINY).set_fit_request(weak_labels=True)
    pipe = Pipeline([("ssl", ssl), ("clf", LogisticRegression())])
    scores = cross_val_score(pipe, X, strong, params={"weak_labels": labels}, cv=2)
    assert np.isfinite(scores).all()
    gs = GridSearchCV(pipe, {"ssl__sigma": [0.5, float("inf")]}, cv=2)
    gs.fit(X, strong, weak_labels=labels)
    assert gs.best_params_["ssl__sigma"] in (0.5, float("inf"))


def test_clone_and_pickle(volumes):
    X, labels = volumes
    wsp = WSPPretrainer(**TINY, sigma=0.3)
    assert clone(wsp).get_params()["sigma"] == 0.3
    wsp.fit(X, labels)
    again = pickle.loads(pickle.dumps(wsp))
    np.testing.assert_array_equal(again.transform(X), wsp.transform(X))
    assert "_fit_positions" not in wsp.__dict__


def test_bad_input_raises_clear_errors(volumes):
    X, labels = volumes
    with pytest.raises(ValueError, match="discrete"):
        WSPPretrainer(**TINY).fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="NaN"):
        WSPPretrainer(**TINY).fit(X, np.full(len(X), np.nan))
    with pytest.raises(ValueError, match="inconsistent numbers"):
        WSPPretrainer(**TINY).fit(X, labels[:-1])
    with pytest.raises(ValueError, match="requires y"):
        WSPPretrainer(**TINY).fit(X)
    with pytest.raises(ValueError, match="slice_axis=-1"):
        WSPPretrainer(**TINY).fit(X[..., :1], labels)
    with pytest.raises(ValueError, match="slice_size=64"):
        WSPPretrainer(**{**TINY, "backbone": "tinynet", "slice_size": 64}).fit(
            X, labels
        )
    with pytest.raises(ValueError, match="positions"):
        WSPPretrainer(**TINY).fit(X, labels, positions=np.zeros(len(X)))
    with pytest.raises(ValueError, match="aggregate"):
        WSPPretrainer(**TINY, aggregate="median").fit(X, labels)
    with pytest.raises(ValueError, match="slice_fraction"):
        WSPPretrainer(**TINY, slice_fraction=0.0).fit(X, labels)


def test_defaults_are_the_official_configuration():
    params = WSPPretrainer().get_params()
    assert params["sigma"] == 0.85 and params["temperature"] == 0.1
    assert params["lr"] == 1e-5 and params["weight_decay"] == 1e-5
    assert params["max_epochs"] == 40 and params["batch_size"] == 64
    assert params["backbone"] == "tinynet" and params["slice_size"] == 512
    assert (params["hidden_dim"], params["projection_dim"]) == (256, 128)
    assert params["augmentation"] == "wsp" and params["slice_fraction"] == 0.7
    assert params["kernel"] == "rbf" and params["normalization"] == "official"


def test_distance_kernel_reaches_the_criterion(volumes):
    X, labels = volumes
    wsp = WSPPretrainer(**{**TINY, "kernel": "distance"}).fit(X, labels)
    assert wsp.criterion_.kernel == "distance"
    rbf = WSPPretrainer(**TINY).fit(X, labels)
    assert not np.allclose(wsp.transform(X), rbf.transform(X))
