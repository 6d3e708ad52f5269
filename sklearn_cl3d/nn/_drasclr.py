"""DrasCLR's anatomy-conditioned 3-D CNN with its MoCo-v2 head, and the
momentum encoder with one negative queue per landmark."""

from __future__ import annotations

import copy
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from ._condconv import CondConv3d
from ._cpu_kernels import safe_conv
from ._densenet import _check_positive_int
from .functional import routing_gates

__all__ = ["DrasCLRMoCo", "DrasCLRNet", "queue_nbytes"]

#: (out_channels, stride) of the 13 convolutions; the last width is rep_dim.
_LAYOUT = (
    (8, 1), (8, 2),  # stem
    (16, 1), (16, 1), (16, 2),  # block 1
    (32, 1), (32, 1), (32, 2),  # block 2
    (64, 1), (64, 1), (64, 2),  # block 3
    (128, 1),  # conv3
    (None, 2),  # conv4 -> rep_dim
)  # fmt: skip


class _CondBlock(nn.Module):
    """``CondConv3d(3, pad 1) -> BatchNorm3d -> ELU``."""

    def __init__(self, in_channels, out_channels, stride, n_experts, location_dim):
        super().__init__()
        self.conv = CondConv3d(
            in_channels,
            out_channels,
            kernel_size=3,
            n_experts=n_experts,
            stride=stride,
            padding=1,
            location_dim=location_dim,
        )
        self.bn = nn.BatchNorm3d(out_channels)
        self.act = nn.ELU(alpha=1.0)

    def forward(self, x, locations, shared=False):
        if shared:
            # one location for the whole batch: one mixed kernel, a dense conv
            conv = self.conv
            gates = routing_gates(
                locations[:1], conv.routing.weight, conv.routing.bias
            ).to(conv.weight.dtype)
            kernel = (gates @ conv.weight.reshape(conv.n_experts, -1)).reshape(
                conv.weight.shape[1:]
            )
            y = safe_conv(x, kernel, conv.bias, conv.stride, conv.padding)
        else:
            y = self.conv(x, locations)
        return self.act(self.bn(y))


class DrasCLRNet(nn.Module):
    """DrasCLR's location-conditioned 3-D CNN and its MoCo-v2 MLP head.

    Thirteen :class:`~sklearn_cl3d.nn.CondConv3d` layers (3x3x3, padding 1,
    each with its own routing layer, followed by ``BatchNorm3d`` and
    ``ELU``), laid out as in the official code:

    ======== ======================================= ==============
    stage    convolutions (in -> out, stride)        output (32^3)
    ======== ======================================= ==============
    stem     C -> 8 s1; 8 -> 8 s2                    8 x 16^3
    block 1  8 -> 16 s1; 16 -> 16 s1; 16 -> 16 s2    16 x 8^3
    block 2  16 -> 32 s1; 32 -> 32 s1; 32 -> 32 s2   32 x 4^3
    block 3  32 -> 64 s1; 64 -> 64 s1; 64 -> 64 s2   64 x 2^3
    conv3    64 -> 128 s1                            128 x 2^3
    conv4    128 -> rep_dim s2                       rep_dim x 1^3
    ======== ======================================= ==============

    The representation ``h`` (``rep_dim``) is the flattened final map; the
    head is ``Linear(rep_dim, rep_dim) -> ReLU -> Linear(rep_dim,
    projection_dim)`` (MoCo-v2) and gives the contrastive embedding ``z``.
    The expert gates of every layer are ``sigmoid(A p + c)`` of the sample's
    location ``p`` only.

    Any patch of at most 32 voxels per axis ends in a 1^3 map (every
    stride-2 convolution halves the size, rounding up). The official flatten
    only works there; for larger patches the final map is averaged over
    space (global average pooling), which is the same as flattening for a
    1^3 map.

    When all samples of a batch share one location (DrasCLR's anchors and
    keys), every layer mixes its kernel once and runs one dense convolution
    instead of the per-sample grouped one; the result is the same.

    Parameters
    ----------
    in_channels : int, default=1
        Channels of the input patches.
    n_experts : int, default=8
        Expert kernels per convolution.
    rep_dim : int, default=128
        Size of the representation ``h`` (output channels of the last conv).
    projection_dim : int, default=128
        Size of the contrastive embedding ``z``.
    location_dim : int, default=3
        Size of the location vector fed to the routing layers.

    Attributes
    ----------
    layers : torch.nn.ModuleList
        The 13 ``CondConv3d -> BatchNorm3d -> ELU`` blocks.
    head : torch.nn.Sequential
        The MoCo-v2 MLP head.
    out_features : int
        Equal to ``rep_dim``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import DrasCLRNet
    >>> net = DrasCLRNet(n_experts=2).eval()
    >>> x, loc = torch.zeros(3, 1, 8, 8, 8), torch.zeros(3, 3)
    >>> net(x, loc).shape, net.encode(x, loc).shape
    (torch.Size([3, 128]), torch.Size([3, 128]))
    >>> sum(p.numel() for p in DrasCLRNet().parameters())  # the official count
    8262272
    """

    def __init__(
        self,
        in_channels=1,
        n_experts=8,
        rep_dim=128,
        projection_dim=128,
        location_dim=3,
    ):
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.n_experts = _check_positive_int(n_experts, "n_experts")
        self.rep_dim = _check_positive_int(rep_dim, "rep_dim")
        self.projection_dim = _check_positive_int(projection_dim, "projection_dim")
        self.location_dim = _check_positive_int(location_dim, "location_dim")
        self.out_features = self.rep_dim
        blocks = []
        width = self.in_channels
        for out, stride in _LAYOUT:
            out = self.rep_dim if out is None else out
            blocks.append(
                _CondBlock(width, out, stride, self.n_experts, self.location_dim)
            )
            width = out
        self.layers = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            nn.Linear(self.rep_dim, self.rep_dim),
            nn.ReLU(),
            nn.Linear(self.rep_dim, self.projection_dim),
        )

    def _check(self, x, locations):
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            raise ValueError(
                "x must be a tensor of shape (B, C, D, H, W); got "
                f"{tuple(getattr(x, 'shape', ()))}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channel(s) but the network expects "
                f"{self.in_channels}."
            )
        if (
            not isinstance(locations, torch.Tensor)
            or locations.ndim != 2
            or locations.shape != (x.shape[0], self.location_dim)
        ):
            raise ValueError(
                f"locations must have shape (B, {self.location_dim}) = "
                f"({x.shape[0]}, {self.location_dim}); got "
                f"{tuple(getattr(locations, 'shape', ()))}."
            )

    def encode(self, x, locations):
        """Representation ``h`` of ``x`` (B, C, D, H, W) at ``locations`` (B, L).

        Returns
        -------
        torch.Tensor of shape (B, rep_dim)
        """
        self._check(x, locations)
        locations = locations.to(device=x.device, dtype=x.dtype)
        shared = x.shape[0] > 1 and bool((locations == locations[:1]).all())
        for block in self.layers:
            x = block(x, locations, shared=shared)
        return x.flatten(2).mean(dim=2)

    def forward(self, x, locations, return_representation=False):
        """Contrastive embedding ``z`` (B, projection_dim) of ``x`` at ``locations``.

        With ``return_representation=True``, return ``(h, z)``.
        """
        h = self.encode(x, locations)
        z = self.head(h)
        return (h, z) if return_representation else z


def queue_nbytes(n_landmarks, queue_size, dim=128, itemsize=4):
    """Bytes of DrasCLR's queues: ``dim * queue_size * n_landmarks * itemsize``.

    Parameters
    ----------
    n_landmarks : int
        Number of landmarks (one queue each).
    queue_size : int
        Keys per queue.
    dim : int, default=128
        Size of a key (``projection_dim``).
    itemsize : int, default=4
        Bytes per value (4 for float32).

    Returns
    -------
    int

    Examples
    --------
    >>> round(queue_nbytes(581, 4096) / 1e9, 2)   # the official setting, GB
    1.22
    """
    return int(dim) * int(queue_size) * int(n_landmarks) * int(itemsize)


def freeze_routing(module):
    """Zero and freeze every routing matrix of ``module``: constant gates.

    The expert kernels are then mixed by ``sigmoid(c)``, the same for every
    location: DrasCLR's network without anatomy conditioning (the ablation
    baseline), with the same parameters and training otherwise.

    Parameters
    ----------
    module : torch.nn.Module
        A :class:`DrasCLRNet`, a :class:`DrasCLRMoCo` or any module holding
        them; every sub-module with a ``routing`` Linear layer is changed.

    Returns
    -------
    module : torch.nn.Module
        The same module, changed in place.

    Examples
    --------
    >>> from sklearn_cl3d.nn import DrasCLRNet
    >>> from sklearn_cl3d.nn._drasclr import freeze_routing
    >>> net = freeze_routing(DrasCLRNet(n_experts=2))
    >>> routing = net.layers[0].conv.routing.weight
    >>> bool(routing.eq(0).all()), routing.requires_grad
    (True, False)
    """
    for sub in module.modules():
        routing = getattr(sub, "routing", None)
        if isinstance(routing, nn.Linear):
            with torch.no_grad():
                routing.weight.zero_()
            routing.weight.requires_grad_(False)
    return module


def _check_momentum(momentum):
    if isinstance(momentum, bool) or not isinstance(momentum, Real):
        raise TypeError(f"momentum must be a float in [0, 1]; got {momentum!r}.")
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}.")
    return momentum


class DrasCLRMoCo(nn.Module):
    """Query network, momentum (key) network and one MoCo queue per landmark.

    ``query`` is a :class:`DrasCLRNet`; ``key`` starts as an exact copy and
    receives no gradient: :meth:`momentum_update` sets every key parameter
    to ``m * key + (1 - m) * query`` (expert kernels, routing layers, BN
    affine weights and head; BatchNorm running statistics are not averaged).

    The queues are one buffer ``queue`` of shape ``(n_landmarks,
    projection_dim, queue_size)``: column ``m`` of ``queue[j]`` is a stored
    unit-length key of landmark ``j``. They start as random Gaussian columns
    normalised to unit length. :meth:`enqueue` overwrites the oldest columns
    (FIFO, a circular pointer per landmark in ``queue_ptr``).

    Memory of the queues: ``projection_dim * queue_size * n_landmarks * 4``
    bytes (float32), 1.22 GB with DrasCLR's 581 landmarks, 128 dimensions
    and 4096 keys (see :func:`queue_nbytes`). A ``MemoryError`` giving that
    size is raised when it cannot be allocated.

    Parameters
    ----------
    n_landmarks : int
        Number of landmarks (queues).
    in_channels, n_experts, rep_dim, projection_dim, location_dim : int
        Passed to :class:`DrasCLRNet`.
    queue_size : int, default=4096
        Keys per landmark queue, ``K``.
    momentum : float, default=0.999
        Default ``m`` of :meth:`momentum_update`.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import DrasCLRMoCo
    >>> moco = DrasCLRMoCo(3, n_experts=2, queue_size=8)
    >>> moco.queue.shape, moco.queue_ptr.tolist()
    (torch.Size([3, 128, 8]), [0, 0, 0])
    >>> moco.enqueue(torch.randn(5, 128), landmark=1)
    >>> moco.queue_ptr.tolist()
    [0, 5, 0]
    """

    def __init__(
        self,
        n_landmarks,
        *,
        in_channels=1,
        n_experts=8,
        rep_dim=128,
        projection_dim=128,
        location_dim=3,
        queue_size=4096,
        momentum=0.999,
    ):
        super().__init__()
        self.n_landmarks = _check_positive_int(n_landmarks, "n_landmarks")
        self.queue_size = _check_positive_int(queue_size, "queue_size")
        self.momentum = _check_momentum(momentum)
        self.query = DrasCLRNet(
            in_channels=in_channels,
            n_experts=n_experts,
            rep_dim=rep_dim,
            projection_dim=projection_dim,
            location_dim=location_dim,
        )
        self.key = copy.deepcopy(self.query)
        for param in self.key.parameters():
            param.requires_grad_(False)
        dim = self.query.projection_dim
        shape = (self.n_landmarks, dim, self.queue_size)
        try:
            queue = torch.empty(shape)
        except (RuntimeError, MemoryError) as exc:
            nbytes = queue_nbytes(self.n_landmarks, self.queue_size, dim)
            raise MemoryError(
                f"DrasCLR's negative queues need projection_dim x queue_size x "
                f"n_landmarks x 4 bytes = {dim} x {self.queue_size} x "
                f"{self.n_landmarks} x 4 = {nbytes} bytes ({nbytes / 1e9:.2f} GB), "
                "which could not be allocated; reduce queue_size or the number "
                f"of landmarks. ({exc})"
            ) from None
        queue.normal_()
        queue.div_(queue.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.register_buffer("queue", queue)
        self.register_buffer(
            "queue_ptr", torch.zeros(self.n_landmarks, dtype=torch.long)
        )

    def forward(self, x, locations):
        """Query embedding ``z`` of ``x`` at ``locations``."""
        return self.query(x, locations)

    def encode(self, x, locations):
        """Query representation ``h`` of ``x`` at ``locations``."""
        return self.query.encode(x, locations)

    @torch.no_grad()
    def momentum_update(self, momentum=None):
        """``key <- m * key + (1 - m) * query`` for every parameter."""
        m = self.momentum if momentum is None else _check_momentum(momentum)
        for pk, pq in zip(self.key.parameters(), self.query.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def keys(self, x, locations):
        """Key embeddings of ``x`` (no gradient; call after :meth:`momentum_update`)."""
        return self.key(x, locations)

    @torch.no_grad()
    def enqueue(self, keys, landmark):
        """Store unit-normalised ``keys`` (n, projection_dim) in queue ``landmark``.

        The keys overwrite columns ``ptr, ptr + 1, ...`` (modulo
        ``queue_size``) and the pointer advances by ``n``, modulo
        ``queue_size``. With more keys than the queue holds, only the last
        ``queue_size`` keys are kept.
        """
        landmark = int(landmark)
        if not 0 <= landmark < self.n_landmarks:
            raise IndexError(
                f"landmark {landmark} is out of range for {self.n_landmarks} queues."
            )
        keys = F.normalize(keys.detach(), dim=1).to(self.queue.dtype)
        n = keys.shape[0]
        size = self.queue_size
        ptr = int(self.queue_ptr[landmark])
        skip = max(0, n - size)
        cols = (ptr + skip + torch.arange(n - skip, device=self.queue.device)) % size
        self.queue[landmark][:, cols] = keys[skip:].T.to(self.queue.device)
        self.queue_ptr[landmark] = (ptr + n) % size
