"""Global-local losses (Chaitanya et al. 2020) against naive float64 references."""

import math

import numpy as np
import pytest
import torch

from sklearn_cl3d.losses._globallocal import (
    GlobalContrastiveLoss,
    LocalContrastiveLoss,
    global_contrastive_loss,
    local_contrastive_loss,
    local_region_positions,
    official_global_labels,
    official_global_pairs,
    region_weight_from_nhwc,
)
from sklearn_cl3d.losses._pairwise import pairwise_infonce

# ---------------------------------------------------------------- references


def naive_normalize(z):
    z = np.asarray(z, dtype=np.float64)
    sq = np.sum(z * z, axis=-1, keepdims=True)
    return z / np.sqrt(np.maximum(sq, 1e-12))


def naive_term(anchor, positive, negatives, tau):
    """-log(e^{s_ap/tau} / (e^{s_ap/tau} + sum_n e^{s_an/tau})), vectors unit."""
    pos = math.exp(float(anchor @ positive) / tau)
    neg = sum(math.exp(float(anchor @ n) / tau) for n in negatives)
    return -math.log(pos / (pos + neg))


def naive_pairwise(z, pairs, neg_mask, tau, normaliser=None):
    u = naive_normalize(z)
    total = 0.0
    for t, (a, p) in enumerate(pairs):
        negs = [u[n] for n in range(len(u)) if neg_mask[t][n]]
        total += naive_term(u[a], u[p], negs, tau)
    return total / (len(pairs) if normaliser is None else normaliser)


def naive_global(z, vol, part, view, strategy, tau, reduction, cross_views=True):
    """Read the labels row by row and apply the spec's rules literally."""
    u = naive_normalize(z)
    n = len(u)
    total, n_terms = 0.0, 0
    for a in range(n):
        for p in range(n):
            if p == a:
                continue
            same_slice = vol[a] == vol[p] and part[a] == part[p]
            if strategy in ("GR", "GD-"):
                is_pos = same_slice
            else:
                is_pos = part[a] == part[p] and (
                    cross_views or vol[a] == vol[p] or view[a] == view[p]
                )
            if not is_pos:
                continue
            if strategy == "GR":
                negs = [u[c] for c in range(n) if c not in (a, p)]
            else:
                negs = [u[c] for c in range(n) if part[c] != part[a]]
            total += naive_term(u[a], u[p], negs, tau)
            n_terms += 1
    if reduction == "sum":
        return total
    if reduction == "official":
        return total / n
    return total / max(n_terms, 1)


# The spec's table (section 4.1), verbatim: anchor | 3x3 13 | 1x1 13 | 9 anchors.
SPEC_TABLE = """
| 0 | 0b aa ab b0 ba | 0b b0 bb aa ac | 0b b0 bb 0e e0 |
| 1 | 00 0e aa ac bb | 00 0e bb aa ac | 00 0e b0 bb be |
| 2 | 0b ab ac bc be | 0b bb be ca ac | 00 0b bb be ee |
| 3 | 00 aa bb e0 ca | 00 bb e0 aa ca | 00 0b bb e0 eb |
| 4 | aa ac ca cc b0 | aa ac ca cc b0 | 00 0b b0 be eb |
| 5 | 0e bb ee ac cc | 0e bb ee ac cc | 0b 0e bb eb ee |
| 6 | b0 ba eb ca cb | b0 bb eb ca aa | 00 b0 bb eb ee |
| 7 | bb e0 ee ca cc | bb e0 ee ca cc | b0 bb be e0 ee |
| 8 | bc be eb cc cb | bb be eb cc ca | 0e bb be e0 eb |
| 9 | 00 0b b0 bb ac | 00 0b b0 bb ac | – |
| 10 | 0b 0e aa bb be | 0b 0e bb be cc | – |
| 11 | b0 bb e0 eb cc | b0 bb e0 0b aa | – |
| 12 | bb be eb ee ca | bb be eb ee ac | – |
"""
SPEC_ANCHORS = "00 0b 0e b0 bb be e0 eb ee aa ac ca cc".split()


def spec_layout(h, w, region_size, regions, n_neg):
    """Anchor / negative top-left corners read from the spec table."""
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in SPEC_TABLE.strip().splitlines()
    ]
    column = 3 if regions == "official9" else (1 if region_size == 3 else 2)
    n_anchors = 9 if regions == "official9" else 13
    margin = 4 if region_size == 3 else 1

    def coord(sym, size):
        e = size - margin
        return {"0": 0, "a": e // 4, "b": e // 2, "c": 3 * e // 4, "e": e}[sym]

    def pos(code):
        return coord(code[0], h), coord(code[1], w)

    anchors = [pos(code) for code in SPEC_ANCHORS[:n_anchors]]
    negs = [
        [pos(code) for code in rows[r][column].split()[:n_neg]]
        for r in range(n_anchors)
    ]
    return anchors, negs


def naive_local(
    v1,
    v2,
    tau,
    strategy,
    region_size,
    regions,
    n_neg,
    weight_nhwc=None,
    vol=None,
    part=None,
    reduction="official",
):
    """Loop over images, regions and partners on NHWC maps, (dy, dx, c) regions."""
    v1 = np.asarray(v1, dtype=np.float64).transpose(0, 2, 3, 1)  # NHWC
    v2 = np.asarray(v2, dtype=np.float64).transpose(0, 2, 3, 1)
    n, h, w, _ = v1.shape
    k = region_size
    anchors, negs = spec_layout(h, w, region_size, regions, n_neg)

    def region(f, rc):
        r, c = rc
        v = f[r : r + k, c : c + k, :].reshape(-1)  # (dy, dx, c) order
        if weight_nhwc is not None:
            v = v @ weight_nhwc
        return naive_normalize(v)

    def term(f, g, i_reg):
        a = region(f, anchors[i_reg])
        p = region(g, anchors[i_reg])
        negatives = [region(f, q) for q in negs[i_reg]] + [
            region(g, q) for q in negs[i_reg]
        ]
        return naive_term(a, p, negatives, tau)

    n_reg = len(anchors)
    total, n_terms = 0.0, 0
    for i in range(n):
        if strategy == "LR":
            partners = [(v1[i], v2[i]), (v2[i], v1[i])]
        else:
            partners = [(v1[i], v2[i])] + [
                (v1[i], v1[j])
                for j in range(n)
                if part[j] == part[i] and vol[j] != vol[i]
            ]
        for f, g in partners:
            for r in range(n_reg):
                total += term(f, g, r)
                n_terms += 1
    if reduction == "sum":
        return total
    if reduction == "official":
        return total / (2 * n * n_reg)
    return total / n_terms


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------- pairwise_infonce


@pytest.mark.parametrize("normaliser", [None, 7.0])
@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_pairwise_matches_naive(rng, tau, normaliser):
    n, d, t = 9, 5, 14
    z = rng.normal(size=(n, d))
    pairs = rng.integers(0, n, size=(t, 2))
    neg = rng.random((t, n)) < 0.5
    neg[3] = False  # a term without negatives costs 0
    ours = pairwise_infonce(
        t64(z), torch.tensor(pairs), torch.tensor(neg), tau, normaliser
    )
    assert ours.dtype == torch.float64
    ref = naive_pairwise(z, pairs, neg, tau, normaliser)
    assert ours.item() == pytest.approx(ref, rel=1e-10)
    # array-like inputs give the same value
    same = pairwise_infonce(t64(z), pairs.tolist(), neg.tolist(), tau, normaliser)
    assert same.item() == pytest.approx(ours.item(), rel=1e-12)


def test_pairwise_hand_cases():
    # identical rows: every similarity is 1, so each term is log(1 + n_neg)
    z = torch.ones(4, 3)
    pairs = torch.tensor([[0, 1], [2, 3]])
    neg = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    expected = (math.log(3) + math.log(4)) / 2
    loss = pairwise_infonce(z, pairs, neg, temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # orthogonal negative: log(e + 1) - 1, divided by the given normaliser
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    loss = pairwise_infonce(
        z, [[0, 1]], [[False, False, True]], temperature=1.0, normaliser=2
    )
    assert loss.item() == pytest.approx((math.log(math.e + 1) - 1) / 2, rel=1e-6)


# ------------------------------------------------------- global, hand cases


def test_global_gr_orthogonal_slices_by_hand():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    # each anchor: partner at s=1, two other rows at s=0
    loss = global_contrastive_loss(z, [0, 0, 1, 1], strategy="GR", temperature=1.0)
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)


def test_global_gd_minus_by_hand():
    # one volume, 2 partitions, 3 views; partition 0 -> e1, partition 1 -> e2
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 3)
    vol, part = [0] * 6, [0, 1] * 3
    # 12 terms, each log(e + 3) - 1; official divides by the 6 rows
    loss = global_contrastive_loss(z, vol, part, strategy="GD-", temperature=1.0)
    assert loss.item() == pytest.approx(2 * (math.log(math.e + 3) - 1), rel=1e-6)
    mean = global_contrastive_loss(
        z, vol, part, strategy="GD-", temperature=1.0, reduction="mean"
    )
    assert mean.item() == pytest.approx(math.log(math.e + 3) - 1, rel=1e-6)


def test_global_identical_pair_without_negatives_is_zero():
    z = torch.randn(2, 4)
    for strategy in ("GR", "GD-", "GD"):
        loss = global_contrastive_loss(z, [0, 0], [0, 0], strategy=strategy)
        assert loss.item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------- global, naive reference


@pytest.mark.parametrize("strategy", ["GR", "GD-", "GD"])
@pytest.mark.parametrize("reduction", ["official", "mean", "sum"])
def test_global_matches_naive(rng, strategy, reduction):
    n_vol, n_part, n_view = 3, 3, 2
    vol, part, view = (
        a.ravel().tolist()
        for a in np.meshgrid(
            np.arange(n_vol), np.arange(n_part), np.arange(n_view), indexing="ij"
        )
    )
    order = rng.permutation(len(vol))  # rows in any order
    vol, part, view = ([x[i] for i in order] for x in (vol, part, view))
    z = rng.normal(size=(len(vol), 6))
    for tau in (0.1, 0.5):
        ours = global_contrastive_loss(
            t64(z), vol, part, view, strategy, tau, reduction
        )
        ref = naive_global(z, vol, part, view, strategy, tau, reduction)
        assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_global_gd_same_view_matches_naive(rng):
    vol, part, view = official_global_labels("GD", batch_size=8, n_partitions=4)
    z = rng.normal(size=(len(vol), 5))
    vol, part, view = vol.tolist(), part.tolist(), view.tolist()
    ours = global_contrastive_loss(
        t64(z), vol, part, view, "GD", 0.2, "sum", cross_views=False
    )
    ref = naive_global(z, vol, part, view, "GD", 0.2, "sum", cross_views=False)
    assert ours.item() == pytest.approx(ref, rel=1e-10)
    full = global_contrastive_loss(t64(z), vol, part, view, "GD", 0.2, "sum")
    assert full.item() > ours.item()  # cross-view pairs add terms


def test_global_gr_without_partition_uses_volume_as_slice(rng):
    z = t64(rng.normal(size=(6, 3)))
    a = global_contrastive_loss(z, [0, 0, 1, 1, 2, 2], strategy="GR")
    b = global_contrastive_loss(z, [0, 0, 1, 1, 2, 2], [0] * 6, strategy="GR")
    assert a.item() == b.item()


# ------------------------------------------------- official pair lists


def test_official_labels_layouts():
    vol, part, view = official_global_labels("GD", batch_size=12, n_partitions=4)
    assert len(vol) == 48
    assert vol[:16].tolist() == [0] * 8 + [1] * 8
    assert view[:16].tolist() == [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4
    assert vol[16:20].tolist() == [2] * 4 and vol[-1] == 5
    assert (part == torch.arange(48) % 4).all()
    vol, part, view = official_global_labels("GR", batch_size=3)
    assert vol.tolist() == [0, 0, 1, 1, 2, 2] and view.tolist() == [0, 1] * 3
    assert part.tolist() == [0] * 6


def test_official_gd_term_breakdown_matches_spec():
    pairs, neg = official_global_pairs("GD", batch_size=12, n_partitions=4)
    vol, part, view = official_global_labels("GD", batch_size=12, n_partitions=4)
    assert pairs.shape == (192, 2) and neg.shape == (192, 48)
    assert (neg.sum(1) == 36).all()
    a, p = pairs[:, 0], pairs[:, 1]
    assert (part[a] == part[p]).all()
    same_slice = vol[a] == vol[p]
    assert int(same_slice.sum()) == 96
    assert len({tuple(x) for x in pairs[same_slice].tolist()}) == 48
    cross = ~same_slice
    assert (view[a][cross] == view[p][cross]).all()  # no orig <-> aug across
    assert int((cross & (view[a] == 0)).sum()) == 48
    assert int((cross & (view[a] == 1)).sum()) == 48
    # negatives: exactly the rows of other partitions
    assert (neg == (part[None, :] != part[a][:, None])).all()
    # volumes form the cyclic chain A0-B0-A1-B1-A2-B2-A0
    links = {frozenset((int(x), int(y))) for x, y in zip(vol[a][cross], vol[p][cross])}
    assert links == {frozenset((v, (v + 1) % 6)) for v in range(6)}


def test_official_gr_and_gd_minus_counts():
    pairs, neg = official_global_pairs("GR", batch_size=5)
    assert pairs[:4].tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]
    assert (neg.sum(1) == 8).all()
    pairs, neg = official_global_pairs("GD-", batch_size=12, n_partitions=4)
    assert pairs.shape == (72, 2) and (neg.sum(1) == 27).all()
    # the official drops range(w mod S, 3B, 4): the same set for S = 4
    for t, w in enumerate(np.repeat(np.arange(12), 6)):
        dropped = set(range(w % 4, 36, 4))
        assert set(torch.nonzero(~neg[t]).ravel().tolist()) == dropped


@pytest.mark.parametrize("strategy,b,s", [("GR", 4, 4), ("GD-", 12, 4), ("GD-", 6, 3)])
def test_label_mode_equals_official_pairs(rng, strategy, b, s):
    vol, part, view = official_global_labels(strategy, batch_size=b, n_partitions=s)
    z = t64(rng.normal(size=(len(vol), 8)))
    pairs, neg = official_global_pairs(strategy, batch_size=b, n_partitions=s)
    official = pairwise_infonce(z, pairs, neg, 0.1, normaliser=len(z))
    ours = global_contrastive_loss(z, vol, part, view, strategy, 0.1, "official")
    assert ours.item() == pytest.approx(official.item(), rel=1e-10)
    ref = naive_pairwise(z.numpy(), pairs.tolist(), neg.tolist(), 0.1, len(z))
    assert official.item() == pytest.approx(ref, rel=1e-10)


def test_official_gd_single_block_is_twice_label_mode(rng):
    # one block (A_0, B_0): the chain visits every pair twice
    vol, part, view = official_global_labels("GD", batch_size=4, n_partitions=4)
    z = t64(rng.normal(size=(16, 8)))
    pairs, neg = official_global_pairs("GD", batch_size=4, n_partitions=4)
    official = pairwise_infonce(z, pairs, neg, 0.1, normaliser=16)
    ours = global_contrastive_loss(z, vol, part, view, "GD", 0.1, cross_views=False)
    assert official.item() == pytest.approx(2 * ours.item(), rel=1e-10)


def test_official_gd_terms_are_label_positives():
    vol, part, view = official_global_labels("GD", batch_size=16, n_partitions=4)
    pairs, _ = official_global_pairs("GD", batch_size=16, n_partitions=4)
    a, p = pairs[:, 0], pairs[:, 1]
    assert (a != p).all() and (part[a] == part[p]).all()
    assert ((vol[a] == vol[p]) | (view[a] == view[p])).all()


# ------------------------------------------------------------ local positions


def test_local_positions_follow_spec_formulas():
    anchors, negs = local_region_positions(48, 48)
    e, a, b, c = 44, 11, 22, 33
    assert anchors.tolist() == [
        [0, 0], [0, b], [0, e], [b, 0], [b, b], [b, e], [e, 0], [e, b], [e, e],
        [a, a], [a, c], [c, a], [c, c],
    ]  # fmt: skip
    assert negs.shape == (13, 5, 2)
    anchors1, _ = local_region_positions(48, 48, region_size=1)
    assert anchors1[12].tolist() == [35, 35] and anchors1[2].tolist() == [0, 47]
    anchors9, negs9 = local_region_positions(40, 30, regions="official9", n_negatives=4)
    assert anchors9.shape == (9, 2) and negs9.shape == (9, 4, 2)
    assert anchors9[8].tolist() == [36, 26]


@pytest.mark.parametrize("regions", ["official13", "official9"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("hw", [(48, 48), (9, 13), (40, 40)])
def test_local_positions_match_spec_table(regions, k, hw):
    anchors, negs = local_region_positions(*hw, region_size=k, regions=regions)
    ref_anchors, ref_negs = spec_layout(*hw, k, regions, 5)
    assert anchors.tolist() == [list(x) for x in ref_anchors]
    assert negs.tolist() == [[list(x) for x in row] for row in ref_negs]
    # no anchor is its own negative, the 5 negatives are distinct
    for anc, row in zip(anchors.tolist(), negs.tolist()):
        assert anc not in row and len({tuple(x) for x in row}) == 5
    # every region fits in the map
    assert int(torch.cat([anchors, negs.reshape(-1, 2)]).max(0).values[0]) + k <= hw[0]


# ----------------------------------------------------- local loss vs naive


@pytest.mark.parametrize(
    "strategy,k,regions,n_neg,use_w,hw",
    [
        ("LR", 3, "official13", 5, False, (8, 8)),
        ("LR", 3, "official13", 5, True, (10, 12)),
        ("LR", 1, "official13", 3, False, (7, 6)),
        ("LR", 3, "official9", 5, True, (6, 7)),
        ("LD", 3, "official13", 4, True, (9, 8)),
        ("LD", 1, "official9", 5, False, (5, 5)),
        ("LD", 1, "official13", 5, True, (6, 5)),
    ],
)
def test_local_matches_naive(rng, strategy, k, regions, n_neg, use_w, hw):
    n, c = (6, 2) if strategy == "LD" else (2, 3)
    v1 = rng.normal(size=(n, c) + hw)
    v2 = rng.normal(size=(n, c) + hw)
    w_nhwc = rng.normal(size=(k * k * c, 4)) if use_w else None
    weight = region_weight_from_nhwc(t64(w_nhwc), c, k) if use_w else None
    vol, part = [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]  # volume-major, S = 2
    labels = {"volume": vol, "partition": part} if strategy == "LD" else {}
    for reduction in ("official", "mean", "sum"):
        ours = local_contrastive_loss(
            t64(v1),
            t64(v2),
            temperature=0.3,
            strategy=strategy,
            region_size=k,
            regions=regions,
            n_negatives=n_neg,
            weight=weight,
            reduction=reduction,
            **labels,
        )
        assert ours.dtype == torch.float64
        ref = naive_local(
            v1, v2, 0.3, strategy, k, regions, n_neg, w_nhwc, vol, part, reduction
        )
        assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_local_official_ld_layout(rng):
    # 3 volumes x 4 partitions: partners (i + 4) % 12, (i + 8) % 12 and view 2
    v1, v2 = rng.normal(size=(12, 2, 8, 8)), rng.normal(size=(12, 2, 8, 8))
    vol, part = [i // 4 for i in range(12)], [i % 4 for i in range(12)]
    ours = local_contrastive_loss(
        t64(v1), t64(v2), strategy="LD", n_negatives=4, volume=vol, partition=part
    )
    ref = naive_local(v1, v2, 0.1, "LD", 3, "official13", 4, None, vol, part)
    assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_local_hand_cases():
    f = torch.ones(3, 2, 8, 8)
    for n_neg in (1, 5):
        loss = local_contrastive_loss(f, f, temperature=1.0, n_negatives=n_neg)
        assert loss.item() == pytest.approx(math.log(1 + 2 * n_neg), rel=1e-6)
    # official L^D layout: 3 partners per view-1 map, divided by 2N maps
    f = torch.ones(12, 2, 8, 8)
    vol, part = [i // 4 for i in range(12)], [i % 4 for i in range(12)]
    loss = local_contrastive_loss(
        f, f, temperature=1.0, strategy="LD", volume=vol, partition=part
    )
    assert loss.item() == pytest.approx(1.5 * math.log(11), rel=1e-6)


def test_local_lr_is_symmetric_in_the_views(rng):
    v1, v2 = t64(rng.normal(size=(2, 3, 8, 8))), t64(rng.normal(size=(2, 3, 8, 8)))
    a = local_contrastive_loss(v1, v2)
    assert a.item() == pytest.approx(local_contrastive_loss(v2, v1).item(), rel=1e-12)


# ------------------------------------------------------ invariances, numerics


def test_invariant_to_row_norm_scaling(rng):
    z = t64(rng.normal(size=(8, 5)))
    scale = t64(rng.uniform(0.1, 10.0, size=(8, 1)))
    vol, part = [0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3] * 2
    for strategy in ("GR", "GD-", "GD"):
        a = global_contrastive_loss(z, vol, part, strategy=strategy)
        b = global_contrastive_loss(z * scale, vol, part, strategy=strategy)
        assert a.item() == pytest.approx(b.item(), rel=1e-12)
    pairs, neg = official_global_pairs("GR", batch_size=4)
    a = pairwise_infonce(z, pairs, neg)
    assert a.item() == pytest.approx(
        pairwise_infonce(z * scale, pairs, neg).item(), rel=1e-12
    )
    v1, v2 = t64(rng.normal(size=(2, 2, 8, 8))), t64(rng.normal(size=(2, 2, 8, 8)))
    s1, s2 = t64([3.0, 0.2]).view(2, 1, 1, 1), t64([0.5, 7.0]).view(2, 1, 1, 1)
    w = t64(rng.normal(size=(18, 4)))
    a = local_contrastive_loss(v1, v2, weight=w)
    b = local_contrastive_loss(v1 * s1, v2 * s2, weight=w)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_gradcheck_float64():
    torch.manual_seed(0)
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    vol, part, view = [0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 0, 1]
    for strategy in ("GR", "GD-", "GD"):
        assert torch.autograd.gradcheck(
            lambda x, s=strategy: global_contrastive_loss(
                x, vol, part, view, strategy=s, temperature=0.5
            ),
            (z,),
        )
    pairs, neg = official_global_pairs("GD", batch_size=1, n_partitions=1)
    zz = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: pairwise_infonce(x, pairs, neg, 0.5, normaliser=4), (zz,)
    )
    v1 = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    v2 = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    for strategy in ("LR", "LD"):
        assert torch.autograd.gradcheck(
            lambda a, b, m, s=strategy: local_contrastive_loss(
                a,
                b,
                temperature=0.5,
                strategy=s,
                region_size=1,
                n_negatives=2,
                weight=m,
                volume=[0, 1],
                partition=[0, 0],
            ),
            (v1, v2, w),
        )


def test_no_negatives_gives_finite_gradient():
    z = torch.randn(4, 3, requires_grad=True)
    loss = global_contrastive_loss(z, [0, 0, 1, 1], [0, 0, 0, 0], strategy="GD")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    z = torch.randn(1, 3, requires_grad=True)
    global_contrastive_loss(z, [0], strategy="GR").backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close(dtype):
    torch.manual_seed(1)
    z = torch.randn(16, 8).to(dtype).requires_grad_()
    vol, part, view = official_global_labels("GD", batch_size=4, n_partitions=4)
    loss = global_contrastive_loss(z, vol, part, view, temperature=0.05)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(z.grad).all()
    ref = global_contrastive_loss(z.detach().float(), vol, part, view, temperature=0.05)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    pairs, neg = official_global_pairs("GD", batch_size=4, n_partitions=4)
    assert torch.isfinite(pairwise_infonce(z, pairs, neg, 0.05))
    v1 = torch.randn(2, 4, 12, 12).to(dtype).requires_grad_()
    v2 = torch.randn(2, 4, 12, 12).to(dtype)
    w = torch.randn(36, 8).to(dtype)
    loss = local_contrastive_loss(v1, v2, temperature=0.05, weight=w)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v1.grad).all()


# ------------------------------------------------------------------ modules


def test_modules_match_functions(rng):
    z = torch.randn(8, 4)
    vol, part = [0, 0, 0, 0, 1, 1, 1, 1], [0, 1] * 4
    crit = GlobalContrastiveLoss(strategy="GD-", temperature=0.2, reduction="mean")
    assert "GD-" in repr(crit)
    expected = global_contrastive_loss(z, vol, part, None, "GD-", 0.2, "mean")
    assert crit(z, vol, part).item() == expected.item()
    v1, v2 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    crit = LocalContrastiveLoss(temperature=0.2)
    assert crit.weight is None
    assert crit(v1, v2).item() == local_contrastive_loss(v1, v2, 0.2).item()
    crit = LocalContrastiveLoss(in_channels=3, out_features=5, region_size=1)
    assert crit.weight.shape == (3, 5)
    crit(v1, v2).backward()
    assert crit.weight.grad is not None and torch.isfinite(crit.weight.grad).all()


# --------------------------------------------------------------- bad inputs


def test_pairwise_bad_inputs():
    z = torch.randn(4, 3)
    pairs, neg = torch.tensor([[0, 1]]), torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="pairs"):
        pairwise_infonce(z, torch.tensor([[0, 1, 2]]), neg)
    with pytest.raises(ValueError, match="pairs"):
        pairwise_infonce(z, torch.tensor([[0, 4]]), neg)
    with pytest.raises(ValueError, match="pairs"):
        pairwise_infonce(z, torch.tensor([[-1, 0]]), neg)
    with pytest.raises(ValueError, match="pairs"):
        pairwise_infonce(z, torch.zeros(0, 2, dtype=torch.long), neg[:0])
    with pytest.raises(TypeError, match="pairs"):
        pairwise_infonce(z, torch.tensor([[0.0, 1.0]]), neg)
    with pytest.raises(ValueError, match="neg_mask"):
        pairwise_infonce(z, pairs, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="neg_mask"):
        pairwise_infonce(z, pairs, torch.ones(1, 4))
    with pytest.raises(ValueError, match="temperature"):
        pairwise_infonce(z, pairs, neg, temperature=-0.1)
    with pytest.raises(ValueError, match="normaliser"):
        pairwise_infonce(z, pairs, neg, normaliser=0)
    with pytest.raises(ValueError, match="z"):
        pairwise_infonce(torch.randn(4), pairs, neg)
    with pytest.raises(TypeError, match="z"):
        pairwise_infonce([[1.0]], pairs, neg)


def test_global_bad_inputs():
    z = torch.randn(4, 3)
    vol, part = [0, 0, 1, 1], [0, 1, 0, 1]
    cases = [
        ({"volume": [0, 0, 1]}, "volume"),
        ({"partition": [0, 1]}, "partition"),
        ({"partition": None}, "partition"),
        ({"view": [0]}, "view"),
        ({"strategy": "GD+"}, "strategy"),
        ({"strategy": "gd"}, "strategy"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 0}, "temperature"),
        ({"reduction": "none"}, "reduction"),
        ({"cross_views": False}, "view"),
    ]
    for kwargs, match in cases:
        args = {"volume": vol, "partition": part, **kwargs}
        with pytest.raises(ValueError, match=match):
            global_contrastive_loss(z, **args)
    with pytest.raises(ValueError, match="strategy"):
        GlobalContrastiveLoss(strategy="G^D")
    with pytest.raises(ValueError, match="batch_size"):
        official_global_pairs("GD", batch_size=6, n_partitions=4)
    with pytest.raises(ValueError, match="strategy"):
        official_global_labels("GX")
    with pytest.raises(ValueError, match="n_partitions"):
        official_global_pairs("GD-", batch_size=6, n_partitions=0)


def test_local_bad_inputs():
    f = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        local_contrastive_loss(f, torch.randn(2, 3, 8, 9))
    with pytest.raises(ValueError, match="view1"):
        local_contrastive_loss(torch.randn(3, 8, 8), torch.randn(3, 8, 8))
    small = torch.randn(2, 3, 7, 8)
    with pytest.raises(ValueError, match="too small"):
        local_contrastive_loss(small, small)
    local_contrastive_loss(small, small, regions="official9")  # 9 fit in 6x6
    with pytest.raises(ValueError, match="too small"):
        local_contrastive_loss(
            small[..., :5, :5], small[..., :5, :5], regions="official9"
        )
    with pytest.raises(ValueError, match="too small"):
        local_region_positions(4, 48, region_size=1)
    with pytest.raises(ValueError, match="weight"):
        local_contrastive_loss(f, f, weight=torch.randn(9, 4))
    with pytest.raises(ValueError, match="weight"):
        local_contrastive_loss(f, f, weight=torch.randn(27))
    with pytest.raises(ValueError, match="weight"):
        region_weight_from_nhwc(torch.randn(26, 2), 3)
    cases = [
        ({"region_size": 2}, "region_size"),
        ({"regions": "grid"}, "regions"),
        ({"n_negatives": 0}, "n_negatives"),
        ({"n_negatives": 6}, "n_negatives"),
        ({"strategy": "LX"}, "strategy"),
        ({"temperature": -0.1}, "temperature"),
        ({"reduction": "max"}, "reduction"),
        ({"strategy": "LD"}, "partition"),
        ({"strategy": "LD", "volume": [0, 1], "partition": [0]}, "partition"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            local_contrastive_loss(f, f, **kwargs)
    with pytest.raises(ValueError, match="in_channels"):
        LocalContrastiveLoss(out_features=8)
    with pytest.raises(ValueError, match="n_negatives"):
        LocalContrastiveLoss(n_negatives=9)


def test_global_loss_runs_in_float32_inside_autocast():
    # documented dtype promote(z.dtype, float32), also when called in an
    # autocast region (its similarity matmul would otherwise be bfloat16)
    torch.manual_seed(0)
    z = torch.randn(12, 16)
    vol = torch.arange(12) // 4
    part = torch.arange(12) % 4
    ref = global_contrastive_loss(z, vol, part, strategy="GR")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = global_contrastive_loss(z, vol, part, strategy="GR")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
