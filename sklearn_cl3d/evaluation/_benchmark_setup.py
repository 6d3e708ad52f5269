"""Settings, constants and input data of :func:`benchmark`: option checks,
the networks' parameters, the built-in cohort and the table or BIDS folder
read back with its numeric columns."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil

import numpy as np

from ._label_efficiency import PROTOCOLS
from ._methods import _check_seeds
from ._runs import (
    PRESETS,
)

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
