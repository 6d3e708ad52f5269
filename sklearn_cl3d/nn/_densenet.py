"""3-D DenseNet backbones (DenseNet-121 as used by y-Aware pretraining).

The layout follows the 3-D DenseNet of the y-Aware reference implementation
(see ``specs/yaware.md`` section 2.1): a strided 7x7x7 stem, dense blocks of
BN-ReLU-Conv(1)-BN-ReLU-Conv(3) layers whose outputs are concatenated, and
halving transitions between blocks. In *encoder* mode (the pretraining
default) there is no final BatchNorm; in *classifier* mode a final
``norm5`` BatchNorm is added. Sub-module names mirror the reference layout
(``features.conv0``, ``features.denseblock1.denselayer1.norm1``, ...), so
reference checkpoints map onto this module by a plain key-prefix rename.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._cpu_kernels import MaxPool3d, PointwiseConv3d, pointwise_conv3d_backward

__all__ = ["DenseNet3D", "densenet121"]


def _check_positive_int(value, name, *, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    return int(value)


def _as_int_tuple(values, name):
    """Validate a non-empty sequence of positive ints and return it as a tuple."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got {values!r}.")
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {values!r}.") from None
    if not values:
        raise ValueError(f"{name} must contain at least one value.")
    return tuple(_check_positive_int(v, f"{name} entries") for v in values)


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions, unit/zero BatchNorm, zero Linear biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _batch_norm_without_stat_update(bn: nn.BatchNorm3d, x: torch.Tensor):
    """Apply ``bn`` exactly as in its forward, but leave running stats untouched.

    Used when a checkpointed segment is recomputed during the backward pass:
    the normalisation must be identical to the original forward (batch
    statistics in training mode), but the running averages must not receive a
    second momentum update. Clones of the buffers are passed (rather than
    ``None``) so that the recomputation saves the same tensors as the original.
    """
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return bn(x)
    return F.batch_norm(
        x,
        bn.running_mean.clone(),
        bn.running_var.clone(),
        bn.weight,
        bn.bias,
        True,
        0.0,
        bn.eps,
    )


def _batch_norm_relu(x, bn, mean, invstd):
    """``relu(bn(x))`` with given batch statistics, as the forward computed it."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = invstd * bn.weight if bn.weight is not None else invstd
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return torch.addcmul(shift.view(shape), x, scale.view(shape)).relu_()


def _conv_backward(grad_out, x, conv, need_weight):
    """Input and weight gradients of a bias-free convolution ``conv(x)``."""
    if isinstance(conv, PointwiseConv3d) and conv.matmul_applies(x):
        return pointwise_conv3d_backward(grad_out, x, conv.weight, True, need_weight)
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad_out,
        x,
        conv.weight,
        None,
        list(conv.stride),
        list(conv.padding),
        list(conv.dilation),
        False,
        [0] * (x.ndim - 2),
        conv.groups,
        [True, need_weight, False],
    )
    return grad_x, grad_w


class _DenseLayerFunction(torch.autograd.Function):
    """``conv2(relu(bn2(conv1(relu(bn1(cat(features)))))))`` storing only the
    inputs and ``conv1``'s output.

    Plain autograd would keep, per dense layer, the concatenated input, the
    output of ``bn1``/ReLU and the output of ``bn2``/ReLU: the bulk of a
    DenseNet's activation memory. Here they are recomputed in backward from
    the saved batch statistics. These are memory-bound elementwise operations,
    so no convolution runs twice and the gradients are those of plain autograd,
    bit for bit. The running statistics are updated once, in forward.
    """

    @staticmethod
    def forward(ctx, layer, factors, w1, b1, w2, b2, c1w, c2w, *features):
        del w1, b1, w2, b2, c1w, c2w  # passed only so autograd tracks them
        x = torch.cat(features, dim=1)
        c1, mean1, invstd1 = _bn_relu_conv(x, layer.norm1, factors[0], layer.conv1)
        del x
        out, mean2, invstd2 = _bn_relu_conv(c1, layer.norm2, factors[1], layer.conv2)
        ctx.layer = layer
        ctx.save_for_backward(c1, mean1, invstd1, mean2, invstd2, *features)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        layer = ctx.layer
        c1, mean1, invstd1, mean2, invstd2, *features = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad, grad_c2w, grad_w2, grad_b2 = _bn_relu_conv_backward(
            grad_out, c1, layer.norm2, mean2, invstd2, layer.conv2,
            [True, need[7], need[4], need[5]],
        )
        x = torch.cat(features, dim=1)
        grad, grad_c1w, grad_w1, grad_b1 = _bn_relu_conv_backward(
            grad, x, layer.norm1, mean1, invstd1, layer.conv1,
            [any(need[8:]), need[6], need[2], need[3]],
        )
        del x
        if grad is None:
            grad_features = [None] * len(features)
        else:
            grad_features = grad.split([f.shape[1] for f in features], dim=1)
        return (
            None, None, grad_w1, grad_b1, grad_w2, grad_b2, grad_c1w, grad_c2w,
            *grad_features,
        )


def _bn_relu_conv(x, bn, factor, conv):
    """``conv(relu(bn(x)))`` in training mode (running statistics updated
    with ``factor``), and the batch mean and inverse std of ``bn``."""
    y, mean, invstd = torch.ops.aten._native_batch_norm_legit(
        x, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, factor, bn.eps
    )
    return conv(y.relu_()), mean, invstd


def _bn_relu_conv_backward(grad_out, x, bn, mean, invstd, conv, need):
    """Gradients of :func:`_bn_relu_conv` with respect to ``x``, the
    convolution weight and the BN weight and bias (``need`` says which),
    recomputing ``relu(bn(x))`` from the saved statistics."""
    y = _batch_norm_relu(x, bn, mean, invstd)
    grad, grad_conv = _conv_backward(grad_out, y, conv, need[1])
    grad = torch.ops.aten.threshold_backward(grad, y, 0)
    del y
    grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
        grad, x, bn.weight, None, None, mean, invstd, True, bn.eps,
        [need[0], need[2], need[3]],
    )
    return grad_x, grad_conv, grad_w, grad_b


def _plain_batch_norm(bn) -> bool:
    """Whether ``bn`` is a BatchNorm3d normalising with batch statistics that
    :class:`_DenseLayerFunction` reproduces exactly."""
    return (
        type(bn) is nn.BatchNorm3d
        and bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.affine
    )


def _momentum(bn: nn.BatchNorm3d) -> float:
    """Count the batch and return the running-average factor, as BatchNorm."""
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked)
    return float(bn.momentum)


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1 bottleneck then BN-ReLU-Conv3, producing ``growth_rate`` maps."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient,
    ) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm3d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = PointwiseConv3d(num_input_features, width)
        self.norm2 = nn.BatchNorm3d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(
            width, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, features: Sequence[torch.Tensor], recompute=False):
        x = torch.cat(list(features), dim=1)
        if recompute:
            x = _batch_norm_without_stat_update(self.norm1, x)
        else:
            x = self.norm1(x)
        return self.conv1(self.relu1(x))

    def _checkpointed_bottleneck(self, features: Sequence[torch.Tensor]):
        calls = [0]

        def run(*tensors):
            calls[0] += 1
            # The first call is the real forward; any later call is the
            # recomputation done by ``checkpoint`` during backward.
            return self._bottleneck(tensors, recompute=calls[0] > 1)

        return checkpoint(run, *features, use_reentrant=False)

    def _can_recompute(self, features) -> bool:
        """Whether :class:`_DenseLayerFunction` applies: plain float training
        with batch statistics, outside autocast and ``torch.compile``."""
        device = features[0].device.type
        return (
            _plain_batch_norm(self.norm1)
            and _plain_batch_norm(self.norm2)
            and type(self.conv1) in (nn.Conv3d, PointwiseConv3d)
            and type(self.conv2) is nn.Conv3d
            and not torch.is_autocast_enabled(device)
            and not torch.compiler.is_compiling()
            and all(f.dtype == self.conv1.weight.dtype for f in features)
        )

    def forward(self, features) -> torch.Tensor:
        if isinstance(features, torch.Tensor):
            features = [features]
        needs_grad = torch.is_grad_enabled() and (
            any(t.requires_grad for t in features)
            or any(p.requires_grad for p in self.parameters())
        )
        if self.memory_efficient is not False and needs_grad:
            if self._can_recompute(features):
                out = _DenseLayerFunction.apply(
                    self,
                    (_momentum(self.norm1), _momentum(self.norm2)),
                    self.norm1.weight,
                    self.norm1.bias,
                    self.norm2.weight,
                    self.norm2.bias,
                    self.conv1.weight,
                    self.conv2.weight,
                    *features,
                )
                if self.drop_rate > 0:
                    out = F.dropout(out, p=self.drop_rate, training=self.training)
                return out
        if self.memory_efficient is True and needs_grad:
            if any(t.requires_grad for t in features):
                out = self._checkpointed_bottleneck(features)
            else:
                out = self._bottleneck(features)
        else:
            out = self._bottleneck(features)
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    """Stack of dense layers; returns the concatenation of input and all outputs."""

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}",
                _DenseLayer(
                    num_input_features + i * growth_rate,
                    growth_rate=growth_rate,
                    bn_size=bn_size,
                    drop_rate=drop_rate,
                    memory_efficient=memory_efficient,
                ),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1 halving the channels, then 2x2x2 average pooling."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm3d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        conv = PointwiseConv3d(num_input_features, num_output_features)
        self.add_module("conv", conv)
        self.add_module("pool", nn.AvgPool3d(kernel_size=2, stride=2))


class DenseNet3D(nn.Module):
    """3-D DenseNet encoder returning globally average-pooled features.

    Stem: ``Conv3d(7, stride 2, pad 3, no bias) -> BN -> ReLU ->
    MaxPool3d(3, stride 2, pad 1)``. Each dense layer computes
    ``BN -> ReLU -> Conv3d(1) -> BN -> ReLU -> Conv3d(3, pad 1)`` and its
    ``growth_rate`` output maps are concatenated to its input. A transition
    (``BN -> ReLU -> Conv3d(1) -> AvgPool3d(2)``, halving the channels) follows
    every block but the last. The feature map then goes through an optional
    final BatchNorm (``final_norm``), a ReLU and a global average pool.

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels ``C`` of volumes shaped ``(n, C, D, H, W)``.
    growth_rate : int, default=32
        Number of feature maps ``k`` each dense layer adds.
    block_config : sequence of int, default=(6, 12, 24, 16)
        Number of dense layers in each dense block. The default is the
        DenseNet-121 configuration.
    num_init_features : int, default=64
        Number of output channels of the stem convolution.
    bn_size : int, default=4
        Bottleneck width multiplier: the 1x1x1 convolution of each dense
        layer outputs ``bn_size * growth_rate`` channels.
    drop_rate : float, default=0.0
        Dropout probability applied to the output of each dense layer.
    final_norm : bool, default=False
        If False (encoder mode, the pretraining default) there is no final
        BatchNorm. If True (classifier mode) a ``BatchNorm3d`` named
        ``features.norm5`` is applied to the last feature map.
    memory_efficient : bool or "auto", default="auto"
        What dense layers keep for the backward pass. Outputs, gradients and
        BatchNorm running statistics are the same in every mode, bit for bit.

        - ``"auto"``: in float training with batch statistics (no autocast,
          no ``torch.compile``, plain ``BatchNorm3d``), each dense layer keeps
          only its inputs and the output of its 1x1x1 convolution, and
          recomputes the concatenation and both BN-ReLU in backward. No
          convolution runs twice, and this saves about a fifth of the peak
          memory of a DenseNet-121 step. Otherwise everything is stored.
        - True: as ``"auto"`` where it applies; elsewhere (autocast,
          SyncBatchNorm, ...) the concatenation-BN-ReLU-Conv1 bottleneck is
          recomputed by ``torch.utils.checkpoint`` (non-reentrant), which
          runs the 1x1x1 convolution again.
        - False: plain autograd, every intermediate tensor stored.

    Attributes
    ----------
    features : torch.nn.Sequential
        Stem, dense blocks and transitions (and ``norm5`` when ``final_norm``).
        Calling it returns the feature map before the final ReLU and pooling.
    out_features : int
        Dimension of the pooled output (number of channels of the last
        feature map); 1024 for DenseNet-121.
    block_config : tuple of int
        The block configuration used.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn import DenseNet3D
    >>> net = DenseNet3D(growth_rate=4, block_config=(1, 1), num_init_features=8,
    ...                  bn_size=2)
    >>> net.out_features
    10
    >>> net(torch.zeros(2, 1, 16, 16, 16)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        final_norm: bool = False,
        memory_efficient="auto",
    ) -> None:
        super().__init__()
        in_channels = _check_positive_int(in_channels, "in_channels")
        growth_rate = _check_positive_int(growth_rate, "growth_rate")
        num_init_features = _check_positive_int(num_init_features, "num_init_features")
        bn_size = _check_positive_int(bn_size, "bn_size")
        block_config = _as_int_tuple(block_config, "block_config")
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}.")

        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.block_config = block_config
        self.num_init_features = num_init_features
        self.bn_size = bn_size
        self.drop_rate = float(drop_rate)
        self.final_norm = bool(final_norm)
        if not (
            isinstance(memory_efficient, bool)
            or (isinstance(memory_efficient, str) and memory_efficient == "auto")
        ):
            raise ValueError(
                "memory_efficient must be True, False or 'auto', got "
                f"{memory_efficient!r}."
            )
        self.memory_efficient = memory_efficient

        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv3d(
                in_channels,
                num_init_features,
                kernel_size=7,
                stride=2,
                padding=3,
                bias=False,
            ),
            norm0=nn.BatchNorm3d(num_init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=MaxPool3d(kernel_size=3, stride=2, padding=1),
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            layers[f"denseblock{i + 1}"] = _DenseBlock(
                num_layers,
                num_features,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=self.drop_rate,
                memory_efficient=self.memory_efficient,
            )
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers[f"transition{i + 1}"] = _Transition(
                    num_features, num_features // 2
                )
                num_features //= 2
        if self.final_norm:
            layers["norm5"] = nn.BatchNorm3d(num_features)
        self.features = nn.Sequential(layers)
        self.out_features = int(num_features)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return pooled features of shape ``(n, out_features)``."""
        out = F.relu(self.features(x))
        return F.adaptive_avg_pool3d(out, 1).flatten(1)


def densenet121(
    in_channels: int = 1,
    drop_rate: float = 0.0,
    final_norm: bool = False,
    memory_efficient="auto",
    **kwargs,
) -> DenseNet3D:
    """Build a 3-D DenseNet-121 (growth 32, blocks (6, 12, 24, 16), 64 stem maps).

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels.
    drop_rate : float, default=0.0
        Dropout probability after each dense layer.
    final_norm : bool, default=False
        Add the final BatchNorm ``norm5`` (classifier mode). The y-Aware
        pretraining encoder has none.
    memory_efficient : bool or "auto", default="auto"
        What the dense layers store for backward; see :class:`DenseNet3D`.
    **kwargs
        Other :class:`DenseNet3D` arguments (``growth_rate``,
        ``block_config``, ``num_init_features``, ``bn_size``) overriding the
        DenseNet-121 values.

    Returns
    -------
    model : DenseNet3D
        The backbone, with ``out_features == 1024`` for the defaults.

    Examples
    --------
    >>> from sklearn_cl3d.nn import densenet121
    >>> net = densenet121()
    >>> net.out_features, net.block_config
    (1024, (6, 12, 24, 16))
    >>> sum(p.numel() for p in net.parameters())
    11240576
    """
    params = dict(
        growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4
    )
    params.update(kwargs)
    return DenseNet3D(
        in_channels=in_channels,
        drop_rate=drop_rate,
        final_norm=final_norm,
        memory_efficient=memory_efficient,
        **params,
    )
