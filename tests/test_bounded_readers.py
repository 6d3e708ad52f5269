"""Readers cannot be stalled or bloated by a file, and their errors name it."""

import bz2
import gzip
import re
import time
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest

from sklearn_cl3d.data import as_volume_dataset, load_volume, read_nrrd
from sklearn_cl3d.data._io import inspect_source
from sklearn_cl3d.data._nrrd import MAX_VOLUME_BYTES, read_nrrd_header

VOXELS = np.arange(16**3, dtype=np.uint16)  # 8 KiB


def _header(encoding="raw", sizes="16 16 16", type_name="ushort", extra=""):
    return (
        f"NRRD0004\ntype: {type_name}\ndimension: 3\nsizes: {sizes}\n"
        f"endian: little\nencoding: {encoding}\n{extra}\n"
    ).encode("ascii")


def _write(path, header, payload=b""):
    path.write_bytes(header + payload)
    return path


def _zeros_gzip(n_bytes):
    """gzip member of ``n_bytes`` zero bytes, built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(n_bytes >> 20)]
    return b"".join(parts) + packer.flush()


def _peak_mib(func):
    tracemalloc.start()
    try:
        func()
    except ValueError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def _raises_naming(path, match, func=read_nrrd):
    with pytest.raises(ValueError, match=match) as info:
        func(path)
    assert str(path) in str(info.value)
    return info


# --------------------------------------------------------------------------
# NRRD
# --------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["gzip", "bzip2"])
def test_nrrd_compressed_round_trip(tmp_path, encoding):
    compress = gzip.compress if encoding == "gzip" else bz2.compress
    path = _write(tmp_path / "v.nrrd", _header(encoding), compress(VOXELS.tobytes()))
    data, _ = read_nrrd(path)
    np.testing.assert_array_equal(data.ravel(order="F"), VOXELS)


def test_nrrd_gzip_members_and_byte_skip_after_decompression(tmp_path):
    raw = b"skip" + VOXELS.tobytes()
    payload = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])
    path = _write(tmp_path / "m.nrrd", _header("gzip", extra="byte skip: 4\n"), payload)
    np.testing.assert_array_equal(read_nrrd(path)[0].ravel(order="F"), VOXELS)


def test_nrrd_huge_line_skip_fails_fast(tmp_path):
    path = _write(
        tmp_path / "skip.nrrd",
        _header(extra="line skip: 999999999\n"),
        b"one line\n" + VOXELS.tobytes(),
    )
    start = time.perf_counter()
    _raises_naming(path, "'line skip: 999999999' goes past the end of the file")
    assert time.perf_counter() - start < 1.0


def test_nrrd_line_skip_over_many_lines(tmp_path):
    lines = b"comment\n" * 200_000  # more than one read chunk
    path = _write(
        tmp_path / "lines.nrrd",
        _header(extra="line skip: 200000\n"),
        lines + VOXELS.tobytes(),
    )
    np.testing.assert_array_equal(read_nrrd(path)[0].ravel(order="F"), VOXELS)


@pytest.mark.parametrize("encoding", ["gzip", "bzip2"])
def test_nrrd_decompression_bomb_is_refused_with_bounded_memory(tmp_path, encoding):
    # 64 MiB of zeros (about 64 KiB compressed) declared as 8 KiB of voxels
    n_bytes = 64 << 20
    if encoding == "gzip":
        payload = _zeros_gzip(n_bytes)
    else:
        packer = bz2.BZ2Compressor()
        payload = b"".join(packer.compress(bytes(1 << 20)) for _ in range(64))
        payload += packer.flush()
    path = _write(tmp_path / "bomb.nrrd", _header(encoding), payload)
    _raises_naming(path, "decompress to more than the declared 8192 bytes")
    assert _peak_mib(lambda: read_nrrd(path)) < 40


@pytest.mark.parametrize(
    "payload, match",
    [
        (
            gzip.compress(VOXELS.tobytes()[:-2]),
            "decompress to 8190 bytes, expected 8192",
        ),
        (gzip.compress(VOXELS.tobytes())[:-12], "truncated|no end"),
        (b"not gzip at all" * 4, "corrupt gzip data"),
    ],
    ids=["short", "cut", "garbage"],
)
def test_nrrd_gzip_shorter_or_broken_data(tmp_path, payload, match):
    path = _write(tmp_path / "g.nrrd", _header("gzip"), payload)
    _raises_naming(path, match)


def test_nrrd_gzip_too_small_to_hold_the_declared_size_allocates_nothing(tmp_path):
    path = _write(
        tmp_path / "big.nrrd",
        _header("gzip", sizes="1024 1024 512", type_name="uchar"),
        gzip.compress(b"x" * 100),
    )
    _raises_naming(path, "cannot hold the declared 536870912 bytes")
    assert _peak_mib(lambda: read_nrrd(path)) < 5


@pytest.mark.parametrize(
    "sizes", ["4294967296 4294967296 4294967296", "99999999999999999999 2 2"]
)
def test_nrrd_overflowing_sizes(tmp_path, sizes):
    path = _write(tmp_path / "o.nrrd", _header(sizes=sizes), VOXELS.tobytes())
    for func in (read_nrrd, read_nrrd_header, load_volume):
        _raises_naming(path, f"more than the {MAX_VOLUME_BYTES} bytes", func)


@pytest.mark.parametrize(
    "header, match",
    [
        (b"NRRD0004\n# " + b"x" * 70_000 + b"\n\n", "header line is longer"),
        (b"NRRD0004\n" + b"#\n" * 5000, "header has no end"),
        (b"NRRD0004\n" + (b"# " + b"y" * 60_000 + b"\n") * 20, "header is longer"),
        (_header(sizes="-1 2 2"), "must all be positive"),
        (_header(extra="byte skip: -5\n"), "invalid 'byte skip'"),
        (_header("gzip", extra="byte skip: -1\n"), "only valid with raw"),
        (_header("hex"), "unsupported encoding"),
    ],
    ids=["line", "lines", "bytes", "sizes", "byteskip", "skip-1", "encoding"],
)
def test_nrrd_bad_headers(tmp_path, header, match):
    path = _write(tmp_path / "h.nrrd", header, VOXELS.tobytes())
    _raises_naming(path, match)


def test_nrrd_raw_truncated_before_allocating(tmp_path):
    path = _write(tmp_path / "t.nrrd", _header(), VOXELS.tobytes()[:-1])
    _raises_naming(path, "expected 8192 bytes after a byte skip of 0, found 8191")


# --------------------------------------------------------------------------
# NIfTI and .npy
# --------------------------------------------------------------------------
def _nifti_bytes(shape, dtype=np.float32):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype), np.eye(4))
    img.header.set_data_shape(shape)
    return img.header.binaryblock + b"\0" * 4  # header + empty extension flag


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_declaring_a_huge_volume(tmp_path, ext):
    raw = _nifti_bytes((30000, 30000, 30000)) + bytes(1000)
    path = tmp_path / f"huge{ext}"
    path.write_bytes(gzip.compress(raw) if ext == ".nii.gz" else raw)
    for func in (inspect_source, load_volume):
        _raises_naming(path, "more than the 4294967296 bytes", func)


def test_nifti_gzip_too_small_for_its_header_allocates_nothing(tmp_path):
    path = tmp_path / "mid.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes((256, 256, 256)) + bytes(1000)))
    _raises_naming(path, "cannot hold the 67108864 bytes", load_volume)
    assert _peak_mib(lambda: load_volume(path)) < 5
    with pytest.raises(ValueError, match=re.escape(str(path))):
        as_volume_dataset([path])  # refused from the header


def test_nifti_gzip_holding_more_than_declared(tmp_path):
    path = tmp_path / "more.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes((4, 4, 4)) + bytes(256 + 5000)))
    _raises_naming(path, "gzip trailer records", load_volume)


def test_nifti_gzip_shorter_than_declared(tmp_path):
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes((8, 8, 8)) + bytes(100)))
    _raises_naming(path, "could not read", load_volume)


def test_npy_declaring_more_than_the_file(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((8, 8, 8), np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    for func in (inspect_source, load_volume):
        _raises_naming(path, "the file is truncated", func)


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.nii", b""),
        ("garbage.nii", b"garbage" * 100),
        ("garbage.nii.gz", b"garbage"),
        ("garbage.nrrd", b"garbage"),
        ("garbage.npy", b"garbage" * 10),
        ("pickle.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False"),
    ],
)
def test_every_read_error_names_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    for func in (load_volume, lambda p: as_volume_dataset([p])[0]):
        with pytest.raises(ValueError) as info:
            func(path)
        assert str(path) in str(info.value)
