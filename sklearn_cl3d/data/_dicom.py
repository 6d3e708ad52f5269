"""DICOM series (one folder, one volume) through the optional pydicom extra.

A DICOM series is a folder of single-frame slice files sharing one
``SeriesInstanceUID``. It is read as one volume: slices sorted along the
slice normal (from ``ImagePositionPatient`` and ``ImageOrientationPatient``),
``RescaleSlope``/``RescaleIntercept`` applied (Hounsfield units for CT), and
the geometry turned into a 4x4 voxel-to-world affine in RAS+ millimetres
(DICOM's patient coordinates are LPS, so the first two world axes are
flipped), like the ones nibabel gives for NIfTI.

Voxel axes are ``(i, j, k)``: ``i`` runs along a row of the slice (the
column index), ``j`` down the columns (the row index), ``k`` across slices.

pydicom (``pip install 'sklearn-cl3d[dicom]'``) parses the files; it is only
imported when a series is read. Headers are read first without pixel data,
so the size of the volume is checked against the same cap as other formats
(:data:`~sklearn_cl3d.data._nrrd.MAX_VOLUME_BYTES`) before any voxel is
read. Compressed transfer syntaxes need pydicom's decoder plug-ins (for
example ``pylibjpeg``); without them the error says so and names the file.

A DICOMDIR (the index of a DICOM file-set, e.g. on a CD or from a PACS
export) lists patients, studies, series and their files, which may sit in
folders shared by several series: :func:`dicomdir_series` reads the index
(through pydicom's ``FileSet``) and gives each series' files, which
:func:`read_dicom_series` reads as one volume.
"""

from __future__ import annotations

import os

import numpy as np

from ._nrrd import MAX_VOLUME_BYTES

__all__ = ["dicomdir_series", "read_dicom_series", "read_dicom_series_header"]

#: At most this many files are read from one series folder.
MAX_SERIES_FILES = 8192
# relative tolerance on slice spacing and orientation agreement
_TOLERANCE = 1e-3


def _fail(folder, reason):
    return ValueError(f"could not read {folder}: {reason}")


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading a DICOM series needs pydicom, an optional dependency: "
            "pip install 'sklearn-cl3d[dicom]' (or pip install pydicom)."
        ) from exc
    return pydicom


def _is_dicomdir(path):
    return os.path.basename(os.fspath(path)).upper() == "DICOMDIR"


def _dicomdir_hint(path):
    return (
        f"{path} is a DICOMDIR, the index of a DICOM file-set: list its series "
        "with sklearn_cl3d.data.dicomdir_series(path) and read one with "
        "read_dicom_series(series['files'])"
    )


def _listed_files(files):
    """A series given as a list of files: checked, in the given order."""
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("the list of DICOM files is empty.")
    if len(files) > MAX_SERIES_FILES:
        raise ValueError(
            f"the list holds {len(files)} files, more than the "
            f"{MAX_SERIES_FILES} slices a series may have."
        )
    for f in files:
        if _is_dicomdir(f):
            raise _fail(f, _dicomdir_hint(f))
        if not os.path.isfile(f):
            raise FileNotFoundError(f"no such DICOM file: {f}")
    return files


def _files(folder):
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise _fail(folder, exc.strerror or str(exc)) from exc
    files = [
        os.path.join(folder, n)
        for n in names
        if not n.startswith(".")
        and n.upper() != "DICOMDIR"
        and os.path.isfile(os.path.join(folder, n))
    ]
    if not files:
        if os.path.isfile(os.path.join(folder, "DICOMDIR")):
            raise _fail(folder, _dicomdir_hint(os.path.join(folder, "DICOMDIR")))
        raise _fail(folder, "the folder holds no file (expected one DICOM series)")
    if len(files) > MAX_SERIES_FILES:
        raise _fail(
            folder,
            f"the folder holds {len(files)} files, more than the "
            f"{MAX_SERIES_FILES} slices a series may have",
        )
    return files


def _number(ds, name, path, *, count=None, default=None):
    value = ds.get(name)
    if value is None or value == "":
        if default is not None:
            return default
        raise _fail(path, f"the DICOM attribute {name} is missing")
    try:
        out = np.asarray(
            [float(v) for v in value] if count else float(value), dtype=float
        )
    except (TypeError, ValueError):
        raise _fail(path, f"the DICOM attribute {name} is malformed") from None
    if count and out.shape != (count,) or not np.isfinite(out).all():
        raise _fail(path, f"the DICOM attribute {name} is malformed: {value!r}")
    return out


def _slice_header(pydicom, path):
    """Header of one file (no pixel data), or None if it is not DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        return None
    except MemoryError as exc:
        raise MemoryError(f"not enough memory to read {path}.") from exc
    except Exception as exc:  # damaged file: pydicom raises many kinds
        raise _fail(path, str(exc).strip() or type(exc).__name__) from exc
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "", 1, "1"):
        raise _fail(
            path,
            f"multi-frame DICOM files ({frames} frames) are not supported; "
            "convert the series to NIfTI (e.g. with dcm2niix)",
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise _fail(path, "colour DICOM images are not supported")
    bits = int(_number(ds, "BitsAllocated", path, default=16))
    return {
        "path": path,
        "series": str(ds.get("SeriesInstanceUID", "")),
        "rows": int(_number(ds, "Rows", path)),
        "columns": int(_number(ds, "Columns", path)),
        "bits": bits,
        "orientation": _number(ds, "ImageOrientationPatient", path, count=6),
        "position": _number(ds, "ImagePositionPatient", path, count=3),
        "spacing": _number(ds, "PixelSpacing", path, count=2),
        "thickness": float(_number(ds, "SliceThickness", path, default=1.0)),
    }


def _geometry(folder, headers):
    """Sorted headers and the RAS affine of the series."""
    first = headers[0]
    for key in ("rows", "columns"):
        values = {h[key] for h in headers}
        if len(values) > 1:
            raise _fail(folder, f"the slices have different {key}: {sorted(values)}")
    for key in ("orientation", "spacing"):
        for h in headers[1:]:
            if not np.allclose(h[key], first[key], rtol=_TOLERANCE, atol=1e-4):
                raise _fail(
                    folder,
                    f"{os.path.basename(h['path'])} and "
                    f"{os.path.basename(first['path'])} have different "
                    f"{'ImageOrientationPatient' if key == 'orientation' else key}",
                )
    along_row, along_column = first["orientation"][:3], first["orientation"][3:]
    normal = np.cross(along_row, along_column)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise _fail(folder, "ImageOrientationPatient is not two unit vectors at 90°")
    headers = sorted(headers, key=lambda h: float(h["position"] @ normal))
    positions = np.array([h["position"] for h in headers])
    if len(headers) > 1:
        steps = np.diff(positions, axis=0)
        gaps = steps @ normal
        if np.min(gaps) <= 1e-4:
            k = int(np.argmin(gaps))
            raise _fail(
                folder,
                f"{os.path.basename(headers[k]['path'])} and "
                f"{os.path.basename(headers[k + 1]['path'])} are at the same "
                "position (several echoes, times or series in one folder?)",
            )
        step = (positions[-1] - positions[0]) / (len(headers) - 1)
        if not np.allclose(steps, step, rtol=1e-2, atol=1e-2):
            raise _fail(
                folder,
                "the slice spacing is not uniform (from "
                f"{np.min(gaps):.4g} to {np.max(gaps):.4g} mm): missing slices? "
                "A volume needs evenly spaced slices",
            )
    else:
        step = normal * first["thickness"]
    row_spacing, column_spacing = first["spacing"]
    affine = np.eye(4)
    affine[:3, 0] = along_row * column_spacing
    affine[:3, 1] = along_column * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return headers, lps_to_ras @ affine


def _scan(folder):
    pydicom = _pydicom()
    if isinstance(folder, list | tuple):
        files = _listed_files(folder)
        folder = f"the series of {len(files)} file(s) from {files[0]}"
    else:
        folder = os.fspath(folder)
        if _is_dicomdir(folder) and os.path.isfile(folder):
            raise _fail(folder, _dicomdir_hint(folder))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such folder: {folder}")
        files = _files(folder)
    headers, skipped = [], []
    for path in files:
        header = _slice_header(pydicom, path)
        if header is None:
            skipped.append(os.path.basename(path))
        else:
            headers.append(header)
    if not headers:
        reason = f"no DICOM file among its {len(skipped)} file(s) (e.g. {skipped[0]!r})"
        if isinstance(folder, str) and os.path.isfile(os.path.join(folder, "DICOMDIR")):
            reason += "; " + _dicomdir_hint(os.path.join(folder, "DICOMDIR"))
        raise _fail(folder, reason)
    series = {}
    for h in headers:
        series.setdefault(h["series"], []).append(h)
    if len(series) > 1:
        counts = ", ".join(f"{uid or '(none)'}: {len(v)}" for uid, v in series.items())
        raise _fail(
            folder,
            f"the folder holds {len(series)} DICOM series (SeriesInstanceUID: "
            f"number of files: {counts}); put each series in its own folder",
        )
    headers, affine = _geometry(folder, headers)
    shape = (headers[0]["columns"], headers[0]["rows"], len(headers))
    count = int(np.prod(shape, dtype=object))
    nbytes = count * max(4, headers[0]["bits"] // 8)
    if nbytes > MAX_VOLUME_BYTES:
        raise _fail(
            folder,
            f"the series declares shape {shape} ({nbytes} bytes as float32), "
            f"more than the {MAX_VOLUME_BYTES} bytes a volume may have",
        )
    return pydicom, headers, shape, affine


def read_dicom_series_header(folder):
    """Shape and affine of a DICOM series, from its headers only.

    Parameters
    ----------
    folder : str, path-like or list of them
        A folder holding one DICOM series, or the files of one series (e.g.
        ``series["files"]`` of :func:`dicomdir_series`).

    Returns
    -------
    shape : tuple of int
        ``(x, y, z)``: columns, rows and number of slices.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine (RAS+, mm).

    Raises
    ------
    ImportError
        If pydicom is not installed.
    ValueError
        See :func:`read_dicom_series`.

    Examples
    --------
    >>> import os, pydicom  # doctest: +SKIP
    >>> series = os.path.join(
    ...     os.path.dirname(pydicom.data.__file__), "test_files", "dicomdirtests",
    ...     "98892001", "CT5N")  # doctest: +SKIP
    >>> read_dicom_series_header(series)[0]  # doctest: +SKIP
    (16, 16, 5)
    """
    _, _, shape, affine = _scan(folder)
    return shape, affine


def read_dicom_series(folder):
    """Read a folder holding one DICOM series as one volume with its affine.

    Parameters
    ----------
    folder : str, path-like or list of them
        A folder whose files are the single-frame slices of one series
        (files that are not DICOM, hidden files and ``DICOMDIR`` are
        skipped), or the list of the files of one series, e.g.
        ``series["files"]`` of :func:`dicomdir_series` (the slices are
        sorted by position whatever the list's order). A ``DICOMDIR`` file
        itself is refused with a message pointing to
        :func:`dicomdir_series`.

    Returns
    -------
    data : ndarray of float32, shape (x, y, z)
        Voxel values after ``RescaleSlope`` and ``RescaleIntercept`` (HU for
        CT), slices sorted along the slice normal.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine in RAS+ mm (from DICOM's LPS coordinates).

    Raises
    ------
    ImportError
        If pydicom (the ``dicom`` extra) is not installed.
    FileNotFoundError
        If the folder (or a listed file) does not exist.
    ValueError
        If the folder holds no DICOM file or several series, the slices
        disagree in size or orientation, are not evenly spaced or two are at
        the same position, a file is multi-frame, colour or damaged, its
        pixel data need a decoder that is not installed, or the volume is
        larger than the cap. The message names the folder or the file.

    Examples
    --------
    >>> import os, pydicom  # doctest: +SKIP
    >>> series = os.path.join(
    ...     os.path.dirname(pydicom.data.__file__), "test_files", "dicomdirtests",
    ...     "98892001", "CT5N")  # doctest: +SKIP
    >>> data, affine = read_dicom_series(series)  # doctest: +SKIP
    >>> data.shape, affine[2, 2]  # doctest: +SKIP
    ((16, 16, 5), np.float64(2.5))
    """
    pydicom, headers, shape, affine = _scan(folder)
    try:
        data = np.empty(shape, dtype=np.float32)
    except MemoryError as exc:
        raise MemoryError(
            f"not enough memory to read {headers[0]['path']}'s series."
        ) from exc
    for k, h in enumerate(headers):
        path = h["path"]
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except MemoryError as exc:
            raise MemoryError(f"not enough memory to read {path}.") from exc
        except Exception as exc:  # missing decoder, damaged pixel data, ...
            raise _fail(path, str(exc).strip() or type(exc).__name__) from exc
        if pixels.shape != (h["rows"], h["columns"]):
            raise _fail(
                path,
                f"pixel data of shape {pixels.shape}, expected "
                f"({h['rows']}, {h['columns']})",
            )
        if pixels.dtype.kind not in "biuf":
            raise _fail(path, f"non-numeric pixel data ({pixels.dtype})")
        slope = float(_number(ds, "RescaleSlope", path, default=1.0))
        intercept = float(_number(ds, "RescaleIntercept", path, default=0.0))
        data[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    return data, affine


def _record(instance, name):
    """A field of an instance's directory records (or of their parents)."""
    try:
        value = getattr(instance, name)
    except (AttributeError, KeyError):
        return None
    return None if value in (None, "") else str(value)


def dicomdir_series(path):
    """The image series a DICOMDIR lists, with their files.

    A DICOMDIR indexes a DICOM file-set (a CD, a PACS export) by patient,
    study, series and image. This reads the index only (with pydicom's
    ``FileSet``; no image is opened) and groups its image records by
    ``SeriesInstanceUID``. Read a series with :func:`read_dicom_series`
    given its ``files``.

    Parameters
    ----------
    path : str or path-like
        The ``DICOMDIR`` file, or the folder holding it.

    Returns
    -------
    series : list of dict
        One dict per series, in the index's order, with ``patient_id``,
        ``study_uid``, ``study_description``, ``series_uid``,
        ``series_number``, ``modality``, ``series_description`` (strings, or
        None when the index lacks them) and ``files`` (the absolute paths
        of its images).

    Raises
    ------
    ImportError
        If pydicom (the ``dicom`` extra) is not installed.
    FileNotFoundError
        If there is no such file or the folder has no ``DICOMDIR``.
    ValueError
        If the file is not a readable DICOMDIR or lists no image; the
        message names it.

    Examples
    --------
    >>> import os, pydicom  # doctest: +SKIP
    >>> root = os.path.join(os.path.dirname(pydicom.data.__file__),
    ...                     "test_files", "dicomdirtests")  # doctest: +SKIP
    >>> series = dicomdir_series(root)  # doctest: +SKIP
    >>> ct = [s for s in series if s["modality"] == "CT"][-1]  # doctest: +SKIP
    >>> read_dicom_series(ct["files"])[0].shape  # doctest: +SKIP
    (16, 16, 5)
    """
    pydicom = _pydicom()
    path = os.fspath(path)
    if os.path.isdir(path):
        folder = path
        path = os.path.join(folder, "DICOMDIR")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} holds no DICOMDIR file.")
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"no such DICOMDIR: {path}")
    try:
        from pydicom.fileset import FileSet

        fileset = FileSet(pydicom.dcmread(path))
        instances = list(fileset)
    except MemoryError as exc:
        raise MemoryError(f"not enough memory to read {path}.") from exc
    except Exception as exc:  # not DICOM, not a DICOMDIR, damaged records
        raise _fail(
            path, f"not a readable DICOMDIR ({str(exc).strip() or type(exc).__name__})"
        ) from exc
    series = {}
    for instance in instances:
        if _record(instance, "DirectoryRecordType") != "IMAGE":
            continue
        uid = _record(instance, "SeriesInstanceUID")
        if uid not in series:
            series[uid] = {
                "patient_id": _record(instance, "PatientID"),
                "study_uid": _record(instance, "StudyInstanceUID"),
                "study_description": _record(instance, "StudyDescription"),
                "series_uid": uid,
                "series_number": _record(instance, "SeriesNumber"),
                "modality": _record(instance, "Modality"),
                "series_description": _record(instance, "SeriesDescription"),
                "files": [],
            }
        series[uid]["files"].append(os.path.abspath(os.fspath(instance.path)))
    if not series:
        raise _fail(path, "the DICOMDIR lists no image")
    return list(series.values())
