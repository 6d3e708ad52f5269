"""WSP fits on the CPU do not keep freed memory in the heap (issue 17, point 4):
the fragmented heap raised their peak RSS above the official code's. The
setting changes where memory comes from, never the numbers."""

import numpy as np
import pytest

from sklearn_cl3d import SimCLRPretrainer, WSPPretrainer
from sklearn_cl3d.estimators import _skorch

WSP = dict(
    backbone="resnet18",
    slice_size=32,
    batch_size=4,
    steps_per_epoch=2,
    max_epochs=1,
    random_state=0,
    device="cpu",
    verbose=0,
)


@pytest.fixture
def heap_calls(monkeypatch):
    calls = []
    original = _skorch.cpu_heap_reuse

    def spy(enabled=True):
        calls.append(bool(enabled))
        return original(enabled)

    monkeypatch.setattr(_skorch, "cpu_heap_reuse", spy)
    return calls


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 1, 32, 32, 10)).astype(np.float32), np.arange(6) % 2


def test_wsp_fit_runs_without_heap_reuse(heap_calls):
    X, y = _data()
    WSPPretrainer(**WSP).fit(X, y)
    assert heap_calls and not any(heap_calls)


def test_3d_pretrainers_keep_heap_reuse(heap_calls):
    X = np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype(np.float32)
    SimCLRPretrainer(
        backbone="small3d",
        backbone__channels=(2, 4),
        hidden_dim=4,
        projection_dim=2,
        batch_size=2,
        max_epochs=1,
        random_state=0,
        device="cpu",
        verbose=0,
    ).fit(X)
    assert heap_calls and all(heap_calls)


def test_heap_setting_does_not_change_the_numbers(monkeypatch):
    X, y = _data()
    off = WSPPretrainer(**WSP).fit(X, y)
    monkeypatch.setattr(WSPPretrainer, "_cpu_heap_reuse", True)
    on = WSPPretrainer(**WSP).fit(X, y)
    np.testing.assert_array_equal(off.transform(X), on.transform(X))
    assert off.history[-1]["train_loss"] == on.history[-1]["train_loss"]
