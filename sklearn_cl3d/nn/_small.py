"""Small, fast backbones for CPU use, tests and tabular features.

:class:`SmallCNN3D` is a few-stage 3-D convolutional encoder that runs on
volumes as small as 8x8x8. :class:`MLPEncoder` is a plain multilayer
perceptron for 2-D tabular inputs (for example ROI features); it is also the
backbone used by the scikit-learn estimator checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._densenet import _as_int_tuple, _check_positive_int, _init_weights

__all__ = ["SmallCNN3D", "MLPEncoder"]


def _check_dropout(dropout):
    dropout = float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    return dropout


class SmallCNN3D(nn.Module):
    """Small 3-D CNN encoder with global average pooling.

    Each stage is ``Conv3d(3, pad 1, no bias) -> BatchNorm3d -> ReLU``,
    followed by ``MaxPool3d(2)`` except after the last stage. Pooling uses
    ``ceil_mode=True``, so odd sizes round up and a size-1 axis stays 1: any
    spatial size works, including 8x8x8 with three stages. The last feature
    map is globally average-pooled and flattened, then dropout is applied.

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels ``C`` of volumes shaped ``(n, C, D, H, W)``.
    channels : sequence of int, default=(8, 16, 32)
        Output channels of each stage.
    dropout : float, default=0.0
        Dropout probability on the pooled features.

    Attributes
    ----------
    features : torch.nn.Sequential
        The convolutional stages (feature map before pooling).
    out_features : int
        Output dimension, ``channels[-1]``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import SmallCNN3D
    >>> net = SmallCNN3D(in_channels=1, channels=(4, 8))
    >>> net(torch.zeros(2, 1, 8, 8, 8)).shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.channels = _as_int_tuple(channels, "channels")
        self.dropout = _check_dropout(dropout)
        layers: list[nn.Module] = []
        prev = self.in_channels
        for i, ch in enumerate(self.channels):
            layers += [
                nn.Conv3d(prev, ch, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm3d(ch),
                nn.ReLU(inplace=True),
            ]
            if i != len(self.channels) - 1:
                layers.append(nn.MaxPool3d(kernel_size=2, ceil_mode=True))
            prev = ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.drop = nn.Dropout(self.dropout)
        self.out_features = int(self.channels[-1])
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return pooled features of shape ``(n, out_features)``."""
        return self.drop(self.pool(self.features(x)).flatten(1))


class MLPEncoder(nn.Module):
    """Multilayer perceptron encoder for tabular (or flattened) inputs.

    The input is flattened from the second axis on, so ``(n, F)``,
    ``(n, 1, F)`` or any ``(n, ...)`` with ``F`` values per sample is
    accepted. Each hidden dimension adds ``Linear -> ReLU`` (then dropout if
    ``dropout > 0``). There is no BatchNorm, so batches of one sample work in
    training mode.

    Parameters
    ----------
    in_features : int
        Number of input values per sample (product of the per-sample shape).
    hidden_dims : int or sequence of int, default=(64, 64)
        Width of each ``Linear -> ReLU`` layer.
    dropout : float, default=0.0
        Dropout probability after each ReLU.

    Attributes
    ----------
    layers : torch.nn.Sequential
        The stacked layers.
    out_features : int
        Output dimension, ``hidden_dims[-1]``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import MLPEncoder
    >>> net = MLPEncoder(in_features=10, hidden_dims=(16, 4))
    >>> net(torch.zeros(3, 10)).shape
    torch.Size([3, 4])
    >>> net(torch.zeros(1, 1, 10)).shape
    torch.Size([1, 4])
    """

    def __init__(
        self,
        in_features: int,
        hidden_dims: int | Sequence[int] = (64, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = _check_positive_int(in_features, "in_features")
        if not isinstance(hidden_dims, (str, bytes)) and not hasattr(
            hidden_dims, "__iter__"
        ):
            hidden_dims = (hidden_dims,)
        self.hidden_dims = _as_int_tuple(hidden_dims, "hidden_dims")
        self.dropout = _check_dropout(dropout)
        layers: list[nn.Module] = []
        prev = self.in_features
        for width in self.hidden_dims:
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            prev = width
        self.layers = nn.Sequential(*layers)
        self.out_features = int(self.hidden_dims[-1])
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return features of shape ``(n, out_features)``."""
        if x.dim() < 2:
            raise ValueError(
                "MLPEncoder expects a batch shaped (n, ...) with "
                f"{self.in_features} values per sample; got shape {tuple(x.shape)}."
            )
        flat = x.flatten(1)
        if flat.shape[1] != self.in_features:
            raise ValueError(
                f"MLPEncoder was built for in_features={self.in_features} values "
                f"per sample, but the input has {flat.shape[1]} "
                f"(input shape {tuple(x.shape)})."
            )
        return self.layers(flat)
