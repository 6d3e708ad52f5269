"""The pretrainers: thin skorch glue over the shared base."""

from ._base import (
    BaseContrastivePretrainer,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)
from ._drasclr import DrasCLREncoder
from ._finetune import FineTunedClassifier, FineTunedRegressor
from ._globallocal import GlobalLocalPretrainer
from ._segmenter import ContrastiveSegmenter
from ._wsp import WSPPretrainer
from ._yaware import SimCLRPretrainer, YAwarePretrainer

__all__ = [
    "BaseContrastivePretrainer",
    "ContrastiveSegmenter",
    "DrasCLREncoder",
    "FineTunedClassifier",
    "FineTunedRegressor",
    "GlobalLocalPretrainer",
    "SimCLRPretrainer",
    "WSPPretrainer",
    "YAwarePretrainer",
    "resolve_device",
    "resolve_memory_format",
    "resolve_precision",
]
