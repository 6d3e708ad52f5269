"""BIDS JSON sidecars of an image, merged by the inheritance principle.

A sidecar ``<entities>_<suffix>.json`` applies to an image when its suffix is
the image's and its entities are a subset of the image's. Applicable
sidecars are looked for in the dataset's root, the subject's folder, the
session's folder and the image's own folder; keys of a deeper file
override those of a shallower one. Within one folder, several applicable
sidecars are applied from the fewest entities to the most, each one's
entities a strict superset of the one before (e.g. ``T1w.json`` then
``acq-fast_T1w.json``); two that cannot be so ordered are refused, naming
both, as BIDS leaves their order undefined.
"""

from __future__ import annotations

import json
import os
import re

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")
#: Largest sidecar read, in bytes: metadata, not data.
_MAX_BYTES = 16 * 2**20


def _same(have, want):
    if have is None:
        return False
    if have.isdigit() and want.isdigit():
        return int(have) == int(want)  # run-1 and run-01 are one index
    return have == want


def _parse(name, suffix):
    """Entities of ``name`` if it is a ``[<entities>_]<suffix>.json``."""
    if not name.endswith(".json") or name.startswith("."):
        return None
    parts = name[: -len(".json")].split("_")
    if parts[-1] != suffix:
        return None
    entities = {}
    for part in parts[:-1]:
        match = _ENTITY.match(part)
        if match is None:
            return None
        entities[match.group(1)] = match.group(2)
    return entities


class SidecarReader:
    """The merged sidecar metadata of images of one suffix, with caches."""

    def __init__(self, root, suffix):
        self.root = root
        self.suffix = suffix
        self._listed = {}
        self._loaded = {}

    def _candidates(self, folder):
        if folder not in self._listed:
            found = []
            if os.path.isdir(folder):
                for name in sorted(os.listdir(folder)):
                    entities = _parse(name, self.suffix)
                    path = os.path.join(folder, name)
                    if entities is not None and os.path.isfile(path):
                        found.append((entities, path))
            self._listed[folder] = found
        return self._listed[folder]

    def _load(self, path):
        if path not in self._loaded:
            if os.path.getsize(path) > _MAX_BYTES:
                raise ValueError(
                    f"sidecar {path} is larger than {_MAX_BYTES // 2**20} MiB: not "
                    "BIDS metadata (read_bids(..., sidecars=False) skips sidecars)."
                )
            try:
                with open(path, encoding="utf-8") as f:
                    value = json.load(f)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(
                    f"sidecar {path} is not valid JSON ({exc}); fix it, or "
                    "read_bids(..., sidecars=False) to skip sidecars."
                ) from None
            if not isinstance(value, dict):
                raise ValueError(
                    f"sidecar {path} holds a JSON {type(value).__name__}, not an "
                    "object of metadata fields."
                )
            self._loaded[path] = value
        return self._loaded[path]

    def metadata(self, image_folder, subject, session, entities):
        """Merged fields of the sidecars that apply to one image."""
        folders = [self.root, os.path.join(self.root, subject)]
        if session is not None:
            folders.append(os.path.join(self.root, subject, f"ses-{session}"))
        if os.path.normpath(image_folder) not in map(os.path.normpath, folders):
            folders.append(image_folder)
        merged = {}
        for folder in folders:
            applicable = sorted(
                (
                    (found, path)
                    for found, path in self._candidates(folder)
                    if all(_same(entities.get(k), v) for k, v in found.items())
                ),
                key=lambda item: len(item[0]),
            )
            for (before, a), (after, b) in zip(applicable, applicable[1:]):
                if not set(before) < set(after):
                    raise ValueError(
                        f"sidecars {os.path.basename(a)} and {os.path.basename(b)} "
                        f"in {folder} both apply to one image and neither is more "
                        "specific (its entities a superset of the other's): BIDS "
                        "leaves their order undefined. Merge them, or "
                        "read_bids(..., sidecars=False) to skip sidecars."
                    )
            for _, path in applicable:
                merged.update(self._load(path))
        return merged
