"""DrasCLR's local and neighbourhood MoCo InfoNCE losses (pure torch)."""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

from ._infonce import check_temperature

__all__ = ["DrasCLRLoss", "drasclr_loss"]


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise TypeError(f"beta must be a number >= 0; got {beta!r}.")
    beta = float(beta)
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0; got {beta}.")
    return beta


def _check_inputs(q, k, neighbors, queue):
    for name, value, ndim, txt in (
        ("q", q, 2, "(N, C)"),
        ("k", k, 2, "(N, C)"),
        ("neighbors", neighbors, 3, "(N, R, C)"),
        ("queue", queue, 2, "(C, K)"),
    ):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor; got {type(value).__name__}."
            )
        if value.ndim != ndim:
            raise ValueError(
                f"{name} must have shape {txt}; got shape {tuple(value.shape)}."
            )
    n, c = q.shape
    if n == 0:
        raise ValueError("q must hold at least one sample.")
    if k.shape != q.shape:
        raise ValueError(
            f"k must have the shape of q {tuple(q.shape)}; got {tuple(k.shape)}."
        )
    if neighbors.shape[0] != n or neighbors.shape[2] != c:
        raise ValueError(
            f"neighbors must have shape (N, R, C) = ({n}, R, {c}); got "
            f"{tuple(neighbors.shape)}."
        )
    if neighbors.shape[1] == 0:
        raise ValueError("neighbors must hold at least one neighbour (R >= 1).")
    if queue.shape[0] != c:
        raise ValueError(
            f"queue must have shape (C, K) with C = {c}; got {tuple(queue.shape)}."
        )


def _moco_infonce(anchor, key, queue, temperature):
    """Mean cross-entropy of ``[anchor.key, anchor @ queue] / tau`` at index 0."""
    l_pos = (anchor * key).sum(dim=1, keepdim=True)
    l_neg = anchor @ queue
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def drasclr_loss(q, k, neighbors, queue, temperature=0.2, beta=1.0):
    """DrasCLR's local and neighbourhood InfoNCE and their weighted sum.

    With ``u = x / ||x||`` (``F.normalize``, eps 1e-12) and ``tau`` the
    temperature::

        q_i = u(q_i)                        # query of patch i
        k_i = u(k_i)                        # positive key, detached
        s_i = sum_r u(neighbors[i, r])      # plain sum, NOT re-normalised
        local     = mean_i CE([q_i . k_i, q_i @ queue] / tau, target 0)
        neighbour = mean_i CE([s_i . k_i, s_i @ queue] / tau, target 0)
        total     = local + beta * neighbour

    This is exactly the official computation. Each neighbour embedding is
    normalised on its own and the R unit vectors are summed, so ``||s_i||``
    lies in [0, R] and the neighbour term acts as InfoNCE with temperature
    ``tau / ||s_i||`` (sharper when the neighbours agree). Keep it that way:
    averaging or re-normalising the sum would change the method.

    Both terms use the same positive key and the same negatives, the queue of
    the batch's location; there are no in-batch negatives. As in MoCo, the
    keys come from the momentum encoder and carry no gradient (``k`` is
    detached here), and the queue is used **as given**: it is neither
    re-normalised nor differentiated. DrasCLR fills it with unit-length keys
    (and initialises it with unit-length random columns).

    Parameters
    ----------
    q : torch.Tensor of shape (N, C)
        Raw (un-normalised) query embeddings of the N anchors.
    k : torch.Tensor of shape (N, C)
        Raw key embeddings of the other view of the same anchors.
    neighbors : torch.Tensor of shape (N, R, C)
        Raw query-encoder embeddings of the R neighbour patches of each
        anchor (same subject, neighbouring landmarks).
    queue : torch.Tensor of shape (C, K)
        Negative keys for the batch's location, one per column.
    temperature : float, default=0.2
        Softmax temperature, > 0.
    beta : float, default=1.0
        Weight of the neighbour term, >= 0.

    Returns
    -------
    local, neighbour, total : torch.Tensor
        Scalar losses, dtype ``promote(q.dtype, float32)``.

    Examples
    --------
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0]])
    >>> nb = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])   # s = 2 * q
    >>> queue = torch.tensor([[0.0], [1.0]])            # orthogonal negative
    >>> local, ngb, total = drasclr_loss(q, q, nb, queue, temperature=1.0)
    >>> round(float(local), 4), round(float(ngb), 4)  # ln(1 + e^-1), ln(1 + e^-2)
    (0.3133, 0.1269)
    """
    _check_inputs(q, k, neighbors, queue)
    temperature = check_temperature(temperature)
    beta = _check_beta(beta)
    dtype = torch.promote_types(q.dtype, torch.float32)
    q_u = F.normalize(q.to(dtype), dim=1)
    k_u = F.normalize(k.detach().to(device=q.device, dtype=dtype), dim=1)
    s = F.normalize(neighbors.to(device=q.device, dtype=dtype), dim=2).sum(dim=1)
    negatives = queue.detach().to(device=q.device, dtype=dtype)
    local = _moco_infonce(q_u, k_u, negatives, temperature)
    neighbour = _moco_infonce(s, k_u, negatives, temperature)
    return local, neighbour, local + beta * neighbour


class DrasCLRLoss(torch.nn.Module):
    """Module form of :func:`drasclr_loss`.

    Parameters
    ----------
    temperature : float, default=0.2
        Softmax temperature, > 0.
    beta : float, default=1.0
        Weight of the neighbour term, >= 0.

    Examples
    --------
    >>> import torch
    >>> loss = DrasCLRLoss()
    >>> local, ngb, total = loss(torch.randn(4, 8), torch.randn(4, 8),
    ...                          torch.randn(4, 2, 8), torch.randn(8, 16))
    >>> total.shape
    torch.Size([])
    """

    def __init__(self, temperature=0.2, beta=1.0):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.beta = _check_beta(beta)

    def forward(self, q, k, neighbors, queue):
        """Return ``(local, neighbour, total)``."""
        return drasclr_loss(
            q, k, neighbors, queue, temperature=self.temperature, beta=self.beta
        )

    def extra_repr(self):
        return f"temperature={self.temperature}, beta={self.beta}"
