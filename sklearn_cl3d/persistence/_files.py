"""Crash-safe file and folder writes.

Every change on disk goes through a few primitives (:func:`os.replace`,
:func:`os.write`, :func:`os.mkdir`, ...) in an order that leaves either the
old content or the new one, complete, whatever instant the process is
killed at:

- a single file is written to a temporary sibling, flushed to disk, then
  moved over the destination (:func:`atomic_write`);
- a folder is filled as a temporary sibling (its manifest last), then swapped
  in with two renames, the previous version kept until the new one is in
  place (:func:`replace_folder`); if a kill falls between the two renames,
  :func:`recover_folder` puts the complete version back;
- a folder's manifest (:mod:`._manifest`) lists each file's size and
  SHA-256, so a reader can tell a complete set of files from a damaged or
  mixed one.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from ._errors import PersistenceError
from ._manifest import MANIFEST_NAME, make_manifest, read_manifest, verify_file

try:  # advisory locks keep one process from cleaning up another's save
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = [
    "atomic_write",
    "commit_file",
    "discard_file",
    "recover_folder",
    "replace_folder",
    "stage_file",
    "write_new_file",
]

_CHUNK = 1 << 22
_TOKEN = re.compile(r"[0-9a-f]{16}")


# --------------------------------------------------------------- files


def write_new_file(path, data):
    """Create ``path`` (which must not exist) with ``data``, flushed to disk.

    The bytes go through :func:`os.write` in chunks and the file is synced
    with :func:`os.fsync` before it is closed. On any error the partial file
    is removed and the error propagates.

    Parameters
    ----------
    path : str or path-like
    data : bytes

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.bin")
    >>> write_new_file(p, b"abc")
    >>> open(p, "rb").read()
    b'abc'
    """
    path = os.fspath(path)
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    )
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_CHUNK])
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        discard_file(path)
        raise
    os.close(fd)


def fsync_folder(path):
    """Flush a folder's entries (renames, new files) to disk, where possible."""
    if os.name != "posix":
        return
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder
    finally:
        os.close(fd)


def stage_file(path, write, *, suffix=".tmp"):
    """Write ``path``'s future content to a new temporary sibling; return it.

    ``write(tmp_path)`` writes the content; the temporary file (named
    ``.<name>.<random>.tmp`` in the same folder) is then synced to disk.
    :func:`commit_file` moves it into place, :func:`discard_file` removes
    it. On error the temporary file is removed and the error propagates.

    Parameters
    ----------
    path : str or path-like
        Destination.
    write : callable
        ``write(tmp_path)`` writes the content to ``tmp_path``.
    suffix : str, default=".tmp"
        End of the temporary file's name.

    Returns
    -------
    tmp : str
        The temporary file.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> tmp = stage_file(os.path.join(d, "a.txt"), lambda p: open(p, "w").write("hi"))
    >>> commit_file(tmp, os.path.join(d, "a.txt"))
    >>> os.listdir(d)
    ['a.txt']
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory
    )
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        discard_file(tmp)
        raise
    return tmp


def commit_file(tmp, path):
    """Move a staged temporary file over ``path`` (atomic on one filesystem).

    Parameters
    ----------
    tmp : str or path-like
        From :func:`stage_file`.
    path : str or path-like
        Destination.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> tmp = stage_file(os.path.join(d, "a.txt"), lambda p: open(p, "w").write("1"))
    >>> commit_file(tmp, os.path.join(d, "a.txt"))
    >>> open(os.path.join(d, "a.txt")).read()
    '1'
    """
    os.replace(os.fspath(tmp), os.fspath(path))


def discard_file(tmp):
    """Remove a file, ignoring a missing one.

    Parameters
    ----------
    tmp : str or path-like

    Examples
    --------
    >>> import os, tempfile
    >>> tmp = stage_file(os.path.join(tempfile.mkdtemp(), "a"), lambda p: None)
    >>> discard_file(tmp)
    >>> discard_file(tmp)  # already gone: nothing happens
    >>> os.path.exists(tmp)
    False
    """
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)


def atomic_write(path, write):
    """Write a file through a temporary sibling and :func:`os.replace`.

    ``path`` is then either the old file or the complete new one, never a
    partial write. On error the temporary file is removed and the error
    propagates.

    Parameters
    ----------
    path : str or path-like
        Destination.
    write : callable
        ``write(tmp_path)`` writes the content to ``tmp_path``.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> d = tempfile.mkdtemp()
    >>> atomic_write(os.path.join(d, "a.txt"), lambda p: Path(p).write_text("hi"))
    >>> Path(d, "a.txt").read_text()
    'hi'
    """
    tmp = stage_file(path, write)
    try:
        commit_file(tmp, path)
    except BaseException:
        discard_file(tmp)
        raise


# -------------------------------------------------------------- folders


def _leftovers(path):
    """Temporary (``.<name>.tmp-*``) and previous (``.<name>.old-*``)
    versions of the folder ``path`` left by an interrupted save."""
    path = Path(path)
    tmp, old = [], []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return tmp, old
    for entry in entries:
        for kind, found in (("tmp", tmp), ("old", old)):
            prefix = f".{path.name}.{kind}-"
            if (
                entry.name.startswith(prefix)
                and _TOKEN.fullmatch(entry.name[len(prefix) :])
                and not entry.is_symlink()
            ):
                found.append(Path(entry.path))
    return tmp, old


def folder_is_complete(folder):
    """Whether ``folder`` has a readable manifest whose files all agree."""
    manifest_file = Path(folder) / MANIFEST_NAME
    try:
        manifest = read_manifest(manifest_file)
        for name in manifest["files"]:
            verify_file(folder, name, manifest, manifest_file)
    except PersistenceError:
        return False
    return True


def _created(folder):
    try:
        return float(read_manifest(Path(folder) / MANIFEST_NAME).get("created", 0))
    except (PersistenceError, TypeError, ValueError):
        return -math.inf


def _lock(folder):
    """An open descriptor holding an exclusive lock on ``folder`` (or None)."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _in_use(folder):
    """Whether another save holds the lock of ``folder``."""
    if fcntl is None:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the lock
    return False


def recover_folder(path, *, wait=10.0):
    """Finish or undo an interrupted :func:`replace_folder`; remove leftovers.

    If ``path`` is missing but a complete new version (``.<name>.tmp-*``,
    its manifest verified) or the previous version (``.<name>.old-*``) is
    there, it is moved back to ``path`` (the newest complete new version
    first). Then the other leftovers are removed. A leftover that a running
    save still holds (a lock on POSIX systems) is left alone; while
    ``path`` is missing because such a save is between its two renames,
    this waits up to ``wait`` seconds for it to finish.

    Parameters
    ----------
    path : path-like
        The folder.
    wait : float, default=10.0
        Seconds to wait for a running save.

    Returns
    -------
    bool
        Whether a version was moved back into place.
    """
    path = Path(path)
    deadline = time.monotonic() + wait
    while True:
        tmp, old = _leftovers(path)
        busy = {d for d in tmp if _in_use(d)}
        if busy and not os.path.lexists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
            continue
        break
    tmp = [d for d in tmp if d not in busy]
    if not tmp and not old:
        return False
    restored = False
    if not os.path.lexists(path):
        complete = sorted(
            (d for d in tmp if folder_is_complete(d)), key=_created, reverse=True
        )
        candidates = complete + sorted(old, key=_created, reverse=True)
        for candidate in candidates:
            try:
                os.replace(candidate, path)
            except OSError:
                continue
            fsync_folder(path.parent)
            restored = True
            break
    for leftover in tmp + old:
        if os.path.lexists(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
    return restored


def replace_folder(path, files):
    """Replace the folder ``path`` by one holding ``files``, crash-safely.

    The files are written into a new sibling ``.<name>.tmp-<random>`` (each
    synced; ``manifest.json`` with their sizes and SHA-256 last), then the
    current folder, if any, is renamed to ``.<name>.old-<random>``, the new
    one renamed to ``path``, and the old one removed. A kill at any instant
    leaves the old folder or the new one complete: at ``path``, or, between
    the two renames, as a sibling that :func:`recover_folder` (run by the
    next save or load) moves back. On an error the old folder is kept and
    the partial new one removed. Concurrent saves into one folder are not
    supported.

    Parameters
    ----------
    path : path-like
        The folder (its parent must exist).
    files : dict
        File name -> bytes, written in this order, then the manifest.
    """
    path = Path(path)
    parent = path.parent
    token = secrets.token_hex(8)
    tmp = parent / f".{path.name}.tmp-{token}"
    old = parent / f".{path.name}.old-{token}"
    os.mkdir(tmp)
    lock = None
    try:
        lock = _lock(tmp)
        for name, data in files.items():
            write_new_file(tmp / name, data)
        write_new_file(tmp / MANIFEST_NAME, make_manifest(files).encode("utf-8"))
        fsync_folder(tmp)
        moved_old = False
        if os.path.lexists(path):
            os.replace(path, old)
            moved_old = True
        try:
            os.replace(tmp, path)
        except BaseException:
            if moved_old:
                with contextlib.suppress(OSError):
                    os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    fsync_folder(parent)
    if moved_old:
        shutil.rmtree(old, ignore_errors=True)
