"""CPU work-arounds for three oneDNN/ATen kernels, used by the backbones and
the estimators.

1. **Reduced-precision weight gradients on tiny maps.** oneDNN's bfloat16
   backward-weights kernel returns wrong values (up to ~1e36, or NaN) for a
   3x3x3 convolution whose input is at most 2 voxels wide (stride 1) or
   1 voxel wide (stride 2): DenseNet-121's last block at 64³, for example.
   Measured with torch 2.13.0 on an Intel Xeon (family 6, model 207,
   AVX512-BF16) over inputs of 1 to 8 voxels, 16 or 128 channels and batches
   of 2 and 8: every wrong case had an input of at most 2 voxels, and every
   larger one agreed with float32 to bfloat16 rounding.
   :func:`low_precision_safe_convs` recomputes, during CPU autocast, the
   output of every convolution whose input has a spatial side of at most 2
   voxels through :class:`_Float32WeightGrad`, whose backward takes the
   weight gradient in float32. These maps are tiny, so the extra work is
   negligible. Convolutions called as functions (DrasCLR's
   location-conditioned ones) go through :func:`safe_conv` instead.
2. **3-D max pooling.** ATen's contiguous (NCDHW) CPU kernel of
   ``max_pool3d`` is about ten times slower than its channels-last kernel on
   the same numbers (a DenseNet stem's 8 x 64 x 32³ map: 231 ms against
   21 ms on one thread of the Xeon above). :func:`max_pool3d` pools through a
   channels-last copy and returns a contiguous result with the same values
   and the same argmax indices; its backward is ATen's contiguous one.
3. **1x1x1 convolutions.** oneDNN computes a convolution in its blocked
   layout, so a contiguous (NCDHW) input and output are reordered on every
   call, forward and backward, and a 1x1x1 convolution is a plain matrix
   product per sample. In one DenseNet-121 training step at 64³ (two views
   of 8 volumes, 2 threads of the Xeon above) oneDNN spent 2.97 s, 0.39 s of
   them in reorders; with the matrix products, 1.68 s and 0.15 s, and each
   1x1x1 convolution's forward and backward take 1.3 to 1.5 times less time
   (``benchmarks/bench_cpu_kernels.py --parts pointwise onednn_step``).
   :class:`PointwiseConv3d` computes a contiguous float32/float64 CPU 1x1x1
   convolution outside autocast as batched matrix products in the NCDHW
   layout itself (:func:`pointwise_conv3d`, :func:`pointwise_conv3d_backward`):
   the same values up to float rounding; ``nn.Conv3d`` everywhere else.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MaxPool3d",
    "PointwiseConv3d",
    "low_precision_safe_convs",
    "max_pool3d",
    "pointwise_conv3d",
    "pointwise_conv3d_backward",
    "safe_conv",
]

_LOW_PRECISION = (torch.bfloat16, torch.float16)

#: a convolution input with a spatial side at most this wide is recomputed
_TINY = 2


# ------------------------------------------------------------ 1. convolutions
class _Float32WeightGrad(torch.autograd.Function):
    """A convolution run in ``dtype`` whose weight gradient is taken in float32.

    Forward: the same convolution autocast would run (inputs, weight and bias
    cast to ``dtype``). Backward: the input and bias gradients from the
    ``dtype`` kernel, as autocast gives them; the weight gradient autocast
    would give (input rounded to ``dtype``), from the float32 kernel.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, dtype):
        ctx.conf = (list(stride), list(padding), list(dilation), groups, dtype)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        with torch.autocast(x.device.type, enabled=False):
            return torch.convolution(
                x.to(dtype),
                weight.to(dtype),
                None if bias is None else bias.to(dtype),
                list(stride),
                list(padding),
                list(dilation),
                False,
                [0] * (x.ndim - 2),
                groups,
            )

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, dtype = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        zeros = [0] * (x.ndim - 2)
        grad_x = grad_w = grad_b = None
        if need_x or need_b:
            grad_x, _, grad_b = torch.ops.aten.convolution_backward(
                grad_out.to(dtype), x.to(dtype), weight.to(dtype),
                [weight.shape[0]] if ctx.has_bias else None,
                stride, padding, dilation, False, zeros, groups,
                [need_x, False, need_b and ctx.has_bias],
            )
        if need_w:
            _, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out.float(), x.to(dtype).float(), weight.float(), None,
                stride, padding, dilation, False, zeros, groups,
                [False, True, False],
            )
            grad_w = grad_w.to(weight.dtype)
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _autocast_dtype(device_type):
    if device_type != "cpu" or not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in _LOW_PRECISION else None


def _needs_float32_weight_grad(module, x) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and module.weight.requires_grad
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and x.ndim == module.weight.ndim
        and min(x.shape[2:]) <= _TINY
        and _autocast_dtype("cpu") is not None
    )


def _tuple(value, n):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def safe_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d``/``F.conv3d`` with the tiny-map guard of
    :func:`low_precision_safe_convs`, for convolutions called as functions.

    Under CPU autocast to bfloat16 or float16, with gradients enabled, an
    input with a spatial side of at most 2 voxels goes through
    :class:`_Float32WeightGrad` (weight gradient in float32); everything else
    is the plain functional convolution. DrasCLR's location-conditioned
    convolutions, which mix their kernel per sample, use it.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn._cpu_kernels import safe_conv
    >>> w = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    >>> with torch.autocast("cpu", torch.bfloat16):
    ...     y = safe_conv(torch.randn(2, 4, 2, 2, 2), w, padding=1)
    >>> y.float().sum().backward()
    >>> bool(torch.isfinite(w.grad).all())
    True
    """
    n = x.ndim - 2
    dtype = _autocast_dtype(x.device.type)
    if (
        dtype is not None
        and torch.is_grad_enabled()
        and weight.requires_grad
        and not isinstance(padding, str)
        and min(x.shape[2:]) <= _TINY
    ):
        return _Float32WeightGrad.apply(
            x,
            weight,
            bias,
            _tuple(stride, n),
            _tuple(padding, n),
            _tuple(dilation, n),
            groups,
            dtype,
        )
    conv = F.conv3d if n == 3 else F.conv2d
    return conv(x, weight, bias, stride, padding, dilation, groups)


def _tiny_conv_hook(module, args, output):
    """Forward hook: redo a tiny-map convolution with a float32 weight grad."""
    x = args[0] if args else None
    if not _needs_float32_weight_grad(module, x):
        return None
    return _Float32WeightGrad.apply(
        x,
        module.weight,
        module.bias,
        module.stride,
        module.padding,
        module.dilation,
        module.groups,
        _autocast_dtype("cpu"),
    )


@contextmanager
def low_precision_safe_convs(module, enabled=True):
    """Correct bfloat16/float16 weight gradients of tiny CPU convolutions.

    Inside the block, every ``Conv2d``/``Conv3d`` of ``module`` that receives,
    under CPU autocast to bfloat16 or float16 and with gradients enabled, an
    input with a spatial side of at most 2 has its output recomputed so that
    its weight gradient is computed in float32 (oneDNN's reduced-precision
    kernel is wrong on such maps; see the module docstring). Forward values,
    input and bias gradients are those of autocast. Other convolutions,
    devices and precisions are untouched. The hooks are removed on exit.

    Parameters
    ----------
    module : torch.nn.Module
        The network whose convolutions are guarded.
    enabled : bool, default=True
        If False, do nothing.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn._cpu_kernels import low_precision_safe_convs
    >>> conv = torch.nn.Conv3d(4, 2, 3, padding=1, bias=False)
    >>> x = torch.randn(2, 4, 2, 2, 2)
    >>> with low_precision_safe_convs(conv), torch.autocast("cpu", torch.bfloat16):
    ...     conv(x).float().sum().backward()
    >>> bool(torch.isfinite(conv.weight.grad).all())
    True
    """
    if not enabled:
        yield module
        return
    handles = [
        m.register_forward_hook(_tiny_conv_hook)
        for m in module.modules()
        if type(m) in (nn.Conv2d, nn.Conv3d)
    ]
    try:
        yield module
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------- 2. max pooling
class _ChannelsLastMaxPool3d(torch.autograd.Function):
    """``max_pool3d`` forward through a channels-last copy, contiguous backward."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        out, indices = torch.ops.aten.max_pool3d_with_indices(
            x.contiguous(memory_format=torch.channels_last_3d),
            kernel_size, stride, padding, dilation, ceil_mode,
        )
        out, indices = out.contiguous(), indices.contiguous()
        ctx.conf = (kernel_size, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(x, indices)
        ctx.mark_non_differentiable(indices)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, indices = ctx.saved_tensors
        grad_x = torch.ops.aten.max_pool3d_with_indices_backward(
            grad_out.contiguous(), x, *ctx.conf, indices
        )
        return grad_x, None, None, None, None, None


def _triple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``F.max_pool3d`` that is fast on contiguous CPU float tensors.

    Same values, argmax and gradients as :func:`torch.nn.functional.max_pool3d`;
    on a contiguous 5-D float tensor on the CPU the forward runs ATen's
    channels-last kernel (see the module docstring). Elsewhere it is
    ``F.max_pool3d`` itself.

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from sklearn_cl3d.nn._cpu_kernels import max_pool3d
    >>> x = torch.randn(2, 3, 8, 8, 8)
    >>> torch.equal(max_pool3d(x, 3, 2, 1), F.max_pool3d(x, 3, 2, 1))
    True
    """
    stride = kernel_size if stride is None else stride
    if (
        x.device.type != "cpu"
        or x.ndim != 5
        or not x.dtype.is_floating_point
        or not x.is_contiguous()
        or x.shape[1] == 1
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
    ):
        return F.max_pool3d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _ChannelsLastMaxPool3d.apply(
        x,
        list(_triple(kernel_size)),
        list(_triple(stride)),
        list(_triple(padding)),
        list(_triple(dilation)),
        bool(ceil_mode),
    )


class MaxPool3d(nn.MaxPool3d):
    """:class:`torch.nn.MaxPool3d` computed by :func:`max_pool3d`.

    With ``return_indices=True`` it is :class:`torch.nn.MaxPool3d` itself.
    """

    def forward(self, x):
        if self.return_indices:
            return super().forward(x)
        return max_pool3d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
        )


# ------------------------------------------------------ 3. 1x1x1 convolutions
def pointwise_conv3d(x, weight):
    """A 1x1x1 convolution as one matrix product per sample, in NCDHW.

    ``out[n] = W @ x[n]`` with ``W`` the ``(out_channels, in_channels)``
    weight and ``x[n]`` the ``(in_channels, D*H*W)`` sample: no layout
    reorder. No autograd of its own (see :class:`PointwiseConv3d`).

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from sklearn_cl3d.nn._cpu_kernels import pointwise_conv3d
    >>> x, w = torch.randn(2, 8, 4, 4, 4), torch.randn(3, 8, 1, 1, 1)
    >>> torch.allclose(pointwise_conv3d(x, w), F.conv3d(x, w), atol=1e-5)
    True
    """
    n, c = x.shape[:2]
    w = weight.reshape(weight.shape[0], c)
    out = torch.bmm(w.expand(n, -1, -1), x.reshape(n, c, -1))
    return out.view(n, weight.shape[0], *x.shape[2:])


def pointwise_conv3d_backward(grad_out, x, weight, need_input=True, need_weight=True):
    """Input and weight gradients of :func:`pointwise_conv3d` (None where not
    needed): ``W.T @ g[n]`` per sample and ``sum_n g[n] @ x[n].T``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn._cpu_kernels import pointwise_conv3d_backward
    >>> x, w = torch.randn(2, 8, 4, 4, 4), torch.randn(3, 8, 1, 1, 1)
    >>> gx, gw = pointwise_conv3d_backward(torch.ones(2, 3, 4, 4, 4), x, w)
    >>> gx.shape, gw.shape
    (torch.Size([2, 8, 4, 4, 4]), torch.Size([3, 8, 1, 1, 1]))
    """
    n, c = x.shape[:2]
    o = weight.shape[0]
    g = grad_out.reshape(n, o, -1)
    grad_x = grad_w = None
    if need_input:
        w = weight.reshape(o, c)
        grad_x = torch.bmm(w.t().expand(n, -1, -1), g).view(x.shape)
    if need_weight:
        grad_w = torch.bmm(g, x.reshape(n, c, -1).transpose(1, 2)).sum(0)
        grad_w = grad_w.view(weight.shape)
    return grad_x, grad_w


class _PointwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return pointwise_conv3d(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        return pointwise_conv3d_backward(grad_out, x, weight, need_x, need_w)


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1, stride-1, bias-free :class:`torch.nn.Conv3d` that runs as
    batched matrix products on contiguous float CPU inputs outside autocast
    (see the module docstring), and as ``nn.Conv3d`` elsewhere.

    Same parameters and state-dict keys as ``nn.Conv3d(in_channels,
    out_channels, kernel_size=1, bias=False)``.

    Parameters
    ----------
    in_channels : int
    out_channels : int

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn._cpu_kernels import PointwiseConv3d
    >>> conv = PointwiseConv3d(8, 4)
    >>> x = torch.randn(2, 8, 5, 5, 5)
    >>> ref = torch.nn.functional.conv3d(x, conv.weight)
    >>> torch.allclose(conv(x), ref, atol=1e-5)
    True
    """

    def __init__(self, in_channels, out_channels, device=None, dtype=None):
        super().__init__(
            in_channels, out_channels, kernel_size=1, bias=False,
            device=device, dtype=dtype,
        )

    def matmul_applies(self, x) -> bool:
        """Whether ``forward(x)`` takes the matrix-product path: a contiguous
        5-D float32/float64 CPU input of the weight's dtype and channels,
        outside autocast, scripting, tracing and ``torch.compile``."""
        return (
            isinstance(x, torch.Tensor)
            and x.device.type == "cpu"
            and x.ndim == 5
            and x.shape[1] == self.in_channels
            and x.dtype in (torch.float32, torch.float64)
            and x.dtype == self.weight.dtype
            and x.is_contiguous()
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
        )

    def forward(self, x):
        if self.matmul_applies(x):
            return _PointwiseConv.apply(x, self.weight)
        return super().forward(x)
