"""Property-based fuzzing of the input validation (issue 14, point 7).

The property, for every public estimator and loader, on random shapes,
dtypes, NaN/inf, ragged lists, strings, bools and negative or huge parameter
values: **either a clean result or a ValueError/TypeError** (or the
documented ``FileNotFoundError``; ``PersistenceError`` is a ValueError) **with
a message** - never another exception type, a hang, or NaN in what is
returned. Training that diverges (a non-finite loss, e.g. from extreme
targets or a learning rate of 1e300) stops with the ``FloatingPointError`` of
:class:`~sklearn_cl3d.callbacks.StopOnNonFiniteLoss`, which names the epoch
and batch; it is allowed too.

Inputs are tiny and the example counts come from the hypothesis profile
registered in ``conftest.py`` (``ci`` by default: derandomized, about a
minute for the whole file on two cores). Valid parameter values that cost
what they ask for (many epochs, huge layers or queues) are kept small: they
are requests, not bad input.
"""

import json
import math
import signal
import warnings
from contextlib import contextmanager

import nibabel as nib
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import (  # noqa: E402
    assume,
    given,
    settings,
    strategies as st,  # noqa: E402
)
from hypothesis.extra import numpy as hnp  # noqa: E402

from sklearn_cl3d import (  # noqa: E402
    ContrastiveSegmenter,
    DrasCLREncoder,
    FineTunedClassifier,
    FineTunedRegressor,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
    load_pretrained,
)
from sklearn_cl3d.data import (  # noqa: E402
    CropOrPad,
    HUWindow,
    IntensityZScore,
    ReorientToRAS,
    Resample,
    VolumeDataset,
    load_volume,
    read_nrrd,
)
from sklearn_cl3d.datasets import (  # noqa: E402
    load_chest_ct,
    make_brain_cohort,
    make_lung_cohort,
)
from sklearn_cl3d.persistence import (  # noqa: E402
    CONFIG_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
)
from sklearn_cl3d.persistence._manifest import make_manifest  # noqa: E402

ALLOWED = (ValueError, TypeError, FileNotFoundError, FloatingPointError)
TIME_LIMIT_S = 30  # per call: far above any tiny fit, so only a hang trips it

#: examples per estimator test (each may train a tiny network)
FIT_EXAMPLES = max(3, settings().max_examples // 2)


class Hang(BaseException):
    """Raised by the time limit (a BaseException: no ``except Exception``
    in the code under test can turn it into an allowed error)."""


@contextmanager
def time_limit(seconds):
    def stop(signum, frame):
        raise Hang(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _assert_finite(out):
    if isinstance(out, tuple):
        for item in out:
            _assert_finite(item)
        return
    arr = getattr(out, "volumes", out)
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "fc":
        assert np.isfinite(arr).all(), "non-finite values returned"


def outcome(call):
    """The result of ``call()``, or None if it raised an allowed error with a
    message; anything else fails the test."""
    with warnings.catch_warnings(), time_limit(TIME_LIMIT_S):
        warnings.simplefilter("ignore")
        try:
            out = call()
        except ALLOWED as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            return None
        except Hang as exc:  # reported (and shrunk) like any failure
            raise AssertionError(str(exc)) from None
    _assert_finite(out)
    return out


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------
SPECIAL = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -0.0]

any_arrays = hnp.arrays(
    dtype=st.sampled_from(
        [np.float32, np.float64, np.int16, np.uint8, np.bool_, np.complex64]
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=6, min_side=0, max_side=4),
)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.lists(st.floats(width=32), max_size=4),
    st.lists(st.lists(st.floats(width=32), max_size=3), max_size=3),  # ragged
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    any_arrays,
)


@st.composite
def volumes(draw, min_n=0, max_n=5, max_side=10, ndims=(4, 5)):
    """Float arrays shaped like volumes, sometimes with special values."""
    n = draw(st.integers(min_n, max_n))
    ndim = draw(st.sampled_from(ndims))
    channels = (draw(st.integers(1, 2)),) if ndim == 5 else ()
    sides = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = (rng.normal(size=(n, *channels, *sides)) * 100).astype(dtype)
    if X.size and X.dtype.kind == "f" and draw(st.booleans()):
        X.flat[draw(st.integers(0, X.size - 1))] = draw(st.sampled_from(SPECIAL))
    return X


def xs(**kwargs):
    return st.one_of(volumes(**kwargs), volumes(**kwargs), junk)


# --------------------------------------------------------------------------
# estimators: cheap configurations and a valid input for each
# --------------------------------------------------------------------------
RNG = np.random.default_rng(0)
VOL8 = RNG.normal(size=(4, 1, 8, 8, 8)).astype(np.float32)
VOL16 = RNG.normal(-600, 300, size=(2, 16, 16, 16)).astype(np.float32)
SLICES = RNG.normal(size=(4, 32, 32, 4)).astype(np.float32)
BASE = dict(max_epochs=1, device="cpu", random_state=0)

ESTIMATORS = {
    "yaware": (
        lambda: YAwarePretrainer(
            backbone="mlp",
            backbone__hidden_dims=(4,),
            hidden_dim=4,
            projection_dim=2,
            augmentation="none",
            batch_size=4,
            **BASE,
        ),
        VOL8,
        lambda n: np.linspace(20, 80, n),
    ),
    "simclr": (
        lambda: SimCLRPretrainer(
            backbone="small3d",
            backbone__channels=(2,),
            hidden_dim=4,
            projection_dim=2,
            batch_size=4,
            **BASE,
        ),
        VOL8,
        lambda n: None,
    ),
    "wsp": (
        lambda: WSPPretrainer(
            backbone="mlp",
            backbone__hidden_dims=(4,),
            slice_size=8,
            hidden_dim=4,
            projection_dim=2,
            augmentation="none",
            batch_size=4,
            **BASE,
        ),
        VOL8,
        lambda n: np.arange(n) % 2,
    ),
    "globallocal": (
        lambda: GlobalLocalPretrainer(
            channels=(4, 8, 8, 8),
            slice_size=32,
            n_decoder_blocks=1,
            hidden_dim=4,
            projection_dim=2,
            region_dim=4,
            **BASE,
        ),
        SLICES,
        lambda n: None,
    ),
    "drasclr": (
        lambda: DrasCLREncoder(
            patch_size=8,
            n_experts=2,
            projection_dim=4,
            queue_size=4,
            batch_size=2,
            landmarks=[[0, 0, 0], [0, 8, 8], [8, 8, 0]],
            **BASE,
        ),
        VOL16,
        lambda n: None,
    ),
    "segmenter": (
        lambda: ContrastiveSegmenter(
            n_classes=2, channels=(4, 8, 8, 8), slice_size=32, **BASE
        ),
        SLICES,
        lambda n: (SLICES[:n] > 0).astype(np.int64) if n <= len(SLICES) else None,
    ),
    "classifier": (
        lambda: FineTunedClassifier(
            backbone="small3d", backbone__channels=(2,), batch_size=4, **BASE
        ),
        VOL8,
        lambda n: np.arange(n) % 2,
    ),
    "regressor": (
        lambda: FineTunedRegressor(
            backbone="mlp", backbone__hidden_dims=(4,), batch_size=4, **BASE
        ),
        VOL8,
        lambda n: np.linspace(0, 1, n),
    ),
}


def _output(est, X):
    if hasattr(est, "transform"):
        return est.transform(X)
    if hasattr(est, "predict_proba"):
        return est.predict_proba(X)
    return est.predict(X)


def _fit_and_use(est, X, y):
    est.fit(X, y)
    return _output(est, X)


def _len(X):
    try:
        return len(X)
    except TypeError:
        return 0


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@settings(max_examples=FIT_EXAMPLES)
@given(X=xs(max_side=10))
def test_any_X(name, X):
    make, _, target = ESTIMATORS[name]
    outcome(lambda: _fit_and_use(make(), X, target(_len(X))))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@settings(max_examples=FIT_EXAMPLES)
@given(data=st.data())
def test_any_y(name, data):
    make, X, target = ESTIMATORS[name]
    valid = target(len(X))
    options = [junk, hnp.arrays(np.float64, st.integers(0, 6))]
    if valid is not None:
        shape = np.shape(valid)
        options.append(
            hnp.arrays(np.asarray(valid).dtype, shape).map(
                lambda a: np.where(np.isfinite(a), a, 0) if a.dtype.kind == "f" else a
            )
        )
    y = data.draw(st.one_of(*options))
    outcome(lambda: _fit_and_use(make(), X, y))


# valid requests whose cost is what they ask for: fuzzed only with small ints
COSTLY = {
    "max_epochs",
    "local_epochs",
    "steps_per_epoch",
    "hidden_dim",
    "projection_dim",
    "region_dim",
    "queue_size",
    "n_negatives",
    "n_partitions",
    "n_experts",
    "patch_size",
    "slice_size",
    "slab_depth",
    "output_depth",
    "volume_depth",
    "n_landmarks",
    "neighbors",
    "n_classes",
}

weird_values = st.one_of(
    st.sampled_from(
        [-(10**12), -1, 0, 1, 2, 10**12, -0.5, 0.5, 1.5, 1e-300, 1e300]
        + [math.nan, math.inf, -math.inf, True, False, None, "", "x", "auto"]
        + [[1], (), {}, (1, 2), np.float32(1), np.int64(-3)]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
)


def _cheap(name, value):
    if name == "compile":  # torch.compile takes seconds to minutes: a request
        return not value
    if name not in COSTLY:
        return True
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return value <= 3
    return not isinstance(value, float | np.floating) or not value > 3


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@settings(max_examples=FIT_EXAMPLES)
@given(data=st.data())
def test_any_parameter_value(name, data):
    make, X, target = ESTIMATORS[name]
    est = make()
    param = data.draw(st.sampled_from(sorted(est._parameter_constraints)))
    value = data.draw(weird_values)
    assume(_cheap(param, value))

    def run():
        est.set_params(**{param: value})
        return _fit_and_use(est, X, target(len(X)))

    outcome(run)


@settings(max_examples=FIT_EXAMPLES)
@given(X=xs(min_n=1, max_side=8))
def test_any_X_for_a_fitted_estimator(X):
    make, X_fit, target = ESTIMATORS["yaware"]
    est = make().fit(X_fit, target(len(X_fit)))
    outcome(lambda: est.transform(X))


# --------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------
@given(X=st.one_of(any_arrays, volumes(max_n=3), junk))
def test_load_volume_any_array(X):
    outcome(lambda: load_volume(X))


@given(X=xs(max_side=6), cache=st.booleans())
def test_volume_dataset_any_X(X, cache):
    def run():
        ds = VolumeDataset(X, cache=cache)
        return tuple(ds.volume(i) for i in range(len(ds)))

    outcome(run)


NRRD_TYPES = ["uchar", "short", "ushort", "int", "float", "double", "block", "x"]
NRRD_ENCODINGS = ["raw", "gzip", "bzip2", "text", "hex", ""]


@st.composite
def nrrd_files(draw):
    """A NRRD file: mostly plausible fields with random values, random data."""
    fields = {
        "type": draw(st.sampled_from(NRRD_TYPES)),
        "dimension": draw(st.sampled_from(["3", "4", "2", "-1", "x", "3.0"])),
        "sizes": " ".join(
            draw(
                st.lists(
                    st.sampled_from(["1", "2", "3", "0", "-2", "9" * 20, "x"]),
                    min_size=0,
                    max_size=5,
                )
            )
        ),
        "encoding": draw(st.sampled_from(NRRD_ENCODINGS)),
        "endian": draw(st.sampled_from(["little", "big", "middle"])),
    }
    optional = {
        "line skip": st.sampled_from(["0", "1", "999999999", "-1", "x"]),
        "byte skip": st.sampled_from(["0", "-1", "3", "-7", "99999999999"]),
        "space": st.sampled_from(["left-posterior-superior", "ras", "mars"]),
        "space directions": st.sampled_from(
            ["(1,0,0) (0,1,0) (0,0,1)", "none (1,0,0) (0,1,0) (0,0,1)", "(nan,0,0)"]
        ),
        "space origin": st.sampled_from(["(0,0,0)", "(1,2)", "(inf,0,0)"]),
        "kinds": st.sampled_from(["domain domain domain", "vector domain domain"]),
        "data file": st.just("other.raw"),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            fields[key] = draw(strategy)
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2)):
        fields.pop(key, None)  # missing required fields too
    header = draw(st.sampled_from(["NRRD0004", "NRRD0005", "NRRD9", "PNG"]))
    text = header + "\n" + "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n"
    payload = draw(st.binary(max_size=64))
    if fields.get("encoding") == "gzip" and draw(st.booleans()):
        import gzip

        payload = gzip.compress(payload)
    return text.encode("latin-1") + payload


@given(content=nrrd_files())
def test_read_nrrd_any_file(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("nrrd") / "f.nrrd"
    path.write_bytes(content)
    for func in (read_nrrd, load_volume):
        with warnings.catch_warnings(), time_limit(TIME_LIMIT_S):
            warnings.simplefilter("ignore")
            try:
                out = func(path)
            except ValueError as exc:
                assert str(path) in str(exc)  # every read error names the file
                continue
        assert out[0].size >= 1


def _nifti_bytes(gz):
    img = nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4))
    raw = img.to_bytes()
    if gz:
        import gzip

        raw = gzip.compress(raw)
    return raw


@given(
    gz=st.booleans(),
    edits=st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.integers(0, 700)),
)
def test_any_nifti_corruption(tmp_path_factory, gz, edits, cut):
    raw = bytearray(_nifti_bytes(gz))
    for offset, value in edits:
        if offset < len(raw):
            raw[offset] = value
    if cut is not None:
        raw = raw[:cut]
    path = tmp_path_factory.mktemp("nii") / ("v.nii.gz" if gz else "v.nii")
    path.write_bytes(bytes(raw))
    for func in (load_volume, lambda p: VolumeDataset([p]).volume(0), load_chest_ct):
        with warnings.catch_warnings(), time_limit(TIME_LIMIT_S):
            warnings.simplefilter("ignore")
            try:
                out = func(path)
            except ValueError as exc:
                assert str(path) in str(exc)
                continue
        _assert_finite(out)


@given(
    edits=st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6
    ),
    cut=st.one_of(st.none(), st.integers(0, 600)),
)
def test_any_npy_corruption(tmp_path_factory, edits, cut):
    path = tmp_path_factory.mktemp("npy") / "v.npy"
    np.save(path, np.zeros((4, 4, 4), np.float32))
    raw = bytearray(path.read_bytes())
    for offset, value in edits:
        if offset < len(raw):
            raw[offset] = value
    path.write_bytes(bytes(raw if cut is None else raw[:cut]))
    with warnings.catch_warnings(), time_limit(TIME_LIMIT_S):
        warnings.simplefilter("ignore")
        try:
            _assert_finite(load_volume(path))
        except ValueError as exc:
            assert str(path) in str(exc)


@given(
    name=st.sampled_from(["a.nii", "a.nii.gz", "a.txt", "folder"]),
    content=st.binary(max_size=32),
)
def test_load_chest_ct_any_file(tmp_path_factory, name, content):
    root = tmp_path_factory.mktemp("ct")
    target = root / name
    if name == "folder":
        target.mkdir()
    else:
        target.write_bytes(content)
    outcome(lambda: load_chest_ct(target))
    outcome(lambda: load_chest_ct(root / "missing.nii"))


# --------------------------------------------------------------------------
# preprocessing and generated cohorts
# --------------------------------------------------------------------------
STEPS = {
    "Resample": (Resample, ["spacing", "order"]),
    "CropOrPad": (CropOrPad, ["shape", "mode", "mask_threshold", "pad_value"]),
    "IntensityZScore": (IntensityZScore, ["mask"]),
    "HUWindow": (HUWindow, ["low", "high", "scale"]),
    "ReorientToRAS": (ReorientToRAS, []),
}
DEFAULTS = {"shape": 4}


@given(
    step=st.sampled_from(sorted(STEPS)),
    data=st.data(),
    volume=st.one_of(volumes(min_n=1, max_n=2, max_side=6), any_arrays, junk),
    affine=st.one_of(
        st.none(),
        hnp.arrays(np.float64, (4, 4), elements=st.floats(-1e3, 1e3)),
        st.sampled_from([np.diag([1e-6] * 3 + [1]), np.diag([1e6, 1, 1, 1])]),
        any_arrays,
    ),
)
def test_preprocessing_any_input(step, data, volume, affine):
    cls, names = STEPS[step]
    params = {k: v for k, v in DEFAULTS.items() if k in names}
    if names and data.draw(st.booleans()):
        name = data.draw(st.sampled_from(names))
        params[name] = data.draw(
            st.one_of(weird_values, st.tuples(*[weird_values] * 3))
        )
    transformer = cls(**params)
    first = volume[0] if isinstance(volume, np.ndarray) and volume.ndim == 5 else volume
    outcome(lambda: transformer.apply(first, affine))
    outcome(lambda: transformer.fit_transform(volume))


@settings(max_examples=max(3, settings().max_examples // 3))
@given(
    n_subjects=st.one_of(st.integers(-2, 2), weird_values),
    shape=st.one_of(
        st.just((16, 16, 16)), weird_values, st.tuples(*[weird_values] * 3)
    ),
    spacing=st.one_of(st.just(5.0), weird_values),
    random_state=st.one_of(st.just(0), weird_values),
)
def test_make_lung_cohort_any_parameters(n_subjects, shape, spacing, random_state):
    # valid but costly requests (many or large subjects) are kept small
    if isinstance(n_subjects, int | np.integer) and not isinstance(n_subjects, bool):
        assume(n_subjects <= 2)
    if (
        isinstance(shape, tuple)
        and shape
        and all(
            isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape
        )
    ):
        assume(max(shape) <= 24)
    if isinstance(shape, int | np.integer) and not isinstance(shape, bool):
        assume(shape <= 24)
    outcome(lambda: make_lung_cohort(n_subjects, shape, spacing, random_state))


BAD_VALUES = [-1, 0, True, 1.5, math.nan, math.inf, None, "x", [2], -(10**12)]


@settings(max_examples=max(3, settings().max_examples // 3))
@given(
    name=st.sampled_from(
        ["n_subjects", "resolution", "difficulty", "n_sites", "random_state"]
        + ["acceleration", "reserve", "deformation_mm", "modality"]
    ),
    value=st.sampled_from(BAD_VALUES),
)
def test_make_brain_cohort_bad_parameters(name, value):
    params = {"n_subjects": 1, "resolution": 8, "random_state": 0, name: value}
    # only values that cannot be valid requests: no cohort is generated
    assume(
        not (name in ("acceleration", "reserve", "deformation_mm") and value is None)
    )
    assume(not (name == "random_state" and (value is None or value == 0)))
    outcome(lambda: make_brain_cohort(**params))


# --------------------------------------------------------------------------
# saved encoders
# --------------------------------------------------------------------------
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**15), 10**15),
        st.floats(allow_nan=False),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def saved_encoder(tmp_path_factory):
    make, X, target = ESTIMATORS["yaware"]
    folder = tmp_path_factory.mktemp("enc") / "encoder"
    make().fit(X, target(len(X))).save_pretrained(folder)
    return folder, json.loads((folder / CONFIG_NAME).read_text())


def _walk(node, path=()):
    """Every (path, value) in a JSON tree."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))


def _replace(node, path, value):
    if not path:
        return value
    node = json.loads(json.dumps(node))
    parent = node
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return node


@settings(max_examples=FIT_EXAMPLES)
@given(data=st.data(), value=json_values)
def test_load_pretrained_any_config_value(saved_encoder, tmp_path_factory, data, value):
    folder, config = saved_encoder
    places = [p for p, _ in _walk(config)]
    where = data.draw(st.sampled_from(places))
    target = tmp_path_factory.mktemp("mutated") / "encoder"
    target.mkdir()
    raw = json.dumps(_replace(config, where, value)).encode()
    weights = (folder / WEIGHTS_NAME).read_bytes()
    (target / CONFIG_NAME).write_bytes(raw)
    (target / WEIGHTS_NAME).write_bytes(weights)
    # an attacker can recompute the checksums: the content checks are fuzzed
    (target / MANIFEST_NAME).write_text(
        make_manifest({CONFIG_NAME: raw, WEIGHTS_NAME: weights})
    )
    est = outcome(lambda: load_pretrained(target))
    if est is not None:
        outcome(lambda: est.transform(ESTIMATORS["yaware"][1]))
