"""Former location of :mod:`sklearn_cl3d.persistence` (kept so that old
imports keep working)."""

from .persistence import (
    CONFIG_NAME,
    KEY_MAPS,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    PersistenceError,
    atomic_write,
    commit_file,
    discard_file,
    initialize_for_inference,
    load_pretrained,
    load_state_dict,
    register_serializable,
    save_pretrained,
    stage_file,
    yaware_key_map,
)

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
