"""read_bids reads JSON sidecars as columns, with BIDS' inheritance principle."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pandas")

from sklearn_cl3d.data import read_bids  # noqa: E402


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    vol = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)


def _json(path, fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    _json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.9.0"})
    (root / "participants.tsv").write_text(
        "participant_id\tage\nsub-01\t30\nsub-02\t40\nsub-03\t50\n"
    )
    for rel in (
        "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
        "sub-01/ses-02/anat/sub-01_ses-02_acq-fast_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_run-01_T1w.nii.gz",
        "sub-03/anat/sub-03_run-02_T1w.nii.gz",
        "sub-03/anat/sub-03_T2w.nii.gz",
    ):
        _image(root / rel)
    # the whole dataset, then more specific files overriding some fields
    _json(
        root / "T1w.json",
        {"MagneticFieldStrength": 3, "RepetitionTime": 2.3, "Manufacturer": "A"},
    )
    _json(root / "acq-fast_T1w.json", {"RepetitionTime": 1.1})
    _json(root / "T2w.json", {"RepetitionTime": 9.9, "EchoTime": 0.1})
    _json(root / "sub-01" / "sub-01_T1w.json", {"Manufacturer": "B"})
    _json(
        root / "sub-01/ses-02/anat/sub-01_ses-02_acq-fast_T1w.json",
        {"FlipAngle": 8, "SliceTiming": [0.0, 0.5]},
    )
    _json(root / "sub-03/anat/sub-03_run-2_T1w.json", {"FlipAngle": 12})
    return root


def _naive(root, image):
    """Reference: every *.json along the path whose entities the image has
    and whose suffix is the image's, shallow to deep, and within a folder
    from the fewest entities to the most."""
    rel = os.path.relpath(image, root).split(os.sep)
    stem = rel[-1].split(".")[0].split("_")
    mine = dict(p.split("-") for p in stem[:-1])
    merged = {}
    for depth in range(len(rel)):
        folder = os.path.join(root, *rel[:depth])
        for name in sorted(os.listdir(folder), key=lambda n: n.count("-")):
            parts = name[:-5].split("_") if name.endswith(".json") else [""]
            if parts[-1] != stem[-1]:
                continue
            ents = dict(p.split("-") for p in parts[:-1])
            if all(k in mine and int(mine[k]) == int(v) if v.isdigit()
                   else mine.get(k) == v for k, v in ents.items()):  # fmt: skip
                merged.update(json.loads(open(os.path.join(folder, name)).read()))
    return merged


def test_sidecars_are_columns_with_inheritance(dataset):
    paths, meta = read_bids(dataset)
    names = [os.path.basename(p) for p in paths]
    assert names == [
        "sub-01_ses-01_T1w.nii.gz",
        "sub-01_ses-02_acq-fast_T1w.nii.gz",
        "sub-02_T1w.nii.gz",
        "sub-03_run-01_T1w.nii.gz",
        "sub-03_run-02_T1w.nii.gz",
    ]
    # the root file for all; acq-fast only for the fast image; the subject's
    # file for sub-01 only; run-2 matches run-02 (indices are numbers)
    assert meta["RepetitionTime"].tolist() == [2.3, 1.1, 2.3, 2.3, 2.3]
    assert meta["Manufacturer"].tolist() == ["B", "B", "A", "A", "A"]
    assert meta["MagneticFieldStrength"].tolist() == [3] * 5
    np.testing.assert_array_equal(meta["FlipAngle"], [np.nan, 8, np.nan, np.nan, 12])
    assert meta["SliceTiming"].tolist()[1] == [0.0, 0.5]
    assert "EchoTime" not in meta.columns  # T2w's sidecar is not a T1w's
    for path, (_, row) in zip(paths, meta.iterrows()):
        for key, value in _naive(str(dataset), path).items():
            assert row[key] == value, (path, key)
    # sidecar columns sit between path and the participants' columns
    cols = list(meta.columns)
    assert cols.index("path") < cols.index("FlipAngle") < cols.index("age")

    t2, t2_meta = read_bids(dataset, suffix="T2w")
    assert t2_meta["RepetitionTime"].tolist() == [9.9]
    assert t2_meta["EchoTime"].tolist() == [0.1]


def test_sidecars_false_and_name_clashes(dataset):
    _, plain = read_bids(dataset, sidecars=False)
    assert "RepetitionTime" not in plain.columns
    _json(dataset / "T1w.json", {"run": "x", "age": 7})
    _, meta = read_bids(dataset)
    # an entity column keeps its name; the tables joined after the sidecars
    # get their suffix, as on any clash
    assert meta["run_sidecar"].tolist() == ["x"] * 5
    assert meta["run"].tolist()[3:] == ["01", "02"]
    assert meta["age"].tolist() == [7] * 5
    assert meta["age_participant"].tolist() == [30, 30, 40, 50, 50]
    with pytest.raises(TypeError, match="sidecars"):
        read_bids(dataset, sidecars="yes")


def test_sidecar_errors_name_the_file(dataset):
    bad = dataset / "sub-02/anat/sub-02_T1w.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"sub-02_T1w\.json is not valid JSON"):
        read_bids(dataset)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON list, not an object"):
        read_bids(dataset)
    bad.unlink()
    # two sidecars in one folder, neither more specific: no defined order
    anat = dataset / "sub-01/ses-02/anat"
    _json(anat / "sub-01_acq-fast_T1w.json", {"FlipAngle": 1})
    _json(anat / "sub-01_ses-02_T1w.json", {"FlipAngle": 2})
    with pytest.raises(
        ValueError,
        match=r"sub-01_acq-fast_T1w\.json and sub-01_ses-02_T1w\.json .*neither",
    ):
        read_bids(dataset)
