"""AtomicCheckpoint: one manifest per checkpoint, consistent resumes after a
failure or a kill at any step, no unpickling, no temporary files left."""

import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from _faults import FaultInjector, Killed
from skorch.callbacks import Callback, LRScheduler

from sklearn_cl3d import SimCLRPretrainer
from sklearn_cl3d.callbacks import AtomicCheckpoint
from sklearn_cl3d.persistence import PersistenceError
from sklearn_cl3d.persistence._manifest import make_manifest, sha256_file

TABULAR = dict(backbone="mlp", backbone__hidden_dims=(8,), batch_size=8, random_state=0)
FILES = ["checkpoint.json", "criterion.pt", "history.json", "optimizer.pt", "params.pt"]


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)


def _state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Snapshot(Callback):
    """Record the network's state when training starts (after a resume)."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.state_ = _state(net.module_)


def _resume(folder, X, max_epochs):
    cp = AtomicCheckpoint(dirname=str(folder), resume=True)
    net = SimCLRPretrainer(
        **TABULAR, max_epochs=max_epochs, callbacks=[("cp", cp), ("snap", Snapshot())]
    ).fit(X)
    return net, cp, dict(net.callbacks_)["snap"].state_


def _leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def _rewrite_manifest(folder):
    """Recompute the manifest for the files as they are now (what an attacker,
    or a careless copy, can do)."""
    path = folder / "checkpoint.json"
    manifest = json.loads(path.read_text())
    files = {name: sha256_file(folder / name) for name in manifest["files"]}
    path.write_text(
        make_manifest(files, epoch=manifest["epoch"], roles=manifest["roles"])
    )


# ------------------------------------------------------------ the manifest


def test_every_checkpoint_has_one_manifest_written_last(tmp_path, X):
    cp = AtomicCheckpoint(dirname=str(tmp_path))
    SimCLRPretrainer(**TABULAR, max_epochs=2, callbacks=[("cp", cp)]).fit(X)
    assert sorted(os.listdir(tmp_path)) == FILES
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    assert manifest["epoch"] == 2
    assert manifest["roles"] == {
        "f_criterion": "criterion.pt",
        "f_history": "history.json",
        "f_optimizer": "optimizer.pt",
        "f_params": "params.pt",
    }
    for name, entry in manifest["files"].items():
        assert sha256_file(tmp_path / name) == (entry["sha256"], entry["size"])
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_file_names_are_checked(tmp_path, X):
    for kwargs, match in (
        ({"f_params": "sub/params.pt"}, "plain file name"),
        ({"f_history": "checkpoint.json"}, "manifest"),
    ):
        cp = AtomicCheckpoint(dirname=str(tmp_path), **kwargs)
        with pytest.raises(ValueError, match=match):
            SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, X):
    cp = AtomicCheckpoint(dirname=str(tmp_path))
    net = SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)
    before = {f: (tmp_path / f).read_bytes() for f in FILES}
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a complete temporary file...
        with open(f, "ab") as fh:  # ...then garbage, then the crash
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.warns(RuntimeWarning, match="disk full"):
        net.partial_fit(X)  # another epoch: its checkpoint fails
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == FILES  # no temporary file left over
    assert {f: (tmp_path / f).read_bytes() for f in FILES} == before
    _, cp, _ = _resume(tmp_path, X, 1)
    assert cp.resumed_from_ == 1


# ------------------------------------------------- faults at every step


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, X):
    """A net after one epoch, with its (complete) checkpoint folder."""
    folder = tmp_path_factory.mktemp("epoch1")
    cp = AtomicCheckpoint(dirname=str(folder))
    net = SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)
    return net, folder


def _second_epoch(one_epoch, folder, monkeypatch, step, mode):
    """Copy of the one-epoch run training a second epoch into ``folder``
    while the ``step``-th file-system call fails; returns (epoch-1 state,
    epoch-2 state, injector)."""
    net, source = one_epoch
    folder.mkdir(exist_ok=True)
    for name in os.listdir(source):
        (folder / name).write_bytes((source / name).read_bytes())
    net = copy.deepcopy(net)
    dict(net.callbacks_)["cp"].dirname = str(folder)
    first = _state(net.module_)
    with monkeypatch.context() as patch:
        faults = FaultInjector(patch, step, mode)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                net.partial_fit(X_TAB)
        except Killed:
            pass
    return first, _state(net.module_), faults


X_TAB = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_a_fault_at_any_step_leaves_one_consistent_checkpoint(
    tmp_path, monkeypatch, one_epoch, mode
):
    *_, dry = _second_epoch(one_epoch, tmp_path / "dry", monkeypatch, -1, mode)
    n_steps = dry.calls
    assert {"replace", "torch.save", "fsync"} <= set(dry.log)
    outcomes = set()
    for step in range(n_steps):
        folder = tmp_path / f"step{step}"
        first, second, faults = _second_epoch(
            one_epoch, folder, monkeypatch, step, mode
        )
        assert faults.calls > step  # the fault did happen
        net, cp, resumed = _resume(folder, X_TAB, 2)
        # epoch 1 or epoch 2, whole: never the weights of one epoch with the
        # history or optimizer of the other
        if cp.resumed_from_ == 1:
            assert _same(resumed, first), f"step {step} ({faults.log[step]})"
        else:
            assert cp.resumed_from_ == 2, f"step {step}"
            assert _same(resumed, second), f"step {step} ({faults.log[step]})"
        outcomes.add(cp.resumed_from_)
        assert net.history[:, "epoch"] == [1, 2]
        assert _leftovers(folder) == [], f"step {step}: {_leftovers(folder)}"
    # faults before the manifest keep epoch 1; after it, epoch 2 is finished
    assert outcomes == {1, 2}


# ------------------------------------------------------------ consistency


def test_files_from_different_epochs_are_refused(tmp_path, X):
    cp = AtomicCheckpoint(dirname=str(tmp_path))
    net = SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)
    old_history = (tmp_path / "history.json").read_bytes()
    net.partial_fit(X)
    (tmp_path / "history.json").write_bytes(old_history)  # epoch 1 with epoch 2
    with pytest.raises(PersistenceError, match="history.json.*does not match"):
        _resume(tmp_path, X, 3)
    # even with the manifest recomputed, the history must hold its epoch
    _rewrite_manifest(tmp_path)
    with pytest.raises(PersistenceError, match="history.json.*holds 1 epochs"):
        _resume(tmp_path, X, 3)
    (tmp_path / "params.pt").unlink()
    with pytest.raises(PersistenceError, match="params.pt.*does not match"):
        _resume(tmp_path, X, 3)


def test_files_without_a_manifest_are_not_resumed(tmp_path, X):
    cp = AtomicCheckpoint(dirname=str(tmp_path))
    SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)
    (tmp_path / "checkpoint.json").unlink()
    with pytest.raises(PersistenceError, match="checkpoint.json.*cannot be checked"):
        _resume(tmp_path, X, 2)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(PersistenceError, match="checkpoint.json.*not valid JSON"):
        _resume(tmp_path, X, 2)


def test_a_crafted_manifest_is_refused(tmp_path, X):
    cp = AtomicCheckpoint(dirname=str(tmp_path))
    SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)
    path = tmp_path / "checkpoint.json"
    good = json.loads(path.read_text())
    params = good["files"]["params.pt"]
    for edit, match in (
        (lambda m: m["roles"].update(f_evil="params.pt"), "'roles' must map"),
        (lambda m: m["roles"].update(f_params="other.pt"), "'roles' must map"),
        (lambda m: m.update(staged={"params.pt": "../../x"}), "'staged' must map"),
        (lambda m: m.update(epoch=0), "'epoch' must be a positive"),
        (lambda m: m["files"].update({"../params.pt": params}), "plain file name"),
        (lambda m: m.update(extra=1), "unexpected keys"),
    ):
        manifest = copy.deepcopy(good)
        edit(manifest)
        path.write_text(json.dumps(manifest))
        with pytest.raises(PersistenceError, match=match):
            _resume(tmp_path, X, 2)


def test_stale_temporary_files_are_removed(tmp_path, X):
    cp = AtomicCheckpoint(dirname=str(tmp_path))
    SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)
    stale = [".params.pt.abc123.ckpt-tmp", ".checkpoint.json.x1y2.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"left by a killed run")
    (tmp_path / ".user-notes.txt").write_text("not ours")
    _, cp, _ = _resume(tmp_path, X, 2)
    assert cp.resumed_from_ == 1
    assert _leftovers(tmp_path) == [".user-notes.txt"]


class _Marker:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_never_unpickles(tmp_path, X):
    cp = AtomicCheckpoint(dirname=str(tmp_path))
    SimCLRPretrainer(**TABULAR, max_epochs=1, callbacks=[("cp", cp)]).fit(X)
    marker = tmp_path / "pwned"
    with open(tmp_path / "params.pt", "wb") as fh:
        pickle.dump(_Marker(str(marker)), fh)
    _rewrite_manifest(tmp_path)
    cp = AtomicCheckpoint(dirname=str(tmp_path), resume=True)
    net = SimCLRPretrainer(
        **TABULAR,
        max_epochs=2,
        torch_load_kwargs={"weights_only": False},
        callbacks=[("cp", cp)],
    )
    with pytest.warns(UserWarning, match="weights_only=True"):
        with pytest.raises(PersistenceError, match="params.pt.*never unpickled"):
            net.fit(X)
    assert not marker.exists()
    assert net.torch_load_kwargs == {"weights_only": False}  # the user's, kept


def test_load_best_uses_the_verified_checkpoint(tmp_path, X):
    cp = AtomicCheckpoint(
        dirname=str(tmp_path), monitor="train_loss_best", load_best=True
    )
    net = SimCLRPretrainer(**TABULAR, max_epochs=3, callbacks=[("cp", cp)]).fit(X)
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    assert len(net.history) == manifest["epoch"]
    assert _same(_state(net.module_), torch.load(tmp_path / "params.pt"))


# ------------------------------------------------------------------ resuming

_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sklearn_cl3d import SimCLRPretrainer
    from sklearn_cl3d.callbacks import AtomicCheckpoint

    X = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    cp = AtomicCheckpoint(dirname=sys.argv[1])
    SimCLRPretrainer(backbone="mlp", backbone__hidden_dims=(8,), batch_size=8,
                     random_state=0, max_epochs=100000,
                     callbacks=[("cp", cp)]).fit(X)
    """
)


def _checkpointed_params(folder):
    """The parameters the manifest says make up the checkpoint (the file
    itself, or the staged file a kill left before it was moved)."""
    manifest = json.loads((folder / "checkpoint.json").read_text())
    entry = manifest["files"]["params.pt"]
    for name in ("params.pt", manifest.get("staged", {}).get("params.pt")):
        if name and (folder / name).exists():
            if sha256_file(folder / name) == (entry["sha256"], entry["size"]):
                return manifest, torch.load(folder / name, weights_only=True)
    raise AssertionError("no file matches the manifest")


def test_resume_after_sigkill(tmp_path):
    ckpt = tmp_path / "ckpt"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "child.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ckpt)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "checkpoint.json").exists():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)  # let it write a few more (and be killed mid-way)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    manifest, saved = _checkpointed_params(ckpt)
    k = manifest["epoch"]
    assert k >= 1

    X = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    net, cp, resumed = _resume(ckpt, X, k + 2)
    assert _same(resumed, saved)
    assert cp.resumed_from_ == k
    assert net.history[:, "epoch"] == list(range(1, k + 3))
    assert len(net.history) == k + 2
    assert _leftovers(ckpt) == []  # the killed run's temporary files are gone
    # the checkpoint now holds the resumed run's last epoch
    assert _same(torch.load(ckpt / "params.pt", weights_only=True), _state(net.module_))


def test_resume_continues_the_lr_schedule(tmp_path, X):
    def make(epochs, resume):
        return SimCLRPretrainer(
            **TABULAR,
            lr=1.0,
            max_epochs=epochs,
            callbacks=[
                ("lr", LRScheduler("StepLR", step_size=1, gamma=0.5)),
                ("cp", AtomicCheckpoint(dirname=str(tmp_path), resume=resume)),
            ],
        )

    full = make(4, False).fit(X).history[:, "event_lr"]
    for f in os.listdir(tmp_path):
        os.remove(tmp_path / f)
    make(2, False).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no scheduler-order warning
        resumed = make(4, True).fit(X)
    assert resumed.history[:, "event_lr"] == full
    # a finished run resumes to nothing
    done = make(4, True).fit(X)
    assert len(done.history) == 4
