"""scikit-learn plumbing every skorch-based estimator of the package shares:
parameter names and validation, ``device="auto"`` across pickling, and
pretrained weights passed by reference through ``clone``."""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import torch
from sklearn.base import clone
from sklearn.utils._param_validation import validate_parameter_constraints
from skorch.utils import to_tensor

from .. import distributed as _dist
from .._heap import cpu_heap_reuse
from ._device import (
    _AUTOCAST_DTYPES,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)

__all__ = [
    "DevicePlumbingMixin",
    "PretrainedByReferenceMixin",
    "SkorchEstimatorMixin",
]


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
        resolve_device(self.device)

    def __getstate__(self):
        state = super().__getstate__()
        for key in self._transient_attributes:
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
            with cpu_heap_reuse(on_cpu):
                yield resolved
        finally:
            self.__dict__["device"] = requested


    @contextmanager
    def _seeded(self, offset):
        """Seed torch's global RNG from ``random_state`` inside a fork."""
        seed = self._base_seed_ + int(offset)
        device = self.__dict__["device"]
        devices = []
        if device is not None and torch.device(device).type == "cuda":
            index = torch.device(device).index
            devices = [torch.cuda.current_device() if index is None else index]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield seed


    def _generator(self, device):
        gen = self.__dict__.get("_aug_generator")
        if gen is None or gen.device != torch.device(device):
            gen = torch.Generator(device=device)
            seed = int(torch.randint(0, 2**62, (1,)).item())
            # other views on every process of a distributed run
            gen.manual_seed(seed + _dist.rank())
            self.__dict__["_aug_generator"] = gen
        return gen


    def _precision(self):
        return resolve_precision(self.precision, self.device)


    def _autocast(self):
        """Autocast context of ``precision`` (disabled for fp32)."""
        precision = self._precision()
        if precision == "fp32" or self.device is None:
            return nullcontext()
        kind = torch.device(self.device).type
        return torch.autocast(kind, dtype=_AUTOCAST_DTYPES[precision])


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
