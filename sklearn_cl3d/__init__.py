"""Contrastive self-supervised pretraining for 3D medical images, as
scikit-learn estimators trained with skorch on PyTorch."""

from .estimators import SimCLRPretrainer, WSPPretrainer, YAwarePretrainer

__version__ = "0.1.0.dev0"

__all__ = ["SimCLRPretrainer", "WSPPretrainer", "YAwarePretrainer", "__version__"]
