"""Functional forms of the library's custom layers (pure torch).

:func:`cond_conv3d` is DrasCLR's location-routed CondConv: a mixture of
expert kernels whose gates depend only on each sample's location.
:func:`resize_in_plane` is the in-plane resize every slice-based estimator
and export applies to its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._cpu_kernels import safe_conv

__all__ = ["cond_conv3d", "resize_in_plane", "routing_gates"]


def _check_tensor(value, name, ndim, shape_txt):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}.")
    if value.ndim != ndim:
        raise ValueError(
            f"{name} must have shape {shape_txt}; got shape {tuple(value.shape)}."
        )


def routing_gates(locations, routing_weight, routing_bias):
    """Per-sample expert gates ``sigmoid(routing_weight @ p + routing_bias)``.

    The gates are independent sigmoids (not a softmax): they need not sum to
    1, and the input is the location only, never the image content.

    Parameters
    ----------
    locations : torch.Tensor of shape (B, L)
        Location of every sample (DrasCLR: L = 3 normalised atlas coordinates).
    routing_weight : torch.Tensor of shape (E, L)
    routing_bias : torch.Tensor of shape (E,) or None

    Returns
    -------
    torch.Tensor of shape (B, E)
        Gates in (0, 1), in ``routing_weight``'s dtype.

    Examples
    --------
    >>> import torch
    >>> routing_gates(torch.zeros(2, 3), torch.ones(4, 3), torch.zeros(4))
    tensor([[0.5000, 0.5000, 0.5000, 0.5000],
            [0.5000, 0.5000, 0.5000, 0.5000]])
    """
    _check_tensor(locations, "locations", 2, "(B, L)")
    _check_tensor(routing_weight, "routing_weight", 2, "(E, L)")
    if locations.shape[1] != routing_weight.shape[1]:
        raise ValueError(
            f"locations has {locations.shape[1]} coordinate(s) per sample but "
            f"routing_weight expects {routing_weight.shape[1]} (shape (E, L))."
        )
    if routing_bias is not None:
        _check_tensor(routing_bias, "routing_bias", 1, "(E,)")
        if routing_bias.shape[0] != routing_weight.shape[0]:
            raise ValueError(
                f"routing_bias must have shape (E,) = ({routing_weight.shape[0]},); "
                f"got {tuple(routing_bias.shape)}."
            )
    p = locations.to(device=routing_weight.device, dtype=routing_weight.dtype)
    return torch.sigmoid(F.linear(p, routing_weight, routing_bias))


def cond_conv3d(
    x,
    locations,
    weight,
    bias,
    routing_weight,
    routing_bias,
    stride=1,
    padding=1,
):
    """Location-routed conditional 3-D convolution (DrasCLR's CondConv).

    For sample ``b`` at location ``p_b``::

        g_b = sigmoid(routing_weight @ p_b + routing_bias)    # (E,) gates
        W_b = sum_e g_b[e] * weight[e]                        # its own kernel
        y_b = conv3d(x_b, W_b, bias, stride, padding)

    The gates are independent sigmoids of the location only (DrasCLR defines a
    content pooling for routing but never uses it), and the bias is shared,
    not mixed across experts, exactly as in the official code.

    The official code runs one convolution per sample in a Python loop. Here
    the whole batch is one grouped convolution (the batch is folded into the
    channels, ``groups=B``), which gives the same output. The mixed kernels
    take ``B * O * I * k**3`` values of memory.

    Parameters
    ----------
    x : torch.Tensor of shape (B, I, D, H, W)
        Input batch.
    locations : torch.Tensor of shape (B, L)
        Location of every sample (DrasCLR: L = 3, see
        :func:`sklearn_cl3d.data.landmark_locations`). Cast to the routing
        dtype.
    weight : torch.Tensor of shape (E, O, I, kD, kH, kW)
        The ``E`` expert kernels.
    bias : torch.Tensor of shape (O,) or None
        Shared output bias.
    routing_weight : torch.Tensor of shape (E, L)
    routing_bias : torch.Tensor of shape (E,) or None
    stride, padding : int or tuple of 3 ints, default=1
        As in :func:`torch.nn.functional.conv3d`.

    Returns
    -------
    torch.Tensor of shape (B, O, D', H', W')

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, 1, 3, 3, 3)
    >>> w = torch.ones(4, 1, 1, 1, 1, 1)          # four 1x1x1 experts
    >>> loc = torch.zeros(2, 3)
    >>> y = cond_conv3d(x, loc, w, None, torch.zeros(4, 3), torch.zeros(4),
    ...                 padding=0)
    >>> y.shape, float(y[0, 0, 0, 0, 0])          # 4 gates of 0.5
    (torch.Size([2, 1, 3, 3, 3]), 2.0)
    """
    _check_tensor(x, "x", 5, "(B, I, D, H, W)")
    _check_tensor(weight, "weight", 6, "(E, O, I, kD, kH, kW)")
    n_experts, out_channels, in_channels = weight.shape[:3]
    if x.shape[1] != in_channels:
        raise ValueError(
            f"x has {x.shape[1]} channel(s) but weight expects {in_channels} "
            f"(weight shape {tuple(weight.shape)})."
        )
    gates = routing_gates(locations, routing_weight, routing_bias)
    if gates.shape[1] != n_experts:
        raise ValueError(
            f"routing_weight must have one row per expert ({n_experts}); got "
            f"shape {tuple(routing_weight.shape)}."
        )
    batch = x.shape[0]
    if gates.shape[0] != batch:
        raise ValueError(
            f"locations must have one row per sample of x ({batch}); got "
            f"{gates.shape[0]}."
        )
    if bias is not None:
        _check_tensor(bias, "bias", 1, "(O,)")
        if bias.shape[0] != out_channels:
            raise ValueError(
                f"bias must have shape (O,) = ({out_channels},); got "
                f"{tuple(bias.shape)}."
            )
    kernel = weight.shape[3:]
    if batch == 0:
        # groups=0 is invalid; an empty batch still gets the right output shape
        return F.conv3d(x, weight.sum(0), bias, stride, padding)
    gates = gates.to(weight.dtype)
    mixed = (gates @ weight.reshape(n_experts, -1)).reshape(
        batch * out_channels, in_channels, *kernel
    )
    folded = x.reshape(1, batch * in_channels, *x.shape[2:])
    # safe_conv: F.conv3d, with float32 weight gradients of tiny maps under
    # CPU reduced-precision autocast (DrasCLR's last layers see 2^3 maps)
    out = safe_conv(
        folded,
        mixed,
        None if bias is None else bias.repeat(batch),
        stride,
        padding,
        1,
        batch,
    )
    return out.reshape(batch, out_channels, *out.shape[2:])


def resize_in_plane(x, size):
    """Resize the last two axes of ``x`` to ``size``, anti-aliased when shrinking.

    Bilinear (``align_corners=False``) for 4-D ``(n, C, h, w)`` batches,
    trilinear keeping the depth for 5-D ``(n, C, D, h, w)`` ones; anti-aliased
    (4-D only: torch has no anti-aliased trilinear mode) when the smaller
    input side is larger than the smaller target side. Returned unchanged
    when it already has that size.

    Parameters
    ----------
    x : torch.Tensor of shape (n, C, h, w) or (n, C, D, h, w)
        A floating-point batch.
    size : tuple of int
        The target ``(h, w)``.

    Returns
    -------
    torch.Tensor

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.nn.functional import resize_in_plane
    >>> resize_in_plane(torch.zeros(2, 1, 64, 48), (32, 32)).shape
    torch.Size([2, 1, 32, 32])
    >>> resize_in_plane(torch.zeros(2, 1, 5, 16, 16), (8, 8)).shape
    torch.Size([2, 1, 5, 8, 8])
    """
    size = tuple(int(v) for v in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.ndim == 5:
        return F.interpolate(
            x, size=(x.shape[2], *size), mode="trilinear", align_corners=False
        )
    return F.interpolate(
        x,
        size=size,
        mode="bilinear",
        align_corners=False,
        antialias=min(x.shape[-2:]) > min(size),
    )
