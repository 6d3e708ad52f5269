"""DICOMDIR: its series listed from the index, each read as one volume."""

import os
import shutil

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed")

from sklearn_cl3d.data import dicomdir_series, read_dicom_series  # noqa: E402

ROOT = os.path.join(
    os.path.dirname(pydicom.data.__file__), "test_files", "dicomdirtests"
)
if not os.path.isfile(os.path.join(ROOT, "DICOMDIR")):  # pragma: no cover
    pytest.skip(
        "pydicom's DICOMDIR test files are not installed", allow_module_level=True
    )


def _naive_index(path):
    """Reference: walk the DICOMDIR's records by hand (PATIENT > STUDY >
    SERIES > IMAGE, ReferencedFileID relative to the DICOMDIR's folder)."""
    ds = pydicom.dcmread(path)
    by_offset = {r.seq_item_tell: r for r in ds.DirectoryRecordSequence}
    out = {}

    def children(record):
        offset = record.OffsetOfReferencedLowerLevelDirectoryEntity
        while offset:
            child = by_offset[offset]
            yield child
            offset = child.OffsetOfTheNextDirectoryRecord

    top = by_offset[ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity]
    record = top
    patients = []
    while True:
        patients.append(record)
        if not record.OffsetOfTheNextDirectoryRecord:
            break
        record = by_offset[record.OffsetOfTheNextDirectoryRecord]
    for patient in patients:
        for study in children(patient):
            for series in children(study):
                for image in children(series):
                    if image.DirectoryRecordType != "IMAGE":
                        continue
                    ref = image.ReferencedFileID
                    parts = [ref] if isinstance(ref, str) else list(ref)
                    out.setdefault(series.SeriesInstanceUID, []).append(
                        os.path.join(os.path.dirname(path), *parts)
                    )
    return out


def test_dicomdir_lists_every_series_with_its_files():
    series = dicomdir_series(ROOT)
    assert series == dicomdir_series(os.path.join(ROOT, "DICOMDIR"))
    naive = _naive_index(os.path.join(ROOT, "DICOMDIR"))
    assert {s["series_uid"] for s in series} == set(naive)
    for s in series:
        assert sorted(s["files"]) == sorted(
            map(os.path.abspath, naive[s["series_uid"]])
        )
        assert all(os.path.isfile(f) for f in s["files"])
        for f in s["files"][:1]:  # the index agrees with the file's header
            header = pydicom.dcmread(f, stop_before_pixels=True)
            assert header.SeriesInstanceUID == s["series_uid"]
            assert header.Modality == s["modality"]
            assert header.PatientID == s["patient_id"]
    assert sum(len(s["files"]) for s in series) == 31
    assert {s["modality"] for s in series} == {"CR", "CT", "MR"}


def test_a_dicomdir_series_reads_as_its_folder_does():
    ct = [s for s in dicomdir_series(ROOT) if s["modality"] == "CT"]
    five = next(s for s in ct if len(s["files"]) == 5)
    data, affine = read_dicom_series(five["files"])
    folder = os.path.dirname(five["files"][0])  # 98892001/CT5N holds only it
    ref_data, ref_affine = read_dicom_series(folder)
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_allclose(affine, ref_affine)
    # the order of the list does not matter: slices are sorted by position
    again, _ = read_dicom_series(list(reversed(five["files"])))
    np.testing.assert_array_equal(again, data)


def test_a_dicomdir_in_place_of_a_series_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="is a DICOMDIR.*dicomdir_series"):
        read_dicom_series(os.path.join(ROOT, "DICOMDIR"))
    # a file-set root: only the DICOMDIR, the images in subfolders
    root = tmp_path / "cd"
    root.mkdir()
    shutil.copy(os.path.join(ROOT, "DICOMDIR"), root / "DICOMDIR")
    (root / "README.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match="DICOMDIR.*dicomdir_series"):
        read_dicom_series(root)
    with pytest.raises(ValueError, match="is a DICOMDIR"):
        read_dicom_series([os.path.join(ROOT, "DICOMDIR")])


def test_dicomdir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no DICOMDIR"):
        dicomdir_series(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such DICOMDIR"):
        dicomdir_series(tmp_path / "DICOMDIR")
    bad = tmp_path / "DICOMDIR"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(ValueError, match="not a readable DICOMDIR"):
        dicomdir_series(bad)
    with pytest.raises(ValueError, match="empty"):
        read_dicom_series([])
    with pytest.raises(FileNotFoundError, match="no such DICOM file"):
        read_dicom_series([tmp_path / "missing.dcm"])
