"""Losses and kernels against naive references and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sklearn_cl3d.losses import (
    NTXentLoss,
    YAwareLoss,
    delta_kernel,
    discrete_kernel,
    get_kernel,
    kernel_infonce,
    laplacian_kernel,
    nt_xent,
    partner_weights,
    product_kernel,
    rbf_kernel,
    yaware_infonce,
)

# ---------------------------------------------------------------- references


def naive_yaware(z1, z2, y, sigma, tau, normalization="official"):
    """Double loop in float64 following the official steps one by one."""
    z1 = np.asarray(z1, dtype=np.float64)
    z2 = np.asarray(z2, dtype=np.float64)
    n = len(z1)
    u = np.concatenate([z1, z2])
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    yy = np.concatenate([np.asarray(y, float).reshape(n, -1)] * 2)

    def k(a, b):
        return math.exp(-float(np.sum((yy[a] - yy[b]) ** 2)) / (2 * sigma**2))

    total = 0.0
    for a in range(2 * n):
        denom = sum(math.exp(u[a] @ u[c] / tau) for c in range(2 * n) if c != a)
        for b in range(2 * n):
            if b == a:
                continue
            if normalization == "official":
                mass = sum(k(c, b) for c in range(2 * n) if c != b)
            else:
                mass = sum(k(a, c) for c in range(2 * n) if c != a)
            log_p = u[a] @ u[b] / tau - math.log(denom)
            total -= k(a, b) / mass * log_p
    return total / n


def reference_ntxent(z1, z2, tau):
    """The official NTXenLoss shape: CE per view over [cross block, own block]."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    s11 = (z1 @ z1.T / tau).masked_fill(eye, -torch.inf)
    s22 = (z2 @ z2.T / tau).masked_fill(eye, -torch.inf)
    s12 = z1 @ z2.T / tau
    target = torch.arange(n)
    loss_i = F.cross_entropy(torch.cat([s12, s11], dim=1), target)
    loss_j = F.cross_entropy(torch.cat([s12.T, s22], dim=1), target)
    return loss_i + loss_j


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------ hand-computed


@pytest.mark.parametrize("sigma", [0.1, 1.0, 1e6])
def test_all_equal_embeddings_give_2_ln_3(sigma):
    z = torch.ones(2, 5)
    loss = yaware_infonce(z, z, [20.0, 31.0], sigma=sigma, temperature=1.0)
    assert loss.item() == pytest.approx(2 * math.log(3), rel=1e-6)


def test_orthogonal_micro_case_by_hand():
    z = torch.eye(2, 3)
    # every anchor: partner at similarity 1, two others at 0 -> l = 1 - ln(e + 2)
    expected = 2 * (math.log(math.e + 2) - 1)
    assert nt_xent(z, z, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_single_pair_has_zero_loss():
    z1, z2 = torch.randn(1, 4), torch.randn(1, 4)
    assert nt_xent(z1, z2).item() == pytest.approx(0.0, abs=1e-7)
    assert yaware_infonce(z1, z2, [3.0]).item() == pytest.approx(0.0, abs=1e-7)


# ------------------------------------------------------------ naive reference


@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (9, 4)])
@pytest.mark.parametrize("sigma", [0.5, 5.0])
@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("normalization", ["official", "row"])
def test_yaware_matches_naive(rng, n, d, sigma, tau, normalization):
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    y = rng.uniform(20, 30, size=n)
    ours = yaware_infonce(
        torch.tensor(z1),
        torch.tensor(z2),
        y,
        sigma=sigma,
        temperature=tau,
        normalization=normalization,
    )
    assert ours.dtype == torch.float64
    ref = naive_yaware(z1, z2, y, sigma, tau, normalization)
    assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_multicolumn_metadata_uses_euclidean_distance(rng):
    z1, z2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    y = rng.normal(size=(6, 3))
    ours = yaware_infonce(torch.tensor(z1), torch.tensor(z2), y, sigma=1.3)
    assert ours.item() == pytest.approx(naive_yaware(z1, z2, y, 1.3, 0.1), rel=1e-10)


def test_row_and_official_normalizations_differ_with_unequal_masses():
    torch.manual_seed(0)
    z1, z2 = (
        torch.randn(4, 8, dtype=torch.float64),
        torch.randn(4, 8, dtype=torch.float64),
    )
    y = [20.0, 21.0, 21.0, 60.0]  # unequal kernel masses
    a = yaware_infonce(z1, z2, y, sigma=1.0, normalization="official")
    b = yaware_infonce(z1, z2, y, sigma=1.0, normalization="row")
    assert abs(a.item() - b.item()) > 1e-3
    # equal masses (all labels equal): both normalizations agree
    same = [40.0] * 4
    a = yaware_infonce(z1, z2, same, sigma=1.0, normalization="official")
    b = yaware_infonce(z1, z2, same, sigma=1.0, normalization="row")
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_ntxent_matches_official_cross_entropy_form():
    torch.manual_seed(1)
    z1, z2 = (
        torch.randn(7, 5, dtype=torch.float64),
        torch.randn(7, 5, dtype=torch.float64),
    )
    for tau in (0.07, 0.1, 1.0):
        ours = nt_xent(z1, z2, temperature=tau)
        assert ours.item() == pytest.approx(
            reference_ntxent(z1, z2, tau).item(), rel=1e-12
        )


# ------------------------------------------------------------------- limits


def test_small_sigma_distinct_labels_is_simclr():
    torch.manual_seed(2)
    z1, z2 = (
        torch.randn(6, 8, dtype=torch.float64),
        torch.randn(6, 8, dtype=torch.float64),
    )
    y = np.array([20.0, 21.5, 23.0, 40.0, 55.0, 70.0])  # gaps >= 1.5
    ours = yaware_infonce(z1, z2, y, sigma=1e-3)
    assert ours.item() == pytest.approx(nt_xent(z1, z2).item(), rel=1e-12)


def test_small_sigma_with_ties_is_not_simclr():
    torch.manual_seed(3)
    z1, z2 = (
        torch.randn(6, 8, dtype=torch.float64),
        torch.randn(6, 8, dtype=torch.float64),
    )
    y = np.array([20.0, 20.0, 30.0, 30.0, 30.0, 70.0])
    ours = yaware_infonce(z1, z2, y, sigma=1e-3).item()
    assert abs(ours - nt_xent(z1, z2).item()) > 0.1
    # the tied samples are mutual positives: equals the naive loss with ties
    assert ours == pytest.approx(naive_yaware(z1, z2, y, 1e-3, 0.1), rel=1e-10)


def test_large_sigma_weights_every_other_sample_equally():
    torch.manual_seed(4)
    z1, z2 = (
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(5, 3, dtype=torch.float64),
    )
    ours = yaware_infonce(z1, z2, np.arange(5.0), sigma=1e9)
    uniform = kernel_infonce(z1, z2, torch.ones(10, 10, dtype=torch.float64))
    assert ours.item() == pytest.approx(uniform.item(), rel=1e-12)


# ------------------------------------------------------------ numerics, API


def test_gradcheck_float64():
    torch.manual_seed(5)
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([20.0, 25.0, 25.0, 60.0], dtype=torch.float64)
    for norm in ("official", "row"):
        assert torch.autograd.gradcheck(
            lambda a, b, norm=norm: yaware_infonce(
                a, b, y, sigma=5.0, temperature=0.5, normalization=norm
            ),
            (z1, z2),
        )
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_finite_loss_and_grad(dtype):
    torch.manual_seed(6)
    z1 = torch.randn(8, 16).to(dtype).requires_grad_()
    z2 = torch.randn(8, 16).to(dtype).requires_grad_()
    loss = yaware_infonce(z1, z2, torch.linspace(20, 80, 8), temperature=0.05)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    ref = yaware_infonce(
        z1.detach().float(),
        z2.detach().float(),
        torch.linspace(20, 80, 8),
        temperature=0.05,
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_numpy_and_torch_metadata_agree():
    torch.manual_seed(7)
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    y = np.array([1.0, 2.0, 4.0, 8.0])
    a = yaware_infonce(z1, z2, y, sigma=2.0)
    b = yaware_infonce(z1, z2, torch.tensor(y, dtype=torch.float32), sigma=2.0)
    c = yaware_infonce(z1, z2, [1, 2, 4, 8], sigma=2.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert a.item() == pytest.approx(c.item(), rel=1e-6)


def test_metadata_gets_no_gradient():
    z1 = torch.randn(3, 2, requires_grad=True)
    y = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    yaware_infonce(z1, z1.detach(), y).backward()
    assert y.grad is None and z1.grad is not None


def test_modules_match_functions():
    torch.manual_seed(8)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.arange(5.0)
    crit = YAwareLoss(sigma=2.0, temperature=0.2, normalization="row")
    assert (
        crit(z1, z2, y).item()
        == yaware_infonce(
            z1, z2, y, sigma=2.0, temperature=0.2, normalization="row"
        ).item()
    )
    assert NTXentLoss(0.2)(z1, z2).item() == nt_xent(z1, z2, 0.2).item()
    with pytest.raises(ValueError, match="metadata"):
        crit(z1, z2, None)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"kernel": "cosine"}, "kernel"),
        ({"normalization": "column"}, "normalization"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match):
    z = torch.randn(3, 2)
    with pytest.raises(ValueError, match=match):
        yaware_infonce(z, z, [1.0, 2.0, 3.0], **kwargs)
    with pytest.raises(ValueError, match=match):
        YAwareLoss(**kwargs)


def test_bad_shapes_raise_value_error():
    z = torch.randn(3, 2)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z, torch.randn(4, 2))
    with pytest.raises(ValueError, match="one row per sample"):
        yaware_infonce(z, z, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"\(2N, 2N\)"):
        kernel_infonce(z, z, torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nt_xent(torch.randn(3), torch.randn(3))
    with pytest.raises(TypeError, match="numbers"):
        yaware_infonce(z, z, ["a", "b", "c"])


def test_zero_weight_column_gives_no_nan():
    z = torch.randn(2, 3)
    w = torch.zeros(4, 4)
    w[0, 2] = w[2, 0] = 1.0  # samples 1 / 3 get no positives at all
    assert torch.isfinite(kernel_infonce(z, z, w))


# ------------------------------------------------------------------ kernels


def test_rbf_and_laplacian_match_formulas(rng):
    from sklearn.metrics.pairwise import manhattan_distances, rbf_kernel as sk_rbf

    y = rng.normal(size=(6, 2))
    np.testing.assert_allclose(
        rbf_kernel(y, sigma=1.7).numpy(), sk_rbf(y, gamma=1 / (2 * 1.7**2)), rtol=1e-12
    )
    np.testing.assert_allclose(
        laplacian_kernel(y, sigma=0.8).numpy(),
        np.exp(-manhattan_distances(y) / (2 * 0.8**2)),
        rtol=1e-12,
    )
    y2 = rng.normal(size=(3, 2))
    assert rbf_kernel(y, y2, sigma=1.0).shape == (6, 3)


def test_delta_discrete_and_product_kernels():
    labels = [0, 1, 1, 2]
    np.testing.assert_array_equal(
        delta_kernel(labels).numpy(),
        (np.array(labels)[:, None] == labels).astype(float),
    )
    assert discrete_kernel([0, 1, 2]).tolist() == [
        [1.0, 0.5, 0.0],
        [0.5, 1.0, 0.5],
        [0.0, 0.5, 1.0],
    ]
    pos = [0.0, 0.1, 0.1, 0.9]
    prod = product_kernel([("delta", {}), ("rbf", {"sigma": 0.5})])
    expected = delta_kernel(labels) * rbf_kernel(pos, sigma=0.5)
    torch.testing.assert_close(prod([labels, pos]), expected)
    # a None metadata drops that factor
    torch.testing.assert_close(prod([None, pos]), rbf_kernel(pos, sigma=0.5))
    with pytest.raises(ValueError, match="one per kernel"):
        prod([labels])


def test_partner_weights_and_kernel_lookup():
    w = partner_weights(3)
    assert w.sum().item() == 6 and w[0, 3] == 1 and w[4, 1] == 1
    assert get_kernel("gaussian") is rbf_kernel
    with pytest.raises(ValueError, match="kernel"):
        get_kernel("nope")


def test_callable_kernel_is_used():
    calls = []

    def my_kernel(a, b, *, sigma):
        calls.append(sigma)
        return torch.ones(a.shape[0], b.shape[0], dtype=a.dtype)

    z1, z2 = torch.randn(3, 2), torch.randn(3, 2)
    ours = yaware_infonce(z1, z2, [1.0, 2.0, 3.0], sigma=2.5, kernel=my_kernel)
    assert calls == [2.5]
    uniform = kernel_infonce(z1, z2, torch.ones(6, 6))
    assert ours.item() == pytest.approx(uniform.item(), rel=1e-6)
