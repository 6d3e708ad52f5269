"""DrasCLR building blocks: landmarks, location-routed CondConv and the loss,
against naive references and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sklearn_cl3d.data import landmark_locations, landmark_neighbors, make_landmarks
from sklearn_cl3d.losses import DrasCLRLoss, drasclr_loss
from sklearn_cl3d.nn import CondConv3d
from sklearn_cl3d.nn.functional import cond_conv3d, routing_gates

# ---------------------------------------------------------------- references


def naive_landmarks(mask, patch, stride, frac):
    """The official nested loops, one window at a time."""
    out = []
    sx, sy, sz = mask.shape
    for x in range(0, sx - patch, stride):
        for y in range(0, sy - patch, stride):
            for z in range(0, sz - patch, stride):
                window = mask[x : x + patch, y : y + patch, z : z + patch]
                if (window > 0).sum() > frac * patch**3:
                    out.append([x, y, z])
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def naive_neighbors(points, k):
    """Python sort of every row by (distance, index), self excluded."""
    points = np.asarray(points, dtype=np.float64)
    rows = []
    for j in range(len(points)):
        cands = [
            (math.dist(points[j], points[i]), i) for i in range(len(points)) if i != j
        ]
        rows.append([i for _, i in sorted(cands)[:k]])
    return np.array(rows)


def naive_cond_conv(x, loc, weight, bias, a, c, stride, padding):
    """The official per-sample loop: gates, mixed kernel, one conv per sample."""
    outs = []
    for b in range(x.shape[0]):
        gates = [torch.sigmoid((a[e] * loc[b]).sum() + c[e]) for e in range(len(a))]
        kernel = sum(g * w for g, w in zip(gates, weight))
        outs.append(F.conv3d(x[b : b + 1], kernel, bias, stride, padding))
    return torch.cat(outs)


def naive_drasclr(q, k, nb, queue, tau, beta):
    """Float64 loops: MoCo cross-entropy at index 0 for the two anchors."""
    q, k, nb, queue = (np.asarray(t, dtype=np.float64) for t in (q, k, nb, queue))

    def unit(v):
        return v / max(np.linalg.norm(v), 1e-12)

    def ce(anchor, key):
        logits = [anchor @ key / tau] + [
            anchor @ queue[:, m] / tau for m in range(queue.shape[1])
        ]
        top = max(logits)
        return top + math.log(sum(math.exp(v - top) for v in logits)) - logits[0]

    local = ngb = 0.0
    for i in range(len(q)):
        key = unit(k[i])
        local += ce(unit(q[i]), key)
        s = sum(unit(nb[i, r]) for r in range(nb.shape[1]))
        ngb += ce(s, key)
    local, ngb = local / len(q), ngb / len(q)
    return local, ngb, local + beta * ngb


# ------------------------------------------------------------------ landmarks


def test_box_mask_corners_by_hand():
    mask = np.zeros((90, 90, 90), dtype=np.uint8)
    mask[:30] = 100  # labels > 0 count as inside
    # starts on every axis: range(0, 90 - 32, 26) = 0, 26, 52
    # axis 0: [0, 32) has 30/32 inside; [26, 58) 4/32 = 0.125; [52, 84) none
    expected = np.array(
        [[x, y, z] for x in (0, 26) for y in (0, 26, 52) for z in (0, 26, 52)]
    )
    got = make_landmarks(mask)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    # one slice fewer: the 26-window holds 3/32 = 0.094 <= 0.1 and is dropped
    mask[29] = 0
    np.testing.assert_array_equal(make_landmarks(mask), expected[:9])


def test_window_flush_with_border_is_not_used():
    # 84 - 32 = 52 is excluded from range(0, 52, 26): starts are 0 and 26 only
    got = make_landmarks(np.ones((84, 84, 84), dtype=bool))
    expected = [[x, y, z] for x in (0, 26) for y in (0, 26) for z in (0, 26)]
    np.testing.assert_array_equal(got, expected)
    # an axis as long as the patch gives no window at all
    assert make_landmarks(np.ones((32, 40, 40))).shape == (0, 3)


def test_exact_fraction_is_not_kept():
    assert 0.1 * 10**3 == 100.0  # the threshold is exactly 100 voxels
    mask = np.zeros((21, 11, 11))
    mask[0, :10, :10] = 1  # window at 0: exactly 100 / 1000 = 10 %
    mask[10, :10, :10] = 1
    mask[11, 0, 0] = 1  # window at 10: 101 / 1000
    got = make_landmarks(mask, patch_size=10, stride=10, min_fraction=0.1)
    np.testing.assert_array_equal(got, [[10, 0, 0]])


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.45])
def test_landmarks_match_naive_loops(frac):
    rng = np.random.default_rng(0)
    mask = rng.random((20, 23, 17)) < 0.4
    mask[:, :8] = False
    got = make_landmarks(mask, patch_size=5, stride=4, min_fraction=frac)
    np.testing.assert_array_equal(got, naive_landmarks(mask, 5, 4, frac))
    assert len(got) > 0


def test_max_landmarks_raises_the_threshold_like_the_script():
    # three disjoint windows on axis 0 with 5/32, 12/32 and 18/32 inside
    mask = np.zeros((97, 33, 33))
    mask[0:5, :32, :32] = 1
    mask[32:44, :32, :32] = 1
    mask[64:82, :32, :32] = 1
    all3 = make_landmarks(mask, stride=32)
    np.testing.assert_array_equal(all3, [[0, 0, 0], [32, 0, 0], [64, 0, 0]])
    # 0.1 -> 3 and 0.2 -> 2 are too many; 0.3 -> 2 too; 0.4 -> 1 passes
    got = make_landmarks(mask, stride=32, max_landmarks=2)
    np.testing.assert_array_equal(got, [[64, 0, 0]])
    # one window still passes every threshold up to 0.5, none passes 0.6
    assert make_landmarks(mask, stride=32, max_landmarks=1).shape == (0, 3)
    full = np.ones((97, 33, 33))
    assert make_landmarks(full, stride=32, max_landmarks=3).shape == (0, 3)


def test_make_landmarks_validation():
    with pytest.raises(ValueError, match="mask"):
        make_landmarks(np.ones((40, 40)))
    with pytest.raises(ValueError, match="patch_size"):
        make_landmarks(np.ones((40, 40, 31)))
    with pytest.raises(ValueError, match="min_fraction"):
        make_landmarks(np.ones((40, 40, 40)), min_fraction=1.0)
    with pytest.raises(ValueError, match="stride"):
        make_landmarks(np.ones((40, 40, 40)), stride=0)
    with pytest.raises(TypeError, match="patch_size"):
        make_landmarks(np.ones((40, 40, 40)), patch_size=3.0)


# ----------------------------------------------------------------- neighbours


def test_neighbor_ties_go_to_lower_index():
    pts = np.array([[26, 26, 26], [0, 26, 26], [52, 26, 26], [26, 0, 26], [26, 52, 26]])
    # landmark 0 has four neighbours at exactly 26; landmark 1 has 0 at 26 and
    # 3, 4 at 26*sqrt(2) before 2 at 52
    np.testing.assert_array_equal(
        landmark_neighbors(pts, k=2), [[1, 2], [0, 3], [0, 3], [0, 1], [0, 1]]
    )
    np.testing.assert_array_equal(landmark_neighbors(pts, k=4)[1], [0, 3, 4, 2])


def test_neighbors_exclude_self_even_with_duplicates():
    pts = np.array([[0, 0, 0], [5, 5, 5], [0, 0, 0]])
    np.testing.assert_array_equal(landmark_neighbors(pts, k=1), [[2], [0], [0]])


def test_neighbors_match_naive_sort_and_are_deterministic():
    rng = np.random.default_rng(1)
    grid = np.array([[x, y, z] for x in range(5) for y in range(4) for z in range(3)])
    pts = grid[rng.permutation(len(grid))[:40]] * 26
    got = landmark_neighbors(pts, k=3)
    assert got.shape == (40, 3) and got.dtype == np.int64
    np.testing.assert_array_equal(got, naive_neighbors(pts, 3))
    np.testing.assert_array_equal(got, landmark_neighbors(pts, k=3))
    np.testing.assert_array_equal(got, landmark_neighbors(pts.astype(float), k=3))
    # same as a stable argsort of the distance rows, self dropped first
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    stable = np.argsort(dist, axis=1, kind="stable")[:, 1:4]
    np.testing.assert_array_equal(got, stable)


def test_neighbors_validation():
    pts = np.zeros((3, 3), dtype=int) + np.arange(3)[:, None]
    with pytest.raises(ValueError, match="k must be smaller"):
        landmark_neighbors(pts, k=3)
    with pytest.raises(ValueError, match="k"):
        landmark_neighbors(pts, k=0)
    with pytest.raises(ValueError, match="landmarks"):
        landmark_neighbors(np.zeros((3, 2)), k=1)


def test_landmark_locations():
    pts = np.array([[26, 78, 0], [312, 286, 286], [156, 130, 143]])
    got = landmark_locations(pts)
    expected = pts / pts.max(0) * 2 - 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=0)
    assert got[0, 0] == pytest.approx(26 / 312 * 2 - 1)  # -0.833 as in DrasCLR
    assert got.dtype == np.float64 and got.max() == 1.0
    with pytest.raises(ValueError, match="positive maximum"):
        landmark_locations(np.array([[1, 2, 0], [3, 4, 0]]))
    with pytest.raises(ValueError, match="non-negative"):
        landmark_locations(np.array([[-1, 2, 1], [3, 4, 2]]))


# ------------------------------------------------------------------ CondConv


def _conv_case(seed, batch=3, cin=2, cout=3, experts=4, size=5, bias=True):
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=torch.float64, generator=g)
    x = torch.randn(batch, cin, size, size, size, **kw)
    loc = torch.rand(batch, 3, **kw) * 2 - 1
    weight = torch.randn(experts, cout, cin, 3, 3, 3, **kw)
    b = torch.randn(cout, **kw) if bias else None
    a = torch.randn(experts, 3, **kw)
    c = torch.randn(experts, **kw)
    return x, loc, weight, b, a, c


@pytest.mark.parametrize(
    "stride,padding,bias", [(1, 1, True), (2, 1, True), (1, 0, False), (2, 0, True)]
)
def test_cond_conv3d_matches_per_sample_loop(stride, padding, bias):
    args = _conv_case(0, bias=bias)
    tensors = [t.requires_grad_() if t is not None else None for t in args]
    got = cond_conv3d(*tensors, stride=stride, padding=padding)
    ref = naive_cond_conv(*tensors, stride=stride, padding=padding)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    probe = torch.randn(got.shape, dtype=torch.float64)
    leaves = [t for t in tensors if t is not None]
    g_got = torch.autograd.grad((got * probe).sum(), leaves)
    g_ref = torch.autograd.grad((ref * probe).sum(), leaves)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_cond_conv3d_gradcheck_and_gates():
    x, loc, weight, b, a, c = _conv_case(1, batch=2, cin=1, cout=1, experts=2, size=3)
    inputs = [t.requires_grad_() for t in (x, loc, weight, b, a, c)]
    assert torch.autograd.gradcheck(
        lambda *t: cond_conv3d(*t, stride=1, padding=1), inputs
    )
    gates = routing_gates(loc, a, c)
    torch.testing.assert_close(gates, torch.sigmoid(loc @ a.T + c))


def test_cond_conv3d_same_location_equals_plain_conv():
    x, loc, weight, b, a, c = _conv_case(2)
    loc = loc[:1].expand(3, 3)
    g = torch.sigmoid(a @ loc[0] + c)
    kernel = (g[:, None, None, None, None, None] * weight).sum(0)
    torch.testing.assert_close(
        cond_conv3d(x, loc, weight, b, a, c), F.conv3d(x, kernel, b, padding=1)
    )


def test_cond_conv3d_validation():
    x, loc, weight, b, a, c = _conv_case(3)
    with pytest.raises(ValueError, match="x"):
        cond_conv3d(x[0], loc, weight, b, a, c)
    with pytest.raises(ValueError, match="channel"):
        cond_conv3d(x[:, :1], loc, weight, b, a, c)
    with pytest.raises(ValueError, match="locations"):
        cond_conv3d(x, loc[:2], weight, b, a, c)
    with pytest.raises(ValueError, match="routing_weight"):
        cond_conv3d(x, loc, weight, b, a[:2], c[:2])
    with pytest.raises(ValueError, match="bias"):
        cond_conv3d(x, loc, weight, b[:1], a, c)
    with pytest.raises(ValueError, match="routing_bias"):
        cond_conv3d(x, loc, weight, b, a, c[:2])
    with pytest.raises(TypeError, match="locations"):
        cond_conv3d(x, loc.numpy(), weight, b, a, c)


def test_condconv_module_shapes_and_init():
    torch.manual_seed(0)
    conv = CondConv3d(2, 4, n_experts=3, stride=2)
    assert conv.weight.shape == (3, 4, 2, 3, 3, 3)
    assert conv.bias.shape == (4,) and conv.routing.weight.shape == (3, 3)
    bound = 1 / math.sqrt(4 * 2 * 27)
    assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
    x, loc = torch.randn(5, 2, 8, 8, 8), torch.rand(5, 3)
    out = conv(x, loc)
    assert out.shape == (5, 4, 4, 4, 4)
    ref = cond_conv3d(
        x,
        loc,
        conv.weight,
        conv.bias,
        conv.routing.weight,
        conv.routing.bias,
        stride=2,
    )
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert conv.routing.weight.grad is not None
    assert conv(x[:0], loc[:0]).shape == (0, 4, 4, 4, 4)
    plain = CondConv3d(1, 2, kernel_size=1, n_experts=1, padding=0, bias=False)
    assert plain.bias is None and "n_experts=1" in repr(plain)
    assert plain(torch.zeros(2, 1, 3, 3, 3), torch.zeros(2, 3)).shape == (
        2,
        2,
        3,
        3,
        3,
    )


# ---------------------------------------------------------------------- loss


def _loss_case(seed, n=4, r=2, c=5, k=7):
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=torch.float64, generator=g)
    queue = F.normalize(torch.randn(c, k, **kw), dim=0)
    return (
        torch.randn(n, c, **kw),
        torch.randn(n, c, **kw),
        torch.randn(n, r, c, **kw),
        queue,
    )


@pytest.mark.parametrize("r,tau,beta", [(1, 0.2, 1.0), (2, 0.5, 0.3), (3, 1.0, 0)])
def test_drasclr_loss_matches_naive(r, tau, beta):
    q, k, nb, queue = _loss_case(r, r=r)
    got = drasclr_loss(q, k, nb, queue, temperature=tau, beta=beta)
    ref = naive_drasclr(q, k, nb, queue, tau, beta)
    for a, b in zip(got, ref):
        assert float(a) == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_drasclr_loss_hand_case():
    q = torch.tensor([[3.0, 0.0]])
    k = torch.tensor([[0.0, 2.0]])
    nb = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])  # unit sum s = (1, 1)
    queue = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    local, ngb, total = drasclr_loss(q, k, nb, queue, temperature=0.5, beta=0.5)
    # local logits [0, 2, -2]; neighbour logits [2, 2, -2] (s is not rescaled)
    exp_local = math.log(1 + math.exp(2) + math.exp(-2))
    exp_ngb = math.log(2 + math.exp(-4))
    assert float(local) == pytest.approx(exp_local, rel=1e-6)
    assert float(ngb) == pytest.approx(exp_ngb, rel=1e-6)
    assert float(total) == pytest.approx(exp_local + 0.5 * exp_ngb, rel=1e-6)


def test_drasclr_loss_gradients():
    q, k, nb, queue = _loss_case(5, n=3, c=4, k=5)
    for t in (q, k, nb, queue):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: drasclr_loss(a, k, b, queue)[2], (q, nb)
    )
    drasclr_loss(q, k, nb, queue)[2].backward()
    assert k.grad is None and queue.grad is None  # momentum keys, fixed queue
    assert q.grad is not None and nb.grad is not None


def test_drasclr_loss_module_and_dtype():
    q, k, nb, queue = (t.float() for t in _loss_case(6))
    loss = DrasCLRLoss(temperature=0.3, beta=2.0)
    got = loss(q, k, nb, queue)
    ref = drasclr_loss(q, k, nb, queue, temperature=0.3, beta=2.0)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert "beta=2.0" in repr(loss)


def test_drasclr_loss_validation():
    q, k, nb, queue = _loss_case(7)
    with pytest.raises(ValueError, match="temperature"):
        drasclr_loss(q, k, nb, queue, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        drasclr_loss(q, k, nb, queue, temperature=-0.1)
    with pytest.raises(ValueError, match="beta"):
        drasclr_loss(q, k, nb, queue, beta=-1)
    with pytest.raises(ValueError, match="k must"):
        drasclr_loss(q, k[:2], nb, queue)
    with pytest.raises(ValueError, match="neighbors"):
        drasclr_loss(q, k, nb[:, :, :3], queue)
    with pytest.raises(ValueError, match="neighbors"):
        drasclr_loss(q, k, nb[:2], queue)
    with pytest.raises(ValueError, match="neighbors"):
        drasclr_loss(q, k, nb[0], queue)
    with pytest.raises(ValueError, match="queue"):
        drasclr_loss(q, k, nb, queue[:3])
    with pytest.raises(TypeError, match="q"):
        drasclr_loss(q.numpy(), k, nb, queue)
