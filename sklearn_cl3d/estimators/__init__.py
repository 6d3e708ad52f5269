"""The pretrainers: thin skorch glue over the shared base."""

from ._base import (
    BaseContrastivePretrainer,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)
from ._wsp import WSPPretrainer
from ._yaware import SimCLRPretrainer, YAwarePretrainer

__all__ = [
    "BaseContrastivePretrainer",
    "SimCLRPretrainer",
    "WSPPretrainer",
    "YAwarePretrainer",
    "resolve_device",
    "resolve_memory_format",
    "resolve_precision",
]
