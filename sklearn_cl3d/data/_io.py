"""Reading 3D volumes from files and nibabel images, lazily and with clear errors.

Supported sources: paths (``str`` or :class:`os.PathLike`) to ``.nii``,
``.nii.gz`` (nibabel), ``.nrrd`` (built-in reader) or ``.npy`` files, folders
holding one DICOM series (pydicom, the optional ``dicom`` extra; see
:func:`~sklearn_cl3d.data.read_dicom_series`), and nibabel image objects
(e.g. :class:`nibabel.nifti1.Nifti1Image`).

Dimension convention: a loaded volume is a float32 array of shape
``(C, D, H, W)`` whose spatial axes are the image's voxel axes ``(i, j, k)``
in the order nibabel returns them (``x, y, z`` of the file, whatever their
anatomical orientation; use :class:`~sklearn_cl3d.data.ReorientToRAS` to make
axis 0 run Left to Right, axis 1 Posterior to Anterior and axis 2 Inferior to
Superior). The affine maps voxel indices to RAS+ world coordinates in mm.

Where the channels are, per format:

- NIfTI and other nibabel images: a 3-D image is one channel; a 4-D image
  ``(x, y, z, c)`` has its channels last (a trailing singleton axis is always
  squeezed, as is the singleton 4th axis of a 5-D vector image).
- ``.nrrd``: a 4-D file has one non-spatial axis, which holds the channels.
- DICOM series: one channel.
- ``.npy``: the array is ``(D, H, W)`` or channels-first ``(C, D, H, W)``, like
  the arrays the estimators take; an array whose first axis is a singleton
  is one channel; a trailing singleton axis is squeezed for 3-D inputs.

Nothing is written to disk, and no file handle is kept open between calls.

Reading is bounded: a header may declare at most
:data:`~sklearn_cl3d.data._nrrd.MAX_VOLUME_BYTES` (4 GiB) of voxel data, and a
file too short for what its header declares is refused before anything is
allocated (for ``.nii.gz``, when the compressed size cannot hold it, or the
gzip trailer records more data than declared). Every read error names the
file.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from numpy.lib import format as npy_format

from ._dicom import read_dicom_series, read_dicom_series_header
from ._nrrd import _DEFLATE_MAX_RATIO, MAX_VOLUME_BYTES, read_nrrd, read_nrrd_header
from ._paths import is_dicom_series_dir

__all__ = ["SUPPORTED_EXTENSIONS", "load_volume", "is_volume_source"]

#: File extensions (lower case) that can be loaded.
SUPPORTED_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".npy")


def _is_image(obj):
    """Whether ``obj`` is a nibabel image.

    nibabel is imported only to read NIfTI files (its import pulls pydicom
    and requests: about 14 MiB of resident memory and 0.3 s per process);
    no nibabel image can exist before nibabel is imported.
    """
    images = sys.modules.get("nibabel.spatialimages")
    return images is not None and isinstance(obj, images.SpatialImage)


def is_volume_source(obj):
    """Whether ``obj`` is one file path or one nibabel image.

    Parameters
    ----------
    obj : object

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> is_volume_source("scan.nii.gz"), is_volume_source(np.zeros(3))
    (True, False)
    """
    return isinstance(obj, str | os.PathLike) or _is_image(obj)


def _extension(path):
    name = os.fspath(path).lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return None


def source_name(source):
    """How error messages refer to a source."""
    if _is_image(source):
        filename = source.get_filename()
        if filename:
            return str(filename)
        return f"in-memory {type(source).__name__}"
    return os.fspath(source)


def _could_not_read(name, exc):
    reason = str(exc).strip() or type(exc).__name__
    return ValueError(f"could not read {name}: {reason}")


def _out_of_memory(name):
    return MemoryError(f"not enough memory to read {name}.")


def _layout(shape, channels_last, expected_ndim, name):
    """Return the squeezed stored shape and whether channels are last.

    Raises the error for images whose dimensionality does not fit.
    """
    dims = list(shape)
    if channels_last:
        while len(dims) > 4 and dims[-1] == 1:
            dims.pop()
        if len(dims) == 5 and dims[3] == 1:  # NIfTI vector image (x, y, z, 1, c)
            dims = dims[:3] + dims[4:]
        if len(dims) == 4 and dims[3] == 1:
            dims.pop()
        if len(dims) == 3 or (len(dims) == 4 and expected_ndim == 4):
            return tuple(dims), True
    else:
        if len(dims) == 3 or (len(dims) == 4 and (dims[0] == 1 or expected_ndim == 4)):
            return tuple(dims), False
        if len(dims) == 4 and dims[3] == 1:
            return tuple(dims[:3]), False
    expected = (
        "a 3-D volume"
        if expected_ndim == 3
        else "a 3-D volume or a 4-D volume with a channel axis"
    )
    raise ValueError(
        f"{name} has {len(shape)} dimensions (shape {tuple(shape)}); expected "
        f"{expected}."
    )


def _arrange(data, dims, channels_last):
    """Stored array -> (C, x, y, z)."""
    data = data.reshape(dims)
    if data.ndim == 3:
        return data[None]
    return np.moveaxis(data, -1, 0) if channels_last else data


def _npy_header(path):
    with open(path, "rb") as fh:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(fh)
        else:  # other versions: let numpy parse it (maps, reads nothing)
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, dtype = mapped.shape, mapped.dtype
            del mapped
            return shape, dtype
        offset = fh.tell()
    _check_declared_size(path, shape, dtype, path=path, offset=offset)
    return shape, dtype


def _gzip_trailer_size(path):
    """ISIZE of the last gzip member: its uncompressed size modulo 2**32."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _check_declared_size(name, shape, dtype, *, path=None, offset=0):
    """Refuse a header declaring an absurd volume or more than the file holds.

    Parameters
    ----------
    name : str
        How the message refers to the source.
    shape : tuple of int
        Declared array shape.
    dtype : numpy dtype
        Declared on-disk voxel type.
    path : str, default=None
        The file, to compare the declared size with what it can hold
        (``.gz`` files: with the compressed size and the gzip trailer).
    offset : int, default=0
        Where the voxel data start in the (uncompressed) file.
    """
    try:
        dims = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise ValueError(f"could not read {name}: invalid shape {shape!r}.") from None
    if any(s < 0 for s in dims):
        raise ValueError(f"could not read {name}: negative size in shape {shape}.")
    itemsize = np.dtype(dtype).itemsize
    nbytes = int(np.prod(dims, dtype=object)) * itemsize if dims else itemsize
    if nbytes > MAX_VOLUME_BYTES:
        raise ValueError(
            f"could not read {name}: its header declares shape {tuple(dims)} of "
            f"{np.dtype(dtype)} ({nbytes} bytes), more than the {MAX_VOLUME_BYTES} "
            "bytes a volume may have."
        )
    if path is None:
        return
    size = os.path.getsize(path)
    expected = int(offset) + nbytes
    if not path.lower().endswith(".gz"):
        if expected > size:
            raise ValueError(
                f"could not read {name}: the file is truncated (its header "
                f"declares {expected} bytes, the file has {size})."
            )
        return
    if nbytes > size * _DEFLATE_MAX_RATIO + 1024:
        raise ValueError(
            f"could not read {name}: the file is truncated ({size} bytes of gzip "
            f"data cannot hold the {nbytes} bytes of voxel data its header "
            "declares)."
        )
    if size >= 18 and expected < 2**32:
        recorded = _gzip_trailer_size(path)
        if recorded > expected:
            raise ValueError(
                f"could not read {name}: its gzip trailer records {recorded} "
                f"bytes of uncompressed data, more than the {expected} bytes its "
                f"header declares (shape {tuple(dims)} of {np.dtype(dtype)}): the "
                "file is damaged or its header does not match its data."
            )


def _nifti(path, name, **kwargs):
    """``nib.load`` (header only) with the declared size checked."""
    import nibabel as nib

    img = nib.load(path, **kwargs)
    # where the proxy will read from (the header copy may say 0)
    offset = getattr(img.dataobj, "offset", 0)
    _check_declared_size(
        name, img.shape, img.get_data_dtype(), path=path, offset=offset
    )
    return img


def _check_dtype(dtype, name):
    if np.dtype(dtype).kind not in "biuf":
        raise ValueError(
            f"could not read {name}: voxels must be numeric, got dtype {dtype}"
        )


def _check_path(path):
    """Extension and existence checks; returns the path as ``str``.

    A folder is taken as one DICOM series.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.isdir(path):
        if not is_dicom_series_dir(path):
            raise ValueError(
                f"{path} is a folder without DICOM files: a folder in a list of "
                "sources is read as one DICOM series (give a folder or a glob "
                "pattern as X itself to use the image files in it)."
            )
        return path
    if _extension(path) is None:
        raise ValueError(
            f"unsupported file type: {path}; supported extensions are "
            f"{', '.join(SUPPORTED_EXTENSIONS)} (or a folder holding one DICOM "
            "series)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    return path


def inspect_source(source, expected_ndim=3):
    """Check a source from its header only, without reading voxel data.

    Parameters
    ----------
    source : str, path-like or nibabel image
    expected_ndim : {3, 4}, default=3

    Returns
    -------
    source : str or nibabel image
        Paths are returned as ``str``.
    shape : tuple of int
        The ``(C, x, y, z)`` shape :func:`load_volume` will return.

    Raises
    ------
    ValueError
        Unsupported extension, unreadable header, non-numeric voxels or a
        dimensionality that does not fit ``expected_ndim``.
    FileNotFoundError
        If the path is not an existing file.
    """
    if _is_image(source):
        name, shape, channels_last = source_name(source), source.shape, True
        _check_dtype(source.get_data_dtype(), name)
        _check_declared_size(name, shape, source.get_data_dtype())
    elif isinstance(source, str | os.PathLike):
        source = name = _check_path(source)
        ext = _extension(source)
        if os.path.isdir(source):
            shape, _ = read_dicom_series_header(source)
            channels_last = False
        elif ext == ".nrrd":
            shape, _ = read_nrrd_header(source)
            channels_last = False
        else:
            try:
                if ext == ".npy":
                    shape, dtype = _npy_header(source)
                else:
                    img = _nifti(source, name)
                    shape, dtype = img.shape, img.get_data_dtype()
            except MemoryError as exc:
                raise _out_of_memory(name) from exc
            except ValueError as exc:
                if str(exc).startswith(f"could not read {name}"):
                    raise
                raise _could_not_read(name, exc) from exc
            except Exception as exc:
                raise _could_not_read(name, exc) from exc
            _check_dtype(dtype, name)
            channels_last = ext != ".npy"
    else:
        raise ValueError(
            "a volume source must be a path to a "
            f"{'/'.join(SUPPORTED_EXTENSIONS)} file or a nibabel image; got "
            f"{type(source).__name__}."
        )
    dims, last = _layout(shape, channels_last, expected_ndim, name)
    if len(dims) == 3:
        out = (1,) + dims
    else:
        out = (dims[-1],) + dims[:3] if last else dims
    return source, tuple(int(s) for s in out)


def _read(source, name):
    """Read voxel data: (array as stored, affine, channels_last)."""
    if _is_image(source):
        img, channels_last = source, True
        _check_declared_size(name, img.shape, img.get_data_dtype())
    else:
        ext = _extension(source)
        if os.path.isdir(source):
            data, affine = read_dicom_series(source)
            return data, affine, False
        if ext == ".nrrd":
            try:
                data, affine = read_nrrd(source)
            except MemoryError as exc:
                raise _out_of_memory(name) from exc
            return data, affine, False
        if ext == ".npy":
            try:
                _npy_header(source)
                mapped = np.load(source, mmap_mode="r", allow_pickle=False)
                data = np.array(mapped)
                del mapped
            except MemoryError as exc:
                raise _out_of_memory(name) from exc
            except Exception as exc:
                if str(exc).startswith(f"could not read {name}"):
                    raise
                raise _could_not_read(name, exc) from exc
            return data, np.eye(4), False
        img, channels_last = None, True
    try:
        if img is None:
            img = _nifti(source, name, mmap=False)
        data = np.asanyarray(img.dataobj)
        affine = img.affine
    except MemoryError as exc:
        raise _out_of_memory(name) from exc
    except Exception as exc:
        if str(exc).startswith(f"could not read {name}"):
            raise
        raise _could_not_read(name, exc) from exc
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    return data, affine, channels_last


def load_volume(source, *, expected_ndim=3):
    """Load one volume as a float32 ``(C, x, y, z)`` array with its affine.

    Parameters
    ----------
    source : str, path-like, nibabel image or array-like
        A ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.npy`` file, a folder holding
        one DICOM series, a nibabel image, or an array
        ``(D, H, W)``/``(C, D, H, W)`` (identity affine).
    expected_ndim : {3, 4}, default=3
        3: the source holds one 3-D volume (a trailing singleton axis is
        squeezed); a multi-channel image is an error. 4: a 4-D image is also
        accepted, its channel axis moved first (see the module docstring for
        where each format keeps its channels).

    Returns
    -------
    volume : ndarray of float32, shape (C, x, y, z)
        A new array (never a view of a memory-mapped file).
    affine : ndarray of shape (4, 4)
        Voxel-to-world (RAS+, mm) affine; the identity for ``.npy`` files and
        arrays.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ImportError
        If the source is a DICOM series and pydicom is not installed.
    ValueError
        Unsupported extension, unreadable or corrupt file ("could not read
        <path>: <reason>"), wrong number of dimensions, or non-finite voxels.
        Every message names the file.

    Examples
    --------
    >>> import nibabel as nib
    >>> import numpy as np
    >>> img = nib.Nifti1Image(np.ones((4, 5, 6, 1), np.int16), np.diag([2, 2, 2, 1]))
    >>> volume, affine = load_volume(img)
    >>> volume.shape, volume.dtype
    ((1, 4, 5, 6), dtype('float32'))
    >>> affine[0, 0]
    np.float64(2.0)
    """
    if expected_ndim not in (3, 4):
        raise ValueError(f"expected_ndim must be 3 or 4, got {expected_ndim!r}.")
    if not is_volume_source(source):
        data = np.asarray(source)
        if data.dtype.kind not in "biuf" or data.ndim not in (3, 4):
            raise ValueError(
                "source must be a path, a nibabel image or a numeric array of "
                f"shape (D, H, W) or (C, D, H, W); got {type(source).__name__}"
                + (f" of shape {data.shape}" if data.dtype.kind in "biuf" else "")
                + "."
            )
        volume = np.array(data if data.ndim == 4 else data[None], dtype=np.float32)
        if not np.isfinite(volume).all():
            raise ValueError("the array contains non-finite values (NaN or inf).")
        return volume, np.eye(4)
    if not _is_image(source):
        source = _check_path(source)
    name = source_name(source)
    data, affine, channels_last = _read(source, name)
    _check_dtype(data.dtype, name)
    dims, last = _layout(data.shape, channels_last, expected_ndim, name)
    volume = np.array(_arrange(data, dims, last), dtype=np.float32, order="C")
    del data
    if not np.isfinite(volume).all():
        raise ValueError(
            f"{name} contains non-finite voxel values (NaN or infinity, possibly "
            "from values too large for float32)."
        )
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{name} has an invalid affine: {affine.tolist()}.")
    return volume, affine
