"""Methods x label counts x pretraining seeds on a table or a BIDS folder
(:func:`benchmark`, ``sklearn-cl3d benchmark``)."""

from __future__ import annotations

import json
import numbers
import os
import time
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._benchmark_results import (
    _draw_seed,
    _key,
    _load_network,
    _load_previous,
    _previous_n_labels,
    _print_tables,
    _save_network,
    _write_outputs,
)
from ._benchmark_setup import (
    _LABEL_DRAWS,
    _MODELS,
    _NETWORKS,
    _RESULTS,
    BENCHMARK_METHODS,
    _builtin_cohort,
    _check_settings,
    _columns,
    _digest,
    _InputError,
    _log_to,
    _numeric,
    _pretrainer_params,
    _read,
)
from ._label_efficiency import label_efficiency
from ._runs import (
    _machine,
    _n_labelled,
    _network_makers,
    _plot as _plot_png,
    _pretrain,
)
from ._splits import (
    _MAX_SEED,
    _outer_splits,
    _resolve_task,
    label_efficiency_splits,
)

# --------------------------------------------------------------- main entry


def benchmark(
    data=None,
    *,
    target=None,
    proxy=None,
    covariates=None,
    path_column="path",
    suffix="T1w",
    session=None,
    methods=None,
    n_labels=(25, 50, 100),
    seeds=3,
    n_repeats=10,
    test_size=0.25,
    protocols="linear_probe",
    task="auto",
    scoring=None,
    pretrain_on="auto",
    max_epochs=30,
    sigma=5.0,
    pretrainer_params=None,
    n_components=50,
    fine_tune_params=None,
    n_unlabelled=300,
    resolution=8,
    device="auto",
    random_state=0,
    out_dir="benchmark_output",
    resume=True,
    verbose=1,
):
    """Benchmark pretraining methods against baselines on a table or BIDS folder.

    Every method is scored on the labelled subjects (those with a
    ``target``) by :func:`label_efficiency`: for each of ``n_repeats``
    shuffle splits (stratified for classification), ``test_size`` of them
    are held out and ``n`` subjects drawn from the rest train a probe
    (``StandardScaler`` + logistic or ridge regression) on the method's
    features with the ``covariates`` appended, for each ``n`` in
    ``n_labels``. The test sets are those of :func:`label_efficiency` with
    ``random_state``; the ``n`` training subjects of each label count are
    drawn from a seed of their own (derived from ``random_state`` and
    ``n``), so a label count's cells do not depend on the other counts.
    Networks are pretrained once per seed; every method sees the same
    subjects in a given (split, ``n``) cell, so the differences are paired
    (:func:`paired_differences`, bootstrap over seeds and splits).

    Methods (``methods``; None runs every one the columns allow):

    - ``"covariates"``: the probe on the covariates alone (e.g. "age
      only"); needs ``covariates``;
    - ``"pca"``: :class:`~sklearn_cl3d.baselines.VoxelPCA` (``n_components``
      principal components of the z-scored voxels, fitted on the
      pretraining subjects; no seed);
    - ``"random"``: the network left at its random initialisation, one per
      seed;
    - ``"simclr"``: :class:`~sklearn_cl3d.SimCLRPretrainer`, one fit per
      seed;
    - ``"yaware"``: :class:`~sklearn_cl3d.YAwarePretrainer` with the
      ``proxy`` columns as metadata (``sigma``), one fit per seed; needs
      ``proxy``.

    The networks share the demo's CPU settings (a small 3-D CNN, batch 32,
    Adam 3e-3; see ``sklearn-cl3d demo``) updated with
    ``pretrainer_params``.

    Pretraining subjects (``pretrain_on``): ``"unlabelled"`` uses the
    subjects without a target (images, and the proxy for y-Aware), so that
    no test image is seen in pretraining; ``"all"`` uses every subject
    (the test subjects' images, never their targets, are then seen by the
    self-supervised fit, which can flatter every method); ``"auto"`` is
    ``"unlabelled"`` when some subjects have no target, else ``"all"``.

    Output, in ``out_dir``:

    - ``results.csv``: one row per score (``method``, ``protocol``,
      ``n_labels``, ``repeat``, ``seed``, ``scoring``, ``score``);
    - ``summary.csv``: mean and sd per method and number of labels
      (:func:`summarize`);
    - ``differences.csv``: every method minus every method before it, with
      bootstrap 95 % CIs (:func:`paired_differences`);
    - ``results.json``: the settings, the machine, all of the above and
      the fitting times;
    - ``label_efficiency.png`` (with matplotlib): :func:`plot_label_efficiency`.
    - ``models/``: the pretrained networks, one folder per (method, seed)
      (:func:`~sklearn_cl3d.save_pretrained`), read back when a resumed
      run has new cells for them.

    Resume: ``results.json`` is written after every (method, seed). When it
    is there and ``resume`` is True, it is read back; a (method, seed) whose
    scores are all there is skipped (not fitted again), any other is fitted
    and only its missing cells are computed. Methods, seeds, label counts,
    repeats and protocols can so be added to a finished run, and give the
    scores a fresh run with all of them would give. Settings that change
    the scores of existing cells (data, columns, ``test_size``,
    ``pretrain_on``, the networks' settings, ``random_state``, ...) are
    refused: use another ``out_dir``, or ``resume=False`` to overwrite. On
    the built-in cohort, a label count larger than the file's changes the
    cohort and is refused too. The summaries, differences and plot cover
    every row of the file, whichever label counts this call asked for.

    Parameters
    ----------
    data : str, path-like, pandas.DataFrame or None, default=None
        A BIDS folder (read with :func:`~sklearn_cl3d.data.read_bids`), a
        CSV/TSV table or a DataFrame of image paths and metadata (read with
        :func:`~sklearn_cl3d.data.read_table`). The images must share one
        grid. None: the built-in brain cohort
        (:func:`~sklearn_cl3d.datasets.make_brain_cohort`, T1w at
        ``resolution`` mm), written to ``out_dir/cohort`` as BIDS and read
        back with ``read_bids``; its first ``n_unlabelled`` subjects have
        no diagnosis, and the target, proxy and covariates default to
        ``"diagnosis"``, ``"age"`` and ``["age"]``.
    target : str, default=None
        Column of the target (class labels or a continuous value); missing
        values mark unlabelled subjects. Required with ``data``.
    proxy : str or list of str, default=None
        Metadata column(s) of y-Aware's kernel (e.g. ``"age"``).
    covariates : str or list of str, default=None
        Numeric columns appended to every probe (e.g. ``"age"``, when the
        target is relative to age); ``[]`` for none.
    path_column : str, default="path"
        Column of the image paths in a table.
    suffix : str, default="T1w"
        BIDS suffix of the images.
    session : str, list of str or None, default=None
        BIDS session(s) to read. A subject must have one image: choose a
        session when there are several.
    methods : list of str or None, default=None
        Among ``"covariates"``, ``"pca"``, ``"random"``, ``"simclr"``,
        ``"yaware"``; None: all that the columns allow.
    n_labels : int or list of int, default=(25, 50, 100)
        Numbers of labelled training subjects.
    seeds : int or list of int, default=3
        Pretraining seeds: ``n`` gives ``0, ..., n - 1``.
    n_repeats : int, default=10
        Shuffle splits of the labelled subjects.
    test_size : float, default=0.25
        Held-out fraction of the labelled subjects in every split.
    protocols : str or list of str, default="linear_probe"
        ``"linear_probe"`` and/or ``"fine_tune"`` (networks only; the
        random network fine-tuned is training from scratch).
    task : {"auto", "classification", "regression"}, default="auto"
        Inferred from the target by default.
    scoring : str, callable or None, default=None
        Scorer of :func:`label_efficiency` (None: ROC-AUC or R²).
    pretrain_on : {"auto", "unlabelled", "all"}, default="auto"
        Which subjects pretrain the networks and fit the PCA (see above).
    max_epochs : int, default=30
        Pretraining epochs of SimCLR and y-Aware.
    sigma : float or array-like, default=5.0
        y-Aware's kernel width(s), in the proxy's units.
    pretrainer_params : dict, default=None
        Other parameters of the networks (``backbone``, ``batch_size``,
        ``lr``, ...).
    n_components : int, default=50
        Components of the voxel PCA (fewer when there are fewer pretraining
        subjects).
    fine_tune_params : dict, default=None
        Parameters of the fine-tuned networks (``"fine_tune"`` protocol).
    n_unlabelled : int, default=300
        Built-in cohort only: its subjects without a diagnosis; enough
        labelled ones are added for the largest ``n_labels``.
    resolution : {2, 4, 8}, default=8
        Built-in cohort only: voxel size in mm.
    device : str, default="auto"
        Torch device of the networks.
    random_state : int, default=0
        Seeds the built-in cohort, the splits and the PCA.
    out_dir : str or path-like, default="benchmark_output"
        Output folder (created if missing).
    resume : bool, default=True
        Extend the results already in ``out_dir`` (see above).
    verbose : int, default=1
        0: silent; 1: one line per (method, seed) and the tables; 2: also
        one line per pretraining epoch.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        ``scores`` (the rows of ``results.csv``, list of dict), ``summary``,
        ``differences``, ``config`` (the settings), ``files`` (the paths
        written) and ``fitted`` (the (method, seed) pairs fitted by this
        call; skipped ones are not there).

    Raises
    ------
    ValueError
        Before any fit, for a bad option, a missing or non-numeric column,
        missing values where they are needed, a subject with several
        images, too few subjects for ``n_labels`` or a results file made
        with other settings. The message names the option, column or file.

    See Also
    --------
    label_efficiency : the scores of given fitted methods.
    paired_differences : the differences with confidence intervals.

    Examples
    --------
    A few seconds on a CPU (a tiny cohort, one epoch)::

        from sklearn_cl3d.evaluation import benchmark

        result = benchmark(n_unlabelled=40, n_labels=[10, 20], seeds=2,
                           n_repeats=3, max_epochs=1, out_dir="bench")
        result.summary  # also bench/summary.csv

    On one's own data: a BIDS folder whose participants.tsv has the
    columns ``diagnosis`` and ``age``::

        benchmark("/data/my_bids", target="diagnosis", proxy="age",
                  covariates=["age"], out_dir="my_benchmark")

    Bad input is refused before any work, naming the option:

    >>> from sklearn_cl3d.evaluation import benchmark
    >>> try:
    ...     benchmark(methods=["simclr", "moco"])
    ... except ValueError as exc:
    ...     print(exc)
    methods (--methods) must be among ['covariates', 'pca', 'random', 'simclr', \
'yaware']; got ['moco'].
    """
    t0 = time.perf_counter()
    (
        methods, protocols, n_labels, seeds, n_repeats, test_size, max_epochs,
        n_components,
    ) = _check_settings(
        methods, protocols, n_labels, seeds, n_repeats, test_size, max_epochs,
        n_components, pretrain_on, verbose, resume,
    )  # fmt: skip
    log = _log_to(verbose)
    common = _pretrainer_params(pretrainer_params, device, sigma, max_epochs)
    if task not in ("auto", "classification", "regression"):
        raise _InputError(
            f"task must be 'auto', 'classification' or 'regression'; got {task!r}."
        )
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise _InputError(
            f"random_state (--seed) must be an int; got {random_state!r}."
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise _InputError(
            f"out_dir (--out) {str(out)!r} exists and is not a folder: choose another."
        )

    if data is None:
        if (
            n_unlabelled is None
            or isinstance(n_unlabelled, bool)
            or not isinstance(n_unlabelled, numbers.Integral)
            or n_unlabelled < 2
        ):
            raise _InputError(
                f"n_unlabelled (--n-unlabelled) must be an integer >= 2; got "
                f"{n_unlabelled!r}."
            )
        if resolution not in (2, 4, 8):
            raise _InputError(
                f"resolution (--resolution) must be 2, 4 or 8 (mm); got {resolution!r}."
            )
        target = "diagnosis" if target is None else target
        proxy = "age" if proxy is None else proxy
        covariates = ("age",) if covariates is None else covariates
        # a resumed run keeps the cohort of its largest label count
        largest = max([n_labels[-1], *_previous_n_labels(out, resume)])
        cohort = {
            "n_unlabelled": int(n_unlabelled),
            "n_labelled": _n_labelled(largest, test_size),
            "resolution": resolution,
            "random_state": int(random_state),
        }
    else:
        cohort = None
        if target is None:
            raise _InputError(
                "target (--target) is required with data: the column to predict."
            )
    if not isinstance(target, str) or not target:
        raise _InputError(f"target (--target) must be a column name; got {target!r}.")
    proxy = _columns(proxy, "proxy", "--proxy")
    covariates = _columns(covariates, "covariates", "--covariates") or ()
    if methods is None:
        methods = tuple(
            m
            for m in BENCHMARK_METHODS
            if not (m == "covariates" and not covariates)
            and not (m == "yaware" and not proxy)
        )
    if "covariates" in methods and not covariates:
        raise _InputError(
            "method 'covariates' needs covariates (--covariates), e.g. ['age']."
        )
    if "yaware" in methods and not proxy:
        raise _InputError(
            "method 'yaware' needs proxy (--proxy): the metadata column(s) of its "
            "kernel, e.g. 'age'."
        )

    config = {
        "data": None,
        "cohort": cohort,
        "target": target,
        "proxy": list(proxy) if proxy else None,
        "covariates": list(covariates),
        "n_labels": n_labels,
        "label_draws": _LABEL_DRAWS,
        "test_size": test_size,
        "task": task,
        "scoring": scoring
        if scoring is None or isinstance(scoring, str)
        else getattr(scoring, "__name__", type(scoring).__name__),
        "pretrain_on": pretrain_on,
        "pretraining": {
            "max_epochs": max_epochs,
            "sigma": np.asarray(sigma).tolist(),
            **{k: v for k, v in common.items() if k not in ("device", "verbose")},
        },
        "n_components": n_components,
        "fine_tune_params": fine_tune_params,
        "random_state": int(random_state),
        "methods": list(methods),
        "protocols": list(protocols),
        "seeds": seeds,
        "n_repeats": n_repeats,
        "device": device,
    }
    config["pretraining"] = json.loads(json.dumps(config["pretraining"], default=str))
    out.mkdir(parents=True, exist_ok=True)
    previous, fit_seconds = _load_previous(out, config, log) if resume else ([], {})
    # the file covers the label counts of earlier calls too
    all_n_labels = sorted({*n_labels, *(int(r["n_labels"]) for r in previous)})
    config["n_labels"] = all_n_labels

    # ------------------------------------------------------------ the data
    if data is None:
        data = _builtin_cohort(
            out, cohort["n_unlabelled"], cohort["n_labelled"], resolution,
            int(random_state), log,
        )  # fmt: skip
    paths, meta, described = _read(data, path_column, suffix, session)
    config["data"] = described
    if target not in meta.columns:
        raise _InputError(
            f"target (--target) {target!r} is not a column of the {described}; its "
            f"columns are {[str(c) for c in meta.columns]}."
        )
    for option, names in (("--proxy", proxy or ()), ("--covariates", covariates)):
        for name in names:
            if name not in meta.columns:
                raise _InputError(
                    f"column {name!r} ({option}) is not in the {described}; its "
                    f"columns are {[str(c) for c in meta.columns]}."
                )
    labelled = np.flatnonzero(meta[target].notna().to_numpy())
    if labelled.size < 4:
        raise _InputError(
            f"target (--target) {target!r} has {labelled.size} non-missing values: "
            "too few subjects to split."
        )
    if "participant_id" in meta.columns:
        ids = meta["participant_id"].iloc[labelled]
        twice = ids[ids.duplicated()].unique().tolist()
        if twice:
            raise _InputError(
                f"participant(s) {twice[:5]} have several labelled images (sessions "
                "or runs): a subject must not be in both a training and a test "
                "set; choose one session (session=..., --session)."
            )
    unlabelled = np.flatnonzero(meta[target].isna().to_numpy())
    if pretrain_on == "unlabelled" and not unlabelled.size:
        raise _InputError(
            f"pretrain_on='unlabelled' (--pretrain-on) but every subject has a "
            f"{target!r}: use pretrain_on='all'."
        )
    use_all = pretrain_on == "all" or (pretrain_on == "auto" and not unlabelled.size)
    pre = np.arange(len(paths)) if use_all else unlabelled
    y = meta[target].iloc[labelled].to_numpy()
    if y.dtype == object:
        y = np.asarray([str(v) for v in y])
    try:
        resolved = _resolve_task(task, y)
        # fail now on too few subjects or classes, with their message
        label_efficiency_splits(
            y, n_labels, n_repeats=n_repeats, test_size=test_size, task=resolved,
            random_state=random_state,
        )  # fmt: skip
    except ValueError as exc:
        raise _InputError(f"target {target!r} / n_labels (--labels): {exc}") from None
    # the test sets of label_efficiency with random_state, for every label
    # count; the labelled subjects of each count are drawn from its own seed
    split_seed = int(check_random_state(random_state).randint(_MAX_SEED))
    outer = _outer_splits(y, resolved, n_repeats, test_size, None, split_seed)
    cov = (
        np.column_stack(
            [
                _numeric(meta, c, labelled, "covariate", "--covariates")
                for c in covariates
            ]
        )
        if covariates
        else None
    )
    z = None
    if "yaware" in methods:
        z = np.column_stack([_numeric(meta, c, pre, "proxy", "--proxy") for c in proxy])
        z = z[:, 0] if z.shape[1] == 1 else z
    n_components = min(n_components, len(pre))  # as many as subjects at most
    X_lab = [paths[i] for i in labelled]
    X_pre = [paths[i] for i in pre]
    config["subjects"] = {
        "labelled": int(labelled.size),
        "pretraining": int(len(pre)),
        "pretrain_on": "all" if use_all else "unlabelled",
        # the images and the columns used, whichever methods run
        "digest": _digest(
            [os.path.basename(p) for p in X_lab],
            y.tolist(),
            [os.path.basename(p) for p in X_pre],
            meta[[*(proxy or ()), *covariates]].astype(str).to_numpy().tolist(),
        ),
    }
    old_subjects = None
    if previous:
        old_subjects = json.loads((out / _RESULTS).read_text())["config"].get(
            "subjects", {}
        )
        if old_subjects.get("digest") != config["subjects"]["digest"]:
            raise _InputError(
                f"{out / _RESULTS} was made on other subjects or values (the images, "
                "target, proxy or covariates differ): use another output folder "
                "(--out), or resume=False (--no-resume) to overwrite it."
            )
    log(
        f"{described}: {labelled.size} labelled subjects ({target!r}, "
        f"{resolved}); pretraining on {len(pre)} "
        f"{'subjects (all)' if use_all else 'unlabelled subjects'}"
        + (f"; probes get {list(covariates)} too" if covariates else "")
    )

    # ------------------------------------------------------------ the cells
    names = {
        "covariates": " + ".join(covariates) + " only",
        "pca": f"voxel PCA({n_components})",
        **dict(zip(_NETWORKS, ("random network", "SimCLR", "y-Aware"))),
    }
    makers = dict(zip(_NETWORKS, _network_makers(common, max_epochs, sigma).values()))
    rows = list(previous)
    done = {_key(r) for r in rows}
    units = [(m, s) for m in methods for s in (seeds if m in _NETWORKS else [None])]
    machine = _machine()
    fitted = []
    quiet = _log_to(verbose - 1)
    for k, (m, seed) in enumerate(units, 1):
        name = names[m]
        protos = [p for p in protocols if p == "linear_probe" or m in _NETWORKS]
        missing = [
            n
            for n in n_labels
            if not {(name, p, n, r, seed) for p in protos for r in range(n_repeats)}
            <= done
        ]
        at = f"[benchmark {k}/{len(units)}] {name}" + (
            "" if seed is None else f" seed {seed}"
        )
        if not protos:
            log(f"{at}: no protocol applies (fine-tuning is for networks)")
            continue
        if not missing:
            log(f"{at}: done already, skipped")
            continue
        t = time.perf_counter()
        if m == "covariates":
            method = None
        elif m == "pca":
            from ..baselines import VoxelPCA

            method = VoxelPCA(n_components, random_state=random_state).fit(X_pre)
            fit_seconds.setdefault(name, []).append(time.perf_counter() - t)
        else:
            saved = out / _MODELS / f"{m}-seed{seed}"
            method = _load_network(saved, common, log) if previous else None
            if method is None:
                method = _pretrain(
                    name, makers[m], [seed], X_pre, z if m == "yaware" else None,
                    quiet, fit_seconds,
                )  # fmt: skip
                _save_network(method[0], saved, log)
            else:
                log(f"{at}: network read back from {saved}")
        new = []
        for n in missing:
            new += label_efficiency(
                {name: method},
                X_lab,
                y,
                [n],
                protocols=protos,
                cv=outer,
                task=resolved,
                scoring=scoring,
                covariates=cov,
                fine_tune_params=fine_tune_params,
                random_state=_draw_seed(random_state, n),
            )
        new = [r for r in new if _key(r) not in done]
        rows += new
        done |= {_key(r) for r in new}
        fitted.append((name, seed))
        scores = [r["score"] for r in new]
        log(
            f"{at}: {len(new)} scores, mean {new[0]['scoring']} "
            f"{np.mean(scores):.3f} ({time.perf_counter() - t:.1f} s)"
        )
        seconds = time.perf_counter() - t0
        _write_outputs(out, config, machine, rows, fit_seconds, seconds, quiet, False)
    if not rows:
        raise _InputError("nothing to evaluate: no method gave a score.")
    seconds = time.perf_counter() - t0
    summary, differences = _write_outputs(
        out, config, machine, rows, fit_seconds, seconds, log, True
    )
    _print_tables(summary, differences, all_n_labels, log)
    scoring_name = rows[0]["scoring"]
    _plot_png(
        rows,
        out / "label_efficiency.png",
        quiet,
        ylabel=f"{scoring_name} (probe)",
        chance=0.5 if scoring_name.startswith("roc_auc") else None,
    )
    files = {
        name: str(out / name)
        for name in (
            "results.csv", "results.json", "summary.csv", "differences.csv",
            "label_efficiency.png",
        )
        if (out / name).exists()
    }  # fmt: skip
    log(f"Wrote {', '.join(sorted(files))} to {out} ({time.perf_counter() - t0:.0f} s)")
    return Bunch(
        scores=rows,
        summary=summary,
        differences=differences,
        config=config,
        files=files,
        fitted=fitted,
    )
