"""Local contrastive loss of Chaitanya et al. (NeurIPS 2020): small regions
of two pixel-aligned decoder feature maps at the official fixed region
positions (L^R, L^D)."""

from __future__ import annotations

import functools
import math

import torch

from ._globallocal_checks import _as_labels, _check_choice, _check_int
from ._infonce import check_temperature
from ._pairwise import cosine_normalize

__all__ = [
    "LOCAL_REDUCTIONS",
    "LOCAL_STRATEGIES",
    "REGION_LAYOUTS",
    "LocalContrastiveLoss",
    "local_contrastive_loss",
    "local_region_positions",
    "region_weight_from_nhwc",
]

LOCAL_STRATEGIES = ("LR", "LD")
LOCAL_REDUCTIONS = ("official", "mean", "sum")
REGION_LAYOUTS = ("official13", "official9")

# Anchor positions and their 5 hand-picked negatives, as (row, col) symbols:
# "0" = 0, "a" = e // 4, "b" = e // 2, "c" = 3e // 4, "e" = e (the extent).
_ANCHORS = tuple("00 0b 0e b0 bb be e0 eb ee aa ac ca cc".split())
_NEGATIVES = {
    ("official13", 3): (
        "0b aa ab b0 ba",
        "00 0e aa ac bb",
        "0b ab ac bc be",
        "00 aa bb e0 ca",
        "aa ac ca cc b0",
        "0e bb ee ac cc",
        "b0 ba eb ca cb",
        "bb e0 ee ca cc",
        "bc be eb cc cb",
        "00 0b b0 bb ac",
        "0b 0e aa bb be",
        "b0 bb e0 eb cc",
        "bb be eb ee ca",
    ),
    ("official13", 1): (
        "0b b0 bb aa ac",
        "00 0e bb aa ac",
        "0b bb be ca ac",
        "00 bb e0 aa ca",
        "aa ac ca cc b0",
        "0e bb ee ac cc",
        "b0 bb eb ca aa",
        "bb e0 ee ca cc",
        "bb be eb cc ca",
        "00 0b b0 bb ac",
        "0b 0e bb be cc",
        "b0 bb e0 0b aa",
        "bb be eb ee ac",
    ),
    "official9": (
        "0b b0 bb 0e e0",
        "00 0e b0 bb be",
        "00 0b bb be ee",
        "00 0b bb e0 eb",
        "00 0b b0 be eb",
        "0b 0e bb eb ee",
        "00 b0 bb eb ee",
        "b0 bb be e0 ee",
        "0e bb be e0 eb",
    ),
}
_MAX_NEGATIVES = 5


def _check_region_args(region_size, regions, n_negatives):
    if isinstance(region_size, bool) or region_size not in (1, 3):
        raise ValueError(f"region_size must be 1 or 3; got {region_size!r}.")
    regions = _check_choice(regions, "regions", REGION_LAYOUTS)
    _check_int(n_negatives, "n_negatives", 1, _MAX_NEGATIVES)
    return regions


def _symbols(extent):
    return {
        "0": 0,
        "a": extent // 4,
        "b": extent // 2,
        "c": 3 * extent // 4,
        "e": extent,
    }


@functools.lru_cache(maxsize=64)
def _region_layout(height, width, region_size, regions, n_negatives):
    """(unique top-left positions, anchor index (R,), negative index (R, n))."""
    if regions == "official9":
        n_anchors, table, used = 9, _NEGATIVES[regions], "0be"
    else:
        n_anchors, table, used = 13, _NEGATIVES[(regions, region_size)], "0abce"
    margin = 4 if region_size == 3 else 1  # official extent: size - 4 or size - 1
    for size in (height, width):
        values = [_symbols(size - margin)[code] for code in used]
        if any(x >= y for x, y in zip(values, values[1:])):
            raise ValueError(
                f"view1/view2 maps of (height, width) = ({height}, {width}) are too "
                f"small for regions={regions!r} with region_size={region_size}: "
                f"the distinct region positions need height and width >= "
                f"{len(used) - 1 + margin}."
            )
    rows, cols = _symbols(height - margin), _symbols(width - margin)
    anchors = _ANCHORS[:n_anchors]
    negatives = [line.split()[:n_negatives] for line in table]
    codes = list(dict.fromkeys(list(anchors) + [c for neg in negatives for c in neg]))
    index = {code: i for i, code in enumerate(codes)}
    positions = tuple((rows[code[0]], cols[code[1]]) for code in codes)
    anchor_idx = tuple(index[code] for code in anchors)
    neg_idx = tuple(tuple(index[code] for code in neg) for neg in negatives)
    return positions, anchor_idx, neg_idx


def local_region_positions(
    height, width, region_size=3, regions="official13", n_negatives=5
):
    """Top-left corners of the official local-loss regions and their negatives.

    With extent ``e = size - 4`` for 3x3 regions and ``e = size - 1`` for 1x1
    regions (per axis) and ``a = e // 4``, ``b = e // 2``, ``c = 3e // 4``, the
    13 anchors are, in the official order, ``(0,0) (0,b) (0,e) (b,0) (b,b)
    (b,e) (e,0) (e,b) (e,e) (a,a) (a,c) (c,a) (c,c)``; ``"official9"`` keeps
    the first 9. Each anchor has 5 hand-picked negative positions (a table
    that depends on the layout and, for 13 anchors, on the region size); the
    first ``n_negatives`` are used. The positions are computed from the map
    size, so any size at least as large as the layout needs works.

    Parameters
    ----------
    height, width : int
        Size of the feature map.
    region_size : {1, 3}, default=3
    regions : {"official13", "official9"}, default="official13"
    n_negatives : int, default=5
        Negatives per anchor, 1 to 5.

    Returns
    -------
    anchors : torch.Tensor of shape (R, 2), int64
        (row, col) of each anchor region's top-left corner.
    negatives : torch.Tensor of shape (R, n_negatives, 2), int64

    Examples
    --------
    >>> anchors, negatives = local_region_positions(48, 48)
    >>> anchors[[4, 9, 12]].tolist(), negatives[0].tolist()
    ([[22, 22], [11, 11], [33, 33]], [[0, 22], [11, 11], [11, 22], [22, 0], [22, 11]])
    """
    _check_int(height, "height", 1)
    _check_int(width, "width", 1)
    regions = _check_region_args(region_size, regions, n_negatives)
    positions, anchor_idx, neg_idx = _region_layout(
        height, width, region_size, regions, n_negatives
    )
    positions = torch.tensor(positions, dtype=torch.long)
    return positions[list(anchor_idx)], positions[torch.tensor(neg_idx)]


def region_weight_from_nhwc(weight, n_channels, region_size=3):
    """Reorder the rows of an official region map W from (dy, dx, c) to (c, dy, dx).

    The official code flattens 3x3xC regions of NHWC maps, so the rows of its
    ``(9C, D)`` map ``W`` are in (dy, dx, channel) order; flattened regions of
    NCHW maps are in (channel, dy, dx) order, which is what
    :func:`local_contrastive_loss` expects.

    Parameters
    ----------
    weight : torch.Tensor of shape (region_size**2 * n_channels, D)
    n_channels : int
    region_size : {1, 3}, default=3

    Returns
    -------
    torch.Tensor of shape (region_size**2 * n_channels, D)

    Examples
    --------
    >>> import torch
    >>> w = torch.arange(18.0).reshape(18, 1)  # rows (dy, dx, c), 2 channels
    >>> region_weight_from_nhwc(w, 2)[:4, 0].tolist()
    [0.0, 2.0, 4.0, 6.0]
    """
    _check_int(n_channels, "n_channels", 1)
    if isinstance(region_size, bool) or region_size not in (1, 3):
        raise ValueError(f"region_size must be 1 or 3; got {region_size!r}.")
    k = region_size
    _check_weight(weight, k * k * n_channels)
    d = weight.shape[1]
    return weight.reshape(k, k, n_channels, d).permute(2, 0, 1, 3).reshape(-1, d)


def _check_weight(weight, n_in):
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor; got {type(weight).__name__}.")
    if weight.ndim != 2 or weight.shape[0] != n_in or weight.shape[1] == 0:
        raise ValueError(
            f"weight must have shape (region_size**2 * C, D) = ({n_in}, D); got "
            f"{tuple(weight.shape)}."
        )
    if not weight.is_floating_point():
        raise TypeError(f"weight must hold floating point values; got {weight.dtype}.")


def _check_maps(view1, view2):
    for name, f in (("view1", view1), ("view2", view2)):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(f).__name__}.")
        if f.ndim != 4:
            raise ValueError(
                f"{name} must have shape (N, C, H, W); got shape {tuple(f.shape)}."
            )
        if not f.is_floating_point():
            raise TypeError(f"{name} must hold floating point values; got {f.dtype}.")
    if view1.shape != view2.shape:
        raise ValueError(
            "view1 and view2 must have the same shape (two pixel-aligned views of "
            f"the same N images); got {tuple(view1.shape)} and {tuple(view2.shape)}."
        )
    if view1.shape[0] == 0 or view1.shape[1] == 0:
        raise ValueError(
            f"view1 and view2 must hold at least one map with at least one channel; "
            f"got shape {tuple(view1.shape)}."
        )


def _region_vectors(maps, positions, k):
    """(N, C, H, W) -> (N, P, C k k), each region flattened in (c, dy, dx) order."""
    offsets = torch.arange(k, device=maps.device)
    rows = positions[:, 0, None, None] + offsets[None, :, None]  # (P, k, 1)
    cols = positions[:, 1, None, None] + offsets[None, None, :]  # (P, 1, k)
    patches = maps[:, :, rows, cols]  # (N, C, P, k, k)
    n, c, p = patches.shape[:3]
    return patches.permute(0, 2, 1, 3, 4).reshape(n, p, c * k * k)


def local_contrastive_loss(
    view1,
    view2,
    temperature=0.1,
    strategy="LR",
    region_size=3,
    regions="official13",
    n_negatives=5,
    weight=None,
    volume=None,
    partition=None,
    reduction="official",
):
    """Local contrastive loss of Chaitanya et al. on two aligned feature maps.

    ``view1[i]`` and ``view2[i]`` are decoder feature maps of two intensity
    views of image ``i``, so pixel (r, c) of one matches (r, c) of the other.
    A region is the ``region_size`` x ``region_size`` x C block at a fixed
    top-left corner (see :func:`local_region_positions`), flattened in
    (c, dy, dx) order and, if ``weight`` is given, mapped by ``v @ weight``;
    similarities are cosines. For anchor region ``r`` (position ``u_r``,
    negative positions ``Q_r``, the first ``n_negatives`` of the table)::

        l(F -> G; r) = -log( exp(s(F(u_r), G(u_r))/tau) / (exp(s(F(u_r), G(u_r))/tau)
                       + sum_{q in Q_r} [exp(s(F(u_r), F(q))/tau)
                                         + exp(s(F(u_r), G(q))/tau)]) )

    * ``"LR"``: for every image both directions, ``F = view1[i], G =
      view2[i]`` and ``F = view2[i], G = view1[i]``; negatives come only from
      the same image. The official value is the mean over the 2N maps of the
      mean over regions.
    * ``"LD"``: ``F = view1[i]`` only (one direction) with three kinds of
      partners ``G``: ``view2[i]`` and ``view1[j]`` for every ``j`` of the
      same ``partition`` in another ``volume``. The official value divides the
      sum by ``2N R`` (the official code hard-codes 3 volumes x 4 partitions,
      N = 12, and forces ``n_negatives=4``).

    Parameters
    ----------
    view1, view2 : torch.Tensor of shape (N, C, H, W)
        Feature maps of the two views (the g2 head output).
    temperature : float, default=0.1
        Softmax temperature, > 0.
    strategy : {"LR", "LD"}, default="LR"
    region_size : {1, 3}, default=3
    regions : {"official13", "official9"}, default="official13"
        The official 13 anchor positions or their first 9; positions are
        computed from H and W (H, W >= 8 for 13 3x3 regions).
    n_negatives : int, default=5
        Negative positions per anchor, 1 to 5, taken from each of the two maps.
    weight : torch.Tensor of shape (region_size**2 * C, D), default=None
        Shared linear map (the official ``wgt_en=1`` W, no bias) applied to
        every flattened region, rows in (c, dy, dx) order; convert an
        official (dy, dx, c) W with :func:`region_weight_from_nhwc`.
    volume, partition : array-like or torch.Tensor of shape (N,), default=None
        Volume and partition of each image; required for ``"LD"``.
    reduction : {"official", "mean", "sum"}, default="official"
        ``"official"`` divides the sum of the terms by ``2N R``; ``"mean"``
        by the number of terms (the same for ``"LR"``); ``"sum"`` returns it.

    Returns
    -------
    torch.Tensor
        Scalar loss, dtype ``promote(view1.dtype, float32)``.

    Examples
    --------
    >>> import torch
    >>> f = torch.ones(2, 4, 48, 48)  # every region identical: log(1 + 2 * 5)
    >>> round(float(local_contrastive_loss(f, f, temperature=1.0)), 4)
    2.3979
    """
    _check_maps(view1, view2)
    temperature = check_temperature(temperature)
    strategy = _check_choice(strategy, "strategy", LOCAL_STRATEGIES)
    regions = _check_region_args(region_size, regions, n_negatives)
    reduction = _check_choice(reduction, "reduction", LOCAL_REDUCTIONS)
    n, c, h, w = view1.shape
    k = region_size
    if weight is not None:
        _check_weight(weight, k * k * c)
    device = view1.device
    if strategy == "LD":
        if volume is None or partition is None:
            raise ValueError(
                "volume and partition are required for strategy 'LD' (one id per "
                "image)."
            )
        vol = _as_labels(volume, n, "volume", device)
        part = _as_labels(partition, n, "partition", device)
    positions, anchor_idx, neg_idx = _region_layout(h, w, k, regions, n_negatives)
    positions = torch.tensor(positions, dtype=torch.long, device=device)
    anchor_idx = torch.tensor(anchor_idx, dtype=torch.long, device=device)
    neg_idx = torch.tensor(neg_idx, dtype=torch.long, device=device)
    n_regions = anchor_idx.shape[0]

    dtype = torch.promote_types(view1.dtype, torch.float32)
    x = _region_vectors(torch.cat([view1, view2]).to(dtype), positions, k)
    if weight is not None:
        x = x @ weight.to(dtype)
    x = cosine_normalize(x, dim=-1) / math.sqrt(temperature)  # <x, y> = s / tau
    anc, neg = x[:, anchor_idx], x[:, neg_idx]  # (2N, R, D), (2N, R, n, D)
    own = torch.einsum("mrd,mrqd->mrq", anc, neg)  # anchor vs own negatives

    if strategy == "LR":
        a_anc, a_own = anc, own  # anchors: view1 then view2 maps
        p_anc = torch.cat([anc[n:], anc[:n]])  # the other view of the same image
        p_neg = torch.cat([neg[n:], neg[:n]])
        pos = (a_anc * p_anc).sum(-1, keepdim=True)
        other = torch.einsum("mrd,mrqd->mrq", a_anc, p_neg)
        logits = torch.cat([pos, a_own, other], dim=-1)
        total = (torch.logsumexp(logits, dim=-1) - logits[..., 0]).sum()
        n_terms = 2 * n * n_regions
    else:
        # anchors: view1 maps; partners: any of the 2N maps, masked below
        a_anc = anc[:n]
        pos = torch.einsum("ird,jrd->ijr", a_anc, anc)  # (N, 2N, R)
        other = torch.einsum("ird,jrqd->ijrq", a_anc, neg)  # (N, 2N, R, n)
        logits = torch.cat(
            [pos[..., None], own[:n, None].expand_as(other), other], dim=-1
        )
        terms = torch.logsumexp(logits, dim=-1) - pos
        idx = torch.arange(n, device=device)
        partner = torch.zeros(n, 2 * n, dtype=torch.bool, device=device)
        partner[idx, idx + n] = True
        partner[:, :n] = (part[:, None] == part[None, :]) & (
            vol[:, None] != vol[None, :]
        )
        total = terms.masked_fill(~partner[..., None], 0.0).sum()
        n_terms = partner.sum() * n_regions
    if reduction == "sum":
        return total
    if reduction == "official":
        return total / (2 * n * n_regions)
    return total / n_terms


class LocalContrastiveLoss(torch.nn.Module):
    """Module form of :func:`local_contrastive_loss`, optionally owning W.

    With ``in_channels`` and ``out_features`` set, the module holds the shared
    region map ``weight`` of shape ``(region_size**2 * in_channels,
    out_features)`` as a learnable parameter (He-normal, std
    ``sqrt(2 / fan_in)``, as the official initialiser), applied to every
    flattened region in (c, dy, dx) order.

    Parameters
    ----------
    temperature : float, default=0.1
    strategy : {"LR", "LD"}, default="LR"
    region_size : {1, 3}, default=3
    regions : {"official13", "official9"}, default="official13"
    n_negatives : int, default=5
    reduction : {"official", "mean", "sum"}, default="official"
    in_channels : int, default=None
        Channels C of the feature maps (needed with ``out_features``).
    out_features : int, default=None
        Output size of the region map W (the official 128); None: no W.

    Examples
    --------
    >>> import torch
    >>> crit = LocalContrastiveLoss(in_channels=4, out_features=8)
    >>> tuple(crit.weight.shape)
    (36, 8)
    >>> crit(torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)).shape
    torch.Size([])
    """

    def __init__(
        self,
        temperature=0.1,
        strategy="LR",
        region_size=3,
        regions="official13",
        n_negatives=5,
        reduction="official",
        in_channels=None,
        out_features=None,
    ):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.strategy = _check_choice(strategy, "strategy", LOCAL_STRATEGIES)
        self.regions = _check_region_args(region_size, regions, n_negatives)
        self.region_size = region_size
        self.n_negatives = n_negatives
        self.reduction = _check_choice(reduction, "reduction", LOCAL_REDUCTIONS)
        self.in_channels = in_channels
        self.out_features = out_features
        if out_features is None:
            if in_channels is not None:
                _check_int(in_channels, "in_channels", 1)
            self.register_parameter("weight", None)
        else:
            _check_int(out_features, "out_features", 1)
            if in_channels is None:
                raise ValueError("in_channels is required when out_features is set.")
            _check_int(in_channels, "in_channels", 1)
            fan_in = region_size**2 * in_channels
            self.weight = torch.nn.Parameter(
                torch.randn(fan_in, out_features) * math.sqrt(2.0 / fan_in)
            )

    def forward(self, view1, view2, volume=None, partition=None):
        """Return the loss of the two aligned feature maps."""
        return local_contrastive_loss(
            view1,
            view2,
            temperature=self.temperature,
            strategy=self.strategy,
            region_size=self.region_size,
            regions=self.regions,
            n_negatives=self.n_negatives,
            weight=self.weight,
            volume=volume,
            partition=partition,
            reduction=self.reduction,
        )

    def extra_repr(self):
        return (
            f"temperature={self.temperature}, strategy={self.strategy!r}, "
            f"region_size={self.region_size}, regions={self.regions!r}, "
            f"n_negatives={self.n_negatives}, reduction={self.reduction!r}, "
            f"in_channels={self.in_channels}, out_features={self.out_features}"
        )
