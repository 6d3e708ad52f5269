"""2-D backbones for slice-based methods (WSP positional contrastive learning).

Both backbones take batches of slices shaped ``(n, C, H, W)`` and return
globally average-pooled features of shape ``(n, out_features)``:

- :class:`TinyNet2D`: the plain five-convolution CNN that is the default WSP
  encoder (see ``specs/wsp.md`` section 2.4), with the two bugs of the
  published file fixed (the first convolution takes ``in_channels`` inputs
  and the last one takes 128). It only accepts slices of at least
  :attr:`TinyNet2D.min_input_size` (156) pixels on each side.
- :class:`ResNet2D` and :func:`resnet18_2d`: a ResNet-18 layout with dropout
  after each stage and a last-stage width equal to the representation size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from ._densenet import _as_int_tuple, _check_positive_int, _init_weights
from ._small import _check_dropout

__all__ = ["TinyNet2D", "ResNet2D", "resnet18_2d"]


def _check_image_batch(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{name} expects a batch of 2-D slices shaped (n, C, H, W); got "
            f"input of shape {tuple(x.shape)}."
        )


def _tinynet_min_input_size(
    n_pooled_convs: int = 4, kernel_size: int = 5, final_pool: int = 2
) -> int:
    """Smallest square input side a TinyNet-style CNN accepts.

    The network applies ``n_pooled_convs`` blocks of a valid (unpadded)
    ``kernel_size`` convolution followed by a 2x2 max-pool (floor rounding),
    then one more valid convolution and a ``final_pool`` max-pool. Working
    backwards, the last feature map must have side ``final_pool`` before its
    pool, hence ``final_pool + kernel_size - 1`` before the last convolution;
    each earlier block needs ``2 * side + kernel_size - 1`` at its input
    (the smallest input whose floor-halved convolution output is ``side``).

    Parameters
    ----------
    n_pooled_convs : int, default=4
        Number of convolution + 2x2 max-pool blocks before the last
        convolution.
    kernel_size : int, default=5
        Side of the valid convolutions.
    final_pool : int, default=2
        Side of the max-pool after the last convolution.

    Returns
    -------
    size : int
        Minimum input side; 156 for the TinyNet defaults.

    Examples
    --------
    >>> from sklearn_cl3d.nn import TinyNet2D
    >>> TinyNet2D.compute_min_input_size()
    156
    >>> TinyNet2D.compute_min_input_size(n_pooled_convs=3)
    76
    """
    n_pooled_convs = _check_positive_int(
        n_pooled_convs, "n_pooled_convs", allow_zero=True
    )
    kernel_size = _check_positive_int(kernel_size, "kernel_size")
    final_pool = _check_positive_int(final_pool, "final_pool")
    side = final_pool + kernel_size - 1
    for _ in range(n_pooled_convs):
        side = 2 * side + kernel_size - 1
    return side


class TinyNet2D(nn.Module):
    """TinyNet, the small plain CNN used as the default WSP encoder.

    Five valid (unpadded) 5x5 convolutions with channels
    ``in_channels -> 16 -> 32 -> 64 -> 128 -> rep_dim``, each followed by a
    ReLU. A 2x2 max-pool follows each of the first four; after the fifth
    convolution come another 2x2 max-pool and a global average pool, giving
    a ``rep_dim`` representation. There is no BatchNorm or dropout.

    This is the network of the published WSP code with its two declaration
    bugs fixed (a first convolution redeclared with 2 input channels, and a
    last convolution declared with 256 input channels after a 128-channel
    layer).

    Because every convolution is valid, the input must be at least
    ``min_input_size`` = 156 pixels high and wide: at 156 the last feature
    map is 2x2 before its pool, while at 128 the map is already 4x4 when the
    last 5x5 convolution runs. Smaller inputs raise a ``ValueError``.

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels ``C`` of slices shaped ``(n, C, H, W)``
        (1 for grey-level slices, 3 for repeated-channel inputs).
    rep_dim : int, default=512
        Number of channels of the last convolution, i.e. the representation
        size.

    Attributes
    ----------
    features : torch.nn.Sequential
        The convolutions, ReLUs and max-pools (feature map before the global
        average pool).
    out_features : int
        Output dimension, ``rep_dim``.
    min_input_size : int
        Class attribute: minimum height and width of the input, 156
        (computed by :meth:`compute_min_input_size`).

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import TinyNet2D
    >>> net = TinyNet2D(in_channels=1, rep_dim=32)
    >>> net(torch.zeros(2, 1, 156, 156)).shape
    torch.Size([2, 32])
    >>> TinyNet2D.min_input_size
    156
    >>> net(torch.zeros(2, 1, 128, 128))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: TinyNet2D needs inputs of at least 156x156 pixels, ...
    """

    #: Compute the minimum input side of a TinyNet-style CNN.
    compute_min_input_size = staticmethod(_tinynet_min_input_size)

    #: Minimum input height and width (pixels).
    min_input_size: int = _tinynet_min_input_size()

    #: Channels of the first four convolutions.
    _widths = (16, 32, 64, 128)

    def __init__(self, in_channels: int = 1, rep_dim: int = 512) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.rep_dim = _check_positive_int(rep_dim, "rep_dim")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = self.in_channels
        for i, width in enumerate((*self._widths, self.rep_dim), start=1):
            layers[f"conv{i}"] = nn.Conv2d(prev, width, kernel_size=5)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            layers[f"pool{i}"] = nn.MaxPool2d(kernel_size=2)
            prev = width
        self.features = nn.Sequential(layers)
        self.out_features = int(self.rep_dim)
        _init_weights(self)

    @classmethod
    def check_input_size(cls, spatial_size: Sequence[int]) -> None:
        """Raise ``ValueError`` if ``(H, W)`` is below :attr:`min_input_size`.

        Parameters
        ----------
        spatial_size : sequence of int
            Height and width of the input slices.

        Raises
        ------
        ValueError
            If any side is smaller than ``min_input_size``.

        Examples
        --------
        >>> from sklearn_cl3d.nn import TinyNet2D
        >>> TinyNet2D.check_input_size((160, 156))
        """
        size = tuple(int(s) for s in spatial_size)
        if any(s < cls.min_input_size for s in size):
            m = cls.min_input_size
            raise ValueError(
                f"{cls.__name__} needs inputs of at least {m}x{m} pixels, but "
                f"the input spatial size (H, W) is {size}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return pooled features of shape ``(n, out_features)``."""
        _check_image_batch(x, type(self).__name__)
        self.check_input_size(x.shape[-2:])
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # in place: the batch-norm output is saved by no backward, and one
        # map fewer is allocated per block (lower peak RSS on CPUs)
        out += shortcut
        return self.relu(out)


class ResNet2D(nn.Module):
    """2-D ResNet encoder of basic blocks, with dropout after each stage.

    Stem: ``Conv2d(7, stride 2, pad 3, no bias) -> BatchNorm2d -> ReLU ->
    MaxPool2d(3, stride 2, pad 1)``. Stage ``i`` stacks ``blocks[i]`` basic
    blocks (two 3x3 conv-BN layers plus a shortcut, then ReLU) of width
    ``widths[i]``; the first block of every stage but the first has stride 2.
    The shortcut is the identity, or a 1x1 strided conv + BatchNorm when the
    shape changes. As in the official WSP code, ``Dropout(dropout)`` follows
    each stage. The last feature map is globally average-pooled.

    Sub-module names follow the usual ResNet layout (``conv1``, ``bn1``,
    ``layer1.0.conv1``, ``layer2.0.downsample.0``, ...), so ImageNet ResNet
    checkpoints can be loaded with ``load_state_dict(..., strict=False)``
    (their ``fc`` entries are unexpected keys).

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels ``C`` of slices shaped ``(n, C, H, W)``.
    blocks : sequence of int, default=(2, 2, 2, 2)
        Number of basic blocks per stage; the default is ResNet-18.
    widths : sequence of int, default=(64, 128, 256, 512)
        Width of each stage (same length as ``blocks``). The stem has
        ``widths[0]`` channels and the output dimension is ``widths[-1]``.
    dropout : float, default=0.1
        Dropout probability after each stage (active in training mode only).
    final_norm : bool, default=False
        Add ``last_bn``, a BatchNorm on the last feature map before the
        pooling: the official classifier mode (its encoder mode has none).

    Attributes
    ----------
    out_features : int
        Output dimension, ``widths[-1]``.
    last_bn : torch.nn.BatchNorm2d or None
        The final BatchNorm (``final_norm``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import ResNet2D
    >>> net = ResNet2D(blocks=(1, 1), widths=(8, 16))
    >>> net.out_features
    16
    >>> net.eval()(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 16])
    """

    def __init__(
        self,
        in_channels: int = 1,
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        dropout: float = 0.1,
        final_norm: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.blocks = _as_int_tuple(blocks, "blocks")
        self.widths = _as_int_tuple(widths, "widths")
        if len(self.blocks) != len(self.widths):
            raise ValueError(
                "blocks and widths must have the same length (one entry per "
                f"stage); got blocks={self.blocks} and widths={self.widths}."
            )
        self.dropout = _check_dropout(dropout)

        stem = self.widths[0]
        self.conv1 = nn.Conv2d(
            self.in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        prev = stem
        self.n_stages = len(self.blocks)
        for i, (n_blocks, width) in enumerate(zip(self.blocks, self.widths)):
            stride = 1 if i == 0 else 2
            stage = [_BasicBlock(prev, width, stride)]
            stage += [_BasicBlock(width, width) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.add_module(f"drop{i + 1}", nn.Dropout(self.dropout))
            prev = width
        self.out_features = int(self.widths[-1])
        self.last_bn = nn.BatchNorm2d(self.out_features) if final_norm else None
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map (after the last stage and its dropout)."""
        _check_image_batch(x, type(self).__name__)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"drop{i}")(getattr(self, f"layer{i}")(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return pooled features of shape ``(n, out_features)``."""
        x = self.forward_features(x)
        norm = getattr(self, "last_bn", None)  # absent from older pickles
        if norm is not None:
            x = norm(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def resnet18_2d(
    in_channels: int = 1, rep_dim: int = 512, dropout: float = 0.1
) -> ResNet2D:
    """Build the WSP ResNet-18 encoder (blocks (2, 2, 2, 2), widths 64/128/256/rep_dim).

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels (1 for grey-level slices, 3 when ImageNet
        weights are loaded and the grey channel is repeated).
    rep_dim : int, default=512
        Width of the last stage, i.e. the representation size.
    dropout : float, default=0.1
        Dropout probability after each of the four stages.

    Returns
    -------
    model : ResNet2D
        The backbone, with ``out_features == rep_dim``.

    Examples
    --------
    >>> from sklearn_cl3d.nn import resnet18_2d
    >>> net = resnet18_2d()
    >>> net.out_features
    512
    >>> sum(p.numel() for p in net.parameters())
    11170240
    """
    if isinstance(rep_dim, bool) or not isinstance(rep_dim, Integral):
        raise TypeError(f"rep_dim must be an int, got {rep_dim!r}.")
    return ResNet2D(
        in_channels=in_channels,
        blocks=(2, 2, 2, 2),
        widths=(64, 128, 256, rep_dim),
        dropout=dropout,
    )
