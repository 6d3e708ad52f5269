"""CUDA behaviour (skipped on machines without a GPU, e.g. CI)."""

import pickle

import numpy as np
import pytest
import torch

from sklearn_cl3d import SimCLRPretrainer, YAwarePretrainer
from sklearn_cl3d.losses import nt_xent, yaware_infonce

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

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


def _data(n=24, size=12):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 1, size, size, size)).astype("float32"), rng.uniform(
        20, 80, n
    )


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
    gpu = yaware_infonce(z1.cuda(), z2.cuda(), age.cuda())
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-10)


@pytest.mark.parametrize("cls", [YAwarePretrainer, SimCLRPretrainer])
def test_auto_device_trains_on_cuda(cls):
    X, age = _data()
    est = cls(**TINY).fit(X, age)
    assert est.device_ == "cuda" and est.get_params()["device"] == "auto"
    assert next(est.module_.parameters()).is_cuda
    Z = est.transform(X)
    assert isinstance(Z, np.ndarray) and Z.dtype == np.float32 and np.isfinite(Z).all()
    loaded = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(loaded.transform(X), Z, rtol=1e-5, atol=1e-5)


def test_cuda_runs_are_seeded():
    X, age = _data()
    a = YAwarePretrainer(**TINY).fit(X, age).transform(X)
    b = YAwarePretrainer(**TINY).fit(X, age).transform(X)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
