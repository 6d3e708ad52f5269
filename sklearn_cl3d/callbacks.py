"""skorch callbacks shared by the pretrainers."""

from __future__ import annotations

import math

from skorch.callbacks import Callback

__all__ = ["StopOnNonFiniteLoss"]


class StopOnNonFiniteLoss(Callback):
    """Stop training with an error as soon as a batch loss is NaN or infinite.

    The message says which epoch and batch (both counted from 1) produced the
    loss, so a diverging run fails where it diverges instead of training on
    garbage. It reads the loss value skorch already records, so it adds no
    device synchronisation.

    Examples
    --------
    >>> from sklearn_cl3d.callbacks import StopOnNonFiniteLoss
    >>> cb = StopOnNonFiniteLoss()
    """

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        prefix = "train" if training else "valid"
        history = net.history
        batches = history[-1]["batches"]
        value = batches[-1].get(prefix + "_loss") if batches else None
        if value is not None and not math.isfinite(value):
            raise FloatingPointError(
                f"The {prefix} loss became {value} at epoch {len(history)}, batch "
                f"{len(batches)}. Lower the learning rate, check the inputs for "
                "extreme values (e.g. unnormalised intensities)."
            )
