"""Per-volume percentile scaling, the preprocessing of global-local
contrastive pretraining (Chaitanya et al., NeurIPS 2020)."""

from __future__ import annotations

from numbers import Real

import numpy as np

__all__ = ["PercentileScaling"]


class PercentileScaling:
    """Min-max scale each channel of a volume with its percentiles.

    ``x -> (x - p_low) / (p_high - p_low)`` with the percentiles taken over
    the whole 3-D volume, per channel: the official preprocessing of
    global-local pretraining (1st and 99th percentiles), after which values
    may fall slightly outside [0, 1]. A constant channel becomes 0. It is a
    preprocessing step (``apply(volume, affine) -> (volume, affine)``) for
    :class:`~sklearn_cl3d.data.VolumeDataset`.

    The scaling is computed in float64. Values are not clipped, so a voxel
    far outside the percentile range (a corrupt value such as 3e38) would
    reach the network as it is and give meaningless features: a scaled value
    larger than ``max_abs`` in magnitude is refused with a
    :class:`ValueError`.

    Parameters
    ----------
    lower, upper : float, default=1.0, 99.0
        Percentiles mapped to 0 and 1, ``0 <= lower < upper <= 100``.
    max_abs : float, default=1e6
        Largest magnitude a scaled value may have: a voxel a million times
        the percentile range away from it is taken as corrupt.

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.arange(101, dtype="float32").reshape(1, 1, 1, 101)
    >>> out, _ = PercentileScaling().apply(vol)
    >>> round(float(out.min()), 4), round(float(out.max()), 4)
    (-0.0102, 1.0102)
    """

    def __init__(self, lower=1.0, upper=99.0, max_abs=1e6):
        if not (0.0 <= lower < upper <= 100.0):
            raise ValueError(
                "PercentileScaling needs 0 <= lower < upper <= 100; got "
                f"lower={lower!r}, upper={upper!r}."
            )
        if not (isinstance(max_abs, Real) and 0 < max_abs < np.inf):
            raise ValueError(
                f"PercentileScaling needs a finite max_abs > 0; got {max_abs!r}."
            )
        self.lower = float(lower)
        self.upper = float(upper)
        self.max_abs = float(max_abs)

    def __repr__(self):
        return (
            f"PercentileScaling(lower={self.lower}, upper={self.upper}, "
            f"max_abs={self.max_abs:g})"
        )

    def apply(self, volume, affine=None):
        """Scale one volume ``(C, D, H, W)`` or ``(D, H, W)``; keep the affine.

        Raises
        ------
        ValueError
            If the volume holds NaN or infinity, or a scaled value is larger
            than ``max_abs`` in magnitude.
        """
        v = np.asarray(volume, dtype=np.float64)
        if not np.isfinite(v).all():
            raise ValueError("the volume contains NaN or infinity.")
        axes = tuple(range(v.ndim - 3, v.ndim))
        lo, hi = np.percentile(v, [self.lower, self.upper], axis=axes, keepdims=True)
        scale = np.where(hi > lo, hi - lo, 1.0)
        out = (v - lo) / scale
        peak = float(np.abs(out).max()) if out.size else 0.0
        if peak > self.max_abs:
            raise ValueError(
                f"after percentile scaling (percentiles {self.lower:g}-"
                f"{self.upper:g}), a voxel is {peak:.3g} in magnitude, more than "
                f"max_abs={self.max_abs:g}: the volume holds extreme values "
                f"(from {v.min():.3g} to {v.max():.3g}, corrupt voxels?). Clip "
                "the intensities first (e.g. HUWindow for CT) or fix the file."
            )
        return out.astype(np.float32), affine
