"""label_efficiency, its splits, seeds and methods, its summary and its plot."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sklearn_cl3d import FineTunedClassifier, SimCLRPretrainer, YAwarePretrainer
from sklearn_cl3d.evaluation import (
    _summary,
    label_efficiency,
    label_efficiency_splits,
    paired_differences,
    plot_label_efficiency,
    pretrain_seeds,
    summarize,
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
            "method", "protocol", "n_labels", "repeat", "seed", "scoring", "score"
        ]  # fmt: skip
        # a single fit stands for its method: no seed (nor for None)
        assert row["seed"] is None
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
        "method", "protocol", "n_labels", "repeat", "seed", "scoring", "score"
    ]  # fmt: skip
    assert frame["seed"].tolist() == [None, None]
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
    # the error bar is one sample standard deviation (ddof=1)
    (segment, *_) = ax.containers[0].lines[2][0].get_segments()
    half = (segment[1, 1] - segment[0, 1]) / 2
    assert half == pytest.approx(np.std(scores, ddof=1))
    _, given = plt.subplots()
    assert plot_label_efficiency(table, ax=given, ylabel="AUC") is given
    assert given.get_ylabel() == "AUC"
    with pytest.raises(ValueError, match="empty"):
        plot_label_efficiency([])
    with pytest.raises(ValueError, match="lack the column"):
        plot_label_efficiency([{"method": "a"}])
    # a single score per point: no error bar (its sd is NaN)
    single = [r for r in table if r["repeat"] == 0]
    ax = plot_label_efficiency(single)
    (segment, *_) = ax.containers[0].lines[2][0].get_segments()
    assert segment[0, 1] == segment[1, 1]
    plt.close("all")


# ----------------------------------------------------------- seeds, methods


@pytest.fixture(scope="module")
def simclr_seeds(data):
    X, _, _ = data
    est = SimCLRPretrainer(backbone="mlp", batch_size=16, device="cpu", max_epochs=1)
    return pretrain_seeds(est, X, seeds=[0, 1])


def test_pretrain_seeds_fits_clones(data):
    X, _, age = data
    est = YAwarePretrainer(backbone="mlp", batch_size=16, device="cpu", max_epochs=1)
    fits = pretrain_seeds(est, X, age, seeds=2)
    assert [f.random_state for f in fits] == [0, 1]
    assert all(f is not est and f.initialized_ for f in fits)
    assert not hasattr(est, "initialized_") or not est.initialized_
    # the seeds give different encoders, the same seed the same one
    F0, F1 = (f.transform(X) for f in fits)
    assert not np.allclose(F0, F1)
    (again,) = pretrain_seeds(est, X, age, seeds=[1])
    np.testing.assert_allclose(again.transform(X), F1, rtol=1e-5, atol=1e-6)
    # any estimator with random_state; fit_params are passed on
    pca = pretrain_seeds(PCA(2, svd_solver="randomized"), X, seeds=(3, 5))
    assert [p.random_state for p in pca] == [3, 5]
    for seeds, match in [
        (0, "at least 1"),
        ([], "empty"),
        ([1, 1], "duplicates"),
        ([0, -1], "non-negative"),
        ([0.5], "non-negative ints"),
        ("ab", "non-negative ints"),
        (None, "int or a sequence"),
    ]:
        with pytest.raises(ValueError, match=match):
            pretrain_seeds(PCA(2), X, seeds=seeds)
    with pytest.raises(ValueError, match="no random_state parameter"):
        pretrain_seeds(StandardScaler(), X)


def test_a_list_of_seeds_is_one_method(encoders, simclr_seeds, data):
    rows = _run(
        encoders,
        data,
        methods={"SimCLR": simclr_seeds},
        n_labels=[10],
        fine_tune_params={**FT, "max_epochs": 1},
    )
    # 2 protocols x 1 n x 2 repeats x 2 seeds; seeds vary fastest
    assert [(r["protocol"], r["repeat"], r["seed"]) for r in rows] == [
        (p, r, s) for p in ("linear_probe", "fine_tune") for r in (0, 1) for s in (0, 1)
    ]
    assert {r["method"] for r in rows} == {"SimCLR"}
    # each seed's rows are those of that fit alone, on the same splits
    for seed, fit in enumerate(simclr_seeds):
        alone = _run(
            encoders,
            data,
            methods={"SimCLR": [fit]},
            n_labels=[10],
            fine_tune_params={**FT, "max_epochs": 1},
        )
        assert [r for r in rows if r["seed"] == seed] == alone
    # the two seeds give different linear probes
    probe = [r["score"] for r in rows if r["protocol"] == "linear_probe"]
    assert probe[0] != probe[1]


def test_seed_values(encoders, simclr_seeds, data):
    X, _, age = data
    common = dict(backbone="mlp", batch_size=16, device="cpu", max_epochs=1)
    unseeded = [SimCLRPretrainer(**common).fit(X) for _ in range(2)]
    kwargs = dict(n_labels=[10], n_repeats=1, protocols="linear_probe")

    def seeds(methods, **extra):
        rows = _run(encoders, data, methods=methods, **kwargs, **extra)
        return [(r["method"], r["seed"]) for r in rows]

    # positions when random_state is not an int; a single fit has no seed,
    # even with an int random_state, unless it is given as a list
    assert seeds({"a": unseeded, "b": unseeded[0]}) == [
        ("a", 0), ("a", 1), ("b", None)
    ]  # fmt: skip
    assert seeds({"b": simclr_seeds[1], "c": [simclr_seeds[1]]}) == [
        ("b", None), ("c", 1)
    ]  # fmt: skip
    # random_state when it is an int, in the order of the list
    assert seeds({"a": simclr_seeds[::-1]}) == [("a", 1), ("a", 0)]
    assert seeds((simclr_seeds, None), covariates=age) == [
        ("SimCLRPretrainer", 0), ("SimCLRPretrainer", 1), ("from scratch", None)
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"several fits with seed\(s\) \[0\]"):
        seeds({"a": [simclr_seeds[0], simclr_seeds[0]]})
    with pytest.raises(ValueError, match=r"several fits with seed\(s\) \[1\]"):
        seeds({"a": [simclr_seeds[1], unseeded[0]]})
    with pytest.raises(ValueError, match="empty list"):
        seeds({"a": []})
    with pytest.raises(ValueError, match=r"pretrainers\['a'\]\[1\] is None"):
        seeds({"a": [simclr_seeds[0], None]})
    pca = PCA(2).fit(X)
    with pytest.raises(ValueError, match="mixes pretrainers and other"):
        seeds({"a": [simclr_seeds[0], pca]})
    raw = SimCLRPretrainer(**common)
    with pytest.raises(NotFittedError, match=r"pretrainers\['a'\]\[1\]"):
        seeds({"a": [simclr_seeds[0], raw]})


def test_a_fitted_transformer_is_a_probe_method(encoders, data):
    X, y, age = data
    pca = make_pipeline(StandardScaler(), PCA(3)).fit(X)
    rows = _run(
        encoders,
        data,
        methods={"PCA": pca, "SimCLR": encoders["SimCLR"]},
        n_labels=[20],
        covariates=age,
        fine_tune_params={**FT, "max_epochs": 1},
    )
    # the transformer has linear-probe rows only; the pretrainer both
    assert [(r["method"], r["protocol"], r["seed"]) for r in rows] == [
        ("PCA", "linear_probe", None),
        ("PCA", "linear_probe", None),
        ("SimCLR", "linear_probe", None),
        ("SimCLR", "linear_probe", None),
        ("SimCLR", "fine_tune", None),
        ("SimCLR", "fine_tune", None),
    ]
    # the probe sees [transform(X), covariates]
    (cell,) = [
        s
        for s in label_efficiency_splits(y, 20, n_repeats=2, random_state=0)
        if s["repeat"] == 1
    ]
    F = np.c_[pca.transform(X), age]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(F[cell["train"]], y[cell["train"]])
    expected = roc_auc_score(y[cell["test"]], probe.decision_function(F[cell["test"]]))
    assert rows[1]["score"] == pytest.approx(expected, abs=1e-12)
    # in a list, an int random_state is the seed; a single fit has none
    kwargs = dict(n_labels=[20], n_repeats=1, protocols="linear_probe")
    seeded = PCA(3, svd_solver="randomized", random_state=7).fit(X)
    fits = pretrain_seeds(PCA(3, svd_solver="randomized"), X, seeds=2)
    rows = _run(
        encoders, data, methods={"a": seeded, "b": fits, "c": [seeded]}, **kwargs
    )
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("a", None), ("b", 0), ("b", 1), ("c", 7)
    ]  # fmt: skip
    # a one-column transform is a feature
    first = FunctionTransformer(lambda A: A[:, 0]).fit(X)
    (row,) = _run(encoders, data, methods={"x0": first}, **kwargs)
    assert row["score"] > 0.5
    # only fine-tuning: a transformer has nothing to do
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        _run(encoders, data, methods={"PCA": pca}, protocols="fine_tune")
    with pytest.raises(NotFittedError, match=r"pretrainers\['PCA 50%'\]"):
        _run(encoders, data, methods={"PCA 50%": PCA(2)}, **kwargs)
    bad = FunctionTransformer(lambda A: A[:5]).fit(X)
    with pytest.raises(ValueError, match="gave shape"):
        _run(encoders, data, methods={"bad": bad}, **kwargs)


def test_paired_differences_of_a_table(encoders, simclr_seeds, data):
    _, _, age = data
    rows = _run(
        encoders,
        data,
        methods={
            "age": None,
            "SimCLR": simclr_seeds,
            "y-Aware": [encoders["y-Aware"]],
        },
        protocols="linear_probe",
        covariates=age,
        n_repeats=3,
    )
    # y-Aware has seed 0 only: SimCLR's seed 1 is left out of that comparison
    with pytest.warns(UserWarning, match=r"seed\(s\) \[1\] of 'y-Aware'"):
        out = paired_differences(rows, "SimCLR", n_bootstrap=200, random_state=0)
    assert [(d["method"], d["n_labels"]) for d in out] == [
        ("age", 10), ("age", 20), ("y-Aware", 10), ("y-Aware", 20)
    ]  # fmt: skip
    # "age" has no seed: paired with both seeds; y-Aware (seed 0): seed 0 only
    assert [(d["seeds"], d["n_splits"]) for d in out] == [
        ([0, 1], 3), ([0, 1], 3), ([0], 3), ([0], 3)
    ]  # fmt: skip
    score = {
        (r["method"], r["n_labels"], r["repeat"], r["seed"]): r["score"] for r in rows
    }
    expected = [
        [score["y-Aware", 20, r, 0] - score["SimCLR", 20, r, 0] for r in range(3)]
    ]
    np.testing.assert_allclose(out[3]["differences"], expected)


# ----------------------------------------------------------------- summary


def test_summarize_uses_ddof_1(encoders, simclr_seeds, data):
    _, _, age = data
    rows = _run(
        encoders,
        data,
        methods={"SimCLR": simclr_seeds, "age": None},
        protocols="linear_probe",
        covariates=age,
        n_repeats=3,
    )
    summary = summarize(rows)
    assert _summary is summarize
    assert [(s["method"], s["n_labels"]) for s in summary] == [
        ("SimCLR", 10), ("SimCLR", 20), ("age", 10), ("age", 20)
    ]  # fmt: skip
    for s in summary:
        scores = [
            r["score"]
            for r in rows
            if (r["method"], r["n_labels"]) == (s["method"], s["n_labels"])
        ]
        assert s["mean"] == pytest.approx(np.mean(scores))
        assert s["std"] == pytest.approx(np.std(scores, ddof=1))
        assert s["n"] == len(scores)
        assert s["n_repeats"] == 3
        assert s["n_seeds"] == (2 if s["method"] == "SimCLR" else 1)
    assert list(summary[0]) == [
        "method", "protocol", "n_labels", "mean", "std", "n", "n_seeds", "n_repeats"
    ]  # fmt: skip
    # one score: no spread
    (one,) = summarize([{**rows[0]}])
    assert np.isnan(one["std"]) and one["n"] == 1
    # rows without repeat or seed columns
    bare = [
        {"method": "m", "protocol": "p", "n_labels": 5, "score": v} for v in (1, 2, 4)
    ]
    (s,) = summarize(bare)
    assert (s["n"], s["n_seeds"], s["n_repeats"]) == (3, 1, 3)
    assert s["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="lack the column"):
        summarize([{"method": "m", "protocol": "p", "n_labels": 5}])


def test_summarize_and_frames(encoders, simclr_seeds, data):
    pd = pytest.importorskip("pandas")
    _, _, age = data
    frame = _run(
        encoders,
        data,
        methods={"SimCLR": simclr_seeds, "age": None},
        protocols="linear_probe",
        covariates=age,
        as_frame=True,
    )
    assert frame["seed"].dtype == object
    assert frame["seed"].tolist() == [0, 1] * 4 + [None] * 4
    rows = frame.to_dict("records")
    assert summarize(frame) == summarize(rows)
    summary = summarize(frame, as_frame=True)
    assert isinstance(summary, pd.DataFrame) and len(summary) == 4
    # a frame built by pandas itself (seed as floats with NaN) pairs the same
    plain = pd.DataFrame(rows)
    assert plain["seed"].dtype == np.float64
    assert paired_differences(
        plain, "age", n_bootstrap=100, random_state=0
    ) == paired_differences(rows, "age", n_bootstrap=100, random_state=0)
