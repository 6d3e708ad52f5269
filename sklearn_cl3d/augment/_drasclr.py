"""Views of DrasCLR (Yu et al., 2023): the official "agc" pipeline on cubic
patches in window-shifted HU.

- :class:`RandomAffine3D`: random rotation, scaling and translation of every
  patch (trilinear, border padding);
- :class:`RandomContrast`: a random gamma curve between each patch's minimum
  and maximum;
- :func:`drasclr_augmentation`: the affine always, then Gaussian noise and
  the gamma contrast, each with probability 0.25.

Both operations are batched and draw their parameters per sample on the
input's device from an optional :class:`torch.Generator`. Unlike the
operations built on the package's ``_RandomOp``, they skip the input checks
(the estimator feeds them its own patches) and are called whole by
:class:`RandomApply` on the chosen sub-batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._transforms import Compose, GaussianNoise, RandomApply

__all__ = ["RandomAffine3D", "RandomContrast", "drasclr_augmentation"]


def _rotation(angles):
    """Batched ``R0(a0) @ R1(a1) @ R2(a2)``, R_a rotating about array axis a."""
    c, s = torch.cos(angles), torch.sin(angles)
    batch = angles.shape[0]
    out = torch.eye(3, dtype=angles.dtype, device=angles.device).repeat(batch, 1, 1)
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        rot = torch.eye(3, dtype=angles.dtype, device=angles.device).repeat(batch, 1, 1)
        rot[:, u, u] = c[:, axis]
        rot[:, u, v] = -s[:, axis]
        rot[:, v, u] = s[:, axis]
        rot[:, v, v] = c[:, axis]
        out = out @ rot
    return out


class RandomAffine3D:
    """Random rotation, scaling and translation of every cubic patch.

    Output voxel at centred coordinate ``c`` (array axes) reads the input at
    ``R @ (S @ c + t)``: ``R`` the product of rotations about the three axes,
    each by ``U(-rotate, rotate)`` radians; ``S = diag(1 + U(-scale, scale))``
    per axis; ``t`` a shift of ``U(-translate, translate) * size`` voxels per
    axis. Trilinear interpolation, border padding. Every channel of a sample
    shares its draw. The matrices are built in float64; half-precision
    batches are resampled in float32.

    Parameters
    ----------
    rotate : float, default=pi/18
        Largest rotation about each axis, in radians.
    scale : float, default=0.1
        Largest relative change of scale along each axis.
    translate : float, default=0.375
        Largest shift along each axis, as a fraction of the patch size
        (0.375 of 32 voxels is the official 12 voxels).

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomAffine3D
    >>> x = torch.rand(2, 1, 8, 8, 8)
    >>> RandomAffine3D()(x, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 8, 8, 8])
    """

    def __init__(self, rotate=math.pi / 18, scale=0.1, translate=0.375):
        self.rotate = rotate
        self.scale = scale
        self.translate = translate

    def __repr__(self):
        return (
            f"RandomAffine3D(rotate={self.rotate:.4g}, scale={self.scale}, "
            f"translate={self.translate})"
        )

    def __call__(self, x, generator=None):
        """Transform a batch ``(B, C, D, H, W)`` with one draw per sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, D, H, W)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        torch.Tensor
            New batch, same shape, dtype and device as ``x``.
        """
        batch = x.shape[0]
        if batch == 0:
            return x.clone()
        sizes = torch.tensor(x.shape[2:], dtype=torch.float64, device=x.device)

        def draw(bound):
            u = torch.rand(
                batch, 3, generator=generator, device=x.device, dtype=torch.float32
            )
            return ((2 * u - 1) * bound).to(torch.float64)

        rot = _rotation(draw(self.rotate))
        scale = 1 + draw(self.scale)
        shift = draw(self.translate) * sizes  # voxels
        # centred voxel coords c = (N / 2) n for align_corners=False
        half = sizes / 2
        matrix = rot * scale[:, None, :]  # R @ diag(S)
        matrix = matrix * half[None, None, :] / half[None, :, None]
        offset = (rot @ shift[:, :, None])[:, :, 0] / half
        # array axes (d, h, w) -> affine_grid's (x=w, y=h, z=d)
        flip = [2, 1, 0]
        theta = torch.cat(
            [matrix[:, flip][:, :, flip], offset[:, flip, None]], dim=2
        ).to(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
        work = x.to(theta.dtype)
        grid = F.affine_grid(theta, list(work.shape), align_corners=False)
        out = F.grid_sample(
            work, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.to(x.dtype)


class RandomContrast:
    """Gamma contrast per sample: ``((x - min) / range) ** g * range + min``.

    ``g ~ U(gamma)``; ``min`` and ``range`` over the sample's voxels (all
    channels); range regularised by 1e-7. Not to be confused with the linear
    contrast factor of :class:`RandomBrightnessContrast`.

    Parameters
    ----------
    gamma : (float, float), default=(0.5, 4.5)
        Bounds ``(low, high)`` of the uniform draw of the exponent.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomContrast
    >>> x = torch.linspace(0, 1, 8).reshape(1, 1, 2, 2, 2)
    >>> y = RandomContrast()(x, generator=torch.Generator().manual_seed(0))
    >>> float(y.min()), round(float(y.max()), 4)
    (0.0, 1.0)
    """

    def __init__(self, gamma=(0.5, 4.5)):
        self.gamma = gamma

    def __repr__(self):
        return f"RandomContrast(gamma={self.gamma})"

    def __call__(self, x, generator=None):
        """Apply a random gamma curve to each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        torch.Tensor
            New batch, same shape, dtype and device as ``x``.
        """
        batch = x.shape[0]
        if batch == 0:
            return x.clone()
        low, high = self.gamma
        u = torch.rand(batch, generator=generator, device=x.device)
        gamma = (low + (high - low) * u).to(x.dtype)
        shape = (batch,) + (1,) * (x.ndim - 1)
        flat = x.reshape(batch, -1)
        lo = flat.amin(dim=1).reshape(shape)
        span = flat.amax(dim=1).reshape(shape) - lo
        unit = ((x - lo) / (span + 1e-7)).clamp_min(0)
        return unit ** gamma.reshape(shape) * span + lo


def drasclr_augmentation():
    """The official "agc" views of DrasCLR, in window-shifted HU (``HU - low``).

    a: :class:`RandomAffine3D` (rotation up to pi/18 per axis, scale 1 +/-
    0.1, shift up to 0.375 of the patch, i.e. 12 voxels of 32), always; g:
    Gaussian noise of std 50 HU with probability 0.25; c: gamma contrast
    (:class:`RandomContrast`), ``g ~ U(0.5, 4.5)``, with probability 0.25.

    Returns
    -------
    Compose
        The pipeline, called as ``f(x, generator=None)`` on ``(B, C, P, P,
        P)`` patches.

    Examples
    --------
    >>> from sklearn_cl3d.augment._drasclr import drasclr_augmentation
    >>> len(drasclr_augmentation().ops)
    3
    """
    return Compose(
        [
            RandomAffine3D(),
            RandomApply(GaussianNoise(std=50.0), p=0.25),
            RandomApply(RandomContrast(), p=0.25),
        ]
    )
