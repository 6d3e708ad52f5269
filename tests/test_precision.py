"""precision / memory_format / compile parameters of every pretrainer (on CPU)."""

import pickle

import numpy as np
import pytest
import torch

from sklearn_cl3d import SimCLRPretrainer, WSPPretrainer, YAwarePretrainer
from sklearn_cl3d.estimators import _device, resolve_memory_format, resolve_precision

TINY = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=16,
    projection_dim=8,
    batch_size=8,
    max_epochs=1,
    random_state=0,
    device="cpu",
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 1, 12, 12, 12)).astype(np.float32)
    age = rng.uniform(20, 80, size=16)
    return X, age


def _conv_output_dtypes(est):
    """Dtypes the first conv produced during training (via a forward hook)."""
    seen = []
    conv = next(m for m in est.module_.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize(
    "precision, dtype",
    [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_precision_runs_the_network_in_that_dtype(data, precision, dtype):
    X, age = data
    est = YAwarePretrainer(**TINY, precision=precision)
    est.fit(X, age)
    seen = _conv_output_dtypes(est)
    est.partial_fit(X, age)
    assert seen and set(seen) == {dtype}
    losses = est.history[:, "train_loss"]
    assert np.isfinite(losses).all()
    F = est.transform(X)
    assert F.dtype == np.float32 and np.isfinite(F).all()
    # weights stay float32 (autocast, not a cast of the model)
    assert all(p.dtype == torch.float32 for p in est.module_.parameters())


def test_reduced_precision_is_close_to_fp32(data):
    X, age = data
    ref = YAwarePretrainer(**TINY, precision="fp32").fit(X, age)
    bf16 = YAwarePretrainer(**TINY, precision="bf16").fit(X, age)
    assert bf16.history[0, "train_loss"] == pytest.approx(
        ref.history[0, "train_loss"], rel=0.05
    )


def test_fp16_uses_a_grad_scaler_and_still_learns(data):
    X, age = data
    est = YAwarePretrainer(**{**TINY, "max_epochs": 3}, precision="fp16", lr=1e-2)
    est.fit(X, age)
    scaler = est.__dict__.get("_grad_scaler")
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() > 0
    ref = YAwarePretrainer(**{**TINY, "max_epochs": 0}).fit(X, age)
    before = [p.detach().clone() for p in ref.module_.parameters()]
    after = list(est.module_.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    # the scaler is not pickled
    again = pickle.loads(pickle.dumps(est))
    assert "_grad_scaler" not in again.__dict__
    np.testing.assert_array_equal(again.transform(X), est.transform(X))


@pytest.fixture
def cpu_as(monkeypatch):
    """Make the CPU look like another one (vendor, flags) to ``"auto"``."""

    def fake(vendor, flags=()):
        identity = (vendor, frozenset(flags))
        monkeypatch.setattr(_device, "_cpu_identity", lambda: identity)
        _device.cpu_bf16_is_faster.cache_clear()

    yield fake
    _device.cpu_bf16_is_faster.cache_clear()


ZEN4_FLAGS = ("avx2", "avx512f", "avx512_bf16")


@pytest.mark.parametrize(
    "vendor, flags, expected",
    [
        ("AuthenticAMD", ZEN4_FLAGS, "bf16"),  # measured 0.54x the fp32 step
        ("GenuineIntel", ZEN4_FLAGS, "fp32"),  # measured 1.19x (no AMX)
        ("GenuineIntel", ZEN4_FLAGS + ("amx_bf16", "amx_tile"), "fp32"),  # unmeasured
        ("AuthenticAMD", ("avx2", "avx512f"), "fp32"),  # Zen 3: no native bf16
        ("", (), "fp32"),  # /proc/cpuinfo unreadable, other platforms
    ],
)
def test_auto_on_cpu_is_bf16_only_where_measured_faster(
    cpu_as, vendor, flags, expected
):
    cpu_as(vendor, flags)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", None) == "fp32"


def test_auto_on_an_amd_bf16_cpu_trains_in_bf16(cpu_as, data):
    cpu_as("AuthenticAMD", ZEN4_FLAGS)
    X, age = data
    est = YAwarePretrainer(**TINY, precision="auto").fit(X, age)
    seen = _conv_output_dtypes(est)
    est.partial_fit(X, age)
    assert set(seen) == {torch.bfloat16}
    assert np.isfinite(est.history[:, "train_loss"]).all()
    assert est.get_params()["precision"] == "auto"  # the parameter is kept


def test_cpu_identity_reads_this_machine():
    vendor, flags = _device._cpu_identity()
    assert isinstance(vendor, str) and isinstance(flags, frozenset)
    if vendor:  # Linux: the flags of a real x86 or ARM CPU
        assert flags


def test_auto_resolves_to_fp32_and_contiguous_on_cpu(cpu_as):
    cpu_as("GenuineIntel", ZEN4_FLAGS)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_memory_format("auto", "cpu", 5) is torch.contiguous_format
    assert resolve_memory_format("channels_last", "cpu", 5) is torch.channels_last_3d
    assert resolve_memory_format("channels_last", "cpu", 4) is torch.channels_last
    assert resolve_memory_format("channels_last", "cpu", 2) is torch.contiguous_format


def test_channels_last_gives_the_same_model(data):
    X, age = data
    a = YAwarePretrainer(**TINY, memory_format="contiguous").fit(X, age)
    b = YAwarePretrainer(**TINY, memory_format="channels_last").fit(X, age)
    conv = next(m for m in b.module_.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    np.testing.assert_allclose(a.transform(X), b.transform(X), rtol=1e-4, atol=1e-5)


def test_channels_last_for_2d_slices():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 16, 16, 10)).astype(np.float32)
    est = WSPPretrainer(
        backbone="resnet18", backbone__rep_dim=16, slice_size=32, hidden_dim=8,
        projection_dim=4, batch_size=3, max_epochs=1, augmentation="none",
        random_state=0, device="cpu", memory_format="channels_last",
    ).fit(X, [0, 1] * 3)
    conv = next(m for m in est.module_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert est.transform(X).shape == (6, 16)


def test_compile_on_a_tiny_model_matches_eager():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 6)).astype(np.float32)
    params = dict(
        backbone="mlp", backbone__hidden_dims=(8,), hidden_dim=8, projection_dim=4,
        batch_size=8, max_epochs=2, augmentation="none", random_state=0,
        device="cpu",
    )
    eager = SimCLRPretrainer(**params).fit(X)
    compiled = SimCLRPretrainer(**params, compile=True).fit(X)
    assert "_compiled_module" in compiled.__dict__
    np.testing.assert_allclose(
        compiled.history[:, "train_loss"], eager.history[:, "train_loss"], rtol=1e-4
    )
    np.testing.assert_allclose(
        compiled.transform(X), eager.transform(X), rtol=1e-4, atol=1e-5
    )
    again = pickle.loads(pickle.dumps(compiled))
    assert "_compiled_module" not in again.__dict__
    np.testing.assert_array_equal(again.transform(X), compiled.transform(X))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"precision": "fp8"}, "precision"),
        ({"memory_format": "nhwc"}, "memory_format"),
        ({"compile": "yes"}, "compile"),
    ],
)
def test_bad_speed_parameters(data, params, match):
    X, age = data
    with pytest.raises(ValueError, match=match):
        YAwarePretrainer(**TINY, **params).fit(X, age)
