"""Tests of the in-plane (2-D) augmentations of the WSP pipeline."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from sklearn_cl3d.augment import (
    AxisFlip,
    Compose,
    RandomApply,
    RandomAreaCrop,
    RandomRotate,
    RandomTranslate,
    make_augmentation,
)

ATOL = 1e-5


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def _rand(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


OPS = {
    "hflip": lambda: AxisFlip(-1),
    "vflip": lambda: AxisFlip(-2),
    "crop": lambda: RandomAreaCrop(),
    "translate": lambda: RandomTranslate(),
    "rotate": lambda: RandomRotate(),
    "wsp": lambda: make_augmentation("wsp"),
}
RANDOM_OPS = {k: v for k, v in OPS.items() if k not in ("hflip", "vflip")}
SHAPES = {2: (4, 2, 12, 15), 3: (3, 1, 5, 12, 15)}


# --------------------------------------------------------------------------
# generic contract
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("n_spatial", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_and_no_inplace(name, n_spatial, dtype):
    x = _rand(SHAPES[n_spatial], dtype=dtype)
    x_before = x.clone()
    y = OPS[name]()(x, generator=_gen(1))
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert y.device == x.device
    assert torch.isfinite(y).all()
    assert torch.equal(x, x_before)
    y.add_(1.0)
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(name, dtype):
    x = _rand((4, 1, 16, 16)).to(dtype)
    y = OPS[name]()(x, generator=_gen(3))
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y.float()).all()
    y32 = OPS[name]()(x.float(), generator=_gen(3))
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(y.float(), y32, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", list(RANDOM_OPS))
def test_seeded_generator_reproducible_and_seed_dependent(name):
    x = _rand((6, 1, 16, 16))
    op = RANDOM_OPS[name]()
    y1 = op(x, generator=_gen(7))
    y2 = op(x, generator=_gen(7))
    y3 = op(x, generator=_gen(8))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


def test_global_rng_used_without_generator():
    x = _rand((4, 1, 16, 16))
    op = make_augmentation("wsp")
    torch.manual_seed(5)
    y1 = op(x)
    torch.manual_seed(5)
    y2 = op(x)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("name", ["crop", "translate", "rotate"])
def test_parameters_are_drawn_per_sample(name):
    op = RANDOM_OPS[name]()
    x = _rand((1, 1, 20, 20)).expand(8, -1, -1, -1).contiguous()
    params = op.sample_params(x, generator=_gen(0))
    for value in params.values():
        assert len({tuple(v.reshape(-1).tolist()) for v in value}) > 1
    y = op(x, generator=_gen(0))
    assert len({tuple(s.flatten().tolist()) for s in y}) > 1


@pytest.mark.parametrize("name", list(OPS))
def test_p_zero_is_identity_and_empty_batch(name):
    x = _rand((5, 1, 10, 10))
    assert torch.equal(RandomApply(OPS[name](), p=0.0)(x, generator=_gen(0)), x)
    empty = torch.zeros(0, 1, 6, 6)
    assert OPS[name]()(empty, generator=_gen(0)).shape == empty.shape


@pytest.mark.parametrize("name", list(RANDOM_OPS))
def test_one_spatial_dimension_rejected(name):
    with pytest.raises(ValueError, match="shape"):
        OPS[name]()(torch.zeros(2, 1, 8), generator=_gen(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(OPS))
def test_cuda_device_and_generator(name):
    x = _rand((4, 1, 16, 16)).cuda()
    op = OPS[name]()
    y1 = op(x, generator=_gen(0, "cuda"))
    y2 = op(x, generator=_gen(0, "cuda"))
    assert y1.device == x.device and y1.shape == x.shape
    assert torch.equal(y1, y2)


# --------------------------------------------------------------------------
# flips
# --------------------------------------------------------------------------
def test_axis_flip_directions():
    x = _rand((2, 3, 5, 7))
    assert torch.equal(AxisFlip(-1)(x), x.flip(-1))  # horizontal: width
    assert torch.equal(AxisFlip(-2)(x), x.flip(-2))  # vertical: height
    assert torch.equal(AxisFlip(2)(x), x.flip(2))
    v = _rand((2, 1, 4, 5, 6))
    assert torch.equal(AxisFlip(-3)(v), v.flip(2))
    assert AxisFlip().sample_params(x) == {}
    line = _rand((2, 1, 9))  # any spatial axis, also of a 1-D batch
    assert torch.equal(AxisFlip(-1)(line), line.flip(-1))


def test_axis_flip_exact_in_half_precision():
    x = _rand((3, 1, 6, 7)).to(torch.float16)
    assert torch.equal(AxisFlip(-1)(x), x.flip(-1))


def test_axis_flip_axis_out_of_range():
    with pytest.raises(ValueError, match="`axis`"):
        AxisFlip(-3)(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="`axis`"):
        AxisFlip(4)(torch.zeros(2, 1, 4, 4))


# --------------------------------------------------------------------------
# translation
# --------------------------------------------------------------------------
def _shift_with_zeros(sample, down, right):
    """torch.roll of (C, H, W) with the wrapped pixels set to zero."""
    out = torch.roll(sample, shifts=(down, right), dims=(-2, -1))
    h, w = sample.shape[-2:]
    rows = torch.arange(h)
    cols = torch.arange(w)
    keep_r = (rows - down >= 0) & (rows - down < h)
    keep_c = (cols - right >= 0) & (cols - right < w)
    return out * (keep_r[:, None] & keep_c[None, :])


def test_translate_integer_shift_matches_roll_with_zero_fill():
    x = _rand((4, 2, 9, 13))
    shifts = [(2, -3), (0, 0), (-1, 4), (3, 5)]
    y = RandomTranslate().apply(x, {"shift": torch.tensor(shifts, dtype=torch.float32)})
    for b, (down, right) in enumerate(shifts):
        expected = _shift_with_zeros(x[b], down, right)
        torch.testing.assert_close(y[b], expected, atol=ATOL, rtol=0)


def test_translate_3d_is_in_plane():
    x = _rand((2, 1, 4, 8, 8))
    params = {"shift": torch.tensor([[1.0, 2.0], [-2.0, 0.0]])}
    y = RandomTranslate().apply(x, params)
    flat = RandomTranslate().apply(x[:, 0], params)  # depth as channels
    torch.testing.assert_close(y[:, 0], flat, atol=ATOL, rtol=0)


def test_translate_sampled_shift_range():
    x = torch.zeros(2000, 1, 10, 40)
    shift = RandomTranslate(0.2).sample_params(x, generator=_gen(0))["shift"]
    assert shift.shape == (2000, 2)
    assert (shift[:, 0].abs() <= 2.0).all() and (shift[:, 1].abs() <= 8.0).all()
    assert shift[:, 0].abs().max() > 1.9 and shift[:, 1].abs().max() > 7.9
    assert abs(float(shift[:, 1].mean())) < 0.5
    assert torch.equal(
        RandomTranslate(0.0).sample_params(x, generator=_gen(0))["shift"],
        torch.zeros(2000, 2),
    )


# --------------------------------------------------------------------------
# rotation
# --------------------------------------------------------------------------
def test_rotate_90_is_counter_clockwise_rot90():
    x = _rand((3, 2, 8, 8))
    angle = torch.tensor([90.0, -90.0, 0.0])
    y = RandomRotate().apply(x, {"angle": angle})
    torch.testing.assert_close(
        y[0], torch.rot90(x[0], 1, dims=(-2, -1)), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        y[1], torch.rot90(x[1], -1, dims=(-2, -1)), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(y[2], x[2], atol=ATOL, rtol=0)
    # counter-clockwise on screen: the top-right corner goes to the top-left
    assert float(y[0, 0, 0, 0]) == pytest.approx(float(x[0, 0, 0, -1]), abs=ATOL)


def test_rotate_non_square_about_centre():
    x = _rand((2, 1, 6, 10))
    y = RandomRotate().apply(x, {"angle": torch.tensor([180.0, 90.0])})
    torch.testing.assert_close(y[0], x[0].flip(-2, -1), atol=ATOL, rtol=0)
    # the central 6 x 6 square turns onto itself
    torch.testing.assert_close(
        y[1, :, :, 2:8],
        torch.rot90(x[1, :, :, 2:8], 1, dims=(-2, -1)),
        atol=ATOL,
        rtol=0,
    )
    # and pixels brought in from outside the image are zero
    assert torch.all(y[1, :, :, :2].abs() < ATOL)


def test_rotate_sampled_angle_range():
    x = torch.zeros(1000, 1, 4, 4)
    angle = RandomRotate(30.0).sample_params(x, generator=_gen(0))["angle"]
    assert (angle.abs() <= 30.0).all() and angle.min() < -29 and angle.max() > 29
    angle = RandomRotate((10.0, 20.0)).sample_params(x, generator=_gen(0))["angle"]
    assert (angle >= 10.0).all() and (angle <= 20.0).all()


# --------------------------------------------------------------------------
# resized crop
# --------------------------------------------------------------------------
def test_crop_full_area_square_ratio_is_identity():
    x = _rand((4, 2, 16, 16))
    op = RandomAreaCrop(scale=1.0, ratio=(1.0, 1.0))
    params = op.sample_params(x, generator=_gen(0))
    assert (params["size"] == 16).all() and (params["start"] == 0).all()
    torch.testing.assert_close(op(x, generator=_gen(0)), x, atol=ATOL, rtol=0)
    # a non-square image with its own aspect ratio
    x = _rand((2, 1, 10, 20))
    op = RandomAreaCrop(scale=1.0, ratio=2.0)
    torch.testing.assert_close(op(x, generator=_gen(0)), x, atol=ATOL, rtol=0)


def test_crop_matches_interpolate_of_the_box():
    x = _rand((3, 2, 12, 15))
    params = {
        "start": torch.tensor([[1, 2], [0, 0], [5, 9]]),
        "size": torch.tensor([[8, 10], [12, 15], [7, 6]]),
    }
    y = RandomAreaCrop().apply(x, params)
    for b in range(3):
        (r, c), (h, w) = params["start"][b].tolist(), params["size"][b].tolist()
        box = x[b : b + 1, :, r : r + h, c : c + w]
        expected = F.interpolate(
            box, size=(12, 15), mode="bilinear", align_corners=True
        )
        torch.testing.assert_close(y[b], expected[0], atol=ATOL, rtol=0)


def test_crop_sampled_area_ratio_and_position():
    height, width = 64, 64  # no box is clipped
    x = torch.zeros(2000, 1, height, width)
    params = RandomAreaCrop(0.7).sample_params(x, generator=_gen(0))
    size, start = params["size"].double(), params["start"]
    rows, cols = size[:, 0], size[:, 1]
    # rounding each side moves the area by at most about half a row and column
    area = rows * cols / (height * width)
    assert ((area - 0.7).abs() <= (rows + cols + 1) / (2 * height * width)).all()
    ratio = cols / rows
    assert (ratio >= 0.75 * (1 - 2 / 40)).all() and (
        ratio <= 4 / 3 * (1 + 2 / 40)
    ).all()
    # log-uniform: the log ratio is symmetric about 0 and fills the range
    log_ratio = torch.log(ratio)
    assert abs(float(log_ratio.mean())) < 0.02
    assert log_ratio.min() < math.log(0.78) and log_ratio.max() > math.log(1.28)
    assert (start >= 0).all()
    assert (start + params["size"] <= torch.tensor([height, width])).all()
    # positions spread over the whole free range
    assert start[:, 0].max() >= height - rows.max() - 1


def test_crop_is_clipped_to_the_image():
    x = torch.zeros(50, 1, 8, 32)
    params = RandomAreaCrop(scale=1.0, ratio=(3.0, 3.0)).sample_params(x, _gen(0))
    # width sqrt(256 * 3) = 28 fits; height sqrt(256 / 3) = 9 is clipped to 8
    assert (params["size"] == torch.tensor([8, 28])).all()


def test_crop_3d_is_in_plane():
    x = _rand((2, 1, 3, 12, 12))
    op = RandomAreaCrop()
    params = op.sample_params(x, generator=_gen(0))
    torch.testing.assert_close(
        op.apply(x, params)[:, 0], op.apply(x[:, 0], params), atol=ATOL, rtol=0
    )


# --------------------------------------------------------------------------
# validation, repr, pickling
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: AxisFlip(0), "axis"),
        (lambda: AxisFlip(1), "axis"),
        (lambda: AxisFlip(1.5), "axis"),
        (lambda: AxisFlip(True), "axis"),
        (lambda: RandomTranslate(-0.1), "max_fraction"),
        (lambda: RandomTranslate(1.5), "max_fraction"),
        (lambda: RandomTranslate("0.2"), "max_fraction"),
        (lambda: RandomRotate(-5.0), "degrees"),
        (lambda: RandomRotate(math.nan), "degrees"),
        (lambda: RandomRotate((10.0, -10.0)), "degrees"),
        (lambda: RandomRotate((1.0, 2.0, 3.0)), "degrees"),
        (lambda: RandomAreaCrop(scale=0.0), "scale"),
        (lambda: RandomAreaCrop(scale=1.2), "scale"),
        (lambda: RandomAreaCrop(scale=(0.5, 1.5)), "scale"),
        (lambda: RandomAreaCrop(scale=(0.8, 0.5)), "scale"),
        (lambda: RandomAreaCrop(scale=(0.0, 0.5)), "scale"),
        (lambda: RandomAreaCrop(ratio=0.0), "ratio"),
        (lambda: RandomAreaCrop(ratio=(-1.0, 1.0)), "ratio"),
        (lambda: RandomAreaCrop(ratio=(2.0, 1.0)), "ratio"),
        (lambda: RandomAreaCrop(ratio="wide"), "ratio"),
    ],
)
def test_invalid_parameters(factory, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        factory()


def test_repr_and_pickle():
    assert repr(AxisFlip(-2)) == "AxisFlip(axis=-2)"
    assert repr(RandomTranslate()) == "RandomTranslate(max_fraction=0.2)"
    assert repr(RandomRotate()) == "RandomRotate(degrees=30.0)"
    assert repr(RandomAreaCrop()) == (
        f"RandomAreaCrop(scale=0.7, ratio=({3 / 4!r}, {4 / 3!r}))"
    )
    aug = make_augmentation("wsp")
    restored = pickle.loads(pickle.dumps(aug))
    x = _rand((4, 1, 16, 16))
    assert torch.equal(aug(x, generator=_gen(0)), restored(x, generator=_gen(0)))
    assert repr(restored) == repr(aug)


# --------------------------------------------------------------------------
# the "wsp" preset
# --------------------------------------------------------------------------
def test_wsp_preset_is_official_order_and_probabilities():
    aug = make_augmentation("wsp")
    assert isinstance(aug, Compose) and len(aug) == 5
    assert all(isinstance(step, RandomApply) and step.p == 0.5 for step in aug.ops)
    kinds = [type(step.op) for step in aug.ops]
    assert kinds == [AxisFlip, AxisFlip, RandomAreaCrop, RandomTranslate, RandomRotate]
    assert aug[0].op.axis == -1 and aug[1].op.axis == -2
    assert aug[2].op.scale == 0.7 and aug[2].op.ratio == (3 / 4, 4 / 3)
    assert aug[3].op.max_fraction == 0.2
    assert aug[4].op.degrees == 30.0


def test_wsp_preset_on_a_batch_of_slices():
    x = _rand((8, 1, 64, 64))
    aug = make_augmentation("wsp")
    view1 = aug(x, generator=_gen(0))
    view2 = aug(x, generator=_gen(1))
    for view in (view1, view2):
        assert view.shape == x.shape and view.dtype == x.dtype
        assert torch.isfinite(view).all()
    # two independent passes give two different views
    assert not torch.equal(view1, view2)
    changed = (view1 != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) <= 8
