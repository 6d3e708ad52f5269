"""Data from disk as users keep it (issue 16, point 1): folders and glob
patterns as X, CSV/TSV tables, BIDS datasets, DICOM series, and NRRD files
checked against pynrrd. Real files only: nibabel's and pydicom's shipped test
images, and the BIDS trees the built-in generators write."""

import os
import re
import shutil
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from sklearn_cl3d import (
    FineTunedClassifier,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    YAwarePretrainer,
)
from sklearn_cl3d.baselines import VoxelProxyRegression
from sklearn_cl3d.data import (
    as_volume_dataset,
    expand_paths,
    is_volume_collection,
    load_volume,
    read_bids,
    read_nrrd,
    read_table,
)
from sklearn_cl3d.data._patches import VolumeSource
from sklearn_cl3d.datasets import make_lung_cohort

pd = pytest.importorskip("pandas")

ANATOMICAL = os.path.join(NIBABEL_DATA, "anatomical.nii")  # (33, 41, 25), >i2
STANDARD = os.path.join(NIBABEL_DATA, "standard.nii.gz")  # (4, 5, 7), uint8
EXAMPLE_4D = os.path.join(NIBABEL_DATA, "example4d.nii.gz")

TINY = dict(
    backbone="small3d",
    backbone__channels=(2, 4),
    hidden_dim=4,
    projection_dim=3,
    max_epochs=1,
    batch_size=4,
    device="cpu",
    random_state=0,
)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A folder of 4 copies of nibabel's anatomical.nii, plus distractors."""
    folder = tmp_path_factory.mktemp("scans")
    names = ["sub-03.nii", "sub-01.nii", "sub-04.nii", "sub-02.nii"]
    for name in names:
        shutil.copy(ANATOMICAL, folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._sub-01.nii").write_bytes(b"macOS resource fork")  # hidden
    (folder / "sub-05.nii.gz").mkdir()  # a folder with an image's name
    return folder, [str(folder / n) for n in sorted(names)]


# ------------------------------------------------------- folders and globs
def test_expand_paths_of_a_folder_and_a_pattern(scans):
    folder, paths = scans
    assert expand_paths(folder) == paths
    assert expand_paths(str(folder)) == paths
    assert expand_paths(str(folder / "sub-0[12]*")) == paths[:2]
    recursive = os.path.join(str(folder), "**", "sub-01.nii")
    assert expand_paths(recursive) == [paths[0]]
    X = np.zeros((2, 4, 4, 4))
    assert expand_paths(X) is X and expand_paths(paths) is paths
    assert is_volume_collection(str(folder / "*.nii"))
    assert is_volume_collection(folder)
    assert not is_volume_collection(paths[0])


def test_expand_paths_errors_name_the_folder_or_pattern(tmp_path, scans):
    with pytest.raises(ValueError, match=r"is a folder .* with no image in it"):
        expand_paths(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path)))):
        expand_paths(tmp_path)
    pattern = str(tmp_path / "*.nii.gz")
    with pytest.raises(ValueError, match=r"glob pattern .* matches nothing"):
        expand_paths(pattern)
    with pytest.raises(ValueError, match=r"1 match\(es\) are not images"):
        expand_paths(str(tmp_path / "*.txt"))
    with pytest.raises(ValueError, match=r"single path.*pass a list of paths"):
        expand_paths(scans[1][0])
    with pytest.raises(ValueError, match="no such file or folder exists"):
        expand_paths(str(tmp_path / "missing.nii"))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_folder_or_pattern_fits_like_the_list_of_its_files(scans):
    folder, paths = scans
    age = np.array([30.0, 40.0, 50.0, 60.0])
    ref = YAwarePretrainer(**TINY).fit(paths, age)
    Z = ref.transform(paths)
    for X in (folder, str(folder), str(folder / "sub-*.nii")):
        est = YAwarePretrainer(**TINY).fit(X, age)
        np.testing.assert_allclose(est.transform(X), Z, rtol=1e-5, atol=1e-6)
    simclr = SimCLRPretrainer(**TINY).fit(str(folder / "*.nii"))
    assert simclr.transform(folder).shape == (4, simclr.transform(paths).shape[1])
    assert as_volume_dataset(folder).X == paths
    assert len(VolumeSource(folder)) == 4
    # (identical copies: PCA warns of a zero total variance, filtered above)
    pred = VoxelProxyRegression(n_components=2).fit(folder, age).transform(folder)
    assert pred.shape[0] == 4


def test_a_folder_for_finetuning_and_global_local(scans):
    folder, paths = scans
    clf = FineTunedClassifier(
        backbone="small3d", backbone__channels=(2,), max_epochs=1, device="cpu"
    ).fit(folder, [0, 1, 0, 1])
    assert clf.predict(str(folder / "*.nii")).shape == (4,)
    gl = GlobalLocalPretrainer(
        channels=(4, 8, 8, 8),
        slice_size=32,
        n_decoder_blocks=1,
        hidden_dim=8,
        projection_dim=4,
        region_dim=4,
        max_epochs=1,
        device="cpu",
        random_state=0,
    ).fit(folder)
    assert len(gl.transform(str(folder / "sub-0[1-3].nii"))) == 3


# ------------------------------------------------------------- read_table
def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_table_csv_tsv_and_dataframe(tmp_path):
    for name in ("a.nii", "b.nii.gz"):
        shutil.copy(ANATOMICAL if name == "a.nii" else STANDARD, tmp_path / name)
    (tmp_path / "sub").mkdir()
    csv = _write(
        tmp_path / "sub" / "cohort.csv", "path,age\n../a.nii,61.5\n../b.nii.gz,47\n"
    )
    paths, meta = read_table(csv)
    assert paths == [str(tmp_path / "a.nii"), str(tmp_path / "b.nii.gz")]
    assert meta["path"].tolist() == paths
    assert meta["age"].tolist() == [61.5, 47.0]

    tsv = _write(tmp_path / "t.tsv", "scan\tdx\tsite\nb.nii.gz\t1\tn/a\n")
    paths, meta = read_table(tsv, path_column="scan")
    assert paths == [str(tmp_path / "b.nii.gz")] and meta["site"].isna().all()

    frame = pd.DataFrame(
        {"file": ["a.nii", str(tmp_path / "b.nii.gz")], "y": [0, 1]}, index=[7, 9]
    )
    paths, meta = read_table(frame, path_column="file", root=tmp_path)
    assert paths == [str(tmp_path / "a.nii"), str(tmp_path / "b.nii.gz")]
    assert list(meta.index) == [0, 1] and frame["file"].iloc[0] == "a.nii"
    # the paths load
    assert load_volume(paths[0])[0].shape == (1, 33, 41, 25)


def test_read_table_errors_name_the_row_column_and_file(tmp_path):
    shutil.copy(ANATOMICAL, tmp_path / "a.nii")
    csv = _write(tmp_path / "c.csv", "path,age\na.nii,1\nmissing.nii,2\n,3\n")
    with pytest.raises(
        ValueError, match=r"line 4 of .*c\.csv: column 'path' holds an empty cell"
    ):
        read_table(csv)
    csv = _write(tmp_path / "c.csv", "path,age\na.nii,1\nmissing.nii,2\n")
    message = (
        r"1 image\(s\) of column 'path' do not exist: line 3 of .*c\.csv: "
        r".*missing\.nii"
    )
    with pytest.raises(ValueError, match=message):
        read_table(csv)
    with pytest.raises(
        ValueError, match=r"no column 'scan' \(path_column\).*\['path', 'age'\]"
    ):
        read_table(csv, path_column="scan")
    with pytest.raises(ValueError, match="no rows"):
        read_table(_write(tmp_path / "e.csv", "path,age\n"))
    with pytest.raises(ValueError, match="is empty"):
        read_table(_write(tmp_path / "z.csv", ""))
    with pytest.raises(ValueError, match=r"must be a \.csv or \.tsv file"):
        read_table(tmp_path / "c.xlsx")
    with pytest.raises(FileNotFoundError, match="no such table file"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(TypeError, match="table must be a path"):
        read_table([["a.nii"]])
    with pytest.raises(TypeError, match="path_column must be"):
        read_table(csv, path_column=0)
    frame = pd.DataFrame({"path": ["a.nii", 3.5]}, index=["x", "y"])
    with pytest.raises(ValueError, match=r"row 1 \(index 'y'\) of the DataFrame.*3\.5"):
        read_table(frame, root=tmp_path)
    with pytest.raises(ValueError, match="root .* is not a folder"):
        read_table(frame, root=tmp_path / "a.nii")


# -------------------------------------------------------------- read_bids
@pytest.fixture(scope="module")
def lung_bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung_bids")
    data = make_lung_cohort(
        3,
        shape=(16, 16, 16),
        spacing=20.0,
        random_state=0,
        return_paths=True,
        out_dir=root,
    )
    return root, data


def test_generated_lung_cohort_is_read_back_by_read_bids(lung_bids):
    root, data = lung_bids
    assert (root / "dataset_description.json").is_file()
    paths, meta = read_bids(root, suffix="ct")
    assert paths == data.volumes
    assert meta["participant_id"].tolist() == ["sub-0001", "sub-0002", "sub-0003"]
    np.testing.assert_allclose(meta["fev1"], data.fev1, atol=0.01)
    masks, mask_meta = read_bids(
        root / "derivatives" / "lungmask", suffix="mask", entities={"desc": "lung"}
    )
    assert masks == data.lung_mask and "desc" in mask_meta.columns
    ct = make_lung_cohort(3, shape=(16, 16, 16), spacing=20.0, random_state=0)
    np.testing.assert_array_equal(as_volume_dataset(paths).volume(2), ct.volumes[2])


def test_generated_brain_cohort_is_read_back_and_fitted(tmp_path):
    pytest.importorskip("nilearn")
    from sklearn_cl3d.datasets import make_brain_cohort

    data = make_brain_cohort(
        4, resolution=8, random_state=0, return_paths=True, out_dir=tmp_path
    )
    arrays = make_brain_cohort(4, resolution=8, random_state=0)
    paths, meta = read_bids(tmp_path)
    assert paths == data.volumes
    assert paths[0].endswith(os.path.join("sub-0001", "anat", "sub-0001_T1w.nii.gz"))
    np.testing.assert_allclose(meta["age"], arrays.age, atol=0.01)
    assert meta["sex"].tolist() == ["M" if s else "F" for s in arrays.sex]
    est = YAwarePretrainer(**TINY).fit(paths, meta["age"])
    np.testing.assert_allclose(
        est.transform(paths), est.transform(arrays.volumes), rtol=1e-5, atol=1e-6
    )
    gm_root = tmp_path / "gm"
    make_brain_cohort(
        2,
        resolution=8,
        random_state=0,
        modality="GM",
        return_paths=True,
        out_dir=gm_root,
    )
    gm, gm_meta = read_bids(gm_root, suffix="probseg", entities={"label": "GM"})
    assert len(gm) == 2 and gm_meta["label"].tolist() == ["GM", "GM"]


def _bids_tree(
    root, layout, participants="participant_id\tage\nsub-01\t30\nsub-02\t40\n"
):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        '{"Name": "t", "BIDSVersion": "1.9.0"}'
    )
    if participants is not None:
        (root / "participants.tsv").write_text(participants)
    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STANDARD, path)
    return root


def test_read_bids_sessions_runs_and_entities(tmp_path):
    root = _bids_tree(
        tmp_path / "ds",
        [
            "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
            "sub-01/ses-02/anat/sub-01_ses-02_run-1_T1w.nii.gz",
            "sub-01/ses-02/anat/sub-01_ses-02_run-2_T1w.nii.gz",
            "sub-01/ses-02/anat/sub-01_ses-02_T2w.nii.gz",
            "sub-01/ses-02/anat/sub-01_ses-02_T1w.json",
            "sub-02/ses-01/anat/sub-02_ses-01_acq-fast_T1w.nii",
            "sub-02/ses-01/func/sub-02_ses-01_task-rest_bold.nii.gz",
            "derivatives/x/sub-01/anat/sub-01_T1w.nii.gz",
        ],
    )
    # a sidecar is not an image; its fields apply to both runs of session 02
    json_path = root / "sub-01/ses-02/anat/sub-01_ses-02_T1w.json"
    json_path.write_text('{"EchoTime": 0.003}')
    paths, meta = read_bids(root)
    assert [os.path.basename(p) for p in paths] == [
        "sub-01_ses-01_T1w.nii.gz",
        "sub-01_ses-02_run-1_T1w.nii.gz",
        "sub-01_ses-02_run-2_T1w.nii.gz",
        "sub-02_ses-01_acq-fast_T1w.nii",
    ]
    assert list(meta.columns) == [
        "participant_id",
        "session",
        "run",
        "acq",
        "path",
        "EchoTime",
        "age",
    ]
    assert meta["age"].tolist() == [30, 30, 30, 40]
    np.testing.assert_array_equal(meta["EchoTime"], [np.nan, 0.003, 0.003, np.nan])
    assert meta["session"].tolist() == ["01", "02", "02", "01"]
    assert len(read_bids(root, session="ses-01")[0]) == 2
    assert len(read_bids(root, session=["02"])[0]) == 2
    assert len(read_bids(root, entities={"run": 2})[0]) == 1
    assert len(read_bids(root, entities={"acq": "fast"})[0]) == 1
    assert len(read_bids(root, suffix="T2w")[0]) == 1
    assert len(read_bids(root, suffix="bold", datatype="func")[0]) == 1
    assert len(read_bids(root, extensions=".nii")[0]) == 1


def test_read_bids_errors_and_warnings(tmp_path):
    root = _bids_tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(ValueError, match=r"no image \*_T2w.* in anat/ of 1 subject"):
        read_bids(root, suffix="T2w")
    with pytest.raises(ValueError, match=r"session\(s\) \['03'\]"):
        read_bids(root, session="03")
    with pytest.raises(FileNotFoundError, match="no such BIDS folder"):
        read_bids(tmp_path / "missing")
    with pytest.raises(ValueError, match="no sub-\\* folder"):
        read_bids(tmp_path)
    with pytest.raises(ValueError, match="suffix must be a BIDS suffix"):
        read_bids(root, suffix="T1w.nii")
    with pytest.raises(TypeError, match="session must be"):
        read_bids(root, session=1)
    with pytest.raises(ValueError, match="not a BIDS label"):
        read_bids(root, session="ses-0_1")
    with pytest.raises(TypeError, match="root must be"):
        read_bids(None)

    (root / "participants.tsv").write_text("id\tage\nsub-01\t3\n")
    with pytest.raises(ValueError, match="participants.tsv has no participant_id"):
        read_bids(root)
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-01\n")
    with pytest.raises(ValueError, match=r"more than once: sub-01"):
        read_bids(root)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-02\t3\n")
    with pytest.warns(UserWarning, match=r"1 subject\(s\) with images are not in"):
        _, meta = read_bids(root)
    assert meta["age"].isna().all()
    (root / "participants.tsv").unlink()
    (root / "dataset_description.json").unlink()
    with pytest.warns(UserWarning, match="no dataset_description.json"):
        paths, meta = read_bids(root)
    assert list(meta.columns) == ["participant_id", "path"]

    broken = root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    broken.parent.mkdir(parents=True)
    os.symlink(root / ".git" / "annex" / "objects" / "x", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"broken links .*sub-02_T1w\.nii\.gz"):
            read_bids(root)


# ------------------------------------------------------------ DICOM series
def _dicom_dir(*parts):
    pydicom = pytest.importorskip("pydicom")
    base = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    path = os.path.join(base, *parts)
    if not os.path.exists(path):
        pytest.skip(f"pydicom's test file {parts} is not installed")
    return path


def test_dicom_series_is_one_volume_with_its_affine():
    pydicom = pytest.importorskip("pydicom")
    from sklearn_cl3d.data import read_dicom_series

    series = _dicom_dir("dicomdirtests", "98892001", "CT5N")
    data, affine = read_dicom_series(series)
    assert data.shape == (16, 16, 5) and data.dtype == np.float32
    files = sorted(os.listdir(series))
    slices = [pydicom.dcmread(os.path.join(series, f)) for f in files]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    for k, ds in enumerate(slices):  # rescaled (HU), transposed to (column, row)
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope)
        np.testing.assert_allclose(data[:, :, k], (hu + float(ds.RescaleIntercept)).T)
    # LPS position of the first slice -> RAS origin; 0.488 mm pixels, 2.5 mm steps
    x, y, z = (float(v) for v in slices[0].ImagePositionPatient)
    np.testing.assert_allclose(affine[:3, 3], [-x, -y, z], atol=1e-5)
    np.testing.assert_allclose(
        np.diag(affine)[:3], [-0.488281, -0.488281, 2.5], atol=1e-5
    )
    # the world position of a voxel is where DICOM puts it
    i, j, k = 3, 5, 2
    lps = np.asarray(slices[k].ImagePositionPatient, float) + 0.488281 * np.array(
        [i, j, 0]
    )
    np.testing.assert_allclose(
        (affine @ [i, j, k, 1])[:3], lps * [-1, -1, 1], atol=1e-4
    )
    # through load_volume and X
    volume, same = load_volume(series)
    assert volume.shape == (1, 16, 16, 5)
    np.testing.assert_allclose(same, affine)


def test_a_folder_of_dicom_series_is_X(tmp_path):
    series = _dicom_dir("dicomdirtests", "98892001", "CT5N")
    for name in ("b", "a"):
        shutil.copytree(series, tmp_path / name)
    assert expand_paths(tmp_path) == [str(tmp_path / "a"), str(tmp_path / "b")]
    est = SimCLRPretrainer(**{**TINY, "backbone__channels": (2,)}).fit(tmp_path)
    assert est.input_shape_ == (1, 16, 16, 5)
    with pytest.raises(ValueError, match="of DICOM files: that is one volume"):
        expand_paths(tmp_path / "a")


@pytest.mark.parametrize(
    "parts, message",
    [
        (("77654033", "CT2"), "slice spacing is not uniform"),
        (("98892003", "MR700"), "have different ImageOrientationPatient"),
        (("98892003", "MR2"), "holds 3 DICOM series"),
    ],
)
def test_dicom_series_errors_name_the_folder(parts, message):
    from sklearn_cl3d.data import read_dicom_series

    series = _dicom_dir("dicomdirtests", *parts)
    with pytest.raises(ValueError, match=re.escape(series) + ".*" + message):
        read_dicom_series(series)


def test_dicom_folder_without_dicom_files_and_missing_decoder(tmp_path, monkeypatch):
    from sklearn_cl3d.data import read_dicom_series

    _dicom_dir("CT_small.dcm")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no DICOM file among its 1 file\(s\)"):
        read_dicom_series(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no file"):
        read_dicom_series(empty)
    with pytest.raises(FileNotFoundError):
        read_dicom_series(tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"sklearn-cl3d\[dicom\]"):
        read_dicom_series(tmp_path)


# ------------------------------------------------------------ NRRD vs pynrrd
@pytest.mark.parametrize("encoding", ["raw", "gzip", "bzip2", "ascii"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_our_nrrd_reader_agrees_with_pynrrd(tmp_path, encoding, dtype):
    nrrd = pytest.importorskip("nrrd")
    data = np.asarray(nib.load(ANATOMICAL).dataobj)[:9, :7, :5].astype(dtype)
    path = str(tmp_path / "v.nrrd")
    header = {
        "encoding": encoding,
        "space": "left-posterior-superior",
        "space directions": np.array([[0, 2.0, 0], [-1.5, 0, 0], [0, 0.2, 3.0]]),
        "space origin": np.array([10.0, -20.0, 5.0]),
    }
    nrrd.write(path, data, header)
    theirs, their_header = nrrd.read(path)
    ours, affine = read_nrrd(path)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == theirs.dtype
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(their_header["space directions"]).T
    lps[:3, 3] = their_header["space origin"]
    np.testing.assert_allclose(affine, np.diag([-1, -1, 1, 1]) @ lps)


def test_4d_nifti_of_nibabel_is_refused_as_one_channel_volume():
    # a real 4-D file (time series): an error naming it, unless 4-D is allowed
    with pytest.raises(ValueError, match=re.escape(EXAMPLE_4D) + ".*4 dimensions"):
        load_volume(EXAMPLE_4D)
    assert load_volume(EXAMPLE_4D, expected_ndim=4)[0].shape == (2, 128, 96, 24)


# ----------------------------------------------------- damaged inputs (fuzz)
ALLOWED = (ValueError, TypeError, FileNotFoundError)


def _clean(call):
    """``call()``, or None after an allowed error with a message."""
    try:
        return call()
    except ALLOWED as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None


def test_damaged_tables_give_clean_errors(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    shutil.copy(STANDARD, tmp_path / "a.nii.gz")
    shutil.copy(STANDARD, tmp_path / "b.nii.gz")
    good = b"path,age\na.nii.gz,3\nb.nii.gz,4\n"

    @hypothesis.given(
        ext=st.sampled_from([".csv", ".tsv"]),
        content=st.one_of(
            st.binary(max_size=64),
            st.builds(
                lambda cut, junk: good[:cut] + junk + good[cut:],
                st.integers(0, len(good)),
                st.binary(max_size=8),
            ),
        ),
        column=st.sampled_from(["path", "age", "x"]),
    )
    def check(ext, content, column):
        table = tmp_path / f"t{ext}"
        table.write_bytes(content)
        result = _clean(lambda: read_table(table, path_column=column))
        if result is not None:
            paths, meta = result
            assert all(os.path.exists(p) for p in paths) and len(meta) == len(paths)

    check()


def test_damaged_bids_and_dicom_give_clean_errors(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    root = _bids_tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    series = tmp_path / "series"
    series.mkdir()

    @hypothesis.given(
        participants=st.binary(max_size=64),
        dicom=st.binary(max_size=256),
    )
    def check(participants, dicom):
        (root / "participants.tsv").write_bytes(participants)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _clean(lambda: read_bids(root))
        if result is not None:
            assert len(result[0]) == 1
        # a file with the DICOM preamble and junk after it
        (series / "x.dcm").write_bytes(bytes(128) + b"DICM" + dicom)
        if _has_pydicom():
            from sklearn_cl3d.data import read_dicom_series

            _clean(lambda: read_dicom_series(series))

    check()


def _has_pydicom():
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_folder_without_dicom_files_in_a_list_is_refused(scans):
    folder, paths = scans
    with pytest.raises(ValueError, match=r"is a folder without DICOM files"):
        as_volume_dataset([paths[0], str(folder)])
    with pytest.raises(ValueError, match=re.escape(str(folder))):
        load_volume(folder)


def test_read_bids_joins_sessions_tsv(tmp_path):
    root = _bids_tree(
        tmp_path / "ds",
        [
            "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
            "sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz",
            "sub-02/ses-01/anat/sub-02_ses-01_T1w.nii.gz",
        ],
    )
    (root / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tage\tscanner\nses-01\t30.5\tA\nses-02\t32.0\tn/a\n"
    )
    paths, meta = read_bids(root)
    assert meta["age"].tolist()[:2] == [30.5, 32.0] and np.isnan(meta["age"][2])
    assert meta["age_participant"].tolist() == [30, 30, 40]
    assert meta["scanner"].iloc[0] == "A" and meta["scanner"].isna()[1]
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session\tage\n01\t3\n")
    with pytest.raises(ValueError, match="sub-01_sessions.tsv has no session_id"):
        read_bids(root)
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\nses-01\nses-01\n")
    with pytest.raises(ValueError, match="more than once: ses-01"):
        read_bids(root)
