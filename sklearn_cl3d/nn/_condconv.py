"""DrasCLR's location-conditioned convolution as a module."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._densenet import _check_positive_int
from .functional import cond_conv3d

__all__ = ["CondConv3d"]


class CondConv3d(nn.Module):
    """Location-routed conditional 3-D convolution (DrasCLR).

    A mixture of ``n_experts`` kernels whose per-sample gates are
    ``sigmoid(A p + c)`` of the sample's location ``p`` only; see
    :func:`sklearn_cl3d.nn.functional.cond_conv3d` for the formula. The whole
    batch runs as one grouped convolution.

    Initialisation follows the official code: the expert tensor goes through
    PyTorch's default convolution initialisation, which reads dimension 1
    (``out_channels``) as the fan-in, so both ``weight`` and ``bias`` are
    drawn from ``U(-1/sqrt(O * I * k**3), 1/sqrt(O * I * k**3))``. The
    routing layer is an :class:`torch.nn.Linear` with its default
    initialisation.

    Parameters
    ----------
    in_channels : int
        Input channels ``I``.
    out_channels : int
        Output channels ``O``.
    kernel_size : int, default=3
        Edge of the cubic kernel.
    n_experts : int, default=8
        Number of expert kernels ``E``.
    stride, padding : int or tuple of 3 ints, default=1
        As in :class:`torch.nn.Conv3d`.
    bias : bool, default=True
        Add a shared (not expert-mixed) output bias.
    location_dim : int, default=3
        Number of location coordinates ``L`` fed to the routing layer.

    Attributes
    ----------
    weight : torch.nn.Parameter of shape (E, O, I, k, k, k)
        Expert kernels.
    bias : torch.nn.Parameter of shape (O,) or None
        Shared bias.
    routing : torch.nn.Linear
        Maps a location (L,) to the E gate logits.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import CondConv3d
    >>> conv = CondConv3d(1, 4, n_experts=2, stride=2)
    >>> conv(torch.zeros(3, 1, 8, 8, 8), torch.zeros(3, 3)).shape
    torch.Size([3, 4, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        n_experts=8,
        stride=1,
        padding=1,
        bias=True,
        location_dim=3,
    ):
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        self.kernel_size = _check_positive_int(kernel_size, "kernel_size")
        self.n_experts = _check_positive_int(n_experts, "n_experts")
        self.location_dim = _check_positive_int(location_dim, "location_dim")
        self.stride = stride
        self.padding = padding
        k = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty(self.n_experts, self.out_channels, self.in_channels, k, k, k)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels))
        else:
            self.register_parameter("bias", None)
        self.routing = nn.Linear(self.location_dim, self.n_experts)
        self.reset_parameters()

    def reset_parameters(self):
        """Official initialisation of the experts and bias (see class doc)."""
        fan_in = self.out_channels * self.in_channels * self.kernel_size**3
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self.routing.reset_parameters()

    def forward(self, x, locations):
        """Convolve ``x`` (B, I, D, H, W) at ``locations`` (B, L)."""
        return cond_conv3d(
            x,
            locations,
            self.weight,
            self.bias,
            self.routing.weight,
            self.routing.bias,
            stride=self.stride,
            padding=self.padding,
        )

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, n_experts={self.n_experts}, "
            f"stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}, location_dim={self.location_dim}"
        )
