"""Where a fine-tuner's encoder comes from: the pretrainer (fitted, or read
from a saved directory), its input conventions, and checks of X against
what it was fitted on."""

from __future__ import annotations

import os

from sklearn.exceptions import NotFittedError

from ._base import BaseContrastivePretrainer

__all__: list[str] = []


def _bare(estimator):
    """The network of a fitted estimator, without a DDP wrapper."""
    bare = getattr(estimator, "_bare_module", None)
    return bare() if bare is not None else estimator.module_


class _PretrainedSourceMixin:
    """The ``pretrained`` source of the fine-tuners (not for direct use)."""

    def _source(self):
        """The pretrainer to start from (None for training from scratch)."""
        cached = self.__dict__.get("_source_cache")
        if cached is not None:
            return cached
        pretrained = self.pretrained
        if pretrained is None:
            return None
        if isinstance(pretrained, str | os.PathLike):
            from ..persistence import load_pretrained

            return load_pretrained(pretrained, device="cpu")
        if not isinstance(pretrained, BaseContrastivePretrainer):
            raise ValueError(
                "pretrained must be a fitted pretrainer, the directory of a saved "
                f"encoder, or None; got {type(pretrained).__name__}."
            )
        if not getattr(pretrained, "initialized_", False):
            raise NotFittedError(
                f"The pretrained {type(pretrained).__name__} is not fitted: fit it "
                "first (fine-tuning never fits the pretrainer), or pass the "
                "directory of a saved encoder."
            )
        if not (
            hasattr(pretrained, "_finetune_encoder")
            or hasattr(_bare(pretrained), "backbone")
        ):
            raise ValueError(
                f"The network of the pretrained {type(pretrained).__name__} has no "
                "'backbone' to fine-tune."
            )
        return pretrained

    @staticmethod
    def _slice_geometry(source):
        if hasattr(source, "_finetune_encoder"):
            return None  # its backbone reads whole volumes
        if source is None or len(source.input_shape_) != 4:
            return None
        if len(source._network_input_shape()) != 3:
            return None
        return {
            "axis": source.slice_axis,
            "fraction": source.slice_fraction,
            "size": source.slice_size,
        }

    def _check_source_input(self, source):
        src, own = tuple(source.input_shape_), tuple(self.input_shape_)
        name = type(source).__name__
        if len(src) != len(own):
            kind = "volumes" if len(src) == 4 else "tabular features"
            raise ValueError(
                f"The pretrained {name} was fitted on {kind} of per-sample shape "
                f"{src}; X has per-sample shape {own}."
            )
        if len(own) == 1 and own != src:
            raise ValueError(
                f"X has {own[0]} features, but the pretrained {name} was fitted "
                f"on {src[0]} features."
            )
        if len(own) == 4 and own[0] != src[0]:
            raise ValueError(
                f"X has {own[0]} channel(s), but the pretrained {name} was "
                f"fitted on {src[0]} channel(s)."
            )
