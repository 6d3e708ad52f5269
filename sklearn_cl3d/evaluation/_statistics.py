"""Summaries of label-efficiency results."""

from __future__ import annotations

import numpy as np

from ._tables import _records


def _summary(results):
    """Mean and standard deviation of the score over repeats.

    Returns a list of dicts (``method``, ``protocol``, ``n_labels``,
    ``mean``, ``std``, ``n_repeats``) in the order of first appearance,
    then by ``n_labels``; ``std`` is the population standard deviation
    (``ddof=0``).
    """
    rows = _records(results)
    groups = {}
    for row in rows:
        key = (row["method"], row["protocol"], int(row["n_labels"]))
        groups.setdefault(key, []).append(float(row["score"]))
    curves = dict.fromkeys((m, p) for m, p, _ in groups)
    out = []
    for m, p in curves:
        for k in sorted(k for mm, pp, k in groups if (mm, pp) == (m, p)):
            s = np.asarray(groups[m, p, k])
            out.append(
                {
                    "method": m,
                    "protocol": p,
                    "n_labels": k,
                    "mean": float(s.mean()),
                    "std": float(s.std()),
                    "n_repeats": len(s),
                }
            )
    return out
