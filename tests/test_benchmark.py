"""sklearn_cl3d.evaluation.benchmark and ``sklearn-cl3d benchmark``."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from sklearn_cl3d import YAwarePretrainer, cli  # noqa: E402
from sklearn_cl3d.baselines import VoxelPCA  # noqa: E402
from sklearn_cl3d.estimators import BaseContrastivePretrainer  # noqa: E402
from sklearn_cl3d.evaluation import benchmark  # noqa: E402

N_UNLABELLED, N_LABELLED = 12, 28

#: a tiny, fast setting: 16^3 volumes, a 2-level small CNN, one epoch
TINY = dict(
    target="dx",
    proxy="age",
    covariates=["age"],
    n_labels=[8],
    seeds=2,
    n_repeats=2,
    max_epochs=1,
    pretrainer_params={"backbone__channels": (4, 8), "batch_size": 8},
    n_components=4,
    verbose=0,
)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A CSV of 40 NIfTI volumes (16^3): 12 without dx, age, a text column."""
    folder = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    n = N_UNLABELLED + N_LABELLED
    age = rng.uniform(20, 80, n).round(1)
    dx = rng.permutation(np.arange(n) % 2)
    rows = []
    for i in range(n):
        vol = rng.normal(size=(16, 16, 16)).astype(np.float32)
        vol[4:12, 4:12, 4:12] += 0.02 * age[i] + dx[i]
        name = f"s{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / name)
        rows.append(
            {
                "path": name,
                "participant_id": f"sub-{i:02d}",
                "dx": "" if i < N_UNLABELLED else dx[i],
                "age": age[i],
                "sex": "MF"[i % 2],
            }
        )
    path = folder / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def fits(monkeypatch):
    """Count the fits: (class name, random_state) of every pretraining and
    one entry per voxel PCA."""
    calls = []
    pca_fit = VoxelPCA.fit

    def counted(fit):
        def pretrain(self, *args, **kwargs):
            calls.append((type(self).__name__, self.max_epochs, self.random_state))
            return fit(self, *args, **kwargs)

        return pretrain

    # y-Aware has its own fit (with proxy); SimCLR uses the base class's
    for cls in (BaseContrastivePretrainer, YAwarePretrainer):
        monkeypatch.setattr(cls, "fit", counted(cls.__dict__["fit"]))

    def pca(self, *args, **kwargs):
        calls.append(("VoxelPCA", None, None))
        return pca_fit(self, *args, **kwargs)

    monkeypatch.setattr(VoxelPCA, "fit", pca)
    return calls


def test_tidy_files(table, tmp_path):
    out = tmp_path / "out"
    result = benchmark(table, out_dir=out, **TINY)
    assert sorted(os.listdir(out)) == [
        "differences.csv",
        "label_efficiency.png",
        "models",  # the pretrained networks, read back on resume
        "results.csv",
        "results.json",
        "summary.csv",
    ]
    scores = pd.read_csv(out / "results.csv")
    assert list(scores.columns) == [
        "method", "protocol", "n_labels", "repeat", "seed", "scoring", "score",
    ]  # fmt: skip
    # age only and PCA: no seed; three networks x 2 seeds; x 2 repeats
    counts = scores.groupby("method", sort=False).size().to_dict()
    assert counts == {
        "age only": 2,
        "voxel PCA(4)": 2,
        "random network": 4,
        "SimCLR": 4,
        "y-Aware": 4,
    }
    assert scores.loc[scores.method == "age only", "seed"].isna().all()
    assert sorted(scores.loc[scores.method == "SimCLR", "seed"].unique()) == [0, 1]
    assert (scores.scoring == "roc_auc").all() and scores.score.between(0, 1).all()
    assert len(result.scores) == len(scores)

    summary = pd.read_csv(out / "summary.csv")
    assert {"method", "protocol", "n_labels", "mean", "std", "n"} <= set(summary)
    assert len(summary) == 5
    diffs = pd.read_csv(out / "differences.csv")
    assert {"method", "reference", "mean_difference", "ci_low", "ci_high"} <= set(diffs)
    assert len(diffs) == 10  # every pair of the 5 methods once
    assert (diffs.ci_low <= diffs.mean_difference + 1e-12).all()
    assert (diffs.mean_difference <= diffs.ci_high + 1e-12).all()

    payload = json.loads((out / "results.json").read_text())
    assert payload["scores"] == result.scores
    config = payload["config"]
    assert config["target"] == "dx" and config["covariates"] == ["age"]
    assert config["subjects"]["labelled"] == N_LABELLED
    assert config["subjects"]["pretrain_on"] == "unlabelled"
    assert config["subjects"]["pretraining"] == N_UNLABELLED


def test_resume_skips_done_cells(table, tmp_path, fits):
    out = tmp_path / "out"
    kwargs = dict(TINY, seeds=1, methods=["pca", "random", "yaware"])
    first = benchmark(table, out_dir=out, **kwargs)
    assert sorted(fits) == [
        ("SimCLRPretrainer", 0, 0),  # the random network
        ("VoxelPCA", None, None),
        ("YAwarePretrainer", 1, 0),
    ]

    fits.clear()
    again = benchmark(table, out_dir=out, **kwargs)
    assert fits == [] and again.fitted == []
    assert again.scores == first.scores

    # a second seed: only the networks' new seed is fitted, old rows are kept
    fits.clear()
    more = benchmark(table, out_dir=out, **dict(kwargs, seeds=2))
    assert sorted(fits) == [("SimCLRPretrainer", 0, 1), ("YAwarePretrainer", 1, 1)]
    assert more.fitted == [("random network", 1), ("y-Aware", 1)]
    assert more.scores[: len(first.scores)] == first.scores
    assert len(more.scores) == len(first.scores) + 2 * 2  # 2 networks x 2 repeats

    # the same cells as a fresh run with both seeds
    fresh = benchmark(table, out_dir=tmp_path / "fresh", **dict(kwargs, seeds=2))

    def key(r):
        return (r["method"], r["repeat"], -1 if r["seed"] is None else r["seed"])

    assert sorted(fresh.scores, key=key) == sorted(more.scores, key=key)

    # a new method on the finished run: fitted alone
    fits.clear()
    benchmark(table, out_dir=out, **dict(kwargs, seeds=2, methods=["covariates"]))
    assert fits == []
    scores = pd.read_csv(out / "results.csv")
    assert set(scores.method) == {
        "voxel PCA(4)",
        "random network",
        "y-Aware",
        "age only",
    }


def test_resume_adds_label_counts(table, tmp_path, fits, monkeypatch):
    """New label counts on a finished run: only their cells are scored, the
    networks are read back, and the scores are a fresh run's."""
    import sklearn_cl3d.evaluation._benchmark as bench

    scored = []
    original = bench.label_efficiency

    def counted(methods, X, y, n_labels, **kwargs):
        scored.append((next(iter(methods)), list(n_labels)))
        return original(methods, X, y, n_labels, **kwargs)

    monkeypatch.setattr(bench, "label_efficiency", counted)
    out = tmp_path / "out"
    kwargs = dict(TINY, seeds=1, methods=["covariates", "random", "yaware"])
    first = benchmark(table, out_dir=out, **kwargs)
    assert sorted(fits) == [("SimCLRPretrainer", 0, 0), ("YAwarePretrainer", 1, 0)]
    assert sorted(os.listdir(out / "models")) == ["random-seed0", "yaware-seed0"]

    fits.clear(), scored.clear()
    more = benchmark(table, out_dir=out, **dict(kwargs, n_labels=[8, 10, 12]))
    assert fits == []  # the networks are read back, not pretrained again
    assert sorted(scored) == sorted(
        (m, [n]) for m in ("age only", "random network", "y-Aware") for n in (10, 12)
    )
    assert more.scores[: len(first.scores)] == first.scores
    assert len(more.scores) == 3 * len(first.scores)
    assert more.config["n_labels"] == [8, 10, 12]
    assert set(pd.read_csv(out / "summary.csv").n_labels) == {8, 10, 12}

    # the same cells as a fresh run with every label count
    fresh = benchmark(
        table, out_dir=tmp_path / "fresh", **dict(kwargs, n_labels=[8, 10, 12])
    )

    def key(r):
        return (r["method"], r["n_labels"], r["repeat"])

    assert sorted(fresh.scores, key=key) == sorted(more.scores, key=key)
    # a label count's cells do not depend on the others
    alone = benchmark(table, out_dir=tmp_path / "alone", **dict(kwargs, n_labels=[10]))
    assert alone.scores == [r for r in fresh.scores if r["n_labels"] == 10]

    # asking for fewer label counts computes nothing and keeps every row
    fits.clear(), scored.clear()
    again = benchmark(table, out_dir=out, **dict(kwargs, n_labels=[10]))
    assert fits == [] and scored == [] and again.scores == more.scores


def test_resume_refuses_other_settings(table, tmp_path, fits):
    out = tmp_path / "out"
    kwargs = dict(TINY, methods=["covariates"])
    benchmark(table, out_dir=out, **kwargs)
    with pytest.raises(ValueError, match=r"other settings \(test_size\).*--no-resume"):
        benchmark(table, out_dir=out, **dict(kwargs, test_size=0.3))
    with pytest.raises(ValueError, match=r"other settings \(covariates\)"):
        benchmark(table, out_dir=out, **dict(kwargs, covariates=[], methods=["pca"]))
    # a file of the earlier version (draws over the whole n_labels list)
    path = out / "results.json"
    payload = json.loads(path.read_text())
    del payload["config"]["label_draws"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"label_draws\).*earlier version"):
        benchmark(table, out_dir=out, **kwargs)
    # resume=False overwrites
    result = benchmark(table, out_dir=out, resume=False, **dict(kwargs, n_labels=[10]))
    assert {r["n_labels"] for r in result.scores} == {10}
    assert set(pd.read_csv(out / "results.csv").n_labels) == {10}


def test_resume_refuses_other_subjects(table, tmp_path):
    out = tmp_path / "out"
    kwargs = dict(TINY, methods=["covariates"])
    benchmark(table, out_dir=out, **kwargs)
    frame = pd.read_csv(table)
    frame.loc[N_UNLABELLED, "dx"] = 1 - frame.loc[N_UNLABELLED, "dx"]
    frame["path"] = [str(table.parent / p) for p in frame["path"]]
    with pytest.raises(ValueError, match="other subjects or values"):
        benchmark(frame, out_dir=out, **kwargs)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"target": "diagnosis"}, r"target \(--target\) 'diagnosis' is not a column"),
        ({"target": None}, r"target \(--target\) is required"),
        (
            {"covariates": ["sex"]},
            r"column 'sex' \(covariate, --covariates\) is not numeric",
        ),
        ({"proxy": ["height"]}, r"column 'height' \(--proxy\) is not in the table"),
        ({"proxy": None, "methods": ["yaware"]}, r"'yaware' needs proxy \(--proxy\)"),
        ({"covariates": [], "methods": ["covariates"]}, r"needs covariates"),
        ({"methods": ["ssl"]}, r"methods \(--methods\) must be among"),
        ({"n_labels": [1]}, r"n_labels \(--labels\)"),
        ({"n_labels": [40]}, r"n_labels \(--labels\).*larger than the training part"),
        ({"test_size": 1.5}, r"test_size \(--test-size\)"),
        ({"pretrain_on": "some"}, r"pretrain_on \(--pretrain-on\)"),
        ({"pretrainer_params": {"lr": -1.0}}, r"pretrainer_params"),
        ({"pretrainer_params": {"max_epochs": 3}}, r"cannot set \['max_epochs'\]"),
        ({"path_column": "image"}, r"data \(--data\): the table has no column 'image'"),
    ],
)
def test_errors_name_the_option(table, tmp_path, fits, change, match):
    with pytest.raises(ValueError, match=match):
        benchmark(table, out_dir=tmp_path / "out", **dict(TINY, **change))
    assert fits == []  # refused before any fit


def test_errors_on_data(table, tmp_path):
    with pytest.raises(
        ValueError, match=r"data \(--data\) '.*nope.csv' does not exist"
    ):
        benchmark(tmp_path / "nope.csv", out_dir=tmp_path / "out", **TINY)
    frame = pd.read_csv(table)
    frame["path"] = [str(table.parent / p) for p in frame["path"]]
    frame.loc[20, "age"] = np.nan
    with pytest.raises(
        ValueError, match=r"'age' \(covariate, --covariates\) is missing for 1 .*sub-20"
    ):
        benchmark(frame, out_dir=tmp_path / "out", **TINY)
    frame = pd.read_csv(table)
    frame["path"] = [str(table.parent / p) for p in frame["path"]]
    frame.loc[30, "participant_id"] = "sub-31"
    with pytest.raises(ValueError, match=r"\['sub-31'\] have several labelled images"):
        benchmark(frame, out_dir=tmp_path / "out", **TINY)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"out_dir \(--out\) .* is not a folder"):
        benchmark(table, out_dir=tmp_path / "file", **TINY)


def test_regression_target_and_all_subjects(table, tmp_path):
    result = benchmark(
        table,
        out_dir=tmp_path / "out",
        **dict(TINY, target="age", covariates=[], proxy=None, methods=["pca"]),
    )
    assert {r["scoring"] for r in result.scores} == {"r2"}
    # every subject has an age: pretraining on all of them
    assert result.config["subjects"]["pretrain_on"] == "all"
    assert result.config["subjects"]["pretraining"] == N_UNLABELLED + N_LABELLED


def test_builtin_cohort_through_bids(tmp_path):
    out = tmp_path / "out"
    result = benchmark(
        out_dir=out,
        n_unlabelled=12,
        n_labels=[6],
        n_repeats=2,
        methods=["covariates", "pca"],
        n_components=3,
        verbose=0,
    )
    participants = pd.read_csv(out / "cohort" / "participants.tsv", sep="\t")
    assert participants["diagnosis"].isna().sum() == 12
    assert (out / "cohort" / "dataset_description.json").is_file()
    assert result.config["data"].startswith("BIDS folder")
    assert result.config["subjects"]["labelled"] == len(participants) - 12
    assert [r["method"] for r in result.scores] == ["age only"] * 2 + [
        "voxel PCA(3)"
    ] * 2


def test_cli_parses_into_benchmark(monkeypatch):
    seen = {}

    def fake(data, **kwargs):
        seen.update(kwargs, data=data)

    monkeypatch.setattr("sklearn_cl3d.evaluation.benchmark", fake)
    argv = [
        "benchmark", "--data", "bids", "--target", "dx", "--proxy", "age", "bmi",
        "--covariates", "--methods", "pca", "yaware", "--labels", "20", "10",
        "--seeds", "2", "--splits", "4", "--fine-tune", "--epochs", "0",
        "--batch-size", "8", "--out", "o", "--no-resume", "-q",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert seen["data"] == "bids" and seen["target"] == "dx"
    assert seen["proxy"] == ["age", "bmi"] and seen["covariates"] == []
    assert seen["methods"] == ["pca", "yaware"] and seen["n_labels"] == [20, 10]
    assert seen["seeds"] == 2 and seen["n_repeats"] == 4 and seen["max_epochs"] == 0
    assert seen["protocols"] == ("linear_probe", "fine_tune")
    assert seen["pretrainer_params"] == {"batch_size": 8}
    assert seen["out_dir"] == "o" and seen["resume"] is False
    assert seen["verbose"] == 0

    assert cli.main(["benchmark"]) == 0
    assert seen["data"] is None and seen["covariates"] is None
    assert seen["protocols"] == "linear_probe" and seen["verbose"] == 1


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--labels", "1"], "--labels: expected an integer >= 2"),
        (["--methods", "moco"], "--methods: invalid choice: 'moco'"),
        (["--test-size", "2"], "--test-size: expected a fraction in"),
        (["--pretrain-on", "x"], "--pretrain-on: invalid choice"),
        (["--seeds", "0"], "--seeds: expected a positive integer"),
    ],
)
def test_cli_rejects_bad_values(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["benchmark", *argv])
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_cli_input_error_exits_2(table, tmp_path, capsys):
    code = cli.main(
        ["benchmark", "--data", str(table), "--target", "dx", "--proxy", "weight",
         "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("sklearn-cl3d benchmark: error: column 'weight' (--proxy)")
