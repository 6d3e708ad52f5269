"""skorch callbacks shared by the pretrainers."""

from __future__ import annotations

import math
import os
import pickle
import warnings

import torch
from skorch.callbacks import Callback, Checkpoint, LRScheduler, PassthroughScoring
from skorch.callbacks.scoring import ScoringBase
from skorch.utils import noop

from ._persistence import commit_file, discard_file, stage_file

__all__ = ["AtomicCheckpoint", "StopOnNonFiniteLoss"]


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


def _restore_best_score(callback, history):
    name = getattr(callback, "name_", None) or getattr(callback, "name", None)
    if not name:
        return
    best = [i for i, row in enumerate(history) if row.get(f"{name}_best")]
    if best and name in history[best[-1]]:
        callback.best_score_ = history[best[-1]][name]


def _resume_scheduler(callback, net):
    """Continue an LRScheduler from the loaded optimizer and history.

    The loaded optimizer already holds the learning rates of the next epoch;
    a scheduler rebuilt by skorch (``last_epoch=len(history) - 1``) would
    step them once more, so the rates are put back and the scheduler's step
    count set to where the interrupted run was.
    """
    optimizer = net.optimizer_
    lrs = [group["lr"] for group in optimizer.param_groups]
    callback.on_train_begin(net)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler = getattr(callback, "lr_scheduler_", None)
    if scheduler is None or not hasattr(scheduler, "last_epoch"):
        return
    if getattr(scheduler, "_last_lr", None) is not None:
        scheduler._last_lr = list(lrs)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return
    if callback.step_every == "batch":
        scheduler.last_epoch = int(getattr(callback, "batch_idx_", 0))
    else:
        scheduler.last_epoch = len(net.history)


class AtomicCheckpoint(Checkpoint):
    """skorch ``Checkpoint`` whose files are never left half-written; can resume.

    Every file of a checkpoint (parameters, optimizer, criterion, history, and
    the pickle if ``f_pickle`` is set) is first written to a temporary file
    in the same directory and flushed to disk; only when all of them are
    written are they moved over the previous ones with :func:`os.replace`
    (history last). A crash or kill during a save therefore leaves the
    previous checkpoint's files intact. If writing fails (full disk, ...),
    the temporary files are removed, a ``RuntimeWarning`` is issued and
    training goes on with the previous checkpoint kept.

    With ``resume=True``, the first ``fit`` after the network is initialised
    loads the checkpoint if one exists (weights, optimizer state, history)
    and trains only the epochs missing to reach ``max_epochs`` in total: run
    the same script again after an interruption and training picks up where
    the last checkpoint was written. Learning-rate schedulers and the best
    scores of the loss callbacks continue from the loaded history (an
    ``EarlyStopping`` patience restarts). The resumed run is reproducible
    for a given ``random_state`` but not bit-identical to an uninterrupted
    one (the random streams restart at the resumed epoch).

    Parameters
    ----------
    monitor : str, callable or None, default=None
        When to save: None at every epoch (the default here, unlike skorch's
        ``"valid_loss_best"``, which needs a validation split), a history key
        such as ``"train_loss_best"``, or ``monitor(net) -> bool``.
    f_params, f_optimizer, f_criterion : str or None
        File names (skorch format specifiers allowed), defaults
        ``"params.pt"``, ``"optimizer.pt"``, ``"criterion.pt"``.
    f_history : str or None, default="history.json"
        History file (needed by ``resume``).
    f_pickle : str or None, default=None
        Also pickle the whole estimator.
    fn_prefix : str, default=""
        Prefix of every file name.
    dirname : str, default=""
        Directory of the files (created if needed).
    event_name : str or None, default="event_cp"
        History key recording the epochs a checkpoint was written.
    sink : callable, default=noop
        Receives progress messages (e.g. ``print``).
    load_best : bool, default=False
        Load the last checkpoint when training ends (only with a monitor).
    use_safetensors : bool, default=False
        Write tensors with safetensors (then ``f_optimizer`` must be None).
    resume : bool, default=False
        Resume from the checkpoint (see above).
    **kwargs : dict
        ``f_<module>`` names of extra modules, as in skorch.

    Attributes
    ----------
    resumed_from_ : int or None
        Number of epochs loaded by the last resume (None if nothing was
        loaded).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> from sklearn_cl3d.callbacks import AtomicCheckpoint
    >>> X = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    >>> d = tempfile.mkdtemp()
    >>> def make(epochs):
    ...     cp = AtomicCheckpoint(dirname=d, resume=True)
    ...     return SimCLRPretrainer(backbone="mlp", batch_size=8, random_state=0,
    ...                             max_epochs=epochs, callbacks=[("cp", cp)])
    >>> len(make(2).fit(X).history)   # e.g. interrupted after 2 epochs
    2
    >>> resumed = make(5).fit(X)      # trains epochs 3 to 5 only
    >>> resumed.history[:, "epoch"], dict(resumed.callbacks_)["cp"].resumed_from_
    ([1, 2, 3, 4, 5], 2)
    """

    def __init__(
        self,
        monitor=None,
        f_params="params.pt",
        f_optimizer="optimizer.pt",
        f_criterion="criterion.pt",
        f_history="history.json",
        f_pickle=None,
        fn_prefix="",
        dirname="",
        event_name="event_cp",
        sink=noop,
        load_best=False,
        use_safetensors=False,
        resume=False,
        **kwargs,
    ):
        super().__init__(
            monitor=monitor,
            f_params=f_params,
            f_optimizer=f_optimizer,
            f_criterion=f_criterion,
            f_history=f_history,
            f_pickle=f_pickle,
            fn_prefix=fn_prefix,
            dirname=dirname,
            event_name=event_name,
            sink=sink,
            load_best=load_best,
            use_safetensors=use_safetensors,
            **kwargs,
        )
        self.resume = resume

    def initialize(self):
        super().initialize()
        if self.resume and self.f_history is None:
            raise ValueError("AtomicCheckpoint(resume=True) needs f_history.")
        self.resumed_from_ = None
        self._resume_pending = bool(self.resume)
        self._stop_after = None
        return self

    # ------------------------------------------------------------ saving

    def save_model(self, net):
        staged = []
        try:
            for key, value in self._f_kwargs().items():
                if value is None or key in ("f_history", "f_pickle"):
                    continue
                target = self._format_target(net, value, -1)
                kwargs = {"use_safetensors": self.use_safetensors}
                if not isinstance(target, str | os.PathLike):
                    # a file object cannot be replaced atomically
                    net.save_params(**{key: target}, **kwargs)
                    continue

                def write(tmp, key=key, kwargs=kwargs):
                    net.save_params(**{key: tmp}, **kwargs)

                staged.append((stage_file(target, write), target))
            if self.f_pickle:
                target = self._format_target(net, self.f_pickle, -1)

                def dump(tmp):
                    with open(tmp, "wb") as fh:
                        pickle.dump(net, fh)

                staged.append((stage_file(target, dump), target))
            if self.f_history is not None:
                target = self.f_history_
                staged.append(
                    (
                        stage_file(target, lambda tmp: net.save_params(f_history=tmp)),
                        target,
                    )
                )
        except BaseException as exc:
            for tmp, _ in staged:
                discard_file(tmp)
            if not isinstance(exc, Exception):
                raise
            warnings.warn(
                f"The checkpoint of epoch {len(net.history)} was not written "
                f"({type(exc).__name__}: {exc}); the previous one is kept.",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        for tmp, target in staged:
            commit_file(tmp, target)

    # ---------------------------------------------------------- resuming

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if not getattr(self, "_resume_pending", False):
            return
        self._resume_pending = False
        if not os.path.exists(self.f_history_):
            return
        net.load_params(checkpoint=self, use_safetensors=self.use_safetensors)
        self.resumed_from_ = len(net.history)
        self._stop_after = net.max_epochs
        self._sink(
            f"Resumed from the checkpoint of epoch {self.resumed_from_}.", net.verbose
        )
        for _, callback in net.callbacks_:
            if isinstance(callback, LRScheduler):
                _resume_scheduler(callback, net)
            elif isinstance(callback, PassthroughScoring | ScoringBase):
                _restore_best_score(callback, net.history)
        seed = getattr(net, "_base_seed_", None)
        if seed is not None:
            # the estimators fit inside a forked RNG: seed the resumed part
            torch.manual_seed(seed + self.resumed_from_)
            net.__dict__.pop("_aug_generator", None)

    def on_epoch_begin(self, net, **kwargs):
        if self._stop_after is not None and len(net.history) > self._stop_after:
            # the net has opened a row for an epoch beyond max_epochs
            del net.history[-1]
            raise KeyboardInterrupt  # skorch's way to end training early

    def on_train_end(self, net, **kwargs):
        self._stop_after = None
        super().on_train_end(net, **kwargs)
