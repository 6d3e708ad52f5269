"""The one kernel-weighted InfoNCE that y-Aware, SimCLR and WSP share."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["NORMALIZATIONS", "check_temperature", "kernel_infonce", "partner_weights"]

NORMALIZATIONS = ("official", "row")


def check_temperature(temperature) -> float:
    """Validate a softmax temperature and return it as a float.

    Parameters
    ----------
    temperature : float
        Must be a finite number > 0.

    Returns
    -------
    float

    Examples
    --------
    >>> check_temperature(0.1)
    0.1
    """
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        and not (isinstance(temperature, torch.Tensor) and temperature.ndim == 0)
    ):
        raise TypeError(f"temperature must be a positive number; got {temperature!r}.")
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature}.")
    return temperature


def _check_embeddings(z_i, z_j):
    for name, z in (("z_i", z_i), ("z_j", z_j)):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(z).__name__}.")
        if z.ndim != 2:
            raise ValueError(
                f"{name} must have shape (N, D); got shape {tuple(z.shape)}."
            )
    if z_i.shape != z_j.shape:
        raise ValueError(
            "z_i and z_j must have the same shape (the two views of the same N "
            f"samples); got {tuple(z_i.shape)} and {tuple(z_j.shape)}."
        )
    if z_i.shape[0] == 0:
        raise ValueError("z_i and z_j must hold at least one sample.")


def partner_weights(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The SimCLR weight matrix: each of the 2N rows weights only its other view.

    Parameters
    ----------
    n : int
        Number of samples N (the matrix is 2N x 2N).
    device : torch.device, default=None
    dtype : torch.dtype, default=torch.float32

    Returns
    -------
    torch.Tensor of shape (2N, 2N)

    Examples
    --------
    >>> partner_weights(1).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    eye = torch.eye(2 * n, device=device, dtype=dtype)
    return torch.roll(eye, shifts=n, dims=1)


def kernel_infonce(z_i, z_j, weights=None, temperature=0.1, normalization="official"):
    r"""Kernel-weighted InfoNCE over the 2N embeddings of two views.

    With ``u = [normalize(z_i); normalize(z_j)]`` (view 1 rows first),
    ``S_ab = <u_a, u_b> / temperature`` and, for every anchor ``a``, the
    log-softmax over the other ``2N - 1`` candidates of both views
    ``l_ab = S_ab - log sum_{c != a} exp(S_ac)``, the loss is::

        L = -(1 / N) * sum_a sum_{b != a} W_ab * l_ab

    where ``W`` is ``weights`` with its diagonal set to 0 and then normalised:

    * ``"official"``: each **column** sums to 1 (``W_ab = K_ab / sum_c K_cb``),
      which is what the official y-Aware and WSP code compute (for a symmetric
      kernel this divides column ``b`` by the off-diagonal mass of row ``b``);
    * ``"row"``: each anchor's row sums to 1, as the y-Aware paper writes it.

    Both keep the total weight at 2N, so the loss is on the official scale:
    twice the anchor-averaged weighted cross-entropy (with partner-only
    weights it equals the official NT-Xent ``loss_view1 + loss_view2``).

    The diagonal is excluded with a mask, never with a large finite offset, so
    half-precision inputs give no overflow or NaN; the softmax runs in at least
    float32. Everything stays on the embeddings' device (no host sync).

    Parameters
    ----------
    z_i, z_j : torch.Tensor of shape (N, D)
        Embeddings of view 1 and view 2 of the same N samples, same order. They
        need not be normalised.
    weights : torch.Tensor of shape (2N, 2N), default=None
        Non-negative metadata kernel between the stacked rows (rows/columns
        ``0..N-1`` are view 1, ``N..2N-1`` view 2). ``None`` gives the SimCLR
        weights (:func:`partner_weights`). It carries no gradient.
    temperature : float, default=0.1
        Softmax temperature, > 0.
    normalization : {"official", "row"}, default="official"
        How the weights are normalised (see above).

    Returns
    -------
    torch.Tensor
        Scalar loss, dtype ``promote(z.dtype, float32)``.

    Examples
    --------
    >>> import torch
    >>> z = torch.ones(2, 3)
    >>> K = torch.ones(4, 4)
    >>> round(float(kernel_infonce(z, z, K, temperature=1.0)), 4)  # 2 ln 3
    2.1972
    """
    _check_embeddings(z_i, z_j)
    temperature = check_temperature(temperature)
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}."
        )
    n = z_i.shape[0]
    dtype = torch.promote_types(z_i.dtype, torch.float32)
    device = z_i.device
    if weights is None:
        weights = partner_weights(n, device=device, dtype=dtype)
    elif not isinstance(weights, torch.Tensor):
        raise TypeError(
            f"weights must be a torch.Tensor; got {type(weights).__name__}."
        )
    if weights.shape != (2 * n, 2 * n):
        raise ValueError(
            f"weights must have shape (2N, 2N) = ({2 * n}, {2 * n}); got "
            f"{tuple(weights.shape)}."
        )

    u = F.normalize(torch.cat([z_i, z_j], dim=0).to(dtype), dim=1, eps=1e-12)
    logits = (u @ u.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(self_mask, 0.0)

    w = weights.detach().to(device=device, dtype=dtype).masked_fill(self_mask, 0.0)
    dim = 0 if normalization == "official" else 1
    mass = w.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    w = w / mass
    return -(w * log_prob).sum() / n
