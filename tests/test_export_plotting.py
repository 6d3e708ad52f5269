"""export(): TorchScript/ONNX encoders with their normalisation; the plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from sklearn_cl3d import (  # noqa: E402
    DrasCLREncoder,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
    export,
)
from sklearn_cl3d.plotting import plot_embedding, plot_views  # noqa: E402

TINY = dict(
    backbone="small3d",
    backbone__channels=(2, 4),
    hidden_dim=8,
    projection_dim=4,
    batch_size=4,
    max_epochs=1,
    random_state=0,
    verbose=0,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = (5 + 3 * rng.normal(size=(12, 1, 10, 10, 10))).astype(np.float32)
    return X, rng.uniform(20, 80, 12)


@pytest.fixture(scope="module")
def fitted(data):
    X, age = data
    return YAwarePretrainer(**TINY).fit(X, age)


def _run_ts(path, X):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(path))
    with torch.no_grad():
        return model(torch.as_tensor(X, dtype=torch.float32)).numpy()


@pytest.mark.parametrize("layer", ["backbone", "projection"])
def test_torchscript_reproduces_transform_on_new_data(data, tmp_path, layer):
    X, age = data
    est = YAwarePretrainer(**{**TINY, "feature_layer": layer}).fit(X, age)
    path = export(est, tmp_path / "enc.pt", X=X[:4])
    new = np.random.default_rng(5).normal(2, 4, size=(7, 1, 10, 10, 10))
    np.testing.assert_allclose(
        _run_ts(path, new), est.transform(new), rtol=1e-4, atol=1e-5
    )


def test_export_includes_the_normalisation(fitted, data, tmp_path):
    X, _ = data
    path = export(fitted, tmp_path / "enc.pt")
    # z-scoring per sample makes the features blind to a affine intensity change
    a = _run_ts(path, X[:3])
    b = _run_ts(path, 10 * X[:3] - 7)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    # without the normalisation the raw network would see other inputs
    raw = fitted._bare_module().eval()
    with torch.no_grad():
        unnormalised = raw.encode(torch.as_tensor(X[:3])).numpy()
    assert not np.allclose(a, unnormalised, atol=1e-3)


def test_export_without_normalisation_and_tabular(tmp_path):
    rng = np.random.default_rng(0)
    Xt = rng.normal(size=(16, 6)).astype(np.float32)
    est = SimCLRPretrainer(
        backbone="mlp",
        normalize=None,
        max_epochs=1,
        batch_size=8,
        random_state=0,
        verbose=0,
    ).fit(Xt)
    path = export(est, tmp_path / "mlp.pt")
    np.testing.assert_allclose(
        _run_ts(path, Xt[:5]), est.transform(Xt[:5]), rtol=1e-4, atol=1e-5
    )


def test_onnx_reproduces_transform(fitted, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    X, _ = data
    path = export(fitted, tmp_path / "enc.onnx", format="onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"volumes": X[:5]})[0]
    np.testing.assert_allclose(out, fitted.transform(X[:5]), rtol=1e-4, atol=1e-5)


def test_export_errors(fitted, data, tmp_path):
    X, age = data
    with pytest.raises(ValueError, match="format"):
        export(fitted, tmp_path / "x", format="pickle")
    with pytest.raises(ValueError, match="fitted shape"):
        export(fitted, tmp_path / "x.pt", X=X[:1])
    with pytest.raises(ValueError, match="fitted shape"):
        export(fitted, tmp_path / "x.pt", X=X[:, :, :5])
    with pytest.raises(NotFittedError):
        export(YAwarePretrainer(**TINY), tmp_path / "x.pt")
    for est in (WSPPretrainer(), GlobalLocalPretrainer(), DrasCLREncoder()):
        with pytest.raises(NotFittedError):
            export(est, tmp_path / "x.pt")
    with pytest.raises(TypeError, match="pretrainer"):
        export(PCA(), tmp_path / "x.pt")


def test_export_detects_a_mismatch(fitted, tmp_path, monkeypatch):
    """A module that traces differently from transform is refused."""
    import sys

    ex = sys.modules["sklearn_cl3d.export"]  # the attribute is the function
    original = ex._ExportedEncoder.forward

    def shifted(self, x):
        return original(self, x) + 1.0

    monkeypatch.setattr(ex._ExportedEncoder, "forward", shifted)
    with pytest.raises(ValueError, match="does not reproduce"):
        export(fitted, tmp_path / "bad.pt")


# ------------------------------------------------------------------- plots


def test_plot_embedding_pca_is_the_pca_of_transform(fitted, data):
    X, age = data
    ax = plot_embedding(fitted, X, color=age)
    xy = ax.collections[0].get_offsets()
    expected = PCA(n_components=2, random_state=0).fit_transform(
        fitted.transform(X).astype(np.float64)
    )
    np.testing.assert_allclose(np.asarray(xy), expected, rtol=1e-6, atol=1e-8)
    assert len(ax.figure.axes) == 2  # the colour bar of a continuous colour
    plt.close(ax.figure)


def test_plot_embedding_categories_and_tsne(fitted, data):
    X, _ = data
    labels = np.array(["AD", "CN", "MCI"] * 4)
    ax = plot_embedding(fitted, X, color=labels, method="tsne")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["AD", "CN", "MCI"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12
    plt.close(ax.figure)


def test_plot_embedding_errors(fitted, data):
    X, _ = data
    with pytest.raises(ValueError, match="one value per sample"):
        plot_embedding(fitted, X, color=[1, 2])
    with pytest.raises(ValueError, match="method"):
        plot_embedding(fitted, X, method="mds")
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            plot_embedding(fitted, X, method="umap")


def test_plot_views_draws_the_estimators_views(fitted, data):
    X, _ = data
    state = fitted._generator(torch.device("cpu")).get_state().clone()
    fig = plot_views(fitted, X[:3], n_views=2)
    assert len(fig.axes) == 9
    images = [ax.get_images()[0].get_array() for ax in fig.axes]
    # the input is z-scored; the cutout views differ from it
    assert abs(float(np.mean(images[0]))) < 1.0
    assert not np.allclose(images[0], images[1]) or not np.allclose(
        images[0], images[2]
    )
    # the fit's own augmentation stream is untouched, the views reproducible
    assert torch.equal(fitted._generator(torch.device("cpu")).get_state(), state)
    again = plot_views(fitted, X[:3], n_views=2)
    for a, b in zip(fig.axes, again.axes):
        np.testing.assert_array_equal(
            a.get_images()[0].get_array(), b.get_images()[0].get_array()
        )
    plt.close("all")


def test_plot_views_without_augmentation_shows_the_input(data):
    X, age = data
    est = YAwarePretrainer(**{**TINY, "augmentation": "none"}).fit(X, age)
    fig = plot_views(est, X[:2], n_views=1)
    a, b = (ax.get_images()[0].get_array() for ax in fig.axes[:2])
    np.testing.assert_array_equal(a, b)
    plt.close("all")


def test_plot_views_wsp_and_drasclr():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 20, 20, 10)).astype("float32")
    wsp = WSPPretrainer(
        backbone="resnet18",
        slice_size=32,
        max_epochs=1,
        batch_size=4,
        random_state=0,
        verbose=0,
    ).fit(X, [0, 1] * 4)
    fig = plot_views(wsp, X[:2])
    assert fig.axes[0].get_images()[0].get_array().shape == (32, 32)
    Xd = rng.normal(-700, 200, size=(4, 16, 16, 16)).astype("float32")
    enc = DrasCLREncoder(
        patch_size=8,
        n_experts=2,
        landmarks=[[0, 0, 0], [0, 8, 8], [8, 0, 8]],
        queue_size=8,
        batch_size=2,
        max_epochs=1,
        random_state=0,
        verbose=0,
    ).fit(Xd)
    fig = plot_views(enc, Xd[:2])
    assert fig.axes[0].get_images()[0].get_array().shape == (16, 16)
    plt.close("all")
    with pytest.raises(ValueError, match="n_views"):
        plot_views(wsp, X[:2], n_views=0)
