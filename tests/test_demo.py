"""The main job (``sklearn-cl3d demo``) end to end on a tiny configuration."""

import json

import pytest

pytest.importorskip("nilearn")

from sklearn_cl3d.cli import build_parser, main  # noqa: E402


def test_demo_command_writes_results(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--n-unlabelled", "16",
            "--labels", "30", "40",
            "--epochs", "1",
            "--device", "cpu",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "y-Aware" in printed and "SimCLR" in printed and "epoch" in printed
    payload = json.loads((out / "results.json").read_text())
    rows = payload["results"]
    assert {r["encoder"] for r in rows} == {"age only", "y-Aware", "SimCLR", "random"}
    assert {r["n_labels"] for r in rows} == {30, 40}
    assert all(0.0 <= r["auc_mean"] <= 1.0 for r in rows)
    assert payload["config"]["n_unlabelled"] == 16
    pytest.importorskip("matplotlib")
    assert (out / "auc_vs_labels.png").stat().st_size > 0


def test_demo_parser_rejects_bad_values():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--epochs", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--preset", "huge"])
    args = parser.parse_args(["demo", "--preset", "paper"])
    assert args.preset == "paper" and args.labels is None
