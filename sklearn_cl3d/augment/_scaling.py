"""Input intensity scalings the estimators apply before the views.

- :class:`ZScore` (in :mod:`._transforms`): per-sample z-score, the default;
- :class:`UInt8Scaling`: the official WSP input, intensities cast to
  ``uint8`` and divided by 250 (``specs/wsp.md`` section 2.1);
- :func:`make_normalizer`: the operation named by an estimator's
  ``normalize`` parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._transforms import ZScore, _check_scalar

__all__ = ["NORMALIZE_OPTIONS", "UInt8Scaling", "make_normalizer"]

#: Values of the estimators' ``normalize`` parameter (besides None).
NORMALIZE_OPTIONS = ("zscore", "uint8")


class UInt8Scaling:
    """Cast intensities to ``uint8`` and divide by ``scale`` (official WSP).

    The official WSP code casts each slice to ``uint8`` when it builds a
    batch and divides it by 250 in the training step, so its input is
    ``floor(x) / 250`` for intensities already windowed to 0-255. Values
    outside [0, 255] are clipped here (a C cast of such floats wraps around
    or is undefined): as for the official code, volumes must already be
    windowed to 0-255 (e.g. :class:`~sklearn_cl3d.data.HUWindow` times 255).

    Parameters
    ----------
    scale : float, default=250.0
        Divisor, > 0 (the official 250).

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment._scaling import UInt8Scaling
    >>> UInt8Scaling()(torch.tensor([[-3.0, 0.9, 125.5, 250.0, 300.0]]))
    tensor([[0.0000, 0.0000, 0.5000, 1.0000, 1.0200]])
    """

    def __init__(self, scale: float = 250.0):
        self.scale = _check_scalar(scale, "scale", low=0.0, low_open=True)

    def __repr__(self) -> str:
        return f"UInt8Scaling(scale={self.scale!r})"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Quantise ``x`` to the integers 0..255 and divide by ``scale``.

        Parameters
        ----------
        x : torch.Tensor
            Batch of intensities.
        generator : torch.Generator or None, default=None
            Unused; accepted for a uniform call signature.

        Returns
        -------
        torch.Tensor
            Same shape and device; floating dtype (float32 for integer
            input).
        """
        if not x.is_floating_point():
            x = x.float()
        return x.clamp(0.0, 255.0).trunc_().div_(self.scale)


def make_normalizer(normalize):
    """The operation of an estimator's ``normalize`` parameter.

    Parameters
    ----------
    normalize : {"zscore", "uint8"} or None
        ``"zscore"``: :class:`ZScore`; ``"uint8"``: :class:`UInt8Scaling`;
        None: no scaling.

    Returns
    -------
    callable or None

    Examples
    --------
    >>> from sklearn_cl3d.augment._scaling import make_normalizer
    >>> make_normalizer("uint8"), make_normalizer(None)
    (UInt8Scaling(scale=250.0), None)
    """
    if normalize is None:
        return None
    if normalize == "zscore":
        return ZScore()
    if normalize == "uint8":
        return UInt8Scaling()
    raise ValueError(
        f"normalize must be one of {list(NORMALIZE_OPTIONS)} or None; got "
        f"{normalize!r}."
    )
