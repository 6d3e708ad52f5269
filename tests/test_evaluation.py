"""label_efficiency, its splits and its plot."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_cl3d import FineTunedClassifier, SimCLRPretrainer, YAwarePretrainer
from sklearn_cl3d.evaluation import (
    label_efficiency,
    label_efficiency_splits,
    plot_label_efficiency,
)

FT = {"max_epochs": 2, "batch_size": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6)).astype(np.float32)
    age = rng.uniform(20, 80, size=64)
    y = (X[:, 0] + 0.5 * rng.normal(size=64) > 0).astype(int)
    return X, y, age


@pytest.fixture(scope="module")
def encoders(data):
    X, _, age = data
    common = dict(backbone="mlp", batch_size=16, device="cpu", random_state=0)
    return {
        "y-Aware": YAwarePretrainer(max_epochs=2, **common).fit(X, age),
        "SimCLR": SimCLRPretrainer(max_epochs=2, **common).fit(X),
    }


def _run(encoders, data, **kwargs):
    X, y, _ = data
    kwargs.setdefault("n_labels", [10, 20])
    kwargs.setdefault("n_repeats", 2)
    kwargs.setdefault("fine_tune_params", FT)
    kwargs.setdefault("random_state", 0)
    methods = kwargs.pop("methods", {**encoders, "scratch": None})
    return label_efficiency(methods, X, kwargs.pop("y", y), **kwargs)


@pytest.fixture(scope="module")
def table(encoders, data):
    return _run(encoders, data)


def test_schema_and_counts(table, encoders, data):
    # 2 encoders x 2 protocols + scratch x fine-tuning only, x 2 n x 2 repeats
    assert len(table) == (2 * 2 + 1) * 2 * 2
    for row in table:
        assert list(row) == [
            "method", "protocol", "n_labels", "repeat", "scoring", "score"
        ]  # fmt: skip
        assert row["scoring"] == "roc_auc"
        assert 0.0 <= row["score"] <= 1.0
    keys = [(r["method"], r["protocol"], r["n_labels"], r["repeat"]) for r in table]
    assert len(set(keys)) == len(keys)
    assert keys[:4] == [
        ("y-Aware", "linear_probe", 10, 0),
        ("y-Aware", "linear_probe", 10, 1),
        ("y-Aware", "linear_probe", 20, 0),
        ("y-Aware", "linear_probe", 20, 1),
    ]
    assert {(m, p) for m, p, _, _ in keys} == {
        ("y-Aware", "linear_probe"),
        ("y-Aware", "fine_tune"),
        ("SimCLR", "linear_probe"),
        ("SimCLR", "fine_tune"),
        ("scratch", "fine_tune"),
    }
    # with covariates the no-pretraining method gets a probe on them alone
    X, y, age = data
    probe_only = _run(encoders, data, protocols="linear_probe", covariates=age)
    assert len(probe_only) == 3 * 1 * 2 * 2
    assert {r["method"] for r in probe_only} == {"y-Aware", "SimCLR", "scratch"}


def test_list_input_names_and_frame(encoders, data):
    pytest.importorskip("pandas")
    ssl = encoders["SimCLR"]
    frame = _run(
        encoders,
        data,
        methods=[ssl, ssl, None],
        protocols=["linear_probe"],
        n_labels=12,
        n_repeats=1,
        as_frame=True,
    )
    assert list(frame.columns) == [
        "method", "protocol", "n_labels", "repeat", "scoring", "score"
    ]  # fmt: skip
    # no covariates: "from scratch" has no linear-probe rows
    assert frame["method"].tolist() == ["SimCLRPretrainer", "SimCLRPretrainer (2)"]
    assert frame["score"].iloc[0] == frame["score"].iloc[1]


def test_stratified_draws_contain_every_class():
    y = np.array([0] * 40 + [1] * 15 + [2] * 5)
    splits = label_efficiency_splits(
        y, [3, 10, 45], n_repeats=3, test_size=0.25, random_state=1
    )
    assert [(s["repeat"], s["n_labels"]) for s in splits] == [
        (r, n) for r in range(3) for n in (3, 10, 45)
    ]
    pools = {}
    for s in splits:
        train, test = s["train"], s["test"]
        assert len(train) == s["n_labels"] and len(test) == 15
        assert len(np.unique(train)) == len(train)
        assert not np.intersect1d(train, test).size
        assert set(np.unique(y[train])) == {0, 1, 2}
        assert set(np.unique(y[test])) == {0, 1, 2}
        # the test set is fixed within a repeat
        pools.setdefault(s["repeat"], test)
        np.testing.assert_array_equal(pools[s["repeat"]], test)
    counts = {s["n_labels"]: np.bincount(y[s["train"]]).tolist() for s in splits}
    # the pool holds 30/11/4 subjects of the classes (stratified test split)
    assert counts[3] == [1, 1, 1]
    assert counts[10] == [7, 2, 1]
    assert counts[45] == [30, 11, 4]  # the whole pool
    # regression: uniform draws, same shapes
    reg = label_efficiency_splits(np.linspace(0, 1, 60), 20, n_repeats=2)
    assert [len(s["train"]) for s in reg] == [20, 20]


def test_splits_from_a_custom_cv():
    y = np.array([0, 1] * 20)
    cv = StratifiedKFold(4, shuffle=True, random_state=0)
    splits = label_efficiency_splits(y, 6, cv=cv, random_state=0)
    assert len(splits) == 4
    tests = np.concatenate([s["test"] for s in splits])
    assert sorted(tests.tolist()) == list(range(40))
    pairs = [(s["train"][:10], s["test"]) for s in splits]
    again = label_efficiency_splits(y, 3, cv=pairs, random_state=0)
    assert [len(s["train"]) for s in again] == [3] * 4


def test_same_random_state_same_table(table, encoders, data):
    assert _run(encoders, data) == table
    other = _run(encoders, data, random_state=1)
    assert [r["score"] for r in other] != [r["score"] for r in table]


def test_scores_equal_a_hand_run(table, encoders, data):
    X, y, _ = data
    splits = label_efficiency_splits(y, [10, 20], n_repeats=2, random_state=0)
    cell = next(s for s in splits if s["repeat"] == 1 and s["n_labels"] == 20)
    train, test = cell["train"], cell["test"]

    def score(method, protocol):
        (row,) = [
            r
            for r in table
            if (r["method"], r["protocol"], r["n_labels"], r["repeat"])
            == (method, protocol, 20, 1)
        ]
        return row["score"]

    ssl = encoders["SimCLR"]
    F = ssl.transform(X).astype(np.float64)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(F[train], y[train])
    expected = roc_auc_score(y[test], probe.decision_function(F[test]))
    assert score("SimCLR", "linear_probe") == pytest.approx(expected, abs=1e-12)

    clf = FineTunedClassifier(ssl, random_state=cell["seed"], **FT)
    clf.fit(X[train], y[train])
    expected = roc_auc_score(y[test], clf.predict_proba(X[test])[:, 1])
    assert score("SimCLR", "fine_tune") == pytest.approx(expected, abs=1e-9)

    # from scratch: the first pretrainer's architecture with fresh weights
    scratch = FineTunedClassifier(
        encoders["y-Aware"], init="random", random_state=cell["seed"], **FT
    ).fit(X[train], y[train])
    expected = roc_auc_score(y[test], scratch.predict_proba(X[test])[:, 1])
    assert score("scratch", "fine_tune") == pytest.approx(expected, abs=1e-9)


def test_regression_gives_r2(encoders, data):
    X, _, age = data
    target = 2.0 * X[:, 1] + 0.1 * age
    rows = _run(
        encoders,
        data,
        methods={"SimCLR": encoders["SimCLR"], "none": None},
        y=target,
        n_labels=[15, 30],
        covariates=age,
        fine_tune_params={**FT, "max_epochs": 1},
    )
    assert {r["scoring"] for r in rows} == {"r2"}
    assert len(rows) == (2 + 2) * 2 * 2
    assert all(np.isfinite(r["score"]) for r in rows)
    # the covariate-only probe is a ridge on age
    (cell,) = [
        s
        for s in label_efficiency_splits(target, [15, 30], n_repeats=2, random_state=0)
        if (s["repeat"], s["n_labels"]) == (0, 30)
    ]
    ridge = make_pipeline(StandardScaler(), Ridge()).fit(
        age[cell["train"], None], target[cell["train"]]
    )
    expected = r2_score(target[cell["test"]], ridge.predict(age[cell["test"], None]))
    (row,) = [
        r
        for r in rows
        if (r["method"], r["protocol"], r["n_labels"], r["repeat"])
        == ("none", "linear_probe", 30, 0)
    ]
    assert row["score"] == pytest.approx(expected)


def test_parallel_matches_sequential(encoders, data):
    kwargs = dict(n_labels=[12], n_repeats=2, methods={"SimCLR": encoders["SimCLR"]})
    seq = _run(encoders, data, **kwargs)
    par = _run(encoders, data, n_jobs=2, **kwargs)
    assert par == seq


def test_segmentation_fine_tunes_a_segmenter():
    rng = np.random.default_rng(0)
    X = rng.random((8, 16, 16, 4), dtype=np.float32)
    masks = (X > 0.6).astype(int)
    rows = label_efficiency(
        {"U-Net": None},
        X,
        masks,
        n_labels=2,
        n_repeats=1,
        test_size=2,
        fine_tune_params=dict(
            channels=(4, 8), slice_size=16, max_epochs=1, device="cpu"
        ),
        random_state=0,
    )
    assert len(rows) == 1 and rows[0]["scoring"] == "dice"
    assert 0.0 <= rows[0]["score"] <= 1.0
    with pytest.raises(ValueError, match="linear probe needs one target"):
        label_efficiency({"U-Net": None}, X, masks, 2, protocols="linear_probe")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_labels": 60}, ValueError, "larger than the training part"),
        ({"n_labels": [1, 10]}, ValueError, "smaller than the number of classes"),
        ({"n_labels": [0]}, ValueError, "positive integers"),
        ({"n_labels": []}, ValueError, "empty"),
        ({"n_labels": 2.5}, ValueError, "int or a sequence"),
        ({"protocols": ["probe"]}, ValueError, "Unknown protocol"),
        ({"protocols": []}, ValueError, "protocols is empty"),
        ({"n_repeats": 0}, ValueError, "n_repeats"),
        ({"cv": 5}, ValueError, "cv must be None"),
        ({"cv": []}, ValueError, "no split"),
        ({"cv": [([0, 1, 2], [2, 3])]}, ValueError, "both parts"),
        ({"covariates": np.zeros(5)}, ValueError, "covariates must have shape"),
        ({"covariates": np.full(64, np.nan)}, ValueError, "NaN"),
        ({"fine_tune_params": {"random_state": 1}}, ValueError, "cannot set"),
        ({"fine_tune_params": {"lr": -1.0}}, ValueError, "lr"),
        ({"fine_tune_params": {"max_epoch": 3}}, ValueError, "max_epoch"),
        ({"scoring": 3}, ValueError, "scoring must be"),
        ({"scoring": "dice"}, ValueError, "segmentation"),
        ({"task": "ranking"}, ValueError, "task must be one of"),
        ({"methods": {}}, ValueError, "pretrainers is empty"),
        ({"methods": "SimCLR"}, TypeError, "must be a dict"),
        ({"methods": {"pca": object()}}, TypeError, "fitted pretrainer"),
        (
            {"methods": {"raw": SimCLRPretrainer(backbone="mlp")}},
            NotFittedError,
            "not fitted",
        ),
        ({"y": np.zeros(10, dtype=int)}, ValueError, "different lengths"),
        ({"y": np.zeros(64, dtype=int)}, ValueError, "single class"),
        ({"y": np.r_[np.zeros(63, dtype=int), 1]}, ValueError, "single subject"),
        ({"y": np.zeros((64, 2))}, ValueError, "one target per subject"),
    ],
)
def test_bad_inputs(encoders, data, kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(encoders, data, **kwargs)


def test_a_class_missing_from_a_part(encoders, data):
    _, y, _ = data
    ones = np.flatnonzero(y == 1)
    zeros = np.flatnonzero(y == 0)
    # the test part holds only class 0
    cv = [(np.r_[zeros[:10], ones], zeros[10:20])]
    with pytest.raises(ValueError, match="test part of split 0 has no subject"):
        _run(encoders, data, cv=cv)
    cv = [(zeros[:30], np.r_[zeros[30:], ones])]
    with pytest.raises(ValueError, match="training part of split 0 has no subject"):
        _run(encoders, data, cv=cv)


def test_plot_one_line_per_method_and_protocol(table):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    ax = plot_label_efficiency(table)
    assert isinstance(ax, Axes)
    assert len(ax.containers) == 5
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "y-Aware, linear probe",
        "y-Aware, fine-tuning",
        "SimCLR, linear probe",
        "SimCLR, fine-tuning",
        "scratch, fine-tuning",
    ]
    assert ax.get_ylabel() == "roc_auc"
    assert list(ax.get_xticks()) == [10, 20]
    # the plotted means are the means over repeats
    line = ax.containers[0].lines[0]
    scores = [
        r["score"]
        for r in table
        if (r["method"], r["protocol"], r["n_labels"])
        == ("y-Aware", "linear_probe", 10)
    ]
    assert line.get_ydata()[0] == pytest.approx(np.mean(scores))
    _, given = plt.subplots()
    assert plot_label_efficiency(table, ax=given, ylabel="AUC") is given
    assert given.get_ylabel() == "AUC"
    with pytest.raises(ValueError, match="empty"):
        plot_label_efficiency([])
    with pytest.raises(ValueError, match="lack the column"):
        plot_label_efficiency([{"method": "a"}])
    plt.close("all")
