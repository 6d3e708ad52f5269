"""Official options of global-local pretraining: the G^D pairs and batches,
uniform G^R / L^R slice draws and stage lengths in iterations, checked
against a reference written from the spec (specs/globallocal.md 3.4)."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from sklearn_cl3d import GlobalLocalPretrainer
from sklearn_cl3d.data import PartitionSliceDataset
from sklearn_cl3d.losses import global_contrastive_loss
from sklearn_cl3d.losses._globallocal import _chain_multiplicity

TINY = dict(
    channels=(4, 8, 8, 8),
    slice_size=32,
    n_decoder_blocks=1,
    hidden_dim=16,
    projection_dim=8,
    region_dim=8,
    device="cpu",
    random_state=0,
    verbose=0,
)


# --------------------------------------------- reference from the spec


def official_rows(m, s):
    """The official stitched G^D rows, each (set, volume, partition, view):
    4S-row blocks [A_v orig | A_v aug | B_v orig | B_v aug]."""
    rows = []
    for v in range(m):
        for set_, view in ((0, 0), (0, 1), (1, 0), (1, 1)):
            rows += [(set_, v, p, view) for p in range(s)]
    return rows


def official_terms(m, s):
    """Directed terms of the official code: windows w with w mod 2S < S,
    i_k = (w + kS) mod 4B, pairs (i0,i1) (i0,i2) (i2,i3) (i1,i3) both ways."""
    n = 4 * m * s
    terms = []
    for w in range(n):
        if w % (2 * s) >= s:
            continue
        i0, i1, i2, i3 = ((w + k * s) % n for k in range(4))
        for a, p in ((i0, i1), (i0, i2), (i2, i3), (i1, i3)):
            terms += [(a, p), (p, a)]
    return terms


def reference_loss(z, rows, terms, s, tau=0.1):
    """Sum of the official terms over the number of rows, with loops."""
    u = [zi / max(math.sqrt(float(zi @ zi)), 1e-6) for zi in z]
    sim = [[float(a @ b) / tau for b in u] for a in u]
    total = 0.0
    for a, p in terms:
        neg = [j for j, r in enumerate(rows) if r[2] != rows[a][2]]
        denom = math.exp(sim[a][p]) + sum(math.exp(sim[a][j]) for j in neg)
        total += -math.log(math.exp(sim[a][p]) / denom)
    return total / len(rows)


def estimator_layout(m, s):
    """The estimator's rows: x = [set A | set B] (m volumes x S partitions
    each), then [orig views | augmented views]; labels as in get_loss."""
    rows = [
        (set_, v, p, view)
        for view in (0, 1)
        for set_ in (0, 1)
        for v in range(m)
        for p in range(s)
    ]
    volume = [2 * v + set_ for set_, v, _, _ in rows]
    return rows, volume


@pytest.mark.parametrize("m, s", [(3, 4), (2, 4), (1, 4), (2, 3), (3, 2)])
def test_official_gd_positives_match_the_spec_windows(m, s):
    # the multiset of official (anchor, positive) terms, named by row labels
    rows = official_rows(m, s)
    expected = Counter((rows[a], rows[p]) for a, p in official_terms(m, s))
    ours_rows, volume = estimator_layout(m, s)
    vol = torch.tensor(volume)
    part = torch.tensor([r[2] for r in ours_rows])
    view = torch.tensor([r[3] for r in ours_rows])
    same_part = part[:, None] == part[None, :]
    same_vol = vol[:, None] == vol[None, :]
    eye = torch.eye(len(vol), dtype=torch.bool)
    mult = _chain_multiplicity(vol, view, same_part, same_vol, eye)
    got = Counter()
    for a, p in mult.nonzero().tolist():
        got[(ours_rows[a], ours_rows[p])] += int(mult[a, p])
    assert got == expected
    # no original-augmented pair across volumes
    assert all(ra[3] == rp[3] for ra, rp in got if ra[:2] != rp[:2])


@pytest.mark.parametrize("m, s", [(3, 4), (1, 4), (2, 3)])
def test_official_gd_loss_matches_the_reference(m, s):
    torch.manual_seed(m + s)
    rows = official_rows(m, s)
    z_official = torch.randn(len(rows), 6, dtype=torch.float64)
    expected = reference_loss(z_official, rows, official_terms(m, s), s)
    ours_rows, volume = estimator_layout(m, s)
    # the same embeddings in the estimator's row order
    index = {r: i for i, r in enumerate(rows)}
    z = z_official[[index[r] for r in ours_rows]]
    part = [r[2] for r in ours_rows]
    view = [r[3] for r in ours_rows]
    got = global_contrastive_loss(z, volume, part, view, pairing="official")
    assert float(got) == pytest.approx(expected, rel=1e-10)
    # the default all-pairs loss is another one
    other = global_contrastive_loss(z, volume, part, view)
    assert float(other) != pytest.approx(expected, rel=1e-3)


def test_official_pairing_needs_views_and_a_valid_name():
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="view is required"):
        global_contrastive_loss(z, [0] * 8, [0, 1] * 4, pairing="official")
    with pytest.raises(ValueError, match="pairing"):
        global_contrastive_loss(z, [0] * 8, [0, 1] * 4, pairing="chain")


# ----------------------------------------------------------- estimator


@pytest.fixture(scope="module")
def volumes():
    # 10 slices, 4 partitions of 2: slices 8 and 9 are the unused tail
    return np.random.default_rng(0).random((6, 32, 32, 10), dtype="float32")


def _iterator(est, X, stage):
    """The training iterator of ``stage`` of the estimator built on X."""
    built = est.set_params(max_epochs=0, local_epochs=0).fit(X)
    built.__dict__["_stage"] = stage
    ds = built._partition_dataset(built._as_dataset(X, None, reset=False))
    return built, ds, built.get_iterator(ds, training=True)


def _flat_batches(loader):
    return [list(b) for b in loader.batch_sampler]


def test_gd_official_batches_hold_two_volume_sets(volumes):
    est = GlobalLocalPretrainer(gd_pairing="official", steps_per_epoch=200, **TINY)
    _, ds, loader = _iterator(est, volumes, "global")
    overlap = 0
    for batch in _flat_batches(loader):
        assert len(batch) == 24  # 2 sets x 3 volumes x 4 partitions
        vols = [i // 10 for i in batch]
        parts = [(i % 10) // 2 for i in batch]
        assert parts == [0, 1, 2, 3] * 6
        a, b = vols[:12:4], vols[12::4]
        assert len(set(a)) == len(set(b)) == 3  # distinct within a set
        overlap += bool(set(a) & set(b))
    assert overlap > 0  # the sets are drawn independently
    default = GlobalLocalPretrainer(steps_per_epoch=5, **TINY)
    _, _, loader = _iterator(default, volumes, "global")
    assert all(len(b) == 12 for b in _flat_batches(loader))


def test_gd_official_loss_gets_chain_ids(volumes):
    est = GlobalLocalPretrainer(
        gd_pairing="official", local=None, n_iterations=1, **TINY
    )
    seen = []
    est.fit(volumes)  # builds; then record what the loss gets
    crit = est.criterion_
    assert crit.pairing == "official"
    original = crit.forward

    def record(z, volume, partition=None, view=None):
        seen.append((z.detach(), volume, partition, view))
        return original(z, volume, partition, view)

    crit.forward = record
    est.partial_fit(volumes)
    z, volume, partition, view = seen[0]
    chain = [2 * v + s for s in (0, 1) for v in range(3) for _ in range(4)]
    assert volume.tolist() == chain * 2
    assert partition.tolist() == [0, 1, 2, 3] * 12
    assert view.tolist() == [0] * 24 + [1] * 24
    rows = [
        (s, v, p, w) for w in (0, 1) for s in (0, 1) for v in range(3) for p in range(4)
    ]
    ref_rows = official_rows(3, 4)
    index = {r: i for i, r in enumerate(rows)}
    z_ref = z.double()[[index[r] for r in ref_rows]]
    expected = reference_loss(z_ref, ref_rows, official_terms(3, 4), 4)
    got = global_contrastive_loss(
        z.double(), volume, partition, view, pairing="official"
    )
    assert float(got) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "params, stage",
    [({"strategy": "GR"}, "global"), ({"local": "LR"}, "local")],
)
def test_uniform_slice_draws_for_gr_and_lr(volumes, params, stage):
    uniform = GlobalLocalPretrainer(
        slice_sampling="uniform", steps_per_epoch=400, **params, **TINY
    )
    _, ds, loader = _iterator(uniform, volumes, stage)
    batches = _flat_batches(loader)
    assert all(len(b) == 12 for b in batches)
    counts = np.bincount(np.concatenate(batches), minlength=len(ds))
    # every slice of every volume, the tail included, about equally often
    expected = 400 * 12 / len(ds)
    assert counts.min() > 0 and counts.max() < 2 * expected
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < len(ds) + 5 * math.sqrt(2 * len(ds))
    tails = sum(1 for b in batches for i in b if i % 10 >= 8)
    assert tails > 0
    # not volume-major partition batches any more
    assert any([(i % 10) // 2 for i in b] != [0, 1, 2, 3] * 3 for b in batches)
    default = GlobalLocalPretrainer(steps_per_epoch=50, **params, **TINY)
    _, _, loader = _iterator(default, volumes, stage)
    for b in _flat_batches(loader):
        assert [(i % 10) // 2 for i in b] == [0, 1, 2, 3] * 3


def test_uniform_draws_leave_the_partition_strategies_alone(volumes):
    est = GlobalLocalPretrainer(
        strategy="GD", local="LD", slice_sampling="uniform", steps_per_epoch=5, **TINY
    )
    for stage in ("global", "local"):
        _, _, loader = _iterator(est, volumes, stage)
        for b in _flat_batches(loader):
            assert [(i % 10) // 2 for i in b] == [0, 1, 2, 3] * 3


def test_stage_lengths_in_iterations(volumes):
    est = GlobalLocalPretrainer(n_iterations=3, local_iterations=2, **TINY)
    assert est._stage_epochs() == [("global", 1), ("local", 1)]
    est.fit(volumes)
    assert [(r["stage"], len(r["batches"])) for r in est.history] == [
        ("global", 3),
        ("local", 2),
    ]
    both = GlobalLocalPretrainer(n_iterations=2, max_epochs=5, **TINY)
    assert both._stage_epochs() == [("global", 1), ("local", 1)]
    for stage in ("global", "local"):
        _, _, loader = _iterator(both, volumes, stage)
        assert len(loader) == 2
    default = GlobalLocalPretrainer(max_epochs=2, steps_per_epoch=4, **TINY)
    assert default._stage_epochs() == [("global", 2), ("local", 2)]
    _, _, loader = _iterator(default, volumes, "local")
    assert len(loader) == 4


def test_new_parameters_are_validated(volumes):
    for params in (
        {"gd_pairing": "chain"},
        {"slice_sampling": "random"},
        {"n_iterations": 0},
        {"local_iterations": 0},
    ):
        with pytest.raises(ValueError):
            GlobalLocalPretrainer(**params, **TINY).fit(volumes)


def test_dataset_tail_slices_have_no_partition(volumes):
    ds = PartitionSliceDataset(volumes, n_partitions=4)
    assert ds.locate(8)[1] == -1 and ds.locate(7)[1] == 3
