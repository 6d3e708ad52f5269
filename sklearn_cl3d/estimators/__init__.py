"""The pretrainers: thin skorch glue over the shared base."""

from ..persistence import register_serializable
from ._base import (
    BaseContrastivePretrainer,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)
from ._device import cpu_bf16_is_faster
from ._drasclr import DrasCLREncoder
from ._finetune import FineTunedClassifier, FineTunedRegressor
from ._globallocal import GlobalLocalNet, GlobalLocalPretrainer
from ._segmenter import ContrastiveSegmenter
from ._wsp import WSPPretrainer
from ._yaware import SimCLRPretrainer, YAwarePretrainer

# the names a saved encoder's config may use for these classes
register_serializable(
    {
        "sklearn_cl3d:YAwarePretrainer": YAwarePretrainer,
        "sklearn_cl3d:SimCLRPretrainer": SimCLRPretrainer,
        "sklearn_cl3d:GlobalLocalPretrainer": GlobalLocalPretrainer,
        "sklearn_cl3d:DrasCLREncoder": DrasCLREncoder,
        "sklearn_cl3d:WSPPretrainer": WSPPretrainer,
        "sklearn_cl3d.estimators:BaseContrastivePretrainer": BaseContrastivePretrainer,
    },
    kind="pretrainer",
)
register_serializable(
    {"sklearn_cl3d.estimators._globallocal:GlobalLocalNet": GlobalLocalNet},
    kind="network",
)

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
    "cpu_bf16_is_faster",
    "resolve_device",
    "resolve_memory_format",
    "resolve_precision",
]
