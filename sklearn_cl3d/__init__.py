"""Contrastive self-supervised pretraining for 3D medical images, as
scikit-learn estimators trained with skorch on PyTorch."""

from ._persistence import load_pretrained, load_state_dict, save_pretrained
from .estimators import (
    ContrastiveSegmenter,
    DrasCLREncoder,
    FineTunedClassifier,
    FineTunedRegressor,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
)
from .export import export

__version__ = "0.1.0.dev0"

__all__ = [
    "ContrastiveSegmenter",
    "DrasCLREncoder",
    "FineTunedClassifier",
    "FineTunedRegressor",
    "GlobalLocalPretrainer",
    "SimCLRPretrainer",
    "WSPPretrainer",
    "YAwarePretrainer",
    "__version__",
    "export",
    "load_pretrained",
    "load_state_dict",
    "save_pretrained",
]
