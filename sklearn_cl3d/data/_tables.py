"""Paths and metadata from the tables users keep: CSV/TSV files and BIDS.

:func:`read_table` reads a CSV or TSV file (or takes a DataFrame) with one
column of image paths; :func:`read_bids` reads the images of a BIDS dataset
with its ``participants.tsv``. Both return the image paths and a metadata
frame row by row, ready for ``est.fit(paths, meta["age"])``.

BIDS is read by a small built-in reader of the common layout, not by pybids:
pybids brings SQLAlchemy, a formula library and a database index of the whole
dataset, for features (derivatives, queries) that choosing one kind of image
per subject does not need. JSON sidecars are read with BIDS' inheritance
principle (:mod:`._sidecars`).

Tables are data: they are parsed by pandas' CSV parser into strings and
numbers only, never evaluated.
"""

from __future__ import annotations

import os
import re
import warnings

from ._sidecars import SidecarReader

__all__ = ["read_bids", "read_table"]

_BIDS_NA = ["n/a", "N/A", ""]
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")
_LABEL = re.compile(r"^[a-zA-Z0-9]+$")
_MAX_LISTED = 5


def _pandas():
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading tables needs pandas: pip install 'sklearn-cl3d[tables]' "
            "(or pip install pandas)."
        ) from exc
    return pd


def _listed(items):
    items = list(items)
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _read_delimited(path, sep, pd, name):
    """A CSV/TSV file as a DataFrame of strings and numbers."""
    try:
        return pd.read_csv(
            path, sep=sep, na_values=_BIDS_NA, keep_default_na=True, engine="c"
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{name} {path} is empty (no header line).") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"could not read {name} {path}: {exc}") from exc


def _separator(path):
    lower = path.lower()
    if lower.endswith((".tsv", ".tab", ".tsv.gz")):
        return "\t"
    if lower.endswith((".csv", ".csv.gz")):
        return ","
    raise ValueError(
        f"table {path!r} must be a .csv or .tsv file (the extension chooses the "
        "separator), or a pandas DataFrame."
    )


def read_table(table, path_column="path", *, root=None):
    """Read image paths and their metadata from a CSV/TSV table or DataFrame.

    Parameters
    ----------
    table : str, path-like or pandas.DataFrame
        A ``.csv`` (comma-separated) or ``.tsv`` (tab-separated) file with a
        header line, or a DataFrame. One row per image; ``n/a`` and empty
        cells are missing values.
    path_column : str, default="path"
        The column holding the image paths: ``.nii``, ``.nii.gz``, ``.nrrd``,
        ``.npy`` files or folders holding one DICOM series.
    root : str or path-like, default=None
        Folder that relative paths are relative to. None: the table's folder
        for a file, the current folder for a DataFrame. Absolute paths are
        kept.

    Returns
    -------
    paths : list of str
        The image paths, resolved against ``root``, in the table's order.
    metadata : pandas.DataFrame
        The table, with a fresh ``RangeIndex`` and the path column holding
        the resolved paths (``metadata[path_column].tolist() == paths``).

    Raises
    ------
    TypeError
        If ``table`` is not a path or a DataFrame, or ``path_column`` is not a
        string.
    FileNotFoundError
        If the table file does not exist.
    ValueError
        If the table cannot be parsed, has no rows, has no ``path_column``
        (the message lists the columns), or a row has an empty or non-text
        path or names an image that does not exist (the message gives the
        line of the file, or the row of the DataFrame, and the path).
    ImportError
        If pandas is not installed (the ``tables`` extra).

    See Also
    --------
    read_bids : Images and participants of a BIDS dataset.
    expand_paths : The sorted images of a folder or a glob pattern.

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel as nib, numpy as np
    >>> from sklearn_cl3d.data import read_table
    >>> folder = tempfile.mkdtemp()
    >>> img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    >>> for name in ("a.nii.gz", "b.nii.gz"):
    ...     nib.save(img, os.path.join(folder, name))
    >>> with open(os.path.join(folder, "cohort.csv"), "w") as fh:
    ...     _ = fh.write("path,age,diagnosis\\na.nii.gz,61.5,1\\nb.nii.gz,47,0\\n")
    >>> paths, meta = read_table(os.path.join(folder, "cohort.csv"))
    >>> [os.path.basename(p) for p in paths]
    ['a.nii.gz', 'b.nii.gz']
    >>> meta["age"].tolist()
    [61.5, 47.0]
    """
    pd = _pandas()
    if not isinstance(path_column, str):
        raise TypeError(
            f"path_column must be a column name (str); got "
            f"{type(path_column).__name__}."
        )
    if isinstance(table, pd.DataFrame):
        frame = table.copy()
        base = os.getcwd() if root is None else os.fspath(root)

        def where(i):
            return f"row {i} (index {frame.index[i]!r}) of the DataFrame"

    elif isinstance(table, str | os.PathLike):
        path = os.fspath(table)
        sep = _separator(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such table file: {path}")
        frame = _read_delimited(path, sep, pd, "table")
        base = os.path.dirname(os.path.abspath(path)) if root is None else root
        base = os.fspath(base)

        def where(i):
            return f"line {i + 2} of {path}"

    else:
        raise TypeError(
            "table must be a path to a .csv/.tsv file or a pandas DataFrame; got "
            f"{type(table).__name__}."
        )
    if root is not None and not os.path.isdir(base):
        raise ValueError(f"root {base!r} is not a folder.")
    if path_column not in frame.columns:
        raise ValueError(
            f"the table has no column {path_column!r} (path_column); its columns "
            f"are {[str(c) for c in frame.columns]}."
        )
    if len(frame) == 0:
        raise ValueError("the table has no rows (no image).")
    paths, missing = [], []
    for i, value in enumerate(frame[path_column].tolist()):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            shown = "an empty cell" if _is_missing(value) else repr(value)
            raise ValueError(
                f"{where(i)}: column {path_column!r} holds {shown}, not the path "
                "of an image."
            )
        resolved = os.path.normpath(os.path.join(base, value.strip()))
        if not os.path.exists(resolved):
            missing.append(f"{where(i)}: {resolved}")
        paths.append(resolved)
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of column {path_column!r} do not exist: "
            f"{_listed(missing)}."
        )
    frame = frame.reset_index(drop=True)
    frame[path_column] = paths
    return paths, frame


def _is_missing(value):
    return value is None or (isinstance(value, float) and value != value)


def _session_labels(session):
    if session is None:
        return None
    items = [session] if isinstance(session, str) else session
    try:
        items = list(items)
    except TypeError:
        raise TypeError(
            f"session must be a label (str), a list of labels or None; got "
            f"{type(session).__name__}."
        ) from None
    labels = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f"session labels must be strings (e.g. '01'); got {item!r}."
            )
        label = item[4:] if item.startswith("ses-") else item
        if not _LABEL.match(label):
            raise ValueError(
                f"session label {item!r} is not a BIDS label (letters and digits)."
            )
        labels.append(label)
    if not labels:
        raise ValueError("session is an empty list: give at least one label.")
    return labels


def _parse_name(name, suffix, extensions):
    """BIDS entities of a file name, or None if it is not ``*_<suffix><ext>``."""
    lower = name.lower()
    ext = next((e for e in extensions if lower.endswith(e.lower())), None)
    if ext is None or name.startswith("."):
        return None
    parts = name[: len(name) - len(ext)].split("_")
    if len(parts) < 2 or parts[-1] != suffix:
        return None
    entities = {}
    for part in parts[:-1]:
        match = _ENTITY.match(part)
        if match is None:
            return None
        entities[match.group(1)] = match.group(2)
    return entities


def _subject_dirs(root):
    return sorted(
        n
        for n in os.listdir(root)
        if n.startswith("sub-") and os.path.isdir(os.path.join(root, n))
    )


def _check_bids_args(suffix, datatype, extensions, entities):
    for value, name in ((suffix, "suffix"), (datatype, "datatype")):
        if not isinstance(value, str) or not _LABEL.match(value):
            raise ValueError(
                f"{name} must be a BIDS {name} such as "
                f"{'T1w' if name == 'suffix' else 'anat'}; got {value!r}."
            )
    if isinstance(extensions, str):
        extensions = (extensions,)
    extensions = tuple(extensions)
    if not extensions or not all(
        isinstance(e, str) and e.startswith(".") for e in extensions
    ):
        raise ValueError(
            f"extensions must be file extensions such as ('.nii.gz', '.nii'); "
            f"got {extensions!r}."
        )
    entities = dict(entities or {})
    for key, value in entities.items():
        if not isinstance(key, str) or not _LABEL.match(key):
            raise ValueError(
                f"entity names must be BIDS keys (e.g. 'acq'); got {key!r}."
            )
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise TypeError(
                f"the value of entity {key!r} must be a label (str or int); got "
                f"{value!r}."
            )
    # longest first: '.nii.gz' before '.nii'
    return sorted(extensions, key=len, reverse=True), entities


def _entity_matches(found, wanted):
    for key, value in wanted.items():
        have = found.get(key)
        if have is None:
            return False
        if isinstance(value, int) or (have.isdigit() and str(value).isdigit()):
            if not have.isdigit() or int(have) != int(value):
                return False
        elif have != value:
            return False
    return True


def _join_sessions(root, frame, pd):
    """Join each subject's ``sub-X/sub-X_sessions.tsv`` on the session."""
    tables = []
    for subject in sorted(set(frame["participant_id"])):
        path = os.path.join(root, subject, f"{subject}_sessions.tsv")
        if not os.path.isfile(path):
            continue
        table = _read_delimited(path, "\t", pd, "sessions file")
        if "session_id" not in table.columns:
            raise ValueError(
                f"{path} has no session_id column; its columns are "
                f"{[str(c) for c in table.columns]}."
            )
        ids = table["session_id"].astype(str)
        if ids.duplicated().any():
            raise ValueError(
                f"{path} lists session(s) more than once: "
                f"{_listed(sorted(set(ids[ids.duplicated()])))}."
            )
        table = table.drop(columns=["session_id"])
        table.insert(0, "session", [i[4:] if i.startswith("ses-") else i for i in ids])
        table.insert(0, "participant_id", subject)
        tables.append(table)
    if not tables:
        return frame
    sessions = pd.concat(tables, ignore_index=True)
    keys = ("participant_id", "session")
    clashes = [c for c in sessions.columns if c in frame.columns and c not in keys]
    sessions = sessions.rename(columns={c: f"{c}_session" for c in clashes})
    return frame.merge(sessions, on=list(keys), how="left", validate="many_to_one")


def read_bids(
    root,
    suffix="T1w",
    session=None,
    *,
    datatype="anat",
    extensions=(".nii.gz", ".nii"),
    entities=None,
    sidecars=True,
):
    """Read the images of a BIDS dataset, one row per image, with participants.

    Scans ``root/sub-*/[ses-*/]<datatype>/`` for files named
    ``sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix><extension>``
    and joins the columns of ``root/participants.tsv`` on ``participant_id``.

    This is a light built-in reader of the common layout, not pybids (a
    heavy dependency: SQLAlchemy, a formula library and a database index of
    the whole dataset). It reads the JSON sidecars with BIDS' inheritance
    principle (see ``sidecars``), but not ``scans.tsv`` files or derivatives
    (unless ``root`` is a derivative dataset), and does not honour
    ``.bidsignore``; for those, select the images with pybids and give their
    paths to :func:`read_table`.

    Parameters
    ----------
    root : str or path-like
        The dataset's root folder (with ``dataset_description.json``,
        ``participants.tsv`` and the ``sub-*`` folders).
    suffix : str, default="T1w"
        The BIDS suffix of the images, e.g. ``"T1w"``, ``"T2w"``,
        ``"FLAIR"``.
    session : str, list of str or None, default=None
        Session label(s) to keep, with or without ``ses-`` (``"01"``,
        ``"ses-01"``). None keeps every session (and subjects without
        sessions).
    datatype : str, default="anat"
        The data-type folder the images are in.
    extensions : tuple of str, default=(".nii.gz", ".nii")
        File extensions to match.
    entities : dict, default=None
        Further entities the file name must have, e.g. ``{"acq": "mprage"}``
        or ``{"run": 1}`` (run indices compare as numbers).
    sidecars : bool, default=True
        Read the JSON sidecars of each image as columns (e.g.
        ``RepetitionTime``, ``MagneticFieldStrength``). A sidecar
        ``[<entities>_]<suffix>.json`` applies to an image when its entities
        are among the image's; it may sit in the image's folder, the
        session's, the subject's or the dataset's root, and a deeper file's
        fields override a shallower one's (BIDS' inheritance principle, e.g.
        a root ``T1w.json`` for the whole dataset and
        ``sub-01/anat/sub-01_T1w.json`` for one subject); in one folder, a
        file with more entities overrides one with fewer. Lists and objects
        stay Python lists and dicts; an image without a field gets a missing
        value.

    Returns
    -------
    paths : list of str
        The matching images, sorted by subject, session and file name.
    metadata : pandas.DataFrame
        One row per image: ``participant_id``, ``session`` (when the dataset
        has sessions), one column per further entity found in the file names
        (``acq``, ``run``, ...), ``path``, the sidecar fields (with
        ``sidecars=True``, sorted by name), then the columns of each
        subject's ``sub-<label>_sessions.tsv`` (joined on the session; e.g.
        the age at each session), then those of ``participants.tsv``.
        ``n/a`` is a missing value; a column whose name is already taken
        gets the suffix ``_sidecar``, ``_session`` or ``_participant``.

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    ValueError
        If ``root`` has no ``sub-*`` folder, no image matches (the message
        says what was looked for), an image is a broken link (e.g. a DataLad
        file whose content was not fetched), ``participants.tsv`` (or a
        ``sessions.tsv``) has no ``participant_id`` (``session_id``) column
        or lists a participant (session) twice, a sidecar is not a JSON
        object or two sidecars in one folder apply to one image in no
        defined order, or a parameter is malformed.
    TypeError
        If ``session`` or an entity value has the wrong type.
    ImportError
        If pandas is not installed (the ``tables`` extra).

    Warns
    -----
    UserWarning
        If ``dataset_description.json`` is missing (the folder may not be a
        BIDS root), or images belong to subjects missing from
        ``participants.tsv`` (their participant columns are then missing
        values).

    See Also
    --------
    read_table : Paths and metadata from a CSV/TSV table.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn_cl3d.data import read_bids
    >>> from sklearn_cl3d.datasets import make_lung_cohort
    >>> root = tempfile.mkdtemp()
    >>> _ = make_lung_cohort(2, shape=(16, 16, 16), spacing=20.0, random_state=0,
    ...                      return_paths=True, out_dir=root)
    >>> paths, meta = read_bids(root, suffix="ct")
    >>> meta["participant_id"].tolist()
    ['sub-0001', 'sub-0002']
    >>> "fev1" in meta.columns
    True
    """
    pd = _pandas()
    if not isinstance(root, str | os.PathLike):
        raise TypeError(
            f"root must be the path of a BIDS folder; got {type(root).__name__}."
        )
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such BIDS folder: {root}")
    extensions, entities = _check_bids_args(suffix, datatype, extensions, entities)
    if not isinstance(sidecars, bool):
        raise TypeError(f"sidecars must be True or False; got {sidecars!r}.")
    reader = SidecarReader(root, suffix) if sidecars else None
    sessions = _session_labels(session)
    subjects = _subject_dirs(root)
    if not subjects:
        raise ValueError(
            f"{root} has no sub-* folder: it is not the root of a BIDS dataset."
        )
    if not os.path.isfile(os.path.join(root, "dataset_description.json")):
        warnings.warn(
            f"{root} has no dataset_description.json: it may not be the root of a "
            "BIDS dataset; reading its sub-* folders anyway.",
            UserWarning,
            stacklevel=2,
        )

    rows, broken = [], []
    for subject in subjects:
        folders = [(None, os.path.join(root, subject, datatype))]
        folders += [
            (name[4:], os.path.join(root, subject, name, datatype))
            for name in sorted(os.listdir(os.path.join(root, subject)))
            if name.startswith("ses-")
            and os.path.isdir(os.path.join(root, subject, name))
        ]
        for ses, folder in folders:
            if sessions is not None and ses not in sessions:
                continue
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                found = _parse_name(name, suffix, extensions)
                if found is None or found.get("sub") != subject[4:]:
                    continue
                if found.get("ses") != ses or not _entity_matches(found, entities):
                    continue
                path = os.path.join(folder, name)
                if not os.path.exists(path):
                    broken.append(path)
                    continue
                row = {"participant_id": subject, "session": ses, **found, "path": path}
                if reader is not None:
                    fields = reader.metadata(folder, subject, ses, found)
                    row["_sidecar"] = fields
                rows.append(row)
    if broken:
        raise ValueError(
            f"{len(broken)} image(s) are broken links (a DataLad/git-annex file "
            f"whose content was not fetched?): {_listed(broken)}."
        )
    if not rows:
        where = f"{datatype}/ of {len(subjects)} subject(s)"
        if sessions is not None:
            where += f", session(s) {sessions}"
        extra = f" with entities {entities}" if entities else ""
        raise ValueError(
            f"no image *_{suffix}{'|'.join(extensions)}{extra} in {where} under {root}."
        )
    fields = [row.pop("_sidecar", {}) for row in rows]
    frame = pd.DataFrame(rows).drop(columns=["sub", "ses"], errors="ignore")
    if frame["session"].isna().all():
        frame = frame.drop(columns=["session"])
    ordered = (
        ["participant_id"]
        + [c for c in frame.columns if c not in ("participant_id", "path")]
        + ["path"]
    )
    frame = frame[ordered]
    keys = sorted({k for f in fields for k in f})
    if keys:
        taken = set(frame.columns)
        columns = {k: (f"{k}_sidecar" if k in taken else k) for k in keys}
        values = {columns[k]: [f.get(k) for f in fields] for k in keys}
        frame = pd.concat([frame, pd.DataFrame(values, index=frame.index)], axis=1)
    if "session" in frame.columns:
        frame = _join_sessions(root, frame, pd)

    participants_file = os.path.join(root, "participants.tsv")
    if os.path.isfile(participants_file):
        participants = _read_delimited(participants_file, "\t", pd, "participants file")
        if "participant_id" not in participants.columns:
            raise ValueError(
                f"{participants_file} has no participant_id column; its columns are "
                f"{[str(c) for c in participants.columns]}."
            )
        participants["participant_id"] = participants["participant_id"].astype(str)
        duplicated = participants["participant_id"][
            participants["participant_id"].duplicated()
        ]
        if len(duplicated):
            raise ValueError(
                f"{participants_file} lists participant(s) more than once: "
                f"{_listed(sorted(set(duplicated)))}."
            )
        clashes = [
            c
            for c in participants.columns
            if c in frame.columns and c != "participant_id"
        ]
        participants = participants.rename(
            columns={c: f"{c}_participant" for c in clashes}
        )
        unknown = sorted(
            set(frame["participant_id"]) - set(participants["participant_id"])
        )
        if unknown:
            warnings.warn(
                f"{len(unknown)} subject(s) with images are not in "
                f"{participants_file}: {_listed(unknown)}; their participant "
                "columns are missing values.",
                UserWarning,
                stacklevel=2,
            )
        frame = frame.merge(
            participants, on="participant_id", how="left", validate="many_to_one"
        )
    return frame["path"].tolist(), frame
