"""On-disk cache of decompressed, preprocessed volumes.

A :class:`~sklearn_cl3d.data.VolumeDataset` built with ``cache=<folder>``
keeps each volume it loads from a file (after decompression, preprocessing
and the cast to its dtype) as one ``.npy`` file in that folder. Later reads,
in this process, in DataLoader workers, in other fits and in later runs, read
that file instead of decoding the source again.

Keys. A cache file is named by a SHA-256 over: the SHA-256 of the source's
bytes (for a DICOM series folder, of the names and bytes of its files), a
canonical description of the preprocessing (class and parameters of every
step), the dtype, ``expected_ndim``, the library version and the cache
format. A source that changes, or a change of preprocessing, therefore
selects another file; stale files are simply never read again (delete the
folder to reclaim the space). The source's hash is computed once per process
and reused while the file's size, modification time and inode stay the same.

Format. A standard ``.npy`` file (version 1.0, C order, the dataset's float
dtype; ``numpy.load(path, mmap_mode="r")`` reads it) followed by a trailer:
8 bytes of magic, the 32-byte key and the 32-byte BLAKE2b digest of the
array's bytes.

Safety. A file is written to a temporary file in the same folder and moved
into place with :func:`os.replace`, so no reader ever sees a half-written
file; concurrent writers of one key write identical bytes and the last move
wins. A file is validated before use: the header must declare the expected
dtype, a 4-D C-order shape and at most
:data:`~sklearn_cl3d.data._nrrd.MAX_VOLUME_BYTES` of data, the file must have
exactly the size this implies plus the trailer, the trailer must carry the
file's own key, and the first time a process reads a file (and again when its
size, modification time or inode change) the digest of its data is checked
and its values must be finite. A file failing any check is reported with a
:class:`CacheWarning` and rebuilt from the source. Nothing read from the
cache is unpickled or chooses code: it is a header parsed by NumPy without
``allow_pickle`` and raw voxel bytes. In-memory arrays and nibabel images are
not cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import tempfile
import threading
import warnings

import numpy as np
from numpy.lib import format as npy_format

from ._nrrd import MAX_VOLUME_BYTES

__all__ = ["CacheWarning", "VolumeCache", "preprocessing_fingerprint"]

#: Version of the cache layout; part of every key.
FORMAT_VERSION = 1
_MAGIC = b"CL3DVOL1"
_DIGEST = 32
_TRAILER = len(_MAGIC) + 2 * _DIGEST
_CHUNK = 1 << 20
# process-wide memos: source hashes and cache files already verified
_MEMO_MAX = 65536
_source_hashes = {}
_verified = {}
_lock = threading.Lock()


class CacheWarning(UserWarning):
    """A volume cache file was damaged (and is rebuilt), or could not be written.

    Issued by :class:`~sklearn_cl3d.data.VolumeDataset` with
    ``cache=<folder>``; training goes on, reading the volume from its source.

    Examples
    --------
    >>> import warnings
    >>> from sklearn_cl3d.data import CacheWarning
    >>> warnings.simplefilter("error", CacheWarning)  # make it an error
    >>> warnings.resetwarnings()
    """


def _remember(memo, key, value):
    with _lock:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[key] = value


def _stat_signature(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _hash_file(path, digest):
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)


def source_hash(path):
    """SHA-256 (hex) of a file's bytes, or of a DICOM folder's files.

    Memoised per process while the size, modification time and inode of the
    file (of every file of the folder) stay the same.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        names = sorted(
            n
            for n in os.listdir(path)
            if not n.startswith(".") and os.path.isfile(os.path.join(path, n))
        )
        signature = tuple(
            (n, _stat_signature(os.stat(os.path.join(path, n)))) for n in names
        )
    else:
        names, signature = None, _stat_signature(os.stat(path))
    known = _source_hashes.get(path)
    if known is not None and known[0] == signature:
        return known[1]
    digest = hashlib.sha256()
    if names is None:
        _hash_file(path, digest)
    else:
        for n in names:
            digest.update(n.encode("utf-8", "surrogateescape") + b"\0")
            _hash_file(os.path.join(path, n), digest)
            digest.update(b"\0")
    value = digest.hexdigest()
    _remember(_source_hashes, path, (signature, value))
    return value


# ------------------------------------------------------------ fingerprints


def _canonical(value, where):
    """A JSON-able, deterministic description of a parameter value."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return {"float": float(value).hex()}
    if isinstance(value, np.dtype) or (
        isinstance(value, type) and issubclass(value, np.generic)
    ):
        return {"dtype": np.dtype(value).str}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where}: array of dtype {value.dtype}")
        data = np.ascontiguousarray(value)
        return {
            "array": data.dtype.str,
            "shape": list(data.shape),
            "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
        }
    if isinstance(value, list | tuple):
        return {
            type(value).__name__: [
                _canonical(v, f"{where}[{i}]") for i, v in enumerate(value)
            ]
        }
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: dict with non-str keys")
        return {
            "dict": {k: _canonical(value[k], f"{where}[{k!r}]") for k in sorted(value)}
        }
    return _step(value, where)


def _step(step, where):
    cls = type(step)
    if callable(getattr(step, "get_params", None)):
        params = step.get_params(deep=False)
    elif hasattr(step, "__dict__") and not callable(step):
        params = {k: v for k, v in vars(step).items() if not k.startswith("_")}
    else:
        raise TypeError(f"{where}: {cls.__name__} objects")
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": {k: _canonical(params[k], f"{where}.{k}") for k in sorted(params)},
    }


def preprocessing_fingerprint(preprocessing):
    """A string that identifies what ``preprocessing`` does to a volume.

    Parameters
    ----------
    preprocessing : PreprocessingChain or None

    Returns
    -------
    str
        Canonical JSON of the class and parameters of every step.

    Raises
    ------
    ValueError
        If a step has a parameter whose value cannot be described
        deterministically (a function, an arbitrary object), so the cache
        could not tell two settings apart.
    """
    if preprocessing is None:
        return "null"
    try:
        return json.dumps(_canonical(preprocessing, "preprocessing"), sort_keys=True)
    except TypeError as exc:
        raise ValueError(
            "cache=<folder> needs preprocessing whose steps are described by "
            "their parameters (get_params or plain attributes: numbers, "
            f"strings, arrays, lists, nested steps); {exc} cannot be keyed. "
            "Use cache=False or cache=True (in memory) with this preprocessing."
        ) from None


# ------------------------------------------------------------------ cache


class _Damaged(Exception):
    pass


class VolumeCache:
    """One cache folder: keys, validated reads and atomic writes.

    Parameters
    ----------
    folder : str or path-like
        Created (with its parents) if it does not exist.
    """

    def __init__(self, folder):
        if isinstance(folder, bytes):
            folder = os.fsdecode(folder)
        if not isinstance(folder, str | os.PathLike):
            raise TypeError(
                "cache must be False, True or a folder (str or path-like) for "
                f"the on-disk cache; got {type(folder).__name__}."
            )
        folder = os.path.abspath(os.fspath(folder))
        if not folder or os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(
                f"cache={folder!r}: the on-disk cache needs a folder, and this "
                "path exists but is not a folder."
            )
        try:
            os.makedirs(os.path.join(folder, f"v{FORMAT_VERSION}"), exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"cache={folder!r}: could not create the cache folder "
                f"({exc.strerror or exc})."
            ) from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"cache={folder!r}: the cache folder is not writable.")
        self.folder = folder
        self._warned_write = False

    def __repr__(self):
        return f"VolumeCache({self.folder!r})"

    def key(self, source, fingerprint, dtype, expected_ndim):
        """Hex key of one source under one preprocessing and dtype."""
        from .. import __version__

        parts = [
            f"format={FORMAT_VERSION}",
            f"library={__version__}",
            f"source={source_hash(source)}",
            f"dtype={np.dtype(dtype).str}",
            f"expected_ndim={int(expected_ndim)}",
            f"preprocessing={fingerprint}",
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def path(self, key):
        return os.path.join(self.folder, f"v{FORMAT_VERSION}", key[:2], key + ".npy")

    # -------------------------------------------------------------- read

    def read(self, key, dtype):
        """The cached volume of ``key`` (a new array), or None.

        None when there is no file, or when the file was damaged (a
        :class:`CacheWarning` then names it; the caller rebuilds it).
        """
        path = self.path(key)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(f"could not open cache file {path} ({exc}); reading the source.")
            return None
        with fh:
            try:
                return self._read_open(fh, path, key, np.dtype(dtype))
            except _Damaged as exc:
                reason = str(exc)
            except (ValueError, OSError, EOFError) as exc:
                reason = f"unreadable ({str(exc).strip() or type(exc).__name__})"
        warnings.warn(
            f"cache file {path} is damaged: {reason}; rebuilding it from the source.",
            CacheWarning,
            stacklevel=4,
        )
        return None

    def _read_open(self, fh, path, key, dtype):
        st = os.fstat(fh.fileno())
        version = npy_format.read_magic(fh)
        if version != (1, 0):
            raise _Damaged(f"npy format version {version}, expected (1, 0)")
        shape, fortran, stored = npy_format.read_array_header_1_0(fh)
        if stored != dtype:
            raise _Damaged(f"dtype {stored}, expected {dtype}")
        if fortran or len(shape) != 4 or any(s < 1 for s in shape):
            raise _Damaged(f"shape {shape} (fortran order: {fortran})")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > MAX_VOLUME_BYTES:
            raise _Damaged(f"declares {nbytes} bytes, more than {MAX_VOLUME_BYTES}")
        offset = fh.tell()
        if st.st_size != offset + nbytes + _TRAILER:
            raise _Damaged(
                f"{st.st_size} bytes, expected {offset + nbytes + _TRAILER} "
                "(truncated or extended)"
            )
        volume = np.empty(shape, dtype=dtype)
        if fh.readinto(memoryview(volume).cast("B")) != nbytes:
            raise _Damaged("short read")
        trailer = fh.read(_TRAILER)
        if trailer[: len(_MAGIC)] != _MAGIC:
            raise _Damaged("no cache trailer")
        if trailer[len(_MAGIC) : len(_MAGIC) + _DIGEST] != bytes.fromhex(key):
            raise _Damaged("it holds another key")
        signature = (path, _stat_signature(st))
        if not _verified.get(signature):
            digest = hashlib.blake2b(volume.data, digest_size=_DIGEST).digest()
            if digest != trailer[len(_MAGIC) + _DIGEST :]:
                raise _Damaged("its data do not match their checksum")
            if not np.isfinite(volume).all():
                raise _Damaged("non-finite values")
            _remember(_verified, signature, True)
        return volume

    # ------------------------------------------------------------- write

    def write(self, key, volume):
        """Store ``volume`` under ``key`` atomically; failures only warn."""
        volume = np.ascontiguousarray(volume)
        path = self.path(key)
        folder = os.path.dirname(path)
        tmp = None
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=folder)
            with os.fdopen(fd, "wb") as fh:
                npy_format.write_array(fh, volume, version=(1, 0), allow_pickle=False)
                fh.write(_MAGIC)
                fh.write(bytes.fromhex(key))
                fh.write(hashlib.blake2b(volume.data, digest_size=_DIGEST).digest())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            if not os.path.isfile(path):  # e.g. another writer won on Windows
                self._warn(
                    f"could not write cache file {path} ({exc.strerror or exc}); "
                    "volumes are read from their sources."
                )
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _warn(self, message):
        if not self._warned_write:
            self._warned_write = True
            warnings.warn(message, CacheWarning, stacklevel=5)
