"""U-Net and projection heads of global-local contrastive pretraining.

The network follows the 2-D U-Net of Chaitanya et al. (NeurIPS 2020), see
``specs/globallocal.md`` section 2, in PyTorch's channels-first layout:

- an encoder of six levels (two 3x3 convolutions each, a 2x2 max-pool after
  levels 1 to 5), whose level-6 map feeds the global head :class:`GlobalHead`
  (``g1``);
- five decoder blocks (nearest-neighbour upsampling, a 2x2 convolution, the
  skip concatenation, then 3x3 convolutions), whose block-``l`` output feeds
  the local head :class:`LocalHead` (``g2``);
- a segmentation tail used for fine-tuning.

``dims=3`` builds the same network from 3-D layers (isotropic kernels and
pooling).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from ._densenet import _as_int_tuple, _check_positive_int

__all__ = ["UNet", "GlobalHead", "LocalHead"]

#: BatchNorm settings of the official code: TF epsilon 1e-3 and moving-average
#: decay 0.99, i.e. a PyTorch momentum of 1 - 0.99.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _check_dims(dims) -> int:
    if isinstance(dims, bool) or not isinstance(dims, Integral) or dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}.")
    return int(dims)


def _he_init(module: nn.Module) -> None:
    """He-normal weights (std ``sqrt(2 / fan_in)``), zero biases, unit BN."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn_relu(dims, c_in, c_out, kernel_size=3):
    """Convolution (with bias) -> BatchNorm -> ReLU, size-preserving for k=3."""
    return nn.Sequential(
        _CONV[dims](c_in, c_out, kernel_size, padding=kernel_size // 2),
        _BN[dims](c_out, eps=_BN_EPS, momentum=_BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


class _SamePad(nn.Module):
    """TensorFlow ``'SAME'`` padding of a 2-wide kernel: 0 before, 1 after."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.pad = (0, 1) * dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class _DecoderBlock(nn.Module):
    """Upsample x2 (nearest), 2x2 conv, concatenate the skip, 3x3 convs."""

    def __init__(self, dims, c_in, c_skip, c_out, n_convs) -> None:
        super().__init__()
        self.up_conv = nn.Sequential(
            _SamePad(dims),
            _CONV[dims](c_in, c_out, kernel_size=2),
            _BN[dims](c_out, eps=_BN_EPS, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        convs = [_conv_bn_relu(dims, c_out + c_skip, c_out)]
        convs += [_conv_bn_relu(dims, c_out, c_out) for _ in range(n_convs - 1)]
        self.convs = nn.Sequential(*convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.up_conv(x)
        return self.convs(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """U-Net of global-local contrastive pretraining (Chaitanya et al., 2020).

    **Encoder** (:attr:`encoder`): ``L = len(channels)`` levels (6 by
    default), each two 3x3 convolutions ``conv (with bias) -> BatchNorm ->
    ReLU``; levels 1 to ``L - 1`` end in a 2x2 max-pool. The second
    convolution of those levels is the skip connection of the decoder.

    **Decoder** (:attr:`decoder_blocks`): block ``k = 1 .. L - 1`` upsamples
    by 2 (nearest neighbour), applies a 2x2 ``conv -> BN -> ReLU`` padded as
    TensorFlow's ``'SAME'`` (0 before, 1 after on each axis, so the size is
    kept), concatenates the skip of encoder level ``L - k`` and applies two
    3x3 ``conv -> BN -> ReLU`` (the last block only one). Block ``k`` has as
    many output channels as that skip: 128, 128, 64, 32, 16 by default, at
    1/16, 1/8, 1/4, 1/2 and 1 times the input size.

    **Segmentation tail** (:attr:`seg_head`, only with ``n_classes``): two
    3x3 ``conv -> BN -> ReLU`` with ``channels[0]`` channels, then a 3x3
    convolution to ``n_classes`` without bias or BN. :meth:`forward` returns
    its logits (apply the softmax in the loss).

    The spatial size of the input must be divisible by ``2 ** (L - 1)`` (32 by
    default); for a 192x192 input the level-``L`` map is 6x6x128 and the
    output of decoder block 3 is 48x48x64.

    Parameters
    ----------
    dims : {2, 3}, default=2
        2 for slices ``(n, C, H, W)``, 3 for volumes ``(n, C, D, H, W)``.
        The 3-D network uses cubic kernels and isotropic 2x2x2 pooling, so
        every one of ``D, H, W`` must be divisible by ``2 ** (L - 1)``.
    in_channels : int, default=1
        Number of input channels ``C``.
    channels : sequence of int, default=(16, 32, 64, 128, 128, 128)
        Output channels of the encoder levels; at least two levels.
    n_classes : int or None, default=None
        Number of segmentation classes. None builds no segmentation tail
        (pretraining); :meth:`forward` then raises.

    Attributes
    ----------
    encoder : torch.nn.ModuleList
        The ``L`` encoder levels (``torch.nn.Sequential`` of two
        conv-BN-ReLU).
    decoder_blocks : torch.nn.ModuleList
        The ``L - 1`` decoder blocks, in order of use.
    seg_head : torch.nn.Sequential or None
        The segmentation tail, None when ``n_classes`` is None.
    decoder_channels : tuple of int
        Output channels of each decoder block.
    size_multiple : int
        ``2 ** (L - 1)``, the divisor every spatial size must be a multiple of.

    Notes
    -----
    Weights are He-normal (standard deviation ``sqrt(2 / fan_in)``), biases
    zero and BatchNorm uses ``eps=1e-3`` and ``momentum=0.01`` (TensorFlow's
    moving-average decay 0.99), as in the official code. Unlike the official
    code, whose kernel initialisers all share one op seed (so layers with
    same-shaped kernels start identical), every layer is drawn independently.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import UNet
    >>> net = UNet(channels=(4, 8, 8), n_classes=3)
    >>> x = torch.zeros(2, 1, 16, 16)
    >>> net.encode(x).shape
    torch.Size([2, 8, 4, 4])
    >>> net.decode(x, n_blocks=1).shape
    torch.Size([2, 8, 8, 8])
    >>> net(x).shape
    torch.Size([2, 3, 16, 16])
    >>> net(torch.zeros(1, 1, 16, 18))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: UNet needs every spatial size divisible by 4 ...
    """

    def __init__(
        self,
        dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 128, 128),
        n_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.dims = _check_dims(dims)
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.channels = _as_int_tuple(channels, "channels")
        if len(self.channels) < 2:
            raise ValueError(
                f"channels must list at least 2 encoder levels, got {channels!r}."
            )
        self.n_classes = (
            None if n_classes is None else _check_positive_int(n_classes, "n_classes")
        )
        n_levels = len(self.channels)
        self.size_multiple = 2 ** (n_levels - 1)

        levels = []
        prev = self.in_channels
        for c in self.channels:
            levels.append(
                nn.Sequential(
                    _conv_bn_relu(self.dims, prev, c), _conv_bn_relu(self.dims, c, c)
                )
            )
            prev = c
        self.encoder = nn.ModuleList(levels)

        blocks = []
        skips = self.channels[-2::-1]  # levels L-1, ..., 1
        for k, c_skip in enumerate(skips, start=1):
            n_convs = 1 if k == len(skips) else 2
            blocks.append(_DecoderBlock(self.dims, prev, c_skip, c_skip, n_convs))
            prev = c_skip
        self.decoder_blocks = nn.ModuleList(blocks)
        self.decoder_channels = tuple(skips)

        if self.n_classes is None:
            self.seg_head = None
        else:
            c0 = self.channels[0]
            self.seg_head = nn.Sequential(
                _conv_bn_relu(self.dims, prev, c0),
                _conv_bn_relu(self.dims, c0, c0),
                _CONV[self.dims](c0, self.n_classes, 3, padding=1, bias=False),
            )
        _he_init(self)

    @property
    def n_levels(self) -> int:
        """Number of encoder levels ``L``."""
        return len(self.channels)

    def encoded_shape(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """Shape ``(C, *spatial)`` of the level-``L`` map for an input size.

        Parameters
        ----------
        spatial_size : sequence of int
            Input ``(H, W)`` (or ``(D, H, W)`` for ``dims=3``).

        Returns
        -------
        tuple of int
            ``(channels[-1], *(s // size_multiple))``; its product is the
            ``in_features`` of :class:`GlobalHead`.

        Examples
        --------
        >>> from sklearn_cl3d.nn import UNet
        >>> UNet().encoded_shape((192, 192))
        (128, 6, 6)
        """
        size = self._check_spatial(tuple(int(s) for s in spatial_size))
        return (self.channels[-1], *(s // self.size_multiple for s in size))

    def _check_spatial(self, size: tuple[int, ...]) -> tuple[int, ...]:
        m = self.size_multiple
        if len(size) != self.dims or any(s < m or s % m for s in size):
            raise ValueError(
                f"{type(self).__name__} needs every spatial size divisible by {m} "
                f"(2 ** {self.n_levels - 1} for {self.n_levels} levels), but the "
                f"input spatial size is {size}."
            )
        return size

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.dims + 2:
            layout = "(n, C, H, W)" if self.dims == 2 else "(n, C, D, H, W)"
            raise ValueError(
                f"{type(self).__name__}(dims={self.dims}) expects inputs shaped "
                f"{layout}; got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input "
                f"channel(s); got shape {tuple(x.shape)}."
            )
        self._check_spatial(tuple(x.shape[2:]))

    def _encode(self, x: torch.Tensor):
        self._check_input(x)
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        skips = []
        for i, level in enumerate(self.encoder):
            if i:
                x = pool(x, 2)
            x = level(x)
            skips.append(x)
        return skips.pop(), skips

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the level-``L`` map (the input of :class:`GlobalHead`).

        Parameters
        ----------
        x : torch.Tensor of shape (n, C, H, W) or (n, C, D, H, W)
            Input batch.

        Returns
        -------
        torch.Tensor of shape (n, channels[-1], H / m, W / m)
            With ``m = size_multiple`` (and ``D / m`` for ``dims=3``).
        """
        return self._encode(x)[0]

    def decode(self, x: torch.Tensor, n_blocks: int | None = None) -> torch.Tensor:
        """Run the encoder and the first ``n_blocks`` decoder blocks.

        Parameters
        ----------
        x : torch.Tensor of shape (n, C, H, W) or (n, C, D, H, W)
            Input batch (not an encoded map: the encoder runs here too, for
            the skip connections).
        n_blocks : int or None, default=None
            Number of decoder blocks, in ``1 .. L - 1``; None runs them all.

        Returns
        -------
        torch.Tensor
            Output of decoder block ``n_blocks``, with
            ``decoder_channels[n_blocks - 1]`` channels at
            ``2 ** n_blocks / size_multiple`` times the input size.
        """
        n = len(self.decoder_blocks)
        if n_blocks is None:
            n_blocks = n
        n_blocks = _check_positive_int(n_blocks, "n_blocks")
        if n_blocks > n:
            raise ValueError(f"n_blocks must be in 1..{n}, got {n_blocks}.")
        out, skips = self._encode(x)
        for block in self.decoder_blocks[:n_blocks]:
            out = block(out, skips.pop())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return segmentation logits of shape ``(n, n_classes, *spatial)``.

        Parameters
        ----------
        x : torch.Tensor of shape (n, C, H, W) or (n, C, D, H, W)
            Input batch.

        Returns
        -------
        torch.Tensor
            Logits, before the softmax.

        Raises
        ------
        RuntimeError
            If the network was built with ``n_classes=None``.
        """
        if self.seg_head is None:
            raise RuntimeError(
                "this UNet has no segmentation tail (n_classes=None); use "
                "encode() or decode(), or build it with n_classes."
            )
        return self.seg_head(self.decode(x))


class GlobalHead(nn.Module):
    """Global projection head ``g1``: flatten -> Linear -> ReLU -> Linear.

    Both linear layers have no bias; there is no BatchNorm and no output
    normalisation (the contrastive loss normalises). Weights are He-normal.

    Parameters
    ----------
    in_features : int
        Size of the flattened encoder map, ``128 * (H / 32) * (W / 32)`` for
        the default :class:`UNet` (4608 for 192x192 inputs); see
        :meth:`UNet.encoded_shape`.
    hidden_dim : int, default=1024
        Width of the hidden layer.
    out_dim : int, default=128
        Size of the embedding.

    Attributes
    ----------
    out_features : int
        Equal to ``out_dim``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import GlobalHead
    >>> head = GlobalHead(8 * 2 * 2, hidden_dim=16, out_dim=4)
    >>> head(torch.zeros(3, 8, 2, 2)).shape
    torch.Size([3, 4])
    """

    def __init__(
        self, in_features: int, hidden_dim: int = 1024, out_dim: int = 128
    ) -> None:
        super().__init__()
        self.in_features = _check_positive_int(in_features, "in_features")
        self.hidden_dim = _check_positive_int(hidden_dim, "hidden_dim")
        self.out_dim = _check_positive_int(out_dim, "out_dim")
        self.out_features = self.out_dim
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.in_features, self.hidden_dim, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden_dim, self.out_dim, bias=False),
        )
        _he_init(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Embed encoder maps ``(n, ...)`` with ``in_features`` values each."""
        if h.dim() < 2 or h[0].numel() != self.in_features:
            raise ValueError(
                f"GlobalHead expects {self.in_features} features per sample; got "
                f"input of shape {tuple(h.shape)}."
            )
        return self.net(h)


class LocalHead(nn.Module):
    """Local projection head ``g2``: two 1x1 convolutions.

    ``1x1 conv (no bias) -> BatchNorm -> ReLU -> 1x1 conv (no bias)``, with
    ``channels`` channels throughout, so the map keeps its shape. The linear
    map applied to each flattened region by the official scripts
    (``wgt_en=1``) is not part of this head.

    Parameters
    ----------
    channels : int
        Channels of the decoder map (64 for decoder block 3 of the default
        :class:`UNet`).
    dims : {2, 3}, default=2
        2 for maps ``(n, C, H, W)``, 3 for ``(n, C, D, H, W)``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import LocalHead
    >>> LocalHead(8)(torch.zeros(2, 8, 6, 6)).shape
    torch.Size([2, 8, 6, 6])
    """

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.channels = _check_positive_int(channels, "channels")
        self.dims = _check_dims(dims)
        conv = _CONV[self.dims]
        self.net = nn.Sequential(
            conv(self.channels, self.channels, 1, bias=False),
            _BN[self.dims](self.channels, eps=_BN_EPS, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            conv(self.channels, self.channels, 1, bias=False),
        )
        _he_init(self)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Project a decoder map; the output has the same shape."""
        if f.dim() != self.dims + 2 or f.shape[1] != self.channels:
            raise ValueError(
                f"LocalHead(channels={self.channels}, dims={self.dims}) got input "
                f"of shape {tuple(f.shape)}."
            )
        return self.net(f)
