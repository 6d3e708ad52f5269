"""Pictures of a pretrainer: its embedding of a cohort and its augmented views.

Needs matplotlib (the ``plot`` extra); UMAP only for ``method="umap"``.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch

__all__ = ["plot_embedding", "plot_views"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the extras
        raise ImportError(
            "plotting needs matplotlib: pip install 'sklearn-cl3d[plot]'."
        ) from exc
    return plt


def _embed_2d(features, method, random_state):
    n = len(features)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=random_state).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(1.0, (n - 1) / 3))
        return TSNE(
            n_components=2, perplexity=perplexity, random_state=random_state
        ).fit_transform(features)
    try:
        import umap
    except ImportError as exc:
        raise ImportError(
            "method='umap' needs the umap-learn package (pip install umap-learn); "
            "method='pca' or 'tsne' need nothing more."
        ) from exc
    reducer = umap.UMAP(n_components=2, random_state=random_state)
    return reducer.fit_transform(features)


def plot_embedding(
    estimator,
    X,
    color=None,
    *,
    method="pca",
    ax=None,
    random_state=0,
    cmap=None,
    **scatter_kwargs,
):
    """Scatter plot of the features of X in two dimensions.

    ``estimator.transform(X)`` projected to 2-D by PCA, t-SNE (both from
    scikit-learn) or UMAP (when ``umap-learn`` is installed), one point per
    sample, coloured by ``color``: a continuous variable (e.g. age) gets a
    colour bar, a categorical one (labels that are not numbers, or integers
    with at most 20 distinct values, e.g. a diagnosis) a legend.

    Parameters
    ----------
    estimator : fitted transformer
        A pretrainer of this package, or anything with ``transform``.
    X : array-like or list
        Samples to embed (at least 3).
    color : array-like of shape (n,), default=None
        Value per sample to colour by.
    method : {"pca", "tsne", "umap"}, default="pca"
        Projection to 2-D.
    ax : matplotlib Axes, default=None
        Axes to draw on (a new figure when None).
    random_state : int, default=0
        Seed of the projection.
    cmap : str or Colormap, default=None
        Colour map ("viridis" for continuous values, "tab10"/"tab20" for
        categories when None).
    **scatter_kwargs : dict
        Passed to ``Axes.scatter``.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> from sklearn_cl3d.plotting import plot_embedding
    >>> X = np.random.default_rng(0).normal(size=(12, 1, 12, 12, 12))
    >>> ssl = SimCLRPretrainer(backbone="small3d", max_epochs=1, batch_size=4,
    ...                        random_state=0, verbose=0).fit(X)
    >>> ax = plot_embedding(ssl, X, color=np.arange(12.0))
    >>> len(ax.collections[0].get_offsets())
    12
    """
    if method not in ("pca", "tsne", "umap"):
        raise ValueError(f"method must be 'pca', 'tsne' or 'umap'; got {method!r}.")
    features = np.asarray(estimator.transform(X), dtype=np.float64)
    features = features.reshape(len(features), -1)
    n = len(features)
    if n < 3:
        raise ValueError(f"plot_embedding needs at least 3 samples; got {n}.")
    if color is not None:
        color = np.asarray(color)
        if color.ndim != 1 or len(color) != n:
            raise ValueError(
                f"color must have one value per sample, shape ({n},); got shape "
                f"{color.shape}."
            )
    xy = _embed_2d(features, method, random_state)
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    labels = {"pca": "PC", "tsne": "t-SNE ", "umap": "UMAP "}[method]
    ax.set_xlabel(f"{labels}1")
    ax.set_ylabel(f"{labels}2")
    ax.set_title(f"{type(estimator).__name__} features ({method})")
    categorical = color is not None and (
        color.dtype.kind not in "iuf"
        or (color.dtype.kind in "iu" and len(np.unique(color)) <= 20)
    )
    if color is None:
        ax.scatter(xy[:, 0], xy[:, 1], **scatter_kwargs)
    elif categorical:
        values = np.unique(color)
        cm = plt.get_cmap(cmap or ("tab10" if len(values) <= 10 else "tab20"))
        for i, value in enumerate(values):
            mask = color == value
            ax.scatter(
                xy[mask, 0],
                xy[mask, 1],
                color=cm(i % cm.N),
                label=str(value),
                **scatter_kwargs,
            )
        ax.legend(fontsize="small")
    else:
        points = ax.scatter(
            xy[:, 0],
            xy[:, 1],
            c=color.astype(float),
            cmap=cmap or "viridis",
            **scatter_kwargs,
        )
        ax.figure.colorbar(points, ax=ax)
    return ax


def _view_batch(estimator, X, n_views, seed):
    """``(original, [view, ...])`` as the estimator trains on them: 2-D
    images (one slice per sample) ready to show."""
    from sklearn.utils.validation import check_is_fitted

    from .data import SliceDataset, check_volumes
    from .estimators import BaseContrastivePretrainer, DrasCLREncoder, WSPPretrainer

    if not isinstance(estimator, BaseContrastivePretrainer):
        raise TypeError(
            "plot_views takes a pretrainer of sklearn_cl3d; got "
            f"{type(estimator).__name__}."
        )
    check_is_fitted(estimator, "augment_")
    if isinstance(estimator, WSPPretrainer):
        # WSP trains on 2-D slices: the middle kept slice of each volume
        ds = SliceDataset(
            check_volumes(estimator, X, reset=False),
            axis=estimator.slice_axis,
            fraction=estimator.slice_fraction,
        )
        mid = ds.n_kept // 2
        x = torch.stack([ds[v * ds.n_kept + mid][0] for v in range(ds.n_volumes)])
    else:
        x = torch.as_tensor(np.asarray(check_volumes(estimator, X, reset=False)))
    with estimator._on_device(), torch.no_grad():
        if isinstance(estimator, DrasCLREncoder):
            # its views are drawn on landmark patches; here on whole volumes
            x = estimator._to_device(x).float()

            def prepare(v):
                return estimator._scale(v)

            original = prepare(x)
        else:
            original = estimator._prepare(x)

            def prepare(v):
                return v

        if original.ndim == 3:  # tabular rows as (n, 1, F)
            raise ValueError("plot_views shows images: X must hold volumes or slices.")
        gen = torch.Generator(device=original.device).manual_seed(int(seed))
        source = x if isinstance(estimator, DrasCLREncoder) else original
        augment = estimator.augment_ or (lambda v, generator: v)
        views = [prepare(augment(source, generator=gen)) for _ in range(n_views)]
    return original.float().cpu().numpy(), [v.float().cpu().numpy() for v in views]


def _middle_slice(img):
    """A 2-D image of one sample: channel 0, the middle slice of a volume."""
    img = img[0]
    if img.ndim == 3:
        img = img[img.shape[0] // 2]
    return img


def plot_views(estimator, X, *, n_views=2, random_state=0, fig=None):
    """Preview the augmented views the estimator trains on.

    One row per sample of ``X`` (keep it small, e.g. ``X[:4]``): the input as
    the network sees it (z-scored, resized: the estimator's own
    preparation) and ``n_views`` views drawn with the estimator's own
    augmentation, each shown as its middle slice along the first spatial
    axis. Views are made as in training: after preparation for
    YAware/SimCLR/Global-Local; on the middle kept 2-D slice of each volume
    for WSP; for DrasCLR on the whole volume (training draws them on
    landmark patches), windowed as its patches are.

    Parameters
    ----------
    estimator : fitted pretrainer
        Its ``augment_`` (built in ``fit``) makes the views.
    X : array-like of shape (n, ...)
        A few volumes (arrays), the same shape as in ``fit``.
    n_views : int, default=2
        Views per sample.
    random_state : int, default=0
        Seed of the views (the estimator's own random streams are untouched).
    fig : matplotlib Figure, default=None
        Figure to draw on (a new one when None).

    Returns
    -------
    fig : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> from sklearn_cl3d.plotting import plot_views
    >>> X = np.random.default_rng(0).normal(size=(8, 1, 12, 12, 12))
    >>> ssl = SimCLRPretrainer(backbone="small3d", max_epochs=1, batch_size=4,
    ...                        random_state=0, verbose=0).fit(X)
    >>> fig = plot_views(ssl, X[:2], n_views=3)
    >>> len(fig.axes)
    8
    """
    if isinstance(n_views, bool) or not isinstance(n_views, Integral) or n_views < 1:
        raise ValueError(f"n_views must be an int >= 1; got {n_views!r}.")
    original, views = _view_batch(estimator, X, int(n_views), random_state)
    plt = _pyplot()
    n = len(original)
    if fig is None:
        fig = plt.figure(figsize=(1.8 * (n_views + 1), 1.8 * n))
    axes = fig.subplots(n, n_views + 1, squeeze=False)
    for i in range(n):
        for j, img in enumerate([original[i]] + [v[i] for v in views]):
            ax = axes[i, j]
            ax.imshow(_middle_slice(img), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("input" if j == 0 else f"view {j}", fontsize="small")
    fig.suptitle(f"{type(estimator).__name__}: augmented views", fontsize="medium")
    return fig
