"""Saved encoders and crash-safe files: data only, checked when read.

:func:`save_pretrained` writes a fitted pretrainer as a folder of data
(``weights.pt``, ``config.json`` and a ``manifest.json`` of checksums),
swapped in atomically; :func:`load_pretrained` rebuilds it without importing
or unpickling anything named in the files: classes come from an allow-list
or from the caller's ``custom_objects``, every value is checked, and the
weights are compared with the network the config describes before any
memory is allocated. :func:`load_state_dict` loads plain PyTorch weights
(released checkpoints) into an estimator's network.

This package depends on no estimator: the estimators register their classes
with :func:`register_serializable` and call these functions.
"""

from ._errors import PersistenceError
from ._files import atomic_write, commit_file, discard_file, stage_file
from ._manifest import MANIFEST_NAME
from ._pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    initialize_for_inference,
    load_pretrained,
    save_pretrained,
)
from ._registry import register_serializable
from ._state_dict import KEY_MAPS, load_state_dict, yaware_key_map

__all__ = [
    "CONFIG_NAME",
    "KEY_MAPS",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "PersistenceError",
    "atomic_write",
    "commit_file",
    "discard_file",
    "initialize_for_inference",
    "load_pretrained",
    "load_state_dict",
    "register_serializable",
    "save_pretrained",
    "stage_file",
    "yaware_key_map",
]
