"""Progress by default: epoch tables, step-accurate bars, transform progress."""

import re

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline

import sklearn_cl3d
from sklearn_cl3d import (
    ContrastiveSegmenter,
    DrasCLREncoder,
    FineTunedClassifier,
    FineTunedRegressor,
    GlobalLocalPretrainer,
    SimCLRPretrainer,
    WSPPretrainer,
    YAwarePretrainer,
)
from sklearn_cl3d.callbacks import StepProgressBar

TINY = dict(
    backbone="small3d",
    backbone__channels=(2, 4),
    hidden_dim=8,
    projection_dim=4,
    batch_size=8,
    max_epochs=2,
    random_state=0,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 1, 8, 8, 8)).astype(np.float32)
    return X, rng.uniform(20, 80, 20), np.tile([0, 1], 10)


def _bar(est):
    return dict(est.callbacks_)["progress_bar"]


@pytest.mark.parametrize(
    "cls",
    [
        YAwarePretrainer,
        SimCLRPretrainer,
        WSPPretrainer,
        GlobalLocalPretrainer,
        DrasCLREncoder,
        FineTunedClassifier,
        FineTunedRegressor,
        ContrastiveSegmenter,
    ],
)
def test_verbose_is_one_by_default(cls):
    assert cls().get_params()["verbose"] == 1


def test_default_fit_prints_the_epoch_table_and_verbose_0_is_silent(data, capsys):
    X, age, _ = data
    YAwarePretrainer(**TINY).fit(X, age)
    out = capsys.readouterr()
    assert re.search(r"epoch\s+train_loss\s+dur", out.out)
    assert len(re.findall(r"^\s+\d+\s", out.out, flags=re.M)) == 2  # one row/epoch
    YAwarePretrainer(**TINY, verbose=0).fit(X, age).transform(X)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_bar_counts_the_steps_that_run(data, capsys):
    X, age, _ = data
    # 20 samples, batches of 8, the last incomplete one dropped: 2 steps
    # (skorch's ProgressBar would count ceil(20 / 8) = 3)
    est = YAwarePretrainer(**TINY).fit(X, age)
    bar = _bar(est)
    assert isinstance(bar, StepProgressBar)
    assert bar.pbar_.total == 2 and bar.pbar_.n == 2
    assert est.history[-1]["train_batch_count"] == 2
    # with drop_last off the incomplete batch counts
    est = YAwarePretrainer(**TINY, iterator_train__drop_last=False).fit(X, age)
    assert _bar(est).pbar_.total == 3 == est.history[-1]["train_batch_count"]


def test_bar_follows_a_batch_sampler(capsys):
    """WSP sets its steps per epoch with its own batch sampler."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 20, 20, 6)).astype(np.float32)
    est = WSPPretrainer(
        backbone="resnet18",
        slice_size=32,
        batch_size=4,
        steps_per_epoch=3,
        max_epochs=1,
        random_state=0,
    ).fit(X, [0, 1] * 4)
    assert _bar(est).pbar_.total == 3 == est.history[-1]["train_batch_count"]


def test_bar_counts_validation_steps_too(data, capsys):
    from skorch.dataset import ValidSplit

    X, age, _ = data
    est = YAwarePretrainer(**TINY, train_split=ValidSplit(4)).fit(X, age)
    row = est.history[-1]
    total = row["train_batch_count"] + row["valid_batch_count"]
    assert _bar(est).pbar_.total == total == _bar(est).pbar_.n


def test_only_the_first_process_shows_bars(data, capsys, monkeypatch):
    X, age, _ = data
    monkeypatch.setattr(sklearn_cl3d.distributed, "rank", lambda: 1)
    est = YAwarePretrainer(**TINY).fit(X, age)
    assert _bar(est).pbar_.disable
    capsys.readouterr()
    est.transform(np.concatenate([X] * 3))
    assert capsys.readouterr().err == ""


def test_transform_shows_progress_over_batches(data, capsys):
    X, age, _ = data
    est = YAwarePretrainer(**TINY).fit(X, age)
    capsys.readouterr()
    est.transform(X)  # 3 batches of 8
    err = capsys.readouterr().err
    assert "YAwarePretrainer" in err and "/3" in err
    est.transform(X[:8])  # one batch: no bar
    assert capsys.readouterr().err == ""
    est.set_params(verbose=0).transform(X)
    assert capsys.readouterr().err == ""


def test_transform_of_files_shows_progress(data, tmp_path, capsys):
    X, age, _ = data
    paths = []
    for i, vol in enumerate(X):
        paths.append(tmp_path / f"v{i}.npy")
        np.save(paths[-1], vol)
    est = SimCLRPretrainer(**{**TINY, "batch_size": 4}).fit(X)
    capsys.readouterr()
    assert est.transform([str(p) for p in paths]).shape[0] == 20
    assert "0/5" in capsys.readouterr().err


def test_cross_validation_output_is_one_table_per_fit(data, capsys):
    X, age, y = data
    sklearn.set_config(enable_metadata_routing=True)
    try:
        ssl = YAwarePretrainer(**TINY).set_fit_request(proxy=True)
        pipe = Pipeline([("ssl", ssl), ("clf", LogisticRegression())])
        cross_val_score(pipe, X, y, params={"proxy": age}, cv=2)
        out = capsys.readouterr().out
        assert out.count("train_loss") == 2  # one header per fit
        grid = GridSearchCV(pipe, {"ssl__temperature": [0.1, 0.5]}, cv=2)
        grid.fit(X, y, proxy=age)
        out = capsys.readouterr().out
        assert out.count("train_loss") == 2 * 2 + 1  # + the refit
        # nothing but table lines on stdout
        lines = [line for line in out.splitlines() if line.strip()]
        assert all(
            re.match(r"^\s*(epoch\s+train_loss|[-\s]+$|\d+\s)", line) for line in lines
        ), lines
    finally:
        sklearn.set_config(enable_metadata_routing=False)


def test_inference_inside_fit_shows_no_bar_of_its_own(data, capsys):
    from sklearn_cl3d.monitoring import KNNProbe

    X, age, y = data
    probe = KNNProbe(np.concatenate([X] * 2), np.tile(y, 2), n_neighbors=3, cv=2)
    YAwarePretrainer(**TINY, callbacks=[("knn", probe)]).fit(X, age)
    assert "YAwarePretrainer" not in capsys.readouterr().err
