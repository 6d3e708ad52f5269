"""Outer splits and labelled draws of :func:`label_efficiency`
(:func:`label_efficiency_splits`)."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target

_TASKS = ("auto", "classification", "regression", "segmentation")
_MAX_SEED = np.iinfo(np.int32).max


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
