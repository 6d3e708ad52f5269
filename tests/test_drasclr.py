"""DrasCLREncoder, its network, patch extraction and training machinery
(tiny patches and cohorts)."""

import pickle

import nibabel as nib
import numpy as np
import pytest
import sklearn
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from skorch.callbacks import Callback

from sklearn_cl3d import DrasCLREncoder
from sklearn_cl3d.data import (
    LandmarkPatchDataset,
    LocationMajorBatchSampler,
    extract_patches,
    landmark_locations,
    map_corners,
)
from sklearn_cl3d.datasets import make_lung_cohort
from sklearn_cl3d.estimators._drasclr import (
    _RandomAffine3D,
    _RandomContrast,
    lung_like_mask,
)
from sklearn_cl3d.estimators._drasclr_data import _locations
from sklearn_cl3d.nn import DrasCLRMoCo, DrasCLRNet

LANDMARKS = [[0, 0, 0], [0, 8, 8], [8, 8, 0]]
TINY = dict(
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


def _volumes(n, shape=(16, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(-600, 300, size=(n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    X = _volumes(4)
    return DrasCLREncoder(**TINY).fit(X), X


# ------------------------------------------------------------- references


def naive_encode(net, x, loc, training):
    """Per-sample official loop: gates, mixed kernel and one conv per sample."""
    for block in net.layers:
        conv, bn = block.conv, block.bn
        outs = []
        for b in range(x.shape[0]):
            a, c = conv.routing.weight, conv.routing.bias
            gates = [torch.sigmoid((a[e] * loc[b]).sum() + c[e]) for e in range(len(a))]
            kernel = sum(g * w for g, w in zip(gates, conv.weight))
            outs.append(
                F.conv3d(x[b : b + 1], kernel, conv.bias, conv.stride, conv.padding)
            )
        y = torch.cat(outs)
        if training:
            y = F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            y = F.batch_norm(
                y,
                bn.running_mean,
                bn.running_var,
                bn.weight,
                bn.bias,
                False,
                0.0,
                bn.eps,
            )
        x = F.elu(y)
    return x.flatten(1)


def naive_patches(volume, corners, size, fill):
    """Pad by the patch size on every side, then plain slicing."""
    vol = volume if volume.ndim == 4 else volume[None]
    pad = np.pad(
        vol, [(0, 0)] + [(size, size)] * 3, mode="constant", constant_values=fill
    )
    out = []
    for c0, c1, c2 in corners:
        a, b, c = c0 + size, c1 + size, c2 + size
        out.append(pad[:, a : a + size, b : b + size, c : c + size])
    return np.stack(out)


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_network_equals_naive_per_sample_reference(training, shared):
    torch.manual_seed(0)
    net = DrasCLRNet(in_channels=2, n_experts=3, projection_dim=8)
    with torch.no_grad():  # non-trivial BN statistics and affine
        for block in net.layers:
            block.bn.running_mean.uniform_(-0.1, 0.1)
            block.bn.running_var.uniform_(0.5, 1.5)
            block.bn.weight.uniform_(0.5, 1.5)
    net.train(training)
    x = torch.randn(3, 2, 8, 8, 8)
    loc = torch.rand(1, 3).repeat(3, 1) if shared else torch.rand(3, 3) * 2 - 1
    with torch.no_grad():
        h = net.encode(x, loc)
        expected = naive_encode(net, x, loc, training)
    torch.testing.assert_close(h, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        hh, z = net(x, loc, return_representation=True)
    assert z.shape == (3, 8) and hh.shape == (3, 128)


def test_network_official_layout_and_parameter_count():
    net = DrasCLRNet()
    assert sum(p.numel() for p in net.parameters()) == 8_262_272
    assert len(net.layers) == 13
    strides = [block.conv.stride for block in net.layers]
    assert strides == [1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 2]
    assert [block.conv.out_channels for block in net.layers][-3:] == [64, 128, 128]
    assert isinstance(net.layers[0].act, torch.nn.ELU)


def test_network_pools_patches_larger_than_32():
    net = DrasCLRNet(n_experts=1).eval()
    with torch.no_grad():
        assert net.encode(torch.zeros(1, 1, 40, 40, 40), torch.zeros(1, 3)).shape == (
            1,
            128,
        )
    with pytest.raises(ValueError, match="channel"):
        net.encode(torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="locations"):
        net.encode(torch.zeros(2, 1, 8, 8, 8), torch.zeros(1, 3))


# ------------------------------------------------------------- momentum, queue


def test_momentum_update_math():
    torch.manual_seed(0)
    moco = DrasCLRMoCo(2, n_experts=2, projection_dim=8, queue_size=4)
    for pk, pq in zip(moco.key.parameters(), moco.query.parameters()):
        assert torch.equal(pk, pq) and not pk.requires_grad
    with torch.no_grad():
        for p in moco.query.parameters():
            p.add_(torch.randn_like(p))
    q0 = [p.clone() for p in moco.query.parameters()]
    k0 = [p.clone() for p in moco.key.parameters()]
    moco.momentum_update(0.9)
    for pk, a, b in zip(moco.key.parameters(), k0, q0):
        torch.testing.assert_close(pk, 0.9 * a + 0.1 * b)


def test_momentum_update_in_a_training_step():
    X = _volumes(4)
    enc = DrasCLREncoder(**{**TINY, "momentum": 0.99, "lr_schedule": None}).fit(X)
    ds = LandmarkPatchDataset(
        np.random.default_rng(0).uniform(0, 1264, (3, 4, 1, 8, 8, 8)).astype("f4"),
        enc.neighbors_,
    )
    batch = next(iter(enc.get_iterator(ds, training=True)))
    q0 = [p.detach().clone() for p in enc.module_.query.parameters()]
    k0 = [p.detach().clone() for p in enc.module_.key.parameters()]
    enc.train_step(batch)
    changed = False
    for pk, pq, a, b in zip(
        enc.module_.key.parameters(), enc.module_.query.parameters(), k0, q0
    ):
        torch.testing.assert_close(pk, 0.99 * a + 0.01 * b)
        changed |= not torch.equal(pq, b)
    assert changed  # the query took an SGD step after the key update


def test_queue_fifo_pointer_per_landmark_and_wrap():
    torch.manual_seed(0)
    moco = DrasCLRMoCo(2, n_experts=1, projection_dim=4, queue_size=5)
    assert torch.allclose(moco.queue.norm(dim=1), torch.ones(2, 5))
    before0 = moco.queue[0].clone()
    keys = torch.randn(3, 4)
    unit = F.normalize(keys, dim=1)
    moco.enqueue(keys, 1)
    assert moco.queue_ptr.tolist() == [0, 3]
    torch.testing.assert_close(moco.queue[1][:, :3], unit.T)
    more = torch.randn(4, 4)
    moco.enqueue(more, 1)  # columns 3, 4, then wraps to 0, 1
    assert moco.queue_ptr.tolist() == [0, 2]
    torch.testing.assert_close(
        moco.queue[1][:, [3, 4, 0, 1]], F.normalize(more, dim=1).T
    )
    torch.testing.assert_close(moco.queue[1][:, 2], unit[2])  # oldest survivor
    assert torch.equal(moco.queue[0], before0)  # other landmark untouched
    many = torch.randn(7, 4)  # more than the queue: the last 5 are kept
    moco.enqueue(many, 0)
    assert moco.queue_ptr.tolist() == [2, 2]
    torch.testing.assert_close(
        moco.queue[0][:, [2, 3, 4, 0, 1]], F.normalize(many[2:], dim=1).T
    )


def test_queue_memory_error_states_the_size():
    with pytest.raises(MemoryError, match=r"128 x 1099511627776 x 1 x 4 = \d+ bytes"):
        DrasCLRMoCo(1, n_experts=1, queue_size=2**40)
    enc = DrasCLREncoder(**{**TINY, "queue_size": 2**40})
    with pytest.raises(MemoryError, match="reduce queue_size"):
        enc.fit(_volumes(2))


# ---------------------------------------------------------------- patches


@pytest.mark.parametrize("channels", [None, 2])
def test_extract_patches_equals_naive_slicing(channels):
    rng = np.random.default_rng(0)
    shape = (13, 11, 12) if channels is None else (channels, 13, 11, 12)
    vol = rng.normal(size=shape).astype(np.float32)
    corners = np.array([[0, 0, 0], [8, 6, 7], [3, 2, 5], [5, 0, 1]])
    got = extract_patches(vol, corners, 5)
    np.testing.assert_array_equal(got, naive_patches(vol, corners, 5, 0))
    assert got.dtype == np.float32 and got.shape[:2] == (4, channels or 1)


def test_extract_patches_with_affine_equals_naive_slicing():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(12, 14, 10)).astype(np.float32)
    corners = np.array([[0, 0, 0], [4, 6, 2], [6, 10, 6], [9, 1, 3]])
    angle = 0.3
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine[:3, :3] *= 1.1
    affine[:3, 3] = [1.4, -2.5, 1.5]
    mapped = np.floor(corners @ affine[:3, :3].T + affine[:3, 3] + 0.5).astype(int)
    np.testing.assert_array_equal(map_corners(corners, affine), mapped)
    got = extract_patches(
        vol, corners, 4, affine=affine, outside="fill", fill_value=-7.0
    )
    np.testing.assert_array_equal(got, naive_patches(vol, mapped, 4, -7.0))
    assert (got == -7.0).any()  # some windows cross the border
    with pytest.raises(ValueError, match="partly outside"):
        extract_patches(vol, corners, 4, affine=affine)


def test_map_corners_rounds_half_up():
    got = map_corners([[1, 1, 1]], np.diag([0.5, -0.5, 1.0, 1.0]))
    np.testing.assert_array_equal(got, [[1, 0, 1]])


def test_extract_patches_errors():
    vol = np.zeros((10, 10, 10))
    with pytest.raises(ValueError, match="smaller than a patch"):
        extract_patches(vol, [[0, 0, 0]], 11)
    with pytest.raises(ValueError, match="landmark 1.*partly outside"):
        extract_patches(vol, [[0, 0, 0], [0, 5, 0]], 6)
    with pytest.raises(ValueError, match="entirely outside"):
        extract_patches(vol, [[20, 0, 0]], 4, outside="fill")
    with pytest.raises(ValueError, match="non-negative"):
        extract_patches(vol, [[-1, 0, 0]], 4)


# --------------------------------------------------------- batches, dataset


def test_location_major_sampler():
    sampler = LocationMajorBatchSampler(3, 7, batch_size=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6  # 7 = 3 + 4 (a single one joins)
    for t, batch in enumerate(batches):
        landmarks = {i // 7 for i in batch}
        assert landmarks == {t // 2}
    per_landmark = [sorted(i % 7 for b in batches[2 * j : 2 * j + 2] for i in b)
                    for j in range(3)]  # fmt: skip
    assert per_landmark == [list(range(7))] * 3
    assert [len(b) for b in LocationMajorBatchSampler(1, 5, 2)] == [2, 3]
    assert [len(b) for b in LocationMajorBatchSampler(1, 3, 8)] == [3]
    with pytest.raises(ValueError):
        LocationMajorBatchSampler(2, 1, 2)


def test_dataset_items_hold_same_subject_neighbours():
    bank = np.arange(3 * 4, dtype=np.float32).reshape(3, 4, 1, 1, 1, 1)
    ds = LandmarkPatchDataset(bank, [[1, 2], [0, 2], [1, 0]])
    x, _ = ds[2 * 4 + 3]
    assert float(x["patches"]) == bank[2, 3].item()
    assert x["neighbors"].flatten().tolist() == [bank[1, 3].item(), bank[0, 3].item()]


class _RecordLandmarks(Callback):
    def initialize(self):
        self.seen = []
        return self

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            self.seen.append(batch[0]["landmark"].tolist())


def test_training_batches_are_location_major():
    record = _RecordLandmarks()
    enc = DrasCLREncoder(**TINY, callbacks=[("rec", record)]).fit(_volumes(5))
    batches = dict(enc.callbacks_)["rec"].seen
    assert [b[0] for b in batches] == [0, 0, 1, 1, 2, 2]
    assert all(len(set(b)) == 1 for b in batches)
    assert [len(b) for b in batches] == [2, 3] * 3
    # per-term losses are in the history
    assert len(enc.history[-1, "batches", :, "neighbor_loss"]) == 6


def test_infer_rejects_a_mixed_landmark_batch(fitted):
    enc, _ = fitted
    bank = np.zeros((3, 2, 1, 8, 8, 8), np.float32)
    ds = LandmarkPatchDataset(bank, enc.neighbors_)
    batch = torch.utils.data.default_collate([ds[0], ds[3]])
    with pytest.raises(ValueError, match="location-major"):
        enc.infer(batch[0])


# ------------------------------------------------------------ augmentation


def test_augmentations_identity_limits_and_shared_draws():
    x = torch.rand(3, 2, 6, 6, 6)
    x[:, 1] = x[:, 0]
    ident = _RandomAffine3D(rotate=0.0, scale=0.0, translate=0.0)
    torch.testing.assert_close(ident(x), x, rtol=0, atol=1e-5)
    out = _RandomAffine3D()(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out[:, 0], out[:, 1])
    assert not torch.allclose(out, x)
    torch.testing.assert_close(_RandomContrast(gamma=(1.0, 1.0))(x), x)
    con = _RandomContrast()(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(con[:, 0], con[:, 1])


# ---------------------------------------------------------------- landmarks


def test_lung_like_mask_keeps_enclosed_air_only():
    vol = np.full((20, 20, 20), -1000.0)  # outside air
    vol[3:17, 3:17, :] = 40.0  # body, open at both ends of axis 2
    vol[6:14, 6:14, :] = -850.0  # a "lung" cut by the field of view
    mask = lung_like_mask(vol)
    assert mask[6:14, 6:14, :].all()
    assert mask.sum() == 8 * 8 * 20


def test_landmarks_derived_from_the_data_and_locations():
    X = np.full((3, 24, 24, 24), -1000.0, np.float32)
    X[:, 2:22, 2:22, 2:22] = 40.0
    X[:, 5:19, 5:19, 5:19] = -850.0
    enc = DrasCLREncoder(**{**TINY, "landmarks": None, "landmark_stride": 6})
    enc.fit(X)
    assert enc.atlas_shape_ == (24, 24, 24)
    assert len(enc.landmarks_) == enc.n_landmarks_ > 3
    np.testing.assert_allclose(enc.locations_, landmark_locations(enc.landmarks_))
    np.testing.assert_array_equal(
        _locations(np.array([[0, 0, 4], [0, 2, 8]]))[:, 0], -1
    )
    with pytest.warns(UserWarning, match="no lung-like region"):
        enc.fit(np.abs(_volumes(2)))  # soft tissue and bone only


def test_atlas_mask_parameter():
    mask = np.zeros((16, 16, 16), bool)
    mask[:9, :9, :9] = True
    enc = DrasCLREncoder(**{**TINY, "landmarks": None, "landmark_stride": 4})
    enc.set_params(atlas_mask=mask, landmark_min_fraction=0.5).fit(_volumes(2))
    # windows at 0 or 4 per axis; more than half inside: one axis at 4 at most
    expected = [[0, 0, 0], [0, 0, 4], [0, 4, 0], [4, 0, 0]]
    np.testing.assert_array_equal(enc.landmarks_, expected)
    assert enc.atlas_shape_ == (16, 16, 16)


# ------------------------------------------------------------ transform


def test_transform_shapes_and_pooling(fitted):
    enc, X = fitted
    H = enc.transform_patches(X)
    assert H.shape == (4, 3, 128) and H.dtype == np.float32
    P = enc.transform(X)
    np.testing.assert_allclose(P, H.mean(axis=1), rtol=1e-6)
    none = pickle.loads(pickle.dumps(enc)).set_params(pooling="none")
    flat = none.transform(X)
    assert flat.shape == (4, 3 * 128)
    np.testing.assert_allclose(flat.reshape(4, 3, 128).mean(axis=1), P, rtol=1e-6)
    assert len(none.get_feature_names_out()) == 3 * 128
    none.set_params(pooling="max")
    np.testing.assert_allclose(none.transform(X), H.max(axis=1))
    # each patch is encoded with its own location, independently of the others
    patch = (np.clip(X[1, 8:16, 8:16, :8], -1024, 240) + 1024) / 632 - 1
    net = pickle.loads(pickle.dumps(enc.module_)).eval()
    with torch.no_grad():
        sub = net.encode(
            torch.as_tensor(patch)[None, None], torch.as_tensor(enc.locations_[2:3])
        )
    np.testing.assert_allclose(H[1, 2], sub.numpy()[0], rtol=1e-4, atol=1e-5)


def test_random_state_reproducibility_clone_and_pickle(fitted):
    enc, X = fitted
    ref = enc.transform(X)
    again = clone(enc).fit(X)
    np.testing.assert_array_equal(again.transform(X), ref)
    other = clone(enc).set_params(random_state=1).fit(X)
    assert not np.allclose(other.transform(X), ref)
    restored = pickle.loads(pickle.dumps(enc))
    np.testing.assert_array_equal(restored.transform(X), ref)
    assert restored.get_params()["landmarks"] == LANDMARKS


def test_partial_fit_continues_with_the_same_landmarks(fitted):
    enc, X = fitted
    enc = pickle.loads(pickle.dumps(enc))
    ptr = enc.module_.queue_ptr.clone()
    enc.partial_fit(X[:3])
    assert len(enc.history) == 2
    assert not torch.equal(enc.module_.queue_ptr, ptr)
    np.testing.assert_array_equal(enc.landmarks_, LANDMARKS)


def test_nifti_paths_and_ragged_volumes_with_affines(tmp_path, fitted):
    enc, X = fitted
    paths = []
    for i, v in enumerate(X):
        path = tmp_path / f"s{i}.nii.gz"
        nib.save(nib.Nifti1Image(v, np.eye(4)), path)
        paths.append(str(path))
    np.testing.assert_allclose(
        enc.transform_patches(paths), enc.transform_patches(X), rtol=1e-6
    )
    # the same subjects shifted inside larger volumes of different shapes
    shifts = [(1, 0, 2), (3, 1, 0), (0, 2, 2), (2, 2, 1)]
    ragged, affines = [], []
    for v, s in zip(X, shifts):
        big = np.full(np.add(v.shape, (s[0] + 1, s[1] + 2, s[2] + 3)), -1000.0, "f4")
        big[s[0] : s[0] + 16, s[1] : s[1] + 16, s[2] : s[2] + 16] = v
        ragged.append(big)
        a = np.eye(4)
        a[:3, 3] = s
        affines.append(a)
    np.testing.assert_allclose(
        enc.transform_patches(ragged, affines=affines),
        enc.transform_patches(X),
        rtol=1e-5,
        atol=1e-6,
    )
    fit_aff = DrasCLREncoder(**TINY).fit(ragged, affines=affines)
    assert fit_aff.transform(ragged, affines=affines).shape == (4, 128)
    np.testing.assert_array_equal(fit_aff.transform(X), enc.transform(X))


@pytest.mark.filterwarnings("ignore:Singular matrix:UserWarning")
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_pipeline_cross_val_score_and_grid_search():
    ct = make_lung_cohort(6, shape=(20, 20, 20), spacing=16.0, random_state=0)
    params = dict(batch_size=3, landmarks=[[0, 0, 0], [8, 8, 8]], n_neighbors=1)
    enc = DrasCLREncoder(**{**TINY, **params})
    pipe = make_pipeline(enc, Ridge())
    scores = cross_val_score(pipe, ct.volumes, ct.fev1, cv=KFold(2))
    assert scores.shape == (2,) and np.isfinite(scores).all()
    grid = GridSearchCV(
        pipe, {"drasclrencoder__pooling": ["mean", "max"]}, cv=KFold(2)
    ).fit(ct.volumes, ct.fev1)
    assert grid.best_params_["drasclrencoder__pooling"] in ("mean", "max")


@pytest.mark.filterwarnings("ignore:Singular matrix:UserWarning")
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_affines_routed_through_a_pipeline(fitted):
    enc, X = fitted
    shifted = np.full((4, 18, 17, 16), -1000.0, np.float32)
    shifted[:, 2:, 1:, :] = X
    affines = np.tile(np.eye(4), (4, 1, 1))
    affines[:, :3, 3] = [2, 1, 0]
    y = np.arange(4.0)
    with sklearn.config_context(enable_metadata_routing=True):
        routed = clone(enc).set_fit_request(affines=True)
        routed.set_transform_request(affines=True)
        pipe = make_pipeline(routed, Ridge()).fit(shifted, y, affines=affines)
        pred = pipe.predict(shifted, affines=affines)
    plain = make_pipeline(clone(enc), Ridge()).fit(X, y)
    np.testing.assert_allclose(pred, plain.predict(X), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "params, X, match",
    [
        ({"patch_size": 20}, _volumes(2), "smaller than a patch"),
        ({"landmarks": [[0, 0, 0], [9, 0, 0]], "n_neighbors": 1}, _volumes(2),
         "landmark 1"),
        ({"n_neighbors": 3}, _volumes(2), "n_neighbors=3 must be smaller"),
        ({"hu_window": (240, -1024)}, _volumes(2), "hu_window"),
        ({"batch_size": 1}, _volumes(2), "batch_size"),
        ({}, _volumes(1), "at least 2 volumes"),
        ({"train_split": lambda ds, y: (ds, ds)}, _volumes(2), "train_split=None"),
        ({}, _volumes(2).reshape(2, -1), "4-D array"),
        ({"landmarks": [[0, 0]]}, _volumes(2), r"shape \(n_landmarks, 3\)"),
        ({"landmarks": None, "atlas_mask": np.ones((6, 8, 8))}, _volumes(2),
         "cannot place landmarks"),
        ({"landmarks": None, "atlas_mask": np.ones((8, 8, 8))}, _volumes(2),
         "no landmark"),
        ({"landmarks": None, "atlas_mask": np.ones((12, 12, 12))}, _volumes(2),
         "n_neighbors=2 must be smaller"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_clear_errors(params, X, match):
    with pytest.raises(ValueError, match=match):
        DrasCLREncoder(**{**TINY, **params}).fit(X)


def test_bad_inputs_at_transform_and_with_affines(fitted):
    enc, X = fitted
    with pytest.raises(ValueError, match="smaller than a patch"):
        enc.transform(_volumes(2, shape=(6, 16, 16)))
    with pytest.raises(ValueError, match="partly outside"):
        enc.transform(_volumes(2, shape=(12, 16, 16)))
    with pytest.raises(ValueError, match="channel"):
        enc.transform(np.zeros((2, 2, 16, 16, 16), np.float32))
    with pytest.raises(ValueError, match="one .* matrix per volume"):
        enc.transform(X, affines=[np.eye(4)])
    with pytest.raises(ValueError, match="atlas_mask= .* or landmarks="):
        DrasCLREncoder(**{**TINY, "landmarks": None}).fit(X, affines=[np.eye(4)] * 4)


def test_conditioning_false_gives_location_independent_gates():
    X = _volumes(4)
    enc = DrasCLREncoder(**{**TINY, "max_epochs": 2}, conditioning=False).fit(X)
    routings = [
        m.routing for m in enc.module_.modules()
        if isinstance(getattr(m, "routing", None), torch.nn.Linear)
    ]
    assert routings and all((r.weight == 0).all() for r in routings)
    on = DrasCLREncoder(**{**TINY, "max_epochs": 2}).fit(X)
    assert any(
        (m.routing.weight != 0).any() for m in on.module_.modules()
        if isinstance(getattr(m, "routing", None), torch.nn.Linear)
    )
