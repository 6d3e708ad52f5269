"""How many labels does a pretrained encoder save? Label-efficiency curves.

:func:`label_efficiency` scores fitted pretrainers (one or several
pretraining seeds each), fitted transformers and a from-scratch baseline on
growing numbers of labelled subjects, with a linear probe on frozen features
and with fine-tuning, on repeated stratified shuffle splits;
:func:`label_efficiency_splits` exposes those splits and
:func:`pretrain_seeds` fits one method with several seeds.
:func:`summarize` gives the mean and standard deviation of each curve point,
:func:`paired_differences` the differences to a reference method, paired by
split and seed, with bootstrap confidence intervals, and
:func:`plot_label_efficiency` draws the mean score against the number of
labels. :func:`benchmark` (``sklearn-cl3d benchmark``) runs pretraining
methods and baselines by number of labels and pretraining seed on a table or
a BIDS folder, writes tidy results, paired differences and a plot, and
resumes an interrupted or extended run.
"""

from ._benchmark import BENCHMARK_METHODS, benchmark
from ._label_efficiency import PROTOCOLS, label_efficiency
from ._methods import pretrain_seeds
from ._plot import plot_label_efficiency
from ._splits import label_efficiency_splits
from ._statistics import _summary as _summary, paired_differences, summarize

__all__ = [
    "BENCHMARK_METHODS",
    "PROTOCOLS",
    "benchmark",
    "label_efficiency",
    "label_efficiency_splits",
    "paired_differences",
    "plot_label_efficiency",
    "pretrain_seeds",
    "summarize",
]
