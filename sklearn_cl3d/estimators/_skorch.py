"""scikit-learn plumbing every skorch-based estimator of the package shares:
parameter names and validation, ``device="auto"`` across pickling, each
fit's own random streams, and pretrained weights passed by reference through
``clone``."""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    validate_parameter_constraints,
)
from skorch.utils import to_device, to_tensor
from tqdm.auto import tqdm

from .. import distributed as _dist
from .._heap import cpu_heap_reuse
from .._rng import FitRandomness
from ..nn._cpu_kernels import low_precision_safe_convs
from ._device import (
    _AUTOCAST_DTYPES,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)

__all__ = [
    "DevicePlumbingMixin",
    "FitRandomness",
    "PretrainedByReferenceMixin",
    "SkorchEstimatorMixin",
    "draw_base_seed",
]

_FLOAT32_MAX = float(np.finfo(np.float32).max)

# Modules of these packages use torch's global RNG only where
# ``_module_draws_from_global_rng`` looks (dropout-like layers).
_KNOWN_MODULE_PACKAGES = ("torch.nn.", "sklearn_cl3d.")


def draw_base_seed(random_state):
    """The base seed of a fit, drawn without touching numpy's global RNG.

    Parameters
    ----------
    random_state : int, numpy.random.RandomState or None
        An int gives the same seed every time; a ``RandomState`` instance is
        drawn from (it is the caller's own object); None draws fresh entropy
        from the operating system, so ``np.random.seed`` has no effect on it.

    Returns
    -------
    int
        A seed in ``[0, 2**31 - 1)``.

    Examples
    --------
    >>> draw_base_seed(0) == draw_base_seed(0)
    True
    """
    high = np.iinfo(np.int32).max
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] % high)
    return int(check_random_state(random_state).randint(high))


def _module_draws_from_global_rng(module):
    """Whether a module's forward may draw from torch's global RNG.

    True for dropout-like layers with a non-zero probability (``nn.Dropout*``,
    ``nn.RReLU``, modules with a positive ``dropout``/``drop_rate``) and for
    any module class outside torch.nn and this package (unknown code).
    """
    for sub in module.modules():
        if not type(sub).__module__.startswith(_KNOWN_MODULE_PACKAGES):
            return True
        if isinstance(sub, torch.nn.RReLU):
            return True
        if isinstance(sub, torch.nn.modules.dropout._DropoutNd) and sub.p > 0:
            return True
        for name in ("dropout", "drop_rate"):
            value = getattr(sub, name, None)
            if isinstance(value, Real) and not isinstance(value, bool) and value > 0:
                return True
    return False


def _len_or_none(iterator):
    try:
        return len(iterator)
    except TypeError:
        return None


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, tuple | list):
        for item in out:
            yield from _tensors(item)
    elif isinstance(out, dict):
        for item in out.values():
            yield from _tensors(item)


def _n_rows(out):
    return next((len(t) for t in _tensors(out) if t.ndim), 0)


def _first_nonfinite_row(out):
    """Index of the first row with NaN/inf in a batch output, or None."""
    for t in _tensors(out):
        if not t.is_floating_point() and not t.is_complex():
            continue
        finite = torch.isfinite(t)
        if finite.all():
            continue
        if t.ndim == 0:
            return 0
        rows = (~finite).reshape(len(t), -1).any(dim=1)
        return int(torch.nonzero(rows)[0, 0])
    return None


def _check_numbers(constraints, params, caller_name):
    """What scikit-learn's ``Interval`` lets through but torch cannot use.

    * ``True``/``False`` for a number: ``Interval(Integral, ...)`` accepts
      bools (``bool`` is an ``int``), so ``batch_size=True`` would pass as 1;
    * ints beyond 64 bits (torch raises ``OverflowError`` on them);
    * real numbers beyond float32's range (the networks compute in float32:
      ``lr=1e300`` makes torch raise a ``RuntimeError``).
    """
    for key, value in params.items():
        options = constraints.get(key, ())
        if any(c in ("boolean", "verbose") or c is bool for c in options):
            continue
        intervals = [c for c in options if isinstance(c, Interval)]
        numeric = intervals or [c for c in options if c in (Integral, Real, int, float)]
        if not numeric:
            continue
        kind = (
            str(numeric[0])
            if isinstance(numeric[0], Interval)
            else f"of type {getattr(numeric[0], '__name__', numeric[0])}"
        )
        if isinstance(value, bool | np.bool_):
            problem = ", not a bool"
        elif isinstance(value, Integral) and not -(2**63) <= int(value) < 2**63:
            problem = " (ints must fit in a signed 64-bit integer)"
        elif (
            any(c.type is Real for c in intervals)
            and isinstance(value, Real)
            and abs(float(value)) > _FLOAT32_MAX
        ):
            problem = f" that float32 can hold (at most {_FLOAT32_MAX:.4g})"
        else:
            continue
        raise InvalidParameterError(
            f"The {key!r} parameter of {caller_name} must be {kind}{problem}. "
            f"Got {value!r} instead."
        )


class SkorchEstimatorMixin:
    """Put before ``skorch.NeuralNet`` in the bases.

    * ``get_params``/``clone`` see only real parameters (skorch also lists
      private ``__dict__`` keys such as ``_params_to_validate``);
    * ``_check_params`` enforces ``_parameter_constraints`` (skorch's own
      ``_validate_params`` shadows scikit-learn's) and the device;
    * the attributes named in ``_transient_attributes`` (caches, compiled
      modules, generators) are not pickled;
    * ``device="auto"`` survives pickling: it is resolved on this machine at
      load time and the parameter keeps ``"auto"``.
    """

    _transient_attributes = ()

    def _get_param_names(self):
        return [k for k in super()._get_param_names() if not k.startswith("_")]

    def _check_params(self):
        params = {
            key: getattr(self, key)
            for key in self._parameter_constraints
            if key in self.__dict__
        }
        validate_parameter_constraints(
            self._parameter_constraints, params, caller_name=type(self).__name__
        )
        _check_numbers(self._parameter_constraints, params, type(self).__name__)
        resolve_device(self.device)

    def __getstate__(self):
        state = super().__getstate__()
        for key in (*self._transient_attributes, "_rng_streams"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        requested = state.get("device")
        if requested == "auto":
            state["device"] = resolve_device("auto")
        # skorch maps CUDA tensors to the CPU when CUDA is missing here
        super().__setstate__(state)
        if "device_" in self.__dict__:
            self.device_ = str(self.__dict__["device"])
        if requested == "auto":
            self.__dict__["device"] = "auto"


class DevicePlumbingMixin:
    """Device, seeding, precision and batch-placement helpers every estimator
    of the package shares (``device="auto"``, ``random_state``,
    ``precision``, ``memory_format``, ``compile``)."""

    #: Whether CPU fits keep freed tensor memory in the heap
    #: (:func:`sklearn_cl3d._heap.cpu_heap_reuse`). It saves page faults on
    #: the large, regular activations of 3-D networks; estimators whose steps
    #: allocate many smaller blocks of varying sizes (2-D slices) turn it off,
    #: since the fragmented heap then raises the peak memory.
    _cpu_heap_reuse = True

    @contextmanager
    def _on_device(self):
        """Resolve ``device="auto"`` for the duration of a skorch call.

        skorch reads ``self.device`` everywhere; the parameter itself keeps
        the user's value so ``get_params``/``clone`` are unchanged. On the
        CPU, freed tensor memory is reused rather than faulted in again at
        every step (:func:`sklearn_cl3d._heap.cpu_heap_reuse`).
        """
        requested = self.__dict__["device"]
        resolved = resolve_device(requested)
        on_cpu = resolved is None or torch.device(resolved).type == "cpu"
        self.__dict__["device"] = resolved
        try:
            with cpu_heap_reuse(on_cpu and self._cpu_heap_reuse):
                yield resolved
        finally:
            self.__dict__["device"] = requested

    @contextmanager
    def _seeded(self, offset):
        """Run a fit with its own random streams, seeded from ``random_state``.

        Inside, torch's global RNG is this fit's stream
        (:class:`FitRandomness`, seed ``_base_seed_ + offset``): weight
        initialisation, shuffling and callbacks draw from it under a
        process-wide lock, and training steps of networks that draw no
        global random number (no dropout) release the lock. The global state
        is the same after the fit as before, and fits in threads give the
        results of sequential fits.
        """
        seed = self._base_seed_ + int(offset)
        device = self.__dict__["device"]
        devices = []
        if device is not None and torch.device(device).type == "cuda":
            index = torch.device(device).index
            devices = [torch.cuda.current_device() if index is None else index]
        streams = FitRandomness(seed, devices)
        previous = self.__dict__.get("_rng_streams")
        self.__dict__["_rng_streams"] = streams
        try:
            with streams.active():
                yield seed
        finally:
            if previous is None:
                self.__dict__.pop("_rng_streams", None)
            else:
                self.__dict__["_rng_streams"] = previous

    def _rng_active(self):
        """This fit's global stream (a no-op outside a fit)."""
        streams = self.__dict__.get("_rng_streams")
        return nullcontext() if streams is None else streams.active()

    def _steps_draw_from_global_rng(self):
        """Whether a training step may draw from torch's global RNG."""
        from ..augment._presets import _CallWithoutGenerator

        for name in (*self._modules, *self._criteria):
            module = getattr(self, name + "_", None)
            if isinstance(module, torch.nn.Module) and _module_draws_from_global_rng(
                module
            ):
                return True
        return any(isinstance(v, _CallWithoutGenerator) for v in vars(self).values())

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if iterator is not None:
            # the steps this process runs, for the progress bar's total
            steps = self.__dict__.setdefault("_phase_steps", {})
            steps[bool(training)] = _len_or_none(iterator)
        streams = self.__dict__.get("_rng_streams")
        if streams is not None and not self._steps_draw_from_global_rng():
            inner = step_fn

            def step_fn(batch, **params):
                with streams.suspended():
                    return inner(batch, **params)

        return super().run_single_epoch(
            iterator, training, prefix, step_fn, **fit_params
        )

    def forward_iter(self, X, training=False, device="cpu"):
        """skorch's ``forward_iter``, without drawing from the global RNG and
        refusing non-finite outputs.

        A ``DataLoader`` without a ``generator`` draws a seed for its workers
        from torch's global RNG each time it is iterated; inference loaders
        here get a fixed private generator instead (they do not shuffle).
        Every output (``transform``, ``predict``, ...) is checked: NaN or
        infinity raises a :class:`ValueError` instead of being returned.
        """
        dataset = self.get_dataset(X)
        iterator = self.get_iterator(dataset, training=training)
        if (
            isinstance(iterator, torch.utils.data.DataLoader)
            and iterator.generator is None
        ):
            iterator.generator = torch.Generator()
        seen = 0
        for batch in self._inference_progress(iterator):
            out = to_device(self.evaluation_step(batch, training=training), device)
            bad = _first_nonfinite_row(out)
            if bad is not None:
                raise ValueError(
                    f"{type(self).__name__}'s network computed non-finite "
                    f"outputs (NaN or infinity), first in row {seen + bad} of its "
                    "output. Its weights are not finite or the inputs are out of "
                    "range (e.g. extreme voxel values, or a learning rate so "
                    "large that training diverged): check the inputs, the "
                    "training parameters and that fit ended without a "
                    "non-finite loss."
                )
            seen += _n_rows(out)
            yield out

    def _inference_progress(self, iterator):
        """``iterator``, behind a progress bar when ``verbose`` and several
        batches are read, on the first process, outside ``fit`` (inference
        by callbacks during training shows no bar of its own)."""
        total = _len_or_none(iterator)
        if (
            not self.verbose
            or (total is not None and total < 2)
            or "_rng_streams" in self.__dict__
            or _dist.rank() != 0
        ):
            return iterator
        return tqdm(
            iterator, total=total, desc=type(self).__name__, unit="batch", leave=False
        )

    def _generator(self, device):
        """The augmentation generator of this fit on ``device``."""
        gen = self.__dict__.get("_aug_generator")
        if gen is None or gen.device != torch.device(device):
            gen = torch.Generator(device=device)
            with self._rng_active():
                seed = int(torch.randint(0, 2**62, (1,)).item())
            # other views on every process of a distributed run
            gen.manual_seed(seed + _dist.rank())
            self.__dict__["_aug_generator"] = gen
        return gen

    def _check_finite_output(self, out, what="features"):
        """Refuse NaN/inf in what ``transform``/``predict`` return."""
        finite = np.isfinite(out).reshape(len(out), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(
                f"{type(self).__name__} computed non-finite {what} (NaN or "
                f"infinity) for {bad.size} of {len(out)} samples (first: sample "
                f"{bad[0]}). The network's weights are not finite or the inputs "
                "are out of range (e.g. extreme voxel values): check the inputs "
                "and that fit ended without a non-finite loss."
            )
        return out

    def _precision(self):
        return resolve_precision(self.precision, self.device)

    @contextmanager
    def _autocast(self):
        """Autocast context of ``precision`` (disabled for fp32).

        On the CPU the convolutions of ``module_`` that see tiny maps take
        their weight gradients in float32 inside it
        (:func:`sklearn_cl3d.nn._cpu_kernels.low_precision_safe_convs`: the
        reduced-precision oneDNN kernel is wrong there).
        """
        precision = self._precision()
        if precision == "fp32" or self.device is None:
            yield
            return
        kind = torch.device(self.device).type
        module = self.__dict__.get("module_")
        guard = kind == "cpu" and isinstance(module, torch.nn.Module)
        with low_precision_safe_convs(module, enabled=guard):
            with torch.autocast(kind, dtype=_AUTOCAST_DTYPES[precision]):
                yield

    def _memory_format(self, ndim):
        return resolve_memory_format(self.memory_format, self.device, ndim)

    def _net(self):
        """The module called for training forwards: compiled if ``compile``."""
        if not self.compile:
            return self.module_
        compiled = self.__dict__.get("_compiled_module")
        if compiled is None:
            compiled = torch.compile(self.module_)
            self.__dict__["_compiled_module"] = compiled
        return compiled

    def _to_device(self, x):
        """Batch to the device (non-blocking from pinned memory)."""
        if isinstance(x, torch.Tensor) and self.device is not None:
            return x.to(self.device, non_blocking=True)
        return to_tensor(x, device=self.device)

    def _as_input(self, x):
        """A prepared batch in the memory format the network runs in."""
        return x.contiguous(memory_format=self._memory_format(x.ndim))


class PretrainedByReferenceMixin:
    """``pretrained`` is a weights source, not a sub-estimator.

    Its parameters are not listed by ``get_params`` (nothing to search over),
    and ``clone`` passes the object itself: scikit-learn's clone would give an
    *unfitted* copy of a fitted pretrainer.
    """

    def get_params(self, deep=True, **kwargs):
        params = super().get_params(deep=deep, **kwargs)
        return {k: v for k, v in params.items() if not k.startswith("pretrained__")}

    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        new = type(self)(
            **{
                k: v if k == "pretrained" else clone(v, safe=False)
                for k, v in params.items()
            }
        )
        for key in ("_metadata_request", "_sklearn_output_config"):
            if hasattr(self, key):
                setattr(new, key, copy.deepcopy(getattr(self, key)))
        return new
