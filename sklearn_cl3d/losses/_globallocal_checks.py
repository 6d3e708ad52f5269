"""Argument checks shared by the global and local contrastive losses
(Chaitanya et al., NeurIPS 2020)."""

from __future__ import annotations

import torch


def _check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
    return value


def _check_int(value, name, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer; got {value!r}.")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}; got {value}.")
    return value


def _as_labels(labels, n, name, device):
    """One label per row, as a 1-D tensor on ``device`` (no gradient)."""
    if isinstance(labels, torch.Tensor):
        t = labels.detach()
    else:
        try:
            t = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{name} must be a 1-D array-like of numeric labels."
            ) from exc
    if t.is_complex():
        raise TypeError(f"{name} must hold real numeric labels; got {t.dtype}.")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) (one label per row); got shape "
            f"{tuple(t.shape)}."
        )
    return t.to(device)
