"""A small, dependency-free reader for NRRD files with attached data.

Only what 3D medical volumes need is supported: headers ``NRRD0001`` to
``NRRD0005``, scalar types, ``dimension`` 3 (or 4 with one non-spatial axis,
read as channels), ``raw``, ``gzip`` and ``text`` encodings, and the
``space``/``space directions``/``space origin`` geometry, converted to a 4x4
RAS affine like the ones nibabel gives for NIfTI. Detached data (``data file``)
is not supported.

NRRD stores the fastest-varying axis first: a file with ``sizes: 10 20 30`` is
read into an array of shape ``(10, 20, 30)`` indexed ``(i, j, k)``, the same
voxel-axis order nibabel uses for NIfTI.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["read_nrrd", "read_nrrd_header"]

_MAGIC = b"NRRD000"
_MAX_HEADER_LINES = 4096

# NRRD type names (and their aliases) -> numpy base dtype
_TYPES = {}
for _names, _dtype in [
    (("signed char", "int8", "int8_t"), "i1"),
    (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    (
        ("short", "short int", "signed short", "signed short int", "int16")
        + ("int16_t",),
        "i2",
    ),
    (
        ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
        "u2",
    ),
    (("int", "signed int", "int32", "int32_t"), "i4"),
    (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    (
        ("longlong", "long long", "long long int", "signed long long")
        + ("signed long long int", "int64", "int64_t"),
        "i8",
    ),
    (
        ("ulonglong", "unsigned long long", "unsigned long long int", "uint64")
        + ("uint64_t",),
        "u8",
    ),
    (("float",), "f4"),
    (("double",), "f8"),
]:
    for _name in _names:
        _TYPES[_name] = _dtype

# world-space names -> sign flips that bring coordinates to RAS
_SPACES = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
    # no anatomical labels: coordinates are taken as they are
    "scanner-xyz": (1, 1, 1),
    "3d-right-handed": (1, 1, 1),
}
_SPATIAL_KINDS = {"domain", "space"}
_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}
_ENCODINGS.update(dict.fromkeys(("text", "txt", "ascii"), "text"))


def _fail(path, reason):
    return ValueError(f"could not read {path}: {reason}")


def _parse_vector(text, path, field):
    """Parse ``(a,b,c)`` into a float array; ``none`` gives None."""
    text = text.strip()
    if text.lower() == "none":
        return None
    if not (text.startswith("(") and text.endswith(")")):
        raise _fail(path, f"malformed vector {text!r} in field '{field}'")
    try:
        return np.array([float(v) for v in text[1:-1].split(",")])
    except ValueError:
        raise _fail(path, f"malformed vector {text!r} in field '{field}'") from None


def _parse_vectors(text, path, field):
    """Parse a whitespace-separated list of vectors or ``none``."""
    out, rest = [], text.strip()
    while rest:
        if rest.lower().startswith("none"):
            out.append(None)
            rest = rest[4:].lstrip()
            continue
        end = rest.find(")")
        if not rest.startswith("(") or end < 0:
            raise _fail(path, f"malformed vector list {text!r} in field '{field}'")
        out.append(_parse_vector(rest[: end + 1], path, field))
        rest = rest[end + 1 :].lstrip()
    return out


def _read_header_lines(fh, path):
    """Return the header fields and the byte offset where the data start."""
    first = fh.readline(64)
    if not first.startswith(_MAGIC):
        raise _fail(path, "not a NRRD file (missing 'NRRD000X' magic line)")
    version = first.strip()[len(_MAGIC) :]
    if version not in (b"1", b"2", b"3", b"4", b"5"):
        raise _fail(path, f"unsupported NRRD version {first.strip().decode()!r}")
    fields = {}
    for _ in range(_MAX_HEADER_LINES):
        raw = fh.readline(1 << 16)
        if not raw:  # end of file right after the header: no data
            break
        line = raw.decode("latin-1").rstrip("\r\n")
        if line == "":
            break
        if line.startswith("#"):
            continue
        if ":=" in line:  # key/value pairs: free-form metadata, not needed
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise _fail(path, f"malformed header line {line!r}")
        fields[key.strip().lower()] = value.strip()
    else:
        raise _fail(path, "header has no end (no blank line)")
    return fields, fh.tell()


def _parse_header(fields, path):
    """Turn the raw header fields into what the reader needs."""
    for detached in ("data file", "datafile"):
        if detached in fields:
            raise ValueError(
                f"could not read {path}: detached NRRD data ('{detached}: "
                f"{fields[detached]}') is not supported; save the volume with "
                "attached data (a single .nrrd file)"
            )
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise _fail(path, f"missing required field '{required}'")
    type_name = " ".join(fields["type"].lower().split())
    if type_name not in _TYPES:
        raise _fail(path, f"unsupported type {fields['type']!r}")
    dtype = np.dtype(_TYPES[type_name])
    try:
        ndim = int(fields["dimension"])
        sizes = tuple(int(s) for s in fields["sizes"].split())
    except ValueError:
        raise _fail(path, "malformed 'dimension' or 'sizes' field") from None
    if ndim not in (3, 4):
        raise _fail(path, f"dimension {ndim} is not supported (only 3 or 4)")
    if len(sizes) != ndim or min(sizes) < 1:
        raise _fail(path, f"'sizes' {fields['sizes']!r} do not match dimension {ndim}")
    encoding = _ENCODINGS.get(fields["encoding"].lower())
    if encoding is None:
        raise _fail(
            path,
            f"unsupported encoding {fields['encoding']!r} (supported: raw, gzip, text)",
        )
    endian = fields.get("endian", "little").lower()
    if endian not in ("little", "big"):
        raise _fail(path, f"unsupported endian {fields['endian']!r}")
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    try:
        line_skip = int(fields.get("line skip", fields.get("lineskip", 0)))
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", 0)))
    except ValueError:
        raise _fail(path, "malformed 'line skip' or 'byte skip' field") from None
    if line_skip < 0:
        raise _fail(path, f"invalid 'line skip' {line_skip}")
    return {
        "dtype": dtype,
        "sizes": sizes,
        "encoding": encoding,
        "line_skip": line_skip,
        "byte_skip": byte_skip,
    }


def _channel_axis(fields, ndim, path):
    """Index of the non-spatial (channel) axis of a 4-D file, None for 3-D."""
    if ndim == 3:
        return None
    candidates = set()
    if "kinds" in fields:
        kinds = fields["kinds"].lower().split()
        candidates |= {i for i, k in enumerate(kinds) if k not in _SPATIAL_KINDS}
    if "space directions" in fields:
        dirs = _parse_vectors(fields["space directions"], path, "space directions")
        candidates |= {i for i, d in enumerate(dirs) if d is None}
    if len(candidates) > 1:
        raise _fail(path, "4-D NRRD with more than one non-spatial axis")
    # without any hint, NRRD's convention: the fastest axis holds the vector
    return candidates.pop() if candidates else 0


def _affine(fields, sizes, channel_axis, path):
    """4x4 RAS affine of the spatial axes (in order)."""
    spatial = [i for i in range(len(sizes)) if i != channel_axis]
    affine = np.eye(4)
    space = fields.get("space")
    flips = np.ones(3)
    if space is not None:
        key = space.strip().lower()
        if key not in _SPACES:
            raise _fail(path, f"unsupported space {space!r}")
        flips = np.asarray(_SPACES[key], dtype=float)
    elif "space dimension" in fields and fields["space dimension"].strip() != "3":
        raise _fail(path, "only 3-D world spaces are supported")
    if "space directions" in fields:
        dirs = _parse_vectors(fields["space directions"], path, "space directions")
        if len(dirs) != len(sizes):
            raise _fail(path, "'space directions' do not match dimension")
        for col, axis in enumerate(spatial):
            vec = dirs[axis]
            if vec is None or vec.shape != (3,):
                raise _fail(path, f"axis {axis} has no 3-D space direction")
            affine[:3, col] = vec * flips
    elif "spacings" in fields:
        try:
            spacings = [float(s) for s in fields["spacings"].split()]
        except ValueError:
            raise _fail(path, "malformed 'spacings' field") from None
        if len(spacings) != len(sizes):
            raise _fail(path, "'spacings' do not match dimension")
        for col, axis in enumerate(spatial):
            if np.isfinite(spacings[axis]):
                affine[col, col] = spacings[axis]
    if "space origin" in fields:
        origin = _parse_vector(fields["space origin"], path, "space origin")
        if origin is None or origin.shape != (3,):
            raise _fail(path, "'space origin' must be a 3-vector")
        affine[:3, 3] = origin * flips
    if not np.isfinite(affine).all():
        raise _fail(path, "non-finite values in the geometry fields")
    return affine


def read_nrrd_header(path):
    """Read the geometry of a NRRD file without reading its voxel data.

    Parameters
    ----------
    path : str or path-like
        A ``.nrrd`` file with attached data.

    Returns
    -------
    shape : tuple of int
        Shape of the array :func:`read_nrrd` returns: ``(x, y, z)`` or, for a
        4-D file, ``(C, x, y, z)`` with the non-spatial axis first.
    affine : ndarray of shape (4, 4)
        Voxel-to-world (RAS, mm) affine.

    Raises
    ------
    ValueError
        If the header is malformed or uses an unsupported feature.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "v.nrrd")
    >>> with open(path, "wb") as fh:
    ...     _ = fh.write(b"NRRD0004\\ntype: uchar\\ndimension: 3\\nsizes: 2 3 4\\n"
    ...                  b"encoding: raw\\n\\n" + bytes(24))
    >>> read_nrrd_header(path)[0]
    (2, 3, 4)
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            fields, _ = _read_header_lines(fh, path)
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from exc
    info = _parse_header(fields, path)
    sizes = info["sizes"]
    channel_axis = _channel_axis(fields, len(sizes), path)
    affine = _affine(fields, sizes, channel_axis, path)
    if channel_axis is not None:
        sizes = (sizes[channel_axis],) + tuple(
            s for i, s in enumerate(sizes) if i != channel_axis
        )
    return sizes, affine


def _decode(payload, info, path):
    dtype, count = info["dtype"], int(np.prod(info["sizes"]))
    if info["encoding"] == "text":
        try:
            values = np.array(payload.decode("latin-1").split(), dtype=float)
        except ValueError:
            raise _fail(path, "malformed text data") from None
        if values.size < count:
            raise _fail(path, f"expected {count} values, found {values.size}")
        return values[:count].astype(dtype.newbyteorder("="))
    nbytes = count * dtype.itemsize
    if len(payload) < nbytes:
        raise _fail(
            path, f"data are truncated: expected {nbytes} bytes, found {len(payload)}"
        )
    data = np.frombuffer(payload, dtype=dtype, count=count)
    return data.astype(dtype.newbyteorder("="))


def read_nrrd(path):
    """Read a NRRD volume and its RAS affine.

    Parameters
    ----------
    path : str or path-like
        A ``.nrrd`` file with attached data (``raw``, ``gzip`` or ``text``
        encoding), of dimension 3, or 4 with one non-spatial axis.

    Returns
    -------
    data : ndarray
        Voxel values in their stored type (native byte order), shape
        ``(x, y, z)``, or ``(C, x, y, z)`` for a 4-D file: the non-spatial
        axis (kind ``list``/``vector``/... or space direction ``none``; the
        first axis when the header says nothing) is moved first.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine in RAS+ millimetres: an LPS (or LAS) ``space``
        is converted to RAS by flipping the world axes.

    Raises
    ------
    ValueError
        If the file is not a valid NRRD file, uses detached data or an
        unsupported feature, or its data are truncated. The message names the
        file.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "v.nrrd")
    >>> header = (b"NRRD0004\\ntype: short\\ndimension: 3\\nsizes: 2 2 1\\n"
    ...           b"endian: little\\nencoding: raw\\n"
    ...           b"space: left-posterior-superior\\n"
    ...           b"space directions: (2,0,0) (0,2,0) (0,0,3)\\n\\n")
    >>> with open(path, "wb") as fh:
    ...     _ = fh.write(header + bytes([1, 0, 2, 0, 3, 0, 4, 0]))
    >>> data, affine = read_nrrd(path)
    >>> data[:, :, 0].tolist()
    [[1, 3], [2, 4]]
    >>> affine.diagonal().tolist()
    [-2.0, -2.0, 3.0, 1.0]
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            fields, offset = _read_header_lines(fh, path)
            info = _parse_header(fields, path)
            for _ in range(info["line_skip"]):
                fh.readline()
            payload = fh.read()
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from exc
    sizes = info["sizes"]
    channel_axis = _channel_axis(fields, len(sizes), path)
    affine = _affine(fields, sizes, channel_axis, path)
    if info["encoding"] == "gzip":
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError, zlib.error) as exc:
            raise _fail(path, f"corrupt gzip data ({exc})") from exc
    skip = info["byte_skip"]
    if skip == -1:
        if info["encoding"] != "raw":
            raise _fail(path, "'byte skip: -1' is only valid with raw encoding")
        nbytes = int(np.prod(sizes)) * info["dtype"].itemsize
        skip = max(len(payload) - nbytes, 0)
    elif skip < 0:
        raise _fail(path, f"invalid 'byte skip' {skip}")
    data = _decode(payload[skip:], info, path)
    # NRRD lists the fastest axis first: Fortran order
    data = data.reshape(sizes, order="F")
    if channel_axis is not None:
        data = np.moveaxis(data, channel_axis, 0)
    return data, affine
