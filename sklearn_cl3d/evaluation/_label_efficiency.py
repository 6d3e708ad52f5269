"""Label-efficiency scores (:func:`label_efficiency`): protocols, scorers and
the cells."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import get_scorer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing

from ._methods import _check_methods
from ._splits import _resolve_task, label_efficiency_splits
from ._tables import _as_frame

#: The evaluation protocols of :func:`label_efficiency`.
PROTOCOLS = ("linear_probe", "fine_tune")


# ------------------------------------------------------------------ inputs


def _n_samples(X):
    try:
        return len(X)
    except TypeError:
        raise TypeError(
            f"X must be an array or a list of volumes (or paths); got "
            f"{type(X).__name__}."
        ) from None


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
    >>> from sklearn_cl3d.evaluation import label_efficiency, pretrain_seeds
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
