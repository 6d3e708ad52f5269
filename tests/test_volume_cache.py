"""On-disk volume cache: ``VolumeDataset(cache=<folder>)``."""

import errno
import multiprocessing as mp
import os
import pickle
import warnings

import nibabel as nib
import numpy as np
import pytest
from torch.utils.data import DataLoader

from sklearn_cl3d.data import (
    CacheWarning,
    CropOrPad,
    Resample,
    VolumeDataset,
    _cache,
    _dataset,
)

SHAPE = (9, 11, 10)


def _nifti(path, seed, shape=SHAPE):
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return str(path)


def _paths(folder, n=3):
    return [_nifti(folder / f"sub-{i}.nii.gz", i) for i in range(n)]


def _prep():
    return [Resample(3.0), CropOrPad((4, 5, 4))]


def _cache_files(folder):
    return sorted(p for p in folder.rglob("*.npy") if not p.name.startswith("."))


@pytest.fixture
def decodes(monkeypatch):
    """Count the volumes decoded from their sources (cache misses)."""
    calls = []
    original = _dataset.load_volume

    def spy(source, **kwargs):
        calls.append(source)
        return original(source, **kwargs)

    monkeypatch.setattr(_dataset, "load_volume", spy)
    return calls


@pytest.fixture(autouse=True)
def _fresh_memos():
    """Each test starts like a fresh process (no hashes, no verified files)."""
    _cache._source_hashes.clear()
    _cache._verified.clear()
    yield
    _cache._source_hashes.clear()
    _cache._verified.clear()


def _forget_verified():
    _cache._verified.clear()


# ------------------------------------------------------------- correctness


@pytest.mark.parametrize("prep", [None, "resample"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cached_equals_uncached(tmp_path, decodes, prep, dtype):
    paths = _paths(tmp_path)
    prep = _prep() if prep else None
    plain = VolumeDataset(paths, preprocessing=prep, dtype=dtype)
    expected = [plain.volume(i) for i in range(3)]
    decodes.clear()
    cache = tmp_path / "cache"
    first = VolumeDataset(paths, preprocessing=prep, dtype=dtype, cache=cache)
    assert first.cache == str(cache)
    got = [first.volume(i) for i in range(3)]
    assert len(decodes) == 3 and len(_cache_files(cache)) == 3
    # a new dataset (as in another fit, worker or run) reads the files only
    _forget_verified()
    second = VolumeDataset(paths, preprocessing=prep, dtype=dtype, cache=cache)
    again = [second.volume(i) for i in range(3)] + [second.volume(0)]
    assert len(decodes) == 3
    for e, a, b in zip(expected + expected[:1], got + got[:1], again):
        assert a.dtype == b.dtype == np.dtype(dtype)
        assert e.tobytes() == a.tobytes() == b.tobytes()
        assert b.flags.writeable and b.flags.c_contiguous
    x, y = second[1]
    assert x.numpy().tobytes() == expected[1].tobytes()
    # the cache files are plain .npy files
    mapped = np.load(_cache_files(cache)[0], mmap_mode="r", allow_pickle=False)
    assert mapped.dtype == np.dtype(dtype) and mapped.ndim == 4


def test_npy_sources_and_same_content_elsewhere(tmp_path, decodes):
    vol = np.random.default_rng(0).normal(size=(1, 5, 6, 7)).astype(np.float32)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, vol)
    np.save(b, vol)
    cache = tmp_path / "cache"
    ds = VolumeDataset([str(a), str(b)], cache=cache)
    assert ds.volume(0).tobytes() == ds.volume(1).tobytes() == vol.tobytes()
    # keyed by content: the second path found the first one's file
    assert len(decodes) == 1 and len(_cache_files(cache)) == 1


def test_arrays_and_images_are_not_cached(tmp_path):
    X = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
    cache = tmp_path / "cache"
    ds = VolumeDataset(X, preprocessing=CropOrPad(3), cache=cache)
    plain = VolumeDataset(X, preprocessing=CropOrPad(3))
    assert ds.volume(1).tobytes() == plain.volume(1).tobytes()
    img = nib.Nifti1Image(X[0], np.eye(4))
    assert VolumeDataset([img], cache=cache).volume(0).tobytes() == X[0].tobytes()
    assert _cache_files(cache) == []


def test_default_is_unchanged(tmp_path):
    paths = _paths(tmp_path, 1)
    for value in (False, None, 0):
        ds = VolumeDataset(paths, cache=value)
        assert ds.cache is False and ds._disk is None
    assert VolumeDataset(paths, cache=True).cache is True
    assert not any(tmp_path.rglob("*.npy"))


# ------------------------------------------------------------ invalidation


def test_changed_file_is_read_again(tmp_path, decodes):
    paths = _paths(tmp_path, 2)
    cache = tmp_path / "cache"
    old = VolumeDataset(paths, cache=cache).volume(0)
    _nifti(paths[0], seed=99)  # same name, same shape, new voxels
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    new = VolumeDataset(paths, cache=cache).volume(0)
    expected = VolumeDataset(paths).volume(0)
    assert new.tobytes() == expected.tobytes() != old.tobytes()
    assert len(_cache_files(cache)) == 2  # the stale file is never read again


def test_changed_preprocessing_or_dtype_selects_another_file(tmp_path, decodes):
    paths = _paths(tmp_path, 1)
    cache = tmp_path / "cache"
    settings = [
        dict(preprocessing=None),
        dict(preprocessing=[Resample(3.0), CropOrPad((4, 5, 4))]),
        dict(preprocessing=[Resample(3.0), CropOrPad((4, 5, 5))]),
        dict(preprocessing=[Resample(3.0, order=0), CropOrPad((4, 5, 4))]),
        dict(preprocessing=[CropOrPad((4, 5, 4)), Resample(3.0)]),
        dict(preprocessing=None, dtype=np.float64),
    ]
    for kwargs in settings:
        got = VolumeDataset(paths, cache=cache, **kwargs).volume(0)
        assert got.tobytes() == VolumeDataset(paths, **kwargs).volume(0).tobytes()
    assert len(_cache_files(cache)) == len(settings)
    n = len(decodes)
    for kwargs in settings:  # all hits now
        VolumeDataset(paths, cache=cache, **kwargs).volume(0)
    assert len(decodes) == n


def test_fingerprint_is_canonical():
    fp = _cache.preprocessing_fingerprint
    from sklearn_cl3d.data import make_preprocessing

    assert fp(make_preprocessing([Resample(2.0)])) == fp(
        make_preprocessing([Resample(2.0)])
    )
    assert fp(make_preprocessing([Resample(2.0)])) != fp(
        make_preprocessing([Resample(2.0000001)])
    )
    assert fp(make_preprocessing([Resample(2)])) != fp(
        make_preprocessing([Resample((2, 2, 2))])
    )
    assert fp(None) == "null"


# ------------------------------------------------------------- concurrency


def _worker(paths, cache, prep, barrier, queue):
    try:
        _cache._source_hashes.clear()
        _cache._verified.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            ds = VolumeDataset(paths, preprocessing=prep, cache=cache)
            barrier.wait()
            out = []
            for _ in range(3):
                _cache._verified.clear()  # verify the checksum on every read
                out.append([ds.volume(i).tobytes() for i in range(len(paths))])
        queue.put(("ok", out))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", repr(exc)))


def test_concurrent_writers(tmp_path):
    paths = _paths(tmp_path, 6)
    cache = tmp_path / "cache"
    prep = _prep()
    expected = [VolumeDataset(paths, preprocessing=prep).volume(i) for i in range(6)]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    n = 4
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(paths, str(cache), prep, barrier, queue))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for status, out in results:
        assert status == "ok", out
        for rnd in out:
            assert rnd == [e.tobytes() for e in expected]
    files = list(cache.rglob("*"))
    assert not [f for f in files if f.name.startswith(".tmp-")]
    assert len(_cache_files(cache)) == 6


def test_dataloader_workers_fill_and_use_the_cache(tmp_path):
    paths = _paths(tmp_path, 4)
    cache = tmp_path / "cache"
    ds = VolumeDataset(paths, preprocessing=_prep(), cache=cache)
    ds = pickle.loads(pickle.dumps(ds))
    plain = VolumeDataset(paths, preprocessing=_prep())
    for _ in range(2):
        batches = [x for x, _ in DataLoader(ds, batch_size=2, num_workers=2)]
        got = np.concatenate([b.numpy() for b in batches])
        assert got.tobytes() == np.stack([plain.volume(i) for i in range(4)]).tobytes()
    assert len(_cache_files(cache)) == 4


# ------------------------------------------------------------ damaged files


def _fill(tmp_path):
    paths = _paths(tmp_path, 1)
    cache = tmp_path / "cache"
    expected = VolumeDataset(paths, preprocessing=_prep()).volume(0)
    VolumeDataset(paths, preprocessing=_prep(), cache=cache).volume(0)
    (path,) = _cache_files(cache)
    _forget_verified()
    return paths, cache, path, expected


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_voxel(path):
    data = bytearray(path.read_bytes())
    data[200] ^= 0x40
    path.write_bytes(bytes(data))


def _garbage(path):
    path.write_bytes(b"not a cache file at all")


def _no_trailer(path):
    path.write_bytes(path.read_bytes()[: -_cache._TRAILER])


def _other_key(path):
    data = bytearray(path.read_bytes())
    start = len(data) - _cache._TRAILER + len(_cache._MAGIC)
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))


def _wrong_dtype(path):
    np.save(path, np.zeros((1, 4, 5, 4), np.float64))


def _pickled(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _nan_with_valid_checksum(path):
    # a file written by someone who knows the format: checksum right, voxels NaN
    key = path.stem
    vol = np.full((1, 4, 5, 4), np.nan, np.float32)
    _cache.VolumeCache(path.parents[2]).write(key, vol)


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _flip_voxel,
        _garbage,
        _no_trailer,
        _other_key,
        _wrong_dtype,
        _pickled,
        _nan_with_valid_checksum,
    ],
)
def test_damaged_file_is_detected_and_rebuilt(tmp_path, decodes, damage):
    paths, cache, path, expected = _fill(tmp_path)
    damage(path)
    decodes.clear()
    ds = VolumeDataset(paths, preprocessing=_prep(), cache=cache)
    with pytest.warns(CacheWarning, match="is damaged"):
        got = ds.volume(0)
    assert got.tobytes() == expected.tobytes()
    assert len(decodes) == 1
    # rebuilt: a fresh reader takes it without a warning and without decoding
    _forget_verified()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = VolumeDataset(paths, preprocessing=_prep(), cache=cache).volume(0)
    assert again.tobytes() == expected.tobytes() and len(decodes) == 1


def test_write_failure_warns_once_and_goes_on(tmp_path, monkeypatch):
    paths = _paths(tmp_path, 2)
    cache = tmp_path / "cache"
    ds = VolumeDataset(paths, cache=cache)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_cache.tempfile, "mkstemp", full)
    with pytest.warns(CacheWarning, match="could not write cache file") as rec:
        got = [ds.volume(i) for i in range(2)]
    assert len([w for w in rec if issubclass(w.category, CacheWarning)]) == 1
    plain = VolumeDataset(paths)
    assert [g.tobytes() for g in got] == [plain.volume(i).tobytes() for i in range(2)]
    assert _cache_files(cache) == []


# ------------------------------------------------------------------ errors


def test_errors(tmp_path):
    paths = _paths(tmp_path, 1)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="exists but is not a folder"):
        VolumeDataset(paths, cache=a_file)
    with pytest.raises(ValueError, match="could not create the cache folder"):
        VolumeDataset(paths, cache=a_file / "sub")
    with pytest.raises(TypeError, match="cache must be False, True or a folder"):
        VolumeDataset(paths, cache=2.5)

    class Step:
        def __init__(self):
            self.fn = lambda v: v

        def apply(self, volume, affine):
            return volume, affine

    with pytest.raises(ValueError, match="cannot be keyed"):
        VolumeDataset(paths, preprocessing=Step(), cache=tmp_path / "c")
    # the same step is fine without the on-disk cache
    VolumeDataset(paths, preprocessing=Step(), cache=True).volume(0)


def test_missing_source_still_names_the_file(tmp_path):
    paths = _paths(tmp_path, 2)
    ds = VolumeDataset(paths, cache=tmp_path / "cache")
    os.remove(paths[1])
    with pytest.raises(FileNotFoundError, match="sub-1"):
        ds.volume(1)


# ------------------------------------------------- estimators and loaders

TINY = dict(
    backbone="small3d",
    backbone__channels=(4, 8),
    hidden_dim=8,
    projection_dim=4,
    batch_size=4,
    max_epochs=2,
    random_state=0,
    verbose=0,
)


def test_estimator_cache_folder_gives_the_same_fit(tmp_path):
    from sklearn_cl3d import YAwarePretrainer

    paths = [_nifti(tmp_path / f"s{i}.nii.gz", i, (8, 9, 8)) for i in range(8)]
    age = np.linspace(20, 80, 8)
    prep = [CropOrPad(8)]
    plain = YAwarePretrainer(**TINY, preprocessing=prep).fit(paths, age)
    cache = tmp_path / "cache"
    cached = YAwarePretrainer(**TINY, preprocessing=prep, cache=str(cache))
    cached.fit(paths, age)
    assert len(_cache_files(cache)) == 8
    np.testing.assert_array_equal(plain.transform(paths), cached.transform(paths))
    again = YAwarePretrainer(**TINY, preprocessing=prep, cache=cache).fit(paths, age)
    np.testing.assert_array_equal(plain.transform(paths), again.transform(paths))
    with pytest.raises(ValueError, match="cache"):
        YAwarePretrainer(**TINY, cache=3.5).fit(paths, age)


def test_loader_defaults(tmp_path, monkeypatch):
    from sklearn_cl3d.data import SliceDataset, _loading

    paths = _paths(tmp_path, 2)
    files = VolumeDataset(paths)
    disk = VolumeDataset(paths, cache=tmp_path / "c")
    memory = VolumeDataset(paths, cache=True)
    arrays = VolumeDataset(np.zeros((2, 4, 4, 4)))
    defaults = _loading.loader_defaults
    monkeypatch.setattr(_loading, "_usable_cores", lambda: 16)
    monkeypatch.setattr(
        _loading.multiprocessing, "get_start_method", lambda **_: "fork"
    )
    # the CPU: nothing added, whatever the data
    for ds in (files, arrays):
        assert defaults({}, ds, "cpu") == {}
        assert defaults({}, ds, None) == {}
    # CUDA: pinned memory; workers for data read from files only
    assert defaults({}, arrays, "cuda") == {"pin_memory": True}
    assert defaults({}, memory, "cuda") == {"pin_memory": True}
    assert defaults({}, files, "cuda:0") == {"pin_memory": True, "num_workers": 8}
    assert defaults({}, disk, "cuda")["num_workers"] == 8
    slices = SliceDataset(files)
    assert defaults({}, slices, "cuda")["num_workers"] == 8
    subset = __import__("torch").utils.data.Subset(slices, [0, 1])
    assert defaults({}, subset, "cuda")["num_workers"] == 8
    # the user's settings win
    given = {"num_workers": 0, "pin_memory": False}
    assert defaults(dict(given), files, "cuda") == given
    monkeypatch.setattr(_loading, "_usable_cores", lambda: 1)
    assert defaults({}, files, "cuda") == {"pin_memory": True}
    monkeypatch.setattr(
        _loading.multiprocessing, "get_start_method", lambda **_: "spawn"
    )
    monkeypatch.setattr(_loading, "_usable_cores", lambda: 16)
    assert _loading.default_workers() == 0


def test_estimator_iterator_on_cpu_is_unchanged(tmp_path):
    from sklearn_cl3d import SimCLRPretrainer

    paths = _paths(tmp_path, 4)
    est = SimCLRPretrainer(**TINY, device="cpu")
    loader = est.get_iterator(VolumeDataset(paths), training=True)
    assert loader.num_workers == 0 and not loader.pin_memory
