"""save_pretrained is crash-safe: a failure or a kill at any step leaves the
old encoder or the new one, whole, and the next save or load cleans up."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from _faults import FaultInjector, Killed

from sklearn_cl3d import SimCLRPretrainer, YAwarePretrainer, load_pretrained
from sklearn_cl3d.persistence import MANIFEST_NAME, PersistenceError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

X = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def two_encoders():
    """Two fitted pretrainers of different architectures."""
    a = SimCLRPretrainer(
        backbone="mlp",
        backbone__hidden_dims=(8,),
        hidden_dim=8,
        projection_dim=4,
        batch_size=8,
        max_epochs=1,
        random_state=0,
    ).fit(X)
    b = YAwarePretrainer(
        backbone="mlp",
        backbone__hidden_dims=(5, 3),
        hidden_dim=6,
        projection_dim=2,
        batch_size=8,
        max_epochs=1,
        random_state=1,
    ).fit(X, np.arange(16.0))
    return a, b


def _which(path, a, b):
    """'a' or 'b': the encoder loaded from ``path`` (whole, or it fails)."""
    loaded = load_pretrained(path)
    out = loaded.transform(X)
    for name, est in (("a", a), ("b", b)):
        if type(loaded) is type(est) and out.shape == est.transform(X).shape:
            np.testing.assert_array_equal(out, est.transform(X))
            return name
    raise AssertionError("neither encoder")


def _save_with_faults(monkeypatch, est, path, step, mode):
    with monkeypatch.context() as patch:
        faults = FaultInjector(patch, step, mode)
        try:
            est.save_pretrained(path)
            error = None
        except (Killed, OSError) as exc:
            error = exc
    return faults, error


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_a_fault_at_any_step_of_a_save_leaves_one_whole_encoder(
    tmp_path, monkeypatch, two_encoders, mode
):
    a, b = two_encoders
    dry_run = a.save_pretrained(tmp_path / "dry" / "enc")
    dry, error = _save_with_faults(monkeypatch, b, dry_run, -1, mode)
    assert error is None
    assert {"mkdir", "write", "fsync", "replace", "rmdir", "unlink"} <= set(dry.log)
    outcomes = []
    for step in range(dry.calls):
        parent = tmp_path / f"step{step}"
        path = a.save_pretrained(parent / "enc")
        faults, error = _save_with_faults(monkeypatch, b, path, step, mode)
        assert faults.calls > step
        if mode == "raise" and error is not None:
            # the error was handled: the old encoder, nothing left behind
            assert sorted(os.listdir(parent)) == ["enc"], faults.log[step]
        which = _which(path, a, b)
        if error is not None and mode == "raise":
            assert which == "a", f"step {step} ({faults.log[step]})"
        if error is None:
            assert which == "b", f"step {step} ({faults.log[step]})"
        outcomes.append(which)
        # the load put back or removed whatever the fault left
        assert sorted(os.listdir(parent)) == ["enc"], f"step {step}"
        assert sorted(os.listdir(path)) == ["config.json", MANIFEST_NAME, "weights.pt"]
    # early faults keep the old encoder, late ones the new: both happen
    assert outcomes[0] == "a" and outcomes[-1] == "b"
    # the old folder is moved aside, the new one moved in, the old removed
    assert dry.log.count("replace") == 2


def _leftover(parent, kind, name="enc"):
    return parent / f".{name}.{kind}-0123456789abcdef"


def test_recovery_after_a_kill_between_the_renames(tmp_path, two_encoders):
    a, b = two_encoders
    path = tmp_path / "enc"
    # killed after the old folder was moved aside, before the new one moved in
    a.save_pretrained(path)
    os.replace(path, _leftover(tmp_path, "old"))
    b.save_pretrained(tmp_path / "new")
    os.replace(tmp_path / "new", _leftover(tmp_path, "tmp"))
    assert _which(path, a, b) == "b"  # the complete new version wins
    assert sorted(os.listdir(tmp_path)) == ["enc"]
    # the new version incomplete (no manifest yet): the old one comes back
    a.save_pretrained(path)
    os.replace(path, _leftover(tmp_path, "old"))
    b.save_pretrained(tmp_path / "new")
    os.remove(tmp_path / "new" / MANIFEST_NAME)
    os.replace(tmp_path / "new", _leftover(tmp_path, "tmp"))
    shutil.copytree(_leftover(tmp_path, "old"), tmp_path / "saved-a")
    assert _which(path, a, b) == "a"
    assert sorted(os.listdir(tmp_path)) == ["enc", "saved-a"]


def test_leftovers_are_removed_by_the_next_save_or_load(tmp_path, two_encoders):
    a, b = two_encoders
    path = a.save_pretrained(tmp_path / "enc")
    for kind in ("tmp", "old"):
        shutil.copytree(path, _leftover(tmp_path, kind))
    (tmp_path / ".enc.tmp-not-ours").mkdir()  # not a name the saver uses
    (tmp_path / ".other.tmp-0123456789abcdef").mkdir()  # another folder's
    assert _which(path, a, b) == "a"
    assert sorted(os.listdir(tmp_path)) == [
        ".enc.tmp-not-ours",
        ".other.tmp-0123456789abcdef",
        "enc",
    ]
    shutil.copytree(path, _leftover(tmp_path, "old"))
    b.save_pretrained(path)
    assert ".enc.old-0123456789abcdef" not in os.listdir(tmp_path)
    assert _which(path, a, b) == "b"


@pytest.mark.skipif(fcntl is None, reason="POSIX advisory locks")
def test_a_save_in_progress_is_not_cleaned_up(tmp_path, two_encoders):
    a, b = two_encoders
    path = a.save_pretrained(tmp_path / "enc")
    busy = _leftover(tmp_path, "tmp")
    b.save_pretrained(tmp_path / "b")
    os.replace(tmp_path / "b", busy)
    fd = os.open(busy, os.O_RDONLY)
    open_fds = [fd]
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running save holds its folder
    try:
        assert _which(path, a, b) == "a"
        assert busy.exists()  # not removed by the load
        # between the saver's two renames the folder is missing: a loader
        # waits for the saver instead of restoring the old version
        os.replace(path, _leftover(tmp_path, "old"))

        def finish():
            time.sleep(0.3)
            os.replace(busy, path)
            open_fds.remove(fd)
            os.close(fd)

        saver = threading.Thread(target=finish)
        saver.start()
        start = time.monotonic()
        assert _which(path, a, b) == "b"
        assert 0.2 < time.monotonic() - start < 5
        saver.join()
    finally:
        for left in open_fds:
            os.close(left)
    assert sorted(os.listdir(tmp_path)) == ["enc"]


def test_save_refuses_to_replace_other_files(tmp_path, two_encoders):
    a, _ = two_encoders
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt.*replaces the whole folder"):
        a.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["results"]
    (tmp_path / "empty").mkdir()
    assert _which(a.save_pretrained(tmp_path / "empty"), a, a) == "a"
    with pytest.raises(ValueError, match="current folder"):
        a.save_pretrained(os.getcwd())
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a saved encoder"):
        load_pretrained(folder)
    assert not isinstance(PersistenceError("x"), FileNotFoundError)


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sklearn_cl3d import SimCLRPretrainer

    X = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    kw = dict(backbone="mlp", batch_size=8, max_epochs=1, random_state=0)
    a = SimCLRPretrainer(backbone__hidden_dims=(8,), **kw).fit(X)
    b = SimCLRPretrainer(backbone__hidden_dims=(5, 3), hidden_dim=6, **kw).fit(X)
    a.save_pretrained(sys.argv[1] + "/a")
    b.save_pretrained(sys.argv[1] + "/b")
    open(sys.argv[1] + "/ready", "w").close()
    while True:
        for est in (a, b):
            est.save_pretrained(sys.argv[1] + "/enc")
    """
)


def test_sigkill_while_saving_leaves_a_whole_encoder(tmp_path):
    """A child saves two architectures in turn into one folder, in a loop,
    and is killed at a random instant: the folder loads as one of them."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "ready").exists():
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(float(np.random.default_rng().uniform(0.1, 0.5)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    got = load_pretrained(out / "enc").transform(X)
    matches = [
        name
        for name in ("a", "b")
        if got.shape == load_pretrained(out / name).transform(X).shape
        and np.array_equal(got, load_pretrained(out / name).transform(X))
    ]
    assert len(matches) == 1
    assert not [n for n in os.listdir(out) if n.startswith(".")]
