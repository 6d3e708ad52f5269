"""Affine registration of two masks (a subject's lung mask to an atlas lung
mask), multi-resolution, in torch, returning the atlas-to-subject voxel index
map that :func:`map_corners` and ``DrasCLREncoder(affines=)`` take."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ._preprocessing_base import _check_affine

__all__ = ["register_affine"]


def _check_mask(mask, name):
    arr = np.asarray(mask)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.dtype.kind not in "biuf":
        raise ValueError(
            f"register_affine: `{name}` must be one numeric mask of shape "
            f"(D, H, W) or (1, D, H, W); got shape {arr.shape} and dtype {arr.dtype}."
        )
    if min(arr.shape) < 2:
        raise ValueError(
            f"register_affine: `{name}` needs at least 2 voxels per axis; got "
            f"shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"register_affine: `{name}` contains NaN or infinity.")
    binary = arr != 0
    if not binary.any():
        raise ValueError(f"register_affine: `{name}` has no nonzero voxel.")
    return binary.astype(np.float32)


def _check_levels(shrink_factors, smoothing_sigmas, iterations):
    levels = []
    for name, values, kind in (
        ("shrink_factors", shrink_factors, "int >= 1"),
        ("smoothing_sigmas", smoothing_sigmas, "number >= 0"),
        ("iterations", iterations, "int >= 0"),
    ):
        try:
            values = tuple(values)
        except TypeError:
            values = None
        ok = values is not None and len(values) > 0
        for v in values or ():
            if isinstance(v, bool):
                ok = False
            elif kind == "number >= 0":
                ok &= isinstance(v, Real) and np.isfinite(v) and v >= 0
            else:
                minimum = 1 if name == "shrink_factors" else 0
                ok &= isinstance(v, Integral) and v >= minimum
        if not ok:
            raise ValueError(
                f"register_affine: `{name}` must be a non-empty sequence of "
                f"{kind}, one per level; got {values!r}."
            )
        levels.append(values)
    if len({len(v) for v in levels}) != 1:
        raise ValueError(
            "register_affine: `shrink_factors`, `smoothing_sigmas` and "
            "`iterations` must have one entry per level (the same length); got "
            f"{len(levels[0])}, {len(levels[1])} and {len(levels[2])}."
        )
    return list(zip(*levels))


def _moments(mask, affine):
    """World-space centroid and per-axis standard deviation of a mask."""
    idx = np.argwhere(mask > 0).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return world.mean(axis=0), world.std(axis=0)


def _to_normalized(shape):
    """Voxel index (i, j, k) -> grid_sample coordinates (x=k, y=j, z=i)."""
    n = np.zeros((4, 4))
    for out_axis, axis in enumerate((2, 1, 0)):
        n[out_axis, axis] = 2.0 / (shape[axis] - 1)
        n[out_axis, 3] = -1.0
    n[3, 3] = 1.0
    return n


def _level_loss(world, to_moving, image, points, target, shape, metric):
    """The metric of one level as a function of the parameters."""

    def loss_fn(lin, sh):
        coords = (points @ (to_moving @ world(lin, sh)).T)[:, :3]
        sampled = F.grid_sample(
            image,
            coords.to(torch.float32).reshape(shape),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).reshape(-1)
        if metric == "dice":
            inter = (sampled * target).sum()
            return 1.0 - 2.0 * inter / (sampled.sum() + target.sum() + 1e-6)
        return ((sampled - target) ** 2).mean()

    return loss_fn


def _minimise(params, loss_fn, n_iter):
    """At most ``n_iter`` L-BFGS iterations (strong Wolfe line search)."""
    optimizer = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=int(n_iter),
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(*params)
        loss.backward()
        return loss

    optimizer.step(closure)


def _world_transform(moving, fixed, moving_affine, fixed_affine, levels, metric):
    """The world map T (fixed mm -> moving mm) of the registration."""
    c_f, s_f = _moments(fixed, fixed_affine)
    c_m, s_m = _moments(moving, moving_affine)
    scale = float(np.sqrt((s_f**2).sum())) or 1.0
    linear0 = np.diag(np.where(s_f > 0, s_m / np.where(s_f > 0, s_f, 1), 1.0))
    dtype = torch.float64
    linear = torch.tensor(linear0, dtype=dtype, requires_grad=True)
    shift = torch.zeros(3, dtype=dtype, requires_grad=True)
    c_f_t = torch.tensor(c_f, dtype=dtype)
    c_m_t = torch.tensor(c_m, dtype=dtype)
    to_moving = torch.tensor(
        _to_normalized(moving.shape) @ np.linalg.inv(moving_affine), dtype=dtype
    )

    def world(lin, sh):
        top = torch.cat([lin, (c_m_t + scale * sh - lin @ c_f_t)[:, None]], dim=1)
        bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=dtype)
        return torch.cat([top, bottom])

    for shrink, sigma, n_iter in levels:
        if n_iter == 0:
            continue
        fixed_s = ndi.gaussian_filter(fixed, sigma) if sigma > 0 else fixed
        moving_s = ndi.gaussian_filter(moving, sigma) if sigma > 0 else moving
        # fixed grid points of this level: every shrink-th voxel (block centres)
        axes = [
            np.arange((shrink - 1) / 2, n - (shrink - 1) / 2 - 1e-9, shrink)
            for n in fixed.shape
        ]
        if min(len(a) for a in axes) < 2:
            raise ValueError(
                f"register_affine: shrink factor {shrink} leaves fewer than 2 "
                f"points along an axis of `fixed` (shape {fixed.shape}); use "
                "smaller `shrink_factors`."
            )
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        points = torch.tensor(
            np.c_[
                grid @ fixed_affine[:3, :3].T + fixed_affine[:3, 3], np.ones(len(grid))
            ],
            dtype=dtype,
        )  # fixed world points, homogeneous
        f_vals = ndi.map_coordinates(fixed_s, grid.T, order=1)
        target = torch.tensor(f_vals, dtype=torch.float32)
        image = torch.from_numpy(np.ascontiguousarray(moving_s))[None, None]
        shape = [1, *(len(a) for a in axes), 3]

        loss_fn = _level_loss(world, to_moving, image, points, target, shape, metric)
        _minimise([linear, shift], loss_fn, n_iter)
    with torch.no_grad():
        return world(linear, shift).numpy().astype(np.float64)


def register_affine(
    moving,
    fixed,
    *,
    moving_affine=None,
    fixed_affine=None,
    shrink_factors=(4, 2, 1),
    smoothing_sigmas=(2.0, 1.0, 0.0),
    iterations=(100, 50, 25),
    metric="mse",
):
    """Affine registration of a moving mask to a fixed mask.

    Finds the 12-parameter affine map ``T`` (fixed world mm -> moving world
    mm) that best overlays the two masks and returns it as a map between
    **voxel indices**, ``inv(moving_affine) @ T @ fixed_affine``: from a
    fixed (atlas) voxel index to a moving (subject) voxel index. That is the
    matrix :func:`map_corners`, :func:`extract_patches` and
    ``DrasCLREncoder(affines=...)`` take.

    The masks are binarised (nonzero voxels). ``T`` starts from the match of
    their moments (centroids, and the per-axis spread as a scale; no
    rotation) and is refined level by level: at each level both masks are
    smoothed with a Gaussian of ``smoothing_sigmas`` voxels, the fixed mask
    is read at every ``shrink_factors``-th voxel, the moving mask is read
    at the mapped points (trilinear, 0 outside) and the metric is minimised
    by L-BFGS (at most ``iterations`` steps). Everything is deterministic
    and runs on the CPU.

    The official DrasCLR code registers the lungmask labels with ANTs
    (mutual information, 32 bins; affine; shrink factors 4/2/1, smoothing
    2/1/0 voxels). Mutual information and the metrics here all measure the
    overlap of the two label maps; the masks here are binary, so the two
    lungs are not told apart by their labels.

    Parameters
    ----------
    moving : array-like of shape (D, H, W) or (1, D, H, W)
        The subject's mask.
    fixed : array-like of shape (D', H', W') or (1, D', H', W')
        The atlas mask.
    moving_affine, fixed_affine : array-like of shape (4, 4), default=None
        Voxel-to-world affines (None: the identity, 1 mm voxels). With
        them, masks of different voxel sizes and orientations register in
        world space.
    shrink_factors : sequence of int, default=(4, 2, 1)
        Sampling step of the fixed grid, per level (coarse to fine).
    smoothing_sigmas : sequence of float, default=(2.0, 1.0, 0.0)
        Gaussian smoothing of both masks, in voxels, per level.
    iterations : sequence of int, default=(100, 50, 25)
        Maximum L-BFGS iterations per level.
    metric : {"mse", "dice"}, default="mse"
        ``"mse"``: mean squared difference of the smoothed masks over the
        fixed grid points. ``"dice"``: one minus their soft Dice.

    Returns
    -------
    ndarray of float64, shape (4, 4)
        Fixed voxel index -> moving voxel index.

    Raises
    ------
    ValueError
        If a mask is not 3-D, is empty or not finite, an affine is not a
        finite, invertible 4x4 matrix, the levels are invalid or of
        different lengths, or ``metric`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> fixed = np.zeros((24, 24, 24))
    >>> fixed[6:16, 8:18, 5:19] = 1
    >>> moving = np.roll(fixed, (2, -3, 1), axis=(0, 1, 2))
    >>> T = register_affine(moving, fixed)
    >>> np.round(T[:3, 3]).tolist()
    [2.0, -3.0, 1.0]
    """
    if metric not in ("mse", "dice"):
        raise ValueError(
            f"register_affine: `metric` must be 'mse' or 'dice'; got {metric!r}."
        )
    moving = _check_mask(moving, "moving")
    fixed = _check_mask(fixed, "fixed")
    affines = []
    for name, affine in (
        ("moving_affine", moving_affine),
        ("fixed_affine", fixed_affine),
    ):
        try:
            affine = _check_affine(affine)
        except ValueError as exc:
            raise ValueError(f"register_affine: `{name}`: {exc}") from None
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"register_affine: `{name}` is not invertible.")
        affines.append(affine)
    levels = _check_levels(shrink_factors, smoothing_sigmas, iterations)
    with torch.enable_grad():
        world = _world_transform(moving, fixed, *affines, levels, metric)
    return np.linalg.inv(affines[0]) @ world @ affines[1]
