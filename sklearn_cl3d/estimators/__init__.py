"""The pretrainers: thin skorch glue over the shared base."""

from ._base import BaseContrastivePretrainer, resolve_device
from ._yaware import SimCLRPretrainer, YAwarePretrainer

__all__ = [
    "BaseContrastivePretrainer",
    "SimCLRPretrainer",
    "YAwarePretrainer",
    "resolve_device",
]
