"""Manifests: the size and SHA-256 of each file of a saved folder, and
bounded, checked reads of small files (manifests, configs).

A reader verifies each file against the manifest before using it, so a
damaged, truncated, mixed or edited set of files is refused with an error
that names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path

from ._errors import PersistenceError

__all__ = [
    "MANIFEST_NAME",
    "make_manifest",
    "read_bounded",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
    "verify_file",
]

#: Name of the manifest of a saved folder.
MANIFEST_NAME = "manifest.json"

_MANIFEST_FORMAT = "sklearn_cl3d.manifest"
_MANIFEST_VERSION = 1
#: A manifest is small: a longer file is refused unread.
MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 22
_HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256_bytes(data):
    """Hex SHA-256 of ``data``.

    Examples
    --------
    >>> sha256_bytes(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    """Hex SHA-256 and size of a file, read in chunks.

    Returns
    -------
    digest : str
    size : int
    """
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# ----------------------------------------------------------- manifests


def make_manifest(files, **extra):
    """The text of a manifest listing ``files`` (name -> bytes or (sha, size)).

    Parameters
    ----------
    files : dict
        File name -> its content (bytes) or ``(sha256_hex, size)``.
    **extra
        JSON fields stored next to the file list (e.g. ``epoch``).

    Returns
    -------
    str

    Examples
    --------
    >>> import json
    >>> m = json.loads(make_manifest({"a.txt": b"hi"}, epoch=3))
    >>> m["files"]["a.txt"]["size"], m["epoch"]
    (2, 3)
    """
    entries = {}
    for name, content in files.items():
        if isinstance(content, bytes | bytearray | memoryview):
            entries[name] = {"sha256": sha256_bytes(content), "size": len(content)}
        else:
            sha, size = content
            entries[name] = {"sha256": sha, "size": int(size)}
    manifest = {
        "format": _MANIFEST_FORMAT,
        "format_version": _MANIFEST_VERSION,
        "created": time.time(),
        **extra,
        "files": entries,
    }
    return json.dumps(manifest, indent=2, sort_keys=True)


def _safe_name(name):
    """A plain file name: no folder part, no hidden or special name."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and os.path.basename(name) == name
    )


def read_manifest(file, *, extra_keys=()):
    """Read and check a manifest; return it as a dict.

    Parameters
    ----------
    file : path-like
        The manifest.
    extra_keys : iterable of str, default=()
        Keys allowed besides the standard ones.

    Returns
    -------
    dict
        With ``files``: name -> ``{"sha256": str, "size": int}``.

    Raises
    ------
    PersistenceError
        If the file is missing, too large, not UTF-8 JSON, or not a manifest
        of this library (the message names the file and what is wrong).
    """
    file = Path(file)
    raw = read_bounded(file, MAX_MANIFEST_BYTES, what="manifest")
    manifest = _parse_json(raw, file)
    where = f"{str(file)!r}"
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        raise PersistenceError(f"{where} is not an sklearn_cl3d manifest.")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PersistenceError(
            f"{where}: 'format_version' must be an integer; got {version!r:.40}."
        )
    if version > _MANIFEST_VERSION or version < 1:
        raise PersistenceError(
            f"{where} has manifest version {version}; this sklearn_cl3d reads "
            f"version 1 to {_MANIFEST_VERSION}."
        )
    allowed = {"format", "format_version", "created", "files", *extra_keys}
    unknown = sorted(set(manifest) - allowed)
    if unknown:
        raise PersistenceError(f"{where}: unexpected keys {unknown[:5]}.")
    created = manifest.get("created", 0.0)
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise PersistenceError(f"{where}: 'created' must be a number.")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise PersistenceError(f"{where}: 'files' must be a non-empty object.")
    for name, entry in files.items():
        if not _safe_name(name):
            raise PersistenceError(
                f"{where}: {name!r:.80} is not a plain file name (no folders, no "
                "leading dot)."
            )
        if (
            not isinstance(entry, dict)
            or set(entry) != {"sha256", "size"}
            or not isinstance(entry["sha256"], str)
            or not _HEX64.fullmatch(entry["sha256"])
            or isinstance(entry["size"], bool)
            or not isinstance(entry["size"], int)
            or entry["size"] < 0
        ):
            raise PersistenceError(
                f"{where}: the entry of {name!r} must be "
                '{"sha256": <64 hex digits>, "size": <int >= 0>}.'
            )
    return manifest


def _parse_json(raw, file):
    """JSON from bytes, with errors that name ``file``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PersistenceError(
            f"{str(file)!r} is not UTF-8 text (byte {exc.start}): damaged or "
            "not written by sklearn_cl3d."
        ) from None

    def no_constants(name):
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise PersistenceError(f"{str(file)!r} is nested too deeply.") from None
    except ValueError as exc:
        raise PersistenceError(
            f"{str(file)!r} is not valid JSON ({exc}): damaged or not written by "
            "sklearn_cl3d."
        ) from None


def verify_file(folder, name, manifest, manifest_file, *, data=None):
    """Check a file against its manifest entry; return its bytes if read.

    Parameters
    ----------
    folder : path-like
        Folder of the file.
    name : str
        File name (a key of ``manifest["files"]``).
    manifest : dict
        From :func:`read_manifest`.
    manifest_file : path-like
        The manifest (named in messages).
    data : bytes, default=None
        Content already read; otherwise the file is read here.

    Returns
    -------
    bytes
        The file's content.

    Raises
    ------
    PersistenceError
        If the manifest does not list the file, or the file is missing, or
        its size or SHA-256 differs.
    """
    file = Path(folder) / name
    entry = manifest["files"].get(name)
    if entry is None:
        raise PersistenceError(f"{str(manifest_file)!r} does not list {name!r}.")
    if data is None:
        data = read_bounded(file, entry["size"])
    if len(data) != entry["size"]:
        raise PersistenceError(
            f"{str(file)!r} has {len(data)} bytes but {str(manifest_file)!r} "
            f"records {entry['size']}: the file is truncated, damaged or was "
            "changed after saving."
        )
    if sha256_bytes(data) != entry["sha256"]:
        raise PersistenceError(
            f"the SHA-256 of {str(file)!r} differs from the one in "
            f"{str(manifest_file)!r}: the file is damaged or was changed after "
            "saving."
        )
    return data


def read_bounded(file, limit, *, what="file"):
    """Read a regular file of at most ``limit`` bytes (a longer one is
    refused unread; a pipe or device is refused without opening it).

    Raises
    ------
    PersistenceError
        If the file is missing, not a regular file, or longer than
        ``limit`` bytes.
    """
    file = Path(file)
    try:
        info = os.stat(file)
        if not stat.S_ISREG(info.st_mode):
            raise PersistenceError(f"{str(file)!r} is not a regular file.")
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        with os.fdopen(os.open(file, flags), "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise PersistenceError(f"{str(file)!r} is not a regular file.")
            if info.st_size > limit:
                raise PersistenceError(
                    f"{str(file)!r} has {info.st_size} bytes, more than the "
                    f"{limit} expected for this {what}."
                )
            return fh.read(limit + 1)
    except FileNotFoundError:
        raise PersistenceError(f"{str(file)!r} is missing.") from None
    except OSError as exc:
        raise PersistenceError(f"cannot read {str(file)!r}: {exc}") from None
