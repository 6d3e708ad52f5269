"""Methods x label counts x pretraining seeds on a table or a BIDS folder
(:func:`benchmark`, ``sklearn-cl3d benchmark``)."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
import time
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._label_efficiency import PROTOCOLS, label_efficiency
from ._methods import _check_seeds
from ._runs import (
    PRESETS,
    _fmt_ci,
    _machine,
    _n_labelled,
    _network_makers,
    _plot as _plot_png,
    _pretrain,
    _write_json,
)
from ._splits import (
    _MAX_SEED,
    _outer_splits,
    _resolve_task,
    label_efficiency_splits,
)
from ._statistics import paired_differences, summarize
from ._tables import _COLUMNS, _as_frame

#: Method ids of :func:`benchmark`, in the order they run.
BENCHMARK_METHODS = ("covariates", "pca", "random", "simclr", "yaware")

_NETWORKS = ("random", "simclr", "yaware")
_PRETRAIN_ON = ("auto", "unlabelled", "all")
#: Settings that fix the cells' scores: a results file made with other
#: values is not extended (methods, seeds, label counts, repeats and
#: protocols may grow).
_FIXED = (
    "cohort",
    "target",
    "proxy",
    "covariates",
    "label_draws",
    "test_size",
    "task",
    "scoring",
    "pretrain_on",
    "pretraining",
    "n_components",
    "fine_tune_params",
    "random_state",
)
_RESULTS = "results.json"
#: Folder of the pretrained networks, one per (method, seed).
_MODELS = "models"
#: How the labelled subjects of a cell are drawn: each label count from its
#: own seed (``_draw_seed``), so that adding one leaves the others' cells as
#: they are. Results files without it drew them from one seed for the whole
#: ``n_labels`` list.
_LABEL_DRAWS = "one seed per label count"


class _InputError(ValueError):
    """Bad input to :func:`benchmark`, found before any fit."""


def _log_to(verbose):
    def log(text):
        if verbose > 0:
            print(text, flush=True)

    return log


# ----------------------------------------------------------------- settings


def _columns(value, what, option):
    """A column option as a tuple of names (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise _InputError(
            f"{what} ({option}) must be a column name or a list of them; got {value!r}."
        ) from None
    for name in names:
        if not isinstance(name, str) or not name:
            raise _InputError(
                f"{what} ({option}) must hold column names; got {name!r}."
            )
    if len(set(names)) < len(names):
        raise _InputError(f"{what} ({option}) names a column twice: {list(names)}.")
    return names


def _check_settings(
    methods, protocols, n_labels, seeds, n_repeats, test_size, max_epochs,
    n_components, pretrain_on, verbose, resume,
):  # fmt: skip
    if methods is not None:
        if isinstance(methods, str):
            methods = (methods,)
        methods = tuple(dict.fromkeys(methods))
        unknown = [m for m in methods if m not in BENCHMARK_METHODS]
        if unknown or not methods:
            raise _InputError(
                f"methods (--methods) must be among {list(BENCHMARK_METHODS)}; got "
                f"{list(unknown) or 'none'}."
            )
    if isinstance(protocols, str):
        protocols = (protocols,)
    protocols = tuple(dict.fromkeys(protocols))
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise _InputError(
            f"protocols must be among {list(PROTOCOLS)}; got {list(bad) or 'none'}."
        )
    try:
        seeds = _check_seeds(seeds)
    except ValueError as exc:
        raise _InputError(f"seeds (--seeds): {exc}") from None
    values = [n_labels] if isinstance(n_labels, numbers.Integral) else n_labels
    try:
        values = list(values)
    except TypeError:
        values = [n_labels]
    if not values or any(
        not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 2
        for n in values
    ):
        raise _InputError(
            f"n_labels (--labels) must be integers >= 2; got {n_labels!r}."
        )
    n_labels = sorted({int(n) for n in values})

    def positive(value, name, option, low=1):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _InputError(f"{name} ({option}) must be an integer; got {value!r}.")
        if value < low:
            raise _InputError(f"{name} ({option}) must be >= {low}; got {value}.")
        return int(value)

    n_repeats = positive(n_repeats, "n_repeats", "--splits")
    max_epochs = positive(max_epochs, "max_epochs", "--epochs", 0)
    n_components = positive(n_components, "n_components", "--components")
    if not (
        isinstance(test_size, numbers.Real)
        and not isinstance(test_size, bool)
        and 0.0 < test_size < 1.0
    ):
        raise _InputError(
            f"test_size (--test-size) must be a fraction in (0, 1); got {test_size!r}."
        )
    if pretrain_on not in _PRETRAIN_ON:
        raise _InputError(
            f"pretrain_on (--pretrain-on) must be one of {list(_PRETRAIN_ON)}; got "
            f"{pretrain_on!r}."
        )
    positive(verbose, "verbose", "--quiet/--verbose", 0)
    if not isinstance(resume, bool):
        raise _InputError(f"resume must be True or False; got {resume!r}.")
    return (
        methods, protocols, n_labels, seeds, n_repeats, float(test_size),
        max_epochs, n_components,
    )  # fmt: skip


def _pretrainer_params(pretrainer_params, device, sigma, max_epochs):
    """The shared parameters of the networks, checked on a y-Aware instance."""
    from ..estimators import YAwarePretrainer

    given = dict(pretrainer_params or {})
    fixed = sorted({"random_state", "max_epochs", "sigma"} & set(given))
    if fixed:
        raise _InputError(
            f"pretrainer_params cannot set {fixed}: use the seeds, max_epochs and "
            "sigma options (--seeds, --epochs, --sigma)."
        )
    preset = dict(PRESETS["cpu"]["estimator"])
    if "backbone" in given:  # the preset's channels are for its small CNN
        preset = {k: v for k, v in preset.items() if not k.startswith("backbone__")}
    common = {**preset, "device": device, "verbose": 0, **given}
    try:
        probe = YAwarePretrainer(sigma=sigma, max_epochs=max_epochs, **common)
        for check in ("_check_params", "_validate_params"):
            if hasattr(probe, check):
                getattr(probe, check)()
    except (TypeError, ValueError) as exc:
        raise _InputError(f"pretrainer_params (or --device, --sigma): {exc}") from None
    return common


# --------------------------------------------------------------------- data


def _builtin_cohort(out, n_unlabelled, n_labelled, resolution, random_state, log):
    """The built-in brain cohort as a BIDS folder ``out/cohort`` (kept between
    runs), without the diagnosis of the first ``n_unlabelled`` subjects."""
    from ..datasets import make_brain_cohort

    folder = out / "cohort"
    marker = out / "cohort.json"
    params = {
        "n_unlabelled": n_unlabelled,
        "n_labelled": n_labelled,
        "resolution": resolution,
        "random_state": random_state,
    }
    if folder.is_dir() and marker.is_file():
        if json.loads(marker.read_text()) == params:
            log(f"Using the built-in cohort already in {folder}")
            return folder
        shutil.rmtree(folder)  # ours (the marker says so), made with other settings
    elif folder.exists():
        raise _InputError(
            f"{folder} exists and was not written by benchmark: choose another "
            "output folder (--out) or move it away."
        )
    n = n_unlabelled + n_labelled
    log(
        f"Writing the built-in brain cohort ({n} subjects, T1w at {resolution} mm, "
        f"BIDS) to {folder} ..."
    )
    tmp = out / "cohort.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    make_brain_cohort(
        n, resolution=resolution, random_state=random_state, return_paths=True,
        out_dir=tmp,
    )  # fmt: skip
    # as users' cohorts often are: some subjects have no diagnosis
    import pandas as pd

    table = tmp / "participants.tsv"
    frame = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    frame.loc[: n_unlabelled - 1, "diagnosis"] = "n/a"
    frame.to_csv(table, sep="\t", index=False)
    tmp.replace(folder)
    marker.write_text(json.dumps(params))
    return folder


def _read(data, path_column, suffix, session):
    """``(paths, metadata, description)`` of a table, DataFrame or BIDS folder."""
    from ..data import read_bids, read_table

    is_path = isinstance(data, str | os.PathLike)
    if is_path and not os.path.exists(data):
        raise _InputError(
            f"data (--data) {os.fspath(data)!r} does not exist: give a CSV/TSV "
            "table, a BIDS folder, or nothing for the built-in cohort."
        )
    try:
        if is_path and os.path.isdir(data):
            paths, meta = read_bids(data, suffix=suffix, session=session)
            return paths, meta, f"BIDS folder {os.fspath(data)}"
        paths, meta = read_table(data, path_column=path_column)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise _InputError(f"data (--data): {exc}") from None
    return paths, meta, f"table {os.fspath(data)}" if is_path else "DataFrame"


def _rows_named(meta, rows):
    """Short names of some rows, for messages."""
    ids = meta["participant_id"] if "participant_id" in meta.columns else None
    names = [str(ids.iloc[i]) if ids is not None else f"row {i}" for i in rows[:5]]
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return ", ".join(names) + more


def _numeric(meta, column, rows, what, option):
    """Column ``column`` of the rows ``rows`` as floats, all present."""
    import pandas as pd

    values = meta[column].iloc[rows]
    if not (
        pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
    ):
        sample = [v for v in values.tolist() if isinstance(v, str)][:3]
        raise _InputError(
            f"column {column!r} ({what}, {option}) is not numeric (values such as "
            f"{sample}): encode it as numbers first."
        )
    values = values.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise _InputError(
            f"column {column!r} ({what}, {option}) is missing for {bad.size} of the "
            f"subjects that need it: {_rows_named(meta, np.asarray(rows)[bad])}."
        )
    return values


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(json.dumps(a, default=str).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ results


def _key(row):
    seed = row.get("seed")
    return (row["method"], row["protocol"], int(row["n_labels"]), int(row["repeat"]),
            None if seed is None else int(seed))  # fmt: skip


def _save_network(est, path, log):
    """Keep a pretrained network, so that a resumed run scores new cells
    without pretraining it again."""
    from ..persistence import save_pretrained

    try:
        save_pretrained(est, path)
    except (OSError, ValueError, TypeError) as exc:
        log(f"  (not saved to {path}: {type(exc).__name__}: {exc})")


def _load_network(path, common, log):
    """The network saved at ``path`` by an earlier call, or None."""
    from ..persistence import load_pretrained

    if not path.is_dir():
        return None
    try:
        params = {k: common[k] for k in ("device", "verbose") if k in common}
        return [load_pretrained(path, **params)]
    except Exception as exc:  # noqa: BLE001 - any failure: pretrain again
        log(f"  {path} cannot be read back ({type(exc).__name__}: {exc}); "
            "pretraining again")  # fmt: skip
        return None


def _draw_seed(random_state, n):
    """Seed of the draws of ``n`` labelled subjects: fixed by ``random_state``
    and ``n`` alone, whatever the other label counts."""
    seq = np.random.SeedSequence([int(random_state) % 2**32, int(n)])
    return int(seq.generate_state(1)[0] % _MAX_SEED)


def _previous_n_labels(out, resume):
    """Label counts of the scores already in ``out/results.json`` (none when
    it is missing or unreadable: :func:`_load_previous` says why)."""
    try:
        rows = json.loads((out / _RESULTS).read_text())["scores"] if resume else []
        return sorted({int(r["n_labels"]) for r in rows})
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _load_previous(out, config, log):
    """The rows of ``out/results.json`` made with the same settings."""
    path = out / _RESULTS
    if not path.is_file():
        return [], {}
    try:
        payload = json.loads(path.read_text())
        old, rows = payload["config"], list(payload["scores"])
        for row in rows:
            _key(row)
    except (ValueError, KeyError, TypeError) as exc:
        raise _InputError(
            f"{path} cannot be resumed ({type(exc).__name__}: {exc}): move it away or "
            "pass resume=False (--no-resume) to start again."
        ) from None
    mine = json.loads(json.dumps({k: config[k] for k in _FIXED}, default=str))
    differ = [k for k in _FIXED if old.get(k) != mine[k]]
    if differ:
        why = ""
        if "label_draws" in differ:
            why = (
                " (it was made by an earlier version, whose draws of the labelled "
                "subjects depended on the whole n_labels list)"
            )
        elif "cohort" in differ:
            why = " (the built-in cohort grows with the largest n_labels, --labels)"
        raise _InputError(
            f"{path} was made with other settings ({', '.join(differ)}){why}: its "
            "cells are not comparable. Use another output folder (--out), or "
            "resume=False (--no-resume) to overwrite it."
        )
    log(f"Resuming from {path}: {len(rows)} scores already there")
    return rows, dict(payload.get("fit_seconds", {}))


def _write_outputs(out, config, machine, rows, fit_seconds, seconds, log, tables):
    """results.json/.csv, and with ``tables`` summary.csv and differences.csv
    (also in results.json); returns the summary and the differences."""
    summary = summarize(rows) if tables else []
    differences = []
    methods = list(dict.fromkeys(r["method"] for r in rows)) if tables else []
    for reference in methods[:-1]:
        try:
            found = paired_differences(
                rows, reference=reference, random_state=config["random_state"]
            )
        except ValueError as exc:
            log(f"(no paired differences to {reference}: {exc})")
            continue
        later = methods[methods.index(reference) + 1 :]
        differences += [
            {k: v for k, v in d.items() if k != "differences"}
            for d in found
            if d["method"] in later
        ]
    payload = {
        "config": config,
        "machine": machine,
        "scores": rows,
        "summary": summary,
        "differences": differences,
        "fit_seconds": fit_seconds,
        "seconds": seconds,
    }
    _write_json(out / _RESULTS, payload)
    frames = {"results.csv": _as_frame(rows, _COLUMNS)}
    if summary:
        frames["summary.csv"] = _as_frame(summary, list(summary[0]))
    if differences:
        frame = _as_frame(differences, list(differences[0]))
        frames["differences.csv"] = frame.drop(columns=["seeds", "splits"])
    for name, frame in frames.items():
        tmp = out / (name + ".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(out / name)
    return summary, differences


def _print_tables(summary, differences, n_labels, log):
    log("\nScore: mean ± sd over pretraining seeds x splits")
    log(f"{'method':<24}" + "".join(f"{n:>16}" for n in n_labels))
    for m, p in dict.fromkeys((s["method"], s["protocol"]) for s in summary):
        cells = {
            s["n_labels"]: s for s in summary if s["method"] == m and s["protocol"] == p
        }
        name = m if p == "linear_probe" else f"{m} (fine-tuned)"
        text = [
            f"{cells[n]['mean']:.3f} ± {cells[n]['std']:.3f}" if n in cells else "-"
            for n in n_labels
        ]
        log(f"{name:<24}" + "".join(f"{c:>16}" for c in text))
    if not differences:
        return
    log("\nPaired differences (method − reference) [95 % bootstrap CI]")
    log(f"{'':<40}" + "".join(f"{n:>26}" for n in n_labels))
    pairs = dict.fromkeys(
        (d["method"], d["reference"], d["protocol"]) for d in differences
    )
    for m, ref, p in pairs:
        cells = {
            d["n_labels"]: d
            for d in differences
            if (d["method"], d["reference"], d["protocol"]) == (m, ref, p)
        }
        name = f"{m} − {ref}" + ("" if p == "linear_probe" else " (ft)")
        text = [_fmt_ci(cells[n]) if n in cells else "-" for n in n_labels]
        log(f"{name:<40}" + "".join(f"{c:>26}" for c in text))


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
