"""skorch callbacks shared by the pretrainers."""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings

import torch
import tqdm
from skorch.callbacks import (
    Callback,
    Checkpoint,
    LRScheduler,
    PassthroughScoring,
    ProgressBar,
)
from skorch.callbacks.scoring import ScoringBase
from skorch.utils import noop

from ._checkpoint_resume import _restore_best_score, _resume_scheduler
from .persistence._errors import PersistenceError
from .persistence._files import atomic_write, commit_file, discard_file, stage_file
from .persistence._manifest import make_manifest, read_manifest, sha256_file

__all__ = ["AtomicCheckpoint", "StepProgressBar", "StopOnNonFiniteLoss"]


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


class StepProgressBar(ProgressBar):
    """skorch's ``ProgressBar`` counting the steps this process really runs.

    skorch's ``batches_per_epoch="auto"`` divides the dataset length by the
    batch size, which is wrong when the last incomplete batch is dropped,
    when a batch sampler sets the number of steps (WSP, Global-Local,
    DrasCLR), and in a multi-process run, where every process runs its
    shard of the epoch (a bar of 8 steps for the 4 each process runs).
    This bar takes its total from the number of batches of the data loader
    each phase (training, validation) iterates, as the estimators of this
    package report it, and is shown by the first process only.

    Parameters
    ----------
    batches_per_epoch : int or {"auto", "count"}, default="auto"
        ``"auto"``: the steps of the epoch's data loaders (the loader's
        length; a loader without one gives a bar without a total); an int
        or ``"count"`` as in skorch's ``ProgressBar``.
    detect_notebook : bool, default=True
        Use the notebook bar inside Jupyter.
    postfix_keys : list of str, default=None
        History keys shown next to the bar (skorch's default: the losses).

    Examples
    --------
    >>> from sklearn_cl3d.callbacks import StepProgressBar
    >>> bar = StepProgressBar()
    """

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        from . import distributed as _dist

        self._phases_ = set()
        self._hidden_ = _dist.rank() != 0
        if self.batches_per_epoch != "auto":
            super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
            if self._hidden_:
                self.pbar_.disable = True
        else:
            # created at the first step, when the data loader is known
            self.pbar_ = None

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if self.batches_per_epoch != "auto" or training in self._phases_:
            return
        self._phases_.add(training)
        # set by the estimator just before this phase's loader is iterated
        steps = net.__dict__.get("_phase_steps", {}).get(bool(training))
        if self.pbar_ is None:
            bar = tqdm.tqdm_notebook if self._use_notebook() else tqdm.tqdm
            self.pbar_ = bar(total=steps, leave=False, disable=self._hidden_)
        elif steps is not None and self.pbar_.total is not None:
            # the validation steps come after the training steps
            self.pbar_.total += steps
            self.pbar_.refresh()

    def on_epoch_end(self, net, **kwargs):
        if self.pbar_ is not None:
            self.pbar_.close()

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_phases_", "_hidden_"):
            state.pop(key, None)
        return state


class AtomicCheckpoint(Checkpoint):
    """skorch ``Checkpoint`` whose files always form one complete checkpoint;
    can resume.

    Every file of a checkpoint (parameters, optimizer, criterion, history,
    and the pickle if ``f_pickle`` is set) is first written to a temporary
    file in the same folder and flushed to disk. Then one manifest,
    ``<fn_prefix>checkpoint.json`` (the epoch, and each file's size and
    SHA-256), replaces the previous one: that is the moment the new
    checkpoint counts as written. Only then are the temporary files moved
    over the previous ones. A crash or kill at any instant leaves a
    consistent checkpoint: before the manifest is replaced, the previous
    checkpoint is intact; after it, ``resume`` finishes the moves from the
    temporary files the manifest lists. If writing fails (full disk, ...),
    the temporary files are removed, a ``RuntimeWarning`` is issued and
    training goes on with the previous checkpoint kept. Temporary files
    left by a killed run are removed when the callback is initialised.

    With ``resume=True``, the first ``fit`` after the network is initialised
    loads the checkpoint if one exists (weights, optimizer state, history)
    and trains only the epochs missing to reach ``max_epochs`` in total: run
    the same script again after an interruption and training picks up where
    the last checkpoint was written. Resuming uses only a checkpoint whose
    files all agree with its manifest (never the parameters of one epoch
    with the history of another): otherwise it raises a
    :class:`~sklearn_cl3d.persistence.PersistenceError` naming the file.
    Tensors are always read with ``torch.load(weights_only=True)`` (nothing
    is unpickled), whatever the net's ``torch_load_kwargs`` say.
    Learning-rate schedulers and the best scores of the loss callbacks
    continue from the loaded history (an ``EarlyStopping`` patience
    restarts). The resumed run is reproducible for a given ``random_state``
    but not bit-identical to an uninterrupted one (the random streams
    restart at the resumed epoch).

    Parameters
    ----------
    monitor : str, callable or None, default=None
        When to save: None at every epoch (the default here, unlike skorch's
        ``"valid_loss_best"``, which needs a validation split), a history key
        such as ``"train_loss_best"``, or ``monitor(net) -> bool``.
    f_params, f_optimizer, f_criterion : str or None
        File names (skorch format specifiers allowed, no folder part),
        defaults ``"params.pt"``, ``"optimizer.pt"``, ``"criterion.pt"``.
    f_history : str or None, default="history.json"
        History file (needed by ``resume``).
    f_pickle : str or None, default=None
        Also pickle the whole estimator (never read back by ``resume``).
    fn_prefix : str, default=""
        Prefix of every file name.
    dirname : str, default=""
        Folder of the files (created if needed).
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
    ...                             max_epochs=epochs, callbacks=[("cp", cp)],
    ...                             verbose=0)
    >>> len(make(2).fit(X).history)   # e.g. interrupted after 2 epochs
    2
    >>> resumed = make(5).fit(X)      # trains epochs 3 to 5 only
    >>> resumed.history[:, "epoch"], dict(resumed.callbacks_)["cp"].resumed_from_
    ([1, 2, 3, 4, 5], 2)
    """

    #: End of the name of a staged (temporary) checkpoint file.
    _TMP_SUFFIX = ".ckpt-tmp"

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

    # ------------------------------------------------------------ files

    @property
    def manifest_path_(self):
        """Path of the manifest, ``<dirname>/<fn_prefix>checkpoint.json``."""
        return os.path.join(self.dirname, self.fn_prefix + "checkpoint.json")

    def _files(self):
        """``f_*`` argument -> file name template, for the files written."""
        return {k: v for k, v in self._f_kwargs().items() if v is not None}

    def initialize(self):
        super().initialize()
        if self.resume and self.f_history is None:
            raise ValueError("AtomicCheckpoint(resume=True) needs f_history.")
        for key, value in self._files().items():
            if not isinstance(value, str):
                if self.resume:
                    raise ValueError(
                        f"AtomicCheckpoint(resume=True) needs file names; {key} is "
                        f"a {type(value).__name__}."
                    )
                continue
            name = self.fn_prefix + value
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(
                    f"AtomicCheckpoint: {key}={value!r} must be a plain file name "
                    "(put folders in dirname)."
                )
            if name == os.path.basename(self.manifest_path_):
                raise ValueError(
                    f"AtomicCheckpoint: {key}={value!r} is the name of the "
                    "checkpoint's manifest; choose another."
                )
        self.resumed_from_ = None
        self._resume_pending = bool(self.resume)
        self._stop_after = None
        self._remove_stale_files()
        return self

    def _read_manifest(self):
        manifest = read_manifest(
            self.manifest_path_, extra_keys=("epoch", "roles", "staged")
        )
        where = repr(self.manifest_path_)
        epoch = manifest.get("epoch")
        roles = manifest.get("roles")
        staged = manifest.get("staged", {})
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise PersistenceError(f"{where}: 'epoch' must be a positive integer.")
        own = set(self._files())
        if not isinstance(roles, dict) or not all(
            k in own and v in manifest["files"] for k, v in roles.items()
        ):
            raise PersistenceError(
                f"{where}: 'roles' must map this checkpoint's f_* arguments "
                f"({', '.join(sorted(own))}) to listed files."
            )
        if not isinstance(staged, dict) or not all(
            name in manifest["files"]
            and isinstance(tmp, str)
            and re.fullmatch(
                re.escape(f".{name}.") + r"[A-Za-z0-9_]+" + re.escape(self._TMP_SUFFIX),
                tmp,
            )
            for name, tmp in staged.items()
        ):
            raise PersistenceError(
                f"{where}: 'staged' must map listed files to their temporary files."
            )
        return manifest

    def _remove_stale_files(self):
        """Remove temporary files that no manifest refers to."""
        folder = self.dirname or "."
        keep = set()
        if os.path.exists(self.manifest_path_):
            try:
                keep = set(self._read_manifest().get("staged", {}).values())
            except PersistenceError:
                return  # leave everything for the user to look at
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        prefix = "." + self.fn_prefix
        for name in names:
            if (
                name.startswith(prefix)
                and name.endswith(self._TMP_SUFFIX)
                and name not in keep
            ):
                discard_file(os.path.join(folder, name))
        manifest_tmp = f".{os.path.basename(self.manifest_path_)}."
        for name in names:
            if name.startswith(manifest_tmp) and name.endswith(".tmp"):
                discard_file(os.path.join(folder, name))

    # ------------------------------------------------------------ saving

    def _stage(self, net):
        """Write every file of the checkpoint to a temporary file.

        Returns ``(staged, roles)``: ``[(tmp, target), ...]`` and
        ``{f_* argument: file name}``.
        """
        staged, roles = [], {}
        try:
            for key, value in self._files().items():
                if key in ("f_history", "f_pickle"):
                    continue
                target = self._format_target(net, value, -1)
                kwargs = {"use_safetensors": self.use_safetensors}
                if not isinstance(target, str | os.PathLike):
                    # a file object cannot be replaced atomically
                    net.save_params(**{key: target}, **kwargs)
                    continue

                def write(tmp, key=key, kwargs=kwargs):
                    net.save_params(**{key: tmp}, **kwargs)

                staged.append(
                    (stage_file(target, write, suffix=self._TMP_SUFFIX), target)
                )
                roles[key] = os.path.basename(target)
            if self.f_pickle:
                target = self._format_target(net, self.f_pickle, -1)

                def dump(tmp):
                    with open(tmp, "wb") as fh:
                        pickle.dump(net, fh)

                staged.append(
                    (stage_file(target, dump, suffix=self._TMP_SUFFIX), target)
                )
                roles["f_pickle"] = os.path.basename(target)
            if self.f_history is not None:
                target = self.f_history_

                def history(tmp):
                    net.save_params(f_history=tmp)

                staged.append(
                    (stage_file(target, history, suffix=self._TMP_SUFFIX), target)
                )
                roles["f_history"] = os.path.basename(target)
        except BaseException:
            for tmp, _ in staged:
                discard_file(tmp)
            raise
        return staged, roles

    def save_model(self, net):
        try:
            staged, roles = self._stage(net)
        except Exception as exc:
            self._warn_not_written(net, exc)
            return
        files, pending = {}, {}
        try:
            for tmp, target in staged:
                name = os.path.basename(target)
                files[name] = sha256_file(tmp)
                pending[name] = os.path.basename(tmp)
            text = make_manifest(
                files, epoch=len(net.history), roles=roles, staged=pending
            )
            # the commit point: from here on, this checkpoint is the one
            atomic_write(self.manifest_path_, lambda f: _write_text(f, text))
        except BaseException as exc:
            for tmp, _ in staged:
                discard_file(tmp)
            if not isinstance(exc, Exception):
                raise
            self._warn_not_written(net, exc)
            return
        try:
            for tmp, target in staged:
                commit_file(tmp, target)
        except Exception as exc:
            warnings.warn(
                f"The checkpoint of epoch {len(net.history)} was written but not "
                f"all of its files moved into place ({type(exc).__name__}: {exc}); "
                "resume=True completes the move.",
                RuntimeWarning,
                stacklevel=2,
            )

    @staticmethod
    def _warn_not_written(net, exc):
        warnings.warn(
            f"The checkpoint of epoch {len(net.history)} was not written "
            f"({type(exc).__name__}: {exc}); the previous one is kept.",
            RuntimeWarning,
            stacklevel=3,
        )

    # ---------------------------------------------------------- resuming

    def _complete_checkpoint(self):
        """The manifest of the checkpoint on disk after finishing its moves,
        or None if there is none; raise if its files disagree."""
        folder = self.dirname or "."
        if not os.path.exists(self.manifest_path_):
            present = [
                name
                for name in (self.fn_prefix + (self.f_history or ""),)
                if name and os.path.exists(os.path.join(folder, name))
            ]
            if present:
                raise PersistenceError(
                    f"{os.path.join(folder, present[0])!r} exists but the "
                    f"checkpoint manifest {self.manifest_path_!r} does not (files "
                    "written by an older sklearn_cl3d or another program): they "
                    "cannot be checked. Move them away, or use resume=False."
                )
            return None
        manifest = self._read_manifest()
        staged = manifest.get("staged", {})
        for name, entry in manifest["files"].items():
            target = os.path.join(folder, name)
            if _matches(target, entry):
                continue
            tmp = os.path.join(folder, staged.get(name, "")) if name in staged else None
            if tmp is not None and _matches(tmp, entry):
                commit_file(tmp, target)  # finish an interrupted save
                continue
            raise PersistenceError(
                f"{target!r} does not match the checkpoint manifest "
                f"{self.manifest_path_!r} (missing, or from another epoch): the "
                "checkpoint is inconsistent and is not resumed. Move the files "
                "away, or use resume=False."
            )
        self._remove_stale_files()
        return manifest

    def _load_checkpoint(self, net, manifest):
        folder = self.dirname or "."
        roles = {
            key: os.path.join(folder, name)
            for key, name in manifest["roles"].items()
            if key != "f_pickle"
        }
        kwargs = net.torch_load_kwargs
        if isinstance(kwargs, dict) and kwargs.get("weights_only") is False:
            warnings.warn(
                "AtomicCheckpoint reads checkpoints with weights_only=True; "
                "torch_load_kwargs={'weights_only': False} is ignored (nothing "
                "is unpickled).",
                UserWarning,
                stacklevel=4,
            )
        net.torch_load_kwargs = {**(kwargs or {}), "weights_only": True}
        # the history first, the optimizer last, one file at a time
        order = sorted(roles, key=lambda k: (k != "f_history", k == "f_optimizer"))
        try:
            for key in order:
                try:
                    net.load_params(
                        **{key: roles[key]}, use_safetensors=self.use_safetensors
                    )
                except pickle.UnpicklingError as exc:
                    first = (str(exc).strip().splitlines() or [""])[0]
                    raise PersistenceError(
                        f"{roles[key]!r} holds objects other than tensors, which "
                        f"are never unpickled ({first[:200]})."
                    ) from None
        finally:
            net.torch_load_kwargs = kwargs
        if len(net.history) != manifest["epoch"]:
            raise PersistenceError(
                f"{roles.get('f_history')!r} holds {len(net.history)} epochs but "
                f"the checkpoint manifest {self.manifest_path_!r} records epoch "
                f"{manifest['epoch']}."
            )

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if not getattr(self, "_resume_pending", False):
            return
        self._resume_pending = False
        manifest = self._complete_checkpoint()
        if manifest is None:
            return
        self._load_checkpoint(net, manifest)
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
        if not self.load_best or self.monitor is None:
            return
        manifest = self._complete_checkpoint()
        if manifest is None:
            return
        self._sink("Loading best checkpoint after training.", net.verbose)
        self._load_checkpoint(net, manifest)


def _write_text(file, text):
    with open(file, "w", encoding="utf-8") as fh:
        fh.write(text)


def _matches(file, entry):
    """Whether ``file`` exists with the size and SHA-256 of ``entry``."""
    try:
        if os.path.getsize(file) != entry["size"]:
            return False
        return sha256_file(file)[0] == entry["sha256"]
    except OSError:
        return False
