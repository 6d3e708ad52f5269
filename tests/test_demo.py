"""The main job (``sklearn-cl3d demo``) end to end on a tiny configuration."""

import json

import pytest

pytest.importorskip("nilearn")

from sklearn_cl3d._demo import METHODS, DemoConfigError, run_demo  # noqa: E402
from sklearn_cl3d.cli import build_parser, main  # noqa: E402


def test_demo_command_writes_results(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--n-unlabelled", "16",
            "--labels", "30", "40",
            "--epochs", "1",
            "--seeds", "2",
            "--splits", "3",
            "--device", "cpu",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    for name in METHODS:
        assert name in printed
    assert "epoch" in printed and "y-Aware minus" in printed
    payload = json.loads((out / "results.json").read_text())
    summary = payload["summary"]
    assert {r["method"] for r in summary} == set(METHODS)
    assert {r["n_labels"] for r in summary} == {30, 40}
    assert all(0.0 <= r["mean"] <= 1.0 for r in summary)
    # every pretrained method pools 2 seeds x 3 splits; baselines 3 splits
    n = {r["method"]: r["n"] for r in summary if r["n_labels"] == 30}
    assert n["y-Aware"] == n["SimCLR"] == n["random network"] == 6
    assert n["age only"] == n["PCA(50) + age"] == n["brain-age reference"] == 3
    # y-Aware against every other method, paired over both seeds
    diffs = payload["differences"]
    assert {d["reference"] for d in diffs} == set(METHODS) - {"y-Aware"}
    assert all(d["method"] == "y-Aware" and d["n_seeds"] == 2 for d in diffs)
    assert all(d["ci_low"] <= d["mean_difference"] <= d["ci_high"] for d in diffs)
    scores = payload["scores"]
    assert {r["seed"] for r in scores if r["method"] == "SimCLR"} == {0, 1}
    assert payload["config"]["n_unlabelled"] == 16
    assert payload["config"]["volume_shape"] == [25, 30, 24]
    assert payload["machine"]["cpu"]
    pytest.importorskip("matplotlib")
    assert (out / "auc_vs_labels.png").stat().st_size > 0


def test_demo_parser_rejects_bad_values(capsys):
    parser = build_parser()
    for bad in (
        ["--epochs", "0"],
        ["--preset", "huge"],
        ["--seed", "-1"],
        ["--labels", "2"],
        ["--seeds", "0"],
        ["--resolution", "3"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", *bad])
    args = parser.parse_args(["demo", "--preset", "paper"])
    assert args.preset == "paper" and args.labels is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"label_counts": (10**6,)}, "GiB in memory"),
        ({"label_counts": (100_000,), "resolution": 4}, "GiB in memory"),
        ({"label_counts": (5,)}, "label_counts"),
        ({"n_seeds": 0}, "n_seeds"),
        ({"random_state": -1}, "random_state"),
        ({"test_size": 1.5}, "test_size"),
        ({"resolution": 3}, "resolution"),
    ],
)
def test_demo_refuses_bad_settings_before_any_work(kwargs, match, tmp_path):
    logged = []
    with pytest.raises(DemoConfigError, match=match):
        run_demo(out_dir=tmp_path / "out", log=logged.append, **kwargs)
    assert logged == []  # nothing generated or trained


def test_demo_output_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    rc = main(["demo", "--out", str(target)])
    assert rc == 2
    assert "is not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"
