"""Reuse of freed heap memory on the CPU (sklearn_cl3d._heap)."""

import subprocess
import sys
import threading

import numpy as np
import pytest
from skorch.callbacks import Callback

from sklearn_cl3d import YAwarePretrainer, _heap

glibc = pytest.mark.skipif(
    _heap._glibc() is None, reason="heap reuse needs glibc's malloc"
)

class _FakeLibc:
    """Records the mallopt/malloc_trim calls the block makes."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(_heap, "_glibc", lambda: libc)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return libc


_ENTER = [("mallopt", -3, 1 << 30), ("mallopt", -1, 1 << 30)]
_EXIT = [("mallopt", -3, 32 << 20), ("mallopt", -1, 64 << 20), ("malloc_trim", 0)]


def test_block_raises_thresholds_then_restores_and_trims(fake_libc):
    with _heap.cpu_heap_reuse() as active:
        assert active
        assert fake_libc.calls == _ENTER
    assert fake_libc.calls == _ENTER + _EXIT
    assert _heap._depth == 0


def test_block_restores_even_after_an_error(fake_libc):
    with pytest.raises(KeyError):
        with _heap.cpu_heap_reuse():
            raise KeyError("boom")
    assert fake_libc.calls == _ENTER + _EXIT
    assert _heap._depth == 0


def test_nested_and_concurrent_blocks_share_one_setting(fake_libc):
    barrier = threading.Barrier(2)

    def worker():
        with _heap.cpu_heap_reuse():
            barrier.wait()
            barrier.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    with _heap.cpu_heap_reuse():
        barrier.wait()  # both blocks open
        with _heap.cpu_heap_reuse():
            assert _heap._depth == 3
        barrier.wait()  # the worker leaves first
        thread.join()
        assert _heap._depth == 1
        assert fake_libc.calls == _ENTER  # set once, not restored yet
    assert fake_libc.calls == _ENTER + _EXIT


_FAULTS_SCRIPT = """
import resource, torch
from sklearn_cl3d._heap import cpu_heap_reuse

def steady_faults(n_iter=8):
    # allocate, write and free 64-96 MiB tensors (above glibc's largest
    # dynamic mmap threshold) as a training step does with its activations
    faults = []
    for _ in range(n_iter):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.ones(24 << 20)
        b = torch.ones(16 << 20)
        del a
        c = torch.ones(20 << 20)
        del b, c
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sum(faults[n_iter // 2:])

outside = steady_faults()
with cpu_heap_reuse():
    inside = steady_faults()
print(outside, inside, 4 * (240 << 20) // resource.getpagesize())
"""


@glibc
def test_freed_blocks_are_reused_inside_the_block():
    # a fresh process: how much glibc reuses outside the block depends on
    # what the heap went through before
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    outside, inside, pages = map(int, out.stdout.split())
    assert outside > pages // 2  # every block freshly mapped
    assert inside < pages // 20  # blocks reused, no page faults


def test_disabled_block_changes_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(_heap, "_enter", lambda: calls.append("enter"))
    with _heap.cpu_heap_reuse(enabled=False) as active:
        assert active is False
    assert calls == []


def test_restored_thresholds_follow_the_environment(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert _heap._restore_values() == (32 << 20, 64 << 20)
    # what a Dask nanny sets for its workers
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert _heap._restore_values() == (32 << 20, 65536)
    monkeypatch.setenv(
        "GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=0x20000:glibc.foo=1"
    )
    assert _heap._restore_values() == (0x20000, 65536)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "not a number")
    assert _heap._restore_values() == (0x20000, 64 << 20)


class _DepthProbe(Callback):
    def __init__(self):
        self.depths = []

    def on_batch_begin(self, net, **kwargs):
        self.depths.append(_heap._depth)


def test_estimator_computes_inside_the_block_on_cpu():
    probe = _DepthProbe()
    X = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    est = YAwarePretrainer(
        backbone="mlp",
        max_epochs=1,
        batch_size=4,
        device="cpu",
        callbacks=[probe],
        random_state=0,
    )
    est.fit(X, np.arange(8.0))
    expected = 1 if _heap._glibc() is not None else 0
    assert probe.depths and set(probe.depths) == {expected}
    assert _heap._depth == 0
