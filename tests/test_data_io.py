"""Loading volumes from arrays, files and nibabel images (``sklearn_cl3d.data``)."""

import gzip
import os
import pickle
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.arrayproxy import ArrayProxy
from skorch.dataset import unpack_data
from skorch.utils import is_dataset
from torch.utils.data import DataLoader

from sklearn_cl3d.data import _io
from sklearn_cl3d.data._dataset import (
    VolumeDataset,
    as_volume_dataset,
    is_volume_collection,
)
from sklearn_cl3d.data._io import load_volume
from sklearn_cl3d.data._nrrd import read_nrrd, read_nrrd_header
from sklearn_cl3d.data._preprocessing import CropOrPad, Resample

SHAPE = (6, 7, 8)
AFFINE = np.array(
    [[2.0, 0, 0, -10], [0, 3.0, 0, 5], [0, 0, 4.0, 20], [0, 0, 0, 1]], dtype=float
)

_NRRD_TYPES = {
    "uchar": "u1",
    "unsigned char": "u1",
    "signed char": "i1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "int": "i4",
    "uint": "u4",
    "longlong": "i8",
    "float": "f4",
    "double": "f8",
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def write_nrrd(
    path,
    data,
    affine=None,
    *,
    space="left-posterior-superior",
    encoding="raw",
    type_name=None,
    endian="little",
    extra=(),
):
    """Minimal NRRD writer for the tests; ``data`` is (x, y, z) or (C, x, y, z)
    (channels first) and ``affine`` a RAS affine, written in ``space``."""
    data = np.asarray(data)
    if type_name is None:
        type_name = {v: k for k, v in _NRRD_TYPES.items()}[data.dtype.str[1:]]
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    flips = {"left-posterior-superior": [-1, -1, 1], "right-anterior-superior": [1] * 3}
    world = affine[:3] * np.asarray(flips[space], dtype=float)[:, None]

    def vec(v):
        return "(" + ",".join(repr(float(x)) for x in v) + ")"

    dirs = [vec(world[:3, j]) for j in range(3)]
    kinds = ["domain"] * 3
    if data.ndim == 4:
        dirs, kinds = ["none"] + dirs, ["vector"] + kinds
    lines = [
        "NRRD0004",
        "# written by the sklearn_cl3d tests",
        f"type: {type_name}",
        f"dimension: {data.ndim}",
        f"space: {space}",
        "sizes: " + " ".join(str(s) for s in data.shape),
        "space directions: " + " ".join(dirs),
        "kinds: " + " ".join(kinds),
        f"endian: {endian}",
        f"encoding: {encoding}",
        "space origin: " + vec(world[:3, 3]),
        *extra,
    ]
    order = "<" if endian == "little" else ">"
    payload = data.astype(data.dtype.newbyteorder(order)).tobytes(order="F")
    if encoding == "gzip":
        payload = gzip.compress(payload)
    with open(path, "wb") as fh:
        fh.write(("\n".join(lines) + "\n\n").encode("ascii") + payload)
    return path


def _volume(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _save_nii(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def _files(tmp_path, n, shape=(4, 4, 4), ext=".nii"):
    paths = []
    for i in range(n):
        path = tmp_path / f"sub-{i:02d}{ext}"
        data = np.full(shape, float(i), dtype=np.float32)
        if ext == ".npy":
            np.save(path, data)
        else:
            _save_nii(path, data)
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------
# inputs of every kind
# --------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [4, 5])
def test_arrays_give_channel_first_float32_items(ndim):
    X = np.random.default_rng(0).normal(size=(3, 2, 5, 6, 7))
    X = X[:, 0] if ndim == 4 else X
    ds = as_volume_dataset(X)
    assert len(ds) == 3
    x, y = ds[1]
    assert x.dtype == torch.float32
    assert tuple(x.shape) == ((1,) if ndim == 4 else (2,)) + (5, 6, 7)
    np.testing.assert_allclose(x.numpy().reshape(X[1].shape), X[1], rtol=1e-6)
    # y=None: the same placeholder as skorch's own Dataset
    assert torch.equal(y, torch.Tensor([0]))


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_round_trip(tmp_path, ext):
    data = _volume()
    path = _save_nii(tmp_path / f"img{ext}", data)
    volume, affine = load_volume(path)
    assert volume.shape == (1,) + SHAPE and volume.dtype == np.float32
    np.testing.assert_array_equal(volume[0], data)
    np.testing.assert_allclose(affine, AFFINE)


def test_nifti_int_with_scaling(tmp_path):
    img = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), AFFINE)
    img.header.set_slope_inter(0.5, 10)
    path = str(tmp_path / "scaled.nii")
    nib.save(img, path)
    volume, _ = load_volume(path)
    np.testing.assert_allclose(volume[0], np.arange(64).reshape(4, 4, 4) * 0.5 + 10)


def test_npy_and_pathlib(tmp_path):
    data = _volume()
    np.save(tmp_path / "a.npy", data)
    np.save(tmp_path / "b.npy", data[None] * 2)  # channels first, one channel
    ds = as_volume_dataset([tmp_path / "a.npy", tmp_path / "b.npy"])
    np.testing.assert_array_equal(ds[0][0].numpy()[0], data)
    np.testing.assert_array_equal(ds[1][0].numpy()[0], data * 2)
    assert all(isinstance(p, str) for p in ds.X)
    _, affine = load_volume(tmp_path / "a.npy")
    np.testing.assert_array_equal(affine, np.eye(4))


def test_npy_fortran_order(tmp_path):
    data = np.asfortranarray(_volume())
    np.save(tmp_path / "f.npy", data)
    np.testing.assert_array_equal(load_volume(tmp_path / "f.npy")[0][0], data)


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
@pytest.mark.parametrize(
    "space", ["left-posterior-superior", "right-anterior-superior"]
)
def test_nrrd_round_trip(tmp_path, encoding, space):
    data = _volume()
    path = write_nrrd(tmp_path / "v.nrrd", data, AFFINE, space=space, encoding=encoding)
    read, affine = read_nrrd(path)
    np.testing.assert_array_equal(read, data)
    np.testing.assert_allclose(affine, AFFINE)  # LPS converted back to RAS
    volume, affine2 = load_volume(path)
    np.testing.assert_array_equal(volume[0], data)
    np.testing.assert_allclose(affine2, AFFINE)
    shape, affine3 = read_nrrd_header(path)
    assert shape == SHAPE
    np.testing.assert_allclose(affine3, AFFINE)


def test_nrrd_lps_affine_is_converted_to_ras(tmp_path):
    path = tmp_path / "lps.nrrd"
    header = (
        b"NRRD0005\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
        b"space: left-posterior-superior\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (10,20,30)\n\n"
    )
    path.write_bytes(header + bytes(range(8)))
    _, affine = read_nrrd(path)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0])
    expected[:3, 3] = [-10, -20, 30]
    np.testing.assert_array_equal(affine, expected)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")


@pytest.mark.parametrize("type_name", sorted(_NRRD_TYPES))
@pytest.mark.parametrize("endian", ["little", "big"])
def test_nrrd_types_and_endianness(tmp_path, type_name, endian):
    data = (np.arange(24).reshape(2, 3, 4) % 100).astype(_NRRD_TYPES[type_name])
    path = write_nrrd(tmp_path / "t.nrrd", data, type_name=type_name, endian=endian)
    read, _ = read_nrrd(path)
    assert read.dtype == np.dtype(_NRRD_TYPES[type_name])
    np.testing.assert_array_equal(read, data)


def test_nrrd_text_encoding_and_spacings(tmp_path):
    path = tmp_path / "t.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 1 1\nspacings: 0.5 2 3\n"
        b"encoding: text\n\n1.5 -2\n"
    )
    data, affine = read_nrrd(path)
    assert data.ravel().tolist() == [1.5, -2.0]
    np.testing.assert_array_equal(affine.diagonal(), [0.5, 2, 3, 1])


def test_nrrd_line_and_byte_skip(tmp_path):
    path = tmp_path / "skip.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 1 1\nencoding: raw\n"
        b"line skip: 1\nbyte skip: 3\n\nignored line\nxyz\x07\x09"
    )
    assert read_nrrd(path)[0].ravel().tolist() == [7, 9]
    path.write_bytes(
        b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 1 1\nencoding: raw\n"
        b"byte skip: -1\n\npadding\x07\x09"
    )
    assert read_nrrd(path)[0].ravel().tolist() == [7, 9]


def test_nrrd_vector_axis_is_channels(tmp_path):
    data = np.stack([_volume(0), _volume(1)])  # (C, x, y, z)
    path = write_nrrd(tmp_path / "vec.nrrd", data, AFFINE, encoding="gzip")
    read, affine = read_nrrd(path)
    np.testing.assert_array_equal(read, data)
    np.testing.assert_allclose(affine, AFFINE)
    volume, _ = load_volume(path, expected_ndim=4)
    np.testing.assert_array_equal(volume, data)
    with pytest.raises(ValueError, match=re.escape(f"{path} has 4 dimensions")):
        load_volume(path)


def test_nibabel_image_objects():
    imgs = [nib.Nifti1Image(_volume(i), AFFINE) for i in range(3)]
    ds = as_volume_dataset(imgs, y=np.arange(3.0))
    x, y = ds[2]
    np.testing.assert_array_equal(x.numpy()[0], _volume(2))
    assert y == 2.0


def test_file_backed_images_stay_lazy(tmp_path):
    img = nib.load(_save_nii(tmp_path / "a.nii", _volume()))
    ds = as_volume_dataset([img])
    np.testing.assert_array_equal(ds[0][0].numpy()[0], _volume())
    assert not img.in_memory  # no copy of the data cached inside the image
    assert str(tmp_path / "a.nii") in ds.name(0)


def test_mixed_paths_and_images(tmp_path):
    path = _save_nii(tmp_path / "a.nii.gz", _volume(0))
    ds = as_volume_dataset([path, nib.Nifti1Image(_volume(1), AFFINE)])
    assert ds.sample_shape == (1,) + SHAPE
    np.testing.assert_array_equal(ds[1][0].numpy()[0], _volume(1))


def test_multichannel_nifti_with_expected_ndim_4(tmp_path):
    data = np.stack([_volume(0), _volume(1)], axis=-1)  # (x, y, z, c)
    path = _save_nii(tmp_path / "mc.nii.gz", data)
    volume, _ = load_volume(path, expected_ndim=4)
    assert volume.shape == (2,) + SHAPE
    np.testing.assert_array_equal(volume[1], data[..., 1])


def test_trailing_singleton_fourth_axis_is_squeezed(tmp_path):
    path = _save_nii(tmp_path / "t.nii.gz", _volume()[..., None])
    ds = as_volume_dataset([path])
    assert ds.sample_shape == (1,) + SHAPE
    np.testing.assert_array_equal(ds[0][0].numpy()[0], _volume())


def test_y_passes_through_and_pandas_series(tmp_path):
    pd = pytest.importorskip("pandas")
    paths = _files(tmp_path, 3)
    y = pd.Series([20.0, 30.0, 40.0], index=[7, 8, 9])
    ds = as_volume_dataset(pd.Series(paths), y=y)
    assert is_volume_collection(pd.Series(paths))
    assert [float(ds[i][1]) for i in range(3)] == [20.0, 30.0, 40.0]
    ds2 = as_volume_dataset(paths, y=np.array([[1, 2], [3, 4], [5, 6]]))
    np.testing.assert_array_equal(ds2[2][1], [5, 6])


def test_preprocessing_uses_file_affine_and_unifies_shapes(tmp_path):
    small = _save_nii(tmp_path / "s.nii", np.ones((4, 4, 4), np.float32), np.eye(4))
    big = _save_nii(tmp_path / "b.nii", np.ones((8, 8, 8), np.float32), np.eye(4))
    twomm = _save_nii(tmp_path / "t.nii", np.ones((3, 3, 3), np.float32), AFFINE)
    ds = as_volume_dataset(
        [small, big, twomm], preprocessing=[Resample(2.0), CropOrPad(4)]
    )
    assert ds.sample_shape == (1, 4, 4, 4)
    assert all(tuple(ds[i][0].shape) == (1, 4, 4, 4) for i in range(3))


def test_existing_dataset_passes_through():
    ds = as_volume_dataset(np.zeros((2, 3, 3, 3)))
    assert as_volume_dataset(ds) is ds
    assert is_dataset(ds)
    with pytest.raises(ValueError, match="already a VolumeDataset"):
        as_volume_dataset(ds, y=[1, 2])


# --------------------------------------------------------------------------
# laziness, caching, workers, pickling
# --------------------------------------------------------------------------
@pytest.fixture
def voxel_reads(monkeypatch):
    """Count every read of voxel data through nibabel proxies and np.load."""
    calls = []
    # the two entry points to the voxel data of a nibabel proxy
    for attr in ("__array__", "__getitem__"):
        original = getattr(ArrayProxy, attr)

        def spy(self, *args, _original=original, _attr=attr, **kwargs):
            calls.append(_attr)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ArrayProxy, attr, spy)
    np_load = np.load

    def load_spy(*args, **kwargs):
        calls.append("np.load")
        return np_load(*args, **kwargs)

    monkeypatch.setattr(_io.np, "load", load_spy)
    return calls


def test_construction_reads_headers_only(tmp_path, voxel_reads):
    paths = _files(tmp_path, 40, ext=".nii.gz") + _files(tmp_path, 10, ext=".npy")
    ds = as_volume_dataset(paths)
    assert len(ds) == 50
    assert voxel_reads == []
    x, _ = ds[3]
    assert float(x.mean()) == 3.0
    # item 3, and item 0 which defines the reference shape
    assert voxel_reads == ["__array__", "__array__"]


def test_cache_keeps_volumes_after_first_access(tmp_path, voxel_reads):
    paths = _files(tmp_path, 3)
    ds = as_volume_dataset(paths, cache=True)
    assert ds.sample_shape == (1, 4, 4, 4)
    n_after_first = len(voxel_reads)
    assert n_after_first == 1
    for _ in range(3):
        assert float(ds[0][0].mean()) == 0.0
    assert len(voxel_reads) == n_after_first
    ds[2]
    x, _ = ds[2]
    assert sorted(ds._cache) == [0, 2]
    x += 100  # the caller's tensor is a copy: the cache is unaffected
    assert float(ds[2][0].mean()) == 2.0

    uncached = as_volume_dataset(paths)
    uncached[1]
    before = len(voxel_reads)
    uncached[1]
    assert len(voxel_reads) == before + 1


def test_dataloader_with_two_workers(tmp_path):
    paths = _files(tmp_path, 6)
    ds = as_volume_dataset(paths, y=np.arange(6.0))
    assert ds.sample_shape == (1, 4, 4, 4)
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    seen = []
    for batch in loader:
        Xb, yb = unpack_data(batch)
        assert tuple(Xb.shape) == (2, 1, 4, 4, 4)
        np.testing.assert_array_equal(Xb.mean(dim=(1, 2, 3, 4)).numpy(), yb.numpy())
        seen.extend(yb.tolist())
    assert seen == list(range(6))


def test_dataloader_default_target_collates():
    ds = as_volume_dataset(np.zeros((4, 3, 3, 3)))
    Xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert tuple(Xb.shape) == (4, 1, 3, 3, 3) and tuple(yb.shape) == (4, 1)


def test_pickle_round_trip(tmp_path):
    paths = _files(tmp_path, 3, ext=".npy")
    ds = as_volume_dataset(paths, y=[1, 2, 3], preprocessing=[CropOrPad(2)])
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.sample_shape == (1, 2, 2, 2)
    for i in range(3):
        assert torch.equal(clone[i][0], ds[i][0])
        assert clone[i][1] == ds[i][1]


def test_loading_writes_nothing(tmp_path):
    paths = _files(tmp_path, 2, ext=".nii.gz")
    before = sorted(os.listdir(tmp_path))
    ds = as_volume_dataset(paths, cache=True)
    ds[0], ds[1]
    assert sorted(os.listdir(tmp_path)) == before


# --------------------------------------------------------------------------
# errors name the file and the problem
# --------------------------------------------------------------------------
def test_missing_file(tmp_path):
    paths = _files(tmp_path, 1) + [str(tmp_path / "missing.nii.gz")]
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        as_volume_dataset(paths)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.mha"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"scan\.mha.*\.nii, \.nii\.gz, \.nrrd, \.npy"):
        as_volume_dataset([path])


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".npy"])
def test_corrupt_file_at_construction(tmp_path, ext):
    path = tmp_path / f"bad{ext}"
    path.write_bytes(b"this is not an image" * 3)
    with pytest.raises(ValueError, match=re.escape(f"could not read {path}")):
        as_volume_dataset([str(path)])


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".npy"])
def test_truncated_data_at_load(tmp_path, ext):
    path = tmp_path / f"trunc{ext}"
    if ext == ".npy":
        np.save(path, _volume())
    elif ext == ".nrrd":
        write_nrrd(path, _volume())
    else:
        _save_nii(path, _volume())
    raw = path.read_bytes()
    if ext == ".nii.gz":
        raw = gzip.compress(gzip.decompress(raw)[:400])
    else:
        raw = raw[: len(raw) - 200]
    path.write_bytes(raw)
    if ext in (".nii", ".npy"):
        # the file is shorter than its header declares: refused from the header
        with pytest.raises(ValueError, match=re.escape(f"could not read {path}")):
            as_volume_dataset([str(path)])
        return
    ds = as_volume_dataset([str(path)])  # the header is fine
    with pytest.raises(ValueError, match=re.escape(f"could not read {path}")):
        ds[0]


def test_four_d_image_when_three_d_expected(tmp_path):
    path = _save_nii(tmp_path / "fmri.nii.gz", np.zeros((4, 4, 4, 3), np.float32))
    msg = f"{path} has 4 dimensions (shape (4, 4, 4, 3)); expected a 3-D volume"
    with pytest.raises(ValueError, match=re.escape(msg)):
        as_volume_dataset([path])
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_volume(path)
    np.save(tmp_path / "mc.npy", np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="mc.npy has 4 dimensions"):
        as_volume_dataset([tmp_path / "mc.npy"])


def test_two_d_image(tmp_path):
    path = _save_nii(tmp_path / "slice.nii", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"slice\.nii has 2 dimensions"):
        as_volume_dataset([path])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, bad):
    data = _volume()
    data[1, 2, 3] = bad
    good = _save_nii(tmp_path / "good.nii", _volume())
    path = _save_nii(tmp_path / "nan.nii", data)
    ds = as_volume_dataset([good, path])
    ds[0]
    with pytest.raises(ValueError, match=re.escape(f"{path} contains non-finite")):
        ds[1]
    X = np.zeros((3, 4, 4, 4))
    X[2, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinity.*sample 2"):
        as_volume_dataset(X)


def test_mismatched_shapes(tmp_path):
    first = _save_nii(tmp_path / "first.nii", np.zeros((4, 4, 4), np.float32))
    other = _save_nii(tmp_path / "other.nii", np.zeros((4, 5, 4), np.float32))
    ds = as_volume_dataset([first, other])
    ds[0]
    with pytest.raises(
        ValueError, match=re.escape(f"{other} has shape (1, 4, 5, 4)")
    ) as info:
        ds[1]
    assert f"({first}) has shape (1, 4, 4, 4)" in str(info.value)
    # also when the other item is requested first (the reference is item 0)
    ds = as_volume_dataset([first, other], preprocessing=[Resample(1.0)])
    with pytest.raises(ValueError, match=re.escape("after preprocessing")):
        ds[1]


def test_nrrd_detached_and_unsupported(tmp_path):
    path = tmp_path / "det.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
        b"data file: det.raw\n\n"
    )
    with pytest.raises(ValueError, match=r"det\.nrrd.*detached"):
        as_volume_dataset([path])
    path.write_bytes(
        b"NRRD0004\ntype: block\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n"
    )
    with pytest.raises(ValueError, match=r"det\.nrrd.*unsupported type"):
        read_nrrd(path)
    path.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nencoding: hex\n\n"
    )
    with pytest.raises(ValueError, match=r"det\.nrrd.*unsupported encoding"):
        read_nrrd(path)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((2, 3, 3)), "got an array with 3 dimension"),
        ("scan.nii.gz", "single path"),
        ([], "0 volumes"),
        ([["a"], ["b"]], "dtype"),
    ],
)
def test_bad_X(X, match):
    with pytest.raises(ValueError, match=match):
        as_volume_dataset(X)


def test_inconsistent_y_and_bad_options():
    X = np.zeros((3, 2, 2, 2))
    with pytest.raises(ValueError, match="X has 3 samples but y has 2"):
        as_volume_dataset(X, y=[1, 2])
    with pytest.raises(ValueError, match="expected_ndim"):
        VolumeDataset(X, expected_ndim=5)
    with pytest.raises(ValueError, match="dtype"):
        VolumeDataset(X, dtype=np.int32)
    with pytest.raises(ValueError, match="preprocessing"):
        VolumeDataset(X, preprocessing="zscore")
    with pytest.raises(IndexError):
        VolumeDataset(X)[3]


def test_nibabel_is_imported_only_to_read_images(tmp_path):
    # nibabel pulls pydicom and requests (~14 MiB resident per process,
    # DataLoader workers included); arrays and .npy files must not need it
    import subprocess
    import sys

    path = tmp_path / "v.npy"
    np.save(path, np.zeros((4, 5, 6), np.float32))
    code = (
        "import sys, numpy as np\n"
        "import sklearn_cl3d\n"
        "from sklearn_cl3d.data import load_volume, as_volume_dataset\n"
        "from sklearn_cl3d.data._io import is_volume_source\n"
        f"volume, affine = load_volume({str(path)!r})\n"
        "assert volume.shape == (1, 4, 5, 6)\n"
        "assert len(as_volume_dataset(np.zeros((2, 1, 4, 4, 4)))) == 2\n"
        "assert not is_volume_source(np.zeros(3))\n"
        "print(sorted(m for m in ('nibabel', 'pydicom', 'requests') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
