"""Rows of results: reading them back and turning them into data frames."""

from __future__ import annotations

_COLUMNS = ("method", "protocol", "n_labels", "repeat", "scoring", "score")


def _as_frame(rows, columns=_COLUMNS):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "as_frame=True needs pandas (pip install pandas); or use "
            "as_frame=False for a list of dicts."
        ) from None
    return pd.DataFrame(rows, columns=list(columns))


def _records(results):
    if hasattr(results, "to_dict") and hasattr(results, "columns"):
        results = results.to_dict("records")
    rows = list(results)
    if not rows:
        raise ValueError("results is empty.")
    need = {"method", "protocol", "n_labels", "score"}
    missing = need - set(rows[0])
    if missing:
        raise ValueError(
            f"results lack the column(s) {sorted(missing)}; pass the output of "
            "label_efficiency."
        )
    return rows
