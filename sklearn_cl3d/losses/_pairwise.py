"""InfoNCE over an explicit list of directed (anchor, positive) terms."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._infonce import check_temperature

__all__ = ["cosine_normalize", "pairwise_infonce"]

# ``x / sqrt(max(||x||^2, 1e-12))`` as ``tf.nn.l2_normalize`` (the official code)
_NORM_EPS = 1e-6


def cosine_normalize(x, dim=-1):
    """Divide vectors by ``sqrt(max(||x||^2, 1e-12))``, in at least float32.

    This is the normalisation of the official global-local code
    (``tf.nn.l2_normalize``), so ``<cosine_normalize(a), cosine_normalize(b)>``
    is the cosine similarity the losses use.

    Parameters
    ----------
    x : torch.Tensor
        Vectors along ``dim``.
    dim : int, default=-1
        The vector dimension.

    Returns
    -------
    torch.Tensor
        Same shape, dtype ``promote(x.dtype, float32)``.

    Examples
    --------
    >>> import torch
    >>> cosine_normalize(torch.tensor([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    return F.normalize(x.to(dtype), dim=dim, eps=_NORM_EPS)


def check_embeddings(z, name="z"):
    """Check that ``z`` is a floating (N, D) tensor with N >= 1; return it."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(z).__name__}.")
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D); got shape {tuple(z.shape)}.")
    if not z.is_floating_point():
        raise TypeError(f"{name} must hold floating point values; got {z.dtype}.")
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(
            f"{name} must hold at least one row of at least one value; got shape "
            f"{tuple(z.shape)}."
        )
    return z


def check_normaliser(normaliser):
    """Validate ``normaliser``: None or a finite number > 0 (returned as float)."""
    if normaliser is None:
        return None
    if isinstance(normaliser, bool) or not isinstance(normaliser, (int, float)):
        raise TypeError(
            f"normaliser must be None or a positive number; got {normaliser!r}."
        )
    normaliser = float(normaliser)
    if not (normaliser > 0 and math.isfinite(normaliser)):
        raise ValueError(f"normaliser must be a finite number > 0; got {normaliser}.")
    return normaliser


def _check_terms(pairs, neg_mask, n_rows, device):
    if not isinstance(pairs, torch.Tensor):
        try:
            pairs = torch.as_tensor(pairs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                "pairs must be an integer tensor or array-like of shape (T, 2)."
            ) from exc
    if pairs.is_floating_point() or pairs.is_complex() or pairs.dtype == torch.bool:
        raise TypeError(f"pairs must hold integer row indices; got {pairs.dtype}.")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(
            f"pairs must have shape (T, 2) (anchor, positive); got shape "
            f"{tuple(pairs.shape)}."
        )
    if pairs.shape[0] == 0:
        raise ValueError("pairs must hold at least one (anchor, positive) term.")
    if pairs.device.type == "cpu":  # range check without a device sync
        lo, hi = int(pairs.min()), int(pairs.max())
        if lo < 0 or hi >= n_rows:
            raise ValueError(
                f"pairs must index rows of z (0 <= index < {n_rows}); got values "
                f"in [{lo}, {hi}]."
            )
    if not isinstance(neg_mask, torch.Tensor):
        try:
            neg_mask = torch.as_tensor(neg_mask)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                "neg_mask must be a boolean tensor or array-like of shape (T, N)."
            ) from exc
    if neg_mask.dtype != torch.bool:
        raise TypeError(f"neg_mask must be a boolean tensor; got {neg_mask.dtype}.")
    if neg_mask.shape != (pairs.shape[0], n_rows):
        raise ValueError(
            f"neg_mask must have shape (T, N) = ({pairs.shape[0]}, {n_rows}) (one "
            f"row per term of pairs, one column per row of z); got "
            f"{tuple(neg_mask.shape)}."
        )
    return pairs.to(device=device, dtype=torch.long), neg_mask.to(device=device)


def pairwise_infonce(z, pairs, neg_mask, temperature=0.1, normaliser=None):
    """InfoNCE summed over explicit directed terms (anchor, positive; negatives).

    With ``s_ab`` the cosine similarity of rows ``a`` and ``b`` of ``z`` and
    ``tau`` the temperature, term ``t = (a, p)`` with negative set ``N_t``
    (the ``True`` entries of ``neg_mask[t]``) costs::

        l_t = -log( exp(s_ap/tau) / (exp(s_ap/tau) + sum_{n in N_t} exp(s_an/tau)) )

    and the loss is ``sum_t l_t / normaliser`` (the mean over terms when
    ``normaliser`` is None). The negatives are used exactly as given: the
    anchor or the positive count as negatives only if ``neg_mask`` says so.

    This reproduces any of the official global strategies term by term (see
    :func:`official_global_pairs`, whose official normaliser is ``len(z)``).
    The log-sum-exp keeps it stable at small temperatures; float16/bfloat16
    inputs are computed in float32. Nothing is synchronised with the host
    except the index range check for CPU ``pairs``.

    Parameters
    ----------
    z : torch.Tensor of shape (N, D)
        Embeddings, one row per image; they need not be normalised.
    pairs : torch.Tensor or array-like of shape (T, 2), integer
        ``pairs[t] = (anchor row, positive row)``.
    neg_mask : torch.Tensor or array-like of shape (T, N), bool
        ``neg_mask[t, n]`` is True when row ``n`` is a negative of term ``t``.
    temperature : float, default=0.1
        Softmax temperature, > 0.
    normaliser : float, default=None
        The sum of the terms is divided by it (> 0); None divides by ``T``.

    Returns
    -------
    torch.Tensor
        Scalar loss, dtype ``promote(z.dtype, float32)``.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    >>> pairs = torch.tensor([[0, 1], [1, 0]])
    >>> neg = torch.tensor([[False, False, True], [False, False, True]])
    >>> loss = pairwise_infonce(z, pairs, neg, temperature=1.0)
    >>> round(float(loss), 4)  # log(e + 1) - 1
    0.3133
    """
    z = check_embeddings(z)
    temperature = check_temperature(temperature)
    normaliser = check_normaliser(normaliser)
    pairs, neg_mask = _check_terms(pairs, neg_mask, z.shape[0], z.device)

    u = cosine_normalize(z, dim=1)
    anchor = u[pairs[:, 0]]  # (T, D)
    pos = (anchor * u[pairs[:, 1]]).sum(dim=1, keepdim=True) / temperature
    neg = (anchor @ u.T / temperature).masked_fill(~neg_mask, float("-inf"))
    terms = torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos[:, 0]
    total = terms.sum()
    return total / (pairs.shape[0] if normaliser is None else normaliser)
