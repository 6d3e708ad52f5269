"""scikit-learn plumbing every skorch-based estimator of the package shares:
parameter names and validation, ``device="auto"`` across pickling, and
pretrained weights passed by reference through ``clone``."""

from __future__ import annotations

import copy

from sklearn.base import clone
from sklearn.utils._param_validation import validate_parameter_constraints

__all__ = ["PretrainedByReferenceMixin", "SkorchEstimatorMixin"]


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
        from ._base import resolve_device

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
        from ._base import resolve_device

        requested = state.get("device")
        if requested == "auto":
            state["device"] = resolve_device("auto")
        # skorch maps CUDA tensors to the CPU when CUDA is missing here
        super().__setstate__(state)
        if "device_" in self.__dict__:
            self.device_ = str(self.__dict__["device"])
        if requested == "auto":
            self.__dict__["device"] = "auto"


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
