"""y-Aware metadata kernels with one width per column or a bandwidth matrix."""

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone

from sklearn_cl3d import YAwarePretrainer
from sklearn_cl3d.losses import (
    YAwareLoss,
    check_bandwidth,
    kernel_infonce,
    laplacian_kernel,
    rbf_kernel,
    yaware_infonce,
)
from sklearn_cl3d.losses._kernels import stack_view_metadata


def naive_rbf(y1, y2, sigma):
    """Double loop: exp(-d^T H^-1 d / 2) with H built from sigma."""
    y1, y2 = np.atleast_2d(y1.T).T, np.atleast_2d(y2.T).T
    sigma = np.asarray(sigma, dtype=float)
    k = y1.shape[1]
    if sigma.ndim == 0:
        h = np.eye(k) * sigma**2
    elif sigma.ndim == 1:
        h = np.diag(sigma**2)
    else:
        h = sigma
    h_inv = np.linalg.inv(h)
    out = np.empty((len(y1), len(y2)))
    for i in range(len(y1)):
        for j in range(len(y2)):
            d = y1[i] - y2[j]
            out[i, j] = math.exp(-0.5 * float(d @ h_inv @ d))
    return out


def naive_laplacian(y1, y2, widths):
    out = np.empty((len(y1), len(y2)))
    for i in range(len(y1)):
        for j in range(len(y2)):
            total = 0.0
            for c, s in enumerate(widths):
                total += abs(y1[i, c] - y2[j, c]) / (2 * s * s)
            out[i, j] = math.exp(-total)
    return out


@pytest.fixture
def meta():
    rng = np.random.default_rng(0)
    # age in years and a score on another scale
    return np.column_stack([rng.uniform(20, 80, 7), rng.normal(0, 0.5, 7)])


def random_spd(rng, k, scale):
    a = rng.normal(size=(k, k)) * scale
    return a @ a.T + np.eye(k) * scale**2


# ------------------------------------------------------------ check_bandwidth


def test_check_bandwidth_forms():
    assert check_bandwidth(5) == 5.0
    assert type(check_bandwidth(np.float32(2.5))) is float
    assert check_bandwidth(np.array(3.0)) == 3.0
    np.testing.assert_array_equal(check_bandwidth([5, 2], n_columns=2), [5.0, 2.0])
    h = check_bandwidth([[4.0, 1.0], [1.0, 9.0]], n_columns=2)
    assert h.shape == (2, 2) and h.dtype == np.float64
    assert check_bandwidth(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "sigma, n_columns, error, match",
    [
        (0.0, None, ValueError, "> 0"),
        (-1.0, None, ValueError, "> 0"),
        (float("nan"), None, ValueError, "> 0"),
        (True, None, TypeError, "positive number"),
        ("5", None, TypeError, "positive number"),
        ([5.0, 0.0], None, ValueError, r"every width .* > 0"),
        ([5.0, -1.0], None, ValueError, r"every width .* > 0"),
        ([5.0, np.inf], None, ValueError, "finite"),
        ([], None, ValueError, "at least one"),
        (["a", "b"], None, TypeError, "dtype"),
        ([True, False], None, TypeError, "dtype"),
        ([[1.0, 2.0, 3.0]], None, ValueError, "square"),
        ([[1.0, 0.5], [0.0, 1.0]], None, ValueError, "symmetric"),
        ([[1.0, 2.0], [2.0, 1.0]], None, ValueError, "positive definite"),
        ([[1.0, 0.0], [0.0, 0.0]], None, ValueError, "positive definite"),
        (np.ones((2, 2, 2)), None, ValueError, "shape"),
        ([5.0, 2.0, 1.0], 2, ValueError, "3 widths but the metadata has 2"),
        (np.eye(3), 1, ValueError, "3 rows and columns .* 1 column"),
    ],
)
def test_check_bandwidth_refuses(sigma, n_columns, error, match):
    with pytest.raises(error, match=match):
        check_bandwidth(sigma, n_columns=n_columns)


# ------------------------------------------------------------------ kernels


def test_rbf_per_column_matches_naive(meta):
    widths = [5.0, 0.3]
    ours = rbf_kernel(meta, meta[:4], sigma=widths).numpy()
    np.testing.assert_allclose(ours, naive_rbf(meta, meta[:4], widths), rtol=1e-12)


def test_rbf_bandwidth_matrix_matches_naive(meta):
    rng = np.random.default_rng(1)
    h = np.array([[30.0, 1.5], [1.5, 0.2]])  # correlated age and score
    ours = rbf_kernel(meta, sigma=h).numpy()
    np.testing.assert_allclose(ours, naive_rbf(meta, meta, h), rtol=1e-10)
    y3 = rng.normal(size=(6, 3))
    h3 = random_spd(rng, 3, 0.7)
    np.testing.assert_allclose(
        rbf_kernel(y3, sigma=h3).numpy(), naive_rbf(y3, y3, h3), rtol=1e-10
    )


def test_hand_computed_cases():
    y = np.array([[0.0, 0.0], [1.0, 2.0]])
    # per column: (1/1)^2 + (2/2)^2 = 2 -> exp(-1)
    k = rbf_kernel(y, sigma=[1.0, 2.0])
    assert float(k[0, 1]) == pytest.approx(math.exp(-1.0), rel=1e-15)
    # H = [[2, 1], [1, 2]], d = (1, 1): d^T H^-1 d = 2/3 -> exp(-1/3)
    k = rbf_kernel(np.array([[0.0, 0.0], [1.0, 1.0]]), sigma=[[2.0, 1.0], [1.0, 2.0]])
    assert float(k[0, 1]) == pytest.approx(math.exp(-1.0 / 3.0), rel=1e-14)
    # laplacian per column: |1| / (2 * 1) + |2| / (2 * 4) = 0.75
    k = laplacian_kernel(y, sigma=[1.0, 2.0])
    assert float(k[0, 1]) == pytest.approx(math.exp(-0.75), rel=1e-15)
    # equal metadata weigh exactly 1 whatever the bandwidth
    for sigma in ([1.0, 2.0], [[2.0, 1.0], [1.0, 2.0]]):
        assert torch.equal(torch.diagonal(rbf_kernel(y, sigma=sigma)), torch.ones(2))


def test_forms_agree_with_each_other(meta):
    scalar = rbf_kernel(meta, sigma=2.0)
    torch.testing.assert_close(rbf_kernel(meta, sigma=[2.0, 2.0]), scalar)
    torch.testing.assert_close(rbf_kernel(meta, sigma=np.diag([4.0, 4.0])), scalar)
    widths = np.array([5.0, 0.3])
    torch.testing.assert_close(
        rbf_kernel(meta, sigma=np.diag(widths**2)), rbf_kernel(meta, sigma=widths)
    )
    # one column given as a length-1 vector or a 1 x 1 matrix
    torch.testing.assert_close(
        rbf_kernel(meta[:, 0], sigma=[5.0]), rbf_kernel(meta[:, 0], sigma=5.0)
    )
    torch.testing.assert_close(
        rbf_kernel(meta[:, 0], sigma=[[25.0]]), rbf_kernel(meta[:, 0], sigma=5.0)
    )


def test_per_column_width_separates_the_columns():
    """A width small on one column makes it decisive, large makes it irrelevant."""
    y = np.array([[20.0, 0.0], [20.0, 1.0], [21.0, 0.0]])
    k = rbf_kernel(y, sigma=[1e6, 0.1]).numpy()
    assert k[0, 1] < 1e-10 and k[0, 2] == pytest.approx(1.0)
    k = rbf_kernel(y, sigma=[0.1, 1e6]).numpy()
    assert k[0, 2] < 1e-10 and k[0, 1] == pytest.approx(1.0)


def test_laplacian_per_column_matches_naive(meta):
    widths = [4.0, 0.5]
    np.testing.assert_allclose(
        laplacian_kernel(meta, sigma=widths).numpy(),
        naive_laplacian(meta, meta, widths),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="Gaussian kernel"):
        laplacian_kernel(meta, sigma=np.eye(2))


def test_width_count_must_match_columns(meta):
    with pytest.raises(ValueError, match="3 widths but the metadata has 2"):
        rbf_kernel(meta, sigma=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="3 rows and columns"):
        rbf_kernel(meta, sigma=np.eye(3))
    with pytest.raises(ValueError, match="2 widths but the metadata has 1"):
        laplacian_kernel(meta[:, 0], sigma=[1.0, 2.0])


# ------------------------------------------------------------------- the loss


def test_scalar_sigma_is_the_unchanged_formula():
    """The default scalar path computes exactly the expression it always did."""
    rng = np.random.default_rng(3)
    age = torch.tensor(rng.uniform(20, 80, 10), dtype=torch.float32)
    z1, z2 = torch.randn(10, 6), torch.randn(10, 6)
    y = torch.cat([age, age])[:, None]
    expected = torch.exp(-(y[:, None, :] - y[None, :, :]).pow(2).sum(-1) / 50.0)
    assert torch.equal(rbf_kernel(y, sigma=5.0), expected)
    ref = kernel_infonce(z1, z2, expected, temperature=0.1)
    assert torch.equal(yaware_infonce(z1, z2, age, sigma=5.0), ref)
    assert torch.equal(YAwareLoss(sigma=5.0)(z1, z2, age), ref)


@pytest.mark.parametrize("normalization", ["official", "row"])
def test_yaware_loss_with_bandwidth_matrix_matches_naive(meta, normalization):
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5).double()
    h = np.array([[30.0, 1.5], [1.5, 0.2]])
    weights = torch.as_tensor(naive_rbf(*[np.vstack([meta, meta])] * 2, h))
    ref = kernel_infonce(z1, z2, weights, temperature=0.2, normalization=normalization)
    ours = yaware_infonce(
        z1, z2, meta, sigma=h, temperature=0.2, normalization=normalization
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    crit = YAwareLoss(sigma=h, temperature=0.2, normalization=normalization)
    torch.testing.assert_close(crit(z1, z2, meta), ref, rtol=1e-10, atol=0)
    assert "sigma=" in repr(crit)


def test_callable_kernel_gets_the_validated_widths(meta):
    seen = []

    def kernel(a, b, *, sigma):
        seen.append(sigma)
        return rbf_kernel(a, b, sigma=sigma)

    z = torch.randn(7, 4)
    yaware_infonce(z, z, meta, sigma=[5, 1], kernel=kernel)
    assert isinstance(seen[0], np.ndarray) and seen[0].tolist() == [5.0, 1.0]
    y2 = stack_view_metadata(meta, z)
    assert y2.shape == (14, 2)


# -------------------------------------------------------------- the estimator

TINY = dict(
    backbone="small3d",
    backbone__channels=(2, 4),
    hidden_dim=8,
    projection_dim=4,
    batch_size=6,
    max_epochs=1,
    random_state=0,
    verbose=0,
)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 1, 8, 8, 8)).astype(np.float32)
    meta = np.column_stack([rng.uniform(20, 80, 12), rng.normal(0, 1, 12)])
    return X, meta


@pytest.mark.parametrize("sigma", [[5.0, 0.5], np.array([[25.0, 0.5], [0.5, 0.3]])])
def test_estimator_fits_with_per_column_sigma(volumes, sigma):
    X, meta = volumes
    est = YAwarePretrainer(sigma=sigma, **TINY).fit(X, meta)
    assert est.transform(X).shape[0] == 12
    assert np.array_equal(np.asarray(est.criterion_.sigma), np.asarray(sigma))
    cloned = clone(est)
    assert np.array_equal(np.asarray(cloned.sigma), np.asarray(sigma))


def test_equivalent_sigma_forms_train_alike(volumes):
    X, meta = volumes
    a = YAwarePretrainer(sigma=[5.0, 0.5], **TINY).fit(X, meta)
    b = YAwarePretrainer(sigma=np.diag([25.0, 0.25]), **TINY).fit(X, meta)
    np.testing.assert_allclose(
        a.history[-1]["train_loss"], b.history[-1]["train_loss"], rtol=1e-5
    )


@pytest.mark.parametrize(
    "sigma, kernel, match",
    [
        ([5.0, 1.0, 2.0], "rbf", "3 widths but the metadata has 2 columns"),
        (np.eye(3), "gaussian", "3 rows and columns"),
        ([[1.0, 2.0], [2.0, 1.0]], "rbf", "positive definite"),
        ([[1.0, 0.5], [0.0, 1.0]], "rbf", "symmetric"),
        ([5.0, -1.0], "rbf", "every width"),
        (np.eye(2), "laplacian", "Gaussian kernel"),
        ([0.0], "delta", "every width"),
    ],
)
def test_estimator_refuses_bad_sigma_before_training(volumes, sigma, kernel, match):
    X, meta = volumes
    est = YAwarePretrainer(sigma=sigma, kernel=kernel, **TINY)
    with pytest.raises(ValueError, match=match):
        est.fit(X, meta)
    assert not hasattr(est, "module_")


def test_estimator_per_column_sigma_with_one_column(volumes):
    X, meta = volumes
    with pytest.raises(ValueError, match="2 widths but the metadata has 1 column:"):
        YAwarePretrainer(sigma=[5.0, 1.0], **TINY).fit(X, meta[:, 0])
