"""WSP loss against a naive reference and its ablation limits."""

import math

import numpy as np
import pytest
import torch

from sklearn_cl3d.losses import (
    WSPLoss,
    distance_kernel,
    kernel_infonce,
    nt_xent,
    wsp_infonce,
    yaware_infonce,
)


def naive_wsp(z1, z2, labels, pos, sigma, tau, kernel="rbf"):
    """Double loop in float64 following the spec's WSP formula."""
    z1, z2 = np.asarray(z1, float), np.asarray(z2, float)
    n = len(z1)
    u = np.concatenate([z1, z2])
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    lab = np.concatenate([labels, labels])
    d = np.concatenate([np.asarray(pos, float).reshape(n, -1)] * 2)

    def w(a, b):
        if lab[a] != lab[b]:
            return 0.0
        if kernel == "rbf":
            return math.exp(-np.sum((d[a] - d[b]) ** 2) / (2 * sigma**2))
        if kernel == "laplacian":
            return math.exp(-np.sum(np.abs(d[a] - d[b])) / (2 * sigma**2))
        dist = math.sqrt(np.sum((d[a] - d[b]) ** 2))
        if kernel == "distance":
            return math.exp(-dist)
        return 1.0 if dist == 0 else 0.5 if dist == 1 else 0.0

    total = 0.0
    for t in range(2 * n):
        denom = sum(math.exp(u[t] @ u[k] / tau) for k in range(2 * n) if k != t)
        for j in range(2 * n):
            if j == t:
                continue
            col = sum(w(k, j) for k in range(2 * n) if k != j)
            total -= w(t, j) / col * (u[t] @ u[j] / tau - math.log(denom))
    return total / n


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    n = 8
    z1 = torch.tensor(rng.normal(size=(n, 5)))
    z2 = torch.tensor(rng.normal(size=(n, 5)))
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    pos = np.array([0.0, 0.1, 0.1, 0.35, 0.5, 0.0, 0.9, 0.8])
    return z1, z2, labels, pos


@pytest.mark.parametrize("kernel", ["rbf", "laplacian"])
@pytest.mark.parametrize("sigma", [0.2, 0.85])
def test_matches_naive_reference(batch, kernel, sigma):
    z1, z2, labels, pos = batch
    ours = wsp_infonce(z1, z2, labels, pos, sigma=sigma, kernel=kernel)
    ref = naive_wsp(z1, z2, labels, pos, sigma, 0.1, kernel)
    assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_discrete_kernel_on_integer_positions(batch):
    z1, z2, labels, _ = batch
    pos = np.array([0, 1, 1, 2, 3, 0, 5, 1])
    ours = wsp_infonce(z1, z2, labels, pos, kernel="discrete")
    assert ours.item() == pytest.approx(
        naive_wsp(z1, z2, labels, pos, 1.0, 0.1, "discrete"), rel=1e-10
    )


@pytest.mark.parametrize("sigma", [0.2, 0.85, math.inf])
def test_distance_kernel_matches_naive_reference(batch, sigma):
    # exp(-||d - d'||) has no width: every sigma (inf included) gives the
    # naive value
    z1, z2, labels, pos = batch
    ours = wsp_infonce(z1, z2, labels, pos, sigma=sigma, kernel="distance")
    ref = naive_wsp(z1, z2, labels, pos, None, 0.1, "distance")
    assert ours.item() == pytest.approx(ref, rel=1e-10)
    assert WSPLoss(kernel="distance")(z1, z2, labels, pos).item() == pytest.approx(
        ref, rel=1e-10
    )
    # the kernel matters: not the rbf value, not the label-only value
    assert ours.item() != pytest.approx(
        wsp_infonce(z1, z2, labels, pos).item(), rel=1e-6
    )
    assert ours.item() != pytest.approx(
        wsp_infonce(z1, z2, labels, None).item(), rel=1e-6
    )


def test_distance_kernel_on_vector_positions(batch):
    z1, z2, labels, _ = batch
    rng = np.random.default_rng(1)
    pos = rng.uniform(size=(len(z1), 3))
    ours = wsp_infonce(z1, z2, labels, pos, kernel="distance")
    ref = naive_wsp(z1, z2, labels, pos, None, 0.1, "distance")
    assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_distance_kernel_values_by_hand():
    K = distance_kernel([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    expected = [
        [1.0, math.exp(-5.0), math.exp(-1.0)],
        [math.exp(-5.0), 1.0, math.exp(-math.sqrt(18.0))],
        [math.exp(-1.0), math.exp(-math.sqrt(18.0)), 1.0],
    ]
    np.testing.assert_allclose(K.numpy(), expected, rtol=1e-12)
    # the Euclidean distance, not its square: 1-D positions 0 and 2 give e^-2
    assert distance_kernel([0.0], [2.0]).item() == pytest.approx(math.exp(-2.0))


def test_distance_kernel_hand_computed_loss():
    # Two slices of one label at positions 0 and 0.5, orthogonal embeddings,
    # identical views, temperature 1. Every anchor sees its partner
    # (similarity 1, weight 1) and two others (similarity 0, weight
    # a = exp(-0.5)); every column of W sums to 1 + 2a, so each anchor
    # contributes log(2 + e) - 1 / (1 + 2a) and the loss (4 anchors / N = 2)
    # is twice that.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    a = math.exp(-0.5)
    expected = 2 * (math.log(2 + math.e) - 1 / (1 + 2 * a))
    loss = wsp_infonce(z, z, [0, 0], [0.0, 0.5], temperature=1.0, kernel="distance")
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # the rbf kernel at sigma 1 weighs the other slice exp(-0.125) instead
    b = math.exp(-0.125)
    rbf = wsp_infonce(z, z, [0, 0], [0.0, 0.5], temperature=1.0, sigma=1.0)
    assert rbf.item() == pytest.approx(
        2 * (math.log(2 + math.e) - 1 / (1 + 2 * b)), rel=1e-12
    )


def test_all_labels_distinct_is_ntxent(batch):
    z1, z2, _, pos = batch
    distinct = np.arange(len(z1))
    ours = wsp_infonce(z1, z2, distinct, pos, sigma=0.5)
    assert ours.item() == pytest.approx(nt_xent(z1, z2).item(), rel=1e-12)
    assert wsp_infonce(z1, z2).item() == pytest.approx(nt_xent(z1, z2).item())


def test_all_labels_equal_is_yaware_on_positions(batch):
    z1, z2, _, pos = batch
    same = np.zeros(len(z1), dtype=int)
    ours = wsp_infonce(z1, z2, same, pos, sigma=0.3)
    assert ours.item() == pytest.approx(
        yaware_infonce(z1, z2, pos, sigma=0.3).item(), rel=1e-12
    )
    only_pos = wsp_infonce(z1, z2, None, pos, sigma=0.3)
    assert only_pos.item() == pytest.approx(ours.item(), rel=1e-12)


def test_label_only_ablations_agree(batch):
    z1, z2, labels, pos = batch
    lab2 = np.concatenate([labels, labels])
    delta = torch.tensor((lab2[:, None] == lab2[None, :]).astype(float))
    expected = kernel_infonce(z1, z2, delta).item()
    assert wsp_infonce(z1, z2, labels, None).item() == pytest.approx(expected)
    assert wsp_infonce(z1, z2, labels, pos, sigma=math.inf).item() == pytest.approx(
        expected
    )


def test_tied_positions_stay_positives_with_tiny_sigma(batch):
    z1, z2, _, _ = batch
    same = np.zeros(len(z1), dtype=int)
    tied = np.array([0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95])
    assert (
        abs(wsp_infonce(z1, z2, same, tied, sigma=1e-4).item() - nt_xent(z1, z2).item())
        > 1e-3
    )


def test_hand_case_all_equal_embeddings():
    z = torch.ones(2, 3)
    loss = wsp_infonce(z, z, [0, 0], [0.1, 0.7], temperature=1.0)
    assert loss.item() == pytest.approx(2 * math.log(3), rel=1e-6)


def test_gradcheck_and_half_precision(batch):
    z1, z2, labels, pos = batch
    a = z1[:4].clone().requires_grad_()
    b = z2[:4].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: wsp_infonce(x, y, labels[:4], pos[:4], temperature=0.5), (a, b)
    )
    h = wsp_infonce(z1.half(), z2.half(), labels, pos)
    assert torch.isfinite(h)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"temperature": 0.0}, "temperature"),
        ({"kernel": "delta"}, "kernel"),
        ({"normalization": "col"}, "normalization"),
    ],
)
def test_bad_parameters(batch, kwargs, match):
    z1, z2, labels, pos = batch
    with pytest.raises(ValueError, match=match):
        wsp_infonce(z1, z2, labels, pos, **kwargs)


def test_bad_shapes(batch):
    z1, z2, labels, pos = batch
    with pytest.raises(ValueError, match="labels"):
        wsp_infonce(z1, z2, labels[:3], pos)
    with pytest.raises(ValueError, match="positions"):
        wsp_infonce(z1, z2, labels, pos[:3])
