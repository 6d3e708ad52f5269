"""The methods of :func:`label_efficiency`: checking fitted pretrainers and
transformers, and fitting one method with several seeds
(:func:`pretrain_seeds`)."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

_SCRATCH = "from scratch"


def _int_seed(est):
    """The estimator's ``random_state`` when it is an int, else None."""
    seed = getattr(est, "random_state", None)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return int(seed)
    return None


def _check_method(p, where):
    """``(kind, estimator)`` of one fitted method; kind is "pretrainer" or
    "transformer"."""
    from ..estimators import BaseContrastivePretrainer

    if isinstance(p, str | os.PathLike):
        from .._persistence import load_pretrained

        p = load_pretrained(p)
    if isinstance(p, BaseContrastivePretrainer):
        if not getattr(p, "initialized_", False):
            raise NotFittedError(
                f"{where} ({type(p).__name__}) is not fitted: label_efficiency "
                "evaluates fitted pretrainers (fit them first)."
            )
        return "pretrainer", p
    if callable(getattr(p, "transform", None)) and callable(getattr(p, "fit", None)):
        # %(name)s is check_is_fitted's placeholder; escape the user's %
        label = where.replace("%", "%%")
        check_is_fitted(
            p,
            msg=f"{label} (%(name)s) is not fitted: label_efficiency uses "
            "fitted transformers as they are (fit it first, e.g. on the "
            "unlabelled subjects).",
        )
        return "transformer", p
    raise TypeError(
        f"{where} must be a fitted pretrainer of sklearn_cl3d, a fitted "
        "scikit-learn transformer (an object with fit and transform, for the "
        "linear probe), the directory of a saved encoder, a list of fits of one "
        f"method with different seeds, or None (no pretraining); got "
        f"{type(p).__name__}."
    )


def _check_methods(pretrainers):
    """``[(name, kind, [(seed, estimator), ...]), ...]``; kind is
    "pretrainer", "transformer" or "none"."""
    if isinstance(pretrainers, Mapping):
        items = list(pretrainers.items())
    elif isinstance(pretrainers, list | tuple):
        items, seen = [], {}
        for p in pretrainers:
            first = p[0] if isinstance(p, list | tuple) and len(p) else p
            base = _SCRATCH if first is None else type(first).__name__
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base} ({seen[base]})"
            items.append((name, p))
    else:
        raise TypeError(
            "pretrainers must be a dict {name: fitted pretrainer or None} or a "
            f"list of them; got {type(pretrainers).__name__}."
        )
    if not items:
        raise ValueError("pretrainers is empty: give at least one method.")
    methods = []
    for name, p in items:
        where = f"pretrainers[{name!r}]"
        if p is None:
            methods.append((str(name), "none", [(None, None)]))
            continue
        if not isinstance(p, list | tuple):
            # one fit stands for its method: paired with every seed
            kind, est = _check_method(p, where)
            methods.append((str(name), kind, [(None, est)]))
            continue
        # the same method pretrained with several seeds
        if not p:
            raise ValueError(
                f"{where} is an empty list: give the fits of that method (one "
                "per pretraining seed)."
            )
        kinds, entries = set(), []
        for i, q in enumerate(p):
            if q is None:
                raise ValueError(
                    f"{where}[{i}] is None: a list holds fits of one method "
                    "with different seeds; give None (no pretraining) as a "
                    "method of its own."
                )
            kind, est = _check_method(q, f"{where}[{i}]")
            kinds.add(kind)
            seed = _int_seed(est)
            entries.append((i if seed is None else seed, est))
        if len(kinds) > 1:
            raise ValueError(
                f"{where} mixes pretrainers and other transformers: a list "
                "holds fits of one method with different seeds."
            )
        seeds = [seed for seed, _ in entries]
        twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if twice:
            raise ValueError(
                f"{where} holds several fits with seed(s) {twice} (a fit's "
                "seed is its random_state when that is an int, else its "
                "position in the list): fit each with its own random_state, "
                "e.g. with pretrain_seeds."
            )
        methods.append((str(name), kinds.pop(), entries))
    return methods


def _check_seeds(seeds):
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1; got {seeds!r}.")
        return list(range(int(seeds)))
    try:
        values = list(seeds)
    except TypeError:
        raise ValueError(
            f"seeds must be an int or a sequence of ints; got {seeds!r}."
        ) from None
    if not values:
        raise ValueError("seeds is empty: give at least one seed.")
    for s in values:
        if not isinstance(s, numbers.Integral) or isinstance(s, bool) or s < 0:
            raise ValueError(
                f"seeds must hold non-negative ints; got {s!r} in {seeds!r}."
            )
    values = [int(s) for s in values]
    if len(set(values)) < len(values):
        raise ValueError(f"seeds has duplicates: {values}.")
    return values


def pretrain_seeds(estimator, X, y=None, *, seeds=3, **fit_params):
    """Fit one estimator with several seeds: one fit per pretraining seed.

    The fits are ``clone(estimator).set_params(random_state=s)``, fitted on
    the same data, for each seed ``s``. Give the list to
    :func:`label_efficiency` as one method, so that the scores cover the
    variation due to pretraining, and :func:`paired_differences` pairs them
    by seed with other methods fitted with the same seeds.

    Parameters
    ----------
    estimator : estimator
        An estimator with a ``random_state`` parameter, e.g. a pretrainer of
        sklearn_cl3d (never fitted or changed itself).
    X : array-like or list
        The training inputs (e.g. the unlabelled volumes).
    y : array-like, default=None
        The second argument of ``fit`` when not None (e.g. the age proxy of
        :class:`~sklearn_cl3d.YAwarePretrainer`).
    seeds : int or sequence of int, default=3
        ``n`` gives the seeds ``0, 1, ..., n - 1``; a sequence gives them
        explicitly (distinct non-negative ints).
    **fit_params : dict
        Passed to every ``fit``.

    Returns
    -------
    fits : list of estimator
        One fitted clone per seed, in the order of the seeds; the seed of a
        fit is its ``random_state``.

    Raises
    ------
    ValueError
        If ``estimator`` has no ``random_state`` parameter or ``seeds`` is
        not a positive int or a sequence of distinct non-negative ints.

    See Also
    --------
    label_efficiency : takes the list as one method.
    paired_differences : compares methods paired by seed and split.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.decomposition import PCA
    >>> X = np.random.default_rng(0).normal(size=(30, 5))
    >>> fits = pretrain_seeds(
    ...     PCA(n_components=2, svd_solver="randomized"), X, seeds=[0, 7])
    >>> [fit.random_state for fit in fits]
    [0, 7]
    >>> fits[1].transform(X).shape
    (30, 2)

    With a pretrainer (here a tiny one on tabular data)::

        yaware = pretrain_seeds(
            YAwarePretrainer(sigma=5.0), X_unlabelled, age_unlabelled, seeds=3
        )
        label_efficiency({"y-Aware": yaware, ...}, X_labelled, diagnosis, ...)
    """
    if not hasattr(estimator, "get_params") or "random_state" not in (
        estimator.get_params(deep=False)
    ):
        raise ValueError(
            f"estimator ({type(estimator).__name__}) has no random_state "
            "parameter: pretrain_seeds sets it to each seed."
        )
    fits = []
    for seed in _check_seeds(seeds):
        est = clone(estimator).set_params(random_state=seed)
        if y is None:
            est.fit(X, **fit_params)
        else:
            est.fit(X, y, **fit_params)
        fits.append(est)
    return fits
