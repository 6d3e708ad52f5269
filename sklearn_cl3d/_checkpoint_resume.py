"""What :class:`~sklearn_cl3d.callbacks.AtomicCheckpoint` does to the other
callbacks when it resumes: their learning-rate schedulers and best scores
continue from the loaded optimizer and history."""

from __future__ import annotations

import torch

__all__ = []


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
