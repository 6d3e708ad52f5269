"""Fine-tuners' ``balance_on="scores"``: the balanced slice sampler draws
volumes with probability 1 / count(raw score), as the official WSP sampler."""

import numpy as np
import pytest
import torch
from _finetune_scores_checks import (
    check_wsp_finetuning_balance_on_scores,
    first_draw_frequencies,
    naive_balanced,
    spy_samplers,
)
from sklearn import config_context
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from sklearn_cl3d import FineTunedClassifier, FineTunedRegressor, WSPPretrainer
from sklearn_cl3d.data import SliceDataset
from sklearn_cl3d.data._slices import BalancedVolumeBatchSampler
from sklearn_cl3d.estimators._finetune_select import balanced_slice_sampler
from sklearn_cl3d.nn import ResNet2D

SCORES = np.array([0, 0, 0, 0, 1, 2, 4, 3])  # raw 5-level scores
Y = (SCORES >= 3).astype(int)  # the binary target derived from them


@pytest.fixture(scope="module")
def source():
    """A WSP slice encoder (untrained) and 8 volumes of 4 kept slices."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 1, 16, 16, 6)).astype(np.float32)
    wsp = WSPPretrainer(
        backbone=ResNet2D,
        backbone__blocks=(1, 1, 1, 1),
        backbone__widths=(4, 8, 8, 16),
        slice_size=16,
        hidden_dim=16,
        projection_dim=8,
        batch_size=4,
        max_epochs=0,
        device="cpu",
        random_state=0,
        verbose=0,
    ).fit(X, Y)
    return wsp, X


def _tuner(wsp, cls=FineTunedClassifier, **params):
    common = dict(
        slice_sampling="balanced",
        batch_size=2,
        steps_per_epoch=2,
        max_epochs=1,
        device="cpu",
        random_state=0,
        verbose=0,
    )
    return cls(wsp, **{**common, **params})


@pytest.mark.parametrize("cls", [FineTunedClassifier, FineTunedRegressor])
def test_draws_follow_the_scores(source, monkeypatch, cls):
    wsp, X = source
    made = spy_samplers(monkeypatch)
    est = _tuner(wsp, cls, balance_on="scores").fit(X, Y, scores=SCORES)
    assert est.balance_labels_ == "scores"
    freq = first_draw_frequencies(made[-1], len(Y))
    np.testing.assert_allclose(freq, naive_balanced(SCORES), atol=0.03)
    # the target-balanced (classifier) or uniform (regressor) default differs
    default = _tuner(wsp, cls).fit(X, Y, scores=SCORES)
    ref = naive_balanced(Y) if cls is FineTunedClassifier else np.full(8, 1 / 8)
    np.testing.assert_allclose(first_draw_frequencies(made[-1], 8), ref, atol=0.03)
    assert default.balance_labels_ == ("target" if cls is FineTunedClassifier else None)


def test_scores_follow_the_volumes_of_a_validation_split(source):
    # a Subset of whole volumes: the scores are those of the kept volumes
    _, X = source
    ds = SliceDataset(X, labels=Y, fraction=0.7)
    k = ds.n_kept
    keep = np.array([0, 1, 4, 5, 6])
    subset = torch.utils.data.Subset(ds, (keep[:, None] * k + np.arange(k)).ravel())
    sampler = balanced_slice_sampler(subset, 1, 4000, True, scores=SCORES)
    sampler.generator = torch.Generator().manual_seed(0)
    draws = np.array([keep[b[0] // k] for b in sampler])
    freq = np.bincount(draws, minlength=8)[keep] / len(draws)
    np.testing.assert_allclose(freq, naive_balanced(SCORES[keep]), atol=0.03)


def test_default_draws_are_unchanged(source, monkeypatch):
    wsp, X = source
    made = spy_samplers(monkeypatch)
    runs = {
        "default": _tuner(wsp).fit(X, Y),
        # scores are ignored with balance_on="target" ...
        "target+scores": _tuner(wsp, balance_on="target").fit(X, Y, scores=SCORES),
        # ... and the target is used with "scores" but no scores
        "scores, none given": _tuner(wsp, balance_on="scores").fit(X, Y),
    }
    batches = []
    for sampler in made:
        sampler.generator = torch.Generator().manual_seed(0)
        batches.append([list(b) for b in sampler])
    # the draws of the sampler balanced on the target, built by hand
    ref = BalancedVolumeBatchSampler(
        8,
        made[0].n_kept,
        batch_size=2,
        n_batches=2,
        labels=Y.astype(np.float32),
        generator=torch.Generator().manual_seed(0),
    )
    assert batches == [[list(b) for b in ref]] * 3
    states = [est.module_.state_dict() for est in runs.values()]
    for state in states[1:]:
        for key, value in states[0].items():
            assert torch.equal(value, state[key]), key
    assert {est.balance_labels_ for est in runs.values()} == {"target"}


def test_fit_with_scores_changes_training(source):
    wsp, X = source
    est = _tuner(wsp, balance_on="scores", steps_per_epoch=4)
    a = clone(est).fit(X, Y).module_.state_dict()
    b = clone(est).fit(X, Y, scores=SCORES).module_.state_dict()
    assert any(not torch.equal(a[key], b[key]) for key in a)


def test_scores_are_routed_in_a_pipeline(source, monkeypatch):
    wsp, X = source
    made = spy_samplers(monkeypatch)
    with config_context(enable_metadata_routing=True):
        est = _tuner(wsp, balance_on="scores").set_fit_request(scores=True)
        pipe = make_pipeline(est).fit(X, Y, scores=SCORES)
    assert pipe[-1].balance_labels_ == "scores"
    freq = first_draw_frequencies(made[-1], 8)
    np.testing.assert_allclose(freq, naive_balanced(SCORES), atol=0.03)


@pytest.mark.parametrize(
    "scores, params, match",
    [
        (SCORES[:5], {}, "X has 8 volumes but scores has 5"),
        (SCORES + 0.5, {}, "scores must be discrete"),
        (SCORES.reshape(2, 4), {}, "scores must be one discrete"),
        (SCORES, {"slice_sampling": "all"}, "pass scores only with slice_sampl"),
    ],
)
def test_invalid_scores(source, scores, params, match):
    wsp, X = source
    est = _tuner(wsp, balance_on="scores", **params)
    with pytest.raises(ValueError, match=match):
        est.fit(X, Y, scores=scores)


def test_invalid_balance_on(source):
    wsp, X = source
    with pytest.raises(ValueError, match="balance_on"):
        _tuner(wsp, balance_on="weak_labels").fit(X, Y)


def test_scores_need_slice_inputs():
    X = np.random.default_rng(0).normal(size=(4, 1, 8, 8, 8)).astype(np.float32)
    est = FineTunedClassifier(backbone="small3d", max_epochs=0, verbose=0)
    with pytest.raises(ValueError, match="pass scores only with slice_sampling"):
        est.fit(X, [0, 1, 0, 1], scores=[0, 1, 2, 3])


def test_the_wsp_recipe_balances_on_scores(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 1, 20, 20, 10)).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    wsp = WSPPretrainer(
        backbone=ResNet2D,
        backbone__blocks=(1, 1, 1, 1),
        backbone__widths=(4, 8, 8, 16),
        slice_size=24,
        hidden_dim=16,
        projection_dim=8,
        max_epochs=0,
        device="cpu",
        random_state=0,
        verbose=0,
    ).fit(X, y)
    check_wsp_finetuning_balance_on_scores((wsp, X, y), monkeypatch)
