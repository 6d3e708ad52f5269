"""Global and local contrastive losses (Chaitanya et al., NeurIPS 2020).

The global loss (G^R, G^D-, G^D) contrasts image embeddings using volume and
partition labels; the local loss (L^R, L^D) contrasts small regions of two
pixel-aligned decoder feature maps at the official fixed region positions.
"""

from __future__ import annotations

import torch

from ._globallocal_checks import _as_labels, _check_choice, _check_int
from ._globallocal_local import (
    LOCAL_REDUCTIONS,
    LOCAL_STRATEGIES,
    REGION_LAYOUTS,
    LocalContrastiveLoss,
    local_contrastive_loss,
    local_region_positions,
    region_weight_from_nhwc,
)
from ._infonce import check_temperature
from ._pairwise import check_embeddings, cosine_normalize

__all__ = [
    "GLOBAL_PAIRINGS",
    "GLOBAL_REDUCTIONS",
    "GLOBAL_STRATEGIES",
    "LOCAL_REDUCTIONS",
    "LOCAL_STRATEGIES",
    "REGION_LAYOUTS",
    "GlobalContrastiveLoss",
    "LocalContrastiveLoss",
    "global_contrastive_loss",
    "local_contrastive_loss",
    "local_region_positions",
    "official_global_labels",
    "official_global_pairs",
    "region_weight_from_nhwc",
]

GLOBAL_STRATEGIES = ("GR", "GD-", "GD")
GLOBAL_REDUCTIONS = ("official", "mean", "sum")
GLOBAL_PAIRINGS = ("all", "official")


# ------------------------------------------------------------ global loss


def _check_official_batch(strategy, batch_size, n_partitions):
    strategy = _check_choice(strategy, "strategy", GLOBAL_STRATEGIES)
    _check_int(batch_size, "batch_size", 1)
    _check_int(n_partitions, "n_partitions", 1)
    if strategy != "GR" and batch_size % n_partitions:
        raise ValueError(
            f"batch_size must be a multiple of n_partitions for strategy "
            f"{strategy!r} (volume-major batches of whole volumes); got "
            f"batch_size={batch_size}, n_partitions={n_partitions}."
        )
    return strategy


def official_global_labels(strategy, batch_size=12, n_partitions=4, *, device=None):
    """Volume, partition and view of every row of the official global batches.

    The official row layouts, with ``B = batch_size`` and ``S = n_partitions``:

    * ``"GR"``: 2B rows ``[x1', x1'', x2', x2'', ...]``; row ``2k + j`` is
      view ``j`` of slice ``k`` (volume ``k``, partition 0).
    * ``"GD-"``: 3B rows ``[X | aug1(X) | aug2(X)]`` with ``X`` volume-major;
      row ``c B + v S + s`` is view ``c`` of partition ``s`` of volume ``v``.
    * ``"GD"``: 4B rows in blocks of 4S, block ``v`` =
      ``[A_v orig | A_v aug | B_v orig | B_v aug]``; volumes ``A_v`` and
      ``B_v`` get ids ``2v`` and ``2v + 1``, orig is view 0, aug is view 1.

    Parameters
    ----------
    strategy : {"GR", "GD-", "GD"}
    batch_size : int, default=12
        The official ``bt_size`` B (a multiple of ``n_partitions`` for
        ``"GD-"`` and ``"GD"``).
    n_partitions : int, default=4
        S, partitions per volume (ignored by ``"GR"``).
    device : torch.device, default=None

    Returns
    -------
    volume, partition, view : torch.Tensor of shape (n_rows,), int64

    Examples
    --------
    >>> vol, part, view = official_global_labels("GD-", batch_size=4, n_partitions=2)
    >>> vol.tolist(), part.tolist(), view.tolist()
    ([0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1], \
[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    """
    strategy = _check_official_batch(strategy, batch_size, n_partitions)
    b, s = batch_size, n_partitions
    if strategy == "GR":
        row = torch.arange(2 * b, device=device)
        return row // 2, torch.zeros_like(row), row % 2
    if strategy == "GD-":
        row = torch.arange(3 * b, device=device)
        return (row % b) // s, row % s, row // b
    row = torch.arange(4 * b, device=device)
    offset = row % (4 * s)
    volume = 2 * (row // (4 * s)) + offset // (2 * s)
    return volume, row % s, (offset // s) % 2


def official_global_pairs(strategy, batch_size=12, n_partitions=4, *, device=None):
    """The official directed terms and negative sets of a global strategy.

    Rows follow :func:`official_global_labels`. With ``B = batch_size`` and
    ``S = n_partitions`` the terms are, in the official order:

    * ``"GR"``: ``(2k, 2k+1)`` then ``(2k+1, 2k)`` for every k; the negatives
      are all rows except the anchor and the positive (NT-Xent).
    * ``"GD-"``: for every slice ``w < B`` the 6 ordered pairs of its views
      ``{w, B+w, 2B+w}``; the negatives are the rows of other partitions.
    * ``"GD"``: for every ``w < 4B`` with ``w mod 2S < S`` and
      ``i_k = (w + k S) mod 4B``, the pairs ``(i0, i1), (i0, i2), (i2, i3),
      (i1, i3)``, each followed by its reverse; the negatives are the rows
      whose partition ``row mod S`` differs from ``w mod S``. This keeps the
      official quirks: volumes form a cyclic chain, same-slice pairs are
      counted twice and there is no original-augmented pair across volumes.
      (The official last 4S-row block of all-zero images is a data bug, not a
      term bug: feed the embeddings of blank images there to reproduce it.)

    The official normaliser is the number of rows in every strategy, so
    ``pairwise_infonce(z, pairs, neg_mask, normaliser=len(z))`` is the
    official loss. The official G^D- drops negatives with a hard-coded stride
    of 4 (``range(w mod S, 3B, 4)``); this uses stride ``S``, identical for the
    official ``S = 4``.

    Parameters
    ----------
    strategy : {"GR", "GD-", "GD"}
    batch_size : int, default=12
        The official ``bt_size`` B.
    n_partitions : int, default=4
        S (ignored by ``"GR"``).
    device : torch.device, default=None

    Returns
    -------
    pairs : torch.Tensor of shape (T, 2), int64
    neg_mask : torch.Tensor of shape (T, n_rows), bool

    Examples
    --------
    >>> pairs, neg = official_global_pairs("GD", batch_size=12, n_partitions=4)
    >>> tuple(pairs.shape), tuple(neg.shape), int(neg[0].sum())
    ((192, 2), (192, 48), 36)
    """
    strategy = _check_official_batch(strategy, batch_size, n_partitions)
    b, s = batch_size, n_partitions
    pairs = []
    if strategy == "GR":
        n_rows = 2 * b
        for k in range(b):
            pairs += [(2 * k, 2 * k + 1), (2 * k + 1, 2 * k)]
        pairs = torch.tensor(pairs, dtype=torch.long, device=device)
        rows = torch.arange(n_rows, device=device)
        neg = (rows != pairs[:, :1]) & (rows != pairs[:, 1:])
        return pairs, neg
    if strategy == "GD-":
        n_rows = 3 * b
        windows = list(range(b))
        for w in windows:
            v0, v1, v2 = w, b + w, 2 * b + w
            pairs += [(v0, v1), (v1, v0), (v0, v2), (v2, v0), (v1, v2), (v2, v1)]
        per_window = 6
    else:
        n_rows = 4 * b
        windows = [w for w in range(n_rows) if w % (2 * s) < s]
        for w in windows:
            i0, i1, i2, i3 = ((w + k * s) % n_rows for k in range(4))
            for a, p in ((i0, i1), (i0, i2), (i2, i3), (i1, i3)):
                pairs += [(a, p), (p, a)]
        per_window = 8
    pairs = torch.tensor(pairs, dtype=torch.long, device=device)
    part_w = torch.tensor(windows, device=device).repeat_interleave(per_window) % s
    neg = torch.arange(n_rows, device=device) % s != part_w[:, None]
    return pairs, neg


def global_contrastive_loss(
    z,
    volume,
    partition=None,
    view=None,
    strategy="GD",
    temperature=0.1,
    reduction="official",
    cross_views=True,
    pairing="all",
):
    """Global contrastive loss of Chaitanya et al. from row labels.

    Every row of ``z`` is one augmented view of one slice, labelled by its
    ``volume``, ``partition`` (which of the S slabs along the slice axis the
    slice comes from) and ``view``. A *slice* is a (volume, partition) pair.
    With ``s`` the cosine similarity and ``tau`` the temperature, every
    ordered positive pair (a, p) adds the term::

        l(a, p) = -log( exp(s_ap/tau) / (exp(s_ap/tau) + sum_{n in N} exp(s_an/tau)) )

    * ``"GR"`` (random, SimCLR): positives are the other views of the same
      slice; ``N`` is every row but a and p (NT-Xent). ``partition`` may be
      None; give every source slice its own (volume, partition), e.g.
      ``volume=slice_id``.
    * ``"GD-"``: positives are the other views of the same slice; ``N`` is
      every row of another partition (same-partition rows of other volumes
      are neither positive nor negative).
    * ``"GD"``: positives are the other views of the same slice and every row
      of the same partition in another volume; ``N`` is every row of another
      partition.

    This is the clean, all-pairs formulation of the spec. With the official
    row layouts (:func:`official_global_labels`) it equals the official loss
    for ``"GR"`` and ``"GD-"``. The official ``"GD"`` pairs differ; they are
    ``pairing="official"``:

    * volumes form a **cyclic chain** in the order of their ids (the k-th
      smallest id is linked to the (k+1)-th, the largest to the smallest);
      same-partition rows of two *linked* volumes are positives when they
      have the same ``view`` (original with original, augmented with
      augmented), counted once in each direction per link (twice when there
      are only two volumes, as the official wrap-around);
    * the other views of the same slice are positives **counted twice**;
    * ``N`` is every row of another partition, as above.

    With volume ids ``2v`` for the v-th volume of the official first set and
    ``2v + 1`` for the v-th of the second (orig view 0, augmented view 1),
    this is the official G^D term list of :func:`official_global_pairs`,
    for any row order.

    Parameters
    ----------
    z : torch.Tensor of shape (N, D)
        Embeddings (the g1 head output); they need not be normalised.
    volume : array-like or torch.Tensor of shape (N,)
        Volume (subject) id of each row.
    partition : array-like or torch.Tensor of shape (N,), default=None
        Partition id of each row; required for ``"GD-"`` and ``"GD"``.
    view : array-like or torch.Tensor of shape (N,), default=None
        View id of each row (e.g. 0 = original, 1 = augmented). Only used
        when ``cross_views=False``.
    strategy : {"GR", "GD-", "GD"}, default="GD"
    temperature : float, default=0.1
        Softmax temperature, > 0.
    reduction : {"official", "mean", "sum"}, default="official"
        ``"official"`` divides the sum of the terms by the number of rows N
        (as the official code: 1x, 2x and 4x the mean term for its G^R,
        G^D- and G^D batches); ``"mean"`` by the number of terms; ``"sum"``
        returns the sum. A batch without positives gives 0.
    cross_views : bool, default=True
        ``"GD"`` only: if False, same-partition rows of different volumes are
        positives only when they have the same ``view`` (the official G^D
        pairs originals with originals and augmented with augmented only).
        Ignored with ``pairing="official"``.
    pairing : {"all", "official"}, default="all"
        ``"GD"`` only: every volume with every other (``"all"``), or the
        official cyclic chain with double-counted same-slice pairs (needs
        ``view``).

    Returns
    -------
    torch.Tensor
        Scalar loss, dtype ``promote(z.dtype, float32)``.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> z = torch.randn(8, 16)
    >>> volume = [0, 0, 0, 0, 1, 1, 1, 1]
    >>> partition = [0, 1, 0, 1, 0, 1, 0, 1]
    >>> view = [0, 0, 1, 1, 0, 0, 1, 1]
    >>> loss = global_contrastive_loss(z, volume, partition, view, strategy="GD")
    >>> loss.shape
    torch.Size([])
    """
    z = check_embeddings(z)
    strategy = _check_choice(strategy, "strategy", GLOBAL_STRATEGIES)
    temperature = check_temperature(temperature)
    reduction = _check_choice(reduction, "reduction", GLOBAL_REDUCTIONS)
    if not isinstance(cross_views, bool):
        raise TypeError(f"cross_views must be a bool; got {cross_views!r}.")
    pairing = _check_choice(pairing, "pairing", GLOBAL_PAIRINGS)
    n, device = z.shape[0], z.device
    vol = _as_labels(volume, n, "volume", device)
    if partition is None:
        if strategy != "GR":
            raise ValueError(
                f"partition is required for strategy {strategy!r} (one partition "
                "id per row)."
            )
        part = torch.zeros(n, dtype=torch.long, device=device)
    else:
        part = _as_labels(partition, n, "partition", device)
    if view is not None:
        view = _as_labels(view, n, "view", device)
    elif strategy == "GD" and (not cross_views or pairing == "official"):
        raise ValueError(
            "view is required for strategy 'GD' with cross_views=False or "
            "pairing='official'."
        )

    # float32 at least, also inside an autocast region (its matmul would be
    # bf16/fp16 there, and the whole loss with it)
    with torch.autocast(device.type, enabled=False):
        u = cosine_normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
        s = u @ u.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=device)
    same_part = part[:, None] == part[None, :]
    same_vol = vol[:, None] == vol[None, :]
    if strategy == "GR":
        pos = same_part & same_vol & ~eye
        # exp(s_ap) + sum over rows other than a and p = sum over rows other than a
        denom = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)
        terms = denom[:, None] - s
    else:
        if strategy == "GD-":
            pos = same_part & same_vol & ~eye
        elif pairing == "official":
            pos = _chain_multiplicity(vol, view, same_part, same_vol, eye)
        else:
            pos = same_part & ~eye
            if not cross_views:
                pos = pos & (same_vol | (view[:, None] == view[None, :]))
        neg = torch.logsumexp(s.masked_fill(same_part, float("-inf")), dim=1)
        terms = torch.logaddexp(s, neg[:, None]) - s
    if pos.dtype == torch.bool:
        total = terms.masked_fill(~pos, 0.0).sum()
    else:  # multiplicities of the official G^D chain
        total = (terms * pos.to(terms.dtype)).sum()
    if reduction == "sum":
        return total
    if reduction == "official":
        return total / n
    return total / pos.sum().clamp_min(1).to(total.dtype)


def _chain_multiplicity(vol, view, same_part, same_vol, eye):
    """How often each ordered pair is an official G^D term (int matrix)."""
    _, rank = torch.unique(vol, return_inverse=True)
    n_vol = int(rank.max()) + 1 if rank.numel() else 0
    step = (rank[None, :] - rank[:, None]) % max(n_vol, 1)
    same_view = view[:, None] == view[None, :]
    linked = same_part & same_view & ~same_vol
    ahead = linked & (step == 1)
    behind = linked & (step == n_vol - 1)
    slice_pairs = same_part & same_vol & ~eye
    return 2 * slice_pairs.long() + ahead.long() + behind.long()


class GlobalContrastiveLoss(torch.nn.Module):
    """Module form of :func:`global_contrastive_loss`.

    Parameters
    ----------
    strategy : {"GR", "GD-", "GD"}, default="GD"
    temperature : float, default=0.1
    reduction : {"official", "mean", "sum"}, default="official"
    cross_views : bool, default=True
    pairing : {"all", "official"}, default="all"

    Examples
    --------
    >>> import torch
    >>> crit = GlobalContrastiveLoss(strategy="GD-")
    >>> z = torch.randn(6, 4)
    >>> crit(z, [0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1]).shape
    torch.Size([])
    """

    def __init__(
        self,
        strategy="GD",
        temperature=0.1,
        reduction="official",
        cross_views=True,
        pairing="all",
    ):
        super().__init__()
        self.strategy = _check_choice(strategy, "strategy", GLOBAL_STRATEGIES)
        self.temperature = check_temperature(temperature)
        self.reduction = _check_choice(reduction, "reduction", GLOBAL_REDUCTIONS)
        if not isinstance(cross_views, bool):
            raise TypeError(f"cross_views must be a bool; got {cross_views!r}.")
        self.cross_views = cross_views
        self.pairing = _check_choice(pairing, "pairing", GLOBAL_PAIRINGS)

    def forward(self, z, volume, partition=None, view=None):
        """Return the loss of embeddings ``z`` with row labels."""
        return global_contrastive_loss(
            z,
            volume,
            partition,
            view,
            strategy=self.strategy,
            temperature=self.temperature,
            reduction=self.reduction,
            cross_views=self.cross_views,
            pairing=self.pairing,
        )

    def extra_repr(self):
        return (
            f"strategy={self.strategy!r}, temperature={self.temperature}, "
            f"reduction={self.reduction!r}, cross_views={self.cross_views}, "
            f"pairing={self.pairing!r}"
        )
