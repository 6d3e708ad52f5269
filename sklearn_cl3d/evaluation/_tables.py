"""Rows of results: reading them back and turning them into data frames."""

from __future__ import annotations

import math
import numbers

#: The columns of a :func:`label_efficiency` row, in order.
_COLUMNS = ("method", "protocol", "n_labels", "repeat", "seed", "scoring", "score")
_KEY_COLUMNS = ("method", "protocol", "n_labels", "score")


def _as_frame(rows, columns=_COLUMNS):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "as_frame=True needs pandas (pip install pandas); or use "
            "as_frame=False for a list of dicts."
        ) from None
    frame = pd.DataFrame(rows, columns=list(columns))
    if "seed" in frame.columns:
        # ints and None, as in the rows (pandas would make floats with NaN)
        frame["seed"] = pd.Series(
            [row.get("seed") for row in rows], index=frame.index, dtype=object
        )
    return frame


def _records(results, need=_KEY_COLUMNS, argument="results"):
    """The rows of ``results`` (list of dicts or DataFrame) as a list of dicts."""
    if hasattr(results, "to_dict") and hasattr(results, "columns"):
        results = results.to_dict("records")
    try:
        rows = list(results)
    except TypeError:
        raise ValueError(
            f"{argument} must be a list of dicts or a pandas DataFrame (the "
            f"output of label_efficiency); got {type(results).__name__}."
        ) from None
    if not rows:
        raise ValueError(f"{argument} is empty.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(
                f"{argument} must hold dicts (rows); item {i} is {type(row).__name__}."
            )
        missing = [c for c in need if c not in row]
        if missing:
            raise ValueError(
                f"{argument} lack the column(s) {missing} (row {i}); pass the "
                "output of label_efficiency."
            )
    return rows


def _clean_seed(seed):
    """A row's pretraining seed as an int, or None for no seed.

    Accepts what a DataFrame round trip gives: floats holding integers, NaN
    or ``pandas.NA`` for a missing seed.
    """
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return int(seed)
    if isinstance(seed, numbers.Real) and not isinstance(seed, bool):
        if math.isnan(seed):
            return None
        if float(seed).is_integer():
            return int(seed)
    if type(seed).__name__ == "NAType":
        return None
    raise ValueError(f"a seed must be an int or None; got {seed!r}.")
