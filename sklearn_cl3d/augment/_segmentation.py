"""Joint augmentation of images and label maps for segmentation fine-tuning.

:class:`SegmentationAugment` is the fine-tuning augmentation of the official
global-local code (Chaitanya et al., NeurIPS 2020; ``specs/globallocal.md``
section 5), batched on the device: every image and its label map get the
same geometric transform, the image resampled bilinearly, the labels with
nearest-neighbour, so labels stay integers.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from ._affine import _check_pair, _exact_dtype
from ._transforms import _check_scalar, _compute_dtype, _is_real

__all__ = ["SegmentationAugment"]

#: the five per-image choices of the official ``augmentation_function``
_CHOICES = ("rotate", "scale", "flip", "rotate_step", "none")


def _check_batch(x: Tensor, labels: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor.")
    if x.ndim not in (4, 5):
        raise ValueError(
            "x must have shape (B, C, H, W) or (B, C, D, H, W); got shape "
            f"{tuple(x.shape)}."
        )
    if not isinstance(labels, Tensor):
        raise TypeError("labels must be a torch.Tensor.")
    if tuple(labels.shape) != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"labels must have shape {(x.shape[0], *x.shape[2:])} (x without its "
            f"channel axis); got {tuple(labels.shape)}."
        )


def _resample(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """Sample every (H, W) plane of ``x`` (B, C, [D,] H, W) at ``grid``
    (B, H, W, 2), the same grid for every channel and depth plane."""
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    flat = x.reshape(batch, -1, height, width)
    out = F.grid_sample(
        flat,
        grid.to(flat.dtype),
        mode=mode,
        padding_mode="zeros",
        align_corners=False,
    )
    return out.reshape(x.shape)


class SegmentationAugment:
    """Random rotation, scaling, flip and elastic deformation of images and labels.

    The fine-tuning augmentation of the official global-local code, applied
    to a batch on its device. Each image gets one of five transforms, each
    with probability 1/5:

    1. a rotation by an angle drawn uniformly in ``[-degrees, degrees]``;
    2. a zoom about the centre by a factor drawn uniformly in ``scale``
       (the official rescale, then centre crop or zero pad);
    3. a left-right flip with probability 1/2;
    4. a rotation by a random multiple of ``step_degrees`` (official: 45,
       the eight multiples 0, 45, ..., 315);
    5. nothing.

    Images whose maximum is at most ``blank_threshold`` are left unchanged
    (official). Then, if ``elastic_sigma`` is set, the images from a random
    index ``t`` on (``t`` uniform in ``1 .. B - 2``, the official random
    tail of the batch; the first image is never deformed) get an elastic
    deformation: a displacement of each pixel drawn as ``grid x grid``
    normal values (standard deviation ``elastic_sigma`` pixels) per axis,
    upsampled bicubically to the image size. In-plane transforms act on the
    last two axes, the same for every channel and (for ``(B, C, D, H, W)``
    batches) every depth plane. Pixels from outside the image are 0 (label
    0, the background).

    Parameters
    ----------
    degrees : float, default=15.0
        Largest angle of the random rotation, in degrees.
    scale : (float, float), default=(0.95, 1.05)
        Bounds of the zoom factor (> 1 enlarges).
    step_degrees : float, default=45.0
        Step of the rotation by a multiple; ``360 / step_degrees`` must be
        an integer.
    elastic_sigma : float or None, default=5.0
        Standard deviation, in pixels, of the coarse displacements; None
        (or 0) turns the elastic deformation off.
    elastic_grid : int, default=3
        Side of the coarse displacement grid.
    blank_threshold : float, default=0.001
        Images with a maximum at most this are not transformed by the
        first step.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import SegmentationAugment
    >>> x = torch.rand(4, 1, 32, 32)
    >>> labels = (x[:, 0] > 0.5).long()
    >>> aug = SegmentationAugment()
    >>> gen = torch.Generator().manual_seed(0)
    >>> x2, labels2 = aug(x, labels, generator=gen)
    >>> x2.shape, labels2.dtype, set(labels2.unique().tolist()) <= {0, 1}
    (torch.Size([4, 1, 32, 32]), torch.int64, True)
    """

    def __init__(
        self,
        degrees=15.0,
        scale=(0.95, 1.05),
        step_degrees=45.0,
        elastic_sigma=5.0,
        elastic_grid=3,
        blank_threshold=0.001,
    ):
        self.degrees = _check_scalar(degrees, "degrees", low=0.0)
        self.scale = _check_pair(scale, "scale", positive=True)
        self.step_degrees = _check_scalar(step_degrees, "step_degrees", low=0.0)
        if self.step_degrees <= 0 or (360.0 / self.step_degrees) % 1:
            raise ValueError(f"step_degrees must divide 360; got {step_degrees!r}.")
        if elastic_sigma is not None:
            elastic_sigma = _check_scalar(elastic_sigma, "elastic_sigma", low=0.0)
        self.elastic_sigma = elastic_sigma
        if (
            isinstance(elastic_grid, bool)
            or not isinstance(elastic_grid, Integral)
            or elastic_grid < 2
        ):
            raise ValueError(f"elastic_grid must be an int >= 2; got {elastic_grid!r}.")
        self.elastic_grid = int(elastic_grid)
        if not _is_real(blank_threshold):
            raise ValueError(
                f"blank_threshold must be a number; got {blank_threshold!r}."
            )
        self.blank_threshold = float(blank_threshold)

    def __repr__(self):
        return (
            f"SegmentationAugment(degrees={self.degrees}, scale={self.scale}, "
            f"step_degrees={self.step_degrees}, elastic_sigma={self.elastic_sigma}, "
            f"elastic_grid={self.elastic_grid}, "
            f"blank_threshold={self.blank_threshold})"
        )

    # ------------------------------------------------------------ draws

    def sample_params(self, x: Tensor, generator: torch.Generator | None = None):
        """Draw the transforms of a batch.

        Returns
        -------
        dict
            ``"choice"`` (B,) int64 index into ``("rotate", "scale", "flip",
            "rotate_step", "none")`` (blank images get ``"none"``);
            ``"angle"`` (B,) degrees; ``"zoom"`` (B,); ``"flip"`` (B,) bool;
            ``"elastic"`` (B,) bool, the images that are deformed;
            ``"displacement"`` (B, 2, grid, grid) in pixels (x then y).
        """
        b, device = x.shape[0], x.device
        exact = _exact_dtype(device)

        def uniform(low, high):
            u = torch.rand(b, generator=generator, device=device, dtype=exact)
            return low + (high - low) * u

        choice = torch.randint(0, 5, (b,), generator=generator, device=device)
        free_angle = uniform(-self.degrees, self.degrees)
        n_steps = round(360.0 / self.step_degrees)
        steps = torch.randint(0, n_steps, (b,), generator=generator, device=device)
        zoom = uniform(*self.scale)
        flip = torch.randint(0, 2, (b,), generator=generator, device=device) == 0
        blank = x.reshape(b, -1).amax(dim=1) <= self.blank_threshold
        choice = torch.where(blank, torch.full_like(choice, 4), choice)
        angle = torch.where(
            choice == 0,
            free_angle,
            torch.where(
                choice == 3, steps.to(exact) * self.step_degrees, torch.zeros_like(zoom)
            ),
        )
        zoom = torch.where(choice == 1, zoom, torch.ones_like(zoom))
        flip = flip & (choice == 2)
        g = self.elastic_grid
        displacement = torch.randn(
            b, 2, g, g, generator=generator, device=device, dtype=exact
        )
        elastic = torch.zeros(b, dtype=torch.bool, device=device)
        if self.elastic_sigma and b >= 2:
            high = max(b - 2, 1)
            start = int(
                torch.randint(1, high + 1, (1,), generator=generator, device=device)
            )
            elastic[start:] = True
            displacement = displacement * self.elastic_sigma
        else:
            displacement = torch.zeros_like(displacement)
        return {
            "choice": choice,
            "angle": angle,
            "zoom": zoom,
            "flip": flip,
            "elastic": elastic,
            "displacement": displacement,
        }

    # ------------------------------------------------------------ apply

    def _grid(self, params, height, width, device, dtype):
        """Sampling grid (B, H, W, 2): affine part, then the elastic field."""
        exact = _exact_dtype(device)
        angle = torch.deg2rad(params["angle"].to(device=device, dtype=exact))
        zoom = params["zoom"].to(device=device, dtype=exact)
        sign = 1.0 - 2.0 * params["flip"].to(device=device, dtype=exact)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(angle.shape[0], 2, 3, device=device, dtype=exact)
        # output (x, y) samples the input at R(-angle) S^-1 F (x, y), in pixel
        # units about the centre, written in normalised coordinates
        theta[:, 0, 0] = cos * sign
        theta[:, 0, 1] = -sin * (height / width)
        theta[:, 1, 0] = sin * (width / height) * sign
        theta[:, 1, 1] = cos
        b = angle.shape[0]
        grid = F.affine_grid(
            theta.to(dtype), [b, 1, height, width], align_corners=False
        )
        elastic = params["elastic"].to(device)
        if bool(elastic.any()):
            field = params["displacement"].to(device=device, dtype=dtype)
            field = F.interpolate(
                field, size=(height, width), mode="bicubic", align_corners=False
            )  # (B, 2, H, W), pixels
            scale = torch.tensor(
                [2.0 / width, 2.0 / height], device=device, dtype=dtype
            )
            field = field.permute(0, 2, 3, 1) * scale
            grid = grid + field * elastic.to(dtype).view(-1, 1, 1, 1)
        return grid

    def apply(self, x: Tensor, labels: Tensor, params: dict):
        """Transform ``x`` and ``labels`` with the drawn ``params``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
        labels : torch.Tensor of shape (B, H, W) or (B, D, H, W)
        params : dict
            Output of :meth:`sample_params`.

        Returns
        -------
        x, labels : torch.Tensor
            Same shapes, dtypes and device as the inputs.
        """
        _check_batch(x, labels)
        dtype = _compute_dtype(x)
        height, width = x.shape[-2:]
        grid = self._grid(params, height, width, x.device, dtype)
        out = _resample(x.to(dtype), grid, "bilinear").to(x.dtype)
        lab = _resample(labels[:, None].to(dtype), grid, "nearest")[:, 0]
        return out, lab.round().to(labels.dtype)

    def __call__(self, x: Tensor, labels: Tensor, *, generator=None):
        """Draw the transforms and apply them to ``x`` and ``labels``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Floating-point images.
        labels : torch.Tensor of shape (B, H, W) or (B, D, H, W)
            Label maps (integers).
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        x, labels : torch.Tensor
        """
        _check_batch(x, labels)
        return self.apply(x, labels, self.sample_params(x, generator))
