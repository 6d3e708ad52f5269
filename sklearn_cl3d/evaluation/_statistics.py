"""Summaries and paired bootstrap comparisons of label-efficiency results."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ._tables import _as_frame, _clean_seed, _records

_SUMMARY_COLUMNS = (
    "method",
    "protocol",
    "n_labels",
    "mean",
    "std",
    "n",
    "n_seeds",
    "n_repeats",
)
_PAIRED_COLUMNS = (
    "method",
    "reference",
    "protocol",
    "n_labels",
    "mean_difference",
    "ci_low",
    "ci_high",
    "n_seeds",
    "n_splits",
    "n_pairs",
    "p_above",
    "seeds",
    "splits",
    "differences",
)


def _sorted(values):
    """Values in increasing order when they compare, else as they came."""
    values = list(dict.fromkeys(values))
    try:
        return sorted(values)
    except TypeError:
        return values


def _plain(value):
    """Integers of numpy or pandas as Python ints (for keys and output)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


# ----------------------------------------------------------------- summary


def summarize(results, as_frame=False):
    """Mean and standard deviation of the scores of each curve point.

    The scores of a method, protocol and number of labels are pooled over
    the repeats (splits) and the pretraining seeds, and summarised by their
    mean and their sample standard deviation (``ddof=1``). The standard
    deviation is the spread of single scores, not the uncertainty of the
    mean: for differences between methods with confidence intervals, use
    :func:`paired_differences`.

    Parameters
    ----------
    results : list of dict or pandas.DataFrame
        The output of :func:`label_efficiency`: rows with at least the
        columns ``method``, ``protocol``, ``n_labels`` and ``score``
        (``repeat`` and ``seed`` are used when present).
    as_frame : bool, default=False
        Return a :class:`pandas.DataFrame` (needs pandas).

    Returns
    -------
    summary : list of dict or pandas.DataFrame
        One row per (method, protocol, n_labels), ordered by the first
        appearance of (method, protocol) in ``results``, then by
        ``n_labels``, with the columns:

        - ``mean``: the mean score;
        - ``std``: the sample standard deviation (``ddof=1``) of the
          scores; NaN when there is a single score;
        - ``n``: the number of scores pooled;
        - ``n_seeds``: the number of distinct pretraining seeds (a method
          without seeds, ``seed`` None or no ``seed`` column, counts one);
        - ``n_repeats``: the number of distinct repeats (each row counts as
          its own repeat when there is no ``repeat`` column).

    Raises
    ------
    ValueError
        If ``results`` is empty or lacks a column.

    See Also
    --------
    label_efficiency : the scores.
    paired_differences : differences to a reference method, with intervals.

    Examples
    --------
    >>> rows = [
    ...     {"method": "A", "protocol": "linear_probe", "n_labels": 10,
    ...      "repeat": r, "seed": s, "score": score}
    ...     for (r, s), score in zip(
    ...         [(0, 0), (1, 0), (0, 1), (1, 1)], [0.6, 0.7, 0.8, 0.9])]
    >>> (row,) = summarize(rows)
    >>> round(row["mean"], 3), round(row["std"], 4)
    (0.75, 0.1291)
    >>> row["n"], row["n_seeds"], row["n_repeats"]
    (4, 2, 2)
    """
    rows = _records(results)
    groups = {}
    for i, row in enumerate(rows):
        key = (row["method"], row["protocol"], _plain(row["n_labels"]))
        group = groups.setdefault(key, ([], set(), set()))
        group[0].append(float(row["score"]))
        group[1].add(_clean_seed(row.get("seed")))
        group[2].add(_plain(row["repeat"]) if "repeat" in row else ("row", i))
    curves = dict.fromkeys((m, p) for m, p, _ in groups)
    out = []
    for m, p in curves:
        for k in _sorted(k for mm, pp, k in groups if (mm, pp) == (m, p)):
            scores, seeds, repeats = groups[m, p, k]
            s = np.asarray(scores)
            out.append(
                {
                    "method": m,
                    "protocol": p,
                    "n_labels": k,
                    "mean": float(s.mean()),
                    "std": float(s.std(ddof=1)) if len(s) > 1 else math.nan,
                    "n": len(s),
                    "n_seeds": len(seeds),
                    "n_repeats": len(repeats),
                }
            )
    if as_frame:
        return _as_frame(out, _SUMMARY_COLUMNS)
    return out


#: The former private name of :func:`summarize` (used by the demo).
_summary = summarize


# ---------------------------------------------------------------- bootstrap


def _resample_counts(rng, n_bootstrap, size):
    """How often each of ``size`` items is drawn, in each bootstrap sample.

    Draws ``rng.integers(0, size, size=(n_bootstrap, size))`` (nothing when
    ``size`` is 1) and counts the indices of each row.
    """
    if size == 1:
        return np.ones((n_bootstrap, 1))
    idx = rng.integers(0, size, size=(n_bootstrap, size))
    offsets = size * np.arange(n_bootstrap)[:, None]
    counts = np.bincount((idx + offsets).ravel(), minlength=n_bootstrap * size)
    return counts.reshape(n_bootstrap, size).astype(np.float64)


def _crossed_bootstrap(D, n_bootstrap, rng):
    """Bootstrap means of a (seeds, splits) table, both axes resampled.

    A bootstrap sample draws the seeds (rows) with replacement and, apart,
    the splits (columns) with replacement; its mean is the mean of the
    crossed sub-table ``D[rows][:, cols]``, computed from the draw counts.
    """
    n_seeds, n_splits = D.shape
    seed_counts = _resample_counts(rng, n_bootstrap, n_seeds)
    split_counts = _resample_counts(rng, n_bootstrap, n_splits)
    return ((seed_counts @ D) * split_counts).sum(axis=1) / (n_seeds * n_splits)


def _rng_factory(random_state):
    if random_state is None:
        return np.random.default_rng
    if isinstance(random_state, np.random.Generator):
        return lambda: random_state
    if (
        isinstance(random_state, numbers.Integral)
        and not isinstance(random_state, bool)
        and random_state >= 0
    ):
        return lambda: np.random.default_rng(int(random_state))
    raise ValueError(
        "random_state must be None, a non-negative int or a "
        f"numpy.random.Generator; got {random_state!r}."
    )


def _pair(mine, ref, method, reference, where):
    """The (seeds, splits) table of differences ``method - reference``, and
    the seeds of one side only (left out)."""
    seeds = {}
    for name, cells in ((method, mine), (reference, ref)):
        values = {s for _, s in cells}
        if None in values and len(values) > 1:
            raise ValueError(
                f"{where}: {name!r} has rows with and without a pretraining "
                "seed; give every row of a method a seed, or none."
            )
        seeds[name] = values
    ref_splits = {r for r, _ in ref}
    splits = _sorted(r for r, _ in mine if r in ref_splits)
    if not splits:
        raise ValueError(f"{where}: {method!r} and {reference!r} share no repeat.")
    mine_seeds, ref_seeds = seeds[method], seeds[reference]
    dropped = []
    if ref_seeds == {None}:
        rows = _sorted(mine_seeds)
    elif mine_seeds == {None}:
        rows = _sorted(ref_seeds)
    else:
        rows = _sorted(mine_seeds & ref_seeds)
        if not rows:
            raise ValueError(
                f"{where}: {method!r} (seeds {_sorted(mine_seeds)}) and "
                f"{reference!r} (seeds {_sorted(ref_seeds)}) have no "
                "pretraining seed in common, so their scores cannot be paired "
                "by seed."
            )
        dropped = _sorted(mine_seeds ^ ref_seeds)
    D = np.empty((len(rows), len(splits)))
    for i, s in enumerate(rows):
        for j, r in enumerate(splits):
            pair = []
            for name, cells, own in (
                (method, mine, mine_seeds),
                (reference, ref, ref_seeds),
            ):
                key = (r, None if own == {None} else s)
                if key not in cells:
                    raise ValueError(
                        f"{where}: {name!r} has no score for repeat {r!r} and "
                        f"seed {key[1]!r}; the paired bootstrap needs every "
                        "seed on every shared repeat."
                    )
                pair.append(cells[key])
            D[i, j] = pair[0] - pair[1]
    return rows, splits, D, dropped


def paired_differences(
    results,
    reference,
    *,
    confidence=0.95,
    n_bootstrap=10_000,
    random_state=None,
    as_frame=False,
):
    """Differences of every method to a reference, paired by split and seed.

    For every method other than ``reference``, and every protocol and number
    of labels that both have, the score differences ``method - reference``
    are paired:

    - by split: the two scores of a repeat come from the same training
      subjects and the same test set (see :func:`label_efficiency`);
    - by pretraining seed: when both methods have seeds (e.g. both were
      pretrained with seeds 0, 1 and 2, see :func:`pretrain_seeds`), the
      scores of equal seed values are paired, and seeds present on one side
      only are left out (with a warning). A transformer fitted with an int
      ``random_state`` has that seed: fit it with the same seeds as the
      other methods (:func:`pretrain_seeds`), or with ``random_state=None``
      when it is deterministic. When one side has no seed (``seed`` None: no
      pretraining, or a deterministic transformer), its score on a split is
      paired with the score of every seed of the other side on that split.

    This gives a table of differences with one row per seed and one column
    per split. Its mean is the mean difference. The confidence interval is
    a percentile bootstrap of that mean in which the seeds and the splits
    are resampled independently, each with replacement (a crossed two-way
    bootstrap: a bootstrap table holds every drawn seed on every drawn
    split); with a single seed only the splits are resampled.

    Parameters
    ----------
    results : list of dict or pandas.DataFrame
        The output of :func:`label_efficiency`: rows with the columns
        ``method``, ``protocol``, ``n_labels``, ``repeat`` and ``score``,
        and ``seed`` (rows without one have no seed). Every (method,
        protocol, n_labels, repeat, seed) must appear once.
    reference : str
        The method the others are compared with (e.g. ``"SimCLR"``).
    confidence : float, default=0.95
        Level of the interval, in (0, 1).
    n_bootstrap : int, default=10_000
        Number of bootstrap samples, at least 100.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the resampling. With an int (or None), every comparison draws
        from a new ``numpy.random.default_rng(random_state)``, so its
        interval does not depend on the other rows of ``results``; a
        Generator is used as it is, its draws continuing from one
        comparison to the next.
    as_frame : bool, default=False
        Return a :class:`pandas.DataFrame` (needs pandas).

    Returns
    -------
    differences : list of dict or pandas.DataFrame
        One row per (method, protocol, n_labels), ordered by the first
        appearance of the method and the protocol in ``results``, then by
        ``n_labels``, with the columns:

        - ``method``, ``reference``, ``protocol``, ``n_labels``;
        - ``mean_difference``: the mean of the paired differences;
        - ``ci_low``, ``ci_high``: the bootstrap percentile interval;
        - ``n_seeds``, ``n_splits``: the size of the table of differences
          (``n_seeds`` is 1 when neither method has a seed);
        - ``n_pairs``: ``n_seeds * n_splits``, the number of differences;
        - ``p_above``: the share of bootstrap means above 0;
        - ``seeds``, ``splits``: the seed values (the rows of the table;
          ``[None]`` without seeds) and the repeats (its columns);
        - ``differences``: the table itself, a list of ``n_seeds`` lists of
          ``n_splits`` floats.

    Raises
    ------
    ValueError
        If ``reference`` is not a method of ``results``, a column is
        missing, a score is not finite, a row is duplicated, the results mix
        scorings, two methods with seeds share none, a seed lacks a shared
        repeat, no method can be compared with ``reference``, or
        ``confidence``, ``n_bootstrap`` or ``random_state`` are invalid.

    See Also
    --------
    label_efficiency : the scores.
    summarize : mean and standard deviation of each method.

    Notes
    -----
    Order of the random draws: for each output row, in order, a generator
    (see ``random_state``) draws ``rng.integers(0, n_seeds, size=(n_bootstrap,
    n_seeds))`` (the resampled seeds; skipped when ``n_seeds`` is 1), then
    ``rng.integers(0, n_splits, size=(n_bootstrap, n_splits))`` (the
    resampled splits; skipped when ``n_splits`` is 1). Bootstrap sample
    ``b`` is the table restricted to the rows of the ``b``-th seed draw and
    the columns of the ``b``-th split draw (with their repetitions); its
    mean is a bootstrap mean. The interval holds the ``(1 - confidence) /
    2`` and ``(1 + confidence) / 2`` quantiles of the bootstrap means
    (:func:`numpy.quantile`, linear interpolation).

    What the interval covers: the variation of the mean difference over
    pretraining seeds and over the splits of the labelled cohort, both
    treated as random samples. What it does not cover: the repeats split
    the **same** subjects again and again, so their training and test sets
    overlap and their scores are positively correlated; resampling them as
    if they were independent understates the variance of a new cohort (the
    interval is optimistic for that question). Nor does it cover the choice
    of the unlabelled pretraining set, nor several comparisons at once (no
    correction for multiplicity).

    Measured coverage. Tables of differences were simulated with a known
    mean: a normal seed effect, a normal split effect and normal noise for
    each (seed, split), 2000 tables per design, 1000 bootstrap samples
    each. The share of 95 % intervals that held the true mean:

    =================  ============  ===========  ============  ============
    seeds x splits     seed effect   three equal  split effect  noise
                       dominates     sds          dominates     dominates
    =================  ============  ===========  ============  ============
    3 x 10             77 %          87 %         91 %          98 %
    8 x 10             89 %          92 %         90 %          99 %
    20 x 20            94 %          95 %         93 %          99 %
    1 x 10             21 %          52 %         77 %          86 %
    =================  ============  ===========  ============  ============

    ("dominates": its sd is three times each of the others'; for 1 x 10 the
    table still has a seed effect, which a single seed cannot show.) With
    few seeds or splits the interval is too narrow: a bootstrap over ``n``
    values sees ``n`` levels at most and shrinks their variance by ``(n -
    1) / n``. When the seed x split noise dominates, resampling both axes
    counts it more than once and the interval is too wide. Without a seed
    effect, 3 seeds x 10 splits covered 96 % and 1 seed x 20 splits 93 %.
    Three seeds therefore give a rough interval; use more seeds when the
    seed-to-seed spread (``differences``) is large.

    Examples
    --------
    >>> rows = [
    ...     {"method": m, "protocol": "linear_probe", "n_labels": 100,
    ...      "repeat": r, "seed": s, "score": base + 0.01 * r + 0.02 * s}
    ...     for m, base in (("y-Aware", 0.70), ("SimCLR", 0.60))
    ...     for s in range(3) for r in range(5)]
    >>> (row,) = paired_differences(rows, "SimCLR", random_state=0)
    >>> row["method"], row["reference"], row["n_seeds"], row["n_splits"]
    ('y-Aware', 'SimCLR', 3, 5)
    >>> round(row["mean_difference"], 3), round(row["ci_low"], 3)
    (0.1, 0.1)
    >>> row["p_above"]
    1.0
    """
    rows = _records(results, need=("method", "protocol", "n_labels", "repeat", "score"))
    if (
        not isinstance(confidence, numbers.Real)
        or isinstance(confidence, bool)
        or not 0.0 < confidence < 1.0
    ):
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}.")
    if (
        not isinstance(n_bootstrap, numbers.Integral)
        or isinstance(n_bootstrap, bool)
        or n_bootstrap < 100
    ):
        raise ValueError(
            f"n_bootstrap must be an int of at least 100; got {n_bootstrap!r}."
        )
    new_rng = _rng_factory(random_state)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    if reference not in methods:
        raise ValueError(
            f"reference={reference!r} is not a method of results; the methods "
            f"are {methods}."
        )
    scorings = list(dict.fromkeys(row["scoring"] for row in rows if "scoring" in row))
    if len(scorings) > 1:
        raise ValueError(
            f"results mix scorings {scorings}: compare one scoring at a time."
        )
    cells = {}
    for i, row in enumerate(rows):
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, numbers.Real):
            raise ValueError(f"results row {i} has a non-numeric score {score!r}.")
        if not math.isfinite(score):
            raise ValueError(
                f"results row {i} ({row['method']!r}, {row['protocol']!r}, "
                f"n_labels={row['n_labels']}, repeat {row['repeat']!r}) has a "
                f"score of {score}: paired differences need finite scores."
            )
        key = (row["method"], row["protocol"], _plain(row["n_labels"]))
        cell = (_plain(row["repeat"]), _clean_seed(row.get("seed")))
        table = cells.setdefault(key, {})
        if cell in table:
            raise ValueError(
                f"results hold two scores for method {key[0]!r}, protocol "
                f"{key[1]!r}, n_labels={key[2]}, repeat {cell[0]!r}, seed "
                f"{cell[1]!r}."
            )
        table[cell] = float(score)
    protocols = list(dict.fromkeys(p for _, p, _ in cells))
    alpha = 1.0 - float(confidence)
    out, left_out = [], {}
    for method in methods:
        if method == reference:
            continue
        for protocol in protocols:
            counts = _sorted(k for m, p, k in cells if (m, p) == (method, protocol))
            for k in counts:
                if (reference, protocol, k) not in cells:
                    continue
                where = f"{method!r} vs {reference!r}, {protocol}, n_labels={k}"
                seeds, splits, D, dropped = _pair(
                    cells[method, protocol, k],
                    cells[reference, protocol, k],
                    method,
                    reference,
                    where,
                )
                if dropped:
                    left_out.setdefault(method, set()).update(dropped)
                boot = _crossed_bootstrap(D, int(n_bootstrap), new_rng())
                low, high = np.quantile(boot, [alpha / 2, 1.0 - alpha / 2])
                out.append(
                    {
                        "method": method,
                        "reference": reference,
                        "protocol": protocol,
                        "n_labels": k,
                        "mean_difference": float(D.mean()),
                        "ci_low": float(low),
                        "ci_high": float(high),
                        "n_seeds": D.shape[0],
                        "n_splits": D.shape[1],
                        "n_pairs": D.size,
                        "p_above": float(np.mean(boot > 0)),
                        "seeds": list(seeds),
                        "splits": list(splits),
                        "differences": D.tolist(),
                    }
                )
    for method, dropped in left_out.items():
        warnings.warn(
            f"paired_differences: the seed(s) {_sorted(dropped)} of {method!r} "
            f"or {reference!r} are not seeds of the other one and are left out "
            "of their comparison (methods with seeds are paired by seed value). "
            "Fit both with the same seeds (pretrain_seeds), or give a "
            "deterministic transformer no seed (random_state=None) to pair it "
            "with every seed.",
            UserWarning,
            stacklevel=2,
        )
    if not out:
        raise ValueError(
            f"No method shares a protocol and a number of labels with "
            f"reference={reference!r}: nothing to compare."
        )
    if as_frame:
        return _as_frame(out, _PAIRED_COLUMNS)
    return out
