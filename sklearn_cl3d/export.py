"""Export a pretrained encoder, with its input normalisation, to TorchScript
or ONNX, for use without this package (or without Python).

What the exported model takes depends on the method:

* y-Aware, SimCLR (and WSP fitted on tabular rows): the samples of the fitted
  shape, as ``transform`` takes arrays;
* WSP and global-local (``dims=2``): a batch of 2-D slices, the network's
  unit of input; ``transform`` averages (or max-pools) their features over
  the kept slices of a volume;
* DrasCLR: a batch of landmark patches in the scanner's intensities (HU)
  with the index of the landmark each was cut at; ``transform_patches``
  gives the same features for every landmark of a volume.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.validation import check_is_fitted

from .nn.functional import resize_in_plane, routing_gates

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


class _SliceEncoder(torch.nn.Module):
    """In-plane resize to the network's size, z-scoring, then the 2-D encoder.

    ``features`` is ``"encode"`` (WSP's ``ContrastiveModel``) or
    ``"features"`` (global-local's ``GlobalLocalNet``).
    """

    def __init__(self, module, normalizer, layer, size, features):
        super().__init__()
        self.module = module
        self.normalizer = normalizer
        self.layer = layer
        self.size = size
        self.features = features

    def forward(self, x):
        x = x.float()
        if self.size is not None:
            x = resize_in_plane(x, self.size)
        if self.normalizer is not None:
            x = self.normalizer(x)
        if self.features == "features":
            return self.module.features(x, self.layer)
        return self.module.encode(x, layer=self.layer)


class _PatchEncoder(torch.nn.Module):
    """DrasCLR: HU window, scaling, landmark location, query encoder.

    The library's location-conditioned convolution folds the batch into the
    channels (``groups=batch``), which a trace would fix to the example's
    batch size. Here each block convolves with every expert kernel and mixes
    the outputs with the gates instead: the same sum, since a convolution is
    linear in its kernel, for any batch size.
    """

    def __init__(self, net, locations, window):
        super().__init__()
        self.net = net
        self.register_buffer("locations", torch.as_tensor(locations).float())
        self.low, self.high = window

    def forward(self, patches, landmark):
        x = patches.float().clamp(self.low, self.high) - self.low
        x = x / ((self.high - self.low) / 2) - 1
        locations = self.locations[landmark.long()]
        for block in self.net.layers:
            conv = block.conv
            gates = routing_gates(locations, conv.routing.weight, conv.routing.bias)
            n_experts, out_channels = conv.weight.shape[:2]
            y = F.conv3d(x, conv.weight.flatten(0, 1), None, conv.stride, conv.padding)
            y = y.unflatten(1, (n_experts, out_channels))
            y = (gates[:, :, None, None, None, None] * y).sum(dim=1)
            if conv.bias is not None:
                y = y + conv.bias[None, :, None, None, None]
            x = block.act(block.bn(y))
        return x.flatten(2).mean(dim=2)


@dataclass
class _Spec:
    """What to trace, its inputs, and the estimator's own answer on them."""

    module: torch.nn.Module
    shapes: tuple  # per-sample shape of each input
    names: tuple  # ONNX input names
    default: Callable  # () -> tuple of example inputs
    reference: Callable  # tuple of inputs -> ndarray
    what: str  # what the inputs are, for error messages


def _forward(estimator, dataset):
    """The estimator's evaluation step over ``dataset``, on the CPU."""
    with estimator._on_device():
        out = [
            f.numpy()
            for f in estimator.forward_iter(dataset, training=False, device="cpu")
        ]
    return np.concatenate(out).astype(np.float32, copy=False)


def _volume_spec(estimator):
    module = copy.deepcopy(estimator._bare_module()).float().cpu().eval()
    if not hasattr(module, "encode"):
        raise TypeError(f"{type(module).__name__} has no encode method.")
    normalizer = getattr(estimator, "normalizer_", None)
    shape = tuple(estimator.input_shape_)
    wrapper = _ExportedEncoder(
        module, normalizer, estimator.feature_layer, len(shape) == 1
    )
    return _Spec(
        wrapper,
        (shape,),
        ("volumes",),
        lambda: (np.random.default_rng(0).normal(size=(2, *shape)),),
        lambda inputs: np.asarray(estimator.transform(inputs[0])),
        "samples",
    )


def _slice_spec(estimator, module, normalizer, size, features):
    from skorch.dataset import Dataset

    shape = tuple(estimator.input_shape_)
    axis = estimator.slice_axis % 3
    plane = tuple(s for a, s in enumerate(shape[1:]) if a != axis)
    slice_shape = (shape[0], *plane)
    module = copy.deepcopy(module).float().cpu().eval()
    wrapper = _SliceEncoder(module, normalizer, estimator.feature_layer, size, features)
    return _Spec(
        wrapper,
        (slice_shape,),
        ("slices",),
        lambda: (np.random.default_rng(0).normal(size=(2, *slice_shape)),),
        lambda inputs: _forward(estimator, Dataset(inputs[0])),
        "slices",
    )


def _patch_spec(estimator):
    from skorch.dataset import Dataset

    low, high = estimator._window()
    n_landmarks = estimator.n_landmarks_
    p = estimator.patch_size
    shape = (estimator.input_shape_[0], p, p, p)
    net = copy.deepcopy(estimator._moco().query).float().cpu().eval()
    wrapper = _PatchEncoder(net, estimator.locations_, (low, high))

    def default():
        gen = np.random.default_rng(0)
        n = max(2, min(n_landmarks, 4))
        patches = gen.uniform(low - 100, high + 100, size=(n, *shape))
        # distinct landmarks: the trace keeps the per-sample routing
        return patches, np.arange(n) % n_landmarks

    def reference(inputs):
        patches, landmark = inputs
        window = np.clip(patches, low, high) - low
        return _forward(estimator, Dataset({"patches": window, "landmark": landmark}))

    return _Spec(
        wrapper, (shape, ()), ("patches", "landmark"), default, reference, "patches"
    )


def _spec(estimator):
    from .estimators import (
        BaseContrastivePretrainer,
        DrasCLREncoder,
        GlobalLocalPretrainer,
        WSPPretrainer,
    )

    if not isinstance(estimator, BaseContrastivePretrainer):
        raise TypeError(
            "export takes a fitted pretrainer of sklearn_cl3d (YAwarePretrainer, "
            "SimCLRPretrainer, WSPPretrainer, GlobalLocalPretrainer, "
            f"DrasCLREncoder); got {type(estimator).__name__}."
        )
    check_is_fitted(estimator, "module_")
    if isinstance(estimator, DrasCLREncoder):
        return _patch_spec(estimator)
    if isinstance(estimator, GlobalLocalPretrainer):
        if estimator._dims != 2:
            raise TypeError(
                "export takes a GlobalLocalPretrainer with dims=2 (slice "
                "encoder); with dims=3 its items are slabs cut per partition: "
                "export its network (estimator.module_.unet) yourself."
            )
        size = tuple(int(s) for s in estimator.network_input_shape_[-2:])
        return _slice_spec(estimator, estimator._bare_module(), None, size, "features")
    if isinstance(estimator, WSPPretrainer) and len(estimator.input_shape_) > 1:
        size = estimator.slice_size
        size = None if size is None else (int(size), int(size))
        normalizer = getattr(estimator, "normalizer_", None)
        return _slice_spec(
            estimator, estimator._bare_module(), normalizer, size, "encode"
        )
    return _volume_spec(estimator)


def _check_inputs(spec, X):
    if X is None:
        X = spec.default()
    elif len(spec.shapes) > 1:
        if not isinstance(X, tuple | list) or len(X) != len(spec.shapes):
            raise ValueError(
                f"X must be a pair ({', '.join(spec.names)}) for this "
                f"estimator; got {type(X).__name__}."
            )
    else:
        X = (X,)
    inputs = []
    for x, shape, name in zip(X, spec.shapes, spec.names):
        x = np.asarray(x)
        dtype = np.int64 if name == "landmark" else np.float32
        if dtype is np.int64 and x.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers; got dtype {x.dtype}.")
        x = x.astype(dtype)
        if (
            name == "volumes"
            and x.ndim == len(shape)
            and shape[0] == 1
            and len(shape) > 1
        ):
            x = x[:, None]  # volumes given without their channel axis, as fit allows
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape or len(x) < 2:
            raise ValueError(
                f"X must hold at least 2 {spec.what} of the fitted shape {shape}; "
                f"got an array of shape {x.shape}."
            )
        inputs.append(x)
    if len({len(x) for x in inputs}) > 1:
        raise ValueError(
            f"the inputs {spec.names} have different lengths "
            f"{[len(x) for x in inputs]}."
        )
    return tuple(inputs)


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

    The exported model runs on the CPU in float32, for any batch size, and
    returns the features of the estimator's ``feature_layer``. Before
    returning, the file is loaded back and its outputs on ``X`` (or on
    random input of the fitted shape) are compared with the estimator's
    own; a mismatch beyond ``rtol``/``atol`` raises. Its input depends on
    the method:

    ``YAwarePretrainer``, ``SimCLRPretrainer``
        ``volumes``: a float batch of the fitted per-sample shape
        ``input_shape_`` with its channel axis (``(n, C, D, H, W)``, or
        ``(n, F)`` for tabular input; a ``WSPPretrainer`` fitted on tabular
        rows too). It z-scores each sample when the estimator does
        (``normalize="zscore"``): the output is what ``transform`` returns
        for these arrays.
    ``WSPPretrainer``
        ``slices``: a batch ``(n, C, h, w)`` of 2-D slices of the fitted
        volumes, ``(h, w)`` being the two axes other than ``slice_axis`` in
        array order. It resizes them to ``slice_size`` (when set), z-scores
        each slice and encodes it. ``transform`` is the mean (or max, see
        ``aggregate``) of these features over the kept slices of a volume,
        those of :class:`~sklearn_cl3d.data.SliceDataset` with
        ``fraction=slice_fraction``.
    ``GlobalLocalPretrainer`` (``dims=2``)
        ``slices``: as for WSP, but cut from volumes already scaled with
        :class:`~sklearn_cl3d.data.PercentileScaling` when
        ``normalize="percentile"``: that scaling uses the percentiles of the
        whole volume, so it is not part of a slice encoder. It resizes the
        slices to the network's in-plane size and returns the global U-Net
        encoder features. ``transform`` pools them over every slice of a
        volume. ``dims=3`` is refused.
    ``DrasCLREncoder``
        Two inputs: ``patches``, a float batch ``(n, C, P, P, P)`` of raw
        intensities (HU) cut at the fitted landmarks (``landmarks_``, the
        window corners, see :func:`~sklearn_cl3d.data.extract_patches`),
        and ``landmark``, the int64 index ``(n,)`` of the landmark each
        patch was cut at. It clips to ``hu_window``, scales, looks the
        landmark's location up in ``locations_`` (the encoder is conditioned
        on it) and returns the query encoder's representation: the rows of
        ``transform_patches``.

    ``preprocessing`` steps run on files before the network (resampling,
    cropping), the slicing and patch cutting of volumes, and the
    augmentations are not part of the export.

    Parameters
    ----------
    estimator : fitted pretrainer of sklearn_cl3d
        YAwarePretrainer, SimCLRPretrainer, WSPPretrainer,
        GlobalLocalPretrainer (``dims=2``) or DrasCLREncoder (or a subclass
        of the shared base with a ``ContrastiveModel``).
    path : str or path-like
        File to write (e.g. ``encoder.pt`` or ``encoder.onnx``).
    format : {"torchscript", "onnx"}, default="torchscript"
        ``"torchscript"``: a traced module, loaded with
        ``torch.jit.load(path)`` (DrasCLR's is called as
        ``model(patches, landmark)``). ``"onnx"``: an ONNX graph with a
        dynamic batch axis, inputs named as above (``"volumes"``,
        ``"slices"``, or ``"patches"`` and ``"landmark"``) and output
        ``"features"``; needs the ``onnx`` extra (``pip install
        sklearn-cl3d[onnx]``: onnx and onnxruntime, which verifies it).
    X : array-like, pair of array-like, or None, default=None
        Input to trace with and to verify on, at least 2 samples of the
        exported model's input (for DrasCLR a pair ``(patches,
        landmark)``). None uses 2 random samples (DrasCLR: up to 4 patches
        at distinct landmarks).
    rtol, atol : float, default=1e-4, 1e-5
        Tolerances of the verification: every difference must be at most
        ``atol + rtol * m``, ``m`` the largest magnitude of the estimator's
        features (float32 rounding grows with the features' scale, not with
        each value's).
    opset_version : int, default=17
        ONNX opset.

    Returns
    -------
    path : pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If the exported model's outputs differ from the estimator's.
    TypeError
        If the estimator is not a pretrainer this function can export.
        Also for ``format="onnx"`` when WSP shrinks the slices to
        ``slice_size``: the anti-aliased resize has no ONNX operator (use
        TorchScript).
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
    spec = _spec(estimator)
    size = getattr(spec.module, "size", None)
    plane = spec.shapes[0][-2:]
    if format == "onnx" and isinstance(spec.module, _SliceEncoder) and size:
        if tuple(plane) != size and min(plane) > min(size):
            raise ValueError(
                f"format='onnx' cannot export the anti-aliased resize of the "
                f"{plane[0]}x{plane[1]} slices to slice_size {size[0]} (ONNX has "
                "no such operator): use format='torchscript', or fit with "
                "slice_size=None on slices resized beforehand."
            )
    inputs = _check_inputs(spec, X)
    path = Path(os.fspath(path))
    example = tuple(torch.as_tensor(x) for x in inputs)
    expected = spec.reference(inputs)
    with torch.no_grad(), warnings.catch_warnings():
        # the per-sample shape is fixed: shape-dependent Python values are
        # meant to be constants of the trace
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch marks TorchScript (and the TorchScript-based ONNX exporter,
        # which needs no onnxscript) deprecated; it is what format= asks for
        warnings.simplefilter("ignore", DeprecationWarning)
        if format == "torchscript":
            traced = torch.jit.trace(spec.module, example, check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path))

            def run(batch):
                return loaded(*(torch.as_tensor(x) for x in batch)).numpy()

        else:
            run = _export_onnx(spec, example, path, opset_version)
        # the batch size is not baked in: verify on another one too
        got = run(inputs)
        got_fewer = run(tuple(x[:-1] for x in inputs))
    expected_fewer = expected[:-1]
    if not _close(got_fewer, expected_fewer, rtol, atol):
        got, expected = got_fewer, expected_fewer
    if not _close(got, expected, rtol, atol):
        err = np.max(np.abs(got - expected)) if got.shape == expected.shape else "n/a"
        raise ValueError(
            f"The exported {format} model does not reproduce the estimator's "
            f"features (largest difference {err}; shapes {got.shape} and "
            f"{expected.shape}); the file {path} was written but should not be "
            "used."
        )
    return path


def _close(got, expected, rtol, atol):
    if got.shape != expected.shape:
        return False
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return bool(np.all(np.abs(got - expected) <= atol + rtol * scale))


def _export_onnx(spec, example, path, opset_version):
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "format='onnx' needs onnx and onnxruntime: pip install "
            "'sklearn-cl3d[onnx]'."
        ) from exc
    dynamic = {name: {0: "n"} for name in (*spec.names, "features")}
    torch.onnx.export(
        spec.module,
        example,
        str(path),
        input_names=list(spec.names),
        output_names=["features"],
        dynamic_axes=dynamic,
        opset_version=opset_version,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )

    def run(batch):
        feed = {name: np.asarray(x) for name, x in zip(spec.names, batch)}
        return session.run(None, feed)[0]

    return run
