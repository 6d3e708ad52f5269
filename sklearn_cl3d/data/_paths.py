"""A folder or a glob pattern where X takes paths: expanded to sorted files.

A folder gives the image files directly inside it (``.nii``, ``.nii.gz``,
``.nrrd``, ``.npy``) and its sub-folders that hold a DICOM series, sorted by
name; a glob pattern gives its matches of the same kinds, sorted. Hidden
entries (names starting with ``.``, such as macOS ``._scan.nii.gz`` files)
are skipped. Nothing is read beyond file names and, to recognise a DICOM
series, the first bytes of a few files.
"""

from __future__ import annotations

import glob
import os

__all__ = ["expand_paths", "is_dicom_series_dir", "names_a_collection"]

_IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".npy")
# how many files of a folder are opened, at most, to recognise DICOM files
_DICOM_PROBES = 16


def _is_image_file(path):
    return os.path.basename(path).lower().endswith(_IMAGE_EXTENSIONS) and (
        os.path.isfile(path)
    )


def _has_dicom_magic(path):
    """Whether a file has the DICOM preamble: 128 bytes, then ``DICM``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_series_dir(path):
    """Whether ``path`` is a folder whose files look like DICOM files.

    A folder qualifies when one of its (non-hidden) files is named ``*.dcm``
    or, among the first 16 files by name, one starts with the DICOM preamble.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    bool

    Examples
    --------
    >>> import tempfile
    >>> is_dicom_series_dir(tempfile.mkdtemp())
    False
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    try:
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    except OSError:
        return False
    files = [n for n in names if os.path.isfile(os.path.join(path, n))]
    if any(n.lower().endswith(".dcm") for n in files):
        return True
    return any(_has_dicom_magic(os.path.join(path, n)) for n in files[:_DICOM_PROBES])


def _volume_entries(candidates):
    """Image files and DICOM series folders among ``candidates`` (sorted)."""
    out = []
    for path in sorted(candidates):
        if os.path.basename(path).startswith("."):
            continue
        if _is_image_file(path) or is_dicom_series_dir(path):
            out.append(path)
    return out


def _kinds():
    return f"{', '.join(_IMAGE_EXTENSIONS)} files or sub-folders holding a DICOM series"


def _expand_folder(folder):
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise ValueError(
            f"X is a folder ({folder!r}) that cannot be listed: {exc.strerror or exc}."
        ) from exc
    found = _volume_entries(os.path.join(folder, n) for n in names)
    if found:
        return found
    if is_dicom_series_dir(folder):
        raise ValueError(
            f"X is a folder ({folder!r}) of DICOM files: that is one volume. "
            f"Pass [{folder!r}] for one DICOM series, or a folder whose "
            "sub-folders are DICOM series."
        )
    raise ValueError(
        f"X is a folder ({folder!r}) with no image in it: expected {_kinds()} "
        f"directly inside it ({len(names)} other entries found)."
    )


def _expand_pattern(pattern):
    matches = glob.glob(pattern, recursive=True)
    found = _volume_entries(matches)
    if found:
        return found
    if not matches:
        raise ValueError(f"X is a glob pattern ({pattern!r}) that matches nothing.")
    raise ValueError(
        f"X is a glob pattern ({pattern!r}) whose {len(matches)} match(es) are "
        f"not images: expected {_kinds()} (e.g. {sorted(matches)[0]!r} is not)."
    )


def _is_pattern(path):
    return any(c in path for c in "*?[")


def names_a_collection(X):
    """Whether X is a folder or a glob pattern (what :func:`expand_paths` expands).

    Parameters
    ----------
    X : object

    Returns
    -------
    bool

    Examples
    --------
    >>> names_a_collection("scans/*.nii.gz"), names_a_collection("scan.nii.gz")
    (True, False)
    """
    if not isinstance(X, str | os.PathLike):
        return False
    path = os.fspath(X)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.isdir(path) or _is_pattern(path)


def expand_paths(X):
    """Expand a folder or a glob pattern into the sorted list of its images.

    Any other X (arrays, lists, datasets) is returned unchanged, so this can
    be called first wherever X may take paths.

    Parameters
    ----------
    X : object
        A folder (``str`` or path-like): the image files directly inside it
        (``.nii``, ``.nii.gz``, ``.nrrd``, ``.npy``) and its sub-folders
        holding a DICOM series (one volume each), sorted by name. A ``str``
        with glob characters (``*``, ``?``, ``[``; ``**`` matches folders
        recursively): its matches of the same kinds, sorted. Hidden entries
        (names starting with ``.``) are skipped.

    Returns
    -------
    list of str or object
        The sorted paths, or X itself when it is neither a folder nor a
        pattern. Give targets or metadata in the same (sorted) order, or read
        them with :func:`read_table` / :func:`read_bids`, which return paths
        and metadata row by row.

    Raises
    ------
    ValueError
        If the folder or the pattern gives no image (the message names it and
        says what was found instead), or X is a single file path (pass a list
        of paths).

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel as nib, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    >>> for name in ("b.nii.gz", "a.nii.gz"):
    ...     nib.save(img, os.path.join(folder, name))
    >>> [os.path.basename(p) for p in expand_paths(folder)]
    ['a.nii.gz', 'b.nii.gz']
    >>> [os.path.basename(p) for p in expand_paths(os.path.join(folder, "b*"))]
    ['b.nii.gz']
    >>> expand_paths([1, 2])
    [1, 2]
    """
    if isinstance(X, bytes):
        X = os.fsdecode(X)
    if not isinstance(X, str | os.PathLike):
        return X
    path = os.fspath(X)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.isdir(path):
        return _expand_folder(path)
    if _is_pattern(path):
        return _expand_pattern(path)
    if os.path.exists(path):
        raise ValueError(
            f"X is a single path ({path!r}), not a collection of samples: pass a "
            f"list of paths, e.g. [{path!r}, ...], a folder or a glob pattern."
        )
    raise ValueError(
        f"X is a single path ({path!r}), not a collection of samples, and no "
        "such file or folder exists: pass a list of paths, a folder or a glob "
        "pattern (e.g. 'scans/*.nii.gz')."
    )
