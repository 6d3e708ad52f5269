"""Tests of the batched tensor augmentations in ``sklearn_cl3d.augment``."""

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from sklearn_cl3d.augment import (
    AUGMENTATION_PRESETS,
    Compose,
    Cutout,
    Flip,
    GaussianBlur,
    GaussianNoise,
    RandomApply,
    RandomAreaCrop,
    RandomBrightnessContrast,
    RandomResizedCrop,
    RandomRotate,
    ZScore,
    make_augmentation,
)

# (B, C, *spatial) for 1, 2 and 3 spatial dimensions
SHAPES = {1: (3, 1, 12), 2: (3, 2, 9, 10), 3: (3, 1, 7, 8, 9)}


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def _rand(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _add_one(x, generator=None):
    return x + 1


def _double(x, generator=None):
    return 2 * x


def _no_generator(x):
    return x * 3


RANDOM_OPS = {
    "flip": lambda: Flip(),
    "flip_spatial": lambda: Flip(include_channel_axis=False),
    "blur": lambda: GaussianBlur(),
    "noise": lambda: GaussianNoise(),
    "cutout": lambda: Cutout(),
    "crop": lambda: RandomResizedCrop(),
    "random_apply": lambda: RandomApply(GaussianNoise(), p=0.5),
    "all": lambda: make_augmentation("all"),
}
ALL_OPS = {"zscore": lambda: ZScore(), **RANDOM_OPS}


# --------------------------------------------------------------------------
# generic contract: shape, dtype, device, no in-place change, randomness
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL_OPS))
@pytest.mark.parametrize("n_spatial", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_and_no_inplace(name, n_spatial, dtype):
    x = _rand(SHAPES[n_spatial], dtype=dtype)
    x_before = x.clone()
    y = ALL_OPS[name]()(x, generator=_gen(1))
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert y.device == x.device
    assert torch.isfinite(y).all()
    assert torch.equal(x, x_before)
    assert y.data_ptr() != x.data_ptr()
    y.add_(1.0)  # writing into the output must not touch the input
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("name", list(ALL_OPS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(name, dtype):
    x32 = _rand((4, 1, 6, 7, 8))
    x = x32.to(dtype)
    y = ALL_OPS[name]()(x, generator=_gen(3))
    assert y.dtype == dtype
    assert y.shape == x.shape
    assert torch.isfinite(y.float()).all()
    # the same draws in float32 give the same result up to half rounding
    y32 = ALL_OPS[name]()(x.float(), generator=_gen(3))
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(y.float(), y32, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", [Flip(), Cutout()], ids=repr)
def test_flip_and_cutout_are_exact_in_half_precision(op, dtype):
    x = _rand((5, 1, 6, 7, 8)).to(dtype)
    y = op(x, generator=_gen(4))
    expected = op(x.float(), generator=_gen(4)).to(dtype)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("name", list(RANDOM_OPS))
def test_seeded_generator_reproducible_and_seed_dependent(name):
    x = _rand((6, 1, 8, 9, 10))
    op = RANDOM_OPS[name]()
    y1 = op(x, generator=_gen(7))
    y2 = op(x, generator=_gen(7))
    y3 = op(x, generator=_gen(8))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


@pytest.mark.parametrize("name", ["flip", "blur", "noise", "cutout", "crop"])
def test_parameters_are_drawn_per_sample(name):
    # identical samples must come out different when parameters are per-sample
    x = _rand((1, 1, 8, 9, 10)).expand(8, -1, -1, -1, -1).contiguous()
    y = RANDOM_OPS[name]()(x, generator=_gen(0))
    n_distinct = len({tuple(s.flatten().tolist()) for s in y})
    assert n_distinct > 1


def test_global_rng_used_without_generator():
    x = _rand((4, 1, 8, 8, 8))
    op = make_augmentation("all")
    torch.manual_seed(123)
    y1 = op(x)
    torch.manual_seed(123)
    y2 = op(x)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("name", list(ALL_OPS))
def test_empty_batch(name):
    x = torch.zeros(0, 1, 4, 4, 4)
    y = ALL_OPS[name]()(x, generator=_gen(0))
    assert y.shape == x.shape


def test_invalid_inputs():
    with pytest.raises(ValueError, match="spatial"):
        Flip()(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="spatial"):
        Cutout()(torch.zeros(1, 1, 2, 2, 2, 2))
    with pytest.raises(TypeError, match="floating"):
        GaussianNoise()(torch.zeros(2, 1, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        ZScore()(np.zeros((2, 1, 4)))


# --------------------------------------------------------------------------
# ZScore
# --------------------------------------------------------------------------
def test_zscore_statistics_and_reference():
    x = 3.0 + 5.0 * _rand((4, 2, 5, 6, 7), dtype=torch.float64)
    x[1] *= 10.0
    y = ZScore()(x)
    flat = y.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(
        flat.std(1, correction=0), torch.ones(4, dtype=torch.float64)
    )
    for b in range(4):
        a = x[b].numpy()
        expected = (a - a.mean()) / (a.std() + 1e-8)
        np.testing.assert_allclose(y[b].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_zscore_constant_sample_is_finite():
    x = torch.full((2, 1, 4, 4), 7.0)
    y = ZScore()(x)
    assert torch.equal(y, torch.zeros_like(x))


# --------------------------------------------------------------------------
# GaussianBlur
# --------------------------------------------------------------------------
def _scipy_blur(sample, s, truncate=4.0):
    sigmas = (0.0,) + (s,) * (sample.ndim - 1)
    return ndimage.gaussian_filter(
        sample, sigma=sigmas, mode="reflect", truncate=truncate
    )


@pytest.mark.parametrize(
    "shape",
    [(4, 2, 9, 10, 5), (4, 1, 11, 6), (4, 3, 13)],
    ids=["3d", "2d", "1d"],
)
def test_blur_matches_scipy_per_sample_sigma(shape):
    # sigma 2.2 has radius 9 > 5: the reflection must repeat like scipy's
    sigmas = torch.tensor([0.3, 1.0, 2.2, 0.0], dtype=torch.float32)
    op = GaussianBlur()
    x = _rand(shape, dtype=torch.float64)
    y = op.apply(x, {"sigma": sigmas})
    y32 = op.apply(x.float(), {"sigma": sigmas})
    for b in range(shape[0]):
        expected = _scipy_blur(x[b].numpy(), float(sigmas[b]))
        np.testing.assert_allclose(y[b].numpy(), expected, rtol=0, atol=1e-10)
        np.testing.assert_allclose(y32[b].numpy(), expected, rtol=0, atol=1e-5)
    assert torch.equal(y[3], x[3])  # sigma 0 is the identity, as in scipy


def test_blur_random_sigma_matches_scipy():
    op = GaussianBlur(sigma=(0.1, 1.5), truncate=3.0)
    x = _rand((5, 1, 8, 9, 10))
    y = op(x, generator=_gen(5))
    sigma = op.sample_params(x, generator=_gen(5))["sigma"]
    assert ((sigma >= 0.1) & (sigma <= 1.5)).all()
    assert len(set(sigma.tolist())) == 5
    for b in range(5):
        expected = _scipy_blur(x[b].numpy(), float(sigma[b]), truncate=3.0)
        np.testing.assert_allclose(y[b].numpy(), expected, rtol=0, atol=1e-5)


def test_blur_fixed_sigma():
    x = _rand((3, 1, 10, 10))
    y = GaussianBlur(sigma=0.8)(x, generator=_gen(0))
    for b in range(3):
        np.testing.assert_allclose(
            y[b].numpy(), _scipy_blur(x[b].numpy(), 0.8), rtol=0, atol=1e-5
        )


# --------------------------------------------------------------------------
# GaussianNoise
# --------------------------------------------------------------------------
def test_noise_level_per_sample():
    x = torch.ones(6, 1, 16, 16, 16)
    op = GaussianNoise(std=(0.1, 1.0))
    y = op(x, generator=_gen(2))
    params = op.sample_params(x, generator=_gen(2))
    std = params["std"]
    assert ((std >= 0.1) & (std <= 1.0)).all()
    torch.testing.assert_close(y, x + std.view(-1, 1, 1, 1, 1) * params["noise"])
    residual = (y - x).flatten(1)
    torch.testing.assert_close(residual.std(1), std, rtol=0.08, atol=0.0)
    assert residual.mean(1).abs().max() < 0.1


# --------------------------------------------------------------------------
# Cutout
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n_spatial", [1, 2, 3])
def test_cutout_box_size_and_position(n_spatial):
    shape = {1: (20, 2, 13), 2: (20, 2, 9, 11), 3: (20, 2, 9, 10, 11)}[n_spatial]
    x = 5.0 + torch.rand(shape, generator=_gen(0))  # no zeros anywhere
    op = Cutout()
    y = op(x, generator=_gen(1))
    start = op.sample_params(x, generator=_gen(1))["start"]
    spatial = shape[2:]
    box = [math.ceil(n / 4) for n in spatial]
    zero = y == 0
    for b in range(shape[0]):
        assert int(zero[b].sum()) == shape[1] * math.prod(box)
        # the same box in every channel, exactly at the drawn position
        expected = torch.zeros(spatial, dtype=torch.bool)
        region = tuple(
            slice(int(s), int(s) + n) for s, n in zip(start[b].tolist(), box)
        )
        expected[region] = True
        for c in range(shape[1]):
            assert torch.equal(zero[b, c], expected)
    assert torch.equal(y[~zero], x[~zero])
    assert (start >= 0).all()
    assert (start <= torch.tensor(spatial) - torch.tensor(box)).all()


def test_cutout_positions_cover_all_valid_starts():
    x = torch.ones(400, 1, 8, 8)
    start = Cutout(fraction=0.25).sample_params(x, generator=_gen(0))["start"]
    for axis in range(2):  # box of 2 in a size 8: starts 0..6, all reachable
        assert set(start[:, axis].tolist()) == set(range(7))


def test_cutout_value_and_fraction():
    x = torch.ones(3, 1, 10, 10)
    y = Cutout(fraction=0.5, value=-2.0)(x, generator=_gen(0))
    assert torch.equal((y == -2.0).flatten(1).sum(1), torch.full((3,), 25))
    assert torch.equal(y[y != -2.0], torch.ones(100 * 3 - 75))


def test_large_noise_fields_do_not_depend_on_the_thread_count():
    from sklearn_cl3d.augment import _core

    shape = (2, 1, 64, 128, 128)  # above the parallel threshold
    assert math.prod(shape) >= _core._PARALLEL_NORMAL_MIN
    threads = torch.get_num_threads()
    fields = []
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            like = torch.zeros(1).expand(*shape)  # shape only, no memory
            params = GaussianNoise().sample_params(like, generator=_gen(4))
            fields.append(params["noise"])
    finally:
        torch.set_num_threads(threads)
    assert fields[0].shape == shape
    assert torch.equal(fields[0], fields[1]) and torch.equal(fields[0], fields[2])
    z = fields[0].flatten().double()
    assert abs(z.mean().item()) < 5e-3 and abs(z.std().item() - 1) < 5e-3
    # the independently seeded halves are different streams
    half = z.numel() // 2
    corr = torch.corrcoef(torch.stack([z[:half], z[half : 2 * half]]))[0, 1]
    assert abs(corr.item()) < 5e-3
    # excess kurtosis of a normal is 0
    assert abs(((z - z.mean()) ** 4).mean().item() / z.var().item() ** 2 - 3) < 0.05
    other = GaussianNoise().sample_params(fields[0], generator=_gen(5))["noise"]
    assert not torch.equal(other, fields[0])


def test_small_noise_fields_are_plain_randn():
    x = _rand((2, 1, 8, 8, 8))
    noise = GaussianNoise(std=0.5).sample_params(x, generator=_gen(1))["noise"]
    # a fixed std draws nothing before the field
    assert torch.equal(noise, torch.randn(x.shape, generator=_gen(1)))


# --------------------------------------------------------------------------
# RandomResizedCrop
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,mode",
    [
        ((4, 2, 9, 10, 11), "trilinear"),
        ((4, 2, 9, 10), "bilinear"),
        ((4, 2, 12), "linear"),
    ],
    ids=["3d", "2d", "1d"],
)
@pytest.mark.parametrize("fraction", [0.75, 0.5])
def test_crop_matches_naive_reference(shape, mode, fraction):
    x = _rand(shape)
    op = RandomResizedCrop(fraction=fraction)
    y = op(x, generator=_gen(9))
    start = op.sample_params(x, generator=_gen(9))["start"]
    spatial = shape[2:]
    box = [math.ceil(fraction * n) for n in spatial]
    assert len({tuple(s) for s in start.tolist()}) > 1
    for b in range(shape[0]):
        region = tuple(
            slice(int(s), int(s) + n) for s, n in zip(start[b].tolist(), box)
        )
        crop = x[b : b + 1, :][(slice(None), slice(None), *region)]
        assert crop.shape[2:] == tuple(box)
        expected = F.interpolate(crop, size=spatial, mode=mode, align_corners=False)
        # resized one axis at a time: equal to float32 rounding
        torch.testing.assert_close(y[b : b + 1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape,size,mode",
    [
        ((2, 3, 7, 9, 11), (12, 5, 11), "trilinear"),  # up, down, unchanged
        ((3, 1, 64, 60, 50), (70, 80, 90), "trilinear"),
        ((2, 2, 9, 13), (20, 6), "bilinear"),
    ],
)
def test_separable_resize_equals_interpolate(shape, size, mode):
    from sklearn_cl3d.augment._spatial import _separable_resize

    x = _rand(shape, dtype=torch.float64)
    expected = F.interpolate(x, size=size, mode=mode, align_corners=False)
    torch.testing.assert_close(
        _separable_resize(x, size), expected, rtol=0, atol=1e-12
    )


def test_crop_full_fraction_is_identity():
    x = _rand((3, 1, 6, 7, 8))
    y = RandomResizedCrop(fraction=1.0)(x, generator=_gen(0))
    torch.testing.assert_close(y, x)


# --------------------------------------------------------------------------
# Flip
# --------------------------------------------------------------------------
def _flip_counts(op, n_channels, n=4000):
    """Frequency of each outcome: "none" (unchanged) or the flipped sample dim."""
    sample = torch.arange(n_channels * 24, dtype=torch.float32).view(
        1, n_channels, 2, 3, 4
    )
    x = sample.expand(n, -1, -1, -1, -1).contiguous()
    y = op(x, generator=_gen(11))
    # with one channel, a channel flip (dim 0) gives back the sample: "none"
    first = 0 if n_channels > 1 else 1
    candidates = {"none": sample[0]}
    for dim in range(first, 4):
        candidates[dim] = sample[0].flip(dim)
    counts = dict.fromkeys(candidates, 0)
    for out in y:
        matches = [k for k, v in candidates.items() if torch.equal(out, v)]
        assert len(matches) == 1
        counts[matches[0]] += 1
    return {k: v / n for k, v in counts.items()}


def test_flip_statistics_with_channel_axis_single_channel():
    # official: axis drawn among all 4 axes, the channel flip is a no-op
    freq = _flip_counts(Flip(), n_channels=1)
    for outcome in ("none", 1, 2, 3):
        assert abs(freq[outcome] - 0.25) < 0.035, freq


def test_flip_statistics_spatial_only():
    freq = _flip_counts(Flip(include_channel_axis=False), n_channels=1)
    assert freq["none"] == 0
    for dim in (1, 2, 3):
        assert abs(freq[dim] - 1 / 3) < 0.035, freq


def test_flip_statistics_with_channel_axis_several_channels():
    freq = _flip_counts(Flip(), n_channels=3, n=2000)
    assert freq["none"] == 0
    for dim in (0, 1, 2, 3):
        assert abs(freq[dim] - 0.25) < 0.04, freq


def test_flip_is_an_involution_with_the_same_draw():
    x = _rand((6, 2, 5, 6, 7))
    op = Flip()
    params = op.sample_params(x, generator=_gen(0))
    assert torch.equal(op.apply(op.apply(x, params), params), x)


# --------------------------------------------------------------------------
# RandomApply and Compose
# --------------------------------------------------------------------------
def test_random_apply_p0_is_identity_copy():
    x = _rand((5, 1, 6, 6))
    y = RandomApply(Cutout(), p=0.0)(x, generator=_gen(0))
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr()


def test_random_apply_p1_applies_to_all():
    x = torch.ones(50, 1, 8, 8)
    y = RandomApply(Cutout(), p=1.0)(x, generator=_gen(0))
    assert ((y == 0).flatten(1).sum(1) == 4).all()


def test_random_apply_selects_subset_and_writes_back():
    seen = []

    def op(x, generator=None):
        seen.append(x.shape[0])
        return x + 1

    x = _rand((2000, 1, 3))
    y = RandomApply(op, p=0.3)(x, generator=_gen(0))
    changed = (y != x).flatten(1).all(1)
    unchanged = (y == x).flatten(1).all(1)
    assert torch.equal(changed, ~unchanged)  # a sample is either kept or shifted
    torch.testing.assert_close(y[changed], x[changed] + 1)
    assert seen == [int(changed.sum())]  # one call, on the sub-batch only
    assert abs(changed.float().mean().item() - 0.3) < 0.04


def _gathered_reference(op, x, p, seed):
    """RandomApply as documented: draw the chosen samples, gather them, call
    ``op`` on the sub-batch with the same generator, write them back."""
    g = _gen(seed)
    chosen = torch.rand(x.shape[0], generator=g) < p
    out = x.clone()
    if chosen.any():
        out[chosen] = op(x[chosen], generator=g)
    return out


_RANDOM_OPS = {
    "flip": lambda: Flip(),
    "blur": lambda: GaussianBlur(),
    "noise": lambda: GaussianNoise(),
    "cutout": lambda: Cutout(),
    "crop": lambda: RandomResizedCrop(),
    "brightness": lambda: RandomBrightnessContrast(clip=None),
    "area_crop": lambda: RandomAreaCrop(),
    "rotate": lambda: RandomRotate(),
}


@pytest.mark.parametrize("name", list(_RANDOM_OPS))
@pytest.mark.parametrize("in_compose", [False, True])
def test_random_apply_equals_gathered_call(name, in_compose):
    # the chosen samples are transformed from views, never gathered, yet
    # exactly as one call of the op on the gathered sub-batch
    op = _RANDOM_OPS[name]()
    x = _rand((9, 1, 10, 11, 12))
    for seed in range(4):
        step = RandomApply(op, p=0.5)
        if in_compose:  # after ZScore, Compose owns the batch: in place
            expected = _gathered_reference(op, ZScore()(x), 0.5, seed)
            got = Compose([ZScore(), step])(x, generator=_gen(seed))
        else:
            expected = _gathered_reference(op, x, 0.5, seed)
            got = step(x, generator=_gen(seed))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_compose_order_and_empty():
    x = _rand((2, 1, 4))
    torch.testing.assert_close(Compose([_double, _add_one])(x), 2 * x + 1)
    torch.testing.assert_close(Compose([_add_one, _double])(x), 2 * x + 2)
    y = Compose([])(x)
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr()
    assert len(Compose([_add_one, _double])) == 2


def test_compose_passes_generator():
    x = _rand((4, 1, 8, 8, 8))
    aug = Compose([GaussianNoise(), Cutout()])
    g = _gen(0)
    expected = Cutout()(GaussianNoise()(x, generator=g), generator=g)
    assert torch.equal(aug(x, generator=_gen(0)), expected)


# --------------------------------------------------------------------------
# parameter validation and repr
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory,name",
    [
        (lambda: ZScore(eps=-1.0), "eps"),
        (lambda: Flip(include_channel_axis=1), "include_channel_axis"),
        (lambda: GaussianBlur(sigma=(1.0, 0.5)), "sigma"),
        (lambda: GaussianBlur(sigma=-0.1), "sigma"),
        (lambda: GaussianBlur(sigma=(0.1, 0.2, 0.3)), "sigma"),
        (lambda: GaussianBlur(sigma="wide"), "sigma"),
        (lambda: GaussianBlur(truncate=0.0), "truncate"),
        (lambda: GaussianNoise(std=(-1.0, 1.0)), "std"),
        (lambda: Cutout(fraction=0.0), "fraction"),
        (lambda: Cutout(fraction=1.5), "fraction"),
        (lambda: Cutout(value=float("nan")), "value"),
        (lambda: RandomResizedCrop(fraction=-0.5), "fraction"),
        (lambda: RandomApply(op=3), "op"),
        (lambda: RandomApply(Flip(), p=1.2), "p"),
        (lambda: Compose([Flip(), "flip"]), "ops"),
        (lambda: Compose(5), "ops"),
    ],
)
def test_invalid_parameters_raise(factory, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        factory()


def test_repr():
    assert repr(ZScore()) == "ZScore(eps=1e-08)"
    assert repr(Flip()) == "Flip(include_channel_axis=True)"
    assert repr(GaussianBlur()) == "GaussianBlur(sigma=(0.1, 1.0), truncate=4.0)"
    assert repr(GaussianNoise(std=0.5)) == "GaussianNoise(std=0.5)"
    assert repr(Cutout()) == "Cutout(fraction=0.25, value=0.0)"
    assert repr(RandomResizedCrop()) == "RandomResizedCrop(fraction=0.75)"
    assert repr(RandomApply(Flip(), 0.5)) == (
        "RandomApply(op=Flip(include_channel_axis=True), p=0.5)"
    )
    assert repr(Compose([Cutout()])) == (
        "Compose([\n    Cutout(fraction=0.25, value=0.0),\n])"
    )


# --------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------
def test_preset_names():
    assert AUGMENTATION_PRESETS == ("cutout", "all", "crop", "wsp", "none")


def test_preset_cutout_applies_to_every_sample():
    aug = make_augmentation("cutout")
    x = 1.0 + torch.rand(10, 1, 9, 10, 11, generator=_gen(0))
    y = aug(x, generator=_gen(1))
    assert ((y == 0).flatten(1).sum(1) == 3 * 3 * 3).all()


def test_preset_all_is_official_order_and_probabilities():
    aug = make_augmentation("all")
    assert isinstance(aug, Compose)
    kinds = [type(step.op) for step in aug.ops]
    assert kinds == [Flip, GaussianBlur, GaussianNoise, Cutout, RandomResizedCrop]
    assert all(isinstance(step, RandomApply) and step.p == 0.5 for step in aug.ops)
    assert aug[0].op.include_channel_axis
    assert aug[1].op.sigma == (0.1, 1.0)
    assert aug[2].op.std == (0.1, 1.0)
    assert aug[3].op.fraction == 0.25 and aug[3].op.value == 0.0
    assert aug[4].op.fraction == 0.75


def test_preset_crop_changes_every_sample():
    x = _rand((6, 1, 8, 8, 8))
    y = make_augmentation("crop")(x, generator=_gen(0))
    assert (y != x).flatten(1).any(1).all()
    assert isinstance(make_augmentation("crop")[0], RandomResizedCrop)


@pytest.mark.parametrize("spec", [None, "none"])
def test_preset_none(spec):
    assert make_augmentation(spec) is None


def test_preset_callables():
    assert make_augmentation(_add_one) is _add_one
    op = Cutout()
    assert make_augmentation(op) is op
    wrapped = make_augmentation(_no_generator)
    x = _rand((2, 1, 4))
    torch.testing.assert_close(wrapped(x, generator=_gen(0)), 3 * x)
    torch.testing.assert_close(wrapped(x), 3 * x)
    restored = pickle.loads(pickle.dumps(wrapped))
    torch.testing.assert_close(restored(x, generator=None), 3 * x)


@pytest.mark.parametrize("spec", ["Cutout", "flip", "", 3, 0.5, Cutout])
def test_preset_invalid_spec(spec):
    with pytest.raises(ValueError, match="`augmentation`") as info:
        make_augmentation(spec)
    for name in AUGMENTATION_PRESETS:
        assert repr(name) in str(info.value)


def test_presets_are_picklable():
    aug = make_augmentation("all")
    restored = pickle.loads(pickle.dumps(aug))
    x = _rand((4, 1, 8, 8, 8))
    assert torch.equal(aug(x, generator=_gen(0)), restored(x, generator=_gen(0)))
    assert repr(restored) == repr(aug)


# --------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(ALL_OPS))
def test_cuda_device_and_generator(name):
    x = _rand((4, 1, 8, 9, 10)).cuda()
    op = ALL_OPS[name]()
    y1 = op(x, generator=_gen(0, "cuda"))
    y2 = op(x, generator=_gen(0, "cuda"))
    assert y1.device == x.device and y1.dtype == x.dtype and y1.shape == x.shape
    assert torch.equal(y1, y2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_blur_and_crop_match_cpu():
    x = _rand((4, 2, 8, 9, 10))
    blur = GaussianBlur()
    params = {"sigma": torch.tensor([0.2, 0.6, 1.0, 2.0])}
    torch.testing.assert_close(
        blur.apply(x.cuda(), params).cpu(), blur.apply(x, params), atol=1e-5, rtol=0
    )
    crop = RandomResizedCrop()
    params = crop.sample_params(x, generator=_gen(0))
    torch.testing.assert_close(
        crop.apply(x.cuda(), {"start": params["start"].cuda()}).cpu(),
        crop.apply(x, params),
        atol=1e-5,
        rtol=0,
    )
