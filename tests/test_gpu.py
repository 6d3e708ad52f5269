"""CUDA behaviour of every estimator and loss (skipped on machines without a GPU).

On a CUDA machine every test runs on device ``"cuda"``: a fit and a transform
(or predict) of each estimator with ``precision="auto"`` (bf16 on CUDA),
``memory_format="channels_last"`` and, for y-Aware, ``compile=True``; and the
bf16 parity of every loss of :mod:`sklearn_cl3d.losses` against float32.

Dry run without a GPU: ``SKLEARN_CL3D_GPU_TESTS_ON_CPU=1 pytest
tests/test_gpu.py`` runs the same tests on device ``"cpu"`` (there
``precision="auto"`` is what it resolves to on that CPU, and the loss
parity runs under CPU bf16 autocast), skipping only what needs CUDA itself:
the host-sync check, CUDA memory statistics and the compiled fit (slow to
compile on a small CPU).
Without the variable and without CUDA everything here is skipped (CI).
"""

import os
import pickle

import numpy as np
import pytest
import torch

from sklearn_cl3d import (
    ContrastiveSegmenter,
    DrasCLREncoder,
    FineTunedClassifier,
    FineTunedRegressor,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
)
from sklearn_cl3d.estimators import resolve_precision
from sklearn_cl3d.losses import (
    DiceCELoss,
    drasclr_loss,
    global_contrastive_loss,
    kernel_infonce,
    local_contrastive_loss,
    nt_xent,
    pairwise_infonce,
    wsp_infonce,
    yaware_infonce,
)
from sklearn_cl3d.nn import CondConv3d, ResNet2D

ON_CPU = os.environ.get("SKLEARN_CL3D_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
CUDA = DEVICE == "cuda"
# what precision="auto" must run the networks in: bf16 on CUDA (H100, A100...);
# on a CPU, bf16 only where measured faster (see resolve_precision)
AUTO_DTYPE = (
    torch.bfloat16
    if CUDA or resolve_precision("auto", "cpu") == "bf16"
    else torch.float32
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (ON_CPU or torch.cuda.is_available()),
        reason="needs a CUDA device (or SKLEARN_CL3D_GPU_TESTS_ON_CPU=1)",
    ),
]
cuda_only = pytest.mark.skipif(not CUDA, reason="CUDA-only assertion")

# every estimator below: the device under test, bf16 on CUDA, channels-last
SPEED = dict(device=DEVICE, precision="auto", memory_format="channels_last", verbose=0)

TINY = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=16,
    projection_dim=8,
    batch_size=8,
    max_epochs=2,
    augmentation="all",
    random_state=0,
)
WSP_TINY = dict(
    backbone=ResNet2D,
    backbone__blocks=(1, 1, 1, 1),
    backbone__widths=(4, 8, 8, 16),
    slice_size=24,
    hidden_dim=16,
    projection_dim=8,
    batch_size=6,
    max_epochs=1,
    random_state=0,
)
GL_TINY = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=16,
    projection_dim=8,
    region_dim=8,
    max_epochs=1,
    random_state=0,
)
SEG_TINY = dict(channels=(4, 8, 8, 8), slice_size=32, max_epochs=1, random_state=0)
DRAS_TINY = dict(
    patch_size=8,
    n_experts=2,
    projection_dim=16,
    queue_size=8,
    batch_size=2,
    max_epochs=1,
    landmarks=[[0, 0, 0], [0, 8, 8], [8, 8, 0]],
    random_state=0,
)


def _data(n=24, size=12):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 1, size, size, size)).astype("float32"), rng.uniform(
        20, 80, n
    )


@pytest.fixture(scope="module")
def slices_data():
    """12 volumes (20, 20, 10) for WSP; label 1 volumes have a bright blob."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 6)
    X = rng.normal(size=(12, 20, 20, 10)).astype(np.float32)
    X[labels == 1, 6:14, 6:14, :] += 2.0
    return X, labels


@pytest.fixture(scope="module")
def gl_data():
    """6 volumes (32, 32, 8) with a bright square, and 3-class masks of it."""
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 0.1, size=(6, 32, 32, 8)).astype(np.float32)
    for z in range(8):
        X[:, 2 * z : 2 * z + 12, 8:20, z] += 1.0
    return X, (X > 0.5).astype(np.int64) + (X > 1.1)


@pytest.fixture(scope="module")
def yaware_fitted():
    X, age = _data()
    return YAwarePretrainer(**TINY, **SPEED).fit(X, age), X


# ------------------------------------------------------------ helpers


def _conv_calls(module, run):
    """``run()``'s result and, for every convolution of ``module`` called
    during it, (output dtype, whether its input was channels-last); the hooks
    are removed afterwards (a hooked module does not pickle)."""
    seen = []

    def hook(mod, inp, out):
        x = inp[0]
        fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        seen.append((out.dtype, x.is_contiguous(memory_format=fmt)))

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, CondConv3d))
    ]
    try:
        return run(), seen
    finally:
        for h in handles:
            h.remove()


def _check_on_device_and_channels_last(est, ndim, weights=True):
    """All parameters on the device; the conv weights channels-last (DrasCLR's
    6-D expert weights have no channels-last layout: ``weights=False``)."""
    module = est.module_
    assert est.device_ == DEVICE
    params = list(module.parameters())
    assert params and all(p.device.type == DEVICE for p in params)
    fmt = torch.channels_last_3d if ndim == 5 else torch.channels_last
    convs = [p for p in params if p.dim() == ndim]
    if weights:
        assert convs, f"no {ndim}-D conv weight in {type(module).__name__}"
    assert all(p.is_contiguous(memory_format=fmt) for p in convs)
    # autocast, not a cast of the model: the weights stay float32
    assert all(p.dtype == torch.float32 for p in params)


def _check_losses(est):
    losses = np.asarray(est.history[:, "train_loss"], dtype=float)
    assert losses.size and np.isfinite(losses).all(), losses
    batches = [b["train_loss"] for h in est.history for b in h["batches"]]
    assert batches and np.isfinite(batches).all(), batches


def _check_features(Z, n_rows):
    assert isinstance(Z, np.ndarray) and Z.dtype == np.float32
    assert Z.shape[0] == n_rows and np.isfinite(Z).all()


def _check_runs_in_auto_precision(est, run, channels_last_input=False):
    """``run()`` (a transform or predict) runs the convolutions in the dtype
    that ``precision="auto"`` means on this device (and, if asked, the first
    convolution gets a channels-last input)."""
    out, seen = _conv_calls(est.module_, run)
    assert seen and {dtype for dtype, _ in seen} == {AUTO_DTYPE}, seen
    if channels_last_input:
        assert seen[0][1], seen
    return out


# ------------------------------------------------- losses and the device


@cuda_only
def test_losses_do_not_sync_with_the_host():
    z1 = torch.randn(16, 32, device="cuda", requires_grad=True)
    z2 = torch.randn(16, 32, device="cuda", requires_grad=True)
    age = torch.linspace(20, 80, 16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = yaware_infonce(z1, z2, age, sigma=5.0) + nt_xent(z1, z2)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_loss_matches_cpu():
    torch.manual_seed(0)
    z1, z2 = (
        torch.randn(8, 16, dtype=torch.float64),
        torch.randn(8, 16, dtype=torch.float64),
    )
    age = torch.linspace(20, 80, 8, dtype=torch.float64)
    cpu = yaware_infonce(z1, z2, age)
    dev = yaware_infonce(z1.to(DEVICE), z2.to(DEVICE), age.to(DEVICE))
    assert dev.item() == pytest.approx(cpu.item(), rel=1e-10)


def test_auto_device_trains_on_cuda_by_default():
    X, age = _data()
    params = {**TINY, "verbose": 0}
    if not CUDA:  # the dry run: "auto" would pick CUDA if there were one
        params["device"] = "cpu"
    est = YAwarePretrainer(**params).fit(X, age)
    assert est.device_ == DEVICE
    assert est.get_params()["device"] == ("auto" if CUDA else "cpu")
    assert next(est.module_.parameters()).device.type == DEVICE


@pytest.mark.parametrize("cls", [YAwarePretrainer, SimCLRPretrainer])
def test_fit_transform_and_pickle(cls):
    X, age = _data()
    est = cls(**TINY, **SPEED).fit(X, age)
    _check_on_device_and_channels_last(est, 5)
    _check_losses(est)
    Z = _check_runs_in_auto_precision(est, lambda: est.transform(X))
    _check_features(Z, len(X))
    assert Z.shape[1] == 8  # small3d's pooled features
    loaded = pickle.loads(pickle.dumps(est))
    assert next(loaded.module_.parameters()).device.type == DEVICE
    np.testing.assert_allclose(loaded.transform(X), Z, rtol=1e-5, atol=1e-5)


def test_runs_are_seeded():
    X, age = _data()
    a = YAwarePretrainer(**TINY, **SPEED).fit(X, age).transform(X)
    b = YAwarePretrainer(**TINY, **SPEED).fit(X, age).transform(X)
    # bf16 on CUDA: seeded, but cuDNN may pick non-deterministic kernels
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not CUDA, reason="compiling on a small CPU is slow (dry run)")
def test_compiled_yaware_fit_matches_eager():
    X, age = _data()
    eager = YAwarePretrainer(**TINY, **SPEED).fit(X, age)
    compiled = YAwarePretrainer(**TINY, **SPEED, compile=True).fit(X, age)
    assert "_compiled_module" in compiled.__dict__
    _check_on_device_and_channels_last(compiled, 5)
    _check_losses(compiled)
    # bf16 rounding differs between fused and eager kernels: loose tolerance
    np.testing.assert_allclose(
        compiled.history[:, "train_loss"], eager.history[:, "train_loss"], rtol=5e-2
    )
    Z = compiled.transform(X)
    _check_features(Z, len(X))
    np.testing.assert_allclose(Z, eager.transform(X), rtol=0.1, atol=0.1)
    again = pickle.loads(pickle.dumps(compiled))
    assert "_compiled_module" not in again.__dict__


@cuda_only
def test_cuda_memory_is_used_and_released(yaware_fitted):
    est, X = yaware_fitted
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    est.transform(X)
    assert torch.cuda.max_memory_allocated() > 0
    # the features come back to the host: nothing of X stays allocated
    before = torch.cuda.memory_allocated()
    est.transform(X)
    assert torch.cuda.memory_allocated() <= before


# --------------------------------------------------------- every estimator


def test_wsp_fit_transform(slices_data):
    X, labels = slices_data
    est = WSPPretrainer(**WSP_TINY, **SPEED).fit(X, labels)
    _check_on_device_and_channels_last(est, 4)
    _check_losses(est)
    Z = _check_runs_in_auto_precision(est, lambda: est.transform(X))
    _check_features(Z, len(X))
    assert Z.shape[1] == 16


def test_globallocal_fit_transform(gl_data):
    X, _ = gl_data
    est = GlobalLocalPretrainer(**GL_TINY, **SPEED).fit(X)
    _check_on_device_and_channels_last(est, 4)
    _check_losses(est)
    assert {h["stage"] for h in est.history} == {"global", "local"}
    Z = _check_runs_in_auto_precision(est, lambda: est.transform(X))
    _check_features(Z, len(X))


def test_segmenter_fit_predict(gl_data):
    X, masks = gl_data
    gl = GlobalLocalPretrainer(**GL_TINY, **SPEED).fit(X)
    seg = ContrastiveSegmenter(gl, **SEG_TINY, **SPEED).fit(X[:2], masks[:2])
    assert seg.n_pretrained_blocks_ >= 1
    _check_on_device_and_channels_last(seg, 4)
    _check_losses(seg)
    proba = _check_runs_in_auto_precision(seg, lambda: seg.predict_proba(X[2:]))
    assert proba.shape == (4, 3, 32, 32, 8) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-3)
    pred = seg.predict(X[2:])
    assert pred.shape == (4, 32, 32, 8) and set(np.unique(pred)) <= {0, 1, 2}
    assert 0.0 <= seg.score(X[2:], masks[2:]) <= 1.0


def test_drasclr_fit_transform():
    rng = np.random.default_rng(0)
    X = rng.normal(-600, 300, size=(4, 16, 16, 16)).astype(np.float32)
    est = DrasCLREncoder(**DRAS_TINY, **SPEED).fit(X)
    _check_on_device_and_channels_last(est, 5, weights=False)
    _check_losses(est)
    # the MoCo queue lives with the network
    buffers = list(est.module_.buffers())
    assert buffers and all(b.device.type == DEVICE for b in buffers)
    # the patches go in channels-last; CondConv3d folds the batch into the
    # channels (one grouped conv), so the later layers' inputs are contiguous
    Z = _check_runs_in_auto_precision(
        est, lambda: est.transform(X), channels_last_input=True
    )
    _check_features(Z, len(X))


@pytest.mark.parametrize("cls", [FineTunedClassifier, FineTunedRegressor])
def test_finetuned_on_a_fitted_pretrainer(cls, yaware_fitted):
    ssl, X = yaware_fitted
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * (len(X) // 2))
    if cls is FineTunedRegressor:
        y = y + rng.normal(0, 0.1, len(X))
    est = cls(ssl, max_epochs=2, batch_size=8, device=DEVICE, random_state=0)
    est.set_params(verbose=0).fit(X, y)
    params = list(est.module_.parameters())
    assert params and all(p.device.type == DEVICE for p in params)
    # the pretrained weights were copied, not shared, and stay where they were
    assert all(p.device.type == DEVICE for p in ssl.module_.parameters())
    _check_losses(est)
    pred = est.predict(X)
    assert pred.shape == (len(X),) and np.isfinite(pred.astype(float)).all()
    if cls is FineTunedClassifier:
        proba = est.predict_proba(X)
        assert proba.shape == (len(X), 2) and np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(est.score(X, y))


# ------------------------------------------------ bf16 loss parity vs fp32

# |loss_bf16 - loss_fp32| <= RTOL * |loss_fp32| + ATOL, and the gradient of
# the inputs within GRAD_RTOL (relative L2 error). bf16 keeps 8 significant
# bits (relative rounding 2^-9 = 0.2 %), and the temperatures (0.1 to 0.2)
# scale the similarities' rounding up by 5 to 10. Under CPU bf16 autocast
# these cases measured at most 0.26 % on the loss (global_contrastive_loss)
# and 1.0 % on a gradient (wsp_infonce): the bounds leave about 4x margin.
LOSS_RTOL, LOSS_ATOL, GRAD_RTOL = 1e-2, 1e-3, 5e-2


LOSSES = (
    "DiceCELoss",
    "drasclr_loss",
    "global_contrastive_loss",
    "kernel_infonce",
    "local_contrastive_loss",
    "nt_xent",
    "pairwise_infonce",
    "wsp_infonce",
    "yaware_infonce",
)


def _loss_cases():
    """name -> (loss(*inputs) -> scalar, differentiable inputs), on DEVICE."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    n, d = 16, 32
    age = torch.linspace(20, 80, n).to(DEVICE)
    labels = torch.arange(n).remainder(4).to(DEVICE)
    pos = torch.linspace(0, 0.9, n).to(DEVICE)
    eye = torch.eye(2 * n, dtype=torch.bool)
    pairs = torch.stack([torch.arange(2 * n), torch.arange(2 * n) ^ 1], 1)
    neg = ~(eye | eye[pairs[:, 1]])
    # 3 volumes x 4 partitions x 2 views, the official global batch
    vol = torch.arange(3).repeat_interleave(8).to(DEVICE)
    part = torch.arange(4).repeat_interleave(2).repeat(3).to(DEVICE)
    view = torch.arange(2).repeat(12).to(DEVICE)
    target = torch.randint(0, 3, (2, 8, 8, 8), generator=g).to(DEVICE)
    queue = rand(d, 64)
    return {
        "yaware_infonce": (
            lambda a, b: yaware_infonce(a, b, age, sigma=5.0),
            [rand(n, d), rand(n, d)],
        ),
        "nt_xent": (nt_xent, [rand(n, d), rand(n, d)]),
        "kernel_infonce": (kernel_infonce, [rand(n, d), rand(n, d)]),
        "wsp_infonce": (
            lambda a, b: wsp_infonce(a, b, labels, pos),
            [rand(n, d), rand(n, d)],
        ),
        "pairwise_infonce": (
            lambda z: pairwise_infonce(z, pairs.to(DEVICE), neg.to(DEVICE)),
            [rand(2 * n, d)],
        ),
        "global_contrastive_loss": (
            lambda z: global_contrastive_loss(z, vol, part, view, strategy="GD"),
            [rand(24, d)],
        ),
        "local_contrastive_loss": (
            lambda a, b: local_contrastive_loss(a, b),
            [rand(4, 8, 12, 12), rand(4, 8, 12, 12)],
        ),
        "drasclr_loss": (
            lambda q, k, nb: drasclr_loss(q, k, nb, queue)[2],
            [rand(8, d), rand(8, d), rand(8, 2, d)],
        ),
        "DiceCELoss": (lambda x: DiceCELoss()(x, target), [rand(2, 3, 8, 8, 8)]),
    }


def test_every_loss_is_covered():
    import sklearn_cl3d.losses as losses

    assert set(_loss_cases()) == set(LOSSES)
    # every loss function and loss module the package exports is here (or in
    # the list of those it is built from: they are covered through it)
    exported = {
        name
        for name in losses.__all__
        if name.endswith(("_loss", "_infonce", "_xent", "Loss"))
    }
    modules = {"DrasCLRLoss", "GlobalContrastiveLoss", "LocalContrastiveLoss"}
    modules |= {"NTXentLoss", "WSPLoss", "YAwareLoss"}  # wrap the functions
    assert exported - modules <= set(LOSSES), exported - modules - set(LOSSES)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_under_bf16_autocast_matches_fp32(name):
    fn, inputs = _loss_cases()[name]
    ref_in = [x.clone().requires_grad_(True) for x in inputs]
    ref = fn(*ref_in)
    ref.backward()
    # bf16 inputs (what an autocast network emits) and bf16 autocast inside
    low_in = [x.to(torch.bfloat16).requires_grad_(True) for x in inputs]
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        low = fn(*low_in)
    low.backward()
    assert torch.isfinite(low).item()
    assert abs(low.item() - ref.item()) <= LOSS_RTOL * abs(ref.item()) + LOSS_ATOL
    for a, b in zip(low_in, ref_in):
        if b.grad is None:  # an input the loss detaches (DrasCLR's keys)
            assert a.grad is None
            continue
        assert a.grad is not None and torch.isfinite(a.grad).all().item()
        err = (a.grad.float() - b.grad).norm() / b.grad.norm().clamp_min(1e-12)
        assert err.item() <= GRAD_RTOL, err.item()


@pytest.mark.parametrize("name", LOSSES)
def test_loss_under_bf16_autocast_is_float32(name):
    fn, inputs = _loss_cases()[name]
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        low = fn(*[x.to(torch.bfloat16) for x in inputs])
    assert low.dtype == torch.float32
