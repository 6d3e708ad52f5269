"""export() of the slice and patch encoders: WSP, global-local, DrasCLR.

Each exported file, run on the slices or patches a user cuts from volumes,
must reproduce the estimator's ``transform`` (``transform_patches`` for
DrasCLR) on those volumes.
"""

import warnings

import numpy as np
import pytest
import torch

from sklearn_cl3d import DrasCLREncoder, GlobalLocalPretrainer, WSPPretrainer, export
from sklearn_cl3d.data import PercentileScaling, SliceDataset, extract_patches
from sklearn_cl3d.nn import ResNet2D

FORMATS = ["torchscript", "onnx"]


def _needs(fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="format='onnx' needs the onnx extra")
        pytest.importorskip("onnxruntime", reason="format='onnx' needs the onnx extra")


def clone_fitted(est, **params):
    import copy

    return copy.deepcopy(est).set_params(**params)


def fmt_available(fmt):
    import importlib.util

    return fmt != "onnx" or all(
        importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")
    )


def _runner(path, fmt):
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path))

        def run(*inputs):
            with torch.no_grad():
                return model(*(torch.as_tensor(x) for x in inputs)).numpy()

        return run
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs):
        return session.run(None, dict(zip(names, inputs)))[0]

    return run


def _assert_close(got, expected):
    """Within float32 rounding at the features' scale (export's own check)."""
    atol = 1e-5 + 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


def _kept_slices(X, axis, fraction):
    """Kept slices of every volume, volume-major, as (n * k, C, h, w)."""
    ds = SliceDataset(X, axis=axis, fraction=fraction)
    slices = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    return slices, ds.n_kept


# ------------------------------------------------------------------- WSP


@pytest.fixture(scope="module")
def wsp_data():
    rng = np.random.default_rng(0)
    X = (3 + 2 * rng.normal(size=(6, 16, 16, 10))).astype(np.float32)
    return X, np.array([0, 1, 0, 1, 0, 1])


@pytest.fixture(scope="module")
def wsp(wsp_data):
    X, labels = wsp_data
    return WSPPretrainer(
        backbone=ResNet2D,
        backbone__blocks=(1, 1, 1, 1),
        backbone__widths=(4, 8, 8, 16),
        hidden_dim=16,
        projection_dim=8,
        batch_size=6,
        max_epochs=1,
        augmentation="none",
        random_state=0,
        verbose=0,
    ).fit(X, labels)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wsp_slice_encoder_reproduces_transform(wsp, wsp_data, tmp_path, fmt):
    _needs(fmt)
    X, _ = wsp_data
    path = export(wsp, tmp_path / f"wsp.{fmt}", format=fmt)
    new = np.random.default_rng(1).normal(5, 3, size=(3, 16, 16, 10))
    slices, k = _kept_slices(new.astype(np.float32), wsp.slice_axis, 0.7)
    assert slices.shape == (3 * 7, 1, 16, 16) and k == wsp.n_kept_
    feats = _runner(path, fmt)(slices).reshape(3, k, -1)
    _assert_close(feats.mean(axis=1), wsp.transform(new))


def test_wsp_export_resizes_and_zscores_each_slice(wsp_data, tmp_path):
    X, labels = wsp_data
    est = WSPPretrainer(
        backbone=ResNet2D,
        backbone__blocks=(1, 1, 1, 1),
        backbone__widths=(4, 8, 8, 16),
        slice_size=12,
        hidden_dim=16,
        projection_dim=8,
        batch_size=6,
        max_epochs=1,
        augmentation="none",
        slice_axis=0,
        aggregate="max",
        random_state=0,
        verbose=0,
    ).fit(X, labels)
    path = export(est, tmp_path / "wsp.pt")
    run = _runner(path, "torchscript")
    slices, k = _kept_slices(X[:2], 0, 0.7)
    assert slices.shape[1:] == (1, 16, 10)  # the axes other than slice_axis
    feats = run(slices)
    _assert_close(feats.reshape(2, k, -1).max(axis=1), est.transform(X[:2]))
    if fmt_available("onnx"):
        # 16x10 slices to 12x12: no shrinking, no anti-aliasing, ONNX works
        path = export(est, tmp_path / "wsp.onnx", format="onnx")
        _assert_close(_runner(path, "onnx")(slices), feats)
        # ONNX has no anti-aliased resize: refused before anything is written
        shrinking = clone_fitted(est, slice_size=8)
        with pytest.raises(ValueError, match="anti-aliased resize.*torchscript"):
            export(shrinking, tmp_path / "small.onnx", format="onnx")
        assert not (tmp_path / "small.onnx").exists()
    # per-slice z-scoring is inside: an affine intensity change is invisible
    np.testing.assert_allclose(run(4 * slices + 9), feats, rtol=1e-3, atol=1e-4)
    # the network alone, without resize and z-scoring, gives other features
    with torch.no_grad():
        raw = (
            est._bare_module()
            .eval()
            .encode(
                torch.nn.functional.interpolate(torch.as_tensor(slices), size=(12, 12))
            )
        )
    assert not np.allclose(raw.numpy(), feats, atol=1e-3)


# ----------------------------------------------------------- global-local


@pytest.fixture(scope="module")
def globallocal():
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 1.0, size=(4, 24, 24, 6)).astype(np.float32) * 50 + 100
    est = GlobalLocalPretrainer(
        channels=(4, 8, 8, 8),
        slice_size=32,
        n_decoder_blocks=1,
        hidden_dim=16,
        projection_dim=8,
        region_dim=8,
        max_epochs=1,
        random_state=0,
        verbose=0,
    ).fit(X)
    return est, X


@pytest.mark.parametrize("fmt", FORMATS)
def test_globallocal_slice_encoder_reproduces_transform(globallocal, tmp_path, fmt):
    _needs(fmt)
    est, X = globallocal
    path = export(est, tmp_path / f"gl.{fmt}", format=fmt)
    new = np.random.default_rng(2).normal(80, 30, size=(2, 24, 24, 6))
    new = new.astype(np.float32)
    # the percentile scaling is per volume: the user applies it first
    scaled = np.stack([PercentileScaling().apply(v)[0] for v in new])
    slices, k = _kept_slices(scaled, est.slice_axis, 1.0)
    assert slices.shape == (2 * 6, 1, 24, 24)
    feats = _runner(path, fmt)(slices).reshape(2, k, -1)
    _assert_close(feats.mean(axis=1), est.transform(new))


def test_globallocal_3d_is_refused(tmp_path):
    est = GlobalLocalPretrainer(dims=3)
    est.__dict__["module_"] = torch.nn.Identity()  # fitted enough to check dims
    with pytest.raises(TypeError, match="dims=2"):
        export(est, tmp_path / "x.pt")


# ---------------------------------------------------------------- DrasCLR


@pytest.fixture(scope="module")
def drasclr():
    X = np.random.default_rng(0).normal(-600, 300, size=(4, 16, 16, 16))
    X = X.astype(np.float32)
    est = DrasCLREncoder(
        patch_size=8,
        n_experts=2,
        projection_dim=16,
        queue_size=8,
        batch_size=2,
        max_epochs=1,
        landmarks=[[0, 0, 0], [0, 8, 8], [8, 8, 0]],
        device="cpu",
        random_state=0,
        verbose=0,
    ).fit(X)
    return est, X


@pytest.mark.parametrize("fmt", FORMATS)
def test_drasclr_patch_encoder_reproduces_transform_patches(drasclr, tmp_path, fmt):
    _needs(fmt)
    est, X = drasclr
    path = export(est, tmp_path / f"dras.{fmt}", format=fmt)
    # raw HU, with values outside hu_window: the clipping is in the export
    new = np.random.default_rng(3).normal(-400, 900, size=(2, 16, 16, 16))
    new = new.astype(np.float32)
    run = _runner(path, fmt)
    expected = est.transform_patches(new)
    marks = np.arange(est.n_landmarks_, dtype=np.int64)
    for i in range(2):
        patches = extract_patches(new[i][None], est.landmarks_, est.patch_size)
        _assert_close(run(patches.astype(np.float32), marks), expected[i])
    # one location for a whole batch (DrasCLR's batches during training)
    patches = extract_patches(new[0][None], est.landmarks_, est.patch_size)
    same = np.repeat(patches[1:2], 3, axis=0).astype(np.float32)
    _assert_close(
        run(same, np.ones(3, np.int64)), np.repeat(expected[0, 1:2], 3, axis=0)
    )


def test_drasclr_export_is_conditioned_on_the_landmark(drasclr, tmp_path):
    est, X = drasclr
    run = _runner(export(est, tmp_path / "dras.pt"), "torchscript")
    patch = extract_patches(X[0][None], est.landmarks_, est.patch_size)[:1]
    patches = np.repeat(patch, 2, axis=0).astype(np.float32)
    out = run(patches, np.array([0, 2]))
    # the same patch at two locations: the routing gives other features
    assert not np.allclose(out[0], out[1], atol=1e-4)


def test_drasclr_export_input_errors(drasclr, tmp_path):
    est, _ = drasclr
    with pytest.raises(ValueError, match="pair"):
        export(est, tmp_path / "x.pt", X=np.zeros((2, 1, 8, 8, 8)))
    with pytest.raises(ValueError, match="integers"):
        export(est, tmp_path / "x.pt", X=(np.zeros((2, 1, 8, 8, 8)), [0.5, 1.0]))
    with pytest.raises(ValueError, match="fitted shape"):
        export(est, tmp_path / "x.pt", X=(np.zeros((2, 1, 6, 6, 6)), [0, 1]))
    with pytest.raises(ValueError, match="different lengths"):
        export(est, tmp_path / "x.pt", X=(np.zeros((3, 1, 8, 8, 8)), [0, 1]))
