"""Encoders of item sets: one feature vector per sample from many items.

Two pretrainers encode parts of a volume rather than the whole volume:
global-local pretraining encodes 2-D slices with a U-Net encoder, DrasCLR
encodes 3-D patches at landmarks with a location-conditioned CNN. To
fine-tune them as classifiers or regressors of a volume, each sample's items
are encoded in one batch and their features pooled (:class:`ItemPooling`)
into one vector per sample. The modules here are backbones in the sense of
:mod:`sklearn_cl3d.nn`: they map a batch to ``(n, out_features)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._densenet import _check_positive_int
from .functional import resize_in_plane

__all__ = [
    "ITEM_POOLINGS",
    "ItemPooling",
    "LandmarkSetEncoder",
    "SliceSetEncoder",
    "UNetEncoder",
]

#: Poolings of :class:`ItemPooling`.
ITEM_POOLINGS = ("mean", "max", "attention")


class ItemPooling(nn.Module):
    """Pool item features ``(n, k, F)`` into sample features ``(n, F)``.

    ``"mean"`` and ``"max"`` have no parameters. ``"attention"`` is a
    trainable attention pooling (Ilse et al., ICML 2018): item ``j`` gets
    the score ``s_j = w^T tanh(V h_j)`` and the output is
    ``sum_j softmax(s)_j h_j``. ``w`` starts at zero, so the attention
    pooling starts as the mean and learns which items matter.

    Parameters
    ----------
    in_features : int
        Size ``F`` of the item features.
    mode : {"mean", "max", "attention"}, default="mean"
        The pooling.
    hidden_dim : int, default=64
        Width of ``V`` in the attention pooling.

    Attributes
    ----------
    out_features : int
        Equal to ``in_features``.

    Examples
    --------
    >>> import torch
    >>> h = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    >>> ItemPooling(2, "mean")(h).tolist()
    [[2.0, 1.0]]
    >>> ItemPooling(2, "attention")(h).tolist()  # starts as the mean
    [[2.0, 1.0]]
    """

    def __init__(self, in_features, mode="mean", hidden_dim=64):
        super().__init__()
        if mode not in ITEM_POOLINGS:
            raise ValueError(f"mode must be one of {ITEM_POOLINGS}; got {mode!r}.")
        self.in_features = _check_positive_int(in_features, "in_features")
        self.out_features = self.in_features
        self.mode = mode
        if mode == "attention":
            hidden_dim = _check_positive_int(hidden_dim, "hidden_dim")
            self.attention = nn.Sequential(
                nn.Linear(self.in_features, hidden_dim),
                nn.Tanh(),
                nn.Linear(hidden_dim, 1, bias=False),
            )
            nn.init.zeros_(self.attention[2].weight)

    def forward(self, h):
        """Pool ``h`` of shape (n, k, F) over its items."""
        if self.mode == "mean":
            return h.mean(dim=1)
        if self.mode == "max":
            return h.amax(dim=1)
        weights = torch.softmax(self.attention(h).squeeze(-1), dim=1)
        return torch.einsum("nk,nkf->nf", weights, h)

    def extra_repr(self):
        return f"in_features={self.in_features}, mode={self.mode!r}"


class UNetEncoder(nn.Module):
    """The encoder path of a :class:`~sklearn_cl3d.nn.UNet`, averaged over space.

    The level-``L`` map of :meth:`UNet.encode` averaged over its spatial
    axes: the ``"backbone"`` features of
    :class:`~sklearn_cl3d.GlobalLocalPretrainer`. The decoder is not kept.

    Parameters
    ----------
    unet : UNet
        The network whose ``encoder`` levels are used (shared, not copied).

    Attributes
    ----------
    out_features : int
        Channels of the deepest level.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import UNet
    >>> enc = UNetEncoder(UNet(channels=(4, 8, 8)))
    >>> enc(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 8])
    """

    def __init__(self, unet):
        super().__init__()
        self.encoder = unet.encoder
        self.dims = int(unet.dims)
        self.out_features = int(unet.channels[-1])

    def forward(self, x):
        """Spatially averaged deepest encoder map of ``x``, shape ``(n, C, ...)``."""
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        for i, level in enumerate(self.encoder):
            if i:
                x = pool(x, 2)
            x = level(x)
        return x.mean(dim=tuple(range(2, x.ndim)))


class SliceSetEncoder(nn.Module):
    """Encode every 2-D slice of a volume, then pool over the slices.

    A batch of volumes ``(n, C, D, H, W)`` becomes ``n * S`` slices along
    ``slice_axis`` (resized in-plane to ``size``, bilinear), which go
    through ``encoder`` as one batch; their features are pooled per volume.

    Parameters
    ----------
    encoder : torch.nn.Module
        2-D encoder mapping ``(m, C, h, w)`` to ``(m, out_features)``.
    slice_axis : int, default=-1
        Spatial axis (of D, H, W) the slices are taken along.
    size : tuple of int or None, default=None
        In-plane size ``(h, w)`` the slices are resized to; None keeps it.
    pooling : {"mean", "max", "attention"}, default="mean"
        See :class:`ItemPooling`.

    Attributes
    ----------
    out_features : int
        Equal to ``encoder.out_features``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import UNet
    >>> enc = SliceSetEncoder(UNetEncoder(UNet(channels=(4, 8))), size=(8, 8))
    >>> enc(torch.zeros(2, 1, 5, 12, 12)).shape
    torch.Size([2, 8])
    """

    def __init__(self, encoder, slice_axis=-1, size=None, pooling="mean"):
        super().__init__()
        self.encoder = encoder
        self.slice_axis = int(slice_axis)
        self.size = None if size is None else tuple(int(s) for s in size)
        self.out_features = int(encoder.out_features)
        self.pooling = ItemPooling(self.out_features, pooling)

    def forward(self, x):
        """Pooled slice features of volumes ``x`` (n, C, D, H, W)."""
        if x.ndim != 5:
            raise ValueError(
                f"x must have shape (n, C, D, H, W); got {tuple(x.shape)}."
            )
        axis = 2 + self.slice_axis % 3
        n, c = x.shape[:2]
        slices = x.movedim(axis, 1)  # (n, S, C, h, w)
        s = slices.shape[1]
        slices = slices.reshape(n * s, c, *slices.shape[3:])
        if self.size is not None:
            slices = resize_in_plane(slices, self.size)
        h = self.encoder(slices)
        return self.pooling(h.reshape(n, s, -1))

    def extra_repr(self):
        return f"slice_axis={self.slice_axis}, size={self.size}"


class LandmarkSetEncoder(nn.Module):
    """Encode the patches of a subject at its landmarks, then pool.

    A batch ``(n, L, C, P, P, P)`` holds the patches of ``n`` subjects at
    ``L`` landmarks. All ``n * L`` patches go through ``encoder`` with their
    landmark's location (``encoder.encode(patches, locations)``, e.g. the
    query network of DrasCLR) and the features are pooled per subject.

    Parameters
    ----------
    encoder : torch.nn.Module
        Location-conditioned encoder with ``encode(x, locations)`` and
        ``out_features``, such as :class:`~sklearn_cl3d.nn.DrasCLRNet`.
    locations : array-like of shape (L, k)
        Location vector of each landmark (a buffer of the module).
    pooling : {"mean", "max", "attention"}, default="mean"
        See :class:`ItemPooling`.

    Attributes
    ----------
    out_features : int
        Equal to ``encoder.out_features``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import DrasCLRNet
    >>> enc = LandmarkSetEncoder(DrasCLRNet(n_experts=2), torch.rand(3, 3))
    >>> enc.eval()(torch.zeros(2, 3, 1, 8, 8, 8)).shape
    torch.Size([2, 128])
    """

    def __init__(self, encoder, locations, pooling="mean"):
        super().__init__()
        self.encoder = encoder
        locations = torch.as_tensor(locations, dtype=torch.float32)
        if locations.ndim != 2:
            raise ValueError(
                f"locations must have shape (L, k); got {tuple(locations.shape)}."
            )
        self.register_buffer("locations", locations.clone())
        self.out_features = int(encoder.out_features)
        self.pooling = ItemPooling(self.out_features, pooling)

    def forward(self, x):
        """Pooled landmark features of patch stacks ``x`` (n, L, C, P, P, P)."""
        n_landmarks = self.locations.shape[0]
        if x.ndim != 6 or x.shape[1] != n_landmarks:
            raise ValueError(
                f"x must have shape (n, {n_landmarks}, C, P, P, P), one patch per "
                f"landmark; got {tuple(x.shape)}."
            )
        n = x.shape[0]
        patches = x.reshape(n * n_landmarks, *x.shape[2:])
        locations = self.locations.to(x.dtype).repeat(n, 1)
        h = self.encoder.encode(patches, locations)
        return self.pooling(h.reshape(n, n_landmarks, -1))
