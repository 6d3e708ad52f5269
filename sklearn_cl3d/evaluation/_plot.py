"""The label-efficiency curves."""

from __future__ import annotations

import math

from ._statistics import summarize
from ._tables import _records

_PROTOCOL_LABELS = {"linear_probe": "linear probe", "fine_tune": "fine-tuning"}
_LINESTYLES = ("-", "--", ":", "-.")


def plot_label_efficiency(results, ax=None, *, ylabel=None):
    """Plot the mean score against the number of labels, one curve per method
    and protocol.

    Each point is the mean of the scores of its method, protocol and number
    of labels, pooled over the repeats and the pretraining seeds, with an
    error bar of one sample standard deviation (``ddof=1``) of these scores
    (as in :func:`summarize`; no bar for a single score). The bars show the
    spread of single scores, not the uncertainty of the mean: see
    :func:`paired_differences` for confidence intervals. Methods get the
    colours of the axes' cycle; protocols get line styles (linear probe
    solid, fine-tuning dashed).

    Parameters
    ----------
    results : list of dict or pandas.DataFrame
        The output of :func:`label_efficiency`.
    ax : matplotlib Axes, default=None
        Where to draw; None makes a new figure.
    ylabel : str, default=None
        None uses the ``scoring`` column (e.g. ``"roc_auc"``).

    Returns
    -------
    ax : matplotlib Axes
        With one ``errorbar`` container (and legend entry) per (method,
        protocol).

    Examples
    --------
    >>> rows = [
    ...     {"method": "A", "protocol": "linear_probe", "n_labels": n,
    ...      "repeat": r, "scoring": "r2", "score": 0.1 * n + 0.01 * r}
    ...     for n in (1, 2, 4) for r in range(3)]
    >>> ax = plot_label_efficiency(rows)
    >>> len(ax.containers)
    1
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plot_label_efficiency needs matplotlib: pip install matplotlib "
            "(or the 'plot' extra of sklearn_cl3d)."
        ) from None
    rows = _records(results)
    summary = summarize(rows)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.6))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    protocols = list(dict.fromkeys(s["protocol"] for s in summary))
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for m, p in dict.fromkeys((s["method"], s["protocol"]) for s in summary):
        sel = [s for s in summary if s["method"] == m and s["protocol"] == p]
        ax.errorbar(
            [s["n_labels"] for s in sel],
            [s["mean"] for s in sel],
            yerr=[0.0 if math.isnan(s["std"]) else s["std"] for s in sel],
            color=colors[methods.index(m) % len(colors)],
            linestyle=_LINESTYLES[protocols.index(p) % len(_LINESTYLES)],
            marker="o",
            markersize=4,
            capsize=3,
            label=f"{m}, {_PROTOCOL_LABELS.get(p, p)}",
        )
    ax.set_xticks(sorted({s["n_labels"] for s in summary}))
    ax.set_xlabel("labelled training subjects")
    if ylabel is None:
        names = list(dict.fromkeys(str(r.get("scoring", "score")) for r in rows))
        ylabel = names[0] if len(names) == 1 else "score"
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8)
    return ax
