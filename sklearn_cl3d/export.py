"""Export a pretrained encoder, with its input normalisation, to TorchScript
or ONNX, for use without this package (or without Python)."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

__all__ = ["export"]

FORMATS = ("torchscript", "onnx")


class _ExportedEncoder(torch.nn.Module):
    """z-scoring (if the estimator has it) then the encoder at one layer."""

    def __init__(self, module, normalizer, layer, tabular):
        super().__init__()
        self.module = module
        self.normalizer = normalizer
        self.layer = layer
        self.tabular = tabular

    def forward(self, x):
        x = x.float()
        if self.tabular:
            x = x[:, None, :]
        if self.normalizer is not None:
            x = self.normalizer(x)
        return self.module.encode(x, layer=self.layer)


def _encoder(estimator):
    from .estimators import (
        BaseContrastivePretrainer,
        DrasCLREncoder,
        GlobalLocalPretrainer,
        WSPPretrainer,
    )

    if not isinstance(estimator, BaseContrastivePretrainer):
        raise TypeError(
            "export takes a fitted pretrainer of sklearn_cl3d (YAwarePretrainer, "
            f"SimCLRPretrainer); got {type(estimator).__name__}."
        )
    if isinstance(estimator, WSPPretrainer | DrasCLREncoder | GlobalLocalPretrainer):
        raise TypeError(
            f"{type(estimator).__name__}.transform cuts volumes into slices or "
            "landmark patches (or resizes them) before the network: export its "
            "network (estimator.module_) and reproduce that step yourself."
        )
    check_is_fitted(estimator, "module_")
    module = copy.deepcopy(estimator._bare_module()).float().cpu().eval()
    if not hasattr(module, "encode"):
        raise TypeError(f"{type(module).__name__} has no encode method.")
    normalizer = getattr(estimator, "normalizer_", None)
    tabular = len(estimator.input_shape_) == 1
    return _ExportedEncoder(module, normalizer, estimator.feature_layer, tabular)


def export(
    estimator,
    path,
    *,
    format="torchscript",
    X=None,
    rtol=1e-4,
    atol=1e-5,
    opset_version=17,
):
    """Export the encoder of a fitted pretrainer with its input normalisation.

    The exported model takes a float32 batch of the fitted per-sample shape
    ``input_shape_`` with its channel axis (``(n, C, D, H, W)``, or
    ``(n, F)`` for tabular input; any ``n``),
    z-scores each sample when the estimator does (``normalize="zscore"``) and
    returns the features of the estimator's ``feature_layer``: what
    ``transform`` returns for arrays, on the CPU in float32. Before
    returning, the exported file is loaded back and its outputs on ``X`` (or
    on random input of the fitted shape) are compared with ``transform``;
    a mismatch beyond ``rtol``/``atol`` raises.

    ``preprocessing`` steps run on files before the network (resampling,
    cropping) are not part of the export; nor are the augmentations.

    Parameters
    ----------
    estimator : YAwarePretrainer or SimCLRPretrainer
        A fitted pretrainer (or a subclass of the shared base with a
        ``ContrastiveModel``). WSP, Global-Local and DrasCLR are refused:
        their ``transform`` cuts slices or patches, or resizes, before the
        network.
    path : str or path-like
        File to write (e.g. ``encoder.pt`` or ``encoder.onnx``).
    format : {"torchscript", "onnx"}, default="torchscript"
        ``"torchscript"``: a traced module, loaded with
        ``torch.jit.load(path)``. ``"onnx"``: an ONNX graph with a dynamic
        batch axis, input ``"volumes"`` and output ``"features"``; needs the
        ``onnx`` extra (``pip install sklearn-cl3d[onnx]``: onnx and
        onnxruntime, which verifies it).
    X : array-like of shape (n, ...) or None, default=None
        Input to trace with and to verify on: at least 2 samples of the
        fitted shape. None uses 2 random samples.
    rtol, atol : float, default=1e-4, 1e-5
        Tolerances of the verification against ``transform``.
    opset_version : int, default=17
        ONNX opset.

    Returns
    -------
    path : pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If the exported model's outputs differ from ``transform``.
    ImportError
        For ``format="onnx"`` without onnx and onnxruntime.

    Examples
    --------
    >>> import tempfile, numpy as np, torch
    >>> from sklearn_cl3d import SimCLRPretrainer, export
    >>> X = np.random.default_rng(0).normal(size=(8, 1, 12, 12, 12))
    >>> ssl = SimCLRPretrainer(backbone="small3d", max_epochs=1, batch_size=4,
    ...                        random_state=0, verbose=0).fit(X)
    >>> path = export(ssl, tempfile.mkdtemp() + "/encoder.pt")
    >>> encoder = torch.jit.load(path)
    >>> encoder(torch.as_tensor(X[:3], dtype=torch.float32)).shape
    torch.Size([3, 32])
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}.")
    wrapper = _encoder(estimator)
    shape = tuple(estimator.input_shape_)
    if X is None:
        gen = np.random.default_rng(0)
        X = gen.normal(size=(2, *shape)).astype(np.float32)
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == len(shape) and shape[0] == 1 and len(shape) > 1:
        X = X[:, None]  # volumes given without their channel axis, as fit allows
    if X.ndim != len(shape) + 1 or tuple(X.shape[1:]) != shape or len(X) < 2:
        raise ValueError(
            f"X must hold at least 2 samples of the fitted shape {shape}; got an "
            f"array of shape {X.shape}."
        )
    path = Path(os.fspath(path))
    example = torch.as_tensor(X)
    expected = np.asarray(estimator.transform(X))
    with torch.no_grad(), warnings.catch_warnings():
        # the per-sample shape is fixed: shape-dependent Python values are
        # meant to be constants of the trace
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch marks TorchScript (and the TorchScript-based ONNX exporter,
        # which needs no onnxscript) deprecated; it is what format= asks for
        warnings.simplefilter("ignore", DeprecationWarning)
        if format == "torchscript":
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path))

            def run(batch):
                return loaded(torch.as_tensor(batch)).numpy()

        else:
            run = _export_onnx(wrapper, example, path, opset_version)
        # the batch size is not baked in: verify on another one too
        got = run(X)
        got_fewer = run(X[:-1])
    expected_fewer = expected[:-1]
    if got_fewer.shape != expected_fewer.shape or not np.allclose(
        got_fewer, expected_fewer, rtol=rtol, atol=atol
    ):
        got, expected = got_fewer, expected_fewer
    if got.shape != expected.shape or not np.allclose(
        got, expected, rtol=rtol, atol=atol
    ):
        err = np.max(np.abs(got - expected)) if got.shape == expected.shape else "n/a"
        raise ValueError(
            f"The exported {format} model does not reproduce transform (largest "
            f"difference {err}; shapes {got.shape} and {expected.shape}); the "
            f"file {path} was written but should not be used."
        )
    return path


def _export_onnx(wrapper, example, path, opset_version):
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "format='onnx' needs onnx and onnxruntime: pip install "
            "'sklearn-cl3d[onnx]'."
        ) from exc
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        input_names=["volumes"],
        output_names=["features"],
        dynamic_axes={"volumes": {0: "n"}, "features": {0: "n"}},
        opset_version=opset_version,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )

    def run(batch):
        return session.run(None, {"volumes": np.asarray(batch, np.float32)})[0]

    return run
