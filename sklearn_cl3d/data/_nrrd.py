"""A small, dependency-free reader for NRRD files with attached data.

Only what 3D medical volumes need is supported: headers ``NRRD0001`` to
``NRRD0005``, scalar types, ``dimension`` 3 (or 4 with one non-spatial axis,
read as channels), ``raw``, ``gzip``, ``bzip2`` and ``text`` encodings, and
the ``space``/``space directions``/``space origin`` geometry, converted to a
4x4 RAS affine like the ones nibabel gives for NIfTI. Detached data (``data
file``) is not supported.

NRRD stores the fastest-varying axis first: a file with ``sizes: 10 20 30`` is
read into an array of shape ``(10, 20, 30)`` indexed ``(i, j, k)``, the same
voxel-axis order nibabel uses for NIfTI.

Reading is bounded, so a damaged or hostile file cannot stall the reader or
make it allocate more than the volume it declares:

- the header may have at most 4096 lines of at most 64 KiB, 1 MiB in all;
- a volume may declare at most :data:`MAX_VOLUME_BYTES` bytes of voxel data;
- ``line skip`` is done in large chunks and cannot go past the end of the
  file;
- the data must be at least as long as declared before any voxel is
  allocated (for ``gzip``, the compressed size must be able to hold it);
- ``gzip``/``bzip2`` data are decompressed in chunks, never beyond the
  declared size (plus ``byte skip``): data that decompress to more or fewer
  bytes than declared are refused.

Every error is a :class:`ValueError` whose message names the file.

Why not pynrrd, the field's reader: it reads the whole payload into memory,
decompresses gzip/bzip2 data without an output limit (a small file can
expand to gigabytes before its size is checked), skips ``line skip`` lines
one ``readline`` at a time (a huge count never ends), reads header lines of
any length, and follows ``data file`` to other files. Its header parser alone
would need our bounded header reading in front of it and our bounded data
reading behind it, which is most of this module. The tests check this reader
against pynrrd on files pynrrd writes (every encoding, LPS geometry).
"""

from __future__ import annotations

import bz2
import math
import os
import zlib

import numpy as np

__all__ = ["MAX_VOLUME_BYTES", "read_nrrd", "read_nrrd_header"]

#: Largest voxel payload (bytes) one volume may declare: 4 GiB, e.g. a
#: 1024^3 volume of float32. NRRD and NIfTI headers declaring more are
#: refused before anything is allocated.
MAX_VOLUME_BYTES = 2**32

_MAGIC = b"NRRD000"
_MAX_HEADER_LINES = 4096
_MAX_LINE_BYTES = 1 << 16
_MAX_HEADER_BYTES = 1 << 20
_MAX_TEXT_BYTES = 1 << 28  # text-encoded data: 256 MiB of digits
_CHUNK = 1 << 20
# DEFLATE cannot compress better than about 1032:1, so gzip data of n bytes
# cannot hold more than this many bytes once decompressed.
_DEFLATE_MAX_RATIO = 1032

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
_ENCODINGS.update(dict.fromkeys(("bzip2", "bz2"), "bzip2"))
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
    total = len(first)
    for _ in range(_MAX_HEADER_LINES):
        raw = fh.readline(_MAX_LINE_BYTES + 1)
        if not raw:  # end of file right after the header: no data
            break
        if len(raw) > _MAX_LINE_BYTES:
            raise _fail(path, f"a header line is longer than {_MAX_LINE_BYTES} bytes")
        total += len(raw)
        if total > _MAX_HEADER_BYTES:
            raise _fail(path, f"the header is longer than {_MAX_HEADER_BYTES} bytes")
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
        raise _fail(
            path,
            f"header has no end (no blank line within {_MAX_HEADER_LINES} lines)",
        )
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
    if len(sizes) != ndim:
        raise _fail(path, f"'sizes' {fields['sizes']!r} do not match dimension {ndim}")
    if min(sizes) < 1:
        raise _fail(path, f"'sizes' {fields['sizes']!r} must all be positive")
    count = math.prod(sizes)  # exact: Python ints do not overflow
    nbytes = count * dtype.itemsize
    if nbytes > MAX_VOLUME_BYTES:
        raise _fail(
            path,
            f"'sizes' {fields['sizes']!r} of type {fields['type']!r} declare "
            f"{count} voxels ({nbytes} bytes), more than the {MAX_VOLUME_BYTES} "
            "bytes a volume may have",
        )
    encoding = _ENCODINGS.get(fields["encoding"].lower())
    if encoding is None:
        raise _fail(
            path,
            f"unsupported encoding {fields['encoding']!r} (supported: raw, gzip, "
            "bzip2, text)",
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
    if byte_skip < -1 or byte_skip > MAX_VOLUME_BYTES:
        raise _fail(
            path,
            f"invalid 'byte skip' {byte_skip} (expected -1 or 0 to {MAX_VOLUME_BYTES})",
        )
    if byte_skip == -1 and encoding != "raw":
        raise _fail(path, "'byte skip: -1' is only valid with raw encoding")
    return {
        "dtype": dtype,
        "sizes": sizes,
        "count": count,
        "nbytes": nbytes,
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


def _skip_lines(fh, n_lines, path):
    """Move past ``n_lines`` newlines, reading large chunks (C-speed counts)."""
    left = n_lines
    while left:
        chunk = fh.read(_CHUNK)
        if not chunk:
            raise _fail(
                path,
                f"'line skip: {n_lines}' goes past the end of the file "
                f"({n_lines - left} line(s) found)",
            )
        found = chunk.count(b"\n")
        if found < left:
            left -= found
            continue
        newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
        end = int(newlines[left - 1])
        fh.seek(end + 1 - len(chunk), os.SEEK_CUR)
        left = 0


class _Inflater:
    """Chunked gzip/bzip2 decompression that never outputs past a limit."""

    _MAX_PIECE = 1 << 24  # bytes per decompress call: bounded transient memory

    def __init__(self, kind):
        self.kind = kind
        self._new()

    def _new(self):
        self._d = (
            zlib.decompressobj(16 + zlib.MAX_WBITS)
            if self.kind == "gzip"
            else bz2.BZ2Decompressor()
        )

    def feed(self, data, limit):
        """Yield the decompressed pieces of ``data``, stopping once more than
        ``limit`` bytes came out (so at most ``limit + 1`` bytes in all)."""
        produced = 0
        while produced <= limit:
            if self._d.eof:  # a further gzip member or bzip2 stream
                data = self._d.unused_data + data
                if not data:
                    return
                self._new()
            size = min(limit + 1 - produced, self._MAX_PIECE)
            piece = self._d.decompress(data, size)
            data = self._d.unconsumed_tail if self.kind == "gzip" else b""
            produced += len(piece)
            yield piece
            # output below the cap: all input used (unless a stream ended)
            if not data and len(piece) < size and not self._d.eof:
                return

    @property
    def complete(self):
        """Whether the last stream fed was complete."""
        return self._d.eof


def _read_compressed(fh, info, path, available):
    """Decompress the data of a gzip/bzip2 file into the declared bytes."""
    skip, nbytes = info["byte_skip"], info["nbytes"]
    expected = skip + nbytes
    kind = info["encoding"]
    if kind == "gzip" and expected > available * _DEFLATE_MAX_RATIO + 1024:
        raise _fail(
            path,
            f"data are truncated: {available} bytes of gzip data cannot hold the "
            f"declared {expected} bytes",
        )
    data = np.empty(info["count"], dtype=info["dtype"])
    view = memoryview(data).cast("B")
    inflater, received = _Inflater(kind), 0
    try:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            for piece in inflater.feed(chunk, expected - received):
                start, stop = received, received + len(piece)
                received = stop
                if stop > expected:
                    raise _fail(
                        path,
                        f"{kind} data decompress to more than the declared "
                        f"{expected} bytes ('sizes', 'type' and 'byte skip' do "
                        "not match the data)",
                    )
                lo, hi = max(start, skip), stop
                if hi > lo:
                    view[lo - skip : hi - skip] = piece[lo - start : hi - start]
    except (OSError, EOFError, zlib.error) as exc:
        raise _fail(path, f"corrupt {kind} data ({exc})") from exc
    if received < expected:
        raise _fail(
            path,
            f"data are truncated: {kind} data decompress to {received} bytes, "
            f"expected {expected}",
        )
    if not inflater.complete:
        raise _fail(path, f"corrupt {kind} data (the stream has no end)")
    return data


def _read_raw(fh, info, path, available):
    skip, nbytes = info["byte_skip"], info["nbytes"]
    if skip == -1:  # the data are the last bytes of the file
        skip = max(available - nbytes, 0)
    if skip + nbytes > available:
        raise _fail(
            path,
            f"data are truncated: expected {nbytes} bytes after a byte skip of "
            f"{skip}, found {max(available - skip, 0)}",
        )
    fh.seek(skip, os.SEEK_CUR)
    data = np.empty(info["count"], dtype=info["dtype"])
    view = memoryview(data).cast("B")
    done = 0
    while done < nbytes:
        n = fh.readinto(view[done : done + _CHUNK * 64])
        if not n:
            raise _fail(path, f"data are truncated: expected {nbytes} bytes")
        done += n
    return data


def _read_text(fh, info, path, available):
    if available > _MAX_TEXT_BYTES:
        raise _fail(
            path,
            f"text-encoded data of {available} bytes are more than the "
            f"{_MAX_TEXT_BYTES} this reader accepts; save the volume with raw "
            "or gzip encoding",
        )
    payload = fh.read()[max(info["byte_skip"], 0) :]
    try:
        values = np.array(payload.decode("latin-1").split(), dtype=float)
    except ValueError:
        raise _fail(path, "malformed text data") from None
    count = info["count"]
    if values.size < count:
        raise _fail(path, f"expected {count} values, found {values.size}")
    return values[:count].astype(info["dtype"])


def _read_data(fh, info, path):
    """The voxel data, as a 1-D array of the declared dtype."""
    _skip_lines(fh, info["line_skip"], path)
    available = os.fstat(fh.fileno()).st_size - fh.tell()
    reader = {
        "raw": _read_raw,
        "text": _read_text,
        "gzip": _read_compressed,
        "bzip2": _read_compressed,
    }[info["encoding"]]
    data = reader(fh, info, path, available)
    return data.astype(data.dtype.newbyteorder("="), copy=False)


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
            fields, _ = _read_header_lines(fh, path)
            info = _parse_header(fields, path)
            sizes = info["sizes"]
            channel_axis = _channel_axis(fields, len(sizes), path)
            affine = _affine(fields, sizes, channel_axis, path)
            data = _read_data(fh, info, path)
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from exc
    # NRRD lists the fastest axis first: Fortran order
    data = data.reshape(sizes, order="F")
    if channel_axis is not None:
        data = np.moveaxis(data, channel_axis, 0)
    return data, affine
