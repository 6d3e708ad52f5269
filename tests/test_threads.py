"""Fits in threads of one process: own random streams, global RNG untouched."""

import threading

import numpy as np
import pytest
import torch
from joblib import Parallel, delayed

from sklearn_cl3d import FineTunedClassifier, SimCLRPretrainer, YAwarePretrainer
from sklearn_cl3d.estimators._skorch import (
    FitRandomness,
    _module_draws_from_global_rng,
    draw_base_seed,
)
from sklearn_cl3d.nn import SmallCNN3D

TINY = dict(
    backbone="small3d",
    backbone__channels=(2, 4),
    hidden_dim=4,
    projection_dim=3,
    max_epochs=2,
    batch_size=4,
    device="cpu",
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 1, 6, 6, 6)).astype(np.float32)
    return X, rng.uniform(20, 80, size=12)


def _global_states():
    return torch.get_rng_state().clone(), np.random.get_state()  # noqa: NPY002 (the legacy global)


def _assert_same_states(before):
    torch_state, np_state = before
    assert torch.equal(torch.get_rng_state(), torch_state)
    now = np.random.get_state()  # noqa: NPY002 (the legacy global)
    assert now[0] == np_state[0] and np.array_equal(now[1], np_state[1])
    assert now[2:] == np_state[2:]


@pytest.mark.parametrize("random_state", [0, None])
def test_fit_and_transform_leave_the_global_rngs_alone(data, random_state):
    X, age = data
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002
    before = _global_states()
    est = YAwarePretrainer(**TINY, random_state=random_state).fit(X, age)
    est.transform(X)
    _assert_same_states(before)


def test_random_state_seeds_the_fit_not_the_global_rng(data):
    X, _ = data
    torch.manual_seed(1)
    a = SimCLRPretrainer(**TINY, random_state=0).fit(X).transform(X)
    torch.manual_seed(2)
    b = SimCLRPretrainer(**TINY, random_state=0).fit(X).transform(X)
    c = SimCLRPretrainer(**TINY, random_state=1).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def _threaded(make, fit, seeds):
    """Fit one estimator per seed, all in threads started together."""
    out = [None] * len(seeds)
    errors = []
    barrier = threading.Barrier(len(seeds))

    def work(i, seed):
        try:
            est = make(seed)
            barrier.wait()
            out[i] = fit(est)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(seeds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return out


# dropout=0: training steps run concurrently (lock released);
# dropout>0: they take turns on the global RNG, which holds their dropout masks
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_threaded_fits_give_the_sequential_results(data, dropout):
    X, _ = data

    def make(seed):
        return SimCLRPretrainer(**TINY, backbone__dropout=dropout, random_state=seed)

    def fit(est):
        return est.fit(X).transform(X)

    sequential = [fit(make(s)) for s in (0, 1)]
    torch.manual_seed(7)
    before = _global_states()
    threaded = _threaded(make, fit, (0, 1))
    _assert_same_states(before)
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(sequential[0], sequential[1])


def test_joblib_threading_backend_matches_sequential_fine_tuning(data):
    X, _ = data
    y = np.arange(len(X)) % 2

    def run(seed):
        clf = FineTunedClassifier(
            backbone="small3d",
            backbone__channels=(2, 4),
            backbone__dropout=0.3,
            max_epochs=2,
            batch_size=4,
            device="cpu",
            random_state=seed,
        )
        return clf.fit(X, y).predict_proba(X)

    sequential = [run(s) for s in (0, 1, 2)]
    before = _global_states()
    threaded = Parallel(n_jobs=2, backend="threading")(
        delayed(run)(s) for s in (0, 1, 2)
    )
    _assert_same_states(before)
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)


def test_fit_randomness_is_a_private_copy_of_the_global_stream():
    torch.manual_seed(11)
    outside = torch.get_rng_state().clone()
    rng = FitRandomness(5)
    with rng.active():
        first = torch.rand(3)
        with rng.active():  # re-entrant
            second = torch.rand(3)
        with rng.suspended():
            assert torch.equal(torch.get_rng_state(), outside)
        third = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outside)
    with rng.active():
        fourth = torch.rand(3)
    expected = torch.Generator().manual_seed(5)
    np.testing.assert_array_equal(
        torch.cat([first, second, third, fourth]),
        torch.rand(12, generator=expected),
    )


def test_fit_randomness_nested_streams_restore_each_other():
    outer, inner = FitRandomness(1), FitRandomness(2)
    before = torch.get_rng_state().clone()
    with outer.active():
        a = torch.rand(2)
        with inner.active():
            b = torch.rand(2)
        c = torch.rand(2)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(
        torch.cat([a, c]), torch.rand(4, generator=torch.Generator().manual_seed(1))
    )
    np.testing.assert_array_equal(
        b, torch.rand(2, generator=torch.Generator().manual_seed(2))
    )


def test_which_networks_draw_from_the_global_rng():
    class Custom(torch.nn.Module):
        def forward(self, x):
            return x + torch.rand_like(x)

    assert not _module_draws_from_global_rng(SmallCNN3D(channels=(2,)))
    assert _module_draws_from_global_rng(SmallCNN3D(channels=(2,), dropout=0.1))
    assert _module_draws_from_global_rng(torch.nn.Sequential(torch.nn.RReLU()))
    assert not _module_draws_from_global_rng(torch.nn.Dropout(0.0))
    # unknown code is assumed to draw: its steps take turns
    assert _module_draws_from_global_rng(Custom())


def test_draw_base_seed():
    state = np.random.get_state()  # noqa: NPY002 (the legacy global)
    seeds = {draw_base_seed(None) for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 - 1 for s in seeds)
    assert draw_base_seed(3) == draw_base_seed(3)
    assert np.array_equal(np.random.get_state()[1], state[1])  # noqa: NPY002
