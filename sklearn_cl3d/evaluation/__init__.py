"""How many labels does a pretrained encoder save? Label-efficiency curves.

:func:`label_efficiency` scores fitted pretrainers (and a from-scratch
baseline) on growing numbers of labelled subjects, with a linear probe on
frozen features and with fine-tuning, on repeated stratified splits;
:func:`label_efficiency_splits` exposes those splits and
:func:`plot_label_efficiency` draws the mean score against the number of
labels.
"""

from ._label_efficiency import PROTOCOLS, label_efficiency, label_efficiency_splits
from ._plot import plot_label_efficiency
from ._statistics import _summary as _summary

__all__ = [
    "PROTOCOLS",
    "label_efficiency",
    "label_efficiency_splits",
    "plot_label_efficiency",
]
