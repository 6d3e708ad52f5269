"""Tests of the data side of global-local contrastive pretraining: partitions,
the partition batch sampler and slice dataset, and the two views (intensity
transform and random crop-resize)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from sklearn_cl3d.augment import RandomBrightnessContrast, RandomCropResize
from sklearn_cl3d.data import (
    PartitionBatchSampler,
    PartitionSliceDataset,
    VolumeDataset,
    partition_bounds,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------
# partition_bounds


@pytest.mark.parametrize(
    "n_slices, n_partitions, expected",
    [
        (10, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
        (8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
        (7, 2, [(0, 3), (3, 6)]),
        (4, 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (13, 3, [(0, 4), (4, 8), (8, 12)]),
    ],
)
def test_partition_bounds_by_hand(n_slices, n_partitions, expected):
    assert partition_bounds(n_slices, n_partitions) == expected


@pytest.mark.parametrize("n_slices, n_partitions", [(10, 1), (10, 0), (3, 4)])
def test_partition_bounds_errors(n_slices, n_partitions):
    with pytest.raises(ValueError):
        partition_bounds(n_slices, n_partitions)


# --------------------------------------------------------------------------
# PartitionBatchSampler


def test_sampler_layout():
    n_vol, nz, s, m = 6, 10, 4, 3
    sampler = PartitionBatchSampler(n_vol, nz, s, m, 50, generator=_gen(0))
    assert len(sampler) == 50 and sampler.batch_size == 12
    slab = nz // s
    for batch in sampler:
        assert len(batch) == m * s
        idx = np.array(batch)
        vol, z = idx // nz, idx % nz
        rows = np.arange(m * s)
        # volume-major: rows vol*S .. vol*S + S - 1 share a volume
        assert (vol.reshape(m, s) == vol.reshape(m, s)[:, :1]).all()
        assert len(set(vol.reshape(m, s)[:, 0])) == m  # distinct volumes
        # partition(row) = row mod S, slice inside its slab
        assert (z // slab == rows % s).all()
        assert (z < s * slab).all()


def test_sampler_covers_every_slab_slice_and_no_tail():
    sampler = PartitionBatchSampler(3, 10, 4, 3, 200, generator=_gen(1))
    seen = {i for batch in sampler for i in batch}
    expected = {v * 10 + z for v in range(3) for z in range(8)}
    assert seen == expected


def test_sampler_determinism_and_generator():
    a = list(PartitionBatchSampler(5, 9, 3, 2, 4, generator=_gen(3)))
    b = list(PartitionBatchSampler(5, 9, 3, 2, 4, generator=_gen(3)))
    c = list(PartitionBatchSampler(5, 9, 3, 2, 4, generator=_gen(4)))
    assert a == b and a != c


def test_sampler_n_sets():
    sampler = PartitionBatchSampler(4, 8, 4, 2, 20, n_sets=2, generator=_gen(0))
    assert sampler.batch_size == 16
    for batch in sampler:
        idx = np.array(batch)
        assert (((idx % 8) // 2) == np.arange(16) % 4).all()
        for block in idx.reshape(2, 8):
            assert len(set(block // 8)) == 2


@pytest.mark.parametrize(
    "args",
    [
        (3, 10, 4, 4, 1),  # more volumes per batch than volumes
        (3, 10, 1, 2, 1),  # one partition
        (3, 3, 4, 2, 1),  # fewer slices than partitions
        (3, 10, 4, 0, 1),
    ],
)
def test_sampler_errors(args):
    with pytest.raises(ValueError):
        PartitionBatchSampler(*args)


# --------------------------------------------------------------------------
# PartitionSliceDataset


@pytest.fixture
def volumes():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 2, 6, 7, 10)).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_dataset_items_equal_naive_slicing(volumes, axis):
    ds = PartitionSliceDataset(volumes, n_partitions=2, axis=axis)
    nz = volumes.shape[2 + axis % 3]
    assert ds.n_slices == nz and len(ds) == 3 * nz
    slab = nz // 2
    for i in range(len(ds)):
        v, z = divmod(i, nz)
        image, target = ds[i]
        expected = np.take(volumes[v], z, axis=1 + axis % 3)
        assert image.shape == ds.slice_shape == ds.item_shape
        np.testing.assert_array_equal(image.numpy(), expected)
        k = z // slab if z < 2 * slab else -1
        assert target.dtype == torch.int64
        assert target.tolist() == [v, k, z]


def test_dataset_tail_and_bounds():
    ds = PartitionSliceDataset(np.zeros((2, 4, 4, 10)), n_partitions=4)
    assert ds.bounds == [(0, 2), (2, 4), (4, 6), (6, 8)] and ds.slab_size == 2
    assert [ds[z][1][1].item() for z in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, -1, -1]
    with pytest.raises(IndexError):
        ds[20]


def test_dataset_errors():
    with pytest.raises(ValueError, match="cannot be cut"):
        PartitionSliceDataset(np.zeros((2, 8, 8, 3)), n_partitions=4)
    with pytest.raises(ValueError):
        PartitionSliceDataset(np.zeros((2, 8, 8, 8)), n_partitions=1)
    with pytest.raises(ValueError):
        PartitionSliceDataset(np.zeros((2, 8, 8, 8)), axis=3)
    with pytest.raises(ValueError, match="dims=3"):
        PartitionSliceDataset(np.zeros((2, 8, 8, 8)), slab_depth=1)
    with pytest.raises(ValueError, match="slab size"):
        PartitionSliceDataset(np.zeros((2, 8, 8, 8)), dims=3, slab_depth=3)


def test_dataset_with_sampler_and_loader(volumes):
    ds = PartitionSliceDataset(VolumeDataset(volumes), n_partitions=4, axis=-1)
    sampler = PartitionBatchSampler(
        ds.n_volumes, ds.n_slices, 4, 3, 2, generator=_gen(0)
    )
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler)
    for x, target in loader:
        assert x.shape == (12, 2, 6, 7)
        assert (target[:, 1] == torch.arange(12) % 4).all()
        assert len(set(target[:, 0].tolist())) == 3


def test_dataset_slab_mode_whole_slab(volumes):
    ds = PartitionSliceDataset(volumes, n_partitions=3, axis=-1, dims=3)
    assert ds.slab_size == 3 and ds.item_shape == (2, 3, 6, 7)
    for i in range(len(ds)):
        v, z = divmod(i, 10)
        image, target = ds[i]
        k = min(z // 3, 2)
        expected = np.moveaxis(volumes[v, :, :, :, 3 * k : 3 * k + 3], -1, 1)
        np.testing.assert_array_equal(image.numpy(), expected)
        assert target.tolist() == [v, z // 3 if z < 9 else -1, z]


def test_dataset_slab_mode_window_contains_slice(volumes):
    ds = PartitionSliceDataset(volumes, n_partitions=2, axis=0, dims=3, slab_depth=2)
    # axis 0 has 6 slices: slabs [0, 3) and [3, 6)
    assert ds.bounds == [(0, 3), (3, 6)]
    windows = [ds.window(z) for z in range(6)]
    assert windows == [(0, 2), (0, 2), (1, 3), (3, 5), (3, 5), (4, 6)]
    for z, (a, b) in enumerate(windows):
        image, _ = ds[6 + z]
        assert a <= z < b
        np.testing.assert_array_equal(image.numpy(), volumes[1, :, a:b])


def test_dataset_slab_mode_output_depth():
    # linear ramp along the slice axis: resampling keeps it linear in the slab
    ramp = np.broadcast_to(np.arange(16.0, dtype=np.float32), (2, 4, 4, 16)).copy()
    ds = PartitionSliceDataset(ramp, n_partitions=4, dims=3, output_depth=8)
    image, target = ds[5]
    assert image.shape == (1, 8, 4, 4) and target.tolist() == [0, 1, 5]
    expected = F.interpolate(
        torch.arange(4.0, 8.0).view(1, 1, 4), size=8, mode="linear"
    ).view(8)
    torch.testing.assert_close(image[0, :, 0, 0], expected)


# --------------------------------------------------------------------------
# RandomBrightnessContrast


def _hand_intensity(x, delta, factor, clip=(0.0, 1.5)):
    y = x + delta
    mean = y.mean(axis=(-2, -1), keepdims=True)
    y = (y - mean) * factor + mean
    return y if clip is None else np.clip(y, *clip)


def test_intensity_determinism():
    x = torch.rand(4, 2, 8, 8)
    aug = RandomBrightnessContrast()
    assert torch.equal(aug(x, _gen(0)), aug(x, _gen(0)))
    assert not torch.equal(aug(x, _gen(0)), aug(x, _gen(1)))


def test_intensity_per_image_independent():
    x = torch.rand(6, 1, 8, 8)
    params = RandomBrightnessContrast().sample_params(x, _gen(0))
    assert len(set(params["delta"].tolist())) == 6
    assert len(set(params["factor"].tolist())) == 6
    assert (params["delta"].abs() <= 0.3).all()
    assert ((params["factor"] >= 0.7) & (params["factor"] <= 1.3)).all()
    # untied: the factor is not 1 + delta
    assert not torch.allclose(params["factor"], 1 + params["delta"])


def test_intensity_tied_and_batch_shared():
    x = torch.rand(5, 1, 8, 8)
    tied = RandomBrightnessContrast(tied=True).sample_params(x, _gen(0))
    torch.testing.assert_close(tied["factor"], 1 + tied["delta"])
    assert len(set(tied["delta"].tolist())) == 5
    shared = RandomBrightnessContrast(per_image=False).sample_params(x, _gen(0))
    assert len(set(shared["delta"].tolist())) == 1
    assert len(set(shared["factor"].tolist())) == 1


def test_intensity_official_mode_equals_hand_computation():
    x = torch.rand(4, 2, 6, 5, dtype=torch.float64) * 1.4
    aug = RandomBrightnessContrast(per_image=False, tied=True)
    y = aug(x, _gen(7))
    u = float(torch.rand(1, generator=_gen(7)))
    delta = -0.3 + 0.6 * u
    expected = _hand_intensity(x.numpy(), delta, 1 + delta)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_intensity_apply_per_channel_mean_and_clip():
    x = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    x[:, 1] += 2.0  # the second channel has a very different mean
    params = {
        "delta": torch.tensor([0.1, -0.2, 0.0]),
        "factor": torch.tensor([1.2, 0.8, 3.0]),
    }
    for clip in [(0.0, 1.5), None]:
        aug = RandomBrightnessContrast(clip=clip)
        y = aug.apply(x, params).numpy()
        for b in range(3):
            expected = _hand_intensity(
                x[b].numpy(),
                float(params["delta"][b]),
                float(params["factor"][b]),
                clip,
            )
            np.testing.assert_allclose(y[b], expected, rtol=1e-6, atol=1e-6)
    clipped = RandomBrightnessContrast().apply(x, params)
    assert clipped.min() >= 0.0 and clipped.max() == 1.5
    assert RandomBrightnessContrast(clip=None).apply(x, params).max() > 1.5


@pytest.mark.parametrize("shape", [(2, 1, 4, 4, 4), (2, 1, 16)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_intensity_shapes_dtypes(shape, dtype):
    x = torch.rand(shape).to(dtype)
    before = x.clone()
    y = RandomBrightnessContrast()(x, _gen(0))
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.equal(x, before)


def test_intensity_fixed_contrast():
    x = torch.rand(3, 1, 4, 4)
    aug = RandomBrightnessContrast(max_delta=0.0, contrast=1.0, clip=None)
    torch.testing.assert_close(aug(x, _gen(0)), x)
    params = RandomBrightnessContrast(contrast=2.0).sample_params(x, _gen(0))
    assert (params["factor"] == 2.0).all()


def test_intensity_bad_parameters():
    for kwargs in [
        {"max_delta": -1},
        {"contrast": (1.3, 0.7)},
        {"clip": (1.0, 0.0)},
        {"per_image": 1},
        {"tied": "yes"},
    ]:
        with pytest.raises(ValueError):
            RandomBrightnessContrast(**kwargs)


# --------------------------------------------------------------------------
# RandomCropResize


def test_crop_params_official_range():
    x = torch.zeros(500, 1, 192, 192)
    start = RandomCropResize().sample_params(x, _gen(0))["start"]
    assert start.shape == (500, 2)
    assert start.min() == 10 and start.max() == 69
    # rows and columns drawn independently, per image
    assert not torch.equal(start[:, 0], start[:, 1])


def test_crop_matches_skimage_order1_resize():
    # skimage.transform.resize(order=1, mode='reflect') upsampling ==
    # scipy.ndimage.zoom(order=1, mode='mirror', grid_mode=True)
    x = torch.rand(3, 2, 192, 192, dtype=torch.float64)
    crop = RandomCropResize()
    params = crop.sample_params(x, _gen(0))
    y = crop.apply(x, params)
    for b in range(3):
        r, c = params["start"][b].tolist()
        for ch in range(2):
            patch = x[b, ch, r : r + 100, c : c + 100].numpy()
            ref = ndimage.zoom(patch, 1.92, order=1, mode="mirror", grid_mode=True)
            np.testing.assert_allclose(y[b, ch].numpy(), ref, atol=1e-12)


def test_crop_interior_equals_interpolate():
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    crop = RandomCropResize(size=20, low=3, high=40)
    params = crop.sample_params(x, _gen(1))
    y = crop.apply(x, params)
    for b in range(2):
        r, c = params["start"][b].tolist()
        ref = F.interpolate(
            x[b : b + 1, :, r : r + 20, c : c + 20],
            size=(64, 64),
            mode="bilinear",
            align_corners=False,
        )[0]
        torch.testing.assert_close(y[b, :, 2:-2, 2:-2], ref[:, 2:-2, 2:-2])


def test_crop_determinism_and_identity():
    x = torch.rand(4, 1, 192, 192)
    crop = RandomCropResize()
    assert torch.equal(crop(x, _gen(0)), crop(x, _gen(0)))
    same = RandomCropResize(size=192, low=0, high=0)(x, _gen(0))
    torch.testing.assert_close(same, x)


def test_crop_fractions_equal_pixels_at_192():
    x = torch.rand(2, 1, 192, 192)
    frac = RandomCropResize(size=100 / 192, low=10 / 192, high=69 / 192)
    params = RandomCropResize().sample_params(x, _gen(0))
    assert torch.equal(frac.sample_params(x, _gen(0))["start"], params["start"])
    assert torch.equal(frac.apply(x, params), RandomCropResize().apply(x, params))


def test_crop_volume_in_plane_and_dtypes():
    x = torch.rand(2, 1, 3, 96, 96)
    crop = RandomCropResize(size=50, low=5, high=40)
    params = crop.sample_params(x, _gen(0))
    y = crop.apply(x, params)
    for d in range(3):
        torch.testing.assert_close(y[:, :, d], crop.apply(x[:, :, d], params))
    half = crop.apply(x.half(), params)
    assert half.dtype == torch.float16 and half.shape == x.shape


def test_crop_errors():
    with pytest.raises(ValueError, match="does not fit"):
        RandomCropResize()(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError):
        RandomCropResize()(torch.zeros(2, 1, 192))
    for kwargs in [
        {"size": 0},
        {"low": 20, "high": 10},
        {"low": -1},
        {"size": 1.5},
        {"size": True},
    ]:
        with pytest.raises(ValueError):
            RandomCropResize(**kwargs)
