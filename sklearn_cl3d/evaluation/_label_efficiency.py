"""Label-efficiency splits and scores (:func:`label_efficiency`)."""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Mapping

import numpy as np
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import get_scorer
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from ._tables import _as_frame

#: The evaluation protocols of :func:`label_efficiency`.
PROTOCOLS = ("linear_probe", "fine_tune")

_TASKS = ("auto", "classification", "regression", "segmentation")
_SCRATCH = "from scratch"
_MAX_SEED = np.iinfo(np.int32).max


# ------------------------------------------------------------------ inputs


def _n_samples(X):
    try:
        return len(X)
    except TypeError:
        raise TypeError(
            f"X must be an array or a list of volumes (or paths); got "
            f"{type(X).__name__}."
        ) from None


def _resolve_task(task, y):
    if task not in _TASKS:
        raise ValueError(f"task must be one of {list(_TASKS)}; got {task!r}.")
    if task == "segmentation":
        return task
    if task == "auto" and y.ndim >= 3:
        return "segmentation"
    if y.ndim != 1:
        raise ValueError(
            "y must be one target per subject, shape (n,) (or label masks "
            f"(n, D, H, W) for segmentation); got shape {y.shape}."
        )
    if task != "auto":
        return task
    kind = type_of_target(y)
    if kind in ("binary", "multiclass"):
        return "classification"
    if kind == "continuous":
        return "regression"
    raise ValueError(
        f"Cannot tell the task from y (type_of_target: {kind!r}); pass "
        "task='classification' or task='regression'."
    )


def _check_n_labels(n_labels):
    values = [n_labels] if isinstance(n_labels, numbers.Integral) else n_labels
    try:
        values = list(values)
    except TypeError:
        raise ValueError(
            f"n_labels must be an int or a sequence of ints; got {n_labels!r}."
        ) from None
    if not values:
        raise ValueError("n_labels is empty: give at least one number of labels.")
    for n in values:
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(
                f"n_labels must hold positive integers; got {n!r} in {n_labels!r}."
            )
    return sorted({int(n) for n in values})


def _outer_splits(y, task, n_repeats, test_size, cv, seed):
    """The (train pool, test) index pairs, one per repeat."""
    n = len(y)
    if cv is None:
        if not isinstance(n_repeats, numbers.Integral) or n_repeats < 1:
            raise ValueError(f"n_repeats must be a positive int; got {n_repeats!r}.")
        cls = StratifiedShuffleSplit if task == "classification" else ShuffleSplit
        cv = cls(n_splits=int(n_repeats), test_size=test_size, random_state=seed)
    if hasattr(cv, "split"):
        strata = y if task == "classification" else None
        splits = list(cv.split(np.zeros((n, 1)), strata))
    elif isinstance(cv, numbers.Integral | str):
        raise ValueError(
            "cv must be None, a splitter with a split method (e.g. "
            "RepeatedStratifiedKFold) or an iterable of (train, test) index "
            f"pairs; got {cv!r}. Use n_repeats and test_size for the default."
        )
    else:
        splits = list(cv)
    if not splits:
        raise ValueError("cv gave no split.")
    out = []
    for r, split in enumerate(splits):
        try:
            train, test = split
        except (TypeError, ValueError):
            raise ValueError(
                f"split {r} of cv is not a (train, test) pair of index arrays."
            ) from None
        train = np.asarray(train, dtype=np.intp).ravel()
        test = np.asarray(test, dtype=np.intp).ravel()
        if not len(train) or not len(test):
            raise ValueError(f"split {r} has an empty training or test part.")
        if np.intersect1d(train, test).size:
            raise ValueError(f"split {r} has subjects in both parts.")
        out.append((np.sort(train), np.sort(test)))
    return out


def _check_classes(y, pool, test, r):
    classes = np.unique(y)
    for part, where in ((pool, "training part"), (test, "test part")):
        missing = np.setdiff1d(classes, np.unique(y[part]))
        if missing.size:
            raise ValueError(
                f"The {where} of split {r} has no subject of class(es) "
                f"{missing.tolist()}: every class must appear in both parts "
                "(lower the number of classes, or use a larger or stratified "
                "split)."
            )


def _stratified_draw(pool, y_pool, n, rng):
    """Draw ``n`` indices of ``pool`` with the pool's class proportions."""
    classes, codes = np.unique(y_pool, return_inverse=True)
    counts = np.bincount(codes, minlength=len(classes))
    exact = n * counts / counts.sum()
    alloc = np.floor(exact).astype(int)
    # largest remainders first; ties broken at random
    frac = exact - alloc
    order = np.lexsort((rng.permutation(len(classes)), -frac))
    alloc[order[: n - alloc.sum()]] += 1
    for k in np.flatnonzero(alloc == 0):
        # every class at least once (n >= n_classes is checked before)
        donor = int(np.argmax(alloc))
        alloc[donor] -= 1
        alloc[k] += 1
    picked = [
        rng.choice(pool[codes == k], size=alloc[k], replace=False)
        for k in range(len(classes))
    ]
    return np.sort(np.concatenate(picked))


def label_efficiency_splits(
    y,
    n_labels,
    *,
    n_repeats=5,
    test_size=0.25,
    cv=None,
    task="auto",
    random_state=None,
):
    """The labelled training subsets and test sets of :func:`label_efficiency`.

    For every repeat ``r``, the subjects are split once into a training pool
    and a test set (by default a stratified shuffle split holding out
    ``test_size``; the same test set for every number of labels, method and
    protocol of that repeat). Then, for every ``n`` in ``n_labels``, ``n``
    subjects are drawn without replacement from the training pool:

    - classification: stratified on the class. Class ``c`` gets ``n * p_c``
      subjects, where ``p_c`` is its share of the pool, rounded down and then
      up for the classes with the largest remainders (ties at random), and at
      least one subject; the subjects of each class are then drawn
      uniformly;
    - regression and segmentation: ``n`` subjects drawn uniformly.

    The draws for different ``n`` are independent (not nested). With
    ``random_state`` fixed, the splits and the draws are fixed.

    Parameters
    ----------
    y : array-like of shape (n_subjects,) or (n_subjects, D, H, W)
        Targets: class labels, continuous values or label masks.
    n_labels : int or sequence of int
        Numbers of labelled training subjects (sorted, duplicates dropped).
        Each must be at most the size of every training pool, and, for
        classification, at least the number of classes.
    n_repeats : int, default=5
        Number of repeats (outer splits) when ``cv`` is None.
    test_size : float or int, default=0.25
        Test fraction (float) or number of test subjects (int) of each
        default outer split.
    cv : splitter, iterable of (train, test) or None, default=None
        Custom outer splits instead of ``n_repeats`` shuffle splits: an
        object with ``split(X, y)`` (called with the class labels as ``y``
        for classification, e.g. ``RepeatedStratifiedKFold``; each of its
        splits is one repeat) or an iterable of (train, test) index arrays.
    task : {"auto", "classification", "regression", "segmentation"}, \
default="auto"
        ``"auto"``: segmentation for label masks, else classification for
        binary or multiclass ``y`` and regression for continuous ``y``.
    random_state : int, RandomState instance or None, default=None
        Seeds the outer splits and the draws.

    Returns
    -------
    splits : list of dict
        One dict per (repeat, n): ``repeat``, ``n_labels``, ``train``
        (sorted indices of the ``n`` labelled subjects), ``test`` (sorted
        indices of the test set) and ``seed`` (an int derived from
        ``random_state``, used by :func:`label_efficiency` to seed the
        fine-tuning of that cell). Ordered by repeat, then ``n``.

    Raises
    ------
    ValueError
        If ``n`` exceeds a training pool, is smaller than the number of
        classes, a class has fewer than two subjects or is missing from a
        training pool or a test set, or the splits are malformed.

    See Also
    --------
    label_efficiency : scores on these splits.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0] * 30 + [1] * 10)
    >>> splits = label_efficiency_splits(y, [8, 20], n_repeats=2, random_state=0)
    >>> [(s["repeat"], s["n_labels"], len(s["test"])) for s in splits]
    [(0, 8, 10), (0, 20, 10), (1, 8, 10), (1, 20, 10)]
    >>> np.bincount(y[splits[0]["train"]]).tolist()
    [6, 2]
    """
    y = np.asarray(y)
    task = _resolve_task(task, y)
    n_labels = _check_n_labels(n_labels)
    n = len(y)
    if n < 2:
        raise ValueError(f"Need at least 2 subjects; got {n}.")
    if task == "classification":
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise ValueError(
                f"y has a single class ({classes[0]!r}): classification needs "
                "at least two."
            )
        rare = classes[counts < 2]
        if rare.size:
            raise ValueError(
                f"Class(es) {rare.tolist()} have a single subject: each class "
                "needs at least 2 (one for training, one for testing)."
            )
        if n_labels[0] < len(classes):
            raise ValueError(
                f"n_labels={n_labels[0]} is smaller than the number of classes "
                f"({len(classes)}): a stratified draw takes at least one subject "
                "per class."
            )
    rng = check_random_state(random_state)
    split_seed = int(rng.randint(_MAX_SEED))
    outer = _outer_splits(y, task, n_repeats, test_size, cv, split_seed)
    seeds = rng.randint(_MAX_SEED, size=(len(outer), len(n_labels), 2))
    out = []
    for r, (pool, test) in enumerate(outer):
        if pool.max(initial=-1) >= n or test.max(initial=-1) >= n:
            raise ValueError(f"split {r} has indices beyond the {n} subjects.")
        if task == "classification":
            _check_classes(y, pool, test, r)
        if n_labels[-1] > len(pool):
            raise ValueError(
                f"n_labels={n_labels[-1]} is larger than the training part of "
                f"split {r} ({len(pool)} of {n} subjects; the others are the "
                "test set). Use fewer labels, a smaller test_size or more "
                "subjects."
            )
        for j, k in enumerate(n_labels):
            draw_rng = np.random.RandomState(seeds[r, j, 0])
            if k == len(pool):
                train = pool
            elif task == "classification":
                train = _stratified_draw(pool, y[pool], k, draw_rng)
            else:
                train = np.sort(draw_rng.choice(pool, size=k, replace=False))
            out.append(
                {
                    "repeat": r,
                    "n_labels": k,
                    "train": train,
                    "test": test,
                    "seed": int(seeds[r, j, 1]),
                }
            )
    return out


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


def _check_protocols(protocols, task):
    if protocols is None:
        return ("fine_tune",) if task == "segmentation" else PROTOCOLS
    if isinstance(protocols, str):
        protocols = (protocols,)
    protocols = tuple(dict.fromkeys(protocols))
    if not protocols:
        raise ValueError("protocols is empty.")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(
            f"Unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}."
        )
    if task == "segmentation" and "linear_probe" in protocols:
        raise ValueError(
            "The linear probe needs one target per subject; for segmentation "
            "use protocols=('fine_tune',)."
        )
    return protocols


def _default_scoring(task, y):
    if task == "regression":
        return "r2"
    if task == "segmentation":
        return "dice"
    return "roc_auc" if len(np.unique(y)) == 2 else "roc_auc_ovr"


def _scorer(scoring, task):
    if scoring == "dice":
        if task != "segmentation":
            raise ValueError("scoring='dice' is for task='segmentation'.")
        return "dice", lambda est, X, y: est.score(X, y)
    if isinstance(scoring, str):
        return scoring, get_scorer(scoring)
    if callable(scoring):
        name = getattr(scoring, "__name__", None) or type(scoring).__name__
        return name, scoring
    raise ValueError(
        "scoring must be None, a scikit-learn scorer name or a callable "
        f"scorer(estimator, X, y); got {scoring!r}."
    )


# --------------------------------------------------------------- the cells


def _fine_tuner(task, source, scratch_like, params, seed):
    """The estimator fine-tuned in one cell (unfitted)."""
    params = {**params, "random_state": seed}
    if task == "segmentation":
        from ..estimators import ContrastiveSegmenter

        return ContrastiveSegmenter(pretrained=source, **params)
    from ..estimators import FineTunedClassifier, FineTunedRegressor

    cls = FineTunedClassifier if task == "classification" else FineTunedRegressor
    if source is not None:
        est = cls(pretrained=source, **params)
    elif scratch_like is not None:
        est = cls(pretrained=scratch_like, init="random", **params)
    else:
        est = cls(pretrained=None, **params)
    if task == "regression":
        # the network regresses standardised targets (see FineTunedRegressor)
        est = TransformedTargetRegressor(regressor=est, transformer=StandardScaler())
    return est


def _probe_features(name, source, X, n, covariates):
    """The probe's input: the frozen features, then the covariates."""
    blocks = []
    if source is not None:
        F = np.asarray(source.transform(X), dtype=np.float64)
        if F.ndim == 1:
            F = F[:, None]
        if F.ndim != 2 or len(F) != n:
            raise ValueError(
                f"The transform of pretrainers[{name!r}] gave shape {F.shape}; "
                f"the linear probe needs ({n}, n_features)."
            )
        blocks.append(F)
    if covariates is not None:
        blocks.append(covariates)
    return np.hstack(blocks)


def _run_probe(probe, F, y, train, test, scorer):
    est = clone(probe).fit(F[train], y[train])
    return float(scorer(est, F[test], y[test]))


def _run_fine_tune(make, X, y, train, test, scorer):
    # built here, so a fitted network is freed as soon as it is scored
    est = _fine_tuner(*make).fit(_safe_indexing(X, train), y[train])
    return float(scorer(est, _safe_indexing(X, test), y[test]))


def _timed(func, *args):
    t = time.perf_counter()
    return func(*args), time.perf_counter() - t


# --------------------------------------------------------------- main entry


def label_efficiency(
    pretrainers,
    X,
    y,
    n_labels,
    *,
    protocols=None,
    n_repeats=5,
    test_size=0.25,
    cv=None,
    task="auto",
    scoring=None,
    covariates=None,
    probe=None,
    fine_tune_params=None,
    random_state=None,
    n_jobs=None,
    verbose=0,
    as_frame=False,
):
    """Score pretrained encoders against the number of labelled subjects.

    For every method (a fitted pretrainer, several fits of one with
    different pretraining seeds, a fitted transformer, or None for no
    pretraining), protocol, number of labels ``n`` and repeat ``r``, an
    estimator is
    trained on ``n`` labelled subjects drawn from the training part of split
    ``r`` and scored on the test part of that split. Every method and
    protocol sees the same subjects in a given (``r``, ``n``) cell, so the
    comparisons are paired. The splits are those of
    :func:`label_efficiency_splits` (same arguments): by default, for each
    repeat a stratified shuffle split holds out ``test_size`` of the
    subjects as the test set, and ``n`` subjects are drawn from the rest
    with the class proportions of the training part.

    Protocols:

    - ``"linear_probe"``: the pretrainer is frozen; ``probe`` (default
      ``StandardScaler`` + ``LogisticRegression`` for classification,
      ``StandardScaler`` + ``Ridge`` for regression) is fitted on its
      features (``pretrainer.transform``), with ``covariates`` appended as
      extra columns. The features of all subjects are computed once per
      method and then indexed, so adding repeats or label counts costs
      almost nothing. For a ``None`` method the probe sees the
      ``covariates`` alone (e.g. an "age only" baseline); without
      covariates that cell is skipped.
    - ``"fine_tune"``: a :class:`~sklearn_cl3d.FineTunedClassifier` or
      :class:`~sklearn_cl3d.FineTunedRegressor` starts from the pretrainer's
      encoder (``pretrained=pretrainer``) and trains on the images only
      (``covariates`` are not used). For a ``None`` method the same network
      is trained from scratch: ``init="random"`` with the architecture and
      input conventions of the first fitted pretrainer in ``pretrainers``,
      or ``pretrained=None`` (the ``backbone`` of ``fine_tune_params``) when
      there is none. A regressor is fitted on standardised targets (wrapped
      in :class:`~sklearn.compose.TransformedTargetRegressor`). For
      segmentation the estimator is a
      :class:`~sklearn_cl3d.ContrastiveSegmenter` (``pretrained=None`` for
      a ``None`` method; give the U-Net's ``dims``, ``channels``, ... in
      ``fine_tune_params``). The fine-tuning seed is the cell's (shared by
      the methods and the pretraining seeds).

    Pretraining seeds: a method given as a list (or tuple) of fitted
    pretrainers, the same method pretrained with different seeds (see
    :func:`pretrain_seeds`), is evaluated with each of them on every cell,
    and every row records its ``seed``:

    - a fit in such a list: its ``random_state`` when it is an int, else
      its position in the list (two fits with the same seed are refused);
    - a single fit (pretrainer or transformer, not in a list): None, one
      fit standing for its method, paired with every seed of another method
      (put it in a list, ``[fit]``, to give it its seed);
    - None (no pretraining): None.

    :func:`paired_differences` pairs rows by ``repeat`` and ``seed``.

    Fitted transformers: any fitted object with ``fit`` and ``transform``
    that is not a pretrainer of sklearn_cl3d (e.g. a
    :class:`~sklearn.pipeline.Pipeline` ending in a
    :class:`~sklearn.decomposition.PCA` fitted on the unlabelled subjects,
    or a brain-age regression whose ``transform`` gives the predicted age)
    is a method for the linear probe only: its ``transform(X)`` output
    (2-D, or 1-D for one feature) replaces the frozen features. It has no
    network to fine-tune, so it has no ``"fine_tune"`` rows (pretrainers
    are never skipped). It must be fitted
    (:func:`~sklearn.utils.validation.check_is_fitted` passes).

    Parameters
    ----------
    pretrainers : dict or list
        ``{name: method}`` or a list of methods (named after their class,
        or the class of their first fit; ``"from scratch"`` for None). A
        method is a fitted pretrainer (never changed), the directory of an
        encoder saved with ``save_pretrained``, a list or tuple of these
        (one per pretraining seed), a fitted scikit-learn transformer (or a
        list of them; linear probe only) or None (no pretraining).
    X : array-like of shape (n_subjects, ...) or list
        All subjects' inputs, as the pretrainers take them (volumes, paths,
        or tabular features).
    y : array-like of shape (n_subjects,) or (n_subjects, D, H, W)
        Class labels, continuous targets or (segmentation) label masks.
    n_labels : int or sequence of int
        Numbers of labelled training subjects.
    protocols : str, sequence of str or None, default=None
        Among ``"linear_probe"`` and ``"fine_tune"``; None is both (only
        ``"fine_tune"`` for segmentation).
    n_repeats : int, default=5
        Number of outer splits (ignored when ``cv`` is given).
    test_size : float or int, default=0.25
        Test fraction or number of test subjects of each outer split.
    cv : splitter, iterable of (train, test) or None, default=None
        Custom outer splits (see :func:`label_efficiency_splits`).
    task : {"auto", "classification", "regression", "segmentation"}, \
default="auto"
        Inferred from ``y`` by default.
    scoring : str, callable or None, default=None
        A scikit-learn scorer name or ``scorer(estimator, X, y)``; None is
        ``"roc_auc"`` (binary; ``"roc_auc_ovr"`` for several classes),
        ``"r2"`` (regression) or ``"dice"`` (segmentation: the segmenter's
        mean foreground Dice).
    covariates : array-like of shape (n_subjects,) or (n_subjects, k), \
default=None
        Columns appended to the frozen features in the linear probe (e.g.
        age, when the target depends on brain age relative to age).
    probe : estimator, default=None
        The linear probe (cloned in every cell); see above for the default.
    fine_tune_params : dict, default=None
        Parameters of the fine-tuned estimators (``max_epochs``, ``lr``,
        ``batch_size``, ``freeze``, ``device``, ...). ``pretrained``,
        ``init`` and ``random_state`` are set here and cannot be given.
    random_state : int, RandomState instance or None, default=None
        Seeds the splits, the draws and every fine-tuning (one seed per
        (repeat, n) cell, shared by the methods). The same value gives the
        same table.
    n_jobs : int or None, default=None
        Cells run in parallel with joblib (None: one at a time). The
        features of the linear probe are computed before, in this process.
    verbose : int, default=0
        Print one line per cell when > 0.
    as_frame : bool, default=False
        Return a :class:`pandas.DataFrame` (needs pandas).

    Returns
    -------
    results : list of dict or pandas.DataFrame
        One row per (method, protocol, n_labels, repeat, seed), in that
        order (seeds in the order of the method's fits), with the columns
        ``method``, ``protocol``, ``n_labels``, ``repeat``, ``seed`` (the
        pretraining seed, or None), ``scoring`` (the scorer's name) and
        ``score`` (on the test set). In a DataFrame, ``seed`` has the object
        dtype (ints and None).

    Raises
    ------
    ValueError
        For invalid numbers of labels, splits or classes (see
        :func:`label_efficiency_splits`), unknown protocols, inputs of
        mismatched lengths, fits of a method with the same seed, or nothing
        to evaluate (e.g. only transformers and ``protocols="fine_tune"``).
    NotFittedError
        For an unfitted pretrainer or transformer (named in the message).
    TypeError
        For a method that is none of the above.

    See Also
    --------
    label_efficiency_splits : the splits, for checks by hand.
    pretrain_seeds : fits of one method with several seeds.
    summarize : mean and standard deviation of each curve point.
    paired_differences : differences to a reference, with intervals.
    plot_label_efficiency : the curves.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> from sklearn_cl3d.evaluation import label_efficiency
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 6)).astype("float32")
    >>> y = (X[:, 0] > 0).astype(int)
    >>> ssl = SimCLRPretrainer(backbone="mlp", max_epochs=1, batch_size=16,
    ...                        random_state=0, verbose=0).fit(X)
    >>> table = label_efficiency(
    ...     {"SimCLR": ssl, "scratch": None}, X, y, n_labels=[10, 20],
    ...     n_repeats=2, fine_tune_params={"max_epochs": 2}, random_state=0)
    >>> len(table)  # SimCLR: 2 protocols; scratch: fine-tuning only
    12
    >>> list(table[0])
    ['method', 'protocol', 'n_labels', 'repeat', 'seed', 'scoring', 'score']
    >>> row = table[0]
    >>> row["method"], row["protocol"], row["seed"], row["scoring"]
    ('SimCLR', 'linear_probe', None, 'roc_auc')

    A fitted PCA as a linear-probe baseline, and two pretraining seeds of
    SimCLR:

    >>> from sklearn.decomposition import PCA
    >>> pca = PCA(n_components=3).fit(X)
    >>> seeds = pretrain_seeds(SimCLRPretrainer(
    ...     backbone="mlp", max_epochs=1, batch_size=16, verbose=0), X, seeds=2)
    >>> table = label_efficiency(
    ...     {"SimCLR": seeds, "PCA": pca}, X, y, n_labels=20, n_repeats=2,
    ...     protocols="linear_probe", random_state=0)
    >>> len(table)  # SimCLR: 2 seeds x 2 repeats; PCA: 2 repeats
    6
    >>> [(r["method"], r["seed"]) for r in table if r["repeat"] == 0]
    [('SimCLR', 0), ('SimCLR', 1), ('PCA', None)]
    """
    methods = _check_methods(pretrainers)
    y = np.asarray(y)
    n = _n_samples(X)
    if len(y) != n:
        raise ValueError(f"X and y have different lengths: {n} and {len(y)}.")
    task = _resolve_task(task, y)
    protocols = _check_protocols(protocols, task)
    if covariates is not None:
        covariates = np.asarray(covariates, dtype=np.float64)
        if covariates.ndim == 1:
            covariates = covariates[:, None]
        if covariates.ndim != 2 or len(covariates) != n:
            raise ValueError(
                f"covariates must have shape ({n},) or ({n}, k); got "
                f"{covariates.shape}."
            )
        if not np.all(np.isfinite(covariates)):
            raise ValueError("covariates contain NaN or infinite values.")
    params = dict(fine_tune_params or {})
    # one epoch table per cell would bury the results (verbose below reports)
    params.setdefault("verbose", 0)
    fixed = sorted({"pretrained", "init", "random_state"} & set(params))
    if fixed:
        raise ValueError(
            f"fine_tune_params cannot set {fixed}: label_efficiency sets them "
            "(use random_state=... of label_efficiency)."
        )
    scoring_name, scorer = _scorer(
        _default_scoring(task, y) if scoring is None else scoring, task
    )
    if probe is None:
        last = (
            LogisticRegression(max_iter=5000) if task == "classification" else Ridge()
        )
        probe = make_pipeline(StandardScaler(), last)
    splits = label_efficiency_splits(
        y,
        n_labels,
        n_repeats=n_repeats,
        test_size=test_size,
        cv=cv,
        task=task,
        random_state=random_state,
    )
    # rows by method, protocol, n_labels, then repeat
    splits.sort(key=lambda s: (s["n_labels"], s["repeat"]))
    scratch_like = next(
        (est for _, kind, fits in methods if kind == "pretrainer" for _, est in fits),
        None,
    )
    if "fine_tune" in protocols:
        # fail on bad fine_tune_params now, not after the first cells
        template = _fine_tuner(task, None, None, params, 0)
        if hasattr(template, "regressor"):
            template = template.regressor
        # parameter values (ours), then unknown names (skorch's check)
        for check in ("_check_params", "_validate_params"):
            if hasattr(template, check):
                getattr(template, check)()

    tasks, keys = [], []
    for name, kind, fits in methods:
        for protocol in protocols:
            if protocol == "fine_tune" and kind == "transformer":
                continue  # a transformer has no network to fine-tune
            if protocol == "linear_probe":
                if kind == "none" and covariates is None:
                    continue
                features = [
                    _probe_features(name, source, X, n, covariates)
                    for _, source in fits
                ]
            for cell in splits:
                train, test = cell["train"], cell["test"]
                for f, (seed, source) in enumerate(fits):
                    if protocol == "linear_probe":
                        job = (_run_probe, probe, features[f], y, train, test, scorer)
                    else:
                        make = (task, source, scratch_like, params, cell["seed"])
                        job = (_run_fine_tune, make, X, y, train, test, scorer)
                    tasks.append(job)
                    keys.append(
                        (name, protocol, cell["n_labels"], cell["repeat"], seed)
                    )
    if not tasks:
        raise ValueError(
            f"Nothing to evaluate with protocols={list(protocols)}: fitted "
            "transformers have only the linear probe, and None (no "
            "pretraining) has a linear probe only with covariates."
        )

    def report(key, score, seconds):
        if verbose > 0:
            name, protocol, k, r, seed = key
            at = "" if seed is None else f" seed {seed}"
            print(
                f"[label_efficiency] {name} {protocol} n={k} repeat {r}{at}: "
                f"{scoring_name} {score:.3f} ({seconds:.1f} s)",
                flush=True,
            )

    if n_jobs is None or n_jobs == 1:
        outputs = []
        for key, job in zip(keys, tasks):
            outputs.append(_timed(*job))
            report(key, *outputs[-1])
    else:
        from joblib import Parallel, delayed

        outputs = Parallel(n_jobs=n_jobs)(delayed(_timed)(*job) for job in tasks)
        for key, out in zip(keys, outputs):
            report(key, *out)
    rows = [
        {
            "method": name,
            "protocol": protocol,
            "n_labels": int(k),
            "repeat": int(r),
            "seed": seed,
            "scoring": scoring_name,
            "score": score,
        }
        for (name, protocol, k, r, seed), (score, _) in zip(keys, outputs)
    ]
    if as_frame:
        return _as_frame(rows)
    return rows
